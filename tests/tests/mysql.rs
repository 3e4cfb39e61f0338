//! The MySQL driver: the behavior suite, and what only a SQL server shows: names full of quotes,
//! backslashes and LIKE wildcards, the exact bytes of records, one statement per warm update,
//! killed connections (in flight, and again and again under load), records corrupted by hand, a
//! server that is down, and several processes on one scope.
//!
//! Needs `MP_TEST_MYSQL_URL` (for example `mysql://root@127.0.0.1:3306/test`: a user that may
//! create tables and databases, read the global status and KILL its own connections); unset,
//! every case is skipped with a printed reason, or fails under `MP_TEST_REQUIRE_SERVERS=1`.
//! Each case below works in a table (or database) of its own and drops it at the end, panic
//! or not.

mp_storage::behavior_suite!(mp_storage_tests::targets::mysql());

use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::driver::mysql::{MysqlDriver, CONNECT_TIMEOUT};
use mp_storage::{BackendKind, CasOutcome, Driver, Error, RetryPolicy, Storage, Write};
use mp_storage_tests::targets::server_url;
use mp_storage_tests::url::{host_port, via, with_db, with_option, without_query};
use mp_storage_tests::{rev, unique_name, Counter};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

const VAR: &str = "MP_TEST_MYSQL_URL";

/// The test server's URL, or `None` to skip.
fn url() -> Option<String> {
    server_url(VAR, "mysql")
}

/// A raw connection to the test server (its query string dropped).
async fn admin(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(without_query(url)).expect("a mysql_async URL");
    mysql_async::Conn::new(opts)
        .await
        .expect("an admin connection")
}

/// A table of the case's own, dropped with the value (a panicking case included).
struct Table {
    base: String,
    name: String,
    /// The server URL with `table=` set.
    url: String,
}

impl Table {
    async fn new(tag: &str) -> Option<Table> {
        let base = url()?;
        let name = unique_name(tag);
        let url = with_option(&base, "table", &name);
        Some(Table { base, name, url })
    }

    async fn driver(&self) -> Arc<dyn Driver> {
        mp_storage::driver::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.url))
    }

    async fn storage(&self) -> Storage {
        Storage::builder()
            .retry(RetryPolicy::default().deadline(Some(Duration::from_secs(60))))
            .open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.url))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        mp_storage_tests::mysql_cleanup(
            &self.base,
            format!("DROP TABLE IF EXISTS `{}`", self.name),
        );
    }
}

/// A database of the case's own, so that its connections can be told apart from everyone
/// else's in the process list. Dropped with the value.
struct Database {
    base: String,
    name: String,
    /// The server URL on this database.
    url: String,
}

impl Database {
    async fn new(tag: &str) -> Option<Database> {
        let base = url()?;
        let name = unique_name(tag);
        let mut conn = admin(&base).await;
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create the test database");
        let url = with_db(&base, &name);
        Some(Database { base, name, url })
    }

    /// Kills every connection on this database but the caller's; returns how many.
    async fn kill_all(&self, admin: &mut mysql_async::Conn) -> usize {
        let ids: Vec<u64> = admin
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND ID <> CONNECTION_ID()",
                (self.name.as_str(),),
            )
            .await
            .expect("read the process list");
        let mut killed = 0;
        for id in ids {
            // The id comes from the server as a number; a connection gone meanwhile is fine.
            if admin
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        killed
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        mp_storage_tests::mysql_cleanup(
            &self.base,
            format!("DROP DATABASE IF EXISTS `{}`", self.name),
        );
    }
}

fn write(data: &[u8], token: u64) -> Write<'_> {
    mp_storage_tests::write_with(0, data, token, 1_000)
}

fn is_connection_error(e: &Error) -> bool {
    matches!(
        e.backend_kind(),
        Some(BackendKind::Connection | BackendKind::Timeout)
    )
}

/// Quotes, backslashes and LIKE wildcards are plain characters of a name: every name keeps its
/// own row, and a prefix matches only names that really start with it.
#[tokio::test]
async fn names_with_sql_characters_are_exact() {
    let Some(table) = Table::new("names").await else {
        return;
    };
    let st = table.storage().await;
    let names = [
        "it's",
        "it''s",
        "say \"hi\"",
        "back\\slash",
        "\\",
        "\\\\",
        "\\%",
        "100%",
        "%",
        "%%",
        "_",
        "a_b",
        "axb",
        "a%b",
        "aXb",
        "Alice",
        "alice",
        "a",
        "a ",
        "é",
        "e\u{301}",
        "`tick`",
        "x'); DROP TABLE mp_scopes; --",
        "\u{7f}",
        "\u{7f}z",
    ];
    for (i, name) in names.iter().enumerate() {
        st.set(name, &json!(i)).await.expect("set");
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            st.get::<Value>(name).await.expect("get"),
            Some(json!(i)),
            "{name:?}"
        );
    }
    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(st.list("").await.expect("list"), all);

    let expect = |prefix: &str| -> Vec<String> {
        all.iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    };
    for prefix in [
        "a_", "a%", "%", "_", "\\", "\\\\", "\\%", "it'", "100", "a", "A", "a ", "\u{7f}", "e",
        "x'",
    ] {
        assert_eq!(
            st.list(prefix).await.expect("list"),
            expect(prefix),
            "{prefix:?}"
        );
    }
    assert_eq!(st.list("a_").await.unwrap(), vec!["a_b".to_owned()]);
    assert_eq!(st.list("%").await.unwrap(), vec!["%", "%%"]);
    assert_eq!(st.list("zz").await.unwrap(), Vec::<String>::new());
}

/// Keys up to 2,048 bytes (key prefix plus name) round trip and list; a longer raw key is
/// refused rather than cut.
#[tokio::test]
async fn longest_keys_round_trip() {
    let Some(table) = Table::new("long").await else {
        return;
    };
    let prefix = "p".repeat(mp_storage::MAX_KEY_LEN - mp_storage::MAX_NAME_LEN);
    let st = Storage::builder()
        .key_prefix(prefix.clone())
        .open(&table.url)
        .await
        .expect("open");
    let name_a = format!("{}a", "é".repeat((mp_storage::MAX_NAME_LEN - 1) / 2));
    let name_b = format!("{}b", "é".repeat((mp_storage::MAX_NAME_LEN - 1) / 2));
    assert_eq!(prefix.len() + name_a.len(), mp_storage::MAX_KEY_LEN - 1);
    let name_c = "c".repeat(mp_storage::MAX_NAME_LEN);
    for name in [&name_a, &name_b, &name_c] {
        st.scoped(name, |c: &mut Counter| c.count += 1)
            .await
            .expect("update");
        st.scoped(name, |c: &mut Counter| c.count += 1)
            .await
            .expect("update");
        assert_eq!(st.get::<Counter>(name).await.unwrap().unwrap().count, 2);
    }
    assert_eq!(
        st.list("é").await.unwrap(),
        vec![name_a.clone(), name_b.clone()]
    );
    assert_eq!(st.list(&name_a).await.unwrap(), vec![name_a.clone()]);

    let driver = table.driver().await;
    let too_long = "k".repeat(mp_storage::MAX_KEY_LEN + 1);
    assert!(matches!(
        driver.load(&too_long).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        driver.put(&too_long, write(b"1", 1)).await,
        Err(Error::InvalidName { .. })
    ));
}

/// The driver keeps data and tokens byte for byte, counts versions, and answers conflicts with
/// the current record.
#[tokio::test]
async fn records_are_exact_and_cas_is_checked() {
    let Some(table) = Table::new("cas").await else {
        return;
    };
    let d = table.driver().await;
    let data: Vec<u8> = (0..=255u8).rev().collect();
    // (Tokens are never 0: the engine draws them from 1 up.)
    let odd_tokens = [u64::MAX, 1, 0x8000_0000_0000_0000, 0xff28_c3a0_00e9_5c27];

    // Update of an absent key: conflict, no record.
    assert_eq!(
        d.cas("k", rev(5, 0), write(&data, 1)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    // Create.
    assert_eq!(
        d.cas("k", None, write(&data, odd_tokens[0])).await.unwrap(),
        CasOutcome::Committed(1_000)
    );
    // Create again: conflict with the record.
    match d.cas("k", None, write(b"other", 9)).await.unwrap() {
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!((r.version, r.schema), (1_000, 0));
            assert_eq!(r.data, data);
            assert_eq!(r.tokens, vec![odd_tokens[0]]);
        }
        other => panic!("{other:?}"),
    }
    // The same bytes again still write: the row matched.
    let mut version = 1_000;
    let mut tokens = vec![odd_tokens[0]];
    for (i, &t) in odd_tokens[1..].iter().enumerate() {
        assert_eq!(
            d.cas("k", rev(version, tokens[tokens.len() - 1]), write(&data, t))
                .await
                .unwrap(),
            CasOutcome::Committed(version + 1),
            "write {i}"
        );
        version += 1;
        tokens.push(t);
    }
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!((r.version, &r.data, &r.tokens), (version, &data, &tokens));

    // A stale version: conflict with the current record, nothing written.
    match d
        .cas(
            "k",
            rev(version - 1, tokens[tokens.len() - 2]),
            write(b"stale", 7),
        )
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(r)) => assert_eq!((r.version, &r.tokens), (version, &tokens)),
        other => panic!("{other:?}"),
    }
    // Many writes keep the last 16 tokens, oldest first.
    for t in 100..130u64 {
        d.cas("k", rev(version, tokens[tokens.len() - 1]), write(b"{}", t))
            .await
            .unwrap();
        version += 1;
        tokens.push(t);
    }
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!(r.version, version);
    assert_eq!(r.tokens, tokens[tokens.len() - 16..].to_vec());
    assert_eq!(r.data, b"{}");

    // put: creates at the initial version, then counts on, keeping tokens.
    assert_eq!(d.put("p", write(b"1", 11)).await.unwrap(), 1_000);
    assert_eq!(d.put("p", write(b"1", 12)).await.unwrap(), 1_001);
    assert_eq!(d.put("k", write(b"2", 13)).await.unwrap(), version + 1);
    let r = d.load("p").await.unwrap().unwrap();
    assert_eq!(
        (r.version, r.data.as_slice(), r.tokens),
        (1_001, &b"1"[..], vec![11, 12])
    );
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!(r.tokens.len(), 16);
    assert_eq!(r.tokens.last(), Some(&13));

    assert!(d.delete("p").await.unwrap());
    assert!(!d.delete("p").await.unwrap());
    assert_eq!(d.load("p").await.unwrap(), None);
    assert_eq!(d.list("").await.unwrap(), vec!["k".to_owned()]);
}

/// A record as large as the driver allows is stored and read back whole.
#[tokio::test]
async fn largest_record_round_trips() {
    let Some(table) = Table::new("big").await else {
        return;
    };
    let d = table.driver().await;
    let limit = d.max_data_len();
    assert!(
        (1 << 20..=mp_storage::DEFAULT_MAX_DATA_LEN).contains(&limit),
        "{limit}"
    );
    let data: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        d.cas("big", None, write(&data, 1)).await.unwrap(),
        CasOutcome::Committed(1_000)
    );
    let r = d.load("big").await.unwrap().unwrap();
    assert!(r.data == data, "the big record came back changed");
}

/// A table that exists with other columns is refused at open, not on the first write; a bad
/// table name is an URL error.
#[tokio::test]
async fn foreign_table_and_bad_names_are_refused() {
    let Some(base) = url() else {
        return;
    };
    let name = unique_name("foreign");
    let mut conn = admin(&base).await;
    conn.query_drop(format!("CREATE TABLE `{name}` (id INT PRIMARY KEY)"))
        .await
        .expect("create a foreign table");
    let r = Storage::open(&with_option(&base, "table", &name)).await;
    assert!(matches!(r, Err(Error::Backend { .. })), "{r:?}");
    conn.query_drop(format!("DROP TABLE `{name}`"))
        .await
        .expect("drop");
    for bad in ["a-b", "a%60b", "", "x%20y", &"t".repeat(65)] {
        let r = Storage::open(&with_option(&base, "table", bad)).await;
        assert!(matches!(r, Err(Error::InvalidUrl { .. })), "{bad:?}: {r:?}");
    }
}

/// Statements the server ran since the last call, read from the global status (minus the
/// status query itself).
async fn questions(admin: &mut mysql_async::Conn) -> (u64, u64) {
    let rows: Vec<(String, String)> = admin
        .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_select')")
        .await
        .expect("global status");
    let get = |name: &str| {
        rows.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .expect("a counter")
    };
    (get("Questions"), get("Com_select"))
}

/// A warm uncontended update is one statement. Counted from the server's global `Questions`
/// (which counts each executed prepared statement). Other clients, and the other cases of this
/// file running beside it, only add to it: the best of up to 30 rounds counts, and the case
/// stops at the first round within the bound.
#[tokio::test]
async fn warm_update_is_one_statement() {
    let Some(table) = Table::new("stmts").await else {
        return;
    };
    let st = table.storage().await;
    let mut admin = admin(&table.base).await;
    const N: u64 = 100;
    for _ in 0..3 {
        st.scoped("warm", |c: &mut Counter| c.count += 1)
            .await
            .unwrap();
    }
    let mut best = (u64::MAX, u64::MAX);
    let mut rounds = 0;
    while rounds < 30 && best.0 as f64 > 1.1 * N as f64 {
        rounds += 1;
        let (q0, s0) = questions(&mut admin).await;
        for _ in 0..N {
            st.scoped("warm", |c: &mut Counter| c.count += 1)
                .await
                .unwrap();
        }
        let (q1, s1) = questions(&mut admin).await;
        // The second status query counts itself.
        best = best.min((q1 - q0 - 1, s1 - s0));
        if best.0 as f64 > 1.1 * N as f64 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let per_update = best.0 as f64 / N as f64;
    println!(
        "statements per warm update: {per_update:.3} (selects: {})",
        best.1
    );
    assert!(per_update <= 1.1, "{per_update} statements per warm update");
    assert_eq!(
        st.get::<Counter>("warm").await.unwrap().unwrap().count,
        3 + rounds * N
    );
}

/// The selects the server ran for `n` loads of `key` by `driver`, after `before` other loads
/// of it: the best of up to 30 rounds (the other cases of this file select beside it, which only
/// adds), stopping at the first round at most `want`.
async fn selects_per_loads(
    admin: &mut mysql_async::Conn,
    driver: &dyn Driver,
    (before, key): (&str, &str),
    n: u64,
    want: u64,
) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..30 {
        for _ in 0..40 {
            driver.load(before).await.unwrap();
        }
        let (_, s0) = questions(admin).await;
        for _ in 0..n {
            driver.load(key).await.unwrap();
        }
        let (_, s1) = questions(admin).await;
        best = best.min(s1 - s0);
        if best <= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    best
}

/// Whether a row has expired is the server's clock's to say, and a load reads that clock only
/// for a row with an expiry: one select for a row without one; two for a row with one while
/// most rows loaded lately had none (the row, then the row with the clock), one once most had.
/// Either way an expired row is absent and a live one is there.
#[tokio::test]
async fn loads_read_the_server_clock_only_for_rows_with_an_expiry() {
    let Some(table) = Table::new("clock").await else {
        return;
    };
    let st = table.storage().await;
    let driver = table.driver().await;
    let mut admin = admin(&table.base).await;
    for name in ["plain", "later", "soon"] {
        st.set(name, &Counter { count: 1 }).await.unwrap();
    }
    assert!(st
        .expire("later", Some(Duration::from_secs(3600)))
        .await
        .unwrap());
    assert!(st
        .expire("soon", Some(Duration::from_millis(300)))
        .await
        .unwrap());
    // Most rows loaded lately without an expiry.
    let plain = ("plain", "plain");
    assert_eq!(
        selects_per_loads(&mut admin, &*driver, plain, 20, 20).await,
        20
    );
    let later = ("plain", "later");
    assert_eq!(
        selects_per_loads(&mut admin, &*driver, later, 1, 2).await,
        2
    );
    // Most with one.
    let later = ("later", "later");
    assert_eq!(
        selects_per_loads(&mut admin, &*driver, later, 20, 20).await,
        20
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    for lately in ["later", "plain"] {
        for _ in 0..40 {
            driver.load(lately).await.unwrap();
        }
        assert_eq!(driver.load("soon").await.unwrap(), None, "after {lately}");
        let later = driver.load("later").await.unwrap().expect("live");
        assert!(later.expires_at.is_some(), "after {lately}");
        let plain = driver.load("plain").await.unwrap().expect("live");
        assert_eq!(plain.expires_at, None, "after {lately}");
    }
    assert_eq!(st.get::<Counter>("soon").await.unwrap(), None);
}

/// 4 processes × 8 tasks × 250 increments of one scope: exact, and every count distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_increment_exactly() {
    let Some(table) = Table::new("procs").await else {
        return;
    };
    // The table exists before the workers race to create it.
    drop(table.driver().await);
    let total = mp_storage_tests::multi_process_increments(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("mysql"),
        "hot",
        4,
        8,
        250,
    )
    .await;
    assert_eq!(total, 8_000);
}

/// Two processes × 16 tasks on one scope for 2 s: exact, every count distinct; each process's
/// share and tail latency are printed (the bench measures them against targets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_hot_scope() {
    let Some(table) = Table::new("fair").await else {
        return;
    };
    drop(table.driver().await);
    let per = mp_storage_tests::fair_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("mysql-fair"),
        "hot",
        2,
        16,
        2.0,
    )
    .await;
    assert!(per.iter().sum::<u64>() > 0);
}

/// A statement in flight on a connection that is killed fails with a connection error; the
/// pool then replaces its connections and the next calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_in_flight_give_typed_errors() {
    let Some(db) = Database::new("kill").await else {
        return;
    };
    let st = Storage::open(&db.url).await.expect("open");
    st.set("locked", &Counter { count: 1 }).await.unwrap();
    let driver = MysqlDriver::open(&db.url).await.expect("open the driver");
    let current = driver.load("locked").await.unwrap().expect("a record");

    // Hold the row's lock, so that updates of it wait in the server: surely in flight.
    let mut locker = admin(&db.url).await;
    locker.query_drop("BEGIN").await.unwrap();
    let _: Vec<u64> = locker
        .exec(
            "SELECT version FROM mp_scopes WHERE name = ? FOR UPDATE",
            (&b"locked"[..],),
        )
        .await
        .unwrap();

    let mut waiting = Vec::new();
    for t in 0..6u64 {
        let driver = driver.clone();
        let expected = Some(current.revision());
        waiting.push(tokio::spawn(async move {
            driver
                .cas("locked", expected, write(b"{\"count\":2}", t + 1))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut killer = admin(&db.base).await;
    // The locker's own connection is on the database too: spare it.
    let locker_id = locker.id();
    let ids: Vec<u64> = killer
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?",
            (db.name.as_str(), locker_id),
        )
        .await
        .unwrap();
    assert!(!ids.is_empty());
    for id in ids {
        let _ = killer.query_drop(format!("KILL CONNECTION {id}")).await;
    }
    for w in waiting {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a killed call returns")
            .expect("join");
        match r {
            Err(e) if e.backend_kind() == Some(BackendKind::Connection) => {}
            other => panic!("expected a connection error, got {other:?}"),
        }
    }
    locker.query_drop("ROLLBACK").await.unwrap();

    // Every pooled connection was killed; the next calls work.
    let r = driver.load("locked").await.unwrap().expect("a record");
    assert_eq!(r.version, current.version, "no killed update took effect");
    assert_eq!(
        driver
            .cas("locked", Some(r.revision()), write(b"{\"count\":5}", 99))
            .await
            .unwrap(),
        CasOutcome::Committed(r.version + 1)
    );
    // The storage's own idle connections were killed too.
    for _ in 0..5 {
        st.scoped("locked", |c: &mut Counter| c.count += 1)
            .await
            .expect("an update after the kill");
    }
    assert_eq!(
        st.get::<Counter>("locked").await.unwrap().unwrap().count,
        10
    );
}

/// Connections killed again and again under load: every failed call has a typed, retryable
/// error, the count stays consistent with what succeeded, and calls work again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_kills_under_load_recover() {
    let Some(db) = Database::new("chaos").await else {
        return;
    };
    let st = Storage::builder()
        .retry(RetryPolicy::default().deadline(Some(Duration::from_secs(30))))
        .open(&db.url)
        .await
        .expect("open");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..60 {
                match st
                    .scoped(format!("c{}", t % 4), |c: &mut Counter| c.count += 1)
                    .await
                {
                    Ok(()) => ok += 1,
                    Err(e) if is_connection_error(&e) => failed += 1,
                    Err(Error::CommitUnknown { .. }) => failed += 1,
                    Err(e) => panic!("untyped failure after a kill: {e}"),
                }
            }
            (ok, failed)
        }));
    }
    let mut killer = admin(&db.base).await;
    let mut killed = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        killed += db.kill_all(&mut killer).await;
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.expect("join");
        ok += o;
        failed += f;
    }
    println!("killed {killed} connections; {ok} updates done, {failed} failed");
    assert!(killed > 0);
    // Kill the idle pool once more: the next calls still work.
    db.kill_all(&mut killer).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for t in 0..8 {
        st.scoped(format!("c{}", t % 4), |c: &mut Counter| c.count += 1)
            .await
            .expect("an update after the kills");
    }
    let mut stored = 0;
    for s in 0..4 {
        stored += st
            .get::<Counter>(format!("c{s}"))
            .await
            .unwrap()
            .unwrap_or_default()
            .count;
    }
    let done = ok + 8;
    assert!(
        (done..=done + failed).contains(&stored),
        "stored {stored}, done {done}, unknown {failed}"
    );
}

/// A server that is down (or a host that does not answer) fails with a connection error
/// within the connect timeout, never hangs.
#[tokio::test]
async fn down_server_is_a_connection_error_within_the_bound() {
    if url().is_none() {
        return;
    }
    for down in [
        "mysql://root@127.0.0.1:1/test",
        // Not routed: the connect attempt hangs until the driver's own timeout.
        "mysql://root@10.255.255.1:3306/test",
    ] {
        let started = Instant::now();
        let r = Storage::open(down).await;
        let took = started.elapsed();
        match r {
            Err(e) => assert_eq!(
                e.backend_kind(),
                Some(BackendKind::Connection),
                "{down}: {e}"
            ),
            Ok(_) => panic!("{down} opened"),
        }
        assert!(
            took <= CONNECT_TIMEOUT + Duration::from_secs(1),
            "{down}: took {took:?}"
        );
    }
}

/// `KILL` of every connection on the storage's own database, every 100 ms for 3 s, under load:
/// nothing lost, nothing applied twice (see `mp_storage_tests::kill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_kill_loses_and_doubles_nothing() {
    let Some(db) = Database::new("killload").await else {
        return;
    };
    let killer = Arc::new(tokio::sync::Mutex::new(admin(&db.base).await));
    mp_storage_tests::kill::kill_under_load(&db.url, "mysql-kill", || {
        let killer = killer.clone();
        let db = &db;
        async move { db.kill_all(&mut *killer.lock().await).await as u64 }
    })
    .await;
}

/// The bank across processes: 3 processes x 4 tasks over 16 accounts for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_across_processes() {
    let Some(table) = Table::new("bank").await else {
        return;
    };
    // The table exists before the workers race to create it.
    drop(table.driver().await);
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        "mysql-bank",
        mp_storage_tests::bank::Shape {
            accounts: 16,
            procs: 3,
            tasks: 4,
            secs: 2.0,
        },
        None::<mp_storage_tests::bank::NoKill>,
    )
    .await;
}

/// The bank across processes while `KILL` ends every connection on its database every 100 ms:
/// 3 processes x 4 tasks over 16 accounts for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_connections_killed() {
    let Some(db) = Database::new("bankkill").await else {
        return;
    };
    drop(
        mp_storage::driver::open(&db.url)
            .await
            .expect("create the table"),
    );
    let killer = Arc::new(tokio::sync::Mutex::new(admin(&db.base).await));
    let kill = || {
        let killer = killer.clone();
        let db = &db;
        async move { db.kill_all(&mut *killer.lock().await).await as u64 }
    };
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &db.url,
        "mysql-bank-kill",
        mp_storage_tests::bank::Shape {
            accounts: 16,
            procs: 3,
            tasks: 4,
            secs: 3.0,
        },
        Some(kill),
    )
    .await;
}

type Row = (u64, Vec<u8>, Vec<u8>);

async fn snapshot(conn: &mut mysql_async::Conn, k: Vec<u8>) -> Option<Row> {
    conn.exec_first(
        "SELECT version, data, tokens FROM mp_scopes WHERE name = ?",
        (k,),
    )
    .await
    .expect("read the row")
}

/// A MySQL row corrupted by hand: data that is not the type's JSON is a decode error, a broken
/// token column is a corrupt-record error; neither is overwritten.
#[tokio::test]
async fn mysql_record_corrupted_by_hand_is_left_untouched() {
    let Some(url) = url() else {
        return;
    };
    let prefix = mp_storage_tests::unique_prefix("mysql-corrupt");
    // No cache: an edit that keeps the version is invisible to a handle that cached the record
    // before it; this handle sees the store as another process would.
    let st = Storage::builder()
        .key_prefix(&prefix)
        .cache_capacity(0)
        .open(&url)
        .await
        .expect("open mysql");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    st.set("t", &Counter { count: 6 }).await.expect("set");
    let mut conn = admin(&url).await;
    let key = |n: &str| format!("{prefix}{n}").into_bytes();
    conn.exec_drop(
        "UPDATE mp_scopes SET data = ? WHERE name = ?",
        (b"{\"count\": \"five\"".to_vec(), key("c")),
    )
    .await
    .expect("corrupt data");
    conn.exec_drop(
        "UPDATE mp_scopes SET tokens = ? WHERE name = ?",
        (b"abc".to_vec(), key("t")),
    )
    .await
    .expect("corrupt tokens");
    let before_c = snapshot(&mut conn, key("c")).await;
    let before_t = snapshot(&mut conn, key("t")).await;
    assert!(before_c.is_some() && before_t.is_some());

    let e = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("undecodable data");
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    let e = st
        .scoped("t", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("corrupt tokens");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("mp_scopes"), "{e}");

    assert_eq!(snapshot(&mut conn, key("c")).await, before_c);
    assert_eq!(snapshot(&mut conn, key("t")).await, before_t);
    conn.exec_drop(
        "DELETE FROM mp_scopes WHERE name IN (?, ?)",
        (key("c"), key("t")),
    )
    .await
    .expect("clean up");
    let _ = conn.disconnect().await;
}

/// A refused connection names the server it could not reach.
#[tokio::test]
async fn a_refused_connection_names_the_server() {
    if url().is_none() {
        return;
    }
    match Storage::open("mysql://root@127.0.0.1:1/test").await {
        Err(e) => {
            assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}");
            assert!(
                e.to_string()
                    .contains("cannot connect to 127.0.0.1:1: connection refused"),
                "{e}"
            );
        }
        Ok(_) => panic!("opened a server that is not there"),
    }
}

/// A mysql URL pointed at a server of another protocol (the Redis test server, which waits in
/// silence for a command) fails well within the connect timeout, saying so, instead of waiting
/// for a greeting that never comes. Needs `MP_TEST_REDIS_URL`.
#[tokio::test]
async fn a_redis_server_is_not_taken_for_mysql() {
    let Some(redis) = server_url("MP_TEST_REDIS_URL", "redis") else {
        return;
    };
    let rest = redis.split_once("://").map_or(redis.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = authority.rsplit('@').next().unwrap_or(authority);
    let addr = if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:6379")
    };
    let started = Instant::now();
    match Storage::open(&format!("mysql://root@{addr}/test")).await {
        Err(e) => {
            assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}");
            assert!(
                e.to_string().contains(&format!(
                    "the server at {addr} does not speak the MySQL protocol"
                )),
                "{e}"
            );
        }
        Ok(_) => panic!("took the Redis server at {addr} for a MySQL server"),
    }
    let took = started.elapsed();
    assert!(took < CONNECT_TIMEOUT / 2, "took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Writes that land late, rows that go back, servers that go down.

/// `url` pointed at `proxy`. `prefer_socket=false`: else mysql_async, connected over TCP to a
/// local server, switches to the server's Unix socket and bypasses the proxy.
fn through(proxy: &mp_storage_tests::proxy::Proxy, url: &str) -> String {
    with_option(&via(url, proxy.addr()), "prefer_socket", "false")
}

/// Waits (at most 5 s) until an `UPDATE` of `table` runs in the server: with its row locked by
/// another session, it is waiting on that lock. (The process list, not `INNODB_TRX`: MariaDB
/// does not always list a prepared statement's lock wait there.)
async fn wait_for_update(admin: &mut mysql_async::Conn, table: &str) {
    let pattern = format!("UPDATE `{table}`%");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let running: Option<u64> = admin
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ?",
                (pattern.as_str(),),
            )
            .await
            .expect("read the process list");
        if running.unwrap_or(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the update never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The double apply of 0.1: an update's `UPDATE` waits on a row lock another session holds;
/// the client side of its connection is cut (a load balancer reset), so the client gives up
/// while the statement goes on waiting in the server; the lock is released a little later and
/// the lost statement commits. The engine must not take "the row is unchanged" for "not
/// applied": the update ends with `Ok(1)` and 1 stored (or a typed `CommitUnknown` with at most
/// 1 stored), never `Ok(2)`. Four rounds, with the lock released 100 to 600 ms after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_update_waiting_on_a_row_lock_is_applied_once() {
    let Some(table) = Table::new("late").await else {
        return;
    };
    let proxy = mp_storage_tests::proxy::Proxy::start(host_port(&table.url)).await;
    let st = Storage::open(&through(&proxy, &table.url))
        .await
        .expect("open through the proxy");
    let direct = Storage::builder()
        .cache_capacity(0)
        .open(&table.url)
        .await
        .expect("open");
    let mut locker = admin(&table.base).await;
    let mut watcher = admin(&table.base).await;
    let started = Instant::now();
    let (mut done, mut unknown) = (0, 0);
    for (round, release_ms) in [300u64, 100, 600, 300].into_iter().enumerate() {
        let name = format!("n{round}");
        // Warm: the update is one UPDATE, sent at once.
        st.set(&name, &Counter { count: 0 }).await.unwrap();
        locker.query_drop("BEGIN").await.unwrap();
        let _: Vec<u64> = locker
            .exec(
                format!(
                    "SELECT version FROM `{}` WHERE name = ? FOR UPDATE",
                    table.name
                ),
                (name.as_bytes(),),
            )
            .await
            .unwrap();
        let task = tokio::spawn({
            let (st, name) = (st.clone(), name.clone());
            async move {
                st.scoped(&name, |c: &mut Counter| {
                    c.count += 1;
                    c.count
                })
                .await
            }
        });
        wait_for_update(&mut watcher, &table.name).await;
        proxy.cut_clients();
        tokio::time::sleep(Duration::from_millis(release_ms)).await;
        locker.query_drop("ROLLBACK").await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the update returns")
            .expect("join");
        let stored = direct.get::<Counter>(&name).await.unwrap().unwrap().count;
        match r {
            Ok(n) => {
                assert_eq!((n, stored), (1, 1), "round {round}: applied twice");
                done += 1;
            }
            Err(Error::CommitUnknown { .. }) => {
                assert!(stored <= 1, "round {round}: stored {stored}");
                unknown += 1;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    eprintln!(
        "late updates: {done} committed, {unknown} unknown, in {:?}",
        started.elapsed()
    );
}

/// The row of a scope written back to an older copy of itself (version, data, tokens: a restore
/// or a failover), then updated by another process until its version is back at the number two
/// handles cached: a read-only update from the cache answers the stored value ("read 50 while
/// the store held 107"), and an update does not write over the other process's acknowledged
/// writes.
#[tokio::test]
async fn a_row_rolled_back_is_not_trusted() {
    let Some(table) = Table::new("rollback").await else {
        return;
    };
    let mut conn = admin(&table.base).await;
    let t = &table.name;
    table
        .storage()
        .await
        .set("r", &Counter { count: 50 })
        .await
        .unwrap();
    type Snapshot = (u64, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>);
    let snapshot: Snapshot = conn
        .exec_first(
            format!("SELECT version, schema_v, data, tokens, meta FROM `{t}` WHERE name = ?"),
            (&b"r"[..],),
        )
        .await
        .unwrap()
        .expect("the row");
    let (a, reader) = (table.storage().await, table.storage().await);
    for _ in 0..3 {
        a.scoped("r", |c: &mut Counter| c.count += 1).await.unwrap();
    }
    assert_eq!(reader.get::<Counter>("r").await.unwrap().unwrap().count, 53);

    let (version, schema, data, tokens, meta) = snapshot;
    conn.exec_drop(
        format!(
            "UPDATE `{t}` SET version = ?, schema_v = ?, data = ?, tokens = ?, meta = ? \
             WHERE name = ?"
        ),
        (version, schema, data, tokens, meta, &b"r"[..]),
    )
    .await
    .unwrap();
    let other = table.storage().await;
    assert_eq!(other.get::<Counter>("r").await.unwrap().unwrap().count, 50);
    for _ in 0..3 {
        other
            .scoped("r", |c: &mut Counter| c.count += 100)
            .await
            .unwrap();
    }
    let now: Option<u64> = conn
        .exec_first(
            format!("SELECT version FROM `{t}` WHERE name = ?"),
            (&b"r"[..],),
        )
        .await
        .unwrap();
    assert_eq!(
        now,
        Some(version + 3),
        "the version is back where the caches are"
    );

    let seen = reader.scoped("r", |c: &mut Counter| c.count).await.unwrap();
    assert_eq!(seen, 350, "a read-only update answered from the cache");
    let n = a
        .scoped("r", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await
        .unwrap();
    assert_eq!(n, 351, "an update wrote over data it never saw");
    assert_eq!(other.get::<Counter>("r").await.unwrap().unwrap().count, 351);
    let _ = conn.disconnect().await;
}

/// A server that goes down under a warm cache (the proxy in front of it stops): an update is a
/// connection error (retryable, nothing written) within the connect timeout and a second, not an
/// unknown outcome; and the handle works again, with the count exact, once the server is back.
#[tokio::test]
async fn a_server_down_under_a_warm_cache_is_a_connection_error() {
    let Some(table) = Table::new("downwarm").await else {
        return;
    };
    let proxy = mp_storage_tests::proxy::Proxy::start(host_port(&table.url)).await;
    let st = Storage::open(&through(&proxy, &table.url))
        .await
        .expect("open through the proxy");
    st.scoped("n", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    proxy.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..3 {
        let started = Instant::now();
        let r = st.scoped("n", |c: &mut Counter| c.count += 1).await;
        let took = started.elapsed();
        match &r {
            Err(e @ Error::Backend { kind, .. }) => {
                assert_eq!(*kind, BackendKind::Connection, "update {i}: {e}");
                assert!(e.is_retryable(), "update {i}: {e:?}");
            }
            other => {
                panic!("update {i} after {took:?}: expected a connection error, got {other:?}")
            }
        }
        assert!(
            took < CONNECT_TIMEOUT + Duration::from_secs(1),
            "update {i} took {took:?}"
        );
    }
    let back =
        mp_storage_tests::proxy::Proxy::restart_on(proxy.addr(), host_port(&table.url)).await;
    let until = Instant::now() + Duration::from_secs(10);
    let n = loop {
        match st
            .scoped("n", |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await
        {
            Ok(n) => break n,
            Err(e) if e.is_retryable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    };
    assert_eq!(
        n, 2,
        "an update refused while the server was down was applied"
    );
    drop(st);
    drop(back);
}

/// Expired rows are absent at once and their space is reclaimed by a sweep, which one process
/// runs per interval (the sweep row says when) and which deletes only rows still expired: a
/// scope written again after it expired stays.
#[tokio::test]
async fn sweeps_delete_only_expired_rows_once_per_interval() {
    let Some(table) = Table::new("sweep").await else {
        return;
    };
    let st = table.storage().await;
    let driver = table.driver().await;
    for name in ["a", "b", "c", "again"] {
        st.set(name, &Counter { count: 1 }).await.unwrap();
    }
    for name in ["a", "b", "again"] {
        assert!(st
            .expire(name, Some(Duration::from_millis(100)))
            .await
            .unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Written again after it expired: a live scope of its own.
    assert_eq!(mp_storage_tests::increment(&st, "again").await.unwrap(), 1);
    let mut admin = admin(&table.base).await;
    // Every row but the sweep row (whose name starts with NUL).
    let sql = format!(
        "SELECT COUNT(*) FROM `{}` WHERE LEFT(name, 1) <> X'00'",
        table.name
    );
    let n: Option<u64> = admin.query_first(sql.as_str()).await.unwrap();
    assert_eq!(n, Some(4), "a and b are still stored, only hidden");
    assert_eq!(st.list("").await.unwrap(), ["again", "c"]);
    assert_eq!(driver.sweep(1000).await.unwrap(), 2);
    let n: Option<u64> = admin.query_first(sql.as_str()).await.unwrap();
    assert_eq!(n, Some(2));
    // Another process's sweep within the interval does nothing.
    assert!(st
        .expire("c", Some(Duration::from_millis(50)))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(table.driver().await.sweep(1000).await.unwrap(), 0);
    assert_eq!(st.get::<Counter>("c").await.unwrap(), None);
    assert_eq!(
        st.get::<Counter>("again").await.unwrap().map(|c| c.count),
        Some(1)
    );
    let _ = admin.disconnect().await;
}

// ---------------------------------------------------------------------------------------------
// Exclusive updates across processes (see `mp_storage_tests::lease`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let Some(table) = Table::new("lease").await else {
        return;
    };
    drop(table.driver().await);
    let prefix = mp_storage_tests::unique_prefix("mysql-lease");
    mp_storage_tests::lease::exclusion_across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_outlived() {
    let Some(table) = Table::new("lease").await else {
        return;
    };
    drop(table.driver().await);
    let prefix = mp_storage_tests::unique_prefix("mysql-lease");
    mp_storage_tests::lease::killed_holder_is_outlived(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_is_refused() {
    let Some(table) = Table::new("lease").await else {
        return;
    };
    drop(table.driver().await);
    let prefix = mp_storage_tests::unique_prefix("mysql-lease");
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &prefix,
    )
    .await;
}

/// A watcher sees other processes' increments (by polling, every `watch_poll_ms`) end at the
/// final count, never backwards, and slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let Some(table) = Table::new("watch").await else {
        return;
    };
    mp_storage_tests::watch::other_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("mysql"),
    )
    .await;
}
