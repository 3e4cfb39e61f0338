//! What `#[derive(Scope)]`'s attributes do at run time, on the memory driver.

use mp_storage::{Error, Scope, Storage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

async fn memory() -> Storage {
    Storage::open("memory://").await.unwrap()
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "cart:")]
struct Cart {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
struct Plain {
    n: u64,
}

/// Reads any record and keeps the schema version it was stored at: every stored version is
/// older than this one, so each load goes through `migrate`, which is handed the version.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 4294967295, migrate = Probe::seen)]
struct Probe {
    from: u32,
    old: Value,
}

impl Probe {
    fn seen(from: u32, old: Value) -> Result<Self, std::convert::Infallible> {
        Ok(Probe { from, old })
    }
}

/// Schema version 1: one item.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 1)]
struct OrderV1 {
    item: String,
}

/// Schema version 2: a list of items, migrated from version 1.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 2, migrate = order_from_v1)]
struct OrderV2 {
    items: Vec<String>,
}

#[derive(Debug)]
struct NoItem;

impl std::fmt::Display for NoItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the old order has no item")
    }
}

fn order_from_v1(from: u32, old: Value) -> Result<OrderV2, NoItem> {
    match (from, old["item"].as_str()) {
        (1, Some(item)) => Ok(OrderV2 {
            items: vec![item.to_owned()],
        }),
        _ => Err(NoItem),
    }
}

#[tokio::test]
async fn namespace_prefixes_the_key() {
    let st = memory().await;
    st.scoped("alice", |c: &mut Cart| c.items.push("apple".into()))
        .await
        .unwrap();
    st.scoped("alice", |p: &mut Plain| p.n = 3).await.unwrap();
    assert_eq!(st.list("").await.unwrap(), ["alice", "cart:alice"]);
    assert_eq!(st.list("cart:").await.unwrap(), ["cart:alice"]);

    // The namespaced type reads its own record; the same name without a namespace is another.
    assert_eq!(
        st.get::<Cart>("alice").await.unwrap().unwrap().items,
        ["apple"]
    );
    assert_eq!(
        st.get::<Value>("cart:alice").await.unwrap(),
        Some(json!({"items": ["apple"]}))
    );
    assert_eq!(
        st.get::<Plain>("alice").await.unwrap(),
        Some(Plain { n: 3 })
    );
    assert_eq!(st.get::<Cart>("bob").await.unwrap(), None);

    // `set` goes through the namespace too; `remove` takes the name as stored.
    st.set("bob", &Cart::default()).await.unwrap();
    assert_eq!(st.list("cart:").await.unwrap(), ["cart:alice", "cart:bob"]);
    assert!(st.remove("cart:bob").await.unwrap());
    assert!(!st.remove("bob").await.unwrap());
}

#[tokio::test]
async fn version_is_stored_beside_the_data() {
    let st = memory().await;
    st.set(
        "order",
        &OrderV2 {
            items: vec!["pear".into()],
        },
    )
    .await
    .unwrap();
    st.scoped("plain", |p: &mut Plain| p.n = 1).await.unwrap();
    st.scoped("v1", |o: &mut OrderV1| o.item = "fig".into())
        .await
        .unwrap();

    let probe = st.get::<Probe>("order").await.unwrap().unwrap();
    assert_eq!(probe.from, 2);
    // The version is not in the user's JSON.
    assert_eq!(probe.old, json!({"items": ["pear"]}));
    assert_eq!(st.get::<Probe>("plain").await.unwrap().unwrap().from, 0);
    assert_eq!(st.get::<Probe>("v1").await.unwrap().unwrap().from, 1);
}

#[tokio::test]
async fn older_record_is_migrated_on_load() {
    let st = memory().await;
    st.set(
        "o",
        &OrderV1 {
            item: "apple".into(),
        },
    )
    .await
    .unwrap();

    assert_eq!(
        st.get::<OrderV2>("o").await.unwrap(),
        Some(OrderV2 {
            items: vec!["apple".into()]
        })
    );
    // An update migrates, then writes back at the new version.
    let n = st
        .scoped("o", |o: &mut OrderV2| {
            o.items.push("kiwi".into());
            o.items.len()
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(st.get::<Probe>("o").await.unwrap().unwrap().from, 2);
    assert_eq!(
        st.get::<OrderV2>("o").await.unwrap().unwrap().items,
        ["apple", "kiwi"]
    );
}

#[tokio::test]
async fn failed_migration_reports_the_display_of_the_error() {
    let st = memory().await;
    st.set("o", &Plain { n: 1 }).await.unwrap();
    match st.get::<OrderV2>("o").await {
        Err(Error::Migration { from, reason, .. }) => {
            assert_eq!(from, 0);
            assert_eq!(reason, "the old order has no item");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
    // Nothing was written by the failed update.
    let r = st.scoped("o", |o: &mut OrderV2| o.items.clear()).await;
    assert!(matches!(r, Err(Error::Migration { .. })), "{r:?}");
    assert_eq!(st.get::<Plain>("o").await.unwrap(), Some(Plain { n: 1 }));
}

#[tokio::test]
async fn version_without_migrate_refuses_older_records() {
    let st = memory().await;
    st.set("o", &Plain { n: 1 }).await.unwrap();
    match st.get::<OrderV1>("o").await {
        Err(Error::Migration { from, .. }) => assert_eq!(from, 0),
        other => panic!("expected a migration error, got {other:?}"),
    }
}

#[tokio::test]
async fn newer_record_is_refused_and_kept() {
    let st = memory().await;
    let v2 = OrderV2 {
        items: vec!["plum".into()],
    };
    st.set("o", &v2).await.unwrap();

    match st.get::<OrderV1>("o").await {
        Err(Error::SchemaTooNew {
            stored, supported, ..
        }) => assert_eq!((stored, supported), (2, 1)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let mut ran = false;
    let r = st
        .scoped("o", |o: &mut OrderV1| {
            ran = true;
            o.item = "overwrite".into();
        })
        .await;
    assert!(
        matches!(
            r,
            Err(Error::SchemaTooNew {
                stored: 2,
                supported: 1,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(!ran, "the closure ran on a record it cannot read");
    assert_eq!(st.get::<OrderV2>("o").await.unwrap(), Some(v2));
    assert_eq!(st.get::<Probe>("o").await.unwrap().unwrap().from, 2);
}

/// A generic scope with a namespace.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "box:")]
struct Boxed<T> {
    value: T,
}

#[tokio::test]
async fn generic_scope() {
    let st = memory().await;
    st.scoped("a", |b: &mut Boxed<u32>| b.value += 5)
        .await
        .unwrap();
    st.scoped("b", |b: &mut Boxed<String>| b.value.push('x'))
        .await
        .unwrap();
    assert_eq!(st.list("").await.unwrap(), ["box:a", "box:b"]);
    assert_eq!(
        st.get::<Boxed<u32>>("a").await.unwrap(),
        Some(Boxed { value: 5 })
    );
}

mod reexport {
    pub use mp_storage as storage;
}

/// A scope whose derive reaches the crate through a re-export.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(crate = "crate::reexport::storage", namespace = "re:")]
enum Light {
    #[default]
    Off,
    On(u8),
}

#[tokio::test]
async fn crate_path_and_enum() {
    let st = memory().await;
    st.scoped("hall", |l: &mut Light| *l = Light::On(80))
        .await
        .unwrap();
    assert_eq!(st.list("").await.unwrap(), ["re:hall"]);
    assert_eq!(st.get::<Light>("hall").await.unwrap(), Some(Light::On(80)));
}
