//! Counters of what the engine did, readable from [`Storage::stats`](crate::Storage::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the engine's counters since the [`Storage`](crate::Storage) was built.
///
/// ```
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let st = mp_storage::Storage::open("memory://").await?;
/// st.scoped("n", |v: &mut serde_json::Value| *v = 1.into()).await?;
/// let s = st.stats();
/// assert_eq!((s.attempts, s.commits, s.conflicts), (1, 1, 0));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Closure runs.
    pub attempts: u64,
    /// Compare-and-swaps that lost to another writer.
    pub conflicts: u64,
    /// Writes that took effect (updates, `set`).
    pub commits: u64,
    /// Updates that changed nothing and so wrote nothing.
    pub noops: u64,
    /// Loads sent to the driver.
    pub loads: u64,
    /// Attempts that started from the cache instead of a load.
    pub cache_hits: u64,
    /// Calls that gave up with [`Error::Conflict`](crate::Error::Conflict).
    pub gave_up: u64,
    /// Writes whose reply was lost (a connection error after the CAS was sent) and whose outcome
    /// the engine settled by re-reading the record's commit tokens.
    pub settled: u64,
    /// Idempotent updates answered from the receipt of an earlier run with the same key.
    pub replayed: u64,
    /// Turns reserved after losing a scope to other processes' commits.
    pub reservations: u64,
    /// Several-scope commits that took effect (also counted in `commits`).
    pub multi_commits: u64,
    /// Several-scope commits that lost a race (also counted in `conflicts`).
    pub multi_conflicts: u64,
    /// Leases taken by exclusive updates (`locked`, `try_locked`).
    pub leases_taken: u64,
    /// Lease renewals written while an exclusive update's closure ran.
    pub lease_renewals: u64,
    /// Updates that found another caller's live lease and waited.
    pub lease_waits: u64,
    /// Leases that ran out (by this process's clock) and were written over.
    pub leases_taken_over: u64,
    /// Compare-and-swaps refused by another process's reservation (sent again after a wait).
    pub refused: u64,
    /// Conflicts after which the update waited before it retried.
    pub backoffs: u64,
    /// Answers decided on the cache without a write that needed no load of their own to
    /// confirm them: another update of the scope in this process had found the cached record
    /// current with a load or a write sent after this update began (or did so while this one
    /// waited for it), so the scope held that record during the update.
    pub shared_confirms: u64,
    /// Change subscriptions opened for watchers ([`Storage::watch`](crate::Storage::watch)):
    /// one while any scope is watched, however many watchers there are, plus one per reopening
    /// after the driver's change stream ended.
    pub watch_feeds: u64,
    /// Reads of watched scopes after a change hint (the first read of each included).
    pub watch_reads: u64,
}

/// One counter of [`Counters`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Attempts,
    Conflicts,
    Commits,
    Noops,
    Loads,
    CacheHits,
    GaveUp,
    Settled,
    Replayed,
    Reservations,
    MultiCommits,
    MultiConflicts,
    LeasesTaken,
    LeaseRenewals,
    LeaseWaits,
    LeasesTakenOver,
    Refused,
    Backoffs,
    SharedConfirms,
}

const COUNTERS: usize = 19;
const STRIPES: usize = 8;

/// The engine's counters, striped by thread so that tasks on different cores do not fight over
/// one cache line on every update.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

fn stripe() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.try_with(|s| *s).unwrap_or(0)
}

impl Counters {
    pub(crate) fn bump(&self, counter: Counter) {
        self.stripes[stripe()].0[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let sum = |c: Counter| {
            self.stripes
                .iter()
                .map(|s| s.0[c as usize].load(Ordering::Relaxed))
                .sum()
        };
        Stats {
            attempts: sum(Counter::Attempts),
            conflicts: sum(Counter::Conflicts),
            commits: sum(Counter::Commits),
            noops: sum(Counter::Noops),
            loads: sum(Counter::Loads),
            cache_hits: sum(Counter::CacheHits),
            gave_up: sum(Counter::GaveUp),
            settled: sum(Counter::Settled),
            replayed: sum(Counter::Replayed),
            reservations: sum(Counter::Reservations),
            multi_commits: sum(Counter::MultiCommits),
            multi_conflicts: sum(Counter::MultiConflicts),
            leases_taken: sum(Counter::LeasesTaken),
            lease_renewals: sum(Counter::LeaseRenewals),
            lease_waits: sum(Counter::LeaseWaits),
            leases_taken_over: sum(Counter::LeasesTakenOver),
            refused: sum(Counter::Refused),
            backoffs: sum(Counter::Backoffs),
            shared_confirms: sum(Counter::SharedConfirms),
            // Filled in by the engine from its watchers' hub.
            watch_feeds: 0,
            watch_reads: 0,
        }
    }
}
