//! The public API contract of DESIGN.md, compiled from a crate outside mp-storage exactly as
//! written there.

use mp_storage::{Scope, Storage}; // Scope is both the trait and the derive

#[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
struct Counter {
    count: u64,
}

#[derive(Debug)]
enum MyError {
    #[allow(dead_code)] // read through Debug
    Storage(mp_storage::Error),
    Negative,
}

impl From<mp_storage::Error> for MyError {
    fn from(e: mp_storage::Error) -> Self {
        MyError::Storage(e)
    }
}

async fn contract() -> Result<(), mp_storage::Error> {
    let st = Storage::open("memory://").await?; // Result<Storage, mp_storage::Error>
    let n: u64 = st
        .scoped("global", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await?;
    assert_eq!(n, 1);
    let r: Result<u64, MyError> = st
        .try_scoped("global", |c: &mut Counter| -> Result<u64, MyError> {
            if c.count > 100 {
                return Err(MyError::Negative);
            }
            c.count += 1;
            Ok(c.count)
        })
        .await;
    assert_eq!(r.unwrap(), 2);
    let v: Option<Counter> = st.get("global").await?;
    assert_eq!(v.map(|c| c.count), Some(2));
    st.set("global", &Counter { count: 7 }).await?; // unconditional write
    let existed: bool = st.remove("global").await?;
    assert!(existed);
    st.scoped("user:alice", |c: &mut Counter| c.count += 1)
        .await?;
    let names: Vec<String> = st.list("user:").await?; // every stored name with that prefix
    assert_eq!(names, vec!["user:alice".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn contract_compiles_and_runs() {
    contract().await.unwrap();
}

/// The futures are `Send` whenever the closure and result are: they run inside `tokio::spawn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_run_in_spawned_tasks() {
    let st = Storage::open("memory://").await.unwrap();
    let mut joins = Vec::new();
    for _ in 0..8 {
        let st = st.clone();
        joins.push(tokio::spawn(async move {
            let a = st.scoped("s", |c: &mut Counter| c.count += 1).await;
            let b: Result<(), MyError> = st.try_scoped("s", |_: &mut Counter| Ok(())).await;
            let c = st
                .scoped_async("s", |c: Counter| async move { (c, ()) })
                .await;
            let d = st.get::<Counter>("s").await;
            let e = st.set("t", &Counter { count: 1 }).await;
            let f = st.list("").await;
            let g = st.remove("t").await;
            a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok() && e.is_ok() && f.is_ok() && g.is_ok()
        }));
    }
    for j in joins {
        assert!(j.await.unwrap());
    }
    assert_eq!(st.get::<Counter>("s").await.unwrap().unwrap().count, 8);
}

/// `from_env` reads MP_STORAGE_URL.
#[tokio::test]
async fn from_env_reads_the_variable() {
    // Only this test in this binary touches the variable.
    std::env::set_var("MP_STORAGE_URL", "memory://");
    let st = Storage::from_env().await.unwrap();
    assert_eq!(st.driver_name(), "memory");
    std::env::set_var("MP_STORAGE_URL", "nope://x");
    assert!(matches!(
        Storage::from_env().await,
        Err(mp_storage::Error::UnknownScheme { .. })
    ));
    std::env::remove_var("MP_STORAGE_URL");
}
