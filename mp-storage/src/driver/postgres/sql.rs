//! The statements of the driver, formatted once with the checked table name (see the
//! [statement list](super#statements)).

use crate::driver::RECENT_TOKENS;

use crate::driver::sql_rows::TOKEN_LEN;

/// The longest `tokens` value: the last [`RECENT_TOKENS`] tokens of [`TOKEN_LEN`] bytes.
const TOKENS_LEN: usize = RECENT_TOKENS * TOKEN_LEN;

/// Milliseconds since 1970 by the server's clock (the statement's `now()`).
const NOW_MS: &str = "(floor(extract(epoch FROM now()) * 1000))::bigint";

/// The statements of one table. The table name, checked as an identifier, is the only thing
/// formatted into them; every value is a bound parameter.
pub(super) struct Sql {
    /// The quoted table name.
    table: String,
    /// Creates the table if absent.
    pub create: String,
    /// Selects nothing from every column: fails on a table of another shape.
    pub probe: String,
    /// The live record of `$1`.
    pub select: String,
    /// The compare-and-swap of an existing record, answering with the current record on a
    /// miss, in one statement.
    pub update: String,
    /// `update` that also reserves the record for claimant `$11` for `$12` µs when it loses to
    /// another revision and nobody else holds it (contract rule 13), in the same statement.
    pub update_reserving: String,
    /// The creation of a record, answering with the current record on a miss.
    pub insert: String,
    /// The compare-and-swap of an existing record inside a several-scope commit.
    pub update_plain: String,
    /// The creation of a record inside a several-scope commit.
    pub insert_plain: String,
    /// Locks a live record at a revision (a check inside a several-scope commit).
    pub check: String,
    /// Takes the name of an absent record until the transaction ends: an expired placeholder.
    pub hold_absent: String,
    /// Deletes a live record at a revision.
    pub delete_at: String,
    /// Writes whatever is stored.
    pub upsert: String,
    /// Deletes a record; returns whether it was live.
    pub delete: String,
    pub list_from: String,
    pub list_range: String,
    /// The live records of the names of a `bytea[]`.
    pub select_many: String,
    /// Sets the expiry of a live record.
    pub expire: String,
    /// Reserves a live record for a claimant (contract rule 13).
    pub reserve: String,
    /// Makes the sweep row, or moves its time on when the last sweep is older than the interval:
    /// a row back means this process sweeps now.
    pub sweep_claim: String,
    /// Deletes at most `$1` expired records.
    pub sweep: String,
}

/// A record that has not expired (contract rule 15), in table alias `r`.
fn live() -> String {
    format!("(r.expires_at IS NULL OR r.expires_at > {NOW_MS})")
}

/// The last token of `r.tokens` (empty when it has none).
const LAST_TOKEN: &str = "substr(r.tokens, greatest(length(r.tokens) - 7, 1))";

/// No live reservation of another claimant than `$n`.
fn free_for(n: usize) -> String {
    format!("(r.res_by IS NULL OR r.res_by = ${n} OR r.res_until < now())")
}

/// A live reservation of another claimant than `$n`.
fn held_by_other(n: usize) -> String {
    format!("(r.res_by IS NOT NULL AND r.res_by <> ${n} AND r.res_until >= now())")
}

/// How long a live reservation of another claimant than `$n` still holds, in microseconds;
/// NULL when none does.
fn held_for(n: usize) -> String {
    format!(
        "CASE WHEN {held} THEN greatest(0, floor(extract(epoch FROM r.res_until - now()) \
         * 1000000))::bigint END",
        held = held_by_other(n)
    )
}

/// The tokens of `r` with `new` appended, the newest [`RECENT_TOKENS`] kept.
fn push_token(new: &str) -> String {
    format!(
        "substr(r.tokens || {new}, greatest(length(r.tokens) + {TOKEN_LEN} - {TOKENS_LEN} + 1, 1))"
    )
}

/// The expiry of a new record; parameters `$k` kind (0 keep, 1 never, 2 after, 3 at), then ms
/// after and ms at.
fn exp_new(k: usize) -> String {
    format!(
        "CASE ${k}::int WHEN 2 THEN {NOW_MS} + ${a}::bigint WHEN 3 THEN ${b}::bigint ELSE NULL END",
        a = k + 1,
        b = k + 2
    )
}

/// The expiry of a written live record; the same parameters.
fn exp_set(k: usize) -> String {
    format!(
        "CASE ${k}::int WHEN 0 THEN r.expires_at WHEN 1 THEN NULL \
         WHEN 2 THEN {NOW_MS} + ${a}::bigint ELSE ${b}::bigint END",
        a = k + 1,
        b = k + 2
    )
}

/// The columns a record is read from, in table alias `r`.
const RECORD: &str = "r.version, r.schema_v, r.data, r.tokens, r.meta, r.expires_at";

impl Sql {
    pub(super) fn new(table: &str) -> Sql {
        let t = format!("\"{table}\"");
        let live = live();
        // A written record: parameters $1 data, $2 schema, $3 meta, $4..$6 expiry, $7 token,
        // $8 name, $9 version, $10 last token, $11 claimant.
        let update_set = format!(
            "UPDATE {t} AS r SET data = $1, schema_v = $2, meta = $3, expires_at = {exp}, \
             version = r.version + 1, tokens = {tokens}, updated_at = now() \
             WHERE r.name = $8 AND r.version = $9 AND {LAST_TOKEN} = $10::bytea \
             AND length(r.tokens) % {TOKEN_LEN} = 0 AND {free} AND {live}",
            exp = exp_set(4),
            tokens = push_token("$7::bytea"),
            free = free_for(11),
        );
        // A created record: $1 name, $2 version, $3 schema, $4 data, $5 token, $6 meta,
        // $7..$9 expiry. An expired record of that name is written over as if absent.
        let insert_new = format!(
            "INSERT INTO {t} AS r (name, version, schema_v, data, tokens, meta, expires_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, {exp}, now()) \
             ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, \
             schema_v = EXCLUDED.schema_v, data = EXCLUDED.data, tokens = EXCLUDED.tokens, \
             meta = EXCLUDED.meta, expires_at = EXCLUDED.expires_at, res_by = NULL, \
             res_until = NULL, updated_at = now() WHERE NOT {live}",
            exp = exp_new(7),
        );
        // The answer of a compare-and-swap: (done, version) when it wrote; else the current
        // live record, if any, and whether another claimant's reservation holds it.
        let answer = |written: &str, name: usize, claimant: Option<usize>| {
            let reserved = claimant.map_or_else(|| "NULL::bigint".to_owned(), held_for);
            format!(
                "WITH w AS ({written} RETURNING r.version) \
                 SELECT true, w.version, NULL::bigint, NULL::bytea, NULL::bytea, NULL::bytea, \
                 NULL::bigint, NULL::bigint FROM w \
                 UNION ALL \
                 SELECT false, {RECORD}, {reserved} FROM {t} AS r \
                 WHERE r.name = ${name} AND {live} AND NOT EXISTS (SELECT 1 FROM w)"
            )
        };
        // The reservation a lost `update` takes: when the write did not happen (whatever the
        // snapshot showed: a row changed under the write's lock wait is found again here, at its
        // newest version), for a live, well-formed record nobody else holds. It changes nothing
        // but the reservation, which only paces writers and expires by itself, so its commit
        // need not wait for the WAL flush: `synchronous_commit` off for this statement's own
        // transaction, and only when it reserved (a write in `w` excludes it). The outer query
        // reads `sc`, so that the `set_config` of a returned row is surely evaluated.
        let reserving = format!(
            "WITH w AS ({update_set} RETURNING r.version), \
             v AS (UPDATE {t} AS r SET res_by = $11, \
             res_until = now() + $12::bigint * interval '1 microsecond' \
             WHERE r.name = $8 AND NOT EXISTS (SELECT 1 FROM w) \
             AND length(r.tokens) % {TOKEN_LEN} = 0 AND {free} AND {live} \
             RETURNING {RECORD}, set_config('synchronous_commit', 'off', true) AS sc) \
             SELECT true, w.version, NULL::bigint, NULL::bytea, NULL::bytea, NULL::bytea, \
             NULL::bigint, NULL::bigint, false FROM w \
             UNION ALL \
             SELECT false, v.version, v.schema_v, v.data, v.tokens, v.meta, v.expires_at, \
             NULL::bigint, v.sc IS NOT NULL FROM v \
             UNION ALL \
             SELECT false, {RECORD}, {held}, false \
             FROM {t} AS r WHERE r.name = $8 AND {live} \
             AND NOT EXISTS (SELECT 1 FROM w) AND NOT EXISTS (SELECT 1 FROM v)",
            free = free_for(11),
            held = held_for(11),
        );
        Sql {
            update_reserving: reserving,
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 name bytea NOT NULL PRIMARY KEY, \
                 version bigint NOT NULL, \
                 schema_v bigint NOT NULL, \
                 data bytea NOT NULL, \
                 tokens bytea NOT NULL, \
                 meta bytea NULL, \
                 res_by bigint NULL, \
                 res_until timestamptz NULL, \
                 expires_at bigint NULL, \
                 updated_at timestamptz NOT NULL)"
            ),
            probe: format!(
                "SELECT name, version, schema_v, data, tokens, meta, res_by, res_until, \
                 expires_at, updated_at FROM {t} LIMIT 0"
            ),
            select: format!("SELECT {RECORD} FROM {t} AS r WHERE r.name = $1 AND {live}"),
            update: answer(&update_set, 8, Some(11)),
            insert: answer(&insert_new, 1, None),
            update_plain: update_set.clone(),
            insert_plain: insert_new.clone(),
            check: format!(
                "SELECT 1 FROM {t} AS r WHERE r.name = $1 AND r.version = $2 \
                 AND {LAST_TOKEN} = $3::bytea AND {free} AND {live} FOR SHARE",
                free = free_for(4)
            ),
            hold_absent: format!(
                "INSERT INTO {t} AS r (name, version, schema_v, data, tokens, meta, expires_at, \
                 updated_at) VALUES ($1, 0, 0, ''::bytea, ''::bytea, NULL, 0, now()) \
                 ON CONFLICT (name) DO UPDATE SET updated_at = r.updated_at WHERE NOT {live}"
            ),
            delete_at: format!(
                "DELETE FROM {t} AS r WHERE r.name = $1 AND r.version = $2 \
                 AND {LAST_TOKEN} = $3::bytea AND {free} AND {live}",
                free = free_for(4)
            ),
            // An expired record is written over as if absent: version, tokens, expiry and
            // reservation start anew. A record whose tokens are broken is left as it is.
            upsert: format!(
                "INSERT INTO {t} AS r (name, version, schema_v, data, tokens, meta, expires_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, {exp}, now()) \
                 ON CONFLICT (name) DO UPDATE SET \
                 version = CASE WHEN {live} THEN r.version + 1 ELSE EXCLUDED.version END, \
                 tokens = CASE WHEN {live} THEN {tokens} ELSE EXCLUDED.tokens END, \
                 schema_v = EXCLUDED.schema_v, data = EXCLUDED.data, meta = EXCLUDED.meta, \
                 expires_at = CASE WHEN $7::int = 0 AND {live} THEN r.expires_at \
                 ELSE EXCLUDED.expires_at END, \
                 res_by = CASE WHEN {live} THEN r.res_by ELSE NULL END, \
                 res_until = CASE WHEN {live} THEN r.res_until ELSE NULL END, \
                 updated_at = now() WHERE (length(r.tokens) % {TOKEN_LEN} = 0 OR NOT {live}) \
                 RETURNING r.version",
                exp = exp_new(7),
                tokens = push_token("EXCLUDED.tokens"),
            ),
            delete: format!("DELETE FROM {t} AS r WHERE r.name = $1 RETURNING {live}"),
            list_from: format!(
                "SELECT r.name FROM {t} AS r WHERE r.name >= $1 AND {live} ORDER BY r.name"
            ),
            list_range: format!(
                "SELECT r.name FROM {t} AS r WHERE r.name >= $1 AND r.name < $2 AND {live} \
                 ORDER BY r.name"
            ),
            select_many: format!(
                "SELECT r.name, {RECORD} FROM {t} AS r WHERE r.name = ANY($1::bytea[]) AND {live}"
            ),
            expire: format!(
                "UPDATE {t} AS r SET expires_at = {exp} WHERE r.name = $4 AND {live}",
                exp = exp_set(1)
            ),
            reserve: format!(
                "UPDATE {t} AS r SET res_by = $1, \
                 res_until = now() + $2::bigint * interval '1 microsecond' \
                 WHERE r.name = $3 AND {free} AND {live}",
                free = free_for(1)
            ),
            sweep_claim: format!(
                "INSERT INTO {t} AS r (name, version, schema_v, data, tokens, meta, expires_at, \
                 updated_at) VALUES ($1, 1, 0, ''::bytea, ''::bytea, NULL, NULL, now()) \
                 ON CONFLICT (name) DO UPDATE SET updated_at = now() \
                 WHERE r.updated_at < now() - $2::bigint * interval '1 second'"
            ),
            // The rows are locked (skipping those a writer holds) and checked again when
            // deleted: a record written again after it expired is live, and stays.
            sweep: format!(
                "DELETE FROM {t} AS r WHERE r.name IN (SELECT s.name FROM {t} AS s \
                 WHERE s.expires_at <= {NOW_MS} LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND r.expires_at <= {NOW_MS}"
            ),
            table: t,
        }
    }

    /// The quoted table name.
    pub(super) fn table(&self) -> &str {
        &self.table
    }
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
            &sql.update,
            &sql.update_reserving,
            &sql.insert,
            &sql.upsert,
            &sql.delete,
            &sql.list_from,
            &sql.list_range,
            &sql.select_many,
            &sql.check,
            &sql.delete_at,
        ] {
            assert!(stmt.contains("\"t_1\""), "{stmt}");
            assert!(!stmt.contains("LIKE"), "{stmt}");
        }
        assert!(sql
            .update
            .contains("WHERE r.name = $8 AND r.version = $9 AND"));
        assert!(sql.insert.contains("ON CONFLICT (name)"));
        assert!(sql.update.starts_with("WITH w AS (UPDATE"));
        assert_eq!(sql.table(), "\"t_1\"");
    }
}
