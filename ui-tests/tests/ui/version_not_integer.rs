use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = "2")]
struct Cart {
    items: Vec<String>,
}

fn main() {}
