//! Records as the hash of a scope holds them (see the [layout](super#layout)): parsing an
//! `HGETALL` reply, and the encodings of versions and tokens.

use redis::Value;

use crate::driver::{parse_token_digits, token_digits, Record, RECENT_TOKENS};
use crate::Error;

/// The hex digits of one token in field `t`.
const TOKEN_HEX: usize = 16;

/// The value of hash field `name` in an `HGETALL` reply (RESP2 array or RESP3 map).
pub(super) fn hash_field<'a>(reply: &'a Value, name: &[u8]) -> Option<&'a [u8]> {
    let is = |f: &Value| matches!(f, Value::BulkString(f) if f.as_slice() == name);
    let value = match reply {
        Value::Array(items) => items.chunks_exact(2).find_map(|pair| match pair {
            [f, v] if is(f) => Some(v),
            _ => None,
        }),
        Value::Map(pairs) => pairs.iter().find(|(f, _)| is(f)).map(|(_, v)| v),
        _ => None,
    };
    match value {
        Some(Value::BulkString(v)) => Some(v.as_slice()),
        _ => None,
    }
}

/// Parses a record from an `HGETALL` reply (an array of field/value pairs, or a map in RESP3).
pub(super) fn parse_record(reply: Value, key: &str, rkey: &str) -> Result<Option<Record>, Error> {
    let (mut v, mut s, mut d, mut t, mut m) = (None, None, None, None, None);
    let mut take = |field: Value, value: Value| {
        let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
            return Err(corrupt(key, rkey, "a hash field is not a string"));
        };
        match field.as_slice() {
            b"v" => v = Some(value),
            b"s" => s = Some(value),
            b"d" => d = Some(value),
            b"t" => t = Some(value),
            b"m" => m = Some(value),
            _ => {}
        }
        Ok(())
    };
    match reply {
        // No field: the key does not exist.
        Value::Nil => return Ok(None),
        Value::Array(items) if items.is_empty() => return Ok(None),
        Value::Map(pairs) if pairs.is_empty() => return Ok(None),
        Value::Array(items) => {
            if !items.len().is_multiple_of(2) {
                return Err(corrupt(key, rkey, "odd number of hash fields in reply"));
            }
            let mut it = items.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                take(f, v)?;
            }
        }
        Value::Map(pairs) => {
            for (f, v) in pairs {
                take(f, v)?;
            }
        }
        _ => return Err(corrupt(key, rkey, "unexpected reply type for a record")),
    }
    let version = match v {
        None => return Err(corrupt(key, rkey, "the version (field v) is missing")),
        Some(v) => parse_version(&v).ok_or_else(|| {
            corrupt(
                key,
                rkey,
                "the version (field v) is not a canonical decimal number",
            )
        })?,
    };
    let schema = match s {
        None => {
            return Err(corrupt(
                key,
                rkey,
                "the schema version (field s) is missing",
            ))
        }
        Some(s) => std::str::from_utf8(&s)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| corrupt(key, rkey, "the schema version (field s) is not a number"))?,
    };
    let Some(data) = d else {
        return Err(corrupt(key, rkey, "the data (field d) is missing"));
    };
    let tokens = match t {
        None => {
            return Err(corrupt(
                key,
                rkey,
                "the commit tokens (field t) are missing",
            ))
        }
        Some(t) => parse_tokens(&t)
            .ok_or_else(|| corrupt(key, rkey, "the commit tokens (field t) are malformed"))?,
    };
    Ok(Some(
        Record::new(version, schema, data, tokens).with_meta(m.unwrap_or_default()),
    ))
}

/// A version as the scripts write it: decimal digits, no sign, no leading zero.
pub(super) fn parse_version(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw[0] == b'0' || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Tokens as field `t` holds them: 16 lower-case hex digits each, at most [`RECENT_TOKENS`].
fn parse_tokens(raw: &[u8]) -> Option<Vec<u64>> {
    if !raw.len().is_multiple_of(TOKEN_HEX) || raw.len() > TOKEN_HEX * RECENT_TOKENS {
        return None;
    }
    raw.chunks_exact(TOKEN_HEX)
        .map(|c| parse_token_digits(c, false))
        .collect()
}

pub(super) fn token_hex(token: u64) -> String {
    token_digits(token).iter().map(|&d| char::from(d)).collect()
}

/// An [`Error::Corrupt`] for scope `key` at Redis key `rkey`.
pub(super) fn corrupt(key: &str, rkey: &str, detail: &str) -> Error {
    Error::Corrupt {
        scope: crate::error::shorten(key),
        location: format!("redis key {:?}", crate::error::shorten(rkey)),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_canonical() {
        assert_eq!(parse_version(b"1"), Some(1));
        assert_eq!(parse_version(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_version(b"18446744073709551616"), None);
        assert_eq!(parse_version(b"007"), None);
        assert_eq!(parse_version(b"0"), None);
        assert_eq!(parse_version(b""), None);
        assert_eq!(parse_version(b"-1"), None);
        assert_eq!(parse_version(b"1e3"), None);
    }

    #[test]
    fn tokens_round_trip() {
        let raw: String = [1u64, u64::MAX, 0xabc]
            .iter()
            .map(|t| token_hex(*t))
            .collect();
        assert_eq!(parse_tokens(raw.as_bytes()), Some(vec![1, u64::MAX, 0xabc]));
        assert_eq!(parse_tokens(b""), Some(vec![]));
        assert_eq!(parse_tokens(b"123"), None);
        assert_eq!(parse_tokens(b"000000000000000G"), None);
        assert_eq!(parse_tokens(b"000000000000000A"), None);
        assert_eq!(parse_tokens("0".repeat(16 * 17).as_bytes()), None);
    }

    #[test]
    fn records_parse_or_are_corrupt() {
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let reply = |fields: &[(&[u8], &[u8])]| {
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(f, v)| [bulk(f), bulk(v)])
                    .collect(),
            )
        };
        let tok = token_hex(7);
        let good = reply(&[
            (b"v", b"42"),
            (b"s", b"3"),
            (b"d", b"{}"),
            (b"t", tok.as_bytes()),
            (b"x", b"ignored"),
        ]);
        let r = parse_record(good, "k", "mp:k").unwrap().unwrap();
        assert_eq!((r.version, r.schema, r.tokens), (42, 3, vec![7]));
        assert_eq!(r.data, b"{}");
        assert_eq!(
            parse_record(Value::Array(vec![]), "k", "mp:k").unwrap(),
            None
        );

        let missing_v = reply(&[(b"s", b"3"), (b"d", b"{}"), (b"t", b"")]);
        match parse_record(missing_v, "k", "mp:k") {
            Err(Error::Corrupt {
                location, detail, ..
            }) => {
                assert!(location.contains("mp:k"), "{location}");
                assert!(detail.contains("field v"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let bad_s = reply(&[(b"v", b"1"), (b"s", b"x"), (b"d", b"{}"), (b"t", b"")]);
        assert!(matches!(
            parse_record(bad_s, "k", "mp:k"),
            Err(Error::Corrupt { .. })
        ));
    }
}
