use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 4294967296)]
struct Big {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = -1)]
struct Negative {
    items: Vec<String>,
}

fn main() {}
