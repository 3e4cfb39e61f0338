use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2)]
struct CartV2 {
    items: Vec<String>,
}

// The previous version's type must be of a lower version.
#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate_from = CartV2)]
struct Cart {
    items: Vec<String>,
}

impl From<CartV2> for Cart {
    fn from(old: CartV2) -> Cart {
        Cart { items: old.items }
    }
}

fn main() {}
