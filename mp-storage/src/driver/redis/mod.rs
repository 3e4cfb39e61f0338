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
//! | `protocol` | `resp3` | `resp3` or `resp2`; RESP3 lets a connection the server closed be noticed at once (a write to a server that went down then fails as not sent); a server older than Redis 6 is spoken to in RESP2 |
//! | `watch` | `true` | `false`: the write scripts announce nothing and the storage cannot watch scopes (see *Watching*); for a store that nobody watches |
//!
//! A server that is down or unreachable is an [`Error::Backend`] of kind
//! [`BackendKind::Connection`] (or [`BackendKind::Timeout`]) within `connect_timeout`, whose
//! message names the server (`cannot connect to 127.0.0.1:6380: connection refused`): at
//! [`Storage::open`](crate::Storage::open), which connects at once, and on any later call while
//! the connection is being made again (the connection reconnects by itself, one attempt per
//! failed call). A server that answers but not in the Redis protocol (a URL pointed at a MySQL
//! port, say) fails the open at once, also with [`BackendKind::Connection`] (no Redis server
//! could be reached there): `the server at 127.0.0.1:3306 does not speak the redis protocol`.
//! `rediss://` (TLS) is not supported by this build.
//!
//! # Layout
//!
//! A scope named `n` is the hash at key `<prefix>n` with four fields:
//!
//! | field | holds |
//! |---|---|
//! | `v` | the version, in decimal |
//! | `s` | the schema version, in decimal |
//! | `d` | the data (the scope's JSON), as is |
//! | `t` | the commit tokens of the last 16 writes, oldest first, each as 16 lower-case hex digits, with no separator |
//! | `m` | the engine's notes on the record ([`Record::meta`]), as is; absent or empty for most |
//!
//! Versions and tokens stay strings inside Redis (Lua numbers are doubles): a compare is a string
//! compare, and the next version of a compare-and-swap is computed here, not in Lua.
//!
//! # Commands
//!
//! - load: one `HGETALL`.
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
//! Every script touches only `KEYS[1]`, so scopes can shard across a Redis Cluster.
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
//! leaves the `PUBLISH` out, for a store nobody watches.
//!
//! A record whose fields are missing or malformed (or a key that is not a hash) is
//! [`Error::Corrupt`] naming the key; it is left untouched (remove it to start over).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, Value};

use super::{
    Action, Capabilities, CasOutcome, ChangeStream, CommitOutcome, Driver, Expiry, Op, Record,
    Revision, WatchSet, Write,
};
use crate::driver::net::ServerError;
use crate::{BackendKind, Error};
use scripts::{with_publish, Lua, PUBLISH};

mod config;
mod error;
mod record;
mod scripts;
mod watch;

pub use config::RedisConfig;
use error::{backend_error, command_error, connect_error};
use record::{corrupt, parse_record, parse_version, token_hex};

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

const NAME: &str = "redis";

/// A driver over one Redis server (or one Redis-compatible server such as Valkey).
///
/// Cheap to clone: clones share one multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisDriver {
    con: ConnectionManager,
    prefix: String,
    cas: std::sync::Arc<Lua>,
    put: std::sync::Arc<Lua>,
    reserve: std::sync::Arc<Lua>,
    commit: std::sync::Arc<Lua>,
    expire: std::sync::Arc<Lua>,
    delete: std::sync::Arc<Lua>,
    /// Whether writes announce their changes (`watch=`).
    watch: bool,
    /// The client that opens the change subscription's own connection (contract rule 17).
    client: redis::Client,
    /// The server's `host:port`, for errors and `Debug`.
    addr: String,
    connect_timeout: Duration,
    db: i64,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("addr", &self.addr)
            .field("db", &self.db)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDriver {
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
        let addr = config.addr();
        let connect_timeout = config.get_connect_timeout();
        // RESP3 by default: the connection manager then hears at once of a connection the
        // server closed, so a write to a server that went down fails as "not sent" instead of
        // being handed to a dead connection. A server older than Redis 6 does not know HELLO:
        // speak RESP2 to it.
        let con = match connect_manager(&config, config.get_resp3()).await {
            Err(e)
                if config.get_resp3()
                    && e.as_redis()
                        .is_some_and(|r| r.to_string().contains("HELLO")) =>
            {
                connect_manager(&config, false).await
            }
            other => other,
        };
        let (con, client) = match con {
            Ok(connected) => connected,
            Err(Connect::Redis(e)) if e.kind() == ErrorKind::InvalidClientConfig => {
                return Err(crate::url::invalid(&config.redacted_url(), e.to_string()));
            }
            Err(Connect::Redis(e)) => return Err(connect_error(e, &addr)),
            Err(Connect::Config(e)) => return Err(e),
            Err(Connect::TimedOut) => {
                return Err(Error::backend(
                    NAME,
                    BackendKind::Timeout,
                    ServerError::cannot_connect(
                        &addr,
                        format_args!("no answer within {connect_timeout:?}"),
                        None,
                    ),
                ))
            }
        };
        let publish = config.get_watch().then_some(PUBLISH);
        Ok(RedisDriver {
            watch: config.get_watch(),
            con,
            prefix: config.get_prefix().to_owned(),
            cas: std::sync::Arc::new(Lua::new(with_publish(publish, scripts::CAS_SCRIPT))),
            reserve: std::sync::Arc::new(Lua::new(scripts::RESERVE_SCRIPT.to_owned())),
            commit: std::sync::Arc::new(Lua::new(with_publish(publish, scripts::COMMIT_SCRIPT))),
            expire: std::sync::Arc::new(Lua::new(with_publish(publish, scripts::EXPIRE_SCRIPT))),
            delete: std::sync::Arc::new(Lua::new(with_publish(publish, scripts::DELETE_SCRIPT))),
            put: std::sync::Arc::new(Lua::new(with_publish(
                publish,
                &format!("{}{}", scripts::PUT_CHECK, scripts::PUT_SCRIPT),
            ))),
            client,
            addr,
            connect_timeout,
            db: config.get_db(),
        })
    }

    /// The prefix put before every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server's address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a command that only reads. When the connection turns out to be dropped (the server
    /// restarted, or closed an idle connection), it is sent once more on the new connection:
    /// reading twice is harmless, and a handle idle for a while should not fail its first read.
    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match cmd.query_async(&mut self.con.clone()).await {
            Err(e) if e.is_connection_dropped() => cmd.query_async(&mut self.con.clone()).await,
            other => other,
        }
    }

    /// Runs a script: `EVALSHA`, then `EVAL` when the server lost it. A write is sent once as
    /// `EVALSHA`; `NOSCRIPT` means the server did not run it, so sending `EVAL` is safe.
    /// A pipeline of reads, sent once more when the connection turned out to be dropped.
    async fn read_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match pipe.query_async(&mut self.con.clone()).await {
            Err(e) if e.is_connection_dropped() => pipe.query_async(&mut self.con.clone()).await,
            other => other,
        }
    }

    async fn run_script(&self, lua: &Lua, rkey: &str, args: &[&[u8]]) -> redis::RedisResult<Value> {
        self.run_script_on(lua, &[rkey], args).await
    }

    /// [`RedisDriver::run_script`] over several keys.
    async fn run_script_on(
        &self,
        lua: &Lua,
        rkeys: &[&str],
        args: &[&[u8]],
    ) -> redis::RedisResult<Value> {
        match lua
            .evalsha(rkeys, args)
            .query_async(&mut self.con.clone())
            .await
        {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                lua.eval(rkeys, args)
                    .query_async(&mut self.con.clone())
                    .await
            }
            other => other,
        }
    }

    fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }
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

/// Why a first connection failed.
enum Connect {
    Redis(redis::RedisError),
    Config(Error),
    TimedOut,
}

impl Connect {
    fn as_redis(&self) -> Option<&redis::RedisError> {
        match self {
            Connect::Redis(e) => Some(e),
            _ => None,
        }
    }
}

/// Makes the connection manager of `config`, speaking RESP3 or RESP2, within the connect
/// timeout (name resolution included).
async fn connect_manager(
    config: &RedisConfig,
    resp3: bool,
) -> Result<(ConnectionManager, redis::Client), Connect> {
    let connect_timeout = config.get_connect_timeout();
    let info = config
        .clone()
        .resp3(resp3)
        .connection_info()
        .map_err(Connect::Config)?;
    let client = redis::Client::open(info).map_err(|e| {
        Connect::Config(crate::url::invalid(
            &config.redacted_url(),
            format!("the redis crate refused it: {e}"),
        ))
    })?;
    // One connection attempt per call that needs one, so that a server that is down fails a
    // call within `connect_timeout` instead of after a series of retries.
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(config.get_response_timeout()))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_secs(1));
    match tokio::time::timeout(
        connect_timeout,
        ConnectionManager::new_with_config(client.clone(), manager),
    )
    .await
    {
        Ok(r) => r.map(|con| (con, client)).map_err(Connect::Redis),
        Err(_) => Err(Connect::TimedOut),
    }
}

#[async_trait]
impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let rkey = self.redis_key(key);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&rkey);
        let reply: Value = self
            .read(&cmd)
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        parse_record(reply, key, &rkey)
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
        let args: [&[u8]; 10] = [
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
        ];
        let reply = self
            .run_script(&self.cas, &rkey, &args)
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        match reply {
            Value::Int(1) => Ok(CasOutcome::Committed(version)),
            other => {
                // At the expected revision too, when another claimant reserved the scope.
                Ok(CasOutcome::Conflict(parse_record(other, key, &rkey)?))
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
        let reply = self
            .run_script(&self.put, &rkey, &args)
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        match &reply {
            Value::BulkString(b) => parse_version(b),
            Value::SimpleString(s) => parse_version(s.as_bytes()),
            _ => None,
        }
        .ok_or_else(|| corrupt(key, &rkey, "the version after the write is not a number"))
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::NONE.with_multi_key_commit().with_expiry();
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
        Some(watch::changes(
            self.client.clone(),
            self.prefix.clone(),
            self.addr.clone(),
            self.connect_timeout,
            watched,
        ))
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        let (kind, value) = expiry_args(expiry);
        let reply = self
            .run_script(&self.expire, &rkey, &[kind, value.as_bytes()])
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        Ok(matches!(reply, Value::Int(1)))
    }

    async fn watch_load(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        // One round trip: each HGETALL with a PTTL, for the expiry a load leaves out.
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let mut pipe = redis::pipe();
        for rkey in &rkeys {
            pipe.cmd("HGETALL").arg(rkey).cmd("PTTL").arg(rkey);
        }
        let replies: Vec<Value> =
            self.read_pipe(&pipe)
                .await
                .map_err(|e| match (keys.first(), rkeys.first()) {
                    (Some(k), Some(r)) => command_error(e, &self.addr, k, r),
                    _ => backend_error(e, &self.addr),
                })?;
        let now = super::now_ms();
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for (k, r) in keys.iter().zip(&rkeys) {
            let (Some(reply), Some(ttl)) = (replies.next(), replies.next()) else {
                return Err(corrupt(k, r, "the reply to HGETALL and PTTL is short"));
            };
            let record = parse_record(reply, k, r)?;
            out.push(record.map(|rec| match ttl {
                Value::Int(ms) if ms >= 0 => rec.with_expiry(Some(now.saturating_add(ms as u64))),
                _ => rec,
            }));
        }
        Ok(out)
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        // One round trip: the HGETALLs pipelined.
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let mut pipe = redis::pipe();
        for rkey in &rkeys {
            pipe.cmd("HGETALL").arg(rkey);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut self.con.clone()).await {
            Err(e) if e.is_connection_dropped() => pipe.query_async(&mut self.con.clone()).await,
            other => other,
        }
        .map_err(|e| match (keys.first(), rkeys.first()) {
            (Some(k), Some(r)) => command_error(e, &self.addr, k, r),
            _ => backend_error(e, &self.addr),
        })?;
        keys.iter()
            .zip(&rkeys)
            .zip(replies)
            .map(|((k, r), reply)| parse_record(reply, k, r))
            .collect()
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        if let [Op {
            key,
            expected,
            action: Action::Write(w),
        }] = ops
        {
            return Ok(match self.cas(key, *expected, *w).await? {
                CasOutcome::Committed(v) => CommitOutcome::Committed(vec![Some(v)]),
                CasOutcome::Conflict(r) => CommitOutcome::Conflict(vec![(0, r)]),
            });
        }
        let rkeys: Vec<String> = ops.iter().map(|op| self.redis_key(op.key)).collect();
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
        let reply = self
            .run_script_on(&self.commit, &keys, &args)
            .await
            .map_err(|e| match (ops.first(), rkeys.first()) {
                (Some(op), Some(r)) => command_error(e, &self.addr, op.key, r),
                _ => backend_error(e, &self.addr),
            })?;
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
            .run_script(&self.reserve, &rkey, &[claimant.as_bytes(), ttl.as_bytes()])
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        Ok(matches!(reply, Value::Int(1)))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        let reply = self
            .run_script(&self.delete, &rkey, &[])
            .await
            .map_err(|e| command_error(e, &self.addr, key, &rkey))?;
        Ok(matches!(reply, Value::Int(n) if n > 0))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let full = self.redis_key(prefix);
        let mut pattern = glob_escape(&full);
        pattern.push('*');
        // A key can come back more than once while the table grows: keep each once.
        let mut keys = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .read(&cmd)
                .await
                .map_err(|e| backend_error(e, &self.addr))?;
            for raw in batch {
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
            if next == 0 {
                break;
            }
            cursor = next;
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
