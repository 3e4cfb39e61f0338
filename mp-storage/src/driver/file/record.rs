//! The record file format: one JSON header line, then the data, then a newline.
//!
//! ```text
//! {"format":1,"key":"user:alice","version":7,"schema":0,"len":11,"tokens":["3f09c1d2a4b5e6f7"]}
//! {"count":3}
//! ```
//!
//! `len` is the byte length of the data, so a short or padded file is caught. Tokens are hex
//! strings, since JSON readers often hold numbers as doubles. The engine's notes on the record
//! ([`Record::meta`]), when there are any, are a `"meta"` string in the header, and its expiry
//! ([`Record::expires_at`]), when it has one, an `"expires_at"` number (milliseconds since 1970).
//! Both are left out when empty, so a file written before expiry existed reads as a record that
//! never expires.

use std::borrow::Cow;
use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::driver::{parse_token_digits, token_digits, Record};

/// The format this code writes and reads.
const FORMAT: u32 = 1;

/// The most bytes a header line may take: a key of a few KiB escaped, plus the tokens.
pub(crate) const MAX_HEADER: usize = 64 << 10;

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    format: u32,
    #[serde(borrow)]
    key: Cow<'a, str>,
    version: u64,
    schema: u32,
    len: usize,
    tokens: Tokens,
    #[serde(default, skip_serializing_if = "str::is_empty", borrow)]
    meta: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

/// The commit tokens of a header as read: each one's value, or the text that is not 16 hex
/// digits (reported by [`decode`]; [`key_of_header`] does not need them). Parsed as they are
/// read, so that a header's 16 tokens cost no allocation of their own.
struct Tokens(Vec<Token>);

impl Serialize for Tokens {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(v) => {
                // 16 lowercase hex digits, without a string of their own.
                let digits = token_digits(*v);
                s.serialize_str(std::str::from_utf8(&digits).map_err(serde::ser::Error::custom)?)
            }
            Err(text) => s.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tokens, D::Error> {
        struct Seq;
        impl<'de> Visitor<'de> for Seq {
            type Value = Tokens;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of commit tokens")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tokens, A::Error> {
                let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(t) = seq.next_element()? {
                    tokens.push(t);
                }
                Ok(Tokens(tokens))
            }
        }
        d.deserialize_seq(Seq)
    }
}

/// One commit token as read (see [`Tokens`]).
struct Token(Result<u64, String>);

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = Token;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a commit token")
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Token, E> {
                Ok(Token(
                    parse_token_digits(t.as_bytes(), true).ok_or_else(|| t.to_owned()),
                ))
            }
        }
        d.deserialize_str(Text)
    }
}

/// The bytes of a record file for `key`.
pub(crate) fn encode(
    key: &str,
    version: u64,
    schema: u32,
    data: &[u8],
    tokens: &[u64],
    meta: &[u8],
    expires_at: Option<u64>,
) -> Result<Vec<u8>, serde_json::Error> {
    let meta = std::str::from_utf8(meta).map_err(serde::ser::Error::custom)?;
    let header = Header {
        format: FORMAT,
        key: key.into(),
        version,
        schema,
        len: data.len(),
        tokens: Tokens(tokens.iter().map(|&t| Token(Ok(t))).collect()),
        meta: meta.into(),
        expires_at,
    };
    let mut out = Vec::with_capacity(data.len() + key.len() + 64 + 20 * tokens.len());
    serde_json::to_writer(&mut out, &header)?;
    out.push(b'\n');
    out.extend_from_slice(data);
    out.push(b'\n');
    Ok(out)
}

/// Reads the key and the expiry from the first line of a record file (for `list` and the
/// sweep).
pub(crate) fn key_of_header(first_line: &[u8]) -> Result<(String, Option<u64>), String> {
    let line = first_line.strip_suffix(b"\n").unwrap_or(first_line);
    let header: Header<'_> =
        serde_json::from_slice(line).map_err(|e| format!("unreadable header: {e}"))?;
    check_format(&header)?;
    Ok((header.key.into_owned(), header.expires_at))
}

fn check_format(header: &Header<'_>) -> Result<(), String> {
    if header.format != FORMAT {
        return Err(format!(
            "record format {} is unknown to this version of mp-storage (it knows {FORMAT})",
            header.format
        ));
    }
    Ok(())
}

/// Parses a whole record file: the key it names and its record.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Cow<'_, str>, Record), String> {
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        if bytes.is_empty() {
            return Err("the file is empty".to_owned());
        }
        return Err("no header line".to_owned());
    };
    let header: Header<'_> =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("unreadable header: {e}"))?;
    check_format(&header)?;
    let rest = &bytes[nl + 1..];
    let data = rest.get(..header.len).ok_or_else(|| {
        format!(
            "the data is cut short: {} of {} bytes",
            rest.len(),
            header.len
        )
    })?;
    if &rest[header.len..] != b"\n" {
        return Err(format!(
            "{} unexpected bytes after the data",
            rest.len() - header.len
        ));
    }
    let tokens = header
        .tokens
        .0
        .into_iter()
        .map(|Token(t)| t.map_err(|t| format!("bad commit token {t:?}")))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok((
        header.key,
        Record::new(header.version, header.schema, data.to_vec(), tokens)
            .with_meta(header.meta.as_bytes().to_vec())
            .with_expiry(header.expires_at),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_readable() {
        let bytes = encode(
            "user:\"é\"\n",
            7,
            2,
            br#"{"count":3}"#,
            &[1, u64::MAX],
            b"",
            None,
        )
        .unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.starts_with(r#"{"format":1,"key":"user:\"é\"\n","version":7"#),
            "{text}"
        );
        assert!(text.ends_with("{\"count\":3}\n"));
        let (key, r) = decode(&bytes).unwrap();
        assert_eq!(key, "user:\"é\"\n");
        assert_eq!(r.version, 7);
        assert_eq!(r.schema, 2);
        assert_eq!(r.data, br#"{"count":3}"#);
        assert_eq!(r.tokens, vec![1, u64::MAX]);
        let first = &bytes[..=bytes.iter().position(|&b| b == b'\n').unwrap()];
        assert_eq!(
            key_of_header(first).unwrap(),
            ("user:\"é\"\n".to_owned(), None)
        );
        assert_eq!(r.expires_at, None);
        assert!(!text.contains("expires_at"), "{text}");
    }

    #[test]
    fn expiry_is_kept_and_old_files_read() {
        let bytes = encode("k", 3, 0, b"1", &[], b"", Some(1_700_000_000_123)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""expires_at":1700000000123"#), "{text}");
        let (_, r) = decode(&bytes).unwrap();
        assert_eq!(r.expires_at, Some(1_700_000_000_123));
        let first = &bytes[..=bytes.iter().position(|&b| b == b'\n').unwrap()];
        assert_eq!(
            key_of_header(first).unwrap(),
            ("k".to_owned(), Some(1_700_000_000_123))
        );
        // A file of 0.1, before expiry: never expires.
        let old = br#"{"format":1,"key":"k","version":1,"schema":0,"len":2,"tokens":[]}
[]
"#;
        assert_eq!(decode(old).unwrap().1.expires_at, None);
    }

    #[test]
    fn data_with_newlines() {
        let data = b"{\n  \"a\": 1\n}";
        let (_, r) = decode(&encode("k", 1, 0, data, &[], b"", None).unwrap()).unwrap();
        assert_eq!(r.data, data);
    }

    #[test]
    fn damage_is_caught() {
        let good = encode("k", 1, 0, b"[1,2,3]", &[5], b"{\"r\":1}", Some(9)).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut long = good.clone();
        long.extend_from_slice(b"xx");
        assert!(decode(&long).is_err());
        assert!(decode(b"not json\n[]\n").is_err());
        let newer = br#"{"format":2,"key":"k","version":1,"schema":0,"len":2,"tokens":[]}
[]
"#;
        assert!(decode(newer).unwrap_err().contains("format 2"));
        let bad_token = br#"{"format":1,"key":"k","version":1,"schema":0,"len":2,"tokens":["+1"]}
[]
"#;
        assert!(decode(bad_token).is_err());
    }

    #[test]
    fn tokens_read_in_either_case_and_escaped() {
        let file = |tokens: &str| {
            format!(
                "{{\"format\":1,\"key\":\"k\",\"version\":1,\"schema\":0,\"len\":2,\"tokens\":[{tokens}]}}\n[]\n"
            )
        };
        let (_, r) =
            decode(file(r#""00000000000000fF","\u0030000000000000001""#).as_bytes()).unwrap();
        assert_eq!(r.tokens, vec![255, 1]);
        for bad in [
            r#""fff""#,
            r#""00000000000000fff""#,
            r#""000000000000000g""#,
            r#""+000000000000001""#,
            "1",
        ] {
            let err = decode(file(bad).as_bytes()).unwrap_err();
            assert!(err.contains("token"), "{bad}: {err}");
        }
        // The key and expiry of a header read for a listing do not depend on its tokens.
        let line = file(r#""fff""#);
        let first = &line.as_bytes()[..=line.find('\n').unwrap()];
        assert_eq!(key_of_header(first).unwrap(), ("k".to_owned(), None));
    }
}
