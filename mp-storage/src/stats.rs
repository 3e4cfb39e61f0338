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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub attempts: AtomicU64,
    pub conflicts: AtomicU64,
    pub commits: AtomicU64,
    pub noops: AtomicU64,
    pub loads: AtomicU64,
    pub cache_hits: AtomicU64,
    pub gave_up: AtomicU64,
    pub settled: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            attempts: r(&self.attempts),
            conflicts: r(&self.conflicts),
            commits: r(&self.commits),
            noops: r(&self.noops),
            loads: r(&self.loads),
            cache_hits: r(&self.cache_hits),
            gave_up: r(&self.gave_up),
            settled: r(&self.settled),
        }
    }
}
