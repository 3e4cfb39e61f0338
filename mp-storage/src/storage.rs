//! [`Storage`], the public handle: each call adapts its form to the engine.

use std::fmt;
use std::future::{ready, Future};
use std::sync::Arc;

use crate::engine::Engine;
use crate::migrate::MigrateAll;
use crate::stats::Stats;
use crate::{Error, Scope};

/// Typed scopes over a backend: the one entry point.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`: build one at startup and share it between
/// every handler and task. Build it with [`Storage::open`], [`Storage::from_env`],
/// [`Storage::builder`] or [`Storage::with_driver`].
///
/// # Names
/// A scope name is any non-empty UTF-8 without NUL, up to [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)
/// bytes, taken exactly (`Alice`, `alice` and `alice ` are three scopes). The typed calls
/// ([`get`](Storage::get), [`set`](Storage::set), [`scoped`](Storage::scoped) and its forms,
/// [`remove_as`](Storage::remove_as), [`list_as`](Storage::list_as)) take the name without the
/// type's `#[scope(namespace = …)]`; the raw calls ([`remove`](Storage::remove),
/// [`list`](Storage::list)) take and return names as stored, namespace included. Errors always
/// name the scope as stored.
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
    engine: Arc<Engine>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("driver", &self.engine.driver().name())
            .field("key_prefix", &self.engine.key_prefix())
            .field("policy", self.engine.policy())
            .finish_non_exhaustive()
    }
}

impl Storage {
    pub(crate) fn from_engine(engine: Engine) -> Storage {
        Storage {
            engine: Arc::new(engine),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The driver's name (`memory`, `file`, `redis`, `mysql`, …).
    pub fn driver_name(&self) -> &'static str {
        self.engine.driver().name()
    }

    /// The engine's counters so far.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
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
        self.engine
            .update(name.as_ref(), move |mut value: T| {
                let out = f(&mut value);
                ready(Ok::<_, Error>((value, out)))
            })
            .await
    }

    /// Like [`Storage::scoped`], for a closure that can fail: when it returns `Err`, nothing is
    /// written and that error comes back as is. Storage errors convert into `E`.
    ///
    /// An `Err` decided on cached data is confirmed like any answer: when the scope changed
    /// meanwhile, `f` runs again on the fresh value.
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
    ///     .try_scoped("acct", |balance: &mut i64| -> Result<i64, AppError> {
    ///         if *balance < 10 { return Err(AppError::Insufficient); }
    ///         *balance -= 10;
    ///         Ok(*balance)
    ///     })
    ///     .await;
    /// assert!(matches!(r, Err(AppError::Insufficient)));
    /// assert_eq!(st.get::<i64>("acct").await?, None);
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
        self.engine
            .update(name.as_ref(), move |mut value: T| {
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
    ///     .scoped_async("n", |v: u64| async move {
    ///         tokio::task::yield_now().await;
    ///         (v + 1, v + 1)
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
        self.engine
            .update(name.as_ref(), move |value: T| {
                let fut = f(value);
                async move { Ok::<_, Error>(fut.await) }
            })
            .await
    }

    /// The fallible form of [`Storage::scoped_async`]: an `Err` writes nothing and comes back
    /// as is.
    ///
    /// ```
    /// #[derive(Debug)]
    /// enum ShopError { SoldOut, Storage(mp_storage::Error) }
    /// impl From<mp_storage::Error> for ShopError {
    ///     fn from(e: mp_storage::Error) -> Self { ShopError::Storage(e) }
    /// }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let r: Result<u64, ShopError> = st
    ///     .try_scoped_async("stock", |left: u64| async move {
    ///         match left.checked_sub(1) {
    ///             Some(n) => Ok((n, n)),
    ///             // Nothing is written; the error comes back as is.
    ///             None => Err(ShopError::SoldOut),
    ///         }
    ///     })
    ///     .await;
    /// assert!(matches!(r, Err(ShopError::SoldOut)));
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
        self.engine.update(name.as_ref(), f).await
    }

    /// An exclusive update, for a closure with side effects (a payment call, an email): `f`
    /// runs **once**, never rerun, while this call holds the scope's lease. Every other update of
    /// the scope (`scoped`, `scoped_many`, `locked`, `set`, `remove`), in any process, waits until
    /// this one commits, aborts, or its lease runs out; reads do not wait and see the last
    /// committed value. Taking the lease costs one compare-and-swap, the commit another.
    ///
    /// The lease (length set by [`StorageBuilder::lease`](crate::StorageBuilder::lease), 30 s by
    /// default) is renewed while `f` runs, so long IO is fine. A holder that dies leaves it to
    /// run out; a holder that stalls past it (a paused process) finds the scope taken over, stores
    /// nothing, and gets [`Error::LeaseLost`]. Waiting for another holder is bounded by the retry
    /// policy's deadline ([`Error::Leased`] then). The closure must not update its own scope
    /// (that update would wait for this very lease until the deadline). An absent scope is created with
    /// `T::default()` while the lease is held, and removed again if `f` aborts.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let charged = st
    ///     .locked("order:42", |paid: bool| async move {
    ///         if paid { return (paid, false); }
    ///         // call the payment API here: this closure never runs twice
    ///         (true, true)
    ///     })
    ///     .await?;
    /// assert!(charged);
    /// assert_eq!(st.get::<bool>("order:42").await?, Some(true));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn locked<T, R, F, Fut>(&self, name: impl AsRef<str>, f: F) -> Result<R, Error>
    where
        T: Scope,
        R: Send,
        F: FnOnce(T) -> Fut + Send,
        Fut: Future<Output = (T, R)> + Send,
    {
        self.engine
            .locked(name.as_ref(), move |value: T| {
                let fut = f(value);
                async move { Ok::<_, Error>(fut.await) }
            })
            .await
    }

    /// The fallible form of [`Storage::locked`]: an `Err` writes nothing, frees the scope at
    /// once, and comes back as is.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let r: Result<u64, mp_storage::Error> = st
    ///     .try_locked("order:7", |n: u64| async move {
    ///         Err(mp_storage::Error::InvalidConfig { setting: "demo", reason: "declined".into() })
    ///     })
    ///     .await;
    /// assert!(r.is_err());
    /// assert_eq!(st.get::<u64>("order:7").await?, None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn try_locked<T, R, E, F, Fut>(&self, name: impl AsRef<str>, f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnOnce(T) -> Fut + Send,
        Fut: Future<Output = Result<(T, R), E>> + Send,
    {
        self.engine.locked(name.as_ref(), f).await
    }

    /// Several scopes of one type, all or nothing: loads the scopes `names`, runs `f` on their
    /// values (in the order of the names), and commits every change together, with a
    /// compare-and-swap on each scope's revision; when any of them changed meanwhile, nothing is
    /// written and `f` runs again on the fresh values. The scopes `f` left unchanged are checked
    /// (`f` read them) but not rewritten; when `f` changes nothing, nothing is written.
    ///
    /// Names must be distinct, at most [`MAX_COMMIT_KEYS`](crate::MAX_COMMIT_KEYS) (64), each a
    /// valid name ([`Error::InvalidName`] otherwise, nothing written). The driver must commit
    /// several scopes at once ([`Error::Unsupported`] otherwise); every driver of this crate
    /// does. `f` may run more than once, like [`Storage::scoped`]'s.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// struct Account { balance: u64 }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// st.set("acct:alice", &Account { balance: 25 }).await?;
    /// let moved = st
    ///     .scoped_many(&["acct:alice", "acct:bob"], |a: &mut [Account]| {
    ///         if a[0].balance < 10 {
    ///             return false;
    ///         }
    ///         a[0].balance -= 10;
    ///         a[1].balance += 10;
    ///         true
    ///     })
    ///     .await?;
    /// assert!(moved);
    /// let all: Vec<Option<Account>> = st.get_many(&["acct:alice", "acct:bob"]).await?;
    /// assert_eq!(all.iter().map(|a| a.as_ref().map(|a| a.balance)).collect::<Vec<_>>(), [Some(15), Some(10)]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn scoped_many<T, R, F, N>(&self, names: &[N], mut f: F) -> Result<R, Error>
    where
        T: Scope,
        R: Send,
        F: FnMut(&mut [T]) -> R + Send,
        N: AsRef<str> + Sync,
    {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        self.engine
            .update_many(&names, move |values: &mut [T]| Ok::<_, Error>(f(values)))
            .await
    }

    /// Like [`Storage::scoped_many`], for a closure that can fail: an `Err` writes nothing and
    /// comes back as is. Storage errors convert into `E`.
    pub async fn try_scoped_many<T, R, E, F, N>(&self, names: &[N], f: F) -> Result<R, E>
    where
        T: Scope,
        R: Send,
        E: From<Error> + Send,
        F: FnMut(&mut [T]) -> Result<R, E> + Send,
        N: AsRef<str> + Sync,
    {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        self.engine.update_many(&names, f).await
    }

    /// Reads the scopes `names` as `T`, in the order of the names (`None` for an absent one), in
    /// one round trip where the backend allows. At most 1,024 names.
    pub async fn get_many<T: Scope, N: AsRef<str>>(
        &self,
        names: &[N],
    ) -> Result<Vec<Option<T>>, Error> {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        self.engine.get_many(&names).await
    }

    /// Sets the expiry of scope `name` (taken as stored, like [`Storage::remove`]): it is gone
    /// `ttl` from now, by the backend's clock where there is one; `None` clears the expiry.
    /// Returns whether the scope exists (an expired one does not). A later write of a type
    /// with a time to live (`#[scope(ttl_secs = N)]`) sets it again; a write of a type without
    /// one keeps it, as Redis keeps a key's expiry when a field of it is set.
    ///
    /// A zero or longer than [`MAX_TTL`](crate::MAX_TTL) (ten years) `ttl` is
    /// [`Error::InvalidConfig`]; a driver without expiry gives [`Error::Unsupported`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// assert!(!st.expire("session:x", Some(Duration::from_secs(60))).await?, "absent");
    /// st.set("session:x", &"alice".to_owned()).await?;
    /// assert!(st.expire("session:x", Some(Duration::from_millis(20))).await?);
    /// tokio::time::sleep(Duration::from_millis(40)).await;
    /// assert_eq!(st.get::<String>("session:x").await?, None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn expire(
        &self,
        name: impl AsRef<str>,
        ttl: Option<std::time::Duration>,
    ) -> Result<bool, Error> {
        let key = self.engine.key("", name.as_ref())?;
        self.engine.expire(&key, ttl).await
    }

    /// Updates scope `name` as an `Option`: `f` sees `None` when the scope is absent (or
    /// expired), and leaving it `None` ends the scope. Writes and the removal alike commit only
    /// on the revision `f` saw, and rerun `f` on a conflict, like [`Storage::scoped`]: so "remove
    /// the cart when it is empty" never races a concurrent add.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// struct Cart { items: Vec<String> }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// st.set("cart:alice", &Cart { items: vec!["apple".into()] }).await?;
    /// let left = st
    ///     .scoped_option("cart:alice", |cart: &mut Option<Cart>| {
    ///         if let Some(c) = cart {
    ///             c.items.retain(|i| i != "apple");
    ///             if c.items.is_empty() {
    ///                 *cart = None; // the last item: the cart ends
    ///             }
    ///         }
    ///         cart.as_ref().map_or(0, |c| c.items.len())
    ///     })
    ///     .await?;
    /// assert_eq!(left, 0);
    /// assert_eq!(st.get::<Cart>("cart:alice").await?.map(|c| c.items), None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn scoped_option<T, R, F>(&self, name: impl AsRef<str>, mut f: F) -> Result<R, Error>
    where
        T: Scope,
        R: Send,
        F: FnMut(&mut Option<T>) -> R + Send,
    {
        self.engine
            .update_option(name.as_ref(), move |v: &mut Option<T>| Ok::<_, Error>(f(v)))
            .await
    }

    /// Removes scope `name` of type `T` only when `keep` says no to its current value, through
    /// the compare-and-swap: a concurrent change is seen and `keep` asked again. Returns whether
    /// it removed the scope.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set("stock", &0u64).await?;
    /// assert!(st.remove_if("stock", |left: &u64| *left == 0).await?);
    /// assert!(!st.remove_if("stock", |left: &u64| *left == 0).await?, "gone already");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn remove_if<T, F>(&self, name: impl AsRef<str>, mut remove: F) -> Result<bool, Error>
    where
        T: Scope,
        F: FnMut(&T) -> bool + Send,
    {
        self.scoped_option(name, |v: &mut Option<T>| {
            let gone = v.as_ref().is_some_and(&mut remove);
            if gone {
                *v = None;
            }
            gone
        })
        .await
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
        self.engine.get(name.as_ref()).await
    }

    /// Watches scope `name` as `T`: the stream gives its current value first (`None` when
    /// absent), then its value after each committed change, from this process or any other.
    ///
    /// A burst of changes may come as its latest value only, but the latest is never missed and
    /// values never go backwards. A removal or an expiry is `None`; a value that does not decode
    /// as `T` is an `Err` item and the stream goes on; after a lost connection the stream
    /// reconnects by itself and reads the scope again. Dropping it frees what it held. Every
    /// watcher of this storage shares one subscription to the backend, whatever the number of
    /// watchers and scopes (see [`Stats::watch_feeds`]). How each driver learns of changes, and
    /// how soon: the README's "Watching" section (the MySQL driver polls, every 100 ms by
    /// default). A driver without change hints refuses with [`Error::Unsupported`].
    ///
    /// ```
    /// use futures::StreamExt;
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let mut changes = st.watch::<u64>("n").await?;
    /// assert_eq!(changes.next().await.transpose()?, Some(None));
    /// st.set("n", &5u64).await?;
    /// assert_eq!(changes.next().await.transpose()?, Some(Some(5)));
    /// st.remove("n").await?;
    /// assert_eq!(changes.next().await.transpose()?, Some(None));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn watch<T: Scope>(&self, name: impl AsRef<str>) -> Result<crate::Watch<T>, Error> {
        self.engine.watch(name.as_ref())
    }

    /// Writes `value` to scope `name` whatever is stored (no compare-and-swap, and no check of
    /// what the stored record holds: see [`Error::WouldLoseData`] for the updates that check).
    ///
    /// A lost reply is [`Error::CommitUnknown`]: the write may or may not have happened.
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
        self.engine.set(name.as_ref(), value).await
    }

    /// Deletes scope `name`, taken as stored (a namespaced type's namespace included; see
    /// [`Storage::remove_as`] for the typed form). Returns whether it existed.
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
        let key = self.engine.key("", name.as_ref())?;
        self.engine.remove(&key).await
    }

    /// Deletes scope `name` of type `T`: the name as the typed calls take it, without `T`'s
    /// namespace. Returns whether it existed.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// #[scope(namespace = "cart:")]
    /// struct Cart { items: Vec<String> }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// st.set("alice", &Cart { items: vec!["apple".into()] }).await?;
    /// assert!(st.remove_as::<Cart>("alice").await?);
    /// assert_eq!(st.get::<Cart>("alice").await?.map(|c| c.items), None);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn remove_as<T: Scope>(&self, name: impl AsRef<str>) -> Result<bool, Error> {
        let key = self.engine.key(T::NAMESPACE, name.as_ref())?;
        self.engine.remove(&key).await
    }

    /// Every stored scope name that starts with `prefix`, sorted byte-wise. Names come back
    /// exactly as stored (a namespaced type's namespace included; see [`Storage::list_as`] for
    /// the typed form), without the storage's key prefix. An empty prefix lists everything.
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
        self.engine.list(prefix.as_ref()).await
    }

    /// The names of the scopes of type `T` that start with `prefix`, as the typed calls take
    /// them: inside `T`'s namespace, without it. Sorted byte-wise.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// #[scope(namespace = "cart:")]
    /// struct Cart { items: Vec<String> }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// st.set("alice", &Cart::default()).await?;
    /// st.set("bob", &Cart::default()).await?;
    /// st.set("carton", &1u64).await?; // another type, outside the namespace
    /// assert_eq!(st.list_as::<Cart>("").await?, ["alice", "bob"]);
    /// assert_eq!(st.list("cart").await?, ["cart:alice", "cart:bob", "carton"]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn list_as<T: Scope>(&self, prefix: impl AsRef<str>) -> Result<Vec<String>, Error> {
        let full = format!("{}{}", T::NAMESPACE, prefix.as_ref());
        let names = self.engine.list(&full).await?;
        let ns = T::NAMESPACE.len();
        Ok(names.into_iter().map(|mut n| n.split_off(ns)).collect())
    }

    /// Rewrites every scope of type `T` stored at an older schema version to `T::VERSION`, so
    /// that the migration (`migrate` or `migrate_from`) can then be dropped from the code. Set
    /// the run up on the [`MigrateAll`] this returns (a name prefix, the batch size, a cursor to
    /// resume from, a progress callback), then `run().await` it.
    ///
    /// Each scope goes through the ordinary update (compare-and-swap, retried on conflicts), so
    /// it is safe while other tasks and servers write the same scopes; it is safe to run twice,
    /// or from several processes at once. A scope already at `T::VERSION` is not written.
    ///
    /// ```
    /// use mp_storage::{Scope, Storage};
    ///
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// #[scope(namespace = "cart:", version = 1)]
    /// struct CartV1 { item: String }
    ///
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// #[scope(namespace = "cart:", version = 2, migrate_from = CartV1)]
    /// struct Cart { items: Vec<String> }
    ///
    /// impl From<CartV1> for Cart {
    ///     fn from(old: CartV1) -> Cart { Cart { items: vec![old.item] } }
    /// }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// for name in ["alice", "bob", "carol"] {
    ///     st.set(name, &CartV1 { item: "apple".into() }).await?;
    /// }
    /// let mut cursors = Vec::new();
    /// let report = st
    ///     .migrate_all::<Cart>()
    ///     .batch_size(2)
    ///     .on_progress(|p| cursors.push(p.cursor.clone()))
    ///     .run()
    ///     .await?;
    /// assert_eq!((report.scanned, report.migrated, report.failed), (3, 3, 0));
    /// assert_eq!(cursors, [Some("bob".to_owned()), Some("carol".to_owned())]);
    /// // Every record is at version 2 now: the old type no longer reads them.
    /// assert!(st.get::<CartV1>("alice").await.is_err());
    /// // A second run finds nothing to do.
    /// let again = st.migrate_all::<Cart>().run().await?;
    /// assert_eq!((again.migrated, again.current), (0, 3));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn migrate_all<T: Scope>(&self) -> MigrateAll<'_, T> {
        MigrateAll::new(&self.engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Storage>();
    }
}
