//! The driver contract: the only thing a backend implements.
//!
//! A driver stores records under keys. Keys are opaque: exact bytes, exact case, exact trailing
//! spaces, any unicode, up to [`crate::MAX_KEY_LEN`] bytes, never empty and never holding NUL.
//! Every record carries a `u64` version that rises by one on every write of that key; a record
//! that is created starts at [`Write::initial_version`], a random number the engine picks, so a
//! scope that is deleted and created again does not bring back a version that some cache still
//! holds (the ABA problem). The retry loop,
//! the cache, the codec and name checks live in the engine, so a driver stays small.
//!
//! To plug in a backend of your own, implement [`Driver`] and hand it to
//! [`Storage::with_driver`](crate::Storage::with_driver); run the behavior suite of the
//! repository's `tests/` package against it.

use async_trait::async_trait;

use crate::Error;

#[cfg(feature = "file")]
pub mod file;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "redis")]
pub mod redis;

/// Opens the driver a storage URL names (see [`Storage::open`](crate::Storage::open)), for
/// wrapping it (caching, fault injection, metrics) before handing it to
/// [`Storage::with_driver`](crate::Storage::with_driver) or
/// [`StorageBuilder::build`](crate::StorageBuilder::build).
///
/// ```
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let driver = mp_storage::driver::open("memory://").await?;
/// assert_eq!(driver.name(), "memory");
/// let st = mp_storage::Storage::with_driver(driver)?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Driver>, Error> {
    crate::url::open_driver(url).await
}

/// How many commit tokens a record remembers (see [`Record::tokens`]).
pub const RECENT_TOKENS: usize = 16;

/// A stored record as a driver returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The version: rises by one on every write of the key; a new record starts at
    /// [`Write::initial_version`].
    pub version: u64,
    /// The schema version the data was written with.
    pub schema: u32,
    /// The data: the scope encoded as JSON.
    pub data: Vec<u8>,
    /// The commit tokens of the latest writes, oldest first, at most [`RECENT_TOKENS`]:
    /// the engine uses them to tell whether a write whose reply was lost took effect.
    pub tokens: Vec<u64>,
}

/// What a write stores, as the engine hands it to a driver.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// The schema version of the data.
    pub schema: u32,
    /// The scope encoded as JSON.
    pub data: &'a [u8],
    /// A random token naming this write; the driver appends it to the record's tokens and keeps
    /// the last [`RECENT_TOKENS`].
    pub token: u64,
    /// The version to give the record when this write creates it (below 2^48, so it stays exact
    /// in a double, as Lua and JSON numbers are). An update gives the old version plus one.
    pub initial_version: u64,
}

impl Write<'_> {
    /// The version this write gives on top of `current` (the stored version, if any).
    pub fn next_version(&self, current: Option<u64>) -> u64 {
        match current {
            Some(v) => v.saturating_add(1),
            None => self.initial_version,
        }
    }

    /// The record this write produces at `version` on top of `previous` tokens: a helper for
    /// drivers that keep records in memory.
    pub fn to_record(&self, version: u64, previous: &[u64]) -> Record {
        Record {
            version,
            schema: self.schema,
            data: self.data.to_vec(),
            tokens: push_token(previous, self.token),
        }
    }
}

/// Appends `token` to `previous`, keeping the newest [`RECENT_TOKENS`].
pub fn push_token(previous: &[u64], token: u64) -> Vec<u64> {
    let keep = previous.len().min(RECENT_TOKENS - 1);
    let mut tokens = Vec::with_capacity(keep + 1);
    tokens.extend_from_slice(&previous[previous.len() - keep..]);
    tokens.push(token);
    tokens
}

/// The outcome of [`Driver::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write took effect; the record now has this version.
    Committed(u64),
    /// The stored version was not the expected one; nothing was written. Carries the current
    /// record when the backend could read it in the same round trip, `None` when the caller must
    /// load it (or the key is absent).
    Conflict(Option<Record>),
}

/// A storage backend.
///
/// Every method is one logical operation on one key (except `list`). Errors are
/// [`Error::Backend`] (with a [`BackendKind`](crate::BackendKind)) or [`Error::Corrupt`] for a
/// stored record that cannot be parsed; a driver never panics on stored data.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for errors and logs, such as `"redis"`.
    fn name(&self) -> &'static str;

    /// The largest `data` this backend stores, in bytes.
    fn max_data_len(&self) -> usize {
        crate::DEFAULT_MAX_DATA_LEN
    }

    /// Reads the record of `key`, `None` when absent.
    async fn load(&self, key: &str) -> Result<Option<Record>, Error>;

    /// Writes `write` when the stored version is `expected` (`None`: only when absent).
    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error>;

    /// Writes `write` whatever is stored; returns the new version.
    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, Error>;

    /// Every stored key that starts with `prefix` (byte-wise), in any order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_the_newest() {
        let mut t = Vec::new();
        for i in 0..40 {
            t = push_token(&t, i);
        }
        assert_eq!(t.len(), RECENT_TOKENS);
        assert_eq!(t.first(), Some(&24));
        assert_eq!(t.last(), Some(&39));
        assert_eq!(push_token(&[], 5), vec![5]);
    }
}
