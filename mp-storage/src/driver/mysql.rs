//! `mysql://user[:pass]@host:port/db`: one row per scope in a table of MySQL (5.7, 8) or
//! MariaDB (10.3 and later), over a [`mysql_async`] connection pool.
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table=` | `mp_scopes` | the table, `[A-Za-z0-9_]{1,64}`; created if absent |
//!
//! Every other query option goes to `mysql_async` as is (`pool_min`, `pool_max`, `conn_ttl`,
//! `stmt_cache_size`, `tcp_keepalive`, …; see `mysql_async::Opts`), except two that the driver
//! always sets: `client_found_rows=true` (so an `UPDATE` reports the rows it matched) and
//! `reset_connection=false` (a reset on every return to the pool would drop the prepared
//! statements and cost a round trip per call). TLS is not compiled in.
//!
//! Taking a connection from the pool (connecting, when the pool has none idle) is bounded by
//! [`CONNECT_TIMEOUT`] (5 s): a server that is down or unreachable fails the call with
//! [`BackendKind::Connection`] within that time, and [`Storage::open`](crate::Storage::open)
//! fails the same way since it connects at once to create the table.
//!
//! # Table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `mp_scopes` (
//!   name       VARBINARY(2048) NOT NULL PRIMARY KEY, -- the key, byte for byte
//!   version    BIGINT UNSIGNED NOT NULL,
//!   schema_v   INT UNSIGNED NOT NULL,
//!   data       LONGBLOB NOT NULL,                    -- the JSON bytes as given
//!   tokens     VARBINARY(128) NOT NULL,              -- last 16 commit tokens, 8 bytes each
//!   updated_at DATETIME(6) NOT NULL                  -- UTC, informational
//! ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC
//! ```
//!
//! The key column is binary, so `Alice` and `alice`, or `a` and `a `, are different rows. A
//! 2,048-byte key fits InnoDB's index limit of 3,072 bytes under the `DYNAMIC` row format with
//! the default 16 KiB pages (smaller `innodb_page_size` values are not supported).
//!
//! # Statements
//!
//! Every value is a bound parameter of a prepared statement (cached per connection); the table
//! name, checked as an identifier, is the only thing formatted into SQL.
//!
//! - update: `UPDATE t SET data = ?, schema_v = ?, version = version + 1,
//!   tokens = RIGHT(CONCAT(tokens, ?), 128), … WHERE name = ? AND version = ?`; no matched row
//!   is a conflict, answered with a second statement that loads the current row. A warm
//!   uncontended update is this one statement.
//! - create: `INSERT`, whose duplicate-key error (1062) is a conflict.
//! - put: `INSERT … ON DUPLICATE KEY UPDATE version = LAST_INSERT_ID(version + 1), …`, one
//!   statement that reports the new version.
//! - list: a binary range `name >= prefix AND name < successor(prefix)` in name order, so `%`,
//!   `_` and `\` in a prefix are plain bytes.
//!
//! # Errors
//!
//! I/O and protocol failures, a killed connection (1927, 1053, 1317, …) and running out of
//! time to get a connection are [`BackendKind::Connection`]; lock wait timeouts, deadlocks and
//! statement timeouts (1205, 1213, 1969, 3024) are [`BackendKind::Timeout`]; a full table or
//! disk (1114, 1021) is [`BackendKind::Full`]; refused access (1044, 1045, 1142, 1143, 1227,
//! 1290) is [`BackendKind::PermissionDenied`]. A connection that failed is dropped from the
//! pool and the next call gets a fresh one.
//!
//! [`BackendKind::Connection`]: crate::BackendKind::Connection
//! [`BackendKind::Timeout`]: crate::BackendKind::Timeout
//! [`BackendKind::Full`]: crate::BackendKind::Full
//! [`BackendKind::PermissionDenied`]: crate::BackendKind::PermissionDenied

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, Row};

use super::{CasOutcome, Driver, Record, Write, RECENT_TOKENS};
use crate::error::{redact_url, shorten};
use crate::url::Parsed;
use crate::{BackendKind, Error, MAX_KEY_LEN};

/// The table used when the URL has no `table=` option.
pub const DEFAULT_TABLE: &str = "mp_scopes";

/// The longest wait for a connection from the pool, connecting included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The driver's name in errors.
const NAME: &str = "mysql";

/// The longest table name MySQL takes.
const MAX_TABLE_LEN: usize = 64;

/// Room left in a packet beside the data: the key, the tokens and the statement's own bytes.
const PACKET_OVERHEAD: usize = 16 << 10;

/// Bytes of one commit token in the `tokens` column.
const TOKEN_LEN: usize = 8;

/// A MySQL or MariaDB table as a backend. Cheap to clone: clones share the pool.
///
/// Built by [`Storage::open`](crate::Storage::open) for `mysql://` URLs, or by
/// [`MysqlDriver::open`] for use with [`Storage::with_driver`](crate::Storage::with_driver).
#[derive(Clone)]
pub struct MysqlDriver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    table: String,
    max_data_len: usize,
    sql: Sql,
}

/// The statements, formatted once with the checked table name.
struct Sql {
    select: String,
    update: String,
    insert: String,
    upsert: String,
    delete: String,
    list_from: String,
    list_range: String,
}

impl Sql {
    fn new(table: &str) -> Sql {
        let t = format!("`{table}`");
        Sql {
            select: format!("SELECT version, schema_v, data, tokens FROM {t} WHERE name = ?"),
            update: format!(
                "UPDATE {t} SET data = ?, schema_v = ?, version = version + 1, \
                 tokens = RIGHT(CONCAT(tokens, ?), {max}), updated_at = UTC_TIMESTAMP(6) \
                 WHERE name = ? AND version = ?",
                max = RECENT_TOKENS * TOKEN_LEN
            ),
            insert: format!(
                "INSERT INTO {t} (name, version, schema_v, data, tokens, updated_at) \
                 VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6))"
            ),
            upsert: format!(
                "INSERT INTO {t} (name, version, schema_v, data, tokens, updated_at) \
                 VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) \
                 ON DUPLICATE KEY UPDATE version = LAST_INSERT_ID(version + 1), \
                 schema_v = VALUES(schema_v), data = VALUES(data), \
                 tokens = RIGHT(CONCAT(tokens, VALUES(tokens)), {max}), \
                 updated_at = VALUES(updated_at)",
                max = RECENT_TOKENS * TOKEN_LEN
            ),
            delete: format!("DELETE FROM {t} WHERE name = ?"),
            list_from: format!("SELECT name FROM {t} WHERE name >= ? ORDER BY name"),
            list_range: format!("SELECT name FROM {t} WHERE name >= ? AND name < ? ORDER BY name"),
        }
    }
}

impl fmt::Debug for MysqlDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlDriver")
            .field("table", &self.inner.table)
            .field("max_data_len", &self.inner.max_data_len)
            .finish_non_exhaustive()
    }
}

impl MysqlDriver {
    /// Connects to the server a `mysql://` URL names and creates the table if absent.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::sync::Arc;
    /// use mp_storage::driver::mysql::MysqlDriver;
    ///
    /// let driver = MysqlDriver::open("mysql://root@127.0.0.1:3306/test?table=app").await?;
    /// let st = mp_storage::Storage::with_driver(Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<MysqlDriver, Error> {
        let parsed = crate::url::parse(url)?;
        if parsed.scheme != "mysql" {
            return Err(Error::InvalidUrl {
                url: redact_url(url),
                reason: "expected mysql://user[:pass]@host:port/db".to_owned(),
            });
        }
        open_parsed(url, &parsed).await
    }

    /// The table this driver keeps its rows in.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    async fn conn(&self) -> Result<Conn, Error> {
        get_conn(&self.inner.pool).await
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        Error::Corrupt {
            scope: shorten(key),
            location: format!("mysql table `{}`", self.inner.table),
            detail,
        }
    }

    async fn load_on(&self, conn: &mut Conn, key: &str) -> Result<Option<Record>, Error> {
        let row: Option<Row> = conn
            .exec_first(self.inner.sql.select.as_str(), (key.as_bytes(),))
            .await
            .map_err(backend)?;
        row.map(|row| self.record(key, row)).transpose()
    }

    fn record(&self, key: &str, mut row: Row) -> Result<Record, Error> {
        let version: u64 = self.column(key, &mut row, 0, "version")?;
        let schema: u32 = self.column(key, &mut row, 1, "schema_v")?;
        let data: Vec<u8> = self.column(key, &mut row, 2, "data")?;
        let raw: Vec<u8> = self.column(key, &mut row, 3, "tokens")?;
        if !raw.len().is_multiple_of(TOKEN_LEN) || raw.len() > RECENT_TOKENS * TOKEN_LEN {
            return Err(self.corrupt(
                key,
                format!(
                    "tokens is {} bytes, not a multiple of {TOKEN_LEN} up to {}",
                    raw.len(),
                    RECENT_TOKENS * TOKEN_LEN
                ),
            ));
        }
        let tokens = raw
            .chunks_exact(TOKEN_LEN)
            .map(|c| {
                let mut b = [0u8; TOKEN_LEN];
                b.copy_from_slice(c);
                u64::from_be_bytes(b)
            })
            .collect();
        Ok(Record {
            version,
            schema,
            data,
            tokens,
        })
    }

    fn column<T: mysql_async::prelude::FromValue>(
        &self,
        key: &str,
        row: &mut Row,
        index: usize,
        name: &str,
    ) -> Result<T, Error> {
        match row.take_opt::<T, usize>(index) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(self.corrupt(key, format!("column {name}: {e}"))),
            None => Err(self.corrupt(key, format!("column {name} is missing"))),
        }
    }
}

/// Opens the driver for a parsed `mysql://` URL: checks the options, connects (within
/// [`CONNECT_TIMEOUT`]), creates the table if absent and checks its columns.
pub(crate) async fn open_parsed(url: &str, parsed: &Parsed<'_>) -> Result<MysqlDriver, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let table = parsed.option("table").unwrap_or(DEFAULT_TABLE).to_owned();
    check_table(&table).map_err(invalid)?;

    // Hand mysql_async the URL without our own options.
    let rest: Vec<&(String, String)> = parsed.query.iter().filter(|(k, _)| k != "table").collect();
    let mut driver_url = format!("mysql:{}", parsed.body);
    if !rest.is_empty() {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in rest {
            query.append_pair(k, v);
        }
        driver_url.push('?');
        driver_url.push_str(&query.finish());
    }
    let opts = Opts::from_url(&driver_url).map_err(|e| invalid(e.to_string()))?;
    let pool_opts = opts.pool_opts().clone().with_reset_connection(false);
    let opts = OptsBuilder::from_opts(opts)
        .client_found_rows(true)
        .pool_opts(pool_opts);
    let pool = Pool::new(opts);

    let sql = Sql::new(&table);
    match prepare_table(&pool, &table, &sql).await {
        Ok(max_allowed_packet) => {
            let max_data_len =
                crate::DEFAULT_MAX_DATA_LEN.min(max_allowed_packet.saturating_sub(PACKET_OVERHEAD));
            Ok(MysqlDriver {
                inner: Arc::new(Inner {
                    pool,
                    table,
                    max_data_len,
                    sql,
                }),
            })
        }
        Err(e) => {
            // Close what was opened; the error is what matters.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, pool.disconnect()).await;
            Err(e)
        }
    }
}

/// Creates the table if absent, checks that it has our columns and returns the server's
/// `max_allowed_packet`.
async fn prepare_table(pool: &Pool, table: &str, sql: &Sql) -> Result<usize, Error> {
    let mut conn = get_conn(pool).await?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (\
         name VARBINARY({MAX_KEY_LEN}) NOT NULL, \
         version BIGINT UNSIGNED NOT NULL, \
         schema_v INT UNSIGNED NOT NULL, \
         data LONGBLOB NOT NULL, \
         tokens VARBINARY({}) NOT NULL, \
         updated_at DATETIME(6) NOT NULL, \
         PRIMARY KEY (name)\
         ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC",
        RECENT_TOKENS * TOKEN_LEN
    );
    conn.query_drop(create).await.map_err(backend)?;
    // An existing table of another shape fails here, not on the first write.
    let probe =
        format!("SELECT name, version, schema_v, data, tokens, updated_at FROM `{table}` LIMIT 0");
    conn.query_drop(probe).await.map_err(|e| match e {
        mysql_async::Error::Server(s) if s.code == 1054 => Error::backend(
            NAME,
            BackendKind::Other,
            format!("table `{table}` exists but is not an mp-storage table: {s}"),
        ),
        e => backend(e),
    })?;
    // Prepare the hot statements once on this connection (they are cached per connection).
    for stmt in [&sql.select, &sql.update, &sql.insert] {
        conn.prep(stmt.as_str()).await.map_err(backend)?;
    }
    let packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .map_err(backend)?;
    let packet = packet.unwrap_or(4 << 20);
    Ok(usize::try_from(packet).unwrap_or(usize::MAX))
}

/// Checks a table name: `[A-Za-z0-9_]{1,64}`.
fn check_table(table: &str) -> Result<(), String> {
    let ok = !table.is_empty()
        && table.len() <= MAX_TABLE_LEN
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "option table must be 1 to {MAX_TABLE_LEN} letters, digits or '_', not {:?}",
            shorten(table)
        ))
    }
}

async fn get_conn(pool: &Pool) -> Result<Conn, Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await {
        Ok(r) => r.map_err(backend),
        Err(_) => Err(Error::backend(
            NAME,
            BackendKind::Connection,
            format!(
                "no connection within {} s (server down or pool exhausted)",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Refuses keys the column cannot hold, so a non-strict server never truncates one into
/// another.
fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidName {
            name: shorten(key),
            reason: "the key is longer than 2048 bytes",
        });
    }
    Ok(())
}

/// The smallest byte string above every string that starts with `prefix`; `None` when there
/// is none (an empty prefix, or one of `0xFF` bytes only).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Classifies a `mysql_async` error.
fn backend(e: mysql_async::Error) -> Error {
    use mysql_async::{DriverError as D, Error as E};
    let kind = match &e {
        E::Io(_) => BackendKind::Connection,
        E::Driver(
            D::ConnectionClosed
            | D::PoolDisconnected
            | D::PacketOutOfOrder
            | D::UnexpectedPacket { .. }
            | D::BadCompressedPacketHeader,
        ) => BackendKind::Connection,
        E::Server(s) => server_kind(s.code),
        E::Driver(_) | E::Url(_) | E::Other(_) => BackendKind::Other,
    };
    Error::backend(NAME, kind, e)
}

/// The kind of a server error code.
fn server_kind(code: u16) -> BackendKind {
    match code {
        // Too many connections, can't create socket, host blocked, aborted connection, network
        // read/write errors, server shutdown, query interrupted, connection killed (MariaDB),
        // disconnected for inactivity (MySQL 8).
        1040 | 1081 | 1129 | 1152 | 1158..=1161 | 1053 | 1317 | 1927 | 4031 => {
            BackendKind::Connection
        }
        // Lock wait timeout, deadlock, statement timeouts (MariaDB, MySQL).
        1205 | 1213 | 1969 | 3024 => BackendKind::Timeout,
        // Disk full, table full.
        1021 | 1114 => BackendKind::Full,
        // Database, user, table, column, privilege access denied; read-only server.
        1044 | 1045 | 1142 | 1143 | 1227 | 1290 => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

#[async_trait]
impl Driver for MysqlDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn max_data_len(&self) -> usize {
        self.inner.max_data_len
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        check_key(key)?;
        let mut conn = self.conn().await?;
        self.load_on(&mut conn, key).await
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        check_key(key)?;
        let sql = &self.inner.sql;
        let token = write.token.to_be_bytes();
        let mut conn = self.conn().await?;
        match expected {
            Some(version) => {
                let params = (
                    write.data,
                    write.schema,
                    &token[..],
                    key.as_bytes(),
                    version,
                );
                conn.exec_drop(sql.update.as_str(), params)
                    .await
                    .map_err(backend)?;
                // client_found_rows is on: this counts matched rows (and the version changes on
                // every write, so a matched row is always a changed one too).
                if conn.affected_rows() == 1 {
                    return Ok(CasOutcome::Committed(write.next_version(Some(version))));
                }
            }
            None => {
                let params = (
                    key.as_bytes(),
                    write.initial_version,
                    write.schema,
                    write.data,
                    &token[..],
                );
                match conn.exec_drop(sql.insert.as_str(), params).await {
                    Ok(()) => return Ok(CasOutcome::Committed(write.initial_version)),
                    Err(mysql_async::Error::Server(s)) if s.code == 1062 => {}
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        let current = self.load_on(&mut conn, key).await?;
        Ok(CasOutcome::Conflict(current))
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        check_key(key)?;
        let token = write.token.to_be_bytes();
        let params = (
            key.as_bytes(),
            write.initial_version,
            write.schema,
            write.data,
            &token[..],
        );
        let mut conn = self.conn().await?;
        conn.exec_drop(self.inner.sql.upsert.as_str(), params)
            .await
            .map_err(backend)?;
        // 1: inserted; 2: an existing row updated, its new version in LAST_INSERT_ID.
        match (conn.affected_rows(), conn.last_insert_id()) {
            (1, _) => Ok(write.initial_version),
            (2, Some(version)) => Ok(version),
            (rows, id) => Err(Error::backend(
                NAME,
                BackendKind::Other,
                format!("unexpected reply to an upsert: {rows} rows, insert id {id:?}"),
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let mut conn = self.conn().await?;
        conn.exec_drop(self.inner.sql.delete.as_str(), (key.as_bytes(),))
            .await
            .map_err(backend)?;
        Ok(conn.affected_rows() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let sql = &self.inner.sql;
        let start = prefix.as_bytes();
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = match prefix_end(start) {
            Some(end) => conn.exec(sql.list_range.as_str(), (start, end)).await,
            None => conn.exec(sql.list_from.as_str(), (start,)).await,
        }
        .map_err(backend)?;
        let mut names = Vec::with_capacity(rows.len());
        for mut row in rows {
            let raw: Vec<u8> = self.column(prefix, &mut row, 0, "name")?;
            let name = String::from_utf8(raw).map_err(|e| {
                let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
                self.corrupt(&shown, "the name is not UTF-8".to_owned())
            })?;
            if name.starts_with(prefix) {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(check_table("mp_scopes").is_ok());
        assert!(check_table(&"a".repeat(64)).is_ok());
        assert!(check_table(&"a".repeat(65)).is_err());
        assert!(check_table("").is_err());
        assert!(check_table("a`b").is_err());
        assert!(check_table("a b").is_err());
        assert!(check_table("a-b").is_err());
        assert!(check_table("tbl;DROP").is_err());
        assert!(check_table("é").is_err());
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

    #[test]
    fn server_codes() {
        assert_eq!(server_kind(1114), BackendKind::Full);
        assert_eq!(server_kind(1045), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1142), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1044), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1927), BackendKind::Connection);
        assert_eq!(server_kind(1205), BackendKind::Timeout);
        assert_eq!(server_kind(1064), BackendKind::Other);
    }

    #[tokio::test]
    async fn bad_options_are_refused_without_connecting() {
        for url in [
            "mysql://root@127.0.0.1:1/test?table=a%60b",
            "mysql://root@127.0.0.1:1/test?table=",
            "mysql://root@127.0.0.1:1/test?no_such_option=1",
        ] {
            match MysqlDriver::open(url).await {
                Err(Error::InvalidUrl { .. }) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        let e = MysqlDriver::open("mysql://root:secret@127.0.0.1:1/test?table=x-y")
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
