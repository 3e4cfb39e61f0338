//! A crate that re-exports mp_storage points the derive at its own path. The module is
//! `#![no_implicit_prelude]` and shadows prelude names, so the generated code must reach
//! everything through the crate path.

mod reexport {
    /// mp_storage as a re-exporting crate would show it. Its migration helper is replaced
    /// by one that marks the error, to see that the generated code goes through this path.
    pub mod storage {
        pub use ::mp_storage::*;

        pub mod __private {
            pub use ::mp_storage::__private::*;

            pub fn migrate<T, E: std::fmt::Display>(
                f: fn(u32, Value) -> Result<T, E>,
                from: u32,
                old: Value,
            ) -> Result<T, String> {
                f(from, old).map_err(|e| format!("through the re-export: {e}"))
            }
        }
    }
}

#[allow(non_camel_case_types, dead_code)]
mod app {
    #![no_implicit_prelude]

    use super::reexport::storage::Scope;

    // (`str` is not shadowed: serde's own derives need it.)
    struct Result;
    struct String;
    struct Value;
    struct u32;
    mod mp_storage {}
    mod serde_json {}

    #[derive(
        Scope,
        ::serde::Serialize,
        ::serde::Deserialize,
        ::std::default::Default,
        ::std::fmt::Debug,
    )]
    #[scope(crate = "crate::reexport::storage")]
    #[scope(namespace = r"cart:", version = 0x2, migrate = self::upgrade)]
    pub struct Cart {
        pub items: ::std::vec::Vec<::std::string::String>,
    }

    // The schema-change attributes through the same path, with `bool` shadowed too.
    struct bool;

    #[derive(Scope, ::serde::Serialize, ::serde::Deserialize, ::std::default::Default)]
    #[scope(crate = "crate::reexport::storage", version = 1)]
    pub struct OrderV1 {
        pub item: ::std::string::String,
    }

    #[derive(Scope, ::serde::Serialize, ::serde::Deserialize, ::std::default::Default)]
    #[scope(crate = "crate::reexport::storage", version = 2, migrate_from = OrderV1)]
    #[scope(lossy, read_newer)]
    pub struct Order {
        pub items: ::std::vec::Vec<::std::string::String>,
    }

    impl ::std::convert::From<OrderV1> for Order {
        fn from(old: OrderV1) -> Order {
            Order { items: ::std::vec![old.item] }
        }
    }

    // Functions named like the parameters of the generated `migrate` must not get in the way.
    fn from() {}
    fn old() {}

    fn upgrade(
        from: ::std::primitive::u32,
        _old: ::serde_json::Value,
    ) -> ::std::result::Result<Cart, &'static ::std::primitive::str> {
        if from == 1 {
            ::std::result::Result::Ok(Cart { items: ::std::vec::Vec::new() })
        } else {
            ::std::result::Result::Err("too old")
        }
    }
}

fn main() {
    use mp_storage::Scope;
    assert_eq!(<app::Cart as Scope>::NAMESPACE, "cart:");
    assert_eq!(<app::Cart as Scope>::VERSION, 2);
    assert!(<app::Cart as Scope>::migrate(1, serde_json::Value::Null).is_ok());
    assert_eq!(
        <app::Cart as Scope>::migrate(0, serde_json::Value::Null).unwrap_err(),
        "through the re-export: too old"
    );
    assert!(<app::Order as Scope>::LOSSY && <app::Order as Scope>::READ_NEWER);
    let order = <app::Order as Scope>::migrate(1, serde_json::json!({"item": "fig"})).unwrap();
    assert_eq!(order.items, ["fig"]);
}
