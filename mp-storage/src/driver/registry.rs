//! The table of drivers: which driver a URL scheme picks, and how it is opened.
//!
//! | URL | driver | feature | options |
//! |---|---|---|---|
//! | `memory://`, `memory://NAME` | [`memory`](super::memory): in-process map, private or shared by name | always | none |
//! | `file:<dir>`, `file:///abs/dir` | `file`: one file per scope, readable with `cat` | `file` (default) | `fsync`, `lock_timeout` |
//! | `redis://[user:pass@]host:port/db` | `redis`: one hash per scope | `redis` | `prefix`, `connect_timeout`, `response_timeout`, `protocol` |
//! | `redis-cluster://[user:pass@]host:port[,host:port…]/` | `redis-cluster`: the redis driver over a Redis Cluster, one hash per scope on its slot's master | `redis-cluster` | those of `redis`; `replica_wait`, `replica_timeout` (both drivers) |
//! | `mysql://user[:pass]@host:port/db` | `mysql`: one row per scope | `mysql` | `table`; the rest go to `mysql_async` |
//! | `postgres://user[:pass]@host:port/db`, `postgresql://…` | `postgres`: one row per scope; no TLS | `postgres` | `table`, `pool_max`; the rest go to `tokio-postgres` |
//! | `sqlite:<path>`, `sqlite:///abs/path` | `sqlite`: one row per scope in one file, group commit; the default store | `sqlite` (default) | `synchronous`, `fsync`, `busy_timeout`, `table` |
//!
//! Each driver declares its schemes (`SCHEMES` in its module) and reads its own options; this
//! table only maps a scheme to the driver that takes it. A driver whose feature is off stays
//! in the table, so its URL says which feature to turn on instead of naming an unknown scheme.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::Driver;
use crate::error::redact_url;
use crate::Error;

/// How a compiled-in driver opens a URL of its schemes.
type Opener = for<'a> fn(&'a str) -> BoxFuture<'a, Result<Arc<dyn Driver>, Error>>;

/// One row of the table of drivers: a driver, the URL schemes it takes, and whether this build
/// has it. See [`drivers`].
#[derive(Clone, Copy)]
pub struct DriverEntry {
    name: &'static str,
    schemes: &'static [&'static str],
    feature: Option<&'static str>,
    opener: Option<Opener>,
}

impl DriverEntry {
    /// The driver's name, as [`Driver::name`] gives it (`"redis"`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The URL schemes the driver takes, lower-case (`["redis", "rediss"]`).
    pub fn schemes(&self) -> &'static [&'static str] {
        self.schemes
    }

    /// The cargo feature of mp-storage that compiles the driver in; `None` when it always is.
    pub fn feature(&self) -> Option<&'static str> {
        self.feature
    }

    /// Whether this build has the driver.
    pub fn is_compiled_in(&self) -> bool {
        self.opener.is_some()
    }
}

impl fmt::Debug for DriverEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverEntry")
            .field("name", &self.name)
            .field("schemes", &self.schemes)
            .field("feature", &self.feature)
            .field("compiled_in", &self.is_compiled_in())
            .finish()
    }
}

/// The schemes of the drivers that can be compiled out, for their rows when they are. A unit
/// test checks them against each driver's own `SCHEMES` in the builds that have it.
mod absent {
    #[cfg(any(test, not(feature = "file")))]
    pub(super) const FILE: &[&str] = &["file"];
    #[cfg(any(test, not(feature = "redis")))]
    pub(super) const REDIS: &[&str] = &["redis", "rediss"];
    #[cfg(any(test, not(feature = "redis-cluster")))]
    pub(super) const REDIS_CLUSTER: &[&str] = &["redis-cluster"];
    #[cfg(any(test, not(feature = "mysql")))]
    pub(super) const MYSQL: &[&str] = &["mysql"];
    #[cfg(any(test, not(feature = "postgres")))]
    pub(super) const POSTGRES: &[&str] = &["postgres", "postgresql"];
    #[cfg(any(test, not(feature = "sqlite")))]
    pub(super) const SQLITE: &[&str] = &["sqlite"];
}

/// The table, in the order [`Error::UnknownScheme`] lists the schemes.
static DRIVERS: &[DriverEntry] = &[
    DriverEntry {
        name: "memory",
        schemes: super::memory::SCHEMES,
        feature: None,
        opener: Some(open_memory),
    },
    #[cfg(feature = "file")]
    DriverEntry {
        name: "file",
        schemes: super::file::SCHEMES,
        feature: Some("file"),
        opener: Some(open_file),
    },
    #[cfg(not(feature = "file"))]
    DriverEntry {
        name: "file",
        schemes: absent::FILE,
        feature: Some("file"),
        opener: None,
    },
    #[cfg(feature = "redis")]
    DriverEntry {
        name: "redis",
        schemes: super::redis::SCHEMES,
        feature: Some("redis"),
        opener: Some(open_redis),
    },
    #[cfg(not(feature = "redis"))]
    DriverEntry {
        name: "redis",
        schemes: absent::REDIS,
        feature: Some("redis"),
        opener: None,
    },
    #[cfg(feature = "redis-cluster")]
    DriverEntry {
        name: "redis-cluster",
        schemes: super::redis::cluster::SCHEMES,
        feature: Some("redis-cluster"),
        opener: Some(open_redis_cluster),
    },
    #[cfg(not(feature = "redis-cluster"))]
    DriverEntry {
        name: "redis-cluster",
        schemes: absent::REDIS_CLUSTER,
        feature: Some("redis-cluster"),
        opener: None,
    },
    #[cfg(feature = "mysql")]
    DriverEntry {
        name: "mysql",
        schemes: super::mysql::SCHEMES,
        feature: Some("mysql"),
        opener: Some(open_mysql),
    },
    #[cfg(not(feature = "mysql"))]
    DriverEntry {
        name: "mysql",
        schemes: absent::MYSQL,
        feature: Some("mysql"),
        opener: None,
    },
    #[cfg(feature = "postgres")]
    DriverEntry {
        name: "postgres",
        schemes: super::postgres::SCHEMES,
        feature: Some("postgres"),
        opener: Some(open_postgres),
    },
    #[cfg(not(feature = "postgres"))]
    DriverEntry {
        name: "postgres",
        schemes: absent::POSTGRES,
        feature: Some("postgres"),
        opener: None,
    },
    #[cfg(feature = "sqlite")]
    DriverEntry {
        name: "sqlite",
        schemes: super::sqlite::SCHEMES,
        feature: Some("sqlite"),
        opener: Some(open_sqlite),
    },
    #[cfg(not(feature = "sqlite"))]
    DriverEntry {
        name: "sqlite",
        schemes: absent::SQLITE,
        feature: Some("sqlite"),
        opener: None,
    },
];

fn open_memory(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::memory::MemoryDriver::from_url(url)?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "file")]
fn open_file(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let (dir, options) = super::file::FileOptions::from_url(url)?;
        let driver = super::file::FileDriver::open(dir, options).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "redis")]
fn open_redis(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::redis::RedisDriver::open(url).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "redis-cluster")]
fn open_redis_cluster(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::redis::RedisClusterDriver::open_cluster(url).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "mysql")]
fn open_mysql(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::mysql::MysqlDriver::open(url).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::postgres::PostgresDriver::open(url).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

#[cfg(feature = "sqlite")]
fn open_sqlite(url: &str) -> BoxFuture<'_, Result<Arc<dyn Driver>, Error>> {
    Box::pin(async move {
        let driver = super::sqlite::SqliteDriver::open(url).await?;
        Ok(Arc::new(driver) as Arc<dyn Driver>)
    })
}

/// Every driver mp-storage knows, compiled in or not, in a fixed order.
///
/// ```
/// let memory = &mp_storage::driver::drivers()[0];
/// assert_eq!((memory.name(), memory.schemes()), ("memory", &["memory"][..]));
/// for d in mp_storage::driver::drivers() {
///     println!("{}: {:?}, compiled in: {}", d.name(), d.schemes(), d.is_compiled_in());
/// }
/// ```
pub fn drivers() -> &'static [DriverEntry] {
    DRIVERS
}

/// The row of the driver that takes `scheme` (in any case), compiled in or not.
pub fn driver_for_scheme(scheme: &str) -> Option<&'static DriverEntry> {
    DRIVERS
        .iter()
        .find(|d| d.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
}

/// Every scheme of the table, in order: the `known` list of [`Error::UnknownScheme`].
pub fn known_schemes() -> Vec<&'static str> {
    DRIVERS
        .iter()
        .flat_map(|d| d.schemes.iter().copied())
        .collect()
}

/// Opens the driver a storage URL names (see the [table](self) and
/// [`Storage::open`](crate::Storage::open)), for wrapping it (caching, fault injection,
/// metrics) before handing it to [`Storage::with_driver`](crate::Storage::with_driver) or
/// [`StorageBuilder::build`](crate::StorageBuilder::build).
///
/// A scheme no row takes is [`Error::UnknownScheme`]; the scheme of a driver compiled out, or a
/// malformed URL or option, is [`Error::InvalidUrl`].
///
/// ```
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let driver = mp_storage::driver::open("memory://").await?;
/// assert_eq!(driver.name(), "memory");
/// let st = mp_storage::Storage::with_driver(driver)?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn Driver>, Error> {
    let parsed = crate::url::parse(url)?;
    let Some(entry) = driver_for_scheme(&parsed.scheme) else {
        return Err(Error::UnknownScheme {
            scheme: parsed.scheme,
            url: redact_url(url),
            known: known_schemes(),
        });
    };
    match entry.opener {
        Some(open) => open(url).await,
        None => Err(parsed.invalid(format!(
            "the {name} driver is not compiled in: enable the `{feature}` feature of mp-storage",
            name = entry.name,
            feature = entry.feature.unwrap_or(entry.name),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_rows_name_the_drivers_schemes() {
        #[cfg(feature = "file")]
        assert_eq!(absent::FILE, super::super::file::SCHEMES);
        #[cfg(feature = "redis")]
        assert_eq!(absent::REDIS, super::super::redis::SCHEMES);
        #[cfg(feature = "redis-cluster")]
        assert_eq!(absent::REDIS_CLUSTER, super::super::redis::cluster::SCHEMES);
        #[cfg(feature = "mysql")]
        assert_eq!(absent::MYSQL, super::super::mysql::SCHEMES);
        #[cfg(feature = "postgres")]
        assert_eq!(absent::POSTGRES, super::super::postgres::SCHEMES);
        #[cfg(feature = "sqlite")]
        assert_eq!(absent::SQLITE, super::super::sqlite::SCHEMES);
    }

    #[test]
    fn every_scheme_has_one_row() {
        let known = known_schemes();
        assert_eq!(
            known,
            [
                "memory",
                "file",
                "redis",
                "rediss",
                "redis-cluster",
                "mysql",
                "postgres",
                "postgresql",
                "sqlite"
            ]
        );
        for s in &known {
            assert_eq!(
                known.iter().filter(|k| k == &s).count(),
                1,
                "{s} is in two rows"
            );
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{s}"
            );
        }
        assert_eq!(driver_for_scheme("REDISS").map(|d| d.name()), Some("redis"));
        assert_eq!(
            driver_for_scheme("PostgreSQL").map(|d| d.name()),
            Some("postgres")
        );
        assert!(driver_for_scheme("etcd").is_none());
        for d in drivers() {
            assert_eq!(d.feature().is_none(), d.name() == "memory");
            let on = match d.name() {
                "memory" => true,
                "file" => cfg!(feature = "file"),
                "redis" => cfg!(feature = "redis"),
                "redis-cluster" => cfg!(feature = "redis-cluster"),
                "mysql" => cfg!(feature = "mysql"),
                "postgres" => cfg!(feature = "postgres"),
                "sqlite" => cfg!(feature = "sqlite"),
                other => panic!("a row for {other}"),
            };
            assert_eq!(d.is_compiled_in(), on, "{d:?}");
        }
    }

    #[tokio::test]
    async fn unknown_scheme_is_named() {
        match open("etcd://127.0.0.1:2379/").await {
            Err(Error::UnknownScheme { scheme, known, .. }) => {
                assert_eq!(scheme, "etcd");
                assert_eq!(known, known_schemes());
            }
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("opened an unknown scheme"),
        }
        let e = open("ftp://u:pw@x").await.err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "unknown storage scheme \"ftp\" in \"ftp://u:***@x\" \
                 (known: memory, file, redis, rediss, redis-cluster, mysql, postgres, postgresql, sqlite)"
            )
        );
        assert!(open("memory://host/path").await.is_err());
        assert!(open("memory://").await.is_ok());
        assert!(open("memory:").await.is_ok());
        assert!(matches!(
            open("no scheme").await,
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_driver_compiled_out_names_its_feature() {
        match open("redis://127.0.0.1/").await {
            Err(Error::InvalidUrl { reason, .. }) => assert_eq!(
                reason,
                "the redis driver is not compiled in: enable the `redis` feature of mp-storage"
            ),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("opened a driver that is not compiled in"),
        }
    }
}
