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
    Write::new(1, data, token, 1000)
}

fn rev(version: u64, token: u64) -> Option<Revision> {
    Some(Revision { version, token })
}

/// The files of `dir`, but the lock directory.
fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != name::LOCK_DIR)
        .collect();
    v.sort();
    v
}

/// The lock file (in the lock directory) of `key`'s stripe.
fn stripe(key: &str) -> String {
    name::stripe_file_name(name::stripe_of(&name::stem(key)))
}

#[tokio::test]
async fn driver_contract() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    assert_eq!(d.load("k").await.unwrap(), None);
    assert_eq!(
        d.cas("k", rev(5, 0), w(b"1", 1)).await.unwrap(),
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
    match d.cas("k", rev(999, 1), w(b"2", 2)).await.unwrap() {
        CasOutcome::Conflict(Some(cur)) => assert_eq!(cur.version, 1000),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.cas("k", rev(1000, 1), w(b"2", 2)).await.unwrap(),
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
    // No temp file is left behind, and no lock file beside the records.
    assert_eq!(file_names(d.dir()), vec!["new.json"]);
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
        d.cas("k", rev(1000, 1), w(b"2", 2)).await.unwrap_err()
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

    // The per-scope lock files of 0.1 go, fresh or not; the user's files stay.
    let d = driver(&dir).await;
    assert_eq!(
        file_names(d.dir()),
        vec![
            "%61.json",
            "Notes.lock",
            "README",
            "Upper.json",
            "k.fedcba9876543210.tmp",
            "k.json",
            "notes.tmp",
        ]
    );
    assert_eq!(d.list("").await.unwrap(), vec!["k".to_owned()]);
}

#[tokio::test]
async fn lock_files_are_a_fixed_set() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    for i in 0..1000 {
        d.put(&format!("k{i}"), w(b"1", 1)).await.unwrap();
    }
    for i in (0..1000).step_by(2) {
        assert!(d.delete(&format!("k{i}")).await.unwrap());
    }
    // One file per scope, and the stripes.
    assert_eq!(file_names(d.dir()).len(), 500);
    assert!(file_names(d.dir()).iter().all(|n| n.ends_with(".json")));
    let locks = file_names(&dir.0.join(name::LOCK_DIR));
    assert!(
        (200..=usize::from(name::STRIPES)).contains(&locks.len()),
        "{locks:?}"
    );
    assert!(locks.iter().all(|n| n.ends_with(".lock") && n.len() == 7));
    assert!(d.delete("k1").await.unwrap());
    assert_eq!(
        d.cas("k1", rev(1, 0), w(b"1", 1)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert!(!dir.0.join("k1.json").exists());
}

/// Scopes that share a stripe take turns, within a process and across drivers, and a
/// several-scope commit over two scopes of one stripe takes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scopes_of_one_stripe_share_it_safely() {
    let dir = TempDir::new();
    let mut same = Vec::new();
    let want = name::stripe_of(&name::stem("s0"));
    for i in 0.. {
        let key = format!("s{i}");
        if name::stripe_of(&name::stem(&key)) == want {
            same.push(key);
            if same.len() == 3 {
                break;
            }
        }
    }
    let a = Storage::with_driver(Arc::new(driver(&dir).await)).unwrap();
    let b = Storage::with_driver(Arc::new(driver(&dir).await)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let st = if i % 2 == 0 { a.clone() } else { b.clone() };
        let same = same.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                st.scoped(&same[i % 3], |n: &mut u64| *n += 1)
                    .await
                    .unwrap();
                let pair = [same[i % 3].as_str(), same[(i + 1) % 3].as_str()];
                st.scoped_many(&pair, |n: &mut [u64]| n[1] += 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<Option<u64>> = a.get_many(&same).await.unwrap();
    assert_eq!(all.iter().flatten().sum::<u64>(), 360);
    assert_eq!(leftovers(&dir.0), Vec::<String>::new());
    assert_eq!(marked(&dir.0), Vec::<String>::new());
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
                // Churn on another scope: creates and removals beside the counted updates.
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

#[tokio::test]
async fn urls_open_through_the_table() {
    let dir = TempDir::new();
    let base = format!("file://{}", dir.0.display());
    let open = |url: String| async move { crate::driver::open(&url).await };
    assert_eq!(open(base.clone()).await.unwrap().name(), "file");
    assert!(open(format!("{base}?fsync=false")).await.is_ok());
    for bad in ["?fsync=maybe", "?sync=false"] {
        match open(format!("{base}{bad}")).await {
            Err(Error::InvalidUrl { .. }) => {}
            Err(e) => panic!("{bad}: wrong error {e}"),
            Ok(_) => panic!("{bad} accepted"),
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Several scopes and their journal

use journal::{OwnedOp, Until};

fn wop(key: &str, expected: Option<Revision>, data: &[u8], token: u64) -> OwnedOp {
    OwnedOp {
        key: key.to_owned(),
        expected,
        write: Some(owned(w(data, token))),
    }
}

async fn revision(d: &FileDriver, key: &str) -> Option<Revision> {
    d.load(key).await.unwrap().map(|r| r.revision())
}

/// The files of the directory other than records: temp files, intent records.
fn leftovers(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect()
}

/// The stripe lock files that are not empty (that hold a commit's marker).
fn marked(dir: &Path) -> Vec<String> {
    let locks = dir.join(name::LOCK_DIR);
    file_names(&locks)
        .into_iter()
        .filter(|n| n.ends_with(".lock"))
        .filter(|n| std::fs::metadata(locks.join(n)).unwrap().len() > 0)
        .collect()
}

/// The ids of the commits whose temp files are in `dir`.
fn temp_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = file_names(dir)
        .iter()
        .filter_map(|n| name::temp_parts(n).map(|(_, id)| id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `a` and `b` stored (at data `a0`, `b0`), `c` absent: the ops of a commit that writes all
/// three, crashed at `until`. Returns the driver and the revisions before.
async fn crashed(dir: &TempDir, until: Until) -> (FileDriver, [Option<Revision>; 3]) {
    let d = driver(dir).await;
    d.put("a", w(b"a0", 1)).await.unwrap();
    d.put("b", w(b"b0", 2)).await.unwrap();
    let before = [revision(&d, "a").await, revision(&d, "b").await, None];
    let ops = [
        wop("a", before[0], b"a1", 11),
        wop("b", before[1], b"b1", 12),
        wop("c", None, b"c1", 13),
    ];
    d.store.commit_until(&ops, until).unwrap();
    (d, before)
}

/// Every scope of the crashed commit holds its new value, and no journal is left.
async fn assert_rolled_forward(d: &FileDriver, before: [Option<Revision>; 3]) {
    for (key, data, token, was) in [
        ("a", b"a1", 11, before[0]),
        ("b", b"b1", 12, before[1]),
        ("c", b"c1", 13, before[2]),
    ] {
        let r = d.load(key).await.unwrap().unwrap();
        assert_eq!(
            (r.data.as_slice(), r.last_token()),
            (&data[..], token),
            "{key}"
        );
        assert_eq!(r.version, was.map_or(1000, |w| w.version + 1), "{key}");
    }
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
    assert_eq!(marked(d.dir()), Vec::<String>::new());
}

/// No scope of the crashed commit changed, and no journal is left.
async fn assert_rolled_back(d: &FileDriver, before: [Option<Revision>; 3]) {
    assert_eq!(d.load("a").await.unwrap().unwrap().data, b"a0");
    assert_eq!(d.load("b").await.unwrap().unwrap().data, b"b0");
    assert_eq!(revision(d, "a").await, before[0]);
    assert_eq!(revision(d, "b").await, before[1]);
    assert_eq!(d.load("c").await.unwrap(), None);
    assert_eq!(d.list("").await.unwrap(), vec!["a", "b"]);
    assert!(
        !leftovers(d.dir()).iter().any(|n| n.ends_with(".intent")),
        "{:?}",
        leftovers(d.dir())
    );
    assert_eq!(marked(d.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn several_keys_commit_and_leave_no_journal() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    assert!(d.capabilities().multi_key_commit);
    d.put("a", w(b"a0", 1)).await.unwrap();
    d.put("b", w(b"b0", 2)).await.unwrap();
    let (ra, rb) = (revision(&d, "a").await, revision(&d, "b").await);
    let ops = [
        Op {
            key: "c",
            expected: None,
            action: Action::Write(w(b"c1", 3)),
        },
        Op {
            key: "a",
            expected: ra,
            action: Action::Write(w(b"a1", 4)),
        },
        Op {
            key: "b",
            expected: rb,
            action: Action::Check,
        },
        Op {
            key: "absent",
            expected: None,
            action: Action::Check,
        },
    ];
    assert_eq!(
        d.commit(&ops).await.unwrap(),
        CommitOutcome::Committed(vec![Some(1000), Some(1001), None, None])
    );
    assert_eq!(d.load("a").await.unwrap().unwrap().tokens, vec![1, 4]);
    assert_eq!(d.load("c").await.unwrap().unwrap().data, b"c1");
    assert_eq!(revision(&d, "b").await, rb, "a check writes nothing");
    assert_eq!(d.list("").await.unwrap(), vec!["a", "b", "c"]);
    // Nothing but records, and the lock files all empty.
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
    assert_eq!(marked(d.dir()), Vec::<String>::new());
    // A stale op fails the commit: nothing written, the failed ops with their records.
    match d.commit(&ops).await.unwrap() {
        CommitOutcome::Conflict(failed) => {
            let idx: Vec<usize> = failed.iter().map(|f| f.0).collect();
            assert_eq!(idx, [0, 1]);
            assert_eq!(failed[0].1.as_ref().unwrap().data, b"c1");
            assert_eq!(failed[1].1.as_ref().unwrap().data, b"a1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.load("a").await.unwrap().unwrap().data, b"a1");
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
    // A single write is a compare-and-swap; a single check checks.
    let ra = revision(&d, "a").await;
    assert_eq!(
        d.commit(&ops[1..2]).await.unwrap(),
        CommitOutcome::Conflict(vec![(0, d.load("a").await.unwrap())])
    );
    assert_eq!(
        d.commit(&[Op {
            key: "a",
            expected: ra,
            action: Action::Check
        }])
        .await
        .unwrap(),
        CommitOutcome::Committed(vec![None])
    );
    assert_eq!(
        d.commit(&[]).await.unwrap(),
        CommitOutcome::Committed(vec![])
    );
}

#[tokio::test]
async fn commit_input_is_checked() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    let op = |key| Op {
        key,
        expected: None,
        action: Action::Write(w(b"1", 1)),
    };
    for ops in [
        vec![op("a"), op("b"), op("a")],
        vec![op("a"), op("")],
        (0..=crate::MAX_COMMIT_KEYS)
            .map(|i| op(["x", "y"][i % 2]))
            .collect(),
    ] {
        match d.commit(&ops).await {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    let keys: Vec<String> = (0..crate::MAX_COMMIT_KEYS)
        .map(|i| format!("k{i}"))
        .collect();
    let ops: Vec<Op<'_>> = keys.iter().map(|k| op(k)).collect();
    assert!(matches!(
        d.commit(&ops).await.unwrap(),
        CommitOutcome::Committed(v) if v.len() == crate::MAX_COMMIT_KEYS
    ));
    assert_eq!(d.list("k").await.unwrap().len(), crate::MAX_COMMIT_KEYS);
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn a_crash_after_the_intent_rolls_forward_on_open() {
    for until in [Until::Intent, Until::Renames(1), Until::Renames(2)] {
        let dir = TempDir::new();
        let (d, before) = crashed(&dir, until).await;
        // What the killed process left: its intent record, its markers, some temp files.
        let left = leftovers(d.dir());
        assert_eq!(left.iter().filter(|n| n.ends_with(".intent")).count(), 1);
        let temps = left.iter().filter(|n| n.ends_with(".tmp")).count();
        let Until::Renames(renamed) = until else {
            assert_eq!(temps, 3);
            assert_eq!(marked(d.dir()).len(), 3);
            let reopened = driver(&dir).await;
            assert_rolled_forward(&reopened, before).await;
            continue;
        };
        assert_eq!(temps, 3 - renamed, "{until:?}");
        assert_eq!(marked(d.dir()).len(), 3);
        let reopened = driver(&dir).await;
        assert_rolled_forward(&reopened, before).await;
    }
}

#[tokio::test]
async fn a_read_or_write_of_any_scope_settles_a_cut_short_commit() {
    // A read of a scope already renamed, or of one not yet renamed, in a process that keeps
    // running (no open): the commit is finished first.
    for first in ["a", "c"] {
        let dir = TempDir::new();
        let (d, before) = crashed(&dir, Until::Renames(1)).await;
        let r = d.load(first).await.unwrap().unwrap();
        assert_eq!(r.data, format!("{first}1").as_bytes());
        assert_rolled_forward(&d, before).await;
    }
    // A write that expects a scope's old revision conflicts: it does not write over the
    // commit's value once that is rolled forward.
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Intent).await;
    match d.cas("b", before[1], w(b"lost?", 99)).await.unwrap() {
        CasOutcome::Conflict(Some(r)) => assert_eq!(r.data, b"b1"),
        other => panic!("{other:?}"),
    }
    assert_rolled_forward(&d, before).await;
    // So does a several-scope commit over other scopes and one of them.
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Renames(2)).await;
    d.put("z", w(b"z", 5)).await.unwrap();
    let ops = [
        Op {
            key: "z",
            expected: revision(&d, "z").await,
            action: Action::Write(w(b"z1", 6)),
        },
        Op {
            key: "c",
            expected: None,
            action: Action::Write(w(b"c?", 7)),
        },
    ];
    assert!(matches!(
        d.commit(&ops).await.unwrap(),
        CommitOutcome::Conflict(f) if f.len() == 1 && f[0].0 == 1
    ));
    assert_rolled_forward(&d, before).await;
    assert_eq!(d.load("z").await.unwrap().unwrap().data, b"z");
    // And a list shows the scope the commit creates.
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Intent).await;
    assert_eq!(d.list("c").await.unwrap(), vec!["c"]);
    assert_rolled_forward(&d, before).await;
}

#[tokio::test]
async fn a_torn_intent_rolls_back() {
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Markers).await;
    let ids = temp_ids(d.dir());
    assert_eq!(ids.len(), 1);
    let id = ids[0];
    // The intent record as its process was writing it when killed.
    let whole = intent::encode(&intent::Intent {
        id,
        writes: vec![
            ("a".to_owned(), before[0]),
            ("b".to_owned(), before[1]),
            ("c".to_owned(), None),
        ],
    })
    .unwrap();
    std::fs::write(d.store.intent_path(id), &whole[..whole.len() / 2]).unwrap();
    let reopened = driver(&dir).await;
    assert_rolled_back(&reopened, before).await;
    assert_eq!(
        leftovers(d.dir()),
        Vec::<String>::new(),
        "temp files removed"
    );

    // Torn by a power loss without fsync, the last byte missing: back as well, on a read.
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Markers).await;
    let id = temp_ids(d.dir())[0];
    let whole = intent::encode(&intent::Intent {
        id,
        writes: vec![("a".to_owned(), before[0]), ("c".to_owned(), None)],
    })
    .unwrap();
    std::fs::write(d.store.intent_path(id), &whole[..whole.len() - 1]).unwrap();
    assert_eq!(d.load("a").await.unwrap().unwrap().data, b"a0");
    assert_rolled_back(&d, before).await;

    // A torn record whose temp files are gone names nothing to undo: it is removed.
    let dir = TempDir::new();
    let d = driver(&dir).await;
    std::fs::write(d.store.intent_path(42), b"{\"format\":1,\"com").unwrap();
    let reopened = driver(&dir).await;
    assert_eq!(leftovers(reopened.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn a_crash_before_the_intent_leaves_the_old_records() {
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Markers).await;
    assert_eq!(marked(d.dir()).len(), 3);
    // The markers name no intent record: stale, emptied by the next taker of the lock.
    assert_eq!(d.load("a").await.unwrap().unwrap().data, b"a0");
    match d.cas("a", before[0], w(b"a2", 21)).await.unwrap() {
        CasOutcome::Committed(v) => assert_eq!(Some(v), before[0].map(|r| r.version + 1)),
        other => panic!("{other:?}"),
    }
    assert!(!marked(d.dir()).contains(&stripe("a")));
    // Its temp files are a crashed writer's: removed once stale, under their locks.
    assert_eq!(temp_ids(d.dir()).len(), 1);
    d.store.clean_up(Duration::ZERO).unwrap();
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn stale_clean_up_spares_a_cut_short_commit() {
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Renames(1)).await;
    let left = leftovers(d.dir());
    // As the clean-up of an open finds them, when its settling could not take their locks.
    for n in &left {
        if let Some((stem, id)) = name::temp_parts(n) {
            d.store.remove_stale_temp(stem, id, &dir.0.join(n)).unwrap();
        }
    }
    assert_eq!(
        leftovers(d.dir()),
        left,
        "a pending commit's files are kept"
    );
    // The lock file of the scope it creates keeps its marker.
    assert!(marked(d.dir()).contains(&stripe("c")));
    let reopened = driver(&dir).await;
    assert_rolled_forward(&reopened, before).await;
}

#[test]
fn many_settle_one_commit_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..20 {
        let dir = TempDir::new();
        let until = [Until::Intent, Until::Renames(1), Until::Renames(2)][round % 3];
        let (d, before) = rt.block_on(crashed(&dir, until));
        let path = dir.0.clone();
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let (path, barrier, d) = (path.clone(), barrier.clone(), d.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match i % 3 {
                        // A process that opens the store.
                        0 => drop(Store::open(&path, false, Duration::from_secs(10)).unwrap()),
                        // One that reads a scope of the commit.
                        1 => assert_eq!(d.store.load("b").unwrap().unwrap().data, b"b1"),
                        // One that lists.
                        _ => assert_eq!(d.store.list("").unwrap(), vec!["a", "b", "c"]),
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        rt.block_on(assert_rolled_forward(&d, before));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_in_opposite_orders_do_not_deadlock() {
    let dir = TempDir::new();
    // Two drivers on one directory act like two processes; a short lock timeout turns a
    // deadlock into a failure.
    let open = || {
        FileDriver::open(
            &dir.0,
            FileOptions::new()
                .fsync(false)
                .lock_timeout(Duration::from_secs(5)),
        )
    };
    let a = Storage::with_driver(Arc::new(open().await.unwrap())).unwrap();
    let b = Storage::with_driver(Arc::new(open().await.unwrap())).unwrap();
    let names = ["x", "y", "z"];
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let st = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for n in 0..40usize {
                let (from, to) = (names[(i + n) % 3], names[(i + n + 1 + i % 2) % 3]);
                st.scoped_many(&[from, to], |c: &mut [i64]| {
                    c[0] -= 1;
                    c[1] += 1;
                })
                .await
                .unwrap();
                st.scoped(from, |c: &mut i64| *c += 0).await.unwrap();
                st.scoped("total", |c: &mut i64| *c += 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<Option<i64>> = a.get_many(&names).await.unwrap();
    assert_eq!(all.iter().flatten().sum::<i64>(), 0);
    assert_eq!(a.get::<i64>("total").await.unwrap(), Some(240));
    assert_eq!(leftovers(&dir.0), Vec::<String>::new());
    assert_eq!(marked(&dir.0), Vec::<String>::new());
}

#[tokio::test]
async fn the_intent_record_is_no_key_file() {
    let dir = TempDir::new();
    let (d, _) = crashed(&dir, Until::Intent).await;
    let intent = leftovers(d.dir())
        .into_iter()
        .find(|n| n.ends_with(".intent"))
        .unwrap();
    assert!(intent.starts_with("%commit."), "{intent}");
    assert_eq!(key_of_record_file_name(&intent), None);
    let text = std::fs::read_to_string(dir.0.join(&intent)).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["writes"][2]["key"], "c");
    assert_eq!(v["writes"][2]["replaces"], serde_json::Value::Null);
}

// ---------------------------------------------------------------------------------------------
// Expiry

/// A write with `expiry`.
fn we(data: &[u8], token: u64, expiry: Expiry) -> Write<'_> {
    w(data, token).with_expiry(expiry)
}

/// A time `ms` milliseconds from now (before now when negative), in ms since 1970.
fn at(ms: i64) -> u64 {
    crate::driver::now_ms().saturating_add_signed(ms)
}

#[tokio::test]
async fn expired_records_are_absent_in_every_process() {
    let dir = TempDir::new();
    let (a, b) = (driver(&dir).await, driver(&dir).await);
    assert!(a.capabilities().expiry);
    a.put("k", we(b"1", 1, Expiry::After(Duration::from_secs(60))))
        .await
        .unwrap();
    let r = b.load("k").await.unwrap().unwrap();
    let expires_at = r.expires_at.unwrap();
    assert!(expires_at > at(50_000) && expires_at <= at(60_000));
    // Keep keeps it; an update changes the revision, `expire` does not.
    assert_eq!(
        b.cas("k", Some(r.revision()), we(b"2", 2, Expiry::Keep))
            .await
            .unwrap(),
        CasOutcome::Committed(1001)
    );
    let r = a.load("k").await.unwrap().unwrap();
    assert_eq!(r.expires_at, Some(expires_at));
    assert!(b.expire("k", Expiry::At(at(-1))).await.unwrap());
    // Gone for every call of either driver, at once.
    for d in [&a, &b] {
        assert_eq!(d.load("k").await.unwrap(), None);
        assert_eq!(d.load_many(&["k"]).await.unwrap(), vec![None]);
        assert_eq!(d.list("").await.unwrap(), Vec::<String>::new());
        assert!(!d.expire("k", Expiry::Never).await.unwrap());
    }
    // A compare-and-swap from the old revision finds nothing; one expecting absence creates
    // the scope anew, at the initial version, with its own tokens and no expiry.
    assert_eq!(
        a.cas("k", Some(r.revision()), w(b"3", 3)).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert!(dir.0.join("k.json").exists(), "not reclaimed yet");
    assert_eq!(
        a.cas("k", None, w(b"3", 3)).await.unwrap(),
        CasOutcome::Committed(1000)
    );
    let r = b.load("k").await.unwrap().unwrap();
    assert_eq!(
        (r.version, &r.tokens[..], r.expires_at),
        (1000, &[3][..], None)
    );
    // `put` over an expired record starts afresh too; Never clears, At sets.
    a.expire("k", Expiry::At(at(-1))).await.unwrap();
    assert_eq!(a.put("k", w(b"4", 4)).await.unwrap(), 1000);
    a.put("k", we(b"5", 5, Expiry::At(at(60_000))))
        .await
        .unwrap();
    assert!(a.load("k").await.unwrap().unwrap().expires_at.is_some());
    let v = a.load("k").await.unwrap().unwrap().revision();
    assert!(a.expire("k", Expiry::Never).await.unwrap());
    let r = a.load("k").await.unwrap().unwrap();
    assert_eq!((r.revision(), r.expires_at), (v, None));
    // `delete` of an expired record says it was not there, and its file goes.
    a.expire("k", Expiry::At(at(-1))).await.unwrap();
    assert!(!b.delete("k").await.unwrap());
    assert!(!dir.0.join("k.json").exists());
    // So does a delete at the revision of absence.
    a.put("k", we(b"6", 6, Expiry::At(at(-1)))).await.unwrap();
    assert_eq!(
        a.commit(&[Op {
            key: "k",
            expected: None,
            action: Action::Delete
        }])
        .await
        .unwrap(),
        CommitOutcome::Committed(vec![None])
    );
    assert_eq!(file_names(a.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn several_scope_commits_see_expired_scopes_as_absent() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    d.put("a", w(b"a0", 1)).await.unwrap();
    d.put("b", we(b"b0", 2, Expiry::At(at(60_000))))
        .await
        .unwrap();
    let (ra, rb) = (revision(&d, "a").await, revision(&d, "b").await);
    d.expire("b", Expiry::At(at(-1))).await.unwrap();
    let op = |key, expected, data| Op {
        key,
        expected,
        action: Action::Write(w(data, 9)),
    };
    match d
        .commit(&[op("a", ra, b"a1"), op("b", rb, b"b1")])
        .await
        .unwrap()
    {
        CommitOutcome::Conflict(failed) => assert_eq!(failed, vec![(1, None)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.commit(&[op("a", ra, b"a1"), op("b", None, b"b1")])
            .await
            .unwrap(),
        CommitOutcome::Committed(vec![ra.map(|r| r.version + 1), Some(1000)])
    );
    let b = d.load("b").await.unwrap().unwrap();
    assert_eq!(
        (b.version, &b.tokens[..], b.expires_at),
        (1000, &[9][..], None)
    );
}

#[tokio::test]
async fn a_cut_short_commit_over_an_expired_scope_rolls_forward() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    d.put("a", w(b"a0", 1)).await.unwrap();
    d.put("b", we(b"b0", 2, Expiry::At(at(-1)))).await.unwrap();
    let ra = revision(&d, "a").await;
    let ops = [wop("a", ra, b"a1", 11), wop("b", None, b"b1", 12)];
    d.store.commit_until(&ops, Until::Intent).unwrap();
    // The sweep takes the lock of `b`, so it settles the commit before it looks at `b`.
    assert_eq!(d.store.sweep(100, true).unwrap(), 0);
    let b = d.load("b").await.unwrap().unwrap();
    assert_eq!((b.data.as_slice(), b.version), (&b"b1"[..], 1000));
    assert_eq!(d.load("a").await.unwrap().unwrap().data, b"a1");
    assert_eq!(leftovers(d.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn sweeps_reclaim_expired_records_only() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    // Nothing ever expired: no sweep reads anything.
    d.put("live", w(b"1", 1)).await.unwrap();
    assert_eq!(d.store.sweep(100, true).unwrap(), 0);
    for i in 0..10 {
        d.put(&format!("old{i}"), we(b"1", 1, Expiry::At(at(-1))))
            .await
            .unwrap();
    }
    d.put("later", we(b"1", 1, Expiry::At(at(60_000))))
        .await
        .unwrap();
    let long = "l".repeat(300);
    d.put(&long, we(b"1", 1, Expiry::At(at(-1)))).await.unwrap();
    assert_eq!(file_names(d.dir()).len(), 13);
    // A limit stops it, and leaves the next sweep due at once.
    assert_eq!(d.sweep(4).await.unwrap(), 4);
    assert_eq!(d.sweep(100).await.unwrap(), 7);
    // The last sweep was whole: the next is not due for a while.
    d.put("old0", we(b"1", 1, Expiry::At(at(-1))))
        .await
        .unwrap();
    assert_eq!(d.sweep(100).await.unwrap(), 0);
    assert_eq!(d.store.sweep(100, true).unwrap(), 1);
    assert_eq!(file_names(d.dir()), vec!["later.json", "live.json"]);
    // A new process sweeps on open when a sweep is due.
    d.put("old1", we(b"1", 1, Expiry::At(at(-1))))
        .await
        .unwrap();
    std::fs::write(dir.0.join(name::LOCK_DIR).join("sweep.lock"), b"0").unwrap();
    let reopened = driver(&dir).await;
    assert_eq!(file_names(reopened.dir()), vec!["later.json", "live.json"]);
}

#[test]
fn a_sweep_spares_a_scope_written_again_after_it_expired() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new();
    let d = rt.block_on(driver(&dir));
    rt.block_on(d.put("k", we(b"old", 1, Expiry::At(at(-1)))))
        .unwrap();
    // Hold the scope's lock, as a writer does, while the sweep finds the record expired.
    let files = d.store.files("k").unwrap();
    let lock = d.store.lock_until(&files.lock, d.store.deadline()).unwrap();
    let store = d.store.clone();
    let sweep = std::thread::spawn(move || store.sweep(100, true).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    // The writer writes the scope anew (it was absent: expired), then lets go.
    let fresh = owned(w(b"new", 2));
    d.store.replace("k", &files, None, &fresh).unwrap();
    drop(lock);
    assert_eq!(sweep.join().unwrap(), 0);
    let r = rt.block_on(d.load("k")).unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.expires_at), (&b"new"[..], None));
}

#[tokio::test]
async fn old_records_without_expiry_still_read() {
    let dir = TempDir::new();
    let d = driver(&dir).await;
    // As 0.1 wrote it, beside its per-scope lock file.
    std::fs::write(
        dir.0.join("k.json"),
        "{\"format\":1,\"key\":\"k\",\"version\":8,\"schema\":0,\"len\":1,\"tokens\":[\"00000000000000a1\"]}\n7\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("k.lock"), b"").unwrap();
    let d2 = driver(&dir).await;
    for d in [&d, &d2] {
        let r = d.load("k").await.unwrap().unwrap();
        assert_eq!(
            (r.version, r.data.as_slice(), r.expires_at),
            (8, &b"7"[..], None)
        );
        assert_eq!(d.list("").await.unwrap(), vec!["k"]);
    }
    assert_eq!(file_names(d.dir()), vec!["k.json"]);
    assert!(d
        .expire("k", Expiry::After(Duration::from_secs(60)))
        .await
        .unwrap());
    assert_eq!(d.list("").await.unwrap(), vec!["k"]);
}

/// A 0.1 directory whose commit was cut short: its markers are in per-scope lock files beside
/// the records. `open` rolls the commit forward and removes those files.
#[tokio::test]
async fn a_cut_short_commit_of_0_1_is_settled_on_open() {
    let dir = TempDir::new();
    let (d, before) = crashed(&dir, Until::Renames(1)).await;
    let id = temp_ids(d.dir())[0];
    // Move the markers to where 0.1 kept them.
    for key in ["a", "b", "c"] {
        std::fs::write(dir.0.join(format!("{key}.lock")), format!("{id:016x}\n")).unwrap();
        std::fs::write(dir.0.join(name::LOCK_DIR).join(stripe(key)), b"").unwrap();
    }
    std::fs::write(dir.0.join("other.lock"), b"").unwrap();
    drop(d);
    let reopened = driver(&dir).await;
    assert_rolled_forward(&reopened, before).await;
    assert_eq!(
        file_names(reopened.dir()),
        vec!["a.json", "b.json", "c.json"]
    );
}
