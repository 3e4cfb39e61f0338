//! Change hints (contract rule 17): what a driver tells the engine's watchers, the set of keys
//! they watch, and a polling feed for drivers whose backend has no push.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::BoxStream;
use tokio::sync::mpsc;

use super::{Driver, Record, Revision};

use crate::Error;

/// A hint from [`Driver::changes`](super::Driver::changes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// `key` changed: written (at `version`, when the driver knows it), deleted or given a new
    /// expiry (`version: None`, or the version it keeps). The engine reads it again.
    Key {
        /// The changed key, as the driver stores it.
        key: String,
        /// The version written, when known; `None` when removed or not said.
        version: Option<u64>,
    },
    /// Hints may have been lost (a connection was cut and made again): the engine re-reads
    /// every watched key.
    Resync,
}

/// The stream of [`Change`]s a driver gives (contract rule 17).
pub type ChangeStream = BoxStream<'static, Result<Change, Error>>;

/// The keys an engine watches at a moment, shared with the driver's change stream: a driver
/// that subscribes per key or polls reads it; the engine changes it as watchers come and go.
///
/// ```
/// use mp_storage::driver::WatchSet;
/// let set = WatchSet::new();
/// assert!(set.insert("k"));
/// assert!(set.contains("k") && !set.contains("other"));
/// assert_eq!(set.keys(), vec!["k".to_owned()]);
/// assert!(set.remove("k") && set.is_empty());
/// ```
#[derive(Debug)]
pub struct WatchSet {
    keys: Mutex<BTreeSet<String>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for WatchSet {
    fn default() -> Self {
        WatchSet {
            keys: Mutex::default(),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl WatchSet {
    /// An empty set.
    pub fn new() -> WatchSet {
        WatchSet::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        // Every change is one insert or remove: a poisoned lock is still consistent.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `key`; whether it was not there.
    pub fn insert(&self, key: &str) -> bool {
        let added = self.lock().insert(key.to_owned());
        if added {
            self.generation.send_modify(|g| *g += 1);
        }
        added
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        let removed = self.lock().remove(key);
        if removed {
            self.generation.send_modify(|g| *g += 1);
        }
        removed
    }

    /// Whether `key` is watched.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().contains(key)
    }

    /// The watched keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// How many keys are watched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is watched.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A number that changes whenever the set does.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Waits until the set differs from when [`WatchSet::generation`] returned `since`
    /// (at once when it already does).
    pub async fn changed_since(&self, since: u64) {
        let mut rx = self.generation.subscribe();
        // The sender lives in `self`, so the wait ends only by a change.
        let _ = rx.wait_for(|g| *g != since).await;
    }
}

/// How many keys one poll reads in one [`Driver::load_many`] call.
const POLL_BATCH: usize = 500;

/// A change feed for a backend without push: every `every`, one [`Driver::load_many`] per
/// 500 watched keys, and a [`Change::Key`] for each key whose revision differs from the last
/// poll's (a newly watched key included). A failed poll is an `Err` item and the next one goes
/// on. Nothing runs between polls of the returned stream; dropping it stops polling.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use futures::StreamExt;
/// use mp_storage::driver::{memory::MemoryDriver, poll_changes, Change, Driver, WatchSet};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let driver = MemoryDriver::new();
/// let set = Arc::new(WatchSet::new());
/// set.insert("k");
/// let mut feed = poll_changes(Arc::new(driver.clone()), set, Duration::from_millis(10));
/// // A newly watched key is reported once, absent here.
/// let first = feed.next().await.unwrap().unwrap();
/// assert_eq!(first, Change::Key { key: "k".into(), version: None });
/// driver.put("k", mp_storage::Write::new(0, b"1", 9, 5)).await.unwrap();
/// let next = feed.next().await.unwrap().unwrap();
/// assert_eq!(next, Change::Key { key: "k".into(), version: Some(5) });
/// # });
/// ```
pub fn poll_changes(
    driver: Arc<dyn Driver>,
    watched: Arc<WatchSet>,
    every: Duration,
) -> ChangeStream {
    let state = (Poller::new(driver, watched), VecDeque::new(), true);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut poller, mut ready, mut first)| async move {
            loop {
                if let Some(item) = ready.pop_front() {
                    return Some((item, (poller, ready, first)));
                }
                if !std::mem::take(&mut first) {
                    tokio::time::sleep(every).await;
                }
                poller.poll(&mut ready).await;
            }
        },
    ))
}

/// Reads the watched keys and tells which changed since its last read: the core of
/// [`poll_changes`], for drivers that poll only when something tells them to.
pub(crate) struct Poller {
    driver: Arc<dyn Driver>,
    watched: Arc<WatchSet>,
    seen: HashMap<String, Option<Revision>>,
    generation: Option<u64>,
}

impl Poller {
    pub(crate) fn new(driver: Arc<dyn Driver>, watched: Arc<WatchSet>) -> Poller {
        Poller {
            driver,
            watched,
            seen: HashMap::new(),
            generation: None,
        }
    }

    /// Whether keys joined or left the watch set since the last poll.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn set_changed(&self) -> bool {
        self.generation != Some(self.watched.generation())
    }

    /// Reads every watched key, [`POLL_BATCH`] per [`Driver::load_many`], and queues a
    /// [`Change::Key`] for each whose revision differs from the last poll's (a newly watched
    /// key included), or the error of a read that failed.
    pub(crate) async fn poll(&mut self, out: &mut VecDeque<Result<Change, Error>>) {
        self.generation = Some(self.watched.generation());
        let keys = self.watched.keys();
        self.seen
            .retain(|k, _| keys.binary_search_by(|w| w.as_str().cmp(k)).is_ok());
        for chunk in keys.chunks(POLL_BATCH) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match self.driver.load_many(&refs).await {
                Ok(records) => {
                    for (key, record) in chunk.iter().zip(records) {
                        let revision = record.as_ref().map(Record::revision);
                        if self.seen.get(key) != Some(&revision) {
                            self.seen.insert(key.clone(), revision);
                            out.push_back(Ok(Change::Key {
                                key: key.clone(),
                                version: record.map(|r| r.version),
                            }));
                        }
                    }
                }
                Err(e) => {
                    // Read again at the next poll.
                    self.generation = None;
                    out.push_back(Err(e));
                    return;
                }
            }
        }
    }
}

/// A change stream's sending end and the keys it wants.
type Feed = (Arc<WatchSet>, mpsc::UnboundedSender<Result<Change, Error>>);

/// The change streams opened on one in-process store, for drivers whose writers know what they
/// committed (memory, the SQLite writer): a write hints the streams that watch its key.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    feeds: Mutex<Vec<Feed>>,
}

impl Feeds {
    fn lock(&self) -> MutexGuard<'_, Vec<Feed>> {
        // Every change is one push or retain: a poisoned lock is still consistent.
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new change stream for the keys of `watched`; dropping it unregisters it.
    pub(crate) fn open(&self, watched: Arc<WatchSet>) -> ChangeStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push((watched, tx));
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Whether no stream is open (a dropped one may still count).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Hints the streams that watch `key` that it changed; forgets the streams dropped.
    pub(crate) fn changed(&self, key: &str, version: Option<u64>) {
        let mut feeds = self.lock();
        if feeds.is_empty() {
            return;
        }
        feeds.retain(|(set, tx)| {
            if tx.is_closed() {
                return false;
            }
            !set.contains(key)
                || tx
                    .send(Ok(Change::Key {
                        key: key.to_owned(),
                        version,
                    }))
                    .is_ok()
        });
    }
}

/// Where a push feed's session sends its hints (see [`push_feed`]).
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) type FeedSender = mpsc::UnboundedSender<Result<Change, Error>>;

/// How one session of a [`push_feed`] ended.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) enum Ended {
    /// The stream was dropped: the feed stops.
    Closed,
    /// The connection could not be made: the error goes to the watchers once per outage, and
    /// the next session starts after a backoff (50 ms doubling to 2 s).
    NotConnected(Error),
    /// The connection was lost after it was made: the next session starts at once.
    Lost,
}

#[cfg(any(feature = "redis", feature = "postgres"))]
impl Ended {
    /// The connection of `driver`'s feed to `addr` could not be made, for `purpose` (what the
    /// connection is for, named in the error) because of `detail`.
    pub(crate) fn not_connected(
        driver: &'static str,
        addr: &str,
        purpose: &str,
        detail: impl std::fmt::Display,
    ) -> Ended {
        Ended::NotConnected(Error::backend_unsent(
            driver,
            crate::BackendKind::Connection,
            super::net::ServerError::cannot_connect(
                addr,
                format_args!("for {purpose}: {detail}"),
                None,
            ),
        ))
    }
}

/// One connection of a [`push_feed`].
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) trait Session: Send + Sync + 'static {
    /// Connects, subscribes, sends [`Change::Resync`] once it listens (what changed before is
    /// read again), then passes hints on until the connection ends or the stream is dropped.
    fn session(&self, tx: &FeedSender) -> impl std::future::Future<Output = Ended> + Send;
}

/// A change stream fed by a task that runs [`Session::session`] again and again: the shape of
/// every feed whose backend pushes changes over a connection of its own (Redis's subscriber
/// connection, PostgreSQL's `LISTEN`). The task stops when the stream is dropped. `what` names
/// the connection in logs.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn push_feed<S: Session>(what: &'static str, addr: String, feed: S) -> ChangeStream {
    /// The longest wait between two attempts to connect.
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let run = async {
            let mut failures = 0u32;
            loop {
                match feed.session(&tx).await {
                    Ended::Closed => return,
                    Ended::Lost => {
                        tracing::debug!(%addr, "the {what} connection was lost");
                        failures = 0;
                        continue;
                    }
                    Ended::NotConnected(e) => {
                        // Once per outage: the watchers hear of it, then of the values after it.
                        if failures == 0 && tx.send(Err(e)).is_err() {
                            return;
                        }
                        failures = failures.saturating_add(1);
                    }
                }
                let wait = Duration::from_millis(50u64 << failures.min(6)).min(MAX_BACKOFF);
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            () = tx.closed() => {}
            () = run => {}
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
