use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 1)]
struct CartV1 {
    item: String,
}

// `Cart: From<CartV1>` is missing.
#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate_from = CartV1)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
