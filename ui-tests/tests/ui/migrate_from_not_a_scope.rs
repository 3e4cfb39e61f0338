use mp_storage::Scope;
use serde::{Deserialize, Serialize};

// The previous version's type must be a scope itself (it knows its version).
#[derive(Serialize, Deserialize, Default)]
struct CartV1 {
    item: String,
}

#[derive(Scope, Serialize, Deserialize, Default)]
#[scope(version = 2, migrate_from = CartV1)]
struct Cart {
    items: Vec<String>,
}

impl From<CartV1> for Cart {
    fn from(old: CartV1) -> Cart {
        Cart { items: vec![old.item] }
    }
}

fn main() {}

// Eight scope types that sort before every other in the list of implementors rustc prints, so
// that the expected output does not change with the crate's features (`testkit` adds one).
macro_rules! first_scopes {
    ($($t:ident)*) => {$(
        #[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
        #[allow(dead_code)]
        struct $t;
    )*};
}
first_scopes!(A0 A1 A2 A3 A4 A5 A6 A7);
