//! [`StorageBuilder`], and the constructors of [`Storage`]: a URL or a driver in, a handle out.

use std::sync::Arc;

use crate::driver::Driver;
use crate::engine::{Engine, Keys, Settings, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_CAPACITY};
use crate::{Error, RetryPolicy, Storage};

/// The variable [`Storage::from_env`] reads.
pub const ENV_URL: &str = "MP_STORAGE_URL";

/// The URL [`Storage::from_env`] uses when [`ENV_URL`] is unset: one SQLite file in the
/// working directory (feature `sqlite`, on by default).
#[cfg(feature = "sqlite")]
pub const DEFAULT_URL: &str = "sqlite:./mp-data.db";
/// The URL [`Storage::from_env`] uses when [`ENV_URL`] is unset (the `sqlite` feature is off).
#[cfg(all(feature = "file", not(feature = "sqlite")))]
pub const DEFAULT_URL: &str = "file:./mp-data";
/// The URL [`Storage::from_env`] uses when [`ENV_URL`] is unset (no embedded driver is on).
#[cfg(not(any(feature = "file", feature = "sqlite")))]
pub const DEFAULT_URL: &str = "memory://";

/// Builds a [`Storage`] with a retry policy, key prefix, cache bounds or size limit of your
/// choice.
///
/// ```
/// use std::time::Duration;
/// use mp_storage::{RetryPolicy, Storage};
///
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let st = Storage::builder()
///     .retry(RetryPolicy::default().max_attempts(10).deadline(Some(Duration::from_secs(2))))
///     .key_prefix("app1/")
///     .cache_capacity(0)
///     .open("memory://")
///     .await?;
/// st.set("a", &serde_json::json!(1)).await?;
/// assert_eq!(st.list("").await?, vec!["a".to_owned()]);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct StorageBuilder {
    policy: RetryPolicy,
    key_prefix: String,
    cache_capacity: usize,
    cache_bytes: usize,
    max_data_len: Option<usize>,
    lease: std::time::Duration,
}

impl Default for StorageBuilder {
    fn default() -> Self {
        StorageBuilder {
            policy: RetryPolicy::default(),
            key_prefix: String::new(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_data_len: None,
            lease: crate::DEFAULT_LEASE,
        }
    }
}

impl StorageBuilder {
    /// The retry policy for conflicting updates.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A prefix put before every key (and taken off the names [`Storage::list`] returns), so
    /// that several applications can share one backend. Default: none. At most 1,024 bytes,
    /// no NUL ([`Error::InvalidConfig`] otherwise).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How many scopes' last records the engine remembers to skip the load of a warm update.
    /// `0` turns the cache off. Default [`DEFAULT_CACHE_CAPACITY`].
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The most bytes of records the cache holds; the least recently used scopes leave first,
    /// and a record larger than a sixteenth of this is not cached. Default
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The largest encoded scope in bytes; the driver's own limit applies if lower. Default
    /// [`DEFAULT_MAX_DATA_LEN`](crate::DEFAULT_MAX_DATA_LEN).
    pub fn max_data_len(mut self, limit: usize) -> Self {
        self.max_data_len = Some(limit);
        self
    }

    /// The lease length of exclusive updates ([`Storage::locked`]): how long a holder that
    /// stopped renewing (a dead or paused process) keeps others waiting, counted by each
    /// waiter's own clock from when it first saw the lease. The engine renews a live holder's
    /// lease every third of it. Default [`DEFAULT_LEASE`](crate::DEFAULT_LEASE) (30 s); at
    /// least [`MIN_LEASE`](crate::MIN_LEASE) (50 ms, [`Error::InvalidConfig`] otherwise).
    pub fn lease(mut self, length: std::time::Duration) -> Self {
        self.lease = length;
        self
    }

    /// Opens the driver `url` names (see [`Storage::open`]) with these settings.
    pub async fn open(self, url: &str) -> Result<Storage, Error> {
        let driver = crate::driver::open(url).await?;
        self.build(driver)
    }

    /// Opens the URL in the `MP_STORAGE_URL` variable, or [`DEFAULT_URL`] when it is unset,
    /// with these settings (see [`Storage::from_env`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::builder().key_prefix("app1/").from_env().await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env(self) -> Result<Storage, Error> {
        let url = match std::env::var(ENV_URL) {
            Ok(url) => url,
            Err(std::env::VarError::NotPresent) => DEFAULT_URL.to_owned(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::InvalidUrl {
                    url: format!("${ENV_URL}"),
                    reason: "the variable is not valid UTF-8".to_owned(),
                })
            }
        };
        self.open(&url).await
    }

    /// Builds a storage over a driver of your own (or one opened by
    /// [`driver::open`](crate::driver::open) and wrapped).
    pub fn build(self, driver: Arc<dyn Driver>) -> Result<Storage, Error> {
        if self.lease < crate::MIN_LEASE || self.lease > crate::engine::MAX_TTL {
            return Err(Error::InvalidConfig {
                setting: "lease",
                reason: format!(
                    "a lease must be at least 50 ms and at most ten years, not {:?}",
                    self.lease
                ),
            });
        }
        let settings = Settings {
            lease: self.lease,
            policy: self.policy,
            keys: Keys::new(self.key_prefix)?,
            cache_capacity: self.cache_capacity,
            cache_bytes: self.cache_bytes,
            max_data_len: self.max_data_len,
        };
        Ok(Storage::from_engine(Engine::new(driver, settings)))
    }
}

impl Storage {
    /// Opens the driver a URL names, with default settings.
    ///
    /// | URL | driver |
    /// |---|---|
    /// | `memory://` | in-process map, for tests and development |
    /// | `file:./dir`, `file:///abs/dir` (`?fsync=false` for tests) | one file per scope |
    /// | `redis://[user:pass@]host:port/db` (`?prefix=`, default `mp:`) | Redis |
    /// | `mysql://user[:pass]@host:port/db` (`?table=`, default `mp_scopes`) | MySQL, MariaDB |
    ///
    /// An unknown scheme is [`Error::UnknownScheme`]; a malformed URL or option is
    /// [`Error::InvalidUrl`].
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// assert!(matches!(
    ///     mp_storage::Storage::open("ftp://x").await,
    ///     Err(mp_storage::Error::UnknownScheme { .. })
    /// ));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn open(url: &str) -> Result<Storage, Error> {
        StorageBuilder::default().open(url).await
    }

    /// Opens the URL in the `MP_STORAGE_URL` variable, or [`DEFAULT_URL`] when it is unset.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// // MP_STORAGE_URL=redis://127.0.0.1:6379/0 ./my-service
    /// let st = mp_storage::Storage::from_env().await?;
    /// println!("scopes kept by the {} driver", st.driver_name());
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Storage, Error> {
        StorageBuilder::default().from_env().await
    }

    /// A builder for non-default settings.
    pub fn builder() -> StorageBuilder {
        StorageBuilder::default()
    }

    /// A storage over a driver of your own, with default settings.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mp_storage::{driver::memory::MemoryDriver, Storage};
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// // Two handles over one store: each has its own cache, like two processes.
    /// let driver = Arc::new(MemoryDriver::new());
    /// let a = Storage::with_driver(driver.clone())?;
    /// let b = Storage::with_driver(driver)?;
    /// a.set("n", &1u64).await?;
    /// assert_eq!(b.get::<u64>("n").await?, Some(1));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn with_driver(driver: Arc<dyn Driver>) -> Result<Storage, Error> {
        StorageBuilder::default().build(driver)
    }
}
