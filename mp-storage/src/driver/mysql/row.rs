//! Rows of the table as records (see the [table](super#table)).

use mysql_async::prelude::FromValue;
use mysql_async::Row;

use super::TOKEN_LEN;
use crate::driver::{Record, RECENT_TOKENS};
use crate::error::shorten;
use crate::Error;

/// An [`Error::Corrupt`] for scope `key` in `table`.
pub(super) fn corrupt(table: &str, key: &str, detail: String) -> Error {
    Error::Corrupt {
        scope: shorten(key),
        location: format!("mysql table `{table}`"),
        detail,
    }
}

/// The record of a row of `name, version, schema_v, data, tokens, meta`, its name read already.
pub(super) fn record_after_name(table: &str, key: &str, mut row: Row) -> Result<Record, Error> {
    let version: u64 = column(table, key, &mut row, 1, "version")?;
    let schema: u32 = column(table, key, &mut row, 2, "schema_v")?;
    let data: Vec<u8> = column(table, key, &mut row, 3, "data")?;
    let raw: Vec<u8> = column(table, key, &mut row, 4, "tokens")?;
    let meta: Option<Vec<u8>> = column(table, key, &mut row, 5, "meta")?;
    let expires_at: Option<u64> = column(table, key, &mut row, 6, "expires_at")?;
    let tokens = tokens(&raw).ok_or_else(|| {
        corrupt(
            table,
            key,
            format!(
                "tokens is {} bytes, not a multiple of {TOKEN_LEN}",
                raw.len()
            ),
        )
    })?;
    Ok(Record::new(version, schema, data, tokens)
        .with_meta(meta.unwrap_or_default())
        .with_expiry(expires_at))
}

/// The record of a row of `version, schema_v, data, tokens, meta, expires_at`.
pub(super) fn record(table: &str, key: &str, mut row: Row) -> Result<Record, Error> {
    let version: u64 = column(table, key, &mut row, 0, "version")?;
    let schema: u32 = column(table, key, &mut row, 1, "schema_v")?;
    let data: Vec<u8> = column(table, key, &mut row, 2, "data")?;
    let raw: Vec<u8> = column(table, key, &mut row, 3, "tokens")?;
    let tokens = tokens(&raw).ok_or_else(|| {
        corrupt(
            table,
            key,
            format!(
                "tokens is {} bytes, not a multiple of {TOKEN_LEN} up to {}",
                raw.len(),
                RECENT_TOKENS * TOKEN_LEN
            ),
        )
    })?;
    let meta: Option<Vec<u8>> = column(table, key, &mut row, 4, "meta")?;
    let expires_at: Option<u64> = column(table, key, &mut row, 5, "expires_at")?;
    Ok(Record::new(version, schema, data, tokens)
        .with_meta(meta.unwrap_or_default())
        .with_expiry(expires_at))
}

/// Column `index` (named `name` in errors) of `row`.
pub(super) fn column<T: FromValue>(
    table: &str,
    key: &str,
    row: &mut Row,
    index: usize,
    name: &str,
) -> Result<T, Error> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(corrupt(table, key, format!("column {name}: {e}"))),
        None => Err(corrupt(table, key, format!("column {name} is missing"))),
    }
}

/// The tokens of the `tokens` column: 8 bytes each, big-endian, at most [`RECENT_TOKENS`].
fn tokens(raw: &[u8]) -> Option<Vec<u64>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_big_endian_and_bounded() {
        let raw: Vec<u8> = [1u64, u64::MAX]
            .iter()
            .flat_map(|t| t.to_be_bytes())
            .collect();
        assert_eq!(tokens(&raw), Some(vec![1, u64::MAX]));
        assert_eq!(tokens(&[]), Some(vec![]));
        assert_eq!(tokens(&[0; 7]), None);
        assert_eq!(tokens(&[0; 8 * 16]).map(|t| t.len()), Some(16));
        assert_eq!(tokens(&[0; 8 * 17]), None);
    }
}
