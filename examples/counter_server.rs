//! The counter server: counts HTTP requests in mp-storage scopes, globally and per user.
//!
//! Run: `cargo run --release -p mp-storage-examples --bin counter-server`
//! (`-- --help` for the flags: `--storage URL`, `--listen ADDR`; or the variables
//! `MP_STORAGE_URL` and `PORT`), then:
//!
//! ```text
//! $ curl localhost:8080
//! There has been 1 request.
//! $ curl localhost:8080
//! There have been 2 requests.
//! $ curl 'localhost:8080/?user=alice'
//! There has been 1 request.
//! $ curl -H 'Accept: application/json' 'localhost:8080/?user=alice'
//! {"scope":"user:alice","count":2}
//! $ curl -X POST 'localhost:8080/deposit?user=alice&amount=100'
//! {"user":"alice","balance":100}
//! $ curl -X POST 'localhost:8080/transfer?from=alice&to=bob&amount=30'
//! {"from":{"user":"alice","balance":70},"to":{"user":"bob","balance":30}}
//! ```
//!
//! The app (router, state, handlers) is in `counter/mod.rs`, the command line in
//! `counter/cli.rs`: both live in this package's library, so that the tests in
//! `tests/tests/server.rs` start this very program as processes of their own.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(mp_storage_examples::counter::cli::run(
        std::env::args_os().skip(1),
    ))
}
