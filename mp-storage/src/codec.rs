//! Scope values to bytes and back: JSON through serde_json, with the schema version kept beside
//! the data (in the [`Record`]), never inside the user's JSON.

mod loss;

pub(crate) use loss::{lost, Lost};

use crate::driver::Record;
use crate::error::shorten;
use crate::{Error, Scope};

/// Decodes a stored record (or its absence) as `T`, migrating older schema versions; a newer
/// one decodes as it is when `T` reads newer records (`#[scope(read_newer)]`).
pub(crate) fn decode<T: Scope>(name: &str, record: Option<&Record>) -> Result<T, Error> {
    let Some(record) = record else {
        return Ok(T::default());
    };
    let type_name = std::any::type_name::<T>();
    let decode_error = |e: serde_json::Error| Error::Decode {
        scope: shorten(name),
        type_name,
        source: Box::new(e),
    };
    if T::UNTYPED || record.schema == T::VERSION || (T::READ_NEWER && record.schema > T::VERSION) {
        return serde_json::from_slice(&record.data).map_err(decode_error);
    }
    if record.schema > T::VERSION {
        return Err(Error::SchemaTooNew {
            scope: shorten(name),
            type_name,
            stored: record.schema,
            supported: T::VERSION,
        });
    }
    let old: serde_json::Value = serde_json::from_slice(&record.data).map_err(decode_error)?;
    T::migrate(record.schema, old).map_err(|reason| Error::Migration {
        scope: shorten(name),
        type_name,
        from: record.schema,
        reason,
    })
}

/// Encodes `value` as compact JSON. A NaN or infinite float is an error, not a silent `null`.
pub(crate) fn encode<T: Scope>(name: &str, value: &T) -> Result<Vec<u8>, Error> {
    let mut data = Vec::with_capacity(128);
    encode_into(name, value, &mut data)?;
    Ok(data)
}

/// Appends the encoding of `value` to `out` (see [`encode`]).
fn encode_into<T: Scope>(name: &str, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let fail = |reason: String| Error::Encode {
        scope: shorten(name),
        type_name: std::any::type_name::<T>(),
        reason,
    };
    let mut seen_null = false;
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, NullSpy(&mut seen_null));
    value.serialize(&mut ser).map_err(|e| fail(e.to_string()))?;
    // serde_json writes a non-finite float as `null`: only then is the walk worth it.
    if seen_null {
        crate::finite::check(value).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// serde_json's compact output, noting whether it wrote a `null` (which a NaN or infinite
/// float becomes).
struct NullSpy<'a>(&'a mut bool);

impl serde_json::ser::Formatter for NullSpy<'_> {
    fn write_null<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        *self.0 = true;
        writer.write_all(b"null")
    }
}

/// The encoding of a value after an update's closure ran, against the encoding before.
pub(crate) enum Encoded {
    /// Byte for byte the encoding before: nothing was allocated.
    Same,
    /// A different encoding.
    Changed(Vec<u8>),
}

thread_local! {
    /// The buffer [`encode_against`] encodes into: an update whose closure changed nothing
    /// allocates nothing.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest buffer kept for the next [`encode_against`].
const SCRATCH_KEPT: usize = 64 << 10;

/// Encodes `value` like [`encode`], without allocating when the encoding is `before` (an update
/// whose closure changed nothing).
pub(crate) fn encode_against<T: Scope>(
    name: &str,
    value: &T,
    before: &[u8],
) -> Result<Encoded, Error> {
    let scratch = SCRATCH.try_with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return None;
        };
        buf.clear();
        buf.reserve(128);
        Some(match encode_into(name, value, &mut buf) {
            Err(e) => {
                if buf.capacity() > SCRATCH_KEPT {
                    *buf = Vec::new();
                }
                Err(e)
            }
            Ok(()) if buf[..] == *before => {
                if buf.capacity() > SCRATCH_KEPT {
                    *buf = Vec::new();
                }
                Ok(Encoded::Same)
            }
            // A copy of its size for the record, the buffer kept (a large one goes with it).
            Ok(()) if buf.capacity() <= SCRATCH_KEPT => Ok(Encoded::Changed(buf.to_vec())),
            Ok(()) => Ok(Encoded::Changed(std::mem::take(&mut *buf))),
        })
    });
    match scratch {
        Ok(Some(encoded)) => encoded,
        // No thread-local buffer to use (a thread being torn down): a buffer of its own.
        _ => {
            let data = encode(name, value)?;
            Ok(if data == before {
                Encoded::Same
            } else {
                Encoded::Changed(data)
            })
        }
    }
}

/// Whether `value` encodes to exactly `expected`, found without building the encoding.
pub(crate) fn encodes_to<T: Scope>(value: &T, expected: &[u8]) -> bool {
    struct Compare<'a> {
        rest: &'a [u8],
        equal: bool,
    }
    impl std::io::Write for Compare<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.equal {
                match self.rest.strip_prefix(buf) {
                    Some(rest) => self.rest = rest,
                    None => self.equal = false,
                }
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Compare {
        rest: expected,
        equal: true,
    };
    serde_json::to_writer(&mut w, value).is_ok() && w.equal && w.rest.is_empty()
}

/// The schema version to write `T` with, on top of `current`: `T`'s own, except that untyped
/// values and a newer record read under `#[scope(read_newer)]` keep the stored one.
pub(crate) fn schema_for<T: Scope>(current: Option<&Record>) -> u32 {
    match current {
        Some(r) if T::UNTYPED || (T::READ_NEWER && r.schema > T::VERSION) => r.schema,
        None if T::UNTYPED => 0,
        _ => T::VERSION,
    }
}

/// Whether a write of `T` over a record stored at `schema` must keep every stored field: a
/// record at `T`'s own version (unless `T` is `#[scope(lossy)]`) and a newer one read under
/// `#[scope(read_newer)]` (always). An older record is transformed by the migration on purpose,
/// and an untyped value keeps everything.
pub(crate) fn checks_loss<T: Scope>(schema: u32) -> bool {
    !T::UNTYPED && (schema > T::VERSION || (schema == T::VERSION && !T::LOSSY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
    struct V2 {
        n: u64,
    }

    impl Scope for V2 {
        const VERSION: u32 = 2;
        fn migrate(from: u32, old: serde_json::Value) -> Result<Self, String> {
            match from {
                1 => Ok(V2 {
                    n: old["count"].as_u64().ok_or("no count")?,
                }),
                _ => Err(format!("cannot migrate from {from}")),
            }
        }
    }

    fn rec(schema: u32, data: &str) -> Record {
        Record::new(1, schema, data.as_bytes().to_vec(), vec![])
    }

    #[test]
    fn absent_is_default() {
        assert_eq!(decode::<V2>("x", None).unwrap(), V2::default());
    }

    #[test]
    fn current_schema_decodes() {
        assert_eq!(
            decode::<V2>("x", Some(&rec(2, r#"{"n":5}"#))).unwrap(),
            V2 { n: 5 }
        );
    }

    #[test]
    fn older_schema_migrates() {
        assert_eq!(
            decode::<V2>("x", Some(&rec(1, r#"{"count":7}"#))).unwrap(),
            V2 { n: 7 }
        );
        assert!(matches!(
            decode::<V2>("x", Some(&rec(0, r#"{"count":7}"#))),
            Err(Error::Migration { from: 0, .. })
        ));
        assert!(matches!(
            decode::<V2>("x", Some(&rec(1, r#"{}"#))),
            Err(Error::Migration { .. })
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        assert!(matches!(
            decode::<V2>("x", Some(&rec(3, r#"{"n":5}"#))),
            Err(Error::SchemaTooNew {
                stored: 3,
                supported: 2,
                ..
            })
        ));
    }

    #[test]
    fn garbage_is_a_decode_error_naming_scope_and_type() {
        let e = decode::<V2>("the-scope", Some(&rec(2, "{not json"))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("the-scope") && msg.contains("V2"), "{msg}");
    }

    #[test]
    fn non_finite_floats_are_refused() {
        assert!(matches!(encode("x", &f64::NAN), Err(Error::Encode { .. })));
        assert!(matches!(
            encode("x", &vec![Some(1.0), None, Some(f64::INFINITY)]),
            Err(Error::Encode { .. })
        ));
        assert_eq!(encode("x", &vec![Some(1.0), None]).unwrap(), b"[1.0,null]");
    }

    #[test]
    fn compares_encodings() {
        assert!(encodes_to(&V2 { n: 5 }, br#"{"n":5}"#));
        assert!(!encodes_to(&V2 { n: 5 }, br#"{"n":50}"#));
        assert!(!encodes_to(&V2 { n: 50 }, br#"{"n":5}"#));
        assert!(!encodes_to(&V2 { n: 5 }, br#"{"n":5} "#));
    }

    #[test]
    fn encodes_against_the_encoding_before() {
        let same = encode_against("x", &V2 { n: 5 }, br#"{"n":5}"#).unwrap();
        assert!(matches!(same, Encoded::Same));
        let changed = encode_against("x", &V2 { n: 6 }, br#"{"n":5}"#).unwrap();
        assert!(matches!(changed, Encoded::Changed(d) if d == br#"{"n":6}"#));
        // The buffer handed out with a change is not the next call's.
        let again = encode_against("x", &V2 { n: 7 }, br#"{"n":5}"#).unwrap();
        assert!(matches!(again, Encoded::Changed(d) if d == br#"{"n":7}"#));
        let long = vec!["abcdefghij".to_owned(); 40];
        let full = encode("x", &long).unwrap();
        assert!(matches!(
            encode_against("x", &long, &full).unwrap(),
            Encoded::Same
        ));
        assert!(
            matches!(encode_against("x", &long, b"[]").unwrap(), Encoded::Changed(d) if d == full)
        );
        // A non-finite float is refused even when the encoding did not change.
        assert!(matches!(
            encode_against("x", &vec![Some(f64::NAN)], b"[null]"),
            Err(Error::Encode { .. })
        ));
        assert!(matches!(
            encode_against("x", &vec![None::<f64>], b"[null]").unwrap(),
            Encoded::Same
        ));
    }

    #[test]
    fn nulls_and_non_finite_floats() {
        // A real null, a "null" in a string, and none at all: all encode.
        assert_eq!(encode("x", &None::<f64>).unwrap(), b"null");
        assert_eq!(
            encode("x", &vec!["null".to_owned()]).unwrap(),
            br#"["null"]"#
        );
        assert_eq!(
            encode("x", &serde_json::json!({"a": null, "b": [1, null]})).unwrap(),
            br#"{"a":null,"b":[1,null]}"#
        );
        // A non-finite float anywhere, beside nulls or not, is refused.
        assert!(matches!(
            encode("x", &vec![None, Some(f64::NEG_INFINITY)]),
            Err(Error::Encode { .. })
        ));
        assert!(matches!(
            encode(
                "x",
                &std::collections::BTreeMap::from([("k".to_owned(), f32::NAN)])
            ),
            Err(Error::Encode { .. })
        ));
    }

    /// Reads newer records and may drop fields.
    #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
    struct Tolerant {
        n: u64,
    }

    impl Scope for Tolerant {
        const VERSION: u32 = 2;
        const READ_NEWER: bool = true;
        const LOSSY: bool = true;
    }

    #[test]
    fn newer_schema_is_read_under_read_newer() {
        let r = rec(5, r#"{"n":5,"extra":1}"#);
        assert_eq!(
            decode::<Tolerant>("x", Some(&r)).unwrap(),
            Tolerant { n: 5 }
        );
        assert!(matches!(
            decode::<Tolerant>("x", Some(&rec(5, r#"{"m":5}"#))),
            Err(Error::Decode { .. })
        ));
        // Written back at the version it was read with.
        assert_eq!(schema_for::<Tolerant>(Some(&r)), 5);
        assert_eq!(schema_for::<Tolerant>(Some(&rec(1, "{}"))), 2);
        assert_eq!(schema_for::<Tolerant>(None), 2);
        assert_eq!(schema_for::<V2>(Some(&r)), 2);
    }

    #[test]
    fn which_records_are_checked_for_loss() {
        // Its own version, unless lossy; newer ones always; older ones never (migrated).
        assert!(checks_loss::<V2>(2) && checks_loss::<V2>(3) && !checks_loss::<V2>(1));
        assert!(!checks_loss::<Tolerant>(2) && checks_loss::<Tolerant>(3));
        assert!(!checks_loss::<serde_json::Value>(0));
    }

    #[test]
    fn untyped_keeps_schema() {
        let r = rec(9, r#"{"a":1}"#);
        let v = decode::<serde_json::Value>("x", Some(&r)).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(schema_for::<serde_json::Value>(Some(&r)), 9);
        assert_eq!(schema_for::<V2>(Some(&r)), 2);
    }
}
