//! The engine's retry loop, proven with a driver that injects conflicts and lost replies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mp_storage::driver::Driver;
use mp_storage::{driver::memory::MemoryDriver, BackendKind, Error, RetryPolicy, Storage};
use mp_storage_tests::faults::{Fault, Faulty, HOLDER};
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
    // The injected writer makes progress; these conflicts back off from the first.
    let policy = RetryPolicy::default()
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(40))
        .immediate_retries(0)
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

/// Concurrent read-only updates of one scope share a load: one sent after the others began
/// shows what their own loads would. Each still answers what the scope held during its call: a
/// write from another process in between is seen by every call that began after it.
#[tokio::test]
async fn concurrent_read_only_updates_share_loads() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    d.set_load_delay(Duration::from_millis(20));
    let before = d.calls.get();
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let st = st.clone();
            tokio::spawn(async move { st.scoped("c", |c: &mut Counter| c.count).await })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap(), 1);
    }
    let loads = d.calls.get().0 - before.0;
    assert!(
        (1..=3).contains(&loads),
        "16 concurrent read-only updates sent {loads} loads"
    );
    assert!(st.stats().shared_confirms >= 13, "{:?}", st.stats());

    // Another process writes while calls are queued: those that began after its write answer
    // the new count.
    let other = storage(&d, RetryPolicy::default());
    let first = {
        let st = st.clone();
        tokio::spawn(async move { st.scoped("c", |c: &mut Counter| c.count).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    d.set_load_delay(Duration::ZERO);
    other
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    d.set_load_delay(Duration::from_millis(20));
    let later: Vec<_> = (0..8)
        .map(|_| {
            let st = st.clone();
            tokio::spawn(async move { st.scoped("c", |c: &mut Counter| c.count).await })
        })
        .collect();
    let first = first.await.unwrap().unwrap();
    assert!(first == 1 || first == 2, "{first}");
    for r in later {
        assert_eq!(
            r.await.unwrap().unwrap(),
            2,
            "a call that began after the write answered from before it"
        );
    }
}

/// A storage on a faulty memory store with reservations of up to 1 s, whose scope `c` was
/// updated 20 times (so the engine has measured its round trip and caches the record).
async fn with_warm_counter() -> (Arc<Faulty>, Storage) {
    with_warm_counter_under(RetryPolicy::default().reservation(Duration::from_secs(1))).await
}

/// [`with_warm_counter`] under `policy`.
async fn with_warm_counter_under(policy: RetryPolicy) -> (Arc<Faulty>, Storage) {
    let d = faulty();
    let st = storage(&d, policy);
    for _ in 0..20 {
        st.scoped("c", |c: &mut Counter| c.count += 1)
            .await
            .unwrap();
    }
    (d, st)
}

/// A write refused by another claimant's reservation sleeps for the time the refusal says the
/// reservation has left (`Record::reserved_for`), instead of polling at the slice this
/// process measured (1 ms against the memory store): a handful of compare-and-swaps, not one
/// a millisecond.
#[tokio::test]
async fn a_refused_write_sleeps_until_the_reservation_ends() {
    let (d, st) = with_warm_counter().await;
    let held = Duration::from_millis(150);
    // Timed from before the reservation, which cannot end earlier than `held` after this.
    let t = std::time::Instant::now();
    assert!(d.reserve("c", 999, held).await.unwrap());
    let before = d.calls.get();
    let n = mp_storage_tests::increment(&st, "c").await.unwrap();
    let waited = t.elapsed();
    let cas = d.calls.get().1 - before.1;
    assert_eq!(n, 21);
    assert!(
        waited >= held,
        "committed through a live reservation after {waited:?}"
    );
    assert!(
        cas <= 4,
        "{cas} compare-and-swaps while another's reservation held for {held:?}"
    );
    assert!(st.stats().refused >= 1, "{:?}", st.stats());
}

/// A write refused by another process's slice, sent again once the slice ends, finds the
/// holder's newer record and takes the next slice in that same compare-and-swap: the process
/// that waited gets a turn of its own (the holder's next write is refused), and it costs no
/// round trip beyond the refusal, the write sent again and the one that commits.
#[tokio::test]
async fn a_write_sent_again_after_a_refusal_takes_the_next_slice() {
    let (d, st) = with_warm_counter().await;
    let other = 999;
    // Another claimant's write of the scope, at the stored revision.
    let write_as_other = move |d: Arc<Faulty>, count: u64| async move {
        let current = d.load("c").await.unwrap().expect("stored");
        let data = format!("{{\"count\":{count}}}");
        let write = mp_storage::driver::Write::new(current.schema, data.as_bytes(), 7, 1)
            .with_claimant(other);
        d.cas("c", Some(current.revision()), write).await.unwrap()
    };
    assert!(d
        .reserve("c", other, Duration::from_millis(100))
        .await
        .unwrap());
    // The holder commits during its slice, after this process's write was refused.
    let holder = tokio::spawn({
        let d = d.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            write_as_other(d, 100).await
        }
    });
    let before = d.calls.get();
    let n = mp_storage_tests::increment(&st, "c").await.unwrap();
    assert!(
        matches!(holder.await.unwrap(), mp_storage::CasOutcome::Committed(_)),
        "the holder's write in its own slice"
    );
    // Less the holder's own write.
    let cas = d.calls.get().1 - before.1 - 1;
    assert_eq!(n, 101, "decided on the holder's write");
    let stats = st.stats();
    assert!(stats.refused >= 1, "{stats:?}");
    assert!(
        cas <= 3,
        "{cas} compare-and-swaps: refused, sent again (reserving), committed; {stats:?}"
    );
    // The slice this process took holds: the other claimant's next write is refused.
    match write_as_other(d.clone(), 500).await {
        mp_storage::CasOutcome::Conflict(Some(r)) => assert!(r.reserved_for.is_some(), "{r:?}"),
        other => panic!("the other claimant wrote through this process's slice: {other:?}"),
    }
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 101);
}

/// Reservations of up to 1 s, and no conflict retried at once for another writer's progress:
/// every conflict but the first backs off, unless what the write learned says otherwise.
fn no_immediate_retries() -> RetryPolicy {
    RetryPolicy::default()
        .reservation(Duration::from_secs(1))
        .immediate_retries(0)
}

/// A write that lost and reserved the scope in the same step retries at once, however many
/// conflicts came before: the others wait for its slice, so its retry commits. (Backing off
/// instead spent the slice asleep; with several processes on one scope the call then found
/// their commits after it, slice after slice, and gave up after 100 attempts in a quarter of a
/// second.) With no immediate retries allowed, every conflict but the first takes the backoff
/// unless it reserved the scope.
#[tokio::test]
async fn a_write_that_lost_and_reserved_retries_at_once() {
    let (d, st) = with_warm_counter_under(no_immediate_retries()).await;
    let before = st.stats();
    // Three writes lose to another writer's commit: the first from the cache (no reservation
    // asked), the next two from the record the conflict returned, each taking the slice.
    d.set_fault(Fault::Interfere(3));
    assert_eq!(mp_storage_tests::increment(&st, "c").await.unwrap(), 321);
    let stats = st.stats();
    assert_eq!(stats.conflicts - before.conflicts, 3, "{stats:?}");
    assert!(stats.reservations > before.reservations, "{stats:?}");
    assert_eq!(stats.backoffs, before.backoffs, "backed off: {stats:?}");
}

/// A write that lost and asked to reserve the scope, but found another process's reservation,
/// waits for that slice as a refused write does, however many conflicts came before, instead
/// of backing off and chasing the holder's commits one revision late.
#[tokio::test]
async fn a_write_that_lost_to_a_held_scope_waits_for_the_slice() {
    let (d, st) = with_warm_counter_under(no_immediate_retries()).await;
    let held = Duration::from_millis(100);
    let t = std::time::Instant::now();
    assert!(d.reserve("c", HOLDER, held).await.unwrap());
    let before = st.stats();
    // The holder commits before each of the next three writes.
    d.set_fault(Fault::HolderWrites(3));
    assert_eq!(mp_storage_tests::increment(&st, "c").await.unwrap(), 321);
    let stats = st.stats();
    assert!(stats.refused > before.refused, "{stats:?}");
    assert_eq!(stats.backoffs, before.backoffs, "backed off: {stats:?}");
    assert!(
        t.elapsed() >= held,
        "committed through a live reservation after {:?}",
        t.elapsed()
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

/// A create whose reply was lost after it committed, and which another process read and removed
/// before the engine looked: the scope is absent again, which cannot tell "never created" from
/// "created and removed". A typed "commit unknown" error, the closure run once, never a rerun
/// that would create it a second time.
#[tokio::test]
async fn lost_create_reply_after_a_delete_is_commit_unknown() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    d.set_fault(Fault::LoseReplyThenDelete(1));
    let runs = Mutex::new(0);
    let err = st
        .scoped("c", |c: &mut Counter| {
            *runs.lock().unwrap() += 1;
            c.count += 1;
            c.count
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err:?}");
    assert!(!err.is_retryable() && err.may_have_happened(), "{err:?}");
    assert_eq!(*runs.lock().unwrap(), 1, "the closure ran again");
    assert_eq!(st.get::<Counter>("c").await.unwrap(), None, "created again");
    assert_eq!(d.calls.get().1, 1, "a second compare-and-swap was sent");

    // The same for an update of a stored scope: the scope was removed meanwhile.
    st.set("u", &Counter { count: 5 }).await.unwrap();
    d.set_fault(Fault::LoseReplyThenDelete(1));
    let err = mp_storage_tests::increment(&st, "u").await.unwrap_err();
    assert!(matches!(err, Error::CommitUnknown { .. }), "{err:?}");
    assert_eq!(st.get::<Counter>("u").await.unwrap(), None);
}

/// A server that refuses connections, under a warm cache: the compare-and-swap fails before
/// anything is sent, so the update is a connection error at once (retryable, nothing written),
/// not an unknown outcome after a settle that can only fail too.
#[tokio::test]
async fn refused_connection_is_a_connection_error_at_once() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    d.set_fault(Fault::Refused(u32::MAX));
    for _ in 0..3 {
        let before = d.calls.get();
        let started = std::time::Instant::now();
        let runs = Mutex::new(0);
        let err = st
            .scoped("c", |c: &mut Counter| {
                *runs.lock().unwrap() += 1;
                c.count += 1;
            })
            .await
            .unwrap_err();
        let took = started.elapsed();
        match &err {
            Error::Backend {
                kind: BackendKind::Connection,
                sent: false,
                ..
            } => {}
            other => panic!("expected an unsent connection error, got {other:?}"),
        }
        assert!(err.is_retryable() && !err.may_have_happened(), "{err:?}");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        let after = d.calls.get();
        // One compare-and-swap, and no settling loads behind it.
        assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1));
        assert_eq!(*runs.lock().unwrap(), 1);
    }
    d.set_fault(Fault::None);
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 1);
    assert_eq!(mp_storage_tests::increment(&st, "c").await.unwrap(), 2);
}

/// `is_retryable` says whether calling again is safe, for the errors the engine really gives:
/// a conflict after the retries and an unsent connection error are; an unknown outcome is not.
#[tokio::test(start_paused = true)]
async fn retryable_says_whether_calling_again_is_safe() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default().max_attempts(3).deadline(None));
    st.set("c", &Counter { count: 1 }).await.unwrap();

    d.set_fault(Fault::Interfere(3));
    let conflict = mp_storage_tests::increment(&st, "c").await.unwrap_err();
    assert!(conflict.is_conflict(), "{conflict:?}");
    assert!(conflict.is_retryable() && !conflict.may_have_happened());

    d.set_fault(Fault::Refused(1));
    let refused = mp_storage_tests::increment(&st, "c").await.unwrap_err();
    assert_eq!(
        refused.backend_kind(),
        Some(BackendKind::Connection),
        "{refused:?}"
    );
    assert!(refused.is_retryable() && !refused.may_have_happened());

    d.set_fault(Fault::LoseReplyThenOthersWrite(20));
    let unknown = mp_storage_tests::increment(&st, "c").await.unwrap_err();
    assert!(
        matches!(unknown, Error::CommitUnknown { .. }),
        "{unknown:?}"
    );
    assert!(!unknown.is_retryable() && unknown.may_have_happened());

    // Calling again after the retryable ones is what they promise: it works, once.
    d.set_fault(Fault::None);
    let before = st.get::<Counter>("c").await.unwrap().unwrap().count;
    assert_eq!(
        mp_storage_tests::increment(&st, "c").await.unwrap(),
        before + 1
    );
}

/// An idempotent update whose reply was lost, with more writes since than the tokens remember:
/// the receipt in the record tells that it committed; the caller gets the first result and a
/// repeat with the same key changes nothing.
#[tokio::test]
async fn idempotent_lost_reply_is_settled_by_its_receipt() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    st.set("c", &Counter { count: 0 }).await.unwrap();
    d.set_fault(Fault::LoseReplyThenOthersWrite(20));
    let runs = Mutex::new(0);
    let add = |c: &mut Counter| {
        *runs.lock().unwrap() += 1;
        c.count += 1;
        c.count
    };
    let n = st.idempotent("req-1").scoped("c", add).await.unwrap();
    assert_eq!((n, *runs.lock().unwrap()), (1, 1));
    // Ours (1) and the 20 others (100 each), once.
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 2001);
    // The client retries: the first answer again, nothing applied.
    let again = st
        .idempotent("req-1")
        .scoped("c", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await
        .unwrap();
    assert_eq!(again, 1);
    assert_eq!(st.get::<Counter>("c").await.unwrap().unwrap().count, 2001);
    assert_eq!(st.stats().replayed, 2);
    // Without a key the same fault cannot be told apart.
    d.set_fault(Fault::LoseReplyThenOthersWrite(20));
    let err = mp_storage_tests::increment(&st, "c").await.unwrap_err();
    assert!(err.may_have_happened() && !err.is_retryable(), "{err:?}");
}

/// Several-scope commits pass through the fault-injecting driver, faults included: a conflict
/// reruns the closure on fresh values, a lost reply is settled without a second apply, a
/// failure before send is retried, a lost reply after many other writes is "commit unknown".
#[tokio::test(start_paused = true)]
async fn several_scope_commits_take_faults() {
    let d = faulty();
    let st = storage(&d, RetryPolicy::default());
    let names = ["a", "b"];
    st.set("a", &Counter { count: 1 }).await.unwrap();
    let add = |c: &mut [Counter]| {
        c[0].count += 1;
        c[1].count += 1;
        (c[0].count, c[1].count)
    };

    // Another writer adds 100 to `a` before each of two commits: three runs.
    d.set_fault(Fault::Interfere(2));
    let seen = Mutex::new(Vec::new());
    let got = st
        .scoped_many(&names, |c: &mut [Counter]| {
            seen.lock().unwrap().push(c[0].count);
            add(c)
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 101, 201]);
    assert_eq!(got, (202, 1));
    assert_eq!(d.calls.commits.load(std::sync::atomic::Ordering::SeqCst), 3);

    // The reply is lost after the commit: settled, applied once.
    d.set_fault(Fault::LoseReplyAfterCommit(1));
    let runs = Mutex::new(0);
    let got = st
        .scoped_many(&names, |c: &mut [Counter]| {
            *runs.lock().unwrap() += 1;
            add(c)
        })
        .await
        .unwrap();
    assert_eq!((got, *runs.lock().unwrap()), ((203, 2), 1));

    // Never sent: retried, applied once.
    d.set_fault(Fault::FailBeforeSend(2));
    assert_eq!(st.scoped_many(&names, add).await.unwrap(), (204, 3));

    // Lost, then 20 other writes of `a`: cannot be told, a typed error, never a second apply.
    d.set_fault(Fault::LoseReplyThenOthersWrite(20));
    let err = st.scoped_many(&names, add).await.unwrap_err();
    assert!(err.may_have_happened(), "{err:?}");
    let both = st.get_many::<Counter, _>(&names).await.unwrap();
    assert_eq!(
        both.iter()
            .map(|c| c.as_ref().unwrap().count)
            .collect::<Vec<_>>(),
        [2205, 4]
    );

    // Down (a failure that may have been sent, then no way to look): a typed error, nothing
    // written.
    d.set_down(Some(BackendKind::Connection));
    let err = st.scoped_many(&names, add).await.unwrap_err();
    assert!(
        err.may_have_happened() || err.backend_kind() == Some(BackendKind::Connection),
        "{err:?}"
    );
    d.set_down(None);
    let both = st.get_many::<Counter, _>(&names).await.unwrap();
    assert_eq!(both[1].as_ref().unwrap().count, 4);
}

/// A driver with only the five required calls (load, cas, put, delete, list), as the README
/// says a backend of one's own may be.
struct FiveCalls(MemoryDriver);

#[async_trait::async_trait]
impl mp_storage::Driver for FiveCalls {
    fn name(&self) -> &'static str {
        "five-calls"
    }
    async fn load(&self, key: &str) -> Result<Option<mp_storage::Record>, Error> {
        self.0.load(key).await
    }
    async fn cas(
        &self,
        key: &str,
        expected: Option<mp_storage::Revision>,
        write: mp_storage::Write<'_>,
    ) -> Result<mp_storage::CasOutcome, Error> {
        self.0.cas(key, expected, write).await
    }
    async fn put(&self, key: &str, write: mp_storage::Write<'_>) -> Result<u64, Error> {
        self.0.put(key, write).await
    }
    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        self.0.list(prefix).await
    }
}

/// On a driver with only the five required calls, a scope that ends through the
/// compare-and-swap (`scoped_option` leaving `None`, `remove_if`) needs a removal checked against
/// a revision, which such a driver cannot do: a typed refusal that says so, the scope left as it
/// was; an unchecked `remove` still works.
#[tokio::test]
async fn a_five_call_driver_refuses_a_checked_removal() {
    let st = Storage::with_driver(Arc::new(FiveCalls(MemoryDriver::new()))).unwrap();
    st.set("stock", &0u64).await.unwrap();
    match st.remove_if("stock", |left: &u64| *left == 0).await {
        Err(Error::Unsupported { capability, .. }) => {
            assert!(capability.contains("removals checked"), "{capability}")
        }
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    let ended = st
        .scoped_option("stock", |n: &mut Option<u64>| *n = None)
        .await;
    assert!(matches!(ended, Err(Error::Unsupported { .. })), "{ended:?}");
    assert_eq!(st.get::<u64>("stock").await.unwrap(), Some(0));
    assert!(st.remove("stock").await.unwrap());
    assert_eq!(st.get::<u64>("stock").await.unwrap(), None);
}
