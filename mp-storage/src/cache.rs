//! The bounded cache of the last record seen per key, so a warm update skips the load.
//!
//! The cache is only ever a guess: an update from it is a CAS against the cached version (a
//! stale entry costs one failed CAS, which returns the fresh record), and a read-only update from
//! it is confirmed by a load before it returns.
//!
//! Sharded by key hash, so tasks on different scopes rarely wait for each other's lock.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::driver::Record;

const SHARDS: usize = 16;

type Shard = Mutex<LruCache<String, Arc<Record>>>;

pub(crate) struct Cache {
    shards: Vec<Shard>,
    hasher: RandomState,
}

impl Cache {
    /// A cache of about `capacity` records (rounded up to a multiple of the shard count);
    /// 0 caches nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        let shards = match NonZeroUsize::new(capacity.div_ceil(SHARDS)) {
            Some(per_shard) => (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            None => Vec::new(),
        };
        Cache {
            shards,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> Option<MutexGuard<'_, LruCache<String, Arc<Record>>>> {
        if self.shards.is_empty() {
            return None;
        }
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // Every operation under the lock is a single insert, get or remove: a panic elsewhere
        // cannot leave the map inconsistent.
        Some(self.shards[i].lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Record>> {
        self.shard(key)?.get(key).cloned()
    }

    /// Remembers `record` as the latest seen for `key`. A race between two tasks may leave the
    /// older of two records here; that costs one failed CAS later, never a wrong write.
    pub(crate) fn put(&self, key: &str, record: Arc<Record>) {
        if let Some(mut shard) = self.shard(key) {
            match shard.get_mut(key) {
                Some(slot) => *slot = record,
                None => {
                    shard.put(key.to_owned(), record);
                }
            }
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(mut shard) = self.shard(key) {
            shard.pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64) -> Arc<Record> {
        Arc::new(Record {
            version,
            schema: 0,
            data: vec![],
            tokens: vec![],
        })
    }

    #[test]
    fn bounded_and_replaceable() {
        let c = Cache::new(32);
        for i in 0..1000 {
            c.put(&format!("k{i}"), rec(i));
        }
        let kept = (0..1000)
            .filter(|i| c.get(&format!("k{i}")).is_some())
            .count();
        assert!(kept <= 32, "{kept}");
        c.put("a", rec(1));
        c.put("a", rec(2));
        assert_eq!(c.get("a").map(|r| r.version), Some(2));
        c.remove("a");
        assert!(c.get("a").is_none());
        let off = Cache::new(0);
        off.put("a", rec(1));
        assert!(off.get("a").is_none());
    }
}
