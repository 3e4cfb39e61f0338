//! `redis://[user:pass@]host:port/db`: one Redis hash per scope, compare-and-swap in one Lua script.
//!
//! # Options
//!
//! `redis://[user[:password]@]host[:port][/db]?prefix=…&connect_timeout=…&response_timeout=…&protocol=…`:
//! the table of options, and the methods that set them in code, are on [`RedisConfig`].
//! [`RedisDriver::open`] takes a URL, [`RedisDriver::connect`] a [`RedisConfig`].
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `mp:` | put before every key, so several applications can share a database |
//! | `connect_timeout` | `2s` | the longest a connection attempt may take (`500ms`, `2s`, `1.5`) |
//! | `response_timeout` | `5s` | the longest a command may wait for its reply |
//! | `replica_wait` | `0` | after each write, wait until this many replicas have it (`WAIT` in the same pipeline); fewer in `replica_timeout`, or a reply lost, is [`Error::CommitUnknown`] |
//! | `replica_timeout` | `500ms` | how long a write waits for them (below `response_timeout`) |
//! | `protocol` | `resp3` | `resp3` or `resp2`; RESP3 lets a connection the server closed be noticed at once (a write to a server that went down then fails as not sent); a server older than Redis 6 is spoken to in RESP2 |
//! | `watch` | `true` | `false`: the write scripts announce nothing and the storage cannot watch scopes (see *Watching*); for a store that nobody watches |
//!
//! A server that is down or unreachable is an [`Error::Backend`] of kind
//! [`BackendKind::Connection`](crate::BackendKind::Connection) (or [`BackendKind::Timeout`](crate::BackendKind::Timeout)) within `connect_timeout`, whose
//! message names the server (`cannot connect to 127.0.0.1:6380: connection refused`): at
//! [`Storage::open`](crate::Storage::open), which connects at once, and on any later call while
//! the connection is being made again (the connection reconnects by itself, one attempt per
//! failed call). A server that answers but not in the Redis protocol (a URL pointed at a MySQL
//! port, say) fails the open at once, also with [`BackendKind::Connection`](crate::BackendKind::Connection) (no Redis server
//! could be reached there): `the server at 127.0.0.1:3306 does not speak the redis protocol`.
//! `rediss://` (TLS) is not supported by this build.
//!
//! # Layout
//!
//! A scope named `n` is the hash at key `<prefix>n` with these fields:
//!
//! | field | holds |
//! |---|---|
//! | `v` | the version, in decimal |
//! | `s` | the schema version, in decimal |
//! | `d` | the data (the scope's JSON), as is |
//! | `t` | the commit tokens of the last 16 writes, oldest first, each as 16 lower-case hex digits, with no separator |
//! | `m` | the engine's notes on the record ([`Record::meta`]), as is; absent or empty for most |
//! | `rc`, `ru` | a reservation (contract rule 13): its claimant as 16 lower-case hex digits, and until when, in ms since 1970 by the server's clock; absent when nobody reserved the scope |
//!
//! Versions and tokens stay strings inside Redis (Lua numbers are doubles): a compare is a string
//! compare, and the next version of a compare-and-swap is computed here, not in Lua.
//!
//! # Commands
//!
//! - load: the hash (`HGETALL`) and its expiry (`PEXPIRETIME`) read together in one
//!   `MULTI` … `EXEC` transaction, one round trip; the server does about a third of the work of
//!   a script that reads the same (a script turns every reply into Lua values and back). On a
//!   cluster, and on a server that refuses the transaction (no `PEXPIRETIME` before Redis 7, no
//!   `MULTI` behind some proxies, or a user who may not run it), one `EVALSHA` of a script that
//!   reads both; `load_many` pipelines the script, one per key, one round trip.
//! - compare-and-swap: one `EVALSHA` of a script that compares the revision (the version and
//!   the last token, or absence), writes every field and appends the token; on a conflict it
//!   returns the current record in the same reply, so a warm uncontended update costs one
//!   command and a conflict no extra one. When the server lost the script (`NOSCRIPT`, after a
//!   restart or `SCRIPT FLUSH`), it is sent again as `EVAL` with its body, which cannot miss.
//!   Inside the server the script makes two calls (`HMGET`, `HSET`), which `INFO commandstats`
//!   counts under their own names (so does `total_commands_processed`): count `evalsha` for what
//!   the client sends.
//! - put: one `EVALSHA` (the version rises by one; the record's tokens are kept).
//! - delete: one `EVALSHA` (`DEL`, and the change hint when the key existed). list: `SCAN … MATCH <escaped prefix>* COUNT 1000`, never `KEYS`.
//! - A load or a list whose connection turns out to be dropped (an idle connection the server
//!   closed, a restart) is sent once more on the new connection; writes are not: the engine
//!   settles a write whose reply was lost from the commit tokens.
//!
//! Every script but the several-scope commit touches only `KEYS[1]`, so scopes shard across a
//! Redis Cluster: the same driver runs over a cluster through `Cluster` (feature
//! `redis-cluster`, `redis-cluster://`; see `cluster`), where the commit's keys must share a
//! hash slot.
//!
//! With `replica_wait=N`, every write (the scripts and `DEL`) is sent in one pipeline with
//! `WAIT N timeout`, on the same connection: the reply counts the replicas that have it.
//!
//! # Watching
//!
//! Every write script ends with a `PUBLISH` of the new version (`''` for a removal or a new
//! expiry) on the channel named like the key: no server configuration needed (keyspace
//! notifications stay off). With nobody subscribed it is one lookup in the server's channel
//! table; `mp-bench --only watch` measures it (see BENCHMARKS.md). A storage that watches opens
//! one more connection, in subscriber mode, subscribed to the channels of its watched keys; it
//! reconnects by itself and reads the watched scopes again after a cut. A user whose ACL grants
//! no channels (`&…`) still writes, but cannot watch: grant it `&<prefix>*`. `watch=false`
//! leaves the `PUBLISH` out, for a store nobody watches. On a cluster the scripts `SPUBLISH`
//! instead (sharded pub/sub: the message stays on the key's shard) and the storage's
//! subscriptions go to each slot's master (see `cluster`).
//!
//! A record whose fields are missing or malformed (or a key that is not a hash) is
//! [`Error::Corrupt`] naming the key; it is left untouched (remove it to start over).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, Value};

use super::{
    Action, Capabilities, CasOutcome, ChangeStream, CommitOutcome, Driver, Expiry, Op, Record,
    Revision, WatchSet, Write,
};
use crate::Error;
use scripts::{with_publish, Lua};

#[cfg(feature = "redis-cluster")]
pub mod cluster;
#[cfg(feature = "redis-cluster")]
mod cluster_watch;
mod config;
mod error;
mod link;
mod record;
mod scripts;
mod watch;

#[cfg(feature = "redis-cluster")]
pub use cluster::{Cluster, RedisClusterConfig, RedisClusterDriver};
pub use config::RedisConfig;
use error::{backend_error, command_error};
pub use link::{Connection, Node};
use record::{corrupt, hash_field, parse_record, parse_version, token_hex};

/// The URL schemes this driver takes (`rediss` only to refuse it: this build has no TLS).
pub const SCHEMES: &[&str] = &["redis", "rediss"];

/// The key prefix when the URL gives none.
pub const DEFAULT_PREFIX: &str = "mp:";

/// The port when the URL gives none.
pub const DEFAULT_PORT: u16 = 6379;

/// How long a connection attempt may take when the URL does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a command may wait for its reply when the URL does not say.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for its replicas (option `replica_wait`) when the URL does not say.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

/// A driver over Redis: one server (or one Redis-compatible server such as Valkey) through
/// [`Node`], the default, or a Redis Cluster through [`Cluster`]
/// (`RedisClusterDriver`, feature `redis-cluster`). The scripts,
/// the record layout and every call are the same; the connection routes each command to the
/// server that holds its key.
///
/// Cheap to clone: clones share one multiplexed connection (one per node in a cluster) that
/// reconnects by itself.
#[derive(Clone)]
pub struct RedisDriver<C: Connection = Node> {
    con: C,
    prefix: String,
    scripts: Arc<Scripts>,
    /// Replicas each write waits for, and for how long (`None`: no waiting).
    replicas: Option<(u32, Duration)>,
    /// Whether writes announce their changes (`watch=`, and a connection that can watch).
    watch: bool,
    /// Set once the server refused the loads' transaction whatever the key (no `PEXPIRETIME`
    /// before Redis 7, no `MULTI` behind some proxies): loads go through the load script from
    /// then on, as they always do on a cluster.
    load_by_script: Arc<AtomicBool>,
}

/// The scripts, loaded once per driver.
struct Scripts {
    cas: Lua,
    put: Lua,
    reserve: Lua,
    commit: Lua,
    expire: Lua,
    delete: Lua,
    load: Lua,
}

impl Scripts {
    /// The scripts, the writes announcing their changes with `publish` (contract rule 17).
    fn new(publish: Option<&str>) -> Scripts {
        Scripts {
            cas: Lua::new(with_publish(publish, scripts::CAS_SCRIPT)),
            reserve: Lua::new(scripts::RESERVE_SCRIPT.to_owned()),
            commit: Lua::new(with_publish(publish, scripts::COMMIT_SCRIPT)),
            expire: Lua::new(with_publish(publish, scripts::EXPIRE_SCRIPT)),
            delete: Lua::new(with_publish(publish, scripts::DELETE_SCRIPT)),
            load: Lua::new(scripts::LOAD_SCRIPT.to_owned()),
            put: Lua::new(with_publish(
                publish,
                &format!("{}{}", scripts::PUT_CHECK, scripts::PUT_SCRIPT),
            )),
        }
    }
}

impl<C: Connection> fmt::Debug for RedisDriver<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("con", &self.con)
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl RedisDriver<Node> {
    /// Connects to the server `url` names (see [`RedisConfig`] for the options).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use mp_storage::driver::redis::RedisDriver;
    /// let driver = RedisDriver::open("redis://127.0.0.1:6379/0?prefix=app1:").await?;
    /// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<RedisDriver, Error> {
        Self::connect(RedisConfig::from_url(url)?).await
    }

    /// Connects to the server `config` names, within its connect timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use std::time::Duration;
    /// use mp_storage::driver::redis::{RedisConfig, RedisDriver};
    ///
    /// let config = RedisConfig::new("127.0.0.1")
    ///     .prefix("app1:")
    ///     .connect_timeout(Duration::from_millis(500));
    /// let driver = RedisDriver::connect(config).await?;
    /// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: RedisConfig) -> Result<RedisDriver, Error> {
        config.check()?;
        let con = link::connect_node(&config).await?;
        Ok(RedisDriver::over(con, &config))
    }
}

impl<C: Connection> RedisDriver<C> {
    /// The driver over an open connection, with the prefix and replica wait of `config`.
    fn over(con: C, config: &RedisConfig) -> RedisDriver<C> {
        let (replicas, timeout) = config.get_replica_wait();
        let watch = config.get_watch() && con.publish().is_some();
        let publish = if watch { con.publish() } else { None };
        RedisDriver {
            con,
            prefix: config.get_prefix().to_owned(),
            scripts: Arc::new(Scripts::new(publish)),
            replicas: (replicas > 0).then_some((replicas, timeout)),
            watch,
            load_by_script: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The prefix put before every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server's address, `host:port` (in a cluster, the addresses the driver was given,
    /// comma-separated).
    pub fn addr(&self) -> &str {
        self.con.addr()
    }

    /// The connection the driver speaks through.
    pub fn connection(&self) -> &C {
        &self.con
    }

    fn command_error(&self, e: redis::RedisError, key: &str, rkey: &str) -> Error {
        command_error(e, C::NAME, self.con.addr(), key, rkey)
    }

    fn backend_error(&self, e: redis::RedisError) -> Error {
        backend_error(e, C::NAME, self.con.addr())
    }

    /// Sends a command that only reads. When the connection turns out to be dropped (the server
    /// restarted, or closed an idle connection), it is sent once more on the new connection:
    /// reading twice is harmless, and a handle idle for a while should not fail its first read.
    async fn read(&self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self.con.send(cmd).await {
            Err(e) if e.is_connection_dropped() => self.con.send(cmd).await,
            other => other,
        }
    }

    /// [`RedisDriver::read`] for a pipeline of reads.
    async fn read_pipe(&self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        match self.con.send_pipe(pipe).await {
            Err(e) if e.is_connection_dropped() => self.con.send_pipe(pipe).await,
            other => other,
        }
    }

    /// Runs a script on one key; see [`RedisDriver::run_script_on`].
    async fn run_script(
        &self,
        lua: &Lua,
        key: &str,
        rkey: &str,
        args: &[&[u8]],
        waits: bool,
    ) -> Result<Value, Error> {
        self.run_script_on(lua, &[key], &[rkey], args, waits).await
    }

    /// Runs a script: `EVALSHA`, then `EVAL` when the server lost it. A write is sent once as
    /// `EVALSHA`; `NOSCRIPT` means the server did not run it, so sending `EVAL` is safe. A
    /// script that `waits` (a write) is followed by `WAIT` when the driver waits for replicas.
    async fn run_script_on(
        &self,
        lua: &Lua,
        keys: &[&str],
        rkeys: &[&str],
        args: &[&[u8]],
        waits: bool,
    ) -> Result<Value, Error> {
        let error = |e| match (keys.first(), rkeys.first()) {
            (Some(k), Some(r)) => self.command_error(e, k, r),
            _ => self.backend_error(e),
        };
        if let (true, Some((replicas, timeout))) = (waits, self.replicas) {
            let (reply, acked) = self
                .waited(
                    lua.evalsha(rkeys, args),
                    Some(lua.eval(rkeys, args)),
                    rkeys,
                    replicas,
                    timeout,
                )
                .await
                .map_err(|e| {
                    let key = keys.first().copied().unwrap_or_default();
                    unreplicated(error(e), key, replicas)
                })?;
            check_acked(
                keys.first().copied().unwrap_or_default(),
                acked,
                replicas,
                timeout,
            )?;
            return Ok(reply);
        }
        match self.con.send(&lua.evalsha(rkeys, args)).await {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.con.send(&lua.eval(rkeys, args)).await
            }
            other => other,
        }
        .map_err(error)
    }

    /// The script then `WAIT replicas timeout`, in one pipeline on the connection of the
    /// script's key: `WAIT` counts the replicas that have every write of that connection so
    /// far, this one included. Returns the script's reply and the count. A script the server
    /// did not run (`NOSCRIPT`, or a cluster redirect before the client has the new map of
    /// slots) is sent again.
    async fn waited(
        &self,
        mut script: redis::Cmd,
        mut fallback: Option<redis::Cmd>,
        rkeys: &[&str],
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<(Value, i64)> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut pipe = redis::pipe();
            pipe.add_command(script.clone()).add_command(wait.clone());
            let mut replies = self.con.send_pipe(&pipe).await?.into_iter();
            let (Some(reply), Some(acked)) = (replies.next(), replies.next()) else {
                return Err(redis::RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "a write and WAIT replied with fewer than two replies",
                )));
            };
            match reply.extract_error() {
                Err(e)
                    if fallback.is_some()
                        && e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script = fallback.take().unwrap_or(script);
                }
                // Not run: the slot moved (a failover, a resharding). A routed read teaches the
                // client the new map; then the pipeline goes to the new master.
                Err(e) if tries < 8 && is_redirect(&e) => {
                    if let Some(rkey) = rkeys.first() {
                        let mut probe = redis::cmd("EXISTS");
                        probe.arg(*rkey);
                        let _ = self.con.send(&probe).await;
                    }
                    tokio::time::sleep(Duration::from_millis(25 << tries.min(5))).await;
                }
                Err(e) => return Err(e),
                Ok(reply) => {
                    let acked = match acked {
                        Value::Int(n) => n,
                        other => {
                            return Err(other.extract_error().err().unwrap_or_else(|| {
                                redis::RedisError::from((
                                    ErrorKind::UnexpectedReturnType,
                                    "WAIT did not reply with a number",
                                ))
                            }))
                        }
                    };
                    return Ok((reply, acked));
                }
            }
        }
    }

    /// The record of `rkey` and its expiry, read in one `MULTI` / `HGETALL` / `PEXPIRETIME` /
    /// `EXEC` round trip, replied in the load script's shape (`[hash, expiry]`, the hash `0`
    /// when the key holds another type). The server does less than for the script (about 18k
    /// instructions against 51k: a script turns every reply into Lua values and back). `None`
    /// when the transaction did not run (the load script then reads, and gives the error if
    /// there is one); from then on always when the server refuses transactions whatever the key.
    async fn load_in_transaction(&self, rkey: &str) -> Option<redis::RedisResult<Value>> {
        if !self.con.sends_transactions() || self.load_by_script.load(Ordering::Relaxed) {
            return None;
        }
        // A plain pipeline, each reply handed back as it is: were `MULTI` refused, the reads
        // would run on their own and their replies be dropped.
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI")
            .cmd("HGETALL")
            .arg(rkey)
            .cmd("PEXPIRETIME")
            .arg(rkey)
            .cmd("EXEC");
        let mut replies = match self.read_pipe(&pipe).await {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        match replies.pop() {
            Some(Value::Array(mut parts)) if replies.len() == 3 && parts.len() == 2 => {
                let at = parts.pop().unwrap_or(Value::Nil);
                let hash = match parts.pop() {
                    Some(Value::ServerError(e)) if e.code() == "WRONGTYPE" => Value::Int(0),
                    other => other.unwrap_or(Value::Nil),
                };
                Some(match (hash, at) {
                    // Any other error of either (none is known to happen).
                    (e @ Value::ServerError(_), _) | (_, e @ Value::ServerError(_)) => {
                        e.extract_error()
                    }
                    (hash, at) => Ok(Value::Array(vec![hash, at])),
                })
            }
            _ => {
                let refused = replies.iter().any(|r| match r {
                    Value::ServerError(e) => refuses_transactions(e),
                    _ => false,
                });
                if refused {
                    self.load_by_script.store(true, Ordering::Relaxed);
                }
                None
            }
        }
    }

    fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }
}

/// Whether the server's error to a command of the load's transaction says it refuses the
/// transaction whatever the key: a command it does not know (`PEXPIRETIME` before Redis 7;
/// `MULTI` behind some proxies) or that the user may not run (`NOPERM … has no permissions to
/// run the 'multi' command`; a key the user may not read is refused by the script too, and
/// stays an error).
fn refuses_transactions(e: &redis::ServerError) -> bool {
    let text = e.details().unwrap_or_default().to_ascii_lowercase();
    e.code() == "NOPERM" && text.contains("permissions to run")
        || ["unknown command", "not supported"]
            .iter()
            .any(|s| text.contains(s))
}

/// A write that fewer replicas than asked acknowledged in time: its outcome, as far as a
/// failover goes, is unknown.
fn check_acked(key: &str, acked: i64, replicas: u32, timeout: Duration) -> Result<(), Error> {
    if acked >= i64::from(replicas) {
        return Ok(());
    }
    Err(Error::CommitUnknown {
        scope: crate::error::shorten(key),
        reason: format!(
            "the write is on the master, but {acked} of the {replicas} replicas it waits for \
             acknowledged it within {timeout:?}: the master failing before a replica copies it \
             would lose it"
        ),
    })
}

/// A write whose reply was lost, when the driver waits for replicas: [`Error::CommitUnknown`],
/// not the connection error the engine would settle by reading the commit tokens, since the
/// tokens on the master say nothing of the replicas.
fn unreplicated(e: Error, key: &str, replicas: u32) -> Error {
    if !e.outcome_unknown() {
        return e;
    }
    Error::CommitUnknown {
        scope: crate::error::shorten(key),
        reason: format!(
            "the reply of the write was lost ({e}): whether it happened, and whether {replicas} \
             replicas have it, is unknown"
        ),
    }
}

/// Whether a server's error says the command was not run here: the key's slot is served
/// elsewhere, or the cluster cannot serve it yet.
fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            redis::ServerErrorKind::Moved
                | redis::ServerErrorKind::Ask
                | redis::ServerErrorKind::TryAgain
                | redis::ServerErrorKind::ClusterDown
        )
    )
}

/// The record of the read script's reply `{hash, at}` (see [`scripts::LOAD_SCRIPT`]), with its
/// expiry.
fn parse_loaded(reply: Value, key: &str, rkey: &str) -> Result<Option<Record>, Error> {
    let Value::Array(mut parts) = reply else {
        return Err(corrupt(key, rkey, "unexpected reply to a read"));
    };
    let (Some(at), Some(hash), None) = (parts.pop(), parts.pop(), parts.pop()) else {
        return Err(corrupt(key, rkey, "unexpected reply to a read"));
    };
    let expires_at = match at {
        // Negative: no expiry (or the key is absent, and so is the hash).
        Value::Int(ms) => u64::try_from(ms).ok(),
        _ => return Err(corrupt(key, rkey, "unexpected reply to an expiry read")),
    };
    if hash == Value::Int(0) {
        return Err(corrupt(
            key,
            rkey,
            "the key holds a value that is not a hash",
        ));
    }
    Ok(parse_record(hash, key, rkey)?.map(|r| r.with_expiry(expires_at)))
}

/// The expiry kind and value arguments of the scripts.
fn expiry_args(expiry: Expiry) -> (&'static [u8], String) {
    match expiry {
        Expiry::Keep => (b"k", String::new()),
        Expiry::Never => (b"n", String::new()),
        Expiry::After(d) => (
            b"a",
            d.as_millis().clamp(1, u128::from(u64::MAX)).to_string(),
        ),
        Expiry::At(ms) => (b"t", ms.max(1).to_string()),
    }
}

#[async_trait]
impl<C: Connection> Driver for RedisDriver<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let rkey = self.redis_key(key);
        if let Some(reply) = self.load_in_transaction(&rkey).await {
            return parse_loaded(
                reply.map_err(|e| self.command_error(e, key, &rkey))?,
                key,
                &rkey,
            );
        }
        let lua = &self.scripts.load;
        let reply = match self.read(&lua.evalsha(&[&rkey], &[])).await {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.read(&lua.eval(&[&rkey], &[])).await
            }
            other => other,
        }
        .map_err(|e| self.command_error(e, key, &rkey))?;
        parse_loaded(reply, key, &rkey)
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        let rkey = self.redis_key(key);
        let version = write.next_version(expected.map(|r| r.version));
        let (expected_version, expected_token) = match expected {
            Some(r) => (
                r.version.to_string(),
                if r.token == 0 {
                    String::new()
                } else {
                    token_hex(r.token)
                },
            ),
            None => (String::new(), String::new()),
        };
        let (version_arg, schema_arg, token_arg, claimant_arg) = (
            version.to_string(),
            write.schema.to_string(),
            token_hex(write.token),
            token_hex(write.claimant),
        );
        let (kind, value) = expiry_args(write.expiry);
        let reserve_ms = write.reserve.filter(|_| expected.is_some()).map(|ttl| {
            u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
                .to_string()
        });
        let args: [&[u8]; 11] = [
            expected_version.as_bytes(),
            expected_token.as_bytes(),
            version_arg.as_bytes(),
            schema_arg.as_bytes(),
            write.data,
            token_arg.as_bytes(),
            write.meta,
            claimant_arg.as_bytes(),
            kind,
            value.as_bytes(),
            reserve_ms.as_deref().unwrap_or_default().as_bytes(),
        ];
        // An expiry with no value (kept or removed) leaves its argument out unless a
        // reservation follows it: the script reads it only for the kinds that have one, and
        // each argument costs the server about 1% of a warm update (see BENCHMARKS.md).
        let args = match (&reserve_ms, value.is_empty()) {
            (Some(_), _) => &args[..],
            (None, true) => &args[..9],
            (None, false) => &args[..10],
        };
        let reply = self
            .run_script(&self.scripts.cas, key, &rkey, args, true)
            .await?;
        match reply {
            Value::Int(1) => Ok(CasOutcome::Committed(version)),
            other => {
                // Reserved by this lost write when the record names its claimant now.
                let took = reserve_ms.is_some()
                    && hash_field(&other, b"rc") == Some(claimant_arg.as_bytes());
                // How long another claimant's reservation that turned it away has left.
                let left = hash_field(&other, b"rl")
                    .and_then(|ms| std::str::from_utf8(ms).ok()?.parse::<u64>().ok())
                    .map(Duration::from_millis);
                match parse_record(other, key, &rkey)?.map(|r| r.with_reserved_for(left)) {
                    // This very write, sent again by the client after its reply was lost (a cluster
                    // connection resends a command whose connection broke): it took effect once.
                    // With a replica wait, though, nothing says the replicas have it.
                    Some(r) if r.tokens.contains(&write.token) => match self.replicas {
                        None => Ok(CasOutcome::Committed(version)),
                        Some((replicas, _)) => Err(Error::CommitUnknown {
                            scope: crate::error::shorten(key),
                            reason: format!(
                            "the write is on the master (its reply was lost and the client sent \
                             it again), but whether {replicas} replicas have it is unknown"
                        ),
                        }),
                    },
                    Some(r) if took => Ok(CasOutcome::Reserved(r)),
                    // At the expected revision too, when another claimant reserved the scope.
                    other => Ok(CasOutcome::Conflict(other)),
                }
            }
        }
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        let rkey = self.redis_key(key);
        let (initial, schema, token) = (
            write.initial_version.to_string(),
            write.schema.to_string(),
            token_hex(write.token),
        );
        let (kind, value) = expiry_args(write.expiry);
        let args: [&[u8]; 7] = [
            initial.as_bytes(),
            schema.as_bytes(),
            write.data,
            token.as_bytes(),
            write.meta,
            kind,
            value.as_bytes(),
        ];
        // As for the compare-and-swap: no empty last argument.
        let args = if value.is_empty() {
            &args[..6]
        } else {
            &args[..]
        };
        let reply = self
            .run_script(&self.scripts.put, key, &rkey, args, true)
            .await?;
        match &reply {
            Value::BulkString(b) => parse_version(b),
            Value::SimpleString(s) => parse_version(s.as_bytes()),
            _ => None,
        }
        .ok_or_else(|| corrupt(key, &rkey, "the version after the write is not a number"))
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::NONE
            .with_multi_key_commit()
            .with_expiry()
            .with_reserve_on_conflict();
        if self.watch {
            caps.with_watch()
        } else {
            caps
        }
    }

    fn changes(&self, watched: std::sync::Arc<WatchSet>) -> Option<ChangeStream> {
        if !self.watch {
            return None;
        }
        self.con.changes(&self.prefix, watched)
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        let (kind, value) = expiry_args(expiry);
        let reply = self
            .run_script(
                &self.scripts.expire,
                key,
                &rkey,
                &[kind, value.as_bytes()],
                true,
            )
            .await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        // One round trip per group of keys the connection serves together (all of them on one
        // server; one slot each in a cluster, sent at once): the reads pipelined, each the
        // script that reads a record with its expiry (sent again as EVAL when the server lost
        // it).
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let groups = self.con.groups(&rkeys);
        let rkeys = &rkeys;
        let lua = &self.scripts.load;
        let replies = futures::future::try_join_all(groups.iter().map(|group| async move {
            let pipe = |by_sha: bool| {
                let mut pipe = redis::pipe();
                for &i in group {
                    pipe.add_command(if by_sha {
                        lua.evalsha(&[&rkeys[i]], &[])
                    } else {
                        lua.eval(&[&rkeys[i]], &[])
                    });
                }
                pipe
            };
            let no_script = |e: &redis::RedisError| {
                e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript)
            };
            let replies = match self.read_pipe(&pipe(true)).await {
                Ok(replies)
                    if replies
                        .iter()
                        .any(|r| r.clone().extract_error().is_err_and(|e| no_script(&e))) =>
                {
                    self.read_pipe(&pipe(false)).await
                }
                Err(e) if no_script(&e) => self.read_pipe(&pipe(false)).await,
                other => other,
            };
            replies.map_err(|e| match group.first() {
                Some(&i) => self.command_error(e, keys[i], &rkeys[i]),
                None => self.backend_error(e),
            })
        }))
        .await?;
        let mut out: Vec<Option<Record>> = vec![None; keys.len()];
        for (group, replies) in groups.iter().zip(replies) {
            if replies.len() != group.len() {
                return Err(self.backend_error(redis::RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "a pipeline of reads replied with a different number of replies",
                ))));
            }
            for (&i, reply) in group.iter().zip(replies) {
                let reply = reply
                    .extract_error()
                    .map_err(|e| self.command_error(e, keys[i], &rkeys[i]))?;
                out[i] = parse_loaded(reply, keys[i], &rkeys[i])?;
            }
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
        let rkeys: Vec<String> = ops.iter().map(|op| self.redis_key(op.key)).collect();
        self.con.one_slot(&rkeys, |i| ops[i].key)?;
        let claimant = ops
            .iter()
            .find_map(|op| match op.action {
                Action::Write(w) => Some(w.claimant),
                Action::Check | Action::Delete => None,
            })
            .unwrap_or(0);
        // The arguments as owned strings first, then borrowed in order.
        let mut owned: Vec<Vec<u8>> = Vec::with_capacity(1 + ops.len() * 10);
        owned.push(token_hex(claimant).into_bytes());
        let mut versions = Vec::with_capacity(ops.len());
        for op in ops {
            let (ev, et) = match op.expected {
                Some(r) => (
                    r.version.to_string(),
                    if r.token == 0 {
                        String::new()
                    } else {
                        token_hex(r.token)
                    },
                ),
                None => (String::new(), String::new()),
            };
            owned.push(ev.into_bytes());
            owned.push(et.into_bytes());
            match op.action {
                Action::Check => {
                    versions.push(None);
                    owned.push(b"c".to_vec());
                    owned.extend(std::iter::repeat_n(Vec::new(), 7));
                }
                Action::Delete => {
                    versions.push(None);
                    owned.push(b"d".to_vec());
                    owned.extend(std::iter::repeat_n(Vec::new(), 7));
                }
                Action::Write(w) => {
                    let version = w.next_version(op.expected.map(|r| r.version));
                    versions.push(Some(version));
                    owned.push(b"w".to_vec());
                    owned.push(version.to_string().into_bytes());
                    owned.push(w.schema.to_string().into_bytes());
                    owned.push(w.data.to_vec());
                    owned.push(token_hex(w.token).into_bytes());
                    owned.push(w.meta.to_vec());
                    let (kind, value) = expiry_args(w.expiry);
                    owned.push(kind.to_vec());
                    owned.push(value.into_bytes());
                }
            }
        }
        let args: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let keys: Vec<&str> = rkeys.iter().map(String::as_str).collect();
        let names: Vec<&str> = ops.iter().map(|op| op.key).collect();
        let reply = self
            .run_script_on(&self.scripts.commit, &names, &keys, &args, true)
            .await?;
        match reply {
            Value::Int(1) => Ok(CommitOutcome::Committed(versions)),
            Value::Array(items) => {
                let mut failed = Vec::new();
                let mut it = items.into_iter();
                while let (Some(index), Some(record)) = (it.next(), it.next()) {
                    let i = match index {
                        Value::Int(i) if i >= 1 && (i as usize) <= ops.len() => i as usize - 1,
                        _ => {
                            return Err(corrupt(
                                ops[0].key,
                                &rkeys[0],
                                "unexpected reply to the commit script",
                            ))
                        }
                    };
                    failed.push((i, parse_record(record, ops[i].key, &rkeys[i])?));
                }
                // This very commit, sent again by the client after its reply was lost: a written
                // scope holds its token, so all of it took effect once.
                let ours = failed.iter().any(|(i, r)| match (&ops[*i].action, r) {
                    (Action::Write(w), Some(r)) => r.tokens.contains(&w.token),
                    _ => false,
                });
                if ours {
                    return Ok(CommitOutcome::Committed(versions));
                }
                Ok(CommitOutcome::Conflict(failed))
            }
            _ => Err(corrupt(
                ops[0].key,
                &rkeys[0],
                "unexpected reply to the commit script",
            )),
        }
    }

    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        let (claimant, ttl) = (
            token_hex(claimant),
            ttl.as_millis().clamp(1, 86_400_000).to_string(),
        );
        let reply = self
            .run_script(
                &self.scripts.reserve,
                key,
                &rkey,
                &[claimant.as_bytes(), ttl.as_bytes()],
                false,
            )
            .await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        // DEL and the change hint, in one script.
        let reply = self
            .run_script(&self.scripts.delete, key, &rkey, &[], true)
            .await?;
        Ok(matches!(reply, Value::Int(n) if n > 0))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let full = self.redis_key(prefix);
        let mut pattern = glob_escape(&full);
        pattern.push('*');
        // Every server that holds keys (every master of a cluster), SCAN … MATCH … COUNT 1000.
        let raw = self
            .con
            .scan(&pattern)
            .await
            .map_err(|e| self.backend_error(e))?;
        // A key can come back more than once while the table grows: keep each once.
        let mut keys = BTreeSet::new();
        for raw in raw {
            // Keys that are not UTF-8 are not ours.
            let Ok(k) = String::from_utf8(raw) else {
                continue;
            };
            if let Some(name) = k.strip_prefix(&self.prefix) {
                if name.starts_with(prefix) {
                    keys.insert(name.to_owned());
                }
            }
        }
        Ok(keys.into_iter().collect())
    }
}

/// Escapes the characters Redis glob patterns give a meaning to.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("mp:a*b?[c]\\"), "mp:a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("é"), "é");
    }
}
