//! `redis-cluster://host:port[,host:port…]/`: the Redis driver over a Redis Cluster.
//!
//! The same scripts, record layout and calls as the [single-server driver](super), through
//! redis-rs's async cluster client: each command goes to the master of its key's hash slot;
//! redirects while slots move (`MOVED`, `ASK`) and a failover (a replica promoted after its
//! master died) are followed by the client, which learns the new map of slots and sends the
//! command again. The engine sees an error only when the cluster cannot answer within
//! `response_timeout`.
//!
//! # Options
//!
//! `redis-cluster://[user[:password]@]host:port[,host:port…][/][?option=value&…]`: a few nodes
//! of the cluster to start from (the client finds the rest), and the options of `redis://`
//! ([`RedisConfig`]): `prefix`, `connect_timeout`, `response_timeout`, `protocol`,
//! `replica_wait`, `replica_timeout`. A cluster has one database: a path other than `/` or `/0`
//! is refused.
//!
//! # Slots, and several scopes in one commit
//!
//! A scope is one key, `<prefix><name>`, in one of 16384 hash slots (CRC16 of the key, or of
//! the part between the first `{` and the next `}` when there is one: its *hash tag*). Scopes
//! spread over every master. A commit of several scopes (`scoped_many`) is one script, which
//! Redis runs only on keys of one slot, so their names must share a hash tag:
//! `{alice}:wallet` and `{alice}:cart` can be updated together; `alice:wallet` and `bob:wallet`
//! cannot, and are refused before anything is sent with [`Error::InvalidName`] saying so
//! (never a `CROSSSLOT` from the server). Reads of several scopes (`get_many`) work across
//! slots: one pipeline per slot, sent at once. `list` scans every master. A prefix with a `{`
//! in it takes part in the hash tag: `prefix={app}:` puts every scope in one slot (one master,
//! any names together).
//!
//! # Watching
//!
//! [`Storage::watch`](crate::Storage::watch) works as on one server, through sharded pub/sub:
//! the write scripts announce each change with `SPUBLISH` on the channel named like the key,
//! which lives in the key's hash slot, so the message is sent by the key's master to its own
//! subscribers only (a plain `PUBLISH` would travel to every node of the cluster). A storage
//! that watches opens one more cluster connection (RESP3, whatever `protocol` says, since
//! sharded subscriptions need pushes) and `SSUBSCRIBE`s at each slot's master to the channels
//! of its watched keys. When a node's connection drops, a master fails over or a slot moves,
//! the subscriptions follow the slot (sent again every 500 ms until confirmed), and each key
//! whose subscription was made again is read again: no committed change is missed. Needs
//! Redis 7 (`SPUBLISH`). A user needs the channel rights of the single-server driver.
//!
//! # Durability across a failover
//!
//! Redis replicates asynchronously: a master acknowledges a write before its replica has it,
//! so a master killed at that moment takes the write with it, and the promoted replica goes
//! on without it. With `replica_wait=N` every write (update, creation, `set`, removal, expiry,
//! several-scope commit) is followed by `WAIT N replica_timeout` in the same pipeline, on the
//! same connection to that master: an update is acknowledged only once N replicas have it, so a
//! failover that promotes one of them keeps it. Fewer replicas in time is
//! [`Error::CommitUnknown`] (the write stands on the master and may or may not survive its
//! failure), and so is a write whose reply was lost: the engine settles such a write from the
//! commit tokens on the master when the driver does not wait, but the tokens say nothing of the
//! replicas. This is not consensus: a replica that has the write but is not the one promoted
//! (with several replicas per master), or a network split in which the old master keeps taking
//! writes, can still lose it (`WAIT` makes loss unlikely, not impossible, as the Redis
//! documentation says). `BENCHMARKS.md` gives what it costs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mp_storage::Error> {
//! use mp_storage::{Scope, Storage};
//!
//! #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
//! struct Account { balance: i64 }
//!
//! let st = Storage::open("redis-cluster://10.0.0.1:7000,10.0.0.2:7000/?replica_wait=1").await?;
//! // One hash tag, one slot: moved together, all or nothing.
//! st.scoped_many(&["{alice}:wallet", "{alice}:savings"], |a: &mut [Account]| {
//!     a[0].balance -= 10;
//!     a[1].balance += 10;
//! })
//! .await?;
//! # Ok(()) }
//! ```

use async_trait::async_trait;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisResult, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::config::{RedisConfig, OPTIONS};
use super::error::connect_error;
use super::link::{scan_with, sealed};
use super::RedisDriver;
use crate::driver::net::{self, ServerError};
use crate::driver::{ChangeStream, WatchSet};
use crate::{BackendKind, Error};

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["redis-cluster"];

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

pub(super) const NAME: &str = "redis-cluster";

/// The Redis driver over a Redis Cluster (see the [module](self)).
///
/// ```no_run
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// use mp_storage::driver::redis::RedisClusterDriver;
/// let driver = RedisClusterDriver::open_cluster("redis-cluster://127.0.0.1:7000/").await?;
/// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
/// # Ok(()) }
/// ```
pub type RedisClusterDriver = RedisDriver<Cluster>;

/// The connection to a Redis Cluster: one multiplexed connection per node, commands routed by
/// their keys' hash slots.
#[derive(Clone)]
pub struct Cluster {
    con: ClusterConnection,
    /// Makes the change feed's own connection.
    config: Arc<RedisClusterConfig>,
    /// The nodes the driver started from, `host:port,…`, for errors and `Debug`.
    addr: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The hash slot of a Redis key: CRC16 (XMODEM) of its hash tag (the bytes between the first
/// `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
///
/// ```
/// use mp_storage::driver::redis::cluster::slot;
/// assert_eq!(slot(b"{alice}:wallet"), slot(b"{alice}:cart"));
/// assert_eq!(slot(b"{alice}:wallet"), slot(b"alice"));
/// assert_ne!(slot(b"alice:wallet"), slot(b"bob:wallet"));
/// ```
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster computes it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[async_trait]
impl sealed::Link for Cluster {
    const NAME: &'static str = NAME;

    fn addr(&self) -> &str {
        &self.addr
    }

    fn publish(&self) -> Option<&'static str> {
        Some("SPUBLISH")
    }

    fn changes(&self, prefix: &str, watched: Arc<WatchSet>) -> Option<ChangeStream> {
        Some(super::cluster_watch::changes(
            self.config.clone(),
            prefix.to_owned(),
            self.addr.clone(),
            watched,
        ))
    }

    async fn send(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        // A server's error reply as an error (the cluster client hands it back as a value).
        self.con
            .clone()
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error)
    }

    async fn send_pipe(&self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        self.con
            .clone()
            .req_packed_commands(pipe, 0, pipe.len())
            .await
    }

    fn groups(&self, rkeys: &[String]) -> Vec<Vec<usize>> {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, k) in rkeys.iter().enumerate() {
            by_slot.entry(slot(k.as_bytes())).or_default().push(i);
        }
        by_slot.into_values().collect()
    }

    fn one_slot<'a>(
        &self,
        rkeys: &[String],
        name: impl Fn(usize) -> &'a str + Send,
    ) -> Result<(), Error> {
        let Some(first) = rkeys.first() else {
            return Ok(());
        };
        let s0 = slot(first.as_bytes());
        match rkeys.iter().position(|k| slot(k.as_bytes()) != s0) {
            None => Ok(()),
            Some(i) => Err(Error::InvalidName {
                name: crate::error::shorten(name(i)),
                reason: "it is in another hash slot of the Redis Cluster than the first scope of \
                         the commit, and several scopes in one commit must share a slot: give \
                         their names one hash tag, as in {alice}:wallet and {alice}:cart",
            }),
        }
    }

    async fn scan(&self, pattern: &str) -> RedisResult<Vec<Vec<u8>>> {
        // One slot of each master, from the cluster's map of slots; SCAN routed to the master
        // of that slot (through a failover too: the route follows the slot).
        let mut shards = redis::cmd("CLUSTER");
        shards.arg("SLOTS");
        let reply = self.send(&shards).await?;
        let mut masters: BTreeMap<String, u16> = BTreeMap::new();
        if let Value::Array(ranges) = reply {
            for range in ranges {
                let Value::Array(parts) = range else { continue };
                let (Some(Value::Int(start)), Some(Value::Array(master))) =
                    (parts.first(), parts.get(2))
                else {
                    continue;
                };
                let node = master
                    .iter()
                    .take(2)
                    .map(|v| match v {
                        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        Value::Int(n) => n.to_string(),
                        _ => String::new(),
                    })
                    .collect::<Vec<_>>()
                    .join(":");
                if let Ok(start) = u16::try_from(*start) {
                    masters.entry(node).or_insert(start);
                }
            }
        }
        if masters.is_empty() {
            return Err(redis::RedisError::from((
                redis::ServerErrorKind::ClusterDown.into(),
                "CLUSTER SLOTS named no master",
            )));
        }
        let scans = masters.into_values().map(|slot| {
            scan_with(pattern, move |cmd| {
                let mut con = self.con.clone();
                async move {
                    let route =
                        SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                    con.route_command(cmd, RoutingInfo::SingleNode(route))
                        .await
                        .and_then(Value::extract_error)
                }
            })
        });
        let found = futures::future::try_join_all(scans).await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// The settings of a [`RedisClusterDriver`]: the nodes to start from, and the options of
/// [`RedisConfig`] (prefix, timeouts, protocol, replica wait, login).
///
/// ```
/// use std::time::Duration;
/// use mp_storage::driver::redis::{RedisClusterConfig, RedisConfig};
///
/// let from_url = RedisClusterConfig::from_url(
///     "redis-cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7000/?prefix=app1:&replica_wait=1",
/// )?;
/// let in_code = RedisClusterConfig::new([("10.0.0.1", 7000), ("10.0.0.2", 7000)]).options(
///     RedisConfig::new("10.0.0.1")
///         .port(7000)
///         .username("app")
///         .password("s3cret")
///         .prefix("app1:")
///         .replica_wait(1, Duration::from_millis(500)),
/// );
/// assert_eq!(format!("{from_url:?}"), format!("{in_code:?}"));
/// assert!(!format!("{from_url:?}").contains("s3cret"));
/// # Ok::<(), mp_storage::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisClusterConfig {
    nodes: Vec<(String, u16)>,
    options: RedisConfig,
}

impl fmt::Debug for RedisClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterConfig")
            .field("nodes", &self.nodes)
            .field("options", &self.options)
            .finish()
    }
}

impl RedisClusterConfig {
    /// The cluster reached through `nodes` (`(host, port)`, one or more), with the defaults of
    /// the options.
    pub fn new<H: Into<String>>(nodes: impl IntoIterator<Item = (H, u16)>) -> Self {
        let nodes: Vec<(String, u16)> = nodes.into_iter().map(|(h, p)| (h.into(), p)).collect();
        let first = nodes.first().map(|(h, _)| h.clone()).unwrap_or_default();
        RedisClusterConfig {
            options: RedisConfig::new(first).port(nodes.first().map_or(0, |n| n.1)),
            nodes,
        }
    }

    /// Reads a `redis-cluster://` URL (see the [module](self)), without connecting.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme(NAME, SCHEMES)?;
        parsed.only_options(OPTIONS)?;
        let shape = "expected redis-cluster://[user:pass@]host:port[,host:port…]/";
        let Some(rest) = parsed.body.strip_prefix("//") else {
            return Err(parsed.invalid(shape));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !matches!(path, "" | "0") {
            return Err(parsed.invalid(format!(
                "a Redis Cluster has one database: the path must be / or /0, not /{path}"
            )));
        }
        let (login, hosts) = match authority.rsplit_once('@') {
            Some((login, hosts)) => (Some(login), hosts),
            None => (None, authority),
        };
        let mut nodes = Vec::new();
        let mut options = None;
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(parsed.invalid(format!("{shape} (an empty host)")));
            }
            // The redis crate reads each address and the login.
            let one = match login {
                Some(login) => format!("redis://{login}@{host}/"),
                None => format!("redis://{host}/"),
            };
            let info = one
                .as_str()
                .into_connection_info()
                .map_err(|e| parsed.invalid(format!("the redis crate refused {host:?}: {e}")))?;
            let ConnectionAddr::Tcp(h, p) = info.addr() else {
                return Err(parsed.invalid(shape));
            };
            if options.is_none() {
                let settings = info.redis_settings();
                let mut o = RedisConfig::new(h.as_str()).port(*p);
                if let Some(u) = settings.username() {
                    o = o.username(u);
                }
                if let Some(pw) = settings.password() {
                    o = o.password(pw);
                }
                options = Some(o);
            }
            nodes.push((h.clone(), *p));
        }
        let Some(mut options) = options else {
            return Err(parsed.invalid(shape));
        };
        options.read_options(&parsed)?;
        Ok(RedisClusterConfig { nodes, options })
    }

    /// The options (prefix, timeouts, protocol, replica wait, login) of `options`; its host,
    /// port and database are not used.
    pub fn options(mut self, options: RedisConfig) -> Self {
        self.options = options;
        self
    }

    /// The nodes the driver starts from.
    pub fn get_nodes(&self) -> &[(String, u16)] {
        &self.nodes
    }

    /// The options.
    pub fn get_options(&self) -> &RedisConfig {
        &self.options
    }

    /// The nodes as `host:port,…`, for messages.
    fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|(h, p)| net::addr(h, *p))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn check(&self) -> Result<(), Error> {
        if self.nodes.is_empty() || self.nodes.iter().any(|(h, _)| h.is_empty()) {
            return Err(crate::url::invalid(
                &format!("redis-cluster://{}/", self.addrs()),
                "no node, or a node with an empty host",
            ));
        }
        self.options.check()
    }
}

impl RedisDriver<Cluster> {
    /// Connects to the cluster `url` names (see the [module](self) for the options).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use mp_storage::driver::redis::RedisClusterDriver;
    /// let url = "redis-cluster://127.0.0.1:7000,127.0.0.1:7001/?prefix=app1:";
    /// let driver = RedisClusterDriver::open_cluster(url).await?;
    /// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn open_cluster(url: &str) -> Result<RedisClusterDriver, Error> {
        Self::connect_cluster(RedisClusterConfig::from_url(url)?).await
    }

    /// Connects to the cluster `config` names, within its connect timeout: reads the map of
    /// slots from the first node that answers, then connects to every master.
    pub async fn connect_cluster(config: RedisClusterConfig) -> Result<RedisClusterDriver, Error> {
        config.check()?;
        let o = &config.options;
        let con = match connect_cluster(&config, o.get_resp3(), None).await {
            Err(e) if o.get_resp3() && e.to_string().contains("HELLO") => {
                connect_cluster(&config, false, None).await
            }
            other => other,
        };
        let addr = config.addrs();
        let con = match con {
            Ok(con) => con,
            Err(e) if e.kind() == ErrorKind::InvalidClientConfig => {
                return Err(crate::url::invalid(
                    &format!("redis-cluster://{addr}/"),
                    e.to_string(),
                ))
            }
            Err(e) if e.is_timeout() => {
                return Err(Error::backend(
                    NAME,
                    BackendKind::Timeout,
                    ServerError::cannot_connect(
                        &addr,
                        format_args!("no answer within {:?}", o.get_connect_timeout()),
                        None,
                    ),
                ))
            }
            Err(e) => return Err(connect_error(e, NAME, &addr)),
        };
        let config = Arc::new(config);
        let o = config.options.clone();
        Ok(RedisDriver::over(Cluster { con, config, addr }, &o))
    }
}

/// The change feed's cluster connection: RESP3 (sharded subscriptions need it), its pushes
/// (messages, confirmations, dropped connections) sent to `pushes`.
pub(super) async fn connect_watch(
    config: &RedisClusterConfig,
    pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
) -> RedisResult<ClusterConnection> {
    connect_cluster(config, true, Some(pushes)).await
}

/// The cluster client of `config`, connected within the connect timeout. Commands are sent
/// again (after `MOVED`, `ASK`, a lost connection, a failover) until the response timeout.
/// With `pushes`, what the servers push (RESP3) goes there.
async fn connect_cluster(
    config: &RedisClusterConfig,
    resp3: bool,
    pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> RedisResult<ClusterConnection> {
    let o = &config.options;
    let infos: Vec<redis::ConnectionInfo> = config
        .nodes
        .iter()
        .map(|(h, p)| (h.as_str(), *p).into_connection_info())
        .collect::<RedisResult<_>>()?;
    let mut builder = ClusterClientBuilder::new(infos)
        .connection_timeout(o.get_connect_timeout())
        .response_timeout(o.get_response_timeout())
        .overall_response_timeout(Some(o.get_response_timeout()))
        // Up to 40 tries, 20 ms to 500 ms apart, within the response timeout: a failover
        // (about the node timeout plus an election) fits.
        .retries(40)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .retry_wait_formula(10, 2)
        .use_protocol(if resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        });
    if let Some(user) = o.get_username() {
        builder = builder.username(user);
    }
    if let Some(password) = o.get_password() {
        builder = builder.password(password);
    }
    if let Some(pushes) = pushes {
        builder = builder.push_sender(pushes);
    }
    let client = builder.build()?;
    match tokio::time::timeout(o.get_connect_timeout(), client.get_async_connection()).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // The check value of CRC16/XMODEM, and slots Redis computes (CLUSTER KEYSLOT).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b""), 0);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag is no tag; only the first { counts.
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % SLOTS);
        assert_eq!(slot(b"a{b{c}d}"), slot(b"b{c"));
        assert_eq!(slot(b"a{b"), crc16(b"a{b") % SLOTS);
    }

    fn parse(url: &str) -> RedisClusterConfig {
        RedisClusterConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match RedisClusterConfig::from_url(url) {
            Err(Error::InvalidUrl { reason, url: shown }) => {
                assert!(!shown.contains("hunter2"), "{shown}");
                reason
            }
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn urls() {
        let c = parse("redis-cluster://127.0.0.1:7101,127.0.0.1:7102,[::1]:7103/");
        assert_eq!(
            c.get_nodes(),
            [
                ("127.0.0.1".to_owned(), 7101),
                ("127.0.0.1".to_owned(), 7102),
                ("::1".to_owned(), 7103)
            ]
        );
        assert_eq!(c.addrs(), "127.0.0.1:7101,127.0.0.1:7102,[::1]:7103");
        assert_eq!(c.get_options().get_prefix(), super::super::DEFAULT_PREFIX);
        let c =
            parse("redis-cluster://u:hunter2@h:1?prefix=p:&replica_wait=2&replica_timeout=50ms");
        assert_eq!(c.get_nodes(), [("h".to_owned(), 1)]);
        assert_eq!(c.get_options().get_username(), Some("u"));
        assert_eq!(c.get_options().get_prefix(), "p:");
        assert_eq!(
            c.get_options().get_replica_wait(),
            (2, Duration::from_millis(50))
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            parse("redis-cluster://h/0").get_nodes(),
            [("h".to_owned(), 6379)]
        );
        assert!(refused("redis-cluster://h:1/2").contains("one database"));
        assert!(refused("redis-cluster://h:1,,h:2/").contains("empty host"));
        assert!(refused("redis-cluster:h:1").contains("expected redis-cluster://"));
        assert!(refused("redis-cluster://h:1/?nope=1").contains("unknown option"));
        assert!(refused("redis-cluster://u:hunter2@h:1/?protocol=x").contains("resp2 or resp3"));
        assert!(refused("redis://h:1/").contains("redis-cluster driver takes"));
    }
}
