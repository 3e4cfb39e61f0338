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
///   at the current version; [`Storage::migrate_all`](crate::Storage::migrate_all) rewrites
///   every record of the type, after which the migration can go.
/// - `migrate_from = CartV1`: the typed form of `migrate`, with the previous version's type
///   kept as it was (a `Scope` of a lower `version`, with `Self: From<CartV1>`). A record at
///   `CartV1`'s version decodes as `CartV1` and converts; an older one goes through `CartV1`'s
///   own migration first, so the versions chain (v0 → v1 → v2). Not with `migrate`.
/// - `lossy`: writing may drop stored fields this type does not read back. Without it, an update
///   that would write over a record of this version holding data the type leaves out (a field
///   renamed or removed, an enum variant read through `#[serde(other)]`) is refused with
///   [`Error::WouldLoseData`](crate::Error::WouldLoseData) and the record is left as it is.
///   Reads (`get`, an update that changes nothing) never fail for it.
/// - `read_newer`: records of a newer schema version are read as this type when they decode,
///   instead of being [`Error::SchemaTooNew`](crate::Error::SchemaTooNew); an update writes over
///   one only when the write keeps every stored field (`lossy` does not apply to them), and keeps
///   its newer version number. For rolling deploys: the release before a schema change reads
///   the records the next one writes.
/// - `crate = "path::to::mp_storage"`: where the crate is, for crates that re-export it.
///
/// On a generic type the impl holds for the instances that have the supertraits (for example
/// `Wrapper<T>: Serialize`), so a generic migration function states its bounds the same way; with
/// `migrate_from = WrapperV1<T>`, also for those whose previous version is a scope.
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
///
/// The same migration in its typed form, and what the loss check refuses:
///
/// ```
/// use mp_storage::{Error, Scope, Storage};
///
/// /// Version 1, kept as it was.
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// #[scope(namespace = "cart:", version = 1)]
/// struct CartV1 {
///     item: String,
/// }
///
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// #[scope(namespace = "cart:", version = 2, migrate_from = CartV1)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// impl From<CartV1> for Cart {
///     fn from(old: CartV1) -> Cart {
///         Cart { items: vec![old.item] }
///     }
/// }
///
/// /// A field renamed without a new version: it would read every cart as empty.
/// #[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
/// #[scope(namespace = "cart:", version = 2)]
/// struct Renamed {
///     #[serde(default)]
///     lines: Vec<String>,
/// }
///
/// # async fn demo() -> Result<(), Error> {
/// let st = Storage::open("memory://").await?;
/// st.set("alice", &CartV1 { item: "apple".into() }).await?;
/// st.scoped("alice", |c: &mut Cart| c.items.push("pear".into())).await?;
///
/// let r = st.scoped("alice", |c: &mut Renamed| c.lines.push("fig".into())).await;
/// match r {
///     Err(Error::WouldLoseData { fields, .. }) => assert_eq!(fields, ["items"]),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(st.get::<Cart>("alice").await?.unwrap().items, ["apple", "pear"]);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be kept in a scope: it does not implement `mp_storage::Scope`",
    label = "not a scope type",
    note = "derive it: `#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]`",
    note = "plain types (`u64`, `String`, `Vec<T>`, `Option<T>`, maps, `serde_json::Value`) are scopes as they are"
)]
pub trait Scope: Serialize + DeserializeOwned + Default + Send + 'static {
    /// A literal prefix put before the name of every scope of this type.
    const NAMESPACE: &'static str = "";

    /// The schema version written beside the data.
    const VERSION: u32 = 0;

    /// How long a scope of this type lives after each write (`#[scope(ttl_secs = N)]`): every
    /// write sets its expiry to now + this, so writes keep it alive. `None` (the default): a
    /// write keeps whatever expiry the scope has ([`Storage::expire`](crate::Storage::expire)).
    const TTL: Option<std::time::Duration> = None;

    /// Whether a write may drop stored fields this type does not read back
    /// (`#[scope(lossy)]`). When false (the default), an update that would write over a record
    /// of this type's version holding data the decoded value leaves out is refused with
    /// [`Error::WouldLoseData`](crate::Error::WouldLoseData), and the record is left as it is.
    /// Records of a newer version read under [`Scope::READ_NEWER`] are checked either way.
    const LOSSY: bool = false;

    /// Whether records of a newer schema version are read as this type when they decode
    /// (`#[scope(read_newer)]`), instead of being an
    /// [`Error::SchemaTooNew`](crate::Error::SchemaTooNew). An update writes over such a record
    /// only when the write keeps every stored field, and keeps its newer version number.
    const READ_NEWER: bool = false;

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
