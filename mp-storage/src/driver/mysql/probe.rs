//! Whether a server speaks MySQL at all: asked when the first connection of a new driver is slow
//! to come, so that a URL pointed at another kind of server fails at once instead of after
//! [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT). A Redis server, for one, waits in silence for a
//! command, and so would keep `mysql_async` waiting for a greeting until the timeout.
//!
//! A MySQL server speaks first: on every connection it sends its greeting (or an error packet)
//! before it reads a byte. The probe opens a connection of its own and waits for that greeting;
//! when the server stays silent a while, it says `PING` (which Redis answers), since a MySQL
//! server that is only slow still greets before it reads what the probe said.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use super::NAME;
use crate::driver::net::ServerError;
use crate::{BackendKind, Error};

/// How long the first connection may take before the probe starts.
pub(super) const AFTER: Duration = Duration::from_millis(200);

/// How long the probe waits in silence for a greeting before it speaks, beyond twice the time
/// its connection took.
const QUIET: Duration = Duration::from_millis(200);

/// The bytes that tell a MySQL packet: a 3-byte length, the sequence number and the first byte.
const HEAD: usize = 5;

/// What the server at the address said first.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A MySQL greeting or error packet.
    Mysql,
    /// Something else: these bytes.
    Other(Vec<u8>),
    /// Nothing: no connection, or closed without a word. The pool's own error tells more.
    Nothing,
}

/// Fails when the server at `host:port` answers, before `deadline`, in a protocol that is not
/// MySQL's; `Ok` when it greets like MySQL or nothing can be told in time.
pub(super) async fn check(
    host: &str,
    port: u16,
    addr: &str,
    deadline: Instant,
) -> Result<(), Error> {
    match timeout_at(deadline, first_words(host, port)).await {
        // No MySQL server could be reached there: a connection failure, like a refused one.
        Ok(Answer::Other(bytes)) => Err(Error::backend(
            NAME,
            BackendKind::Connection,
            ServerError::wrong_protocol(
                addr,
                "MySQL",
                Some(&format!(
                    "its first bytes are \"{}\", not a MySQL greeting",
                    bytes.escape_ascii()
                )),
                None,
            ),
        )),
        Ok(Answer::Mysql | Answer::Nothing) | Err(_) => Ok(()),
    }
}

/// Connects to `host:port` and reads what the server says first.
async fn first_words(host: &str, port: u16) -> Answer {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return Answer::Nothing;
    };
    let mut head = Vec::with_capacity(HEAD);
    let quiet = QUIET + started.elapsed() * 2;
    let complete = timeout(quiet, read_head(&mut stream, &mut head))
        .await
        .is_ok();
    if !complete && head.is_empty() {
        // Silent so far: a server that waits for its client to speak first, or a slow one.
        if stream.write_all(b"PING\r\n").await.is_err() {
            return Answer::Nothing;
        }
    }
    read_head(&mut stream, &mut head).await;
    classify(&head)
}

/// Reads into `head` until it holds [`HEAD`] bytes or the stream ends. Cancel-safe: what was
/// read stays in `head`.
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) {
    let mut buf = [0u8; HEAD];
    while head.len() < HEAD {
        match stream.read(&mut buf[..HEAD - head.len()]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Tells a MySQL greeting from anything else by its first [`HEAD`] bytes: a non-zero length,
/// sequence number 0, then protocol version 10 (or 9), or `0xFF` for an error packet (too many
/// connections, a blocked host).
fn classify(head: &[u8]) -> Answer {
    match head {
        [] => Answer::Nothing,
        [l0, l1, l2, 0, 0x0a | 0x09 | 0xff, ..] if [*l0, *l1, *l2] != [0, 0, 0] => Answer::Mysql,
        other => Answer::Other(other.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn greetings_are_told_apart() {
        // MariaDB's greeting starts "J\0\0\0\n5.5.5-10…", an error packet "\x17\0\0\0\xff…".
        assert_eq!(classify(b"J\0\0\0\x0a5.5.5"), Answer::Mysql);
        assert_eq!(classify(b"\x17\0\0\0\xff"), Answer::Mysql);
        assert_eq!(classify(b"+PONG"), Answer::Other(b"+PONG".to_vec()));
        assert_eq!(classify(b"-NOAU"), Answer::Other(b"-NOAU".to_vec()));
        assert_eq!(
            classify(b"\0\0\0\0\x0a"),
            Answer::Other(b"\0\0\0\0\x0a".to_vec())
        );
        assert_eq!(classify(b"J\0\0"), Answer::Other(b"J\0\0".to_vec()));
        assert_eq!(classify(b""), Answer::Nothing);
    }

    /// A server that waits for the client to speak, then answers like Redis.
    async fn redis_like() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"PING") {
                        let _ = s.write_all(b"+PONG\r\n").await;
                    }
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_silent_server_is_asked_and_told_apart() {
        let (addr, task) = redis_like().await;
        let (host, port) = addr.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        let started = Instant::now();
        assert_eq!(
            first_words(host, port).await,
            Answer::Other(b"+PONG".to_vec())
        );
        let e = check(host, port, &addr, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert!(
            e.to_string().contains(&format!(
                "the server at {addr} does not speak the MySQL protocol"
            )),
            "{e}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_greeting_after_a_while_is_mysql() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                // Slow to greet: the probe speaks first, and still gets the greeting.
                tokio::time::sleep(Duration::from_millis(600)).await;
                let _ = s.write_all(b"J\0\0\0\x0a5.5.5-10.11").await;
            }
        });
        assert_eq!(first_words("127.0.0.1", port).await, Answer::Mysql);
        task.abort();
    }

    #[tokio::test]
    async fn nothing_to_tell_is_not_an_error() {
        // Nobody listens (port 1), or the deadline comes first.
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(check("127.0.0.1", 1, "127.0.0.1:1", soon).await.is_ok());
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let soon = Instant::now() + Duration::from_millis(600);
        assert!(check("127.0.0.1", port, "x", soon).await.is_ok());
        drop(silent);
    }
}
