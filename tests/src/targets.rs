//! The repository's drivers as behavior-suite targets, built on the public testkit API
//! ([`mp_storage::testkit`]); the skip-or-fail rule for server drivers lives there too.

use mp_storage::testkit::server_target;

pub use mp_storage::testkit::{note_skip, server_url, servers_required, Target, REQUIRE_SERVERS};

/// The memory driver: a store of this case's own.
pub async fn memory() -> Option<Target> {
    let driver = mp_storage::driver::open("memory://")
        .await
        .expect("memory opens");
    Some(Target::new("memory", driver))
}

/// The file driver in a fresh temporary directory, removed when the target drops (fsync off:
/// the suite checks behavior, not durability).
pub async fn file() -> Option<Target> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let driver = match mp_storage::driver::open(&url).await {
        Ok(d) => d,
        Err(e) => panic!("the file driver does not open {url}: {e}"),
    };
    Some(Target::new("file", driver).on_drop(move || drop(dir)))
}

/// The SQLite driver on a fresh database file in a temporary directory, removed when the
/// target drops (`synchronous=off`: the suite checks behavior, not durability).
pub async fn sqlite() -> Option<Target> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite:{}/suite.db?fsync=false", dir.path().display());
    let driver = match mp_storage::driver::open(&url).await {
        Ok(d) => d,
        Err(e) => panic!("the sqlite driver does not open {url}: {e}"),
    };
    Some(Target::new("sqlite", driver).on_drop(move || drop(dir)))
}

/// A server driver opened from the URL in `var`: shared, so each case deletes what it wrote.
/// Unset or unreachable, the case skips, or fails when servers are required.
pub async fn open_server(name: &'static str, var: &str) -> Option<Target> {
    server_target(name, var, |url| async move {
        mp_storage::driver::open(&url).await
    })
    .await
}

/// The Redis driver on `MP_TEST_REDIS_URL`.
pub async fn redis() -> Option<Target> {
    open_server("redis", "MP_TEST_REDIS_URL").await
}

/// The Redis Cluster driver on `MP_TEST_REDIS_CLUSTER_URL`. Each case's prefix is a hash tag of
/// its own (`t{<random>}/`): its scopes share one slot, so its several-scope commits can run,
/// and the cases spread over the masters.
pub async fn redis_cluster() -> Option<Target> {
    let target = open_server("redis-cluster", "MP_TEST_REDIS_CLUSTER_URL").await?;
    let tag = mp_storage::testkit::unique_prefix("rc");
    Some(target.with_prefix(format!("t{{{}}}/", tag.trim_end_matches('/'))))
}

/// The MySQL driver on `MP_TEST_MYSQL_URL`.
pub async fn mysql() -> Option<Target> {
    open_server("mysql", "MP_TEST_MYSQL_URL").await
}

/// The PostgreSQL driver on `MP_TEST_POSTGRES_URL`.
pub async fn postgres() -> Option<Target> {
    open_server("postgres", "MP_TEST_POSTGRES_URL").await
}
