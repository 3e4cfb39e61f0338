//! The cases of watching (`Storage::watch`, contract rule 17). Each handle of a target acts as
//! another process, so a watcher on one handle sees writes made through another one only by
//! the driver's change hints. Every wait is bounded: a change not seen within
//! [`SEEN_WITHIN`] fails the case.

use std::time::Duration;

use futures::StreamExt;

use super::super::{increment, Counter, Target};
use crate::{Error, Storage, Watch};

/// How long a change may take to reach a watcher before a case fails.
pub const SEEN_WITHIN: Duration = Duration::from_secs(5);

/// Whether the target's driver has change hints; when it does not, checks that it says so.
async fn watchable(t: &Target) -> bool {
    if t.driver().capabilities().watch {
        return true;
    }
    match t.storage().watch::<Counter>("probe").await {
        Err(Error::Unsupported { .. }) => false,
        other => panic!("a driver without change hints answered {other:?}"),
    }
}

/// The next item of `w`, failing the case after [`SEEN_WITHIN`].
pub async fn next_item<T>(w: &mut Watch<T>, what: &str) -> Result<Option<T>, Error>
where
    T: crate::Scope,
{
    match tokio::time::timeout(SEEN_WITHIN, w.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the watch stream ended while waiting for {what}"),
        Err(_) => panic!("no watch item within {SEEN_WITHIN:?} while waiting for {what}"),
    }
}

/// The next count of `w`: 0 for an absent scope; an error item fails the case.
async fn next_count(w: &mut Watch<Counter>, what: &str) -> u64 {
    match next_item(w, what).await {
        Ok(v) => v.map_or(0, |c| c.count),
        Err(e) => panic!("a watch error while waiting for {what}: {e}"),
    }
}

/// Reads `w` until it shows `target`, checking that counts never go backwards; returns how
/// many items it took.
pub async fn until_count(w: &mut Watch<Counter>, target: u64) -> usize {
    let mut last = 0;
    let mut items = 0;
    while last != target {
        let n = next_count(w, &format!("count {target} (last seen {last})")).await;
        assert!(
            n >= last,
            "the watched count went backwards: {last} then {n}"
        );
        assert!(n <= target, "the watched count passed the last write: {n}");
        last = n;
        items += 1;
    }
    items
}

/// A watcher sees the current value first, then the changes of another handle: a burst of
/// concurrent increments ends at the final count without ever going backwards, and slow changes
/// (one per 100 ms) are each seen.
pub async fn watch_sees_every_change_in_order(t: &Target) {
    if !watchable(t).await {
        return;
    }
    let (watcher, writer) = (t.storage(), t.storage());
    let mut w = watcher.watch::<Counter>("hot").await.unwrap();
    assert_eq!(next_item(&mut w, "the absent value").await.unwrap(), None);
    // A burst from 4 tasks of another handle.
    let mut joins = Vec::new();
    for _ in 0..4 {
        let st = writer.clone();
        joins.push(tokio::spawn(async move {
            for _ in 0..25 {
                increment(&st, "hot").await.unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    until_count(&mut w, 100).await;
    // Slow changes are each seen, in order.
    for expected in 101..=105 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(increment(&writer, "hot").await.unwrap(), expected);
        assert_eq!(next_count(&mut w, "a slow change").await, expected);
    }
    // A second watcher starts from the current value.
    let mut late = watcher.watch::<Counter>("hot").await.unwrap();
    assert_eq!(next_count(&mut late, "the current value").await, 105);
    // A watcher on the writing handle sees its own writes too.
    let mut own = writer.watch::<Counter>("hot").await.unwrap();
    assert_eq!(next_count(&mut own, "the current value").await, 105);
    increment(&writer, "hot").await.unwrap();
    assert_eq!(next_count(&mut own, "its own write").await, 106);
    assert_eq!(next_count(&mut w, "the write").await, 106);
}

/// A removal is `None`, a value that does not decode is an error item after which the stream
/// goes on, and an expiry is `None` once the record expires.
pub async fn watch_sees_removal_and_expiry(t: &Target) {
    if !watchable(t).await {
        return;
    }
    let (watcher, writer) = (t.storage(), t.storage());
    writer.set("s", &Counter { count: 3 }).await.unwrap();
    let mut w = watcher.watch::<Counter>("s").await.unwrap();
    assert_eq!(next_count(&mut w, "the current value").await, 3);
    assert!(writer.remove("s").await.unwrap());
    assert_eq!(
        next_item(&mut w, "the removal").await.unwrap(),
        None,
        "a removal is None"
    );
    // Not a counter: an error item, and the stream goes on.
    writer.set("s", &"not a counter".to_owned()).await.unwrap();
    match next_item(&mut w, "an undecodable value").await {
        Err(Error::Decode { .. }) => {}
        other => panic!("an undecodable value gave {other:?}"),
    }
    writer.set("s", &Counter { count: 9 }).await.unwrap();
    assert_eq!(next_count(&mut w, "a value after the error").await, 9);
    if !t.driver().capabilities().expiry {
        return;
    }
    assert!(writer
        .expire("s", Some(Duration::from_millis(300)))
        .await
        .unwrap());
    let started = std::time::Instant::now();
    assert_eq!(
        next_item(&mut w, "the expiry").await.unwrap(),
        None,
        "an expiry is None"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "None came before the expiry: {:?}",
        started.elapsed()
    );
}

/// 1,000 watchers of 100 scopes on one handle share one subscription, each sees its scope's
/// change, and once they are all dropped a new watcher opens a new one.
pub async fn many_watchers_share_one_subscription(t: &Target) {
    if !watchable(t).await {
        return;
    }
    const SCOPES: usize = 100;
    const PER_SCOPE: usize = 10;
    let (watcher, writer) = (t.storage(), t.storage());
    let mut watches = Vec::new();
    for i in 0..SCOPES * PER_SCOPE {
        let name = format!("w{}", i % SCOPES);
        watches.push(watcher.watch::<Counter>(&name).await.unwrap());
    }
    for w in &mut watches {
        assert_eq!(next_count(w, "the absent value").await, 0);
    }
    for i in 0..SCOPES {
        increment(&writer, &format!("w{i}")).await.unwrap();
    }
    for w in &mut watches {
        assert_eq!(next_count(w, "the one change").await, 1);
    }
    let stats = watcher.stats();
    assert_eq!(
        stats.watch_feeds, 1,
        "one subscription serves every watcher"
    );
    // One first read and one read per change for each scope, give or take a repeated hint; not
    // one per watcher.
    assert!(
        stats.watch_reads <= (SCOPES * 4) as u64,
        "{} reads for {SCOPES} scopes",
        stats.watch_reads
    );
    drop(watches);
    let mut again = watcher.watch::<Counter>("w0").await.unwrap();
    assert_eq!(next_count(&mut again, "the current value").await, 1);
    assert_eq!(
        watcher.stats().watch_feeds,
        2,
        "the subscription ended with its last watcher and a new one opened"
    );
}

/// A handle that watches and writes the same scopes from many tasks: every watcher ends at
/// the final count.
pub async fn watchers_and_writers_on_one_handle(t: &Target) {
    if !watchable(t).await {
        return;
    }
    let st: Storage = t.storage();
    let mut watchers = Vec::new();
    for _ in 0..8 {
        let st = st.clone();
        watchers.push(tokio::spawn(async move {
            let mut w = st.watch::<Counter>("shared").await.unwrap();
            until_count(&mut w, 80).await
        }));
    }
    let mut writers = Vec::new();
    for _ in 0..8 {
        let st = st.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                increment(&st, "shared").await.unwrap();
            }
        }));
    }
    for j in writers {
        j.await.unwrap();
    }
    for j in watchers {
        let items = j.await.unwrap();
        assert!((1..=81).contains(&items));
    }
}
