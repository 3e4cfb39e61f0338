//! [`PostgresConfig`]: the settings of the PostgreSQL driver, from a `postgres://` URL or built
//! in code.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

use super::{CONNECT_TIMEOUT, DEFAULT_POOL_MAX, DEFAULT_TABLE, SCHEMES};
use crate::driver::net;
use crate::error::shorten;
use crate::Error;

/// The longest table name PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_TABLE_LEN: usize = 63;

/// The URL options this driver reads itself; the others go to `tokio-postgres`.
const OPTIONS: &[&str] = &["table", "pool_max", "notify"];

/// The settings of a [`PostgresDriver`](super::PostgresDriver): the server, the login, the
/// database, the table and the size of the pool.
///
/// Read from a URL by [`PostgresConfig::from_url`], or built in code with
/// [`PostgresConfig::new`] and the methods below, each of which takes the config and gives it
/// back changed.
///
/// # URL
///
/// `postgres://[user[:password]@]host[:port][/database][?option=value&…]` (or
/// `postgresql://`): the port defaults to 5432; user and password are percent-decoded.
/// `tokio-postgres` reads the address and the login.
///
/// | option | default | method | meaning |
/// |---|---|---|---|
/// | `table` | `mp_scopes` | [`table`](Self::table) | the table, `[A-Za-z0-9_]{1,63}`; created if absent |
/// | `pool_max` | 16 | [`pool_max`](Self::pool_max) | the most connections the pool keeps open |
/// | `notify` | `false` | [`notify`](Self::notify) | `true`: a trigger on the table sends `pg_notify` on every write and watchers `LISTEN` (changes in about a millisecond); `false`: watchers read the watched scopes every 100 ms. PostgreSQL serializes the commits of notifying transactions, which slows writers of one hot row: see the driver's docs |
/// | `connect_timeout` | 5 (s) | | the bound on making a connection, in seconds |
/// | anything else | | | handed to `tokio-postgres` as is (`application_name`, `options`, `keepalives`, `keepalives_idle`, `target_session_attrs`, `host` for a Unix socket directory, …), which refuses what it does not know |
///
/// TLS is not compiled in: `sslmode=require` is refused, and the default `prefer` connects
/// without it. `Debug` never shows the password.
///
/// ```
/// use mp_storage::driver::postgres::PostgresConfig;
///
/// let from_url =
///     PostgresConfig::from_url("postgres://app:s3cret@db.local:5433/shop?table=scopes")?;
/// let in_code = PostgresConfig::new("db.local")
///     .port(5433)
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
pub struct PostgresConfig {
    /// Everything `tokio-postgres` reads: address, login, database, session settings.
    pg: tokio_postgres::Config,
    table: String,
    pool_max: usize,
    notify: bool,
}

impl PostgresConfig {
    /// The server at `host` (a name or an IP address), port 5432, no user, no database, the
    /// table [`DEFAULT_TABLE`].
    pub fn new(host: impl Into<String>) -> Self {
        let mut pg = tokio_postgres::Config::new();
        pg.host(host.into().as_str());
        PostgresConfig {
            pg,
            table: DEFAULT_TABLE.to_owned(),
            pool_max: DEFAULT_POOL_MAX,
            notify: false,
        }
    }

    /// Reads a `postgres://` or `postgresql://` URL (see the [table](Self#url)), without
    /// connecting.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("postgres", SCHEMES)?;
        let table = parsed.option("table").unwrap_or(DEFAULT_TABLE).to_owned();
        check_table(&table).map_err(|reason| parsed.invalid(reason))?;
        let pool_max = match parsed.option("pool_max") {
            None => DEFAULT_POOL_MAX,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    return Err(
                        parsed.invalid(format!("option pool_max must be 1 to 1024, not {v:?}"))
                    )
                }
            },
        };
        let notify = match parsed.option("notify") {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(v) => {
                return Err(
                    parsed.invalid(format!("option notify must be true or false, not {v:?}"))
                )
            }
        };
        // Hand tokio-postgres the URL without our own options.
        // tokio-postgres percent-decodes values but reads `+` as itself: encode spaces as %20.
        let query: Vec<String> = parsed
            .query
            .iter()
            .filter(|(k, _)| !OPTIONS.contains(&k.as_str()))
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let mut driver_url = format!("postgresql:{}", parsed.body);
        if !query.is_empty() {
            driver_url.push('?');
            driver_url.push_str(&query.join("&"));
        }
        let pg = tokio_postgres::Config::from_str(&driver_url)
            .map_err(|e| parsed.invalid(e.to_string()))?;
        let config = PostgresConfig {
            pg,
            table,
            pool_max,
            notify,
        };
        if !matches!(config.pg.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(parsed.invalid(
                "TLS is not compiled in: sslmode may be disable or prefer (connects without TLS)",
            ));
        }
        if config.pg.get_hosts().is_empty() {
            return Err(parsed.invalid("no host"));
        }
        Ok(config)
    }

    /// The server's port. Default 5432.
    pub fn port(mut self, port: u16) -> Self {
        self.pg.port(port);
        self
    }

    /// The user to log in as. Default none (then the connection fails: PostgreSQL needs one).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.pg.user(user.into().as_str());
        self
    }

    /// The password to log in with. Default none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.pg.password(password.into().as_str());
        self
    }

    /// The database the table lives in. Default none (the server takes the user's name).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.pg.dbname(database.into().as_str());
        self
    }

    /// The table, `[A-Za-z0-9_]{1,63}`, created if absent. Default [`DEFAULT_TABLE`]. A bad
    /// name fails [`PostgresDriver::connect`](super::PostgresDriver::connect).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The most connections the pool keeps open (at least 1). Default 16.
    pub fn pool_max(mut self, max: usize) -> Self {
        self.pool_max = max.max(1);
        self
    }

    /// Whether writes notify watchers through a trigger on the table (`pg_notify`, heard by
    /// `LISTEN`) instead of watchers polling every 100 ms. Default `false`: PostgreSQL
    /// serializes the commits of every transaction that notified, which costs writers of one hot
    /// scope dearly (see the driver's docs). The trigger, once created, stays on the table for
    /// every process (`DROP TRIGGER mp_storage_watch ON <table>` removes it).
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// Whether writes notify watchers (see [`notify`](Self::notify)).
    pub fn get_notify(&self) -> bool {
        self.notify
    }

    /// The server's host (the first one, for a URL that names several).
    pub fn get_host(&self) -> String {
        match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        }
    }

    /// The server's port.
    pub fn get_port(&self) -> u16 {
        self.pg.get_ports().first().copied().unwrap_or(5432)
    }

    /// The user to log in as, if any.
    pub fn get_user(&self) -> Option<&str> {
        self.pg.get_user()
    }

    /// The database, if any.
    pub fn get_database(&self) -> Option<&str> {
        self.pg.get_dbname()
    }

    /// The table.
    pub fn get_table(&self) -> &str {
        &self.table
    }

    /// The most connections of the pool.
    pub fn get_pool_max(&self) -> usize {
        self.pool_max
    }

    /// The server's address, `host:port`, for messages.
    pub(super) fn addr(&self) -> String {
        net::addr(&self.get_host(), self.get_port())
    }

    /// The config as a URL with the password left out, for errors about it.
    pub(super) fn redacted_url(&self) -> String {
        let login = match (self.get_user(), self.pg.get_password()) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        format!(
            "postgres://{login}{}/{}",
            self.addr(),
            self.get_database().unwrap_or("")
        )
    }

    /// Fails on a table name that is not an identifier.
    pub(super) fn check(&self) -> Result<(), Error> {
        check_table(&self.table).map_err(|reason| crate::url::invalid(&self.redacted_url(), reason))
    }

    /// What the pool connects with: the settings, with the connect timeout bounded.
    pub(super) fn pg_config(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        let timeout = pg
            .get_connect_timeout()
            .copied()
            .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        pg.connect_timeout(timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("mp-storage");
        }
        pg
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.get_host())
            .field("port", &self.get_port())
            .field("user", &self.get_user())
            .field("password", &self.pg.get_password().map(|_| "***"))
            .field("database", &self.get_database())
            .field("table", &self.table)
            .field("pool_max", &self.pool_max)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a table name: `[A-Za-z0-9_]{1,63}`.
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

    fn parse(url: &str) -> PostgresConfig {
        PostgresConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match PostgresConfig::from_url(url) {
            Err(Error::InvalidUrl { reason, url: shown }) => {
                assert!(!shown.contains("secret"), "{shown}");
                assert!(!reason.contains("secret"), "{reason}");
                reason
            }
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn table_names() {
        assert!(check_table("mp_scopes").is_ok());
        assert!(check_table(&"a".repeat(63)).is_ok());
        assert!(check_table(&"a".repeat(64)).is_err());
        assert!(check_table("").is_err());
        assert!(check_table("a\"b").is_err());
        assert!(check_table("a b").is_err());
        assert!(check_table("tbl;DROP").is_err());
        assert!(check_table("é").is_err());
    }

    #[test]
    fn address_login_database_and_table() {
        let c = parse("postgres://postgres@127.0.0.1:5432/test");
        assert_eq!((c.get_host().as_str(), c.get_port()), ("127.0.0.1", 5432));
        assert_eq!(
            (c.get_user(), c.get_database()),
            (Some("postgres"), Some("test"))
        );
        assert_eq!(c.get_table(), DEFAULT_TABLE);
        assert_eq!(c.get_pool_max(), DEFAULT_POOL_MAX);
        assert_eq!(c.redacted_url(), "postgres://postgres@127.0.0.1:5432/test");

        let c = parse("POSTGRESQL://us%40er:p%3Ass@db.local/shop?table=t_1&pool_max=3");
        assert_eq!((c.get_host().as_str(), c.get_port()), ("db.local", 5432));
        assert_eq!(c.get_user(), Some("us@er"));
        assert_eq!(c.pg.get_password(), Some(&b"p:ss"[..]));
        assert_eq!((c.get_table(), c.get_pool_max()), ("t_1", 3));
        let c = parse("postgres://h/?options=-c%20statement_timeout%3D5+s");
        assert_eq!(c.pg.get_options(), Some("-c statement_timeout=5 s"));
        assert_eq!(
            parse("postgres://h/?connect_timeout=60")
                .pg_config()
                .get_connect_timeout(),
            Some(&CONNECT_TIMEOUT)
        );
        assert_eq!(
            parse("postgres://h/?application_name=x&connect_timeout=2")
                .pg_config()
                .get_connect_timeout(),
            Some(&std::time::Duration::from_secs(2))
        );
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(refused("postgres://u@h/test?table=a%22b").contains("option table"));
        assert!(refused("postgres://u@h/test?table=").contains("option table"));
        assert!(refused("postgres://u:secret@h/test?table=x-y").contains("option table"));
        assert!(refused("postgres://u@h/test?pool_max=0").contains("pool_max"));
        assert!(refused("postgres://u@h/test?sslmode=require").contains("TLS"));
        refused("postgres://u:secret@h/test?no_such_option=1");
        assert!(refused("mysql://h/").contains("postgres driver takes"));
    }

    #[test]
    fn code_and_url_agree_and_hide_the_password() {
        let url = parse("postgres://u:secret@h:7/d?table=t");
        let code = PostgresConfig::new("h")
            .port(7)
            .user("u")
            .password("secret")
            .database("d")
            .table("t");
        assert_eq!(format!("{url:?}"), format!("{code:?}"));
        let shown = format!("{url:?} {}", url.redacted_url());
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(url.redacted_url(), "postgres://u:***@h:7/d");
        match code.table("no-good").check() {
            Err(Error::InvalidUrl { url, .. }) => assert_eq!(url, "postgres://u:***@h:7/d"),
            other => panic!("{other:?}"),
        }
    }
}
