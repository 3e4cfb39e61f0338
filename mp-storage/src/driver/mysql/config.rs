//! [`MysqlConfig`]: the settings of the MySQL driver, from a `mysql://` URL or built in code.

use std::fmt;
use std::time::Duration;

use mysql_async::{Opts, OptsBuilder};

use super::{DEFAULT_TABLE, SCHEMES};
use crate::driver::net;
use crate::error::shorten;
use crate::Error;

/// The longest table name MySQL takes.
const MAX_TABLE_LEN: usize = 64;

/// The URL options this driver reads itself; the others go to `mysql_async`.
const OPTIONS: &[&str] = &["table", "watch_poll_ms"];

/// How often watchers read the watched scopes when the URL does not say (`watch_poll_ms`).
pub const DEFAULT_WATCH_POLL: Duration = Duration::from_millis(100);

/// How long a pooled connection may stay unused before the pool closes it (down to `pool_min`)
/// when the URL does not say (`inactive_connection_ttl`, in seconds).
///
/// `mysql_async`'s own default, 0, closes every connection handed back while `pool_min` others
/// are idle: under a steady load of more tasks than `pool_min` the pool then closes and opens
/// connections all the time, each new one costing a login and the statements' preparation
/// (with 32 tasks reading, about one call in twelve, and a p99 of 7–9 ms instead of 2 ms).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most connections the pool opens when the URL does not say (`pool_max`; at least
/// `pool_min`). `mysql_async`'s own default, 100, with connections kept while they are used
/// ([`DEFAULT_IDLE_TIMEOUT`]), lets one process hold most of a default server's 151: the pool
/// takes a connection back a moment after its user lets go of it, and opens a new one for a
/// caller that comes in between.
pub const DEFAULT_POOL_MAX: usize = 32;

/// The range of `watch_poll_ms`.
const WATCH_POLL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// The settings of a [`MysqlDriver`](super::MysqlDriver): the server, the login, the database,
/// the table, and the pool settings of `mysql_async`.
///
/// Read from a URL by [`MysqlConfig::from_url`], or built in code with [`MysqlConfig::new`] and
/// the methods below, each of which takes the config and gives it back changed.
///
/// # URL
///
/// `mysql://[user[:password]@]host[:port][/database][?option=value&…]`: the port defaults to
/// 3306; user and password are percent-decoded. `mysql_async` reads the address and the login.
///
/// | option | default | method | meaning |
/// |---|---|---|---|
/// | `table` | `mp_scopes` | [`table`](Self::table) | the table, `[A-Za-z0-9_]{1,64}`; created if absent |
/// | `watch_poll_ms` | `100` | [`watch_poll`](Self::watch_poll) | how often the watchers of a storage read their scopes (MySQL has no change notifications): one `SELECT … WHERE name IN (…)` for all of them, per 500 scopes; 10 to 60000 |
/// | `pool_max` | `32` | [`pool_max`](Self::pool_max) | the most connections open at once (at least `pool_min`, 10 by default); a call waits for one when all are in use (see [`DEFAULT_POOL_MAX`]) |
/// | `inactive_connection_ttl` | `60` | [`idle_timeout`](Self::idle_timeout) | seconds a pooled connection may stay unused before it is closed (down to `pool_min`); `0` closes every connection handed back while `pool_min` others are idle (see [`DEFAULT_IDLE_TIMEOUT`]) |
/// | anything else | | | handed to `mysql_async` as is (`pool_min`, `conn_ttl`, `stmt_cache_size`, `tcp_keepalive`, `socket`, …; see `mysql_async::Opts`), which refuses what it does not know |
///
/// Two `mysql_async` settings are always the driver's: `client_found_rows=true` (so an `UPDATE`
/// reports the rows it matched) and `reset_connection=false` (a reset on every return to the pool
/// would drop the prepared statements and cost a round trip per call). TLS is not compiled in.
/// `Debug` never shows the password.
///
/// ```
/// use mp_storage::driver::mysql::MysqlConfig;
///
/// let from_url = MysqlConfig::from_url("mysql://app:s3cret@db.local:3307/shop?table=scopes")?;
/// let in_code = MysqlConfig::new("db.local")
///     .port(3307)
///     .user("app")
///     .password("s3cret")
///     .database("shop")
///     .table("scopes");
/// assert_eq!(format!("{from_url:?}"), format!("{in_code:?}"));
/// assert!(!format!("{from_url:?}").contains("s3cret"));
/// # Ok::<(), mp_storage::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct MysqlConfig {
    /// Everything `mysql_async` reads: address, login, database, pool settings.
    opts: Opts,
    table: String,
    watch_poll: Duration,
}

impl MysqlConfig {
    /// The server at `host` (a name or an IP address), port 3306, no user, no database, and
    /// the table [`DEFAULT_TABLE`].
    pub fn new(host: impl Into<String>) -> Self {
        MysqlConfig {
            opts: OptsBuilder::default().ip_or_hostname(host).into(),
            table: DEFAULT_TABLE.to_owned(),
            watch_poll: DEFAULT_WATCH_POLL,
        }
        .idle_timeout(DEFAULT_IDLE_TIMEOUT)
        .pool_max(DEFAULT_POOL_MAX)
    }

    /// Reads a `mysql://` URL (see the [table](Self#url)), without connecting.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("mysql", SCHEMES)?;
        let table = parsed.option("table").unwrap_or(DEFAULT_TABLE).to_owned();
        check_table(&table).map_err(|reason| parsed.invalid(reason))?;
        let watch_poll = match parsed.option("watch_poll_ms") {
            None => DEFAULT_WATCH_POLL,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if WATCH_POLL_MS.contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(parsed.invalid(format!(
                        "option watch_poll_ms must be a whole number of milliseconds from 10 to \
                         60000, not {v:?}"
                    )))
                }
            },
        };
        // Hand mysql_async the URL without our own options.
        let mut driver_url = format!("mysql:{}", parsed.body);
        let mut query = form_urlencoded::Serializer::new(String::new());
        let mut any = false;
        for (k, v) in parsed
            .query
            .iter()
            .filter(|(k, _)| !OPTIONS.contains(&k.as_str()))
        {
            query.append_pair(k, v);
            any = true;
        }
        if any {
            driver_url.push('?');
            driver_url.push_str(&query.finish());
        }
        let opts = Opts::from_url(&driver_url).map_err(|e| parsed.invalid(e.to_string()))?;
        let config = MysqlConfig {
            opts,
            table,
            watch_poll,
        };
        let config = match parsed.option("inactive_connection_ttl") {
            Some(_) => config,
            None => config.idle_timeout(DEFAULT_IDLE_TIMEOUT),
        };
        Ok(match parsed.option("pool_max") {
            Some(_) => config,
            None => config.pool_max(DEFAULT_POOL_MAX),
        })
    }

    /// Changes the `mysql_async` settings.
    fn with(mut self, change: impl FnOnce(OptsBuilder) -> OptsBuilder) -> Self {
        self.opts = change(OptsBuilder::from_opts(self.opts)).into();
        self
    }

    /// The server's port. Default 3306.
    pub fn port(self, port: u16) -> Self {
        self.with(|o| o.tcp_port(port))
    }

    /// The user to log in as. Default none.
    pub fn user(self, user: impl Into<String>) -> Self {
        self.with(|o| o.user(Some(user)))
    }

    /// The password to log in with. Default none.
    pub fn password(self, password: impl Into<String>) -> Self {
        self.with(|o| o.pass(Some(password)))
    }

    /// The database the table lives in. Default none (the server's default for the user).
    pub fn database(self, database: impl Into<String>) -> Self {
        self.with(|o| o.db_name(Some(database)))
    }

    /// The table, `[A-Za-z0-9_]{1,64}`, created if absent. Default [`DEFAULT_TABLE`]. A bad
    /// name fails [`MysqlDriver::connect`](super::MysqlDriver::connect).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a pooled connection may stay unused before the pool closes it, down to
    /// `pool_min` (the pool looks every 30 s by default: `ttl_check_interval`). Default
    /// [`DEFAULT_IDLE_TIMEOUT`]; zero closes every connection handed back while `pool_min`
    /// others are idle.
    pub fn idle_timeout(self, after: Duration) -> Self {
        let pool = self
            .opts
            .pool_opts()
            .clone()
            .with_inactive_connection_ttl(after);
        self.with(|o| o.pool_opts(pool))
    }

    /// How long a pooled connection may stay unused before the pool closes it.
    pub fn get_idle_timeout(&self) -> Duration {
        self.opts.pool_opts().inactive_connection_ttl()
    }

    /// The most connections the pool opens at once, raised to the pool's least (`pool_min`,
    /// 10 by default) when below it, and to 1. Default [`DEFAULT_POOL_MAX`].
    pub fn pool_max(self, max: usize) -> Self {
        let pool = self.opts.pool_opts().clone();
        let min = pool.constraints().min();
        let Some(constraints) = mysql_async::PoolConstraints::new(min, max.max(min).max(1)) else {
            return self;
        };
        let pool = pool.with_constraints(constraints);
        self.with(|o| o.pool_opts(pool))
    }

    /// The most connections the pool opens at once.
    pub fn get_pool_max(&self) -> usize {
        self.opts.pool_opts().constraints().max()
    }

    /// How often the watchers of a storage read their scopes (clamped to 10 ms to 60 s).
    /// Default [`DEFAULT_WATCH_POLL`].
    pub fn watch_poll(mut self, every: Duration) -> Self {
        self.watch_poll = every.clamp(
            Duration::from_millis(*WATCH_POLL_MS.start()),
            Duration::from_millis(*WATCH_POLL_MS.end()),
        );
        self
    }

    /// How often the watchers of a storage read their scopes.
    pub fn get_watch_poll(&self) -> Duration {
        self.watch_poll
    }

    /// The server's host.
    pub fn get_host(&self) -> &str {
        self.opts.ip_or_hostname()
    }

    /// The server's port.
    pub fn get_port(&self) -> u16 {
        self.opts.tcp_port()
    }

    /// The user to log in as, if any.
    pub fn get_user(&self) -> Option<&str> {
        self.opts.user()
    }

    /// The database, if any.
    pub fn get_database(&self) -> Option<&str> {
        self.opts.db_name()
    }

    /// The table.
    pub fn get_table(&self) -> &str {
        &self.table
    }

    /// The server's address, `host:port`, for messages.
    pub(super) fn addr(&self) -> String {
        net::addr(self.get_host(), self.get_port())
    }

    /// The unix socket `mysql_async` connects through instead of TCP, if any.
    pub(super) fn socket(&self) -> Option<&str> {
        self.opts.socket()
    }

    /// The config as a URL with the password left out, for errors about it.
    pub(super) fn redacted_url(&self) -> String {
        let login = match (self.get_user(), self.opts.pass()) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        format!(
            "mysql://{login}{}/{}",
            self.addr(),
            self.get_database().unwrap_or("")
        )
    }

    /// Fails on a table name that is not an identifier.
    pub(super) fn check(&self) -> Result<(), Error> {
        check_table(&self.table).map_err(|reason| crate::url::invalid(&self.redacted_url(), reason))
    }

    /// What the pool connects with: the settings plus the two the driver needs.
    /// The options of the pool for several-scope commits: the same, with `autocommit` off, so
    /// that a commit is its statements and one `COMMIT`, with no `START TRANSACTION` round trip.
    pub(super) fn commit_pool_opts(&self) -> Opts {
        OptsBuilder::from_opts(self.pool_opts())
            .init(vec!["SET autocommit = 0"])
            .into()
    }

    pub(super) fn pool_opts(&self) -> Opts {
        let pool_opts = self.opts.pool_opts().clone().with_reset_connection(false);
        OptsBuilder::from_opts(self.opts.clone())
            .client_found_rows(true)
            .pool_opts(pool_opts)
            .into()
    }
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = self.opts.pool_opts().constraints();
        f.debug_struct("MysqlConfig")
            .field("host", &self.get_host())
            .field("port", &self.get_port())
            .field("user", &self.get_user())
            .field("password", &self.opts.pass().map(|_| "***"))
            .field("database", &self.get_database())
            .field("table", &self.table)
            .field("watch_poll", &self.watch_poll)
            .field("pool_min", &pool.min())
            .field("pool_max", &pool.max())
            .finish_non_exhaustive()
    }
}

/// Checks a table name: `[A-Za-z0-9_]{1,64}`.
fn check_table(table: &str) -> Result<(), String> {
    if crate::driver::sql_rows::is_identifier(table, MAX_TABLE_LEN) {
        Ok(())
    } else {
        Err(format!(
            "option table must be 1 to {MAX_TABLE_LEN} letters, digits or '_', not {:?}",
            shorten(table)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> MysqlConfig {
        MysqlConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match MysqlConfig::from_url(url) {
            Err(Error::InvalidUrl { reason, url: shown }) => {
                assert!(!shown.contains("secret"), "{shown}");
                assert!(!reason.contains("secret"), "{reason}");
                reason
            }
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn watch_poll_is_read_and_bounded() {
        assert_eq!(parse("mysql://h/db").get_watch_poll(), DEFAULT_WATCH_POLL);
        let c = parse("mysql://h/db?watch_poll_ms=250&pool_max=30");
        assert_eq!(c.get_watch_poll(), Duration::from_millis(250));
        for bad in ["0", "9", "60001", "ten", "-5", ""] {
            let reason = refused(&format!("mysql://h/db?watch_poll_ms={bad}"));
            assert!(reason.contains("watch_poll_ms"), "{reason}");
        }
        let clamped = MysqlConfig::new("h").watch_poll(Duration::ZERO);
        assert_eq!(clamped.get_watch_poll(), Duration::from_millis(10));
    }

    #[test]
    fn table_names() {
        assert!(check_table("mp_scopes").is_ok());
        assert!(check_table(&"a".repeat(64)).is_ok());
        assert!(check_table(&"a".repeat(65)).is_err());
        assert!(check_table("").is_err());
        assert!(check_table("a`b").is_err());
        assert!(check_table("a b").is_err());
        assert!(check_table("a-b").is_err());
        assert!(check_table("tbl;DROP").is_err());
        assert!(check_table("é").is_err());
    }

    #[test]
    fn address_login_database_and_table() {
        let c = parse("mysql://root@127.0.0.1:3306/test");
        assert_eq!((c.get_host(), c.get_port()), ("127.0.0.1", 3306));
        assert_eq!(
            (c.get_user(), c.get_database()),
            (Some("root"), Some("test"))
        );
        assert_eq!(c.get_table(), DEFAULT_TABLE);
        assert_eq!(c.addr(), "127.0.0.1:3306");
        assert_eq!(c.redacted_url(), "mysql://root@127.0.0.1:3306/test");

        let c = parse("MYSQL://us%40er:p%3Ass@db.local/shop?table=t_1");
        assert_eq!((c.get_host(), c.get_port()), ("db.local", 3306));
        assert_eq!(c.get_user(), Some("us@er"));
        assert_eq!(c.opts.pass(), Some("p:ss"));
        assert_eq!(c.get_table(), "t_1");
        // The last value of an option wins.
        assert_eq!(parse("mysql://h/?table=a&table=b").get_table(), "b");
    }

    #[test]
    fn other_options_go_to_mysql_async() {
        let c = parse("mysql://h/db");
        assert_eq!(c.get_idle_timeout(), DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            MysqlConfig::new("h").get_idle_timeout(),
            DEFAULT_IDLE_TIMEOUT
        );
        assert_eq!(c.get_pool_max(), DEFAULT_POOL_MAX);
        assert_eq!(MysqlConfig::new("h").get_pool_max(), DEFAULT_POOL_MAX);
        assert_eq!(parse("mysql://h/db?pool_min=50").get_pool_max(), 50);
        assert_eq!(parse("mysql://h/db?pool_max=100").get_pool_max(), 100);
        assert_eq!(MysqlConfig::new("h").pool_max(4).get_pool_max(), 10);
        assert_eq!(
            parse("mysql://h/db?pool_min=0").pool_max(0).get_pool_max(),
            1
        );
        let c = parse("mysql://h/db?inactive_connection_ttl=0");
        assert_eq!(c.get_idle_timeout(), Duration::ZERO);
        let c = c.idle_timeout(Duration::from_secs(5));
        assert_eq!(
            c.pool_opts().pool_opts().inactive_connection_ttl(),
            Duration::from_secs(5)
        );
        let c = parse("mysql://h/db?pool_min=2&pool_max=7&table=x&stmt_cache_size=5");
        let pool = c.opts.pool_opts().constraints();
        assert_eq!((pool.min(), pool.max()), (2, 7));
        assert_eq!(c.opts.stmt_cache_size(), 5);
        assert_eq!(c.get_table(), "x");
        let opts = c.pool_opts();
        assert!(opts.client_found_rows());
        assert!(!opts.pool_opts().reset_connection());
        assert_eq!(opts.pool_opts().constraints().max(), 7);
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(refused("mysql://root@h/test?table=a%60b").contains("option table"));
        assert!(refused("mysql://root@h/test?table=").contains("option table"));
        assert!(refused("mysql://root:secret@h/test?table=x-y").contains("option table"));
        refused("mysql://root:secret@h/test?no_such_option=1");
        refused("mysql://root@h/test?pool_max=many");
        assert!(refused("redis://h/").contains("mysql driver takes"));
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let c = parse("mysql://app:secret@h:1/db");
        let shown = format!("{c:?} {}", c.redacted_url());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("password: Some(\"***\")"), "{shown}");
        assert_eq!(c.redacted_url(), "mysql://app:***@h:1/db");
        match c.table("no-good").check() {
            Err(Error::InvalidUrl { url, .. }) => assert_eq!(url, "mysql://app:***@h:1/db"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn code_and_url_agree() {
        let url = parse("mysql://u:pw@h:7/d?table=t");
        let code = MysqlConfig::new("h")
            .port(7)
            .user("u")
            .password("pw")
            .database("d")
            .table("t");
        assert_eq!(format!("{url:?}"), format!("{code:?}"));
        assert_eq!(url.opts.pass(), code.opts.pass());
        assert!(code.check().is_ok());
        let c = MysqlConfig::new("h");
        assert_eq!(
            (c.get_port(), c.get_user(), c.get_database()),
            (3306, None, None)
        );
        assert_eq!(c.redacted_url(), "mysql://h:3306/");
    }
}
