//! Watching across processes: a watcher in the test process, writers in `mp-worker`
//! processes, and a watcher that must survive its subscription being cut.

use std::time::Duration;

use mp_storage::testkit::cases::{next_item, until_count};
use mp_storage::{Storage, Watch};

use crate::Counter;

/// Runs one `mp-worker` (`worker`) with `tasks` tasks doing `increments` increments each of
/// scope `scope` under `prefix` on `url`, each increment after a pause of `pause_ms`; returns
/// once it exits, failing when it failed.
async fn run_worker(
    worker: &str,
    url: &str,
    prefix: &str,
    scope: &str,
    tasks: usize,
    increments: usize,
    pause_ms: u64,
) {
    let args = [
        tasks.to_string(),
        increments.to_string(),
        pause_ms.to_string(),
    ];
    let [tasks, increments, pause_ms] = args.each_ref().map(String::as_str);
    crate::run_workers(
        worker,
        1,
        url,
        prefix,
        scope,
        &[
            "--tasks",
            tasks,
            "--increments",
            increments,
            "--pause-ms",
            pause_ms,
        ],
    )
    .await;
}

/// A watcher in this process sees the increments of other processes: a burst from two
/// processes (2 × 4 tasks × 100) ends at the final count without going backwards; slow
/// changes from a third (one per 100 ms) are each seen; a removal is `None`.
pub async fn other_processes(worker: &str, url: &str, prefix: &str) {
    let st = Storage::builder()
        .key_prefix(prefix)
        .open(url)
        .await
        .expect("open the watching storage");
    let scope = "watched";
    let mut w: Watch<Counter> = st.watch(scope).await.expect("watch");
    assert_eq!(next_item(&mut w, "the absent value").await.unwrap(), None);
    let burst = futures::future::join(
        run_worker(worker, url, prefix, scope, 4, 100, 0),
        run_worker(worker, url, prefix, scope, 4, 100, 0),
    );
    let (_, items) = futures::future::join(burst, until_count(&mut w, 800)).await;
    eprintln!("800 increments from two processes came to the watcher as {items} items");
    let slow = run_worker(worker, url, prefix, scope, 1, 5, 100);
    let seen = async {
        let mut seen = Vec::new();
        while seen.last() != Some(&805) {
            match next_item(&mut w, "a slow change").await {
                Ok(Some(c)) => seen.push(c.count),
                other => panic!("a slow change came as {other:?}"),
            }
        }
        seen
    };
    let ((), seen) = futures::future::join(slow, seen).await;
    assert_eq!(seen, [801, 802, 803, 804, 805], "each slow change is seen");
    assert!(st.remove(scope).await.unwrap());
    assert_eq!(next_item(&mut w, "the removal").await.unwrap(), None);
    assert_eq!(st.stats().watch_feeds, 1);
}

/// After `cut` breaks the watcher's subscription, a change made at once, and one made later,
/// are both seen: the stream reconnects by itself and reads the scope again.
pub async fn survives_a_cut<F, Fut>(st: &Storage, writer: &Storage, cut: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let scope = "cut";
    writer.set(scope, &Counter { count: 1 }).await.unwrap();
    let mut w: Watch<Counter> = st.watch(scope).await.expect("watch");
    until_count(&mut w, 1).await;
    // Subscribed (the change is seen), so there is a connection to cut.
    writer.set(scope, &Counter { count: 2 }).await.unwrap();
    until_count(&mut w, 2).await;
    let killed = cut().await;
    assert!(killed >= 1, "no subscription connection was found to cut");
    writer.set(scope, &Counter { count: 3 }).await.unwrap();
    assert_eq!(
        wait_count(&mut w, 3).await,
        3,
        "the change right after the cut"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.set(scope, &Counter { count: 4 }).await.unwrap();
    assert_eq!(
        wait_count(&mut w, 4).await,
        4,
        "a change after the reconnection"
    );
    assert_eq!(
        st.stats().watch_feeds,
        1,
        "the driver reconnected by itself"
    );
    writer.remove(scope).await.unwrap();
}

/// Reads `w` until it shows `target`, skipping error items (a cut may show one) but never a
/// count that goes backwards.
async fn wait_count(w: &mut Watch<Counter>, target: u64) -> u64 {
    let mut last = 0;
    loop {
        match next_item(w, &format!("count {target}")).await {
            Ok(v) => {
                let n = v.map_or(0, |c| c.count);
                assert!(n >= last, "the count went backwards: {last} then {n}");
                last = n;
                if n == target {
                    return n;
                }
            }
            Err(e) => eprintln!("a watch error item around the cut: {e}"),
        }
    }
}

/// How long each of `changes` changes of scope `scope`, made through `writer` 20 ms apart,
/// takes to reach a watcher on `watcher`, sorted.
pub async fn latencies(
    watcher: &Storage,
    writer: &Storage,
    scope: &str,
    changes: u64,
) -> Vec<Duration> {
    let mut w: Watch<Counter> = watcher.watch(scope).await.expect("watch");
    let start = match next_item(&mut w, "the current value").await {
        Ok(v) => v.map_or(0, |c| c.count),
        Err(e) => panic!("a watch error: {e}"),
    };
    let mut out = Vec::new();
    for i in 1..=changes {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = std::time::Instant::now();
        writer
            .set(scope, &Counter { count: start + i })
            .await
            .unwrap();
        until_count(&mut w, start + i).await;
        out.push(sent.elapsed());
    }
    out.sort_unstable();
    out
}
