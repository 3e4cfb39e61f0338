use mp_storage::Scope;

// Every problem is reported, each once, and nothing else: the type has no serde
// impls, yet the stub impl emitted after the errors adds no complaint about them.
#[derive(Scope)]
#[scope(nmespace = "cart:", version = "2", migrate = 5)]
#[scope(namespace = "a\0b", crate = "::")]
struct Cart {
    items: Vec<String>,
}

// The same for a generic type with a where-clause.
#[derive(Scope)]
#[scope(version = 1, version = 2)]
struct Generic<T>
where
    T: Clone,
{
    value: T,
}

fn main() {}
