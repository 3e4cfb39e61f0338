//! A raw RESP client for the Redis tests: to plant records the driver would never write and to
//! read or change server state (ACL users, scripts, client kills).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::url::host_port;

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3 abc`, or `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*2 …`, or `*-1` (`None`).
    Array(Option<Vec<Resp>>),
}

/// One connection to a Redis server, speaking RESP2. Every failure panics: it is for tests.
pub struct RespClient {
    r: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to the server of `url` (`redis://[…@]host[:port][/db]`) and selects its
    /// database. The URL's user is not used: the connection is the server's default user.
    pub async fn connect(url: &str) -> RespClient {
        let stream = TcpStream::connect(host_port(url)).await.expect("connect");
        let mut client = RespClient {
            r: BufReader::new(stream),
        };
        let db = url
            .split_once("://")
            .and_then(|(_, r)| r.split_once('/'))
            .map(|(_, p)| p.split('?').next().unwrap_or(""))
            .unwrap_or("");
        if !db.is_empty() {
            client.cmd(&[b"SELECT", db.as_bytes()]).await;
        }
        client
    }

    /// Sends one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Resp {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).await.expect("send");
        self.read().await
    }

    /// The ids of the server's clients that `CLIENT LIST <filter…>` lists and whose line
    /// `keep` accepts (e.g. `TYPE pubsub`, or lines with `ssub=` above 0).
    pub async fn client_ids(
        &mut self,
        filter: &[&[u8]],
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut args: Vec<&[u8]> = vec![b"CLIENT", b"LIST"];
        args.extend_from_slice(filter);
        let Resp::Bulk(Some(list)) = self.cmd(&args).await else {
            panic!("CLIENT LIST gave no list");
        };
        String::from_utf8_lossy(&list)
            .lines()
            .filter(|l| keep(l))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    /// `HGETALL key`.
    pub async fn hgetall(&mut self, key: &str) -> Resp {
        self.cmd(&[b"HGETALL", key.as_bytes()]).await
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).await.expect("read");
        line.trim_end_matches("\r\n").to_owned()
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resp> + Send + '_>> {
        Box::pin(async move {
            let line = self.line().await;
            let (kind, rest) = line.split_at(1);
            match kind {
                "+" => Resp::Simple(rest.to_owned()),
                "-" => Resp::Error(rest.to_owned()),
                ":" => Resp::Int(rest.parse().expect("int")),
                "$" => {
                    let n: i64 = rest.parse().expect("len");
                    if n < 0 {
                        return Resp::Bulk(None);
                    }
                    let mut buf = vec![0; n as usize + 2];
                    self.r.read_exact(&mut buf).await.expect("bulk");
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(buf))
                }
                "*" => {
                    let n: i64 = rest.parse().expect("len");
                    if n < 0 {
                        return Resp::Array(None);
                    }
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(self.read().await);
                    }
                    Resp::Array(Some(items))
                }
                other => panic!("unexpected reply type {other:?}"),
            }
        })
    }
}

/// What a piece of a client's byte stream held ([`CommandCounter::feed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Commands (RESP arrays) that started in it.
    pub commands: u64,
    /// Requests that started in it: a command, or a `MULTI` … `EXEC` transaction as a whole
    /// (counted at its `MULTI`).
    pub requests: u64,
}

/// Counts the RESP arrays (commands) in a client's byte stream, fed in pieces as they arrive,
/// and the requests they make (a transaction is one).
#[derive(Default)]
pub struct CommandCounter {
    pending: Vec<u8>,
    /// Bulk strings still to come in the current command.
    bulks_left: u64,
    /// Bytes of a bulk string (with its CRLF) still to skip.
    skip: usize,
    /// While the current command's first bulk string (its name) is read: its bytes so far.
    name: Option<Vec<u8>>,
    /// The name's bytes still to read (its CRLF not counted).
    name_left: usize,
    /// Whether the command's name is the next bulk string.
    name_next: bool,
    /// Inside a `MULTI` … `EXEC` (or `DISCARD`).
    in_multi: bool,
}

impl CommandCounter {
    /// Takes the next bytes; returns how many commands and requests started in them.
    pub fn feed(&mut self, bytes: &[u8]) -> Counted {
        let mut counted = Counted::default();
        let mut bytes = bytes;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if let Some(name) = &mut self.name {
                    let take = n.min(self.name_left);
                    name.extend_from_slice(&bytes[..take]);
                    self.name_left -= take;
                }
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return counted;
                }
                if let Some(name) = self.name.take() {
                    self.named(&name, &mut counted);
                }
            }
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.pending.extend_from_slice(bytes);
                return counted;
            };
            self.pending.extend_from_slice(&bytes[..=nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.pending);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if self.bulks_left == 0 {
                assert!(text.starts_with('*'), "not a command: {text:?}");
                counted.commands += 1;
                self.bulks_left = text[1..].parse().expect("array length");
                self.name_next = true;
            } else {
                assert!(text.starts_with('$'), "not a bulk string: {text:?}");
                let len: usize = text[1..].parse().expect("bulk length");
                self.skip = len + 2;
                self.bulks_left -= 1;
                if std::mem::take(&mut self.name_next) {
                    self.name = Some(Vec::with_capacity(len));
                    self.name_left = len;
                }
            }
        }
    }

    /// Counts the request a command named `name` makes, if any.
    fn named(&mut self, name: &[u8], counted: &mut Counted) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if self.in_multi {
            self.in_multi = !(is("EXEC") || is("DISCARD"));
        } else {
            counted.requests += 1;
            self.in_multi = is("MULTI");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CommandCounter;

    #[test]
    fn commands_are_counted_across_pieces() {
        let stream = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\r\n\r\n";
        for split in 0..stream.len() {
            let mut c = CommandCounter::default();
            let (a, b) = (c.feed(&stream[..split]), c.feed(&stream[split..]));
            assert_eq!(a.commands + b.commands, 2, "split at {split}");
            assert_eq!(a.requests + b.requests, 2, "split at {split}");
        }
    }

    #[test]
    fn a_transaction_is_one_request() {
        let cmd = |parts: &[&str]| {
            let mut out = format!("*{}\r\n", parts.len());
            for p in parts {
                out.push_str(&format!("${}\r\n{p}\r\n", p.len()));
            }
            out
        };
        let stream = [
            cmd(&["GET", "k"]),
            cmd(&["multi"]),
            cmd(&["HGETALL", "k"]),
            cmd(&["PEXPIRETIME", "k"]),
            cmd(&["exec"]),
            cmd(&["MULTI"]),
            cmd(&["SET", "k", "MULTI"]),
            cmd(&["DISCARD"]),
            cmd(&["EVALSHA", "0123", "1", "k"]),
        ]
        .concat()
        .into_bytes();
        for split in 0..stream.len() {
            let mut c = CommandCounter::default();
            let (a, b) = (c.feed(&stream[..split]), c.feed(&stream[split..]));
            assert_eq!(a.commands + b.commands, 9, "split at {split}");
            // GET, the two transactions (a name in an argument is not a command's), EVALSHA.
            assert_eq!(a.requests + b.requests, 4, "split at {split}");
        }
    }
}
