//! Targets on servers: skipped with a printed note when the server is not configured or cannot
//! be reached, failed instead when `MP_TEST_REQUIRE_SERVERS=1`.

use std::fmt::Display;
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use super::Target;
use crate::Driver;

/// The variable that turns a skipped server suite into a failure: `MP_TEST_REQUIRE_SERVERS`
/// (`1` or `true`).
pub const REQUIRE_SERVERS: &str = "MP_TEST_REQUIRE_SERVERS";

/// Whether server suites must run (`MP_TEST_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Prints ``SKIPPED: the <driver> cases of the `<test binary>` tests: <why> …`` on stderr, once
/// per driver and process, past the test harness's output capture.
pub fn note_skip(driver: &str, why: &str) {
    static SEEN: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(Vec::new()));
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.iter().any(|d| d == driver) {
        return;
    }
    seen.push(driver.to_owned());
    // The test binary's name without cargo's hash: `redis-3f2a…` → `redis`.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => s,
        })
        .unwrap_or_else(|| "these".to_owned());
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: the {driver} cases of the `{binary}` tests: {why} \
         (set {REQUIRE_SERVERS}=1 to fail instead)"
    );
}

/// The URL of a test server from the variable `var`: `None` (after a [`note_skip`]) when unset;
/// a panic when unset and servers are required.
pub fn server_url(var: &str, driver: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if servers_required() => {
            panic!("{var} is not set, but {REQUIRE_SERVERS}=1 requires the {driver} suite to run")
        }
        _ => {
            note_skip(driver, &format!("{var} is not set"));
            None
        }
    }
}

/// A [shared](Target::shared) target named `name` on the server whose URL is in the variable
/// `var`, opened by `open`. Unset or unreachable, the case is skipped with a note, or fails
/// when servers are required.
///
/// ```no_run
/// use mp_storage::testkit::{server_target, Target};
///
/// async fn target() -> Option<Target> {
///     server_target("redis", "MP_TEST_REDIS_URL", |url| async move {
///         mp_storage::driver::open(&url).await
///     })
///     .await
/// }
/// ```
pub async fn server_target<F, Fut, E>(name: &str, var: &str, open: F) -> Option<Target>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Driver>, E>>,
    E: Display,
{
    let url = server_url(var, name)?;
    match open(url).await {
        Ok(driver) => Some(Target::new(name, driver).shared()),
        Err(e) if servers_required() => {
            panic!("the {name} server at {var} cannot be used ({e}), and {REQUIRE_SERVERS}=1")
        }
        Err(e) => {
            note_skip(name, &format!("the server at {var} cannot be used: {e}"));
            None
        }
    }
}
