//! Code shared by the example programs of mp-storage and their tests.
//!
//! [`counter`] is the counter server: its router and state ([`counter::app`]) and its command
//! line ([`counter::cli`]). The `counter-server` binary is one call to [`counter::cli::run`], so
//! the tests can start the very same program as a process of their own.
//!
//! [`counting_driver`] is a driver of one's own (a wrapper that counts calls), and its test runs
//! the behavior suite on it.

#![warn(missing_docs)]

pub mod counter;
pub mod counting_driver;
