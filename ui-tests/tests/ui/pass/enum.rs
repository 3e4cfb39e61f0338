use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default, Debug, PartialEq)]
#[scope(namespace = "door:")]
#[scope(version = 2)]
enum Door {
    #[default]
    Closed,
    Open {
        since: u64,
    },
    Locked(String),
}

/// No attributes at all: the trait's defaults.
#[derive(Scope, Serialize, Deserialize, Default)]
enum Plain {
    #[default]
    Only,
}

fn main() {
    assert_eq!(<Door as Scope>::NAMESPACE, "door:");
    assert_eq!(<Door as Scope>::VERSION, 2);
    // Version 2 without `migrate`: older records are refused by the trait's default.
    assert!(<Door as Scope>::migrate(1, serde_json::Value::Null).is_err());
    assert_eq!(<Plain as Scope>::NAMESPACE, "");
    assert_eq!(<Plain as Scope>::VERSION, 0);
}
