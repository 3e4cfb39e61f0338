//! The table's statements and its rows as records (see the [table](super#table)).

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::error::sql_error;
use crate::driver::sql_rows::{tokens, TOKEN_LEN};
use crate::driver::{Record, RECENT_TOKENS};
use crate::error::shorten;
use crate::Error;

/// The columns a record is read from, in the order [`stored`] takes them.
const COLUMNS: &str = "version, schema_v, data, tokens, meta, expires_at, res_by, res_until";

/// The statements of one table. The table name, checked as an identifier, is the only thing
/// formatted into them; every value is a bound parameter.
pub(super) struct Sql {
    /// Creates the table if absent.
    pub create: String,
    /// Creates the one-row table of the last sweep if absent.
    pub create_sweep: String,
    /// Selects nothing from every column: fails on a table of another shape.
    pub probe: String,
    /// The row of one name (live or not).
    pub select: String,
    /// Overwrites an existing row, at the version it was read at.
    pub update: String,
    /// Writes a row whether or not one exists (a create over an expired row, a put).
    pub upsert: String,
    /// Deletes a row, returning its expiry.
    pub delete: String,
    /// Deletes a row.
    pub remove: String,
    /// Sets a row's expiry.
    pub expire: String,
    /// Sets a row's reservation.
    pub reserve: String,
    /// The live names from a start, in name order.
    pub list_from: String,
    /// The live names in a range, in name order.
    pub list_range: String,
    /// Marks the sweep as done now when the last one is older than the interval.
    pub sweep_due: String,
    /// Deletes up to `?` rows expired by `?`.
    pub sweep: String,
    table: String,
}

impl Sql {
    pub(super) fn new(table: &str) -> Sql {
        let t = format!("\"{table}\"");
        let live = "(expires_at IS NULL OR expires_at > ?1)";
        Sql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 name BLOB NOT NULL PRIMARY KEY, \
                 version INTEGER NOT NULL, \
                 schema_v INTEGER NOT NULL, \
                 data BLOB NOT NULL, \
                 tokens BLOB NOT NULL, \
                 meta BLOB, \
                 res_by INTEGER, \
                 res_until INTEGER, \
                 expires_at INTEGER\
                 ) WITHOUT ROWID"
            ),
            create_sweep: format!(
                "CREATE TABLE IF NOT EXISTS \"{table}_sweep\" (\
                 id INTEGER PRIMARY KEY CHECK (id = 1), swept_at INTEGER NOT NULL)"
            ),
            probe: format!("SELECT name, {COLUMNS} FROM {t} LIMIT 0"),
            select: format!("SELECT {COLUMNS} FROM {t} WHERE name = ?1"),
            update: format!(
                "UPDATE {t} SET version = ?2, schema_v = ?3, data = ?4, tokens = ?5, meta = ?6, \
                 expires_at = ?7, res_by = ?8, res_until = ?9 WHERE name = ?1 AND version = ?10"
            ),
            upsert: format!(
                "INSERT INTO {t} (name, version, schema_v, data, tokens, meta, expires_at, \
                 res_by, res_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
                 schema_v = excluded.schema_v, data = excluded.data, tokens = excluded.tokens, \
                 meta = excluded.meta, expires_at = excluded.expires_at, \
                 res_by = excluded.res_by, res_until = excluded.res_until"
            ),
            delete: format!("DELETE FROM {t} WHERE name = ?1 RETURNING expires_at"),
            remove: format!("DELETE FROM {t} WHERE name = ?1"),
            expire: format!("UPDATE {t} SET expires_at = ?2 WHERE name = ?1"),
            reserve: format!("UPDATE {t} SET res_by = ?2, res_until = ?3 WHERE name = ?1"),
            list_from: format!("SELECT name FROM {t} WHERE name >= ?2 AND {live} ORDER BY name"),
            list_range: format!(
                "SELECT name FROM {t} WHERE name >= ?2 AND name < ?3 AND {live} ORDER BY name"
            ),
            sweep_due: format!(
                "INSERT INTO \"{table}_sweep\" (id, swept_at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET swept_at = excluded.swept_at \
                 WHERE swept_at <= ?1 - ?2"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE name IN (SELECT name FROM {t} \
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)"
            ),
            table: t,
        }
    }

    /// `SELECT name, … WHERE name IN (?, …)` for `n` names (parameters 1 to `n`).
    pub(super) fn select_many(&self, n: usize) -> String {
        let marks = vec!["?"; n].join(", ");
        format!(
            "SELECT name, {COLUMNS} FROM {} WHERE name IN ({marks})",
            self.table
        )
    }
}

/// A row as read: its record, and its reservation.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub record: Record,
    /// The claimant holding a reservation, if any (live or run out).
    pub res_by: Option<u64>,
    /// When the reservation runs out, ms since 1970.
    pub res_until: Option<i64>,
}

impl Stored {
    /// Whether the record has not expired at `now` (ms since 1970).
    pub fn is_live(&self, now: u64) -> bool {
        !self.record.expired_at(now)
    }

    /// Whether someone other than `claimant` holds a live reservation at `now`.
    pub fn reserved_for_other(&self, claimant: u64, now: u64) -> bool {
        self.held_for_other(claimant, now).is_some()
    }

    /// How long a live reservation of someone other than `claimant` still holds at `now`, if
    /// one does.
    pub fn held_for_other(&self, claimant: u64, now: u64) -> Option<std::time::Duration> {
        match (self.res_by, self.res_until) {
            (Some(holder), Some(until)) if holder != claimant && until > ms_i64(now) => {
                let left = until.saturating_sub(ms_i64(now));
                Some(std::time::Duration::from_millis(
                    u64::try_from(left).unwrap_or(0),
                ))
            }
            _ => None,
        }
    }
}

/// An [`Error::Corrupt`] for scope `key` in `table`.
pub(super) fn corrupt(table: &str, key: &str, detail: String) -> Error {
    Error::Corrupt {
        scope: shorten(key),
        location: format!("sqlite table `{table}`"),
        detail,
    }
}

/// A u64 as SQLite's signed integer, bit for bit (claimants, which are only compared).
pub(super) fn bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A time in ms since 1970 as SQLite's integer (saturating: far futures stay far).
pub(super) fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The stored row of `key`, live or not, decoded.
pub(super) fn load_stored(
    conn: &Connection,
    sql: &Sql,
    table: &str,
    key: &str,
) -> Result<Option<Stored>, Error> {
    let mut stmt = conn.prepare_cached(&sql.select).map_err(sql_error)?;
    let row = stmt
        .query_row([key.as_bytes()], |row| Ok(stored(table, key, row, 0)))
        .optional()
        .map_err(sql_error)?;
    row.transpose()
}

/// The row `row` from column `at` on (the [`COLUMNS`]), as a [`Stored`].
pub(super) fn stored(
    table: &str,
    key: &str,
    row: &rusqlite::Row<'_>,
    at: usize,
) -> Result<Stored, Error> {
    let bad =
        |column: &str, detail: String| corrupt(table, key, format!("column {column}: {detail}"));
    let get = |i: usize, column: &str| row.get_ref(at + i).map_err(|e| bad(column, e.to_string()));
    let integer = |i: usize, column: &str| -> Result<Option<i64>, Error> {
        match get(i, column)? {
            ValueRef::Integer(v) => Ok(Some(v)),
            ValueRef::Null => Ok(None),
            other => Err(bad(
                column,
                format!("not an integer ({:?})", other.data_type()),
            )),
        }
    };
    let bytes = |i: usize, column: &str| -> Result<Option<Vec<u8>>, Error> {
        match get(i, column)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
            ValueRef::Null => Ok(None),
            other => Err(bad(column, format!("not bytes ({:?})", other.data_type()))),
        }
    };
    let version = integer(0, "version")?
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| bad("version", "missing or negative".to_owned()))?;
    let schema = integer(1, "schema_v")?
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("schema_v", "missing or out of range".to_owned()))?;
    let data = bytes(2, "data")?.ok_or_else(|| bad("data", "missing".to_owned()))?;
    let raw = bytes(3, "tokens")?.ok_or_else(|| bad("tokens", "missing".to_owned()))?;
    let tokens = tokens(&raw).ok_or_else(|| {
        bad(
            "tokens",
            format!(
                "{} bytes, not a multiple of {TOKEN_LEN} up to {}",
                raw.len(),
                RECENT_TOKENS * TOKEN_LEN
            ),
        )
    })?;
    let meta = bytes(4, "meta")?.unwrap_or_default();
    let expires_at = integer(5, "expires_at")?.map(|t| u64::try_from(t).unwrap_or(0));
    let res_by = integer(6, "res_by")?.map(|c| u64::from_ne_bytes(c.to_ne_bytes()));
    let res_until = integer(7, "res_until")?;
    Ok(Stored {
        record: Record::new(version, schema, data, tokens)
            .with_meta(meta)
            .with_expiry(expires_at),
        res_by,
        res_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_saturate() {
        assert_eq!(bits(u64::MAX), -1);
        assert_eq!(ms_i64(u64::MAX), i64::MAX);
    }

    #[test]
    fn statements_bind_every_value() {
        let sql = Sql::new("t_1");
        for stmt in [
            &sql.create,
            &sql.select,
            &sql.update,
            &sql.upsert,
            &sql.delete,
        ] {
            assert!(stmt.contains("\"t_1\""), "{stmt}");
            assert!(!stmt.contains('\''), "{stmt}");
        }
        assert!(sql.update.contains("WHERE name = ?1 AND version = ?10"));
    }
}
