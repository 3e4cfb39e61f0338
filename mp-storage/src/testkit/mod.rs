//! The behavior suite every driver passes, for drivers inside and outside this repository
//! (feature `testkit`).
//!
//! A case is an async function over a [`Target`]: a driver, and a key prefix of the case's own.
//! [`behavior_suite!`](crate::behavior_suite) expands into one test per case of [`cases`], so a
//! driver joins the suite with one test file:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mp_storage::testkit::Target;
//!
//! /// A fresh target per case; `None` skips the case (a server that is not configured).
//! async fn target() -> Option<Target> {
//!     let driver = mp_storage::driver::memory::MemoryDriver::new(); // or a driver of your own
//!     Some(Target::new("mine", Arc::new(driver)))
//! }
//!
//! mp_storage::behavior_suite!(target());
//! # fn main() {}
//! ```
//!
//! A driver whose store outlives the case (a server, a directory shared by runs) marks its target
//! [`shared`](Target::shared): every case still works under a key prefix of its own, and what it
//! wrote is deleted afterwards, failing or not. [`server_target`] reads a server's URL from an
//! environment variable and skips with a printed note when it is unset, or fails when
//! `MP_TEST_REQUIRE_SERVERS=1` ([`REQUIRE_SERVERS`]).
//!
//! One case can also be run by hand, for instance while fixing a driver:
//!
//! ```
//! use std::sync::Arc;
//! use mp_storage::driver::memory::MemoryDriver;
//! use mp_storage::testkit::{cases, Target};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let target = Target::new("memory", Arc::new(MemoryDriver::new()));
//! target.run(cases::concurrent_increments_are_exact(&target)).await;
//! assert!(mp_storage::testkit::CASES.contains(&"concurrent_increments_are_exact"));
//! # });
//! ```
//!
//! The generated tests run each case on a multi-thread tokio runtime of four workers; the crate
//! that calls the macro needs no tokio features of its own. A case panics when the driver breaks
//! the contract, with a message that says how.

pub mod cases;
mod servers;
mod target;

pub use cases::CASES;
pub use servers::{note_skip, server_target, server_url, servers_required, REQUIRE_SERVERS};
pub use target::Target;

use crate::{Storage, Write};

/// The scope type the cases count with.
#[derive(crate::Scope, serde::Serialize, serde::Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
pub struct Counter {
    /// The count.
    pub count: u64,
}

/// Adds one to the [`Counter`] in scope `name`; returns the new count.
pub async fn increment(st: &Storage, name: &str) -> Result<u64, crate::Error> {
    st.scoped(name, |c: &mut Counter| {
        c.count += 1;
        c.count
    })
    .await
}

/// A random key prefix, so that runs and cases never see each other's data: `t<tag>-<hex>/`.
pub fn unique_prefix(tag: &str) -> String {
    format!("t{}-{:016x}/", tag, rand::random::<u64>())
}

/// A write of `data` as the engine would hand it to a driver: schema 0, a random token and a
/// random initial version (below 2^48).
pub fn write(data: &[u8]) -> Write<'_> {
    Write::new(
        0,
        data,
        rand::random_range(1..=u64::MAX),
        rand::random_range(1..1u64 << 48),
    )
}

/// What the code [`behavior_suite!`](crate::behavior_suite) generates calls. Not public API.
#[doc(hidden)]
pub mod __private {
    /// Runs a test's future to its end on a multi-thread runtime of four workers.
    pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(future),
            Err(e) => panic!("cannot start a tokio runtime for the case: {e}"),
        }
    }
}
