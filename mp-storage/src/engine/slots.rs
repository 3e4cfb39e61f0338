//! One slot per scope the process is working with: the last record seen (the cache, so a warm
//! update skips the load) and the scope's turn (so the updates of one process take turns instead
//! of racing each other's compare-and-swaps). One lookup serves both.
//!
//! The cache is only ever a guess: an update from it is a compare-and-swap against the cached
//! revision (a stale entry costs one failed compare-and-swap, which returns the fresh record),
//! and an answer decided on cached data without a write is confirmed by a load before it
//! returns.
//!
//! Bounded twice: by scopes (the slots not used lately go first) and by the bytes of the cached
//! records. Sharded by key hash, so tasks on different scopes rarely wait for each other's lock.

use std::any::TypeId;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use tokio::time::Instant;

use crate::codec::Lost;
use crate::driver::Record;

const SHARDS: usize = 16;

/// Slots kept per shard at the least, so turns work with the cache turned off.
const MIN_SLOTS_PER_SHARD: usize = 64;

/// The turn of one scope within the process.
pub(crate) type Turn = tokio::sync::Mutex<()>;

/// What the engine knows of one scope.
pub(crate) struct Slot {
    cached: Mutex<Cached>,
    pub(crate) turn: Turn,
    /// The shard whose map holds this slot.
    shard: usize,
    /// The shard's clock when the slot last went to the front of its map ([`Slots::find`]).
    stamp: AtomicU64,
    /// Wakes the updates waiting for a load of this scope that another update sent
    /// ([`Slot::wait_for_load`]).
    loaded: tokio::sync::Notify,
}

/// A load of a scope in flight, noted in its slot until dropped (see [`Slot::loading`]).
pub(crate) struct Loading<'a> {
    slot: &'a Slot,
    sent: Instant,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        {
            let mut cached = self.slot.lock();
            if cached.loading == Some(self.sent) {
                cached.loading = None;
            }
        }
        self.slot.loaded.notify_waiters();
    }
}

/// What a record read as one type is, seen from a write of that type.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    /// The encoding of the decoded value is the record's data byte for byte.
    Canonical,
    /// Not byte for byte, but a write keeps every stored field.
    Keeps,
    /// A write would lose these stored fields.
    Loses(Arc<Lost>),
}

#[derive(Default)]
struct Cached {
    record: Option<Arc<Record>>,
    /// What is known of the record read as one type, once seen: whether the encoding of its
    /// decoded value is the record's data byte for byte (an update of that type then compares
    /// its result with the data as is instead of encoding the value before the closure runs),
    /// else whether writing over it would lose stored data (checked once per record).
    memo: Option<(TypeId, Verdict)>,
    /// Set when the slot left its shard's map: nothing is cached in it any more.
    detached: bool,
    /// When a request was sent whose answer showed `record` current (a load, or the
    /// compare-and-swap that wrote it): the backend held it at some moment after this one.
    /// Noted only while other updates of the scope were in flight (see
    /// [`Slot::wait_for_load`]).
    seen: Option<Instant>,
    /// When the newest load of the scope still in flight was sent, if one is.
    loading: Option<Instant>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Cached> {
        // Every operation under this lock is one assignment: a panic elsewhere cannot leave it
        // inconsistent.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached record, if any.
    pub(crate) fn get(&self) -> Option<Arc<Record>> {
        self.lock().record.clone()
    }

    /// Whether `record` (still the cached one) is known to be `T`'s canonical encoding.
    pub(crate) fn is_canonical(&self, record: &Arc<Record>, t: TypeId) -> bool {
        matches!(self.verdict(record, t), Some(Verdict::Canonical))
    }

    /// Notes that `record`, if still the cached one, is `T`'s canonical encoding.
    pub(crate) fn set_canonical(&self, record: &Arc<Record>, t: TypeId) {
        self.set_verdict(record, t, Verdict::Canonical);
    }

    /// What is known of `record` (still the cached one) read as `T`.
    pub(crate) fn verdict(&self, record: &Arc<Record>, t: TypeId) -> Option<Verdict> {
        let cached = self.lock();
        match &cached.memo {
            Some((of, verdict))
                if *of == t
                    && cached
                        .record
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, record)) =>
            {
                Some(verdict.clone())
            }
            _ => None,
        }
    }

    /// Notes a load of the scope sent at `sent` as in flight until the returned guard drops
    /// (after its answer went into the cache, or when it failed): updates that began before
    /// `sent` may wait for it instead of sending their own ([`Slot::wait_for_load`]).
    pub(crate) fn loading(&self, sent: Instant) -> Loading<'_> {
        {
            let mut cached = self.lock();
            if cached.loading.is_none_or(|t| t < sent) {
                cached.loading = Some(sent);
            }
        }
        Loading { slot: self, sent }
    }

    /// Whether `record`, read by an update that began at `since`, is known current during it:
    /// at once, or once the loads of the scope in flight answer (see inside). `false` when no
    /// load is in flight, or they found another record or failed, or they were all sent before
    /// `since`: then the update loads for itself.
    pub(crate) async fn wait_for_load(&self, record: &Arc<Record>, since: Instant) -> bool {
        // Registered for the wake-up only once there is a load to wait for (a registration
        // takes the `Notify`'s own lock), and before the state is read again (so that a load
        // ending in between is not missed).
        let mut waiting = None;
        loop {
            {
                let cached = self.lock();
                let current = cached
                    .record
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, record));
                if !current {
                    return false;
                }
                if cached.seen.is_some_and(|at| at > since) {
                    return true;
                }
                // A load in flight: one sent after `since` answers for this update; one sent
                // before it does not, but waiting for it lets this update send the next load
                // for every update waiting then (the first of them to wake sends it, the others
                // wait for it) instead of each sending its own.
                if cached.loading.is_none() {
                    return false;
                }
            }
            match waiting.take() {
                Some(notified) => notified.await,
                None => {
                    let mut notified = Box::pin(self.loaded.notified());
                    notified.as_mut().enable();
                    waiting = Some(notified);
                }
            }
        }
    }

    /// The cached record if it is `record` (the same one, or an equal one), now also seen
    /// current by a request sent at `seen` (when given).
    fn keep_same(&self, record: &Arc<Record>, seen: Option<Instant>) -> Option<Arc<Record>> {
        let mut cached = self.lock();
        let same = cached
            .record
            .as_ref()
            .filter(|c| Arc::ptr_eq(c, record) || ***c == **record)?
            .clone();
        if seen > cached.seen {
            cached.seen = seen;
        }
        Some(same)
    }

    /// Notes what `record`, if still the cached one, is when read as `T`.
    pub(crate) fn set_verdict(&self, record: &Arc<Record>, t: TypeId, verdict: Verdict) {
        let mut cached = self.lock();
        if cached
            .record
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, record))
        {
            cached.memo = Some((t, verdict));
        }
    }
}

/// The slots of one shard, the least recently moved to the front first out.
struct Shard {
    map: LruCache<String, Arc<Slot>>,
    /// Counts the slots put or moved to the front of `map`: one whose stamp is `s` has at most
    /// `clock - s` slots in front of it.
    clock: u64,
}

pub(crate) struct Slots {
    shards: Box<[Mutex<Shard>]>,
    /// Bytes of the records cached in each shard's slots.
    bytes: Box<[AtomicUsize]>,
    hasher: lru::DefaultHasher,
    /// Whether records are cached at all (capacity above 0).
    caching: bool,
    slots_per_shard: usize,
    bytes_per_shard: usize,
}

/// The bytes a cached record holds.
fn weight(r: &Record) -> usize {
    r.data.len() + r.tokens.len() * 8 + std::mem::size_of::<Record>()
}

impl Slots {
    /// Slots for about `capacity` cached scopes (0 caches nothing) and at most `byte_budget`
    /// bytes of cached records.
    pub(crate) fn new(capacity: usize, byte_budget: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Slots {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: LruCache::unbounded(),
                        clock: 0,
                    })
                })
                .collect(),
            bytes: (0..SHARDS).map(|_| AtomicUsize::new(0)).collect(),
            hasher: lru::DefaultHasher::default(),
            caching: capacity > 0 && byte_budget > 0,
            slots_per_shard: per_shard.max(MIN_SLOTS_PER_SHARD),
            bytes_per_shard: byte_budget.div_ceil(SHARDS),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn lock_shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of `key` in `shard`, moved to the front of the map only when it may have fallen
    /// behind half of the shard's bound. A slot in use stays in the front half, so the bound by
    /// scopes never drops it, and the lookup of a hot scope writes nothing to the map's list (a
    /// move to the front rewrites its neighbours' links: cache misses with many scopes).
    fn find(&self, shard: &mut Shard, key: &str) -> Option<Arc<Slot>> {
        let slot = shard.map.peek(key)?.clone();
        let behind = shard
            .clock
            .saturating_sub(slot.stamp.load(Ordering::Relaxed));
        if behind > (self.slots_per_shard / 2) as u64 {
            shard.map.promote(key);
            shard.clock += 1;
            slot.stamp.store(shard.clock, Ordering::Relaxed);
        }
        Some(slot)
    }

    /// The slot of `key`, made on first use.
    pub(crate) fn slot(&self, key: &str) -> Arc<Slot> {
        let i = self.shard_of(key);
        let mut shard = self.lock_shard(i);
        if let Some(slot) = self.find(&mut shard, key) {
            return slot;
        }
        shard.clock += 1;
        let slot = Arc::new(Slot {
            cached: Mutex::default(),
            turn: Turn::new(()),
            shard: i,
            stamp: AtomicU64::new(shard.clock),
            loaded: tokio::sync::Notify::new(),
        });
        shard.map.put(key.to_owned(), slot.clone());
        self.trim(i, &mut shard.map);
        slot
    }

    /// The slot of `key` if there is one, without making one.
    pub(crate) fn existing(&self, key: &str) -> Option<Arc<Slot>> {
        self.find(&mut self.lock_shard(self.shard_of(key)), key)
    }

    /// The cached record of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Record>> {
        self.existing(key)?.get()
    }

    /// Remembers `record` (or the scope's absence) in `slot`.
    pub(crate) fn set(&self, slot: &Slot, record: Option<Arc<Record>>) {
        self.set_known(slot, record, None, None);
    }

    /// Remembers `record`, just loaded by a request sent at `seen` (when the time was taken),
    /// in `slot`, unless the slot holds the same one already: then that one (and its memo) is
    /// kept and returned.
    pub(crate) fn keep_or_set(
        &self,
        slot: &Slot,
        record: Option<Arc<Record>>,
        seen: Option<Instant>,
    ) -> Option<Arc<Record>> {
        if let Some(r) = &record {
            if let Some(same) = slot.keep_same(r, seen) {
                return Some(same);
            }
        }
        self.set_known(slot, record.clone(), None, seen);
        record
    }

    /// Remembers `record` written by this process from a value of type `t` with a
    /// compare-and-swap sent at `seen` (when the time was taken): its data is `t`'s own
    /// encoding, so the next update of that type compares against it as is.
    pub(crate) fn set_own(
        &self,
        slot: &Slot,
        record: Arc<Record>,
        t: TypeId,
        seen: Option<Instant>,
    ) {
        self.set_known(slot, Some(record), Some((t, Verdict::Canonical)), seen);
    }

    fn set_known(
        &self,
        slot: &Slot,
        record: Option<Arc<Record>>,
        memo: Option<(TypeId, Verdict)>,
        seen: Option<Instant>,
    ) {
        let record = if self.caching { record } else { None };
        let new = record.as_deref().map_or(0, weight);
        let bytes = &self.bytes[slot.shard];
        // The count changes under the slot's lock, like the slot's record, so that it never
        // drops below what the shard's slots hold: `trim` takes a detached slot's weight off
        // under that lock too, and a change counted after it (the record swapped before, the
        // count after) would first take off what was never added.
        let over = {
            let mut cached = slot.lock();
            if cached.detached {
                return;
            }
            cached.memo = if record.is_some() { memo } else { None };
            cached.seen = if record.is_some() { seen } else { None };
            let old = std::mem::replace(&mut cached.record, record);
            let old = old.as_deref().map_or(0, weight);
            if new > old {
                let now = bytes
                    .fetch_add(new - old, Ordering::Relaxed)
                    .saturating_add(new - old);
                now > self.bytes_per_shard
            } else {
                bytes.fetch_sub(old - new, Ordering::Relaxed);
                false
            }
        };
        // Outside the slot's lock: `trim` takes the shard's lock, then slots' locks.
        if over {
            let mut shard = self.lock_shard(slot.shard);
            self.trim(slot.shard, &mut shard.map);
        }
    }

    /// Lets go of `record` if `slot` holds it (this process is about to replace it with what
    /// its write made of it): the slot caches nothing until then.
    pub(crate) fn release(&self, slot: &Slot, record: &Arc<Record>) {
        let mut cached = slot.lock();
        if cached.detached
            || !cached
                .record
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, record))
        {
            return;
        }
        cached.memo = None;
        cached.seen = None;
        if let Some(held) = cached.record.take() {
            self.bytes[slot.shard].fetch_sub(weight(&held), Ordering::Relaxed);
        }
    }

    /// Remembers `record` for `key` in its slot, making one if needed.
    pub(crate) fn put(&self, key: &str, record: Option<Arc<Record>>) {
        match record {
            None => {
                if let Some(slot) = self.existing(key) {
                    self.set(&slot, None);
                }
            }
            Some(r) => {
                let slot = self.slot(key);
                self.set(&slot, Some(r));
            }
        }
    }

    /// Drops the least recently used slots while shard `i` is over either bound. A slot still in
    /// use by an update stays alive for it, caching nothing; a later update of that scope makes a
    /// new one.
    fn trim(&self, i: usize, map: &mut LruCache<String, Arc<Slot>>) {
        let bytes = &self.bytes[i];
        while map.len() > self.slots_per_shard
            || (bytes.load(Ordering::Relaxed) > self.bytes_per_shard && !map.is_empty())
        {
            let Some((_, slot)) = map.pop_lru() else {
                break;
            };
            let mut cached = slot.lock();
            cached.detached = true;
            if let Some(r) = cached.record.take() {
                bytes.fetch_sub(weight(&r), Ordering::Relaxed);
            }
        }
    }

    /// Bytes of the records cached now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64, len: usize) -> Option<Arc<Record>> {
        Some(Arc::new(Record::new(version, 0, vec![b'x'; len], vec![1])))
    }

    #[test]
    fn same_key_same_slot() {
        let s = Slots::new(100, 1 << 20);
        let a = s.slot("a");
        let b = s.slot("a");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(s.existing("b").is_none());
        s.set(&a, rec(2, 3));
        assert_eq!(s.get("a").map(|r| r.version), Some(2));
        s.put("a", None);
        assert!(s.get("a").is_none());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn release_lets_go_of_the_held_record_only() {
        let s = Slots::new(100, 1 << 20);
        let a = s.slot("a");
        let r = rec(2, 3);
        s.set(&a, r.clone());
        let other = rec(2, 3).unwrap();
        s.release(&a, &other);
        assert_eq!(s.get("a").map(|r| r.version), Some(2));
        let r = r.unwrap();
        s.release(&a, &r);
        assert!(s.get("a").is_none());
        assert_eq!(s.bytes(), 0);
        assert_eq!(Arc::strong_count(&r), 1);
    }

    #[test]
    fn bounded_by_scopes() {
        let s = Slots::new(32 * SHARDS, 1 << 30);
        for i in 0..10_000 {
            s.put(&format!("k{i}"), rec(i, 1));
        }
        let kept = (0..10_000)
            .filter(|i| s.get(&format!("k{i}")).is_some())
            .count();
        assert!(kept <= MIN_SLOTS_PER_SHARD * SHARDS, "{kept}");
    }

    #[test]
    fn slots_in_use_stay_while_unused_ones_go() {
        let s = Slots::new(MIN_SLOTS_PER_SHARD * SHARDS, 1 << 30);
        s.put("hot", rec(1, 1));
        s.put("cold", rec(1, 1));
        for i in 0..20_000 {
            s.put(&format!("k{i}"), rec(i, 1));
            assert!(
                s.get("hot").is_some(),
                "the scope in use was dropped after {i}"
            );
        }
        assert!(s.get("cold").is_none());
        // What is dropped is what was used least lately: the newest keys are all there.
        assert!((19_990..20_000).all(|i| s.get(&format!("k{i}")).is_some()));
    }

    #[test]
    fn bounded_by_bytes() {
        let budget = 1 << 20;
        let s = Slots::new(1_000_000, budget);
        for i in 0..1000 {
            s.put(&format!("k{i}"), rec(i, 64 << 10));
        }
        assert!(s.bytes() <= budget + (64 << 10) * SHARDS, "{}", s.bytes());
        // A record larger than a shard's share is not kept at all.
        s.put("huge", rec(1, 2 << 20));
        assert!(s.get("huge").is_none());
    }

    #[test]
    fn verdicts_belong_to_one_record_and_type() {
        let s = Slots::new(100, 1 << 20);
        let a = s.slot("a");
        let r = rec(1, 3).unwrap();
        s.set(&a, Some(r.clone()));
        let (t, u) = (TypeId::of::<u8>(), TypeId::of::<u16>());
        assert!(a.verdict(&r, t).is_none());
        a.set_verdict(&r, t, Verdict::Keeps);
        assert!(matches!(a.verdict(&r, t), Some(Verdict::Keeps)));
        assert!(a.verdict(&r, u).is_none() && !a.is_canonical(&r, t));
        a.set_canonical(&r, t);
        assert!(a.is_canonical(&r, t));
        // Another record (even an equal one) knows nothing; a new record clears the memo.
        let other = rec(1, 3).unwrap();
        assert!(a.verdict(&other, t).is_none());
        a.set_verdict(&other, t, Verdict::Keeps);
        assert!(a.is_canonical(&r, t));
        s.set(&a, Some(other.clone()));
        assert!(a.verdict(&other, t).is_none() && a.verdict(&r, t).is_none());
    }

    #[test]
    fn byte_count_stays_exact_while_trims_race_with_sets() {
        // A budget of a few records per shard, so that sets and trims meet all the time.
        let s = Arc::new(Slots::new(
            1_000_000,
            SHARDS * 3 * weight(&rec(0, 100).unwrap()),
        ));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let key = format!("k{}", (i * 7 + t) % 40);
                        let len = usize::try_from(i % 3).unwrap() * 100;
                        s.put(&key, if i % 5 == 0 { None } else { rec(i, len) });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let held: usize = (0..40)
            .filter_map(|k| s.get(&format!("k{k}")))
            .map(|r| weight(&r))
            .sum();
        assert_eq!(s.bytes(), held);
    }

    #[test]
    fn off_caches_nothing_but_keeps_turns() {
        let s = Slots::new(0, 1 << 20);
        let a = s.slot("a");
        s.set(&a, rec(1, 1));
        assert!(s.get("a").is_none());
        assert!(Arc::ptr_eq(&a, &s.slot("a")));
    }
}
