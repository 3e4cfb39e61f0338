//! Rows of the table as records (see the [table](super#table)).

use mysql_async::prelude::FromValue;
use mysql_async::Row;

use crate::driver::sql_rows::{tokens, TOKEN_LEN};
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

/// The record of a row of [`Sql::select_clocked`](super::sql::Sql::select_clocked), `None`
/// when it has expired by the server's clock (the row's last column): what `WHERE … AND` the
/// live-row condition would have found.
pub(super) fn live_record(table: &str, key: &str, mut row: Row) -> Result<Option<Record>, Error> {
    let now: Option<u64> = column(table, key, &mut row, 6, "the server's clock")?;
    let record = record(table, key, row)?;
    match now {
        Some(now) if record.expired_at(now) => Ok(None),
        _ => Ok(Some(record)),
    }
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
