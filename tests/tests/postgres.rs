//! The PostgreSQL driver: the behavior suite, and what only a SQL server shows: names full of
//! quotes, backslashes and LIKE wildcards, binary-looking bytes and 2,048-byte keys, the exact
//! bytes of records, one statement per warm update, terminated backends (under load, every
//! 100 ms), statement timeouts and refused access as typed errors, records corrupted by hand,
//! a server that is down, and several processes on one scope.
//!
//! Needs `MP_TEST_POSTGRES_URL` (for example `postgres://postgres@127.0.0.1:5432/test`: a user
//! that may create tables, databases and roles, and terminate backends); unset, every case is
//! skipped with a printed reason, or fails under `MP_TEST_REQUIRE_SERVERS=1`. Each case below
//! works in a table (or database) of its own and drops it at the end, panic or not.

mp_storage::behavior_suite!(mp_storage_tests::targets::postgres());

use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::driver::postgres::CONNECT_TIMEOUT;
use mp_storage::{BackendKind, CasOutcome, Driver, Error, RetryPolicy, Storage, Write};
use mp_storage_tests::targets::server_url;
use mp_storage_tests::url::{with_db, with_option};
use mp_storage_tests::{postgres_connect, rev, unique_name, Counter};
use serde_json::{json, Value};

const VAR: &str = "MP_TEST_POSTGRES_URL";

/// The test server's URL, or `None` to skip.
fn url() -> Option<String> {
    server_url(VAR, "postgres")
}

/// A raw connection to the test server.
async fn admin(url: &str) -> tokio_postgres::Client {
    postgres_connect(url).await.expect("an admin connection")
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
        mp_storage_tests::postgres_cleanup(
            &self.base,
            format!("DROP TABLE IF EXISTS \"{}\"", self.name),
        );
    }
}

/// A database of the case's own, so that its backends can be told apart from everyone else's.
/// Dropped with the value.
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
        admin(&base)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the test database");
        let url = with_db(&base, &name);
        Some(Database { base, name, url })
    }

    /// Terminates every backend on this database; returns how many.
    async fn kill_all(&self, admin: &tokio_postgres::Client) -> u64 {
        let row = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("terminate backends");
        u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)
    }

    /// Transactions committed and rolled back on this database, once every backend on it has
    /// ended and its statistics are in (they are sent when a backend exits).
    async fn transactions(&self, admin: &tokio_postgres::Client) -> i64 {
        let until = Instant::now() + Duration::from_secs(15);
        let mut last = -1;
        loop {
            let row = admin
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = $1), \
                     (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1)",
                    &[&self.name],
                )
                .await
                .expect("read the statistics");
            let (backends, xacts): (i64, i64) = (row.get(0), row.get(1));
            if backends == 0 && xacts == last {
                return xacts;
            }
            assert!(Instant::now() < until, "the statistics never settled");
            last = if backends == 0 { xacts } else { -1 };
            // Statistics read in a transaction stay as they were: start a new one each time.
            admin
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .expect("clear the statistics snapshot");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        mp_storage_tests::postgres_cleanup(
            &self.base,
            format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

fn write(data: &[u8], token: u64) -> Write<'_> {
    mp_storage_tests::write_with(0, data, token, 1_000)
}

/// Quotes, backslashes, LIKE wildcards and bytes that look like `bytea` escapes are plain
/// characters of a name: every name keeps its own row, and a prefix matches only names that
/// really start with it.
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
        "\\x00ff",
        "\\000",
        "E'\\n'",
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
        "\u{1}\u{2}\u{3}",
        "\u{1b}[0m",
        "\u{7f}",
        "\u{7f}z",
        "\u{ff}\u{fe}",
        "\u{fffd}",
        "$1",
        "x'); DROP TABLE mp_scopes; --",
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
        "a_", "a%", "%", "_", "\\", "\\\\", "\\x", "it'", "100", "a", "A", "a ", "\u{7f}", "e",
        "x'", "\u{1}", "\u{ff}", "$",
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
    let name_c = "c".repeat(mp_storage::MAX_NAME_LEN);
    assert_eq!(prefix.len() + name_c.len(), mp_storage::MAX_KEY_LEN);
    for name in [&name_a, &name_b, &name_c] {
        for _ in 0..2 {
            st.scoped(name, |c: &mut Counter| c.count += 1)
                .await
                .expect("update");
        }
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
    let odd_tokens = [u64::MAX, 1, 0x8000_0000_0000_0000, 0xff28_c3a0_00e9_5c27];

    assert_eq!(
        d.cas("k", rev(5, 0), write(&data, 1)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert_eq!(
        d.cas("k", None, write(&data, odd_tokens[0])).await.unwrap(),
        CasOutcome::Committed(1_000)
    );
    match d.cas("k", None, write(b"other", 9)).await.unwrap() {
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!((r.version, r.schema), (1_000, 0));
            assert_eq!(r.data, data);
            assert_eq!(r.tokens, vec![odd_tokens[0]]);
        }
        other => panic!("{other:?}"),
    }
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

/// A table that exists with other columns is refused at open, not on the first write; a bad
/// table name is an URL error.
#[tokio::test]
async fn foreign_table_and_bad_names_are_refused() {
    let Some(base) = url() else {
        return;
    };
    let name = unique_name("foreign");
    let conn = admin(&base).await;
    conn.batch_execute(&format!("CREATE TABLE \"{name}\" (id INT PRIMARY KEY)"))
        .await
        .expect("create a foreign table");
    let r = Storage::open(&with_option(&base, "table", &name)).await;
    conn.batch_execute(&format!("DROP TABLE \"{name}\""))
        .await
        .expect("drop");
    match r {
        Err(e @ Error::Backend { .. }) => {
            assert!(e.to_string().contains("not an mp-storage table"), "{e}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    for bad in ["a-b", "a%22b", "", "x%20y", &"t".repeat(64)] {
        let r = Storage::open(&with_option(&base, "table", bad)).await;
        assert!(
            matches!(r, Err(Error::InvalidUrl { .. })),
            "{bad:?}: {:?}",
            r.map(|_| ())
        );
    }
}

/// A warm uncontended update is one statement. Counted from the server's `pg_stat_database`
/// (`xact_commit + xact_rollback` of a database of the case's own: every autocommitted
/// statement is one transaction; pg_stat_statements is not needed). Two runs, one of N warm
/// updates more than the other, each opening its own pool and closing it so that its
/// statistics are in: the difference, per update, is what a warm update costs.
#[tokio::test]
async fn warm_update_is_one_statement() {
    let Some(db) = Database::new("stmts").await else {
        return;
    };
    let admin = admin(&db.base).await;
    const N: i64 = 300;
    async fn run(url: &str, n: i64) {
        let st = Storage::open(url).await.expect("open");
        for _ in 0..3 + n {
            st.scoped("warm", |c: &mut Counter| c.count += 1)
                .await
                .unwrap();
        }
    }
    let start = db.transactions(&admin).await;
    run(&db.url, 0).await;
    let short = db.transactions(&admin).await;
    run(&db.url, N).await;
    let long = db.transactions(&admin).await;
    let per_update = ((long - short) - (short - start)) as f64 / N as f64;
    println!(
        "statements per warm update: {per_update:.3} ({} transactions for the short run, {} \
         for the long one)",
        short - start,
        long - short
    );
    assert!(per_update <= 1.1, "{per_update} statements per warm update");
    let st = Storage::open(&db.url).await.unwrap();
    assert_eq!(
        st.get::<Counter>("warm").await.unwrap().unwrap().count,
        6 + N as u64
    );
}

/// 4 processes × 8 tasks × 250 increments of one scope: exact, and every count distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_increment_exactly() {
    let Some(table) = Table::new("procs").await else {
        return;
    };
    drop(table.driver().await);
    let total = mp_storage_tests::multi_process_increments(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("postgres"),
        "hot",
        4,
        8,
        250,
    )
    .await;
    assert_eq!(total, 8_000);
}

/// Two processes × 16 tasks on one scope for 2 s: exact, every count distinct; each process's
/// share and tail latency are printed (the bench measures them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_hot_scope() {
    let Some(table) = Table::new("fair").await else {
        return;
    };
    drop(table.driver().await);
    let per = mp_storage_tests::fair_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("postgres-fair"),
        "hot",
        2,
        16,
        2.0,
    )
    .await;
    assert!(per.iter().sum::<u64>() > 0);
}

/// Backends terminated (`pg_terminate_backend`) every 100 ms for 3 s under 8 tasks: every
/// failure is typed, nothing is lost, nothing applied twice (see `mp_storage_tests::kill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_lose_and_double_nothing() {
    let Some(db) = Database::new("killload").await else {
        return;
    };
    let killer = Arc::new(admin(&db.base).await);
    mp_storage_tests::kill::kill_under_load(&db.url, "postgres-kill", || {
        let killer = killer.clone();
        let db = &db;
        async move { db.kill_all(&killer).await }
    })
    .await;
}

/// An update waiting on a row lock past the `statement_timeout` is a timeout error; a role
/// without rights on the table is refused access; both typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeouts_and_refused_access_are_typed() {
    let Some(table) = Table::new("typed").await else {
        return;
    };
    table
        .storage()
        .await
        .set("locked", &Counter { count: 1 })
        .await
        .unwrap();
    let quick = with_option(&table.url, "options", "-c%20statement_timeout%3D300");
    let d = mp_storage::driver::open(&quick).await.expect("open");
    let current = d.load("locked").await.unwrap().expect("a record");
    let mut locker = admin(&table.base).await;
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        &format!(
            "SELECT 1 FROM \"{}\" WHERE name = $1 FOR UPDATE",
            table.name
        ),
        &[&&b"locked"[..]],
    )
    .await
    .unwrap();
    let e = d
        .cas(
            "locked",
            Some(current.revision()),
            write(b"{\"count\":2}", 5),
        )
        .await
        .expect_err("the update waits past the statement timeout");
    assert_eq!(e.backend_kind(), Some(BackendKind::Timeout), "{e}");
    tx.rollback().await.unwrap();
    assert_eq!(d.load("locked").await.unwrap(), Some(current));

    let role = unique_name("role");
    let admin = admin(&table.base).await;
    admin
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN"))
        .await
        .unwrap();
    let url = table.url.replacen("://", &format!("://{role}@"), 1);
    // The base URL has a user already: the last one before the host is taken.
    let url = match url.split_once('@') {
        Some((head, rest)) if rest.contains('@') => {
            format!("{head}@{}", rest.split_once('@').map_or(rest, |(_, r)| r))
        }
        _ => url,
    };
    let r = Storage::open(&url).await;
    admin
        .batch_execute(&format!("DROP ROLE \"{role}\""))
        .await
        .unwrap();
    match r {
        Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::PermissionDenied), "{e}"),
        Ok(_) => panic!("a role without rights opened the table"),
    }
}

/// A server that is down (or a host that does not answer) fails with a connection error
/// within the connect timeout, never hangs; a refused connection names the server.
#[tokio::test]
async fn down_server_is_a_connection_error_within_the_bound() {
    if url().is_none() {
        return;
    }
    for down in [
        "postgres://postgres@127.0.0.1:1/test",
        // Not routed: the connect attempt hangs until the driver's own timeout.
        "postgres://postgres@10.255.255.1:5432/test",
    ] {
        let started = Instant::now();
        let r = Storage::open(down).await;
        let took = started.elapsed();
        match r {
            Err(e) => {
                assert_eq!(
                    e.backend_kind(),
                    Some(BackendKind::Connection),
                    "{down}: {e}"
                );
                if down.contains(":1/") {
                    assert!(
                        e.to_string()
                            .contains("cannot connect to 127.0.0.1:1: connection refused"),
                        "{e}"
                    );
                }
            }
            Ok(_) => panic!("{down} opened"),
        }
        assert!(
            took <= CONNECT_TIMEOUT + Duration::from_secs(1),
            "{down}: took {took:?}"
        );
    }
}

/// A row corrupted by hand: data that is not the type's JSON is a decode error, a broken token
/// column is a corrupt-record error; neither is overwritten, by an update or by a `set`.
#[tokio::test]
async fn postgres_record_corrupted_by_hand_is_left_untouched() {
    let Some(table) = Table::new("corrupt").await else {
        return;
    };
    // No cache: this handle sees the store as another process would.
    let st = Storage::builder()
        .cache_capacity(0)
        .open(&table.url)
        .await
        .expect("open");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    st.set("t", &Counter { count: 6 }).await.expect("set");
    let conn = admin(&table.base).await;
    let t = &table.name;
    conn.execute(
        &format!("UPDATE \"{t}\" SET data = $1 WHERE name = $2"),
        &[&&b"{\"count\": \"five\""[..], &&b"c"[..]],
    )
    .await
    .expect("corrupt data");
    conn.execute(
        &format!("UPDATE \"{t}\" SET tokens = $1 WHERE name = $2"),
        &[&&b"abc"[..], &&b"t"[..]],
    )
    .await
    .expect("corrupt tokens");
    let snapshot = |name: &'static str| {
        let conn = &conn;
        async move {
            let row = conn
                .query_one(
                    &format!("SELECT version, data, tokens FROM \"{t}\" WHERE name = $1"),
                    &[&name.as_bytes()],
                )
                .await
                .expect("read the row");
            (
                row.get::<_, i64>(0),
                row.get::<_, Vec<u8>>(1),
                row.get::<_, Vec<u8>>(2),
            )
        }
    };
    let (before_c, before_t) = (snapshot("c").await, snapshot("t").await);

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
    assert!(e.to_string().contains(t.as_str()), "{e}");
    let e = st
        .set("t", &Counter { count: 9 })
        .await
        .expect_err("a set over corrupt tokens");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert_eq!(snapshot("c").await, before_c);
    assert_eq!(snapshot("t").await, before_t);
    // A delete removes a corrupt record.
    assert!(st.remove("t").await.unwrap());
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
    assert_eq!(mp_storage_tests::increment(&st, "again").await.unwrap(), 1);
    let admin = admin(&table.base).await;
    // Every row but the sweep row (whose name starts with NUL).
    let sql = format!(
        "SELECT count(*) FROM \"{}\" WHERE substr(name, 1, 1) <> '\\x00'::bytea",
        table.name
    );
    let n: i64 = admin.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(n, 4, "a and b are still stored, only hidden");
    assert_eq!(st.list("").await.unwrap(), ["again", "c"]);
    assert_eq!(driver.sweep(1000).await.unwrap(), 2);
    let n: i64 = admin.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    assert!(st
        .expire("c", Some(Duration::from_millis(50)))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Another process's sweep within the interval does nothing.
    assert_eq!(table.driver().await.sweep(1000).await.unwrap(), 0);
    assert_eq!(st.get::<Counter>("c").await.unwrap(), None);
    assert_eq!(
        st.get::<Counter>("again").await.unwrap().map(|c| c.count),
        Some(1)
    );
}

/// Statements in flight on backends that are terminated fail with connection errors (the
/// outcome unknown to the caller, settled by the engine); the pool then replaces its
/// connections and the next calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_in_flight_give_typed_errors() {
    let Some(db) = Database::new("kill").await else {
        return;
    };
    let st = Storage::open(&db.url).await.expect("open");
    st.set("locked", &Counter { count: 1 }).await.unwrap();
    let driver = mp_storage::driver::postgres::PostgresDriver::open(&db.url)
        .await
        .expect("open the driver");
    let current = driver.load("locked").await.unwrap().expect("a record");

    // Hold the row's lock from another database's session, so that updates of it wait in
    // the server: surely in flight.
    let mut locker = admin(&db.url).await;
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM mp_scopes WHERE name = $1 FOR UPDATE",
        &[&&b"locked"[..]],
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
    let killer = admin(&db.base).await;
    let killed: i64 = killer
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed > 0);
    for w in waiting {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a terminated call returns")
            .expect("join");
        match r {
            Err(e) if e.backend_kind() == Some(BackendKind::Connection) => {}
            other => panic!("expected a connection error, got {other:?}"),
        }
    }
    tx.rollback().await.unwrap();
    let r = driver.load("locked").await.unwrap().expect("a record");
    assert_eq!(
        r.version, current.version,
        "no terminated update took effect"
    );
    assert_eq!(
        driver
            .cas("locked", Some(r.revision()), write(b"{\"count\":5}", 99))
            .await
            .unwrap(),
        CasOutcome::Committed(r.version + 1)
    );
    for _ in 0..5 {
        st.scoped("locked", |c: &mut Counter| c.count += 1)
            .await
            .expect("an update after the terminations");
    }
    assert_eq!(
        st.get::<Counter>("locked").await.unwrap().unwrap().count,
        10
    );
}

/// Waits (at most 5 s) until an update of `table` waits on a row lock in the server.
async fn wait_for_update(admin: &tokio_postgres::Client, table: &str) {
    let pattern = format!("WITH w AS (UPDATE \"{table}\"%");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE $1 AND wait_event_type = 'Lock'",
                &[&pattern],
            )
            .await
            .expect("read pg_stat_activity")
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the update never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The double apply of 0.1, on PostgreSQL: an update's statement waits on a row lock another
/// session holds; the client side of its connection is cut (a load balancer reset), so the
/// client gives up while the statement goes on waiting in the server; the lock is released a
/// little later and the lost statement commits. The engine settles it from the tokens: the
/// update ends with `Ok(1)` and 1 stored (or a typed `CommitUnknown` with at most 1 stored),
/// never `Ok(2)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_update_waiting_on_a_row_lock_is_applied_once() {
    let Some(table) = Table::new("late").await else {
        return;
    };
    let proxy =
        mp_storage_tests::proxy::Proxy::start(mp_storage_tests::url::host_port(&table.url)).await;
    let st = Storage::open(&mp_storage_tests::url::via(&table.url, proxy.addr()))
        .await
        .expect("open through the proxy");
    let direct = Storage::builder()
        .cache_capacity(0)
        .open(&table.url)
        .await
        .expect("open");
    let mut locker = admin(&table.base).await;
    let watcher = admin(&table.base).await;
    let (mut done, mut unknown) = (0, 0);
    for (round, release_ms) in [300u64, 100, 600].into_iter().enumerate() {
        let name = format!("n{round}");
        st.set(&name, &Counter { count: 0 }).await.unwrap();
        let tx = locker.transaction().await.unwrap();
        tx.execute(
            &format!(
                "SELECT 1 FROM \"{}\" WHERE name = $1 FOR UPDATE",
                table.name
            ),
            &[&name.as_bytes()],
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
        wait_for_update(&watcher, &table.name).await;
        proxy.cut_clients();
        tokio::time::sleep(Duration::from_millis(release_ms)).await;
        tx.rollback().await.unwrap();
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
    eprintln!("late updates: {done} committed, {unknown} unknown");
}

/// A server that goes down under a warm cache (the proxy in front of it stops): an update is a
/// connection error (retryable, nothing written) within the connect timeout and a second; the
/// handle works again, with the count exact, once the server is back.
#[tokio::test]
async fn a_server_down_under_a_warm_cache_is_a_connection_error() {
    let Some(table) = Table::new("downwarm").await else {
        return;
    };
    let target = mp_storage_tests::url::host_port(&table.url);
    let proxy = mp_storage_tests::proxy::Proxy::start(target.clone()).await;
    let st = Storage::open(&mp_storage_tests::url::via(&table.url, proxy.addr()))
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
    let back = mp_storage_tests::proxy::Proxy::restart_on(proxy.addr(), target).await;
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
        "postgres-bank",
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

/// The bank across processes while `pg_terminate_backend` ends every backend on its database
/// every 100 ms: 3 processes x 4 tasks over 16 accounts for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_backends_terminated() {
    let Some(db) = Database::new("bankkill").await else {
        return;
    };
    drop(
        mp_storage::driver::open(&db.url)
            .await
            .expect("create the table"),
    );
    let killer = Arc::new(admin(&db.base).await);
    let kill = || {
        let killer = killer.clone();
        let db = &db;
        async move { db.kill_all(&killer).await }
    };
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &db.url,
        "postgres-bank-kill",
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

// ---------------------------------------------------------------------------------------------
// Exclusive updates across processes (see `mp_storage_tests::lease`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let Some(table) = Table::new("lease").await else {
        return;
    };
    drop(table.driver().await);
    let prefix = mp_storage_tests::unique_prefix("postgres-lease");
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
    let prefix = mp_storage_tests::unique_prefix("postgres-lease");
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
    let prefix = mp_storage_tests::unique_prefix("postgres-lease");
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &prefix,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Watching.

/// A watcher sees other processes' increments (by `NOTIFY` from the table's trigger) end at the
/// final count, never backwards, and slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let Some(table) = Table::new("watch").await else {
        return;
    };
    // Once by polling (the default), once by notifications.
    mp_storage_tests::watch::other_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table.url,
        &mp_storage_tests::unique_prefix("postgres"),
    )
    .await;
    let table_url = with_option(&table.url, "notify", "true");
    mp_storage_tests::watch::other_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &table_url,
        &mp_storage_tests::unique_prefix("postgres"),
    )
    .await;
}

/// `pg_terminate_backend` of the `LISTEN` connection: the watcher reconnects by itself and
/// misses nothing committed meanwhile; one `LISTEN` connection serves every watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_its_connection_terminated() {
    let Some(mut table) = Table::new("watchkill").await else {
        return;
    };
    // The LISTEN connection exists with notifications on.
    table.url = with_option(&table.url, "notify", "true");
    let admin = admin(&table.base).await;
    let (st, writer) = (table.storage().await, table.storage().await);
    let listening = format!("LISTEN \"{}\"", table.name);
    let listeners = || async {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1",
                &[&listening],
            )
            .await
            .expect("count the listeners");
        row.get::<_, i64>(0)
    };
    mp_storage_tests::watch::survives_a_cut(&st, &writer, || async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while listeners().await == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(listeners().await, 1, "one LISTEN connection");
        let row = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
                &[&listening],
            )
            .await
            .expect("terminate the LISTEN connection");
        usize::try_from(row.get::<_, i64>(0)).unwrap_or(0)
    })
    .await;
    // Many watchers, still one LISTEN connection; none once they are gone.
    let mut watches = Vec::new();
    for i in 0..100 {
        watches.push(st.watch::<Counter>(format!("w{}", i % 10)).await.unwrap());
    }
    for w in &mut watches {
        mp_storage::testkit::cases::next_item(w, "the first value")
            .await
            .unwrap();
    }
    // The feed connects in the background: wait (bounded) until it listens, then count. The
    // server may still list the connection of the feed that ended with the watcher above for
    // a moment after the feed dropped it: wait (bounded) for that one to go too; a connection
    // kept open would still be counted after 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while listeners().await != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        listeners().await,
        1,
        "one LISTEN connection for 100 watchers"
    );
    drop(watches);
    let deadline = Instant::now() + Duration::from_secs(5);
    while listeners().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the LISTEN connection outlived its watchers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
