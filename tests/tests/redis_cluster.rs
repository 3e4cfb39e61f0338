//! The Redis Cluster driver against a live cluster:
//! `MP_TEST_REDIS_CLUSTER_URL=redis-cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103/`
//! (`.ci/redis-cluster.sh start` starts one: 3 masters, 3 replicas).
//!
//! The behavior suite, then what is particular to a cluster: scopes spread over every master,
//! several-scope commits within a hash slot and the error across slots, processes counting
//! exactly, the bank and exclusive updates across processes, scripts the servers lost, the
//! replica wait, and a failover under load on a cluster of the test's own (ports 7111-7116).
//! Unset, every test here skips with a note; with `MP_TEST_REQUIRE_SERVERS=1` it fails instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mp_storage::driver::redis::cluster::slot;
use mp_storage::{BackendKind, Error, Storage};
use mp_storage_tests::cluster::{count_keys, first_node, masters, OwnCluster};
use mp_storage_tests::resp::{Resp, RespClient};
use mp_storage_tests::url::{prefix_query, with_query};

mp_storage::behavior_suite!(mp_storage_tests::targets::redis_cluster());

/// The cluster's URL, or `None` (skip, or fail when servers are required) when unset.
fn server_url() -> Option<String> {
    mp_storage_tests::targets::server_url("MP_TEST_REDIS_CLUSTER_URL", "redis-cluster")
}

/// A driver prefix no other test or run uses (`mptest:<tag>:<hex>:`, no hash tag).
fn private_prefix(tag: &str) -> String {
    format!("mptest:{tag}:{:016x}:", rand::random::<u64>())
}

async fn open_storage(url: &str, prefix: &str) -> Storage {
    Storage::open(&with_query(url, &prefix_query(prefix)))
        .await
        .expect("open a redis-cluster storage")
}

/// Removes every scope of `st` (the end of a test on the shared cluster).
async fn clear(st: &Storage) {
    for name in st.list("").await.unwrap() {
        st.remove(&name).await.unwrap();
    }
}

#[tokio::test]
async fn scopes_spread_over_every_master() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("spread");
    let st = open_storage(&url, &prefix).await;
    let names: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        st.set(name, &(i as u64)).await.unwrap();
    }
    // Every master holds a share: 300 keys over 3 masters of about a third of the slots each.
    let masters = masters(&first_node(&url)).await;
    assert!(masters.len() >= 3, "{masters:?}");
    let mut per_master = BTreeMap::new();
    for m in &masters {
        per_master.insert(
            m.addr.clone(),
            count_keys(&m.addr, &format!("{prefix}*")).await,
        );
    }
    eprintln!("keys per master: {per_master:?}");
    assert_eq!(per_master.values().sum::<usize>(), 300, "{per_master:?}");
    for (addr, n) in &per_master {
        assert!(
            *n >= 50,
            "master {addr} holds only {n} of 300 keys: {per_master:?}"
        );
    }
    // list scans every master; get_many reads across slots.
    let mut listed = st.list("user:").await.unwrap();
    listed.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let all: Vec<Option<u64>> = st.get_many(&refs[..64]).await.unwrap();
    assert_eq!(all, (0..64).map(Some).collect::<Vec<_>>());
    clear(&st).await;
    assert!(st.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn several_scopes_commit_in_one_slot_and_are_refused_across_slots() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("tags");
    let st = open_storage(&url, &prefix).await;
    // One hash tag, one slot: all or nothing, as on one server.
    let tagged = ["{alice}:wallet", "{alice}:cart"];
    assert_eq!(
        slot(format!("{prefix}{}", tagged[0]).as_bytes()),
        slot(format!("{prefix}{}", tagged[1]).as_bytes())
    );
    st.set(tagged[0], &serde_json::json!({"balance": 100}))
        .await
        .unwrap();
    let moved = st
        .scoped_many(&tagged, |a: &mut [serde_json::Value]| {
            let from = a[0]["balance"].as_i64().unwrap_or(0);
            a[0]["balance"] = (from - 30).into();
            a[1]["balance"] = 30.into();
            true
        })
        .await
        .unwrap();
    assert!(moved);
    let both: Vec<Option<serde_json::Value>> = st.get_many(&tagged).await.unwrap();
    assert_eq!(
        both,
        vec![
            Some(serde_json::json!({"balance": 70})),
            Some(serde_json::json!({"balance": 30}))
        ]
    );
    // Two slots: a typed error that says how to fix it, and nothing written.
    let apart = ["alice:wallet", "bob:wallet"];
    assert_ne!(
        slot(format!("{prefix}{}", apart[0]).as_bytes()),
        slot(format!("{prefix}{}", apart[1]).as_bytes())
    );
    let e = st
        .scoped_many(&apart, |a: &mut [serde_json::Value]| {
            a[0] = 1.into();
            a[1] = 2.into();
        })
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    assert!(
        text.contains("bob:wallet") && text.contains("hash tag"),
        "{text}"
    );
    assert!(text.contains("{alice}:wallet and {alice}:cart"), "{text}");
    assert!(!text.to_uppercase().contains("CROSSSLOT"), "{text}");
    let none: Vec<Option<serde_json::Value>> = st.get_many(&apart).await.unwrap();
    assert_eq!(none, vec![None, None]);
    clear(&st).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_over_many_scopes_count_exactly() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("tasks");
    let st = open_storage(&url, &prefix).await;
    // 16 tasks over 8 scopes (on every master), 100 increments each.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                st.scoped(&format!("n{}", t % 8), |n: &mut u64| *n += 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..8 {
        assert_eq!(st.get::<u64>(&format!("n{i}")).await.unwrap(), Some(200));
    }
    clear(&st).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("rc-procs");
    let worker = env!("CARGO_BIN_EXE_mp-worker");
    let total =
        mp_storage_tests::multi_process_increments(worker, &url, &prefix, "hot", 4, 8, 250).await;
    assert_eq!(total, 4 * 8 * 250);
    let st = Storage::builder()
        .key_prefix(&prefix)
        .open(&url)
        .await
        .unwrap();
    assert!(st.remove("hot").await.unwrap());
}

/// The bank across processes: 4 processes x 4 tasks over 16 accounts for 2 s. The prefix holds
/// a hash tag (`t{rc-bank}-…`), so the accounts share a slot and transfers can move money
/// between any two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_across_processes() {
    let Some(url) = server_url() else { return };
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "{rc-bank}",
        mp_storage_tests::bank::Shape {
            accounts: 16,
            procs: 4,
            tasks: 4,
            secs: 2.0,
        },
        None::<mp_storage_tests::bank::NoKill>,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("rc-lease");
    mp_storage_tests::lease::exclusion_across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_outlived() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("rc-lease");
    mp_storage_tests::lease::killed_holder_is_outlived(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_is_refused() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("rc-lease");
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test]
async fn scripts_lost_by_every_master_are_sent_again() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("noscript");
    let st = open_storage(&url, &prefix).await;
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    for name in &names {
        st.scoped(name, |n: &mut u64| *n += 1).await.unwrap();
    }
    for m in masters(&first_node(&url)).await {
        let mut c = RespClient::connect(&format!("redis://{}/", m.addr)).await;
        c.cmd(&[b"SCRIPT", b"FLUSH"]).await;
    }
    for name in &names {
        st.scoped(name, |n: &mut u64| *n += 1).await.unwrap();
        assert_eq!(st.get::<u64>(name).await.unwrap(), Some(2));
    }
    clear(&st).await;
}

#[tokio::test]
async fn replica_wait_holds_writes_until_a_replica_has_them() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("wait");
    // One replica per master: waiting for it succeeds.
    let st = open_storage(
        &with_query(&url, "replica_wait=1&replica_timeout=1s"),
        &prefix,
    )
    .await;
    for i in 0..20 {
        st.scoped(&format!("w{i}"), |n: &mut u64| *n += 1)
            .await
            .unwrap();
    }
    // Two replicas are never there: the write stands on the master, and the caller is told
    // that its fate across a failover is unknown.
    let st2 = open_storage(
        &with_query(&url, "replica_wait=2&replica_timeout=100ms"),
        &prefix,
    )
    .await;
    let e = st2.scoped("w0", |n: &mut u64| *n += 1).await.unwrap_err();
    assert!(matches!(e, Error::CommitUnknown { .. }), "{e:?}");
    assert!(e.may_have_happened());
    assert!(e.to_string().contains("1 of the 2 replicas"), "{e}");
    assert_eq!(st.get::<u64>("w0").await.unwrap(), Some(2));
    assert!(st.remove("w1").await.unwrap());
    clear(&st).await;
}

#[tokio::test]
async fn a_cluster_that_is_down_is_a_connection_error_within_the_bound() {
    let Some(_) = server_url() else { return };
    // Nothing listens on 7199.
    let started = Instant::now();
    let Err(e) = Storage::open("redis-cluster://127.0.0.1:7199/?connect_timeout=500ms").await
    else {
        panic!("no cluster there");
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e:?}");
    assert!(e.to_string().contains("redis-cluster"), "{e}");
    assert!(e.to_string().contains("127.0.0.1:7199"), "{e}");
    // A URL with a database is refused before connecting.
    let Err(e) = Storage::open("redis-cluster://127.0.0.1:7101/3").await else {
        panic!("a database in a cluster URL");
    };
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Failover under load, on a cluster of the test's own.

/// What one updating task saw.
#[derive(Default)]
struct Seen {
    acked: Vec<u64>,
    unknown: u64,
    errors: u64,
    /// The first update acknowledged after the kill.
    resumed: Option<Instant>,
}

/// One phase: 8 tasks update 8 scopes served by the master at `victim` (each task its own
/// scope) through `url`; after 1 s the master is killed with SIGKILL; once a replica serves its
/// slots the killed node is started again (it rejoins as a replica); the load goes on until
/// every task has an update acknowledged after the kill, then 1 s more. Returns
/// (acknowledged updates lost, time to promotion, time to resume, errors, unknown outcomes).
async fn failover_phase(
    cluster: &OwnCluster,
    url: &str,
    victim: &mp_storage_tests::cluster::Node,
    tag: &str,
) -> (u64, Duration, Duration, u64, u64, bool) {
    let prefix = private_prefix(tag);
    // Names whose slots the victim serves.
    let names: Vec<String> = (0..)
        .map(|i| format!("fo{i}"))
        .filter(|n| victim.serves(slot(format!("{prefix}{n}").as_bytes())))
        .take(8)
        .collect();
    let st = open_storage(url, &prefix).await;
    // A watcher of one of them, on a storage of its own: its subscription is on the victim.
    let watcher = open_storage(url, &prefix).await;
    let mut watch = watcher.watch::<u64>(&names[0]).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let resumed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for name in names.clone() {
        let (st, stop, killed_at, resumed) =
            (st.clone(), stop.clone(), killed_at.clone(), resumed.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                match st
                    .scoped(&name, |n: &mut u64| {
                        *n += 1;
                        *n
                    })
                    .await
                {
                    Ok(n) => {
                        seen.acked.push(n);
                        let killed = *killed_at.lock().unwrap();
                        if seen.resumed.is_none() && killed.is_some() {
                            seen.resumed = Some(Instant::now());
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        seen.errors += 1;
                        if e.may_have_happened() {
                            seen.unknown += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (name, seen)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let port: u16 = victim.addr.rsplit(':').next().unwrap().parse().unwrap();
    cluster.kill(port);
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);
    let first_slot = victim.slots[0].0;
    let (_, promoted) = cluster
        .wait_for_new_master(&victim.addr, first_slot, Duration::from_secs(20))
        .await;
    cluster.restart(port);
    // Bounded: the load runs until every task had an update acknowledged after the kill, at
    // most 20 s past it, then 1 s more.
    let deadline = kill + Duration::from_secs(20);
    while Instant::now() < deadline && resumed.load(Ordering::Relaxed) < names.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    // The watcher follows the slot to the promoted replica: it comes to the last count.
    let watched = watcher.get::<u64>(&names[0]).await.unwrap();
    let caught_up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(v)) if v >= watched => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(
        caught_up,
        Ok(true),
        "the watcher of {} never showed {watched:?} after the failover",
        names[0]
    );
    let mut lost = 0;
    let mut resume = Duration::ZERO;
    let (mut errors, mut unknown) = (0, 0);
    let mut every_one_resumed = true;
    let check = open_storage(url, &prefix).await;
    for t in tasks {
        let (name, seen) = t.await.unwrap();
        match seen.resumed {
            Some(at) => resume = resume.max(at - kill),
            None => every_one_resumed = false,
        }
        errors += seen.errors;
        unknown += seen.unknown;
        let stored = check.get::<u64>(&name).await.unwrap().unwrap_or(0);
        // Each count is handed out once; a count handed out twice was lost the first time, and
        // a last count above what is stored was lost at the end.
        let distinct: BTreeSet<u64> = seen.acked.iter().copied().collect();
        let max = seen.acked.iter().copied().max().unwrap_or(0);
        lost += (seen.acked.len() - distinct.len()) as u64 + max.saturating_sub(stored);
        // Nothing applied twice: every stored increment was acknowledged or of unknown outcome.
        assert!(
            stored <= distinct.len() as u64 + seen.unknown,
            "{name}: {stored} stored, {} acknowledged, {} unknown",
            distinct.len(),
            seen.unknown
        );
    }
    clear(&check).await;
    (
        lost,
        promoted - kill,
        resume,
        errors,
        unknown,
        every_one_resumed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_fails_over_under_load() {
    let Some(_) = server_url() else { return };
    let cluster = OwnCluster::start(7111);
    let mut victims = masters(&cluster.first_addr()).await;
    victims.sort_by(|a, b| a.addr.cmp(&b.addr));
    assert_eq!(victims.len(), 3, "{victims:?}");

    // With the replica wait on, no acknowledged update is lost.
    let waited = with_query(&cluster.url(), "replica_wait=1&replica_timeout=1s");
    let (lost, promotion, resume, errors, unknown, resumed) =
        failover_phase(&cluster, &waited, &victims[0], "fo-wait").await;
    eprintln!(
        "failover with replica_wait=1: promoted after {promotion:?}, every task updating again \
         after {resume:?}, {errors} errors ({unknown} of unknown outcome), {lost} acknowledged \
         updates lost"
    );
    assert!(resumed, "a task never updated again after the failover");
    assert!(resume < Duration::from_secs(15), "{resume:?}");
    assert_eq!(
        lost, 0,
        "acknowledged updates were lost with the replica wait on"
    );

    // Without it, the loss (often none on loopback, where a replica is a few µs behind) is
    // measured and printed.
    let (lost, promotion, resume, errors, unknown, resumed) =
        failover_phase(&cluster, &cluster.url(), &victims[1], "fo-nowait").await;
    eprintln!(
        "failover without replica wait: promoted after {promotion:?}, every task updating \
         again after {resume:?}, {errors} errors ({unknown} of unknown outcome), {lost} \
         acknowledged updates lost"
    );
    assert!(resumed, "a task never updated again after the failover");
    assert!(resume < Duration::from_secs(15), "{resume:?}");
}

// ---------------------------------------------------------------------------------------------
// Watching: sharded pub/sub.

/// A watcher sees other processes' increments end at the final count, never backwards, and
/// slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("watch-procs");
    let worker = env!("CARGO_BIN_EXE_mp-worker");
    mp_storage_tests::watch::other_processes(worker, &url, &prefix).await;
}

/// The ids of the clients of the node at `addr` that hold sharded subscriptions.
async fn shard_subscriber_ids(addr: &str) -> Vec<String> {
    let mut raw = RespClient::connect(&format!("redis://{addr}/")).await;
    raw.client_ids(&[], |line| {
        line.split(' ')
            .any(|f| f.strip_prefix("ssub=").is_some_and(|n| n != "0"))
    })
    .await
}

/// `CLIENT KILL` of the connections holding the watcher's sharded subscriptions, on every
/// master: the watcher resubscribes by itself and misses nothing committed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_its_connection_killed() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("watch-kill");
    let masters = masters(&first_node(&url)).await;
    let mut before = BTreeMap::new();
    for m in &masters {
        before.insert(m.addr.clone(), shard_subscriber_ids(&m.addr).await);
    }
    let (st, writer) = (
        open_storage(&url, &prefix).await,
        open_storage(&url, &prefix).await,
    );
    mp_storage_tests::watch::survives_a_cut(&st, &writer, || async {
        let mut killed = 0;
        for m in &masters {
            let mut raw = RespClient::connect(&format!("redis://{}/", m.addr)).await;
            for id in shard_subscriber_ids(&m.addr).await {
                if !before[&m.addr].contains(&id) {
                    raw.cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]).await;
                    killed += 1;
                }
            }
        }
        killed
    })
    .await;
}

/// A change stays on its shard: the key's own master has the one subscriber of its channel,
/// the other masters none (`PUBSUB SHARDNUMSUB`), and the subscription ends with the last
/// watcher.
#[tokio::test]
async fn a_watched_channel_lives_on_its_keys_master() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("watch-shard");
    let st = open_storage(&url, &prefix).await;
    let mut watches = Vec::new();
    for _ in 0..5 {
        watches.push(st.watch::<u64>("s").await.unwrap());
    }
    for w in &mut watches {
        assert_eq!(w.next().await.unwrap().unwrap(), None);
    }
    let channel = format!("{prefix}s");
    let key_slot = slot(channel.as_bytes());
    let numsub = |addr: String, channel: String| async move {
        let mut raw = RespClient::connect(&format!("redis://{addr}/")).await;
        match raw
            .cmd(&[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()])
            .await
        {
            Resp::Array(Some(items)) => match items.get(1) {
                Some(Resp::Int(n)) => *n,
                other => panic!("PUBSUB SHARDNUMSUB: {other:?}"),
            },
            other => panic!("PUBSUB SHARDNUMSUB: {other:?}"),
        }
    };
    // The subscription is made by a task of the storage: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let owner = masters(&first_node(&url))
        .await
        .into_iter()
        .find(|m| m.serves(key_slot))
        .expect("a master serves the key's slot");
    while numsub(owner.addr.clone(), channel.clone()).await != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in masters(&first_node(&url)).await {
        let n = numsub(m.addr.clone(), channel.clone()).await;
        let expected = i64::from(m.serves(key_slot));
        assert_eq!(n, expected, "subscribers of {channel} on {}", m.addr);
    }
    st.set("s", &7u64).await.unwrap();
    for w in &mut watches {
        assert_eq!(w.next().await.unwrap().unwrap(), Some(7));
    }
    drop(watches);
    let deadline = Instant::now() + Duration::from_secs(5);
    while numsub(owner.addr.clone(), channel.clone()).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the subscription outlived the last watcher"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(st.remove("s").await.unwrap());
}
