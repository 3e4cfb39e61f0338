//! The `mp-storage` binary, run as an operator runs it, on every driver: the on-disk ones
//! always, the server ones when `MP_TEST_REDIS_URL`, `MP_TEST_MYSQL_URL` and
//! `MP_TEST_POSTGRES_URL` are set (skipped with a note otherwise, failed when
//! `MP_TEST_REQUIRE_SERVERS=1`).
//!
//! The server stores are shared by parallel runs: each test works under a name prefix of its
//! own (table `mp_cli_tests`, Redis prefix `mp-cli-tests:`) and removes its scopes at the end.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mp_storage::driver::{now_ms, Write};
use mp_storage::testkit::server_url;
use mp_storage::{RawScope, Storage};

/// A store the tests run the binary against.
struct Store {
    driver: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

fn file_store() -> Store {
    let dir = tempfile::tempdir().expect("a temporary directory");
    Store {
        driver: "file",
        url: format!("file:{}?fsync=false", dir.path().join("scopes").display()),
        _dir: Some(dir),
    }
}

fn sqlite_store() -> Store {
    let dir = tempfile::tempdir().expect("a temporary directory");
    Store {
        driver: "sqlite",
        url: format!("sqlite:{}", dir.path().join("scopes.db").display()),
        _dir: Some(dir),
    }
}

fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

fn redis_store() -> Option<Store> {
    let url = server_url("MP_TEST_REDIS_URL", "redis")?;
    Some(Store {
        driver: "redis",
        url: with_option(&url, "prefix=mp-cli-tests:"),
        _dir: None,
    })
}

fn mysql_store() -> Option<Store> {
    let url = server_url("MP_TEST_MYSQL_URL", "mysql")?;
    Some(Store {
        driver: "mysql",
        url: with_option(&url, "table=mp_cli_tests"),
        _dir: None,
    })
}

fn postgres_store() -> Option<Store> {
    let url = server_url("MP_TEST_POSTGRES_URL", "postgres")?;
    Some(Store {
        driver: "postgres",
        url: with_option(&url, "table=mp_cli_tests"),
        _dir: None,
    })
}

/// Every store this run can reach, in the order of the round trip.
fn stores() -> Vec<Store> {
    let mut all = vec![file_store(), sqlite_store()];
    if cfg!(feature = "redis") {
        all.extend(redis_store());
    }
    if cfg!(feature = "mysql") {
        all.extend(mysql_store());
    }
    if cfg!(feature = "postgres") {
        all.extend(postgres_store());
    }
    all
}

/// A name prefix no other test or run uses.
fn run_prefix(tag: &str) -> String {
    format!(
        "cli-{tag}-{}-{:x}/",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Runs the binary with `args` (and `stdin` piped in), without MP_STORAGE_URL unless given.
fn run(args: &[&str], stdin: &str) -> Output {
    run_env(args, stdin, None)
}

fn run_env(args: &[&str], stdin: &str, env_url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mp-storage"));
    cmd.args(args)
        .env_remove("MP_STORAGE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = env_url {
        cmd.env("MP_STORAGE_URL", url);
    }
    let mut child = cmd.spawn().expect("run mp-storage");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        // The tool may stop reading early (a bad line): a broken pipe is expected then.
        let _ = input.write_all(stdin.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for mp-storage");
    writer.join().expect("stdin writer");
    out
}

/// Runs `args` on `url` and expects exit code `code`; returns stdout.
fn expect(url: &str, args: &[&str], stdin: &str, code: i32) -> String {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let out = run(&all, stdin);
    assert_eq!(
        out.status.code(),
        Some(code),
        "mp-storage {args:?} on {url}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn stderr_of(url: &str, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let out = run(&all, stdin);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Removes every scope under `prefix` (the server stores are shared).
async fn clean(url: &str, prefix: &str) {
    let st = Storage::open(url).await.expect("open for cleaning");
    for name in st.list(prefix).await.expect("list for cleaning") {
        st.remove(&name).await.expect("remove");
    }
}

/// Names an operator would not expect: unicode, quotes, slashes, trailing spaces, case and
/// normalization look-alikes, control characters, JSON and SQL syntax.
fn hostile_names(prefix: &str) -> Vec<String> {
    [
        "alice",
        "Alice",
        "alice ",
        "alice  ",
        " alice",
        "caf\u{e9}",
        "cafe\u{301}",
        "\u{1F600} emoji",
        "quote\"d",
        "back\\slash",
        "a/b/../c",
        "/leading",
        "tab\there",
        "new\nline",
        "{\"json\": 1}",
        "'; DROP TABLE x; --",
        "*?[glob]",
        "percent%2Fenc",
        "\u{202e}rtl",
    ]
    .iter()
    .map(|n| format!("{prefix}{n}"))
    .collect()
}

/// Writes the hostile names with values, schema versions and expiries that must survive.
async fn fill(url: &str, prefix: &str) -> Vec<String> {
    let st = Storage::open(url).await.expect("open to fill");
    let at = now_ms() + 3_600_000 + 123;
    let names = hostile_names(prefix);
    for (i, name) in names.iter().enumerate() {
        let json = match i % 4 {
            0 => format!("{{\"i\":{i},\"big\":123456789012345678901234567890,\"f\":1.50}}"),
            1 => format!("[{i}, \"x\\ny\", null, {{}}]"),
            2 => "\"caf\u{e9} \\u00e9\"".to_owned(),
            _ => i.to_string(),
        };
        let raw = RawScope::new(json, (i % 3) as u32)
            .unwrap()
            .with_expires_at((i % 2 == 0).then_some(at + i as u64));
        st.set_raw(name, &raw).await.expect("fill");
    }
    names
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_every_driver() {
    for store in stores() {
        let url = store.url.as_str();
        let p = run_prefix("each");
        let name = format!("{p}user:\u{e9} \"x\"/ ");
        let name_json = serde_json::to_string(&name).unwrap();

        // set, get (indented), list (JSON strings).
        expect(
            url,
            &[
                "set",
                &name,
                "{\"n\": 123456789012345678901234567890, \"l\": []}",
            ],
            "",
            0,
        );
        assert_eq!(
            expect(url, &["get", &name], "", 0),
            "{\n  \"n\": 123456789012345678901234567890,\n  \"l\": []\n}\n",
            "{}",
            store.driver
        );
        expect(url, &["set", &format!("{p}other"), "7"], "", 0);
        assert_eq!(
            expect(url, &["list", &p], "", 0),
            format!(
                "{}\n{name_json}\n",
                serde_json::to_string(&format!("{p}other")).unwrap()
            )
        );
        // Not found: 1. Bad JSON: 2, and nothing written.
        expect(url, &["get", &format!("{p}absent")], "", 1);
        expect(url, &["rm", &format!("{p}absent")], "", 1);
        expect(url, &["set", &format!("{p}bad"), "{\"n\": "], "", 2);
        expect(url, &["get", &format!("{p}bad")], "", 1);
        expect(url, &["set", "", "1"], "", 2);

        // set keeps the schema version and the expiry of the scope.
        let st = Storage::open(url).await.unwrap();
        let at = now_ms() + 7_200_000;
        st.set_raw(
            &format!("{p}other"),
            &RawScope::new("1", 5).unwrap().with_expires_at(Some(at)),
        )
        .await
        .unwrap();
        expect(url, &["set", &format!("{p}other"), "2"], "", 0);
        let raw = st.get_raw(format!("{p}other")).await.unwrap().unwrap();
        assert_eq!(
            (raw.json(), raw.schema(), raw.expires_at()),
            ("2", 5, Some(at)),
            "{}",
            store.driver
        );

        // export, then import into an emptied prefix: the same lines.
        let export = expect(url, &["export", &p], "", 0);
        assert_eq!(export.lines().count(), 2, "{export}");
        assert!(export.contains(&format!("\"expires_at\":{at}")), "{export}");
        expect(url, &["rm", &name], "", 0);
        expect(url, &["rm", &format!("{p}other")], "", 0);
        assert_eq!(expect(url, &["list", &p], "", 0), "");
        expect(url, &["import"], &export, 0);
        assert_eq!(
            expect(url, &["export", &p], "", 0),
            export,
            "{}",
            store.driver
        );

        // import --if-absent leaves present scopes alone.
        let changed = export.replace("123456789012345678901234567890", "1");
        let (code, _, err) = stderr_of(url, &["import", "--if-absent"], &changed);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("2 present already"), "{err}");
        assert_eq!(expect(url, &["export", &p], "", 0), export);

        // copy to a store of another driver and back.
        let other = if store.driver == "sqlite" {
            file_store()
        } else {
            sqlite_store()
        };
        expect(url, &["copy", "--to", &other.url, &p], "", 0);
        assert_eq!(expect(&other.url, &["export", &p], "", 0), export);
        expect(url, &["rm", &name], "", 0);
        expect(&other.url, &["copy", "--to", url, "--if-absent", &p], "", 0);
        assert_eq!(
            expect(url, &["export", &p], "", 0),
            export,
            "{}",
            store.driver
        );

        // stats.
        let stats: serde_json::Value =
            serde_json::from_str(&expect(url, &["stats", &p], "", 0)).unwrap();
        assert_eq!(stats["driver"], store.driver);
        assert_eq!(stats["scopes"], 2);
        assert_eq!(stats["expiring"], 1);
        assert_eq!(stats["schemas"]["5"], 1);
        assert_eq!(stats["unreadable"], 0);

        // The URL from the environment works as --url does.
        let out = run_env(&["list", &p], "", Some(url));
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(out.stdout.len(), expect(url, &["list", &p], "", 0).len());
        clean(url, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_expiry_survive_file_sqlite_redis_mysql_postgres() {
    let chain = stores();
    let p = run_prefix("trip");
    let names = fill(&chain[0].url, &p).await;
    let first = expect(&chain[0].url, &["export", &p], "", 0);
    assert_eq!(first.lines().count(), names.len());
    // Every name, byte for byte, in the listing.
    let listed: Vec<String> = expect(&chain[0].url, &["list", &p], "", 0)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    let mut drivers = vec![chain[0].driver];
    for (i, pair) in chain.windows(2).enumerate() {
        let (from, to) = (&pair[0], &pair[1]);
        // Every other hop through a pipe, the others in one process.
        if i % 2 == 0 {
            let export = expect(&from.url, &["export", &p], "", 0);
            expect(&to.url, &["import"], &export, 0);
        } else {
            expect(&from.url, &["copy", "--to", &to.url, &p], "", 0);
        }
        drivers.push(to.driver);
        assert_eq!(
            expect(&to.url, &["export", &p], "", 0),
            first,
            "after {}",
            drivers.join(" → ")
        );
    }
    if mp_storage::testkit::servers_required() {
        assert_eq!(drivers, ["file", "sqlite", "redis", "mysql", "postgres"]);
    }
    // Values, schema versions and expiries as the library reads them at the end.
    let last = Storage::open(&chain[chain.len() - 1].url).await.unwrap();
    let src = Storage::open(&chain[0].url).await.unwrap();
    for name in &names {
        assert_eq!(
            last.get_raw(name).await.unwrap(),
            src.get_raw(name).await.unwrap(),
            "{name:?} through {}",
            drivers.join(" → ")
        );
    }
    for store in &chain {
        clean(&store.url, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_stops_the_import_with_its_number() {
    for store in stores() {
        let url = store.url.as_str();
        let p = run_prefix("bad");
        let good = |n: &str, v: &str| {
            format!(
                "{{\"name\":{},\"value\":{v},\"schema\":0,\"expires_at\":null}}\n",
                serde_json::to_string(&format!("{p}{n}")).unwrap()
            )
        };
        for (bad, why) in [
            ("{\"name\": \"x\", \"value\": {\"a\": }", "expected value"),
            (&*format!("{{\"name\": \"{p}x\"}}"), "missing field `value`"),
            (
                &*format!("{{\"name\": \"{p}x\", \"value\": 1, \"extra\": 1}}"),
                "unknown field",
            ),
            ("{\"name\": \"\", \"value\": 1}", "the name is empty"),
            ("[1, 2]", "invalid type"),
        ] {
            let input = format!(
                "{}\n{}{bad}\n{}{}",
                good("one", "1"),
                good("two", "[2]"),
                good("three", "3"),
                good("four", "4")
            );
            let (code, _, err) = stderr_of(url, &["import"], &input);
            assert_eq!(code, Some(2), "{bad}: {err}");
            assert!(err.contains("line 4:") && err.contains(why), "{bad}: {err}");
            assert!(err.contains("imported 2 scope(s)"), "{err}");
            let listed = expect(url, &["list", &p], "", 0);
            assert_eq!(
                listed,
                format!(
                    "{}\n{}\n",
                    serde_json::to_string(&format!("{p}one")).unwrap(),
                    serde_json::to_string(&format!("{p}two")).unwrap()
                ),
                "{} after {bad}",
                store.driver
            );
            clean(url, &p).await;
        }
        // A name twice: the later line wins.
        let input = format!("{}{}{}", good("dup", "1"), good("x", "0"), good("dup", "2"));
        expect(url, &["import"], &input, 0);
        assert_eq!(expect(url, &["get", &format!("{p}dup")], "", 0), "2\n");
        clean(url, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_named_and_the_export_goes_on() {
    for store in stores() {
        let url = store.url.as_str();
        let p = run_prefix("corrupt");
        let st = Storage::open(url).await.unwrap();
        for n in ["a", "c"] {
            st.set(format!("{p}{n}"), &serde_json::json!({ "n": n }))
                .await
                .unwrap();
        }
        // Data that is not JSON, written below the engine.
        let driver = mp_storage::driver::open(url).await.unwrap();
        driver
            .put(
                &format!("{p}b \"broken\""),
                Write::new(0, b"{not json", 7, 1),
            )
            .await
            .unwrap();
        let (code, out, err) = stderr_of(url, &["export", &p], "");
        assert_eq!(code, Some(3), "{}: {err}", store.driver);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.contains(&format!("{p}a")) && out.contains(&format!("{p}c")),
            "{out}"
        );
        assert!(err.contains(&format!("{p}b \\\"broken\\\"")), "{err}");
        assert!(err.contains("1 record(s) could not be read"), "{err}");
        // copy and stats go on past it too, and say so.
        let other = sqlite_store();
        let (code, _, err) = stderr_of(url, &["copy", "--to", &other.url, &p], "");
        assert_eq!(code, Some(3), "{err}");
        assert_eq!(expect(&other.url, &["list", &p], "", 0).lines().count(), 2);
        let (code, out, _) = stderr_of(url, &["stats", &p], "");
        assert_eq!(code, Some(3));
        let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (stats["scopes"].as_u64(), stats["unreadable"].as_u64()),
            (Some(2), Some(1))
        );
        // get names it too; rm removes it.
        let (code, _, err) = stderr_of(url, &["get", &format!("{p}b \"broken\"")], "");
        assert_eq!(code, Some(3), "{err}");
        assert!(err.contains("broken"), "{err}");
        expect(url, &["rm", &format!("{p}b \"broken\"")], "", 0);
        expect(url, &["export", &p], "", 0);
        clean(url, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_scope_is_not_exported() {
    for store in stores() {
        let url = store.url.as_str();
        let p = run_prefix("expired");
        let st = Storage::open(url).await.unwrap();
        let soon = RawScope::new("1", 0)
            .unwrap()
            .with_expires_at(Some(now_ms() + 300));
        st.set_raw(format!("{p}soon"), &soon).await.unwrap();
        st.set_json(format!("{p}kept"), "2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let export = expect(url, &["export", &p], "", 0);
        assert_eq!(export.lines().count(), 1, "{}: {export}", store.driver);
        assert!(export.contains("kept"));
        // An import of a line whose expiry has passed leaves the scope absent.
        let line = format!(
            "{{\"name\":{},\"value\":1,\"schema\":0,\"expires_at\":{}}}\n",
            serde_json::to_string(&format!("{p}past")).unwrap(),
            now_ms() - 1000
        );
        expect(url, &["import"], &line, 0);
        expect(url, &["get", &format!("{p}past")], "", 1);
        clean(url, &p).await;
    }
}

#[test]
fn urls_and_arguments_are_checked_and_passwords_stay_hidden() {
    // No store given.
    let out = run(&["list"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MP_STORAGE_URL"));
    // A scheme nobody takes, a malformed URL: bad input.
    for url in ["etcd://h/", "no scheme"] {
        let out = run(&["--url", url, "list"], "");
        assert_eq!(out.status.code(), Some(2), "{url}");
    }
    // Unknown command, missing argument: bad input.
    assert_eq!(
        run(&["--url", "memory://", "frobnicate"], "").status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["--url", "memory://", "get"], "").status.code(),
        Some(2)
    );
    assert_eq!(run(&["--help"], "").status.code(), Some(0));
    // A server that is not there: backend error, password never printed.
    for url in [
        "redis://user:hunter2@127.0.0.1:1/",
        "mysql://user:hunter2@127.0.0.1:1/db",
        "postgres://user:hunter2@127.0.0.1:1/db",
    ] {
        let out = run(&["--url", url, "list"], "");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("hunter2"), "{all}");
        assert!(
            matches!(out.status.code(), Some(2 | 3)),
            "{url}: {:?} {all}",
            out.status
        );
        let out = run_env(&["list"], "", Some(url));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
        let help = run_env(&["--help"], "", Some(url));
        assert!(!String::from_utf8_lossy(&help.stdout).contains("hunter2"));
        let copy = run(&["--url", "memory://", "copy", "--to", url], "");
        assert!(!String::from_utf8_lossy(&copy.stderr).contains("hunter2"));
        // 2 when this build has not the driver.
        assert!(matches!(copy.status.code(), Some(2 | 3)));
    }
}

/// `watch NAME`: the current value first, then each change another process commits, one JSON
/// line each, until `--count` lines; on every driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_change_of_another_process() {
    for store in stores() {
        let name = format!("{}w \"x\"/", run_prefix("watch"));
        watch_on(&store, &name).await;
    }
}

async fn watch_on(store: &Store, name: &str) {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mp-storage"))
        .args(["--url", &store.url, "watch", name, "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mp-storage watch");
    let stdout = child.stdout.take().expect("the child's stdout");
    // Killed if the test fails before it ends by itself.
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut child = KillOnDrop(Some(child));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("{}: no line from mp-storage watch for {what}", store.driver)
            })
    };
    let parse = |l: String| -> serde_json::Value { serde_json::from_str(&l).expect("a JSON line") };
    let st = Storage::open(&store.url).await.expect("open the store");
    let mut lines = vec![parse(next("the first value"))];
    // Each change after the line of the one before, so that none is coalesced with the next.
    for n in 1..=2u64 {
        st.set(name, &n).await.expect("set");
        lines.push(parse(next("a change")));
    }
    assert!(st.remove(name).await.expect("remove"));
    lines.push(parse(next("the removal")));
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"name": name, "exists": false, "value": null}),
            serde_json::json!({"name": name, "exists": true, "value": 1}),
            serde_json::json!({"name": name, "exists": true, "value": 2}),
            serde_json::json!({"name": name, "exists": false, "value": null}),
        ],
        "{}",
        store.driver
    );
    let child = child.0.take().expect("the child");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("the exit");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
