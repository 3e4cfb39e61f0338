use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2u8)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
