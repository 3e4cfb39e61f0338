//! The SQLite driver: the behavior suite, several processes on one database, writers (and
//! several-scope commits) killed with SIGKILL, group commit, a lock held by another process,
//! rows corrupted by hand, sweeps, and the disk space of small scopes.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::driver::sqlite::{SqliteDriver, SqliteOptions};
use mp_storage::driver::{Driver, Expiry};
use mp_storage::{BackendKind, Error, Storage};
use mp_storage_tests::Counter;

mp_storage::behavior_suite!(mp_storage_tests::targets::sqlite());

fn db_url(dir: &Path, options: &str) -> String {
    format!("sqlite:{}/scopes.db{options}", dir.display())
}

/// A raw connection to the test database, as another program would open it.
fn raw(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("scopes.db")).expect("raw connection");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    conn
}

// ---------------------------------------------------------------------------------------------
// Several processes

/// 4 processes x 8 tasks x 25 increments of one scope, durable: exactly 800, every count handed
/// out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "");
    let started = Instant::now();
    let total = mp_storage_tests::multi_process_increments(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "mp/",
        "hot",
        4,
        8,
        25,
    )
    .await;
    assert_eq!(total, 800);
    eprintln!(
        "4 processes x 8 tasks x 25 increments ({url}): {:?}",
        started.elapsed()
    );
    let conn = raw(dir.path());
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// Two processes x 16 tasks on one scope for 2 s (durable): exact, every count distinct; each
/// process's share and tail latency are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_hot_scope() {
    let dir = tempfile::tempdir().expect("temp dir");
    let per = mp_storage_tests::fair_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &db_url(dir.path(), ""),
        "mp/",
        "hot",
        2,
        16,
        2.0,
    )
    .await;
    assert!(
        per.iter().all(|n| *n > 0),
        "a process committed nothing: {per:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Group commit

/// 64 tasks each updating a scope of its own, durable: many updates share a transaction, and
/// every count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let driver = Arc::new(
        SqliteDriver::open(&db_url(dir.path(), ""))
            .await
            .expect("open"),
    );
    let st = Storage::with_driver(driver.clone()).expect("storage");
    let before = driver.writer_stats();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let st = st.clone();
            tokio::spawn(async move {
                for n in 1..=20u64 {
                    let got = mp_storage_tests::increment(&st, &format!("s{i}")).await;
                    assert_eq!(got.expect("increment"), n);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let after = driver.writer_stats();
    let (txns, jobs) = (
        after.transactions - before.transactions,
        after.jobs - before.jobs,
    );
    assert_eq!(jobs, 64 * 20);
    eprintln!(
        "64 tasks x 20 durable updates: {jobs} writes in {txns} transactions ({:.1} a commit)",
        jobs as f64 / txns as f64
    );
    assert!(
        txns * 4 <= jobs,
        "{jobs} writes took {txns} transactions: no group commit"
    );
    for i in 0..64 {
        let c: Option<Counter> = st.get(&format!("s{i}")).await.expect("get");
        assert_eq!(c.map(|c| c.count), Some(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Locks held by others

/// Another connection holding the write lock: a write waits for `busy_timeout`, then fails
/// with a typed, retryable, unsent timeout, having written nothing; reads go on meanwhile;
/// once the lock is released the same write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_a_typed_timeout_and_reads_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let st = Storage::open(&db_url(dir.path(), "?busy_timeout=300ms"))
        .await
        .expect("open");
    st.set("a", &Counter { count: 1 }).await.expect("set");
    let conn = raw(dir.path());
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let started = Instant::now();
    let e = st
        .scoped("a", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("the lock is held");
    assert_eq!(e.backend_kind(), Some(BackendKind::Timeout), "{e:?}");
    assert!(e.is_retryable(), "{e:?}");
    assert!(!e.may_have_happened(), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Reads never wait for a writer.
    let t = Instant::now();
    let c: Option<Counter> = st.get("a").await.expect("a read under the lock");
    assert_eq!(c.map(|c| c.count), Some(1));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    conn.execute_batch("ROLLBACK").expect("release");
    st.scoped("a", |c: &mut Counter| c.count += 1)
        .await
        .expect("after the release");
    let c: Option<Counter> = st.get("a").await.expect("get");
    assert_eq!(c.map(|c| c.count), Some(2));
}

// ---------------------------------------------------------------------------------------------
// Rows edited by hand, foreign files

#[tokio::test]
async fn rows_corrupted_by_hand_are_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let st = Storage::builder()
        .cache_capacity(0)
        .open(&db_url(dir.path(), "?fsync=false"))
        .await
        .expect("open");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    st.set("t", &Counter { count: 6 }).await.expect("set");
    st.set("v", &Counter { count: 7 }).await.expect("set");
    let conn = raw(dir.path());
    let edit = |sql: &str, name: &str| {
        conn.execute(sql, [name.as_bytes()]).expect("edit by hand");
    };
    edit(
        "UPDATE mp_scopes SET data = CAST('{\"count\": \"five\"' AS BLOB) WHERE name = ?1",
        "c",
    );
    edit(
        "UPDATE mp_scopes SET tokens = X'616263' WHERE name = ?1",
        "t",
    );
    edit("UPDATE mp_scopes SET version = 'high' WHERE name = ?1", "v");
    let snapshot = |name: &str| -> Vec<u8> {
        conn.query_row(
            "SELECT CAST(CAST(version AS TEXT) || hex(data) || hex(tokens) AS BLOB) \
             FROM mp_scopes WHERE name = ?1",
            [name.as_bytes()],
            |r| r.get(0),
        )
        .expect("snapshot")
    };
    let before: Vec<Vec<u8>> = ["c", "t", "v"].iter().map(|n| snapshot(n)).collect();

    let e = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("undecodable data");
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    for name in ["t", "v"] {
        let e = st
            .scoped(name, |c: &mut Counter| c.count += 1)
            .await
            .expect_err("a corrupt row");
        assert!(matches!(e, Error::Corrupt { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains("mp_scopes"), "{e}");
        let e = st
            .set(name, &Counter { count: 1 })
            .await
            .expect_err("a put over a corrupt row");
        assert!(matches!(e, Error::Corrupt { .. }), "{name}: {e:?}");
    }
    let after: Vec<Vec<u8>> = ["c", "t", "v"].iter().map(|n| snapshot(n)).collect();
    assert_eq!(before, after, "a corrupt row was written over");
    // Deleting removes a corrupt row.
    assert!(st.remove("t").await.expect("remove"));
    assert!(st.remove("v").await.expect("remove"));
    assert_eq!(st.list("").await.expect("list"), ["c"]);
}

/// The error of opening `url`, which must fail (`why`).
async fn open_err(url: &str, why: &str) -> Error {
    match Storage::open(url).await {
        Err(e) => e,
        Ok(_) => panic!("{url} opened: {why}"),
    }
}

#[tokio::test]
async fn foreign_files_and_tables_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database, just some text that is long enough ".repeat(40),
    )
    .expect("write");
    let e = open_err(
        &format!("sqlite:{}", text.display()),
        "a text file is not a database",
    )
    .await;
    assert!(matches!(e, Error::Backend { .. }), "{e:?}");
    let conn = raw(dir.path());
    conn.execute_batch("CREATE TABLE other (id INTEGER PRIMARY KEY)")
        .expect("a table of another shape");
    let e = open_err(&db_url(dir.path(), "?table=other"), "a foreign table").await;
    assert!(e.to_string().contains("not an mp-storage table"), "{e}");
    let e = open_err(&db_url(dir.path(), "?table=a%20b"), "a bad table name").await;
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
    // A directory that does not exist yet is made.
    let deep = dir.path().join("a/b/c.db");
    let st = Storage::open(&format!("sqlite:{}", deep.display()))
        .await
        .expect("open in a new directory");
    st.set("x", &Counter { count: 1 }).await.expect("set");
    assert!(deep.exists());
}

/// Names are blobs: SQL wildcards, case, trailing spaces and NUL-free bytes are exact.
#[tokio::test]
async fn names_with_sql_characters_are_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let st = Storage::open(&db_url(dir.path(), "?fsync=false"))
        .await
        .expect("open");
    let names = [
        "a%",
        "a_",
        "a\\",
        "A%",
        "a% ",
        "a'; DROP TABLE mp_scopes; --",
        "a\u{ff}",
    ];
    for (i, n) in names.iter().enumerate() {
        st.set(n, &Counter { count: i as u64 }).await.expect("set");
    }
    for (i, n) in names.iter().enumerate() {
        let c: Option<Counter> = st.get(n).await.expect("get");
        assert_eq!(c.map(|c| c.count), Some(i as u64), "{n:?}");
    }
    let mut listed = st.list("a%").await.expect("list");
    listed.sort();
    assert_eq!(listed, ["a%", "a% "]);
    assert_eq!(st.list("a_").await.expect("list"), ["a_"]);
}

// ---------------------------------------------------------------------------------------------
// Expiry

/// The sweep deletes expired rows in bounded batches, runs once per interval across the
/// drivers of a database, and never deletes a scope written again after it expired.
#[tokio::test]
async fn sweeps_delete_only_expired_rows_in_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "?fsync=false");
    let driver = SqliteDriver::open(&url).await.expect("open");
    let st = Storage::with_driver(Arc::new(driver.clone())).expect("storage");
    for i in 0..5 {
        st.set(&format!("old{i}"), &Counter { count: 1 })
            .await
            .expect("set");
        assert!(st
            .expire(&format!("old{i}"), Some(Duration::from_millis(50)))
            .await
            .expect("expire"));
    }
    st.set("again", &Counter { count: 1 }).await.expect("set");
    st.expire("again", Some(Duration::from_millis(50)))
        .await
        .expect("expire");
    st.set("keep", &Counter { count: 1 }).await.expect("set");
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Written again after it expired: a live scope of its own.
    assert_eq!(
        mp_storage_tests::increment(&st, "again")
            .await
            .expect("increment"),
        1
    );
    let rows = || -> i64 {
        raw(dir.path())
            .query_row("SELECT COUNT(*) FROM mp_scopes", [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(rows(), 7, "expired rows are hidden, not yet deleted");
    assert_eq!(st.list("").await.expect("list"), ["again", "keep"]);
    // Batches of 2: the first call is this interval's turn, the next go on while batches are
    // full.
    assert_eq!(driver.sweep(2).await.expect("sweep"), 2);
    assert_eq!(driver.sweep(2).await.expect("sweep"), 2);
    assert_eq!(driver.sweep(2).await.expect("sweep"), 1);
    assert_eq!(rows(), 2);
    // Another driver's sweep within the interval does nothing.
    st.expire("keep", Some(Duration::from_millis(10)))
        .await
        .expect("expire");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = SqliteDriver::open(&url).await.expect("open");
    assert_eq!(other.sweep(1000).await.expect("sweep"), 0);
    assert_eq!(rows(), 2);
    assert_eq!(st.list("").await.expect("list"), ["again"]);
    assert!(!driver.expire("keep", Expiry::Never).await.expect("expire"));
}

// ---------------------------------------------------------------------------------------------
// Disk space

/// 20,000 one-counter scopes take less than 200 bytes each in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_scopes_take_little_space() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, options) =
        SqliteOptions::from_url(&db_url(dir.path(), "?fsync=false")).expect("url");
    let driver = Arc::new(SqliteDriver::open_path(&path, options).await.expect("open"));
    let st = Storage::with_driver(driver.clone()).expect("storage");
    let n = 20_000usize;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let st = st.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(16) {
                    st.set(&format!("user:{i}"), &Counter { count: 1 })
                        .await
                        .expect("set");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert!(driver.checkpoint().await.expect("checkpoint"));
    let size = std::fs::metadata(&path).expect("size").len();
    let per = size as f64 / n as f64;
    eprintln!("{n} one-counter scopes: {size} bytes, {per:.1} bytes a scope");
    assert!(per < 200.0, "{per:.1} bytes a scope");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL

const KILL_CHILD_DB: &str = "MP_SQLITE_TEST_KILL_CHILD_DB";

/// Scopes of the kill test: each of 8 tasks increments its own.
const KILL_SCOPES: usize = 8;

/// Not a test on its own: the writer process of `killed_writers_lose_no_acknowledged_update`,
/// which runs this test binary again with `KILL_CHILD_DB` set. 8 tasks increment scopes
/// `k0`…`k7` forever (durable) and print `ack SCOPE N` once each count is committed.
#[test]
fn kill_child_writer() {
    let Ok(url) = std::env::var(KILL_CHILD_DB) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let st = Storage::open(&url).await.expect("open in the child");
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..KILL_SCOPES)
            .map(|i| {
                let (st, out) = (st.clone(), out.clone());
                tokio::spawn(async move {
                    loop {
                        let n = mp_storage_tests::increment(&st, &format!("k{i}"))
                            .await
                            .expect("increment in the child");
                        let mut out = out.lock().expect("stdout");
                        writeln!(out, "ack {i} {n}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
}

/// A writer process of 8 tasks killed with SIGKILL at a random moment, 20 times over
/// (`MP_KILL_ROUNDS` for more): the database opens and passes SQLite's integrity check, every
/// acknowledged update is there, and each scope holds at most one unacknowledged update more
/// (the batch in flight).
#[cfg(unix)]
#[test]
fn killed_writers_lose_no_acknowledged_update() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rounds: u32 = std::env::var("MP_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let deadline = Instant::now() + Duration::from_secs(120) * (rounds / 20).max(1);
    let mut before = vec![0u64; KILL_SCOPES];
    let mut in_flight = 0;
    for round in 0..rounds {
        assert!(Instant::now() < deadline, "took too long");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_DB, &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel::<(usize, u64)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test kill_child_writer ... ` before the first line.
                let Some(at) = line.find("ack ") else {
                    continue;
                };
                let mut parts = line[at + 4..].split_whitespace();
                if let (Some(Ok(i)), Some(Ok(n))) =
                    (parts.next().map(str::parse), parts.next().map(str::parse))
                {
                    let _ = tx.send((i, n));
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rand::random_range(5..200)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let _ = reader.join();
        let mut acked = before.clone();
        for (i, n) in std::iter::once(first).chain(rx.try_iter()) {
            assert!(i < KILL_SCOPES);
            assert!(
                n > before[i],
                "round {round}: count {n} of k{i} handed out again"
            );
            acked[i] = acked[i].max(n);
        }
        let stored = rt.block_on(async {
            let st = Storage::open(&url).await.expect("open after a kill");
            let names: Vec<String> = (0..KILL_SCOPES).map(|i| format!("k{i}")).collect();
            let got: Vec<Option<Counter>> = st.get_many(&names).await.expect("read after a kill");
            got.into_iter()
                .map(|c| c.map_or(0, |c| c.count))
                .collect::<Vec<u64>>()
        });
        for i in 0..KILL_SCOPES {
            assert!(
                stored[i] == acked[i] || stored[i] == acked[i] + 1,
                "round {round}: k{i} stored {}, last acknowledged {}",
                stored[i],
                acked[i]
            );
            in_flight += stored[i] - acked[i];
        }
        let check: String = raw(dir.path())
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok", "round {round}");
        before = stored;
    }
    eprintln!(
        "{rounds} kills: final counts {before:?}; {in_flight} updates were committed but not yet \
         acknowledged when their writer was killed"
    );
}

/// An account of the transfer test: a balance and the ids of the transfers it took part in.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug)]
struct Account {
    balance: i64,
    ledger: Vec<u64>,
}

impl mp_storage::Scope for Account {}

const ACCOUNTS: [&str; 4] = ["acct:a", "acct:b", "acct:c", "acct:d"];
const OPENING_BALANCE: i64 = 1000;
const TRANSFER_CHILD_DB: &str = "MP_SQLITE_TEST_TRANSFER_CHILD_DB";

/// Not a test on its own: the process of `killed_transfers_are_all_or_nothing`. Four tasks move
/// money between the accounts forever (several-scope commits, durable) and print `ack ID` once
/// each transfer is committed.
#[test]
fn kill_child_transfers() {
    let Ok(url) = std::env::var(TRANSFER_CHILD_DB) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let st = Storage::open(&url).await.expect("open in the child");
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (st, out) = (st.clone(), out.clone());
                tokio::spawn(async move {
                    loop {
                        let id = rand::random::<u64>() >> 1;
                        let from = rand::random_range(0..ACCOUNTS.len());
                        let to = (from + rand::random_range(1..ACCOUNTS.len())) % ACCOUNTS.len();
                        let amount = rand::random_range(1..=300i64);
                        let moved = st
                            .scoped_many(&[ACCOUNTS[from], ACCOUNTS[to]], |a: &mut [Account]| {
                                if a[0].balance < amount {
                                    return false;
                                }
                                a[0].balance -= amount;
                                a[1].balance += amount;
                                a[0].ledger.push(id);
                                a[1].ledger.push(id);
                                true
                            })
                            .await
                            .expect("a transfer in the child");
                        if moved {
                            let mut out = out.lock().expect("stdout");
                            writeln!(out, "ack {id}").expect("stdout");
                            out.flush().expect("stdout");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a transfer task");
        }
    });
}

/// A process moving money between four accounts killed with SIGKILL at random moments, 20
/// rounds: every account decodes, the money is all there, each transfer is in both of its
/// accounts' ledgers or in neither, and every acknowledged one is in both.
#[cfg(unix)]
#[test]
fn killed_transfers_are_all_or_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let st = Storage::open(&url).await.expect("open");
        for name in ACCOUNTS {
            let opening = Account {
                balance: OPENING_BALANCE,
                ledger: Vec::new(),
            };
            st.set(name, &opening).await.expect("an opening balance");
        }
    });
    let rounds: u32 = std::env::var("MP_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut acked: HashSet<u64> = HashSet::new();
    let mut transfers = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_transfers",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(TRANSFER_CHILD_DB, &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the mover");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("ack ") {
                    if let Ok(n) = line[at + 4..].trim().parse() {
                        let _ = tx.send(n);
                    }
                }
            }
        });
        acked.insert(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the mover acknowledged nothing"),
        );
        std::thread::sleep(Duration::from_micros(rand::random_range(0..150_000)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let _ = reader.join();
        acked.extend(rx.try_iter());
        let accounts: Vec<Account> = rt.block_on(async {
            let st = Storage::open(&url).await.expect("open after a kill");
            st.get_many(&ACCOUNTS)
                .await
                .unwrap_or_else(|e| panic!("round {round}: an account does not decode: {e}"))
                .into_iter()
                .map(|a| a.expect("an account"))
                .collect()
        });
        let total: i64 = accounts.iter().map(|a| a.balance).sum();
        assert_eq!(
            total,
            OPENING_BALANCE * ACCOUNTS.len() as i64,
            "round {round}: money is not conserved: {accounts:?}"
        );
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for a in &accounts {
            for id in &a.ledger {
                *seen.entry(*id).or_default() += 1;
            }
        }
        if let Some((id, n)) = seen.iter().find(|(_, n)| **n != 2) {
            panic!("round {round}: transfer {id} is in {n} ledgers");
        }
        if let Some(id) = acked.iter().find(|id| !seen.contains_key(id)) {
            panic!("round {round}: acknowledged transfer {id} is in no ledger");
        }
        transfers = seen.len();
    }
    eprintln!(
        "{rounds} rounds of a mover killed: {transfers} transfers committed ({} acknowledged)",
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Full disk

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        if !cfg!(target_os = "linux") {
            return Err("mounting a tmpfs is only tried on Linux".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The writer thread closes its connection a moment after the last handle is dropped.
        for _ in 0..40 {
            let unmounted = Command::new("umount")
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// On a full disk a write is a `Full` backend error that wrote nothing (safe to retry), the
/// old record is intact, other writes of the same batch are not lost, and writes work again
/// once there is space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_the_old_record() {
    let disk = match SmallDisk::mount("1m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED full_disk_keeps_the_old_record: {why}");
            return;
        }
    };
    let url = db_url(disk.dir.path(), "");
    let st = Storage::open(&url).await.expect("open");
    st.set("doc", &serde_json::json!({"text": "small"}))
        .await
        .expect("a small write fits");

    // A value larger than the disk.
    let big = serde_json::json!({ "text": "x".repeat(3 << 20) });
    let e = st
        .set("doc", &big)
        .await
        .expect_err("a write larger than the disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    let e = st
        .scoped("doc", |v: &mut serde_json::Value| *v = big.clone())
        .await
        .expect_err("an update larger than the disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    assert!(!e.may_have_happened(), "{e:?}");
    assert!(matches!(
        e,
        Error::Backend {
            driver: "sqlite",
            ..
        }
    ));

    // Fill the disk to the last byte, then try small updates.
    let filler = disk.dir.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
    }
    // The log may still have room from the write refused above: write until it is full too.
    // Each write fails with `Full` or is there after a reopen.
    let mut full = 0;
    let mut written = Vec::new();
    let text = "y".repeat(20 << 10);
    for i in 0..200 {
        let name = format!("more{i}");
        match st.set(&name, &serde_json::json!({ "text": text })).await {
            Ok(()) => written.push(name),
            Err(e) => {
                assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
                full += 1;
            }
        }
    }
    assert!(full > 0, "a full disk took 200 writes of 20 KiB");
    eprintln!(
        "on the full disk: {} writes fit, {full} were refused",
        written.len()
    );

    let fresh = Storage::open(&url).await.expect("reopen");
    assert_eq!(
        fresh
            .get::<serde_json::Value>("doc")
            .await
            .expect("old record"),
        Some(serde_json::json!({"text": "small"}))
    );
    for name in &written {
        let v: Option<serde_json::Value> = fresh.get(name).await.expect("a written scope");
        assert!(v.is_some(), "{name} was acknowledged and is gone");
    }

    // Space back: writes work again.
    std::fs::remove_file(&filler).expect("remove filler");
    st.scoped("doc", |v: &mut serde_json::Value| {
        v["text"] = "changed".into()
    })
    .await
    .expect("an update once space is back");
    assert_eq!(
        fresh.get::<serde_json::Value>("doc").await.expect("read"),
        Some(serde_json::json!({"text": "changed"}))
    );
    drop((st, fresh));
    let check: String = raw(disk.dir.path())
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// The bank across processes: 3 processes x 4 tasks over 8 accounts for 2 s (see
/// `mp_storage_tests::bank`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "fsync=false");
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "sqlite-bank",
        mp_storage_tests::bank::Shape {
            accounts: 8,
            procs: 3,
            tasks: 4,
            secs: 2.0,
        },
        None::<mp_storage_tests::bank::NoKill>,
    )
    .await;
}

/// The bank with its writers killed: 2 processes x 4 tasks over 8 accounts (durable writes),
/// both killed with SIGKILL at random moments, 6 rounds; after each, a fresh handle finds the
/// money conserved and every transfer in both ledgers or neither.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_killed_writers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "");
    mp_storage_tests::bank::killed_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "sqlite-bank-kill",
        8,
        2,
        4,
        6,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Exclusive updates across processes (see `mp_storage_tests::lease`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("lease.db").display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::exclusion_across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_outlived() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("lease.db").display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::killed_holder_is_outlived(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("lease.db").display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

/// A watcher sees other processes' increments (found by `PRAGMA data_version`) end at the final
/// count, never backwards, and slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "?fsync=false");
    mp_storage_tests::watch::other_processes(env!("CARGO_BIN_EXE_mp-worker"), &url, "mp/").await;
}

/// Within a process the writer's callers hint the watchers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_the_process_arrive_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = db_url(dir.path(), "?fsync=false");
    let watcher = Storage::open(&url).await.unwrap();
    let writer = Storage::open(&url).await.unwrap();
    let seen = mp_storage_tests::watch::latencies(&watcher, &writer, "fast", 20).await;
    let worst = seen[seen.len() - 1];
    eprintln!(
        "sqlite change to watcher: median {:?}, worst {worst:?}",
        seen[seen.len() / 2]
    );
    assert!(
        worst < Duration::from_millis(500),
        "a change took {worst:?}"
    );
}
