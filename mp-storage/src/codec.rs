//! Scope values to bytes and back: JSON through serde_json, with the schema version kept beside
//! the data (in the [`Record`]), never inside the user's JSON.

use crate::driver::Record;
use crate::error::shorten;
use crate::{Error, Scope};

/// Decodes a stored record (or its absence) as `T`, migrating older schema versions.
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
    if T::UNTYPED || record.schema == T::VERSION {
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
    let fail = |reason: String| Error::Encode {
        scope: shorten(name),
        type_name: std::any::type_name::<T>(),
        reason,
    };
    let data = serde_json::to_vec(value).map_err(|e| fail(e.to_string()))?;
    // serde_json writes a non-finite float as `null`: only then is the walk worth it.
    if contains(&data, b"null") {
        crate::finite::check(value).map_err(|e| fail(e.to_string()))?;
    }
    Ok(data)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The schema version to write `T` with, on top of `current`.
pub(crate) fn schema_for<T: Scope>(current: Option<&Record>) -> u32 {
    if T::UNTYPED {
        current.map_or(0, |r| r.schema)
    } else {
        T::VERSION
    }
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
        Record {
            version: 1,
            schema,
            data: data.as_bytes().to_vec(),
            tokens: vec![],
        }
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
    fn untyped_keeps_schema() {
        let r = rec(9, r#"{"a":1}"#);
        let v = decode::<serde_json::Value>("x", Some(&r)).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(schema_for::<serde_json::Value>(Some(&r)), 9);
        assert_eq!(schema_for::<V2>(Some(&r)), 2);
    }
}
