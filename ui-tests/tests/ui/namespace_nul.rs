use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(namespace = "cart\0")]
struct Cart {
    items: Vec<String>,
}

fn main() {}
