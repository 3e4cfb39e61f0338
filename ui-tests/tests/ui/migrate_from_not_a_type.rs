use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate_from = "CartV1", namespace = 5)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
