//! A driver of one's own: [`CountingDriver`] wraps any other driver and counts the calls that
//! pass through it, the way a metrics or tracing layer would.
//!
//! It implements every call of [`mp_storage::Driver`], the optional ones forwarded too, and is handed to
//! [`Storage::with_driver`](mp_storage::Storage::with_driver); the retry loop, the cache and the
//! codec stay the engine's. Its test, `examples/tests/counting_driver.rs`, runs the whole
//! behavior suite on it with `mp_storage::behavior_suite!` (feature `testkit`), as the author of
//! any driver would.
//!
//! ```
//! use std::sync::Arc;
//! use mp_storage::driver::memory::MemoryDriver;
//! use mp_storage::Storage;
//! use mp_storage_examples::counting_driver::CountingDriver;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let driver = Arc::new(CountingDriver::new(Arc::new(MemoryDriver::new())));
//! let st = Storage::with_driver(driver.clone())?;
//! for _ in 0..3 {
//!     st.scoped("visits", |n: &mut u64| *n += 1).await?;
//! }
//! // The first update loads the absent scope and creates it; the next two hit the cache and
//! // cost one compare-and-swap each.
//! let calls = driver.calls();
//! assert_eq!((calls.load, calls.cas), (1, 3));
//! # Ok::<(), mp_storage::Error>(())
//! # }).unwrap();
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mp_storage::driver::{Capabilities, CommitOutcome, Expiry, Op};
use mp_storage::{CasOutcome, Driver, Error, Record, Revision, Write};

/// How many calls of each kind reached a [`CountingDriver`], failed ones included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `load` calls.
    pub load: u64,
    /// `cas` calls.
    pub cas: u64,
    /// `put` calls.
    pub put: u64,
    /// `delete` calls.
    pub delete: u64,
    /// `list` calls.
    pub list: u64,
    /// `load_many` calls.
    pub load_many: u64,
    /// `commit` calls (several keys at once, or one checked removal).
    pub commit: u64,
    /// `expire`, `sweep` and `reserve` calls together.
    pub other: u64,
}

/// Wraps a driver and counts its calls; everything else is the wrapped driver's.
pub struct CountingDriver {
    inner: Arc<dyn Driver>,
    load: AtomicU64,
    cas: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    load_many: AtomicU64,
    commit: AtomicU64,
    other: AtomicU64,
}

impl CountingDriver {
    /// Counts the calls to `inner`.
    pub fn new(inner: Arc<dyn Driver>) -> CountingDriver {
        CountingDriver {
            inner,
            load: AtomicU64::new(0),
            cas: AtomicU64::new(0),
            put: AtomicU64::new(0),
            delete: AtomicU64::new(0),
            list: AtomicU64::new(0),
            load_many: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            other: AtomicU64::new(0),
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Calls {
        Calls {
            load: self.load.load(Ordering::Relaxed),
            cas: self.cas.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            load_many: self.load_many.load(Ordering::Relaxed),
            commit: self.commit.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl Driver for CountingDriver {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn max_data_len(&self) -> usize {
        self.inner.max_data_len()
    }

    // A wrapper forwards the optional calls too: their defaults would hide what the wrapped
    // driver can do (several-key commits, expiry, reservations).
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn changes(
        &self,
        watched: Arc<mp_storage::driver::WatchSet>,
    ) -> Option<mp_storage::driver::ChangeStream> {
        self.inner.changes(watched)
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        count(&self.load_many);
        self.inner.load_many(keys).await
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        count(&self.commit);
        self.inner.commit(ops).await
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        count(&self.other);
        self.inner.expire(key, expiry).await
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        count(&self.other);
        self.inner.sweep(limit).await
    }

    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        count(&self.other);
        self.inner.reserve(key, claimant, ttl).await
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        count(&self.load);
        self.inner.load(key).await
    }

    async fn load_shared(&self, key: &str) -> Result<Option<Arc<Record>>, Error> {
        count(&self.load);
        self.inner.load_shared(key).await
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        count(&self.cas);
        self.inner.cas(key, expected, write).await
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        count(&self.put);
        self.inner.put(key, write).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        count(&self.delete);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        count(&self.list);
        self.inner.list(prefix).await
    }
}
