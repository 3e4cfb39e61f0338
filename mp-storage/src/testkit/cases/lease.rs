//! The cases of exclusive updates (`locked`, `try_locked`): leases kept in the record's notes,
//! on every driver. Leases are short here (300 ms) so that each case takes a second or two.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{increment, Counter, Target};
use crate::{Error, ErrorCategory, Storage};

/// The lease length of these cases.
const LEASE: Duration = Duration::from_millis(300);

fn leased(t: &Target) -> Storage {
    t.storage_with(Storage::builder().lease(LEASE))
}

/// Exclusive updates on several handles never overlap, while optimistic increments run on the
/// same scope at the same time: the count is every `Ok` of both kinds, and none fails.
pub async fn locked_updates_exclude_each_other(t: &Target) {
    const LOCKERS: usize = 4;
    const LOCKS: u64 = 5;
    const BUMPERS: usize = 3;
    const BUMPS: u64 = 20;
    let inside = Arc::new(AtomicBool::new(false));
    let mut joins = Vec::new();
    for _ in 0..LOCKERS {
        let (st, inside) = (leased(t), inside.clone());
        joins.push(tokio::spawn(async move {
            for _ in 0..LOCKS {
                let inside = inside.clone();
                st.locked("shared", |mut c: Counter| async move {
                    assert!(
                        !inside.swap(true, Ordering::SeqCst),
                        "two exclusive updates ran at once"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    c.count += 1;
                    inside.store(false, Ordering::SeqCst);
                    (c, ())
                })
                .await
                .expect("locked");
            }
            LOCKS
        }));
    }
    for _ in 0..BUMPERS {
        let st = leased(t);
        joins.push(tokio::spawn(async move {
            for _ in 0..BUMPS {
                increment(&st, "shared").await.expect("increment");
            }
            BUMPS
        }));
    }
    let mut oks = 0;
    for j in joins {
        oks += j.await.unwrap();
    }
    let stored: Counter = t.storage().get("shared").await.unwrap().unwrap();
    assert_eq!(stored.count, oks);
    assert_eq!(oks, LOCKERS as u64 * LOCKS + BUMPERS as u64 * BUMPS);
}

/// A closure that runs three lease lengths keeps its lease (the engine renews it): an update
/// of the same scope waits for its commit, and a read does not wait.
pub async fn lease_is_renewed_while_the_closure_runs(t: &Target) {
    let (a, b) = (leased(t), leased(t));
    a.set("slow", &Counter { count: 10 }).await.unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let holder = tokio::spawn(async move {
        let r = a
            .locked("slow", |mut c: Counter| async move {
                flag.store(true, Ordering::SeqCst);
                tokio::time::sleep(LEASE * 3).await;
                c.count += 1;
                (c, Instant::now())
            })
            .await;
        (r, a.stats())
    });
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = Instant::now();
    let seen: Counter = b.get("slow").await.unwrap().unwrap();
    assert_eq!(seen.count, 10, "a read sees the last committed value");
    assert!(t0.elapsed() < LEASE, "a read waited for the lease");
    let n = increment(&b, "slow").await.unwrap();
    let waited_until = Instant::now();
    let (committed_at, stats) = holder.await.unwrap();
    let committed_at = committed_at.expect("the renewed holder commits");
    assert_eq!(n, 12, "the update waited for the holder's commit");
    assert!(waited_until >= committed_at);
    assert!(
        stats.lease_renewals >= 2,
        "renewals: {}",
        stats.lease_renewals
    );
    assert_eq!(b.stats().leases_taken_over, 0);
}

/// `try_locked` returning `Err` writes nothing and frees the scope at once (with the default
/// 30 s lease, an update right after it does not wait); on an absent scope, it stays absent.
pub async fn try_locked_abort_frees_at_once(t: &Target) {
    let (a, b) = (t.storage(), t.storage());
    a.set("order", &Counter { count: 3 }).await.unwrap();
    let r: Result<(), Error> = a
        .try_locked("order", |_: Counter| async move {
            Err(Error::InvalidConfig {
                setting: "test",
                reason: "declined".into(),
            })
        })
        .await;
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
    let t0 = Instant::now();
    assert_eq!(increment(&b, "order").await.unwrap(), 4);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let r: Result<(), Error> = a
        .try_locked("never", |_: Counter| async move {
            Err(Error::InvalidConfig {
                setting: "test",
                reason: "declined".into(),
            })
        })
        .await;
    assert!(r.is_err());
    assert_eq!(b.get::<Counter>("never").await.unwrap(), None);
    // And a commit frees it as well.
    let n = a
        .locked("order", |mut c: Counter| async move {
            c.count += 1;
            let n = c.count;
            (c, n)
        })
        .await
        .unwrap();
    assert_eq!(n, 5);
    let t0 = Instant::now();
    assert_eq!(increment(&b, "order").await.unwrap(), 6);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// `set`, `remove` and `scoped_many` wait for a holder's commit too.
pub async fn set_and_remove_wait_for_the_lease(t: &Target) {
    let (a, b) = (leased(t), leased(t));
    for step in ["set", "remove", "many"] {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let a = a.clone();
        let holder = tokio::spawn(async move {
            a.locked("held", |mut c: Counter| async move {
                flag.store(true, Ordering::SeqCst);
                tokio::time::sleep(LEASE).await;
                c.count = 1;
                (c, Instant::now())
            })
            .await
            .unwrap()
        });
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let expected = match step {
            "set" => {
                b.set("held", &Counter { count: 50 }).await.unwrap();
                Some(Counter { count: 50 })
            }
            "remove" => {
                assert!(b.remove("held").await.unwrap());
                None
            }
            _ => {
                b.scoped_many(&["other", "held"], |v: &mut [Counter]| {
                    v[0].count += 1;
                    v[1].count += 10;
                })
                .await
                .unwrap();
                Some(Counter { count: 11 })
            }
        };
        let done = Instant::now();
        let committed = holder.await.unwrap();
        assert!(done >= committed, "{step} did not wait");
        assert_eq!(b.get::<Counter>("held").await.unwrap(), expected, "{step}");
    }
}

/// A holder that stalls past its lease (its thread blocked, so it cannot renew) is taken over
/// once the lease runs out; its commit is refused with [`Error::LeaseLost`] and the newer value
/// is kept.
pub async fn stalled_holder_loses_its_lease(t: &Target) {
    let (a, b) = (leased(t), leased(t));
    a.set("stall", &Counter { count: 1 }).await.unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let holder = tokio::spawn(async move {
        a.locked("stall", |mut c: Counter| async move {
            flag.store(true, Ordering::SeqCst);
            // Blocks this task, renewals included, as a paused process would be; the worker's
            // other tasks (a driver's connections) move to another thread meanwhile.
            tokio::task::block_in_place(|| std::thread::sleep(LEASE * 4));
            c.count = 100;
            (c, ())
        })
        .await
    });
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = Instant::now();
    assert_eq!(increment(&b, "stall").await.unwrap(), 2);
    assert!(t0.elapsed() >= LEASE, "took over after {:?}", t0.elapsed());
    assert_eq!(b.stats().leases_taken_over, 1);
    let r = holder.await.unwrap();
    let Err(e) = r else {
        panic!("the stalled holder committed: {r:?}")
    };
    assert!(matches!(e, Error::LeaseLost { .. }), "{e:?}");
    assert_eq!(e.category(), ErrorCategory::LeaseLost);
    assert!(!e.may_have_happened());
    assert!(e.to_string().contains("not stored"), "{e}");
    let now: Counter = b.get("stall").await.unwrap().unwrap();
    assert_eq!(now.count, 2, "the newer value is kept");
}

/// A holder that never gives its lease back (a dead process, here a lease written into the
/// notes by hand) blocks the scope only until the lease runs out.
pub async fn dead_holder_lease_runs_out(t: &Target) {
    let st = leased(t);
    st.set("dead", &Counter { count: 7 }).await.unwrap();
    let key = t.key("dead");
    let r = t.driver().load(&key).await.unwrap().unwrap();
    let meta = br#"{"lease":{"holder":12345,"ms":300}}"#;
    let w = super::super::write(&r.data).with_meta(meta);
    let w = crate::Write {
        schema: r.schema,
        ..w
    };
    let took = t.driver().cas(&key, Some(r.revision()), w).await.unwrap();
    assert!(matches!(took, crate::CasOutcome::Committed(_)), "{took:?}");
    let t0 = Instant::now();
    assert_eq!(increment(&st, "dead").await.unwrap(), 8);
    assert!(t0.elapsed() >= LEASE, "{:?}", t0.elapsed());
    assert!(t0.elapsed() < LEASE * 6, "{:?}", t0.elapsed());
    // The lease is not carried forward by the write over it.
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert!(
        !String::from_utf8_lossy(&r.meta).contains("lease"),
        "{:?}",
        String::from_utf8_lossy(&r.meta)
    );
}

/// Waiting for another caller's live lease ends at the retry policy's deadline with
/// [`Error::Leased`] (category `Conflict`, retryable), having written nothing.
pub async fn waiting_is_bounded_by_the_deadline(t: &Target) {
    let a = t.storage();
    let b = t.storage_with(
        Storage::builder().retry(crate::RetryPolicy::default().deadline(Some(LEASE / 3))),
    );
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let holder = tokio::spawn(async move {
        a.locked("busy", |mut c: Counter| async move {
            flag.store(true, Ordering::SeqCst);
            tokio::time::sleep(LEASE).await;
            c.count += 1;
            (c, ())
        })
        .await
    });
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t0 = Instant::now();
    let r = increment(&b, "busy").await;
    let Err(e) = r else {
        panic!("an update went through a live lease: {r:?}")
    };
    assert!(matches!(e, Error::Leased { .. }), "{e:?}");
    assert_eq!(e.category(), ErrorCategory::Conflict);
    assert!(e.is_retryable());
    assert!(t0.elapsed() < LEASE, "{:?}", t0.elapsed());
    holder.await.unwrap().unwrap();
    assert_eq!(increment(&b, "busy").await.unwrap(), 2);
}
