// A time to live on a type: every write sets the scope's expiry to now + ttl.

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = 1800, namespace = "session:")]
struct Session {
    user: String,
}

fn main() {
    assert_eq!(
        <Session as mp_storage::Scope>::TTL,
        Some(std::time::Duration::from_secs(1800))
    );
    assert_eq!(<u64 as mp_storage::Scope>::TTL, None);
    let _ = Session::default().user;
}
