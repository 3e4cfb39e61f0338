use mp_storage::Scope;
use serde::{Deserialize, Serialize};

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate = "upgrade")]
struct Cart {
    items: Vec<String>,
}

fn upgrade(_from: u32, _old: serde_json::Value) -> Result<Cart, String> {
    Ok(Cart::default())
}

fn main() {}
