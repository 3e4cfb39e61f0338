//! `lossy`, `read_newer` and `migrate_from`, on plain and generic types: a chain of typed
//! migrations v0 → v1 → v2.

use mp_storage::Scope;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "cart:")]
struct CartV0 {
    item: String,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "cart:", version = 1, migrate_from = CartV0, read_newer)]
struct CartV1 {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "cart:", version = 2, migrate_from = crate::CartV1)]
#[scope(lossy)]
struct Cart {
    lines: Vec<(String, u32)>,
}

impl From<CartV0> for CartV1 {
    fn from(old: CartV0) -> Self {
        CartV1 {
            items: vec![old.item],
        }
    }
}

impl From<CartV1> for Cart {
    fn from(old: CartV1) -> Self {
        Cart {
            lines: old.items.into_iter().map(|i| (i, 1)).collect(),
        }
    }
}

/// A generic type whose previous version names its parameter.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 1)]
struct BoxV1<T> {
    value: T,
}

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 2, migrate_from = BoxV1<T>)]
struct Box2<T> {
    values: Vec<T>,
}

impl<T> From<BoxV1<T>> for Box2<T> {
    fn from(old: BoxV1<T>) -> Self {
        Box2 {
            values: vec![old.value],
        }
    }
}

fn main() {
    assert!(<Cart as Scope>::LOSSY && !<Cart as Scope>::READ_NEWER);
    assert!(<CartV1 as Scope>::READ_NEWER && !<CartV1 as Scope>::LOSSY);
    assert!(!<CartV0 as Scope>::LOSSY && !<CartV0 as Scope>::READ_NEWER);

    let apple = || ("apple".to_owned(), 1);
    assert_eq!(
        Cart::migrate(0, json!({"item": "apple"})).unwrap(),
        Cart { lines: vec![apple()] }
    );
    assert_eq!(
        Cart::migrate(1, json!({"items": ["apple"]})).unwrap(),
        Cart { lines: vec![apple()] }
    );
    let e = Cart::migrate(1, json!({"item": "apple"})).unwrap_err();
    assert!(e.contains("does not decode as") && e.contains("CartV1"), "{e}");
    assert_eq!(
        <Box2<u8> as Scope>::migrate(1, json!({"value": 7})).unwrap(),
        Box2 { values: vec![7] }
    );
    assert!(<Box2<u8> as Scope>::migrate(0, json!({"value": 7})).is_err());
}
