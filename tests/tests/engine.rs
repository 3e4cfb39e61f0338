//! The engine's retry loop, proven with a driver that injects conflicts and lost replies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mp_storage::{driver::memory::MemoryDriver, Error, RetryPolicy, Storage};
use mp_storage_tests::faults::{Fault, Faulty};
use mp_storage_tests::Counter;

fn faulty() -> Arc<Faulty> {
    Faulty::new(Arc::new(MemoryDriver::new()))
}

fn storage(driver: &Arc<Faulty>, policy: RetryPolicy) -> Storage {
    Storage::builder()
        .retry(policy)
        .build(driver.clone())
        .expect("build")
}

/// Conflicts are retried, and every attempt starts from the fresh stored value, never from the
/// previous attempt's mutated copy.
#[tokio::test(start_paused = true)]
async fn retries_on_fresh_state() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.set("c", &Counter { count: 1 }).await.unwrap();
    d.set_fault(Fault::Interfere(3));
    let seen = Mutex::new(Vec::new());
    let n = st
        .scoped("c", |c: &mut Counter| {
            seen.lock().unwrap().push(c.count);
            c.count += 1;
            c.count
        })
        .await
        .unwrap();
    // Attempt 1 sees 1 (then another writer makes it 101), attempt 2 sees 101, and so on.
    assert_eq!(*seen.lock().unwrap(), vec![1, 101, 201, 301]);
    assert_eq!(n, 302);
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 302);
    let s = st.stats();
    assert_eq!((s.conflicts, s.commits), (3, 2));
}

/// Gives up with a typed conflict error carrying the attempt count; nothing of it is written.
#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default().max_attempts(5).deadline(None));
    d.set_fault(Fault::Interfere(1000));
    let runs = Mutex::new(0u32);
    let err = st
        .scoped("c", |c: &mut Counter| {
            *runs.lock().unwrap() += 1;
            c.count += 1;
        })
        .await
        .unwrap_err();
    match err {
        Error::Conflict { attempts, .. } => assert_eq!(attempts, 5),
        other => panic!("expected a conflict error, got {other:?}"),
    }
    assert!(err_is_retryable_conflict(5));
    assert_eq!(*runs.lock().unwrap(), 5);
    // Only the interfering writer's five writes are there: 5 × 100.
    d.set_fault(Fault::None);
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 500);
    assert_eq!(st.stats().gave_up, 1);
}

fn err_is_retryable_conflict(attempts: u32) -> bool {
    let e = Error::Conflict {
        scope: "c".into(),
        attempts,
        elapsed: Duration::ZERO,
    };
    e.is_retryable() && e.is_conflict()
}

/// The waits between retries stay within the full-jitter bounds: nothing before the first retry,
/// then at most base × 2^(n-2), capped. Time is paused, so this measures the engine's sleeps
/// exactly, not the machine.
#[tokio::test(start_paused = true)]
async fn backoff_stays_within_bounds() {
    let policy = RetryPolicy::default()
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(40))
        .deadline(None);
    let bound: Duration = (1..=6).map(|r| policy.max_delay_for_retry(r)).sum();
    assert_eq!(bound, Duration::from_millis(10 + 20 + 40 + 40 + 40));
    let mut total = Duration::ZERO;
    let mut max_single = Duration::ZERO;
    for _ in 0..20 {
        let d = faulty();
        let st = storage(&d, policy.clone());
        d.set_fault(Fault::Interfere(6));
        let times = Mutex::new(Vec::new());
        let started = tokio::time::Instant::now();
        st.scoped("c", |c: &mut Counter| {
            times.lock().unwrap().push(tokio::time::Instant::now());
            c.count += 1;
        })
        .await
        .unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed <= bound, "{elapsed:?} > {bound:?}");
        let times = times.lock().unwrap();
        assert_eq!(times.len(), 7);
        assert_eq!(
            times[1] - times[0],
            Duration::ZERO,
            "the first retry is immediate"
        );
        for (i, w) in times.windows(2).enumerate() {
            let wait = w[1] - w[0];
            assert!(
                wait <= policy.max_delay_for_retry(i as u32 + 1),
                "retry {}: {wait:?}",
                i + 1
            );
            max_single = max_single.max(wait);
        }
        total += elapsed;
    }
    // Full jitter: the waits are spread, not all zero and not all at the bound.
    assert!(total > Duration::ZERO);
    assert!(total < bound * 20);
    assert!(max_single > Duration::ZERO);
}

/// The deadline ends the retries even when attempts are left.
#[tokio::test(start_paused = true)]
async fn deadline_ends_retries() {
    let d = faulty();
    let st = storage(
        &d,
        RetryPolicy::default()
            .max_attempts(u32::MAX)
            .deadline(Some(Duration::from_millis(500))),
    );
    d.set_fault(Fault::Interfere(u32::MAX));
    let started = tokio::time::Instant::now();
    let err = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match err {
        Error::Conflict { attempts, .. } => assert!(attempts > 2 && attempts < 1000, "{attempts}"),
        other => panic!("expected a conflict error, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1600), "{elapsed:?}");
}

/// A warm scope costs one CAS and no load; with the cache off, a load and a CAS.
#[tokio::test]
async fn warm_update_is_one_call() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    let before = d.calls.get();
    for _ in 0..10 {
        st.scoped("c", |c: &mut Counter| c.count += 1)
            .await
            .unwrap();
    }
    let after = d.calls.get();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 10));

    let cold = Storage::builder()
        .cache_capacity(0)
        .build(d.clone())
        .unwrap();
    let before = d.calls.get();
    for _ in 0..10 {
        cold.scoped("c", |c: &mut Counter| c.count += 1)
            .await
            .unwrap();
    }
    let after = d.calls.get();
    assert_eq!((after.0 - before.0, after.1 - before.1), (10, 10));
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 21);
}

/// A read-only update from the cache is confirmed with one load and writes nothing.
#[tokio::test]
async fn read_only_from_cache_is_confirmed() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    let before = d.calls.get();
    let n = st.scoped("c", |c: &mut Counter| c.count).await.unwrap();
    let after = d.calls.get();
    assert_eq!(n, 1);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1, 0, 0)
    );
}

/// A CAS that took effect but whose reply was lost is recognised by its token: the closure is
/// not applied twice and the caller gets its result.
#[tokio::test]
async fn lost_reply_after_commit_is_not_applied_twice() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.set("c", &Counter { count: 10 }).await.unwrap();
    d.set_fault(Fault::LoseReplyAfterCommit(1));
    let runs = Mutex::new(0);
    let n = st
        .scoped("c", |c: &mut Counter| {
            *runs.lock().unwrap() += 1;
            c.count += 1;
            c.count
        })
        .await
        .unwrap();
    assert_eq!((n, *runs.lock().unwrap()), (11, 1));
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 11);
    // Also when the write created the scope.
    d.set_fault(Fault::LoseReplyAfterCommit(1));
    let n = mp_storage_tests::increment(&st, "new").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(st.get::<Counter>("new").await.unwrap().unwrap().count, 1);
}

/// A CAS that never reached the backend is retried and applied exactly once.
#[tokio::test]
async fn failure_before_send_is_retried_once() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.set("c", &Counter { count: 10 }).await.unwrap();
    d.set_fault(Fault::FailBeforeSend(2));
    let n = mp_storage_tests::increment(&st, "c").await.unwrap();
    assert_eq!(n, 11);
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 11);
}

/// A lost reply on a scope that many others wrote since cannot be told apart: a typed
/// "commit unknown" error, never a second apply.
#[tokio::test]
async fn unknown_outcome_is_a_typed_error() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.set("c", &Counter { count: 0 }).await.unwrap();
    d.set_fault(Fault::LoseReplyThenOthersWrite(20));
    let runs = Mutex::new(0);
    let err = st
        .scoped("c", |c: &mut Counter| {
            *runs.lock().unwrap() += 1;
            c.count += 1;
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err:?}");
    assert_eq!(*runs.lock().unwrap(), 1);
    // Ours (1) and the 20 others (100 each): applied once.
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 2001);

    // With fewer writes since than the record remembers, the engine can tell: committed.
    d.set_fault(Fault::LoseReplyThenOthersWrite(5));
    st.scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 2502);
}

/// The storage handle and its futures work across tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_are_send() {
    let st = Storage::open("memory://").await.unwrap();
    let h = tokio::spawn({
        let st = st.clone();
        async move { mp_storage_tests::increment(&st, "s").await }
    });
    assert_eq!(h.await.unwrap().unwrap(), 1);
}
