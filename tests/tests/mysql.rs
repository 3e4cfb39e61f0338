//! The MySQL driver: the behavior suite, and what only a SQL server shows: names full of quotes,
//! backslashes and LIKE wildcards, the exact bytes of records, one statement per warm update,
//! killed connections, a server that is down, and several processes on one scope.
//!
//! Needs `MP_TEST_MYSQL_URL` (for example `mysql://root@127.0.0.1:3306/test`: a user that may
//! create tables and databases, read the global status and KILL its own connections); unset,
//! every case is skipped with a printed reason, or fails under `MP_TEST_REQUIRE_SERVERS=1`.
//! Each case below works in a table (or database) of its own and drops it at the end, panic
//! or not.

mp_storage_tests::behavior_suite!(mp_storage_tests::targets::mysql());

use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::driver::mysql::{MysqlDriver, CONNECT_TIMEOUT};
use mp_storage::{BackendKind, CasOutcome, Driver, Error, RetryPolicy, Storage, Write};
use mp_storage_tests::targets::server_url;
use mp_storage_tests::Counter;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

const VAR: &str = "MP_TEST_MYSQL_URL";

/// The test server's URL, or `None` to skip.
fn url() -> Option<String> {
    server_url(VAR, "mysql")
}

/// A random lower-case identifier starting with `tag`.
fn unique(tag: &str) -> String {
    format!("mp_t_{tag}_{:012x}", rand::random::<u64>() >> 16)
}

/// `url` with `key=value` added to its query.
fn with_option(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{db}", &base[..path]);
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A raw connection to the test server (its query string dropped).
async fn admin(url: &str) -> mysql_async::Conn {
    let base = url.split('?').next().unwrap_or(url);
    let opts = mysql_async::Opts::from_url(base).expect("a mysql_async URL");
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
        let name = unique(tag);
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
        let name = unique(tag);
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
    Write {
        schema: 0,
        data,
        token,
        initial_version: 1_000,
    }
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
    let odd_tokens = [u64::MAX, 0, 0x8000_0000_0000_0000, 0xff28_c3a0_00e9_5c27];

    // Update of an absent key: conflict, no record.
    assert_eq!(
        d.cas("k", Some(5), write(&data, 1)).await.unwrap(),
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
            d.cas("k", Some(version), write(&data, t)).await.unwrap(),
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
        .cas("k", Some(version - 1), write(b"stale", 7))
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(r)) => assert_eq!((r.version, &r.tokens), (version, &tokens)),
        other => panic!("{other:?}"),
    }
    // Many writes keep the last 16 tokens, oldest first.
    for t in 100..130u64 {
        d.cas("k", Some(version), write(b"{}", t)).await.unwrap();
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
    let name = unique("foreign");
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
        let version = current.version;
        waiting.push(tokio::spawn(async move {
            driver
                .cas("locked", Some(version), write(b"{\"count\":2}", t))
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
            .cas("locked", Some(r.version), write(b"{\"count\":5}", 99))
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
