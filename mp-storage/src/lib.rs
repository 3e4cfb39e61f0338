//! Persistent state that feels like a local variable.
//!
//! A *scope* is a named, typed value kept in a backend. [`Storage::scoped`] loads it, runs your
//! closure on a `&mut` to it and writes the result back with a compare-and-swap on the scope's
//! version. When another task, process or server changed the scope in between, the attempt is
//! thrown away and the closure runs again on the fresh value: counts stay exact under any load.
//!
//! ```
//! use mp_storage::{Scope, Storage};
//!
//! #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
//! struct Visits {
//!     count: u64,
//! }
//!
//! # async fn demo() -> Result<(), mp_storage::Error> {
//! let storage = Storage::open("memory://").await?;
//! let n = storage.scoped("user:alice", |v: &mut Visits| { v.count += 1; v.count }).await?;
//! assert_eq!(n, 1);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! The closure may run more than once, so it must have no side effects but on the scope; its
//! return value reaches you only after the write is committed.
//!
//! Drivers are picked by URL ([`Storage::open`]): `memory://`, `file:<dir>` (feature `file`,
//! on by default), `redis://…` (feature `redis`), `mysql://…` (feature `mysql`). A backend of your
//! own implements [`Driver`].

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod cache;
mod codec;
pub mod driver;
mod error;
mod finite;
mod queue;
mod retry;
mod scope;
mod stats;
mod storage;
mod url;

pub use driver::{CasOutcome, Driver, Record, Write};
pub use error::{redact_url, BackendKind, BoxError, Error};
pub use retry::RetryPolicy;
pub use scope::Scope;
pub use stats::Stats;
pub use storage::{
    Storage, StorageBuilder, DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_DATA_LEN, DEFAULT_URL, ENV_URL,
    MAX_KEY_LEN, MAX_NAME_LEN,
};

/// `#[derive(Scope)]`: see the [`Scope`](trait@Scope) trait for its attributes.
pub use mp_storage_macros::Scope;

/// Re-exports for the code `#[derive(Scope)]` generates. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use serde::de::DeserializeOwned;
    pub use serde::Serialize;
    pub use serde_json::Value;
    pub use std::default::Default;
    pub use std::marker::Send;
    pub use std::primitive::{str, u32};
    pub use std::result::Result;
    pub use std::string::{String, ToString};

    /// Runs the function of `#[scope(migrate = …)]` and turns its error into a string. Taking a
    /// function pointer makes a wrong signature an error that names the expected one.
    #[inline]
    pub fn migrate<T, E: std::fmt::Display>(
        f: fn(u32, Value) -> Result<T, E>,
        from: u32,
        old: Value,
    ) -> Result<T, String> {
        f(from, old).map_err(|e| e.to_string())
    }
}
