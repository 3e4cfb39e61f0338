//! One queue per hot scope inside a process: updates of the same scope from this process's tasks
//! take turns instead of racing each other's compare-and-swaps.
//!
//! Without it, T tasks updating one scope all read version v, one wins and T-1 retry after a
//! backoff: most round trips are wasted and the scope sits idle during the waits. In turn, each
//! update starts from the record the previous one just committed (in the cache) and its CAS
//! succeeds at once. Other processes still race through the CAS and the retry loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) type Turn = tokio::sync::Mutex<()>;

const SHARDS: usize = 16;

pub(crate) struct Queues {
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Held strongly, so a hot scope's turn is made once, not once per update; entries that no
    /// update holds any more are swept now and then.
    map: HashMap<String, Arc<Turn>>,
    /// The map's size after the last sweep.
    swept_at: usize,
}

impl Queues {
    pub(crate) fn new() -> Self {
        Queues {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The turn lock of `key` if one exists, without making one: a read looks here, so reads
    /// of cold scopes allocate nothing.
    pub(crate) fn existing(&self, key: &str) -> Option<Arc<Turn>> {
        self.shard(key).map.get(key).cloned()
    }

    /// The turn lock of `key`, made on first use.
    pub(crate) fn turn(&self, key: &str) -> Arc<Turn> {
        let mut shard = self.shard(key);
        if let Some(turn) = shard.map.get(key) {
            return turn.clone();
        }
        let turn = Arc::new(Turn::new(()));
        shard.map.insert(key.to_owned(), turn.clone());
        // Sweep idle entries when the map has doubled since the last sweep: amortised O(1).
        if shard.map.len() > 2 * shard.swept_at.max(64) {
            shard.map.retain(|_, t| Arc::strong_count(t) > 1);
            shard.swept_at = shard.map.len();
        }
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

fn shard_of(key: &str) -> usize {
    use std::hash::{BuildHasher, RandomState};
    static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(RandomState::new);
    (state.hash_one(key) as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_turn_and_dead_entries_are_swept() {
        let q = Queues::new();
        assert!(q.existing("a").is_none());
        let a = q.turn("a");
        let b = q.turn("a");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(q.existing("a").is_some_and(|c| Arc::ptr_eq(&a, &c)));
        drop((a, b));
        for i in 0..10_000 {
            let _t = q.turn(&format!("k{i}"));
        }
        assert!(q.len() < 2_000, "{}", q.len());
    }
}
