//! Watching scopes: one hub per engine turns the driver's change hints (contract rule 17) into
//! the values of every watcher.
//!
//! The first watcher opens the driver's change stream, the last one to go drops it: one
//! subscription per engine, whatever the number of watchers and scopes. Per watched key the hub
//! keeps the newest record it read and a `tokio::sync::watch` channel of it, which every
//! watcher of the key reads (so a burst coalesces to its latest value). A hint re-reads the
//! key; reads of one key never overlap (a hint during a read reads once more after it), so a
//! later read sees a later state, and a record is published only when its revision is newer
//! than the one held, or its existence changed. A record with an expiry is read again when it
//! expires. Each watcher decodes the record as its own type.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::codec;
use crate::driver::{now_ms, Change, ChangeStream, Driver, Record, WatchSet};
use crate::{Error, Scope};

/// How long after a failed read of a watched key it is read again.
const RETRY_READ: Duration = Duration::from_millis(500);

/// How long after the driver's change stream ended it is asked for a new one.
const REOPEN_FEED: Duration = Duration::from_secs(1);

/// The most keys one read of the hub loads at once.
const READ_BATCH: usize = 256;

/// What the watchers of one key see.
#[derive(Clone, Debug)]
enum Snapshot {
    /// Not read yet.
    Pending,
    /// The record as last read (`None`: absent).
    Value(Option<Arc<Record>>),
    /// The last read, or the change feed, failed.
    Failed(Arc<Error>),
}

/// One watched key.
struct KeyState {
    /// How many watchers hold it.
    watchers: usize,
    tx: watch::Sender<Snapshot>,
    /// The newest record read: `None` before the first read.
    current: Option<Option<Arc<Record>>>,
    /// A read of the key is under way.
    reading: bool,
    /// A hint came during the read: read once more after it.
    dirty: bool,
    /// The task that reads the key again when its record expires.
    expiry: Option<AbortHandle>,
}

impl Drop for KeyState {
    fn drop(&mut self) {
        if let Some(timer) = self.expiry.take() {
            timer.abort();
        }
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyState>,
    /// The task that reads the driver's change stream, while anyone watches.
    feed: Option<AbortHandle>,
    /// Keys to read (each marked `reading`), in the order asked.
    queue: Vec<String>,
    /// The reader task runs: it reads the queue in batches until it is empty.
    reader: bool,
}

/// The hub of one engine (see the module docs).
pub(crate) struct Hub {
    driver: Arc<dyn Driver>,
    set: Arc<WatchSet>,
    state: Mutex<State>,
    /// Change streams opened (the first watcher's, and one per reopening after it ended).
    feeds: AtomicU64,
    /// Reads of watched keys.
    reads: AtomicU64,
}

/// The hub's counters, for [`crate::Stats`].
pub(crate) struct HubStats {
    pub feeds: u64,
    pub reads: u64,
}

impl Hub {
    pub(crate) fn new(driver: Arc<dyn Driver>) -> Arc<Hub> {
        Arc::new(Hub {
            driver,
            set: Arc::new(WatchSet::new()),
            state: Mutex::default(),
            feeds: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> HubStats {
        HubStats {
            feeds: self.feeds.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; every change leaves the state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `key` as `T`, scope `scope` (for errors).
    pub(crate) fn watch<T: Scope>(self: &Arc<Self>, key: &str, scope: &str) -> Watch<T> {
        let rx = {
            let mut state = self.lock();
            if state.feed.is_none() {
                // Opened here, before the first read, so that no change after it is missed.
                let changes = self.driver.changes(self.set.clone());
                state.feed = Some(self.start_feed(changes));
            }
            match state.keys.get_mut(key) {
                Some(ks) => {
                    ks.watchers += 1;
                    ks.tx.subscribe()
                }
                None => {
                    // In the set before the first read: a change after the read is hinted.
                    self.set.insert(key);
                    let (tx, rx) = watch::channel(Snapshot::Pending);
                    state.keys.insert(
                        key.to_owned(),
                        KeyState {
                            watchers: 1,
                            tx,
                            current: None,
                            reading: true,
                            dirty: false,
                            expiry: None,
                        },
                    );
                    self.queue_read(&mut state, key.to_owned());
                    rx
                }
            }
        };
        let registration = Registration {
            hub: self.clone(),
            key: key.to_owned(),
        };
        Watch::new(rx, registration, scope.to_owned(), self.driver.name())
    }

    /// A watcher of `key` went.
    fn unwatch(&self, key: &str) {
        let mut state = self.lock();
        let Some(ks) = state.keys.get_mut(key) else {
            return;
        };
        ks.watchers -= 1;
        if ks.watchers > 0 {
            return;
        }
        state.keys.remove(key);
        self.set.remove(key);
        if state.keys.is_empty() {
            if let Some(feed) = state.feed.take() {
                feed.abort();
            }
        }
    }

    /// Starts the task that reads the driver's change stream until it is aborted.
    fn start_feed(self: &Arc<Self>, first: Option<ChangeStream>) -> AbortHandle {
        // Counted when opened (here, for the first: before the task runs, so that a watcher's
        // first value never comes before the count of the subscription that serves it).
        if first.is_some() {
            self.feeds.fetch_add(1, Ordering::Relaxed);
        }
        let hub = self.clone();
        let mut next = first;
        tokio::spawn(async move {
            let mut reopened = false;
            loop {
                let Some(mut changes) = next.take() else {
                    return;
                };
                if reopened {
                    hub.feeds.fetch_add(1, Ordering::Relaxed);
                    hub.resync();
                }
                while let Some(item) = changes.next().await {
                    match item {
                        Ok(Change::Key { key, .. }) => hub.hint(&key),
                        Ok(Change::Resync) => hub.resync(),
                        Err(e) => hub.fail_all(e),
                    }
                }
                drop(changes);
                tracing::debug!(
                    driver = hub.driver.name(),
                    "the change stream ended; reopening"
                );
                tokio::time::sleep(REOPEN_FEED).await;
                next = hub.driver.changes(hub.set.clone());
                reopened = true;
            }
        })
        .abort_handle()
    }

    /// `key` changed: read it again. (A hint's version does not spare the read: a new expiry
    /// leaves the version as it was.)
    pub(crate) fn hint(self: &Arc<Self>, key: &str) {
        let mut state = self.lock();
        let Some(ks) = state.keys.get_mut(key) else {
            return;
        };
        if ks.reading {
            ks.dirty = true;
        } else {
            ks.reading = true;
            self.queue_read(&mut state, key.to_owned());
        }
    }

    /// Hints may have been lost: read every watched key again.
    fn resync(self: &Arc<Self>) {
        let mut state = self.lock();
        let mut batch = Vec::new();
        for (key, ks) in state.keys.iter_mut() {
            if ks.reading {
                ks.dirty = true;
            } else {
                ks.reading = true;
                batch.push(key.clone());
            }
        }
        for key in batch {
            self.queue_read(&mut state, key);
        }
    }

    /// Passes a failure of the change feed to every watcher.
    fn fail_all(&self, e: Error) {
        tracing::debug!(driver = self.driver.name(), error = %e, "the change stream failed");
        let e = Arc::new(e);
        let state = self.lock();
        for ks in state.keys.values() {
            ks.tx.send_replace(Snapshot::Failed(e.clone()));
        }
    }

    /// Queues a read of `key` (marked `reading` by the caller), and starts the reader task if
    /// it does not run. One reader per hub reads the queue in batches of [`READ_BATCH`], so a
    /// thousand new watchers cost a few reads, not a thousand at once.
    fn queue_read(self: &Arc<Self>, state: &mut State, key: String) {
        state.queue.push(key);
        if state.reader {
            return;
        }
        state.reader = true;
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut state = hub.lock();
                    if state.queue.is_empty() {
                        state.reader = false;
                        return;
                    }
                    let n = state.queue.len().min(READ_BATCH);
                    state.queue.drain(..n).collect::<Vec<String>>()
                };
                hub.read_batch(&batch).await;
            }
        });
    }

    /// Reads `keys` in one [`Driver::load_many`] and publishes what is newer.
    async fn read_batch(self: &Arc<Self>, batch: &[String]) {
        let keys: Vec<&str> = batch.iter().map(String::as_str).collect();
        self.reads.fetch_add(keys.len() as u64, Ordering::Relaxed);
        match self.driver.load_many(&keys).await {
            Ok(records) if records.len() == keys.len() => {
                for (key, record) in batch.iter().zip(records) {
                    self.finish_read(key, Ok(record));
                }
            }
            Ok(_) => {
                for key in batch {
                    let e = Error::backend(
                        self.driver.name(),
                        crate::BackendKind::Other,
                        "load_many returned a record count other than the key count",
                    );
                    self.finish_read(key, Err(e));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for key in batch {
                    self.finish_read(key, Err(copy_error(&e, self.driver.name())));
                }
            }
        }
    }

    /// A read of `key` ended: publish what is newer, read again if hinted meanwhile.
    fn finish_read(self: &Arc<Self>, key: &str, read: Result<Option<Record>, Error>) {
        let mut state = self.lock();
        let Some(ks) = state.keys.get_mut(key) else {
            return;
        };
        match read {
            Ok(record) => {
                let record = record.map(Arc::new);
                if is_newer(ks.current.as_ref(), record.as_ref()) {
                    self.set_expiry_timer(ks, key, record.as_deref());
                    ks.current = Some(record.clone());
                    ks.tx.send_replace(Snapshot::Value(record));
                } else if let (Some(Some(held)), Some(read)) = (&ks.current, &record) {
                    // The same revision with a new expiry: keep it for the timer.
                    if held.revision() == read.revision() && held.expires_at != read.expires_at {
                        self.set_expiry_timer(ks, key, Some(read));
                        ks.current = Some(record);
                    }
                }
            }
            Err(e) => {
                ks.tx.send_replace(Snapshot::Failed(Arc::new(e)));
                // Try again a little later: nothing committed meanwhile is missed.
                let hub = self.clone();
                let key = key.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_READ).await;
                    hub.hint(&key);
                });
            }
        }
        if std::mem::take(&mut ks.dirty) {
            self.queue_read(&mut state, key.to_owned());
        } else {
            ks.reading = false;
        }
    }

    /// Reads `key` again when `record` expires (by this machine's clock, a little after).
    fn set_expiry_timer(self: &Arc<Self>, ks: &mut KeyState, key: &str, record: Option<&Record>) {
        if let Some(timer) = ks.expiry.take() {
            timer.abort();
        }
        let Some(at) = record.and_then(|r| r.expires_at) else {
            return;
        };
        let wait = Duration::from_millis(at.saturating_sub(now_ms()).saturating_add(5));
        let hub = Arc::downgrade(self);
        let key = key.to_owned();
        ks.expiry = Some(
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(hub) = hub.upgrade() {
                    hub.hint(&key);
                }
            })
            .abort_handle(),
        );
    }
}

/// Whether a read `new` is news next to `current` (`None`: nothing read yet): its existence
/// changed, or its revision is newer. A record at a lower version whose last token `current`
/// remembers is an older state of the same record and is left out; one whose token it does not
/// know was created anew (a scope removed and created again) and goes through.
fn is_newer(current: Option<&Option<Arc<Record>>>, new: Option<&Arc<Record>>) -> bool {
    match (current, new) {
        (None, _) => true,
        (Some(None), None) => false,
        (Some(None), Some(_)) | (Some(Some(_)), None) => true,
        (Some(Some(current)), Some(new)) => {
            if new.revision() == current.revision() {
                false
            } else if new.version > current.version {
                true
            } else {
                !current.tokens.contains(&new.last_token())
            }
        }
    }
}

/// An owned copy of a shared error, for each watcher: the same kind, its message kept.
fn copy_error(e: &Error, driver: &'static str) -> Error {
    match e {
        Error::Backend {
            driver,
            kind,
            sent,
            source,
        } => Error::Backend {
            driver,
            kind: *kind,
            sent: *sent,
            source: source.to_string().into(),
        },
        Error::Corrupt {
            scope,
            location,
            detail,
        } => Error::Corrupt {
            scope: scope.clone(),
            location: location.clone(),
            detail: detail.clone(),
        },
        other => Error::backend(driver, crate::BackendKind::Other, other.to_string()),
    }
}

/// Removes its watcher from the hub when dropped.
struct Registration {
    hub: Arc<Hub>,
    key: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unwatch(&self.key);
    }
}

/// The stream [`Storage::watch`](crate::Storage::watch) returns: the scope's current value
/// first (`None` when absent), then its value after each committed change, from any process.
///
/// A burst of changes may come as its latest value only, but the latest is never missed, and
/// values never go backwards. A removal or an expiry is `None`. A value that does not decode
/// as `T` is an `Err` item and the stream goes on, as is a lost connection: the stream
/// reconnects by itself and reads the scope again. Dropping it frees what it held; the
/// engine's one subscription to the backend ends with its last watcher.
pub struct Watch<T> {
    inner: BoxStream<'static, Result<Option<T>, Error>>,
}

impl<T> std::fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<T: Scope> Watch<T> {
    fn new(
        rx: watch::Receiver<Snapshot>,
        registration: Registration,
        scope: String,
        driver: &'static str,
    ) -> Watch<T> {
        struct Reader {
            rx: watch::Receiver<Snapshot>,
            _registration: Registration,
            scope: String,
            driver: &'static str,
            started: bool,
        }
        let reader = Reader {
            rx,
            _registration: registration,
            scope,
            driver,
            started: false,
        };
        let inner = futures::stream::unfold(reader, |mut r| async move {
            loop {
                // The first item is the value held now (once read); then each change.
                if std::mem::replace(&mut r.started, true) && r.rx.changed().await.is_err() {
                    return None;
                }
                let snapshot = r.rx.borrow_and_update().clone();
                let item = match snapshot {
                    Snapshot::Pending => continue,
                    Snapshot::Value(None) => Ok(None),
                    Snapshot::Value(Some(record)) => {
                        codec::decode::<T>(&r.scope, Some(&record)).map(Some)
                    }
                    Snapshot::Failed(e) => Err(copy_error(&e, r.driver).for_scope(&r.scope)),
                };
                return Some((item, r));
            }
        });
        Watch {
            inner: Box::pin(inner),
        }
    }
}

impl<T> futures::Stream for Watch<T> {
    type Item = Result<Option<T>, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64, tokens: &[u64]) -> Option<Arc<Record>> {
        Some(Arc::new(Record::new(
            version,
            0,
            b"1".to_vec(),
            tokens.to_vec(),
        )))
    }

    #[test]
    fn only_news_is_published() {
        assert!(is_newer(None, None));
        assert!(!is_newer(Some(&None), None));
        assert!(is_newer(Some(&None), rec(3, &[1]).as_ref()));
        assert!(is_newer(Some(&rec(3, &[1])), None));
        assert!(!is_newer(Some(&rec(3, &[1])), rec(3, &[1]).as_ref()));
        assert!(is_newer(Some(&rec(3, &[1])), rec(4, &[1, 2]).as_ref()));
        // An older state of the same record.
        assert!(!is_newer(Some(&rec(4, &[1, 2])), rec(3, &[1]).as_ref()));
        // Created anew at a lower version.
        assert!(is_newer(Some(&rec(4, &[1, 2])), rec(2, &[9]).as_ref()));
    }
}
