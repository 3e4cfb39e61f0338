//! The behavior cases: each is one async function over a [`Target`], and
//! [`behavior_suite!`](crate::behavior_suite) (defined here, beside them) holds their one list.
//!
//! A new case is a `pub async fn name(t: &Target)` in this file (or, for the cases of schema
//! change, in `cases/schema.rs`, and of exclusive updates, in `cases/lease.rs`, of watching, in `cases/watch.rs`,
//! re-exported here) and its name in that list.
//! Cases call the driver's compare-and-swap only through the helpers `create` and `update`, so a
//! change of its signature touches two functions; everything else goes through [`Storage`] or
//! `load`/`put`/`list`, as a user or the engine would.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use super::{increment, unique_prefix, write, Counter, Target};
use crate::{Action, CasOutcome, CommitOutcome, Error, Op, RetryPolicy, Revision, Storage, Write};

mod lease;
mod schema;
mod watch;
pub use lease::*;
pub use schema::*;
pub use watch::*;

/// Expands into one test per behavior case, each on the target the expression gives: a future
/// of `Option<Target>`, evaluated anew for every case; `None` skips the case.
///
/// ```no_run
/// use std::sync::Arc;
/// use mp_storage::testkit::Target;
///
/// async fn target() -> Option<Target> {
///     let driver = mp_storage::driver::memory::MemoryDriver::new();
///     Some(Target::new("memory", Arc::new(driver)))
/// }
///
/// mp_storage::behavior_suite!(target());
/// # fn main() {}
/// ```
///
/// Each test runs its case with [`Target::run`] on a multi-thread tokio runtime of four
/// workers, and is named after the case ([`CASES`]).
#[macro_export]
macro_rules! behavior_suite {
    ($target:expr $(,)?) => {
        $crate::behavior_suite! { @list [tests $target] }
    };
    // The one list of the cases, handed to the arm `$then` names.
    (@list [$($then:tt)*]) => {
        $crate::behavior_suite! { @$($then)* ;
            round_trip,
            absent_reads_default,
            noop_writes_nothing,
            create_if_absent,
            stale_version_rejected,
            versions_rise_and_tokens_are_kept,
            concurrent_increments_are_exact,
            stale_cache_is_corrected,
            read_only_from_stale_cache_is_confirmed,
            delete_and_recreate_is_not_aba,
            try_scoped_abort_writes_nothing,
            decode_failure_keeps_data,
            odd_names_are_distinct_and_exact,
            list_by_prefix_is_exact,
            remove_says_whether_it_existed,
            invalid_names_are_refused,
            too_large_is_refused,
            async_closure_updates,
            set_overwrites,
            non_finite_floats_are_refused,
            generated_names_round_trip,
            size_limit_is_exact,
            rolled_back_revision_is_refused,
            meta_is_kept_as_given,
            idempotent_updates_commit_once,
            reservations_let_their_holder_in_first,
            a_losing_write_reserves_when_asked,
            a_refusal_says_how_long_the_reservation_lasts,
            rolled_back_store_is_not_trusted,
            read_only_over_the_size_limit_answers,
            abort_on_a_stale_cache_is_decided_again,
            decode_failure_is_not_remembered,
            untyped_set_keeps_the_stored_schema,
            renamed_field_with_default_is_refused,
            renamed_field_without_default_is_a_decode_error,
            removed_field_is_refused_unless_lossy,
            nested_structs_and_maps_are_checked,
            formatting_differences_are_not_loss,
            enum_variant_added_and_removed,
            two_releases_write_the_same_scopes,
            typed_migrations_chain,
            migrate_all_rewrites_every_scope,
            migrate_all_resumes_after_interruption,
            several_scopes_commit_all_or_nothing,
            check_only_scopes_are_checked,
            transfers_conserve_money,
            several_scope_input_is_checked,
            expired_scopes_are_absent,
            expiry_is_kept_and_cleared,
            a_type_with_a_ttl_lives_while_written,
            a_scope_ends_through_the_compare_and_swap,
            locked_updates_exclude_each_other,
            lease_is_renewed_while_the_closure_runs,
            try_locked_abort_frees_at_once,
            set_and_remove_wait_for_the_lease,
            stalled_holder_loses_its_lease,
            dead_holder_lease_runs_out,
            waiting_is_bounded_by_the_deadline,
            watch_sees_every_change_in_order,
            watch_sees_removal_and_expiry,
            many_watchers_share_one_subscription,
            watchers_and_writers_on_one_handle,
        }
    };
    (@tests $target:expr ; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::__private::block_on(async {
                    let ::std::option::Option::Some(target) = $target.await else {
                        return;
                    };
                    target.run($crate::testkit::cases::$case(&target)).await;
                });
            }
        )*
    };
    (@names ; $($case:ident),* $(,)?) => {
        &[$(::std::stringify!($case)),*]
    };
}

/// The names of the cases, in the order [`behavior_suite!`](crate::behavior_suite) lists them.
pub const CASES: &[&str] = crate::behavior_suite! { @list [names] };

/// Creates `key` with a compare-and-swap that expects it absent.
async fn create(t: &Target, key: &str, w: Write<'_>) -> CasOutcome {
    match t.driver().cas(key, None, w).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("cas creating {key:?} failed: {e}"),
    }
}

/// Writes `key` with a compare-and-swap that expects it at `version` with last token `token`.
async fn update(t: &Target, key: &str, version: u64, token: u64, w: Write<'_>) -> CasOutcome {
    let expected = Revision { version, token };
    match t.driver().cas(key, Some(expected), w).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("cas of {key:?} at {expected:?} failed: {e}"),
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
    let n = increment(&st, "rt").await.unwrap();
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
    assert_eq!(t.driver().load(&t.key("noop")).await.unwrap(), None);

    st.set("noop", &Counter { count: 3 }).await.unwrap();
    let before = t.driver().load(&t.key("noop")).await.unwrap().unwrap();
    for _ in 0..3 {
        st.scoped("noop", |c: &mut Counter| c.count = 3)
            .await
            .unwrap();
    }
    let after = t.driver().load(&t.key("noop")).await.unwrap().unwrap();
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
    let v1 = match create(t, &key, w).await {
        CasOutcome::Committed(v) => v,
        other => panic!("create of an absent key must commit, got {other:?}"),
    };
    assert_eq!(
        v1, w.initial_version,
        "a new record starts at initial_version"
    );
    match create(t, &key, write(br#"{"count":2}"#)).await {
        CasOutcome::Committed(_) => panic!("create over an existing key must conflict"),
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!(r.version, v1);
            assert_eq!(r.data, br#"{"count":1}"#);
        }
        CasOutcome::Conflict(None) => {}
        CasOutcome::Reserved(r) => panic!("a write that did not ask reserved the record: {r:?}"),
    }
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (v1, &br#"{"count":1}"#[..]));
    assert_eq!(r.tokens, vec![w.token]);
}

/// `cas` against an old version is rejected and changes nothing.
pub async fn stale_version_rejected(t: &Target) {
    let key = t.key("stale");
    let (w1, w2) = (write(b"1"), write(b"2"));
    let CasOutcome::Committed(v1) = create(t, &key, w1).await else {
        panic!("create must commit")
    };
    let CasOutcome::Committed(v2) = update(t, &key, v1, w1.token, w2).await else {
        panic!("cas at the current revision must commit")
    };
    assert_eq!(v2, v1 + 1);
    match update(t, &key, v1, w1.token, write(b"3")).await {
        CasOutcome::Committed(_) => panic!("cas at a stale version must conflict"),
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!((r.version, r.data.as_slice()), (v2, &b"2"[..]))
        }
        CasOutcome::Conflict(None) => {}
        CasOutcome::Reserved(r) => panic!("a write that did not ask reserved the record: {r:?}"),
    }
    // A version that never existed, and a cas on an absent key with an expected version.
    assert!(matches!(
        update(t, &key, v2 + 10, w2.token, write(b"4")).await,
        CasOutcome::Conflict(_)
    ));
    // The right version with another last token is another revision.
    assert!(matches!(
        update(t, &key, v2, w1.token, write(b"4")).await,
        CasOutcome::Conflict(_)
    ));
    assert!(matches!(
        update(t, &t.key("stale-absent"), 1, w1.token, write(b"5")).await,
        CasOutcome::Conflict(None)
    ));
    assert_eq!(t.driver().load(&t.key("stale-absent")).await.unwrap(), None);
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (v2, &b"2"[..]));
}

/// Versions rise by one per write (cas and put alike); a record keeps its last 16 tokens.
pub async fn versions_rise_and_tokens_are_kept(t: &Target) {
    let key = t.key("tokens");
    let mut tokens = Vec::new();
    let first = write(b"0");
    tokens.push(first.token);
    let CasOutcome::Committed(mut v) = create(t, &key, first).await else {
        panic!("create must commit")
    };
    for i in 1..20u32 {
        let data = i.to_string();
        let w = Write::new(i, data.as_bytes(), rand::random_range(1..=u64::MAX), 1);
        let last = tokens.last().copied().unwrap_or(0);
        tokens.push(w.token);
        let next = if i % 3 == 0 {
            t.driver().put(&key, w).await.unwrap()
        } else {
            match update(t, &key, v, last, w).await {
                CasOutcome::Committed(n) => n,
                other => panic!("uncontended cas must commit, got {other:?}"),
            }
        };
        assert_eq!(next, v + 1);
        v = next;
    }
    let r = t.driver().load(&key).await.unwrap().unwrap();
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
                let n = increment(&st, "hot").await.expect("increment");
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
    let n = increment(&a, "cached").await.unwrap();
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
    let n = increment(&a, "aba").await.unwrap();
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
    let before = t.driver().load(&t.key("mistyped")).await.unwrap().unwrap();
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
    let after = t.driver().load(&t.key("mistyped")).await.unwrap().unwrap();
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
    names.push("x".repeat(crate::MAX_NAME_LEN));
    names.push("é".repeat(crate::MAX_NAME_LEN / 2));
    names.push(format!("{}y", "x".repeat(crate::MAX_NAME_LEN - 1)));
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
    let other = Storage::builder()
        .key_prefix(unique_prefix("other"))
        .build(t.driver().clone())
        .unwrap();
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
    let n = increment(&st, "gone").await.unwrap();
    assert_eq!(n, 1);
}

/// Empty, NUL-holding and over-long names are an `InvalidName` error, and nothing is written.
pub async fn invalid_names_are_refused(t: &Target) {
    let st = t.storage();
    let long = "x".repeat(crate::MAX_NAME_LEN + 1);
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
    let n = increment(&a, "over").await.unwrap();
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
        while name.len() > crate::MAX_NAME_LEN {
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
    let limit = t.driver().max_data_len();
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

/// A record rolled back and written again reaches an old version number with another last
/// token: a compare-and-swap expecting the revision from before the rollback must not match.
pub async fn rolled_back_revision_is_refused(t: &Target) {
    let key = t.key("rollback");
    let (w1, w2) = (write(b"1"), write(b"2"));
    let CasOutcome::Committed(v1) = create(t, &key, w1).await else {
        panic!("create must commit")
    };
    let CasOutcome::Committed(v2) = update(t, &key, v1, w1.token, w2).await else {
        panic!("update must commit")
    };
    // The store goes back to before w2 (a restore, a failover), then another writer writes.
    assert!(t.driver().delete(&key).await.unwrap());
    let again = Write::new(0, b"1", w1.token, v1);
    assert!(matches!(
        create(t, &key, again).await,
        CasOutcome::Committed(v) if v == v1
    ));
    let other = write(b"other");
    let CasOutcome::Committed(v) = update(t, &key, v1, w1.token, other).await else {
        panic!("the other writer's update must commit")
    };
    assert_eq!(v, v2, "the version number repeats");
    // Whoever still holds (v2, w2's token) must not write over the other writer's data.
    match update(t, &key, v2, w2.token, write(b"3")).await {
        CasOutcome::Committed(_) => {
            panic!("a compare-and-swap matched a revision from before a rollback")
        }
        CasOutcome::Conflict(Some(r)) => assert_eq!(r.data, b"other"),
        CasOutcome::Conflict(None) => {}
        CasOutcome::Reserved(r) => panic!("a write that did not ask reserved the record: {r:?}"),
    }
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (v2, &b"other"[..]));
    assert_eq!(
        r.revision(),
        Revision {
            version: v2,
            token: other.token
        }
    );
}

/// The engine's notes beside the data are stored and returned byte for byte, by `cas` and
/// `put` alike, and replaced by every write.
pub async fn meta_is_kept_as_given(t: &Target) {
    let key = t.key("meta");
    let note = br#"{"r":[["k\u00e9y","{\"n\":1}",1700000000000]]}"#;
    let w = write(b"1").with_meta(note);
    let CasOutcome::Committed(v) = create(t, &key, w).await else {
        panic!("create must commit")
    };
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!(r.meta, note);
    let w2 = write(b"2").with_meta(b"{}");
    assert!(matches!(
        update(t, &key, v, w.token, w2).await,
        CasOutcome::Committed(_)
    ));
    assert_eq!(t.driver().load(&key).await.unwrap().unwrap().meta, b"{}");
    t.driver()
        .put(&key, write(b"3").with_meta(note))
        .await
        .unwrap();
    assert_eq!(t.driver().load(&key).await.unwrap().unwrap().meta, note);
    t.driver().put(&key, write(b"4")).await.unwrap();
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!(
        (r.data.as_slice(), r.meta.as_slice()),
        (&b"4"[..], &b""[..])
    );
}

/// An update with an idempotency key commits once: a repeat (from this handle or another)
/// returns the first result; other keys apply; an abort keeps no key; plain updates keep the
/// receipts; a scope remembers its newest keys only.
pub async fn idempotent_updates_commit_once(t: &Target) {
    let (a, b) = (t.storage(), t.storage());
    let add = |c: &mut Counter| {
        c.count += 1;
        c.count
    };
    assert_eq!(a.idempotent("r1").scoped("once", add).await.unwrap(), 1);
    assert_eq!(a.idempotent("r1").scoped("once", add).await.unwrap(), 1);
    assert_eq!(b.idempotent("r1").scoped("once", add).await.unwrap(), 1);
    assert_eq!(b.idempotent("r2").scoped("once", add).await.unwrap(), 2);
    // Plain updates in between keep the receipts.
    assert_eq!(increment(&a, "once").await.unwrap(), 3);
    assert_eq!(a.idempotent("r2").scoped("once", add).await.unwrap(), 2);
    // An abort writes nothing and keeps no key: the repeat runs.
    let r: Result<u64, Error> = a
        .idempotent("r3")
        .try_scoped("once", |c: &mut Counter| -> Result<u64, Error> {
            c.count += 100;
            Err(Error::Conflict {
                scope: "once".into(),
                attempts: 0,
                elapsed: Duration::ZERO,
            })
        })
        .await;
    assert!(r.is_err());
    assert_eq!(b.idempotent("r3").scoped("once", add).await.unwrap(), 4);
    assert_eq!(a.get::<Counter>("once").await.unwrap().unwrap().count, 4);
    // The newest 64 keys are kept: the oldest falls out and runs again.
    for i in 0..crate::MAX_RECEIPTS {
        a.idempotent(&format!("bulk-{i}"))
            .scoped("once", add)
            .await
            .unwrap();
    }
    let before = a.get::<Counter>("once").await.unwrap().unwrap().count;
    assert_eq!(
        a.idempotent("bulk-63").scoped("once", add).await.unwrap(),
        before
    );
    assert_eq!(
        a.idempotent("r1").scoped("once", add).await.unwrap(),
        before + 1,
        "a key older than the newest 64 runs again"
    );
    // Keys are checked.
    assert!(matches!(
        a.idempotent("").scoped("once", add).await,
        Err(Error::InvalidConfig { .. })
    ));
    assert!(a.stats().replayed >= 3);
}

/// A reservation (on drivers that have them) refuses other claimants' writes at the expected
/// revision, lets its holder in as often as it writes, and runs out; it never changes the
/// record. A driver without reservations says so (`false`) and ignores claimants.
pub async fn reservations_let_their_holder_in_first(t: &Target) {
    let key = t.key("reserved");
    let (a, b) = (11u64, 22u64);
    let ttl = Duration::from_secs(5);
    assert!(
        !t.driver().reserve(&key, a, ttl).await.unwrap(),
        "an absent scope cannot be reserved"
    );
    let w1 = write(b"1");
    let CasOutcome::Committed(v1) = create(t, &key, w1).await else {
        panic!("create must commit")
    };
    let before = t.driver().load(&key).await.unwrap().unwrap();
    let took = t.driver().reserve(&key, a, ttl).await.unwrap();
    assert_eq!(
        took,
        t.driver().capabilities().reservations,
        "Driver::reserve agrees with Capabilities::reservations"
    );
    if !took {
        // No reservations: claimants change nothing.
        let w = write(b"2").with_claimant(b);
        assert!(matches!(
            update(t, &key, v1, w1.token, w).await,
            CasOutcome::Committed(_)
        ));
        return;
    }
    assert_eq!(
        t.driver().load(&key).await.unwrap().unwrap(),
        before,
        "a reservation does not change the record"
    );
    assert!(t.driver().reserve(&key, a, ttl).await.unwrap(), "renewed");
    assert!(
        !t.driver().reserve(&key, b, ttl).await.unwrap(),
        "held by a"
    );
    // b is refused at the expected revision and sees the record there.
    match update(t, &key, v1, w1.token, write(b"b").with_claimant(b)).await {
        CasOutcome::Conflict(Some(r)) => assert_eq!(r.revision(), before.revision()),
        other => panic!("a write of another claimant went through a reservation: {other:?}"),
    }
    // a gets in, again and again while the reservation lasts; b still waits.
    let wa = write(b"a").with_claimant(a);
    let CasOutcome::Committed(v2) = update(t, &key, v1, w1.token, wa).await else {
        panic!("the holder's write must commit")
    };
    let wa2 = write(b"a2").with_claimant(a);
    let CasOutcome::Committed(v3) = update(t, &key, v2, wa.token, wa2).await else {
        panic!("the holder's second write must commit")
    };
    assert!(matches!(
        update(t, &key, v3, wa2.token, write(b"b").with_claimant(b)).await,
        CasOutcome::Conflict(Some(r)) if r.version == v3
    ));
    // A reservation runs out by itself.
    assert!(t
        .driver()
        .reserve(&key, a, Duration::from_millis(50))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = t.driver().load(&key).await.unwrap().unwrap();
    let w = write(b"late").with_claimant(b);
    assert!(
        matches!(
            update(t, &key, r.version, r.last_token(), w).await,
            CasOutcome::Committed(_)
        ),
        "an expired reservation holds nobody back"
    );
}

/// A compare-and-swap that loses to a newer revision takes the reservation it asks for, in the
/// same step, unless another claimant holds one (contract rule 13); a driver without
/// [`Capabilities::reserve_on_conflict`](crate::driver::Capabilities) ignores the request.
pub async fn a_losing_write_reserves_when_asked(t: &Target) {
    let key = t.key("reserve-inline");
    let (a, b) = (11u64, 22u64);
    let ttl = Duration::from_secs(5);
    // An absent scope is not reserved by a write that expects it.
    let ghost = Revision {
        version: 7,
        token: 7,
    };
    match t
        .driver()
        .cas(
            &key,
            Some(ghost),
            write(b"0").with_claimant(a).with_reserve(ttl),
        )
        .await
        .unwrap()
    {
        CasOutcome::Conflict(None) => {}
        other => panic!("a write expecting an absent scope: {other:?}"),
    }
    assert!(t.driver().load(&key).await.unwrap().is_none());
    let w1 = write(b"1");
    let CasOutcome::Committed(v1) = create(t, &key, w1).await else {
        panic!("create must commit")
    };
    let w2 = write(b"2");
    let CasOutcome::Committed(v2) = update(t, &key, v1, w1.token, w2).await else {
        panic!("an update at the current revision must commit")
    };
    let current = t.driver().load(&key).await.unwrap().unwrap();
    // A loses at v1 and asks.
    let lost = update(
        t,
        &key,
        v1,
        w1.token,
        write(b"a").with_claimant(a).with_reserve(ttl),
    )
    .await;
    if !t.driver().capabilities().reserve_on_conflict {
        assert!(
            matches!(&lost, CasOutcome::Conflict(Some(r)) if r.version == v2)
                || matches!(lost, CasOutcome::Conflict(None)),
            "without the capability a lost write is a plain conflict: {lost:?}"
        );
        let w = write(b"b").with_claimant(b);
        assert!(
            matches!(
                update(t, &key, v2, w2.token, w).await,
                CasOutcome::Committed(_)
            ),
            "nothing was reserved"
        );
        return;
    }
    match &lost {
        CasOutcome::Reserved(r) => assert_eq!(r, &current, "the record it lost to"),
        other => panic!("a lost write that asked did not reserve: {other:?}"),
    }
    assert_eq!(
        t.driver().load(&key).await.unwrap().unwrap(),
        current,
        "reserving does not change the record"
    );
    // B is refused at the current revision, and its own lost write reserves nothing.
    let refused = |outcome: CasOutcome, what: &str| match outcome {
        CasOutcome::Conflict(Some(r)) => assert_eq!(r.revision(), current.revision(), "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    let wb = write(b"b").with_claimant(b);
    refused(
        update(t, &key, v2, w2.token, wb).await,
        "a write went through another's reservation",
    );
    refused(
        update(t, &key, v1, w1.token, wb.with_reserve(ttl)).await,
        "a write reserved a scope another holds",
    );
    assert!(
        !t.driver().reserve(&key, b, ttl).await.unwrap(),
        "a holds the scope"
    );
    // A commits while it holds it, and keeps holding it.
    let wa = write(b"a").with_claimant(a).with_reserve(ttl);
    let CasOutcome::Committed(v3) = update(t, &key, v2, w2.token, wa).await else {
        panic!("the holder's write must commit")
    };
    match update(t, &key, v3, wa.token, write(b"b").with_claimant(b)).await {
        CasOutcome::Conflict(Some(r)) => assert_eq!(r.version, v3),
        other => panic!("the holder's commit ended its reservation: {other:?}"),
    }
    // A reservation taken this way runs out by itself like any other.
    let short = Duration::from_millis(50);
    match update(
        t,
        &key,
        v2,
        w2.token,
        write(b"a").with_claimant(a).with_reserve(short),
    )
    .await
    {
        CasOutcome::Reserved(r) => assert_eq!(r.version, v3),
        other => panic!("the holder's lost write renews its reservation: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let w = write(b"late").with_claimant(b);
    assert!(
        matches!(
            update(t, &key, v3, wa.token, w).await,
            CasOutcome::Committed(_)
        ),
        "an expired reservation holds nobody back"
    );
}

/// A compare-and-swap refused by another claimant's live reservation says how long it still
/// holds ([`Record::reserved_for`](crate::driver::Record), contract rule 13), so that a waiting
/// process sleeps until the slice ends instead of polling it; its holder is told nothing.
pub async fn a_refusal_says_how_long_the_reservation_lasts(t: &Target) {
    let key = t.key("reserved-for");
    let (a, b) = (11u64, 22u64);
    let ttl = Duration::from_secs(5);
    let w1 = write(b"1");
    let CasOutcome::Committed(v1) = create(t, &key, w1).await else {
        panic!("create must commit")
    };
    if !t.driver().reserve(&key, a, ttl).await.unwrap() {
        // No reservations: nothing to report (`reservations_let_their_holder_in_first`).
        return;
    }
    let left = |outcome: CasOutcome, what: &str| match outcome {
        CasOutcome::Conflict(Some(r)) => r
            .reserved_for
            .unwrap_or_else(|| panic!("{what}: the refusal does not say for how long")),
        other => panic!("{what}: {other:?}"),
    };
    let refused = || update(t, &key, v1, w1.token, write(b"b").with_claimant(b));
    let first = left(refused().await, "refused at the expected revision");
    assert!(
        first <= ttl && first > ttl - Duration::from_secs(2),
        "{first:?} left of a {ttl:?} reservation just taken"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = left(refused().await, "refused again");
    assert!(
        second < first,
        "the time left runs down: {first:?}, then {second:?}"
    );
    // The holder's own writes are not refused, and its conflicts report no reservation.
    let wa = write(b"a").with_claimant(a);
    let CasOutcome::Committed(v2) = update(t, &key, v1, w1.token, wa).await else {
        panic!("the holder's write must commit")
    };
    match update(t, &key, v1, w1.token, write(b"a2").with_claimant(a)).await {
        CasOutcome::Conflict(Some(r)) => {
            assert_eq!(r.version, v2);
            assert_eq!(r.reserved_for, None, "the holder is held back by nobody");
        }
        other => panic!("a stale write of the holder: {other:?}"),
    }
    // Another's lost write that asks to reserve learns how long the holder has left too.
    if t.driver().capabilities().reserve_on_conflict {
        let lost = update(
            t,
            &key,
            v1,
            w1.token,
            write(b"b").with_claimant(b).with_reserve(ttl),
        )
        .await;
        let third = left(lost, "a lost write that asked to reserve a held scope");
        assert!(third <= second, "{third:?} after {second:?}");
    }
}

/// A store rolled back (a restore from an older copy, a failover) and written again by another
/// process until its version is back at the number this process cached: the cached record is
/// not the stored one. A read-only update from the cache answers the stored value, and an update
/// does not write over the other process's acknowledged writes.
pub async fn rolled_back_store_is_not_trusted(t: &Target) {
    let key = t.key("restored");
    t.storage()
        .set("restored", &Counter { count: 50 })
        .await
        .unwrap();
    let snapshot = t.driver().load(&key).await.unwrap().unwrap();
    // Two handles cache the record three writes later.
    let (a, reader) = (t.storage(), t.storage());
    for _ in 0..3 {
        increment(&a, "restored").await.unwrap();
    }
    assert_eq!(
        reader
            .get::<Counter>("restored")
            .await
            .unwrap()
            .unwrap()
            .count,
        53
    );
    // The store goes back to the snapshot.
    assert!(t.driver().delete(&key).await.unwrap());
    let mut again = Write::new(0, &snapshot.data, snapshot.last_token(), snapshot.version);
    again.schema = snapshot.schema;
    let CasOutcome::Committed(v) = create(t, &key, again.with_meta(&snapshot.meta)).await else {
        panic!("the restore must commit")
    };
    assert_eq!(v, snapshot.version);
    // Another process writes three times: the version number is back where the caches are.
    let other = t.storage();
    for _ in 0..3 {
        other
            .scoped("restored", |c: &mut Counter| c.count += 100)
            .await
            .unwrap();
    }
    let stored = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!(stored.version, snapshot.version + 3);
    let seen = reader
        .scoped("restored", |c: &mut Counter| c.count)
        .await
        .unwrap();
    assert_eq!(
        seen, 350,
        "a read-only update answered from a record the store no longer holds"
    );
    let n = increment(&a, "restored").await.unwrap();
    assert_eq!(n, 351, "an update wrote over data it never saw");
    assert_eq!(
        other
            .get::<Counter>("restored")
            .await
            .unwrap()
            .unwrap()
            .count,
        351
    );
}

/// A scope larger than a handle's size limit (written by a handle with a larger one) can still
/// be read through that handle's `scoped`: a closure that changes nothing, or aborts, answers.
/// Only a write of it is `TooLarge`, and writes nothing.
pub async fn read_only_over_the_size_limit_answers(t: &Target) {
    let big = t.storage();
    let small = t.storage_with(Storage::builder().max_data_len(1000));
    let items: Vec<String> = (0..100).map(|i| format!("item number {i:04}")).collect();
    big.set("large", &items).await.unwrap();
    for _ in 0..2 {
        // Once loaded, once from the cache.
        let n = small
            .scoped("large", |v: &mut Vec<String>| v.len())
            .await
            .unwrap();
        assert_eq!(n, 100);
    }
    small
        .scoped("large", |v: &mut Vec<String>| {
            let same = std::mem::take(v);
            *v = same;
        })
        .await
        .unwrap();
    let r = small
        .try_scoped("large", |v: &mut Vec<String>| -> Result<(), AppError> {
            v.clear();
            Err(AppError::Refused(0))
        })
        .await;
    assert!(matches!(r, Err(AppError::Refused(0))), "{r:?}");
    let r = small
        .scoped("large", |v: &mut Vec<String>| v.push("one more".to_owned()))
        .await;
    assert!(
        matches!(r, Err(Error::TooLarge { limit: 1000, .. })),
        "{r:?}"
    );
    assert_eq!(big.get::<Vec<String>>("large").await.unwrap(), Some(items));
    // A write that brings it under the limit is a write like any other.
    small
        .scoped("large", |v: &mut Vec<String>| v.truncate(10))
        .await
        .unwrap();
    assert_eq!(
        big.get::<Vec<String>>("large")
            .await
            .unwrap()
            .map(|v| v.len()),
        Some(10)
    );
}

/// An abort decided on a stale cache is decided again on the stored value: A added an item to a
/// cart, B removed it and added another; A removing the other one must find it.
pub async fn abort_on_a_stale_cache_is_decided_again(t: &Target) {
    let (a, b) = (t.storage(), t.storage());
    a.scoped("cart", |c: &mut Vec<String>| c.push("apple".to_owned()))
        .await
        .unwrap();
    b.scoped("cart", |c: &mut Vec<String>| c.retain(|i| i != "apple"))
        .await
        .unwrap();
    b.scoped("cart", |c: &mut Vec<String>| c.push("pear".to_owned()))
        .await
        .unwrap();
    let removed = a
        .try_scoped("cart", |c: &mut Vec<String>| -> Result<usize, AppError> {
            let before = c.len();
            c.retain(|i| i != "pear");
            if c.len() == before {
                // "Not in the cart".
                return Err(AppError::Refused(before as u64));
            }
            Ok(c.len())
        })
        .await;
    assert!(
        matches!(removed, Ok(0)),
        "an abort was decided on a stale cache: {removed:?}"
    );
    assert_eq!(
        b.get::<Vec<String>>("cart").await.unwrap(),
        Some(Vec::new())
    );
}

/// A record that does not decode fails an update with `Decode`, and once another process
/// repairs it, the next update of the same handle works: the failure is not remembered (nobody
/// calls `get` in between).
pub async fn decode_failure_is_not_remembered(t: &Target) {
    let (a, b) = (t.storage(), t.storage());
    b.set("repaired", &json!({"count": "many"})).await.unwrap();
    for _ in 0..2 {
        let e = increment(&a, "repaired").await.unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    }
    b.set("repaired", &Counter { count: 7 }).await.unwrap();
    let n = increment(&a, "repaired").await.unwrap();
    assert_eq!(n, 8, "the update did not see the repaired record");
    // The same when the handle had the record cached as good data before it was broken.
    b.set("repaired", &json!(["not", "a", "counter"]))
        .await
        .unwrap();
    let e = increment(&a, "repaired").await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    b.set("repaired", &Counter { count: 20 }).await.unwrap();
    assert_eq!(increment(&a, "repaired").await.unwrap(), 21);
}

/// `set` of an untyped value (`serde_json::Value`) keeps the schema version the record has,
/// also from a handle that never read it; an absent record gets schema 0.
pub async fn untyped_set_keeps_the_stored_schema(t: &Target) {
    let key = t.key("schema3");
    let mut w = write(br#"{"count":1}"#);
    w.schema = 3;
    t.driver().put(&key, w).await.unwrap();
    let fresh = t.storage();
    fresh.set("schema3", &json!({"count": 2})).await.unwrap();
    let r = t.driver().load(&key).await.unwrap().unwrap();
    assert_eq!(
        (r.schema, r.data.as_slice()),
        (3, &br#"{"count":2}"#[..]),
        "the stored schema version was lost"
    );
    // Again, from the cache that set left.
    fresh.set("schema3", &json!({"count": 3})).await.unwrap();
    assert_eq!(t.driver().load(&key).await.unwrap().unwrap().schema, 3);
    fresh.set("new", &json!({"count": 1})).await.unwrap();
    assert_eq!(
        t.driver()
            .load(&t.key("new"))
            .await
            .unwrap()
            .unwrap()
            .schema,
        0
    );
}

/// Whether the target's driver commits several keys at once; when it does not, checks that it
/// says so with a typed error.
async fn multi_key(t: &Target) -> bool {
    if t.driver().capabilities().multi_key_commit {
        return true;
    }
    let st = t.storage();
    match st
        .scoped_many(&["m1", "m2"], |c: &mut [Counter]| c[0].count += 1)
        .await
    {
        Err(Error::Unsupported { .. }) => false,
        other => panic!("a driver without several-key commits answered {other:?}"),
    }
}

/// A commit of several keys writes all of them, or none when any is not at its revision.
pub async fn several_scopes_commit_all_or_nothing(t: &Target) {
    if !multi_key(t).await {
        return;
    }
    let (a, b, c) = (t.key("all-a"), t.key("all-b"), t.key("all-c"));
    let (wa, wb) = (write(b"1"), write(b"1"));
    let CasOutcome::Committed(va) = create(t, &a, wa).await else {
        panic!("create a")
    };
    let CasOutcome::Committed(vb) = create(t, &b, wb).await else {
        panic!("create b")
    };
    let ra = Revision {
        version: va,
        token: wa.token,
    };
    let rb = Revision {
        version: vb,
        token: wb.token,
    };
    let stale = Revision {
        version: vb + 5,
        token: wb.token,
    };
    let (x, y, z) = (write(b"2"), write(b"2"), write(b"new"));
    // b is stale: nothing is written, c is not created.
    let ops = [
        Op {
            key: &a,
            expected: Some(ra),
            action: Action::Write(x),
        },
        Op {
            key: &b,
            expected: Some(stale),
            action: Action::Write(y),
        },
        Op {
            key: &c,
            expected: None,
            action: Action::Write(z),
        },
    ];
    match t.driver().commit(&ops).await.unwrap() {
        CommitOutcome::Conflict(failed) => {
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].0, 1);
            if let Some(r) = &failed[0].1 {
                assert_eq!(r.revision(), rb);
            }
        }
        other => panic!("a stale op must fail the commit: {other:?}"),
    }
    assert_eq!(t.driver().load(&a).await.unwrap().unwrap().revision(), ra);
    assert_eq!(t.driver().load(&b).await.unwrap().unwrap().revision(), rb);
    assert_eq!(t.driver().load(&c).await.unwrap(), None);
    // c already exists: a create fails.
    let CasOutcome::Committed(_) = create(t, &c, write(b"c")).await else {
        panic!("create c")
    };
    let ops = [
        Op {
            key: &a,
            expected: Some(ra),
            action: Action::Write(x),
        },
        Op {
            key: &c,
            expected: None,
            action: Action::Write(z),
        },
    ];
    assert!(matches!(
        t.driver().commit(&ops).await.unwrap(),
        CommitOutcome::Conflict(f) if f.iter().map(|f| f.0).collect::<Vec<_>>() == [1]
    ));
    assert_eq!(t.driver().load(&a).await.unwrap().unwrap().revision(), ra);
    // All at their revisions: every write takes effect, at the next version, with its token.
    let ops = [
        Op {
            key: &a,
            expected: Some(ra),
            action: Action::Write(x),
        },
        Op {
            key: &b,
            expected: Some(rb),
            action: Action::Write(y),
        },
    ];
    assert_eq!(
        t.driver().commit(&ops).await.unwrap(),
        CommitOutcome::Committed(vec![Some(va + 1), Some(vb + 1)])
    );
    let ra2 = t.driver().load(&a).await.unwrap().unwrap();
    assert_eq!(
        (ra2.version, ra2.data.as_slice(), ra2.last_token()),
        (va + 1, &b"2"[..], x.token)
    );
    assert_eq!(ra2.tokens, vec![wa.token, x.token]);
}

/// A check-only op fails the commit when its key moved, and is not rewritten when it holds.
pub async fn check_only_scopes_are_checked(t: &Target) {
    if !multi_key(t).await {
        return;
    }
    let (a, b) = (t.key("chk-a"), t.key("chk-b"));
    let (wa, wb) = (write(b"1"), write(b"1"));
    let CasOutcome::Committed(va) = create(t, &a, wa).await else {
        panic!("create a")
    };
    let CasOutcome::Committed(vb) = create(t, &b, wb).await else {
        panic!("create b")
    };
    let ra = Revision {
        version: va,
        token: wa.token,
    };
    let old_b = Revision {
        version: vb,
        token: wb.token,
    };
    // b moves on.
    let wb2 = write(b"2");
    assert!(matches!(
        update(t, &b, vb, wb.token, wb2).await,
        CasOutcome::Committed(_)
    ));
    let ops = [
        Op {
            key: &a,
            expected: Some(ra),
            action: Action::Write(write(b"x")),
        },
        Op {
            key: &b,
            expected: Some(old_b),
            action: Action::Check,
        },
    ];
    assert!(matches!(
        t.driver().commit(&ops).await.unwrap(),
        CommitOutcome::Conflict(f) if f.iter().map(|f| f.0).collect::<Vec<_>>() == [1]
    ));
    assert_eq!(t.driver().load(&a).await.unwrap().unwrap().revision(), ra);
    let rb = t.driver().load(&b).await.unwrap().unwrap().revision();
    let w = write(b"y");
    let ops = [
        Op {
            key: &a,
            expected: Some(ra),
            action: Action::Write(w),
        },
        Op {
            key: &b,
            expected: Some(rb),
            action: Action::Check,
        },
    ];
    assert_eq!(
        t.driver().commit(&ops).await.unwrap(),
        CommitOutcome::Committed(vec![Some(va + 1), None])
    );
    assert_eq!(
        t.driver().load(&b).await.unwrap().unwrap().revision(),
        rb,
        "a check writes nothing"
    );
}

/// Random transfers between 6 accounts from 12 tasks over 3 handles: money is conserved, no
/// balance goes negative, and each transfer is in both accounts' ledgers once.
pub async fn transfers_conserve_money(t: &Target) {
    if !multi_key(t).await {
        return;
    }
    #[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug)]
    struct Account {
        balance: i64,
        ledger: Vec<u64>,
    }
    impl crate::Scope for Account {}
    let names: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
    let seed = t.storage();
    for n in &names {
        seed.set(
            n,
            &Account {
                balance: 100,
                ledger: vec![],
            },
        )
        .await
        .unwrap();
    }
    let handles = [t.storage(), t.storage(), t.storage()];
    let mut joins = Vec::new();
    for task in 0..12u64 {
        let st = handles[task as usize % 3].clone();
        let names = names.clone();
        joins.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..25u64 {
                let id = task * 1000 + i;
                let from = rand::random_range(0..names.len());
                let to = (from + rand::random_range(1..names.len())) % names.len();
                let amount = rand::random_range(1..=40i64);
                let pair = [names[from].as_str(), names[to].as_str()];
                let moved = st
                    .scoped_many(&pair, |a: &mut [Account]| {
                        if a[0].balance < amount {
                            return false;
                        }
                        a[0].balance -= amount;
                        a[1].balance += amount;
                        a[0].ledger.push(id);
                        a[1].ledger.push(id);
                        true
                    })
                    .await
                    .unwrap();
                if moved {
                    done.push(id);
                }
            }
            done
        }));
    }
    let mut committed = Vec::new();
    for j in joins {
        committed.extend(j.await.unwrap());
    }
    let all: Vec<Option<Account>> = seed.get_many(&names).await.unwrap();
    let total: i64 = all.iter().map(|a| a.as_ref().unwrap().balance).sum();
    assert_eq!(total, 600, "money is conserved");
    assert!(all.iter().all(|a| a.as_ref().unwrap().balance >= 0));
    let mut seen = std::collections::HashMap::new();
    for a in all.iter().flatten() {
        for id in &a.ledger {
            *seen.entry(*id).or_insert(0) += 1;
        }
    }
    assert!(
        seen.values().all(|&n| n == 2),
        "each transfer in two ledgers once"
    );
    let mut ids: Vec<u64> = seen.into_keys().collect();
    ids.sort_unstable();
    committed.sort_unstable();
    assert_eq!(
        ids, committed,
        "the ledgers hold exactly the committed transfers"
    );
    assert!(
        seed.stats().multi_commits == 0
            && handles.iter().map(|h| h.stats().multi_commits).sum::<u64>() > 0
    );
}

/// Repeated, invalid or too many names are typed errors and write nothing; an unchanged set of
/// scopes writes nothing; `get_many` keeps the order of the names.
pub async fn several_scope_input_is_checked(t: &Target) {
    if !multi_key(t).await {
        return;
    }
    let st = t.storage();
    let add = |c: &mut [Counter]| {
        for x in c.iter_mut() {
            x.count += 1;
        }
    };
    assert!(matches!(
        st.scoped_many(&["dup", "other", "dup"], add).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        st.scoped_many(&["ok", ""], add).await,
        Err(Error::InvalidName { .. })
    ));
    let many: Vec<String> = (0..=crate::MAX_COMMIT_KEYS)
        .map(|i| format!("n{i}"))
        .collect();
    assert!(matches!(
        st.scoped_many(&many, add).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(st.list("").await.unwrap().is_empty(), "nothing written");
    // A closure that changes nothing writes nothing.
    st.scoped_many(&["q1", "q2"], |c: &mut [Counter]| c.len())
        .await
        .unwrap();
    assert!(st.list("").await.unwrap().is_empty());
    st.scoped_many(&["q2", "q1"], |c: &mut [Counter]| {
        c[0].count = 2;
        c[1].count = 1;
    })
    .await
    .unwrap();
    let got: Vec<Option<Counter>> = st.get_many(&["q1", "absent", "q2"]).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|c| c.as_ref().map(|c| c.count))
            .collect::<Vec<_>>(),
        [Some(1), None, Some(2)]
    );
    // One undecodable scope fails the call and writes nothing.
    st.set("bad", &"not a counter".to_owned()).await.unwrap();
    assert!(matches!(
        st.scoped_many(&["q1", "bad"], add).await,
        Err(Error::Decode { .. })
    ));
    assert_eq!(
        st.get::<Counter>("q1").await.unwrap().map(|c| c.count),
        Some(1)
    );
}

/// Whether the target's driver has expiry; when it does not, checks that it says so.
async fn expiry(t: &Target) -> bool {
    if t.driver().capabilities().expiry {
        return true;
    }
    let st = t.storage();
    st.set("exp-probe", &Counter { count: 1 }).await.unwrap();
    match st.expire("exp-probe", Some(Duration::from_secs(60))).await {
        Err(Error::Unsupported { .. }) => false,
        other => panic!("a driver without expiry answered {other:?}"),
    }
}

/// An expired scope is absent for every call at once: `get`, `get_many`, `list`, `remove`,
/// `expire`; `scoped` starts from the default with a new version, and a handle whose cache held
/// the old record does not bring it back.
pub async fn expired_scopes_are_absent(t: &Target) {
    if !expiry(t).await {
        return;
    }
    let (a, b) = (t.storage(), t.storage());
    a.set("gone", &Counter { count: 41 }).await.unwrap();
    a.set("kept", &Counter { count: 7 }).await.unwrap();
    assert_eq!(increment(&b, "gone").await.unwrap(), 42, "b caches it");
    let before = t.driver().load(&t.key("gone")).await.unwrap().unwrap();
    assert!(a
        .expire("gone", Some(Duration::from_millis(150)))
        .await
        .unwrap());
    assert!(b.get::<Counter>("gone").await.unwrap().is_some(), "not yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.get::<Counter>("gone").await.unwrap(), None);
    let both: Vec<Option<Counter>> = a.get_many(&["gone", "kept"]).await.unwrap();
    assert_eq!(both[0], None);
    assert_eq!(both[1].as_ref().map(|c| c.count), Some(7));
    assert_eq!(a.list("").await.unwrap(), ["kept"]);
    assert_eq!(t.driver().load(&t.key("gone")).await.unwrap(), None);
    assert!(!a
        .expire("gone", Some(Duration::from_secs(5)))
        .await
        .unwrap());
    // b's cache still holds count 42: its update starts from nothing all the same.
    assert_eq!(increment(&b, "gone").await.unwrap(), 1);
    let after = t.driver().load(&t.key("gone")).await.unwrap().unwrap();
    assert_ne!(
        after.version,
        before.version + 1,
        "a fresh record, not the next version"
    );
    assert!(a.remove("gone").await.unwrap());
    assert!(a
        .expire("kept", Some(Duration::from_millis(100)))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !a.remove("kept").await.unwrap(),
        "an expired scope was not there to remove"
    );
    // Zero and absurd times to live are refused.
    a.set("x", &Counter { count: 1 }).await.unwrap();
    assert!(matches!(
        a.expire("x", Some(Duration::ZERO)).await,
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        a.expire("x", Some(Duration::from_secs(400 * 24 * 3600 * 365)))
            .await,
        Err(Error::InvalidConfig { .. })
    ));
}

/// A write of a type without a time to live keeps the scope's expiry; `expire(None)` clears it.
pub async fn expiry_is_kept_and_cleared(t: &Target) {
    if !expiry(t).await {
        return;
    }
    let st = t.storage();
    st.set("k", &Counter { count: 1 }).await.unwrap();
    assert!(st
        .expire("k", Some(Duration::from_millis(300)))
        .await
        .unwrap());
    increment(&st, "k").await.unwrap();
    st.set("k", &Counter { count: 5 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        st.get::<Counter>("k").await.unwrap(),
        None,
        "writes kept the expiry"
    );
    st.set("c", &Counter { count: 1 }).await.unwrap();
    assert!(st
        .expire("c", Some(Duration::from_millis(200)))
        .await
        .unwrap());
    assert!(st.expire("c", None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        st.get::<Counter>("c").await.unwrap().map(|c| c.count),
        Some(1)
    );
}

/// A session-like type with `#[scope(ttl_secs = 1)]`: every write pushes its expiry on; left
/// alone, it is gone; concurrent writers keep it alive and their count is exact.
pub async fn a_type_with_a_ttl_lives_while_written(t: &Target) {
    #[derive(serde::Serialize, serde::Deserialize, Default, Debug, Clone, PartialEq)]
    struct Session {
        hits: u64,
    }
    impl crate::Scope for Session {
        const TTL: Option<Duration> = Some(Duration::from_secs(1));
    }
    let st = t.storage();
    if !t.driver().capabilities().expiry {
        assert!(matches!(
            st.scoped("s", |s: &mut Session| s.hits += 1).await,
            Err(Error::Unsupported { .. })
        ));
        return;
    }
    for _ in 0..4 {
        st.scoped("s", |s: &mut Session| s.hits += 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        st.get::<Session>("s").await.unwrap().map(|s| s.hits),
        Some(4),
        "kept alive"
    );
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(
        st.get::<Session>("s").await.unwrap(),
        None,
        "gone when left alone"
    );
    let n = st
        .scoped("s", |s: &mut Session| {
            s.hits += 1;
            s.hits
        })
        .await
        .unwrap();
    assert_eq!(n, 1, "starts afresh");
}

/// A closure ends its scope through the compare-and-swap: a removal decided on a value that
/// changed meanwhile is decided again, so "remove the cart when it is empty" never loses a
/// concurrent add; `remove_if` likewise.
pub async fn a_scope_ends_through_the_compare_and_swap(t: &Target) {
    let (a, b) = (t.storage(), t.storage());
    a.set("cart", &vec!["apple".to_owned()]).await.unwrap();
    if !t.driver().capabilities().multi_key_commit {
        // A removal checked against a version is a commit: without them, a typed refusal
        // that leaves the scope as it was.
        let ended = a
            .scoped_option("cart", |c: &mut Option<Vec<String>>| *c = None)
            .await;
        assert!(
            matches!(ended, Err(Error::Unsupported { .. })),
            "a driver without commits answered {ended:?}"
        );
        assert_eq!(
            b.get::<Vec<String>>("cart").await.unwrap(),
            Some(vec!["apple".to_owned()])
        );
        return;
    }
    // a caches the cart with one item; b adds a pear.
    assert_eq!(
        a.get::<Vec<String>>("cart").await.unwrap().map(|c| c.len()),
        Some(1)
    );
    b.scoped("cart", |c: &mut Vec<String>| c.push("pear".into()))
        .await
        .unwrap();
    let left = a
        .scoped_option("cart", |c: &mut Option<Vec<String>>| {
            if let Some(items) = c {
                items.retain(|i| i != "apple");
                if items.is_empty() {
                    *c = None;
                }
            }
            c.as_ref().map_or(0, Vec::len)
        })
        .await
        .unwrap();
    assert_eq!(left, 1, "the pear stays");
    assert_eq!(
        b.get::<Vec<String>>("cart").await.unwrap(),
        Some(vec!["pear".to_owned()])
    );
    let left = b
        .scoped_option("cart", |c: &mut Option<Vec<String>>| {
            if let Some(items) = c {
                items.retain(|i| i != "pear");
                if items.is_empty() {
                    *c = None;
                }
            }
            c.as_ref().map_or(0, Vec::len)
        })
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(a.get::<Vec<String>>("cart").await.unwrap(), None);
    assert_eq!(t.driver().load(&t.key("cart")).await.unwrap(), None);
    // Absent: the closure sees None; setting Some creates.
    let n = a
        .scoped_option("cart", |c: &mut Option<Vec<String>>| {
            assert!(c.is_none());
            *c = Some(vec!["fig".into()]);
            1
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    // remove_if asks again on a changed value.
    b.scoped("cart", |c: &mut Vec<String>| c.push("kiwi".into()))
        .await
        .unwrap();
    assert!(!a
        .remove_if("cart", |c: &Vec<String>| c.len() == 1)
        .await
        .unwrap());
    assert!(a
        .remove_if("cart", |c: &Vec<String>| c.len() == 2)
        .await
        .unwrap());
    assert!(!a.remove_if("cart", |_: &Vec<String>| true).await.unwrap());
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn <name>(t: &Target)` of this file, `cases/schema.rs` and
    /// `cases/lease.rs` is in the
    /// list, once, and nothing else is.
    #[test]
    fn every_case_is_listed_once() {
        let sources = [
            include_str!("cases.rs"),
            include_str!("cases/schema.rs"),
            include_str!("cases/lease.rs"),
            include_str!("cases/watch.rs"),
        ];
        let mut defined: Vec<&str> = sources
            .iter()
            .flat_map(|source| source.lines())
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|l| l.split_once("(t: &Target)").map(|(name, _)| name))
            .collect();
        let mut listed = super::CASES.to_vec();
        defined.sort_unstable();
        listed.sort_unstable();
        assert_eq!(defined, listed);
    }
}
