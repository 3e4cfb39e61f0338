//! [`RedisConfig`]: the settings of the Redis driver, from a `redis://` URL or built in code.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_REPLICA_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, SCHEMES,
};
use crate::driver::net;
use crate::Error;

/// The URL options this driver reads (the table on [`RedisConfig`]).
pub(super) const OPTIONS: &[&str] = &[
    "prefix",
    "connect_timeout",
    "response_timeout",
    "protocol",
    "replica_wait",
    "replica_timeout",
    "watch",
];

/// The settings of a [`RedisDriver`](super::RedisDriver): where the server is, how to log in,
/// the key prefix and the timeouts.
///
/// Read from a URL by [`RedisConfig::from_url`], or built in code with [`RedisConfig::new`] and
/// the methods below, each of which takes the config and gives it back changed.
///
/// # URL
///
/// `redis://[user[:password]@]host[:port][/db][?option=value&…]`: the port defaults to 6379,
/// the database to 0; user and password are percent-decoded. `rediss://` (TLS) is refused: this
/// build has no TLS.
///
/// | option | default | method | meaning |
/// |---|---|---|---|
/// | `prefix` | `mp:` | [`prefix`](Self::prefix) | put before every key, so several applications can share a database |
/// | `connect_timeout` | `2s` | [`connect_timeout`](Self::connect_timeout) | the longest a connection attempt may take (`500ms`, `2s`, `1.5`) |
/// | `response_timeout` | `5s` | [`response_timeout`](Self::response_timeout) | the longest a command may wait for its reply |
/// | `protocol` | `resp3` | [`resp3`](Self::resp3) | `resp3` or `resp2` (also `3`, `2`): the protocol spoken to the server (RESP2 to one older than Redis 6) |
/// | `replica_wait` | `0` | [`replica_wait`](Self::replica_wait) | after each write, wait until this many replicas have it (`WAIT` on the write's connection); `0`: do not wait |
/// | `replica_timeout` | `500ms` | [`replica_wait`](Self::replica_wait) | how long a write waits for those replicas, below `response_timeout` |
/// | `watch` | `true` | [`watch`](Self::watch) | `false`: writes announce nothing (no `PUBLISH` in the write scripts) and the storage cannot watch; only for a store nobody watches, since watchers in other processes would miss this process's writes |
///
/// Any other option is an [`Error::InvalidUrl`] that names it. Durations are positive and at
/// most a day. `Debug` never shows the password.
///
/// ```
/// use std::time::Duration;
/// use mp_storage::driver::redis::RedisConfig;
///
/// let from_url = RedisConfig::from_url("redis://app:s3cret@10.0.0.5:6380/2?prefix=app1:")?;
/// let in_code = RedisConfig::new("10.0.0.5")
///     .port(6380)
///     .db(2)
///     .username("app")
///     .password("s3cret")
///     .prefix("app1:")
///     .connect_timeout(Duration::from_secs(2));
/// assert_eq!(format!("{from_url:?}"), format!("{in_code:?}"));
/// assert!(!format!("{from_url:?}").contains("s3cret"));
/// # Ok::<(), mp_storage::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    resp3: bool,
    replicas: u32,
    replica_timeout: Duration,
    watch: bool,
}

impl RedisConfig {
    /// The server at `host` (a name or an IP address), port 6379, database 0, no login, and the
    /// defaults of the [options](Self#url).
    pub fn new(host: impl Into<String>) -> Self {
        RedisConfig {
            host: host.into(),
            port: DEFAULT_PORT,
            db: 0,
            username: None,
            password: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            resp3: true,
            replicas: 0,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            watch: true,
        }
    }

    /// Reads a `redis://` URL (see the [table](Self#url)), without connecting.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("redis", SCHEMES)?;
        parsed.only_options(OPTIONS)?;
        if parsed.scheme == "rediss" {
            return Err(parsed
                .invalid("TLS (rediss://) is not supported by this build of the redis driver"));
        }
        // The redis crate reads the address, the login and the database; the options are ours.
        let info = format!("redis:{}", parsed.body)
            .into_connection_info()
            .map_err(|e| parsed.invalid(format!("the redis crate refused it: {e}")))?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(parsed.invalid("expected redis://[user:pass@]host:port/db"));
        };
        let login = info.redis_settings();
        let mut config = RedisConfig::new(host.as_str()).port(*port).db(login.db());
        config.username = login.username().map(str::to_owned);
        config.password = login.password().map(str::to_owned);
        config.read_options(&parsed)?;
        Ok(config)
    }

    /// Reads the options of the [table](Self#url) from a parsed URL (the redis-cluster driver
    /// takes the same).
    pub(super) fn read_options(&mut self, parsed: &crate::url::Parsed<'_>) -> Result<(), Error> {
        let mut config = self.clone();
        if let Some(prefix) = parsed.option("prefix") {
            config = config.prefix(prefix);
        }
        if let Some(timeout) = parsed.duration_option("connect_timeout")? {
            config = config.connect_timeout(timeout);
        }
        if let Some(timeout) = parsed.duration_option("response_timeout")? {
            config = config.response_timeout(timeout);
        }
        if let Some(protocol) = parsed.option("protocol") {
            config = config.resp3(match protocol.to_ascii_lowercase().as_str() {
                "resp2" | "2" => false,
                "resp3" | "3" => true,
                _ => {
                    return Err(parsed.invalid(format!(
                        "option protocol must be resp2 or resp3, not {protocol:?}"
                    )))
                }
            });
        }
        if let Some(n) = parsed.option("replica_wait") {
            let n: u32 = n.parse().map_err(|_| {
                parsed.invalid(format!(
                    "option replica_wait must be a number of replicas (0 to wait for none), not \
                     {n:?}"
                ))
            })?;
            config.replicas = n;
        }
        if let Some(timeout) = parsed.duration_option("replica_timeout")? {
            config.replica_timeout = timeout;
        }
        if let Some(watch) = parsed.option("watch") {
            config = config.watch(match watch {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(parsed
                        .invalid(format!("option watch must be true or false, not {watch:?}")))
                }
            });
        }
        *self = config;
        Ok(())
    }

    /// Whether writes announce their changes, so that storages can watch scopes (contract
    /// rule 17). Default `true`; `false` saves the `PUBLISH` of each write, for a store that
    /// nobody watches.
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// Whether writes announce their changes.
    pub fn get_watch(&self) -> bool {
        self.watch
    }

    /// The server's port. Default 6379.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The database number (`SELECT`). Default 0.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// The user to log in as (Redis 6 ACLs). Default none: the `default` user.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password to log in with. Default none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The prefix put before every key. Default [`DEFAULT_PREFIX`] (`mp:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a connection attempt may take. Default
    /// [`DEFAULT_CONNECT_TIMEOUT`] (2 s); must not be zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest a command may wait for its reply. Default
    /// [`DEFAULT_RESPONSE_TIMEOUT`] (5 s); must not be zero.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Whether to speak RESP3 (Redis 6 and later) instead of RESP2. Default `true`; a server that
    /// does not know RESP3 is spoken to in RESP2 anyway.
    pub fn resp3(mut self, on: bool) -> Self {
        self.resp3 = on;
        self
    }

    /// Makes every write wait until `replicas` replicas have it, for at most `timeout`: the
    /// driver sends `WAIT replicas timeout` right after the write, on the same connection, in
    /// one pipeline. A write that fewer replicas acknowledged in time is
    /// [`Error::CommitUnknown`]: it stands on the master, but the master failing before a
    /// replica copies it would lose it. `0` (the default) does not wait: Redis replicates
    /// asynchronously, and a master that fails right after acknowledging a write can lose it.
    /// The timeout must be below the response timeout.
    pub fn replica_wait(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = replicas;
        self.replica_timeout = timeout;
        self
    }

    /// How many replicas a write waits for (0: none), and for how long at most.
    pub fn get_replica_wait(&self) -> (u32, Duration) {
        (self.replicas, self.replica_timeout)
    }

    /// The server's host.
    pub fn get_host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn get_port(&self) -> u16 {
        self.port
    }

    /// The database number.
    pub fn get_db(&self) -> i64 {
        self.db
    }

    /// The user to log in as, if any.
    pub fn get_username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password to log in with, if any (not public: it stays inside).
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    pub(super) fn get_password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The prefix put before every key.
    pub fn get_prefix(&self) -> &str {
        &self.prefix
    }

    /// The longest a connection attempt may take.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The longest a command may wait for its reply.
    pub fn get_response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Whether the driver speaks RESP3.
    pub fn get_resp3(&self) -> bool {
        self.resp3
    }

    /// The server's address, `host:port`, for messages.
    pub(super) fn addr(&self) -> String {
        net::addr(&self.host, self.port)
    }

    /// The config as a URL with the password left out, for errors about it.
    pub(super) fn redacted_url(&self) -> String {
        let login = match (&self.username, &self.password) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        format!("redis://{login}{}/{}", self.addr(), self.db)
    }

    /// Fails on settings the server cannot work with.
    pub(super) fn check(&self) -> Result<(), Error> {
        let bad = if self.host.is_empty() {
            "the host is empty"
        } else if self.connect_timeout.is_zero() {
            "the connect timeout is zero"
        } else if self.response_timeout.is_zero() {
            "the response timeout is zero"
        } else if self.replicas > 0 && self.replica_timeout.is_zero() {
            "the replica timeout is zero"
        } else if self.replicas > 0 && self.replica_timeout >= self.response_timeout {
            "the replica timeout must be below the response timeout (a write waits for its \
             replicas within its reply)"
        } else {
            return Ok(());
        };
        Err(crate::url::invalid(&self.redacted_url(), bad))
    }

    /// What the redis crate connects with.
    pub(super) fn connection_info(&self) -> Result<ConnectionInfo, Error> {
        let info = (self.host.as_str(), self.port)
            .into_connection_info()
            .map_err(|e| crate::url::invalid(&self.redacted_url(), e.to_string()))?;
        let mut login = info
            .redis_settings()
            .clone()
            .set_db(self.db)
            .set_protocol(if self.resp3 {
                ProtocolVersion::RESP3
            } else {
                ProtocolVersion::RESP2
            });
        if let Some(user) = &self.username {
            login = login.set_username(user);
        }
        if let Some(password) = &self.password {
            login = login.set_password(password);
        }
        Ok(info.set_redis_settings(login))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("resp3", &self.resp3)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RedisConfig {
        RedisConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match RedisConfig::from_url(url) {
            Err(Error::InvalidUrl { reason, url: shown }) => {
                assert!(!shown.contains("hunter2"), "{shown}");
                reason
            }
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = parse("redis://127.0.0.1/");
        assert_eq!(
            (c.get_host(), c.get_port(), c.get_db()),
            ("127.0.0.1", 6379, 0)
        );
        assert_eq!((c.get_username(), c.password.as_deref()), (None, None));
        assert_eq!(c.get_prefix(), DEFAULT_PREFIX);
        assert_eq!(c.get_connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.get_response_timeout(), DEFAULT_RESPONSE_TIMEOUT);
        assert!(c.get_resp3(), "RESP3 by default");
        assert_eq!(c.addr(), "127.0.0.1:6379");
        assert_eq!(
            format!("{c:?}"),
            format!("{:?}", RedisConfig::new("127.0.0.1"))
        );
        let c = parse("redis://h");
        assert_eq!((c.get_host(), c.get_port(), c.get_db()), ("h", 6379, 0));
    }

    #[test]
    fn address_login_and_database() {
        let c = parse("REDIS://us%40er:p%3Ass@cache.local:6380/3");
        assert_eq!(
            (c.get_host(), c.get_port(), c.get_db()),
            ("cache.local", 6380, 3)
        );
        assert_eq!(c.get_username(), Some("us@er"));
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        let c = parse("redis://:pw@h:1/");
        assert_eq!(
            (c.get_username(), c.password.as_deref()),
            (None, Some("pw"))
        );
        let c = parse("redis://[::1]:7000/1");
        assert_eq!((c.get_host(), c.addr().as_str()), ("::1", "[::1]:7000"));
    }

    #[test]
    fn options() {
        let c = parse(
            "redis://h/?prefix=a%3Ab&connect_timeout=500ms&response_timeout=1.5&protocol=resp3",
        );
        assert_eq!(c.get_prefix(), "a:b");
        assert_eq!(c.get_connect_timeout(), Duration::from_millis(500));
        assert_eq!(c.get_response_timeout(), Duration::from_millis(1500));
        assert!(c.get_resp3());
        assert!(!parse("redis://h/?protocol=2").get_resp3());
        assert!(parse("redis://h/?protocol=RESP3").get_resp3());
        assert_eq!(parse("redis://h/?prefix=").get_prefix(), "");
        assert_eq!(c.get_replica_wait(), (0, DEFAULT_REPLICA_TIMEOUT));
        let c = parse("redis://h/?replica_wait=2&replica_timeout=100ms");
        assert_eq!(c.get_replica_wait(), (2, Duration::from_millis(100)));
        assert!(c.check().is_ok());
        let c = parse("redis://h/?replica_wait=1&replica_timeout=5s&response_timeout=5s");
        assert!(c.check().is_err(), "the wait must fit in the reply's time");
        // The last value of an option wins.
        assert_eq!(parse("redis://h/?prefix=a&prefix=b").get_prefix(), "b");
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(refused("redis://h/?nope=1").contains("unknown option \"nope\""));
        assert!(refused("redis://h/?connect_timeout=soon").contains("connect_timeout"));
        assert!(refused("redis://h/?response_timeout=0").contains("response_timeout"));
        assert!(refused("redis://h/?protocol=resp4").contains("resp2 or resp3"));
        assert!(refused("redis://h/?replica_wait=-1").contains("replica_wait"));
        assert!(refused("redis://h/?replica_timeout=x").contains("replica_timeout"));
        assert!(refused("redis://h/notadb").contains("redis crate refused"));
        assert!(refused("rediss://h/").contains("TLS"));
        assert!(refused("mysql://h/").contains("redis driver takes"));
        assert!(refused("redis://0.0.0.0/").contains("redis crate refused"));
        refused("redis://user:hunter2@h/?nope=1");
        refused("redis://user:hunter2@h/x");
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let c = parse("redis://user:hunter2@h:1/2");
        let shown = format!("{c:?} {}", c.redacted_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: Some(\"***\")"), "{shown}");
        assert_eq!(c.redacted_url(), "redis://user:***@h:1/2");
        let c = RedisConfig::new("h")
            .password("hunter2")
            .connect_timeout(Duration::ZERO);
        match c.check() {
            Err(e) => assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}"),
            Ok(()) => panic!("a zero timeout was taken"),
        }
    }

    #[test]
    fn code_and_url_agree() {
        let url = parse("redis://u:pw@h:7/5?prefix=p:&connect_timeout=3s&protocol=resp3");
        let code = RedisConfig::new("h")
            .port(7)
            .db(5)
            .username("u")
            .password("pw")
            .prefix("p:")
            .connect_timeout(Duration::from_secs(3))
            .resp3(true);
        assert_eq!(format!("{url:?}"), format!("{code:?}"));
        assert_eq!(url.password, code.password);
        let info = code.connection_info().unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("h".to_owned(), 7));
        let login = info.redis_settings();
        assert_eq!(
            (login.db(), login.username(), login.password()),
            (5, Some("u"), Some("pw"))
        );
        assert_eq!(login.protocol(), ProtocolVersion::RESP3);
        assert!(RedisConfig::new("").check().is_err());
        assert!(code.check().is_ok());
    }
}
