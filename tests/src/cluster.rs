//! Helpers for the Redis Cluster tests: the nodes of a cluster and the slots of its masters,
//! keys counted on one node, and a cluster of a test's own (started and stopped by
//! `.ci/redis-cluster.sh`) whose masters can be killed.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::resp::{Resp, RespClient};

/// The start/stop script of the repository's test clusters.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/redis-cluster.sh");

/// One node as `CLUSTER NODES` shows it.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's id.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// Whether it is a master (and not failed).
    pub master: bool,
    /// Whether it is marked as failed.
    pub failed: bool,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// The slot ranges it serves, for a master.
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// The `host:port` of the first node of a `redis-cluster://a:1,b:2/` URL.
pub fn first_node(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hosts = rest.split(['/', '?']).next().unwrap_or(rest);
    hosts.split(',').next().unwrap_or(hosts).to_owned()
}

/// The nodes of the cluster `addr` (`host:port`) belongs to, as it sees them.
pub async fn nodes(addr: &str) -> Vec<Node> {
    let mut c = RespClient::connect(&format!("redis://{addr}/")).await;
    let Resp::Bulk(Some(text)) = c.cmd(&[b"CLUSTER", b"NODES"]).await else {
        panic!("CLUSTER NODES on {addr} did not reply with text");
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next().unwrap_or(f[1]).to_owned();
            let failed = f[2].contains("fail");
            let master = f[2].contains("master") && !failed;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(Node {
                id: f[0].to_owned(),
                addr,
                master,
                failed,
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The masters that serve slots.
pub async fn masters(addr: &str) -> Vec<Node> {
    nodes(addr)
        .await
        .into_iter()
        .filter(|n| n.master && !n.slots.is_empty())
        .collect()
}

/// How many keys matching `pattern` the node at `addr` holds (`SCAN`).
pub async fn count_keys(addr: &str, pattern: &str) -> usize {
    let mut c = RespClient::connect(&format!("redis://{addr}/")).await;
    let mut cursor = b"0".to_vec();
    let mut n = 0;
    loop {
        let reply = c
            .cmd(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])
            .await;
        let Resp::Array(Some(mut parts)) = reply else {
            panic!("SCAN on {addr}: {reply:?}");
        };
        let (Some(Resp::Array(Some(keys))), Some(Resp::Bulk(Some(next)))) =
            (parts.pop(), parts.pop())
        else {
            panic!("SCAN on {addr}: unexpected reply");
        };
        n += keys.len();
        if next == b"0" {
            return n;
        }
        cursor = next;
    }
}

/// A cluster of 3 masters and 3 replicas of a test's own, on ports `first..first + 6`, stopped
/// when dropped (so also when the test fails).
pub struct OwnCluster {
    first: u16,
    dir: String,
}

impl OwnCluster {
    /// Starts it (a few seconds), or panics saying why.
    pub fn start(first: u16) -> OwnCluster {
        let c = OwnCluster {
            first,
            dir: format!("/tmp/mp-redis-cluster-{first}"),
        };
        let out = c.script(&["start"]);
        assert!(
            out.status.success(),
            "cannot start a cluster on {first}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("MP_REDIS_CLUSTER_FIRST_PORT", self.first.to_string())
            .env("MP_REDIS_CLUSTER_DIR", &self.dir)
            .output()
            .expect("run .ci/redis-cluster.sh")
    }

    /// Its `redis-cluster://` URL (the three first nodes).
    pub fn url(&self) -> String {
        let p = self.first;
        format!(
            "redis-cluster://127.0.0.1:{p},127.0.0.1:{},127.0.0.1:{}/",
            p + 1,
            p + 2
        )
    }

    /// The address of its first node.
    pub fn first_addr(&self) -> String {
        format!("127.0.0.1:{}", self.first)
    }

    /// Kills the node at `port` with SIGKILL.
    pub fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(format!("{}/{port}/redis.pid", self.dir))
            .expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Starts the node at `port` again; it rejoins the cluster (as a replica when it was
    /// failed over).
    pub fn restart(&self, port: u16) {
        let out = self.script(&["restart-node", &port.to_string()]);
        assert!(
            out.status.success(),
            "restart {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until a node other than `dead` serves `slot` as a master; returns it and when.
    pub async fn wait_for_new_master(
        &self,
        dead: &str,
        slot: u16,
        limit: Duration,
    ) -> (Node, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            for port in self.first..self.first + 6 {
                let addr = format!("127.0.0.1:{port}");
                if addr == dead || tokio::net::TcpStream::connect(&addr).await.is_err() {
                    continue;
                }
                if let Some(m) = masters(&addr)
                    .await
                    .into_iter()
                    .find(|m| m.serves(slot) && m.addr != dead)
                {
                    return (m, Instant::now());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}
