//! The behavior suite every mp-storage driver passes, and the helpers of the multi-process tests.
//!
//! A driver joins the suite with one test file, `tests/tests/<driver>.rs`:
//!
//! ```ignore
//! mp_storage_tests::behavior_suite!(mp_storage_tests::targets::file());
//! ```
//!
//! The macro expands into one `#[tokio::test]` per case of [`suite`], each on a fresh [`Target`]
//! (a driver and a key prefix of its own). Server drivers read their URLs from
//! `MP_TEST_REDIS_URL` and `MP_TEST_MYSQL_URL`: unset means the cases pass as skipped with a
//! printed reason; with `MP_TEST_REQUIRE_SERVERS=1` an unset or unreachable server fails them.

pub mod faults;
pub mod suite;
pub mod targets;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;

use mp_storage::{Driver, Storage, StorageBuilder};

pub use targets::Target;

/// The scope type the suite and the workers count with.
#[derive(
    mp_storage::Scope, serde::Serialize, serde::Deserialize, Default, Debug, Clone, PartialEq,
)]
pub struct Counter {
    /// The count.
    pub count: u64,
}

/// Adds one to the [`Counter`] in scope `name`; returns the new count.
pub async fn increment(st: &Storage, name: &str) -> Result<u64, mp_storage::Error> {
    st.scoped(name, |c: &mut Counter| {
        c.count += 1;
        c.count
    })
    .await
}

/// Expands into one `#[tokio::test]` per behavior case, each on the target the expression (a
/// future of `Option<Target>`) gives; `None` skips.
#[macro_export]
macro_rules! behavior_suite {
    ($target:expr) => {
        $crate::behavior_suite!(@cases $target;
            round_trip,
            absent_reads_default,
            noop_writes_nothing,
            create_if_absent,
            stale_version_rejected,
            versions_rise_and_tokens_are_kept,
            concurrent_increments_are_exact,
            stale_cache_is_corrected,
            read_only_from_stale_cache_is_confirmed,
            delete_and_recreate_is_not_aba,
            try_scoped_abort_writes_nothing,
            decode_failure_keeps_data,
            odd_names_are_distinct_and_exact,
            list_by_prefix_is_exact,
            remove_says_whether_it_existed,
            invalid_names_are_refused,
            too_large_is_refused,
            async_closure_updates,
            set_overwrites,
            non_finite_floats_are_refused,
            generated_names_round_trip,
            size_limit_is_exact
        );
    };
    (@cases $target:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(target) = $target.await else { return };
                $crate::suite::$case(&target).await;
            }
        )*
    };
}

/// A storage handle over `driver` with `prefix`, and the given builder's other settings.
pub fn storage_on(driver: &Arc<dyn Driver>, prefix: &str, builder: StorageBuilder) -> Storage {
    match builder.key_prefix(prefix).build(driver.clone()) {
        Ok(st) => st,
        Err(e) => panic!("building a storage failed: {e}"),
    }
}

/// A random key prefix, so that runs and cases never see each other's data.
pub fn unique_prefix(tag: &str) -> String {
    format!("t{}-{:016x}/", tag, rand::random::<u64>())
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
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(worker)
                .args([
                    "--url",
                    url,
                    "--prefix",
                    prefix,
                    "--scope",
                    scope,
                    "--tasks",
                    &tasks.to_string(),
                    "--increments",
                    &increments.to_string(),
                ])
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
    let mut seen = HashSet::new();
    for out in &outputs {
        assert!(
            out.status.success(),
            "a worker failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
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
    let base = url.split('?').next().unwrap_or(url).to_owned();
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
