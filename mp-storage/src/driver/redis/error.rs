//! How a Redis error becomes an [`Error`]: its [`BackendKind`], and a message that names the
//! server for failures to reach or understand it.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::record::corrupt;
use crate::driver::net::ServerError;
use crate::{BackendKind, BoxError, Error};

/// Maps an error of a command on one key: a record that is not ours to read is
/// [`Error::Corrupt`], the rest goes through [`backend_error`].
pub(super) fn command_error(
    e: RedisError,
    driver: &'static str,
    addr: &str,
    key: &str,
    rkey: &str,
) -> Error {
    match e.code() {
        Some("WRONGTYPE") => corrupt(key, rkey, "the key holds a value that is not a hash"),
        Some("MPCORRUPT") => corrupt(key, rkey, e.detail().unwrap_or("malformed record")),
        _ => backend_error(e, driver, addr),
    }
}

/// Sorts a redis error into a [`BackendKind`]. Lost connections and timeouts are the kinds after
/// which the engine checks whether a write took effect; their messages name the server at
/// `addr`. A refused connection is one the connection manager could not make: the command was
/// never sent (an established connection is reset, never refused), so it is an unsent error and
/// the engine knows that a write did not happen.
pub(super) fn backend_error(e: RedisError, driver: &'static str, addr: &str) -> Error {
    let kind = backend_kind(&e);
    if e.is_connection_refusal() {
        let source = ServerError::cannot_connect(addr, reason(&e), Some(e.into()));
        return Error::backend_unsent(driver, kind, source);
    }
    let source: BoxError = if e.is_timeout() {
        Box::new(ServerError::new(
            format!("no reply from {addr} in time"),
            Some(e.into()),
        ))
    } else if e.is_io_error() || e.is_connection_dropped() {
        Box::new(ServerError::new(
            format!("the connection to {addr} failed: {}", reason(&e)),
            Some(e.into()),
        ))
    } else {
        Box::new(e)
    };
    Error::backend(driver, kind, source)
}

/// Maps an error of the first connection to the server at `addr`. A reply that does not parse
/// means something other than Redis answered: no Redis server could be reached there, a
/// [`BackendKind::Connection`] failure like a refused connection.
pub(super) fn connect_error(e: RedisError, driver: &'static str, addr: &str) -> Error {
    if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) {
        return Error::backend(
            driver,
            BackendKind::Connection,
            ServerError::wrong_protocol(addr, "redis", None, Some(e.into())),
        );
    }
    let kind = backend_kind(&e);
    if matches!(kind, BackendKind::Connection | BackendKind::Timeout) && !is_server_reply(&e) {
        return Error::backend(
            driver,
            kind,
            ServerError::cannot_connect(addr, reason(&e), Some(e.into())),
        );
    }
    backend_error(e, driver, addr)
}

/// Whether the error is a reply of the server (`LOADING`, `MASTERDOWN`, …), not a failure to
/// reach it.
fn is_server_reply(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// The reason of a failed connection, in a few words.
fn reason(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    e.to_string()
}

fn backend_kind(e: &RedisError) -> BackendKind {
    if e.is_timeout() {
        return BackendKind::Timeout;
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return BackendKind::Connection;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return BackendKind::PermissionDenied;
        }
        // The server is there but cannot serve yet (loading a dump, failing over).
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown,
        ) => return BackendKind::Connection,
        _ => {}
    }
    match e.code() {
        Some("OOM") => BackendKind::Full,
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(backend_kind(&io), BackendKind::Connection);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(backend_kind(&io), BackendKind::Timeout);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(backend_kind(&io), BackendKind::Connection);
        let oom = redis::make_extension_error(
            "OOM".to_owned(),
            Some("command not allowed when used memory > 'maxmemory'.".to_owned()),
        );
        assert_eq!(backend_kind(&oom), BackendKind::Full);
        let noauth = redis::make_extension_error(
            "NOAUTH".to_owned(),
            Some("Authentication required.".to_owned()),
        );
        assert_eq!(backend_kind(&noauth), BackendKind::PermissionDenied);
    }

    #[test]
    fn connection_errors_name_the_server() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = connect_error(refused.clone(), "redis", "127.0.0.1:6380");
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert_eq!(
            e.to_string(),
            "redis backend error (connection): cannot connect to 127.0.0.1:6380: \
             connection refused"
        );
        let e = backend_error(refused, "redis", "h:1");
        assert!(e.to_string().contains("cannot connect to h:1"), "{e}");
        // Nothing was sent on a connection that could not be made.
        assert!(
            matches!(
                e,
                Error::Backend {
                    kind: BackendKind::Connection,
                    sent: false,
                    ..
                }
            ),
            "{e:?}"
        );
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let e = backend_error(reset, "redis", "h:1");
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        // A reset connection may have carried the command: its outcome is unknown.
        assert!(matches!(e, Error::Backend { sent: true, .. }), "{e:?}");
        assert!(
            e.to_string().contains("the connection to h:1 failed"),
            "{e}"
        );
        let oom = redis::make_extension_error("OOM".to_owned(), None);
        let e = backend_error(oom, "redis", "h:1");
        assert!(!e.to_string().contains("h:1"), "{e}");
    }

    #[test]
    fn a_reply_that_does_not_parse_is_another_protocol() {
        let e = connect_error(
            RedisError::from((ErrorKind::Parse, "parse error", "Unexpected `0`".to_owned())),
            "redis",
            "127.0.0.1:3306",
        );
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert!(
            e.to_string()
                .ends_with("the server at 127.0.0.1:3306 does not speak the redis protocol"),
            "{e}"
        );
    }
}
