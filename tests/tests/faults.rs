//! Faults on live servers: connections killed under load. Nothing may be lost or applied twice:
//! afterwards the stored count equals the number of updates that returned `Ok`, every `Ok` count
//! is distinct, and every failure is a typed error that says what happened.
//!
//! Each test kills the server's client connections (sparing its own), so this file holds one
//! test per server and they take a lock so that they never run at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mp_storage::{BackendKind, Error, Storage};
use mp_storage_tests::{targets, unique_prefix, Counter};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// 8 tasks increment one scope until `stop`; returns the `Ok` counts, the number of errors and
/// how many of those were "commit unknown" (the only ones that may have taken effect).
async fn hammer(st: Storage, stop: Arc<tokio::sync::Notify>) -> (Vec<u64>, u64, u64) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut joins = Vec::new();
    for _ in 0..8 {
        let st = st.clone();
        let done = done.clone();
        joins.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut errors = 0u64;
            let mut unknown = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match st
                    .scoped("hot", |c: &mut Counter| {
                        c.count += 1;
                        c.count
                    })
                    .await
                {
                    Ok(n) => ok.push(n),
                    Err(e) => {
                        assert_typed(&e);
                        errors += 1;
                        unknown += u64::from(matches!(e, Error::CommitUnknown { .. }));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (ok, errors, unknown)
        }));
    }
    stop.notified().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut errors, mut unknown) = (0, 0);
    for j in joins {
        let (ok, e, u) = j.await.expect("task");
        all.extend(ok);
        errors += e;
        unknown += u;
    }
    (all, errors, unknown)
}

fn assert_typed(e: &Error) {
    let typed = matches!(e, Error::CommitUnknown { .. })
        || matches!(
            e.backend_kind(),
            Some(BackendKind::Connection | BackendKind::Timeout)
        );
    assert!(typed, "an unexpected error under connection kills: {e:?}");
}

async fn check(st: &Storage, ok: Vec<u64>, errors: u64, unknown: u64) {
    let n = ok.len();
    let distinct: HashSet<u64> = ok.into_iter().collect();
    assert_eq!(distinct.len(), n, "an Ok count was handed out twice");
    // The stored count can be read once the server answers again.
    let mut stored = None;
    for _ in 0..50 {
        match st.get::<Counter>("hot").await {
            Ok(c) => {
                stored = Some(c.map_or(0, |c| c.count));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let stored = stored.expect("the server answers after the kills");
    assert!(
        stored >= n as u64 && stored <= n as u64 + unknown,
        "stored {stored}, Ok {n}, errors {errors} ({unknown} commit unknown)"
    );
    eprintln!(
        "{n} updates committed, {errors} typed errors ({unknown} commit unknown), stored {stored}; \
         {} lost replies settled by token",
        st.stats().settled
    );
    st.remove("hot").await.expect("clean up");
}

/// Opens `url` under a fresh prefix, runs [`hammer`] while `kill` runs every 100 ms for 3 s
/// (it returns how many connections it killed), then checks the outcome.
async fn kill_under_load<F, Fut>(url: &str, tag: &str, mut kill: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let _one = ONE_AT_A_TIME.lock().await;
    let st = Storage::builder()
        .key_prefix(unique_prefix(tag))
        .open(url)
        .await
        .expect("open the storage");
    let stop = Arc::new(tokio::sync::Notify::new());
    let work = tokio::spawn(hammer(st.clone(), stop.clone()));
    let mut killed = 0u64;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed += kill().await;
    }
    stop.notify_one();
    let (ok, errors, unknown) = work.await.expect("hammer");
    assert!(killed > 0, "no connection was killed");
    assert!(!ok.is_empty(), "no update got through");
    check(&st, ok, errors, unknown).await;
}

fn base_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_client_kill_loses_and_doubles_nothing() {
    let Some(url) = targets::server_url("MP_TEST_REDIS_URL", "redis") else {
        return;
    };
    let client = redis::Client::open(base_url(&url)).expect("client");
    let killer = client
        .get_multiplexed_async_connection()
        .await
        .expect("killer connection");
    kill_under_load(&url, "redis-kill", || {
        let mut killer = killer.clone();
        async move {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async::<u64>(&mut killer)
                .await
                .expect("CLIENT KILL")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_kill_loses_and_doubles_nothing() {
    use mysql_async::prelude::*;
    let Some(url) = targets::server_url("MP_TEST_MYSQL_URL", "mysql") else {
        return;
    };
    let killer = Arc::new(Mutex::new(
        mysql_async::Conn::from_url(base_url(&url))
            .await
            .expect("killer connection"),
    ));
    kill_under_load(&url, "mysql-kill", || {
        let killer = killer.clone();
        async move {
            let mut killer = killer.lock().await;
            let ids: Vec<u64> = killer
                .query(
                    "SELECT ID FROM information_schema.PROCESSLIST \
                     WHERE ID <> CONNECTION_ID() AND DB = DATABASE() AND COMMAND <> 'Daemon'",
                )
                .await
                .unwrap_or_default();
            let mut killed = 0;
            for id in ids {
                if killer.query_drop(format!("KILL {id}")).await.is_ok() {
                    killed += 1;
                }
            }
            killed
        }
    })
    .await;
}

type Row = (u64, Vec<u8>, Vec<u8>);

async fn snapshot(conn: &mut mysql_async::Conn, k: Vec<u8>) -> Option<Row> {
    use mysql_async::prelude::*;
    conn.exec_first(
        "SELECT version, data, tokens FROM mp_scopes WHERE name = ?",
        (k,),
    )
    .await
    .expect("read the row")
}

/// A MySQL row corrupted by hand: data that is not the type's JSON is a decode error, a broken
/// token column is a corrupt-record error; neither is overwritten.
#[tokio::test]
async fn mysql_record_corrupted_by_hand_is_left_untouched() {
    use mysql_async::prelude::*;
    let Some(url) = targets::server_url("MP_TEST_MYSQL_URL", "mysql") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = unique_prefix("mysql-corrupt");
    // No cache: an edit that keeps the version is invisible to a handle that cached the record
    // before it; this handle sees the store as another process would.
    let st = Storage::builder()
        .key_prefix(&prefix)
        .cache_capacity(0)
        .open(&url)
        .await
        .expect("open mysql");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    st.set("t", &Counter { count: 6 }).await.expect("set");
    let mut conn = mysql_async::Conn::from_url(base_url(&url))
        .await
        .expect("connection");
    let key = |n: &str| format!("{prefix}{n}").into_bytes();
    conn.exec_drop(
        "UPDATE mp_scopes SET data = ? WHERE name = ?",
        (b"{\"count\": \"five\"".to_vec(), key("c")),
    )
    .await
    .expect("corrupt data");
    conn.exec_drop(
        "UPDATE mp_scopes SET tokens = ? WHERE name = ?",
        (b"abc".to_vec(), key("t")),
    )
    .await
    .expect("corrupt tokens");
    let before_c = snapshot(&mut conn, key("c")).await;
    let before_t = snapshot(&mut conn, key("t")).await;
    assert!(before_c.is_some() && before_t.is_some());

    let e = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("undecodable data");
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    let e = st
        .scoped("t", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("corrupt tokens");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("mp_scopes"), "{e}");

    assert_eq!(snapshot(&mut conn, key("c")).await, before_c);
    assert_eq!(snapshot(&mut conn, key("t")).await, before_t);
    conn.exec_drop(
        "DELETE FROM mp_scopes WHERE name IN (?, ?)",
        (key("c"), key("t")),
    )
    .await
    .expect("clean up");
    let _ = conn.disconnect().await;
}

/// A Redis record corrupted by hand: data that is not the type's JSON is a decode error and is
/// not overwritten.
#[tokio::test]
async fn redis_record_corrupted_by_hand_is_left_untouched() {
    let Some(url) = targets::server_url("MP_TEST_REDIS_URL", "redis") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = unique_prefix("redis-corrupt");
    // No cache: an edit that keeps the version is invisible to a handle that cached the record
    // before it; this handle sees the store as another process would.
    let st = Storage::builder()
        .key_prefix(&prefix)
        .cache_capacity(0)
        .open(&url)
        .await
        .expect("open redis");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    let client = redis::Client::open(base_url(&url)).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let key = format!("mp:{prefix}c");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("d")
        .arg("[1, 2")
        .query_async(&mut con)
        .await
        .expect("corrupt");
    let before: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("read");
    let e = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("undecodable data");
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    let after: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("read");
    assert_eq!(before, after);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("clean up");
}
