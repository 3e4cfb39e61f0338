//! The change feed (contract rule 17). By default (`notify=false`) watchers read every watched
//! scope each [`POLL_WITHOUT_TRIGGER`], batched. With `notify=true`: `pg_notify` from a trigger
//! on the table, inside the writing statement's transaction (so a notification leaves only with a commit, and a rolled
//! back write sends none), and `LISTEN` on one connection of its own per change stream.
//!
//! The trigger `mp_storage_watch` (after each row inserted, updated or deleted) calls the
//! function `mp_storage_notify_v1()`, which sends on the channel named like the table the
//! payload `<version>:<hex of the name>` (`:<hex>` for a deletion): the key and version only,
//! well under the 8,000 bytes a payload may hold. [`install`] creates both when absent, under an
//! advisory lock so that processes opening the table at once do not race. A role that may not
//! create them (no `CREATE` on the schema, not the table's owner) still reads and writes; its
//! watchers then read every watched scope each [`POLL_WITHOUT_TRIGGER`], and their first item
//! says why.
//!
//! The listening connection follows no watch set: it hears every write of the table and passes
//! on those of watched keys. When it drops (`pg_terminate_backend`, a restart) it is made again,
//! backing off to 2 s, `LISTEN` is sent again, and a [`Change::Resync`] follows.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{backend, CONNECT_TIMEOUT, NAME};
use crate::driver::watch::{push_feed, Ended, FeedSender, Session};
use crate::driver::{poll_changes, Change, ChangeStream, Driver, WatchSet};
use crate::{BackendKind, Error};

/// How often watchers read every watched scope without the trigger (`notify=false`, the
/// default, or a trigger that could not be created).
pub const POLL_WITHOUT_TRIGGER: Duration = Duration::from_millis(100);

/// An arbitrary number for the advisory lock that serializes the trigger's creation.
const INSTALL_LOCK: i64 = 0x6d70_7761_7463_6801;

/// Creates the notifying function and the table's trigger when absent.
pub(super) async fn install(client: &tokio_postgres::Client, table: &str) -> Result<(), Error> {
    let sql = format!(
        "DO $mp$ BEGIN \
           PERFORM pg_advisory_xact_lock({INSTALL_LOCK}); \
           IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'mp_storage_notify_v1' \
                          AND pronamespace = current_schema()::regnamespace) THEN \
             CREATE FUNCTION mp_storage_notify_v1() RETURNS trigger LANGUAGE plpgsql AS $f$ \
             BEGIN \
               IF TG_OP = 'DELETE' THEN \
                 PERFORM pg_notify(TG_TABLE_NAME, ':' || encode(OLD.name, 'hex')); \
               ELSE \
                 PERFORM pg_notify(TG_TABLE_NAME, NEW.version::text || ':' || encode(NEW.name, 'hex')); \
               END IF; \
               RETURN NULL; \
             END $f$; \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'mp_storage_watch' \
                          AND tgrelid = '\"{table}\"'::regclass) THEN \
             CREATE TRIGGER mp_storage_watch AFTER INSERT OR UPDATE OR DELETE ON \"{table}\" \
               FOR EACH ROW EXECUTE FUNCTION mp_storage_notify_v1(); \
           END IF; \
         END $mp$"
    );
    client.batch_execute(&sql).await.map_err(backend)
}

/// Whether writes notify: the URL option `notify`, and whether the trigger could be made.
#[derive(Clone, Debug)]
pub(super) enum Trigger {
    /// `notify=false` (the default): watchers poll.
    Off,
    /// The trigger is on the table: watchers listen.
    On,
    /// `notify=true`, but the trigger could not be created (why): watchers poll.
    Failed(String),
}

/// The change stream of `table` (see the module docs).
pub(super) fn changes(
    driver: Arc<dyn Driver>,
    pg: tokio_postgres::Config,
    table: String,
    addr: String,
    trigger: Trigger,
    watched: Arc<WatchSet>,
) -> ChangeStream {
    if let Trigger::Off = trigger {
        return poll_changes(driver, watched, POLL_WITHOUT_TRIGGER);
    }
    if let Trigger::Failed(why) = trigger {
        let note = Error::backend_unsent(
            NAME,
            BackendKind::PermissionDenied,
            format!(
                "the watch trigger of table {table} could not be created ({why}): watchers \
                 read every watched scope each {POLL_WITHOUT_TRIGGER:?} instead"
            ),
        );
        let polls = poll_changes(driver, watched, POLL_WITHOUT_TRIGGER);
        return Box::pin(futures::stream::once(async move { Err(note) }).chain(polls));
    }
    push_feed(
        "LISTEN",
        addr.clone(),
        Listener {
            pg,
            table,
            addr,
            watched,
        },
    )
}

struct Listener {
    pg: tokio_postgres::Config,
    table: String,
    addr: String,
    watched: Arc<WatchSet>,
}

impl Session for Listener {
    /// One connection: `LISTEN`, then the notifications passed on until it drops.
    async fn session(&self, tx: &FeedSender) -> Ended {
        let (client, mut connection) =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.pg.connect(NoTls)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return self.not_connected(e),
                Err(_) => {
                    return self.not_connected(format_args!(
                        "no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                }
            };
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let listen_sql = format!("LISTEN \"{}\"", self.table);
        let listen = client.batch_execute(&listen_sql);
        tokio::pin!(listen);
        // The connection's messages drive the LISTEN's I/O too.
        loop {
            tokio::select! {
                done = &mut listen => match done {
                    Ok(()) => break,
                    Err(e) => return self.not_connected(e),
                },
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return self.not_connected(e),
                    None => return self.not_connected("the connection closed"),
                },
            }
        }
        // Listening now: whatever changed before is read again.
        if tx.send(Ok(Change::Resync)).is_err() {
            return Ended::Closed;
        }
        while let Some(message) = messages.next().await {
            let Ok(AsyncMessage::Notification(n)) = message else {
                if message.is_err() {
                    return Ended::Lost;
                }
                continue;
            };
            let Some((key, version)) = parse_payload(n.payload()) else {
                continue;
            };
            if !self.watched.contains(&key) {
                continue;
            }
            if tx.send(Ok(Change::Key { key, version })).is_err() {
                return Ended::Closed;
            }
        }
        // `client` lived until here: dropping it would have closed the connection.
        let _ = &client;
        Ended::Lost
    }
}

impl Listener {
    fn not_connected(&self, detail: impl std::fmt::Display) -> Ended {
        Ended::not_connected(NAME, &self.addr, "LISTEN", detail)
    }
}

/// `<version>:<hex of the name>` (no version for a deletion): the key and version, or `None`
/// for a payload that is not ours or a name that is not UTF-8.
fn parse_payload(payload: &str) -> Option<(String, Option<u64>)> {
    let (version, hex) = payload.split_once(':')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((String::from_utf8(bytes).ok()?, version.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::parse_payload;

    #[test]
    fn payloads_parse() {
        assert_eq!(parse_payload("12:6b"), Some(("k".to_owned(), Some(12))));
        assert_eq!(parse_payload(":c3a9"), Some(("é".to_owned(), None)));
        assert_eq!(parse_payload(":"), Some((String::new(), None)));
        assert_eq!(parse_payload("nothing"), None);
        assert_eq!(parse_payload("1:6"), None);
        assert_eq!(parse_payload("1:zz"), None);
        assert_eq!(parse_payload("1:ff"), None);
    }
}
