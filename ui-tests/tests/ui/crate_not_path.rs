use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(crate = "not a path")]
struct Cart {
    items: Vec<String>,
}

fn main() {}
