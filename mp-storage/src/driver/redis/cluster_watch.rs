//! The change feed of a Redis Cluster (contract rule 17): sharded pub/sub. The write scripts
//! announce a change with `SPUBLISH` on the channel named like the key, which lives in the
//! key's own hash slot, so the message stays on the shard that holds the key (a plain
//! `PUBLISH` would be broadcast to every node of the cluster).
//!
//! The feed has a cluster connection of its own (RESP3, with a push channel) and `SSUBSCRIBE`s
//! to the channel of each watched key, one command per hash slot, routed to the slot's master;
//! it follows the [`WatchSet`] as the single-server feed does. Every confirmation of a
//! subscription, the first one and any later one, is passed on as a hint for that key, since
//! the key may have changed while it was not subscribed.
//!
//! A subscription can end without being asked to:
//! - a node's connection drops (a restart, `CLIENT KILL`, a master that died): the client
//!   reconnects and subscribes again to the channels of the slots that node serves, or, after
//!   a failover, learns the new map of slots and subscribes at the promoted replica;
//! - a slot moves to another master (resharding, a failover): the server ends the
//!   subscriptions of its channels (`SUNSUBSCRIBE` pushed to the client).
//!
//! Either way the feed counts the channels concerned (every channel, for a dropped connection,
//! since the push does not say which node dropped) as unconfirmed, and every
//! [`REPAIR_EVERY`] sends `SSUBSCRIBE` again for those still unconfirmed, which routes to the
//! slot's current master. Subscribing twice to a channel is harmless; each confirmation is a
//! hint, so nothing that changed in between is missed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};

use super::cluster::{connect_watch, slot, RedisClusterConfig, NAME};
use crate::driver::watch::{push_feed, Ended, FeedSender, Session};
use crate::driver::{Change, ChangeStream, WatchSet};

/// How often the channels whose subscription ended are subscribed again.
pub(super) const REPAIR_EVERY: Duration = Duration::from_millis(500);

/// The change stream of keys under `prefix` on the cluster of `config` (see the module docs).
pub(super) fn changes(
    config: Arc<RedisClusterConfig>,
    prefix: String,
    addr: String,
    watched: Arc<WatchSet>,
) -> ChangeStream {
    push_feed(
        "cluster change subscription",
        addr.clone(),
        Feed {
            config,
            prefix,
            addr,
            watched,
        },
    )
}

struct Feed {
    config: Arc<RedisClusterConfig>,
    prefix: String,
    addr: String,
    watched: Arc<WatchSet>,
}

/// The channels of one session.
#[derive(Default)]
struct Channels {
    /// Subscribed (asked for, whether confirmed yet or not).
    subscribed: BTreeSet<String>,
    /// Subscribed, but their subscription ended without being asked to: sent again.
    unconfirmed: BTreeSet<String>,
}

impl Session for Feed {
    /// One cluster connection: subscribes, then passes the messages on. It reconnects to its
    /// nodes by itself, so a session ends only when the stream is dropped.
    async fn session(&self, tx: &FeedSender) -> Ended {
        let (push_tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut con = match connect_watch(&self.config, push_tx).await {
            Ok(con) => con,
            Err(e) => return self.not_connected(e),
        };
        let mut channels = Channels::default();
        let mut generation = self.watched.generation();
        if let Err(e) = self.follow(&mut con, &mut channels).await {
            return self.not_connected(e);
        }
        // Listening now: whatever changed before is read again.
        if tx.send(Ok(Change::Resync)).is_err() {
            return Ended::Closed;
        }
        let mut repair = tokio::time::interval(REPAIR_EVERY);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return Ended::Lost;
                    };
                    if let Some(change) = self.on_push(push, &mut channels) {
                        if tx.send(Ok(change)).is_err() {
                            return Ended::Closed;
                        }
                    }
                }
                () = self.watched.changed_since(generation) => {
                    generation = self.watched.generation();
                    if let Err(e) = self.follow(&mut con, &mut channels).await {
                        tracing::debug!(addr = %self.addr, error = %e, "subscribing failed; tried again");
                    }
                }
                _ = repair.tick(), if !channels.unconfirmed.is_empty() => {
                    let again: Vec<String> = channels.unconfirmed.iter().cloned().collect();
                    if let Err(e) = subscribe(&mut con, &again).await {
                        tracing::debug!(addr = %self.addr, error = %e, "subscribing again failed; tried again");
                    }
                }
            }
        }
    }
}

impl Feed {
    fn not_connected(&self, detail: impl std::fmt::Display) -> Ended {
        Ended::not_connected(NAME, &self.addr, "the change subscription", detail)
    }

    fn channel(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// What a push from the cluster means for the watchers.
    fn on_push(&self, push: PushInfo, channels: &mut Channels) -> Option<Change> {
        let channel = match push.data.first() {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                let channel = channel?;
                let key = channel.strip_prefix(&self.prefix)?;
                let version = match push.data.get(1) {
                    Some(Value::BulkString(b)) => {
                        std::str::from_utf8(b).ok().and_then(|v| v.parse().ok())
                    }
                    _ => None,
                };
                Some(Change::Key {
                    key: key.to_owned(),
                    version,
                })
            }
            PushKind::SSubscribe => {
                // Subscribed (first time or again): the key is read again.
                let channel = channel?;
                channels.unconfirmed.remove(&channel);
                if !channels.subscribed.contains(&channel) {
                    return None;
                }
                let key = channel.strip_prefix(&self.prefix)?;
                Some(Change::Key {
                    key: key.to_owned(),
                    version: None,
                })
            }
            PushKind::SUnsubscribe => {
                // Asked for (the key left the watch set), or the slot moved away.
                let channel = channel?;
                if channels.subscribed.contains(&channel) {
                    channels.unconfirmed.insert(channel);
                }
                None
            }
            PushKind::Disconnection => {
                channels.unconfirmed = channels.subscribed.clone();
                None
            }
            _ => None,
        }
    }

    /// Subscribes to the keys of the watch set not subscribed yet, unsubscribes from those no
    /// longer in it. A channel whose subscription failed is tried again with the repairs.
    async fn follow(
        &self,
        con: &mut redis::cluster_async::ClusterConnection,
        channels: &mut Channels,
    ) -> redis::RedisResult<()> {
        let wanted: BTreeSet<String> = self
            .watched
            .keys()
            .iter()
            .map(|k| self.channel(k))
            .collect();
        let added: Vec<String> = wanted.difference(&channels.subscribed).cloned().collect();
        let gone: Vec<String> = channels.subscribed.difference(&wanted).cloned().collect();
        for channel in &gone {
            channels.unconfirmed.remove(channel);
        }
        channels.subscribed = wanted;
        let mut result = Ok(());
        if let Err(e) = subscribe(con, &added).await {
            channels.unconfirmed.extend(added);
            result = Err(e);
        }
        if let Err(e) = send_by_slot(con, "SUNSUBSCRIBE", &gone).await {
            // The subscriptions stay until the connection drops; their messages are ignored.
            tracing::debug!(addr = %self.addr, error = %e, "unsubscribing failed");
        }
        result
    }
}

/// `SSUBSCRIBE` to `channels`, one command per hash slot.
async fn subscribe(
    con: &mut redis::cluster_async::ClusterConnection,
    channels: &[String],
) -> redis::RedisResult<()> {
    send_by_slot(con, "SSUBSCRIBE", channels).await
}

/// `command` (`SSUBSCRIBE` or `SUNSUBSCRIBE`) for `channels`, one command per hash slot (a
/// sharded subscription names channels of one slot), sent at once; the first error if any.
async fn send_by_slot(
    con: &mut redis::cluster_async::ClusterConnection,
    command: &str,
    channels: &[String],
) -> redis::RedisResult<()> {
    let mut by_slot: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for c in channels {
        by_slot.entry(slot(c.as_bytes())).or_default().push(c);
    }
    let sends = by_slot.into_values().map(|group| {
        let mut con = con.clone();
        async move {
            if command == "SSUBSCRIBE" {
                con.ssubscribe(group).await
            } else {
                con.sunsubscribe(group).await
            }
        }
    });
    let results = futures::future::join_all(sends).await;
    results.into_iter().collect()
}
