//! The change feed (contract rule 17): a subscriber connection of its own per change stream,
//! subscribed to the channel of each watched key, which is the key itself (the write scripts
//! publish the new version there, `''` for a removal or a new expiry).
//!
//! The subscriptions follow the [`WatchSet`]: a key that joins it is subscribed, then hinted
//! once (it may have changed between its first read and the subscription); one that leaves is
//! unsubscribed. A connection that drops (a server restart, `CLIENT KILL`) is made again at
//! once, every key subscribed again, and a [`Change::Resync`] sent; a connection that cannot be
//! made is an `Err` item, then it is tried again, backing off to 2 s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::link::sealed::Link;
use super::Node;
use crate::driver::watch::{push_feed, Ended, FeedSender, Session};
use crate::driver::{Change, ChangeStream, WatchSet};

/// The most channels one `SUBSCRIBE` or `UNSUBSCRIBE` names.
const CHANNELS_PER_COMMAND: usize = 500;

/// The change stream of keys under `prefix` on one server (see the module docs).
pub(super) fn changes(
    client: redis::Client,
    prefix: String,
    addr: String,
    connect_timeout: Duration,
    watched: Arc<WatchSet>,
) -> ChangeStream {
    push_feed(
        "change subscription",
        addr.clone(),
        Feed {
            client,
            prefix,
            addr,
            connect_timeout,
            watched,
        },
    )
}

struct Feed {
    client: redis::Client,
    prefix: String,
    addr: String,
    connect_timeout: Duration,
    watched: Arc<WatchSet>,
}

impl Session for Feed {
    /// One connection: subscribes, then passes the messages on until it drops.
    async fn session(&self, tx: &FeedSender) -> Ended {
        let pubsub = match tokio::time::timeout(
            self.connect_timeout,
            self.client.get_async_pubsub(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return self.not_connected(e),
            Err(_) => {
                return self
                    .not_connected(format_args!("no answer within {:?}", self.connect_timeout))
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        let mut subscribed = BTreeSet::new();
        let mut generation = self.watched.generation();
        if let Err(e) = self.follow(&mut sink, &mut subscribed).await {
            return self.not_connected(e);
        }
        // Listening now: whatever changed before is read again.
        if tx.send(Ok(Change::Resync)).is_err() {
            return Ended::Closed;
        }
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Ended::Lost;
                    };
                    let Some(key) = message.get_channel_name().strip_prefix(&self.prefix) else {
                        continue;
                    };
                    let version = std::str::from_utf8(message.get_payload_bytes())
                        .ok()
                        .and_then(|v| v.parse().ok());
                    let change = Change::Key { key: key.to_owned(), version };
                    if tx.send(Ok(change)).is_err() {
                        return Ended::Closed;
                    }
                }
                () = self.watched.changed_since(generation) => {
                    generation = self.watched.generation();
                    let added = match self.follow(&mut sink, &mut subscribed).await {
                        Ok(added) => added,
                        Err(_) => return Ended::Lost,
                    };
                    // A key may have changed between its first read and its subscription.
                    for key in added {
                        if tx.send(Ok(Change::Key { key, version: None })).is_err() {
                            return Ended::Closed;
                        }
                    }
                }
            }
        }
    }
}

impl Feed {
    fn not_connected(&self, detail: impl std::fmt::Display) -> Ended {
        Ended::not_connected(
            <Node as Link>::NAME,
            &self.addr,
            "the change subscription",
            detail,
        )
    }

    /// Subscribes to the keys of the watch set not subscribed yet, unsubscribes from those no
    /// longer in it; returns the keys added.
    async fn follow(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut BTreeSet<String>,
    ) -> redis::RedisResult<Vec<String>> {
        let wanted: BTreeSet<String> = self.watched.keys().into_iter().collect();
        let added: Vec<String> = wanted.difference(subscribed).cloned().collect();
        let gone: Vec<String> = subscribed.difference(&wanted).cloned().collect();
        for chunk in added.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|k| format!("{}{k}", self.prefix))
                .collect();
            sink.subscribe(channels).await?;
        }
        for chunk in gone.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk
                .iter()
                .map(|k| format!("{}{k}", self.prefix))
                .collect();
            sink.unsubscribe(channels).await?;
        }
        *subscribed = wanted;
        Ok(added)
    }
}
