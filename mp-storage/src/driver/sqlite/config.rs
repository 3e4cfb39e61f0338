//! The options of the SQLite driver, in code ([`SqliteOptions`]) or from a `sqlite:` URL (the
//! forms and options are in the [module docs](super)).

use std::path::PathBuf;
use std::time::Duration;

use crate::url::Parsed;
use crate::Error;

/// The URL options this driver reads.
const OPTIONS: &[&str] = &["synchronous", "fsync", "busy_timeout", "table"];

/// How long a write waits for another process's write lock by default.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The table used when the URL has no `table=` option.
pub const DEFAULT_TABLE: &str = "mp_scopes";

/// SQLite's `synchronous` setting: when a commit counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is fsynced before any caller of it is answered: durable across a power
    /// loss. The default.
    #[default]
    Full,
    /// The write-ahead log is fsynced at checkpoints only: a power loss may lose the last
    /// commits (never tear one), a crash of the process loses nothing.
    Normal,
    /// No fsync at all, for tests and development: a power loss may lose recent commits or
    /// corrupt the database; a crash of the process loses nothing.
    Off,
}

impl Synchronous {
    /// The value of `PRAGMA synchronous`.
    pub(super) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// Options of a [`SqliteDriver`](super::SqliteDriver): built in code, or read from a `sqlite:`
/// URL by [`SqliteOptions::from_url`]. See the [module docs](super) for the URL forms and
/// options.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct SqliteOptions {
    pub(super) synchronous: Synchronous,
    pub(super) busy_timeout: Duration,
    pub(super) table: String,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl SqliteOptions {
    /// The defaults: durable commits, a 30 s busy timeout, table `mp_scopes`.
    pub fn new() -> Self {
        Self::default()
    }

    /// When a commit counts as durable (default [`Synchronous::Full`]). URL option
    /// `synchronous=full|normal|off`.
    pub fn synchronous(mut self, mode: Synchronous) -> Self {
        self.synchronous = mode;
        self
    }

    /// `false` is [`Synchronous::Off`] (no fsync, for tests and development, like the file
    /// driver's `fsync=false`); `true` is [`Synchronous::Full`]. URL option `fsync`.
    pub fn fsync(self, on: bool) -> Self {
        self.synchronous(if on {
            Synchronous::Full
        } else {
            Synchronous::Off
        })
    }

    /// The longest a write (or a read) waits for a lock that another process holds on the
    /// database; then the call fails with an unsent [`Timeout`](crate::BackendKind::Timeout)
    /// error, having written nothing. Default [`DEFAULT_BUSY_TIMEOUT`] (30 s); at least 1 ms.
    /// URL option `busy_timeout` (`500ms`, `2s`, `1.5`).
    pub fn busy_timeout(mut self, wait: Duration) -> Self {
        self.busy_timeout = wait.max(Duration::from_millis(1));
        self
    }

    /// The table, `[A-Za-z0-9_]{1,64}`, created if absent (default `mp_scopes`). URL option
    /// `table`. A name outside that set is refused when the driver opens.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether this many commits are fsynced ([`Synchronous::Full`]).
    pub fn is_durable(&self) -> bool {
        self.synchronous == Synchronous::Full
    }

    /// Refuses a table name that is not an identifier.
    pub(super) fn check(&self) -> Result<(), Error> {
        let t = &self.table;
        if crate::driver::sql_rows::is_identifier(t, 64) {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                setting: "table",
                reason: format!("the sqlite table name {t:?} is not [A-Za-z0-9_]{{1,64}}"),
            })
        }
    }

    /// The database file and the options a `sqlite:` URL names, without touching the file
    /// system.
    ///
    /// ```
    /// use mp_storage::driver::sqlite::{SqliteOptions, Synchronous};
    ///
    /// let (path, options) = SqliteOptions::from_url("sqlite:./mp-data.db?fsync=false")?;
    /// assert_eq!(path, std::path::Path::new("./mp-data.db"));
    /// assert_eq!(options, SqliteOptions::new().synchronous(Synchronous::Off));
    /// let (path, _) = SqliteOptions::from_url("sqlite:///var/lib/app/scopes.db")?;
    /// assert_eq!(path, std::path::Path::new("/var/lib/app/scopes.db"));
    /// # Ok::<(), mp_storage::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<(PathBuf, SqliteOptions), Error> {
        let parsed = crate::url::parse(url)?;
        parsed.expect_scheme("sqlite", super::SCHEMES)?;
        parsed.only_options(OPTIONS)?;
        let mut options = SqliteOptions::new();
        if let Some(fsync) = parsed.bool_option("fsync")? {
            options = options.fsync(fsync);
        }
        if let Some(mode) = parsed.option("synchronous") {
            let mode = match mode.to_ascii_lowercase().as_str() {
                "full" => Synchronous::Full,
                "normal" => Synchronous::Normal,
                "off" => Synchronous::Off,
                _ => {
                    return Err(parsed.invalid(format!(
                        "option synchronous must be full, normal or off, not {mode:?}"
                    )))
                }
            };
            options = options.synchronous(mode);
        }
        if let Some(wait) = parsed.duration_option("busy_timeout")? {
            options = options.busy_timeout(wait);
        }
        if let Some(table) = parsed.option("table") {
            options = options.table(table);
            options
                .check()
                .map_err(|_| parsed.invalid("option table must be [A-Za-z0-9_]{1,64}"))?;
        }
        Ok((path_of(&parsed)?, options))
    }
}

/// The database file a `sqlite:` URL body names.
fn path_of(parsed: &Parsed<'_>) -> Result<PathBuf, Error> {
    let path = match parsed.body.strip_prefix("//") {
        Some(rest) => {
            let slash = rest.find('/').unwrap_or(rest.len());
            let host = &rest[..slash];
            if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                return Err(parsed.invalid(format!(
                    "a sqlite URL cannot name a host ({host:?}): write sqlite:///abs/file.db or \
                     sqlite:./rel/file.db"
                )));
            }
            &rest[slash..]
        }
        None => parsed.body,
    };
    if path.is_empty() || path.ends_with('/') {
        return Err(
            parsed.invalid("no database file: write sqlite:./mp-data.db or sqlite:///abs/file.db")
        );
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| parsed.invalid("the path is not UTF-8 once percent-decoded"))?;
    if decoded.contains('\0') {
        return Err(parsed.invalid("the path holds a NUL byte"));
    }
    if decoded == ":memory:" {
        return Err(parsed.invalid(
            "an in-memory SQLite database is not shared between connections: use memory://",
        ));
    }
    Ok(PathBuf::from(decoded.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(url: &str) -> Result<PathBuf, Error> {
        SqliteOptions::from_url(url).map(|(p, _)| p)
    }

    #[test]
    fn url_bodies() {
        let ok = |url: &str| path(url).unwrap();
        assert_eq!(ok("sqlite:./mp-data.db"), PathBuf::from("./mp-data.db"));
        assert_eq!(ok("sqlite:rel.db"), PathBuf::from("rel.db"));
        assert_eq!(ok("sqlite:/abs/x.db"), PathBuf::from("/abs/x.db"));
        assert_eq!(ok("sqlite:///abs/x.db"), PathBuf::from("/abs/x.db"));
        assert_eq!(ok("sqlite://localhost/abs.db"), PathBuf::from("/abs.db"));
        assert_eq!(ok("SQLITE:/my%20db.db"), PathBuf::from("/my db.db"));
        assert_eq!(ok("sqlite:/a%3Fb?fsync=0"), PathBuf::from("/a?b"));
        for bad in [
            "sqlite:",
            "sqlite://",
            "sqlite:///",
            "sqlite:dir/",
            "sqlite://host/x.db",
            "sqlite:/a%00b",
            "sqlite:/%ff",
            "sqlite::memory:",
        ] {
            assert!(
                matches!(path(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn url_options() {
        let opts = |url: &str| SqliteOptions::from_url(url).map(|(_, o)| o);
        let o = opts("sqlite:d.db").unwrap();
        assert_eq!(o, SqliteOptions::new());
        assert!(o.is_durable());
        assert_eq!(o.busy_timeout, DEFAULT_BUSY_TIMEOUT);
        assert_eq!(
            opts("sqlite:d.db?fsync=false").unwrap().synchronous,
            Synchronous::Off
        );
        assert_eq!(
            opts("sqlite:d.db?synchronous=NORMAL").unwrap().synchronous,
            Synchronous::Normal
        );
        let o = opts("sqlite:d.db?busy_timeout=250ms&table=t_1").unwrap();
        assert_eq!(
            (o.busy_timeout, o.table.as_str()),
            (Duration::from_millis(250), "t_1")
        );
        for bad in [
            "sqlite:d.db?fsync=maybe",
            "sqlite:d.db?synchronous=extra",
            "sqlite:d.db?busy_timeout=soon",
            "sqlite:d.db?table=a-b",
            "sqlite:d.db?table=",
            "sqlite:d.db?journal_mode=delete",
            "file:d",
        ] {
            match opts(bad) {
                Err(Error::InvalidUrl { .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(SqliteOptions::new().table("x y").check().is_err());
    }
}
