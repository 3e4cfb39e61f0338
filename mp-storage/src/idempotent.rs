//! [`Idempotent`]: updates that commit at most once per idempotency key.

use std::future::ready;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Scope, Storage};

impl Storage {
    /// Updates that commit at most once per `key`, a caller's idempotency key (a request id,
    /// say): a repeat with the same key returns the first result without running the closure
    /// again. So a client that retries after a lost answer, a timeout, a 503 or an
    /// [`Error::CommitUnknown`] applies its change once.
    ///
    /// The key is kept in the scope with the update's result, written in the same
    /// compare-and-swap as the change. A scope remembers its
    /// [`MAX_RECEIPTS`](crate::MAX_RECEIPTS) newest keys, each for
    /// [`RECEIPT_TTL`](crate::RECEIPT_TTL) (24 hours); a repeat after that runs again. A
    /// closure that changes nothing writes nothing, and no key either: a repeat runs it again.
    /// An unconditional [`Storage::set`] forgets the scope's keys. Keys are 1 to
    /// [`MAX_IDEMPOTENCY_KEY_LEN`](crate::MAX_IDEMPOTENCY_KEY_LEN) bytes; results up to
    /// [`MAX_RECEIPT_RESULT_LEN`](crate::MAX_RECEIPT_RESULT_LEN) bytes as JSON.
    ///
    /// ```
    /// # use mp_storage::{Scope, Storage};
    /// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
    /// struct Wallet { cents: u64 }
    ///
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = Storage::open("memory://").await?;
    /// // A client sent "top up 500, request 7f3a" and retried it after a timeout.
    /// for _ in 0..2 {
    ///     let balance = st
    ///         .idempotent("req-7f3a")
    ///         .scoped("wallet:alice", |w: &mut Wallet| { w.cents += 500; w.cents })
    ///         .await?;
    ///     assert_eq!(balance, 500);
    /// }
    /// assert_eq!(st.get::<Wallet>("wallet:alice").await?.map(|w| w.cents), Some(500));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn idempotent<'a>(&'a self, key: &'a str) -> Idempotent<'a> {
        Idempotent { st: self, key }
    }
}

/// Updates under one idempotency key: see [`Storage::idempotent`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Idempotent<'a> {
    st: &'a Storage,
    key: &'a str,
}

impl Idempotent<'_> {
    /// [`Storage::scoped`], at most once for this key; a repeat returns the first result.
    pub async fn scoped<T, R, F>(&self, name: impl AsRef<str>, mut f: F) -> Result<R, Error>
    where
        T: Scope,
        R: Serialize + DeserializeOwned + Send,
        F: FnMut(&mut T) -> R + Send,
    {
        self.st
            .engine()
            .update_once(name.as_ref(), self.key, move |mut value: T| {
                let out = f(&mut value);
                ready(Ok::<_, Error>((value, out)))
            })
            .await
    }

    /// [`Storage::try_scoped`], at most once for this key; a repeat returns the first `Ok`
    /// result. An `Err` writes nothing and keeps no key: a repeat runs the closure again.
    pub async fn try_scoped<T, R, E, F>(&self, name: impl AsRef<str>, mut f: F) -> Result<R, E>
    where
        T: Scope,
        R: Serialize + DeserializeOwned + Send,
        E: From<Error> + Send,
        F: FnMut(&mut T) -> Result<R, E> + Send,
    {
        self.st
            .engine()
            .update_once(name.as_ref(), self.key, move |mut value: T| {
                let out = f(&mut value);
                ready(out.map(|out| (value, out)))
            })
            .await
    }
}
