// A time to live that is not a positive number of seconds, at most ten years.

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = 0)]
struct Zero;

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = "1800")]
struct Text;

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = 1_000_000_000)]
struct TooLong;

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = -5)]
struct Negative;

#[derive(mp_storage::Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs)]
struct Missing;

fn main() {}
