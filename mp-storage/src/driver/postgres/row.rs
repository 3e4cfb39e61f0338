//! Rows of the table as records (see the [table](super#table)).

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::driver::sql_rows::{tokens, TOKEN_LEN};
use crate::driver::{Record, RECENT_TOKENS};
use crate::error::shorten;
use crate::Error;

/// An [`Error::Corrupt`] for scope `key` in `table`.
pub(super) fn corrupt(table: &str, key: &str, detail: String) -> Error {
    Error::Corrupt {
        scope: shorten(key),
        location: format!("postgres table {table}"),
        detail,
    }
}

/// Column `index` (named `name` in errors) of `row`.
pub(super) fn column<'a, T: FromSql<'a>>(
    table: &str,
    key: &str,
    row: &'a Row,
    index: usize,
    name: &str,
) -> Result<T, Error> {
    row.try_get(index)
        .map_err(|e| corrupt(table, key, format!("column {name}: {e}")))
}

/// The record of the columns `version, schema_v, data, tokens, meta, expires_at` of `row`,
/// from column `at` on.
pub(super) fn record(table: &str, key: &str, row: &Row, at: usize) -> Result<Record, Error> {
    let version: i64 = column(table, key, row, at, "version")?;
    let schema: i64 = column(table, key, row, at + 1, "schema_v")?;
    let data: Vec<u8> = column(table, key, row, at + 2, "data")?;
    let raw: &[u8] = column(table, key, row, at + 3, "tokens")?;
    let meta: Option<Vec<u8>> = column(table, key, row, at + 4, "meta")?;
    let expires_at: Option<i64> = column(table, key, row, at + 5, "expires_at")?;
    let version = u64::try_from(version)
        .map_err(|_| corrupt(table, key, format!("version {version} is negative")))?;
    let schema = u32::try_from(schema)
        .map_err(|_| corrupt(table, key, format!("schema_v {schema} is out of range")))?;
    let expires_at = expires_at
        .map(|at| {
            u64::try_from(at)
                .map_err(|_| corrupt(table, key, format!("expires_at {at} is negative")))
        })
        .transpose()?;
    let tokens = tokens(raw).ok_or_else(|| {
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
    Ok(Record::new(version, schema, data, tokens)
        .with_meta(meta.unwrap_or_default())
        .with_expiry(expires_at))
}
