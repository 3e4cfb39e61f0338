//! `memory://`: records in a map inside the process. The reference driver of the behavior suite.
//!
//! # URLs
//!
//! | URL | store |
//! |---|---|
//! | `memory://` (or `memory:`) | a fresh, empty store of its own: two opens are two stores |
//! | `memory://NAME` | the store named `NAME` in this process: every open of that name shares it |
//!
//! `NAME` is 1 to 255 ASCII letters, digits, `-`, `_` and `.`, taken exactly (`memory://Cache`
//! and `memory://cache` are two stores). The driver takes no options.
//!
//! A named store lives as long as some driver holds it (a [`MemoryDriver`], its clones, or a
//! [`Storage`](crate::Storage) over one): when the last one is dropped its records are gone, and
//! the next open of that name starts empty, like SQLite's named in-memory databases. Keep one
//! handle open for as long as the data should stay. Nothing is shared between processes, and
//! nothing survives the process.
//!
//! ```
//! use mp_storage::Storage;
//!
//! # async fn demo() -> Result<(), mp_storage::Error> {
//! let a = Storage::open("memory://sessions").await?;
//! let b = Storage::open("memory://sessions").await?;
//! a.set("n", &1u64).await?;
//! assert_eq!(b.get::<u64>("n").await?, Some(1));
//! // A store of its own sees nothing of it.
//! let c = Storage::open("memory://").await?;
//! assert_eq!(c.get::<u64>("n").await?, None);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    now_ms, Action, Capabilities, CasOutcome, ChangeStream, CommitOutcome, Driver, Expiry, Feeds,
    Op, Record, Revision, WatchSet, Write,
};
use crate::Error;

mod shared;

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["memory"];

/// The records of one store.
type Map = Mutex<Store>;

/// A store: its records, the reservations on them (contract rule 13), and the change feeds
/// of the engines watching it (contract rule 17).
#[derive(Debug, Default)]
struct Store {
    records: HashMap<String, Arc<Record>, lru::DefaultHasher>,
    reserved: HashMap<String, (u64, Instant), lru::DefaultHasher>,
    feeds: Feeds,
}

impl Store {
    /// The record of `key` unless it expired (an expired one is dropped here).
    fn live(&mut self, key: &str) -> Option<&mut Arc<Record>> {
        if self.records.get(key)?.expired_now() {
            self.records.remove(key);
            self.reserved.remove(key);
            return None;
        }
        self.records.get_mut(key)
    }

    /// Whether `key` is reserved for someone other than `claimant` now.
    fn reserved_for_other(&mut self, key: &str, claimant: u64) -> bool {
        self.held_for_other(key, claimant).is_some()
    }

    /// How long a reservation of someone other than `claimant` still holds `key`, if one does.
    fn held_for_other(&mut self, key: &str, claimant: u64) -> Option<Duration> {
        if self.reserved.is_empty() {
            return None;
        }
        let &(holder, until) = self.reserved.get(key)?;
        let now = Instant::now();
        if now >= until {
            self.reserved.remove(key);
            return None;
        }
        (holder != claimant).then(|| until - now)
    }
}

/// An in-process driver for tests and development. Every handle made by [`MemoryDriver::new`]
/// is a store of its own; [`MemoryDriver::named`] shares a store by name within the process;
/// clones share their store.
#[derive(Clone, Debug, Default)]
pub struct MemoryDriver {
    map: Arc<Map>,
    store_name: Option<Arc<str>>,
}

impl MemoryDriver {
    /// An empty store of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store named `name` in this process, shared by every driver of that name: the
    /// [`memory://NAME`](self) form of a URL, for any string. Made empty when no driver holds
    /// it.
    ///
    /// ```
    /// use mp_storage::driver::memory::MemoryDriver;
    /// let a = MemoryDriver::named("jobs");
    /// let b = MemoryDriver::named("jobs");
    /// assert!(a.shares_store_with(&b));
    /// assert!(!a.shares_store_with(&MemoryDriver::named("other")));
    /// ```
    pub fn named(name: &str) -> Self {
        MemoryDriver {
            map: shared::store(name),
            store_name: Some(name.into()),
        }
    }

    /// Opens the store a `memory:` URL names (see the [module docs](self)): a store of its own
    /// for `memory://`, the shared store `NAME` for `memory://NAME`.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("memory", SCHEMES)?;
        parsed.only_options(&[])?;
        match shared::name_in_url(&parsed)? {
            None => Ok(Self::new()),
            Some(name) => Ok(Self::named(name)),
        }
    }

    /// The name of the shared store, `None` for a store of its own.
    pub fn store_name(&self) -> Option<&str> {
        self.store_name.as_deref()
    }

    /// Whether `self` and `other` read and write the same records.
    pub fn shares_store_with(&self, other: &MemoryDriver) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// [`Driver::load_shared`], at once.
    fn load_shared_sync(&self, key: &str) -> Option<Arc<Record>> {
        let mut store = self.map();
        // One lookup for a live record (`Store::live` takes two, to hand out a mutable one).
        match store.records.get(key) {
            None => return None,
            Some(r) if !r.expired_now() => return Some(r.clone()),
            Some(_) => {}
        }
        store.live(key).cloned()
    }

    /// [`Driver::cas`], at once.
    fn cas_sync(&self, key: &str, expected: Option<Revision>, write: Write<'_>) -> CasOutcome {
        let mut store = self.map();
        if let Some(left) = store.held_for_other(key, write.claimant) {
            return CasOutcome::Conflict(
                store
                    .live(key)
                    .map(|r| Record::clone(r).with_reserved_for(Some(left))),
            );
        }
        match store.live(key) {
            Some(current) if expected.is_some_and(|e| e.matches(current)) => {
                let version = write.next_version(Some(current.version));
                write.apply(version, Arc::make_mut(current));
                store.feeds.changed(key, Some(version));
                CasOutcome::Committed(version)
            }
            Some(current) => {
                let current = Record::clone(current);
                match write.reserve {
                    // Lost, and nobody else holds it (checked above): reserve it (rule 13).
                    Some(ttl) => {
                        store
                            .reserved
                            .insert(key.to_owned(), (write.claimant, Instant::now() + ttl));
                        CasOutcome::Reserved(current)
                    }
                    None => CasOutcome::Conflict(Some(current)),
                }
            }
            None if expected.is_none() => {
                let version = write.next_version(None);
                store
                    .records
                    .insert(key.to_owned(), Arc::new(write.to_record(version, &[])));
                store.feeds.changed(key, Some(version));
                CasOutcome::Committed(version)
            }
            None => CasOutcome::Conflict(None),
        }
    }

    fn map(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a record half-written (every update is one
        // insert), so a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every call is ready at once, so a loop of them would never give other tasks a turn; spend the
/// task's cooperative budget like a real I/O resource does.
async fn coop() {
    tokio::task::coop::consume_budget().await;
}

#[async_trait]
impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_multi_key_commit()
            .with_expiry()
            .with_watch()
            .with_reserve_on_conflict()
    }

    fn changes(&self, watched: Arc<WatchSet>) -> Option<ChangeStream> {
        Some(self.map().feeds.open(watched))
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        coop().await;
        Ok(self.map().live(key).map(|r| Record::clone(r)))
    }

    async fn load_shared(&self, key: &str) -> Result<Option<Arc<Record>>, Error> {
        coop().await;
        Ok(self.load_shared_sync(key))
    }

    fn load_shared_now(&self, key: &str) -> Option<Result<Option<Arc<Record>>, Error>> {
        Some(Ok(self.load_shared_sync(key)))
    }

    fn cas_now(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Option<Result<CasOutcome, Error>> {
        Some(Ok(self.cas_sync(key, expected, write)))
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        coop().await;
        let mut store = self.map();
        Ok(keys
            .iter()
            .map(|k| store.live(k).map(|r| Record::clone(r)))
            .collect())
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        coop().await;
        // One critical section: every check first, then every write.
        let mut store = self.map();
        let mut failed = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let claimant = match op.action {
                Action::Write(w) => w.claimant,
                Action::Check | Action::Delete => 0,
            };
            let at = match (store.live(op.key), op.expected) {
                (Some(r), Some(e)) => e.matches(r),
                (None, None) => true,
                _ => false,
            };
            let reserved =
                !matches!(op.action, Action::Check) && store.reserved_for_other(op.key, claimant);
            if !at || reserved {
                failed.push((i, store.live(op.key).map(|r| Record::clone(r))));
            }
        }
        if !failed.is_empty() {
            return Ok(CommitOutcome::Conflict(failed));
        }
        let mut versions = Vec::with_capacity(ops.len());
        for op in ops {
            match op.action {
                Action::Check => versions.push(None),
                Action::Delete => {
                    store.records.remove(op.key);
                    store.reserved.remove(op.key);
                    store.feeds.changed(op.key, None);
                    versions.push(None);
                }
                Action::Write(w) => match store.live(op.key) {
                    Some(current) => {
                        let version = w.next_version(Some(current.version));
                        w.apply(version, Arc::make_mut(current));
                        store.feeds.changed(op.key, Some(version));
                        versions.push(Some(version));
                    }
                    None => {
                        let version = w.next_version(None);
                        store
                            .records
                            .insert(op.key.to_owned(), Arc::new(w.to_record(version, &[])));
                        store.feeds.changed(op.key, Some(version));
                        versions.push(Some(version));
                    }
                },
            }
        }
        Ok(CommitOutcome::Committed(versions))
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        coop().await;
        Ok(self.cas_sync(key, expected, write))
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        coop().await;
        let mut store = self.map();
        store.reserved.remove(key);
        let current = store.live(key);
        let version = write.next_version(current.as_ref().map(|r| r.version));
        let tokens = current
            .as_ref()
            .map(|r| r.tokens.clone())
            .unwrap_or_default();
        let mut record = write.to_record(version, &tokens);
        record.expires_at = write
            .expiry
            .resolve(current.and_then(|r| r.expires_at), now_ms);
        store.records.insert(key.to_owned(), Arc::new(record));
        store.feeds.changed(key, Some(version));
        Ok(version)
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        coop().await;
        let mut store = self.map();
        match store.live(key) {
            Some(r) => {
                let expires_at = expiry.resolve(r.expires_at, now_ms);
                Arc::make_mut(r).expires_at = expires_at;
                store.feeds.changed(key, None);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        coop().await;
        let mut store = self.map();
        if store.live(key).is_none() || store.reserved_for_other(key, claimant) {
            return Ok(false);
        }
        store
            .reserved
            .insert(key.to_owned(), (claimant, Instant::now() + ttl));
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        coop().await;
        let mut store = self.map();
        store.reserved.remove(key);
        let live = store.live(key).is_some();
        store.records.remove(key);
        if live {
            store.feeds.changed(key, None);
        }
        Ok(live)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        coop().await;
        let store = self.map();
        let now = now_ms();
        let sorted: BTreeMap<&String, ()> = store
            .records
            .iter()
            .filter(|(k, r)| k.as_bytes().starts_with(prefix.as_bytes()) && !r.expired_at(now))
            .map(|(k, _)| (k, ()))
            .collect();
        Ok(sorted.into_keys().cloned().collect())
    }
}
