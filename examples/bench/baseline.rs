//! What a user would write instead of mp-storage, per driver: the baselines of the bench.
//!
//! A driver joins the bench by adding one arm to [`for_url`] and one [`Subject`] impl here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{BenchError, Subject};

/// The baselines for a storage URL, none when the scheme has none.
pub async fn for_url(url: &str, tasks: usize) -> Result<Vec<Box<dyn Subject>>, BenchError> {
    let scheme = url.split(':').next().unwrap_or_default();
    let mut out: Vec<Box<dyn Subject>> = Vec::new();
    match scheme {
        "memory" => out.push(Box::new(MutexMap::default())),
        "file" => out.push(Box::new(BareFile::new(file_dir(url))?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            out.push(Box::new(redis_tx::RedisTx::connect(url, tasks).await?));
            out.push(Box::new(redis_cas::BareCas::connect(url).await?));
        }
        #[cfg(feature = "mysql")]
        "mysql" => out.push(Box::new(mysql_tx::MysqlTx::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => out.push(Box::new(pg_tx::PgTx::connect(url, tasks).await?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => out.push(Box::new(sqlite_tx::SqliteTx::open(url)?)),
        _ => {}
    }
    let _ = tasks;
    Ok(out)
}

fn file_dir(url: &str) -> PathBuf {
    let body = url.trim_start_matches("file:");
    let body = body.split('?').next().unwrap_or_default();
    let body = body.strip_prefix("//").unwrap_or(body);
    PathBuf::from(body).join("baseline")
}

/// memory → a `Mutex<HashMap>`.
#[derive(Default)]
pub struct MutexMap(Mutex<HashMap<String, u64>>);

#[async_trait]
impl Subject for MutexMap {
    fn label(&self) -> String {
        "Mutex<HashMap>".to_owned()
    }
    async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        let mut m = self.0.lock().map_err(|_| "poisoned")?;
        let v = m.entry(scope.to_owned()).or_default();
        *v += 1;
        Ok(*v)
    }
    async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        let m = self.0.lock().map_err(|_| "poisoned")?;
        Ok(m.get(scope).copied().unwrap_or(0))
    }
}

/// file → a bare read + temp file + fsync + rename + directory fsync per update, one in-process
/// mutex per scope (no cross-process safety, no encoding of names: the floor).
pub struct BareFile {
    dir: PathBuf,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl BareFile {
    fn new(dir: PathBuf) -> Result<Self, BenchError> {
        std::fs::create_dir_all(&dir)?;
        Ok(BareFile {
            dir,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock_for(&self, scope: &str) -> Result<Arc<Mutex<()>>, BenchError> {
        let mut locks = self.locks.lock().map_err(|_| "poisoned")?;
        Ok(locks.entry(scope.to_owned()).or_default().clone())
    }
}

fn file_name(scope: &str) -> String {
    scope
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

fn read_count(path: &Path) -> Result<u64, BenchError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn durable_write(dir: &Path, path: &Path, data: &[u8]) -> Result<(), BenchError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[async_trait]
impl Subject for BareFile {
    fn label(&self) -> String {
        "temp+fsync+rename+dir fsync".to_owned()
    }
    async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        let lock = self.lock_for(scope)?;
        let dir = self.dir.clone();
        let path = dir.join(file_name(scope));
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().map_err(|_| "poisoned")?;
            let n = read_count(&path)? + 1;
            durable_write(&dir, &path, n.to_string().as_bytes())?;
            Ok(n)
        })
        .await?
    }
    async fn cleanup(&self) -> Result<(), BenchError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await??;
        Ok(())
    }
    async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        let path = self.dir.join(file_name(scope));
        tokio::task::spawn_blocking(move || read_count(&path)).await?
    }
}

#[cfg(feature = "redis")]
mod redis_tx {
    use super::*;
    use redis::AsyncCommands;
    use tokio::sync::Mutex as AsyncMutex;

    /// redis → WATCH / GET / MULTI / SET / EXEC, retried while the WATCH fails, one
    /// connection per task (WATCH cannot share a connection).
    pub struct RedisTx {
        conns: Vec<AsyncMutex<redis::aio::MultiplexedConnection>>,
        prefix: String,
    }

    impl RedisTx {
        pub async fn connect(url: &str, tasks: usize) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            let client = redis::Client::open(base)?;
            let mut conns = Vec::with_capacity(tasks);
            for _ in 0..tasks.max(1) {
                conns.push(AsyncMutex::new(
                    client.get_multiplexed_async_connection().await?,
                ));
            }
            Ok(RedisTx {
                conns,
                prefix: format!("mp-bench-baseline:{:08x}:", rand::random::<u32>()),
            })
        }
    }

    #[async_trait]
    impl Subject for RedisTx {
        fn label(&self) -> String {
            "redis WATCH/GET/MULTI/SET/EXEC".to_owned()
        }
        async fn increment(&self, task: usize, scope: &str) -> Result<u64, BenchError> {
            let key = format!("{}{scope}", self.prefix);
            let mut con = self.conns[task % self.conns.len()].lock().await;
            loop {
                redis::cmd("WATCH")
                    .arg(&key)
                    .query_async::<()>(&mut *con)
                    .await?;
                let v: Option<u64> = con.get(&key).await?;
                let n = v.unwrap_or(0) + 1;
                let done: Option<(String,)> = redis::pipe()
                    .atomic()
                    .set(&key, n)
                    .query_async(&mut *con)
                    .await?;
                if done.is_some() {
                    return Ok(n);
                }
            }
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let mut con = self.conns[0].lock().await;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut *con)
                    .await?;
                if !keys.is_empty() {
                    redis::cmd("DEL")
                        .arg(keys)
                        .query_async::<()>(&mut *con)
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            Ok(())
        }
        async fn read(&self, task: usize, scope: &str) -> Result<u64, BenchError> {
            let key = format!("{}{scope}", self.prefix);
            let mut con = self.conns[task % self.conns.len()].lock().await;
            let v: Option<u64> = con.get(&key).await?;
            Ok(v.unwrap_or(0))
        }
    }
}

#[cfg(feature = "redis")]
mod redis_cas {
    use super::*;

    /// Compare-and-swap on a hash's version, the floor of a warm update: ARGV expected version
    /// (`''`: absent), new version, value. Replies 1, or the current version and value.
    const CAS: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return {v or '', redis.call('HGET', KEYS[1], 'd') or ''} end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
return 1
";

    /// redis → one EVALSHA of a version compare-and-swap script per update over one
    /// multiplexed connection, versions remembered in-process: what the library does on the
    /// wire, with nothing around it.
    pub struct BareCas {
        con: redis::aio::MultiplexedConnection,
        script: redis::Script,
        known: Mutex<HashMap<String, (u64, u64)>>,
        prefix: String,
    }

    impl BareCas {
        pub async fn connect(url: &str) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            let client = redis::Client::open(base)?;
            Ok(BareCas {
                con: client.get_multiplexed_async_connection().await?,
                script: redis::Script::new(CAS),
                known: Mutex::new(HashMap::new()),
                prefix: format!("mp-bench-cas:{:08x}:", rand::random::<u32>()),
            })
        }

        fn known(&self, key: &str) -> Result<Option<(u64, u64)>, BenchError> {
            Ok(self.known.lock().map_err(|_| "poisoned")?.get(key).copied())
        }

        fn remember(&self, key: &str, version: u64, value: u64) -> Result<(), BenchError> {
            self.known
                .lock()
                .map_err(|_| "poisoned")?
                .insert(key.to_owned(), (version, value));
            Ok(())
        }
    }

    #[async_trait]
    impl Subject for BareCas {
        fn label(&self) -> String {
            "redis bare EVALSHA compare-and-swap".to_owned()
        }
        async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            let key = format!("{}{scope}", self.prefix);
            let mut current = self.known(&key)?;
            loop {
                let (expected, n) = match current {
                    Some((v, n)) => (v.to_string(), n + 1),
                    None => (String::new(), 1),
                };
                let version = current.map_or(1, |(v, _)| v + 1);
                let reply: redis::Value = self
                    .script
                    .key(&key)
                    .arg(expected)
                    .arg(version)
                    .arg(n)
                    .invoke_async(&mut self.con.clone())
                    .await?;
                match reply {
                    redis::Value::Int(1) => {
                        self.remember(&key, version, n)?;
                        return Ok(n);
                    }
                    other => {
                        let (v, d): (String, String) = redis::from_redis_value(other)?;
                        current = if v.is_empty() {
                            None
                        } else {
                            Some((v.parse()?, d.parse()?))
                        };
                    }
                }
            }
        }
        async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            let key = format!("{}{scope}", self.prefix);
            let d: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("d")
                .query_async(&mut self.con.clone())
                .await?;
            Ok(d.unwrap_or(0))
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let keys: Vec<String> = self
                .known
                .lock()
                .map_err(|_| "poisoned")?
                .keys()
                .cloned()
                .collect();
            for chunk in keys.chunks(500) {
                redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<()>(&mut self.con.clone())
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_tx {
    use super::*;
    use mysql_async::prelude::*;

    /// mysql → a transaction per update: SELECT … FOR UPDATE, then UPDATE (INSERT the row when
    /// absent), COMMIT.
    pub struct MysqlTx {
        pool: mysql_async::Pool,
    }

    const TABLE: &str = "mp_bench_baseline";

    impl MysqlTx {
        pub async fn connect(url: &str) -> Result<Self, BenchError> {
            let base = url.split('?').next().unwrap_or(url);
            // The library keeps pooled connections as they are, open while they are used, and
            // at most 32 (see `DEFAULT_IDLE_TIMEOUT` and `DEFAULT_POOL_MAX`); so does the
            // baseline.
            use mp_storage::driver::mysql::{DEFAULT_IDLE_TIMEOUT, DEFAULT_POOL_MAX};
            let constraints = mysql_async::PoolConstraints::new(10, DEFAULT_POOL_MAX)
                .ok_or("bad pool constraints")?;
            let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(base)?)
                .pool_opts(
                    mysql_async::PoolOpts::default()
                        .with_reset_connection(false)
                        .with_inactive_connection_ttl(DEFAULT_IDLE_TIMEOUT)
                        .with_constraints(constraints),
                );
            let pool = mysql_async::Pool::new(opts);
            let mut conn = pool.get_conn().await?;
            conn.query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (k VARBINARY(255) PRIMARY KEY, v BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"
            ))
            .await?;
            conn.query_drop(format!("DELETE FROM {TABLE}")).await?;
            Ok(MysqlTx { pool })
        }
    }

    impl MysqlTx {
        async fn try_increment(&self, scope: &str) -> Result<u64, mysql_async::Error> {
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn
                .start_transaction(mysql_async::TxOpts::default())
                .await?;
            let v: Option<u64> = tx
                .exec_first(
                    format!("SELECT v FROM {TABLE} WHERE k = ? FOR UPDATE"),
                    (scope.as_bytes(),),
                )
                .await?;
            let n = v.unwrap_or(0) + 1;
            if v.is_some() {
                tx.exec_drop(
                    format!("UPDATE {TABLE} SET v = ? WHERE k = ?"),
                    (n, scope.as_bytes()),
                )
                .await?;
            } else {
                tx.exec_drop(
                    format!("INSERT INTO {TABLE} (k, v) VALUES (?, ?)"),
                    (scope.as_bytes(), n),
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n)
        }
    }

    #[async_trait]
    impl Subject for MysqlTx {
        fn label(&self) -> String {
            "mysql SELECT FOR UPDATE + UPDATE".to_owned()
        }
        async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            loop {
                match self.try_increment(scope).await {
                    // A deadlock between two first inserts of one key: InnoDB rolled one back.
                    Err(mysql_async::Error::Server(e)) if e.code == 1213 => continue,
                    other => return Ok(other?),
                }
            }
        }
        async fn prepare(&self, scopes: &[String]) -> Result<(), BenchError> {
            // Rows exist before the updates: SELECT … FOR UPDATE on a missing row takes a gap
            // lock, and concurrent first inserts then deadlock or wait for the lock timeout.
            let mut conn = self.pool.get_conn().await?;
            for chunk in scopes.chunks(500) {
                let marks = vec!["(?, 0)"; chunk.len()].join(", ");
                let params: Vec<mysql_async::Value> =
                    chunk.iter().map(|s| s.as_bytes().into()).collect();
                conn.exec_drop(
                    format!("INSERT IGNORE INTO {TABLE} (k, v) VALUES {marks}"),
                    params,
                )
                .await?;
            }
            Ok(())
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let mut conn = self.pool.get_conn().await?;
            conn.query_drop(format!("DROP TABLE IF EXISTS {TABLE}"))
                .await?;
            Ok(())
        }
        async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            let mut conn = self.pool.get_conn().await?;
            let v: Option<u64> = conn
                .exec_first(
                    format!("SELECT v FROM {TABLE} WHERE k = ?"),
                    (scope.as_bytes(),),
                )
                .await?;
            Ok(v.unwrap_or(0))
        }
    }
}

#[cfg(feature = "postgres")]
mod pg_tx {
    use super::*;

    /// postgres → what a tokio-postgres user writes by hand: one connection per task, and a
    /// transaction per update: `SELECT … FOR UPDATE`, then `UPDATE`, `COMMIT` (statements
    /// prepared once per connection).
    pub struct PgTx {
        conns: Vec<tokio::sync::Mutex<Conn>>,
    }

    struct Conn {
        client: tokio_postgres::Client,
        select_for_update: tokio_postgres::Statement,
        update: tokio_postgres::Statement,
        read: tokio_postgres::Statement,
    }

    const TABLE: &str = "mp_bench_baseline";

    impl PgTx {
        pub async fn connect(url: &str, tasks: usize) -> Result<Self, BenchError> {
            // The session settings of the URL (`options=-c synchronous_commit=off`, say) apply
            // to the baseline too; the driver's own options do not.
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| {
                    !kv.is_empty() && !kv.starts_with("table=") && !kv.starts_with("pool_max=")
                })
                .collect();
            let base = if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            let base = base.as_str();
            let mut conns = Vec::with_capacity(tasks);
            for i in 0..tasks.max(1) {
                let (client, connection) =
                    tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                if i == 0 {
                    client
                        .batch_execute(&format!(
                            "DROP TABLE IF EXISTS {TABLE}; \
                             CREATE TABLE {TABLE} (k bytea PRIMARY KEY, v bigint NOT NULL)"
                        ))
                        .await?;
                }
                let select_for_update = client
                    .prepare(&format!("SELECT v FROM {TABLE} WHERE k = $1 FOR UPDATE"))
                    .await?;
                let update = client
                    .prepare(&format!("UPDATE {TABLE} SET v = $1 WHERE k = $2"))
                    .await?;
                let read = client
                    .prepare(&format!("SELECT v FROM {TABLE} WHERE k = $1"))
                    .await?;
                conns.push(tokio::sync::Mutex::new(Conn {
                    client,
                    select_for_update,
                    update,
                    read,
                }));
            }
            Ok(PgTx { conns })
        }

        fn conn(&self, task: usize) -> &tokio::sync::Mutex<Conn> {
            &self.conns[task % self.conns.len()]
        }
    }

    #[async_trait]
    impl Subject for PgTx {
        fn label(&self) -> String {
            "postgres SELECT FOR UPDATE + UPDATE".to_owned()
        }
        async fn increment(&self, task: usize, scope: &str) -> Result<u64, BenchError> {
            let mut conn = self.conn(task).lock().await;
            let Conn {
                client,
                select_for_update,
                update,
                ..
            } = &mut *conn;
            let tx = client.transaction().await?;
            let row = tx
                .query_one(&*select_for_update, &[&scope.as_bytes()])
                .await?;
            let n: i64 = row.get::<_, i64>(0) + 1;
            tx.execute(&*update, &[&n, &scope.as_bytes()]).await?;
            tx.commit().await?;
            Ok(u64::try_from(n)?)
        }
        async fn prepare(&self, scopes: &[String]) -> Result<(), BenchError> {
            // Rows exist before the updates, as in a row-per-counter table.
            let conn = self.conn(0).lock().await;
            let keys: Vec<&[u8]> = scopes.iter().map(|s| s.as_bytes()).collect();
            conn.client
                .execute(
                    &format!(
                        "INSERT INTO {TABLE} (k, v) SELECT k, 0 FROM unnest($1::bytea[]) AS k \
                         ON CONFLICT DO NOTHING"
                    ),
                    &[&keys],
                )
                .await?;
            Ok(())
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let conn = self.conn(0).lock().await;
            conn.client
                .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
                .await?;
            Ok(())
        }
        async fn read(&self, task: usize, scope: &str) -> Result<u64, BenchError> {
            let conn = self.conn(task).lock().await;
            let row = conn
                .client
                .query_opt(&conn.read, &[&scope.as_bytes()])
                .await?;
            Ok(row.map_or(Ok(0), |r| u64::try_from(r.get::<_, i64>(0)))?)
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_tx {
    //! sqlite → what a user of rusqlite would write: a counters table in a database file of
    //! its own beside the library's, WAL and `synchronous=FULL` like the driver's default, one
    //! `INSERT … ON CONFLICT DO UPDATE SET n = n + 1 … RETURNING n` per update in a transaction
    //! of its own (one fsync each), on one connection behind a mutex.

    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use rusqlite::Connection;

    use crate::{BenchError, Subject};

    pub struct SqliteTx {
        conn: Arc<Mutex<Connection>>,
    }

    impl SqliteTx {
        pub fn open(url: &str) -> Result<SqliteTx, BenchError> {
            let (db, options) = mp_storage::driver::sqlite::SqliteOptions::from_url(url)?;
            let mut name = db.file_name().unwrap_or_default().to_os_string();
            name.push(".baseline");
            let path = db.with_file_name(name);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(30))?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
            let sync = if options.is_durable() { "FULL" } else { "OFF" };
            conn.pragma_update(None, "synchronous", sync)?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
            )?;
            Ok(SqliteTx {
                conn: Arc::new(Mutex::new(conn)),
            })
        }
    }

    #[async_trait]
    impl Subject for SqliteTx {
        fn label(&self) -> String {
            "rusqlite upsert, a transaction each".to_owned()
        }
        async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            let (conn, scope) = (self.conn.clone(), scope.to_owned());
            tokio::task::spawn_blocking(move || -> Result<u64, BenchError> {
                let conn = conn.lock().map_err(|_| "poisoned")?;
                let n: i64 = conn.query_row(
                    "INSERT INTO counters (name, n) VALUES (?1, 1) \
                     ON CONFLICT (name) DO UPDATE SET n = n + 1 RETURNING n",
                    [&scope],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n)?)
            })
            .await?
        }
        async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
            let (conn, scope) = (self.conn.clone(), scope.to_owned());
            tokio::task::spawn_blocking(move || -> Result<u64, BenchError> {
                let conn = conn.lock().map_err(|_| "poisoned")?;
                let n: Option<i64> = conn
                    .query_row("SELECT n FROM counters WHERE name = ?1", [&scope], |r| {
                        r.get(0)
                    })
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                Ok(u64::try_from(n.unwrap_or(0))?)
            })
            .await?
        }
        async fn cleanup(&self) -> Result<(), BenchError> {
            let conn = self.conn.clone();
            tokio::task::spawn_blocking(move || -> Result<(), BenchError> {
                let conn = conn.lock().map_err(|_| "poisoned")?;
                conn.execute("DELETE FROM counters", [])?;
                Ok(())
            })
            .await??;
            Ok(())
        }
    }
}
