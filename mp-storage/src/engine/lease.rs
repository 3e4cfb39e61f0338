//! Leases: exclusive updates (`locked`) for closures with side effects.
//!
//! A lease is a property of the record, kept in its notes ([`Record::meta`]) beside the
//! receipts: `{"lease":{"holder":<random u64 of the call>,"ms":<lease length>}}`. It is taken,
//! renewed and released by the same compare-and-swap on the revision as any write, so the
//! revision is the fencing token: whoever takes an expired lease over moves the revision on, and
//! the old holder's next compare-and-swap (a renewal or its commit) fails. No driver knows about
//! leases.
//!
//! **Which clock decides expiry: the observer's.** No clocks of two machines are compared. An
//! update that finds a lease on revision R waits; when the record is still at R after the lease
//! length, measured on the waiter's own monotonic clock since it first saw R, the lease has run
//! out and the waiter writes over it with a compare-and-swap on R. The holder renews (rewrites
//! the same data and lease, moving the revision on) every third of the lease, which restarts
//! every waiter's count. A waiter that arrives late waits longer than needed, never shorter.
//!
//! ```text
//! locked: wait_free ─▶ take (CAS: same data + lease) ─▶ closure ═╤═ renew every lease/3 (CAS)
//!                                                                 │   a renewal fails: LeaseLost
//!         commit (CAS: new data, no lease) ◀─ Ok ──────────────────┤
//!         release (CAS: same data, no lease) ◀─ Err ───────────────┘
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::slots::Slot;
use super::update::{load, new_write};
use super::{Engine, Key};
use crate::codec;
use crate::driver::{push_token, CasOutcome, Expiry, Record, Revision};
use crate::error::shorten;
use crate::stats::Counter;
use crate::{Error, Scope};

/// The default lease length.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The shortest lease length the builder takes.
pub const MIN_LEASE: Duration = Duration::from_millis(50);

/// A lease as a record's notes hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The random id of the `locked` call that holds it.
    pub holder: u64,
    /// Its length in ms, as the holder set it.
    pub ms: u64,
}

/// The lease `meta` holds. Cheap when there is none: empty notes, or notes without the word,
/// are not parsed.
pub(crate) fn lease_of(meta: &[u8]) -> Option<Lease> {
    if meta.is_empty() || !contains(meta, b"\"lease\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(meta).ok()?;
    let l = v.get("lease")?;
    Some(Lease {
        holder: l.get("holder")?.as_u64()?,
        ms: l.get("ms")?.as_u64()?,
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `meta` with `lease` set (or taken out when `None`); the other notes are kept.
pub(crate) fn with_lease(meta: &[u8], lease: Option<Lease>) -> Vec<u8> {
    let mut map: Map<String, Value> = if meta.is_empty() {
        Map::new()
    } else {
        match serde_json::from_slice(meta) {
            Ok(Value::Object(m)) => m,
            // Notes that do not parse hold nothing worth keeping next to a lease.
            _ => Map::new(),
        }
    };
    match lease {
        Some(l) => {
            map.insert(
                "lease".to_owned(),
                serde_json::json!({ "holder": l.holder, "ms": l.ms }),
            );
        }
        None => {
            map.remove("lease");
        }
    }
    if map.is_empty() {
        return Vec::new();
    }
    serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
}

/// `record` without its lease in the notes (for a write over an expired lease, which must not
/// carry it forward). The revision is unchanged, so a compare-and-swap from it still fences.
fn strip(record: &Arc<Record>) -> Arc<Record> {
    let mut r = (**record).clone();
    r.meta = with_lease(&r.meta, None);
    Arc::new(r)
}

/// Waits while `current` holds a live lease of a holder other than `mine`, re-reading the
/// record; returns the record to write over: one with no lease, or one whose lease ran out (by
/// this caller's clock, see the module docs), with that lease taken out of its notes. Gives up
/// with [`Error::Leased`] at the retry policy's deadline (counted from `started`).
pub(super) async fn wait_free(
    engine: &Engine,
    key: &Key<'_>,
    slot: &Slot,
    mut current: Option<Arc<Record>>,
    mut from_cache: bool,
    started: Instant,
) -> Result<Option<Arc<Record>>, Error> {
    let mut seen: Option<(Revision, Instant)> = None;
    let mut pause = Duration::from_millis(2);
    let mut waited = false;
    loop {
        let Some(lease) = current.as_ref().and_then(|r| lease_of(&r.meta)) else {
            return Ok(current);
        };
        // A cached lease may be over already: look at the backend before waiting.
        if from_cache {
            from_cache = false;
            current = load(engine, key, slot).await?;
            continue;
        }
        let Some(record) = current.as_ref() else {
            return Ok(None);
        };
        let now = Instant::now();
        let revision = record.revision();
        let since = match seen {
            Some((r, since)) if r == revision => since,
            _ => {
                seen = Some((revision, now));
                now
            }
        };
        if now.duration_since(since) >= Duration::from_millis(lease.ms) {
            tracing::debug!(scope = %shorten(key.scope()), "lease ran out: taking over");
            engine.bump(Counter::LeasesTakenOver);
            return Ok(Some(strip(record)));
        }
        let deadline = engine.policy.deadline_limit().unwrap_or(DEFAULT_LEASE * 2);
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            engine.bump(Counter::GaveUp);
            return Err(Error::Leased {
                scope: shorten(key.scope()),
                waited: elapsed,
            });
        }
        if !waited {
            waited = true;
            engine.bump(Counter::LeaseWaits);
        }
        let left = Duration::from_millis(lease.ms).saturating_sub(now.duration_since(since));
        let cap = Duration::from_millis((lease.ms / 10).clamp(5, 100));
        tokio::time::sleep(
            pause
                .min(left)
                .min(deadline - elapsed)
                .max(Duration::from_millis(1)),
        )
        .await;
        pause = (pause * 2).min(cap);
        current = load(engine, key, slot).await?;
    }
}

/// How a `locked` call ended short of a commit.
enum Ended<E> {
    /// The closure's own error: release the lease.
    Abort(E),
    /// A renewal failed: the lease is someone else's now.
    Lost(String),
}

/// One `locked` call's hold on a scope.
struct Hold<'a> {
    engine: &'a Engine,
    key: &'a Key<'a>,
    slot: &'a Slot,
    lease: Lease,
    /// The record as the last write of this call left it (with the lease in its notes).
    record: Arc<Record>,
}

impl Hold<'_> {
    /// Rewrites the record with `data` and `meta` at its revision; the new record, or why not
    /// (`Ok(Err(current))`: someone else's revision).
    async fn write(
        &self,
        schema: u32,
        data: &[u8],
        meta: &[u8],
        expiry: Expiry,
    ) -> Result<Result<Arc<Record>, Option<Record>>, Error> {
        write_at(
            self.engine,
            self.key,
            Some(&self.record),
            schema,
            data,
            meta,
            expiry,
        )
        .await
    }

    /// Renews the lease until it is lost (returns why); runs beside the closure.
    async fn renew(&mut self) -> String {
        let every = Duration::from_millis(self.lease.ms / 3).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(every).await;
            let r = self.record.clone();
            match self.write(r.schema, &r.data, &r.meta, Expiry::Keep).await {
                Ok(Ok(next)) => {
                    self.engine.bump(Counter::LeaseRenewals);
                    self.record = next;
                }
                Ok(Err(_)) => {
                    return "another update took the scope over after the lease ran out".to_owned()
                }
                // Unknown or failed: try again at the next tick; if the lease runs out
                // meanwhile, the next renewal finds someone else's revision.
                Err(e) => tracing::debug!(error = %e, "lease renewal failed"),
            }
        }
    }
}

/// A compare-and-swap of `data` and `meta` at `base`'s revision, on behalf of this engine.
/// Waits out another process's reservation; a reply that was lost is settled from the
/// tokens (our token on the record: it committed). `Ok(Err(current))` when the record is at
/// another revision.
async fn write_at(
    engine: &Engine,
    key: &Key<'_>,
    base: Option<&Arc<Record>>,
    schema: u32,
    data: &[u8],
    meta: &[u8],
    expiry: Expiry,
) -> Result<Result<Arc<Record>, Option<Record>>, Error> {
    let expected = base.map(|r| r.revision());
    let mut held = Duration::from_micros(200);
    // The tokens of this call's tries: a try whose reply was lost may land after the next one
    // was sent, and the record then shows it.
    let mut sent: Vec<u64> = Vec::new();
    // Whether a record shows that one of them landed: as its last write, or, for a write that
    // gives the lease back (a commit, a release), anywhere among its latest.
    let releases = lease_of(meta).is_none();
    let landed = |r: &Record, sent: &[u64]| {
        sent.contains(&r.last_token()) || (releases && r.tokens.iter().any(|t| sent.contains(t)))
    };
    for _ in 0..1000 {
        let write = new_write(schema, data)
            .with_meta(meta)
            .with_claimant(engine.claimant)
            .with_expiry(expiry);
        let token = write.token;
        sent.push(token);
        let outcome = match engine.driver.cas(key.as_str(), expected, write).await {
            Ok(o) => o,
            Err(e) if e.outcome_unknown() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = engine
                    .driver
                    .load(key.as_str())
                    .await
                    .map_err(|e| e.for_scope(key.scope()))?;
                match now {
                    Some(r) if landed(&r, &sent) => {
                        return Ok(Ok(Arc::new(r)));
                    }
                    Some(r) if Some(r.revision()) == expected => continue,
                    other => return Ok(Err(other)),
                }
            }
            Err(e) => return Err(e.for_scope(key.scope())),
        };
        match outcome {
            CasOutcome::Committed(version) => {
                let tokens = match base {
                    Some(r) => push_token(&r.tokens, token),
                    None => vec![token],
                };
                return Ok(Ok(Arc::new(
                    Record::new(version, schema, data.to_vec(), tokens).with_meta(meta.to_vec()),
                )));
            }
            // Refused at the expected revision: another process's short reservation.
            CasOutcome::Conflict(Some(r)) if Some(r.revision()) == expected => {
                tokio::time::sleep(held).await;
                held = (held * 2).min(Duration::from_millis(5));
            }
            CasOutcome::Conflict(Some(r)) if landed(&r, &sent) => {
                return Ok(Ok(Arc::new(r)));
            }
            CasOutcome::Conflict(r) => return Ok(Err(r)),
            // Not asked for (no `Write::reserve` here): a conflict all the same.
            CasOutcome::Reserved(r) => return Ok(Err(Some(r))),
        }
    }
    Ok(Err(None))
}

impl Engine {
    /// Runs `f` once on scope `name` while holding its lease (see the module docs).
    pub(crate) async fn locked<T, R, E, F, Fut>(&self, name: &str, f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnOnce(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        let key = self.key(T::NAMESPACE, name)?;
        self.check_expiry::<T>()?;
        let slot = self.slots.slot(key.as_str());
        let started = Instant::now();
        let lease = Lease {
            holder: rand::random_range(1..=u64::MAX),
            ms: u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX),
        };
        // Take: the stored data, unchanged, with the lease in the notes; from the cache when it
        // holds the scope (a stale entry costs one failed compare-and-swap that returns the
        // fresh record), so that an uncontended exclusive update is two round trips.
        let (mut start, mut from_cache) = match slot.get() {
            Some(r) => (Some(r), true),
            None => (load(self, &key, &slot).await?, false),
        };
        let (record, created) = loop {
            let base = wait_free(self, &key, &slot, start, from_cache, started).await?;
            from_cache = false;
            let (schema, data, expiry) = match &base {
                Some(r) => (r.schema, r.data.clone(), Expiry::Keep),
                None => (
                    T::VERSION,
                    codec::encode(key.scope(), &T::default())?,
                    super::expiry_of::<T>(),
                ),
            };
            let meta = with_lease(base.as_ref().map_or(&[][..], |r| &r.meta), Some(lease));
            match write_at(self, &key, base.as_ref(), schema, &data, &meta, expiry).await? {
                Ok(taken) => break (taken, base.is_none()),
                Err(fresh) => {
                    start = match fresh {
                        Some(r) => Some(Arc::new(r)),
                        None => load(self, &key, &slot).await?,
                    };
                }
            }
        };
        self.bump(Counter::LeasesTaken);
        // Others must not skip their wait on a cached copy without the lease.
        self.slots.set(&slot, Some(record.clone()));
        let mut hold = Hold {
            engine: self,
            key: &key,
            slot: &slot,
            lease,
            record,
        };
        let ended = match codec::decode::<T>(key.scope(), Some(&hold.record)) {
            Err(e) => Err(Ended::Abort(E::from(e))),
            Ok(value) => {
                let closure = f(value);
                let renewal = async {
                    tokio::pin!(closure);
                    tokio::select! {
                        biased;
                        out = &mut closure => out.map_err(Ended::Abort),
                        why = hold.renew() => Err(Ended::Lost(why)),
                    }
                };
                renewal.await
            }
        };
        match ended {
            Ok((value, out)) => {
                let data = codec::encode(key.scope(), &value)?;
                drop(value);
                if let Err(e) = self.check_size(&key, &data) {
                    self.release(&hold, created).await;
                    return Err(e.into());
                }
                let schema = codec::schema_for::<T>(Some(&hold.record));
                let meta = with_lease(&hold.record.meta, None);
                match hold
                    .write(schema, &data, &meta, super::expiry_of::<T>())
                    .await
                {
                    Ok(Ok(done)) => {
                        self.slots.set(&slot, Some(done));
                        self.bump(Counter::Commits);
                        Ok(out)
                    }
                    Ok(Err(_)) => {
                        self.slots.set(&slot, None);
                        Err(lost(
                            &key,
                            "another update took the scope over after the lease ran out",
                        )
                        .into())
                    }
                    Err(e) => {
                        if !e.outcome_unknown() {
                            // Not written: give the scope back rather than leave it to run out.
                            self.release(&hold, created).await;
                        }
                        self.slots.set(&slot, None);
                        Err(if e.outcome_unknown() {
                            Error::CommitUnknown {
                                scope: shorten(key.scope()),
                                reason: format!(
                                    "the reply to the commit of a locked update was lost: {e}"
                                ),
                            }
                        } else {
                            e
                        }
                        .into())
                    }
                }
            }
            Err(Ended::Abort(e)) => {
                self.release(&hold, created).await;
                Err(e)
            }
            Err(Ended::Lost(why)) => {
                self.slots.set(&slot, None);
                Err(lost(&key, &why).into())
            }
        }
    }

    /// Gives the scope back unchanged: the lease taken out of the notes (the record that the
    /// take created from nothing is removed again). Failures are logged: the lease then runs
    /// out on its own.
    async fn release(&self, hold: &Hold<'_>, created: bool) {
        let r = hold.record.clone();
        let done = if created && self.driver.capabilities().multi_key_commit {
            let op = crate::driver::Op {
                key: hold.key.as_str(),
                expected: Some(r.revision()),
                action: crate::driver::Action::Delete,
            };
            match self.driver.commit(&[op]).await {
                Ok(crate::driver::CommitOutcome::Committed(_)) => {
                    self.slots.set(hold.slot, None);
                    return;
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "releasing a lease failed");
                    false
                }
            }
        } else {
            let meta = with_lease(&r.meta, None);
            match hold.write(r.schema, &r.data, &meta, Expiry::Keep).await {
                Ok(Ok(next)) => {
                    self.slots.set(hold.slot, Some(next));
                    return;
                }
                Ok(Err(_)) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "releasing a lease failed");
                    false
                }
            }
        };
        if !done {
            self.slots.set(hold.slot, None);
        }
    }
}

/// The error of a holder that lost its lease.
fn lost(key: &Key<'_>, why: &str) -> Error {
    Error::LeaseLost {
        scope: shorten(key.scope()),
        reason: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_sit_beside_receipts() {
        assert_eq!(lease_of(b""), None);
        assert_eq!(lease_of(br#"{"receipts":[]}"#), None);
        let l = Lease { holder: 7, ms: 300 };
        let m = with_lease(br#"{"receipts":[{"k":"a","r":"1","at":1}]}"#, Some(l));
        assert_eq!(lease_of(&m), Some(l));
        let back = with_lease(&m, None);
        assert_eq!(lease_of(&back), None);
        assert!(contains(&back, b"receipts"));
        assert!(with_lease(&with_lease(b"", Some(l)), None).is_empty());
    }
}
