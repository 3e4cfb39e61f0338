//! Receipts of idempotent updates, kept in the record's notes ([`Record::meta`]).
//!
//! An update run with a caller's idempotency key commits its change together with a receipt
//! (the key and the update's result) in the same compare-and-swap, so the change and the
//! receipt are one write. A later run with the same key finds the receipt and returns the first
//! result without running the closure: a client that retries after a lost answer, a timeout or
//! a [`CommitUnknown`](crate::Error::CommitUnknown) applies its change at most once.
//!
//! A scope keeps its [`MAX_RECEIPTS`] newest receipts, each for [`RECEIPT_TTL`]; the notes are
//! JSON: `{"receipts":[{"k":"…","r":"<the result as JSON>","at":<ms since 1970>}]}`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::driver::Record;
use crate::error::shorten;
use crate::Error;

/// How long a scope remembers an idempotency key.
pub const RECEIPT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How many idempotency keys a scope remembers at most (the newest).
pub const MAX_RECEIPTS: usize = 64;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The largest result a receipt keeps, encoded, in bytes.
pub const MAX_RECEIPT_RESULT_LEN: usize = 64 << 10;

/// The engine's notes on a record.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Notes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    receipts: Vec<Receipt>,
}

#[derive(Serialize, Deserialize, Debug)]
struct Receipt {
    /// The idempotency key.
    k: String,
    /// The result, as JSON.
    r: String,
    /// When it committed, ms since 1970 (local clock).
    at: u64,
}

/// How an idempotent update stores and reads back its result.
pub(crate) struct Once<'a, R> {
    pub key: &'a str,
    pub encode: fn(&R) -> Result<String, serde_json::Error>,
    pub decode: fn(&str) -> Result<R, serde_json::Error>,
}

impl<R> Once<'_, R> {
    /// Checks the key.
    pub fn check(&self) -> Result<(), Error> {
        let reason = if self.key.is_empty() {
            "it is empty"
        } else if self.key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            "it is longer than 256 bytes"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig {
            setting: "idempotency key",
            reason: format!("{reason}: {:?}", shorten(self.key)),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn notes(scope: &str, record: Option<&Record>) -> Result<Notes, Error> {
    match record {
        Some(r) if !r.meta.is_empty() => {
            serde_json::from_slice(&r.meta).map_err(|e| Error::Corrupt {
                scope: shorten(scope),
                location: "the record's notes".to_owned(),
                detail: format!("the receipts do not parse: {e}"),
            })
        }
        _ => Ok(Notes::default()),
    }
}

/// The result the record keeps for `once`'s key, decoded, if any.
pub(crate) fn find<R>(
    scope: &str,
    record: Option<&Record>,
    once: &Once<'_, R>,
) -> Result<Option<R>, Error> {
    let notes = notes(scope, record)?;
    let Some(receipt) = notes.receipts.iter().find(|r| r.k == once.key) else {
        return Ok(None);
    };
    (once.decode)(&receipt.r)
        .map(Some)
        .map_err(|e| Error::Decode {
            scope: shorten(scope),
            type_name: std::any::type_name::<R>(),
            source: Box::new(e),
        })
}

/// Whether `record` holds a receipt for `key` (notes that do not parse hold none).
pub(crate) fn holds(record: &Record, key: &str) -> bool {
    !record.meta.is_empty()
        && serde_json::from_slice::<Notes>(&record.meta)
            .is_ok_and(|n| n.receipts.iter().any(|r| r.k == key))
}

/// The notes to write with the result `out` of `once` on top of `record`: the receipt added,
/// expired and surplus ones dropped.
pub(crate) fn with_receipt<R>(
    scope: &str,
    record: Option<&Record>,
    once: &Once<'_, R>,
    out: &R,
) -> Result<Vec<u8>, Error> {
    let encoded = (once.encode)(out).map_err(|e| Error::Encode {
        scope: shorten(scope),
        type_name: std::any::type_name::<R>(),
        reason: format!("the result of an idempotent update: {e}"),
    })?;
    if encoded.len() > MAX_RECEIPT_RESULT_LEN {
        return Err(Error::TooLarge {
            scope: shorten(scope),
            size: encoded.len(),
            limit: MAX_RECEIPT_RESULT_LEN,
        });
    }
    let mut notes = notes(scope, record)?;
    let now = now_ms();
    let ttl = u64::try_from(RECEIPT_TTL.as_millis()).unwrap_or(u64::MAX);
    notes
        .receipts
        .retain(|r| r.k != once.key && now.saturating_sub(r.at) < ttl);
    notes.receipts.push(Receipt {
        k: once.key.to_owned(),
        r: encoded,
        at: now,
    });
    let surplus = notes.receipts.len().saturating_sub(MAX_RECEIPTS);
    notes.receipts.drain(..surplus);
    serde_json::to_vec(&notes).map_err(|e| Error::Encode {
        scope: shorten(scope),
        type_name: "receipts",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn once(key: &str) -> Once<'_, u64> {
        Once {
            key,
            encode: |r| serde_json::to_string(r),
            decode: |s| serde_json::from_str(s),
        }
    }

    #[test]
    fn receipts_are_found_bounded_and_replaced() {
        let mut record = Record::new(1, 0, b"{}".to_vec(), vec![1]);
        assert_eq!(find("s", Some(&record), &once("a")).unwrap(), None);
        for i in 0..100u64 {
            let key = format!("k{i}");
            record.meta = with_receipt("s", Some(&record), &once(&key), &i).unwrap();
        }
        assert_eq!(find("s", Some(&record), &once("k99")).unwrap(), Some(99));
        assert_eq!(find("s", Some(&record), &once("k36")).unwrap(), Some(36));
        assert_eq!(find("s", Some(&record), &once("k35")).unwrap(), None);
        record.meta = with_receipt("s", Some(&record), &once("k99"), &7).unwrap();
        assert_eq!(find("s", Some(&record), &once("k99")).unwrap(), Some(7));
        record.meta = b"not json".to_vec();
        assert!(matches!(
            find("s", Some(&record), &once("a")),
            Err(Error::Corrupt { .. })
        ));
        assert!(once("").check().is_err());
        assert!(once(&"x".repeat(257)).check().is_err());
        assert!(once("req-1").check().is_ok());
    }
}
