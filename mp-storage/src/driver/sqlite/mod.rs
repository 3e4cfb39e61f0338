//! `sqlite:<path>`: one row per scope in a table of one SQLite database file (WAL mode), safe
//! across the processes of one host, with SQLite compiled in (nothing to install).
//!
//! # URLs
//!
//! | URL form | database file |
//! |---|---|
//! | `sqlite:./rel.db`, `sqlite:rel.db` | relative to the working directory |
//! | `sqlite:/abs.db`, `sqlite:///abs.db`, `sqlite://localhost/abs.db` | absolute |
//!
//! The path is percent-decoded (`%20` for a space, `%3F` for `?`); a host other than
//! `localhost` is refused. The file and its directory are created if absent.
//! [`SqliteOptions::from_url`] reads a URL without opening it; [`SqliteDriver::open`] takes the
//! path and [`SqliteOptions`] built in code.
//!
//! | option | default | [`SqliteOptions`] | meaning |
//! |---|---|---|---|
//! | `synchronous` | `full` | [`synchronous`](SqliteOptions::synchronous) | `full`: every commit is fsynced before any of its callers is answered; `normal`: the log is fsynced at checkpoints only (a power loss may lose the last commits); `off`: no fsync (tests and development) |
//! | `fsync` | `true` | [`fsync`](SqliteOptions::fsync) | `false` is `synchronous=off`, like the file driver's `fsync=false`: still atomic and safe against a crash of the process, but a power loss may lose recent commits or corrupt the database |
//! | `busy_timeout` | `30s` | [`busy_timeout`](SqliteOptions::busy_timeout) | the longest a call waits for a lock another process holds on the database; then an unsent [`Timeout`](crate::BackendKind::Timeout) error, nothing written |
//! | `table` | `mp_scopes` | [`table`](SqliteOptions::table) | the table, `[A-Za-z0-9_]{1,64}`; created if absent |
//!
//! # Table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "mp_scopes" (
//!   name       BLOB NOT NULL PRIMARY KEY, -- the key, byte for byte
//!   version    INTEGER NOT NULL,
//!   schema_v   INTEGER NOT NULL,
//!   data       BLOB NOT NULL,             -- the JSON bytes as given
//!   tokens     BLOB NOT NULL,             -- last 16 commit tokens, 8 bytes each, big-endian
//!   meta       BLOB,                      -- the engine's notes, NULL when empty
//!   res_by     INTEGER,                   -- reservation: claimant
//!   res_until  INTEGER,                   -- reservation: until, ms since 1970
//!   expires_at INTEGER                    -- ms since 1970, NULL: never
//! ) WITHOUT ROWID
//! ```
//!
//! Names are bound as blobs and compared byte-wise, so `Alice` and `alice`, or `a` and `a `,
//! are different rows, and `list` is a range `name >= prefix AND name < successor(prefix)`.
//! Every value is a bound parameter; the table name, checked as an identifier, is the only
//! thing formatted into SQL. A small scope takes well under 200 bytes of the file (the bench's
//! `fill` scenario measures it). A table `<table>_sweep` of one row records the last sweep.
//!
//! # Group commit
//!
//! SQLite lets one connection write at a time and costs an fsync per transaction. So every
//! write of a process to a database (compare-and-swap, several-scope commit, put, delete,
//! expire, reserve, sweep) goes to one writer thread per database per process (every
//! [`SqliteDriver`] of that file and options shares it). The writer takes every job waiting at
//! that moment, up to 1,024, opens one `BEGIN IMMEDIATE` transaction, runs each job under a
//! savepoint of its own (it reads the row, checks the revision and reservation, and writes with
//! `UPDATE … WHERE name = ? AND version = ?`; a several-scope commit checks all of its rows
//! before it writes any), records each job's own outcome (committed, or a conflict with the
//! current record; a job that fails is rolled back to its savepoint without undoing its
//! neighbours), then commits once: one fsync for the whole batch. Each caller gets its answer
//! only after that commit is durable.
//!
//! Reads (`load`, `load_many`, `list`) run on connections of their own, on
//! `tokio::task::spawn_blocking`, and never wait for the writer: WAL lets them read the last
//! commit while a write is under way.
//!
//! # Several processes
//!
//! Processes share the file through SQLite's own locking: each process's writer waits (up to
//! `busy_timeout`) for the write lock another process holds. A lock held past it is an unsent
//! [`Timeout`](crate::BackendKind::Timeout) error for every job of the batch: nothing of it was
//! written, and calling again is safe ([`Error::is_retryable`]). A killed process leaves no
//! lock behind: the next writer rolls back a transaction it left unfinished.
//!
//! # Expiry and reservations
//!
//! Expiry is by this machine's clock: reads leave out rows whose `expires_at` has passed, and a
//! write treats such a row as absent. Every minute or so one process deletes expired rows, at
//! most 1,000 per transaction ([`Driver::sweep`]); a scope written again after it expired has
//! a new expiry and is never deleted by it. Reservations (contract rule 13) are kept in the
//! row, by the same clock.
//!
//! # Errors
//!
//! A lock held past `busy_timeout` (`SQLITE_BUSY`, `SQLITE_LOCKED`) is an unsent
//! [`Timeout`](crate::BackendKind::Timeout); a full disk (`SQLITE_FULL`) is
//! [`Full`](crate::BackendKind::Full), with nothing of the batch written; a read-only file or
//! refused access is [`PermissionDenied`](crate::BackendKind::PermissionDenied); an I/O error
//! while committing leaves the outcome unknown
//! ([`Connection`](crate::BackendKind::Connection), settled by the engine from the commit
//! tokens); anything else is [`Other`](crate::BackendKind::Other). A row that cannot be decoded
//! is [`Error::Corrupt`] and is never written over; `delete` removes it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use super::{
    now_ms, Action, Capabilities, CasOutcome, ChangeStream, CommitOutcome, Driver, Expiry, Op,
    Record, Revision, WatchSet, Write,
};
use crate::{BackendKind, Error};

mod config;
mod error;
mod row;
mod watch;
mod writer;

use crate::driver::sql_rows::prefix_end;
pub use config::{SqliteOptions, Synchronous, DEFAULT_BUSY_TIMEOUT, DEFAULT_TABLE};
use error::{is_busy, sql_error, unsent};
use row::{load_stored, ms_i64, stored, Sql};
pub use watch::WATCH_POLL;
use writer::{Done, Job, OwnedAction, OwnedOp, OwnedWrite, Work};

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["sqlite"];

/// The driver's name in errors.
const NAME: &str = "sqlite";

/// The most names one read statement of `load_many` binds.
const NAMES_PER_SELECT: usize = 500;

/// Idle read connections kept per database.
const IDLE_READERS: usize = 16;

/// A SQLite database file as a backend. Cheap to clone: clones share the writer and the read
/// connections, as do all drivers of one file and options in a process.
///
/// Built by [`Storage::open`](crate::Storage::open) for `sqlite:` URLs, or by
/// [`SqliteDriver::open`] for use with [`Storage::with_driver`](crate::Storage::with_driver).
#[derive(Clone)]
pub struct SqliteDriver {
    shared: Arc<Shared>,
}

/// What a process's writer of a database has committed: see [`SqliteDriver::writer_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed (each one fsync with `synchronous=full`).
    pub transactions: u64,
    /// Jobs answered from those transactions.
    pub jobs: u64,
}

/// One database of the process: its writer and its idle read connections.
struct Shared {
    /// The database file as given, for `Debug` and [`SqliteDriver::path`].
    path: PathBuf,
    /// The same, absolute: read connections open it (the working directory may change).
    canonical: PathBuf,
    options: SqliteOptions,
    sql: Arc<Sql>,
    writer: mpsc::Sender<Job>,
    counters: Arc<writer::Counters>,
    readers: Mutex<Vec<Connection>>,
    /// The change streams of the process on this database (contract rule 17).
    feeds: crate::driver::Feeds,
}

impl fmt::Debug for SqliteDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDriver")
            .field("path", &self.shared.path)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// The open databases of the process, by canonical path and options; weak, so a database's
/// writer ends with its last driver.
static OPEN: LazyLock<Mutex<OpenDatabases>> = LazyLock::new(Mutex::default);

/// The databases open in the process, by canonical path and options.
type OpenDatabases = HashMap<(PathBuf, SqliteOptions), Weak<Shared>>;

impl SqliteDriver {
    /// Opens the database a `sqlite:` URL names (see the [module docs](self)).
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::sync::Arc;
    /// use mp_storage::driver::sqlite::SqliteDriver;
    ///
    /// # let dir = std::env::temp_dir().join(format!("mp-doc-sqlite-{}", std::process::id()));
    /// # let url = format!("sqlite:{}/app.db?fsync=false", dir.display());
    /// let driver = SqliteDriver::open(&url).await?; // url: "sqlite:./app.db", say
    /// let st = mp_storage::Storage::with_driver(Arc::new(driver))?;
    /// st.set("n", &1u64).await?;
    /// assert_eq!(st.get::<u64>("n").await?, Some(1));
    /// # drop(st); let _ = std::fs::remove_dir_all(dir);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn open(url: &str) -> Result<SqliteDriver, Error> {
        let (path, options) = SqliteOptions::from_url(url)?;
        Self::open_path(path, options).await
    }

    /// Opens (creating if absent) the database file `path` with `options`: switches it to WAL,
    /// creates the table if absent and checks its columns, and starts the writer thread (or
    /// joins the one this process has for that file and options).
    pub async fn open_path(
        path: impl Into<PathBuf>,
        options: SqliteOptions,
    ) -> Result<SqliteDriver, Error> {
        options.check()?;
        let path = path.into();
        let shared = tokio::task::spawn_blocking(move || open_shared(path, options))
            .await
            .map_err(|e| Error::backend_unsent(NAME, BackendKind::Other, e))??;
        Ok(SqliteDriver { shared })
    }

    /// The database file, as given.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The options the driver was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.shared.options
    }

    /// What this process's writer of the database has committed so far: transactions, and the
    /// jobs (writes, several-scope commits, deletes, …) they held. Jobs per transaction is the
    /// batching that group commit achieved.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        WriterStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
        }
    }

    /// Copies the write-ahead log into the database file and truncates the log (SQLite's
    /// `wal_checkpoint(TRUNCATE)`), between two of the writer's transactions; returns whether
    /// it completed (readers of other processes can hold part of the log back). SQLite
    /// checkpoints by itself as the log grows; this is for measuring the file or copying it.
    pub async fn checkpoint(&self) -> Result<bool, Error> {
        let done = self.submit(Work::Checkpoint).await?;
        expect(done, |d| match d {
            Done::Flag(f) => Some(f),
            _ => None,
        })
    }

    /// Sends `work` to the writer and waits for its answer (given once the commit is durable).
    async fn submit(&self, work: Work) -> Result<Done, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared.writer.send(Job { work, reply }).map_err(|_| {
            Error::backend_unsent(NAME, BackendKind::Other, "the writer thread has stopped")
        })?;
        answer.await.map_err(|_| {
            Error::backend(
                NAME,
                BackendKind::Connection,
                "the writer thread stopped before answering",
            )
        })?
    }

    /// Runs `f` on a read connection, on a blocking thread.
    async fn read<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &Shared) -> Result<R, Error> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.reader()?;
            let out = f(&conn, &shared);
            shared.give_back(conn);
            out
        })
        .await
        .map_err(|e| Error::backend_unsent(NAME, BackendKind::Other, e))?
    }
}

impl Shared {
    /// An idle read connection, or a new one.
    fn reader(&self) -> Result<Connection, Error> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = connect(&self.canonical, self.options.busy_timeout, false)?;
                conn.pragma_update(None, "query_only", true)
                    .map_err(unsent)?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }

    fn table(&self) -> &str {
        &self.options.table
    }
}

/// A connection to `path` (created if absent when `create`), waiting up to `busy` for locks.
fn connect(path: &Path, busy: Duration, create: bool) -> Result<Connection, Error> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        Error::backend_unsent(
            NAME,
            error::kind(&e),
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    conn.busy_timeout(busy).map_err(unsent)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The process's writer and readers for `path` and `options`: the live ones, or new ones.
fn open_shared(path: PathBuf, options: SqliteOptions) -> Result<Arc<Shared>, Error> {
    // Opens of one process are serialized, so that one file gets one writer.
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(canonical) = std::fs::canonicalize(&path) {
        if let Some(shared) = open
            .get(&(canonical, options.clone()))
            .and_then(Weak::upgrade)
        {
            return Ok(shared);
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::backend_unsent(
                NAME,
                error::io_kind(&e),
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
    }
    let conn = connect(&path, options.busy_timeout, true)?;
    let sql = Arc::new(Sql::new(&options.table));
    prepare(&conn, &sql, &path, &options)?;
    let canonical = std::fs::canonicalize(&path).map_err(|e| {
        Error::backend_unsent(
            NAME,
            BackendKind::Other,
            format!("cannot resolve {}: {e}", path.display()),
        )
    })?;
    let counters = Arc::new(writer::Counters::default());
    let writer = writer::spawn(
        conn,
        sql.clone(),
        options.table.clone(),
        counters.clone(),
        options.busy_timeout,
    )
    .map_err(|e| {
        Error::backend_unsent(
            NAME,
            BackendKind::Other,
            format!("cannot start the writer thread: {e}"),
        )
    })?;
    let shared = Arc::new(Shared {
        path,
        canonical: canonical.clone(),
        options: options.clone(),
        sql,
        writer,
        counters,
        readers: Mutex::new(Vec::new()),
        feeds: crate::driver::Feeds::default(),
    });
    open.retain(|_, s| s.strong_count() > 0);
    open.insert((canonical, options), Arc::downgrade(&shared));
    Ok(shared)
}

/// Switches the database to WAL, sets the writer's durability, creates the tables if absent
/// and checks the columns. Another process opening the same new file at the same moment may
/// hold the lock briefly: each step is tried again until the busy timeout.
fn prepare(
    conn: &Connection,
    sql: &Sql,
    path: &Path,
    options: &SqliteOptions,
) -> Result<(), Error> {
    let until = Instant::now() + options.busy_timeout;
    let step = |f: &dyn Fn() -> rusqlite::Result<()>| -> Result<(), Error> {
        loop {
            match f() {
                Ok(()) => return Ok(()),
                Err(e) if is_busy(&e) && Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::backend_unsent(
                        NAME,
                        error::kind(&e),
                        format!("cannot prepare {}: {e}", path.display()),
                    ))
                }
            }
        }
    };
    step(&|| {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            Ok(())
        } else {
            Err(rusqlite::Error::InvalidParameterName(format!(
                "the database stays in journal mode {mode}, not WAL"
            )))
        }
    })?;
    step(&|| conn.pragma_update(None, "synchronous", options.synchronous.pragma()))?;
    // Keep the log from staying large after a burst.
    step(&|| conn.pragma_update(None, "journal_size_limit", 64i64 << 20))?;
    step(&|| conn.execute_batch(&sql.create))?;
    step(&|| conn.execute_batch(&sql.create_sweep))?;
    conn.prepare(&sql.probe).map(|_| ()).map_err(|e| {
        Error::backend(
            NAME,
            BackendKind::Other,
            format!(
                "table `{}` in {} exists but is not an mp-storage table: {e}",
                options.table,
                path.display()
            ),
        )
    })
}

/// The live record of `key`, read on `conn`.
fn load_on(conn: &Connection, shared: &Shared, key: &str) -> Result<Option<Record>, Error> {
    let now = now_ms();
    Ok(load_stored(conn, &shared.sql, shared.table(), key)?
        .filter(|s| s.is_live(now))
        .map(|s| s.record))
}

/// The live records of `keys`, in their order, read in one transaction on `conn`.
fn load_many_on(
    conn: &Connection,
    shared: &Shared,
    keys: &[String],
) -> Result<Vec<Option<Record>>, Error> {
    let now = now_ms();
    let mut found: HashMap<Vec<u8>, Record> = HashMap::with_capacity(keys.len());
    conn.execute_batch("BEGIN").map_err(sql_error)?;
    let read = (|| {
        for chunk in keys.chunks(NAMES_PER_SELECT) {
            let mut stmt = conn
                .prepare_cached(&shared.sql.select_many(chunk.len()))
                .map_err(sql_error)?;
            let params = rusqlite::params_from_iter(chunk.iter().map(|k| k.as_bytes()));
            let mut rows = stmt.query(params).map_err(sql_error)?;
            while let Some(row) = rows.next().map_err(sql_error)? {
                let name: Vec<u8> = row.get(0).map_err(sql_error)?;
                let key = String::from_utf8_lossy(&name).into_owned();
                let s = stored(shared.table(), &key, row, 1)?;
                if s.is_live(now) {
                    found.insert(name, s.record);
                }
            }
        }
        Ok(())
    })();
    let _ = conn.execute_batch("COMMIT");
    read?;
    Ok(keys.iter().map(|k| found.remove(k.as_bytes())).collect())
}

/// The live names that start with `prefix`, read on `conn`.
fn list_on(conn: &Connection, shared: &Shared, prefix: &str) -> Result<Vec<String>, Error> {
    let now = ms_i64(now_ms());
    let start = prefix.as_bytes();
    let end = prefix_end(start);
    let stmt_sql = if end.is_some() {
        &shared.sql.list_range
    } else {
        &shared.sql.list_from
    };
    let mut stmt = conn.prepare_cached(stmt_sql).map_err(sql_error)?;
    let mut rows = match &end {
        Some(end) => stmt.query(rusqlite::params![now, start, end]),
        None => stmt.query(rusqlite::params![now, start]),
    }
    .map_err(sql_error)?;
    let mut names = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let raw: Vec<u8> = row.get(0).map_err(sql_error)?;
        let name = String::from_utf8(raw).map_err(|e| {
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            row::corrupt(shared.table(), &shown, "the name is not UTF-8".to_owned())
        })?;
        if name.as_bytes().starts_with(start) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The answer of the writer as `T`, or an error for an answer of another kind (never sent).
fn expect<T>(done: Done, f: impl FnOnce(Done) -> Option<T>) -> Result<T, Error> {
    f(done).ok_or_else(|| {
        Error::backend(
            NAME,
            BackendKind::Other,
            "the writer answered with another kind of result",
        )
    })
}

#[async_trait]
impl Driver for SqliteDriver {
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

    fn changes(&self, watched: Arc<WatchSet>) -> Option<ChangeStream> {
        Some(watch::changes(self, watched))
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let key = key.to_owned();
        self.read(move |conn, shared| load_on(conn, shared, &key))
            .await
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.read(move |conn, shared| load_many_on(conn, shared, &keys))
            .await
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        let changed: Vec<String> = if self.shared.feeds.is_empty() {
            Vec::new()
        } else {
            ops.iter()
                .filter(|op| !matches!(op.action, Action::Check))
                .map(|op| op.key.to_owned())
                .collect()
        };
        let ops = ops
            .iter()
            .map(|op| OwnedOp {
                key: op.key.to_owned(),
                expected: op.expected,
                action: OwnedAction::new(&op.action),
            })
            .collect();
        let done = self.submit(Work::Commit(ops)).await;
        let outcome = done.and_then(|done| {
            expect(done, |d| match d {
                Done::Commit(c) => Some(c),
                _ => None,
            })
        });
        // Committed, or maybe (a lost outcome): the watchers read again either way.
        if !matches!(outcome, Ok(CommitOutcome::Conflict(_))) {
            for key in &changed {
                self.shared.feeds.changed(key, None);
            }
        }
        outcome
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        let op = OwnedOp {
            key: key.to_owned(),
            expected,
            action: OwnedAction::Write(OwnedWrite::new(&write)),
        };
        let done = self.submit(Work::Commit(vec![op])).await;
        if !matches!(
            done,
            Ok(Done::Commit(CommitOutcome::Conflict(_)) | Done::Reserved(_))
        ) {
            self.shared.feeds.changed(key, None);
        }
        let done = done?;
        if let Done::Reserved(record) = done {
            return Ok(CasOutcome::Reserved(record));
        }
        match expect(done, |d| match d {
            Done::Commit(c) => Some(c),
            _ => None,
        })? {
            CommitOutcome::Committed(v) => match v.first() {
                Some(Some(v)) => Ok(CasOutcome::Committed(*v)),
                _ => Err(Error::backend(
                    NAME,
                    BackendKind::Other,
                    "a committed write without a version",
                )),
            },
            CommitOutcome::Conflict(mut failed) => {
                Ok(CasOutcome::Conflict(failed.pop().and_then(|(_, r)| r)))
            }
        }
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        let done = self
            .submit(Work::Put(key.to_owned(), OwnedWrite::new(&write)))
            .await;
        self.shared.feeds.changed(key, None);
        let done = done?;
        expect(done, |d| match d {
            Done::Version(v) => Some(v),
            _ => None,
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let done = self.submit(Work::Delete(key.to_owned())).await;
        self.shared.feeds.changed(key, None);
        let done = done?;
        expect(done, |d| match d {
            Done::Flag(f) => Some(f),
            _ => None,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let prefix = prefix.to_owned();
        self.read(move |conn, shared| list_on(conn, shared, &prefix))
            .await
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let done = self.submit(Work::Expire(key.to_owned(), expiry)).await;
        self.shared.feeds.changed(key, None);
        let done = done?;
        expect(done, |d| match d {
            Done::Flag(f) => Some(f),
            _ => None,
        })
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        let done = self.submit(Work::Sweep(limit)).await?;
        expect(done, |d| match d {
            Done::Count(n) => Some(n),
            _ => None,
        })
    }

    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        let done = self
            .submit(Work::Reserve(key.to_owned(), claimant, ttl))
            .await?;
        expect(done, |d| match d {
            Done::Flag(f) => Some(f),
            _ => None,
        })
    }
}
