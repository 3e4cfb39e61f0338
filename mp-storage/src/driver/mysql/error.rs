//! How a `mysql_async` error becomes an [`Error`] (see the [error list](super#errors)).

use mysql_async::{DriverError as D, Error as E, IoError};

use super::NAME;
use crate::driver::net::{io_reason, ServerError};
use crate::{BackendKind, Error};

/// Classifies a `mysql_async` error.
pub(super) fn backend(e: E) -> Error {
    let kind = match &e {
        E::Io(_) => BackendKind::Connection,
        E::Driver(
            D::ConnectionClosed
            | D::PoolDisconnected
            | D::PacketOutOfOrder
            | D::UnexpectedPacket { .. }
            | D::BadCompressedPacketHeader,
        ) => BackendKind::Connection,
        E::Server(s) => server_kind(s.code),
        E::Driver(_) | E::Url(_) | E::Other(_) => BackendKind::Other,
    };
    Error::backend(NAME, kind, e)
}

/// Classifies an error of taking a connection from the pool: a connection that could not be
/// made names the server at `addr`.
pub(super) fn connect_error(e: E, addr: &str) -> Error {
    let reason = match &e {
        E::Io(IoError::Io(io)) => io_reason(io),
        // TLS errors, when another crate turns TLS on in mysql_async.
        #[allow(unreachable_patterns)]
        E::Io(other) => other.to_string(),
        _ => return backend(e),
    };
    Error::backend(
        NAME,
        BackendKind::Connection,
        ServerError::cannot_connect(addr, reason, Some(e.into())),
    )
}

/// The kind of a server error code.
pub(super) fn server_kind(code: u16) -> BackendKind {
    match code {
        // Too many connections, can't create socket, host blocked, aborted connection, network
        // read/write errors, server shutdown, query interrupted, connection killed (MariaDB),
        // disconnected for inactivity (MySQL 8).
        1040 | 1081 | 1129 | 1152 | 1158..=1161 | 1053 | 1317 | 1927 | 4031 => {
            BackendKind::Connection
        }
        // Lock wait timeout, deadlock, statement timeouts (MariaDB, MySQL).
        1205 | 1213 | 1969 | 3024 => BackendKind::Timeout,
        // Disk full, table full.
        1021 | 1114 => BackendKind::Full,
        // Database, user, table, column, privilege access denied; read-only server.
        1044 | 1045 | 1142 | 1143 | 1227 | 1290 => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes() {
        assert_eq!(server_kind(1114), BackendKind::Full);
        assert_eq!(server_kind(1045), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1142), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1044), BackendKind::PermissionDenied);
        assert_eq!(server_kind(1927), BackendKind::Connection);
        assert_eq!(server_kind(1205), BackendKind::Timeout);
        assert_eq!(server_kind(1064), BackendKind::Other);
    }

    #[test]
    fn connection_errors_name_the_server() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = connect_error(E::Io(IoError::Io(refused)), "127.0.0.1:3307");
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert_eq!(
            e.to_string(),
            "mysql backend error (connection): cannot connect to 127.0.0.1:3307: \
             connection refused"
        );
        let e = connect_error(E::Driver(D::PoolDisconnected), "h:1");
        assert_eq!(e.backend_kind(), Some(BackendKind::Connection));
        assert!(!e.to_string().contains("h:1"), "{e}");
    }
}
