//! How a `tokio-postgres` or pool error becomes an [`Error`] (see the
//! [error list](super#errors)).

use deadpool_postgres::PoolError;

use super::NAME;
use crate::driver::net::{io_reason, ServerError};
use crate::{BackendKind, Error};

/// Classifies an error of a statement.
pub(super) fn backend(e: tokio_postgres::Error) -> Error {
    Error::backend(NAME, kind_of(&e), e)
}

/// The kind of a `tokio-postgres` error: by its SQLSTATE when the server sent one, else by
/// what failed (the connection, always, for an error without a code but I/O, a closed
/// connection or a timeout).
fn kind_of(e: &tokio_postgres::Error) -> BackendKind {
    if let Some(code) = e.code() {
        return sqlstate_kind(code.code());
    }
    if e.is_closed() || io_error(e).is_some() {
        return BackendKind::Connection;
    }
    let shown = e.to_string();
    if shown.starts_with("error connecting")
        || shown.starts_with("timeout")
        || shown.starts_with("error communicating")
        || shown.starts_with("unexpected message")
    {
        BackendKind::Connection
    } else {
        BackendKind::Other
    }
}

/// The I/O error under `e`, if any.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut at: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        at = err.source();
    }
    None
}

/// Classifies an error of taking a connection from the pool; nothing was sent. A connection
/// that could not be made names the server at `addr`.
pub(super) fn connect_error(e: PoolError, addr: &str) -> Error {
    match e {
        PoolError::Backend(e) if e.code().is_none() => {
            let reason = match io_error(&e) {
                Some(io) => io_reason(io),
                None => e.to_string(),
            };
            let kind = match kind_of(&e) {
                BackendKind::Other => BackendKind::Connection,
                kind => kind,
            };
            Error::backend_unsent(
                NAME,
                kind,
                ServerError::cannot_connect(addr, reason, Some(e.into())),
            )
        }
        PoolError::Backend(e) => backend(e).unsent_now(),
        PoolError::Timeout(_) | PoolError::Closed | PoolError::NoRuntimeSpecified => {
            Error::backend_unsent(NAME, BackendKind::Connection, e)
        }
        other => Error::backend_unsent(NAME, BackendKind::Other, other),
    }
}

/// The kind of a SQLSTATE code.
pub(super) fn sqlstate_kind(code: &str) -> BackendKind {
    match code {
        // Too many connections, shutdowns, a terminated backend, idle session timeout.
        "53300" | "57P01" | "57P02" | "57P03" | "57P05" => BackendKind::Connection,
        // Statement timeout or cancel, lock timeout, deadlock, serialization failure, idle in
        // transaction timeout.
        "57014" | "55P03" | "40P01" | "40001" | "25P03" => BackendKind::Timeout,
        // Insufficient privilege, refused login, a read-only transaction or server.
        "42501" | "28000" | "28P01" | "25006" => BackendKind::PermissionDenied,
        // Connection exceptions.
        c if c.starts_with("08") => BackendKind::Connection,
        // Insufficient resources: disk full, out of memory, configuration limits.
        c if c.starts_with("53") => BackendKind::Full,
        _ => BackendKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(sqlstate_kind("53100"), BackendKind::Full);
        assert_eq!(sqlstate_kind("53300"), BackendKind::Connection);
        assert_eq!(sqlstate_kind("57P01"), BackendKind::Connection);
        assert_eq!(sqlstate_kind("08006"), BackendKind::Connection);
        assert_eq!(sqlstate_kind("57014"), BackendKind::Timeout);
        assert_eq!(sqlstate_kind("40P01"), BackendKind::Timeout);
        assert_eq!(sqlstate_kind("42501"), BackendKind::PermissionDenied);
        assert_eq!(sqlstate_kind("28P01"), BackendKind::PermissionDenied);
        assert_eq!(sqlstate_kind("42601"), BackendKind::Other);
    }
}
