use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(lossy = true, read_newer(yes), version = 1)]
struct Cart {
    items: Vec<String>,
}

fn main() {}
