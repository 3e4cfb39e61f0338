//! A tour of every public call, on the memory driver.
//!
//! Run: `cargo run -p mp-storage-examples --bin tour`

use mp_storage::{Scope, Storage};

#[derive(Scope, serde::Serialize, serde::Deserialize, Default, Debug)]
struct Counter {
    count: u64,
}

#[derive(Debug)]
enum AppError {
    #[allow(dead_code)] // shown through Debug
    Storage(mp_storage::Error),
    TooMany,
}

impl From<mp_storage::Error> for AppError {
    fn from(e: mp_storage::Error) -> Self {
        AppError::Storage(e)
    }
}

#[tokio::main]
async fn main() -> Result<(), mp_storage::Error> {
    let st = Storage::open("memory://").await?;
    let n: u64 = st
        .scoped("global", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await?;
    println!("scoped: count is {n}");
    let r: Result<u64, AppError> = st
        .try_scoped("global", |c: &mut Counter| -> Result<u64, AppError> {
            if c.count >= 1 {
                return Err(AppError::TooMany);
            }
            c.count += 1;
            Ok(c.count)
        })
        .await;
    println!("try_scoped: {r:?} (nothing written)");
    let v: Option<Counter> = st.get("global").await?;
    println!("get: {v:?}");
    st.set("global", &Counter { count: 7 }).await?;
    st.scoped("user:alice", |c: &mut Counter| c.count += 1)
        .await?;
    let names: Vec<String> = st.list("").await?;
    println!("list: {names:?}");
    let existed: bool = st.remove("global").await?;
    println!("remove: existed = {existed}; stats: {:?}", st.stats());
    Ok(())
}
