//! The drivers the suite runs on, and the skip-or-fail rule for server drivers.

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use mp_storage::{Driver, Storage, StorageBuilder};

/// The variable that turns a skipped server suite into a failure.
pub const REQUIRE_SERVERS: &str = "MP_TEST_REQUIRE_SERVERS";

/// A driver under test and a key prefix of this case's own.
pub struct Target {
    /// The driver's name.
    pub name: &'static str,
    /// The driver every handle of this case shares.
    pub driver: Arc<dyn Driver>,
    /// The key prefix of this case: raw driver keys must start with it.
    pub prefix: String,
    /// The URL the driver was opened from (with no key prefix).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// A handle with default settings (its own cache: a second handle acts like another process).
    pub fn storage(&self) -> Storage {
        self.storage_with(Storage::builder())
    }

    /// A handle with the builder's settings (the key prefix is the target's).
    pub fn storage_with(&self, builder: StorageBuilder) -> Storage {
        crate::storage_on(&self.driver, &self.prefix, builder)
    }

    /// The raw driver key of `name` under this case's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for Target {
    /// Server targets delete what the case wrote under its prefix, so runs leave nothing behind
    /// (through [`crate::delete_under`], so a panicking case's too).
    fn drop(&mut self) {
        if !matches!(self.name, "redis" | "mysql") {
            return;
        }
        crate::delete_under(&self.url, &self.prefix);
    }
}

/// Whether server suites must run (`MP_TEST_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Prints a skip note once per driver and process, past the test harness's output capture.
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

/// The URL of a server driver's test server from `var`; `None` (skip) when unset, a panic when
/// unset and servers are required.
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

/// Opens a server driver's URL; an unreachable server skips, or fails when servers are required.
pub async fn open_server(name: &'static str, var: &str) -> Option<Target> {
    let url = server_url(var, name)?;
    match mp_storage::driver::open(&url).await {
        Ok(driver) => Some(Target {
            name,
            driver,
            prefix: crate::unique_prefix(name),
            url,
            _dir: None,
        }),
        Err(e) if servers_required() => {
            panic!("the {name} server at {var} cannot be used ({e}), and {REQUIRE_SERVERS}=1")
        }
        Err(e) => {
            note_skip(name, &format!("the server at {var} cannot be used: {e}"));
            None
        }
    }
}

/// The memory driver: a store of this case's own.
pub async fn memory() -> Option<Target> {
    let url = "memory://".to_owned();
    let driver = mp_storage::driver::open(&url).await.expect("memory opens");
    Some(Target {
        name: "memory",
        driver,
        prefix: crate::unique_prefix("memory"),
        url,
        _dir: None,
    })
}

/// The file driver in a fresh temporary directory (fsync off: the suite checks behavior, not
/// durability).
pub async fn file() -> Option<Target> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let driver = match mp_storage::driver::open(&url).await {
        Ok(d) => d,
        Err(e) => panic!("the file driver does not open {url}: {e}"),
    };
    Some(Target {
        name: "file",
        driver,
        prefix: crate::unique_prefix("file"),
        url,
        _dir: Some(dir),
    })
}

/// The Redis driver on `MP_TEST_REDIS_URL`.
pub async fn redis() -> Option<Target> {
    open_server("redis", "MP_TEST_REDIS_URL").await
}

/// The MySQL driver on `MP_TEST_MYSQL_URL`.
pub async fn mysql() -> Option<Target> {
    open_server("mysql", "MP_TEST_MYSQL_URL").await
}
