//! The change feed (contract rule 17): file events on the data directory, and a periodic check
//! as a safety net.
//!
//! The directory is watched, not the record files: a write renames a new file over the record,
//! so a watch on the old file would see nothing of it. An event on `<stem>.json` (a rename into
//! place, a removal) hints the watched key whose stem that is; temp files, the journal, the
//! lock directory and reads (access events) are left out. The stems of the watched keys are
//! computed from the keys (so hashed stems of long keys match too) and again whenever the watch
//! set changes. When the system drops events (an inotify queue overflow) the feed asks for a
//! [`Change::Resync`]. Every [`SAFETY_NET`] every watched scope is read anyway (one
//! `load_many`), which covers a file system that gives no events (some network mounts); when
//! the directory cannot be watched at all, an `Err` item says so and that check runs every
//! [`POLL_WITHOUT_EVENTS`] instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use super::name::stem;
use super::FileDriver;
use crate::driver::{poll_changes, Change, ChangeStream, WatchSet};
use crate::{BackendKind, Error};

/// How often every watched scope is read, events or not.
pub const SAFETY_NET: Duration = Duration::from_secs(2);

/// How often every watched scope is read when the directory cannot be watched.
pub const POLL_WITHOUT_EVENTS: Duration = Duration::from_millis(100);

/// The stems of the watched keys, as of a generation of the watch set.
struct Stems {
    generation: Option<u64>,
    keys: HashMap<String, String>,
}

/// The change stream of `driver`'s directory (see the module docs).
pub(super) fn changes(driver: &FileDriver, dir: &Path, watched: Arc<WatchSet>) -> ChangeStream {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Change, Error>>();
    let stems = Mutex::new(Stems {
        generation: None,
        keys: HashMap::new(),
    });
    let set = watched.clone();
    let events = tx.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "file events were lost");
                let _ = events.send(Ok(Change::Resync));
                return;
            }
        };
        if event.need_rescan() {
            let _ = events.send(Ok(Change::Resync));
            return;
        }
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        // Nothing panics while the lock is held.
        let mut stems = stems.lock().unwrap_or_else(|p| p.into_inner());
        let generation = set.generation();
        if stems.generation != Some(generation) {
            stems.keys = set.keys().into_iter().map(|k| (stem(&k), k)).collect();
            stems.generation = Some(generation);
        }
        for path in &event.paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(key) = name.strip_suffix(".json").and_then(|s| stems.keys.get(s)) else {
                continue;
            };
            let change = Change::Key {
                key: key.clone(),
                version: None,
            };
            let _ = events.send(Ok(change));
        }
    };
    let watcher = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    let every = match &watcher {
        Ok(_) => SAFETY_NET,
        Err(e) => {
            let _ = tx.send(Err(Error::backend_unsent(
                "file",
                BackendKind::Other,
                format!(
                    "cannot watch {} for changes ({e}): watchers fall back to reading every \
                     watched scope each {POLL_WITHOUT_EVENTS:?}",
                    dir.display()
                ),
            )));
            POLL_WITHOUT_EVENTS
        }
    };
    // The watcher lives as long as the stream: dropping the stream stops it.
    let events = futures::stream::unfold((rx, watcher.ok()), |(mut rx, watcher)| async move {
        rx.recv().await.map(|item| (item, (rx, watcher)))
    });
    let polls = poll_changes(Arc::new(driver.clone()), watched, every);
    Box::pin(futures::stream::select(events, polls))
}
