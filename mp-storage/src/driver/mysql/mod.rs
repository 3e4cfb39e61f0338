//! `mysql://user[:pass]@host:port/db`: one row per scope in a table of MySQL (5.7, 8) or
//! MariaDB (10.3 and later), over a [`mysql_async`] connection pool.
//!
//! # Options
//!
//! `mysql://[user[:password]@]host[:port][/database]?table=…&…`: the table of options, and the
//! methods that set them in code, are on [`MysqlConfig`]. [`MysqlDriver::open`] takes a URL,
//! [`MysqlDriver::connect`] a [`MysqlConfig`].
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table=` | `mp_scopes` | the table, `[A-Za-z0-9_]{1,64}`; created if absent |
//! | `pool_max=` | 32 | the most connections open at once ([`DEFAULT_POOL_MAX`]) |
//! | `inactive_connection_ttl=` | 60 | seconds an unused pooled connection stays open ([`DEFAULT_IDLE_TIMEOUT`]) |
//!
//! Every other query option goes to `mysql_async` as is (`pool_min`, `conn_ttl`,
//! `stmt_cache_size`, `tcp_keepalive`, …; see `mysql_async::Opts`), except two that the driver
//! always sets: `client_found_rows=true` (so an `UPDATE` reports the rows it matched) and
//! `reset_connection=false` (a reset on every return to the pool would drop the prepared
//! statements and cost a round trip per call). TLS is not compiled in. The two defaults above
//! differ from `mysql_async`'s (100, and 0: every connection handed back while `pool_min` others
//! are idle is closed), under which a steady load of more tasks than `pool_min` keeps opening
//! and closing connections.
//!
//! Taking a connection from the pool (connecting, when the pool has none idle) is bounded by
//! [`CONNECT_TIMEOUT`] (5 s): a server that is down or unreachable fails the call with
//! [`BackendKind::Connection`] within that time, with a message that names the server
//! (`cannot connect to 127.0.0.1:3307: connection refused`), and
//! [`Storage::open`](crate::Storage::open) fails the same way since it connects at once to
//! create the table. When that first connection is slow to come, the driver checks on a
//! connection of its own that the server greets like MySQL; one that does not (a URL pointed at
//! a Redis port, say) fails the open within a second, also with [`BackendKind::Connection`] (no
//! MySQL server could be reached there): `the server at 127.0.0.1:6379 does not speak the
//! MySQL protocol`.
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};

use super::{
    Action, Capabilities, CasOutcome, CommitOutcome, Driver, Expiry, Op, Record, Revision, Write,
};
use crate::driver::net::ServerError;
use crate::{BackendKind, Error};

mod config;
mod error;
mod probe;
mod row;
mod sql;

use crate::driver::sql_rows::{check_key, prefix_end};
pub use config::{MysqlConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_POOL_MAX, DEFAULT_WATCH_POLL};
use error::{backend, connect_error};
use sql::Sql;

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["mysql"];

/// The table used when the URL has no `table=` option.
pub const DEFAULT_TABLE: &str = "mp_scopes";

/// The longest wait for a connection from the pool, connecting included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The row that records the last sweep: a name no scope can have (names hold no NUL).
const SWEEP_ROW: &[u8] = b"\0mp-sweep";

/// How often one of the processes on a table deletes its expired rows, at most.
const SWEEP_EVERY_SECS: u64 = 60;

/// The driver's name in errors.
const NAME: &str = "mysql";

/// Room left in a packet beside the data: the key, the tokens and the statement's own bytes.
const PACKET_OVERHEAD: usize = 16 << 10;

/// A MySQL or MariaDB table as a backend. Cheap to clone: clones share the pool.
///
/// Built by [`Storage::open`](crate::Storage::open) for `mysql://` URLs, or by
/// [`MysqlDriver::open`] (a URL) or [`MysqlDriver::connect`] (a [`MysqlConfig`]) for use with
/// [`Storage::with_driver`](crate::Storage::with_driver).
#[derive(Clone)]
pub struct MysqlDriver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Connections with `autocommit` off, for several-scope commits (made on first use).
    commit_pool: Pool,
    /// The server's `host:port`, for errors and `Debug`.
    addr: String,
    table: String,
    max_data_len: usize,
    sql: Sql,
    /// How often change streams read the watched scopes.
    watch_poll: std::time::Duration,
    /// The share of the rows loaded lately that had an expiry, in 1/1024 (a moving average):
    /// above [`CLOCKED_FIRST`], a load reads the server's clock with the row at once instead
    /// of only after finding an expiry (see [`MysqlDriver::load_on`]).
    expiring: AtomicU32,
}

/// The share of loaded rows with an expiry (in 1/1024) above which a load reads the server's
/// clock with the row at once: a second statement for a tenth of the loads costs more than the
/// clock in every one of them.
const CLOCKED_FIRST: u32 = 102;

impl fmt::Debug for MysqlDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlDriver")
            .field("addr", &self.inner.addr)
            .field("table", &self.inner.table)
            .field("max_data_len", &self.inner.max_data_len)
            .finish_non_exhaustive()
    }
}

impl MysqlDriver {
    /// Connects to the server a `mysql://` URL names and creates the table if absent (see
    /// [`MysqlConfig`] for the options).
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
        Self::connect(MysqlConfig::from_url(url)?).await
    }

    /// Connects to the server `config` names (within [`CONNECT_TIMEOUT`]), creates the table if
    /// absent and checks its columns.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::sync::Arc;
    /// use mp_storage::driver::mysql::{MysqlConfig, MysqlDriver};
    ///
    /// let config = MysqlConfig::new("127.0.0.1").user("root").database("test").table("app");
    /// let driver = MysqlDriver::connect(config).await?;
    /// let st = mp_storage::Storage::with_driver(Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: MysqlConfig) -> Result<MysqlDriver, Error> {
        config.check()?;
        let pool = Pool::new(config.pool_opts());
        let commit_pool = Pool::new(config.commit_pool_opts());
        let table = config.get_table().to_owned();
        let sql = Sql::new(&table);
        match prepare_table(&pool, &config, &sql).await {
            Ok(max_allowed_packet) => {
                let max_data_len = crate::DEFAULT_MAX_DATA_LEN
                    .min(max_allowed_packet.saturating_sub(PACKET_OVERHEAD));
                Ok(MysqlDriver {
                    inner: Arc::new(Inner {
                        pool,
                        commit_pool,
                        addr: config.addr(),
                        table,
                        max_data_len,
                        sql,
                        watch_poll: config.get_watch_poll(),
                        expiring: AtomicU32::new(0),
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

    /// The table this driver keeps its rows in.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The server's address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    async fn conn(&self) -> Result<Conn, Error> {
        get_conn(&self.inner.pool, &self.inner.addr).await
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        row::corrupt(&self.inner.table, key, detail)
    }

    /// The current records of `keys`, in their order, in one statement.
    async fn load_many_on(
        &self,
        conn: &mut Conn,
        keys: &[&str],
    ) -> Result<Vec<Option<Record>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = self.inner.sql.select_many(keys.len());
        let params: Vec<mysql_async::Value> = keys.iter().map(|k| k.as_bytes().into()).collect();
        let rows: Vec<Row> = conn.exec(stmt, params).await.map_err(backend)?;
        let mut found: std::collections::HashMap<Vec<u8>, Row> = std::collections::HashMap::new();
        for mut row in rows {
            let name: Vec<u8> = row::column(&self.inner.table, "", &mut row, 0, "name")?;
            found.insert(name, row);
        }
        keys.iter()
            .map(|k| {
                found
                    .remove(k.as_bytes())
                    .map(|r| row::record_after_name(&self.inner.table, k, r))
                    .transpose()
            })
            .collect()
    }

    /// A several-scope commit on a connection with `autocommit` off: the creates in one
    /// `INSERT`, the rest in one `UPDATE` whose every row must match, then `COMMIT`; any miss
    /// rolls back and reads the current records.
    async fn commit_on(&self, conn: &mut Conn, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        let sql = &self.inner.sql;
        let creates: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].expected.is_none())
            .collect();
        let updates: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].expected.is_some())
            .collect();
        let mut tokens: Vec<[u8; 8]> = ops
            .iter()
            .map(|op| match op.action {
                Action::Write(w) => w.token.to_be_bytes(),
                Action::Check | Action::Delete => [0; 8],
            })
            .collect();
        let mut held = true;
        // Creates (a check of an absent scope is a create of nothing: see below).
        let inserts: Vec<usize> = creates
            .iter()
            .copied()
            .filter(|&i| matches!(ops[i].action, Action::Write(_)))
            .collect();
        if !inserts.is_empty() {
            let mut params: Vec<mysql_async::Value> = Vec::with_capacity(inserts.len() * 6);
            for &i in &inserts {
                if let Action::Write(w) = ops[i].action {
                    params.push(ops[i].key.as_bytes().into());
                    params.push(w.initial_version.into());
                    params.push(w.schema.into());
                    params.push(w.data.into());
                    params.push(tokens[i][..].into());
                    params.push(w.meta.into());
                    let (kind, after, at) = expiry_params(w.expiry);
                    params.push(kind.into());
                    params.push(after.into());
                    params.push(at.into());
                }
            }
            // Rows of these names that expired are gone for good: the creates take the names.
            let names: Vec<mysql_async::Value> = inserts
                .iter()
                .map(|&i| ops[i].key.as_bytes().into())
                .collect();
            conn.exec_drop(sql.purge_many(inserts.len()), names)
                .await
                .map_err(backend)?;
            match conn.exec_drop(sql.insert_many(inserts.len()), params).await {
                Ok(()) => {}
                Err(mysql_async::Error::Server(s)) if s.code == 1062 => held = false,
                Err(e) => return Err(backend(e)),
            }
        }
        // Checks of absent scopes: still absent (the insert of others holds the gap).
        let absent_checks: Vec<usize> = creates
            .iter()
            .copied()
            .filter(|&i| matches!(ops[i].action, Action::Check | Action::Delete))
            .collect();
        if held && !absent_checks.is_empty() {
            let keys: Vec<&str> = absent_checks.iter().map(|&i| ops[i].key).collect();
            let stmt = sql.lock_many(keys.len());
            let params: Vec<mysql_async::Value> =
                keys.iter().map(|k| k.as_bytes().into()).collect();
            let rows: Vec<Row> = conn.exec(stmt, params).await.map_err(backend)?;
            held = rows.is_empty();
        }
        if held && !updates.is_empty() {
            let mut params: Vec<mysql_async::Value> = Vec::new();
            let shape: Vec<bool> = updates
                .iter()
                .map(|&i| matches!(ops[i].action, Action::Write(_)))
                .collect();
            // SET: data, schema_v, meta, tokens, version per written row; WHERE: every row.
            for column in 0..4 {
                for &i in &updates {
                    if let Action::Write(w) = ops[i].action {
                        params.push(ops[i].key.as_bytes().into());
                        params.push(match column {
                            0 => w.data.into(),
                            1 => w.schema.into(),
                            2 => w.meta.into(),
                            _ => tokens[i][..].into(),
                        });
                    }
                }
            }
            for &i in &updates {
                if let Action::Write(w) = ops[i].action {
                    let (kind, after, at) = expiry_params(w.expiry);
                    params.push(ops[i].key.as_bytes().into());
                    params.push(kind.into());
                    params.push(after.into());
                    params.push(at.into());
                }
            }
            for &i in &updates {
                if let Action::Write(_) = ops[i].action {
                    params.push(ops[i].key.as_bytes().into());
                }
            }
            for &i in &updates {
                let Some(r) = ops[i].expected else { continue };
                let last = r.token.to_be_bytes();
                params.push(ops[i].key.as_bytes().into());
                params.push(r.version.into());
                params.push(
                    if r.token == 0 {
                        Vec::new()
                    } else {
                        last.to_vec()
                    }
                    .into(),
                );
                params.push(
                    match ops[i].action {
                        Action::Write(w) => w.claimant,
                        Action::Check | Action::Delete => 0,
                    }
                    .into(),
                );
            }
            conn.exec_drop(sql.update_many(&shape), params)
                .await
                .map_err(backend)?;
            held = conn.affected_rows() == updates.len() as u64;
        }
        // Deletes: their rows matched (and are locked) above.
        let deletes: Vec<&str> = ops
            .iter()
            .filter(|op| matches!(op.action, Action::Delete) && op.expected.is_some())
            .map(|op| op.key)
            .collect();
        if held && !deletes.is_empty() {
            let params: Vec<mysql_async::Value> =
                deletes.iter().map(|k| k.as_bytes().into()).collect();
            conn.exec_drop(sql.delete_many(deletes.len()), params)
                .await
                .map_err(backend)?;
            held = conn.affected_rows() == deletes.len() as u64;
        }
        if held {
            conn.query_drop("COMMIT").await.map_err(backend)?;
            let versions = ops
                .iter()
                .map(|op| match op.action {
                    Action::Write(w) => Some(w.next_version(op.expected.map(|r| r.version))),
                    Action::Check | Action::Delete => None,
                })
                .collect();
            return Ok(CommitOutcome::Committed(versions));
        }
        conn.query_drop("ROLLBACK").await.map_err(backend)?;
        tokens.clear();
        let keys: Vec<&str> = ops.iter().map(|op| op.key).collect();
        let current = self.load_many_on(conn, &keys).await?;
        conn.query_drop("ROLLBACK").await.map_err(backend)?;
        let mut failed: Vec<(usize, Option<Record>)> = Vec::new();
        for (i, (op, record)) in ops.iter().zip(&current).enumerate() {
            let at = match (record, op.expected) {
                (Some(r), Some(e)) => e.matches(r),
                (None, None) => true,
                _ => false,
            };
            if !at {
                failed.push((i, record.clone()));
            }
        }
        if failed.is_empty() {
            // Every revision held: another claimant's reservation refused the writes.
            for (i, (op, record)) in ops.iter().zip(current).enumerate() {
                if matches!(op.action, Action::Write(_)) {
                    failed.push((i, record));
                }
            }
        }
        Ok(CommitOutcome::Conflict(failed))
    }

    /// The live record of `key`. Whether a row has expired is the server's clock's to say, and
    /// reading that clock costs a point read about a tenth of its rate, so it is read only for
    /// a row with an expiry: the row is read without it, and a row found with an expiry is read
    /// again with it. Where most rows loaded lately had an expiry, the clock is read with the row
    /// at once (one statement, not two).
    async fn load_on(&self, conn: &mut Conn, key: &str) -> Result<Option<Record>, Error> {
        let sql = &self.inner.sql;
        let table = &self.inner.table;
        let clocked = self.inner.expiring.load(Ordering::Relaxed) > CLOCKED_FIRST;
        if !clocked {
            let Some(found) = select_row(conn, &sql.select, key).await? else {
                return Ok(None);
            };
            let record = row::record(table, key, found)?;
            self.note_expiry(record.expires_at.is_some());
            if record.expires_at.is_none() {
                return Ok(Some(record));
            }
        }
        let Some(found) = select_row(conn, &sql.select_clocked, key).await? else {
            return Ok(None);
        };
        let record = row::live_record(table, key, found)?;
        if clocked {
            // An expired row had an expiry too.
            self.note_expiry(record.as_ref().is_none_or(|r| r.expires_at.is_some()));
        }
        Ok(record)
    }

    /// Notes whether a loaded row had an expiry, in the moving average of
    /// [`Inner::expiring`] (weight 1/16: a few dozen loads turn it).
    fn note_expiry(&self, had: bool) {
        let share = &self.inner.expiring;
        let old = share.load(Ordering::Relaxed);
        let seen = if had { 1024 } else { 0 };
        // Concurrent loads may overwrite each other's step: a guess, not a count.
        share.store(old - old / 16 + seen / 16, Ordering::Relaxed);
    }
}

/// The row `stmt` selects for `key`, if any.
async fn select_row(conn: &mut Conn, stmt: &str, key: &str) -> Result<Option<Row>, Error> {
    conn.exec_first(stmt, (key.as_bytes(),))
        .await
        .map_err(backend)
}

/// The expiry parameters of the statements: kind (0 keep, 1 never, 2 after, 3 at), ms after,
/// ms at.
fn expiry_params(expiry: Expiry) -> (u8, u64, u64) {
    match expiry {
        Expiry::Keep => (0, 0, 0),
        Expiry::Never => (1, 0, 0),
        Expiry::After(d) => (2, u64::try_from(d.as_millis()).unwrap_or(u64::MAX), 0),
        Expiry::At(at) => (3, 0, at),
    }
}

/// Creates the table if absent, checks that it has our columns and returns the server's
/// `max_allowed_packet`.
async fn prepare_table(pool: &Pool, config: &MysqlConfig, sql: &Sql) -> Result<usize, Error> {
    let table = config.get_table();
    let mut conn = first_conn(pool, config).await?;
    conn.query_drop(sql.create.as_str())
        .await
        .map_err(backend)?;
    // A table made before records had notes gains the column (once; a concurrent open that
    // added it first is fine).
    let present: Vec<String> = conn
        .exec(sql.added_columns.as_str(), (table,))
        .await
        .map_err(backend)?;
    for (column, add) in &sql.add_columns {
        if present.iter().any(|p| p.eq_ignore_ascii_case(column)) {
            continue;
        }
        match conn.query_drop(add.as_str()).await {
            Ok(()) => {}
            // Added meanwhile by another process opening the same table.
            Err(mysql_async::Error::Server(s)) if s.code == 1060 => {}
            Err(e) => return Err(backend(e)),
        }
    }
    // An existing table of another shape fails here, not on the first write.
    conn.query_drop(sql.probe.as_str())
        .await
        .map_err(|e| match e {
            mysql_async::Error::Server(s) if s.code == 1054 => Error::backend(
                NAME,
                BackendKind::Other,
                format!("table `{table}` exists but is not an mp-storage table: {s}"),
            ),
            e => backend(e),
        })?;
    // Prepare the hot statements once on this connection (they are cached per connection).
    for stmt in [&sql.select, &sql.select_clocked, &sql.update, &sql.insert] {
        conn.prep(stmt.as_str()).await.map_err(backend)?;
    }
    let packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .map_err(backend)?;
    let packet = packet.unwrap_or(4 << 20);
    Ok(usize::try_from(packet).unwrap_or(usize::MAX))
}

/// The first connection of a new pool. When it is slow to come, a probe checks meanwhile that
/// the server speaks MySQL at all, so that a URL pointed at another kind of server fails at once
/// instead of after [`CONNECT_TIMEOUT`].
async fn first_conn(pool: &Pool, config: &MysqlConfig) -> Result<Conn, Error> {
    let addr = config.addr();
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let conn = get_conn(pool, &addr);
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => return r,
        () = tokio::time::sleep(probe::AFTER) => {}
    }
    if config.socket().is_some() {
        // Not over TCP: nothing to probe.
        return conn.await;
    }
    let probe = probe::check(config.get_host(), config.get_port(), &addr, deadline);
    tokio::pin!(probe);
    // The probe ends the wait only when it finds another protocol.
    tokio::select! {
        r = &mut conn => r,
        Err(e) = &mut probe => Err(e),
    }
}

/// A connection from the pool, within [`CONNECT_TIMEOUT`].
async fn get_conn(pool: &Pool, addr: &str) -> Result<Conn, Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await {
        // Nothing was sent while taking a connection: a write certainly did not happen.
        Ok(r) => r.map_err(|e| connect_error(e, addr).unsent_now()),
        Err(_) => Err(Error::backend_unsent(
            NAME,
            BackendKind::Connection,
            ServerError::new(
                format!(
                    "no connection to {addr} within {} s (server down or pool exhausted)",
                    CONNECT_TIMEOUT.as_secs()
                ),
                None,
            ),
        )),
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
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        check_key(key)?;
        let sql = &self.inner.sql;
        let token = write.token.to_be_bytes();
        let mut conn = self.conn().await?;
        match expected {
            Some(revision) => {
                let last = revision.token.to_be_bytes();
                // A record without tokens has an empty tail, like the empty expected token.
                let last: &[u8] = if revision.token == 0 { &[] } else { &last };
                let (kind, after, at) = expiry_params(write.expiry);
                let params: Vec<mysql_async::Value> = vec![
                    write.data.into(),
                    write.schema.into(),
                    write.meta.into(),
                    kind.into(),
                    after.into(),
                    at.into(),
                    token[..].into(),
                    key.as_bytes().into(),
                    revision.version.into(),
                    last.into(),
                    write.claimant.into(),
                ];
                conn.exec_drop(sql.update.as_str(), params)
                    .await
                    .map_err(backend)?;
                // client_found_rows is on: this counts matched rows (and the version changes on
                // every write, so a matched row is always a changed one too).
                if conn.affected_rows() == 1 {
                    return Ok(CasOutcome::Committed(
                        write.next_version(Some(revision.version)),
                    ));
                }
                // The record it lost to, and whether another's reservation turned it away.
                let found: Option<Row> = conn
                    .exec_first(sql.select_held.as_str(), (write.claimant, key.as_bytes()))
                    .await
                    .map_err(backend)?;
                let Some(mut found) = found else {
                    return Ok(CasOutcome::Conflict(None));
                };
                let table = &self.inner.table;
                let held_us: Option<u64> = row::column(table, key, &mut found, 6, "held")?;
                let record = row::record(table, key, found)?
                    .with_reserved_for(held_us.map(Duration::from_micros));
                return Ok(CasOutcome::Conflict(Some(record)));
            }
            None => {
                let (kind, after, at) = expiry_params(write.expiry);
                let params: Vec<mysql_async::Value> = vec![
                    key.as_bytes().into(),
                    write.initial_version.into(),
                    write.schema.into(),
                    write.data.into(),
                    token[..].into(),
                    write.meta.into(),
                    kind.into(),
                    after.into(),
                    at.into(),
                ];
                // Twice at most: a row of this name that expired is deleted, then the insert
                // goes again.
                for _ in 0..2 {
                    match conn.exec_drop(sql.insert.as_str(), params.clone()).await {
                        Ok(()) => return Ok(CasOutcome::Committed(write.initial_version)),
                        Err(mysql_async::Error::Server(s)) if s.code == 1062 => {
                            conn.exec_drop(sql.purge_one.as_str(), (key.as_bytes(),))
                                .await
                                .map_err(backend)?;
                            if conn.affected_rows() == 0 {
                                break;
                            }
                        }
                        Err(e) => return Err(backend(e)),
                    }
                }
            }
        }
        let current = self.load_on(&mut conn, key).await?;
        Ok(CasOutcome::Conflict(current))
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        check_key(key)?;
        let token = write.token.to_be_bytes();
        let (kind, after, at) = expiry_params(write.expiry);
        let params: Vec<mysql_async::Value> = vec![
            key.as_bytes().into(),
            write.initial_version.into(),
            write.schema.into(),
            write.data.into(),
            token[..].into(),
            write.meta.into(),
            kind.into(),
            after.into(),
            at.into(),
            kind.into(),
            after.into(),
            at.into(),
        ];
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

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_multi_key_commit()
            .with_expiry()
            .with_watch()
            .with_reservations()
    }

    /// No push from MySQL: every `watch_poll_ms`, one read of all the watched scopes
    /// (contract rule 17, [`crate::driver::poll_changes`]).
    fn changes(
        &self,
        watched: Arc<crate::driver::WatchSet>,
    ) -> Option<crate::driver::ChangeStream> {
        Some(crate::driver::poll_changes(
            Arc::new(self.clone()),
            watched,
            self.inner.watch_poll,
        ))
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        check_key(key)?;
        let (kind, after, at) = expiry_params(expiry);
        let mut conn = self.conn().await?;
        conn.exec_drop(
            self.inner.sql.expire.as_str(),
            (kind, after, at, key.as_bytes()),
        )
        .await
        .map_err(backend)?;
        Ok(conn.affected_rows() == 1)
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        let sql = &self.inner.sql;
        let mut conn = self.conn().await?;
        // One process sweeps per interval: the one that moves the sweep row's time on.
        conn.exec_drop(sql.sweep_due.as_str(), (SWEEP_ROW, SWEEP_EVERY_SECS))
            .await
            .map_err(backend)?;
        if conn.affected_rows() == 0 {
            conn.exec_drop(sql.sweep_mark.as_str(), (SWEEP_ROW,))
                .await
                .map_err(backend)?;
            if conn.affected_rows() == 0 {
                return Ok(0);
            }
        }
        conn.exec_drop(sql.sweep.as_str(), (limit as u64,))
            .await
            .map_err(backend)?;
        Ok(usize::try_from(conn.affected_rows()).unwrap_or(usize::MAX))
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        for key in keys {
            check_key(key)?;
        }
        let mut conn = self.conn().await?;
        let mut out = Vec::with_capacity(keys.len());
        // At most 500 names a statement.
        for chunk in keys.chunks(500) {
            out.extend(self.load_many_on(&mut conn, chunk).await?);
        }
        Ok(out)
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        if let [Op {
            key,
            expected,
            action: Action::Write(w),
        }] = ops
        {
            return Ok(self.cas(key, *expected, *w).await?.into());
        }
        for op in ops {
            check_key(op.key)?;
        }
        let mut conn = get_conn(&self.inner.commit_pool, &self.inner.addr).await?;
        match self.commit_on(&mut conn, ops).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                // Never hand a connection with an open transaction back to the pool.
                if conn.query_drop("ROLLBACK").await.is_err() {
                    let _ = conn.disconnect().await;
                }
                Err(e)
            }
        }
    }

    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        check_key(key)?;
        let micros = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn().await?;
        conn.exec_drop(
            self.inner.sql.reserve.as_str(),
            (claimant, micros, key.as_bytes(), claimant),
        )
        .await
        .map_err(backend)?;
        Ok(conn.affected_rows() == 1)
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
            let raw: Vec<u8> = row::column(&self.inner.table, prefix, &mut row, 0, "name")?;
            let name = String::from_utf8(raw).map_err(|e| {
                let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
                self.corrupt(&shown, "the name is not UTF-8".to_owned())
            })?;
            // The sweep row's name starts with NUL, which no scope name holds.
            if name.starts_with(prefix) && !name.starts_with('\0') {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = MysqlDriver::connect(MysqlConfig::new("127.0.0.1").table("x-y"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_server() {
        let e = MysqlDriver::connect(MysqlConfig::new("127.0.0.1").port(1))
            .await
            .unwrap_err();
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert!(
            e.to_string()
                .contains("cannot connect to 127.0.0.1:1: connection refused"),
            "{e}"
        );
    }
}
