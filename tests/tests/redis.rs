//! The Redis driver against a live server: `MP_TEST_REDIS_URL=redis://127.0.0.1:6379/`.
//!
//! The behavior suite, then what is particular to Redis, then its faults: connections killed
//! under load, records corrupted by hand. Unset, every test here skips with a note; with
//! `MP_TEST_REQUIRE_SERVERS=1` it fails instead.
//! Every test works under a key prefix of its own, so tests run in parallel on one server; a
//! test that kills connections kills only those of a user of its own.
//! Commands are counted by a small TCP proxy that sits between the driver and the server, so the
//! counts do not depend on what else the server is doing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mp_storage::driver::redis::RedisDriver;
use mp_storage::{BackendKind, CasOutcome, Driver, Error, Storage, Write};
use mp_storage_tests::proxy::Proxy;
use mp_storage_tests::resp::{Resp, RespClient};
use mp_storage_tests::url::{host_port, prefix_query, via, with_query, without_query};
use mp_storage_tests::{rev, Counter, RedisPrefix};
use tokio::net::TcpListener;

mp_storage::behavior_suite!(mp_storage_tests::targets::redis());

/// The server's URL, or `None` (skip, or fail when servers are required) when unset.
fn server_url() -> Option<String> {
    mp_storage_tests::targets::server_url("MP_TEST_REDIS_URL", "redis")
}

/// A key prefix no other test or run uses; the keys under it are deleted when it drops.
fn private_prefix(tag: &str) -> RedisPrefix {
    RedisPrefix::new(tag)
}

async fn open_driver(url: &str, prefix: &str) -> RedisDriver {
    RedisDriver::open(&with_query(url, &prefix_query(prefix)))
        .await
        .expect("open the redis driver")
}

async fn open_storage(url: &str, prefix: &str) -> Storage {
    Storage::open(&with_query(url, &prefix_query(prefix)))
        .await
        .expect("open a redis storage")
}

/// Creates a user of the calling test's own on the server of `url`, with password `pw` and ACL
/// `rules`; its name, and `url` as that user (the test deletes the user when done).
async fn acl_user(raw: &mut RespClient, url: &str, rules: &[&[u8]]) -> (String, String) {
    let user = format!("mptest{:016x}", rand::random::<u64>());
    let mut cmd: Vec<&[u8]> = vec![b"ACL", b"SETUSER", user.as_bytes(), b"on", b">pw"];
    cmd.extend_from_slice(rules);
    assert_eq!(raw.cmd(&cmd).await, Resp::Simple("OK".into()));
    let db = url.rsplit_once('/').map_or("", |(_, db)| db);
    let as_user = format!("redis://{user}:pw@{}/{db}", host_port(url));
    (user, as_user)
}

fn write(data: &[u8], token: u64, initial_version: u64) -> Write<'_> {
    mp_storage_tests::write_with(1, data, token, initial_version)
}

// ---------------------------------------------------------------------------------------------
// The driver contract, call by call.

#[tokio::test]
async fn cas_put_delete_follow_the_contract() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("contract");
    let d = open_driver(&url, &prefix).await;

    assert_eq!(d.load("k").await.unwrap(), None);
    // Update of an absent key: a conflict that says it is absent.
    assert_eq!(
        d.cas("k", rev(5, 0), write(b"1", 1, 100)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    // Create at the initial version.
    assert_eq!(
        d.cas("k", None, write(b"1", 1, 100)).await.unwrap(),
        CasOutcome::Committed(100)
    );
    // Create again: a conflict carrying the record, in the same reply.
    match d.cas("k", None, write(b"x", 2, 7)).await.unwrap() {
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!(
                (r.version, r.schema, r.data.as_slice()),
                (100, 1, &b"1"[..])
            );
            assert_eq!(r.tokens, vec![1]);
        }
        other => panic!("{other:?}"),
    }
    // A stale version: conflict with the current record.
    assert_eq!(
        d.cas("k", rev(100, 1), write(b"2", 2, 7)).await.unwrap(),
        CasOutcome::Committed(101)
    );
    match d.cas("k", rev(100, 1), write(b"3", 3, 7)).await.unwrap() {
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!((r.version, r.data.as_slice()), (101, &b"2"[..]));
            assert_eq!(r.tokens, vec![1, 2]);
        }
        other => panic!("{other:?}"),
    }
    // put: version + 1, tokens kept.
    assert_eq!(d.put("k", write(b"4", 4, 7)).await.unwrap(), 102);
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (102, &b"4"[..]));
    assert_eq!(r.tokens, vec![1, 2, 4]);
    // put on an absent key starts at the initial version.
    assert_eq!(d.put("other", write(b"5", 5, 900)).await.unwrap(), 900);

    assert!(d.delete("k").await.unwrap());
    assert!(!d.delete("k").await.unwrap());
    assert_eq!(d.load("k").await.unwrap(), None);
    assert!(d.delete("other").await.unwrap());
}

#[tokio::test]
async fn load_reports_the_expiry_exactly() {
    use mp_storage::Expiry;
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("expiry-load");
    let d = open_driver(&url, &prefix).await;
    let at = mp_storage::driver::now_ms() + 3_600_123;
    d.put("at", write(b"1", 1, 10).with_expiry(Expiry::At(at)))
        .await
        .unwrap();
    d.put("never", write(b"2", 2, 10)).await.unwrap();
    let before = mp_storage::driver::now_ms();
    d.put(
        "after",
        write(b"3", 3, 10).with_expiry(Expiry::After(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    let after = mp_storage::driver::now_ms();
    let r = d.load("at").await.unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.expires_at), (&b"1"[..], Some(at)));
    assert_eq!(d.load("never").await.unwrap().unwrap().expires_at, None);
    let got = d.load("after").await.unwrap().unwrap().expires_at.unwrap();
    // The server's clock: within a second of this machine's.
    assert!(
        got + 1000 >= before + 60_000 && got <= after + 60_000 + 1000,
        "{got} for {before}..{after} + 60 s"
    );
    let many = d.load_many(&["never", "absent", "at"]).await.unwrap();
    let expiries: Vec<Option<Option<u64>>> = many
        .iter()
        .map(|r| r.as_ref().map(|r| r.expires_at))
        .collect();
    assert_eq!(expiries, [Some(None), None, Some(Some(at))]);
    // Cleared: none again; a record with an expiry copied elsewhere keeps it to the ms.
    assert!(d.expire("at", Expiry::Never).await.unwrap());
    assert_eq!(d.load("at").await.unwrap().unwrap().expires_at, None);
    let st = open_storage(&url, &prefix).await;
    let raw = mp_storage::RawScope::new("{}", 4)
        .unwrap()
        .with_expires_at(Some(at));
    st.set_raw("copied", &raw).await.unwrap();
    assert_eq!(st.get_raw("copied").await.unwrap(), Some(raw));
}

#[tokio::test]
async fn a_server_refusing_transactions_is_read_with_the_script() {
    use mp_storage::Expiry;
    let Some(url) = server_url() else { return };
    let mut raw = RespClient::connect(&url).await;
    // Users of this test's own that may run every command but one the loads' transaction
    // sends: without MULTI the server refuses the transaction as a proxy without it does (the
    // reads then run on their own, and EXEC fails); without PEXPIRETIME, as Redis 6 does
    // (EXECABORT).
    for denied in ["multi", "pexpiretime"] {
        let rule = format!("-{denied}");
        let (user, denied_url) =
            acl_user(&mut raw, &url, &[b"~*", b"&*", b"+@all", rule.as_bytes()]).await;
        let prefix = private_prefix(&format!("no-{denied}"));
        let proxy = Proxy::counting_resp(host_port(&url)).await;
        let d = open_driver(&via(&denied_url, proxy.addr()), &prefix).await;
        let plain = open_driver(&url, &prefix).await;
        let at = mp_storage::driver::now_ms() + 3_600_123;
        d.put("at", write(b"1", 1, 10).with_expiry(Expiry::At(at)))
            .await
            .unwrap();
        d.put("never", write(b"2", 2, 10)).await.unwrap();
        for key in ["at", "never", "absent", "at"] {
            let (a, b) = (d.load(key).await.unwrap(), plain.load(key).await.unwrap());
            assert_eq!(a, b, "{key} without {denied}");
        }
        // Refused once, the transaction is not sent again: a load is the script alone.
        let before = proxy.commands();
        assert_eq!(d.load("at").await.unwrap().unwrap().expires_at, Some(at));
        assert_eq!(proxy.commands() - before, 1, "a load without {denied}");
        // A key of another type is the same error both ways.
        raw.cmd(&[b"SET", format!("{prefix}str").as_bytes(), b"x"])
            .await;
        for driver in [&d, &plain] {
            match driver.load("str").await {
                Err(e) => assert!(e.to_string().contains("not a hash"), "{e}"),
                Ok(r) => panic!("a string read as a record: {r:?}"),
            }
        }
        raw.cmd(&[b"DEL", format!("{prefix}str").as_bytes()]).await;
        assert!(plain.delete("at").await.unwrap() && plain.delete("never").await.unwrap());
        raw.cmd(&[b"ACL", b"DELUSER", user.as_bytes()]).await;
    }
}

#[tokio::test]
async fn tokens_keep_the_last_sixteen_and_versions_stay_exact() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("tokens");
    let d = open_driver(&url, &prefix).await;
    // Near 2^48 (the largest initial version) and tokens that use every bit.
    let start = (1u64 << 48) - 1;
    let token = |i: u64| u64::MAX - i;
    assert_eq!(
        d.cas("k", None, write(b"0", token(0), start))
            .await
            .unwrap(),
        CasOutcome::Committed(start)
    );
    let mut version = start;
    for i in 1..40u64 {
        let w = write(b"x", token(i), 1);
        version = if i % 2 == 0 {
            match d.cas("k", rev(version, token(i - 1)), w).await.unwrap() {
                CasOutcome::Committed(v) => v,
                other => panic!("{other:?}"),
            }
        } else {
            d.put("k", w).await.unwrap()
        };
    }
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!(r.version, start + 39);
    assert_eq!(version, start + 39);
    assert_eq!(r.tokens, (24..40).map(token).collect::<Vec<_>>());
    d.delete("k").await.unwrap();

    // Past 2^53, where a Lua number would round, put still counts exactly.
    let big = (1u64 << 53) + 1;
    d.put("big", write(b"0", 1, big)).await.unwrap();
    assert_eq!(d.put("big", write(b"0", 2, 1)).await.unwrap(), big + 1);
    assert_eq!(
        d.cas("big", rev(big + 1, 2), write(b"0", 3, 1))
            .await
            .unwrap(),
        CasOutcome::Committed(big + 2)
    );
    // And a version of all nines carries into a new digit.
    let d2 = d.clone();
    d2.put("nines", write(b"0", 1, 999_999)).await.unwrap();
    assert_eq!(d2.put("nines", write(b"0", 2, 1)).await.unwrap(), 1_000_000);
    d.delete("big").await.unwrap();
    d.delete("nines").await.unwrap();
}

#[tokio::test]
async fn data_and_names_are_exact_bytes() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("bytes");
    let d = open_driver(&url, &prefix).await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let names = [
        "a", "A", "a ", " a", "é", "e\u{301}", "日本", "a:b", "x\r\ny", "🦀",
    ];
    for (i, name) in names.iter().enumerate() {
        d.put(name, write(&data[i..], i as u64, 1)).await.unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let r = d.load(name).await.unwrap().unwrap();
        assert_eq!(r.data, &data[i..], "{name:?}");
        assert_eq!(r.tokens, vec![i as u64]);
    }
    let mut listed = d.list("").await.unwrap();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for name in names {
        assert!(d.delete(name).await.unwrap());
    }
}

#[tokio::test]
async fn glob_names_list_exactly() {
    let Some(url) = server_url() else { return };
    // The driver prefix itself holds glob characters too.
    let prefix = private_prefix("glob[*?]\\");
    let st = open_storage(&url, &prefix).await;
    let names = [
        "*", "?", "[a]", "a", "\\", "a*b", "ab", "axb", "a?b", "[", "]", "[a", "a]", "\\*", "b",
    ];
    for n in names {
        st.set(n, &serde_json::json!(n)).await.unwrap();
    }
    let all = st.list("").await.unwrap();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(all, expected);
    let cases: &[(&str, &[&str])] = &[
        ("*", &["*"]),
        ("?", &["?"]),
        ("[a]", &["[a]"]),
        ("[a", &["[a", "[a]"]),
        ("[", &["[", "[a", "[a]"]),
        ("]", &["]"]),
        ("\\", &["\\", "\\*"]),
        ("\\*", &["\\*"]),
        ("a*", &["a*b"]),
        ("a*b", &["a*b"]),
        ("a?", &["a?b"]),
        ("a", &["a", "a*b", "a?b", "a]", "ab", "axb"]),
        ("ax", &["axb"]),
        ("c", &[]),
    ];
    for (prefix, want) in cases {
        assert_eq!(st.list(prefix).await.unwrap(), *want, "list({prefix:?})");
    }
    for n in names {
        assert!(st.remove(n).await.unwrap());
    }
    assert!(st.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn list_walks_many_keys() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("many");
    let d = open_driver(&url, &prefix).await;
    let mut raw = RespClient::connect(&url).await;
    // 2500 keys under the prefix, and keys beside it that only look alike.
    let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for i in 0..2500 {
        args.push(format!("{prefix}n{i:04}").into_bytes());
        args.push(b"x".to_vec());
    }
    let decoy = format!("{}X", prefix.trim_end_matches(':'));
    args.push(decoy.clone().into_bytes());
    args.push(b"x".to_vec());
    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    assert_eq!(raw.cmd(&refs).await, Resp::Simple("OK".into()));
    let mut names = d.list("n").await.unwrap();
    names.sort();
    assert_eq!(names.len(), 2500);
    assert_eq!(names[0], "n0000");
    assert_eq!(d.list("n24").await.unwrap().len(), 100);
    let mut del: Vec<Vec<u8>> = vec![b"DEL".to_vec()];
    del.extend(args[1..].iter().step_by(2).cloned());
    let refs: Vec<&[u8]> = del.iter().map(|a| a.as_slice()).collect();
    assert_eq!(raw.cmd(&refs).await, Resp::Int(2501));
}

// ---------------------------------------------------------------------------------------------
// Corrupt records.

#[tokio::test]
async fn corrupt_records_are_named_and_left_untouched() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("corrupt");
    let d = open_driver(&url, &prefix).await;
    let st = open_storage(&url, &prefix).await;
    let mut raw = RespClient::connect(&url).await;
    let tok = format!("{:016x}", 1);
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("no-v", vec![b"s", b"0", b"d", b"1", b"t", tok.as_bytes()]),
        ("no-d", vec![b"v", b"5", b"s", b"0", b"t", tok.as_bytes()]),
        ("no-t", vec![b"v", b"5", b"s", b"0", b"d", b"1"]),
        ("no-s", vec![b"v", b"5", b"d", b"1", b"t", tok.as_bytes()]),
        (
            "bad-v",
            vec![b"v", b"five", b"s", b"0", b"d", b"1", b"t", b""],
        ),
        (
            "zero-v",
            vec![b"v", b"007", b"s", b"0", b"d", b"1", b"t", b""],
        ),
        (
            "bad-t",
            vec![b"v", b"5", b"s", b"0", b"d", b"1", b"t", b"xyz"],
        ),
        ("foreign", vec![b"name", b"alice"]),
    ];
    for (name, fields) in &cases {
        let key = format!("{prefix}{name}");
        let mut args: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
        args.extend(fields.iter().copied());
        assert!(matches!(raw.cmd(&args).await, Resp::Int(_)));
    }
    let string_key = format!("{prefix}string");
    raw.cmd(&[b"SET", string_key.as_bytes(), b"hello"]).await;

    let mut names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    names.push("string");
    for name in names {
        let key = format!("{prefix}{name}");
        let before = raw.hgetall(&key).await;
        let is_corrupt = |e: &Error| match e {
            Error::Corrupt { location, .. } => location.contains(&key),
            _ => false,
        };
        match d.load(name).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("load {name}: {other:?}"),
        }
        match st.get::<serde_json::Value>(name).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("get {name}: {other:?}"),
        }
        match st.scoped(name, |n: &mut u64| *n += 1).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("scoped {name}: {other:?}"),
        }
        match st.set(name, &1u64).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("set {name}: {other:?}"),
        }
        // (An update names a version the engine read and checked: a stale one here.)
        match d.cas(name, rev(4, 0), write(b"2", 2, 1)).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("cas {name}: {other:?}"),
        }
        match d.cas(name, None, write(b"2", 2, 1)).await {
            Err(e) if is_corrupt(&e) => {}
            other => panic!("create {name}: {other:?}"),
        }
        assert_eq!(raw.hgetall(&key).await, before, "{name} was changed");
        // Removing it is the way out.
        assert!(st.remove(name).await.unwrap());
        st.set(name, &1u64).await.unwrap();
        assert_eq!(st.get::<u64>(name).await.unwrap(), Some(1));
        st.remove(name).await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

#[tokio::test]
async fn warm_update_is_one_command_and_conflict_adds_one() {
    let Some(url) = server_url() else { return };
    let proxy = Proxy::counting_resp(host_port(&url)).await;
    let prefix = private_prefix("count");
    let st = open_storage(&via(&url, proxy.addr()), &prefix).await;
    // The first update loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA at worst).
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();

    let before = proxy.commands();
    for _ in 0..100 {
        st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    }
    assert_eq!(
        proxy.commands() - before,
        100,
        "commands for 100 warm updates"
    );
    assert_eq!(st.get::<u64>("n").await.unwrap(), Some(101));

    // Another handle writes: this handle's cache is stale. Its update costs the failed
    // compare-and-swap (which brings the fresh record) and the one that commits: no load.
    let other = open_storage(&url, &prefix).await;
    other.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    let before = proxy.commands();
    assert_eq!(
        st.scoped("n", |n: &mut u64| {
            *n += 1;
            *n
        })
        .await
        .unwrap(),
        103
    );
    assert_eq!(proxy.commands() - before, 2);

    // A cold create: one load (a transaction of HGETALL and PEXPIRETIME: four commands, one
    // request), one compare-and-swap.
    let before = (proxy.commands(), proxy.requests());
    st.scoped("fresh", |n: &mut u64| *n += 1).await.unwrap();
    assert_eq!(
        (proxy.commands() - before.0, proxy.requests() - before.1),
        (5, 2)
    );
    st.remove("n").await.unwrap();
    st.remove("fresh").await.unwrap();
}

#[tokio::test]
async fn lost_scripts_are_loaded_again() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("noscript");
    let st = open_storage(&url, &prefix).await;
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    let mut raw = RespClient::connect(&url).await;
    assert_eq!(
        raw.cmd(&[b"SCRIPT", b"FLUSH"]).await,
        Resp::Simple("OK".into())
    );
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    st.set("m", &1u64).await.unwrap();
    raw.cmd(&[b"SCRIPT", b"FLUSH"]).await;
    st.set("m", &2u64).await.unwrap();
    assert_eq!(st.get::<u64>("n").await.unwrap(), Some(2));
    assert_eq!(st.get::<u64>("m").await.unwrap(), Some(2));
    st.remove("n").await.unwrap();
    st.remove("m").await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_handles_count_exactly() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("concurrent");
    // Four handles (four caches, four connections), as four processes would have.
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(open_storage(&url, &prefix).await);
    }
    let mut tasks = Vec::new();
    for st in &handles {
        for _ in 0..8 {
            let st = st.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let n = st
                        .scoped("n", |n: &mut u64| {
                            *n += 1;
                            *n
                        })
                        .await
                        .unwrap();
                    seen.push(n);
                }
                seen
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=3200).collect::<Vec<u64>>());
    assert_eq!(handles[0].get::<u64>("n").await.unwrap(), Some(3200));
    handles[0].remove("n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("redis-procs");
    let worker = env!("CARGO_BIN_EXE_mp-worker");
    let total =
        mp_storage_tests::multi_process_increments(worker, &url, &prefix, "hot", 4, 8, 500).await;
    assert_eq!(total, 4 * 8 * 500);
    let st = Storage::builder()
        .key_prefix(&prefix)
        .open(&url)
        .await
        .unwrap();
    assert!(st.remove("hot").await.unwrap());
}

/// Two processes × 16 tasks on one scope for 2 s: exact, every count distinct; each process's
/// share and tail latency are printed (the bench measures them against targets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_hot_scope() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("redis-fair");
    let worker = env!("CARGO_BIN_EXE_mp-worker");
    let per = mp_storage_tests::fair_processes(worker, &url, &prefix, "hot", 2, 16, 2.0).await;
    assert!(per.iter().sum::<u64>() > 0);
}

// ---------------------------------------------------------------------------------------------
// Failures.

#[tokio::test]
async fn down_server_is_a_connection_error_within_the_bound() {
    let Some(_url) = server_url() else { return };
    let started = Instant::now();
    match Storage::open("redis://127.0.0.1:1/").await {
        Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}"),
        Ok(_) => panic!("opened a server that is not there"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A server that takes the connection but never answers: the connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    match Storage::open(&format!("redis://{addr}/?connect_timeout=300ms")).await {
        Err(e) => assert!(
            matches!(
                e.backend_kind(),
                Some(BackendKind::Connection | BackendKind::Timeout)
            ),
            "{e}"
        ),
        Ok(_) => panic!("opened a server that never answers"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// A refused connection names the server it could not reach.
#[tokio::test]
async fn a_refused_connection_names_the_server() {
    let Some(_url) = server_url() else { return };
    match Storage::open("redis://127.0.0.1:1/").await {
        Err(e) => {
            assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}");
            assert!(
                e.to_string()
                    .contains("cannot connect to 127.0.0.1:1: connection refused"),
                "{e}"
            );
        }
        Ok(_) => panic!("opened a server that is not there"),
    }
}

/// The `host:port` of a `mysql://[…@]host[:port]/…` URL.
fn mysql_host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = authority.rsplit('@').next().unwrap_or(authority);
    if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:3306")
    }
}

/// A redis URL pointed at a server of another protocol (the MySQL test server's port) fails at
/// once, saying so, instead of with a parse error of its greeting. Needs `MP_TEST_MYSQL_URL`.
#[tokio::test]
async fn a_mysql_server_is_not_taken_for_redis() {
    let Some(mysql) = mp_storage_tests::targets::server_url("MP_TEST_MYSQL_URL", "mysql") else {
        return;
    };
    let addr = mysql_host_port(&mysql);
    let started = Instant::now();
    match Storage::open(&format!("redis://{addr}/")).await {
        Err(e) => {
            assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}");
            assert!(
                e.to_string().contains(&format!(
                    "the server at {addr} does not speak the redis protocol"
                )),
                "{e}"
            );
        }
        Ok(_) => panic!("took the MySQL server at {addr} for a Redis server"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_going_down_is_a_connection_error_then_recovers() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("down");
    let proxy = Proxy::start(host_port(&url)).await;
    let st = open_storage(
        &with_query(&via(&url, proxy.addr()), "connect_timeout=500ms"),
        &prefix,
    )
    .await;
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();

    proxy.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let started = Instant::now();
        match st.get::<u64>("n").await {
            Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}"),
            Ok(v) => panic!("read {v:?} from a server that is down"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    match st.scoped("n", |n: &mut u64| *n += 1).await {
        Err(Error::Backend { kind, .. }) => assert_eq!(kind, BackendKind::Connection),
        Err(Error::CommitUnknown { .. }) => {}
        other => panic!("{other:?}"),
    }

    // The same address comes back: the driver reconnects by itself.
    let back = Proxy::restart_on(proxy.addr(), host_port(&url)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match st.scoped("n", |n: &mut u64| *n += 1).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    }
    assert_eq!(st.get::<u64>("n").await.unwrap(), Some(2));
    st.remove("n").await.unwrap();
    drop(back);
}

#[tokio::test]
async fn an_idle_handle_reads_after_its_connection_was_cut() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("idle");
    let proxy = Proxy::start(host_port(&url)).await;
    let st = open_storage(&via(&url, proxy.addr()), &prefix).await;
    st.set("n", &1u64).await.unwrap();
    for i in 0..3u64 {
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(st.get::<u64>("n").await.unwrap(), Some(1 + i));
        assert_eq!(st.list("").await.unwrap(), vec!["n".to_owned()]);
        // A write after a cut: the engine settles it from the commit tokens.
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(50)).await;
        st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    }
    assert_eq!(st.get::<u64>("n").await.unwrap(), Some(4));
    st.remove("n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_never_lose_or_double_an_update() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("cut");
    let proxy = Proxy::start(host_port(&url)).await;
    let st = open_storage(&via(&url, proxy.addr()), &prefix).await;
    let done = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (st, done, unknown) = (st.clone(), done.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..150 {
                match st
                    .scoped("n", |n: &mut u64| {
                        *n += 1;
                        *n
                    })
                    .await
                {
                    Ok(n) => {
                        seen.push(n);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::CommitUnknown { .. }) => {
                        unknown.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.is_retryable() => {}
                    Err(e) => panic!("{e}"),
                }
            }
            seen
        }));
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        proxy.cut();
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let (done, unknown) = (done.load(Ordering::SeqCst), unknown.load(Ordering::SeqCst));
    // Read with a handle of its own: the last cut may have left `st` a dead connection.
    let fresh = open_storage(&url, &prefix).await;
    let total = fresh.get::<u64>("n").await.unwrap().unwrap_or(0);
    // Every reported count is distinct; every reported update is there, and no unreported one
    // but those whose outcome was reported unknown.
    let distinct = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), distinct, "a count was returned twice");
    assert!(
        total >= done && total <= done + unknown,
        "total {total}, done {done}, unknown {unknown}"
    );
    eprintln!("cut test: {done} done, {unknown} unknown, total {total}");
    fresh.remove("n").await.unwrap();
}

#[tokio::test]
async fn refused_access_is_permission_denied() {
    let Some(url) = server_url() else { return };
    let mut raw = RespClient::connect(&url).await;
    // A user of this test's own that may touch only keys under `allowed:`.
    let (user, denied) = acl_user(&mut raw, &url, &[b"~allowed:*", b"+@all"]).await;
    let st = open_storage(&denied, "mp:").await;
    for r in [
        st.get::<u64>("n").await.map(|_| ()),
        st.set("n", &1u64).await,
        st.scoped("n", |n: &mut u64| *n += 1).await,
    ] {
        match r {
            Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::PermissionDenied), "{e}"),
            Ok(()) => panic!("a denied key was used"),
        }
    }
    // Under the allowed prefix the same user works.
    let st = open_storage(&denied, &format!("allowed:{user}:")).await;
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    assert!(st.remove("n").await.unwrap());

    let wrong = denied.replacen(":pw@", ":nope@", 1);
    match Storage::open(&wrong).await {
        Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::PermissionDenied), "{e}"),
        Ok(_) => panic!("a wrong password was taken"),
    }
    raw.cmd(&[b"ACL", b"DELUSER", user.as_bytes()]).await;
}

#[tokio::test]
async fn bad_urls_are_invalid_url_errors() {
    for url in [
        "redis://127.0.0.1:6379/?nope=1",
        "redis://127.0.0.1:6379/?connect_timeout=soon",
        "redis://127.0.0.1:6379/?response_timeout=0",
        "redis://127.0.0.1:6379/notadb",
        "rediss://127.0.0.1:6379/",
    ] {
        match Storage::open(url).await {
            Err(Error::InvalidUrl { .. }) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    // The password never shows in errors or Debug.
    let e = Storage::open("redis://user:hunter2@127.0.0.1:1/?nope=1")
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = Storage::open("redis://user:hunter2@127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Faults: connections killed under load, records corrupted by hand.

/// A Redis user of one test's own, with every right; deleted when dropped (a panicking test
/// included). Its connections can be killed without touching anyone else's.
struct AclUser {
    name: String,
    admin_url: String,
}

impl AclUser {
    async fn new(url: &str) -> AclUser {
        let name = format!("mptest{:016x}", rand::random::<u64>());
        let mut raw = RespClient::connect(url).await;
        let created = raw
            .cmd(&[
                b"ACL",
                b"SETUSER",
                name.as_bytes(),
                b"on",
                b">pw",
                b"~*",
                b"+@all",
            ])
            .await;
        assert_eq!(created, Resp::Simple("OK".into()));
        AclUser {
            name,
            admin_url: url.to_owned(),
        }
    }

    /// `url` logged in as this user.
    fn url(&self, url: &str) -> String {
        let db = without_query(url).rsplit_once('/').map_or("", |(_, db)| db);
        format!("redis://{}:pw@{}/{db}", self.name, host_port(url))
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        mp_storage_tests::cleanup_blocking(&format!("the ACL user {name}"), move || async move {
            let mut raw = RespClient::connect(&url).await;
            match raw.cmd(&[b"ACL", b"DELUSER", name.as_bytes()]).await {
                Resp::Int(_) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
}

/// `CLIENT KILL` of every connection of the storage's own user, every 100 ms for 3 s, under
/// load: nothing lost, nothing applied twice (see `mp_storage_tests::kill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_client_kill_loses_and_doubles_nothing() {
    let Some(url) = server_url() else {
        return;
    };
    let user = AclUser::new(&url).await;
    let killer = Arc::new(tokio::sync::Mutex::new(RespClient::connect(&url).await));
    mp_storage_tests::kill::kill_under_load(&user.url(&url), "redis-kill", || {
        let killer = killer.clone();
        let name = user.name.clone();
        async move {
            let reply = killer
                .lock()
                .await
                .cmd(&[
                    b"CLIENT",
                    b"KILL",
                    b"USER",
                    name.as_bytes(),
                    b"SKIPME",
                    b"yes",
                ])
                .await;
            match reply {
                Resp::Int(n) => u64::try_from(n).expect("a count"),
                other => panic!("CLIENT KILL: {other:?}"),
            }
        }
    })
    .await;
}

/// The bank across processes: 4 processes x 4 tasks over 16 accounts for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_across_processes() {
    let Some(url) = server_url() else { return };
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "redis-bank",
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

/// The bank across processes while `CLIENT KILL` cuts every connection of the workers' user
/// every 100 ms: 3 processes x 4 tasks over 16 accounts for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_connections_killed() {
    let Some(url) = server_url() else { return };
    let user = AclUser::new(&url).await;
    let killer = Arc::new(tokio::sync::Mutex::new(RespClient::connect(&url).await));
    let kill = || {
        let killer = killer.clone();
        let name = user.name.clone();
        async move {
            let reply = killer
                .lock()
                .await
                .cmd(&[
                    b"CLIENT",
                    b"KILL",
                    b"USER",
                    name.as_bytes(),
                    b"SKIPME",
                    b"yes",
                ])
                .await;
            match reply {
                Resp::Int(n) => u64::try_from(n).expect("a count"),
                other => panic!("CLIENT KILL: {other:?}"),
            }
        }
    };
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &user.url(&url),
        "redis-bank-kill",
        mp_storage_tests::bank::Shape {
            accounts: 16,
            procs: 3,
            tasks: 4,
            secs: 3.0,
        },
        Some(kill),
    )
    .await;
}

/// A Redis record corrupted by hand: data that is not the type's JSON is a decode error and is
/// not overwritten.
#[tokio::test]
async fn redis_record_corrupted_by_hand_is_left_untouched() {
    let Some(url) = server_url() else {
        return;
    };
    let prefix = mp_storage_tests::unique_prefix("redis-corrupt");
    // No cache: an edit that keeps the version is invisible to a handle that cached the record
    // before it; this handle sees the store as another process would.
    let st = Storage::builder()
        .key_prefix(&prefix)
        .cache_capacity(0)
        .open(&url)
        .await
        .expect("open redis");
    st.set("c", &Counter { count: 5 }).await.expect("set");
    let mut raw = RespClient::connect(&url).await;
    let key = format!("mp:{prefix}c");
    assert!(matches!(
        raw.cmd(&[b"HSET", key.as_bytes(), b"d", b"[1, 2"]).await,
        Resp::Int(_)
    ));
    let before = raw.hgetall(&key).await;
    let e = st
        .scoped("c", |c: &mut Counter| c.count += 1)
        .await
        .expect_err("undecodable data");
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    let after = raw.hgetall(&key).await;
    assert_eq!(before, after);
    assert_eq!(raw.cmd(&[b"DEL", key.as_bytes()]).await, Resp::Int(1));
}

// ---------------------------------------------------------------------------------------------
// Writes that land late, stores that go back, servers that go down.

/// A compare-and-swap held on its way (the proxy pauses it), whose client side is then cut: the
/// client gives up, and the held `EVALSHA` reaches the server afterwards (after a pause of 0 to
/// 300 ms). However the settling reads and the late write interleave, the update is applied at
/// most once: `Ok(1)` with 1 stored, or a typed `CommitUnknown` with 0 or 1 stored; never 2.
#[tokio::test]
async fn a_write_that_lands_after_the_client_gave_up_is_applied_once() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("late");
    let proxy = Proxy::counting_resp(host_port(&url)).await;
    let st = open_storage(&via(&url, proxy.addr()), &prefix).await;
    let direct = open_storage(&url, &prefix).await;
    let started = Instant::now();
    let (mut done, mut unknown) = (0, 0);
    for (round, hold_ms) in [0u64, 20, 100, 300, 0, 50].into_iter().enumerate() {
        let name = format!("n{round}");
        st.set(&name, &Counter { count: 0 }).await.unwrap();
        proxy.pause();
        let sent = proxy.commands();
        let task = tokio::spawn({
            let (st, name) = (st.clone(), name.clone());
            async move {
                st.scoped(&name, |c: &mut Counter| {
                    c.count += 1;
                    c.count
                })
                .await
            }
        });
        let until = Instant::now() + Duration::from_secs(5);
        while proxy.commands() == sent {
            assert!(Instant::now() < until, "the update sent nothing");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy.cut_clients();
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        proxy.resume();
        let r = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the update returns")
            .expect("join");
        let stored = direct.get::<Counter>(&name).await.unwrap().unwrap().count;
        match r {
            Ok(n) => {
                assert_eq!((n, stored), (1, 1), "round {round}: applied twice?");
                done += 1;
            }
            Err(Error::CommitUnknown { .. }) => {
                assert!(stored <= 1, "round {round}: stored {stored}");
                unknown += 1;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
        direct.remove(&name).await.unwrap();
    }
    eprintln!(
        "late writes: {done} committed, {unknown} unknown, in {:?}",
        started.elapsed()
    );
}

/// The same late write, held in the server instead of the proxy: `CLIENT PAUSE … WRITE` holds
/// every write for 300 ms while reads go on, so the engine's settling read sees the record
/// unchanged while the lost `EVALSHA` still waits in the server, and whatever the engine writes
/// next queues behind it. Taking "unchanged" for "not applied" (and rerunning) would apply the
/// update twice: `Ok(2)`. It must be `Ok(1)` with 1 stored, or a typed `CommitUnknown` with at
/// most 1 stored. (The pause holds the writes of every client of the server for 300 ms, three
/// times.)
#[tokio::test]
async fn a_write_held_in_the_server_is_applied_once() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("held");
    let proxy = Proxy::counting_resp(host_port(&url)).await;
    let st = open_storage(&via(&url, proxy.addr()), &prefix).await;
    let direct = open_storage(&url, &prefix).await;
    let mut raw = RespClient::connect(&url).await;
    for round in 0..3 {
        let name = format!("n{round}");
        st.set(&name, &Counter { count: 0 }).await.unwrap();
        assert_eq!(
            raw.cmd(&[b"CLIENT", b"PAUSE", b"300", b"WRITE"]).await,
            Resp::Simple("OK".into())
        );
        let sent = proxy.commands();
        let task = tokio::spawn({
            let (st, name) = (st.clone(), name.clone());
            async move {
                st.scoped(&name, |c: &mut Counter| {
                    c.count += 1;
                    c.count
                })
                .await
            }
        });
        let until = Instant::now() + Duration::from_secs(5);
        while proxy.commands() == sent {
            assert!(Instant::now() < until, "the update sent nothing");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let it reach the server, where it waits.
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.cut_clients();
        let r = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the update returns")
            .expect("join");
        raw.cmd(&[b"CLIENT", b"UNPAUSE"]).await;
        let stored = direct.get::<Counter>(&name).await.unwrap().unwrap().count;
        match r {
            Ok(n) => assert_eq!((n, stored), (1, 1), "round {round}: applied twice"),
            Err(Error::CommitUnknown { .. }) => {
                assert!(stored <= 1, "round {round}: stored {stored}")
            }
            Err(e) => panic!("round {round}: {e}"),
        }
        direct.remove(&name).await.unwrap();
    }
}

/// The scope's key restored from an older copy (`DUMP` then `RESTORE … REPLACE`), then written
/// by another process until its version is back at the number two handles cached: a read-only
/// update from the cache answers the stored value (not the cached one: "read 50 while the store
/// held 107"), and an update does not write over the other process's acknowledged writes.
#[tokio::test]
async fn a_restored_older_copy_is_not_trusted() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("restore");
    let key = format!("{prefix}r");
    let mut raw = RespClient::connect(&url).await;
    open_storage(&url, &prefix)
        .await
        .set("r", &Counter { count: 50 })
        .await
        .unwrap();
    let Resp::Bulk(Some(dump)) = raw.cmd(&[b"DUMP", key.as_bytes()]).await else {
        panic!("DUMP of {key}");
    };
    let (a, reader) = (
        open_storage(&url, &prefix).await,
        open_storage(&url, &prefix).await,
    );
    for _ in 0..3 {
        a.scoped("r", |c: &mut Counter| c.count += 1).await.unwrap();
    }
    assert_eq!(reader.get::<Counter>("r").await.unwrap().unwrap().count, 53);
    let cached = RedisDriver::open(&with_query(&url, &prefix_query(&prefix)))
        .await
        .unwrap()
        .load("r")
        .await
        .unwrap()
        .unwrap()
        .version;

    assert_eq!(
        raw.cmd(&[b"RESTORE", key.as_bytes(), b"0", &dump, b"REPLACE"])
            .await,
        Resp::Simple("OK".into())
    );
    let other = open_storage(&url, &prefix).await;
    assert_eq!(other.get::<Counter>("r").await.unwrap().unwrap().count, 50);
    for _ in 0..3 {
        other
            .scoped("r", |c: &mut Counter| c.count += 100)
            .await
            .unwrap();
    }
    let d = open_driver(&url, &prefix).await;
    assert_eq!(d.load("r").await.unwrap().unwrap().version, cached);

    let seen = reader.scoped("r", |c: &mut Counter| c.count).await.unwrap();
    assert_eq!(seen, 350, "a read-only update answered from the cache");
    let n = a
        .scoped("r", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await
        .unwrap();
    assert_eq!(n, 351, "an update wrote over data it never saw");
    assert_eq!(other.get::<Counter>("r").await.unwrap().unwrap().count, 351);
}

/// A handle on a server that goes down: stops the proxy in front of it and, when `learn` says
/// so, lets one read find out first. Then three updates under a warm cache must each be a
/// connection error (retryable, nothing written) within the connect timeout and a second, not an
/// unknown outcome after the engine's settle window; and the handle works again, with the count
/// exact, once the server is back.
async fn updates_while_down(url: &str, tag: &str, options: &str, learn: bool) {
    let prefix = private_prefix(tag);
    let proxy = Proxy::start(host_port(url)).await;
    let connect_timeout = Duration::from_millis(500);
    let st = open_storage(
        &with_query(
            &via(url, proxy.addr()),
            &format!("connect_timeout=500ms{options}"),
        ),
        &prefix,
    )
    .await;
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    proxy.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    if learn {
        match st.get::<u64>("n").await {
            Err(e) => assert_eq!(e.backend_kind(), Some(BackendKind::Connection), "{e}"),
            Ok(v) => panic!("read {v:?} from a server that is down"),
        }
    }
    for i in 0..3 {
        let started = Instant::now();
        let r = st.scoped("n", |n: &mut u64| *n += 1).await;
        let took = started.elapsed();
        match &r {
            Err(e @ Error::Backend { kind, .. }) => {
                assert_eq!(*kind, BackendKind::Connection, "update {i}: {e}");
                assert!(e.is_retryable(), "update {i}: {e:?}");
            }
            other => {
                panic!("update {i} after {took:?}: expected a connection error, got {other:?}")
            }
        }
        assert!(
            took < connect_timeout + Duration::from_secs(1),
            "update {i} took {took:?}"
        );
    }
    let back = Proxy::restart_on(proxy.addr(), host_port(url)).await;
    let until = Instant::now() + Duration::from_secs(5);
    let n = loop {
        match st
            .scoped("n", |n: &mut u64| {
                *n += 1;
                *n
            })
            .await
        {
            Ok(n) => break n,
            Err(e) if e.is_retryable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    };
    assert_eq!(
        n, 2,
        "an update refused while the server was down was applied"
    );
    drop(back);
}

/// A server that refuses connections, under a warm cache: once the handle knows its connection
/// is gone (a read found out), every update is a connection error at once. (The connection
/// manager's failed reconnect is a refusal: nothing was sent.)
#[tokio::test]
async fn a_server_refusing_connections_is_a_connection_error() {
    let Some(url) = server_url() else { return };
    updates_while_down(&url, "refusing", "", true).await;
}

/// The first write after the server went down, with RESP3: the connection manager hears of the
/// closed connection (a disconnect notice) and reconnects at once, so the write meets a refused
/// connection, not the dead one, and is a connection error at once.
#[tokio::test]
async fn the_first_write_after_the_server_went_down_is_a_connection_error_resp3() {
    let Some(url) = server_url() else { return };
    updates_while_down(&url, "downresp3", "&protocol=resp3", false).await;
}

/// The same with the default protocol (RESP3).
#[tokio::test]
async fn the_first_write_after_the_server_went_down_is_a_connection_error() {
    let Some(url) = server_url() else { return };
    updates_while_down(&url, "downdefault", "", false).await;
}

/// With RESP2 (`protocol=resp2`, or a server older than Redis 6), the connection manager does not
/// notice a connection the server closed while it was idle; the first command after that is
/// handed to the dead connection and fails with "broken pipe", which redis-rs gives alike
/// whether or not the command had been sent. So the driver reports it as maybe sent, the engine
/// settles it, its reads are refused, and after the settle window (3.75 s) the answer is
/// `CommitUnknown`: a limit of RESP2, documented in the driver. Run with `--ignored`.
#[tokio::test]
#[ignore = "a limit of RESP2: the first write on a connection closed while idle is a maybe-sent error (see the doc comment)"]
async fn the_first_write_after_the_server_went_down_is_a_connection_error_resp2() {
    let Some(url) = server_url() else { return };
    updates_while_down(&url, "downresp2", "&protocol=resp2", false).await;
}

// ---------------------------------------------------------------------------------------------
// Exclusive updates across processes (see `mp_storage_tests::lease`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("redis-lease");
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
    let prefix = mp_storage_tests::unique_prefix("redis-lease");
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
    let prefix = mp_storage_tests::unique_prefix("redis-lease");
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Waiting for replicas (`replica_wait`): a server with none never acknowledges.

#[tokio::test]
async fn a_write_no_replica_acknowledged_is_of_unknown_outcome() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("wait");
    let st = open_storage(
        &with_query(&url, "replica_wait=1&replica_timeout=50ms"),
        &prefix,
    )
    .await;
    let e = st.scoped("w", |n: &mut u64| *n += 1).await.unwrap_err();
    assert!(matches!(e, Error::CommitUnknown { .. }), "{e:?}");
    assert!(e.to_string().contains("0 of the 1 replicas"), "{e}");
    // It stands on the server: the waiting changed what the caller is told, not the write.
    let plain = open_storage(&url, &prefix).await;
    assert_eq!(plain.get::<u64>("w").await.unwrap(), Some(1));
    assert!(plain.remove("w").await.unwrap());
}

/// A write whose reply is lost, with the replica wait on: the engine cannot settle it from the
/// commit tokens (they are on the master; the replicas are what the caller asked about), so it
/// is `CommitUnknown`, never `Ok` — here no replica exists, so `Ok` would be a lie.
#[tokio::test]
async fn a_lost_reply_with_the_replica_wait_is_of_unknown_outcome() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("wait-lost");
    let proxy = Proxy::counting_resp(host_port(&url)).await;
    let st = open_storage(
        &with_query(
            &via(&url, proxy.addr()),
            "replica_wait=1&replica_timeout=300ms",
        ),
        &prefix,
    )
    .await;
    let plain = open_storage(&url, &prefix).await;
    plain.set("w", &0u64).await.unwrap();
    let sent = proxy.commands();
    let task = tokio::spawn({
        let st = st.clone();
        async move { st.scoped("w", |n: &mut u64| *n += 1).await }
    });
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.commands() < sent + 2 {
        assert!(Instant::now() < until, "the update sent nothing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The write and its WAIT reached the server; the client's side of the connection goes.
    proxy.cut_clients();
    let e = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the update returns")
        .expect("join")
        .unwrap_err();
    assert!(matches!(e, Error::CommitUnknown { .. }), "{e:?}");
    assert!(e.may_have_happened(), "{e}");
    assert!(e.to_string().contains("replicas have it"), "{e}");
    // The write itself may stand on the server; it is applied at most once.
    assert!(plain.get::<u64>("w").await.unwrap().unwrap_or(0) <= 1);
    assert!(plain.remove("w").await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Watching.

/// A watcher sees other processes' increments end at the final count, never backwards, and
/// slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let Some(url) = server_url() else { return };
    let prefix = mp_storage_tests::unique_prefix("redis-watch");
    let worker = env!("CARGO_BIN_EXE_mp-worker");
    mp_storage_tests::watch::other_processes(worker, &url, &prefix).await;
}

/// The ids of the server's clients in subscriber mode.
async fn subscriber_ids(url: &str) -> Vec<String> {
    let mut raw = RespClient::connect(url).await;
    raw.client_ids(&[b"TYPE", b"pubsub"], |_| true).await
}

/// `CLIENT KILL` of the subscriber connection: the watcher reconnects by itself and misses
/// nothing committed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_its_connection_killed() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("watch-kill");
    let before = subscriber_ids(&url).await;
    let (st, writer) = (
        open_storage(&url, &prefix).await,
        open_storage(&url, &prefix).await,
    );
    mp_storage_tests::watch::survives_a_cut(&st, &writer, || async {
        let mut raw = RespClient::connect(&url).await;
        let mut killed = 0;
        for id in subscriber_ids(&url).await {
            if !before.contains(&id) {
                raw.cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]).await;
                killed += 1;
            }
        }
        killed
    })
    .await;
}

/// The subscription is the engine's, not the watcher's: many watchers of a scope, one
/// subscriber of its channel on the server, gone when the last watcher is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_connection_per_storage() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("watch-one");
    let st = open_storage(&url, &prefix).await;
    let mut watches = Vec::new();
    for i in 0..200 {
        let mut w = st.watch::<Counter>(format!("s{}", i % 20)).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), None);
        watches.push(w);
    }
    // Seen, so subscribed.
    st.set("s3", &Counter { count: 1 }).await.unwrap();
    let count = |v: Option<Counter>| v.map(|c| c.count);
    assert_eq!(count(watches[3].next().await.unwrap().unwrap()), Some(1));
    // A new watcher of a watched scope starts from the value its watchers hold.
    let mut third = st.watch::<Counter>("s3").await.unwrap();
    assert_eq!(count(third.next().await.unwrap().unwrap()), Some(1));
    let channel = format!("{}s3", &*prefix);
    let subscribers = || async {
        let mut raw = RespClient::connect(&url).await;
        match raw.cmd(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()]).await {
            Resp::Array(Some(items)) => match items.as_slice() {
                [_, Resp::Int(n)] => *n,
                other => panic!("PUBSUB NUMSUB gave {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB gave {other:?}"),
        }
    };
    assert_eq!(subscribers().await, 1, "11 watchers of s3, one subscriber");
    assert_eq!(st.stats().watch_feeds, 1);
    drop((watches, third));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while subscribers().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription outlived the last watcher"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
