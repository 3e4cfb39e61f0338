//! The whole behavior suite on [`CountingDriver`] over the memory driver: how the author of a
//! driver outside this repository runs it (`mp-storage` with the `testkit` feature as a
//! dev-dependency, and one line per driver).

use std::sync::Arc;

use mp_storage::driver::memory::MemoryDriver;
use mp_storage::testkit::{cases, Target};
use mp_storage_examples::counting_driver::{Calls, CountingDriver};

/// A fresh memory store per case, behind the counting driver.
async fn counting() -> Option<Target> {
    let driver = CountingDriver::new(Arc::new(MemoryDriver::new()));
    Some(Target::new("counting", Arc::new(driver)))
}

mp_storage::behavior_suite!(counting());

/// The counts are those of the calls the engine makes: a cold update loads and creates, a warm
/// one is a single compare-and-swap, a read is a load, a `remove` a load and a checked delete.
#[tokio::test]
async fn calls_are_counted() {
    let driver = Arc::new(CountingDriver::new(Arc::new(MemoryDriver::new())));
    let st = mp_storage::Storage::with_driver(driver.clone()).expect("storage");
    for _ in 0..10 {
        st.scoped("n", |n: &mut u64| *n += 1).await.expect("update");
    }
    assert_eq!(
        driver.calls(),
        Calls {
            load: 1,
            cas: 10,
            ..Calls::default()
        }
    );
    st.set("m", &1u64).await.expect("set");
    assert_eq!(st.get::<u64>("n").await.expect("get"), Some(10));
    assert_eq!(st.list("").await.expect("list"), ["m", "n"]);
    assert!(st.remove("m").await.expect("remove"));
    // `set` is a compare-and-swap (a new scope: one), `remove` a load and a delete checked
    // against the revision it read (a commit), so that both wait for an exclusive update's lease.
    assert_eq!(
        driver.calls(),
        Calls {
            load: 3,
            cas: 11,
            commit: 1,
            list: 1,
            ..Calls::default()
        }
    );
}

/// One case run by hand on a target of one's own, outside the macro.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_case_by_hand() {
    let driver = Arc::new(CountingDriver::new(Arc::new(MemoryDriver::new())));
    let target = Target::new("counting", driver.clone());
    target
        .run(cases::concurrent_increments_are_exact(&target))
        .await;
    assert!(driver.calls().cas >= 16 * 500, "{:?}", driver.calls());
}
