//! The counter server (`examples/counter`, binary `counter-server`).
//!
//! - In process, on `memory://`: the answers (text, JSON, singular and plural), user names as
//!   scopes, the 400/404/405/500/503 answers, and two servers on one store.
//! - As real OS processes, on every store processes can share (`file:` in a temporary directory;
//!   Redis, MySQL and PostgreSQL when `MP_TEST_REDIS_URL` / `MP_TEST_MYSQL_URL` /
//!   `MP_TEST_POSTGRES_URL` are set, else skipped with a printed note, or failed with `MP_TEST_REQUIRE_SERVERS=1`): two servers, 2,000 requests at
//!   concurrency 32 spread over both, an exact final count and distinct answers; a restart that
//!   keeps the count; hostile and unicode user names; nothing written outside the store.
//!
//! How the server processes are started: cargo gives an integration test the path of its own
//! package's binaries only (`CARGO_BIN_EXE_*`), and the server is a binary of another package
//! (`mp-storage-examples`), which `cargo test` does not promise to build, and which could be stale
//! if it were looked up in `target/`. Building it from here (`cargo build` inside `cargo test`)
//! would be slow and could build it with other features. Instead the `counter-server` binary is
//! one call, `mp_storage_examples::counter::cli::run(args)`, into the examples' library, which is
//! a dev-dependency of this package; and this test executable runs itself as the server: started
//! with [`CHILD_ARGS`] set, its `counter_server_process` entry calls that same `run` with the
//! arguments given and exits with its code. So each server is a separate process running the
//! server's own command line, signal handling and exit codes, built in this very build, from a
//! clean clone as from a warm target directory. The children also exit when the test that started
//! them goes away (their stdin closes), so a failed run leaves no server behind.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mp_storage::{BackendKind, Storage};
use mp_storage_examples::counter::{self, cli, Counter};
use mp_storage_tests::faults::Faulty;
use mp_storage_tests::targets::{note_skip, server_url, servers_required};
use mp_storage_tests::url::{encode, with_option};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};

/// The variable that turns this test executable into a server process: the arguments, as a JSON
/// array of strings.
const CHILD_ARGS: &str = "MP_COUNTER_SERVER_CHILD_ARGS";

/// Requests of the load test, and how many are in flight at once.
const REQUESTS: usize = 2_000;
const CONCURRENCY: usize = 32;

/// User names that must each be a scope of their own, taken exactly.
fn odd_user_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "alice",
        "Alice",
        "alice ",
        " alice",
        "",
        ".",
        "..",
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "a/b\\c",
        "%2e%2e%2f",
        "user:alice",
        "CON",
        "nul.txt",
        "名前",
        "Ünïcödé",
        "e\u{301}",
        "é",
        "😀 emoji",
        "tab\there",
        "line\nbreak",
        "+plus&amp=eq?",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.push("x".repeat(1000));
    names.push("é".repeat(500)); // 1,000 bytes
    names.push("y".repeat(counter::MAX_USER_LEN)); // the longest
    names
}

/// User names that cannot be scope names: each answers 400 and stores nothing.
fn refused_user_queries() -> Vec<String> {
    vec![
        "user=%00".to_owned(),
        "user=a%00b".to_owned(),
        format!("user={}", "z".repeat(counter::MAX_USER_LEN + 1)),
        format!("user={}", encode(&"語".repeat(340))), // 1,020 bytes
        "user=%FF".to_owned(),
        "user=a&user=b".to_owned(),
    ]
}

// ------------------------------------------------------------------------------------------
// The server process entry
// ------------------------------------------------------------------------------------------

/// Not a test of its own: the entry point of the server processes the other tests start (see the
/// module documentation). Run without [`CHILD_ARGS`], it passes at once.
#[test]
fn counter_server_process() {
    let Some(args) = std::env::var_os(CHILD_ARGS) else {
        return;
    };
    let args: Vec<String> = match args.to_str().map(serde_json::from_str) {
        Some(Ok(args)) => args,
        _ => {
            eprintln!("{CHILD_ARGS} is not a JSON array of strings");
            std::process::exit(2);
        }
    };
    // Exit when the test that started this process is gone (stdin closes).
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(70);
    });
    let code = cli::run(args.into_iter().map(OsString::from));
    std::process::exit(i32::from(code));
}

/// A server process, killed when dropped.
struct ServerProcess {
    child: Child,
    /// Held open: the child exits when it closes.
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `counter-server ARGS` with the variables `vars` (and no `MP_STORAGE_URL` or `PORT`
    /// from this environment) in `cwd`, and waits until it listens.
    async fn start(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> ServerProcess {
        let mut child = spawn_server(args, vars, cwd);
        let output = Arc::new(Mutex::new(String::new()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(collect(stderr, output.clone(), None));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(collect(stdout, output.clone(), Some(addr_tx)));
        let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "the server did not start ({status:?}); its output:\n{}",
                    output.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        ServerProcess {
            child,
            _stdin: stdin,
            addr,
            output,
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the server to stop as Ctrl-C would (SIGTERM on Unix) and checks that it stops
    /// cleanly; returns its output.
    async fn stop(mut self) -> String {
        #[cfg(unix)]
        {
            let pid = self.child.id().expect("a running child").to_string();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("run kill");
            assert!(sent.success(), "kill -TERM {pid} failed");
        }
        #[cfg(not(unix))]
        {
            let _ = self.child.start_kill();
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the server stops within 20 s of SIGTERM")
            .expect("wait for the server");
        // Let the readers take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let output = self.output();
        #[cfg(unix)]
        assert!(
            status.success(),
            "the server exits cleanly on SIGTERM ({status}); its output:\n{output}"
        );
        output
    }
}

fn spawn_server(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> Child {
    let exe = std::env::current_exe().expect("the test executable's path");
    let args = serde_json::to_string(args).expect("arguments as JSON");
    let mut cmd = Command::new(exe);
    cmd.args([
        "counter_server_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ARGS, args)
    .env_remove("MP_STORAGE_URL")
    .env_remove("PORT")
    .env("RUST_LOG", "info")
    .envs(vars.iter().copied())
    .current_dir(cwd)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd.spawn().expect("start the server process")
}

/// Runs the server with `args` until it exits by itself; returns its status and output.
async fn run_to_exit(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> (ExitStatus, String) {
    let mut child = spawn_server(args, vars, cwd);
    let stdin = child.stdin.take(); // held: the child exits early when it closes
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the server exits by itself")
        .expect("the server's output");
    drop(stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Appends every line of `from` to `output`; sends the address of the `listening on` line.
async fn collect(
    from: impl tokio::io::AsyncRead + Unpin,
    output: Arc<Mutex<String>>,
    mut addr_tx: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(addr) = line.strip_prefix("counter-server: listening on http://") {
            if let (Some(tx), Ok(addr)) = (addr_tx.take(), addr.trim().parse()) {
                let _ = tx.send(addr);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// A small HTTP/1.1 client over TCP: one connection per request
// ------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The count of a JSON answer, checking its scope.
    fn json_count(&self, scope: &str) -> u64 {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&self.body).expect("a JSON answer");
        assert_eq!(v["scope"].as_str(), Some(scope), "{}", self.body);
        v["count"].as_u64().expect("a count")
    }

    /// The count of a text answer, checking its English.
    fn text_count(&self) -> u64 {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let n = self
            .body
            .trim_end()
            .split(' ')
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {:?}", self.body));
        assert_eq!(self.body, format!("{}\n", counter::sentence(n)));
        n
    }
}

/// `METHOD target` on `addr`, with `Accept: application/json` when `json`.
async fn request(addr: SocketAddr, method: &str, target: &str, json: bool) -> Reply {
    let accept = if json {
        "Accept: application/json\r\n"
    } else {
        ""
    };
    request_with(addr, method, target, accept).await
}

/// `METHOD target` on `addr` with `headers` (each line ending in CRLF).
async fn request_with(addr: SocketAddr, method: &str, target: &str, headers: &str) -> Reply {
    request_body(addr, method, target, headers, "").await
}

/// `METHOD target` on `addr` with `headers` and a form-encoded `body` (none when empty).
async fn request_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let form = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}{form}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("receive");
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let reply = Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    if method != "HEAD" {
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str()),
            "a whole body"
        );
    }
    reply
}

async fn get(addr: SocketAddr, target: &str, json: bool) -> Reply {
    request(addr, "GET", target, json).await
}

fn user_target(name: &str) -> String {
    format!("/?user={}", encode(name))
}

// ------------------------------------------------------------------------------------------
// Shared checks
// ------------------------------------------------------------------------------------------

/// Sends `total` `GET /` spread round-robin over `addrs`, `concurrency` at a time (half text,
/// half JSON); checks that every answer is 200 and that the counts are exactly
/// `first..first + total`, each once.
async fn load(addrs: &[SocketAddr], total: usize, concurrency: usize, first: u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let addrs: Arc<[SocketAddr]> = addrs.into();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = next.clone();
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut counts = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return counts;
                    }
                    let addr = addrs[i % addrs.len()];
                    let json = (i / addrs.len()).is_multiple_of(2);
                    let reply = get(addr, "/", json).await;
                    assert_eq!(reply.status, 200, "request {i} to {addr}: {}", reply.body);
                    counts.push(if json {
                        reply.json_count(counter::GLOBAL_SCOPE)
                    } else {
                        reply.text_count()
                    });
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for worker in workers {
        for n in worker.await.expect("a load worker") {
            assert!(seen.insert(n), "count {n} was answered twice");
        }
    }
    let expected: HashSet<u64> = (first..first + total as u64).collect();
    assert_eq!(
        seen,
        expected,
        "the counts are exactly {first}..{}",
        first + total as u64
    );
}

/// Two rounds over every odd user name: each is its own scope, counted 1 then 2; the refused
/// names answer 400. Returns the scope names that must now be stored.
async fn check_user_names(addrs: &[SocketAddr]) -> BTreeSet<String> {
    let names = odd_user_names();
    for round in 1..=2u64 {
        for (i, name) in names.iter().enumerate() {
            let addr = addrs[i % addrs.len()];
            let scope = format!("{}{name}", counter::USER_PREFIX);
            let reply = get(addr, &user_target(name), true).await;
            assert_eq!(reply.json_count(&scope), round, "user {name:?}");
        }
    }
    let reply = get(addrs[0], &user_target("名前"), false).await;
    assert_eq!(reply.text_count(), 3);
    let reply = get(addrs[0], "/?user=a+b%20c", true).await;
    assert_eq!(reply.json_count("user:a b c"), 1);
    for query in refused_user_queries() {
        let reply = get(addrs[0], &format!("/?{query}"), false).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(reply.body.len() < 100, "a short message: {}", reply.body);
    }
    let mut scopes: BTreeSet<String> = names
        .iter()
        .map(|n| format!("{}{n}", counter::USER_PREFIX))
        .collect();
    scopes.insert("user:a b c".to_owned());
    scopes
}

// ------------------------------------------------------------------------------------------
// In process, on memory://
// ------------------------------------------------------------------------------------------

/// Serves `storage` on a free port of this process; stops when the sender is dropped or sent.
async fn serve_here(storage: Storage) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(counter::serve(listener, storage, async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx)
}

/// A client that retries a request with the same `Idempotency-Key` is counted once and gets
/// the first answer again; another key counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_request_with_an_idempotency_key_counts_once() {
    let storage = Storage::open("memory://").await.expect("memory");
    let (addr, _stop) = serve_here(storage.clone()).await;
    let with_key = |k: &str| format!("Accept: application/json\r\nIdempotency-Key: {k}\r\n");
    for _ in 0..3 {
        let reply = request_with(addr, "GET", "/?user=bob", &with_key("req-1")).await;
        assert_eq!(reply.json_count("user:bob"), 1);
    }
    let reply = request_with(addr, "GET", "/?user=bob", &with_key("req-2")).await;
    assert_eq!(reply.json_count("user:bob"), 2);
    let reply = request_with(addr, "GET", "/?user=bob", &with_key(" ")).await;
    assert_eq!(reply.status, 400);
    let stored: Option<Counter> = storage.get("user:bob").await.expect("read");
    assert_eq!(stored, Some(Counter { count: 2 }));
}

/// The balance of a wallet answer, checking its user.
fn balance(v: &serde_json::Value, user: &str) -> u64 {
    assert_eq!(v["user"].as_str(), Some(user), "{v}");
    v["balance"].as_u64().expect("a balance")
}

/// `POST /transfer` moves money between two wallets, all or nothing: an overdraft answers 409
/// and changes nothing, bad parameters 400; concurrent transfers from one wallet never overdraw
/// it, and the money is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_move_money_all_or_nothing() {
    let storage = Storage::open("memory://").await.expect("memory");
    let (addr, _stop) = serve_here(storage.clone()).await;
    let post = |target: String| async move { request(addr, "POST", &target, true).await };
    let json = |r: &Reply| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        serde_json::from_str(&r.body).expect("a JSON answer")
    };

    let r = post("/deposit?user=alice&amount=100".into()).await;
    assert_eq!(balance(&json(&r), "alice"), 100);
    // From the query string, or from a form body.
    let r = post("/transfer?from=alice&to=bob&amount=30".into()).await;
    let v = json(&r);
    assert_eq!(
        (balance(&v["from"], "alice"), balance(&v["to"], "bob")),
        (70, 30)
    );
    let r = request_body(addr, "POST", "/transfer", "", "from=bob&to=alice&amount=5").await;
    let v = json(&r);
    assert_eq!(
        (balance(&v["from"], "bob"), balance(&v["to"], "alice")),
        (25, 75)
    );

    // An overdraft: 409, nothing moved.
    let r = post("/transfer?from=alice&to=bob&amount=76".into()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("insufficient funds"), "{}", r.body);
    let r = get(addr, "/wallet?user=alice", true).await;
    assert_eq!(balance(&json(&r), "alice"), 75);
    let r = get(addr, "/wallet?user=carol", true).await;
    assert_eq!(balance(&json(&r), "carol"), 0, "a wallet never written");

    // Bad parameters: 400, nothing written.
    for target in [
        "/transfer?from=alice&to=bob",
        "/transfer?from=alice&amount=1",
        "/transfer?from=alice&to=alice&amount=1",
        "/transfer?from=alice&to=bob&amount=0",
        "/transfer?from=alice&to=bob&amount=-3",
        "/transfer?from=alice&to=bob&amount=1&amount=2",
        "/transfer?from=alice&to=%00&amount=1",
        "/transfer?from=alice&to=%FF&amount=1",
        "/deposit?user=alice&amount=x",
    ] {
        let r = post(target.into()).await;
        assert_eq!(r.status, 400, "{target}: {}", r.body);
    }
    let r = request(addr, "GET", "/transfer?from=alice&to=bob&amount=1", false).await;
    assert_eq!(r.status, 405);

    // 16 concurrent transfers of 10 from alice (75): exactly 7 go through, the rest are 409.
    let replies = futures::future::join_all(
        (0..16).map(|i| post(format!("/transfer?from=alice&to=payee{}&amount=10", i % 4))),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!((ok, refused), (7, 9));
    let mut names = vec!["wallet:alice".to_owned(), "wallet:bob".to_owned()];
    names.extend((0..4).map(|i| format!("wallet:payee{i}")));
    let wallets = storage
        .get_many::<counter::wallet::Wallet, _>(&names)
        .await
        .expect("read");
    let balances: Vec<u64> = wallets
        .iter()
        .map(|w| w.as_ref().map_or(0, |w| w.balance))
        .collect();
    assert_eq!(balances[0], 5);
    assert_eq!(
        balances.iter().sum::<u64>(),
        100,
        "money conserved: {balances:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_in_text_and_json() {
    let storage = Storage::open("memory://").await.expect("memory");
    let (addr, _stop) = serve_here(storage.clone()).await;

    let reply = get(addr, "/", false).await;
    assert_eq!(reply.body, "There has been 1 request.\n");
    assert_eq!(reply.text_count(), 1);
    let reply = get(addr, "/", false).await;
    assert_eq!(reply.body, "There have been 2 requests.\n");
    let reply = get(addr, "/?other=1", true).await;
    assert_eq!(reply.body, "{\"scope\":\"global\",\"count\":3}\n");
    assert_eq!(reply.header("vary"), Some("accept"));
    let reply = get(addr, "/?user=alice", true).await;
    assert_eq!(reply.json_count("user:alice"), 1);
    let reply = get(addr, "/?user=alice", false).await;
    assert_eq!(reply.body, "There have been 2 requests.\n");

    let stored: Option<Counter> = storage.get("global").await.expect("read");
    assert_eq!(stored, Some(Counter { count: 3 }));

    let reply = get(addr, "/favicon.ico", false).await;
    assert_eq!(reply.status, 404);
    let reply = request(addr, "POST", "/", false).await;
    assert_eq!(reply.status, 405);
    let stored: Option<Counter> = storage.get("global").await.expect("read");
    assert_eq!(
        stored,
        Some(Counter { count: 3 }),
        "404 and 405 count nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_names_are_scopes_of_their_own() {
    let storage = Storage::open("memory://").await.expect("memory");
    let (addr, _stop) = serve_here(storage.clone()).await;
    let expected = check_user_names(&[addr]).await;
    let stored: BTreeSet<String> = storage.list("").await.expect("list").into_iter().collect();
    assert_eq!(stored, expected, "exactly one scope per accepted name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_memory_store_count_exactly() {
    // Two handles over one driver, each with its own cache: as two processes would be.
    let driver = mp_storage::driver::open("memory://").await.expect("memory");
    let a = Storage::with_driver(driver.clone()).expect("storage a");
    let b = Storage::with_driver(driver).expect("storage b");
    let (addr_a, _stop_a) = serve_here(a).await;
    let (addr_b, _stop_b) = serve_here(b.clone()).await;
    load(&[addr_a, addr_b], REQUESTS, CONCURRENCY, 1).await;
    let stored: Option<Counter> = b.get("global").await.expect("read");
    assert_eq!(stored.map(|c| c.count), Some(REQUESTS as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_errors_answer_503_and_the_server_carries_on() {
    let outage = Faulty::new(mp_storage::driver::open("memory://").await.expect("memory"));
    outage.set_down(Some(BackendKind::Connection));
    // No cache: every request reaches the driver.
    let storage = Storage::builder()
        .cache_capacity(0)
        .build(outage.clone())
        .expect("storage");
    let (addr, _stop) = serve_here(storage.clone()).await;

    for json in [false, true] {
        let reply = get(addr, "/", json).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.body, "storage unavailable, try again later\n");
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    outage.set_down(Some(BackendKind::Full));
    let reply = get(addr, "/?user=bob", false).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.header("retry-after"),
        None,
        "a full disk is not retryable"
    );

    outage.set_down(None);
    assert_eq!(get(addr, "/", false).await.text_count(), 1, "back up");

    // Stored data that is not a counter: 500, and the data is left alone.
    storage
        .set("user:mallory", &serde_json::json!("not a counter"))
        .await
        .expect("set");
    let reply = get(addr, "/?user=mallory", true).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(reply.body, "the stored count cannot be read\n");
    let kept: Option<serde_json::Value> = storage.get("user:mallory").await.expect("read");
    assert_eq!(kept, Some(serde_json::json!("not a counter")));
    assert_eq!(get(addr, "/", false).await.text_count(), 2, "still serving");
}

// ------------------------------------------------------------------------------------------
// As processes
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn command_line_help_and_usage_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (status, out) = run_to_exit(&["--help"], &[], dir.path()).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("Usage: counter-server [--storage URL] [--listen ADDR]"));
    assert!(
        out.contains("MP_STORAGE_URL") && out.contains("PORT"),
        "{out}"
    );

    for (args, vars) in [
        (&["--bogus"][..], &[][..]),
        (&["--storage"][..], &[][..]),
        (&["--listen", "nowhere"][..], &[][..]),
        (&[][..], &[("PORT", "http")][..]),
    ] {
        let (status, out) = run_to_exit(args, vars, dir.path()).await;
        assert_eq!(status.code(), Some(2), "{args:?} {vars:?}: {out}");
        assert!(out.contains("--help"), "{out}");
    }

    // A store that cannot be opened: exit 1, a message, and no password in it.
    let (status, out) = run_to_exit(
        &["--storage", "mysql://me:s3cret-pw@127.0.0.1:1/db"],
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot open the storage mysql://me:***@127.0.0.1:1/db"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "the password is printed: {out}");
    let (status, out) = run_to_exit(&[], &[("MP_STORAGE_URL", "nope://x")], dir.path()).await;
    assert_eq!(status.code(), Some(1), "{out}");

    // A port in use: exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let (status, out) = run_to_exit(
        &["--storage", "memory://", "--listen", &port],
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("cannot listen on 127.0.0.1:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_store_is_sqlite_mp_data_db_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&["--listen", "127.0.0.1:0"], &[], dir.path()).await;
    assert!(
        server
            .output()
            .contains("counter-server: storage sqlite:./mp-data.db (sqlite driver)"),
        "{}",
        server.output()
    );
    assert_eq!(get(server.addr, "/", false).await.text_count(), 1);
    server.stop().await;
    assert!(
        dir.path().join("mp-data.db").is_file(),
        "the store is ./mp-data.db"
    );
}

/// The process scenario on one store `url` (fresh or emptied by the caller). `cwd` is where the
/// servers run.
async fn processes_share_one_count(url: &str, cwd: &Path) {
    let started = std::time::Instant::now();
    // Server A from flags, server B from the variables.
    let a = ServerProcess::start(&["--storage", url, "--listen", "127.0.0.1:0"], &[], cwd).await;
    let b = ServerProcess::start(&[], &[("MP_STORAGE_URL", url), ("PORT", "0")], cwd).await;
    for server in [&a, &b] {
        let out = server.output();
        assert!(out.contains("counter-server: storage "), "{out}");
        assert!(
            out.contains(&format!(
                "counter-server: listening on http://{}",
                server.addr
            )),
            "{out}"
        );
    }

    tokio::time::timeout(
        Duration::from_secs(300),
        load(&[a.addr, b.addr], REQUESTS, CONCURRENCY, 1),
    )
    .await
    .expect("the load finishes within 300 s");
    let loaded = started.elapsed();
    let store = Storage::open(url).await.expect("open the store");
    let stored: Option<Counter> = store.get(counter::GLOBAL_SCOPE).await.expect("read");
    assert_eq!(stored.map(|c| c.count), Some(REQUESTS as u64));

    // Restart A: the count survives, and both servers go on from it.
    let out = a.stop().await;
    assert!(out.contains("SIGTERM"), "the shutdown is logged: {out}");
    let a = ServerProcess::start(&["--storage", url, "--listen", "127.0.0.1:0"], &[], cwd).await;
    assert_eq!(
        get(a.addr, "/", true).await.json_count("global"),
        REQUESTS as u64 + 1
    );
    assert_eq!(
        get(b.addr, "/", false).await.text_count(),
        REQUESTS as u64 + 2
    );

    let users = check_user_names(&[a.addr, b.addr]).await;
    let mut expected = users;
    expected.insert(counter::GLOBAL_SCOPE.to_owned());
    let stored: BTreeSet<String> = store.list("").await.expect("list").into_iter().collect();
    assert_eq!(stored, expected, "exactly one scope per accepted name");
    a.stop().await;
    b.stop().await;
    eprintln!(
        "server test on {}: {REQUESTS} requests at concurrency {CONCURRENCY} over 2 processes \
         in {loaded:.2?} (with startup); whole scenario {:.2?}",
        store.driver_name(),
        started.elapsed()
    );
}

/// Every path under `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_processes_share_one_count() {
    let root = tempfile::tempdir().expect("temp dir");
    // The store is two levels down, so that `../../x` from it would still land in `root`.
    let store = root.path().join("a").join("b").join("store");
    let cwd = root.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir cwd");
    let url = format!("file:{}", store.display());
    processes_share_one_count(&url, &cwd).await;

    for path in walk(root.path()) {
        let allowed = path.starts_with(&store)
            || path == root.path().join("a")
            || path == root.path().join("a").join("b")
            || path == cwd;
        assert!(allowed, "{} was created outside the store", path.display());
    }
    assert!(
        std::fs::read_dir(&cwd).expect("cwd").next().is_none(),
        "cwd stays empty"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_processes_share_one_count() {
    let root = tempfile::tempdir().expect("temp dir");
    let cwd = root.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir cwd");
    let db = root.path().join("store").join("counts.db");
    processes_share_one_count(&format!("sqlite:{}", db.display()), &cwd).await;
    assert!(db.is_file(), "the store is one database file");
    assert!(
        std::fs::read_dir(&cwd).expect("cwd").next().is_none(),
        "cwd stays empty"
    );
}

/// The URL of a server store for this test, or `None` to skip (after the printed note).
async fn server_store(var: &str, driver: &str, option: (&str, &str)) -> Option<(String, Storage)> {
    let url = with_option(&server_url(var, driver)?, option.0, option.1);
    let store = match Storage::open(&url).await {
        Ok(store) => store,
        Err(e) if servers_required() => panic!("the {driver} store at {var} cannot be used: {e}"),
        Err(e) => {
            note_skip(driver, &format!("the store at {var} cannot be used: {e}"));
            return None;
        }
    };
    empty(&store).await;
    Some((url, store))
}

async fn empty(store: &Storage) {
    for name in store.list("").await.expect("list the test's scopes") {
        store.remove(&name).await.expect("remove a scope");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_processes_share_one_count() {
    let prefix = format!("mp-test-server-{:016x}:", rand::random::<u64>());
    let Some((url, store)) = server_store("MP_TEST_REDIS_URL", "redis", ("prefix", &prefix)).await
    else {
        return;
    };
    let cwd = tempfile::tempdir().expect("temp dir");
    processes_share_one_count(&url, cwd.path()).await;
    empty(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_processes_share_one_count() {
    let table = format!("mp_test_server_{:016x}", rand::random::<u64>());
    let Some((url, _store)) = server_store("MP_TEST_MYSQL_URL", "mysql", ("table", &table)).await
    else {
        return;
    };
    let _drop = DropTable {
        url: url.clone(),
        table,
    };
    let cwd = tempfile::tempdir().expect("temp dir");
    processes_share_one_count(&url, cwd.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_processes_share_one_count() {
    let table = format!("mp_test_server_{:016x}", rand::random::<u64>());
    let Some((url, _store)) =
        server_store("MP_TEST_POSTGRES_URL", "postgres", ("table", &table)).await
    else {
        return;
    };
    let _drop = DropPostgresTable {
        url: url.clone(),
        table,
    };
    let cwd = tempfile::tempdir().expect("temp dir");
    processes_share_one_count(&url, cwd.path()).await;
}

/// Drops the test's PostgreSQL table when the test ends, a failing one included.
struct DropPostgresTable {
    url: String,
    table: String,
}

impl Drop for DropPostgresTable {
    fn drop(&mut self) {
        mp_storage_tests::postgres_cleanup(
            &self.url,
            format!("DROP TABLE IF EXISTS \"{}\"", self.table),
        );
    }
}

/// Drops the test's MySQL table when the test ends, a failing one included.
struct DropTable {
    url: String,
    table: String,
}

impl Drop for DropTable {
    fn drop(&mut self) {
        mp_storage_tests::mysql_cleanup(
            &self.url,
            format!("DROP TABLE IF EXISTS `{}`", self.table),
        );
    }
}

/// The next `data:` line of an event stream, as a count.
async fn next_count(lines: &mut tokio::io::Lines<tokio::io::BufReader<TcpStream>>) -> u64 {
    let until = std::time::Duration::from_secs(5);
    loop {
        let line = tokio::time::timeout(until, lines.next_line())
            .await
            .expect("an event within 5 s")
            .expect("read")
            .expect("the stream goes on");
        if let Some(data) = line.strip_prefix("data: ") {
            return data.parse::<u64>().expect("a count");
        }
    }
}

/// `GET /events?user=NAME` streams the count as Server-Sent Events: the count now, then each
/// count another request makes; the stream ends when the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_stream_the_count() {
    use tokio::io::{AsyncWriteExt, BufReader};
    let storage = Storage::open("memory://").await.expect("memory");
    let (addr, stop) = serve_here(storage.clone()).await;
    get(addr, "/?user=eve", false).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /events?user=eve HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut lines = BufReader::new(stream).lines();
    assert_eq!(next_count(&mut lines).await, 1);
    get(addr, "/?user=eve", false).await;
    assert_eq!(next_count(&mut lines).await, 2);
    storage
        .set("user:eve", &counter::Counter { count: 40 })
        .await
        .unwrap();
    assert_eq!(next_count(&mut lines).await, 40);
    // Stopping the server ends the stream: the shutdown does not wait for the client.
    let _ = stop.send(());
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = lines.next_line().await {}
    })
    .await;
    assert!(reply.is_ok(), "the event stream outlived the server");
}
