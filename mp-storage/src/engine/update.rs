//! The retry loop, in named steps.
//!
//! ```text
//! run:   queue behind this process's busy turn on the scope, then loop:
//!        begin ─▶ decode ─▶ closure ─▶ encode ─┬─ unchanged, or an abort: confirm ─▶ answer
//!          ▲                                   └─ changed: commit ─┬─ committed ─▶ answer
//!          │                                                       ├─ conflict ─▶ on_conflict
//!          │                                                       └─ reply lost ─▶ settle
//!          └──────────── the start of the next attempt ◀───────────────┘
//! ```
//!
//! Every answer decided on cached data without a write (a no-op, an abort, a decode failure, a
//! write refused because it would lose stored data: `schema.rs`) is confirmed with a load first:
//! the cache is a guess, the backend decides.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::sync::MutexGuard;
use tokio::time::Instant;
use tracing::Instrument;

use super::receipts::{self, Once};
use super::schema::{self, Options};
use super::settle::Settled;
use super::slots::Slot;
use super::{Engine, Key};
use crate::codec;
use crate::driver::{push_token, CasOutcome, Record, Revision, Write, RECENT_TOKENS};
use crate::error::shorten;
use crate::stats::Counter;
use crate::{Error, Scope};

/// What the next attempt starts from.
pub(super) enum Start {
    /// Nothing known: the cache, else a load.
    Unknown,
    /// A record (or its absence) fresh from the backend.
    Fresh(Option<Arc<Record>>),
}

/// The record one attempt runs on.
pub(super) struct Base {
    pub current: Option<Arc<Record>>,
    /// Whether it came from the cache, unconfirmed, rather than from the backend.
    pub from_cache: bool,
}

impl Base {
    /// The revision a compare-and-swap from this base expects (`None`: absent).
    pub fn expected(&self) -> Option<Revision> {
        self.current.as_ref().map(|r| r.revision())
    }
}

/// The encoding of the value before the closure ran.
pub(super) enum Before {
    /// The stored record's data, which is that encoding.
    Stored(Arc<Record>),
    /// The value encoded.
    Encoded(Vec<u8>),
}

impl Before {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Before::Stored(r) => &r.data,
            Before::Encoded(v) => v,
        }
    }
}

/// After a commit step: done, or go again.
enum Next {
    Done,
    Retry(Start),
}

/// The state of one update call.
pub(super) struct Run<'a> {
    pub engine: &'a Engine,
    pub key: &'a Key<'a>,
    pub(super) slot: &'a Arc<Slot>,
    /// This process's turn on the scope, taken by the first attempt that has something to
    /// write (reads never wait for it).
    turn: Option<MutexGuard<'a, ()>>,
    asked_turn: bool,
    started: Instant,
    attempts: u32,
    /// Conflicts that waited before retrying.
    waits: u32,
    /// Conflicts retried at once because another writer had made progress.
    streak: u32,
    /// Compare-and-swaps refused by another process's reservation.
    refusals: u32,
    /// Until when (by this process's clock) this call holds the reservation it took.
    reserved_until: Option<Instant>,
}

/// Runs `f` on the scope of `key` until its change commits, it changes nothing, it aborts, or
/// the retry policy gives up.
pub(super) async fn run<T, R, E, F, Fut>(
    engine: &Engine,
    key: &Key<'_>,
    opts: Options,
    once: Option<&Once<'_, R>>,
    mut f: F,
) -> Result<R, E>
where
    T: Scope,
    R: Send,
    E: From<Error> + Send,
    F: FnMut(T) -> Fut + Send,
    Fut: Future<Output = Result<(T, R), E>> + Send,
{
    let slot = engine.slots.slot(key.as_str());
    let span = tracing::debug_span!(
        "mp_storage.update",
        scope = %shorten(key.scope()),
        driver = engine.driver.name()
    );
    let mut run = Run {
        engine,
        key,
        slot: &slot,
        turn: None,
        asked_turn: false,
        started: Instant::now(),
        attempts: 0,
        waits: 0,
        streak: 0,
        refusals: 0,
        reserved_until: None,
    };
    async move {
        run.queue_if_busy().await;
        let mut start = Start::Unknown;
        loop {
            let base = run.begin(start).await?;
            if let Some(once) = once {
                // The change was made before under this key: the first result, and nothing more.
                if let Some(first) = receipts::find(key.scope(), base.current.as_deref(), once)? {
                    engine.bump(Counter::Replayed);
                    return Ok(first);
                }
            }
            let value: T = match codec::decode(key.scope(), base.current.as_deref()) {
                Ok(v) => v,
                Err(e) => match run.confirm(&base).await? {
                    Some(next) => {
                        start = next;
                        continue;
                    }
                    None => {
                        // Do not keep failing on this record once someone repairs it.
                        engine.slots.set(run.slot, None);
                        return Err(e.into());
                    }
                },
            };
            let before = run.before(&base, &value)?;
            let (value, out) = match f(value).await {
                Ok(done) => done,
                Err(e) => match run.confirm(&base).await? {
                    // An abort decided on stale data: decide again on fresh data.
                    Some(next) => {
                        start = next;
                        continue;
                    }
                    None => return Err(e),
                },
            };
            let encoded = codec::encode_against(key.scope(), &value, before.as_slice())?;
            drop(value);
            let schema = codec::schema_for::<T>(base.current.as_deref());
            let data = match encoded {
                codec::Encoded::Changed(data) => data,
                // Unchanged, but written again at the type's schema version.
                codec::Encoded::Same
                    if schema::must_write(opts, base.current.as_deref(), schema) =>
                {
                    before.as_slice().to_vec()
                }
                codec::Encoded::Same => match run.confirm(&base).await? {
                    Some(next) => {
                        start = next;
                        continue;
                    }
                    None => {
                        engine.bump(Counter::Noops);
                        tracing::trace!(attempt = run.attempts, "no change, nothing written");
                        return Ok(out);
                    }
                },
            };
            let canonical = matches!(before, Before::Stored(_));
            if let Err(e) =
                schema::check_loss::<T>(run.slot, key.scope(), &base, canonical, before.as_slice())
            {
                match run.confirm(&base).await? {
                    Some(next) => {
                        start = next;
                        continue;
                    }
                    None => return Err(e.into()),
                }
            }
            let meta = match once {
                Some(once) => Some(receipts::with_receipt(
                    key.scope(),
                    base.current.as_deref(),
                    once,
                    &out,
                )?),
                None => None,
            };
            drop(before);
            match run
                .commit(
                    base,
                    schema,
                    data,
                    meta,
                    once.map(|o| o.key),
                    Own::of::<T>(),
                )
                .await?
            {
                Next::Done => return Ok(out),
                Next::Retry(next) => start = next,
            }
        }
    }
    .instrument(span)
    .await
}

impl<'a> Run<'a> {
    /// A busy scope: queue up first, so that the first attempt starts from what the update
    /// ahead commits instead of being run twice.
    async fn queue_if_busy(&mut self) {
        // Whoever holds the turn holds the slot too: when only the slot map and this update
        // hold it, the turn is free, found without touching its lock.
        if Arc::strong_count(self.slot) > 2 && self.slot.turn.try_lock().is_err() {
            self.asked_turn = true;
            self.turn = self.wait_turn().await;
        }
    }

    /// Waits for this process's turn on the scope, at most until the retry deadline (30 s when
    /// there is none); `None` when the wait ran out, and the update goes on without it. Bounded,
    /// so that a closure that awaits another update of its own scope stalls until the deadline
    /// instead of forever.
    async fn wait_turn(&self) -> Option<MutexGuard<'a, ()>> {
        let slot: &'a Slot = self.slot;
        if let Ok(turn) = slot.turn.try_lock() {
            return Some(turn);
        }
        let wait = self
            .engine
            .policy
            .deadline_limit()
            .unwrap_or(Duration::from_secs(30))
            .saturating_sub(self.started.elapsed());
        tokio::time::timeout(wait, slot.turn.lock()).await.ok()
    }

    /// Whether the retry policy's deadline has passed.
    fn out_of_time(&self) -> bool {
        self.engine
            .policy
            .deadline_limit()
            .is_some_and(|d| self.started.elapsed() >= d)
    }

    /// Starts an attempt: from a fresh record, else the cache, else a load.
    async fn begin(&mut self, start: Start) -> Result<Base, Error> {
        self.attempts += 1;
        self.engine.bump(Counter::Attempts);
        let base = match start {
            Start::Fresh(current) => Base {
                current,
                from_cache: false,
            },
            Start::Unknown => match self.slot.get() {
                Some(r) => {
                    self.engine.bump(Counter::CacheHits);
                    Base {
                        current: Some(r),
                        from_cache: true,
                    }
                }
                None => Base {
                    current: self.load().await?,
                    from_cache: false,
                },
            },
        };
        // Another caller's lease: wait until it is released or runs out (a cached one is
        // checked against the backend first).
        let base = match &base.current {
            Some(r) if super::lease::lease_of(&r.meta).is_some() => Base {
                current: super::lease::wait_free(
                    self.engine,
                    self.key,
                    self.slot,
                    base.current,
                    base.from_cache,
                    self.started,
                )
                .await?,
                from_cache: false,
            },
            _ => base,
        };
        tracing::trace!(
            attempt = self.attempts,
            version = ?base.expected(),
            from_cache = base.from_cache,
            "attempt"
        );
        Ok(base)
    }

    /// Loads the record and caches it (keeping the cached one when it is the same).
    pub(super) async fn load(&self) -> Result<Option<Arc<Record>>, Error> {
        load_noting(self.engine, self.key, self.slot, self.others_in_flight()).await
    }

    /// Whether other updates of this process hold the scope's slot (queued for its turn, or
    /// running): then what this call learns of the record is noted with its time, and an update
    /// queued behind it may answer from it without a load of its own ([`Run::confirm`]).
    fn others_in_flight(&self) -> bool {
        // The slot map and this update hold it.
        Arc::strong_count(self.slot) > 2
    }

    /// The encoding of the value an attempt starts from, to tell whether the closure changed
    /// it: the stored data itself when it is known to be `T`'s canonical encoding, else the
    /// value encoded (and the record noted as canonical when the two agree).
    fn before<T: Scope>(&self, base: &Base, value: &T) -> Result<Before, Error> {
        before_of(self.slot, self.key, base, value)
    }

    /// Confirms an answer decided without a write: `None` when the base was fresh from the
    /// backend or the cache still holds, else the fresh record to decide again on.
    async fn confirm(&self, base: &Base) -> Result<Option<Start>, Error> {
        if !base.from_cache {
            return Ok(None);
        }
        // With other updates of the scope in flight in this process: when a load or a write of
        // theirs sent after this call began found the record this call decided on current, the
        // scope held it during the call, which is all a load of its own would show. So it
        // answers from theirs (waiting for a load they have in flight), and a hot scope's
        // concurrent read-only updates share their loads.
        if let Some(r) = base.current.as_ref().filter(|_| self.others_in_flight()) {
            if self.slot.wait_for_load(r, self.started).await {
                self.engine.bump(Counter::SharedConfirms);
                return Ok(None);
            }
        }
        let fresh = self.load().await?;
        if fresh.as_ref().map(|r| r.revision()) == base.expected() {
            Ok(None)
        } else {
            tracing::trace!(
                attempt = self.attempts,
                "the cache was stale: deciding again"
            );
            Ok(Some(Start::Fresh(fresh)))
        }
    }

    /// Writes the attempt's change with a compare-and-swap on the base's version.
    /// `meta` replaces the record's notes when given (else they are carried over); `once_key`
    /// is the idempotency key whose receipt the notes hold.
    async fn commit(
        &mut self,
        base: Base,
        schema: u32,
        data: Vec<u8>,
        receipt: Option<Vec<u8>>,
        once_key: Option<&str>,
        own: Own,
    ) -> Result<Next, Error> {
        let Own { expiry, t: own } = own;
        self.engine.check_size(self.key, &data)?;
        // Alone on the scope in this process (only the slot map and this update hold the slot):
        // no turn to take. One that arrives meanwhile at worst races this compare-and-swap.
        if !self.asked_turn && Arc::strong_count(self.slot) > 2 {
            self.asked_turn = true;
            self.turn = self.wait_turn().await;
            // A turn taken after others committed: rerun on what they wrote, at no cost of a
            // round trip.
            if let Some(cached) = self.slot.get() {
                if Some(cached.revision()) != base.expected() {
                    tracing::trace!(attempt = self.attempts, "rerun after waiting for the turn");
                    return Ok(Next::Retry(Start::Unknown));
                }
            }
        }
        let expected = base.expected();
        let meta = match &receipt {
            Some(m) => &m[..],
            None => base.current.as_ref().map_or(&[][..], |r| &r.meta[..]),
        };
        // After a lost race, the write asks to reserve the scope if it loses again, where the
        // driver takes that in the same step: no round trip of its own.
        let mut reserve = self.reserve_inline(&base);
        let claimant = self.engine.claimant;
        // The write, with a token of its own each time it is sent.
        let new = |reserve: Option<Duration>| {
            let write = new_write(schema, &data)
                .with_meta(meta)
                .with_claimant(claimant)
                .with_expiry(expiry);
            match reserve {
                Some(ttl) => write.with_reserve(ttl),
                None => write,
            }
        };
        let mut write = new(reserve);
        let mut sent;
        let outcome = loop {
            sent = Instant::now();
            let driver = &self.engine.driver;
            let (result, instant) = match driver.cas_now(self.key.as_str(), expected, write) {
                Some(result) => {
                    tokio::task::coop::consume_budget().await;
                    (result, true)
                }
                None => (driver.cas(self.key.as_str(), expected, write).await, false),
            };
            match result {
                // Refused at the expected revision: another process holds a reservation. Wait
                // for part of its slice, then send this again (its commits meanwhile turn the
                // answer into a conflict with the newer record, and this call reserves next).
                Ok(CasOutcome::Conflict(Some(r))) if Some(r.revision()) == expected => {
                    if self.out_of_time() {
                        break Ok(CasOutcome::Conflict(Some(r)));
                    }
                    tokio::time::sleep(self.refused_wait(r.reserved_for)).await;
                    // The holder has most likely committed meanwhile, so this write will find
                    // a newer record: it asks to reserve the next turn as it does so, and the
                    // attempt after it writes without waiting for another slice.
                    reserve = self.reserve_inline(&base);
                    write = new(reserve);
                }
                Ok(CasOutcome::Committed(v)) => {
                    // An answer given at once had no round trip (and the clock is not read).
                    let rtt = if instant {
                        Duration::ZERO
                    } else {
                        sent.elapsed()
                    };
                    self.engine.note_commit_rtt(rtt);
                    break Ok(CasOutcome::Committed(v));
                }
                Ok(CasOutcome::Reserved(r)) => {
                    if let Some(ttl) = reserve {
                        self.engine.bump(Counter::Reservations);
                        self.reserved_until = Some(held_until(sent, ttl));
                    }
                    break Ok(CasOutcome::Reserved(r));
                }
                other => break other,
            }
        };
        let token = write.token;
        // What the write's own reservation request came to (nothing is known of it when the
        // reply was lost: then it is asked for the usual way).
        let inline = match (&outcome, reserve) {
            (Ok(CasOutcome::Reserved(_)), Some(_)) => Inline::Took,
            (Ok(CasOutcome::Conflict(_)), Some(_)) => Inline::HeldByOther,
            _ => Inline::NotAsked,
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) if e.outcome_unknown() => {
                let settled = self.settle(&base, token, once_key, e).await?;
                self.engine.bump(Counter::Settled);
                match settled {
                    Settled::Committed(record) => {
                        self.engine.slots.set(self.slot, Some(record));
                        self.engine.bump(Counter::Commits);
                        tracing::debug!(attempts = self.attempts, "committed (confirmed by token)");
                        return Ok(Next::Done);
                    }
                    Settled::NotApplied(fresh) => CasOutcome::Conflict(fresh),
                }
            }
            Err(e) => return Err(e.for_scope(self.key.scope())),
        };
        match outcome {
            CasOutcome::Committed(version) => {
                // The record this write made from the one it read: that one changed in place
                // when nothing else holds it any more (no allocation), else a new one.
                let mut prev = base.current;
                if let Some(r) = &prev {
                    self.engine.slots.release(self.slot, r);
                }
                let record = match prev.as_mut().and_then(Arc::get_mut) {
                    Some(r) => {
                        r.version = version;
                        r.schema = schema;
                        r.data = data;
                        if r.tokens.len() >= RECENT_TOKENS {
                            r.tokens.drain(..r.tokens.len() + 1 - RECENT_TOKENS);
                        }
                        r.tokens.push(token);
                        if let Some(receipt) = receipt {
                            r.meta = receipt;
                        }
                        r.expires_at = None;
                        prev
                    }
                    None => {
                        let (tokens, meta) = match (&prev, receipt) {
                            (Some(r), receipt) => (
                                push_token(&r.tokens, token),
                                receipt.unwrap_or_else(|| r.meta.clone()),
                            ),
                            (None, receipt) => (vec![token], receipt.unwrap_or_default()),
                        };
                        Some(Arc::new(
                            Record::new(version, schema, data, tokens).with_meta(meta),
                        ))
                    }
                };
                if let Some(record) = record {
                    let seen = self.others_in_flight().then_some(sent);
                    self.engine.slots.set_own(self.slot, record, own, seen);
                }
                self.engine.bump(Counter::Commits);
                tracing::debug!(attempts = self.attempts, version, "committed");
                Ok(Next::Done)
            }
            CasOutcome::Conflict(fresh) => self
                .on_conflict(&base, fresh, inline)
                .await
                .map(Next::Retry),
            CasOutcome::Reserved(r) => self
                .on_conflict(&base, Some(r), inline)
                .await
                .map(Next::Retry),
        }
    }

    /// How long the compare-and-swap of an attempt from `base` asks to reserve the scope for
    /// if it loses (contract rule 13): after a lost race, or from the cache once another
    /// process's reservation turned this call away (the attempt after a wait for another's
    /// slice, or the write sent again after one: its record is most likely stale, and the
    /// compare-and-swap that finds the newer one reserves the scope or learns that it is still
    /// held, with no second round trip); never while this call holds a live reservation; where
    /// the driver takes it in the same step.
    fn reserve_inline(&self, base: &Base) -> Option<Duration> {
        if (base.from_cache && self.refusals == 0) || base.current.is_none() || self.holding() {
            return None;
        }
        let ttl = self.engine.reservation_slice();
        (!ttl.is_zero() && self.engine.driver.capabilities().reserve_on_conflict).then_some(ttl)
    }

    /// Whether this call holds a live reservation it took.
    fn holding(&self) -> bool {
        self.reserved_until.is_some_and(|t| Instant::now() < t)
    }

    /// How long a call refused by another process's reservation waits before it asks again;
    /// `left`: how long that reservation still holds, where the driver said
    /// ([`Record::reserved_for`]).
    ///
    /// Known, the call sleeps until the slice ends and a little more, less for each time it was
    /// refused before. Unknown, the first refusal waits about a slice (the holder's reservation
    /// is at most that old) and each one after halves the wait, down to the timers' 1 ms. Either
    /// way the process that has waited longest asks again first when a slice ends, and the one
    /// that just held a slice (refused once, by its successor) asks last: slices go round
    /// instead of between two processes while the others starve.
    fn refused_wait(&mut self, left: Option<Duration>) -> Duration {
        // Being paced by the holder's slice is not a race: no backoff for the conflicts it
        // causes.
        self.streak = 0;
        self.engine.bump(Counter::Refused);
        let slice = self.engine.reservation_slice();
        let mut rng = rand::rng();
        let wait = match left {
            Some(left) => {
                let after = slice / (8 * (1 + self.refusals.min(7)));
                left.min(self.engine.policy.reservation_ttl())
                    + after.mul_f64(rng.random_range(0.5..1.0))
            }
            None => (slice / (1u32 << self.refusals.min(4))).mul_f64(rng.random_range(0.75..1.0)),
        };
        self.refusals += 1;
        wait.max(Duration::from_millis(1))
    }

    /// After a lost compare-and-swap: caches what the conflict returned, gives up when the
    /// policy says so, else waits (unless only the cache was stale) and says where to go on.
    async fn on_conflict(
        &mut self,
        base: &Base,
        fresh: Option<Record>,
        inline: Inline,
    ) -> Result<Start, Error> {
        let engine = self.engine;
        engine.bump(Counter::Conflicts);
        tracing::debug!(
            attempt = self.attempts,
            from_cache = base.from_cache,
            "conflict"
        );
        // Another writer's newer record in the reply: the scope moved on, which is progress,
        // not a livelock.
        let progress = fresh
            .as_ref()
            .is_some_and(|r| base.current.as_ref().is_none_or(|b| r.version > b.version));
        let left = fresh.as_ref().and_then(|r| r.reserved_for);
        // Another claimant committed while this call believed it held the scope: the
        // reservation has ended (or was never what this process's clock said). The next write
        // asks for it again, in the same step.
        if progress && inline == Inline::NotAsked && self.holding() {
            self.reserved_until = None;
        }
        let start = match fresh {
            Some(mut r) => {
                // The hint is of the moment: not kept in the cache.
                r.reserved_for = None;
                let r = Arc::new(r);
                engine.slots.set(self.slot, Some(r.clone()));
                Start::Fresh(Some(r))
            }
            None => {
                engine.slots.set(self.slot, None);
                Start::Unknown
            }
        };
        let elapsed = self.started.elapsed();
        let deadline = engine.policy.deadline_limit();
        let out_of_time = deadline.is_some_and(|d| elapsed >= d);
        if self.attempts >= engine.policy.attempts() || out_of_time {
            engine.bump(Counter::GaveUp);
            tracing::warn!(
                attempts = self.attempts,
                ?elapsed,
                "gave up after conflicts"
            );
            return Err(Error::Conflict {
                scope: shorten(self.key.scope()),
                attempts: self.attempts,
                elapsed,
            });
        }
        let held_by_other = match inline {
            // A stale cache is not contention: retry at once.
            Inline::NotAsked if base.from_cache => return Ok(start),
            // The lost write reserved the scope: the others wait for this call's slice, so the
            // retry on the record the conflict returned commits. Backing off now would spend
            // the slice asleep, and the call would find the others' commits after it, again
            // and again.
            Inline::Took => return Ok(start),
            Inline::HeldByOther => true,
            // Lost to another process's commit: retry at once on the record it returned. Each
            // process has at most one attempt in flight on a scope (the turns), so the wasted
            // work is bounded by the number of processes, and a process that backed off here
            // would keep arriving one version late while the others commit back to back: it
            // would starve. Only after many such losses in a row (many processes on one scope)
            // does it back off.
            Inline::NotAsked if progress && self.streak < engine.policy.immediate_retry_limit() => {
                self.streak += 1;
                // It may commit back to back while this one keeps arriving one revision late:
                // reserve the next turn so that it waits for it. (Not again while the
                // reservation this call took is live: one write less, which on a SQL store is
                // one flush less.)
                let ttl = engine.reservation_slice();
                if ttl.is_zero() || self.holding() || !engine.driver.capabilities().reservations {
                    return Ok(start);
                }
                let asked = Instant::now();
                match engine
                    .driver
                    .reserve(self.key.as_str(), engine.claimant, ttl)
                    .await
                {
                    Ok(true) => {
                        engine.bump(Counter::Reservations);
                        self.reserved_until = Some(held_until(asked, ttl));
                        return Ok(start);
                    }
                    Ok(false) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "reservation failed");
                        return Ok(start);
                    }
                }
            }
            Inline::NotAsked => false,
        };
        // Another process holds the scope for its slice and commits back to back: chasing its
        // versions costs a round trip or two per commit it makes. Wait for its slice as a
        // refused write does (that resets the backoff: being paced by a slice is not a race),
        // then start from the cache.
        if held_by_other && !self.out_of_time() {
            tokio::time::sleep(self.refused_wait(left)).await;
            return Ok(Start::Unknown);
        }
        self.waits += 1;
        let mut delay = engine.policy.delay_for_retry(self.waits);
        let slice = engine.reservation_slice();
        if progress && !slice.is_zero() {
            // Still losing to others' commits: progress, not a livelock, so the backoff stops
            // growing at a slice (up to a second left a process asleep, holding its turn, while
            // the others took every turn); by then the holders' slices have ended.
            delay = delay.min(slice);
        }
        if let Some(d) = deadline {
            delay = delay.min(d.saturating_sub(elapsed));
        }
        if delay.is_zero() {
            return Ok(start);
        }
        engine.bump(Counter::Backoffs);
        tokio::time::sleep(delay).await;
        // The record the conflict returned is old news after a wait: start from the cache,
        // which this process's other tasks keep fresh (a stale entry costs one compare-and-swap
        // that returns the latest).
        Ok(Start::Unknown)
    }
}

/// Until when a reservation of `ttl` asked for at `asked` holds, by this process's clock, at
/// the earliest: the backend keeps it by its own clock, which may tick in whole milliseconds
/// (a reservation taken late in one of its milliseconds ends up to one sooner than asked).
fn held_until(asked: Instant, ttl: Duration) -> Instant {
    asked + ttl.saturating_sub(Duration::from_millis(1))
}

/// What became of the reservation a compare-and-swap asked to take if it lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inline {
    /// It did not ask (or its reply was lost).
    NotAsked,
    /// It lost and took the reservation.
    Took,
    /// It lost and another claimant holds the scope.
    HeldByOther,
}

/// Loads the record of `key` and caches it in `slot` (keeping the cached one when it is the
/// same).
pub(super) async fn load(
    engine: &Engine,
    key: &Key<'_>,
    slot: &Slot,
) -> Result<Option<Arc<Record>>, Error> {
    load_noting(engine, key, slot, false).await
}

/// [`load`], noting when the load was sent if `note` (see [`Slot::wait_for_load`]).
async fn load_noting(
    engine: &Engine,
    key: &Key<'_>,
    slot: &Slot,
    note: bool,
) -> Result<Option<Arc<Record>>, Error> {
    engine.bump(Counter::Loads);
    if let Some(record) = engine.driver.load_shared_now(key.as_str()) {
        tokio::task::coop::consume_budget().await;
        let record = record.map_err(|e| e.for_scope(key.scope()))?;
        return Ok(engine.slots.keep_or_set(slot, record, None));
    }
    // While other updates of the scope are in flight, they may wait for this load instead of
    // sending their own (`Run::confirm`).
    let sent = note.then(Instant::now);
    let _loading = sent.map(|at| slot.loading(at));
    let record = engine.driver.load_shared(key.as_str()).await;
    let record = record.map_err(|e| e.for_scope(key.scope()))?;
    Ok(engine.slots.keep_or_set(slot, record, sent))
}

/// The encoding of the value an attempt on `key` (cached in `slot`) starts from: see
/// [`Run::before`].
pub(super) fn before_of<T: Scope>(
    slot: &Slot,
    key: &Key<'_>,
    base: &Base,
    value: &T,
) -> Result<Before, Error> {
    let t = TypeId::of::<T>();
    if let Some(r) = &base.current {
        if slot.is_canonical(r, t) {
            return Ok(Before::Stored(r.clone()));
        }
        // Compare while encoding: no buffer for the usual case, where they agree.
        if codec::encodes_to(value, &r.data) {
            slot.set_canonical(r, t);
            return Ok(Before::Stored(r.clone()));
        }
    }
    Ok(Before::Encoded(codec::encode(key.scope(), value)?))
}

/// What a commit takes from the scope's type: the expiry its writes carry, and the type whose
/// encoding the written data is.
struct Own {
    expiry: crate::driver::Expiry,
    t: TypeId,
}

impl Own {
    fn of<T: Scope>() -> Own {
        Own {
            expiry: super::expiry_of::<T>(),
            t: TypeId::of::<T>(),
        }
    }
}

/// A write of `data` at `schema` with a fresh random token (never 0) and initial version.
pub(crate) fn new_write(schema: u32, data: &[u8]) -> Write<'_> {
    let (token, initial) = FAST_RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        // Uniform over 1..=u64::MAX and 1..2^48 but for a few values of 2^64 (cheaper than
        // ranges, which reject and draw again).
        (rng.next_u64().max(1), (rng.next_u64() >> 16).max(1))
    });
    Write::new(schema, data, token, initial)
}

thread_local! {
    /// Tokens need to be unpredictable across processes, not secret: a small generator seeded
    /// from the system's per thread costs a fraction of the cryptographic one per write.
    static FAST_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_rng(&mut rand::rng()));
}
