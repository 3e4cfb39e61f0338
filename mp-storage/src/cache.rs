//! The bounded cache of the last record seen per key, so a warm update skips the load.
//!
//! The cache is only ever a guess: an update from it is a CAS against the cached version (a
//! stale entry costs one failed CAS, which returns the fresh record), and a read-only update from
//! it is confirmed by a load before it returns.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::driver::Record;

pub(crate) struct Cache {
    map: Option<Mutex<LruCache<String, Arc<Record>>>>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            map: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    fn lock(
        m: &Mutex<LruCache<String, Arc<Record>>>,
    ) -> MutexGuard<'_, LruCache<String, Arc<Record>>> {
        // Every operation under the lock is a single insert, get or remove: a panic elsewhere
        // cannot leave the map inconsistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Record>> {
        let m = self.map.as_ref()?;
        Self::lock(m).get(key).cloned()
    }

    /// Remembers `record` as the latest seen for `key`. A race between two tasks may leave the
    /// older of two records here; that costs one failed CAS later, never a wrong write.
    pub(crate) fn put(&self, key: &str, record: Arc<Record>) {
        if let Some(m) = &self.map {
            Self::lock(m).put(key.to_owned(), record);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(m) = &self.map {
            Self::lock(m).pop(key);
        }
    }
}
