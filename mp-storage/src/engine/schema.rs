//! Schema changes in the retry loop: the loss check before a write, and the rewrite of a record
//! to its type's current schema version (for [`Storage::migrate_all`](crate::Storage)).
//!
//! The update loop calls in here at two points, and nowhere else:
//!
//! - the no-op test: an update normally writes nothing when the closure changed nothing; a
//!   rewrite ([`Options::rewrite`]) still writes when the stored schema version differs from the
//!   one it would write;
//! - just before the commit: [`check_loss`] refuses a write over a record that the decoded value
//!   does not keep whole. It costs nothing on a record whose data is the canonical encoding of
//!   its value (the usual case, already known before the closure runs), and runs at most once
//!   per stored record and type otherwise (its verdict is kept in the scope's slot).

use std::any::{type_name, TypeId};
use std::sync::Arc;

use super::slots::{Slot, Verdict};
use super::update::{self, Base};
use super::Engine;
use crate::codec;
use crate::driver::Record;
use crate::error::shorten;
use crate::{Error, Scope};

/// How one update treats the schema version.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Options {
    /// Write the record back at the version the type writes even when the value's encoding did
    /// not change (a rewrite to the current schema). Off for every ordinary update: a read-only
    /// closure on an old record writes nothing.
    pub rewrite: bool,
}

/// Whether an update whose encoding did not change must write anyway: a rewrite over a
/// record stored at another schema version than `schema`, the one the write would have.
/// Never for an absent record: a rewrite creates nothing.
pub(super) fn must_write(opts: Options, current: Option<&Record>, schema: u32) -> bool {
    opts.rewrite && current.is_some_and(|r| r.schema != schema)
}

/// Refuses a write of `T` over `base`'s record when the value decoded from it (whose encoding,
/// before the closure ran, is `before`; `canonical` when that is the stored data itself) does
/// not keep every stored field. See `codec/loss.rs` for what counts as lost.
pub(super) fn check_loss<T: Scope>(
    slot: &Slot,
    scope: &str,
    base: &Base,
    canonical: bool,
    before: &[u8],
) -> Result<(), Error> {
    let Some(record) = &base.current else {
        return Ok(());
    };
    if canonical || !codec::checks_loss::<T>(record.schema) {
        return Ok(());
    }
    let t = TypeId::of::<T>();
    let verdict = match slot.verdict(record, t) {
        Some(v) => v,
        None => {
            let v = match codec::lost(&record.data, before) {
                None => Verdict::Keeps,
                Some(lost) => Verdict::Loses(Arc::new(lost)),
            };
            slot.set_verdict(record, t, v.clone());
            v
        }
    };
    match verdict {
        Verdict::Canonical | Verdict::Keeps => Ok(()),
        Verdict::Loses(lost) => {
            tracing::debug!(fields = ?lost.fields, "the write would lose stored data");
            Err(Error::WouldLoseData {
                scope: shorten(scope),
                type_name: type_name::<T>(),
                fields: lost.fields.clone(),
                more: lost.more,
            })
        }
    }
}

/// What a rewrite found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rewritten {
    /// The record was below the type's version and is now written at it.
    Migrated,
    /// The record was at the type's version already (or newer, read under `read_newer`).
    Current,
    /// There was no record (removed since it was listed).
    Absent,
}

impl Engine {
    /// Brings scope `name` of `T` to `T`'s schema version through the ordinary update (a
    /// compare-and-swap, retried on conflicts): decoded (migrating an older record) and written
    /// back even when its encoding is unchanged. A record already current is only read.
    pub(crate) async fn rewrite<T: Scope>(&self, name: &str) -> Result<Rewritten, Error> {
        let key = self.key(T::NAMESPACE, name)?;
        let Some(record) = self.load(&key).await? else {
            return Ok(Rewritten::Absent);
        };
        if T::UNTYPED || record.schema == T::VERSION {
            return Ok(Rewritten::Current);
        }
        if record.schema > T::VERSION {
            // Readable under `read_newer`, else the error decoding it gives (`SchemaTooNew`).
            return codec::decode::<T>(key.scope(), Some(&record)).map(|_| Rewritten::Current);
        }
        // The update starts from the record just loaded (it is cached), or loads it again.
        update::run(self, &key, Options { rewrite: true }, None, |value: T| {
            std::future::ready(Ok::<_, Error>((value, ())))
        })
        .await?;
        Ok(Rewritten::Migrated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(schema: u32) -> Record {
        Record::new(1, schema, b"{}".to_vec(), vec![])
    }

    #[test]
    fn only_a_rewrite_writes_an_unchanged_value() {
        let rewrite = Options { rewrite: true };
        assert!(must_write(rewrite, Some(&rec(1)), 2));
        assert!(!must_write(rewrite, Some(&rec(2)), 2));
        assert!(!must_write(rewrite, None, 2));
        assert!(!must_write(Options::default(), Some(&rec(1)), 2));
    }
}
