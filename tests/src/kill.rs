//! Connections killed under load, for the server drivers' fault tests. Nothing may be lost or
//! applied twice: afterwards the stored count equals the number of updates that returned `Ok`
//! (plus at most those reported "commit unknown"), every `Ok` count is distinct, and every
//! failure is a typed error that says what happened. Beside them, clients that retry every
//! failure with an idempotency key get each request applied exactly once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mp_storage::{BackendKind, Error, Storage};

use crate::Counter;

/// What [`hammer`] saw: the `Ok` counts, the number of errors and how many of those were
/// "commit unknown" (the only ones that may have taken effect).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every count an update returned.
    pub ok: Vec<u64>,
    /// Updates that failed.
    pub errors: u64,
    /// Failures that were `CommitUnknown`.
    pub unknown: u64,
}

/// 8 tasks increment the scope `hot` until `stop` is notified.
pub async fn hammer(st: Storage, stop: Arc<tokio::sync::Notify>) -> Outcome {
    let done = Arc::new(AtomicBool::new(false));
    let mut joins = Vec::new();
    for _ in 0..8 {
        let st = st.clone();
        let done = done.clone();
        joins.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            while !done.load(Ordering::Relaxed) {
                match st
                    .scoped("hot", |c: &mut Counter| {
                        c.count += 1;
                        c.count
                    })
                    .await
                {
                    Ok(n) => out.ok.push(n),
                    Err(e) => {
                        assert_typed(&e);
                        out.errors += 1;
                        out.unknown += u64::from(matches!(e, Error::CommitUnknown { .. }));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            out
        }));
    }
    stop.notified().await;
    done.store(true, Ordering::Relaxed);
    let mut all = Outcome::default();
    for j in joins {
        let out = j.await.expect("task");
        all.ok.extend(out.ok);
        all.errors += out.errors;
        all.unknown += out.unknown;
    }
    all
}

/// What [`hammer_once`] saw: the requests that completed and the count each was answered.
#[derive(Debug, Default)]
pub struct OnceOutcome {
    /// The count each completed request got (its first commit's result).
    pub ok: Vec<u64>,
    /// Failed tries (each retried with the same idempotency key).
    pub retries: u64,
}

/// 4 tasks send requests to increment the scope `hot-once`, each with an idempotency key of its
/// own, and retry every failure with the same key until it succeeds, as a client of an HTTP API
/// that retries a 503 would; after `stop` each finishes the request it is on.
pub async fn hammer_once(st: Storage, stop: Arc<tokio::sync::Notify>) -> OnceOutcome {
    let done = Arc::new(AtomicBool::new(false));
    let mut joins = Vec::new();
    for task in 0..4 {
        let st = st.clone();
        let done = done.clone();
        joins.push(tokio::spawn(async move {
            let mut out = OnceOutcome::default();
            let mut request = 0u64;
            while !done.load(Ordering::Relaxed) {
                request += 1;
                let key = format!("req-{task}-{request}");
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match st
                        .idempotent(&key)
                        .scoped("hot-once", |c: &mut Counter| {
                            c.count += 1;
                            c.count
                        })
                        .await
                    {
                        Ok(n) => {
                            out.ok.push(n);
                            break;
                        }
                        Err(e) => {
                            assert_typed(&e);
                            assert!(
                                tokio::time::Instant::now() < until,
                                "request {key} kept failing: {e}"
                            );
                            out.retries += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }
            out
        }));
    }
    stop.notified().await;
    done.store(true, Ordering::Relaxed);
    let mut all = OnceOutcome::default();
    for j in joins {
        let out = j.await.expect("task");
        all.ok.extend(out.ok);
        all.retries += out.retries;
    }
    all
}

/// Checks that every request of [`hammer_once`] was applied exactly once: the stored count is
/// the number of requests, and their answers are distinct.
pub async fn check_once(st: &Storage, out: OnceOutcome) {
    let n = out.ok.len() as u64;
    let distinct: HashSet<u64> = out.ok.iter().copied().collect();
    assert_eq!(distinct.len() as u64, n, "two requests got the same count");
    let stored = st
        .get::<Counter>("hot-once")
        .await
        .expect("read")
        .map_or(0, |c| c.count);
    assert_eq!(
        stored, n,
        "{n} requests, each retried until it succeeded ({} retries): stored {stored}",
        out.retries
    );
    eprintln!(
        "{n} idempotent requests applied exactly once after {} retries; {} answered from a \
         receipt",
        out.retries,
        st.stats().replayed
    );
    st.remove("hot-once").await.expect("clean up");
}

/// A failure under connection kills must be a connection or timeout error, or commit unknown.
pub fn assert_typed(e: &Error) {
    let typed = matches!(e, Error::CommitUnknown { .. })
        || matches!(
            e.backend_kind(),
            Some(BackendKind::Connection | BackendKind::Timeout)
        );
    assert!(typed, "an unexpected error under connection kills: {e:?}");
}

/// Checks the outcome against the stored count of `hot` (read once the server answers again),
/// then removes it.
pub async fn check(st: &Storage, out: Outcome) {
    let Outcome {
        ok,
        errors,
        unknown,
    } = out;
    let n = ok.len();
    let distinct: HashSet<u64> = ok.into_iter().collect();
    assert_eq!(distinct.len(), n, "an Ok count was handed out twice");
    let mut stored = None;
    for _ in 0..50 {
        match st.get::<Counter>("hot").await {
            Ok(c) => {
                stored = Some(c.map_or(0, |c| c.count));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let stored = stored.expect("the server answers after the kills");
    assert!(
        stored >= n as u64 && stored <= n as u64 + unknown,
        "stored {stored}, Ok {n}, errors {errors} ({unknown} commit unknown)"
    );
    eprintln!(
        "{n} updates committed, {errors} typed errors ({unknown} commit unknown), stored {stored}; \
         {} lost replies settled by token",
        st.stats().settled
    );
    st.remove("hot").await.expect("clean up");
}

/// Opens `url` under a fresh prefix, runs [`hammer`] while `kill` runs every 100 ms for 3 s
/// (it returns how many connections it killed), then [`check`]s the outcome. `kill` must kill
/// only the connections of `url` (a user or a database of the test's own), so that other tests
/// on the server carry on.
pub async fn kill_under_load<F, Fut>(url: &str, tag: &str, mut kill: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let st = Storage::builder()
        .key_prefix(crate::unique_prefix(tag))
        .open(url)
        .await
        .expect("open the storage");
    let stop = Arc::new(tokio::sync::Notify::new());
    let work = tokio::spawn(hammer(st.clone(), stop.clone()));
    let stop_once = Arc::new(tokio::sync::Notify::new());
    let work_once = tokio::spawn(hammer_once(st.clone(), stop_once.clone()));
    let mut killed = 0u64;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed += kill().await;
    }
    stop.notify_one();
    stop_once.notify_one();
    let out = work.await.expect("hammer");
    let out_once = work_once.await.expect("hammer_once");
    assert!(killed > 0, "no connection was killed");
    assert!(!out.ok.is_empty(), "no update got through");
    assert!(!out_once.ok.is_empty(), "no idempotent request got through");
    check(&st, out).await;
    check_once(&st, out_once).await;
}
