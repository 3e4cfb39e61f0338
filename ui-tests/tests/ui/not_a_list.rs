use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope]
struct Bare {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope = "cart:"]
struct NameValue {
    items: Vec<String>,
}

fn main() {}
