use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
struct CartV0 {
    item: String,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(migrate_from = CartV0)]
struct Cart {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 0, migrate_from = CartV0)]
struct Order {
    items: Vec<String>,
}

impl From<CartV0> for Cart {
    fn from(old: CartV0) -> Cart {
        Cart { items: vec![old.item] }
    }
}

impl From<CartV0> for Order {
    fn from(old: CartV0) -> Order {
        Order { items: vec![old.item] }
    }
}

fn main() {}
