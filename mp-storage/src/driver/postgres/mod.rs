//! `postgres://user[:pass]@host:port/db` (or `postgresql://`): one row per scope in a table of
//! PostgreSQL (12 and later), over a small pool of `tokio-postgres` connections.
//!
//! # Options
//!
//! `postgres://[user[:password]@]host[:port][/database]?table=…&…`: the table of options, and
//! the methods that set them in code, are on [`PostgresConfig`]. [`PostgresDriver::open`] takes
//! a URL, [`PostgresDriver::connect`] a [`PostgresConfig`].
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table=` | `mp_scopes` | the table, `[A-Za-z0-9_]{1,63}`; created if absent |
//! | `pool_max=` | 16 | the most connections the pool keeps open |
//!
//! Every other query option goes to `tokio-postgres` as is (`connect_timeout`,
//! `application_name`, `options`, `keepalives`, …). TLS is not compiled in: `sslmode=require`
//! is refused at open, and the default `prefer` connects without it.
//!
//! Taking a connection from the pool (connecting, when the pool has none idle) is bounded by
//! [`CONNECT_TIMEOUT`] (5 s; a URL's `connect_timeout` may lower it, not raise it): a server
//! that is down or unreachable fails the call with [`BackendKind::Connection`] within that time,
//! with a message that names the server (`cannot connect to 127.0.0.1:5433: connection
//! refused`), and [`Storage::open`](crate::Storage::open) fails the same way since it connects
//! at once to create the table.
//!
//! # Table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "mp_scopes" (
//!   name       bytea NOT NULL PRIMARY KEY, -- the key, byte for byte
//!   version    bigint NOT NULL,
//!   schema_v   bigint NOT NULL,
//!   data       bytea NOT NULL,             -- the JSON bytes as given
//!   tokens     bytea NOT NULL,             -- last 16 commit tokens, 8 bytes each
//!   meta       bytea NULL,                 -- the engine's notes
//!   res_by     bigint NULL,                -- a reservation's claimant (its bits as signed)
//!   res_until  timestamptz NULL,           -- and its end, by the server's clock
//!   expires_at bigint NULL,                -- ms since 1970 by the server's clock
//!   updated_at timestamptz NOT NULL        -- informational
//! )
//! ```
//!
//! The key column is `bytea`, compared byte for byte, so `Alice` and `alice`, or `a` and `a `,
//! are different rows whatever the database's collation. Keys of up to 2,048 bytes fit the
//! primary key's index.
//!
//! # Statements
//!
//! Every value is a bound parameter of a statement prepared once per connection and cached;
//! the table name, checked as an identifier and quoted, is the only thing formatted into SQL.
//!
//! - update: `WITH w AS (UPDATE t … SET version = version + 1, … WHERE name = $8 AND version =
//!   $9 AND <last token> = $10 AND <no other live reservation> AND <live> RETURNING version)
//!   SELECT … FROM w UNION ALL SELECT <current record> … WHERE NOT EXISTS (SELECT 1 FROM w)`:
//!   one statement, one round trip, that on a conflict also answers with the current record.
//!   A warm uncontended update is this one statement. (When the update waited for another
//!   transaction's write of the row, the record it answers with is the one before that write,
//!   which the driver tells by its revision and then reads again in a second statement.)
//! - create: `INSERT … ON CONFLICT (name) DO UPDATE … WHERE <the row expired>` in the same
//!   kind of statement: 0 rows written is a conflict, answered with the current record (a row
//!   another transaction committed after the statement began is not visible to it: then the
//!   answer is `Conflict(None)` and the engine loads the record).
//! - put: one `INSERT … ON CONFLICT (name) DO UPDATE` that returns the new version.
//! - list: a byte range `name >= prefix AND name < successor(prefix)` in name order, so `%`,
//!   `_` and `\` in a prefix are plain bytes; no `LIKE`.
//! - several scopes ([`Driver::commit`]): `BEGIN`, then one statement per scope in sorted key
//!   order (so two commits never deadlock), every one of which must touch its row (an `UPDATE`
//!   or `DELETE … WHERE name = $1 AND version = $2 …`, an `INSERT … ON CONFLICT`, a
//!   `SELECT … FOR SHARE` for a scope only read, and for a scope that must stay absent an
//!   already expired placeholder row that holds its name until the end of the transaction and
//!   is swept later), sent together in one round trip; then
//!   `COMMIT`, or `ROLLBACK` on any miss. A warm commit of two scopes is two round trips.
//! - read many: one `SELECT … WHERE name = ANY($1)`.
//! - watching (contract rule 17): by default the watchers of a process read every watched
//!   scope every 100 ms, in one `SELECT … = ANY($1)` per 500. With `notify=true` a trigger on
//!   the table sends `pg_notify` (version and name) inside each writing transaction and one
//!   `LISTEN` connection per storage hears it, about a millisecond after the commit. Off by
//!   default because PostgreSQL serializes the commits of every transaction that notified:
//!   in the behavior suite, 16 tasks incrementing one scope through 4 storages then gave up
//!   after 100 conflicts, where without the trigger they all commit.
//! - expiry: by the server's clock (`now()`) in the same statement; every read filters expired
//!   rows; a sweep deletes them in bounded batches, once per minute across every process on the
//!   table (a row named `"\0mp-sweep"`, which no scope can be, records the last sweep), and
//!   never a row written again since it expired.
//!
//! # Errors
//!
//! I/O failures, a closed or terminated connection (`pg_terminate_backend`, SQLSTATE `57P01`),
//! class `08` and running out of time to get a connection are [`BackendKind::Connection`];
//! statement and lock timeouts, cancels, deadlocks (`57014`, `55P03`, `40P01`, `40001`) are
//! [`BackendKind::Timeout`]; disk full and other insufficient resources (class `53`) are
//! [`BackendKind::Full`]; insufficient privilege, refused logins, read-only transactions
//! (`42501`, `28000`, `28P01`, `25006`) are [`BackendKind::PermissionDenied`]. A connection that
//! failed is dropped from the pool and the next call gets a fresh one.
//!
//! [`BackendKind::Connection`]: crate::BackendKind::Connection
//! [`BackendKind::Timeout`]: crate::BackendKind::Timeout
//! [`BackendKind::Full`]: crate::BackendKind::Full
//! [`BackendKind::PermissionDenied`]: crate::BackendKind::PermissionDenied

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, QueueMode, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

use super::{
    Action, Capabilities, CasOutcome, CommitOutcome, Driver, Expiry, Op, Record, Revision, Write,
};
use crate::driver::net::ServerError;
use crate::{BackendKind, Error};
use pool::{Object, PgManager, Pool};

mod config;
mod error;
mod pool;
mod row;
mod sql;
mod watch;

use crate::driver::sql_rows::{check_key, prefix_end};
pub use config::PostgresConfig;
use error::{backend, connect_error};
use sql::Sql;
use watch::Trigger;
pub use watch::POLL_WITHOUT_TRIGGER;

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// The table used when the URL has no `table=` option.
pub const DEFAULT_TABLE: &str = "mp_scopes";

/// The longest wait for a connection from the pool, connecting included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections of the pool when the URL has no `pool_max=` option.
pub const DEFAULT_POOL_MAX: usize = 16;

/// The row that records the last sweep: a name no scope can have (names hold no NUL).
const SWEEP_ROW: &[u8] = b"\0mp-sweep";

/// How often one of the processes on a table deletes its expired rows, at most.
const SWEEP_EVERY_SECS: i64 = 60;

/// How many pooled connections found closed a call drops before it gives up on the pool.
const STALE_RETRIES: usize = 4;

/// The driver's name in errors.
const NAME: &str = "postgres";

/// A PostgreSQL table as a backend. Cheap to clone: clones share the pool.
///
/// Built by [`Storage::open`](crate::Storage::open) for `postgres://` and `postgresql://`
/// URLs, or by [`PostgresDriver::open`] (a URL) or [`PostgresDriver::connect`] (a
/// [`PostgresConfig`]) for use with [`Storage::with_driver`](crate::Storage::with_driver).
#[derive(Clone)]
pub struct PostgresDriver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The server's `host:port`, for errors and `Debug`.
    addr: String,
    table: String,
    sql: Sql,
    /// For the `LISTEN` connection of change streams.
    pg: tokio_postgres::Config,
    /// Whether writes notify watchers (option `notify`).
    trigger: Trigger,
}

impl fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDriver")
            .field("addr", &self.inner.addr)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// The parameters of one statement.
type Params<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

impl PostgresDriver {
    /// Connects to the server a `postgres://` URL names and creates the table if absent (see
    /// [`PostgresConfig`] for the options).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::sync::Arc;
    /// use mp_storage::driver::postgres::PostgresDriver;
    ///
    /// let driver =
    ///     PostgresDriver::open("postgres://postgres@127.0.0.1:5432/test?table=app").await?;
    /// let st = mp_storage::Storage::with_driver(Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<PostgresDriver, Error> {
        Self::connect(PostgresConfig::from_url(url)?).await
    }

    /// Connects to the server `config` names (within [`CONNECT_TIMEOUT`]), creates the table if
    /// absent and checks its columns.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::sync::Arc;
    /// use mp_storage::driver::postgres::{PostgresConfig, PostgresDriver};
    ///
    /// let config = PostgresConfig::new("127.0.0.1")
    ///     .user("postgres")
    ///     .database("test")
    ///     .table("app");
    /// let driver = PostgresDriver::connect(config).await?;
    /// let st = mp_storage::Storage::with_driver(Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: PostgresConfig) -> Result<PostgresDriver, Error> {
        config.check()?;
        let manager = Manager::from_config(
            config.pg_config(),
            NoTls,
            ManagerConfig {
                // A connection the server closed is known closed at once: no round trip.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The connection used last goes out first: a scope whose updates take turns (one
        // statement in flight at a time) keeps to one connection and one server backend, whose
        // caches are warm, instead of going round every connection of the pool (first in,
        // first out), which cost a hot scope a third of its rate with four processes on it.
        let pool = Pool::builder(PgManager(manager))
            .max_size(config.get_pool_max())
            .queue_mode(QueueMode::Lifo)
            .build()
            .map_err(|e| Error::backend_unsent(NAME, BackendKind::Other, e))?;
        let table = config.get_table().to_owned();
        let sql = Sql::new(&table);
        let addr = config.addr();
        match prepare_table(&pool, &addr, &sql).await {
            Ok(()) => {
                let trigger = if !config.get_notify() {
                    Trigger::Off
                } else {
                    match install_trigger(&pool, &addr, &table).await {
                        Ok(()) => Trigger::On,
                        Err(e) => {
                            tracing::warn!(table = %table, error = %e, "no watch trigger");
                            Trigger::Failed(e.to_string())
                        }
                    }
                };
                Ok(PostgresDriver {
                    inner: Arc::new(Inner {
                        pool,
                        addr,
                        table,
                        sql,
                        pg: config.pg_config(),
                        trigger,
                    }),
                })
            }
            Err(e) => {
                pool.close();
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

    /// A connection from the pool: one found closed (its backend terminated while it was idle)
    /// is dropped and another taken.
    async fn conn(&self) -> Result<Conn, Error> {
        for _ in 0..STALE_RETRIES {
            let client = get_conn(&self.inner.pool, &self.inner.addr).await?;
            if !client.is_closed() {
                return Ok(Conn::new(client));
            }
            drop(Object::take(client));
        }
        Ok(Conn::new(
            get_conn(&self.inner.pool, &self.inner.addr).await?,
        ))
    }

    /// A connection and `sql` prepared on it. A connection that turns out closed before
    /// anything was sent on it is dropped and another taken: nothing happened yet.
    async fn conn_for(&self, sql: &str) -> Result<(Conn, Statement), Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            let conn = self.conn().await?;
            let client = conn.client()?;
            match client.prepare_kept(sql).await {
                Ok(stmt) if !client.is_closed() || tries >= STALE_RETRIES => {
                    return Ok((conn, stmt))
                }
                Err(e) if !e.is_closed() || tries >= STALE_RETRIES => {
                    return Err(conn.fail(e).unsent_now())
                }
                // Closed: dropped from the pool (see Conn).
                Ok(_) | Err(_) => conn.poison(),
            }
        }
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        row::corrupt(self.inner.sql.table(), key, detail)
    }

    /// The record of `key` in `row`, from column `at` on.
    fn record(&self, key: &str, row: &Row, at: usize) -> Result<Record, Error> {
        row::record(self.inner.sql.table(), key, row, at)
    }

    async fn load_on(&self, conn: &Conn, key: &str) -> Result<Option<Record>, Error> {
        let stmt = prepared(conn, &self.inner.sql.select).await?;
        // At most one row: the name is the primary key.
        let row = conn
            .client()?
            .query_opt(&stmt, &[&key.as_bytes()])
            .await
            .map_err(|e| conn.fail(e))?;
        row.map(|r| self.record(key, &r, 0)).transpose()
    }

    /// The current records of `keys`, in their order, in one statement.
    async fn load_many_on(&self, conn: &Conn, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = prepared(conn, &self.inner.sql.select_many).await?;
        let names: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let rows = conn
            .client()?
            .query(&stmt, &[&names])
            .await
            .map_err(|e| conn.fail(e))?;
        let mut found: HashMap<&[u8], &Row> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let name: &[u8] = row::column(self.inner.sql.table(), "", row, 0, "name")?;
            found.insert(name, row);
        }
        keys.iter()
            .map(|k| {
                found
                    .get(k.as_bytes())
                    .map(|r| self.record(k, r, 1))
                    .transpose()
            })
            .collect()
    }

    /// The answer of a compare-and-swap statement: the new version, or the current record.
    async fn cas_answer(
        &self,
        conn: &Conn,
        key: &str,
        expected: Option<Revision>,
        rows: Vec<Row>,
    ) -> Result<CasOutcome, Error> {
        let table = self.inner.sql.table();
        let Some(row) = rows.first() else {
            return Ok(CasOutcome::Conflict(None));
        };
        let written: bool = row::column(table, key, row, 0, "written")?;
        if written {
            let version: i64 = row::column(table, key, row, 1, "version")?;
            let version = u64::try_from(version)
                .map_err(|_| self.corrupt(key, format!("version {version} is negative")))?;
            return Ok(CasOutcome::Committed(version));
        }
        // How long another claimant's reservation still holds the record, in µs (NULL: none).
        let held_us: Option<i64> = row::column(table, key, row, 7, "reserved")?;
        let reserved = held_us.is_some();
        let record = self.record(key, row, 1)?.with_reserved_for(
            held_us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        );
        // The statement that reserves when it loses says whether it did.
        if row.len() > 8 && row::column::<bool>(table, key, row, 8, "took")? {
            return Ok(CasOutcome::Reserved(record));
        }
        if let Some(revision) = expected {
            if revision.matches(&record) && !reserved {
                // The update waited for another transaction's write of the row and found it
                // changed; the record beside it is from before that write. Read it again.
                return Ok(CasOutcome::Conflict(self.load_on(conn, key).await?));
            }
        }
        Ok(CasOutcome::Conflict(Some(record)))
    }

    /// A several-scope commit in one transaction: `BEGIN` and one statement per op in sorted
    /// key order, sent together; then `COMMIT`, or `ROLLBACK` and the current records.
    async fn commit_on(&self, tx: &Conn, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        let sql = &self.inner.sql;
        let client = tx.client()?;
        let update = prepared(tx, &sql.update_plain).await?;
        let insert = prepared(tx, &sql.insert_plain).await?;
        let check = prepared(tx, &sql.check).await?;
        let hold = prepared(tx, &sql.hold_absent).await?;
        let delete = prepared(tx, &sql.delete_at).await?;
        prepared(tx, &sql.select_many).await?;

        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by(|&a, &b| ops[a].key.as_bytes().cmp(ops[b].key.as_bytes()));
        let mut statements: Vec<(&Statement, Params<'_>)> = Vec::with_capacity(ops.len());
        for &i in &order {
            let op = &ops[i];
            let name = op.key.as_bytes();
            statements.push(match (op.action, op.expected) {
                (Action::Write(w), Some(rev)) => (&update, update_params(name, rev, w)),
                (Action::Write(w), None) => (&insert, insert_params(name, w)),
                (Action::Check, Some(rev)) => (&check, at_params(name, rev)),
                (Action::Delete, Some(rev)) => (&delete, at_params(name, rev)),
                // Absent and to stay so: hold its name until the transaction ends.
                (Action::Check | Action::Delete, None) => (&hold, vec![Box::new(name)]),
            });
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> =
            statements.iter().map(|(_, p)| refs(p)).collect();
        // Until COMMIT or ROLLBACK, the connection is not to go back to the pool.
        tx.poison();
        // Each request is sent when first polled, and join! and join_all poll in order: BEGIN,
        // then the statements in key order, all in one round trip.
        let (began, results) = futures::join!(
            client.batch_execute("BEGIN"),
            futures::future::join_all(
                statements
                    .iter()
                    .zip(&params)
                    .map(|((stmt, _), params)| client.execute(*stmt, params))
            )
        );
        began.map_err(|e| tx.fail(e))?;
        let mut held = true;
        for result in results {
            match result {
                Ok(1) => {}
                Ok(_) => held = false,
                Err(e) => return Err(tx.fail(e)),
            }
        }
        if held {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| tx.fail(e))?;
            tx.cure();
            let versions = ops
                .iter()
                .map(|op| match op.action {
                    Action::Write(w) => Some(w.next_version(op.expected.map(|r| r.version))),
                    Action::Check | Action::Delete => None,
                })
                .collect();
            return Ok(CommitOutcome::Committed(versions));
        }
        let keys: Vec<&str> = ops.iter().map(|op| op.key).collect();
        let (rolled_back, current) = futures::join!(
            client.batch_execute("ROLLBACK"),
            self.load_many_on(tx, &keys)
        );
        rolled_back.map_err(|e| tx.fail(e))?;
        tx.cure();
        let current = current?;
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
            // Every revision held: another claimant's reservation (or a write that came and
            // went meanwhile) refused the writes.
            for (i, (op, record)) in ops.iter().zip(current).enumerate() {
                if matches!(op.action, Action::Write(_)) {
                    failed.push((i, record));
                }
            }
        }
        Ok(CommitOutcome::Conflict(failed))
    }
}

/// A connection from the pool, dropped from it (closed, never handed back) when it broke or
/// when it holds an open transaction: so that a dead connection is not taken again before the
/// pool notices, and a commit cancelled halfway leaves nothing open.
struct Conn {
    obj: Option<Object>,
    poisoned: AtomicBool,
}

impl Conn {
    fn new(obj: Object) -> Conn {
        Conn {
            obj: Some(obj),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Marks the connection as one not to hand back to the pool.
    fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }

    /// Marks the connection as fit for the pool again (its transaction ended).
    fn cure(&self) {
        self.poisoned.store(false, Ordering::Relaxed);
    }

    /// The error of a statement on this connection; one that lost the connection poisons it.
    fn fail(&self, e: tokio_postgres::Error) -> Error {
        let error = backend(e);
        if error.backend_kind() == Some(BackendKind::Connection) {
            self.poison();
        }
        error
    }

    /// The connection (set at creation, taken only when dropped).
    fn client(&self) -> Result<&Object, Error> {
        self.obj.as_ref().ok_or_else(|| {
            Error::backend_unsent(NAME, BackendKind::Other, "the connection is gone")
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if *self.poisoned.get_mut() {
            if let Some(obj) = self.obj.take() {
                // Detached from the pool and dropped: the connection closes, and the server
                // rolls the transaction back.
                drop(Object::take(obj));
            }
        }
    }
}

/// A statement prepared on `client`, from its cache after the first time. A failure here sent
/// no write.
async fn prepared(conn: &Conn, sql: &str) -> Result<Statement, Error> {
    conn.client()?
        .prepare_kept(sql)
        .await
        .map_err(|e| conn.fail(e).unsent_now())
}

/// The expiry parameters of the statements: kind (0 keep, 1 never, 2 after, 3 at), ms after,
/// ms at.
fn expiry_params(expiry: Expiry) -> (i32, i64, i64) {
    match expiry {
        Expiry::Keep => (0, 0, 0),
        Expiry::Never => (1, 0, 0),
        Expiry::After(d) => (2, i64::try_from(d.as_millis()).unwrap_or(i64::MAX), 0),
        Expiry::At(at) => (3, 0, big(at)),
    }
}

/// A `u64` as a `bigint`: versions stay far below 2^63; larger values saturate.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A claimant id as a `bigint`: its 64 bits, read as signed (only compared for equality).
fn claimant(c: u64) -> i64 {
    i64::from_be_bytes(c.to_be_bytes())
}

/// The last token of a revision as stored: 8 bytes, or none for a record without tokens.
fn last_token(revision: Revision) -> Vec<u8> {
    if revision.token == 0 {
        Vec::new()
    } else {
        revision.token.to_be_bytes().to_vec()
    }
}

/// Parameters of `update`/`update_plain`.
fn update_params<'a>(name: &'a [u8], revision: Revision, w: Write<'a>) -> Params<'a> {
    let (kind, after, at) = expiry_params(w.expiry);
    vec![
        Box::new(w.data),
        Box::new(i64::from(w.schema)),
        Box::new(w.meta),
        Box::new(kind),
        Box::new(after),
        Box::new(at),
        Box::new(w.token.to_be_bytes().to_vec()),
        Box::new(name),
        Box::new(big(revision.version)),
        Box::new(last_token(revision)),
        Box::new(claimant(w.claimant)),
    ]
}

/// A reservation's length in whole microseconds, at least one.
fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).max(1)
}

/// Parameters of `insert`/`insert_plain`/`upsert`.
fn insert_params<'a>(name: &'a [u8], w: Write<'a>) -> Params<'a> {
    let (kind, after, at) = expiry_params(w.expiry);
    vec![
        Box::new(name),
        Box::new(big(w.initial_version)),
        Box::new(i64::from(w.schema)),
        Box::new(w.data),
        Box::new(w.token.to_be_bytes().to_vec()),
        Box::new(w.meta),
        Box::new(kind),
        Box::new(after),
        Box::new(at),
    ]
}

/// Parameters of `check`/`delete_at`: the name at a revision, for nobody in particular.
fn at_params(name: &[u8], revision: Revision) -> Params<'_> {
    vec![
        Box::new(name),
        Box::new(big(revision.version)),
        Box::new(last_token(revision)),
        Box::new(0i64),
    ]
}

/// The parameters as `tokio-postgres` takes them.
fn refs<'p>(params: &'p Params<'_>) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Creates the table if absent, checks that it has our columns, and prepares the statements
/// on the first connection.
async fn prepare_table(pool: &Pool, addr: &str, sql: &Sql) -> Result<(), Error> {
    let client = get_conn(pool, addr).await?;
    match client.batch_execute(&sql.create).await {
        Ok(()) => {}
        // Made meanwhile by another process opening the same table.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("23505" | "42P07")) => {}
        Err(e) => return Err(backend(e)),
    }
    let foreign = |e: tokio_postgres::Error| match e.code().map(|c| c.code()) {
        // Undefined column, or a column of another type.
        Some("42703" | "42883" | "42804") => Error::backend(
            NAME,
            BackendKind::Other,
            format!(
                "table {} exists but is not an mp-storage table: {e}",
                sql.table()
            ),
        ),
        _ => backend(e),
    };
    // An existing table of another shape fails here, not on the first write.
    client.batch_execute(&sql.probe).await.map_err(foreign)?;
    for stmt in [
        &sql.select,
        &sql.update,
        &sql.update_reserving,
        &sql.insert,
        &sql.upsert,
        &sql.delete,
        &sql.select_many,
    ] {
        client.prepare_cached(stmt).await.map_err(foreign)?;
    }
    Ok(())
}

/// Creates the watch trigger of `table` when absent (see `watch.rs`).
async fn install_trigger(pool: &Pool, addr: &str, table: &str) -> Result<(), Error> {
    let client = get_conn(pool, addr).await?;
    watch::install(&client, table).await
}

/// A connection from the pool, within [`CONNECT_TIMEOUT`].
async fn get_conn(pool: &Pool, addr: &str) -> Result<Object, Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.get()).await {
        Ok(r) => r.map_err(|e| connect_error(e, addr)),
        // Nothing was sent while taking a connection: a write certainly did not happen.
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
impl Driver for PostgresDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_multi_key_commit()
            .with_expiry()
            .with_watch()
            .with_reserve_on_conflict()
    }

    fn changes(
        &self,
        watched: Arc<crate::driver::WatchSet>,
    ) -> Option<crate::driver::ChangeStream> {
        Some(watch::changes(
            Arc::new(self.clone()),
            self.inner.pg.clone(),
            self.inner.table.clone(),
            self.inner.addr.clone(),
            self.inner.trigger.clone(),
            watched,
        ))
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        check_key(key)?;
        let (conn, _) = self.conn_for(&self.inner.sql.select).await?;
        self.load_on(&conn, key).await
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        for key in keys {
            check_key(key)?;
        }
        let (conn, _) = self.conn_for(&self.inner.sql.select_many).await?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            out.extend(self.load_many_on(&conn, chunk).await?);
        }
        Ok(out)
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        check_key(key)?;
        let sql = &self.inner.sql;
        let name = key.as_bytes();
        let (statement, params) = match (expected, write.reserve) {
            (Some(revision), Some(ttl)) => {
                let mut params = update_params(name, revision, write);
                params.push(Box::new(micros(ttl)));
                (&sql.update_reserving, params)
            }
            (Some(revision), None) => (&sql.update, update_params(name, revision, write)),
            (None, _) => (&sql.insert, insert_params(name, write)),
        };
        let (conn, stmt) = self.conn_for(statement).await?;
        let client = conn.client()?;
        let rows = client
            .query(&stmt, &refs(&params))
            .await
            .map_err(|e| conn.fail(e))?;
        self.cas_answer(&conn, key, expected, rows).await
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        check_key(key)?;
        let (conn, stmt) = self.conn_for(&self.inner.sql.upsert).await?;
        let client = conn.client()?;
        let params = insert_params(key.as_bytes(), write);
        let rows = client
            .query(&stmt, &refs(&params))
            .await
            .map_err(|e| conn.fail(e))?;
        if let Some(row) = rows.first() {
            let version: i64 = row::column(self.inner.sql.table(), key, row, 0, "version")?;
            return u64::try_from(version)
                .map_err(|_| self.corrupt(key, format!("version {version} is negative")));
        }
        // Nothing written: the stored record is corrupt, and stays as it is.
        self.load_on(&conn, key).await?;
        Err(self.corrupt(key, "the record cannot be written over".to_owned()))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        let (conn, stmt) = self.conn_for(&self.inner.sql.delete).await?;
        let client = conn.client()?;
        // An expired row goes too, but did not exist as far as callers know.
        let rows = client
            .query(&stmt, &[&key.as_bytes()])
            .await
            .map_err(|e| conn.fail(e))?;
        let mut existed = false;
        for row in &rows {
            existed |= row::column::<bool>(self.inner.sql.table(), key, row, 0, "live")?;
        }
        Ok(existed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let sql = &self.inner.sql;
        let start = prefix.as_bytes();
        let end = prefix_end(start);
        let (conn, stmt) = self
            .conn_for(match end {
                Some(_) => &sql.list_range,
                None => &sql.list_from,
            })
            .await?;
        let client = conn.client()?;
        let rows = match &end {
            Some(end) => client.query(&stmt, &[&start, &end.as_slice()]).await,
            None => client.query(&stmt, &[&start]).await,
        }
        .map_err(|e| conn.fail(e))?;
        let mut names = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw: Vec<u8> = row::column(sql.table(), prefix, row, 0, "name")?;
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
        let tx = self.conn().await?;
        let outcome = self.commit_on(&tx, ops).await;
        if outcome.is_err() && tx.poisoned.load(Ordering::Relaxed) {
            // Hand the connection back without the transaction, or not at all (see Conn).
            if let Ok(client) = tx.client() {
                let rolled_back =
                    tokio::time::timeout(CONNECT_TIMEOUT, client.batch_execute("ROLLBACK")).await;
                if matches!(rolled_back, Ok(Ok(()))) {
                    tx.cure();
                }
            }
        }
        outcome
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        check_key(key)?;
        let (kind, after, at) = expiry_params(expiry);
        let (conn, stmt) = self.conn_for(&self.inner.sql.expire).await?;
        let client = conn.client()?;
        let n = client
            .execute(&stmt, &[&kind, &after, &at, &key.as_bytes()])
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(n == 1)
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        let sql = &self.inner.sql;
        // One process sweeps per interval: the one that moves the sweep row's time on.
        let (conn, stmt) = self.conn_for(&sql.sweep_claim).await?;
        let client = conn.client()?;
        let due = client
            .execute(&stmt, &[&SWEEP_ROW, &SWEEP_EVERY_SECS])
            .await
            .map_err(|e| conn.fail(e))?;
        if due == 0 {
            return Ok(0);
        }
        let stmt = prepared(&conn, &sql.sweep).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = client
            .execute(&stmt, &[&limit])
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn reserve(&self, key: &str, claimant_id: u64, ttl: Duration) -> Result<bool, Error> {
        check_key(key)?;
        let micros = micros(ttl);
        let (conn, stmt) = self.conn_for(&self.inner.sql.reserve).await?;
        let client = conn.client()?;
        // A reservation only paces writers, and expires by itself: its commit need not wait for
        // the WAL to reach the disk (`synchronous_commit` off for this one transaction; a crash
        // may forget it, which costs a turn, never data). The three statements go in one round
        // trip: each is sent when first polled, in order, on this connection of our own.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&claimant(claimant_id), &micros, &key.as_bytes()];
        let (begun, updated, committed) = futures::join!(
            client.batch_execute("BEGIN; SET LOCAL synchronous_commit TO off"),
            client.execute(&stmt, &params),
            client.batch_execute("COMMIT"),
        );
        let n = begun
            .and(updated)
            .and_then(|n| committed.map(|()| n))
            .map_err(|e| conn.fail(e))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_options_are_refused_without_connecting() {
        for url in [
            "postgres://u@127.0.0.1:1/test?table=a%22b",
            "postgres://u@127.0.0.1:1/test?table=",
            "postgres://u@127.0.0.1:1/test?no_such_option=1",
        ] {
            match PostgresDriver::open(url).await {
                Err(Error::InvalidUrl { .. }) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        let e = PostgresDriver::connect(PostgresConfig::new("127.0.0.1").table("x-y"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_server() {
        let e = PostgresDriver::connect(PostgresConfig::new("127.0.0.1").port(1).user("u"))
            .await
            .unwrap_err();
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert!(
            e.to_string()
                .contains("cannot connect to 127.0.0.1:1: connection refused"),
            "{e}"
        );
    }

    #[test]
    fn parameters() {
        assert_eq!(claimant(u64::MAX), -1);
        assert_eq!(claimant(5), 5);
        assert_eq!(big(u64::MAX), i64::MAX);
        assert_eq!(
            last_token(Revision {
                version: 1,
                token: 0
            }),
            Vec::<u8>::new()
        );
        assert_eq!(expiry_params(Expiry::At(7)), (3, 0, 7));
        assert_eq!(
            expiry_params(Expiry::After(Duration::from_secs(2))),
            (2, 2000, 0)
        );
    }
}
