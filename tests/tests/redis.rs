//! The Redis driver against a live server: `MP_TEST_REDIS_URL=redis://127.0.0.1:6379/`.
//!
//! The behavior suite, then what is particular to Redis. Unset, every test here skips with a
//! note; with `MP_TEST_REQUIRE_SERVERS=1` it fails instead.
//! Every test works under a key prefix of its own, so tests run in parallel on one server.
//! Commands are counted by a small TCP proxy that sits between the driver and the server, so the
//! counts do not depend on what else the server is doing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mp_storage::driver::redis::RedisDriver;
use mp_storage::{BackendKind, CasOutcome, Driver, Error, Storage, Write};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mp_storage_tests::behavior_suite!(mp_storage_tests::targets::redis());

/// The server's URL, or `None` (skip, or fail when servers are required) when unset.
fn server_url() -> Option<String> {
    mp_storage_tests::targets::server_url("MP_TEST_REDIS_URL", "redis")
}

/// A key prefix no other test or run uses; the keys under it are deleted when it drops.
fn private_prefix(tag: &str) -> Prefix {
    Prefix(format!("mptest:{tag}:{:016x}:", rand::random::<u64>()))
}

/// A test's private key prefix. Dropping it deletes the test's keys (through
/// `mp_storage_tests::delete_under`, so also when the test panics).
struct Prefix(String);

impl std::ops::Deref for Prefix {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(url) = std::env::var("MP_TEST_REDIS_URL") else {
            return;
        };
        // The driver over this prefix lists and deletes exactly its keys, corrupt ones too.
        mp_storage_tests::delete_under(&with_query(&url, &prefix_query(&self.0)), "");
    }
}

/// `url` with `extra` (`k=v&…`) added to its query string.
fn with_query(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

fn prefix_query(prefix: &str) -> String {
    format!("prefix={}", encode(prefix))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `host:port` of a `redis://[…@]host:port/…` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = authority.rsplit('@').next().unwrap_or(authority);
    if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:6379")
    }
}

/// `url` pointing at `addr` instead of its own host and port.
fn via(url: &str, addr: &str) -> String {
    url.replacen(&host_port(url), addr, 1)
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

fn write(data: &[u8], token: u64, initial_version: u64) -> Write<'_> {
    Write {
        schema: 1,
        data,
        token,
        initial_version,
    }
}

// ---------------------------------------------------------------------------------------------
// A raw RESP client, to plant records the driver would never write and to read server state.

#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

struct Raw {
    r: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let stream = TcpStream::connect(host_port(url)).await.expect("connect");
        let mut raw = Raw {
            r: BufReader::new(stream),
        };
        let db = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('/'))
            .map(|(_, p)| p.split('?').next().unwrap_or(""))
            .unwrap_or("");
        if !db.is_empty() {
            raw.cmd(&[b"SELECT", db.as_bytes()]).await;
        }
        raw
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Resp {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).await.expect("send");
        self.read().await
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).await.expect("read");
        line.trim_end_matches("\r\n").to_owned()
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resp> + Send + '_>> {
        Box::pin(async move {
            let line = self.line().await;
            let (kind, rest) = line.split_at(1);
            match kind {
                "+" => Resp::Simple(rest.to_owned()),
                "-" => Resp::Error(rest.to_owned()),
                ":" => Resp::Int(rest.parse().expect("int")),
                "$" => {
                    let n: i64 = rest.parse().expect("len");
                    if n < 0 {
                        return Resp::Bulk(None);
                    }
                    let mut buf = vec![0; n as usize + 2];
                    self.r.read_exact(&mut buf).await.expect("bulk");
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
                "*" => {
                    let n: i64 = rest.parse().expect("len");
                    if n < 0 {
                        return Resp::Array(None);
                    }
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.read().await);
                    }
                    Resp::Array(Some(items))
                }
                other => panic!("unexpected reply type {other:?}"),
            }
        })
    }

    async fn hgetall(&mut self, key: &str) -> Resp {
        self.cmd(&[b"HGETALL", key.as_bytes()]).await
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that counts the commands clients send and can cut every connection.

struct Proxy {
    addr: String,
    commands: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let commands = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let commands = commands.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let commands = commands.clone();
                    let task = tokio::spawn(pipe(client, server, commands));
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            addr,
            commands,
            conns,
            accept,
        }
    }

    fn commands(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }

    /// Cuts every open connection (new ones are still accepted).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Stops listening and cuts every connection: the server looks down.
    fn stop(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, commands: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    let up = async move {
        let mut counter = CommandCounter::default();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            commands.fetch_add(counter.feed(&buf[..n]), Ordering::SeqCst);
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

/// Counts the RESP arrays (commands) in a client's byte stream.
#[derive(Default)]
struct CommandCounter {
    pending: Vec<u8>,
    /// Bulk strings still to come in the current command.
    bulks_left: u64,
    /// Bytes of a bulk string (with its CRLF) still to skip.
    skip: usize,
}

impl CommandCounter {
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        let mut count = 0;
        let mut bytes = bytes;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return count;
                }
            }
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.pending.extend_from_slice(bytes);
                return count;
            };
            self.pending.extend_from_slice(&bytes[..=nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.pending);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if self.bulks_left == 0 {
                assert!(text.starts_with('*'), "not a command: {text:?}");
                count += 1;
                self.bulks_left = text[1..].parse().expect("array length");
            } else {
                assert!(text.starts_with('$'), "not a bulk string: {text:?}");
                let len: usize = text[1..].parse().expect("bulk length");
                self.skip = len + 2;
                self.bulks_left -= 1;
            }
        }
    }
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
        d.cas("k", Some(5), write(b"1", 1, 100)).await.unwrap(),
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
        d.cas("k", Some(100), write(b"2", 2, 7)).await.unwrap(),
        CasOutcome::Committed(101)
    );
    match d.cas("k", Some(100), write(b"3", 3, 7)).await.unwrap() {
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
            match d.cas("k", Some(version), w).await.unwrap() {
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
        d.cas("big", Some(big + 1), write(b"0", 3, 1))
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
    let mut raw = Raw::connect(&url).await;
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
    let mut raw = Raw::connect(&url).await;
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
        match d.cas(name, Some(4), write(b"2", 2, 1)).await {
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
    let proxy = Proxy::start(host_port(&url)).await;
    let prefix = private_prefix("count");
    let st = open_storage(&via(&url, &proxy.addr), &prefix).await;
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

    // A cold create: one load, one compare-and-swap.
    let before = proxy.commands();
    st.scoped("fresh", |n: &mut u64| *n += 1).await.unwrap();
    assert_eq!(proxy.commands() - before, 2);
    st.remove("n").await.unwrap();
    st.remove("fresh").await.unwrap();
}

#[tokio::test]
async fn lost_scripts_are_loaded_again() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("noscript");
    let st = open_storage(&url, &prefix).await;
    st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    let mut raw = Raw::connect(&url).await;
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

#[tokio::test]
async fn server_going_down_is_a_connection_error_then_recovers() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("down");
    let proxy = Proxy::start(host_port(&url)).await;
    let st = open_storage(
        &with_query(&via(&url, &proxy.addr), "connect_timeout=500ms"),
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
    let back = loop {
        match TcpListener::bind(&proxy.addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let upstream = host_port(&url);
    let relay = tokio::spawn(async move {
        while let Ok((client, _)) = back.accept().await {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                tokio::spawn(pipe(client, server, Arc::default()));
            }
        }
    });
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
    relay.abort();
}

#[tokio::test]
async fn an_idle_handle_reads_after_its_connection_was_cut() {
    let Some(url) = server_url() else { return };
    let prefix = private_prefix("idle");
    let proxy = Proxy::start(host_port(&url)).await;
    let st = open_storage(&via(&url, &proxy.addr), &prefix).await;
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
    let st = open_storage(&via(&url, &proxy.addr), &prefix).await;
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
    let mut raw = Raw::connect(&url).await;
    // A user of this test's own that may touch only keys under `allowed:`.
    let user = format!("mptest{:016x}", rand::random::<u64>());
    let rule = b"~allowed:*".as_slice();
    let created = raw
        .cmd(&[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"on",
            b">pw",
            rule,
            b"+@all",
        ])
        .await;
    assert_eq!(created, Resp::Simple("OK".into()));
    let hp = host_port(&url);
    let db = url.rsplit_once('/').map_or("", |(_, db)| db);

    let denied = format!("redis://{user}:pw@{hp}/{db}");
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

    let wrong = format!("redis://{user}:nope@{hp}/{db}");
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
