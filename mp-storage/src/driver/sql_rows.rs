//! What the SQL drivers (mysql, postgres, sqlite) do the same way: table names that are plain
//! identifiers, the `tokens` column (the last commit tokens, 8 bytes each, big-endian) and
//! listing by prefix as a byte range of the key column (never `LIKE` with user bytes).

use super::RECENT_TOKENS;
#[cfg(any(feature = "mysql", feature = "postgres"))]
use crate::{error::shorten, Error, MAX_KEY_LEN};

/// Refuses keys longer than the key column holds (`MAX_KEY_LEN` bytes), so that a server
/// that is not strict never truncates one key into another.
#[cfg(any(feature = "mysql", feature = "postgres"))]
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidName {
            name: shorten(key),
            reason: "the key is longer than 2048 bytes",
        });
    }
    Ok(())
}

/// Whether `name` can be a table name as is, never quoted into trouble: 1 to `max_len` ASCII
/// letters, digits or `_`.
pub(crate) fn is_identifier(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Bytes of one commit token in the `tokens` column.
pub(crate) const TOKEN_LEN: usize = 8;

/// The tokens of a `tokens` column value; `None` when it is not a whole number of tokens or
/// holds more than [`RECENT_TOKENS`].
pub(crate) fn tokens(raw: &[u8]) -> Option<Vec<u64>> {
    if !raw.len().is_multiple_of(TOKEN_LEN) || raw.len() > RECENT_TOKENS * TOKEN_LEN {
        return None;
    }
    let tokens = raw
        .chunks_exact(TOKEN_LEN)
        .map(|c| {
            let mut b = [0u8; TOKEN_LEN];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect();
    Some(tokens)
}

/// The `tokens` column value of `tokens`.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn token_bytes(tokens: &[u64]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_be_bytes()).collect()
}

/// The smallest byte string above every string that starts with `prefix`; `None` when there
/// is none (an empty prefix, or one of `0xFF` bytes only).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("mp_scopes", 64));
        assert!(is_identifier(&"a".repeat(64), 64));
        assert!(!is_identifier(&"a".repeat(65), 64));
        for bad in ["", "a`b", "a\"b", "a b", "a-b", "tbl;DROP", "é"] {
            assert!(!is_identifier(bad, 64), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_big_endian_and_bounded() {
        let raw = token_bytes(&[1, u64::MAX]);
        assert_eq!(raw.len(), 2 * TOKEN_LEN);
        assert_eq!(tokens(&raw), Some(vec![1, u64::MAX]));
        assert_eq!(tokens(&[]), Some(vec![]));
        assert_eq!(tokens(&[0; 7]), None);
        assert_eq!(tokens(&[0; 8 * 16]).map(|t| t.len()), Some(16));
        assert_eq!(tokens(&[0; 8 * 17]), None);
    }

    #[test]
    fn prefix_successor() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a%"), Some(b"a&".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b"a\x7f"), Some(b"a\x80".to_vec()));
    }
}
