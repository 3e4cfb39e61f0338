//! What the driver needs from its connection, and the connection to one server ([`Node`]).
//! The cluster's is in `cluster.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, Value};

use super::config::RedisConfig;
use super::error::connect_error;
use crate::driver::net::ServerError;
use crate::driver::{ChangeStream, WatchSet};
use crate::{BackendKind, Error};

/// The connection a [`RedisDriver`](super::RedisDriver) speaks through: [`Node`] (one server)
/// or, with feature `redis-cluster`, [`Cluster`](super::Cluster). Sealed: the driver's own two.
pub trait Connection: sealed::Link {}

impl<T: sealed::Link> Connection for T {}

pub(super) mod sealed {
    use super::*;

    /// The calls the driver makes; a cluster routes each by its key.
    #[async_trait]
    pub trait Link: Clone + Send + Sync + fmt::Debug + 'static {
        /// The driver's name in errors (`redis`, `redis-cluster`).
        const NAME: &'static str;

        /// The address(es) for messages.
        fn addr(&self) -> &str;

        /// Sends one command (to the server of its first key in a cluster).
        async fn send(&self, cmd: &redis::Cmd) -> RedisResult<Value>;

        /// Sends a pipeline on one connection (to the server of its first key in a cluster), and
        /// returns each reply as is, a server's error as [`Value::ServerError`].
        async fn send_pipe(&self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>>;

        /// Whether the driver may send a `MULTI` … `EXEC` transaction in a pipeline here: one
        /// server, not a cluster (whose client routes each command of a pipeline by its key).
        fn sends_transactions(&self) -> bool {
            false
        }

        /// Splits keys into the groups one pipeline can carry: all of them on one server,
        /// one hash slot each in a cluster. Indexes into `rkeys`, in order.
        fn groups(&self, rkeys: &[String]) -> Vec<Vec<usize>> {
            vec![(0..rkeys.len()).collect()]
        }

        /// Fails when the keys of one commit cannot be written by one script (in a cluster:
        /// they are in different hash slots); `name(i)` is the scope name of `rkeys[i]`.
        fn one_slot<'a>(
            &self,
            rkeys: &[String],
            name: impl Fn(usize) -> &'a str + Send,
        ) -> Result<(), Error> {
            let _ = (rkeys, name);
            Ok(())
        }

        /// Every key matching `pattern` on every server that holds keys (`SCAN`).
        async fn scan(&self, pattern: &str) -> RedisResult<Vec<Vec<u8>>>;

        /// The command the write scripts announce a change with (contract rule 17), `None`
        /// when this connection cannot watch.
        fn publish(&self) -> Option<&'static str> {
            None
        }

        /// The change feed of keys under `prefix` (see `watch.rs`), `None` when this connection
        /// cannot watch.
        fn changes(&self, prefix: &str, watched: Arc<WatchSet>) -> Option<ChangeStream> {
            let _ = (prefix, watched);
            None
        }
    }
}

/// The connection to one Redis server: a multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct Node {
    manager: ConnectionManager,
    /// Opens the change feed's own subscriber connection.
    client: redis::Client,
    connect_timeout: Duration,
    /// The server's `host:port`, for errors and `Debug`.
    addr: String,
    db: i64,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// `SCAN cursor MATCH pattern COUNT 1000` through `send` until the cursor comes back to 0.
pub(super) async fn scan_with<F, Fut>(pattern: &str, send: F) -> RedisResult<Vec<Vec<u8>>>
where
    F: Fn(redis::Cmd) -> Fut,
    Fut: std::future::Future<Output = RedisResult<Value>>,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::from_redis_value(send(cmd).await?)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[async_trait]
impl sealed::Link for Node {
    const NAME: &'static str = "redis";

    fn addr(&self) -> &str {
        &self.addr
    }

    fn publish(&self) -> Option<&'static str> {
        Some(super::scripts::PUBLISH)
    }

    fn changes(&self, prefix: &str, watched: Arc<WatchSet>) -> Option<ChangeStream> {
        Some(super::watch::changes(
            self.client.clone(),
            prefix.to_owned(),
            self.addr.clone(),
            self.connect_timeout,
            watched,
        ))
    }

    async fn send(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        // A server's error reply as an error (the cluster client hands it back as a value).
        self.manager
            .clone()
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error)
    }

    async fn send_pipe(&self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        self.manager
            .clone()
            .req_packed_commands(pipe, 0, pipe.len())
            .await
    }

    fn sends_transactions(&self) -> bool {
        true
    }

    async fn scan(&self, pattern: &str) -> RedisResult<Vec<Vec<u8>>> {
        scan_with(pattern, |cmd| async move {
            match self.send(&cmd).await {
                Err(e) if e.is_connection_dropped() => self.send(&cmd).await,
                other => other,
            }
        })
        .await
    }
}

/// Why a first connection failed.
enum Connect {
    Redis(redis::RedisError),
    Config(Error),
    TimedOut,
}

impl Connect {
    fn as_redis(&self) -> Option<&redis::RedisError> {
        match self {
            Connect::Redis(e) => Some(e),
            _ => None,
        }
    }
}

/// Connects to the server `config` names, within its connect timeout.
pub(super) async fn connect_node(config: &RedisConfig) -> Result<Node, Error> {
    let addr = config.addr();
    let connect_timeout = config.get_connect_timeout();
    // RESP3 by default: the connection manager then hears at once of a connection the
    // server closed, so a write to a server that went down fails as "not sent" instead of
    // being handed to a dead connection. A server older than Redis 6 does not know HELLO:
    // speak RESP2 to it.
    let con = match connect_manager(config, config.get_resp3()).await {
        Err(e)
            if config.get_resp3()
                && e.as_redis()
                    .is_some_and(|r| r.to_string().contains("HELLO")) =>
        {
            connect_manager(config, false).await
        }
        other => other,
    };
    let (manager, client) = match con {
        Ok(con) => con,
        Err(Connect::Redis(e)) if e.kind() == ErrorKind::InvalidClientConfig => {
            return Err(crate::url::invalid(&config.redacted_url(), e.to_string()));
        }
        Err(Connect::Redis(e)) => return Err(connect_error(e, "redis", &addr)),
        Err(Connect::Config(e)) => return Err(e),
        Err(Connect::TimedOut) => {
            return Err(Error::backend(
                "redis",
                BackendKind::Timeout,
                ServerError::cannot_connect(
                    &addr,
                    format_args!("no answer within {connect_timeout:?}"),
                    None,
                ),
            ))
        }
    };
    Ok(Node {
        manager,
        client,
        connect_timeout,
        addr,
        db: config.get_db(),
    })
}

/// Makes the connection manager of `config`, speaking RESP3 or RESP2, within the connect
/// timeout (name resolution included).
async fn connect_manager(
    config: &RedisConfig,
    resp3: bool,
) -> Result<(ConnectionManager, redis::Client), Connect> {
    let connect_timeout = config.get_connect_timeout();
    let info = config
        .clone()
        .resp3(resp3)
        .connection_info()
        .map_err(Connect::Config)?;
    let client = redis::Client::open(info).map_err(|e| {
        Connect::Config(crate::url::invalid(
            &config.redacted_url(),
            format!("the redis crate refused it: {e}"),
        ))
    })?;
    // One connection attempt per call that needs one, so that a server that is down fails a
    // call within `connect_timeout` instead of after a series of retries.
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(config.get_response_timeout()))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_secs(1));
    match tokio::time::timeout(
        connect_timeout,
        ConnectionManager::new_with_config(client.clone(), manager),
    )
    .await
    {
        Ok(r) => r.map(|con| (con, client)).map_err(Connect::Redis),
        Err(_) => Err(Connect::TimedOut),
    }
}
