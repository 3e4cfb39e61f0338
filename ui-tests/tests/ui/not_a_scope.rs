// A type that forgot the derive: the error says how to fix it.

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Visits {
    count: u64,
}

async fn count(st: &mp_storage::Storage) -> Result<u64, mp_storage::Error> {
    st.scoped("global", |v: &mut Visits| {
        v.count += 1;
        v.count
    })
    .await
}

fn main() {
    let _ = count;
}

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
