//! The repository's test helpers: the drivers as behavior-suite targets, a bank of accounts
//! moved between by several-scope commits ([`bank`]), a fault-injecting driver, connections killed under load, a TCP proxy that breaks the network on cue, a raw
//! RESP client, URL edits, unique names, cleanups, and the multi-process tests' workers.
//!
//! The behavior suite itself ships with mp-storage (feature `testkit`). A driver joins it with
//! one test file, `tests/tests/<driver>.rs`:
//!
//! ```ignore
//! mp_storage::behavior_suite!(mp_storage_tests::targets::file());
//! ```
//!
//! The macro expands into one test per case of [`mp_storage::testkit::cases`], each on a fresh
//! [`Target`] (a driver and a key prefix of its own). Server drivers read their URLs from
//! `MP_TEST_REDIS_URL`, `MP_TEST_MYSQL_URL` and `MP_TEST_POSTGRES_URL`: unset means the cases
//! pass as skipped with a printed reason; with `MP_TEST_REQUIRE_SERVERS=1` an unset or
//! unreachable server fails them.

pub mod bank;
pub mod cluster;
pub mod faults;
pub mod kill;
pub mod lease;
pub mod proxy;
pub mod resp;
pub mod targets;
pub mod url;
pub mod watch;

use std::collections::HashSet;
use std::process::{Command, Stdio};

use mp_storage::{Storage, Write};

pub use mp_storage::behavior_suite;
pub use mp_storage::testkit::{increment, unique_prefix, write, Counter, Target};

/// A write as the engine would hand it to a driver, every field chosen by the test.
pub fn write_with(schema: u32, data: &[u8], token: u64, initial_version: u64) -> Write<'_> {
    Write::new(schema, data, token, initial_version)
}

/// The revision a compare-and-swap expects: `version` with last token `token`.
pub fn rev(version: u64, token: u64) -> Option<mp_storage::Revision> {
    Some(mp_storage::Revision { version, token })
}

/// A random lower-case identifier starting with `mp_t_<tag>_` (a table or database name).
pub fn unique_name(tag: &str) -> String {
    format!("mp_t_{tag}_{:012x}", rand::random::<u64>() >> 16)
}

/// A key prefix of one test's own on the Redis server of `MP_TEST_REDIS_URL`
/// (`mptest:<tag>:<hex>:`), for drivers opened with it as their `prefix=`. Dropping it deletes
/// every key under it (through [`delete_under`], so also when the test panics).
pub struct RedisPrefix(String);

impl RedisPrefix {
    /// A fresh prefix tagged `tag`.
    pub fn new(tag: &str) -> RedisPrefix {
        RedisPrefix(format!("mptest:{tag}:{:016x}:", rand::random::<u64>()))
    }
}

impl std::ops::Deref for RedisPrefix {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for RedisPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(url) = std::env::var("MP_TEST_REDIS_URL") else {
            return;
        };
        // The driver over this prefix lists and deletes exactly its keys, corrupt ones too.
        delete_under(&url::with_query(&url, &url::prefix_query(&self.0)), "");
    }
}

/// Runs `procs` `mp-worker` processes at once (`worker` is the binary's path) on scope `scope`
/// under `prefix` on `url`, each with `args` after those; waits for them all, fails when one
/// failed, and returns their standard outputs.
pub async fn run_workers(
    worker: &str,
    procs: usize,
    url: &str,
    prefix: &str,
    scope: &str,
    args: &[&str],
) -> Vec<String> {
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(worker)
                .args(["--url", url, "--prefix", prefix, "--scope", scope])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {worker}: {e}"))
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("worker output"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    outputs
        .into_iter()
        .map(|out| {
            assert!(
                out.status.success(),
                "a worker failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

/// Runs `procs` worker processes (`worker` is the path of the `mp-worker` binary), each with
/// `tasks` tasks doing `increments` increments of scope `scope` under `prefix` on `url`, and
/// checks that the final count is exactly the number of increments and that every count a
/// worker was handed is distinct. Returns the total.
pub async fn multi_process_increments(
    worker: &str,
    url: &str,
    prefix: &str,
    scope: &str,
    procs: usize,
    tasks: usize,
    increments: usize,
) -> u64 {
    let (tasks_arg, increments_arg) = (tasks.to_string(), increments.to_string());
    let outputs = run_workers(
        worker,
        procs,
        url,
        prefix,
        scope,
        &["--tasks", &tasks_arg, "--increments", &increments_arg],
    )
    .await;
    let mut seen = HashSet::new();
    for out in &outputs {
        for line in out.lines() {
            let n: u64 = line.trim().parse().expect("a count per line");
            assert!(seen.insert(n), "count {n} was handed out twice");
        }
    }
    let total = (procs * tasks * increments) as u64;
    assert_eq!(seen.len() as u64, total, "every increment reports a count");
    assert!(
        seen.iter().all(|n| (1..=total).contains(n)),
        "counts are 1..=total"
    );
    let st = Storage::builder()
        .key_prefix(prefix)
        .open(url)
        .await
        .expect("open for the final read");
    let stored: Counter = st.get(scope).await.expect("final read").unwrap_or_default();
    assert_eq!(stored.count, total, "the stored count is exact");
    total
}

/// Runs `procs` worker processes of `tasks` tasks each, all on scope `scope` under `prefix` on
/// `url`, for `secs` seconds; checks that every count handed out is distinct and that the stored
/// count is exactly their number; prints each process's share of the commits and its latency
/// (the shares are measured by the bench; here they are shown, not asserted). Returns the
/// commits per process.
pub async fn fair_processes(
    worker: &str,
    url: &str,
    prefix: &str,
    scope: &str,
    procs: usize,
    tasks: usize,
    secs: f64,
) -> Vec<u64> {
    let (tasks_arg, secs_arg) = (tasks.to_string(), secs.to_string());
    let outputs = run_workers(
        worker,
        procs,
        url,
        prefix,
        scope,
        &["--tasks", &tasks_arg, "--secs", &secs_arg],
    )
    .await;
    let mut seen = HashSet::new();
    let mut per_process = Vec::new();
    let mut report = Vec::new();
    for out in &outputs {
        let mut commits = 0u64;
        for line in out.lines() {
            if let Some(summary) = line.strip_prefix("# ") {
                report.push(summary.to_owned());
                continue;
            }
            let n: u64 = line.trim().parse().expect("a count per line");
            assert!(seen.insert(n), "count {n} was handed out twice");
            commits += 1;
        }
        per_process.push(commits);
    }
    let total: u64 = per_process.iter().sum();
    let st = Storage::builder()
        .key_prefix(prefix)
        .open(url)
        .await
        .expect("open for the final read");
    let stored: Counter = st.get(scope).await.expect("final read").unwrap_or_default();
    assert_eq!(stored.count, total, "the stored count is exact");
    assert!(
        seen.iter().all(|n| (1..=total).contains(n)),
        "counts are 1..=total"
    );
    let shares: Vec<String> = per_process
        .iter()
        .map(|c| format!("{:.0}%", *c as f64 * 100.0 / total.max(1) as f64))
        .collect();
    eprintln!(
        "{procs} processes x {tasks} tasks for {secs} s: {total} commits, shares {}; per process \
         (ops p50_us p99_us max_us): {}",
        shares.join(" "),
        report.join(" | ")
    );
    st.remove(scope).await.expect("clean up");
    per_process
}

/// Runs a cleanup to its end on a thread and a runtime of its own, so it can run in `Drop`
/// (inside a test's runtime, and also when the test panics). Failures are printed, never raised.
pub fn cleanup_blocking<F, Fut>(what: &str, make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let done = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(make())
    })
    .join();
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cleaning up {what} failed: {e}"),
        Err(_) => eprintln!("cleaning up {what} panicked"),
    }
}

/// Deletes every key under `prefix` through the driver `url` opens (see [`cleanup_blocking`]).
pub fn delete_under(url: &str, prefix: &str) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let what = format!("{} under {prefix:?}", mp_storage::redact_url(&url));
    cleanup_blocking(&what, move || async move {
        let driver = mp_storage::driver::open(&url)
            .await
            .map_err(|e| e.to_string())?;
        for key in driver.list(&prefix).await.map_err(|e| e.to_string())? {
            driver.delete(&key).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    });
}

/// Runs one cleanup statement on a MySQL connection of its own (see [`cleanup_blocking`]).
pub fn mysql_cleanup(url: &str, statement: String) {
    use mysql_async::prelude::Queryable;
    let base = url::without_query(url).to_owned();
    let what = format!("with `{statement}`");
    cleanup_blocking(&what, move || async move {
        let opts = mysql_async::Opts::from_url(&base).map_err(|e| e.to_string())?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        conn.query_drop(statement)
            .await
            .map_err(|e| e.to_string())?;
        conn.disconnect().await.map_err(|e| e.to_string())
    });
}

/// A raw PostgreSQL connection to `url` (its query string dropped), its connection task
/// spawned on the current runtime.
pub async fn postgres_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(url::without_query(url), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs one cleanup statement on a PostgreSQL connection of its own (see
/// [`cleanup_blocking`]).
pub fn postgres_cleanup(url: &str, statement: String) {
    let base = url.to_owned();
    let what = format!("with `{statement}`");
    cleanup_blocking(&what, move || async move {
        let client = postgres_connect(&base).await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&statement)
            .await
            .map_err(|e| e.to_string())
    });
}
