//! Errors that name the server they concern, for the drivers that talk to one over TCP.

use std::fmt;
use std::io;

use crate::BoxError;

/// A failure to reach or to understand a server. The message names its address (`host:port`);
/// the client library's error, when there is one, is the source.
#[derive(Debug)]
pub(crate) struct ServerError {
    message: String,
    source: Option<BoxError>,
}

impl ServerError {
    /// An error with this message, keeping `source` as its cause.
    pub(crate) fn new(message: String, source: Option<BoxError>) -> Self {
        ServerError { message, source }
    }

    /// "cannot connect to `addr`: `reason`".
    pub(crate) fn cannot_connect(
        addr: &str,
        reason: impl fmt::Display,
        source: Option<BoxError>,
    ) -> Self {
        Self::new(format!("cannot connect to {addr}: {reason}"), source)
    }

    /// "the server at `addr` does not speak the `protocol` protocol", then `(detail)` if any.
    #[cfg_attr(not(any(feature = "redis", feature = "mysql")), allow(dead_code))]
    pub(crate) fn wrong_protocol(
        addr: &str,
        protocol: &str,
        detail: Option<&str>,
        source: Option<BoxError>,
    ) -> Self {
        let mut message = format!("the server at {addr} does not speak the {protocol} protocol");
        if let Some(detail) = detail {
            message.push_str(&format!(" ({detail})"));
        }
        Self::new(message, source)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The reason an I/O error of a connection gives, in a few words ("connection refused", not
/// "Connection refused (os error 111)").
#[cfg_attr(not(any(feature = "mysql", feature = "postgres")), allow(dead_code))]
pub(crate) fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionReset => "the connection was reset".to_owned(),
        K::ConnectionAborted => "the connection was aborted".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        K::HostUnreachable => "host unreachable".to_owned(),
        K::NetworkUnreachable => "network unreachable".to_owned(),
        K::AddrNotAvailable => "address not available".to_owned(),
        _ => e.to_string(),
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub(crate) fn addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_name_the_address() {
        let io = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = ServerError::cannot_connect("127.0.0.1:6380", io_reason(&io), Some(io.into()));
        assert_eq!(
            e.to_string(),
            "cannot connect to 127.0.0.1:6380: connection refused"
        );
        assert!(e.source().is_some());
        let e = ServerError::wrong_protocol("h:1", "redis", None, None);
        assert_eq!(
            e.to_string(),
            "the server at h:1 does not speak the redis protocol"
        );
        assert!(e.source().is_none());
        let e = ServerError::wrong_protocol("h:1", "MySQL", Some("it said \"+PONG\""), None);
        assert_eq!(
            e.to_string(),
            "the server at h:1 does not speak the MySQL protocol (it said \"+PONG\")"
        );
        assert_eq!(addr("::1", 6379), "[::1]:6379");
        assert_eq!(addr("db.local", 3306), "db.local:3306");
        let other = io::Error::other("boom");
        assert_eq!(io_reason(&other), "boom");
    }
}
