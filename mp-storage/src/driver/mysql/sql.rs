//! The statements of the driver, formatted once with the checked table name (see the
//! [statement list](super#statements)).

use crate::driver::sql_rows::TOKEN_LEN;
use crate::driver::RECENT_TOKENS;
use crate::MAX_KEY_LEN;

/// The longest `tokens` column value: the last [`RECENT_TOKENS`] tokens of [`TOKEN_LEN`] bytes.
const TOKENS_LEN: usize = RECENT_TOKENS * TOKEN_LEN;

/// The statements of one table. The table name, checked as an identifier, is the only thing
/// formatted into them; every value is a bound parameter.
pub(super) struct Sql {
    /// The quoted table name.
    table: String,
    /// Creates the table if absent.
    pub create: String,
    /// Selects nothing from every column: fails on a table of another shape.
    pub probe: String,
    /// Lists the columns added since 0.1 that a table has (parameter: the table name).
    pub added_columns: String,
    /// The columns added since 0.1: each name and the statement that adds it to a table made
    /// before it.
    pub add_columns: Vec<(&'static str, String)>,
    /// Reserves a row for a claimant (contract rule 13).
    pub reserve: String,
    /// The row of a name, expired or not, without the server's clock: read with
    /// [`row::record`](super::row::record); a row with an expiry is read again with
    /// `select_clocked` to learn whether it is live.
    pub select: String,
    /// The row of a name, expired or not, and the server's clock in ms when it has an expiry:
    /// read with [`row::live_record`](super::row::live_record).
    pub select_clocked: String,
    /// The row as `select` reads it, then how long a live reservation of another claimant than
    /// the first parameter still holds it, in µs (NULL: none); the second is the name.
    pub select_held: String,
    pub update: String,
    pub insert: String,
    pub upsert: String,
    pub delete: String,
    pub list_from: String,
    pub list_range: String,
    /// Sets the expiry of a live row.
    pub expire: String,
    /// Deletes a row that expired (so that a create can take its name).
    pub purge_one: String,
    /// Marks the sweep row as swept now when its last sweep is older than the interval.
    pub sweep_due: String,
    /// Makes the sweep row when it is missing.
    pub sweep_mark: String,
    /// Deletes expired rows, at most `?`.
    pub sweep: String,
}

/// Milliseconds since 1970 by the server's clock.
const NOW_MS: &str = "FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000)";

/// A row that has not expired (contract rule 15).
const LIVE: &str = "(expires_at IS NULL OR expires_at > FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000))";

/// The expiry of a new row; parameters: kind (0 keep, 1 never, 2 after, 3 at), ms after, ms at.
fn exp_new() -> String {
    format!("CASE ? WHEN 2 THEN {NOW_MS} + ? WHEN 3 THEN ? ELSE NULL END")
}

/// The expiry of a written live row; the same parameters.
fn exp_set() -> String {
    format!("CASE ? WHEN 0 THEN expires_at WHEN 1 THEN NULL WHEN 2 THEN {NOW_MS} + ? ELSE ? END")
}

impl Sql {
    pub(super) fn new(table: &str) -> Sql {
        let t = format!("`{table}`");
        Sql {
            table: t.clone(),
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 name VARBINARY({MAX_KEY_LEN}) NOT NULL, \
                 version BIGINT UNSIGNED NOT NULL, \
                 schema_v INT UNSIGNED NOT NULL, \
                 data LONGBLOB NOT NULL, \
                 tokens VARBINARY({TOKENS_LEN}) NOT NULL, \
                 updated_at DATETIME(6) NOT NULL, \
                 meta LONGBLOB NULL, \
                 res_by BIGINT UNSIGNED NULL, \
                 res_until DATETIME(6) NULL, \
                 expires_at BIGINT UNSIGNED NULL, \
                 PRIMARY KEY (name)\
                 ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC"
            ),
            probe: format!(
                "SELECT name, version, schema_v, data, tokens, updated_at, meta FROM {t} LIMIT 0"
            ),
            added_columns: "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
                            AND COLUMN_NAME IN ('meta', 'res_by', 'res_until', 'expires_at')"
                .to_owned(),
            add_columns: [
                ("meta", "LONGBLOB NULL"),
                ("res_by", "BIGINT UNSIGNED NULL"),
                ("res_until", "DATETIME(6) NULL"),
                ("expires_at", "BIGINT UNSIGNED NULL"),
            ]
            .into_iter()
            .map(|(c, def)| (c, format!("ALTER TABLE {t} ADD COLUMN {c} {def}")))
            .collect(),
            reserve: format!(
                "UPDATE {t} SET res_by = ?, \
                 res_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE name = ? AND (res_by IS NULL OR res_by = ? OR res_until < UTC_TIMESTAMP(6)) \
                 AND {LIVE}"
            ),
            expire: format!(
                "UPDATE {t} SET expires_at = {} WHERE name = ? AND {LIVE}",
                exp_set()
            ),
            purge_one: format!("DELETE FROM {t} WHERE name = ? AND NOT {LIVE}"),
            // Whether the row has expired is decided from the server's clock, read only for a
            // row that has an expiry: a filter on it in `WHERE` cost a point read 10-16% of its
            // rate, and reading the clock at all, even in a column left NULL, about 10% (most
            // rows have no expiry).
            select: format!(
                "SELECT version, schema_v, data, tokens, meta, expires_at FROM {t} WHERE name = ?"
            ),
            select_clocked: format!(
                "SELECT version, schema_v, data, tokens, meta, expires_at, \
                 IF(expires_at IS NULL, NULL, CAST({NOW_MS} AS UNSIGNED)) FROM {t} WHERE name = ?"
            ),
            select_held: format!(
                "SELECT version, schema_v, data, tokens, meta, expires_at, \
                 IF(res_by IS NOT NULL AND res_by <> ? AND res_until >= UTC_TIMESTAMP(6), \
                 GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), res_until), 0), NULL) \
                 FROM {t} WHERE name = ? AND {LIVE}"
            ),
            // The revision: the version and the last token (the tail of `tokens`).
            // A live reservation of another claimant refuses it (contract rule 13).
            update: format!(
                "UPDATE {t} SET data = ?, schema_v = ?, meta = ?, expires_at = {exp}, \
                 version = version + 1, tokens = RIGHT(CONCAT(tokens, ?), {TOKENS_LEN}), \
                 updated_at = UTC_TIMESTAMP(6) \
                 WHERE name = ? AND version = ? AND RIGHT(tokens, {TOKEN_LEN}) = ? \
                 AND (res_by IS NULL OR res_by = ? OR res_until < UTC_TIMESTAMP(6)) AND {LIVE}",
                exp = exp_set()
            ),
            insert: format!(
                "INSERT INTO {t} (name, version, schema_v, data, tokens, meta, expires_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, {}, UTC_TIMESTAMP(6))",
                exp_new()
            ),
            // An expired row is written over as if absent: its expiry is not kept.
            upsert: format!(
                "INSERT INTO {t} (name, version, schema_v, data, tokens, meta, expires_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, {new}, UTC_TIMESTAMP(6)) \
                 ON DUPLICATE KEY UPDATE version = LAST_INSERT_ID(version + 1), \
                 schema_v = VALUES(schema_v), data = VALUES(data), meta = VALUES(meta), \
                 expires_at = CASE ? WHEN 0 THEN IF({LIVE}, expires_at, NULL) WHEN 1 THEN NULL \
                 WHEN 2 THEN {NOW_MS} + ? ELSE ? END, \
                 tokens = RIGHT(CONCAT(tokens, VALUES(tokens)), {TOKENS_LEN}), \
                 updated_at = VALUES(updated_at)",
                new = exp_new()
            ),
            delete: format!("DELETE FROM {t} WHERE name = ? AND {LIVE}"),
            list_from: format!("SELECT name FROM {t} WHERE name >= ? AND {LIVE} ORDER BY name"),
            list_range: format!(
                "SELECT name FROM {t} WHERE name >= ? AND name < ? AND {LIVE} ORDER BY name"
            ),
            sweep_due: format!(
                "UPDATE {t} SET updated_at = UTC_TIMESTAMP(6) WHERE name = ? \
                 AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND"
            ),
            sweep_mark: format!(
                "INSERT IGNORE INTO {t} (name, version, schema_v, data, tokens, updated_at) \
                 VALUES (?, 1, 0, '', '', UTC_TIMESTAMP(6))"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= {NOW_MS} LIMIT ?"
            ),
        }
    }
}

impl Sql {
    /// `SELECT name, version, schema_v, data, tokens, meta, expires_at … WHERE name IN (?, …)`
    /// for `n` names, live rows only.
    pub(super) fn select_many(&self, n: usize) -> String {
        format!(
            "SELECT name, version, schema_v, data, tokens, meta, expires_at FROM {} \
             WHERE name IN ({}) AND {LIVE}",
            self.table,
            marks(n)
        )
    }

    /// Locks the live rows of `n` names that must be absent (`SELECT … FOR UPDATE`).
    pub(super) fn lock_many(&self, n: usize) -> String {
        format!(
            "SELECT name FROM {} WHERE name IN ({}) AND {LIVE} FOR UPDATE",
            self.table,
            marks(n)
        )
    }

    /// Deletes the rows of `n` names.
    pub(super) fn delete_many(&self, n: usize) -> String {
        format!("DELETE FROM {} WHERE name IN ({})", self.table, marks(n))
    }

    /// Deletes the expired rows of `n` names, so that creates can take them.
    pub(super) fn purge_many(&self, n: usize) -> String {
        format!(
            "DELETE FROM {} WHERE name IN ({}) AND NOT {LIVE}",
            self.table,
            marks(n)
        )
    }

    /// One `INSERT` of `n` new rows (per row: name, version, schema, data, token, meta, and the
    /// expiry's kind, ms after, ms at).
    pub(super) fn insert_many(&self, n: usize) -> String {
        let row = format!("(?, ?, ?, ?, ?, ?, {}, UTC_TIMESTAMP(6))", exp_new());
        let rows = vec![row; n].join(", ");
        format!(
            "INSERT INTO {} (name, version, schema_v, data, tokens, meta, expires_at, updated_at) \
             VALUES {rows}",
            self.table
        )
    }

    /// One `UPDATE` of several rows: `written[i]` says whether row `i` is written (else only
    /// matched, and left as it is). Parameters: for each of data, schema_v, meta and the token,
    /// a (name, value) pair per written row; per written row its name and the expiry's kind, ms
    /// after and ms at; the names of the written rows (version); then per row its name, version,
    /// last token and claimant for the WHERE.
    pub(super) fn update_many(&self, written: &[bool]) -> String {
        let w = written.iter().filter(|w| **w).count();
        let case = |column: &str, value: &str| {
            if w == 0 {
                column.to_owned()
            } else {
                format!(
                    "CASE name {} ELSE {column} END",
                    vec![format!("WHEN ? THEN {value}"); w].join(" ")
                )
            }
        };
        let bump = if w == 0 {
            "version".to_owned()
        } else {
            format!("IF(name IN ({}), version + 1, version)", marks(w))
        };
        let rows = vec![
            format!(
                "(name = ? AND version = ? AND RIGHT(tokens, 8) = ? \
                 AND (res_by IS NULL OR res_by = ? OR res_until < UTC_TIMESTAMP(6)) AND {LIVE})"
            );
            written.len()
        ]
        .join(" OR ");
        format!(
            "UPDATE {t} SET data = {data}, schema_v = {schema}, meta = {meta}, \
             tokens = {tokens}, expires_at = {expires}, version = {bump}, \
             updated_at = UTC_TIMESTAMP(6) WHERE {rows}",
            t = self.table,
            data = case("data", "?"),
            schema = case("schema_v", "?"),
            meta = case("meta", "?"),
            tokens = case("tokens", &format!("RIGHT(CONCAT(tokens, ?), {TOKENS_LEN})")),
            expires = case("expires_at", &format!("({})", exp_set())),
        )
    }
}

/// `?, ?, …` for `n` parameters.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_the_table_and_bind_every_value() {
        let sql = Sql::new("t_1");
        for stmt in [
            &sql.create,
            &sql.probe,
            &sql.select,
            &sql.select_clocked,
            &sql.update,
            &sql.insert,
            &sql.upsert,
            &sql.delete,
            &sql.list_from,
            &sql.list_range,
        ] {
            assert!(stmt.contains("`t_1`"), "{stmt}");
            assert!(!stmt.contains('\''), "{stmt}");
        }
        assert!(sql.create.contains("VARBINARY(2048)"), "{}", sql.create);
        assert!(sql.create.contains("VARBINARY(128)"), "{}", sql.create);
        assert!(sql.update.contains("RIGHT(CONCAT(tokens, ?), 128)"));
        assert!(sql
            .update
            .contains("WHERE name = ? AND version = ? AND RIGHT(tokens, 8) = ?"));
    }
}
