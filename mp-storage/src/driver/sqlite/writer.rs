//! The writer: one thread per database per process that commits every write waiting at that
//! moment in one transaction (group commit, see the [module docs](super#group-commit)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::error::{is_busy, kind, sql_error, unsent};
use super::row::{bits, load_stored, ms_i64, Sql, Stored};
use super::NAME;
use crate::driver::sql_rows::token_bytes;
use crate::driver::{
    now_ms, Action, CommitOutcome, Expiry, Record, Revision, Write, RECENT_TOKENS,
};
use crate::{BackendKind, Error};

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 1024;

/// The longest the writer waits for the callers of its last batch to come back.
const MAX_LINGER: Duration = Duration::from_millis(1);

thread_local! {
    /// The writer thread's busy timeout, and when its current wait for a lock began.
    static BUSY_TIMEOUT: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    static BUSY_SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler of the writer: called while another connection holds the lock,
/// `count` times so far; sleeps a short, jittered while (50 µs doubling up to 500 µs) and says
/// whether to try again (until the busy timeout has passed since the first call). A process
/// whose writes follow each other takes the lock again soon after it commits, so a waiter that
/// slept up to 2 ms saw p99 latencies of 2.6–4.0× one process alone with 2 and 4 processes on
/// one scope; at 500 µs 1.7–2.5× (`mp-bench --only fairness`; at 200 µs more conflicts cost
/// throughput, 0.73–0.99×).
fn wait_for_lock(count: i32) -> bool {
    let now = Instant::now();
    if count == 0 {
        BUSY_SINCE.set(Some(now));
    }
    let since = BUSY_SINCE.get().unwrap_or(now);
    if now.duration_since(since) >= BUSY_TIMEOUT.get() {
        return false;
    }
    let step = 50u64 << count.clamp(0, 6);
    let micros = rand::random_range(step / 2..=step).min(500);
    std::thread::sleep(Duration::from_micros(micros));
    true
}

/// Moves every job waiting now into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// How often one of the processes on a database deletes expired rows, at most (ms).
const SWEEP_EVERY_MS: i64 = 60_000;

/// An owned [`Write`], to cross to the writer thread.
#[derive(Clone, Debug)]
pub(super) struct OwnedWrite {
    schema: u32,
    data: Vec<u8>,
    token: u64,
    initial_version: u64,
    meta: Vec<u8>,
    claimant: u64,
    expiry: Expiry,
    reserve: Option<Duration>,
}

impl OwnedWrite {
    pub(super) fn new(w: &Write<'_>) -> OwnedWrite {
        OwnedWrite {
            schema: w.schema,
            data: w.data.to_vec(),
            token: w.token,
            initial_version: w.initial_version,
            meta: w.meta.to_vec(),
            claimant: w.claimant,
            expiry: w.expiry,
            reserve: w.reserve,
        }
    }

    fn borrow(&self) -> Write<'_> {
        Write::new(self.schema, &self.data, self.token, self.initial_version)
            .with_meta(&self.meta)
            .with_claimant(self.claimant)
            .with_expiry(self.expiry)
    }
}

/// An owned op of a commit.
#[derive(Clone, Debug)]
pub(super) struct OwnedOp {
    pub key: String,
    pub expected: Option<Revision>,
    /// `None`: a check; `Some(None)`: a delete; `Some(Some(w))`: a write.
    pub action: OwnedAction,
}

/// What an [`OwnedOp`] does.
#[derive(Clone, Debug)]
pub(super) enum OwnedAction {
    Check,
    Write(OwnedWrite),
    Delete,
}

impl OwnedAction {
    pub(super) fn new(a: &Action<'_>) -> OwnedAction {
        match a {
            Action::Check => OwnedAction::Check,
            Action::Write(w) => OwnedAction::Write(OwnedWrite::new(w)),
            Action::Delete => OwnedAction::Delete,
        }
    }
}

/// What a job asks of the writer.
#[derive(Debug)]
pub(super) enum Work {
    /// A commit of one or several keys, all or nothing (a compare-and-swap is one op).
    Commit(Vec<OwnedOp>),
    Put(String, OwnedWrite),
    Delete(String),
    Expire(String, Expiry),
    Reserve(String, u64, Duration),
    Sweep(usize),
    /// Copies the log into the database file and truncates it (outside the batch's
    /// transaction).
    Checkpoint,
}

/// The writer's answer to a job.
#[derive(Debug)]
pub(super) enum Done {
    Commit(CommitOutcome),
    /// A compare-and-swap lost and reserved the record it returns (contract rule 13).
    Reserved(Record),
    Version(u64),
    Flag(bool),
    Count(usize),
}

/// A job and where its answer goes.
pub(super) struct Job {
    pub work: Work,
    pub reply: tokio::sync::oneshot::Sender<Result<Done, Error>>,
}

/// What the writer has done so far: see [`SqliteDriver::writer_stats`](super::SqliteDriver::writer_stats).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub transactions: AtomicU64,
    pub jobs: AtomicU64,
}

/// Starts the writer thread on `conn`; it ends, closing the connection, once every sender of
/// the returned channel is dropped and the jobs sent are answered.
pub(super) fn spawn(
    conn: Connection,
    sql: Arc<Sql>,
    table: String,
    counters: Arc<Counters>,
    busy_timeout: Duration,
) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("mp-sqlite-writer".to_owned())
        .spawn(move || {
            BUSY_TIMEOUT.set(busy_timeout);
            // Short waits for another process's lock (SQLite's own handler sleeps up to 100 ms
            // a time, long enough for the holder to take the lock again and again).
            let _ = conn.busy_handler(Some(wait_for_lock));
            let mut w = Writer {
                conn,
                sql,
                table,
                sweeping: false,
                counters,
            };
            let mut batch = Vec::new();
            // The size of the last batch, and how long its commit took.
            let mut last = (1usize, Duration::ZERO);
            while let Ok(first) = rx.recv() {
                batch.push(first);
                drain(&rx, &mut batch);
                // The callers of the last batch are still coming back with their next writes:
                // wait a little for them (at most half a commit), so that they ride one commit
                // instead of splitting into two groups that take turns.
                let until = Instant::now() + (last.1 / 2).min(MAX_LINGER);
                while batch.len() < last.0.min(MAX_BATCH) {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                drain(&rx, &mut batch);
                // A checkpoint runs on its own, between transactions.
                let checkpoints: Vec<Job> = {
                    let (c, rest): (Vec<Job>, Vec<Job>) = batch
                        .drain(..)
                        .partition(|j| matches!(j.work, Work::Checkpoint));
                    batch = rest;
                    c
                };
                if !batch.is_empty() {
                    let jobs = batch.len();
                    let took = w.run_batch(&mut batch);
                    last = (jobs, took);
                }
                for job in checkpoints {
                    let r = w
                        .conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map_err(sql_error)
                        .map(|busy| Done::Flag(busy == 0));
                    let _ = job.reply.send(r);
                }
            }
        })?;
    Ok(tx)
}

struct Writer {
    conn: Connection,
    sql: Arc<Sql>,
    table: String,
    /// The last sweep deleted a full batch: the next goes on without waiting for its turn.
    sweeping: bool,
    counters: Arc<Counters>,
}

impl Writer {
    /// Runs `batch` in one transaction, each job under a savepoint of its own (so one job's
    /// failure undoes only its own writes), commits once, then answers every job. Returns how
    /// long the commit took (zero when it did not happen).
    fn run_batch(&mut self, batch: &mut Vec<Job>) -> Duration {
        if let Err(e) = self.exec("BEGIN IMMEDIATE") {
            let (k, msg) = (kind(&e), unsent(e).to_string());
            for job in batch.drain(..) {
                let _ = job
                    .reply
                    .send(Err(Error::backend_unsent(NAME, k, msg.clone())));
            }
            return Duration::ZERO;
        }
        let mut results: Vec<Result<Done, Error>> = Vec::with_capacity(batch.len());
        for job in batch.iter() {
            if let Err(e) = self.exec("SAVEPOINT job") {
                self.abort(batch, results, sql_error(e));
                return Duration::ZERO;
            }
            match self.work(&job.work) {
                Ok(done) => {
                    results.push(Ok(done));
                    if let Err(e) = self.exec("RELEASE job") {
                        self.abort(batch, results, sql_error(e));
                        return Duration::ZERO;
                    }
                }
                Err(e) => {
                    // After a full disk or an I/O error SQLite may have rolled the whole
                    // transaction back: then nothing of the batch is written.
                    let undone = if self.conn.is_autocommit() {
                        Err(rusqlite::Error::InvalidQuery)
                    } else {
                        self.exec("ROLLBACK TO job")
                            .and_then(|()| self.exec("RELEASE job"))
                    };
                    if undone.is_err() {
                        self.abort(batch, results, e);
                        return Duration::ZERO;
                    }
                    results.push(Err(e));
                }
            }
        }
        let committing = Instant::now();
        if let Err(e) = self.exec("COMMIT") {
            let rolled_back = self.conn.is_autocommit();
            if !rolled_back {
                let _ = self.exec("ROLLBACK");
            }
            // A lock or a full disk stops the commit before it is written; after an I/O error
            // the log may hold it (it is then found on the next open), so its outcome is
            // unknown.
            let k = kind(&e);
            let known_unwritten = is_busy(&e) || k == BackendKind::Full || !rolled_back;
            let msg = format!("the commit failed: {e}");
            for (job, r) in batch.drain(..).zip(results) {
                let answer = match r {
                    Ok(_) if known_unwritten => Err(Error::backend_unsent(NAME, k, msg.clone())),
                    Ok(_) => Err(Error::backend(NAME, BackendKind::Connection, msg.clone())),
                    Err(e) => Err(e),
                };
                let _ = job.reply.send(answer);
            }
            return Duration::ZERO;
        }
        let took = committing.elapsed();
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Durable now (synchronous=FULL): every caller gets its own answer.
        for (job, r) in batch.drain(..).zip(results) {
            let _ = job.reply.send(r);
        }
        took
    }

    /// Answers every job of a batch whose transaction is gone: the job after the last of
    /// `results` gets `error`, the ones that failed before keep their errors, and the others
    /// are told that nothing of theirs was written.
    fn abort(&mut self, batch: &mut Vec<Job>, results: Vec<Result<Done, Error>>, error: Error) {
        if !self.conn.is_autocommit() {
            let _ = self.exec("ROLLBACK");
        }
        let k = error.backend_kind().unwrap_or(BackendKind::Other);
        let msg = format!("another write of the same transaction failed: {error}");
        let mut results = results.into_iter();
        let mut error = Some(error);
        for job in batch.drain(..) {
            let answer = match results.next() {
                Some(Err(e)) => Err(e),
                Some(Ok(_)) => Err(Error::backend_unsent(NAME, k, msg.clone())),
                None => match error.take() {
                    Some(e) => Err(e),
                    None => Err(Error::backend_unsent(NAME, k, msg.clone())),
                },
            };
            let _ = job.reply.send(answer);
        }
    }

    fn exec(&self, stmt: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(stmt)?.execute([]).map(|_| ())
    }

    fn load(&self, key: &str, now: u64) -> Result<Option<Stored>, Error> {
        Ok(load_stored(&self.conn, &self.sql, &self.table, key)?.filter(|s| s.is_live(now)))
    }

    fn work(&mut self, work: &Work) -> Result<Done, Error> {
        let now = now_ms();
        match work {
            Work::Commit(ops) => {
                let outcome = self.commit(ops, now)?;
                match (&outcome, ops.as_slice()) {
                    (CommitOutcome::Conflict(failed), [op]) => {
                        match self.reserve_lost(op, failed, now)? {
                            Some(record) => Ok(Done::Reserved(record)),
                            None => Ok(Done::Commit(outcome)),
                        }
                    }
                    _ => Ok(Done::Commit(outcome)),
                }
            }
            Work::Put(key, w) => self.put(key, w.borrow(), now).map(Done::Version),
            Work::Delete(key) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(&self.sql.delete)
                    .map_err(sql_error)?;
                let found = stmt
                    .query_row([key.as_bytes()], |row| {
                        Ok(match row.get_ref(0)? {
                            ValueRef::Integer(t) => t > ms_i64(now),
                            // No expiry, or a corrupt one: it counts as there.
                            _ => true,
                        })
                    })
                    .optional()
                    .map_err(sql_error)?;
                Ok(Done::Flag(found.unwrap_or(false)))
            }
            Work::Expire(key, expiry) => {
                let Some(s) = self.load(key, now)? else {
                    return Ok(Done::Flag(false));
                };
                let at = expiry.resolve(s.record.expires_at, || now).map(ms_i64);
                self.conn
                    .prepare_cached(&self.sql.expire)
                    .and_then(|mut st| st.execute(params![key.as_bytes(), at]))
                    .map_err(sql_error)?;
                Ok(Done::Flag(true))
            }
            Work::Reserve(key, claimant, ttl) => {
                self.reserve(key, *claimant, *ttl, now).map(Done::Flag)
            }
            Work::Sweep(limit) => self.sweep(*limit, now).map(Done::Count),
            Work::Checkpoint => Err(other("a checkpoint inside a transaction")),
        }
    }

    /// Reserves live `key` for `claimant` unless another claimant holds it (contract rule 13);
    /// returns whether `claimant` holds it now.
    fn reserve(&self, key: &str, claimant: u64, ttl: Duration, now: u64) -> Result<bool, Error> {
        let Some(s) = self.load(key, now)? else {
            return Ok(false);
        };
        if s.reserved_for_other(claimant, now) {
            return Ok(false);
        }
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let until = ms_i64(now.saturating_add(ttl));
        self.conn
            .prepare_cached(&self.sql.reserve)
            .and_then(|mut st| st.execute(params![key.as_bytes(), bits(claimant), until]))
            .map_err(sql_error)?;
        Ok(true)
    }

    /// After the compare-and-swap `op` lost (`failed`), the reservation its write asked for, in
    /// the same transaction: the record it lost to, when it found the record at another
    /// revision and took it.
    fn reserve_lost(
        &self,
        op: &OwnedOp,
        failed: &[(usize, Option<Record>)],
        now: u64,
    ) -> Result<Option<Record>, Error> {
        let (OwnedAction::Write(w), Some(expected), [(_, Some(record))]) =
            (&op.action, op.expected, failed)
        else {
            return Ok(None);
        };
        let Some(ttl) = w.reserve else {
            return Ok(None);
        };
        if expected.matches(record) || !self.reserve(&op.key, w.claimant, ttl, now)? {
            return Ok(None);
        }
        Ok(Some(record.clone()))
    }

    /// Checks every op, then writes every one (contract rule 14).
    fn commit(&mut self, ops: &[OwnedOp], now: u64) -> Result<CommitOutcome, Error> {
        let mut current = Vec::with_capacity(ops.len());
        for op in ops {
            current.push(self.load(&op.key, now)?);
        }
        let mut failed = Vec::new();
        for (i, (op, cur)) in ops.iter().zip(&current).enumerate() {
            let claimant = match &op.action {
                OwnedAction::Write(w) => w.claimant,
                OwnedAction::Check | OwnedAction::Delete => 0,
            };
            let at = match (cur, op.expected) {
                (Some(s), Some(e)) => e.matches(&s.record),
                (None, None) => true,
                _ => false,
            };
            // Another's reservation, and how long it has left (`Record::reserved_for`).
            let held = match (&op.action, cur) {
                (OwnedAction::Check, _) | (_, None) => None,
                (_, Some(s)) => s.held_for_other(claimant, now),
            };
            if !at || held.is_some() {
                failed.push((
                    i,
                    cur.as_ref()
                        .map(|s| s.record.clone().with_reserved_for(held)),
                ));
            }
        }
        if !failed.is_empty() {
            return Ok(CommitOutcome::Conflict(failed));
        }
        let mut versions = Vec::with_capacity(ops.len());
        for (op, cur) in ops.iter().zip(current) {
            match &op.action {
                OwnedAction::Check => versions.push(None),
                OwnedAction::Delete => {
                    self.conn
                        .prepare_cached(&self.sql.remove)
                        .and_then(|mut st| st.execute([op.key.as_bytes()]))
                        .map_err(sql_error)?;
                    versions.push(None);
                }
                OwnedAction::Write(w) => {
                    let w = w.borrow();
                    let version = match cur {
                        Some(s) => {
                            let old = s.record.version;
                            let version = w.next_version(Some(old));
                            let mut record = s.record;
                            w.apply(version, &mut record);
                            self.update(&op.key, &record, s.res_by, s.res_until, old)?;
                            version
                        }
                        None => {
                            let version = w.next_version(None);
                            self.upsert(&op.key, &w.to_record(version, &[]))?;
                            version
                        }
                    };
                    versions.push(Some(version));
                }
            }
        }
        Ok(CommitOutcome::Committed(versions))
    }

    fn put(&mut self, key: &str, w: Write<'_>, now: u64) -> Result<u64, Error> {
        // A corrupt row is an error here, never overwritten (contract rule 9).
        let cur = load_stored(&self.conn, &self.sql, &self.table, key)?;
        let live = cur.filter(|s| s.is_live(now)).map(|s| s.record);
        let version = w.next_version(live.as_ref().map(|r| r.version));
        let previous = live.as_ref().map_or(&[][..], |r| &r.tokens[..]);
        let mut record = w.to_record(version, previous);
        record.expires_at = w
            .expiry
            .resolve(live.as_ref().and_then(|r| r.expires_at), || now);
        debug_assert!(record.tokens.len() <= RECENT_TOKENS);
        self.upsert(key, &record)?;
        Ok(version)
    }

    /// Writes `record` over the row of `key` read at version `old`, keeping its reservation.
    fn update(
        &self,
        key: &str,
        r: &Record,
        res_by: Option<u64>,
        res_until: Option<i64>,
        old: u64,
    ) -> Result<(), Error> {
        let changed = self
            .conn
            .prepare_cached(&self.sql.update)
            .and_then(|mut st| {
                st.execute(params![
                    key.as_bytes(),
                    version_i64(r.version)?,
                    r.schema,
                    r.data,
                    token_bytes(&r.tokens),
                    meta(&r.meta),
                    r.expires_at.map(ms_i64),
                    res_by.map(bits),
                    res_until,
                    version_i64(old)?,
                ])
            })
            .map_err(sql_error)?;
        if changed == 1 {
            Ok(())
        } else {
            // The writer holds the database's write lock: the row cannot change under it.
            Err(other(
                "the row changed while the writer held the write lock",
            ))
        }
    }

    /// Writes `record` as the row of `key`, with no reservation.
    fn upsert(&self, key: &str, r: &Record) -> Result<(), Error> {
        self.conn
            .prepare_cached(&self.sql.upsert)
            .and_then(|mut st| {
                st.execute(params![
                    key.as_bytes(),
                    version_i64(r.version)?,
                    r.schema,
                    r.data,
                    token_bytes(&r.tokens),
                    meta(&r.meta),
                    r.expires_at.map(ms_i64),
                    None::<i64>,
                    None::<i64>,
                ])
            })
            .map(|_| ())
            .map_err(sql_error)
    }

    /// Deletes up to `limit` expired rows when this process's turn has come (or a full batch
    /// was deleted just before).
    fn sweep(&mut self, limit: usize, now: u64) -> Result<usize, Error> {
        let now = ms_i64(now);
        if !self.sweeping {
            let due = self
                .conn
                .prepare_cached(&self.sql.sweep_due)
                .and_then(|mut st| st.execute(params![now, SWEEP_EVERY_MS]))
                .map_err(sql_error)?;
            if due == 0 {
                return Ok(0);
            }
        }
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        let deleted = self
            .conn
            .prepare_cached(&self.sql.sweep)
            .and_then(|mut st| st.execute(params![now, limit_i]))
            .map_err(sql_error)?;
        self.sweeping = deleted >= limit && limit > 0;
        Ok(deleted)
    }
}

/// Empty meta is stored as NULL: one byte less per row.
fn meta(m: &[u8]) -> Option<&[u8]> {
    (!m.is_empty()).then_some(m)
}

/// A version as SQLite's integer; versions start below 2^48 and rise by one.
fn version_i64(v: u64) -> rusqlite::Result<i64> {
    i64::try_from(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn other(msg: &str) -> Error {
    Error::backend(NAME, BackendKind::Other, msg.to_owned())
}
