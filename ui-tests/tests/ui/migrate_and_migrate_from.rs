use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 1)]
struct CartV1 {
    item: String,
}

// One way to migrate: the function or the previous type, not both.
#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate = upgrade, migrate_from = CartV1)]
struct Cart {
    items: Vec<String>,
}

fn upgrade(_from: u32, _old: serde_json::Value) -> Result<Cart, String> {
    Ok(Cart::default())
}

impl From<CartV1> for Cart {
    fn from(old: CartV1) -> Cart {
        Cart { items: vec![old.item] }
    }
}

fn main() {}
