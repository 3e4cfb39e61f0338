//! The [`Scope`] trait: what a type needs to be kept in a scope.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A type that can be a scope: serde both ways, a `Default` for a scope never written, `Send`.
///
/// Derive it with `#[derive(Scope)]` (the derive has the trait's name and is re-exported beside
/// it). Attributes, all optional, in one `#[scope(...)]` or spread over several:
///
/// - `namespace = "visits:"`: a literal prefix put before every name of this type, so that two
///   types can use the same names without sharing data ([`Storage::list`](crate::Storage::list)
///   and [`Storage::remove`](crate::Storage::remove) see the prefixed name). Default: none, so
///   renaming the type never orphans its data. At most 1024 bytes, no NUL.
/// - `version = 2`: the schema version (a `u32`, default 0) stored beside the data, never inside
///   it. A record of a newer version is an [`Error::SchemaTooNew`](crate::Error) and is never
///   overwritten; a record of an older version needs `migrate`, or loading it is an
///   [`Error::Migration`](crate::Error).
/// - `migrate = path::to::upgrade`: with a `version` of 1 or more, the function
///   `fn(from: u32, old: serde_json::Value) -> Result<Self, E>` (any `E: Display`) that turns a
///   record stored at an older version into the current type on load. An update writes it back
///   at the current version.
/// - `crate = "path::to::mp_storage"`: where the crate is, for crates that re-export it.
///
/// On a generic type the impl holds for the instances that have the supertraits (for example
/// `Wrapper<T>: Serialize`), so a generic migration function states its bounds the same way.
/// Every mistake in the attributes is a compile error pointing at its token.
///
/// ```
/// use mp_storage::{Scope, Storage};
///
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// #[scope(namespace = "cart:", version = 2, migrate = upgrade)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// fn upgrade(from: u32, old: serde_json::Value) -> Result<Cart, String> {
///     match from {
///         // Version 1 kept a single item.
///         1 => Ok(Cart { items: vec![old["item"].as_str().unwrap_or_default().to_owned()] }),
///         v => Err(format!("no migration from version {v}")),
///     }
/// }
///
/// assert_eq!(<Cart as Scope>::NAMESPACE, "cart:");
/// assert_eq!(<Cart as Scope>::VERSION, 2);
///
/// /// The same data as written by the previous release.
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// #[scope(namespace = "cart:", version = 1)]
/// struct CartV1 {
///     item: String,
/// }
///
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let st = Storage::open("memory://").await?;
/// st.set("alice", &CartV1 { item: "apple".into() }).await?;
/// assert_eq!(st.list("").await?, ["cart:alice"]);
/// let n = st.scoped("alice", |c: &mut Cart| { c.items.push("pear".into()); c.items.len() }).await?;
/// assert_eq!(n, 2);
/// // Now stored at version 2: the old type refuses it rather than overwrite it.
/// assert!(matches!(st.get::<CartV1>("alice").await, Err(mp_storage::Error::SchemaTooNew { .. })));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
pub trait Scope: Serialize + DeserializeOwned + Default + Send + 'static {
    /// A literal prefix put before the name of every scope of this type.
    const NAMESPACE: &'static str = "";

    /// The schema version written beside the data.
    const VERSION: u32 = 0;

    /// Whether records of any schema version decode as this type unchanged (true for
    /// `serde_json::Value`, which is written back at the schema version it was read with).
    #[doc(hidden)]
    const UNTYPED: bool = false;

    /// Turns a record stored at schema version `from` (older than [`Scope::VERSION`]) into the
    /// current type. The default refuses.
    fn migrate(from: u32, old: serde_json::Value) -> Result<Self, String> {
        let _ = old;
        Err(format!(
            "no migration from schema version {from} to {} is defined",
            Self::VERSION
        ))
    }
}

impl Scope for serde_json::Value {
    const UNTYPED: bool = true;
}

macro_rules! plain_scopes {
    ($($t:ty),* $(,)?) => { $( impl Scope for $t {} )* };
}

plain_scopes!(bool, u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64, String);

impl<T> Scope for Vec<T> where T: Serialize + DeserializeOwned + Send + 'static {}

impl<T> Scope for Option<T> where T: Serialize + DeserializeOwned + Send + 'static {}

impl<K, V> Scope for std::collections::BTreeMap<K, V>
where
    K: Serialize + DeserializeOwned + Ord + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
}

impl<K, V> Scope for std::collections::HashMap<K, V>
where
    K: Serialize + DeserializeOwned + Eq + std::hash::Hash + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
}
