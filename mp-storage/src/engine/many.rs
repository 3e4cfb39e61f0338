//! Several scopes, all or nothing: the loop of `scoped_many`, and `get_many`.
//!
//! The same steps as one scope's loop (`update.rs`): begin from the cache or one batched load,
//! run the closure on every value, then commit every changed scope (and check every unchanged
//! one, which the closure read) in one [`Driver::commit`](crate::Driver::commit): all or
//! nothing. A conflict on any scope reruns the closure on fresh values; a commit whose reply
//! was lost is settled from one written scope's tokens, all or nothing telling for all.
//!
//! This process's turns on the scopes are taken in key order, so two several-scope updates over
//! the same scopes in another order, or a single-scope update (which takes one turn), never
//! wait for each other in a circle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::MutexGuard;
use tokio::time::Instant;

use super::settle::{settle, Settled};
use super::slots::Slot;
use super::update::{before_of, new_write, Base, Before};
use super::{schema, Engine, Key};
use crate::codec;
use crate::driver::{push_token, Action, CommitOutcome, Op, Record, Write, MAX_COMMIT_KEYS};
use crate::error::shorten;
use crate::stats::Counter;
use crate::{Error, Scope};

/// Checks that the keys are distinct and not too many.
pub(super) fn check_keys(keys: &[Key<'_>]) -> Result<(), Error> {
    if keys.len() > MAX_COMMIT_KEYS {
        return Err(Error::InvalidName {
            name: format!("{} names", keys.len()),
            reason: "one call takes at most 64 scopes",
        });
    }
    let mut sorted: Vec<&str> = keys.iter().map(Key::as_str).collect();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        let prefix = keys
            .first()
            .map_or(0, |k| k.as_str().len() - k.scope().len());
        return Err(Error::InvalidName {
            name: shorten(&w[0][prefix.min(w[0].len())..]),
            reason: "the name appears twice in one call",
        });
    }
    Ok(())
}

/// Names a driver's [`Error::Corrupt`] by the scope it is about: drivers report the stored key,
/// users know the scope name.
fn relabel<'k>(e: Error, mut keys: impl Iterator<Item = &'k Key<'k>>) -> Error {
    let found = match &e {
        Error::Corrupt { scope, .. } => keys.find(|k| {
            let raw = k.as_str();
            raw == scope || shorten(raw) == *scope
        }),
        _ => None,
    };
    match found {
        Some(k) => e.for_scope(k.scope()),
        None => e,
    }
}

/// Reads the records of `keys` in one batch and caches them.
async fn load_all(
    engine: &Engine,
    keys: &[&Key<'_>],
    slots: &[&Slot],
) -> Result<Vec<Option<Arc<Record>>>, Error> {
    let raw: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    engine.bump(Counter::Loads);
    let records = engine
        .driver
        .load_many(&raw)
        .await
        .map_err(|e| relabel(e, keys.iter().copied()))?;
    if records.len() != keys.len() {
        return Err(Error::backend(
            engine.driver.name(),
            crate::BackendKind::Other,
            format!(
                "load_many returned {} records for {} keys",
                records.len(),
                keys.len()
            ),
        ));
    }
    Ok(records
        .into_iter()
        .zip(slots)
        .map(|(r, slot)| engine.slots.keep_or_set(slot, r.map(Arc::new), None))
        .collect())
}

/// `get_many`: the values of `keys`, in their order, decoded as `T`.
pub(super) async fn get_many<T: Scope>(
    engine: &Engine,
    keys: &[Key<'_>],
) -> Result<Vec<Option<T>>, Error> {
    let slots: Vec<Arc<Slot>> = keys.iter().map(|k| engine.slots.slot(k.as_str())).collect();
    let refs: Vec<&Key<'_>> = keys.iter().collect();
    let slot_refs: Vec<&Slot> = slots.iter().map(|s| &**s).collect();
    let records = load_all(engine, &refs, &slot_refs).await?;
    let mut out = Vec::with_capacity(keys.len());
    for ((key, slot), record) in keys.iter().zip(&slots).zip(records) {
        match record {
            None => out.push(None),
            Some(r) => match codec::decode(key.scope(), Some(&r)) {
                Ok(v) => out.push(Some(v)),
                Err(e) => {
                    engine.slots.set(slot, None);
                    return Err(e);
                }
            },
        }
    }
    Ok(out)
}

/// What the next attempt knows of each scope: a fresh record (or absence), or nothing.
type Fresh = Vec<Option<Option<Arc<Record>>>>;

/// What an attempt does to one scope.
enum Change {
    Same,
    Write(u32, Vec<u8>),
    Delete,
}

/// Runs `f` on the scopes of `keys` until its changes commit together, it changes nothing, it
/// aborts, or the retry policy gives up. `f` sees each scope as `Some(value)`; an absent one as
/// `None` when `absent_as_none`, else as `Some(T::default())`. A scope that `f` leaves `None`
/// is deleted (at the revision read) when it existed.
pub(super) async fn run_many<T, R, E, F>(
    engine: &Engine,
    keys: &[Key<'_>],
    absent_as_none: bool,
    mut f: F,
) -> Result<R, E>
where
    T: Scope,
    R: Send,
    E: From<Error> + Send,
    F: FnMut(&mut [Option<T>]) -> Result<R, E> + Send,
{
    check_keys(keys)?;
    let n = keys.len();
    let slots: Vec<Arc<Slot>> = keys.iter().map(|k| engine.slots.slot(k.as_str())).collect();
    let started = Instant::now();
    // This process's turns, in key order (bounded waits, like one scope's).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| keys[*a].as_str().cmp(keys[*b].as_str()));
    let mut turns: Vec<Option<MutexGuard<'_, ()>>> = Vec::with_capacity(n);
    for &i in &order {
        turns.push(wait_turn(engine, &slots[i], started).await);
    }
    let mut fresh: Fresh = vec![None; n];
    let (mut attempts, mut waits, mut streak) = (0u32, 0u32, 0u32);
    'attempt: loop {
        attempts += 1;
        engine.bump(Counter::Attempts);
        let bases = begin(engine, keys, &slots, &mut fresh, started).await?;
        let mut values: Vec<Option<T>> = Vec::with_capacity(n);
        for (key, base) in keys.iter().zip(&bases) {
            if absent_as_none && base.current.is_none() {
                values.push(None);
                continue;
            }
            match codec::decode::<T>(key.scope(), base.current.as_deref()) {
                Ok(v) => values.push(Some(v)),
                Err(e) => {
                    if confirm(engine, keys, &slots, &bases, &mut fresh).await? {
                        continue 'attempt;
                    }
                    if let Some((_, slot)) = keys
                        .iter()
                        .zip(&slots)
                        .find(|(k, _)| k.scope() == key.scope())
                    {
                        engine.slots.set(slot, None);
                    }
                    return Err(e.into());
                }
            }
        }
        let mut befores: Vec<Option<Before>> = Vec::with_capacity(n);
        for ((key, slot), (base, value)) in keys.iter().zip(&slots).zip(bases.iter().zip(&values)) {
            befores.push(match value {
                Some(v) => Some(before_of(slot, key, base, v)?),
                None => None,
            });
        }
        let out = match f(&mut values) {
            Ok(out) => out,
            Err(e) => {
                if confirm(engine, keys, &slots, &bases, &mut fresh).await? {
                    continue;
                }
                return Err(e);
            }
        };
        // What changed.
        let mut changes: Vec<Change> = Vec::with_capacity(n);
        for ((key, base), (value, before)) in
            keys.iter().zip(&bases).zip(values.iter().zip(&befores))
        {
            let Some(value) = value else {
                changes.push(if base.current.is_some() {
                    Change::Delete
                } else {
                    Change::Same
                });
                continue;
            };
            let data = codec::encode(key.scope(), value)?;
            let schema = codec::schema_for::<T>(base.current.as_deref());
            let unchanged = match before {
                Some(before) => {
                    data == before.as_slice()
                        && base.current.as_ref().is_none_or(|r| r.schema == schema)
                }
                // Created from nothing.
                None => false,
            };
            changes.push(if unchanged {
                Change::Same
            } else {
                Change::Write(schema, data)
            });
        }
        drop(values);
        if changes.iter().all(|c| matches!(c, Change::Same)) {
            if confirm(engine, keys, &slots, &bases, &mut fresh).await? {
                continue;
            }
            engine.bump(Counter::Noops);
            return Ok(out);
        }
        for (i, change) in changes.iter().enumerate() {
            let (Change::Write(_, data), Some(before)) = (change, &befores[i]) else {
                continue;
            };
            engine.check_size(&keys[i], data)?;
            let canonical = matches!(before, Before::Stored(_));
            if let Err(e) = schema::check_loss::<T>(
                &slots[i],
                keys[i].scope(),
                &bases[i],
                canonical,
                before.as_slice(),
            ) {
                if confirm(engine, keys, &slots, &bases, &mut fresh).await? {
                    continue 'attempt;
                }
                return Err(e.into());
            }
        }
        // One commit: writes and deletes for the changed scopes, checks for the others.
        let expiry = super::expiry_of::<T>();
        let writes: Vec<Option<Write<'_>>> = changes
            .iter()
            .zip(&bases)
            .map(|(c, base)| match c {
                Change::Write(schema, data) => {
                    let meta = base.current.as_ref().map_or(&[][..], |r| &r.meta[..]);
                    Some(
                        new_write(*schema, data)
                            .with_meta(meta)
                            .with_claimant(engine.claimant)
                            .with_expiry(expiry),
                    )
                }
                _ => None,
            })
            .collect();
        let ops: Vec<Op<'_>> = keys
            .iter()
            .zip(&bases)
            .zip(writes.iter().zip(&changes))
            .map(|((key, base), (w, c))| Op {
                key: key.as_str(),
                expected: base.expected(),
                action: match (w, c) {
                    (Some(w), _) => Action::Write(*w),
                    (None, Change::Delete) => Action::Delete,
                    (None, _) => Action::Check,
                },
            })
            .collect();
        let outcome = match engine.driver.commit(&ops).await {
            Ok(o) => o,
            Err(e) if e.outcome_unknown() => {
                // All or nothing: the first written scope tells for all.
                let Some(w) = writes.iter().position(Option::is_some) else {
                    // Only deletes: whether they happened cannot be told from tokens.
                    for slot in &slots {
                        engine.slots.set(slot, None);
                    }
                    return Err(Error::CommitUnknown {
                        scope: shorten(keys.first().map_or("", |k| k.scope())),
                        reason: format!("the reply to a removal was lost: {e}"),
                    }
                    .into());
                };
                let token = writes[w].map_or(0, |w| w.token);
                let settled = settle(
                    engine,
                    &keys[w],
                    &slots[w],
                    bases[w].expected(),
                    token,
                    None,
                    e,
                )
                .await?;
                engine.bump(Counter::Settled);
                // The other scopes' caches cannot be told: read them again next time.
                for (i, slot) in slots.iter().enumerate() {
                    if i != w && !matches!(changes[i], Change::Same) {
                        engine.slots.set(slot, None);
                    }
                }
                match settled {
                    Settled::Committed(_) => {
                        engine.bump(Counter::Commits);
                        engine.bump(Counter::MultiCommits);
                        return Ok(out);
                    }
                    Settled::NotApplied(r) => {
                        let r = r.map(Arc::new);
                        engine.slots.set(&slots[w], r.clone());
                        fresh = vec![None; n];
                        fresh[w] = Some(r);
                        continue;
                    }
                }
            }
            Err(e) => return Err(relabel(e, keys.iter()).into()),
        };
        match outcome {
            CommitOutcome::Committed(versions) => {
                for (i, change) in changes.iter().enumerate() {
                    if matches!(change, Change::Delete) {
                        engine.slots.set(&slots[i], None);
                    }
                }
                for (i, version) in versions.into_iter().enumerate() {
                    let (Some(version), Some(w)) = (version, writes.get(i).copied().flatten())
                    else {
                        continue;
                    };
                    let tokens = match &bases[i].current {
                        Some(r) => push_token(&r.tokens, w.token),
                        None => vec![w.token],
                    };
                    let record = Record::new(version, w.schema, w.data.to_vec(), tokens)
                        .with_meta(w.meta.to_vec());
                    engine.slots.set(&slots[i], Some(Arc::new(record)));
                }
                engine.bump(Counter::Commits);
                engine.bump(Counter::MultiCommits);
                return Ok(out);
            }
            CommitOutcome::Conflict(failed) => {
                engine.bump(Counter::Conflicts);
                engine.bump(Counter::MultiConflicts);
                let from_cache = bases.iter().any(|b| b.from_cache);
                let mut progress = true;
                for (i, record) in failed {
                    let Some(slot) = slots.get(i) else { continue };
                    let moved_on = record.as_ref().is_some_and(|r| {
                        bases[i]
                            .current
                            .as_ref()
                            .is_none_or(|b| r.version > b.version)
                    });
                    progress &= moved_on;
                    let record = record.map(Arc::new);
                    engine.slots.set(slot, record.clone());
                    fresh[i] = record.map(Some);
                }
                let elapsed = started.elapsed();
                let deadline = engine.policy.deadline_limit();
                if attempts >= engine.policy.attempts() || deadline.is_some_and(|d| elapsed >= d) {
                    engine.bump(Counter::GaveUp);
                    return Err(Error::Conflict {
                        scope: shorten(keys.first().map_or("", |k| k.scope())),
                        attempts,
                        elapsed,
                    }
                    .into());
                }
                if from_cache {
                    continue;
                }
                if progress && streak < engine.policy.immediate_retry_limit() {
                    streak += 1;
                    continue;
                }
                waits += 1;
                let mut delay = engine.policy.delay_for_retry(waits);
                if let Some(d) = deadline {
                    delay = delay.min(d.saturating_sub(elapsed));
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                    fresh = vec![None; n];
                }
            }
        }
    }
}

/// The bases of an attempt: fresh records where known, else the cache, else one batched load.
async fn begin(
    engine: &Engine,
    keys: &[Key<'_>],
    slots: &[Arc<Slot>],
    fresh: &mut Fresh,
    started: Instant,
) -> Result<Vec<Base>, Error> {
    let n = keys.len();
    let mut bases: Vec<Option<Base>> = Vec::with_capacity(n);
    let mut missing = Vec::new();
    for (i, known) in fresh.iter_mut().enumerate() {
        match known.take() {
            Some(current) => bases.push(Some(Base {
                current,
                from_cache: false,
            })),
            None => match slots[i].get() {
                Some(r) => {
                    engine.bump(Counter::CacheHits);
                    bases.push(Some(Base {
                        current: Some(r),
                        from_cache: true,
                    }));
                }
                None => {
                    missing.push(i);
                    bases.push(None);
                }
            },
        }
    }
    if !missing.is_empty() {
        let ks: Vec<&Key<'_>> = missing.iter().map(|&i| &keys[i]).collect();
        let ss: Vec<&Slot> = missing.iter().map(|&i| &*slots[i]).collect();
        for (&i, current) in missing.iter().zip(load_all(engine, &ks, &ss).await?) {
            bases[i] = Some(Base {
                current,
                from_cache: false,
            });
        }
    }
    let mut bases: Vec<Base> = bases.into_iter().flatten().collect();
    // Another caller's lease on any scope: wait until it is released or runs out.
    for (i, base) in bases.iter_mut().enumerate() {
        let leased = base
            .current
            .as_ref()
            .is_some_and(|r| super::lease::lease_of(&r.meta).is_some());
        if leased {
            base.current = super::lease::wait_free(
                engine,
                &keys[i],
                &slots[i],
                base.current.take(),
                base.from_cache,
                started,
            )
            .await?;
            base.from_cache = false;
        }
    }
    Ok(bases)
}

/// Confirms an answer decided on cached data: loads the scopes that came from the cache and
/// says whether any moved (then `fresh` holds what to decide again on).
async fn confirm(
    engine: &Engine,
    keys: &[Key<'_>],
    slots: &[Arc<Slot>],
    bases: &[Base],
    fresh: &mut Fresh,
) -> Result<bool, Error> {
    let cached: Vec<usize> = (0..keys.len()).filter(|&i| bases[i].from_cache).collect();
    if cached.is_empty() {
        return Ok(false);
    }
    let ks: Vec<&Key<'_>> = cached.iter().map(|&i| &keys[i]).collect();
    let ss: Vec<&Slot> = cached.iter().map(|&i| &*slots[i]).collect();
    let records = load_all(engine, &ks, &ss).await?;
    let mut moved = false;
    for (&i, r) in cached.iter().zip(&records) {
        moved |= r.as_ref().map(|r| r.revision()) != bases[i].expected();
    }
    if moved {
        for (&i, r) in cached.iter().zip(records) {
            fresh[i] = Some(r);
        }
        for (i, base) in bases.iter().enumerate() {
            if !base.from_cache {
                fresh[i] = Some(base.current.clone());
            }
        }
    }
    Ok(moved)
}

/// Waits for this process's turn on `slot`, at most until the retry deadline.
async fn wait_turn<'s>(
    engine: &Engine,
    slot: &'s Slot,
    started: Instant,
) -> Option<MutexGuard<'s, ()>> {
    if let Ok(turn) = slot.turn.try_lock() {
        return Some(turn);
    }
    let wait = engine
        .policy
        .deadline_limit()
        .unwrap_or(Duration::from_secs(30))
        .saturating_sub(started.elapsed());
    tokio::time::timeout(wait, slot.turn.lock()).await.ok()
}
