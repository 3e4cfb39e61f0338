//! The engine: the one retry loop every update form and every driver shares, and the only
//! writer of the cache.
//!
//! [`Engine::update`] runs the loop in named steps (see `update.rs`): *begin* an attempt from
//! the cache or a load, run the closure, *commit* its change with a compare-and-swap, and *on a
//! conflict* go again from the record the conflict returned. A write whose reply was lost is
//! *settled* from the record's commit tokens (`settle.rs`) before anything is retried. The
//! handle ([`crate::Storage`]) and the builder only adapt the public calls to these.

mod keys;
mod lease;
mod many;
mod receipts;
mod schema;
mod settle;
mod slots;
mod update;
mod watch;

use std::future::Future;
use std::sync::Arc;

use crate::codec;
use crate::driver::{CasOutcome, Driver, Record};
use crate::stats::{Counter, Counters, Stats};
use crate::{Error, RetryPolicy, Scope};

pub(crate) use keys::{Key, Keys};
pub use keys::{MAX_KEY_LEN, MAX_NAME_LEN};
pub use lease::{DEFAULT_LEASE, MIN_LEASE};
pub use receipts::{MAX_IDEMPOTENCY_KEY_LEN, MAX_RECEIPTS, MAX_RECEIPT_RESULT_LEN, RECEIPT_TTL};
pub(crate) use schema::Rewritten;
use slots::Slots;
pub use watch::Watch;

/// The default largest encoded scope, in bytes (16 MiB); a driver may allow less.
pub const DEFAULT_MAX_DATA_LEN: usize = 16 << 20;

/// The default number of scopes whose last record is cached.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// The default bound of the bytes the cache holds (64 MiB).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The longest time to live: ten years.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 60 * 60);

/// What a write of `T` does to its scope's expiry: now + `T::TTL`, or keep it.
pub(crate) fn expiry_of<T: Scope>() -> crate::driver::Expiry {
    match T::TTL {
        Some(ttl) => crate::driver::Expiry::After(ttl),
        None => crate::driver::Expiry::Keep,
    }
}

/// How an engine is set up (the builder fills it in).
pub(crate) struct Settings {
    pub policy: RetryPolicy,
    pub keys: Keys,
    pub cache_capacity: usize,
    pub cache_bytes: usize,
    pub max_data_len: Option<usize>,
    /// The lease length of exclusive updates.
    pub lease: std::time::Duration,
}

/// The engine over one driver.
pub(crate) struct Engine {
    driver: Arc<dyn Driver>,
    policy: RetryPolicy,
    keys: Keys,
    max_data_len: usize,
    slots: Slots,
    counters: Counters,
    /// This engine's random id as a writer, for reservations (never 0).
    claimant: u64,
    /// The lease length of this engine's exclusive updates.
    lease: std::time::Duration,
    /// A moving average of the round trip of this engine's committed compare-and-swaps, in
    /// microseconds (0 before the first): the scale of a reservation's time slice.
    commit_rtt_us: std::sync::atomic::AtomicU64,
    /// The watchers' hub: one change subscription for all of them.
    hub: Arc<watch::Hub>,
    /// Dropped with the engine, which ends its sweeper.
    _sweeper: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How often the engine asks a driver to reclaim the space of expired records.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The most expired records one sweep deletes before it yields.
const SWEEP_BATCH: usize = 1000;

/// Starts the task that asks `driver` to delete expired records now and then, bounded batches
/// at a time, until the returned sender is dropped. None without a tokio runtime, or for a
/// driver without expiry.
fn start_sweeper(driver: &Arc<dyn Driver>) -> Option<tokio::sync::oneshot::Sender<()>> {
    if !driver.capabilities().expiry {
        return None;
    }
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = driver.clone();
    handle.spawn(async move {
        loop {
            // Spread the processes of one store over the interval.
            let jitter = rand::random_range(0.5..1.5);
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(SWEEP_INTERVAL.mul_f64(jitter)) => {}
            }
            for _ in 0..100 {
                match driver.sweep(SWEEP_BATCH).await {
                    Ok(n) if n >= SWEEP_BATCH => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "sweeping expired records failed");
                        break;
                    }
                }
            }
        }
    });
    Some(stop)
}

impl Engine {
    pub(crate) fn new(driver: Arc<dyn Driver>, settings: Settings) -> Engine {
        let limit = driver.max_data_len();
        Engine {
            max_data_len: settings.max_data_len.map_or(limit, |l| l.min(limit)),
            policy: settings.policy,
            keys: settings.keys,
            slots: Slots::new(settings.cache_capacity, settings.cache_bytes),
            counters: Counters::default(),
            claimant: rand::random_range(1..=u64::MAX),
            lease: settings.lease,
            commit_rtt_us: std::sync::atomic::AtomicU64::new(0),
            _sweeper: start_sweeper(&driver),
            hub: watch::Hub::new(driver.clone()),
            driver,
        }
    }

    pub(crate) fn driver(&self) -> &dyn Driver {
        &*self.driver
    }

    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub(crate) fn key_prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Notes the round trip of a committed compare-and-swap.
    pub(crate) fn note_commit_rtt(&self, rtt: std::time::Duration) {
        use std::sync::atomic::Ordering;
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.commit_rtt_us.load(Ordering::Relaxed);
        // An average over about the last eight commits; a lost race between two notes only
        // drops one sample.
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.commit_rtt_us.store(new, Ordering::Relaxed);
    }

    /// The time slice a reservation holds: sixteen commits' worth at the measured round trip,
    /// in whole milliseconds (what a driver keeps: none is cut off in its hands), at least 1 ms
    /// (the timers' resolution) and at most the policy's reservation time. Short against a fast
    /// backend, so that the processes waiting for a slice wait a few commits, not a fixed 10 ms
    /// that a Redis process fills with hundreds of commits.
    pub(crate) fn reservation_slice(&self) -> std::time::Duration {
        let most = self.policy.reservation_ttl();
        let rtt = self
            .commit_rtt_us
            .load(std::sync::atomic::Ordering::Relaxed);
        if rtt == 0 {
            return most;
        }
        std::time::Duration::from_millis((rtt.saturating_mul(16) / 1000).max(1)).min(most)
    }

    /// A conflict error once an unconditional write or removal that began at `started` has run
    /// past the policy's deadline (these count no attempts).
    fn check_deadline(&self, key: &Key<'_>, started: tokio::time::Instant) -> Result<(), Error> {
        let elapsed = started.elapsed();
        if self.policy.deadline_limit().is_some_and(|d| elapsed >= d) {
            self.bump(Counter::GaveUp);
            return Err(Error::Conflict {
                scope: crate::error::shorten(key.scope()),
                attempts: 0,
                elapsed,
            });
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        let hub = self.hub.stats();
        stats.watch_feeds = hub.feeds;
        stats.watch_reads = hub.reads;
        stats
    }

    /// Watches scope `name` as `T` (see `watch.rs`).
    pub(crate) fn watch<T: Scope>(&self, name: &str) -> Result<Watch<T>, Error> {
        let key = self.key(T::NAMESPACE, name)?;
        if !self.driver.capabilities().watch {
            return Err(Error::Unsupported {
                driver: self.driver.name(),
                capability: "watching scopes (change hints)",
            });
        }
        Ok(self.hub.watch::<T>(key.as_str(), key.scope()))
    }

    fn bump(&self, counter: Counter) {
        self.counters.bump(counter);
    }

    /// The driver key of `name` for a type with `namespace`.
    pub(crate) fn key<'n>(&self, namespace: &str, name: &'n str) -> Result<Key<'n>, Error> {
        self.keys.key(namespace, name)
    }

    /// Loads and caches the record of `key`.
    async fn load(&self, key: &Key<'_>) -> Result<Option<Arc<Record>>, Error> {
        self.bump(Counter::Loads);
        let record = self
            .driver
            .load_shared(key.as_str())
            .await
            .map_err(|e| e.for_scope(key.scope()))?;
        self.slots.put(key.as_str(), record.clone());
        Ok(record)
    }

    /// Runs `f` on scope `name` until its change commits (see `update.rs`).
    pub(crate) async fn update<T, R, E, F, Fut>(&self, name: &str, f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        let key = self.key(T::NAMESPACE, name)?;
        self.check_expiry::<T>()?;
        update::run(self, &key, schema::Options::default(), None, f).await
    }

    /// Like [`Engine::update`], committing at most once per idempotency key (see `receipts.rs`).
    pub(crate) async fn update_once<T, R, E, F, Fut>(
        &self,
        name: &str,
        idempotency_key: &str,
        f: F,
    ) -> Result<R, E>
    where
        T: Scope,
        R: serde::Serialize + serde::de::DeserializeOwned + Send,
        E: From<Error> + Send,
        F: FnMut(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        let once = receipts::Once {
            key: idempotency_key,
            encode: |r: &R| serde_json::to_string(r),
            decode: |s: &str| serde_json::from_str(s),
        };
        once.check()?;
        let key = self.key(T::NAMESPACE, name)?;
        self.check_expiry::<T>()?;
        update::run(self, &key, schema::Options::default(), Some(&once), f).await
    }

    /// Runs `f` on the scopes `names` until its changes commit together (see `many.rs`).
    pub(crate) async fn update_many<T, R, E, F>(&self, names: &[&str], mut f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(&mut [T]) -> Result<R, E> + Send,
    {
        let keys = names
            .iter()
            .map(|n| self.key(T::NAMESPACE, n))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_expiry::<T>()?;
        if keys.len() > 1 && !self.driver.capabilities().multi_key_commit {
            return Err(Error::Unsupported {
                driver: self.driver.name(),
                capability: "several-scope commits",
            }
            .into());
        }
        many::run_many(self, &keys, false, move |values: &mut [Option<T>]| {
            let mut plain: Vec<T> = values
                .iter_mut()
                .map(|v| v.take().unwrap_or_default())
                .collect();
            let out = f(&mut plain);
            for (slot, v) in values.iter_mut().zip(plain) {
                *slot = Some(v);
            }
            out
        })
        .await
    }

    /// Runs `f` on scope `name` as an `Option`: `None` when absent; leaving it `None` removes
    /// it, at the revision read (see `many.rs`).
    pub(crate) async fn update_option<T, R, E, F>(&self, name: &str, mut f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(&mut Option<T>) -> Result<R, E> + Send,
    {
        let key = self.key(T::NAMESPACE, name)?;
        self.check_expiry::<T>()?;
        many::run_many(
            self,
            &[key],
            true,
            move |values: &mut [Option<T>]| match values {
                [v] => f(v),
                _ => Err(Error::InvalidName {
                    name: String::new(),
                    reason: "one scope expected",
                }
                .into()),
            },
        )
        .await
    }

    /// Sets or clears the expiry of the scope of `key`; whether it exists.
    pub(crate) async fn expire(
        &self,
        key: &Key<'_>,
        ttl: Option<std::time::Duration>,
    ) -> Result<bool, Error> {
        let expiry = match ttl {
            None => crate::driver::Expiry::Never,
            Some(d) if d.is_zero() || d > MAX_TTL => {
                return Err(Error::InvalidConfig {
                    setting: "expiry",
                    reason: format!(
                        "a time to live must be above zero and at most ten years, not {d:?}"
                    ),
                })
            }
            Some(d) => crate::driver::Expiry::After(d),
        };
        let existed = self
            .driver
            .expire(key.as_str(), expiry)
            .await
            .map_err(|e| self.lost_write(key, e, "expire"))?;
        // The cached record's expiry is old news.
        self.slots.put(key.as_str(), None);
        Ok(existed)
    }

    /// Refuses a type with a time to live on a driver without expiry.
    pub(crate) fn check_expiry<T: Scope>(&self) -> Result<(), Error> {
        if T::TTL.is_some() && !self.driver.capabilities().expiry {
            return Err(Error::Unsupported {
                driver: self.driver.name(),
                capability: "expiry (the type has a time to live)",
            });
        }
        Ok(())
    }

    /// Reads the scopes `names` as `T`, in their order.
    pub(crate) async fn get_many<T: Scope>(&self, names: &[&str]) -> Result<Vec<Option<T>>, Error> {
        let keys = names
            .iter()
            .map(|n| self.key(T::NAMESPACE, n))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.len() > crate::MAX_COMMIT_KEYS * 16 {
            return Err(Error::InvalidName {
                name: format!("{} names", keys.len()),
                reason: "one get_many reads at most 1024 scopes",
            });
        }
        many::get_many(self, &keys).await
    }

    /// Reads scope `name` as `T`.
    pub(crate) async fn get<T: Scope>(&self, name: &str) -> Result<Option<T>, Error> {
        let key = self.key(T::NAMESPACE, name)?;
        match self.load(&key).await? {
            None => Ok(None),
            Some(r) => match codec::decode(key.scope(), Some(&r)) {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    self.slots.put(key.as_str(), None);
                    Err(e)
                }
            },
        }
    }

    /// Writes `value` to scope `name` whatever is stored.
    pub(crate) async fn set<T: Scope>(&self, name: &str, value: &T) -> Result<(), Error> {
        let key = self.key(T::NAMESPACE, name)?;
        let data = self.encode::<T>(&key, value)?;
        self.check_expiry::<T>()?;
        // An untyped value keeps the schema the record has.
        let schema = (!T::UNTYPED).then_some(T::VERSION);
        self.write(&key, schema, data, expiry_of::<T>(), false)
            .await
            .map(|_| ())
    }

    /// Writes `data` to `key` at `schema` (`None`: the schema the record has, 0 for a new one)
    /// with `expiry`: whatever is stored, or, `only_if_absent`, only when the scope is absent.
    /// Returns whether it wrote.
    pub(crate) async fn write(
        &self,
        key: &Key<'_>,
        schema: Option<u32>,
        data: Vec<u8>,
        expiry: crate::driver::Expiry,
        only_if_absent: bool,
    ) -> Result<bool, Error> {
        self.check_size(key, &data)?;
        let slot = self.slots.slot(key.as_str());
        let keep_schema = schema.is_none();
        let mut schema = match schema {
            Some(s) => s,
            // Read the schema rather than trust whatever the cache holds.
            None if only_if_absent => 0,
            None => match self.slots.get(key.as_str()) {
                Some(r) => r.schema,
                None => self.load(key).await?.map_or(0, |r| r.schema),
            },
        };
        // A compare-and-swap rather than a blind put: a scope leased by an exclusive update
        // waits for it, and the write must not land over a lease taken meanwhile.
        let started = tokio::time::Instant::now();
        // Uncached, it first tries to create the scope: one round trip for a new scope, and an
        // existing one comes back with the conflict (contract rule 6).
        let mut current = if only_if_absent { None } else { slot.get() };
        let mut from_cache = current.is_some();
        loop {
            if current
                .as_ref()
                .is_some_and(|r| lease::lease_of(&r.meta).is_some())
            {
                current = lease::wait_free(self, key, &slot, current, from_cache, started).await?;
            }
            if let (true, Some(r)) = (keep_schema, &current) {
                schema = r.schema;
            }
            let expected = current.as_ref().map(|r| r.revision());
            let write = update::new_write(schema, &data)
                .with_claimant(self.claimant)
                .with_expiry(expiry);
            let token = write.token;
            let outcome = match self.driver.cas(key.as_str(), expected, write).await {
                Ok(o) => o,
                Err(e) if e.outcome_unknown() => {
                    self.slots.set(&slot, None);
                    match settle::settle(self, key, &slot, expected, token, None, e).await? {
                        settle::Settled::Committed(_) => {
                            self.bump(Counter::Settled);
                            self.bump(Counter::Commits);
                            return Ok(true);
                        }
                        settle::Settled::NotApplied(fresh) => CasOutcome::Conflict(fresh),
                    }
                }
                Err(e) => {
                    self.slots.set(&slot, None);
                    return Err(e.for_scope(key.scope()));
                }
            };
            let fresh = match outcome {
                CasOutcome::Committed(version) => {
                    self.bump(Counter::Commits);
                    let tokens = match &current {
                        Some(r) => crate::driver::push_token(&r.tokens, token),
                        None => vec![token],
                    };
                    let record = Record::new(version, schema, data, tokens);
                    self.slots.set(&slot, Some(Arc::new(record)));
                    return Ok(true);
                }
                CasOutcome::Conflict(fresh) => fresh,
                // Not asked for (no `Write::reserve` here): a conflict all the same.
                CasOutcome::Reserved(r) => Some(r),
            };
            if only_if_absent {
                match fresh {
                    Some(r) => {
                        self.slots.set(&slot, Some(Arc::new(r)));
                        return Ok(false);
                    }
                    // Present but not read at once, or gone again: look.
                    None if update::load(self, key, &slot).await?.is_some() => return Ok(false),
                    None => {}
                }
            }
            self.check_deadline(key, started)?;
            if only_if_absent {
                continue;
            }
            let same = fresh.as_ref().map(|r| r.revision()) == expected;
            if same {
                // Refused at the expected revision: another process's short
                // reservation.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.bump(Counter::Conflicts);
            current = match fresh {
                Some(r) => {
                    let r = Arc::new(r);
                    self.slots.set(&slot, Some(r.clone()));
                    Some(r)
                }
                None => update::load(self, key, &slot).await?,
            };
            from_cache = false;
        }
    }

    /// Writes several scopes like [`Engine::write`] (each at its schema, with its expiry), in
    /// commits of up to [`MAX_COMMIT_KEYS`](crate::MAX_COMMIT_KEYS) scopes, each one
    /// transaction or script where the driver commits several scopes at once: first the
    /// revisions are read in one round trip (not when `only_if_absent`), then written all or
    /// nothing. A commit that conflicts, meets a leased or unreadable record, or whose reply was
    /// lost is done again scope by scope through [`Engine::write`] (writing the same value
    /// twice is harmless for these writes). Returns, per scope, whether it wrote.
    pub(crate) async fn write_many(
        &self,
        entries: &[(Key<'_>, u32, &[u8], crate::driver::Expiry)],
        only_if_absent: bool,
    ) -> Result<Vec<bool>, Error> {
        for (key, _, data, _) in entries {
            self.check_size(key, data)?;
        }
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(crate::MAX_COMMIT_KEYS) {
            match self.commit_chunk(chunk, only_if_absent).await? {
                true => out.extend(std::iter::repeat_n(true, chunk.len())),
                false => {
                    for (key, schema, data, expiry) in chunk {
                        out.push(
                            self.write(key, Some(*schema), data.to_vec(), *expiry, only_if_absent)
                                .await?,
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// One commit of [`Engine::write_many`]: whether it wrote every scope (`false`: nothing
    /// known written, do them one by one).
    async fn commit_chunk(
        &self,
        chunk: &[(Key<'_>, u32, &[u8], crate::driver::Expiry)],
        only_if_absent: bool,
    ) -> Result<bool, Error> {
        if chunk.len() < 2 || !self.driver.capabilities().multi_key_commit {
            return Ok(false);
        }
        let keys: Vec<&str> = chunk.iter().map(|(k, ..)| k.as_str()).collect();
        let expected: Vec<Option<crate::driver::Revision>> = if only_if_absent {
            vec![None; chunk.len()]
        } else {
            self.bump(Counter::Loads);
            let records = match self.driver.load_many(&keys).await {
                Ok(r) => r,
                Err(Error::Corrupt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            };
            if records
                .iter()
                .flatten()
                .any(|r| lease::lease_of(&r.meta).is_some())
            {
                return Ok(false);
            }
            records
                .iter()
                .map(|r| r.as_ref().map(|r| r.revision()))
                .collect()
        };
        let ops: Vec<crate::driver::Op<'_>> = chunk
            .iter()
            .zip(&expected)
            .map(
                |((key, schema, data, expiry), expected)| crate::driver::Op {
                    key: key.as_str(),
                    expected: *expected,
                    action: crate::driver::Action::Write(
                        update::new_write(*schema, data)
                            .with_claimant(self.claimant)
                            .with_expiry(*expiry),
                    ),
                },
            )
            .collect();
        let outcome = self.driver.commit(&ops).await;
        for key in &keys {
            self.slots.put(key, None);
        }
        match outcome {
            Ok(crate::driver::CommitOutcome::Committed(_)) => {
                self.bump(Counter::Commits);
                self.bump(Counter::MultiCommits);
                Ok(true)
            }
            Ok(crate::driver::CommitOutcome::Conflict(_)) => {
                self.bump(Counter::Conflicts);
                Ok(false)
            }
            Err(e) if e.outcome_unknown() || matches!(e, Error::Corrupt { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the record of `key`; whether it existed. A scope leased by an exclusive update
    /// waits for it, and the delete is checked against the revision read.
    pub(crate) async fn remove(&self, key: &Key<'_>) -> Result<bool, Error> {
        let slot = self.slots.slot(key.as_str());
        let started = tokio::time::Instant::now();
        let loaded = update::load(self, key, &slot).await;
        // A corrupt record is removed as it is (contract rule 9), without a revision to check.
        if !self.driver.capabilities().multi_key_commit
            || matches!(loaded, Err(Error::Corrupt { .. }))
        {
            self.slots.put(key.as_str(), None);
            let existed = self.driver.delete(key.as_str()).await;
            self.slots.put(key.as_str(), None);
            return existed.map_err(|e| self.lost_write(key, e, "remove"));
        }
        let mut current = loaded?;
        loop {
            if current
                .as_ref()
                .is_some_and(|r| lease::lease_of(&r.meta).is_some())
            {
                current = lease::wait_free(self, key, &slot, current, false, started).await?;
            }
            let Some(record) = &current else {
                return Ok(false);
            };
            let op = crate::driver::Op {
                key: key.as_str(),
                expected: Some(record.revision()),
                action: crate::driver::Action::Delete,
            };
            let outcome = self.driver.commit(&[op]).await;
            self.slots.set(&slot, None);
            match outcome.map_err(|e| self.lost_write(key, e, "remove"))? {
                crate::driver::CommitOutcome::Committed(_) => return Ok(true),
                crate::driver::CommitOutcome::Conflict(failed) => {
                    self.check_deadline(key, started)?;
                    self.bump(Counter::Conflicts);
                    let fresh = failed.into_iter().next().and_then(|(_, r)| r);
                    if fresh.as_ref().map(|r| r.revision()) == Some(record.revision()) {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    current = match fresh {
                        Some(r) => Some(Arc::new(r)),
                        None => update::load(self, key, &slot).await?,
                    };
                }
            }
        }
    }

    /// A write whose reply was lost after it was sent may have happened: say so.
    fn lost_write(&self, key: &Key<'_>, e: Error, what: &str) -> Error {
        if e.outcome_unknown() {
            Error::CommitUnknown {
                scope: crate::error::shorten(key.scope()),
                reason: format!("the reply to {what} was lost: {e}"),
            }
        } else {
            e.for_scope(key.scope())
        }
    }

    /// Every stored scope name that starts with `prefix`, sorted.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let full = self.keys.list_prefix(prefix)?;
        let keys = self.driver.list(&full).await?;
        let plen = self.keys.prefix().len();
        let mut names: Vec<String> = keys
            .into_iter()
            .filter(|k| k.starts_with(&full))
            .map(|mut k| k.split_off(plen))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// Encodes `value` and checks its size.
    fn encode<T: Scope>(&self, key: &Key<'_>, value: &T) -> Result<Vec<u8>, Error> {
        let data = codec::encode(key.scope(), value)?;
        self.check_size(key, &data)?;
        Ok(data)
    }

    pub(crate) fn max_data_len(&self) -> usize {
        self.max_data_len
    }

    pub(crate) fn check_size(&self, key: &Key<'_>, data: &[u8]) -> Result<(), Error> {
        if data.len() > self.max_data_len {
            return Err(Error::TooLarge {
                scope: crate::error::shorten(key.scope()),
                size: data.len(),
                limit: self.max_data_len,
            });
        }
        Ok(())
    }
}
