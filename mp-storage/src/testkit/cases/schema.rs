//! The cases of schema change: types that change under stored data (renamed and removed fields,
//! nested structs and maps, enum variants), two releases writing the same scopes, typed
//! migrations, and the rewrite of every scope of a type. Listed with the others in
//! [`behavior_suite!`](crate::behavior_suite).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::super::{write, Target};
use crate::{Error, MigrationProgress, Record, Scope};

/// The raw record of the scope stored as `name` (namespace included).
async fn raw(t: &Target, name: &str) -> Option<Record> {
    match t.driver().load(&t.key(name)).await {
        Ok(r) => r,
        Err(e) => panic!("loading {name:?} failed: {e}"),
    }
}

/// Writes `data` at schema version `schema` as the raw record of `name`, as another release
/// would have.
async fn put_raw(t: &Target, name: &str, schema: u32, data: &Value) {
    let data = data.to_string();
    let mut w = write(data.as_bytes());
    w.schema = schema;
    if let Err(e) = t.driver().put(&t.key(name), w).await {
        panic!("writing {name:?} failed: {e}");
    }
}

/// The fields of a [`Error::WouldLoseData`], or a panic naming what came instead.
fn lost_fields<T: std::fmt::Debug>(r: Result<T, Error>, type_suffix: &str) -> Vec<String> {
    match r {
        Err(Error::WouldLoseData {
            type_name,
            fields,
            more,
            ..
        }) => {
            assert!(type_name.ends_with(type_suffix), "{type_name}");
            assert_eq!(more, 0);
            fields
        }
        other => panic!("expected WouldLoseData, got {other:?}"),
    }
}

/// A cart as the first release stores it.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct Cart {
    items: BTreeMap<String, u32>,
}

/// The cart after a rename `items` → `lines` with `#[serde(default)]` and no new version.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct CartRenamed {
    #[serde(default)]
    lines: BTreeMap<String, u32>,
}

/// The same rename without `#[serde(default)]`.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct CartRenamedStrict {
    lines: BTreeMap<String, u32>,
}

/// The rename done with `#[serde(alias)]`: the old name is read, the new one written.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct CartAliased {
    #[serde(alias = "items")]
    lines: BTreeMap<String, u32>,
}

/// A field renamed under `#[serde(default)]`: every stored cart reads as empty, and a write over
/// one is refused with `WouldLoseData` naming scope, type and field; the record stays as it was.
/// Reads, read-only updates and aborts never fail for it. Renamed with `#[serde(alias)]`, the
/// data moves to the new name and the write goes through.
pub async fn renamed_field_with_default_is_refused(t: &Target) {
    let st = t.storage();
    st.scoped("cart", |c: &mut Cart| {
        c.items.insert("apple".into(), 2);
    })
    .await
    .unwrap();
    let before = raw(t, "cart").await.unwrap();

    assert_eq!(
        st.get::<CartRenamed>("cart").await.unwrap(),
        Some(CartRenamed::default())
    );
    let n = st
        .scoped("cart", |c: &mut CartRenamed| c.lines.len())
        .await
        .unwrap();
    assert_eq!(n, 0, "the renamed type reads an empty cart");
    let aborted: Result<(), Error> = st
        .try_scoped("cart", |c: &mut CartRenamed| {
            c.lines.insert("pear".into(), 1);
            Err(Error::InvalidConfig {
                setting: "none",
                reason: "aborted".into(),
            })
        })
        .await;
    assert!(matches!(aborted, Err(Error::InvalidConfig { .. })));

    // Refused every time (the verdict is kept), by another handle too.
    for st in [&st, &st, &t.storage()] {
        let r = st
            .scoped("cart", |c: &mut CartRenamed| {
                c.lines.insert("pear".into(), 1);
            })
            .await;
        if let Err(e) = &r {
            let msg = e.to_string();
            assert!(
                msg.contains("\"cart\"") && msg.contains("CartRenamed") && msg.contains("items"),
                "{msg}"
            );
            assert_eq!(e.category(), crate::ErrorCategory::StoredData);
        }
        assert_eq!(lost_fields(r, "CartRenamed"), ["items"]);
    }
    assert_eq!(
        raw(t, "cart").await.unwrap(),
        before,
        "the record must be untouched"
    );
    let cart = st.get::<Cart>("cart").await.unwrap().unwrap();
    assert_eq!(
        cart.items.get("apple"),
        Some(&2),
        "the apples are still there"
    );

    st.scoped("cart", |c: &mut CartAliased| {
        c.lines.insert("pear".into(), 1);
    })
    .await
    .unwrap();
    assert_eq!(
        st.get::<Value>("cart").await.unwrap(),
        Some(json!({"lines": {"apple": 2, "pear": 1}}))
    );
}

/// The same rename without `#[serde(default)]`: a `Decode` error, and the record is untouched.
pub async fn renamed_field_without_default_is_a_decode_error(t: &Target) {
    let st = t.storage();
    st.scoped("cart", |c: &mut Cart| {
        c.items.insert("apple".into(), 2);
    })
    .await
    .unwrap();
    let before = raw(t, "cart").await.unwrap();
    assert!(matches!(
        st.get::<CartRenamedStrict>("cart").await,
        Err(Error::Decode { .. })
    ));
    let r = st
        .scoped("cart", |c: &mut CartRenamedStrict| {
            c.lines.insert("pear".into(), 1);
        })
        .await;
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    assert_eq!(raw(t, "cart").await.unwrap(), before);
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct Profile {
    name: String,
    email: String,
}

/// `Profile` with `email` removed.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct ProfileSlim {
    name: String,
}

/// `Profile` with `email` removed on purpose.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", lossy)]
struct ProfileSlimLossy {
    name: String,
}

/// A removed field: a write is refused, unless the type is `#[scope(lossy)]`, which drops it.
/// A refusal decided on a stale cache is checked against the backend: once another process
/// wrote the record without the field, the write goes through.
pub async fn removed_field_is_refused_unless_lossy(t: &Target) {
    let a = t.storage();
    let b = t.storage();
    a.set(
        "p",
        &Profile {
            name: "ann".into(),
            email: "ann@example.com".into(),
        },
    )
    .await
    .unwrap();
    let before = raw(t, "p").await.unwrap();
    let rename = |p: &mut ProfileSlim| p.name = "anna".into();
    assert_eq!(
        lost_fields(a.scoped("p", rename).await, "ProfileSlim"),
        ["email"]
    );
    assert_eq!(raw(t, "p").await.unwrap(), before);

    // Another process drops the field on purpose.
    b.scoped("p", |p: &mut ProfileSlimLossy| p.name = "ann b".into())
        .await
        .unwrap();
    assert_eq!(
        b.get::<Value>("p").await.unwrap(),
        Some(json!({"name": "ann b"}))
    );
    // The first handle's cache still holds the record with the email: its refusal is
    // confirmed against the backend, and the write goes through on the fresh record.
    a.scoped("p", rename).await.unwrap();
    assert_eq!(
        a.get::<Value>("p").await.unwrap(),
        Some(json!({"name": "anna"}))
    );
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct Order {
    owner: Owner,
    lines: BTreeMap<String, Line>,
    log: Vec<Entry>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Owner {
    name: String,
    email: String,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Line {
    qty: u32,
    gift: bool,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Entry {
    at: u64,
    by: String,
}

/// `Order` as an older release knew it: fewer fields at every depth.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct OrderOld {
    owner: OwnerOld,
    lines: BTreeMap<String, LineOld>,
    log: Vec<EntryOld>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct OwnerOld {
    name: String,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct LineOld {
    qty: u32,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct EntryOld {
    at: u64,
}

/// Fields missing deep inside structs, maps and lists are each named by their path.
pub async fn nested_structs_and_maps_are_checked(t: &Target) {
    let st = t.storage();
    let mut order = Order {
        owner: Owner {
            name: "ann".into(),
            email: "ann@example.com".into(),
        },
        ..Order::default()
    };
    order
        .lines
        .insert("pear".into(), Line { qty: 1, gift: true });
    // `false` is data too: only `null`, `[]` and `{}` carry none.
    order.lines.insert(
        "fig".into(),
        Line {
            qty: 2,
            gift: false,
        },
    );
    order.log.push(Entry {
        at: 1,
        by: "ann".into(),
    });
    st.set("o", &order).await.unwrap();
    let before = raw(t, "o").await.unwrap();
    let r = st
        .scoped("o", |o: &mut OrderOld| {
            o.log.push(EntryOld { at: 2 });
        })
        .await;
    assert_eq!(
        lost_fields(r, "OrderOld"),
        [
            "lines.fig.gift",
            "lines.pear.gift",
            "log[0].by",
            "owner.email"
        ]
    );
    assert_eq!(raw(t, "o").await.unwrap(), before);
    // The full type writes as usual.
    st.scoped("o", |o: &mut Order| o.log.clear()).await.unwrap();
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct Tagged {
    price: f64,
    tags: HashSet<String>,
    note: Option<String>,
}

/// What changes between the stored JSON and its re-encoding without losing anything: key order,
/// number spelling (`1` for `1.0`), a set in another order, `null`, `[]` and `{}` under keys the
/// type does not have, defaults the type adds.
pub async fn formatting_differences_are_not_loss(t: &Target) {
    let st = t.storage();
    st.set(
        "tagged",
        &json!({
            "tags": ["c", "a", "b"],
            "price": 1,
            "gone": null,
            "empty": [],
            "meta": {"inner": {}},
        }),
    )
    .await
    .unwrap();
    let price = st
        .scoped("tagged", |v: &mut Tagged| {
            v.price += 0.5;
            v.price
        })
        .await
        .unwrap();
    assert_eq!(price, 1.5);
    let v: Value = st.get("tagged").await.unwrap().unwrap();
    assert_eq!(v["price"], json!(1.5));
    assert_eq!(v["note"], Value::Null);
    assert!(v.get("meta").is_none());
    let mut tags: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["a", "b", "c"]);
    // Written by another handle, whose set comes out in another order: still no loss.
    for _ in 0..3 {
        t.storage()
            .scoped("tagged", |v: &mut Tagged| v.price += 1.0)
            .await
            .unwrap();
    }
}

/// A fruit as the newer release knows it.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Fruit {
    #[default]
    Apple,
    Pear {
        ripe: bool,
    },
}

/// The older release: no `Pear`, and unknown kinds read as `Other`.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FruitOld {
    #[default]
    Apple,
    #[serde(other)]
    Other,
}

/// A release that removed `Pear` and reads no other kind.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FruitStrict {
    #[default]
    Apple,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct Basket {
    fruit: Fruit,
    n: u32,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct BasketOld {
    fruit: FruitOld,
    n: u32,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate")]
struct BasketStrict {
    fruit: FruitStrict,
    n: u32,
}

/// An enum variant added by one release and unknown to another: read through `#[serde(other)]`
/// it is a changed leaf, so a write is refused; without a catch-all, or once the variant is
/// removed, it is a `Decode` error. Either way the record is untouched. Variants both know write
/// freely.
pub async fn enum_variant_added_and_removed(t: &Target) {
    let st = t.storage();
    st.scoped("b", |b: &mut BasketOld| b.n = 1).await.unwrap();
    st.scoped("b", |b: &mut Basket| {
        b.n += 1;
        b.fruit = Fruit::Pear { ripe: true };
    })
    .await
    .unwrap();
    let before = raw(t, "b").await.unwrap();

    let old = st.get::<BasketOld>("b").await.unwrap().unwrap();
    assert_eq!(old.fruit, FruitOld::Other);
    let r = st.scoped("b", |b: &mut BasketOld| b.n += 1).await;
    assert_eq!(lost_fields(r, "BasketOld"), ["fruit.kind", "fruit.ripe"]);
    let r = st.scoped("b", |b: &mut BasketStrict| b.n += 1).await;
    assert!(matches!(r, Err(Error::Decode { .. })), "{r:?}");
    assert!(matches!(
        st.get::<BasketStrict>("b").await,
        Err(Error::Decode { .. })
    ));
    assert_eq!(raw(t, "b").await.unwrap(), before);

    // Back to a variant every release knows: all of them write.
    st.scoped("b", |b: &mut Basket| b.fruit = Fruit::Apple)
        .await
        .unwrap();
    st.scoped("b", |b: &mut BasketOld| b.n += 1).await.unwrap();
    st.scoped("b", |b: &mut BasketStrict| b.n += 1)
        .await
        .unwrap();
    assert_eq!(
        st.get::<Basket>("b").await.unwrap().unwrap(),
        Basket {
            fruit: Fruit::Apple,
            n: 4
        }
    );
}

/// A list as the release before a schema change stores it; it reads newer records.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", version = 1, read_newer)]
struct ListV1 {
    items: Vec<String>,
}

/// The same release without `read_newer`.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", version = 1)]
struct ListV1Strict {
    items: Vec<String>,
}

/// The next release: a note beside the items.
#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", version = 2, migrate_from = ListV1)]
struct ListV2 {
    items: Vec<String>,
    note: Option<String>,
}

impl From<ListV1> for ListV2 {
    fn from(old: ListV1) -> Self {
        ListV2 {
            items: old.items,
            note: None,
        }
    }
}

/// Two releases (old and new type, each its own handle as its own server) write the same scope
/// in turn during a rolling deploy: the old one reads the new records under `read_newer` and
/// writes them, keeping their version, as long as that keeps every stored field; once the new
/// release stores data the old type does not know, the old one is refused and the data stays.
pub async fn two_releases_write_the_same_scopes(t: &Target) {
    let old = t.storage();
    let new = t.storage();
    old.scoped("list", |l: &mut ListV1| l.items.push("old0".into()))
        .await
        .unwrap();
    assert_eq!(raw(t, "list").await.unwrap().schema, 1);
    for i in 0..3 {
        new.scoped("list", |l: &mut ListV2| l.items.push(format!("new{i}")))
            .await
            .unwrap();
        assert_eq!(raw(t, "list").await.unwrap().schema, 2);
        old.scoped("list", |l: &mut ListV1| {
            l.items.push(format!("old{}", i + 1))
        })
        .await
        .unwrap();
        assert_eq!(
            raw(t, "list").await.unwrap().schema,
            2,
            "the old release keeps the newer version"
        );
    }
    let items = ["old0", "new0", "old1", "new1", "old2", "new2", "old3"];
    assert_eq!(
        old.get::<ListV1>("list").await.unwrap().unwrap().items,
        items
    );
    assert!(matches!(
        old.get::<ListV1Strict>("list").await,
        Err(Error::SchemaTooNew {
            stored: 2,
            supported: 1,
            ..
        })
    ));

    // The new release stores a note: the old one still reads, but no longer writes.
    new.scoped("list", |l: &mut ListV2| l.note = Some("gift".into()))
        .await
        .unwrap();
    let before = raw(t, "list").await.unwrap();
    assert_eq!(
        old.get::<ListV1>("list").await.unwrap().unwrap().items,
        items
    );
    let r = old.scoped("list", |l: &mut ListV1| l.items.clear()).await;
    assert_eq!(lost_fields(r, "ListV1"), ["note"]);
    assert_eq!(raw(t, "list").await.unwrap(), before);

    // Without the note (stored as `null`), the old release writes again.
    new.scoped("list", |l: &mut ListV2| l.note = None)
        .await
        .unwrap();
    old.scoped("list", |l: &mut ListV1| l.items.truncate(1))
        .await
        .unwrap();
    assert_eq!(
        new.get::<ListV2>("list").await.unwrap().unwrap(),
        ListV2 {
            items: vec!["old0".into()],
            note: None
        }
    );
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", namespace = "chain:")]
struct ChainV0 {
    item: String,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", namespace = "chain:", version = 1, migrate_from = ChainV0)]
struct ChainV1 {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", namespace = "chain:", version = 2, migrate_from = ChainV1)]
struct ChainV2 {
    lines: Vec<ChainLine>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct ChainLine {
    name: String,
    qty: u32,
}

impl From<ChainV0> for ChainV1 {
    fn from(old: ChainV0) -> Self {
        ChainV1 {
            items: vec![old.item],
        }
    }
}

impl From<ChainV1> for ChainV2 {
    fn from(old: ChainV1) -> Self {
        ChainV2 {
            lines: old
                .items
                .into_iter()
                .map(|name| ChainLine { name, qty: 1 })
                .collect(),
        }
    }
}

fn line(name: &str) -> ChainLine {
    ChainLine {
        name: name.into(),
        qty: 1,
    }
}

/// Typed migrations chain: a v0 record reaches v2 through v1's own migration; reads and
/// read-only updates leave the record as stored; a write stores v2. A record of the previous
/// version that does not decode as its type is a `Migration` error, a newer one `SchemaTooNew`,
/// and both are left as they are.
pub async fn typed_migrations_chain(t: &Target) {
    let st = t.storage();
    st.set(
        "a",
        &ChainV0 {
            item: "apple".into(),
        },
    )
    .await
    .unwrap();
    st.set(
        "b",
        &ChainV1 {
            items: vec!["pear".into(), "fig".into()],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        st.get::<ChainV2>("a").await.unwrap().unwrap().lines,
        [line("apple")]
    );
    assert_eq!(
        st.get::<ChainV2>("b").await.unwrap().unwrap().lines,
        [line("pear"), line("fig")]
    );
    let before = raw(t, "chain:a").await.unwrap();
    let n = st
        .scoped("a", |c: &mut ChainV2| c.lines.len())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        raw(t, "chain:a").await.unwrap(),
        before,
        "a read-only update writes nothing"
    );
    st.scoped("a", |c: &mut ChainV2| c.lines[0].qty = 3)
        .await
        .unwrap();
    let after = raw(t, "chain:a").await.unwrap();
    assert_eq!(after.schema, 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&after.data).unwrap(),
        json!({"lines": [{"name": "apple", "qty": 3}]})
    );

    // A v1 record that is not a `ChainV1`.
    put_raw(t, "chain:c", 1, &json!({"items": 5})).await;
    let before = raw(t, "chain:c").await.unwrap();
    match st.scoped("c", |c: &mut ChainV2| c.lines.clear()).await {
        Err(Error::Migration { from, reason, .. }) => {
            assert_eq!(from, 1);
            assert!(reason.contains("ChainV1"), "{reason}");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
    // A record of a version newer than any of them.
    put_raw(t, "chain:d", 3, &json!({"lines": []})).await;
    assert!(matches!(
        st.get::<ChainV2>("d").await,
        Err(Error::SchemaTooNew { stored: 3, .. })
    ));
    assert_eq!(raw(t, "chain:c").await.unwrap(), before);
    assert_eq!(raw(t, "chain:d").await.unwrap().schema, 3);
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", namespace = "n:", version = 1)]
struct CountV1 {
    n: u64,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[scope(crate = "crate", namespace = "n:", version = 2, migrate_from = CountV1)]
struct CountV2 {
    count: u64,
}

impl From<CountV1> for CountV2 {
    fn from(old: CountV1) -> Self {
        CountV2 { count: old.n }
    }
}

/// `migrate_all` rewrites every scope of the type under the prefix to its version in batches,
/// reporting progress after each; scopes already current are only read; those whose migration
/// fails are counted, named and left as they are; a writer running meanwhile loses nothing; a
/// second run finds nothing to do. A read-only update of an old record still writes nothing.
pub async fn migrate_all_rewrites_every_scope(t: &Target) {
    let st = t.storage();
    for i in 0..20 {
        st.set(&format!("s{i:02}"), &CountV1 { n: 10 })
            .await
            .unwrap();
    }
    for name in ["s20", "s21"] {
        put_raw(t, &format!("n:{name}"), 1, &json!({"n": "ten"})).await;
    }
    for i in 22..25 {
        st.set(&format!("s{i:02}"), &CountV2 { count: 10 })
            .await
            .unwrap();
    }
    st.set("t00", &CountV1 { n: 10 }).await.unwrap();
    st.set("s99", &super::Counter { count: 1 }).await.unwrap();

    let before = raw(t, "n:s00").await.unwrap();
    st.scoped("s00", |c: &mut CountV2| c.count).await.unwrap();
    assert_eq!(raw(t, "n:s00").await.unwrap(), before);
    let broken = raw(t, "n:s20").await.unwrap();

    // A writer of the new release, on another handle, while the migration runs.
    let writer = {
        let other = t.storage();
        tokio::spawn(async move {
            for i in 0..20 {
                other
                    .scoped(format!("s{i:02}"), |c: &mut CountV2| c.count += 1)
                    .await
                    .unwrap();
            }
        })
    };
    let seen = Mutex::new(Vec::<MigrationProgress>::new());
    let report = st
        .migrate_all::<CountV2>()
        .prefix("s")
        .batch_size(4)
        .on_progress(|p| seen.lock().unwrap().push(p.clone()))
        .run()
        .await
        .unwrap();
    writer.await.unwrap();

    assert_eq!(report.scanned, 25);
    assert_eq!(report.migrated + report.current, 23, "{report:?}");
    assert!(report.current >= 3, "{report:?}");
    assert_eq!((report.failed, report.absent), (2, 0));
    let failed: Vec<&str> = report.failures.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(failed, ["s20", "s21"]);
    assert!(report
        .failures
        .iter()
        .all(|f| matches!(f.error, Error::Migration { from: 1, .. })));
    assert_eq!(report.cursor.as_deref(), Some("s24"));

    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 7, "25 scopes in batches of 4");
    let cursors: Vec<&str> = seen.iter().filter_map(|p| p.cursor.as_deref()).collect();
    assert_eq!(cursors, ["s03", "s07", "s11", "s15", "s19", "s23", "s24"]);
    assert!(seen.iter().all(|p| p.total == 25));
    assert_eq!(
        seen.iter().map(|p| p.scanned).collect::<Vec<_>>(),
        [4, 8, 12, 16, 20, 24, 25]
    );

    for i in (0..20).chain(22..25) {
        let name = format!("s{i:02}");
        assert_eq!(raw(t, &format!("n:{name}")).await.unwrap().schema, 2);
        let count = st.get::<CountV2>(&name).await.unwrap().unwrap().count;
        assert_eq!(count, if i < 20 { 11 } else { 10 }, "{name}");
    }
    assert_eq!(raw(t, "n:s20").await.unwrap(), broken);
    assert_eq!(
        raw(t, "n:t00").await.unwrap().schema,
        1,
        "outside the prefix"
    );
    assert_eq!(
        raw(t, "s99").await.unwrap().schema,
        0,
        "outside the namespace"
    );

    let again = st.migrate_all::<CountV2>().prefix("s").run().await.unwrap();
    assert_eq!(
        (again.scanned, again.migrated, again.current, again.failed),
        (25, 0, 23, 2)
    );
}

/// A `migrate_all` run stopped after two batches (its future dropped, as when the process
/// stops) resumes from the cursor its progress callback saw, and the two runs together migrate
/// every scope once.
pub async fn migrate_all_resumes_after_interruption(t: &Target) {
    let st = t.storage();
    for i in 0..30 {
        st.set(&format!("r{i:02}"), &CountV1 { n: i })
            .await
            .unwrap();
    }
    let cursor = Arc::new(Mutex::new(None::<String>));
    let stop = tokio::sync::Notify::new();
    let batches = Mutex::new(0);
    let run = st
        .migrate_all::<CountV2>()
        .batch_size(5)
        .on_progress(|p| {
            *cursor.lock().unwrap() = p.cursor.clone();
            let mut n = batches.lock().unwrap();
            *n += 1;
            if *n == 2 {
                stop.notify_one();
            }
        })
        .run();
    tokio::select! {
        biased;
        () = stop.notified() => {}
        r = run => panic!("the run should have been stopped, it ended with {r:?}"),
    }
    let cursor = cursor.lock().unwrap().clone().unwrap();
    assert_eq!(cursor, "r09");
    for i in 0..10 {
        assert_eq!(raw(t, &format!("n:r{i:02}")).await.unwrap().schema, 2);
    }

    let report = st
        .migrate_all::<CountV2>()
        .batch_size(5)
        .resume_after(cursor)
        .run()
        .await
        .unwrap();
    assert_eq!(report.scanned, 20);
    assert_eq!(report.migrated + report.current, 20);
    assert_eq!(report.cursor.as_deref(), Some("r29"));
    for i in 0..30 {
        let name = format!("r{i:02}");
        assert_eq!(raw(t, &format!("n:{name}")).await.unwrap().schema, 2);
        assert_eq!(
            st.get::<CountV2>(&name).await.unwrap(),
            Some(CountV2 { count: i })
        );
    }
}
