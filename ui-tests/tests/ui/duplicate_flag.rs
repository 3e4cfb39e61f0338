use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(lossy, read_newer)]
#[scope(read_newer, lossy)]
struct Cart {
    items: Vec<String>,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 1)]
struct OrderV1 {
    item: String,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate_from = OrderV1, migrate_from = OrderV1)]
struct Order {
    items: Vec<String>,
}

impl From<OrderV1> for Order {
    fn from(old: OrderV1) -> Order {
        Order { items: vec![old.item] }
    }
}

fn main() {}
