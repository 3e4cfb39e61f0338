//! [`Storage`], the public handle, and the engine: the one retry loop every driver shares.

use std::fmt;
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tracing::Instrument;

use crate::cache::Cache;
use crate::codec;
use crate::driver::{push_token, CasOutcome, Driver, Record, Write};
use crate::error::shorten;
use crate::queue::{Queues, Turn};
use crate::stats::{Counters, Stats};
use crate::{BackendKind, Error, RetryPolicy, Scope};

/// The longest scope name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The longest key a driver sees (key prefix + namespace + name), in bytes.
pub const MAX_KEY_LEN: usize = 2048;

/// The default largest encoded scope, in bytes (16 MiB); a driver may allow less.
pub const DEFAULT_MAX_DATA_LEN: usize = 16 << 20;

/// The variable [`Storage::from_env`] reads.
pub const ENV_URL: &str = "MP_STORAGE_URL";

/// The URL [`Storage::from_env`] uses when [`ENV_URL`] is unset.
#[cfg(feature = "file")]
pub const DEFAULT_URL: &str = "file:./mp-data";
/// The URL [`Storage::from_env`] uses when [`ENV_URL`] is unset.
#[cfg(not(feature = "file"))]
pub const DEFAULT_URL: &str = "memory://";

/// The default number of scopes whose last record is cached.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Typed scopes over a backend: the one entry point.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`: build one at startup and share it between
/// every handler and task.
///
/// ```
/// use mp_storage::{Scope, Storage};
///
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// struct Counter {
///     count: u64,
/// }
///
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let st = Storage::open("memory://").await?;
/// let n = st.scoped("global", |c: &mut Counter| { c.count += 1; c.count }).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    driver: Arc<dyn Driver>,
    policy: RetryPolicy,
    key_prefix: String,
    max_data_len: usize,
    cache: Cache,
    queues: Queues,
    counters: Counters,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("driver", &self.inner.driver.name())
            .field("key_prefix", &self.inner.key_prefix)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Storage`] with a retry policy, key prefix, cache capacity or size limit of your
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
    max_data_len: Option<usize>,
}

impl Default for StorageBuilder {
    fn default() -> Self {
        StorageBuilder {
            policy: RetryPolicy::default(),
            key_prefix: String::new(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_data_len: None,
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
    /// that several applications can share one backend. Default: none.
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

    /// The largest encoded scope in bytes; the driver's own limit applies if lower.
    pub fn max_data_len(mut self, limit: usize) -> Self {
        self.max_data_len = Some(limit);
        self
    }

    /// Opens the driver `url` names (see [`Storage::open`]) with these settings.
    pub async fn open(self, url: &str) -> Result<Storage, Error> {
        let driver = crate::url::open_driver(url).await?;
        self.build(driver)
    }

    /// Builds a storage over a driver of your own.
    pub fn build(self, driver: Arc<dyn Driver>) -> Result<Storage, Error> {
        if self.key_prefix.contains('\0') {
            return Err(Error::InvalidName {
                name: shorten(&self.key_prefix),
                reason: "the key prefix holds a NUL byte",
            });
        }
        if self.key_prefix.len() > MAX_KEY_LEN - MAX_NAME_LEN {
            return Err(Error::InvalidName {
                name: shorten(&self.key_prefix),
                reason: "the key prefix is longer than 1024 bytes",
            });
        }
        let limit = driver.max_data_len();
        Ok(Storage {
            inner: Arc::new(Inner {
                max_data_len: self.max_data_len.map_or(limit, |l| l.min(limit)),
                driver,
                policy: self.policy,
                key_prefix: self.key_prefix,
                cache: Cache::new(self.cache_capacity),
                queues: Queues::new(),
                counters: Counters::default(),
            }),
        })
    }
}

/// What an attempt starts from.
enum Start {
    /// Nothing known: look in the cache, else load.
    Unknown,
    /// A record (or its absence) fresh from the backend.
    Fresh(Option<Arc<Record>>),
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
        match std::env::var(ENV_URL) {
            Ok(url) => Storage::open(&url).await,
            Err(std::env::VarError::NotPresent) => Storage::open(DEFAULT_URL).await,
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidUrl {
                url: format!("${ENV_URL}"),
                reason: "the variable is not valid UTF-8".to_owned(),
            }),
        }
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

    /// The driver's name (`memory`, `file`, `redis`, `mysql`, …).
    pub fn driver_name(&self) -> &'static str {
        self.inner.driver.name()
    }

    /// The engine's counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Loads scope `name` as `T` (the type's default when absent), runs `f` on it and writes the
    /// result back with a compare-and-swap on the version; on a conflict, reruns `f` on the fresh
    /// value. Returns what `f` returned, once its write is committed.
    ///
    /// `f` may run more than once and must have no side effects but on the scope. When `f`
    /// changes nothing, nothing is written.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// struct Visits { count: u64 }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// let n = st.scoped("user:alice", |v: &mut Visits| { v.count += 1; v.count }).await?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn scoped<T, R, F>(&self, name: impl AsRef<str>, mut f: F) -> Result<R, Error>
    where
        T: Scope,
        R: Send,
        F: FnMut(&mut T) -> R + Send,
    {
        self.run(name.as_ref(), move |mut value: T| {
            let out = f(&mut value);
            ready(Ok::<_, Error>((value, out)))
        })
        .await
    }

    /// Like [`Storage::scoped`], for a closure that can fail: when it returns `Err`, nothing is
    /// written and that error comes back as is. Storage errors convert into `E`.
    ///
    /// ```
    /// # use mp_storage::Storage;
    /// #[derive(Debug)]
    /// enum AppError { Storage(mp_storage::Error), Insufficient }
    /// impl From<mp_storage::Error> for AppError {
    ///     fn from(e: mp_storage::Error) -> Self { AppError::Storage(e) }
    /// }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// let r = st
    ///     .try_scoped("acct", |balance: &mut serde_json::Value| -> Result<i64, AppError> {
    ///         let b = balance.as_i64().unwrap_or(0);
    ///         if b < 10 { return Err(AppError::Insufficient); }
    ///         *balance = (b - 10).into();
    ///         Ok(b - 10)
    ///     })
    ///     .await;
    /// assert!(matches!(r, Err(AppError::Insufficient)));
    /// assert_eq!(st.get::<serde_json::Value>("acct").await?, None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn try_scoped<T, R, E, F>(&self, name: impl AsRef<str>, mut f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(&mut T) -> Result<R, E> + Send,
    {
        self.run(name.as_ref(), move |mut value: T| {
            let out = f(&mut value);
            ready(out.map(|out| (value, out)))
        })
        .await
    }

    /// Like [`Storage::scoped`], for a closure that must await: it takes the value and gives it
    /// back beside its result. It may run more than once.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let n = st
    ///     .scoped_async("n", |mut v: serde_json::Value| async move {
    ///         tokio::task::yield_now().await;
    ///         let n = v.as_u64().unwrap_or(0) + 1;
    ///         v = n.into();
    ///         (v, n)
    ///     })
    ///     .await?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn scoped_async<T, R, F, Fut>(
        &self,
        name: impl AsRef<str>,
        mut f: F,
    ) -> Result<R, Error>
    where
        T: Scope,
        R: Send,
        F: FnMut(T) -> Fut + Send,
        Fut: Future<Output = (T, R)> + Send,
    {
        self.run(name.as_ref(), move |value: T| {
            let fut = f(value);
            async move { Ok::<_, Error>(fut.await) }
        })
        .await
    }

    /// The fallible form of [`Storage::scoped_async`]: an `Err` writes nothing and comes back
    /// as is.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let r: Result<u64, mp_storage::Error> = st
    ///     .try_scoped_async("stock", |left: u64| async move {
    ///         match left.checked_sub(1) {
    ///             Some(n) => Ok((n, n)),
    ///             // Nothing is written; the error comes back as is.
    ///             None => Err(mp_storage::Error::InvalidName { name: "stock".into(), reason: "sold out" }),
    ///         }
    ///     })
    ///     .await;
    /// assert!(r.is_err());
    /// assert_eq!(st.get::<u64>("stock").await?, None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn try_scoped_async<T, R, E, F, Fut>(
        &self,
        name: impl AsRef<str>,
        f: F,
    ) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        self.run(name.as_ref(), f).await
    }

    /// Reads scope `name` as `T`; `None` when it was never written (or was removed).
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// assert_eq!(st.get::<u64>("n").await?, None);
    /// st.set("n", &5u64).await?;
    /// assert_eq!(st.get::<u64>("n").await?, Some(5));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn get<T: Scope>(&self, name: impl AsRef<str>) -> Result<Option<T>, Error> {
        let name = name.as_ref();
        let key = self.key(T::NAMESPACE, name)?;
        let record = self.load(&key).await?;
        match record {
            None => Ok(None),
            Some(r) => codec::decode(name, Some(&r)).map(Some),
        }
    }

    /// Writes `value` to scope `name` whatever is stored (no compare-and-swap).
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set("greeting", &"hello".to_owned()).await?;
    /// assert_eq!(st.get::<String>("greeting").await?.as_deref(), Some("hello"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn set<T: Scope>(&self, name: impl AsRef<str>, value: &T) -> Result<(), Error> {
        let name = name.as_ref();
        let key = self.key(T::NAMESPACE, name)?;
        let data = self.encode(name, value)?;
        let schema = if T::UNTYPED {
            self.inner.cache.get(&key).map_or(0, |r| r.schema)
        } else {
            T::VERSION
        };
        let write = new_write(schema, &data);
        let token = write.token;
        let inner = &self.inner;
        let version = inner.driver.put(&key, write).await?;
        Counters::bump(&inner.counters.commits);
        // The tokens before this write are not known here; the cache does not need them.
        inner.cache.put(
            &key,
            Arc::new(Record {
                version,
                schema,
                data,
                tokens: vec![token],
            }),
        );
        Ok(())
    }

    /// Deletes scope `name` (the name as stored: a namespaced type's namespace included).
    /// Returns whether it existed.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set("n", &1u64).await?;
    /// assert!(st.remove("n").await?);
    /// assert!(!st.remove("n").await?);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn remove(&self, name: impl AsRef<str>) -> Result<bool, Error> {
        let key = self.key("", name.as_ref())?;
        self.inner.cache.remove(&key);
        let existed = self.inner.driver.delete(&key).await;
        self.inner.cache.remove(&key);
        existed
    }

    /// Every stored scope name that starts with `prefix`, sorted byte-wise. Names come back
    /// exactly as written (a namespaced type's namespace included), without the storage's key
    /// prefix. An empty prefix lists everything.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// for name in ["user:bob", "user:alice", "users", "global"] {
    ///     st.set(name, &1u64).await?;
    /// }
    /// assert_eq!(st.list("user:").await?, ["user:alice", "user:bob"]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn list(&self, prefix: impl AsRef<str>) -> Result<Vec<String>, Error> {
        let prefix = prefix.as_ref();
        if prefix.contains('\0') {
            return Err(Error::InvalidName {
                name: shorten(prefix),
                reason: "the prefix holds a NUL byte",
            });
        }
        if prefix.len() > MAX_NAME_LEN {
            return Err(Error::InvalidName {
                name: shorten(prefix),
                reason: "the prefix is longer than 1024 bytes",
            });
        }
        let full = format!("{}{prefix}", self.inner.key_prefix);
        let keys = self.inner.driver.list(&full).await?;
        let plen = self.inner.key_prefix.len();
        let mut names: Vec<String> = keys
            .into_iter()
            .filter(|k| k.starts_with(&full))
            .map(|mut k| k.split_off(plen))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// The driver key for `name` of a type with `namespace`, after checking the name.
    fn key(&self, namespace: &str, name: &str) -> Result<String, Error> {
        check_name(name)?;
        let key = format!("{}{namespace}{name}", self.inner.key_prefix);
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidName {
                name: shorten(name),
                reason: "the key (prefix, namespace and name) is longer than 2048 bytes",
            });
        }
        Ok(key)
    }

    fn encode<T: Scope>(&self, name: &str, value: &T) -> Result<Vec<u8>, Error> {
        let data = codec::encode(name, value)?;
        if data.len() > self.inner.max_data_len {
            return Err(Error::TooLarge {
                scope: shorten(name),
                size: data.len(),
                limit: self.inner.max_data_len,
            });
        }
        Ok(data)
    }

    async fn load(&self, key: &str) -> Result<Option<Arc<Record>>, Error> {
        let inner = &self.inner;
        Counters::bump(&inner.counters.loads);
        let record = inner.driver.load(key).await?.map(Arc::new);
        match &record {
            Some(r) => inner.cache.put(key, r.clone()),
            None => inner.cache.remove(key),
        }
        Ok(record)
    }

    /// The retry loop shared by every update form.
    async fn run<T, R, E, F, Fut>(&self, name: &str, mut f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        let key = self.key(T::NAMESPACE, name)?;
        let span = tracing::debug_span!(
            "mp_storage.update",
            scope = %shorten(name),
            driver = self.inner.driver.name()
        );
        async move {
            let inner = &self.inner;
            let started = Instant::now();
            // This process's turn on the scope, taken by the first attempt that has something
            // to write (reads never wait for it).
            let mut _turn: Option<tokio::sync::OwnedMutexGuard<()>> = None;
            let mut asked_turn = false;
            if let Some(queue) = inner.queues.existing(&key) {
                if queue.try_lock().is_err() {
                    // A busy scope: queue up first, so the attempt starts from what the update
                    // ahead commits instead of being run twice.
                    asked_turn = true;
                    _turn = self.take_turn(&queue, started).await;
                }
            }
            let mut start = Start::Unknown;
            let mut attempts: u32 = 0;
            let mut retries: u32 = 0;
            loop {
                attempts += 1;
                Counters::bump(&inner.counters.attempts);
                let (current, from_cache) = match std::mem::replace(&mut start, Start::Unknown) {
                    Start::Fresh(r) => (r, false),
                    Start::Unknown => match inner.cache.get(&key) {
                        Some(r) => {
                            Counters::bump(&inner.counters.cache_hits);
                            (Some(r), true)
                        }
                        None => (self.load(&key).await?, false),
                    },
                };
                let version = current.as_ref().map(|r| r.version);
                tracing::trace!(attempt = attempts, ?version, from_cache, "attempt");

                let value: T = codec::decode(name, current.as_deref())?;
                let before = codec::encode(name, &value)?;
                let (value, out) = f(value).await?;
                let data = self.encode(name, &value)?;
                drop(value);

                if data == before {
                    if from_cache {
                        // The cache may be stale: confirm before answering from it.
                        let fresh = self.load(&key).await?;
                        if fresh.as_ref().map(|r| r.version) != version {
                            start = Start::Fresh(fresh);
                            continue;
                        }
                    }
                    Counters::bump(&inner.counters.noops);
                    tracing::trace!(attempt = attempts, "no change, nothing written");
                    return Ok(out);
                }

                if !asked_turn {
                    asked_turn = true;
                    // Updates of one scope from this process take turns instead of racing
                    // each other's CAS. Bounded, so that a closure that waits on another update
                    // of its own scope stalls until the deadline instead of forever.
                    _turn = self.take_turn(&inner.queues.turn(&key), started).await;
                    // A turn taken after others committed: rerun on what they wrote, at no cost
                    // of a round trip.
                    if let Some(cached) = inner.cache.get(&key) {
                        if Some(cached.version) != version {
                            tracing::trace!(attempt = attempts, "rerun after waiting for the turn");
                            continue;
                        }
                    }
                }

                let schema = codec::schema_for::<T>(current.as_deref());
                let write = new_write(schema, &data);
                let outcome = match inner.driver.cas(&key, version, write).await {
                    Ok(o) => o,
                    Err(e) if is_unknown_outcome(&e) => {
                        let settled = self
                            .resolve_unknown(name, &key, version, write.token, e)
                            .await?;
                        Counters::bump(&inner.counters.settled);
                        match settled {
                            Some(o) => o,
                            None => {
                                // Committed; the fresh record is already in the cache.
                                Counters::bump(&inner.counters.commits);
                                tracing::debug!(attempts, "committed (confirmed by token)");
                                return Ok(out);
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                match outcome {
                    CasOutcome::Committed(new_version) => {
                        Counters::bump(&inner.counters.commits);
                        let tokens = current.as_ref().map_or_else(
                            || vec![write.token],
                            |r| push_token(&r.tokens, write.token),
                        );
                        inner.cache.put(
                            &key,
                            Arc::new(Record {
                                version: new_version,
                                schema,
                                data,
                                tokens,
                            }),
                        );
                        tracing::debug!(attempts, version = new_version, "committed");
                        return Ok(out);
                    }
                    CasOutcome::Conflict(fresh) => {
                        Counters::bump(&inner.counters.conflicts);
                        tracing::debug!(attempt = attempts, from_cache, "conflict");
                        start = match fresh {
                            Some(r) => {
                                let r = Arc::new(r);
                                inner.cache.put(&key, r.clone());
                                Start::Fresh(Some(r))
                            }
                            None => {
                                inner.cache.remove(&key);
                                Start::Unknown
                            }
                        };
                        let elapsed = started.elapsed();
                        let deadline = inner.policy.deadline_limit();
                        let out_of_time = deadline.is_some_and(|d| elapsed >= d);
                        if attempts >= inner.policy.attempts() || out_of_time {
                            Counters::bump(&inner.counters.gave_up);
                            tracing::warn!(attempts, ?elapsed, "gave up after conflicts");
                            return Err(Error::Conflict {
                                scope: shorten(name),
                                attempts,
                                elapsed,
                            }
                            .into());
                        }
                        // A stale cache is not contention: retry at once.
                        if !from_cache {
                            retries += 1;
                            let mut delay = inner.policy.delay_for_retry(retries);
                            if let Some(d) = deadline {
                                delay = delay.min(d.saturating_sub(elapsed));
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                                // The record the conflict returned is old news after a wait:
                                // start from the cache, which this process's other tasks keep
                                // fresh (a stale entry costs one CAS that returns the latest).
                                start = Start::Unknown;
                            }
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Waits for this process's turn on a scope, at most until the retry deadline (30 s when
    /// there is none); `None` when the wait ran out, and the update goes on without it.
    async fn take_turn(
        &self,
        queue: &Arc<Turn>,
        started: Instant,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let wait = self
            .inner
            .policy
            .deadline_limit()
            .unwrap_or(Duration::from_secs(30))
            .saturating_sub(started.elapsed());
        tokio::time::timeout(wait, queue.clone().lock_owned())
            .await
            .ok()
    }

    /// After a CAS whose reply was lost: tells from the record's commit tokens whether the write
    /// took effect, so it is neither applied twice nor reported as failed when it is done.
    /// `None` means it committed (the record read is cached); `Some(Conflict)` that it did not.
    async fn resolve_unknown(
        &self,
        name: &str,
        key: &str,
        expected: Option<u64>,
        token: u64,
        cause: Error,
    ) -> Result<Option<CasOutcome>, Error> {
        tracing::debug!(error = %cause, "write outcome unknown, re-reading");
        let mut last_error = cause;
        for pause_ms in [0u64, 50, 200, 500, 1000] {
            if pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            let record = match self.inner.driver.load(key).await {
                Ok(r) => r,
                Err(e) if is_unknown_outcome(&e) => {
                    last_error = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return match record {
                Some(r) if r.tokens.contains(&token) => {
                    // Ours is among the latest writes: it committed at r.version or earlier.
                    self.inner.cache.put(key, Arc::new(r));
                    Ok(None)
                }
                Some(r) if Some(r.version) == expected => Ok(Some(CasOutcome::Conflict(Some(r)))),
                None if expected.is_none() => Ok(Some(CasOutcome::Conflict(None))),
                Some(r) => {
                    // Other writes happened since. If the tokens cover all of them, ours is not
                    // among them and it did not happen.
                    let covered = match expected {
                        Some(v) => r.version > v && (r.version - v) as usize <= r.tokens.len(),
                        None => r.tokens.len() < crate::driver::RECENT_TOKENS,
                    };
                    if covered {
                        Ok(Some(CasOutcome::Conflict(Some(r))))
                    } else {
                        Err(Error::CommitUnknown {
                            scope: shorten(name),
                            reason: "too many writes since to tell".to_owned(),
                        })
                    }
                }
                None => Err(Error::CommitUnknown {
                    scope: shorten(name),
                    reason: "the scope was removed meanwhile".to_owned(),
                }),
            };
        }
        Err(Error::CommitUnknown {
            scope: shorten(name),
            reason: format!("the backend stayed unreachable: {last_error}"),
        })
    }
}

fn is_unknown_outcome(e: &Error) -> bool {
    matches!(
        e.backend_kind(),
        Some(BackendKind::Connection | BackendKind::Timeout)
    )
}

fn new_write(schema: u32, data: &[u8]) -> Write<'_> {
    let mut rng = rand::rng();
    Write {
        schema,
        data,
        token: rng.random(),
        initial_version: rng.random_range(1..1u64 << 48),
    }
}

/// Checks a scope name: non-empty, no NUL, at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_LEN {
        "the name is longer than 1024 bytes"
    } else if name.contains('\0') {
        "the name holds a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: shorten(name),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a\0b").is_err());
        assert!(check_name("../..").is_ok());
    }

    #[test]
    fn storage_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Storage>();
    }
}
