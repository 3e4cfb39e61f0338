//! The behavior cases. Each is one async fn over a [`Target`]; the `behavior_suite!` macro runs
//! every one of them for a driver.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use mp_storage::{CasOutcome, Error, RetryPolicy, Storage, Write};
use serde_json::{json, Value};

use crate::{Counter, Target};

fn write(data: &[u8]) -> Write<'_> {
    Write {
        schema: 0,
        data,
        token: rand::random(),
        initial_version: rand::random_range(1..1u64 << 48),
    }
}

/// `set` then `get` and `scoped` see the same value; an absent scope reads as `None`.
pub async fn round_trip(t: &Target) {
    let st = t.storage();
    assert_eq!(st.get::<Counter>("rt").await.unwrap(), None);
    st.set("rt", &Counter { count: 41 }).await.unwrap();
    assert_eq!(
        st.get::<Counter>("rt").await.unwrap(),
        Some(Counter { count: 41 })
    );
    let n = crate::increment(&st, "rt").await.unwrap();
    assert_eq!(n, 42);
    // A second handle (its own cache) sees it too.
    let other = t.storage();
    assert_eq!(
        other.get::<Counter>("rt").await.unwrap(),
        Some(Counter { count: 42 })
    );
    let v: Value = other.get("rt").await.unwrap().unwrap();
    assert_eq!(v, json!({"count": 42}));
}

/// A scope never written reads as the type's default inside `scoped`.
pub async fn absent_reads_default(t: &Target) {
    let st = t.storage();
    let seen = st
        .scoped("fresh", |c: &mut Counter| c.clone())
        .await
        .unwrap();
    assert_eq!(seen, Counter::default());
}

/// A closure that changes nothing writes nothing: an absent scope stays absent, a stored one
/// keeps its version.
pub async fn noop_writes_nothing(t: &Target) {
    let st = t.storage();
    st.scoped("noop", |c: &mut Counter| c.count).await.unwrap();
    assert_eq!(st.get::<Counter>("noop").await.unwrap(), None);
    assert!(st.list("noop").await.unwrap().is_empty());
    assert_eq!(t.driver.load(&t.key("noop")).await.unwrap(), None);

    st.set("noop", &Counter { count: 3 }).await.unwrap();
    let before = t.driver.load(&t.key("noop")).await.unwrap().unwrap();
    for _ in 0..3 {
        st.scoped("noop", |c: &mut Counter| c.count = 3)
            .await
            .unwrap();
    }
    let after = t.driver.load(&t.key("noop")).await.unwrap().unwrap();
    assert_eq!(
        before.version, after.version,
        "a no-op update must not write"
    );
    assert!(st.stats().noops >= 3);
}

/// `cas` with no expected version creates only when absent.
pub async fn create_if_absent(t: &Target) {
    let key = t.key("create");
    let w = write(br#"{"count":1}"#);
    let v1 = match t.driver.cas(&key, None, w).await.unwrap() {
        CasOutcome::Committed(v) => v,
        other => panic!("create of an absent key must commit, got {other:?}"),
    };
    assert_eq!(
        v1, w.initial_version,
        "a new record starts at initial_version"
    );
    match t
        .driver
        .cas(&key, None, write(br#"{"count":2}"#))
        .await
        .unwrap()
    {
        CasOutcome::Committed(_) => panic!("create over an existing key must conflict"),
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!(r.version, v1);
            assert_eq!(r.data, br#"{"count":1}"#);
        }
        CasOutcome::Conflict(None) => {}
    }
    let r = t.driver.load(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (v1, &br#"{"count":1}"#[..]));
    assert_eq!(r.tokens, vec![w.token]);
}

/// `cas` against an old version is rejected and changes nothing.
pub async fn stale_version_rejected(t: &Target) {
    let key = t.key("stale");
    let CasOutcome::Committed(v1) = t.driver.cas(&key, None, write(b"1")).await.unwrap() else {
        panic!("create must commit")
    };
    let CasOutcome::Committed(v2) = t.driver.cas(&key, Some(v1), write(b"2")).await.unwrap() else {
        panic!("cas at the current version must commit")
    };
    assert_eq!(v2, v1 + 1);
    match t.driver.cas(&key, Some(v1), write(b"3")).await.unwrap() {
        CasOutcome::Committed(_) => panic!("cas at a stale version must conflict"),
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!((r.version, r.data.as_slice()), (v2, &b"2"[..]))
        }
        CasOutcome::Conflict(None) => {}
    }
    // A version that never existed, and a cas on an absent key with an expected version.
    assert!(matches!(
        t.driver
            .cas(&key, Some(v2 + 10), write(b"4"))
            .await
            .unwrap(),
        CasOutcome::Conflict(_)
    ));
    assert!(matches!(
        t.driver
            .cas(&t.key("stale-absent"), Some(1), write(b"5"))
            .await
            .unwrap(),
        CasOutcome::Conflict(None)
    ));
    assert_eq!(t.driver.load(&t.key("stale-absent")).await.unwrap(), None);
    let r = t.driver.load(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (v2, &b"2"[..]));
}

/// Versions rise by one per write (cas and put alike); a record keeps its last 16 tokens.
pub async fn versions_rise_and_tokens_are_kept(t: &Target) {
    let key = t.key("tokens");
    let mut tokens = Vec::new();
    let first = write(b"0");
    tokens.push(first.token);
    let CasOutcome::Committed(mut v) = t.driver.cas(&key, None, first).await.unwrap() else {
        panic!("create must commit")
    };
    for i in 1..20u32 {
        let data = i.to_string();
        let w = Write {
            schema: i,
            ..write(data.as_bytes())
        };
        tokens.push(w.token);
        let next = if i % 3 == 0 {
            t.driver.put(&key, w).await.unwrap()
        } else {
            match t.driver.cas(&key, Some(v), w).await.unwrap() {
                CasOutcome::Committed(n) => n,
                other => panic!("uncontended cas must commit, got {other:?}"),
            }
        };
        assert_eq!(next, v + 1);
        v = next;
    }
    let r = t.driver.load(&key).await.unwrap().unwrap();
    assert_eq!(r.version, v);
    assert_eq!(r.schema, 19);
    assert_eq!(r.data, b"19");
    assert_eq!(r.tokens, tokens[tokens.len() - 16..].to_vec());
}

/// 16 tasks × 500 increments on one scope, over 4 handles: the count is exact and every count
/// handed out is distinct.
pub async fn concurrent_increments_are_exact(t: &Target) {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 500;
    let handles: Vec<Storage> = (0..4).map(|_| t.storage()).collect();
    let mut joins = Vec::new();
    for i in 0..TASKS {
        let st = handles[i % handles.len()].clone();
        joins.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(INCREMENTS);
            for _ in 0..INCREMENTS {
                let n = crate::increment(&st, "hot").await.expect("increment");
                got.push(n);
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    for j in joins {
        for n in j.await.unwrap() {
            assert!(seen.insert(n), "count {n} handed out twice");
        }
    }
    let total = (TASKS * INCREMENTS) as u64;
    assert_eq!(seen.len() as u64, total);
    let stored: Counter = t.storage().get("hot").await.unwrap().unwrap();
    assert_eq!(stored.count, total);
}

/// A handle whose cache is stale (another handle wrote since) still updates exactly.
pub async fn stale_cache_is_corrected(t: &Target) {
    let a = t.storage();
    let b = t.storage();
    a.scoped("cached", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    for _ in 0..5 {
        b.scoped("cached", |c: &mut Counter| c.count += 10)
            .await
            .unwrap();
    }
    let n = crate::increment(&a, "cached").await.unwrap();
    assert_eq!(n, 52);
    assert_eq!(b.get::<Counter>("cached").await.unwrap().unwrap().count, 52);
}

/// A read-only update answered from a cached record returns the current value, not the cached.
pub async fn read_only_from_stale_cache_is_confirmed(t: &Target) {
    let a = t.storage();
    let b = t.storage();
    a.scoped("ro", |c: &mut Counter| c.count = 1).await.unwrap();
    b.scoped("ro", |c: &mut Counter| c.count = 2).await.unwrap();
    let seen = a.scoped("ro", |c: &mut Counter| c.count).await.unwrap();
    assert_eq!(
        seen, 2,
        "a read-only update must not answer from a stale cache"
    );
}

/// A scope removed and created again by another handle is not mistaken for the cached one.
pub async fn delete_and_recreate_is_not_aba(t: &Target) {
    let a = t.storage();
    let b = t.storage();
    a.scoped("aba", |c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    assert!(b.remove("aba").await.unwrap());
    b.scoped("aba", |c: &mut Counter| c.count = 100)
        .await
        .unwrap();
    let n = crate::increment(&a, "aba").await.unwrap();
    assert_eq!(n, 101, "the update must start from the re-created value");
}

#[derive(Debug)]
enum AppError {
    Storage(Error),
    Refused(u64),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Storage(e)
    }
}

/// `try_scoped`: an `Err` from the closure writes nothing and comes back as is.
pub async fn try_scoped_abort_writes_nothing(t: &Target) {
    let st = t.storage();
    let r = st
        .try_scoped("abort", |c: &mut Counter| -> Result<u64, AppError> {
            c.count = 99;
            Err(AppError::Refused(c.count))
        })
        .await;
    assert!(matches!(r, Err(AppError::Refused(99))), "{r:?}");
    assert_eq!(st.get::<Counter>("abort").await.unwrap(), None);

    st.set("abort", &Counter { count: 5 }).await.unwrap();
    let r = st
        .try_scoped("abort", |c: &mut Counter| -> Result<u64, AppError> {
            c.count = 0;
            Err(AppError::Refused(c.count))
        })
        .await;
    assert!(matches!(r, Err(AppError::Refused(0))));
    assert_eq!(st.get::<Counter>("abort").await.unwrap().unwrap().count, 5);

    let ok: Result<u64, AppError> = st
        .try_scoped("abort", |c: &mut Counter| {
            c.count += 1;
            Ok(c.count)
        })
        .await;
    assert_eq!(ok.unwrap(), 6);
    // Storage errors convert into the caller's error type.
    let bad: Result<u64, AppError> = st.try_scoped("", |c: &mut Counter| Ok(c.count)).await;
    assert!(matches!(
        bad,
        Err(AppError::Storage(Error::InvalidName { .. }))
    ));
}

/// Stored data that does not decode as the asked type: an error naming scope and type, and the
/// data is left as it was.
pub async fn decode_failure_keeps_data(t: &Target) {
    let st = t.storage();
    st.set("mistyped", &json!({"count": "many"})).await.unwrap();
    let before = t.driver.load(&t.key("mistyped")).await.unwrap().unwrap();
    let err = st
        .scoped("mistyped", |c: &mut Counter| c.count += 1)
        .await
        .unwrap_err();
    match &err {
        Error::Decode {
            scope, type_name, ..
        } => {
            assert_eq!(scope, "mistyped");
            assert!(type_name.ends_with("Counter"), "{type_name}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("mistyped") && msg.contains("Counter"), "{msg}");
    assert!(st.get::<Counter>("mistyped").await.is_err());
    let after = t.driver.load(&t.key("mistyped")).await.unwrap().unwrap();
    assert_eq!(before, after, "the stored data must be untouched");
}

/// Names that are easy to confuse or dangerous for a backend.
pub fn odd_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "a",
        "A",
        "a ",
        " a",
        "a  ",
        "a\t",
        "a\n",
        "a/b",
        "a\\b",
        "/abs",
        "../x",
        "..",
        ".",
        "./.",
        "%2e%2e",
        "%2F",
        "a%",
        "a_",
        "*",
        "?",
        "[a]",
        "a*b",
        "'",
        "\"",
        "'; DROP TABLE x; --",
        "`",
        "名前",
        "ñ",
        "n\u{303}",
        "e\u{301}",
        "é",
        "ß",
        "SS",
        "İ",
        "i",
        "🦀",
        "\u{200b}",
        "\u{feff}x",
        "CON",
        "nul",
        "aux.txt",
        "x.json",
        "x.tmp",
        "x.lock",
        "~",
        "-",
        "#",
        "?q=1",
        "user:alice",
        "user:Alice",
        "user:alice ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("x".repeat(mp_storage::MAX_NAME_LEN));
    names.push("é".repeat(mp_storage::MAX_NAME_LEN / 2));
    names.push(format!("{}y", "x".repeat(mp_storage::MAX_NAME_LEN - 1)));
    names
}

/// Odd names (slashes, `..`, quotes, unicode, case and trailing-space look-alikes, tabs,
/// 1,024 bytes) are each a scope of their own that round-trips exactly and lists exactly.
pub async fn odd_names_are_distinct_and_exact(t: &Target) {
    let st = t.storage();
    let names = odd_names();
    for (i, name) in names.iter().enumerate() {
        st.set(name, &json!({"i": i, "name": name})).await.unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let n = st
            .scoped(name, |v: &mut Value| {
                let n = v["i"].as_u64().unwrap_or(u64::MAX);
                v["seen"] = json!(true);
                n
            })
            .await
            .unwrap();
        assert_eq!(n, i as u64, "name {name:?} read another scope's data");
        let v: Value = st.get(name).await.unwrap().unwrap();
        assert_eq!(v["name"], json!(name));
    }
    let listed = st.list("").await.unwrap();
    let expected: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(got, expected);
    assert_eq!(listed.len(), names.len(), "no name listed twice");
}

/// `list(prefix)` returns exactly the names that start with the prefix, sorted.
pub async fn list_by_prefix_is_exact(t: &Target) {
    let st = t.storage();
    for name in [
        "user:a", "user:b", "user:", "user", "users", "User:a", "user:a/b", "user:%", "user:_x",
        "useR:", "user:\\", "user:*",
    ] {
        st.set(name, &1u64).await.unwrap();
    }
    assert_eq!(
        st.list("user:").await.unwrap(),
        vec!["user:", "user:%", "user:*", "user:\\", "user:_x", "user:a", "user:a/b", "user:b"]
    );
    assert_eq!(st.list("user:a").await.unwrap(), vec!["user:a", "user:a/b"]);
    assert_eq!(st.list("user:%").await.unwrap(), vec!["user:%"]);
    assert_eq!(st.list("user:_").await.unwrap(), vec!["user:_x"]);
    assert_eq!(st.list("user:*").await.unwrap(), vec!["user:*"]);
    assert_eq!(st.list("user:\\").await.unwrap(), vec!["user:\\"]);
    assert!(st.list("nobody").await.unwrap().is_empty());
    assert_eq!(st.list("").await.unwrap().len(), 12);
    // Another key prefix's data is not listed.
    let other = crate::storage_on(
        &t.driver,
        &crate::unique_prefix("other"),
        Storage::builder(),
    );
    assert!(other.list("user:").await.unwrap().is_empty());
    assert!(other.list("").await.unwrap().is_empty());
}

/// `remove` deletes and says whether the scope existed; an update afterwards starts fresh.
pub async fn remove_says_whether_it_existed(t: &Target) {
    let st = t.storage();
    assert!(!st.remove("gone").await.unwrap());
    st.scoped("gone", |c: &mut Counter| c.count = 7)
        .await
        .unwrap();
    assert!(st.remove("gone").await.unwrap());
    assert_eq!(st.get::<Counter>("gone").await.unwrap(), None);
    assert!(st.list("gone").await.unwrap().is_empty());
    assert!(!st.remove("gone").await.unwrap());
    let n = crate::increment(&st, "gone").await.unwrap();
    assert_eq!(n, 1);
}

/// Empty, NUL-holding and over-long names are an `InvalidName` error, and nothing is written.
pub async fn invalid_names_are_refused(t: &Target) {
    let st = t.storage();
    let long = "x".repeat(mp_storage::MAX_NAME_LEN + 1);
    for name in ["", "a\0b", "\0", long.as_str()] {
        let r = st.scoped(name, |c: &mut Counter| c.count += 1).await;
        assert!(
            matches!(r, Err(Error::InvalidName { .. })),
            "{name:?}: {r:?}"
        );
        assert!(matches!(
            st.get::<Counter>(name).await,
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            st.set(name, &Counter::default()).await,
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            st.remove(name).await,
            Err(Error::InvalidName { .. })
        ));
    }
    assert!(matches!(
        st.list("a\0").await,
        Err(Error::InvalidName { .. })
    ));
    assert!(st.list("").await.unwrap().is_empty());
}

/// A value over the size limit is a `TooLarge` error and nothing is written.
pub async fn too_large_is_refused(t: &Target) {
    let st = t.storage_with(Storage::builder().max_data_len(1000));
    let big = "x".repeat(2000);
    let r = st.scoped("big", |v: &mut Value| *v = json!(big)).await;
    assert!(
        matches!(r, Err(Error::TooLarge { limit: 1000, .. })),
        "{r:?}"
    );
    assert!(matches!(
        st.set("big", &json!(big)).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(st.get::<Value>("big").await.unwrap(), None);
}

/// The async form reruns on conflicts like the sync one and keeps counts exact.
pub async fn async_closure_updates(t: &Target) {
    let st = t.storage_with(
        Storage::builder().retry(RetryPolicy::default().deadline(Some(Duration::from_secs(60)))),
    );
    let mut joins = Vec::new();
    for _ in 0..4 {
        let st = st.clone();
        joins.push(tokio::spawn(async move {
            for _ in 0..25 {
                st.scoped_async("async", |mut c: Counter| async move {
                    tokio::task::yield_now().await;
                    c.count += 1;
                    let n = c.count;
                    (c, n)
                })
                .await
                .unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    assert_eq!(
        st.get::<Counter>("async").await.unwrap().unwrap().count,
        100
    );
}

/// `set` writes whatever is stored, and a later update starts from it.
pub async fn set_overwrites(t: &Target) {
    let a = t.storage();
    let b = t.storage();
    a.scoped("over", |c: &mut Counter| c.count = 1)
        .await
        .unwrap();
    b.set("over", &Counter { count: 50 }).await.unwrap();
    let n = crate::increment(&a, "over").await.unwrap();
    assert_eq!(n, 51);
}

/// A NaN or infinite float is an `Encode` error (JSON has no such number) and nothing is written.
pub async fn non_finite_floats_are_refused(t: &Target) {
    let st = t.storage();
    st.set("float", &1.5f64).await.unwrap();
    let r = st.scoped("float", |v: &mut f64| *v = f64::NAN).await;
    assert!(matches!(r, Err(Error::Encode { .. })), "{r:?}");
    let r = st
        .scoped("floats", |v: &mut Vec<Option<f64>>| {
            v.push(Some(f64::INFINITY))
        })
        .await;
    assert!(matches!(r, Err(Error::Encode { .. })), "{r:?}");
    assert!(matches!(
        st.set("float", &f64::NEG_INFINITY).await,
        Err(Error::Encode { .. })
    ));
    assert_eq!(st.get::<f64>("float").await.unwrap(), Some(1.5));
    assert_eq!(st.get::<Vec<Option<f64>>>("floats").await.unwrap(), None);
}

/// Random names (any unicode but NUL, 1 to 1,024 bytes), each its own scope, round-trip exactly
/// and list exactly.
pub async fn generated_names_round_trip(t: &Target) {
    use rand::Rng;
    let st = t.storage();
    let mut rng = rand::rng();
    let mut names = BTreeSet::new();
    while names.len() < 1000 {
        let len = if rng.random_bool(0.05) {
            rng.random_range(200..300)
        } else {
            rng.random_range(1..24)
        };
        let mut name = String::new();
        for _ in 0..len {
            let c = match rng.random_range(0..10) {
                0 => char::from(rng.random_range(1u8..32)),
                1..=4 => char::from(rng.random_range(32u8..127)),
                5 => ['/', '\\', '.', '%', '*', '?', '[', ']', '\'', '"', ' ']
                    [rng.random_range(0..11)],
                _ => rng.random_range('\u{80}'..='\u{10FFFF}'),
            };
            name.push(c);
        }
        while name.len() > mp_storage::MAX_NAME_LEN {
            name.pop();
        }
        if !name.is_empty() {
            names.insert(name);
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let chunks: Vec<Vec<(usize, String)>> = names
        .iter()
        .cloned()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(125)
        .map(|c| c.to_vec())
        .collect();
    let mut joins = Vec::new();
    for chunk in chunks {
        let st = st.clone();
        joins.push(tokio::spawn(async move {
            for (i, name) in chunk {
                st.set(&name, &json!({"i": i, "name": name})).await.unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let other = t.storage();
    for (i, name) in names.iter().enumerate() {
        let v: Value = other
            .get(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name:?} lost"));
        assert_eq!(v, json!({"i": i, "name": name}), "{name:?}");
    }
    let listed = other.list("").await.unwrap();
    assert_eq!(
        listed, names,
        "list returns exactly the names written, sorted"
    );
}

/// A value exactly at the driver's size limit is stored; one byte more is `TooLarge` and
/// nothing is written.
pub async fn size_limit_is_exact(t: &Target) {
    let limit = t.driver.max_data_len();
    let st = t.storage();
    // A JSON string of n characters encodes to n + 2 bytes.
    let at = "x".repeat(limit - 2);
    st.set("at-limit", &at).await.unwrap();
    assert_eq!(
        st.get::<String>("at-limit").await.unwrap().map(|s| s.len()),
        Some(limit - 2)
    );
    let over = "x".repeat(limit - 1);
    let r = st
        .scoped("over-limit", |s: &mut String| s.clone_from(&over))
        .await;
    assert!(
        matches!(r, Err(Error::TooLarge { .. })),
        "{:?}",
        r.map(|_| ())
    );
    assert!(matches!(
        st.set("over-limit", &over).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(st.get::<String>("over-limit").await.unwrap(), None);
    assert!(st.remove("at-limit").await.unwrap());
}
