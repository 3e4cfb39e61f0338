//! The transfer scenario: tasks moving money between accounts, two scopes per update, warm.
//! mp-storage's `scoped_many` against what a user writes by hand: on Redis WATCH both keys,
//! MGET, MULTI / SET / SET / EXEC with a connection per task; on MySQL a transaction that
//! locks both rows with `SELECT … FOR UPDATE` in key order, two UPDATEs, COMMIT; in memory a
//! `Mutex<HashMap>`.
//!
//! Exact means: after each measurement every account holds its opening balance plus the
//! amounts of the transfers reported done, and the money is conserved. Per transfer, three
//! counts: commands or statements the server ran (its global counters, read just before and
//! after the timed window: other clients of the server add to them), the engine's driver calls
//! (the library), and requests awaited in the client (a baseline).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mp_storage::{Scope, Storage};

use crate::BenchError;

/// Tasks of the scenario.
pub const TASKS: usize = 32;
/// Accounts of the scenario.
pub const ACCOUNTS: usize = 64;
/// Every account's opening balance: large, so that transfers are rarely refused.
const OPENING: i64 = 1_000_000_000;

/// An account of the library side.
#[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
pub struct Account {
    balance: i64,
}

/// One side of the transfer comparison.
#[async_trait]
pub trait Mover: Send + Sync {
    /// What it is, for the report.
    fn label(&self) -> String;
    /// Writes every account's opening balance.
    async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError>;
    /// Moves `amount` from `from` to `to`; `false` when `from` has less.
    async fn transfer(
        &self,
        task: usize,
        from: &str,
        to: &str,
        amount: i64,
    ) -> Result<bool, BenchError>;
    /// The balances of `accounts`.
    async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError>;
    /// Round trips to the backend so far, counted in the client (0 for the library, whose
    /// engine counts its calls: see [`Mover::engine`]).
    fn round_trips(&self) -> u64;
    /// The engine's counters, for the library.
    fn engine(&self) -> Option<mp_storage::Stats> {
        None
    }
    /// Deletes what the measurements wrote.
    async fn cleanup(&self) -> Result<(), BenchError> {
        Ok(())
    }
}

/// The library: one `scoped_many` per transfer.
pub struct Library {
    pub st: Storage,
}

#[async_trait]
impl Mover for Library {
    fn label(&self) -> String {
        format!("mp-storage {} scoped_many", self.st.driver_name())
    }
    async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError> {
        for a in accounts {
            self.st.set(a, &Account { balance: OPENING }).await?;
        }
        Ok(())
    }
    async fn transfer(
        &self,
        _task: usize,
        from: &str,
        to: &str,
        amount: i64,
    ) -> Result<bool, BenchError> {
        Ok(self
            .st
            .scoped_many(&[from, to], |a: &mut [Account]| {
                if a[0].balance < amount {
                    return false;
                }
                a[0].balance -= amount;
                a[1].balance += amount;
                true
            })
            .await?)
    }
    async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError> {
        Ok(self
            .st
            .get_many::<Account, _>(accounts)
            .await?
            .into_iter()
            .map(|a| a.map_or(0, |a| a.balance))
            .collect())
    }
    fn round_trips(&self) -> u64 {
        0
    }
    fn engine(&self) -> Option<mp_storage::Stats> {
        Some(self.st.stats())
    }
    async fn cleanup(&self) -> Result<(), BenchError> {
        for name in self.st.list("transfer:").await? {
            self.st.remove(&name).await?;
        }
        Ok(())
    }
}

/// The hand-written baselines for a storage URL, none when the scheme has none.
pub async fn baselines(url: &str) -> Result<Vec<Box<dyn Mover>>, BenchError> {
    let scheme = url.split(':').next().unwrap_or_default();
    let mut out: Vec<Box<dyn Mover>> = Vec::new();
    match scheme {
        "memory" => out.push(Box::new(MutexMap::default())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => out.push(Box::new(redis_watch::RedisWatch::connect(url).await?)),
        #[cfg(feature = "mysql")]
        "mysql" => out.push(Box::new(mysql_lock::MysqlLock::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => out.push(Box::new(pg_lock::PgLock::connect(url).await?)),
        _ => {}
    }
    Ok(out)
}

/// memory → a `Mutex<HashMap>` of balances.
#[derive(Default)]
pub struct MutexMap(std::sync::Mutex<HashMap<String, i64>>);

#[async_trait]
impl Mover for MutexMap {
    fn label(&self) -> String {
        "Mutex<HashMap>".to_owned()
    }
    async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError> {
        let mut m = self.0.lock().map_err(|_| "poisoned")?;
        for a in accounts {
            m.insert(a.clone(), OPENING);
        }
        Ok(())
    }
    async fn transfer(
        &self,
        _task: usize,
        from: &str,
        to: &str,
        amount: i64,
    ) -> Result<bool, BenchError> {
        let mut m = self.0.lock().map_err(|_| "poisoned")?;
        let have = m.get(from).copied().unwrap_or(0);
        if have < amount {
            return Ok(false);
        }
        m.insert(from.to_owned(), have - amount);
        *m.entry(to.to_owned()).or_default() += amount;
        Ok(true)
    }
    async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError> {
        let m = self.0.lock().map_err(|_| "poisoned")?;
        Ok(accounts
            .iter()
            .map(|a| m.get(a).copied().unwrap_or(0))
            .collect())
    }
    fn round_trips(&self) -> u64 {
        0
    }
}

#[cfg(feature = "redis")]
mod redis_watch {
    use super::*;
    use tokio::sync::Mutex as AsyncMutex;

    /// redis → WATCH both keys, MGET, MULTI / SET / SET / EXEC (pipelined), retried while the
    /// WATCH fails; a connection per task, as WATCH needs.
    pub struct RedisWatch {
        conns: Vec<AsyncMutex<redis::aio::MultiplexedConnection>>,
        prefix: String,
        trips: AtomicU64,
    }

    impl RedisWatch {
        pub async fn connect(url: &str) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            let client = redis::Client::open(base)?;
            let mut conns = Vec::with_capacity(TASKS);
            for _ in 0..TASKS {
                conns.push(AsyncMutex::new(
                    client.get_multiplexed_async_connection().await?,
                ));
            }
            Ok(RedisWatch {
                conns,
                prefix: format!("mp-bench-transfer:{:08x}:", rand::random::<u32>()),
                trips: AtomicU64::new(0),
            })
        }

        fn key(&self, account: &str) -> String {
            format!("{}{account}", self.prefix)
        }
    }

    #[async_trait]
    impl Mover for RedisWatch {
        fn label(&self) -> String {
            "redis WATCH/MGET/MULTI/SET/SET/EXEC".to_owned()
        }
        async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError> {
            let mut con = self.conns[0].lock().await;
            let mut mset = redis::cmd("MSET");
            for a in accounts {
                mset.arg(self.key(a)).arg(OPENING);
            }
            mset.query_async::<()>(&mut *con).await?;
            Ok(())
        }
        async fn transfer(
            &self,
            task: usize,
            from: &str,
            to: &str,
            amount: i64,
        ) -> Result<bool, BenchError> {
            let (kf, kt) = (self.key(from), self.key(to));
            let mut con = self.conns[task % self.conns.len()].lock().await;
            loop {
                redis::cmd("WATCH")
                    .arg(&kf)
                    .arg(&kt)
                    .query_async::<()>(&mut *con)
                    .await?;
                let (a, b): (Option<i64>, Option<i64>) = redis::cmd("MGET")
                    .arg(&kf)
                    .arg(&kt)
                    .query_async(&mut *con)
                    .await?;
                self.trips.fetch_add(2, Ordering::Relaxed);
                let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
                if a < amount {
                    redis::cmd("UNWATCH").query_async::<()>(&mut *con).await?;
                    self.trips.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                let done: Option<(String, String)> = redis::pipe()
                    .atomic()
                    .set(&kf, a - amount)
                    .set(&kt, b + amount)
                    .query_async(&mut *con)
                    .await?;
                self.trips.fetch_add(1, Ordering::Relaxed);
                if done.is_some() {
                    return Ok(true);
                }
            }
        }
        async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError> {
            let mut con = self.conns[0].lock().await;
            let mut mget = redis::cmd("MGET");
            for a in accounts {
                mget.arg(self.key(a));
            }
            let v: Vec<Option<i64>> = mget.query_async(&mut *con).await?;
            Ok(v.into_iter().map(|b| b.unwrap_or(0)).collect())
        }
        fn round_trips(&self) -> u64 {
            self.trips.load(Ordering::Relaxed)
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let mut con = self.conns[0].lock().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query_async(&mut *con)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut *con)
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_lock {
    use super::*;
    use mysql_async::prelude::*;

    /// mysql → BEGIN; `SELECT … FOR UPDATE` of both rows in key order; two UPDATEs; COMMIT
    /// (ROLLBACK on an overdraft); retried on a deadlock.
    pub struct MysqlLock {
        pool: mysql_async::Pool,
        table: String,
        trips: AtomicU64,
    }

    impl MysqlLock {
        pub async fn connect(url: &str) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(base)?)
                .pool_opts(
                    mysql_async::PoolOpts::default()
                        .with_reset_connection(false)
                        .with_constraints(
                            // Every task keeps its connection: a pool above its minimum closes
                            // the connections handed back (with their prepared statements).
                            mysql_async::PoolConstraints::new(TASKS, TASKS).ok_or("pool bounds")?,
                        ),
                );
            let pool = mysql_async::Pool::new(opts);
            let table = format!("mp_bench_accounts_{:08x}", rand::random::<u32>());
            let mut conn = pool.get_conn().await?;
            conn.query_drop(format!(
                "CREATE TABLE {table} (k VARBINARY(255) PRIMARY KEY, v BIGINT NOT NULL) \
                 ENGINE=InnoDB"
            ))
            .await?;
            Ok(MysqlLock {
                pool,
                table,
                trips: AtomicU64::new(0),
            })
        }

        async fn try_transfer(
            &self,
            from: &str,
            to: &str,
            amount: i64,
        ) -> Result<bool, mysql_async::Error> {
            let t = &self.table;
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn
                .start_transaction(mysql_async::TxOpts::default())
                .await?;
            // Both rows locked in key order, so two transfers over one pair never deadlock.
            let rows: Vec<(Vec<u8>, i64)> = tx
                .exec(
                    format!("SELECT k, v FROM {t} WHERE k IN (?, ?) ORDER BY k FOR UPDATE"),
                    (from.as_bytes(), to.as_bytes()),
                )
                .await?;
            self.trips.fetch_add(2, Ordering::Relaxed);
            let have = rows
                .iter()
                .find(|(k, _)| k == from.as_bytes())
                .map_or(0, |(_, v)| *v);
            if have < amount {
                tx.rollback().await?;
                self.trips.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            tx.exec_drop(
                format!("UPDATE {t} SET v = v - ? WHERE k = ?"),
                (amount, from.as_bytes()),
            )
            .await?;
            tx.exec_drop(
                format!("UPDATE {t} SET v = v + ? WHERE k = ?"),
                (amount, to.as_bytes()),
            )
            .await?;
            tx.commit().await?;
            self.trips.fetch_add(3, Ordering::Relaxed);
            Ok(true)
        }
    }

    #[async_trait]
    impl Mover for MysqlLock {
        fn label(&self) -> String {
            "mysql BEGIN/SELECT FOR UPDATE/UPDATE x2/COMMIT".to_owned()
        }
        async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError> {
            let mut conn = self.pool.get_conn().await?;
            let marks = vec!["(?, ?)"; accounts.len()].join(", ");
            let mut params: Vec<mysql_async::Value> = Vec::new();
            for a in accounts {
                params.push(a.as_bytes().into());
                params.push(OPENING.into());
            }
            conn.exec_drop(
                format!("REPLACE INTO {} (k, v) VALUES {marks}", self.table),
                params,
            )
            .await?;
            Ok(())
        }
        async fn transfer(
            &self,
            _task: usize,
            from: &str,
            to: &str,
            amount: i64,
        ) -> Result<bool, BenchError> {
            loop {
                match self.try_transfer(from, to, amount).await {
                    // A deadlock InnoDB broke by rolling this one back.
                    Err(mysql_async::Error::Server(e)) if e.code == 1213 => continue,
                    other => return Ok(other?),
                }
            }
        }
        async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError> {
            let mut conn = self.pool.get_conn().await?;
            let rows: Vec<(Vec<u8>, i64)> = conn
                .query(format!("SELECT k, v FROM {}", self.table))
                .await?;
            let m: HashMap<Vec<u8>, i64> = rows.into_iter().collect();
            Ok(accounts
                .iter()
                .map(|a| m.get(a.as_bytes()).copied().unwrap_or(0))
                .collect())
        }
        fn round_trips(&self) -> u64 {
            self.trips.load(Ordering::Relaxed)
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let mut conn = self.pool.get_conn().await?;
            conn.query_drop(format!("DROP TABLE IF EXISTS {}", self.table))
                .await?;
            Ok(())
        }
    }
}

#[cfg(feature = "postgres")]
mod pg_lock {
    use super::*;
    use tokio::sync::Mutex as AsyncMutex;

    /// postgres → what a tokio-postgres user writes by hand, a connection per task: BEGIN;
    /// `SELECT … FOR UPDATE` of both rows in key order; two UPDATEs; COMMIT (ROLLBACK on an
    /// overdraft); retried on a deadlock or a serialization failure.
    pub struct PgLock {
        conns: Vec<AsyncMutex<tokio_postgres::Client>>,
        table: String,
        trips: AtomicU64,
    }

    impl PgLock {
        pub async fn connect(url: &str) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            let table = format!("mp_bench_accounts_{:08x}", rand::random::<u32>());
            let mut conns = Vec::with_capacity(TASKS);
            for i in 0..TASKS {
                let (client, connection) =
                    tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                if i == 0 {
                    client
                        .batch_execute(&format!(
                            "CREATE TABLE {table} (k bytea PRIMARY KEY, v bigint NOT NULL)"
                        ))
                        .await?;
                }
                conns.push(AsyncMutex::new(client));
            }
            Ok(PgLock {
                conns,
                table,
                trips: AtomicU64::new(0),
            })
        }

        async fn try_transfer(
            &self,
            task: usize,
            from: &str,
            to: &str,
            amount: i64,
        ) -> Result<bool, tokio_postgres::Error> {
            let t = &self.table;
            let mut client = self.conns[task % self.conns.len()].lock().await;
            let tx = client.transaction().await?;
            // Both rows locked in key order, so two transfers over one pair never deadlock.
            let rows = tx
                .query(
                    &format!("SELECT k, v FROM {t} WHERE k = ANY($1) ORDER BY k FOR UPDATE"),
                    &[&vec![from.as_bytes(), to.as_bytes()]],
                )
                .await?;
            self.trips.fetch_add(2, Ordering::Relaxed);
            let have = rows
                .iter()
                .find(|r| r.get::<_, &[u8]>(0) == from.as_bytes())
                .map_or(0, |r| r.get::<_, i64>(1));
            if have < amount {
                tx.rollback().await?;
                self.trips.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            tx.execute(
                &format!("UPDATE {t} SET v = v - $1 WHERE k = $2"),
                &[&amount, &from.as_bytes()],
            )
            .await?;
            tx.execute(
                &format!("UPDATE {t} SET v = v + $1 WHERE k = $2"),
                &[&amount, &to.as_bytes()],
            )
            .await?;
            tx.commit().await?;
            self.trips.fetch_add(3, Ordering::Relaxed);
            Ok(true)
        }
    }

    #[async_trait]
    impl Mover for PgLock {
        fn label(&self) -> String {
            "postgres BEGIN/SELECT FOR UPDATE/UPDATE x2/COMMIT".to_owned()
        }
        async fn prepare(&self, accounts: &[String]) -> Result<(), BenchError> {
            let client = self.conns[0].lock().await;
            let keys: Vec<&[u8]> = accounts.iter().map(|a| a.as_bytes()).collect();
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (k, v) SELECT k, $2 FROM unnest($1::bytea[]) AS k \
                         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                        self.table
                    ),
                    &[&keys, &OPENING],
                )
                .await?;
            Ok(())
        }
        async fn transfer(
            &self,
            task: usize,
            from: &str,
            to: &str,
            amount: i64,
        ) -> Result<bool, BenchError> {
            loop {
                match self.try_transfer(task, from, to, amount).await {
                    // A deadlock or serialization failure the server broke by rolling back.
                    Err(e)
                        if e.code().is_some_and(|c| {
                            *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                                || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                        }) =>
                    {
                        continue
                    }
                    other => return Ok(other?),
                }
            }
        }
        async fn balances(&self, accounts: &[String]) -> Result<Vec<i64>, BenchError> {
            let client = self.conns[0].lock().await;
            let rows = client
                .query(&format!("SELECT k, v FROM {}", self.table), &[])
                .await?;
            let m: HashMap<Vec<u8>, i64> = rows
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1)))
                .collect();
            Ok(accounts
                .iter()
                .map(|a| m.get(a.as_bytes()).copied().unwrap_or(0))
                .collect())
        }
        fn round_trips(&self) -> u64 {
            self.trips.load(Ordering::Relaxed)
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let client = self.conns[0].lock().await;
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
                .await?;
            Ok(())
        }
    }
}

/// What one measurement of a mover saw.
#[derive(Default)]
pub struct Run {
    /// Transfers done (moved or refused).
    pub ops: u64,
    /// Of them, refused for want of money.
    pub refused: u64,
    /// Seconds measured.
    pub secs: f64,
    /// Every transfer's latency.
    pub latencies_us: Vec<u32>,
    /// Failed transfers.
    pub errors: u64,
    /// Round trips counted in the client during the measurement.
    pub round_trips: u64,
    /// Commands or statements the server counted during the measurement, when it counts them.
    pub server_calls: Option<u64>,
    /// The engine's driver calls (loads, commits, conflicts) during the measurement.
    pub driver_calls: u64,
    /// The engine's attempts during the measurement.
    pub attempts: u64,
    /// The engine's finished updates (commits and no-ops) during the measurement.
    pub finished: u64,
    /// Whether the balances matched the transfers done.
    pub exact: bool,
}

impl Run {
    /// Transfers per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Adds another measurement.
    pub fn merge(&mut self, other: Run) {
        // A count missing from any measurement is missing from the sum.
        self.server_calls = match (self.server_calls, other.server_calls) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) if self.ops == 0 => b,
            _ => None,
        };
        self.ops += other.ops;
        self.refused += other.refused;
        self.secs += other.secs;
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.round_trips += other.round_trips;
        self.driver_calls += other.driver_calls;
        self.attempts += other.attempts;
        self.finished += other.finished;
        self.exact &= other.exact;
    }
}

/// Accounts `name:0` … of one measurement.
pub fn accounts(name: &str) -> Vec<String> {
    (0..ACCOUNTS)
        .map(|i| format!("transfer:{name}:{i}"))
        .collect()
}

/// Prepares `accounts` on `mover`, warms them (each account takes part in a transfer), then
/// runs [`TASKS`] tasks of random transfers for `secs` and checks the balances. `url` is the
/// server whose counters are read around the timed window.
pub async fn measure(
    mover: Arc<dyn Mover>,
    accounts: Arc<Vec<String>>,
    secs: f64,
    url: &str,
) -> Run {
    let mut expected: Vec<i64> = vec![OPENING; accounts.len()];
    let mut run = Run {
        exact: true,
        ..Run::default()
    };
    if let Err(e) = mover.prepare(&accounts).await {
        eprintln!("mp-bench: {}: prepare: {e}", mover.label());
        run.errors += 1;
        run.exact = false;
        return run;
    }
    // Warm: every account once, so the library's cache holds them all.
    for i in 0..accounts.len() {
        let j = (i + 1) % accounts.len();
        match mover.transfer(0, &accounts[i], &accounts[j], 1).await {
            Ok(true) => {
                expected[i] -= 1;
                expected[j] += 1;
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("mp-bench: {}: warm-up: {e}", mover.label());
                run.errors += 1;
            }
        }
    }
    let trips_before = mover.round_trips();
    let engine_before = mover.engine();
    let calls_before = crate::backend_calls(url).await;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut joins = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let (mover, accounts) = (mover.clone(), accounts.clone());
        joins.push(tokio::spawn(async move {
            let n = accounts.len();
            let mut deltas = vec![0i64; n];
            let mut part = Run::default();
            while Instant::now() < until {
                let from = rand::random_range(0..n);
                let to = (from + rand::random_range(1..n)) % n;
                let amount = rand::random_range(1..=10);
                let t = Instant::now();
                match mover
                    .transfer(task, &accounts[from], &accounts[to], amount)
                    .await
                {
                    Ok(moved) => {
                        part.ops += 1;
                        part.latencies_us
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if moved {
                            deltas[from] -= amount;
                            deltas[to] += amount;
                        } else {
                            part.refused += 1;
                        }
                    }
                    Err(e) => {
                        part.errors += 1;
                        if part.errors == 1 {
                            eprintln!("mp-bench: {}: {e}", mover.label());
                        }
                    }
                }
            }
            (part, deltas)
        }));
    }
    for j in joins {
        match j.await {
            Ok((part, deltas)) => {
                run.ops += part.ops;
                run.refused += part.refused;
                run.errors += part.errors;
                run.latencies_us.extend(part.latencies_us);
                for (e, d) in expected.iter_mut().zip(deltas) {
                    *e += d;
                }
            }
            Err(_) => run.errors += 1,
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    // The counter read itself is one call.
    run.server_calls = match (calls_before, crate::backend_calls(url).await) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).saturating_sub(1)),
        _ => None,
    };
    run.round_trips = mover.round_trips() - trips_before;
    if let (Some(a), Some(b)) = (engine_before, mover.engine()) {
        run.driver_calls =
            (b.loads + b.commits + b.conflicts) - (a.loads + a.commits + a.conflicts);
        run.attempts = b.attempts - a.attempts;
        run.finished = (b.commits + b.noops) - (a.commits + a.noops);
    }
    match mover.balances(&accounts).await {
        Ok(b) if b == expected => {}
        Ok(b) => {
            let total: i64 = b.iter().sum();
            eprintln!(
                "mp-bench: {}: balances differ from the transfers done (total {total}, \
                 expected {})",
                mover.label(),
                OPENING * accounts.len() as i64
            );
            run.exact = false;
        }
        Err(e) => {
            eprintln!("mp-bench: {}: {e}", mover.label());
            run.exact = false;
        }
    }
    run.exact &= run.errors == 0;
    run
}
