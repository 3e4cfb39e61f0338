use mp_storage::Scope;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Generics, bounds and a where-clause are carried over; the impl holds only when the
/// instance has the supertraits.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "pair:", version = 3, migrate = upgrade::<A, B>)]
struct Pair<A: Debug, B = u64>
where
    B: Clone,
{
    first: A,
    second: B,
}

// The impl is bounded on the whole type, so a generic migration states its bounds that way.
fn upgrade<A, B>(from: u32, old: serde_json::Value) -> Result<Pair<A, B>, std::fmt::Error>
where
    A: Debug,
    B: Clone,
    Pair<A, B>: DeserializeOwned,
{
    if from == 2 {
        serde_json::from_value(old).map_err(|_| std::fmt::Error)
    } else {
        Err(std::fmt::Error)
    }
}

/// A tuple struct, with the migration's type parameter inferred from `Self`.
#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(version = 1, migrate = wrap)]
struct Wrapper<T>(T);

fn wrap<T>(_from: u32, old: serde_json::Value) -> Result<Wrapper<T>, String>
where
    Wrapper<T>: DeserializeOwned,
{
    serde_json::from_value(old).map_err(|e| e.to_string())
}

fn is_scope<T: Scope>() {}

fn main() {
    is_scope::<Pair<String>>();
    is_scope::<Pair<i8, Vec<u8>>>();
    is_scope::<Wrapper<bool>>();
    assert_eq!(<Pair<String> as Scope>::NAMESPACE, "pair:");
    assert_eq!(<Pair<String> as Scope>::VERSION, 3);
    assert_eq!(
        <Pair<String> as Scope>::migrate(2, serde_json::json!({"first": "a", "second": 7})).unwrap(),
        Pair { first: "a".to_owned(), second: 7 }
    );
    assert_eq!(
        <Pair<String> as Scope>::migrate(1, serde_json::json!({})).unwrap_err(),
        "an error occurred when formatting an argument"
    );
    assert_eq!(
        <Wrapper<bool> as Scope>::migrate(0, serde_json::json!(true)).unwrap(),
        Wrapper(true)
    );
    assert_eq!(<Wrapper<bool> as Scope>::NAMESPACE, "");
}
