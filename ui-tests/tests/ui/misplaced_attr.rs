use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
struct Cart {
    #[scope(namespace = "items:")]
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default)]
enum State {
    #[default]
    #[scope(version = 1)]
    Empty,
    Full(#[scope(version = 2)] u64),
}

fn main() {}
