use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(crate = mp_storage)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
