//! A TCP proxy between a client under test and any server (Redis, MySQL, PostgreSQL), to break
//! the network on cue:
//!
//! - [`Proxy::cut`]: close both sides of every open connection (new ones are still accepted);
//! - [`Proxy::cut_clients`]: close only the client side of every open connection; the server side
//!   stays open and still gets every byte the client had sent, so a statement in flight keeps
//!   running on the server. This is what a load balancer or a network reset looks like;
//! - [`Proxy::pause`] / [`Proxy::resume`]: hold the bytes clients send (the server hears nothing)
//!   and deliver them in order later; replies still flow;
//! - [`Proxy::stop`]: stop listening and cut everything: the server looks down.
//!
//! [`Proxy::counting_resp`] also counts the Redis commands clients send, and the requests they
//! make (a `MULTI` … `EXEC` transaction is one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::resp::CommandCounter;

/// What every connection of a proxy obeys; connections watch it change.
#[derive(Clone, Copy, Debug, Default)]
struct Control {
    /// Hold client→server bytes.
    paused: bool,
    /// How many times [`Proxy::cut_clients`] was called: a connection opened before the last
    /// call has its client side cut.
    client_cuts: u64,
}

/// A TCP proxy on a free loopback port; dropping it stops it. See the [module](self).
pub struct Proxy {
    addr: String,
    counts: Arc<Counts>,
    control: Arc<watch::Sender<Control>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`) on a free port of 127.0.0.1.
    pub async fn start(upstream: impl Into<String>) -> Proxy {
        Proxy::start_on("127.0.0.1:0", upstream, false).await
    }

    /// A proxy to the Redis server `upstream` that counts the commands clients send
    /// ([`Proxy::commands`]).
    pub async fn counting_resp(upstream: impl Into<String>) -> Proxy {
        Proxy::start_on("127.0.0.1:0", upstream, true).await
    }

    /// A proxy listening on `addr` (panics when it cannot bind it; see [`Proxy::restart_on`]).
    pub async fn start_on(addr: &str, upstream: impl Into<String>, count_resp: bool) -> Proxy {
        let listener = TcpListener::bind(addr).await.expect("bind the proxy");
        Proxy::serve(listener, upstream.into(), count_resp)
    }

    /// A proxy on `addr` again, once its port is free (after [`Proxy::stop`] or a drop):
    /// the server comes back at the same address.
    pub async fn restart_on(addr: &str, upstream: impl Into<String>) -> Proxy {
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        Proxy::serve(listener, upstream.into(), false)
    }

    fn serve(listener: TcpListener, upstream: String, count_resp: bool) -> Proxy {
        let addr = listener.local_addr().expect("addr").to_string();
        let counts = Arc::new(Counts::default());
        let control = Arc::new(watch::Sender::new(Control::default()));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let counts = count_resp.then(|| counts.clone());
            let control = control.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let born = control.borrow().client_cuts;
                    let task = tokio::spawn(relay(
                        client,
                        server,
                        control.subscribe(),
                        born,
                        counts.clone(),
                    ));
                    let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
                    conns.retain(|c| !c.is_finished());
                    conns.push(task);
                }
            })
        };
        Proxy {
            addr,
            counts,
            control,
            conns,
            accept,
        }
    }

    /// The `host:port` the proxy listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The commands clients sent so far (only with [`Proxy::counting_resp`]; else 0).
    pub fn commands(&self) -> u64 {
        self.counts.commands.load(Ordering::SeqCst)
    }

    /// The requests clients sent so far: commands, a `MULTI` … `EXEC` transaction counted as
    /// one (only with [`Proxy::counting_resp`]; else 0).
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Closes both sides of every open connection; new ones are still accepted.
    pub fn cut(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Closes the client side of every open connection and keeps its server side open: what the
    /// client had sent still reaches the server (after a [`Proxy::resume`], when paused), and
    /// the server's replies are read and dropped. [`Proxy::cut`], [`Proxy::stop`] or a drop
    /// closes the server sides. New connections are not affected.
    pub fn cut_clients(&self) {
        self.control.send_modify(|c| c.client_cuts += 1);
    }

    /// Holds the bytes clients send from now on; replies still flow.
    pub fn pause(&self) {
        self.control.send_modify(|c| c.paused = true);
    }

    /// Delivers the held bytes, in order, and lets bytes through again.
    pub fn resume(&self) {
        self.control.send_modify(|c| c.paused = false);
    }

    /// Stops listening and cuts every connection: the server looks down.
    pub fn stop(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a counting proxy's clients sent.
#[derive(Default)]
struct Counts {
    commands: AtomicU64,
    requests: AtomicU64,
}

/// Relays one connection until either end closes it, or until the proxy cuts it.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    control: watch::Receiver<Control>,
    born: u64,
    counts: Option<Arc<Counts>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = up(cr, sw, control.clone(), born, counts);
    let down = down(sr, cw, control, born);
    tokio::pin!(up, down);
    tokio::select! {
        // The server closed: close the client too.
        () = &mut down => {}
        kept = &mut up => {
            if let Some(server_writer) = kept {
                // The client side was cut: the server side lives on, its replies dropped, until
                // the server closes it or the proxy cuts it.
                down.await;
                drop(server_writer);
            }
        }
    }
}

/// Client → server. Returns `None` when the client closed (the connection ends), or the server's
/// write half when the client side was cut (it stays open).
async fn up(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    mut control: watch::Receiver<Control>,
    born: u64,
    counts: Option<Arc<Counts>>,
) -> Option<OwnedWriteHalf> {
    let mut counter = counts.map(|c| (c, CommandCounter::default()));
    let mut held = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let now = *control.borrow_and_update();
        if !now.paused && !held.is_empty() {
            server.write_all(&held).await.ok()?;
            held.clear();
        }
        if now.client_cuts > born {
            drop(client);
            // What the client sent is delivered, once the proxy lets bytes through.
            while !held.is_empty() {
                if control.borrow_and_update().paused {
                    if control.changed().await.is_err() {
                        break;
                    }
                    continue;
                }
                server.write_all(&held).await.ok()?;
                held.clear();
            }
            return Some(server);
        }
        tokio::select! {
            read = client.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => n,
                };
                if let Some((total, counter)) = &mut counter {
                    let counted = counter.feed(&buf[..n]);
                    total.commands.fetch_add(counted.commands, Ordering::SeqCst);
                    total.requests.fetch_add(counted.requests, Ordering::SeqCst);
                }
                if now.paused {
                    held.extend_from_slice(&buf[..n]);
                } else {
                    server.write_all(&buf[..n]).await.ok()?;
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    // The proxy is gone.
                    return None;
                }
            }
        }
    }
}

/// Server → client, until the server closes; after the client side is cut, the server's bytes
/// are read and dropped.
async fn down(
    mut server: OwnedReadHalf,
    client: OwnedWriteHalf,
    mut control: watch::Receiver<Control>,
    born: u64,
) {
    let mut client = Some(client);
    let mut buf = vec![0; 64 * 1024];
    loop {
        if control.borrow_and_update().client_cuts > born {
            client = None;
        }
        tokio::select! {
            read = server.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Some(w) = &mut client {
                    if w.write_all(&buf[..n]).await.is_err() {
                        client = None;
                    }
                }
            }
            changed = control.changed(), if client.is_some() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::Proxy;

    /// What the echo server saw on one of its connections.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Data(usize, Vec<u8>),
        Closed(usize),
    }

    /// An echo server: sends back every byte, and reports what each connection received and
    /// when it closed.
    async fn echo_server() -> (String, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut id = 0;
            while let Ok((mut conn, _)) = listener.accept().await {
                id += 1;
                let (tx, id) = (tx.clone(), id);
                tokio::spawn(async move {
                    let mut buf = [0; 1024];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let _ = tx.send(Seen::Data(id, buf[..n].to_vec()));
                                // An echo to a client that is gone is no error of the server's.
                                let _ = conn.write_all(&buf[..n]).await;
                            }
                        }
                    }
                    let _ = tx.send(Seen::Closed(id));
                });
            }
        });
        (addr, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the echo server reports within 5 s")
            .expect("the echo server runs")
    }

    async fn quiet(rx: &mut mpsc::UnboundedReceiver<Seen>) {
        if let Ok(seen) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            panic!("the echo server saw {seen:?}");
        }
    }

    async fn echo(client: &mut TcpStream, bytes: &[u8]) {
        client.write_all(bytes).await.expect("send");
        let mut back = vec![0; bytes.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
            .await
            .expect("an echo within 5 s")
            .expect("read the echo");
        assert_eq!(back, bytes);
    }

    /// Reads until the connection ends: EOF or a reset.
    async fn closed(client: &mut TcpStream) {
        let mut buf = [0; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the proxy closes the client within 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn relays_both_ways_and_counts_resp_commands() {
        let (upstream, mut seen) = echo_server().await;
        let proxy = Proxy::counting_resp(upstream).await;
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut client, b"*1\r\n$4\r\nPING\r\n").await;
        assert_eq!(
            next(&mut seen).await,
            Seen::Data(1, b"*1\r\n$4\r\nPING\r\n".to_vec())
        );
        echo(
            &mut client,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n",
        )
        .await;
        next(&mut seen).await;
        assert_eq!((proxy.commands(), proxy.requests()), (3, 3));
        drop(client);
        assert_eq!(next(&mut seen).await, Seen::Closed(1));
    }

    #[tokio::test]
    async fn cut_closes_both_sides_and_accepts_new_connections() {
        let (upstream, mut seen) = echo_server().await;
        let proxy = Proxy::start(upstream).await;
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut client, b"one").await;
        next(&mut seen).await;
        proxy.cut();
        closed(&mut client).await;
        assert_eq!(next(&mut seen).await, Seen::Closed(1));
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut again, b"two").await;
        assert_eq!(next(&mut seen).await, Seen::Data(2, b"two".to_vec()));
    }

    #[tokio::test]
    async fn cut_clients_keeps_the_server_side_open_and_delivers_what_was_sent() {
        let (upstream, mut seen) = echo_server().await;
        let proxy = Proxy::start(upstream).await;
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut client, b"hello").await;
        next(&mut seen).await;

        // Bytes in flight: sent by the client, held by the proxy, when the client side is cut.
        proxy.pause();
        client.write_all(b"in flight").await.expect("send");
        quiet(&mut seen).await;
        proxy.cut_clients();
        closed(&mut client).await;
        quiet(&mut seen).await;
        // The server side is still open and gets them.
        proxy.resume();
        assert_eq!(next(&mut seen).await, Seen::Data(1, b"in flight".to_vec()));
        quiet(&mut seen).await;

        // A connection opened after the cut works; the old server side closes with a full cut.
        let mut later = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut later, b"later").await;
        assert_eq!(next(&mut seen).await, Seen::Data(2, b"later".to_vec()));
        proxy.cut();
        let mut closes = vec![next(&mut seen).await, next(&mut seen).await];
        closes.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(closes, vec![Seen::Closed(1), Seen::Closed(2)]);
    }

    #[tokio::test]
    async fn pause_holds_client_bytes_until_resumed() {
        let (upstream, mut seen) = echo_server().await;
        let proxy = Proxy::start(upstream).await;
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        echo(&mut client, b"a").await;
        next(&mut seen).await;
        proxy.pause();
        client.write_all(b"b").await.expect("send");
        client.write_all(b"c").await.expect("send");
        quiet(&mut seen).await;
        proxy.resume();
        let mut got = Vec::new();
        while got.len() < 2 {
            match next(&mut seen).await {
                Seen::Data(1, bytes) => got.extend(bytes),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, b"bc");
        let mut back = [0; 2];
        client.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"bc");
    }

    #[tokio::test]
    async fn stop_refuses_connections_and_restart_serves_again() {
        let (upstream, mut seen) = echo_server().await;
        let proxy = Proxy::start(upstream.clone()).await;
        let addr = proxy.addr().to_owned();
        let mut client = TcpStream::connect(&addr).await.expect("connect");
        echo(&mut client, b"x").await;
        next(&mut seen).await;
        proxy.stop();
        closed(&mut client).await;
        assert_eq!(next(&mut seen).await, Seen::Closed(1));
        // The listener goes with the aborted accept task.
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if TcpStream::connect(&addr).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "a stopped proxy still accepts");
        drop(proxy);
        let back = Proxy::restart_on(&addr, upstream).await;
        let mut client = TcpStream::connect(back.addr()).await.expect("connect");
        echo(&mut client, b"y").await;
    }
}
