use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::*;
use crate::driver::RECENT_TOKENS;
use crate::Storage;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("mp-file-unit-{:016x}", rand::random::<u64>()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn driver(dir: &TempDir) -> FileDriver {
    FileDriver::open(&dir.0, FileOptions::new().fsync(false))
        .await
        .unwrap()
}

fn w(data: &[u8], token: u64) -> Write<'_> {
    Write {
        schema: 1,
        data,
        token,
        initial_version: 1000,
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn driver_contract() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    assert_eq!(d.load("k").await.unwrap(), None);
    assert_eq!(
        d.cas("k", Some(5), w(b"1", 1)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert_eq!(
        d.cas("k", None, w(b"1", 1)).await.unwrap(),
        CasOutcome::Committed(1000)
    );
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!((r.version, r.schema, &r.data[..]), (1000, 1, &b"1"[..]));
    assert_eq!(r.tokens, vec![1]);
    match d.cas("k", None, w(b"2", 2)).await.unwrap() {
        CasOutcome::Conflict(Some(cur)) => assert_eq!(cur, r),
        other => panic!("{other:?}"),
    }
    match d.cas("k", Some(999), w(b"2", 2)).await.unwrap() {
        CasOutcome::Conflict(Some(cur)) => assert_eq!(cur.version, 1000),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.cas("k", Some(1000), w(b"2", 2)).await.unwrap(),
        CasOutcome::Committed(1001)
    );
    assert_eq!(d.put("k", w(b"3", 3)).await.unwrap(), 1002);
    assert_eq!(d.put("new", w(b"3", 3)).await.unwrap(), 1000);
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!(r.tokens, vec![1, 2, 3]);
    for t in 4..40 {
        d.put("k", w(b"x", t)).await.unwrap();
    }
    let r = d.load("k").await.unwrap().unwrap();
    assert_eq!(r.tokens.len(), RECENT_TOKENS);
    assert_eq!(r.tokens.last(), Some(&39));
    assert!(d.delete("k").await.unwrap());
    assert!(!d.delete("k").await.unwrap());
    assert_eq!(d.load("k").await.unwrap(), None);
    assert_eq!(d.list("").await.unwrap(), vec!["new".to_owned()]);
    // No temp file is left behind.
    let records: Vec<String> = file_names(d.dir())
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(records, vec!["new.json"]);
}

#[tokio::test]
async fn tricky_keys_stay_apart_and_list_exactly() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    let long_a = "ü".repeat(1000);
    let long_b = format!("{}x", "ü".repeat(999));
    let keys = [
        "a",
        "A",
        "a ",
        "a  ",
        "../x",
        "..",
        ".",
        "/abs",
        "a/b",
        "a\\b",
        "%2e%2e",
        "con",
        "CON",
        "é",
        "e\u{301}",
        "user:alice",
        long_a.as_str(),
        long_b.as_str(),
    ];
    for (i, k) in keys.iter().enumerate() {
        d.put(k, w(i.to_string().as_bytes(), 1)).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let r = d.load(k).await.unwrap().unwrap();
        assert_eq!(r.data, i.to_string().as_bytes(), "key {k:?}");
    }
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(d.list("").await.unwrap(), want);
    assert_eq!(
        d.list("a").await.unwrap(),
        vec!["a", "a ", "a  ", "a/b", "a\\b"]
    );
    assert_eq!(
        d.list("ü").await.unwrap(),
        vec![long_b.clone(), long_a.clone()]
    );
    // Everything stays inside the directory, as one file each (case-insensitively distinct).
    let names: Vec<String> = file_names(d.dir())
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(names.len(), keys.len());
    let lower: std::collections::BTreeSet<String> =
        names.iter().map(|n| n.to_lowercase()).collect();
    assert_eq!(lower.len(), names.len());
    for n in &names {
        assert!(n.len() <= 255 && !n.starts_with('.'), "{n}");
    }
    assert!(!dir.0.join("..").join("x.json").exists());
}

#[tokio::test]
async fn record_reads_with_cat() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    let st = Storage::with_driver(Arc::new(d.clone())).unwrap();
    st.set("user:Alice", &serde_json::json!({"count": 3}))
        .await
        .unwrap();
    let path = d.record_path("user:Alice");
    assert!(path.ends_with("user%3a%41lice.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["key"], "user:Alice");
    assert_eq!(lines.next(), Some(r#"{"count":3}"#));
    assert_eq!(lines.next(), None);
}

#[tokio::test]
async fn corrupt_records_are_reported_and_never_overwritten() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    d.put("k", w(b"[1]", 1)).await.unwrap();
    let path = d.record_path("k");
    let good = std::fs::read(&path).unwrap();
    let torn = &good[..good.len() - 3];
    std::fs::write(&path, torn).unwrap();
    let is_corrupt = |e: Error| match e {
        Error::Corrupt {
            scope, location, ..
        } => scope == "k" && location == path.display().to_string(),
        _ => false,
    };
    assert!(is_corrupt(d.load("k").await.unwrap_err()));
    assert!(is_corrupt(
        d.cas("k", Some(1000), w(b"2", 2)).await.unwrap_err()
    ));
    assert!(is_corrupt(d.cas("k", None, w(b"2", 2)).await.unwrap_err()));
    assert!(is_corrupt(d.put("k", w(b"2", 2)).await.unwrap_err()));
    assert_eq!(std::fs::read(&path).unwrap(), torn);
    // Through the engine too.
    let st = Storage::with_driver(Arc::new(d.clone())).unwrap();
    let e = st
        .scoped("k", |v: &mut serde_json::Value| *v = 5.into())
        .await
        .unwrap_err();
    assert!(is_corrupt(e));
    let e = st.set("k", &serde_json::json!(1)).await.unwrap_err();
    assert!(is_corrupt(e));
    assert_eq!(std::fs::read(&path).unwrap(), torn);
    // It is still listed (its name says its key), and remove is the way out.
    assert_eq!(st.list("").await.unwrap(), vec!["k".to_owned()]);
    assert!(st.remove("k").await.unwrap());
    assert_eq!(st.get::<serde_json::Value>("k").await.unwrap(), None);

    // A file that holds another key is corrupt for this one.
    d.put("a", w(b"1", 1)).await.unwrap();
    std::fs::copy(d.record_path("a"), d.record_path("b")).unwrap();
    match d.load("b").await.unwrap_err() {
        Error::Corrupt { detail, .. } => assert!(detail.contains("\"a\""), "{detail}"),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn hashed_names_list_exact_keys() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    let key = format!("{}:{}", "Prefix".repeat(20), "ß".repeat(300));
    d.put(&key, w(b"1", 1)).await.unwrap();
    let path = d.record_path(&key);
    let file_name = path.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(file_name.len() <= 255);
    assert!(file_name.contains("%h"));
    assert_eq!(key_of_record_file_name(&file_name), None);
    assert_eq!(d.list("Prefix").await.unwrap(), vec![key.clone()]);
    assert_eq!(d.list("x").await.unwrap(), Vec::<String>::new());
    // A hashed file whose header is damaged is skipped by list, an error for load.
    std::fs::write(&path, b"garbage").unwrap();
    assert_eq!(d.list("").await.unwrap(), Vec::<String>::new());
    assert!(matches!(d.load(&key).await, Err(Error::Corrupt { .. })));
}

#[tokio::test]
async fn stray_files_are_ignored_and_cleaned() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    d.put("k", w(b"1", 1)).await.unwrap();
    let old = SystemTime::now() - Duration::from_secs(120);
    let touch = |name: &str, when: SystemTime| {
        let f = std::fs::File::create(dir.0.join(name)).unwrap();
        f.set_modified(when).unwrap();
    };
    touch("k.0123456789abcdef.tmp", old);
    touch("k.fedcba9876543210.tmp", SystemTime::now());
    touch("gone.lock", old);
    touch("k.lock", old);
    touch("fresh.lock", SystemTime::now());
    touch("README", old);
    touch("notes.tmp", old);
    touch("Notes.lock", old);
    touch("Upper.json", old);
    touch("%61.json", old);
    assert_eq!(d.list("").await.unwrap(), vec!["k".to_owned()]);
    assert_eq!(d.load("k").await.unwrap().unwrap().data, b"1");

    let d = driver(&dir).await;
    if !cfg!(unix) {
        return; // lock files are never removed there
    }
    assert_eq!(
        file_names(d.dir()),
        vec![
            "%61.json",
            "Notes.lock",
            "README",
            "Upper.json",
            "fresh.lock",
            "k.fedcba9876543210.tmp",
            "k.json",
            "k.lock",
            "notes.tmp",
        ]
    );
    assert_eq!(d.list("").await.unwrap(), vec!["k".to_owned()]);
}

#[cfg(unix)]
#[tokio::test]
async fn lock_files_go_with_their_scope() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    d.put("k", w(b"1", 1)).await.unwrap();
    assert!(dir.0.join("k.lock").exists());
    assert!(d.delete("k").await.unwrap());
    assert!(!dir.0.join("k.lock").exists());
    assert_eq!(
        d.cas("k", Some(1), w(b"1", 1)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert_eq!(file_names(d.dir()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_with_deletes_elsewhere() {
    let dir = TempDir::new();
    // Two drivers on one directory act like two processes.
    let a = Storage::with_driver(Arc::new(driver(&dir).await)).unwrap();
    let b = Storage::with_driver(Arc::new(driver(&dir).await)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                seen.push(
                    st.scoped("n", |n: &mut u64| {
                        *n += 1;
                        *n
                    })
                    .await
                    .unwrap(),
                );
                // Churn on another scope exercises lock file removal.
                st.scoped("churn", |n: &mut u64| *n += 1).await.unwrap();
                st.remove("churn").await.unwrap();
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    assert_eq!(a.get::<u64>("n").await.unwrap(), Some(400));
}

#[tokio::test]
async fn durable_mode_works() {
    let dir = TempDir::new();
    let st = Storage::open(&format!("file:{}", dir.0.display()))
        .await
        .unwrap();
    assert_eq!(st.driver_name(), "file");
    for _ in 0..3 {
        st.scoped("n", |n: &mut u64| *n += 1).await.unwrap();
    }
    assert_eq!(st.get::<u64>("n").await.unwrap(), Some(3));
    assert!(st.remove("n").await.unwrap());
}

#[test]
fn url_bodies() {
    let ok = |body: &str| dir_of("file:x", body).unwrap();
    assert_eq!(ok("./mp-data"), PathBuf::from("./mp-data"));
    assert_eq!(ok("rel"), PathBuf::from("rel"));
    assert_eq!(ok("/abs/dir"), PathBuf::from("/abs/dir"));
    assert_eq!(ok("///abs/dir"), PathBuf::from("/abs/dir"));
    assert_eq!(ok("//localhost/abs"), PathBuf::from("/abs"));
    assert_eq!(ok("//LocalHost/abs"), PathBuf::from("/abs"));
    assert_eq!(ok("/my%20dir"), PathBuf::from("/my dir"));
    for bad in ["", "//", "//host/abs", "//./x", "/a%00b", "/%ff"] {
        assert!(
            matches!(dir_of("file:x", bad), Err(Error::InvalidUrl { .. })),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn url_options() {
    let dir = TempDir::new();
    let base = format!("file://{}", dir.0.display());
    let open = |url: String| async move { crate::url::open_driver(&url).await };
    assert!(open(base.clone()).await.is_ok());
    assert!(open(format!("{base}?fsync=false")).await.is_ok());
    for bad in ["?fsync=maybe", "?sync=false", "?fsync=true&x=1"] {
        match open(format!("{base}{bad}")).await {
            Err(Error::InvalidUrl { .. }) => {}
            Err(e) => panic!("{bad}: wrong error {e}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
    match open("file://example.com/x".to_owned()).await {
        Err(Error::InvalidUrl { reason, .. }) => assert!(reason.contains("host"), "{reason}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a host was accepted"),
    }
    assert!(matches!(
        open("file:".to_owned()).await,
        Err(Error::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn a_file_in_the_way_is_a_backend_error() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let f = dir.0.join("plain-file");
    std::fs::write(&f, b"x").unwrap();
    match FileDriver::open(&f, FileOptions::new()).await {
        Err(Error::Backend { driver: "file", .. }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a file as a directory"),
    }
}
