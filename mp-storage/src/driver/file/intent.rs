//! The intent record of a several-scope commit: one JSON line in `%commit.<id>.intent`.
//!
//! ```text
//! {"format":1,"commit":"3f09c1d2a4b5e6f7","writes":[{"key":"acct:alice","temp":"acct%3aalice.3f09c1d2a4b5e6f7.tmp","replaces":{"version":8,"token":"00000000000000a1"}},{"key":"acct:bob","temp":"acct%3abob.3f09c1d2a4b5e6f7.tmp","replaces":null}]}
//! ```
//!
//! `commit` is the commit's random id (also in the file name, the temp file names and the
//! markers in the lock files); `writes` names each written key, its temp file and the revision
//! its record is at before the commit (`null`: absent). The line ends with a newline: a file
//! without it, or that does not parse, is *torn* (its writer died while writing it).

use serde::{Deserialize, Serialize};

use super::name;
use crate::driver::Revision;

/// The format this code writes and reads.
const FORMAT: u32 = 1;

/// The most bytes an intent record takes: 64 keys of a few KiB each, escaped.
pub(crate) const MAX_INTENT: u64 = 4 << 20;

/// A parsed intent record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Intent {
    /// The commit id.
    pub id: u64,
    /// Each written key and the revision it replaces (`None`: absent), in the commit's order.
    pub writes: Vec<(String, Option<Revision>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    commit: String,
    writes: Vec<WriteEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteEntry {
    key: String,
    temp: String,
    replaces: Option<Rev>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rev {
    version: u64,
    token: String,
}

/// The bytes of the intent record of `intent`.
pub(crate) fn encode(intent: &Intent) -> Result<Vec<u8>, serde_json::Error> {
    let file = File {
        format: FORMAT,
        commit: format!("{:016x}", intent.id),
        writes: intent
            .writes
            .iter()
            .map(|(key, replaces)| WriteEntry {
                key: key.clone(),
                temp: name::temp_file_name(&name::stem(key), intent.id),
                replaces: replaces.map(|r| Rev {
                    version: r.version,
                    token: format!("{:016x}", r.token),
                }),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec(&file)?;
    out.push(b'\n');
    Ok(out)
}

/// Parses the intent record of commit `id`; `Err` says why it is torn or not one of ours.
pub(crate) fn decode(bytes: &[u8], id: u64) -> Result<Intent, String> {
    let line = bytes
        .strip_suffix(b"\n")
        .ok_or_else(|| "no final newline: written only in part".to_owned())?;
    let file: File =
        serde_json::from_slice(line).map_err(|e| format!("unreadable intent record: {e}"))?;
    if file.format != FORMAT {
        return Err(format!(
            "intent format {} is unknown to this version of mp-storage (it knows {FORMAT})",
            file.format
        ));
    }
    if name::parse_id(&file.commit) != Some(id) {
        return Err(format!(
            "the record names commit {:?}, its file {id:016x}",
            crate::error::shorten(&file.commit)
        ));
    }
    if file.writes.is_empty() || file.writes.len() > crate::driver::MAX_COMMIT_KEYS {
        return Err(format!("{} writes", file.writes.len()));
    }
    let mut writes = Vec::with_capacity(file.writes.len());
    let mut stems = std::collections::HashSet::new();
    for w in file.writes {
        if w.key.is_empty() {
            return Err("an empty key".to_owned());
        }
        let stem = name::stem(&w.key);
        if w.temp != name::temp_file_name(&stem, id) {
            return Err(format!(
                "the temp file {:?} is not the one of key {:?}",
                crate::error::shorten(&w.temp),
                crate::error::shorten(&w.key)
            ));
        }
        if !stems.insert(stem) {
            return Err(format!(
                "key {:?} is written twice",
                crate::error::shorten(&w.key)
            ));
        }
        let replaces = match w.replaces {
            None => None,
            Some(r) => Some(Revision {
                version: r.version,
                token: name::parse_id(&r.token)
                    .ok_or_else(|| format!("bad token {:?}", crate::error::shorten(&r.token)))?,
            }),
        };
        writes.push((w.key, replaces));
    }
    Ok(Intent { id, writes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Intent {
        Intent {
            id: 0x3f09_c1d2_a4b5_e6f7,
            writes: vec![
                (
                    "acct:alice".to_owned(),
                    Some(Revision {
                        version: 8,
                        token: 0xa1,
                    }),
                ),
                ("acct:bob\n\"é\"".to_owned(), None),
            ],
        }
    }

    #[test]
    fn round_trip_and_readable() {
        let bytes = encode(&sample()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"format":1,"commit":"3f09c1d2a4b5e6f7","writes":[{"key":"acct:alice","temp":"acct%3aalice.3f09c1d2a4b5e6f7.tmp","replaces":{"version":8,"token":"00000000000000a1"}}"#
        ), "{text}");
        assert_eq!(text.lines().count(), 1);
        assert_eq!(decode(&bytes, sample().id).unwrap(), sample());
    }

    #[test]
    fn torn_or_foreign_records_are_refused() {
        let good = encode(&sample()).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], sample().id).is_err(), "cut at {cut}");
        }
        assert!(decode(&good, 5).unwrap_err().contains("names commit"));
        let text = String::from_utf8(good).unwrap();
        for (from, to) in [
            (r#""format":1"#, r#""format":2"#),
            (".3f09c1d2a4b5e6f7.tmp", ".0000000000000000.tmp"),
            ("acct%3aalice.", "../etc/passwd."),
            (r#""token":"00000000000000a1""#, r#""token":"a1""#),
            (r#""replaces":null"#, r#""replaces":null,"more":1"#),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text);
            assert!(decode(bad.as_bytes(), sample().id).is_err(), "{bad}");
        }
        let twice = Intent {
            writes: vec![("k".to_owned(), None), ("k".to_owned(), None)],
            ..sample()
        };
        assert!(decode(&encode(&twice).unwrap(), twice.id).is_err());
        let none = Intent {
            writes: vec![],
            ..sample()
        };
        assert!(decode(&encode(&none).unwrap(), none.id).is_err());
    }
}
