//! The command line of `counter-server`: flags and variables, startup, graceful shutdown.

use std::ffi::OsString;
use std::io::Write as _;
use std::time::Duration;

use mp_storage::{Storage, DEFAULT_URL, ENV_URL};
use tokio::net::TcpListener;
use tracing::level_filters::LevelFilter;

/// Where the server listens when neither `--listen` nor `PORT` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How long requests in flight may run on after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--help` prints.
pub const USAGE: &str = "\
counter-server: counts HTTP requests in mp-storage scopes

Usage: counter-server [--storage URL] [--listen ADDR]

  GET /             counts in scope \"global\"
  GET /?user=NAME   counts in scope \"user:NAME\"
  Answers `There have been N requests.`, or {\"scope\": ..., \"count\": N} with
  `Accept: application/json`.
  POST /deposit?user=NAME&amount=N          adds N to scope \"wallet:NAME\"
  POST /transfer?from=A&to=B&amount=N       moves N from wallet A to wallet B, all or
                                            nothing (409 when A has less than N)
  GET /wallet?user=NAME                     reads a balance, as JSON

Options:
  --storage URL   the store: memory://, sqlite:<file>, file:<dir>, redis://...,
                  mysql://..., postgres://...
                  (default: $MP_STORAGE_URL, else sqlite:./mp-data.db)
  --listen ADDR   the address to listen on, HOST:PORT or a port
                  (default: 127.0.0.1:$PORT, else 127.0.0.1:8080)
  -h, --help      print this help

Logs go to stderr; RUST_LOG=debug logs every count. Ctrl-C or SIGTERM stops the
server after the requests in flight.
";

/// What the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The storage URL (may hold a password: print it with [`mp_storage::redact_url`]).
    pub storage_url: String,
    /// The address to listen on, `HOST:PORT`.
    pub listen: String,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Run(Config),
    /// Print [`USAGE`].
    Help,
}

/// Reads the flags (`args`, without the program name) and the variables `MP_STORAGE_URL` and
/// `PORT` (through `var`); flags win over variables. `Err` is a usage error to print.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    var: impl Fn(&str) -> Option<OsString>,
) -> Result<Command, String> {
    let utf8 = |s: OsString| s.into_string().map_err(|s| format!("{s:?} is not UTF-8"));
    let mut storage = None;
    let mut listen = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = utf8(arg)?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--storage" | "--listen" => {
                let value = match inline.or_else(|| args.next()) {
                    Some(value) => utf8(value)?,
                    None => return Err(format!("{flag} needs a value")),
                };
                if flag == "--storage" {
                    storage = Some(value);
                } else {
                    listen = Some(listen_addr(&value)?);
                }
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let storage_url = match storage {
        Some(url) => url,
        None => match var(ENV_URL) {
            Some(url) => utf8(url).map_err(|e| format!("{ENV_URL}: {e}"))?,
            None => DEFAULT_URL.to_owned(),
        },
    };
    let listen = match listen {
        Some(addr) => addr,
        None => match var("PORT") {
            Some(port) => {
                let port = utf8(port).map_err(|e| format!("PORT: {e}"))?;
                match port.trim().parse::<u16>() {
                    Ok(port) => format!("127.0.0.1:{port}"),
                    Err(_) => return Err(format!("PORT={port:?} is not a port number")),
                }
            }
            None => DEFAULT_LISTEN.to_owned(),
        },
    };
    Ok(Command::Run(Config {
        storage_url,
        listen,
    }))
}

/// `--listen` takes `HOST:PORT`, or a bare port on 127.0.0.1.
fn listen_addr(value: &str) -> Result<String, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(value.to_owned())
        }
        _ => Err(format!("--listen {value:?}: expected HOST:PORT or a port")),
    }
}

/// Runs `counter-server` with `args` (without the program name) and the process environment;
/// returns the exit code: 0 when stopped by a signal or after `--help`, 1 when the server could
/// not start or failed, 2 for a usage error.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    let config = match parse(args, |name| std::env::var_os(name)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            // A closed stdout (`counter-server --help | head -1`) is no reason to panic.
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return 0;
        }
        Err(msg) => {
            let _ = writeln!(
                std::io::stderr(),
                "counter-server: {msg}\n(`counter-server --help` lists the flags)"
            );
            return 2;
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "counter-server: no async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(start(config)) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "counter-server: {msg}");
            1
        }
    }
}

/// Logs to stderr at the level `RUST_LOG` names (`error` … `trace`), default `info`.
fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}

/// Opens the storage, binds, prints both, and serves until a shutdown signal.
async fn start(config: Config) -> Result<(), String> {
    let shown = mp_storage::redact_url(&config.storage_url);
    let storage = Storage::open(&config.storage_url)
        .await
        .map_err(|e| format!("cannot open the storage {shown}: {e}"))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "counter-server: storage {shown} ({} driver)",
        storage.driver_name()
    );
    let _ = writeln!(out, "counter-server: listening on http://{addr}");
    let _ = out.flush();
    drop(out);

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        let name = shutdown_signal().await;
        tracing::info!("{name}: finishing the requests in flight, then stopping");
        let _ = stopping_tx.send(());
    };
    let drain_deadline = async move {
        if stopping_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = super::serve(listener, storage, signal) => {
            served.map_err(|e| format!("serving on {addr} failed: {e}"))?;
        }
        () = drain_deadline => {
            tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM; says which.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(e) => {
                tracing::warn!("cannot listen for Ctrl-C: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    name = ctrl_c => name,
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                ctrl_c.await
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Command, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(args.iter().map(OsString::from), |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    fn config(storage_url: &str, listen: &str) -> Result<Command, String> {
        Ok(Command::Run(Config {
            storage_url: storage_url.to_owned(),
            listen: listen.to_owned(),
        }))
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse_with(&[], &[]),
            config(mp_storage::DEFAULT_URL, "127.0.0.1:8080")
        );
    }

    #[test]
    fn variables_then_flags() {
        let vars = [("MP_STORAGE_URL", "memory://"), ("PORT", "9000")];
        assert_eq!(
            parse_with(&[], &vars),
            config("memory://", "127.0.0.1:9000")
        );
        assert_eq!(
            parse_with(&["--storage", "file:/x", "--listen=0.0.0.0:1"], &vars),
            config("file:/x", "0.0.0.0:1")
        );
        assert_eq!(
            parse_with(
                &["--storage=redis://h/0?prefix=a=b", "--listen", "3000"],
                &[]
            ),
            config("redis://h/0?prefix=a=b", "127.0.0.1:3000")
        );
        assert_eq!(
            parse_with(&["--listen", "[::1]:80"], &[]),
            config(mp_storage::DEFAULT_URL, "[::1]:80")
        );
    }

    #[test]
    fn usage_errors() {
        assert_eq!(parse_with(&["-h"], &[]), Ok(Command::Help));
        assert_eq!(
            parse_with(&["--storage", "x", "--help"], &[]),
            Ok(Command::Help)
        );
        assert!(parse_with(&["--storage"], &[]).is_err());
        assert!(parse_with(&["--verbose"], &[]).is_err());
        assert!(parse_with(&["serve"], &[]).is_err());
        assert!(parse_with(&["--listen", "nowhere"], &[]).is_err());
        assert!(parse_with(&["--listen", ":80"], &[]).is_err());
        assert!(parse_with(&[], &[("PORT", "http")]).is_err());
        assert!(parse_with(&[], &[("PORT", "70000")]).is_err());
    }
}
