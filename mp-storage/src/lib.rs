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
//! Types change under stored data safely: an update never writes back less than the record held
//! ([`Error::WouldLoseData`]), schema versions migrate on read (`#[scope(version, migrate_from)]`,
//! see [`Scope`](trait@Scope)) and [`Storage::migrate_all`] rewrites the rest. A client that
//! retries gets its change applied once with [`Storage::idempotent`].
//!
//! Drivers are picked by URL ([`Storage::open`], through the table in [`driver::registry`]):
//! `memory://` or `memory://NAME`, `file:<dir>` (feature `file`, on by default), `redis://…`
//! (feature `redis`), `redis-cluster://…` (feature `redis-cluster`), `mysql://…` (feature
//! `mysql`), `postgres://…` (feature `postgres`), `sqlite:…` (feature `sqlite`, on by default).
//! A backend of your own implements [`Driver`] and runs the behavior suite of the `testkit`
//! feature.
//!
//! mp-storage runs on Tokio: call it from a runtime with its time and I/O drivers on
//! (`#[tokio::main]`, `Runtime::new()`, or a builder with `enable_all()`). Backoffs, leases,
//! expiry and the drivers' connections use Tokio's timers, which panic on a runtime built
//! without `enable_time()`.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod builder;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
pub mod driver;
mod engine;
mod error;
mod finite;
mod idempotent;
mod migrate;
mod raw;
mod retry;
mod scope;
mod stats;
mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
mod url;

pub use builder::{StorageBuilder, DEFAULT_URL, ENV_URL};
pub use driver::{
    Action, CasOutcome, CommitOutcome, Driver, Expiry, Op, Record, Revision, Write, MAX_COMMIT_KEYS,
};
pub use engine::Watch;
pub use engine::{
    DEFAULT_CACHE_BYTES, DEFAULT_CACHE_CAPACITY, DEFAULT_LEASE, DEFAULT_MAX_DATA_LEN,
    MAX_IDEMPOTENCY_KEY_LEN, MAX_KEY_LEN, MAX_NAME_LEN, MAX_RECEIPTS, MAX_RECEIPT_RESULT_LEN,
    MAX_TTL, MIN_LEASE, RECEIPT_TTL,
};
pub use error::{redact_url, BackendKind, BoxError, Error, ErrorCategory};
pub use idempotent::Idempotent;
pub use migrate::{
    MigrateAll, MigrationFailure, MigrationProgress, MigrationReport, DEFAULT_BATCH_SIZE,
    MAX_LISTED_FAILURES,
};
pub use raw::{RawScope, MAX_RAW_BATCH};
pub use retry::RetryPolicy;
pub use scope::Scope;
pub use stats::Stats;
pub use storage::Storage;

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
    pub use std::option::Option;
    pub use std::primitive::{bool, str, u32};
    pub use std::result::Result;
    pub use std::string::{String, ToString};
    pub use std::time::Duration;

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

    /// Stops the build when the type of `#[scope(migrate_from = …)]` is not of an older schema
    /// version than the type deriving.
    pub const fn assert_older(old: u32, new: u32) {
        assert!(
            old < new,
            "the type of `migrate_from` must have a lower schema `version` than the type deriving"
        );
    }

    /// The migration of `#[scope(migrate_from = Old)]`: a record at `Old::VERSION` (`version`)
    /// decodes as `Old` and converts; an older one goes through `Old`'s own migration
    /// (`migrate_old`) first. `Old`'s `Scope` items are passed in rather than bounded here, so
    /// that an `Old` that is not a scope is reported once, at the derive's own check.
    pub fn migrate_from<Old, New>(
        from: u32,
        old: Value,
        version: u32,
        migrate_old: fn(u32, Value) -> Result<Old, String>,
    ) -> Result<New, String>
    where
        Old: DeserializeOwned,
        New: From<Old>,
    {
        use std::cmp::Ordering;
        match from.cmp(&version) {
            Ordering::Equal => serde_json::from_value::<Old>(old)
                .map(New::from)
                .map_err(|e| {
                    format!(
                        "the record does not decode as {}: {e}",
                        std::any::type_name::<Old>()
                    )
                }),
            Ordering::Less => migrate_old(from, old).map(New::from),
            Ordering::Greater => Err(format!(
                "no migration from schema version {from}: {} reads version {version} and older",
                std::any::type_name::<Old>(),
            )),
        }
    }
}
