//! Settling a write whose reply was lost.
//!
//! A compare-and-swap that failed with a lost connection or a timeout may have taken effect,
//! may not have, or may still be on its way: a statement waiting on a row lock, or bytes held by
//! a proxy whose client side was cut, can still land after the engine looks. So "the record is
//! unchanged" does not mean "not applied" until the lost write can no longer land. The engine
//! reads the record and:
//!
//! 1. Our commit token is among the record's latest: it committed.
//! 2. The record is still at the version the write expected: *fence* it with a compare-and-swap
//!    that rewrites the same data at the next version. Once the fence commits, the lost write's
//!    `version = v` can never match, so it did not and will not happen: rerun. If the fence
//!    conflicts, something landed first (maybe ours): look again.
//! 3. The record moved on, and its tokens cover every write since the expected version without
//!    ours: another writer won, ours can no longer land: rerun on the fresh record.
//! 4. Anything else (the scope was removed, too many writes since, a create whose scope is
//!    absent: it may have been created and removed since): [`Error::CommitUnknown`], never a
//!    rerun that could apply the change twice.
//!
//! The backend being unreachable throughout is also [`Error::CommitUnknown`].

use std::sync::Arc;
use std::time::Duration;

use super::receipts;
use super::slots::Slot;
use super::update::{load, new_write, Base, Run};
use super::{Engine, Key};
use crate::driver::Revision;
use crate::driver::{CasOutcome, Record, RECENT_TOKENS};
use crate::error::shorten;
use crate::Error;

/// How a lost write turned out.
pub(super) enum Settled {
    /// It committed; the record read is the scope as it stands (cached already).
    Committed(Arc<Record>),
    /// It did not happen and cannot any more; rerun on this record (`None`: load it).
    NotApplied(Option<Record>),
}

/// Pauses between looks at a backend that does not answer.
const PAUSES_MS: [u64; 6] = [0, 50, 200, 500, 1000, 2000];

impl Run<'_> {
    /// Settles the write with `token` that expected `base`, whose reply was lost with `cause`.
    pub(super) async fn settle(
        &self,
        base: &Base,
        token: u64,
        once_key: Option<&str>,
        cause: Error,
    ) -> Result<Settled, Error> {
        settle(
            self.engine,
            self.key,
            self.slot,
            base.expected(),
            token,
            once_key,
            cause,
        )
        .await
    }
}

/// Settles the write of `key` (cached in `slot`) with `token` that expected `expected`, whose
/// reply was lost with `cause`. For a commit of several scopes, all or nothing, one written
/// scope tells for all.
pub(super) async fn settle(
    engine: &Engine,
    key: &Key<'_>,
    slot: &Slot,
    expected: Option<Revision>,
    token: u64,
    once_key: Option<&str>,
    cause: Error,
) -> Result<Settled, Error> {
    {
        tracing::debug!(error = %cause, "write outcome unknown, settling");
        let unknown = |reason: String| Error::CommitUnknown {
            scope: shorten(key.scope()),
            reason,
        };
        let mut last_error = cause;
        for pause in PAUSES_MS {
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let record = match load(engine, key, slot).await {
                Ok(r) => r,
                Err(e) if e.outcome_unknown() || e.unsent() => {
                    last_error = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(record) = record else {
                return Err(unknown(match expected {
                    Some(_) => "the scope was removed meanwhile".to_owned(),
                    None => {
                        "the scope is absent: it may have been created and removed since".to_owned()
                    }
                }));
            };
            if record.tokens.contains(&token) {
                return Ok(Settled::Committed(record));
            }
            // The receipt of this idempotency key is there: the change was made once (by this
            // write or by another call with the same key), and a rerun returns its result.
            if once_key.is_some_and(|k| receipts::holds(&record, k)) {
                return Ok(Settled::NotApplied(Some((*record).clone())));
            }
            let Some(expected) = expected else {
                // Created by another writer. Ours could only have been there before a removal
                // and this creation: the tokens cannot tell.
                return Err(unknown(
                    "another writer created the scope; ours may have been created and removed \
                     before"
                        .to_owned(),
                ));
            };
            if expected.matches(&record) {
                // Fence: move the version on without changing the data. A lease on the revision
                // this write expected had run out (the write waited for it): not carried on.
                let meta = if super::lease::lease_of(&record.meta).is_some() {
                    super::lease::with_lease(&record.meta, None)
                } else {
                    record.meta.clone()
                };
                let fence = new_write(record.schema, &record.data).with_meta(&meta);
                match engine.driver.cas(key.as_str(), Some(expected), fence).await {
                    Ok(CasOutcome::Committed(v)) => {
                        let fenced = fence.to_record(v, &record.tokens);
                        tracing::debug!(version = v, "fenced: the lost write cannot land");
                        return Ok(Settled::NotApplied(Some(fenced)));
                    }
                    // Something landed first: look again.
                    Ok(CasOutcome::Conflict(_) | CasOutcome::Reserved(_)) => continue,
                    Err(e) if e.outcome_unknown() || e.unsent() => {
                        last_error = e;
                        continue;
                    }
                    Err(e) => return Err(e.for_scope(key.scope())),
                }
            }
            // Other writes happened since. If the tokens cover all of them, ours is not among
            // them and, the record being past the revision it expected (the token before them
            // is the expected one, when the record still remembers it), it cannot land any more.
            let version = expected.version;
            let since = record.version.wrapping_sub(version);
            let n = record.tokens.len() as u64;
            let descends = since < n && record.tokens[(n - since - 1) as usize] == expected.token;
            if record.version > version && (descends || since == n) {
                return Ok(Settled::NotApplied(Some((*record).clone())));
            }
            return Err(unknown(if record.version > version && since > n {
                format!("{since} writes since, more than the {RECENT_TOKENS} the record remembers")
            } else {
                "the record is not a successor of the one the write expected (a restore or a \
                 failover?)"
                    .to_owned()
            }));
        }
        Err(unknown(format!(
            "the backend stayed unreachable: {last_error}"
        )))
    }
}
