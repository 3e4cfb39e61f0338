//! The change feed (contract rule 17). Within the process, the writer's callers hint every
//! change stream of the database once their write is committed (see `SqliteDriver::hint`).
//! Writes of other processes are found by `PRAGMA data_version` on a connection of the feed's
//! own, every [`WATCH_POLL`]: it changes when another connection commits, and costs no read of
//! the table. When it changed (or keys joined the watch set), the watched scopes are read (one
//! `load_many`) and those whose revision changed are hinted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::{connect, unsent, SqliteDriver, NAME};
use crate::driver::watch::Poller;
use crate::driver::{Change, ChangeStream, WatchSet};
use crate::{BackendKind, Error};

/// How often a change stream asks SQLite whether another process committed.
pub const WATCH_POLL: Duration = Duration::from_millis(50);

/// What the feed of other processes' commits keeps between two checks.
struct Feed {
    driver: SqliteDriver,
    poller: Poller,
    /// The feed's connection, taken out while a check runs on a blocking thread.
    conn: Arc<Mutex<Option<Connection>>>,
    data_version: Option<i64>,
    ready: VecDeque<Result<Change, Error>>,
}

impl Feed {
    /// `PRAGMA data_version` on the feed's connection (opened on first use, and again after a
    /// failure).
    async fn data_version(&self) -> Result<i64, Error> {
        let (conn, path, busy) = (
            self.conn.clone(),
            self.driver.shared.canonical.clone(),
            self.driver.shared.options.busy_timeout,
        );
        tokio::task::spawn_blocking(move || {
            let mut slot = conn.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(connect(&path, busy, false)?);
            }
            let Some(c) = slot.as_ref() else {
                return Err(Error::backend_unsent(
                    NAME,
                    BackendKind::Other,
                    "no connection",
                ));
            };
            let version = c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
            if version.is_err() {
                *slot = None;
            }
            version.map_err(unsent)
        })
        .await
        .map_err(|e| Error::backend_unsent(NAME, BackendKind::Other, e))?
    }
}

/// The change stream of `driver`'s database: the writer's hints and other processes' commits.
pub(super) fn changes(driver: &SqliteDriver, watched: Arc<WatchSet>) -> ChangeStream {
    let own = driver.shared.feeds.open(watched.clone());
    let feed = Feed {
        driver: driver.clone(),
        poller: Poller::new(Arc::new(driver.clone()), watched),
        conn: Arc::new(Mutex::new(None)),
        data_version: None,
        ready: VecDeque::new(),
    };
    let others = futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(item) = feed.ready.pop_front() {
                return Some((item, feed));
            }
            tokio::time::sleep(WATCH_POLL).await;
            match feed.data_version().await {
                Ok(v) => {
                    let changed = feed.data_version.replace(v) != Some(v);
                    if changed || feed.poller.set_changed() {
                        feed.poller.poll(&mut feed.ready).await;
                    }
                }
                Err(e) => feed.ready.push_back(Err(e)),
            }
        }
    });
    Box::pin(futures::stream::select(own, others))
}
