use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(namespace = "cart:"ns)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
