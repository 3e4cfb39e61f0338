//! The one error type of the crate.

use std::fmt;
use std::time::Duration;

/// A boxed error from a backend or a codec, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in mp-storage.
///
/// Match on the variants to react to a kind of failure; the enum is `#[non_exhaustive]`, so keep a
/// `_` arm. [`Error::is_retryable`] says whether calling again may succeed.
///
/// ```
/// use mp_storage::Error;
///
/// # async fn demo() -> Result<(), Error> {
/// let st = mp_storage::Storage::open("memory://").await?;
/// match st.get::<serde_json::Value>("").await {
///     Err(Error::InvalidName { reason, .. }) => assert_eq!(reason, "the name is empty"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The scope name is empty, holds a NUL byte or is longer than [`crate::MAX_NAME_LEN`].
    #[error("invalid scope name {name:?}: {reason}")]
    InvalidName {
        /// The offending name (cut to 100 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The storage URL or an option of it is malformed.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL names a scheme no compiled-in driver takes.
    #[error("unknown storage scheme {scheme:?} in {url:?} (known: {known})")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The schemes this build takes.
        known: &'static str,
    },

    /// The stored data of a scope does not decode as the asked type. Nothing was written.
    #[error("scope {scope:?} does not decode as {type_name}: {source}")]
    Decode {
        /// The scope name.
        scope: String,
        /// The Rust type that was asked for.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },

    /// A stored record could not be read at all (torn, hand-edited or foreign data).
    /// It was left untouched.
    #[error("corrupt record for scope {scope:?} at {location}: {detail}")]
    Corrupt {
        /// The scope name (the full key, as the driver sees it).
        scope: String,
        /// Where the record lives: a file path, a Redis key, a table row.
        location: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The value could not be encoded (for example a map with non-string keys, or a float that
    /// is NaN or infinite). Nothing was written.
    #[error("scope {scope:?} of type {type_name} cannot be encoded: {reason}")]
    Encode {
        /// The scope name.
        scope: String,
        /// The Rust type of the value.
        type_name: &'static str,
        /// Why.
        reason: String,
    },

    /// The encoded value is larger than the driver or the storage allows. Nothing was written.
    #[error("scope {scope:?} is {size} bytes encoded, over the limit of {limit} bytes")]
    TooLarge {
        /// The scope name.
        scope: String,
        /// The encoded size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },

    /// The stored record was written by a newer schema version than this code knows.
    /// Nothing was written.
    #[error("scope {scope:?} is stored at schema version {stored}, newer than {type_name}'s {supported}")]
    SchemaTooNew {
        /// The scope name.
        scope: String,
        /// The Rust type that was asked for.
        type_name: &'static str,
        /// The schema version found in the store.
        stored: u32,
        /// The schema version of the type.
        supported: u32,
    },

    /// The migration function of the type failed on an older record. Nothing was written.
    #[error("scope {scope:?}: migrating {type_name} from schema version {from} failed: {reason}")]
    Migration {
        /// The scope name.
        scope: String,
        /// The Rust type that was asked for.
        type_name: &'static str,
        /// The stored schema version.
        from: u32,
        /// The migration function's error.
        reason: String,
    },

    /// The update lost the compare-and-swap race on every attempt the retry policy allowed.
    /// Nothing of it was written.
    #[error("scope {scope:?}: gave up after {attempts} conflicting attempts in {elapsed:?}")]
    Conflict {
        /// The scope name.
        scope: String,
        /// How many times the closure ran.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
    },

    /// The connection failed after a write was sent, and it can no longer be told whether the
    /// write took effect: it was neither retried nor reported as done.
    #[error("scope {scope:?}: the outcome of the write is unknown: {reason}")]
    CommitUnknown {
        /// The scope name.
        scope: String,
        /// What was seen.
        reason: String,
    },

    /// The backend failed: connection lost, timeout, disk full, permission denied, server error.
    #[error("{driver} backend error ({kind}): {source}")]
    Backend {
        /// The driver's name (`memory`, `file`, `redis`, `mysql`, or a custom one).
        driver: &'static str,
        /// What kind of failure.
        kind: BackendKind,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

/// The kind of a [`Error::Backend`] failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// The connection could not be made or was lost. When this happens during a write, the
    /// write may or may not have taken effect.
    Connection,
    /// The backend did not answer in time.
    Timeout,
    /// The backend is out of space (a full disk, Redis `maxmemory`).
    Full,
    /// The backend refused access.
    PermissionDenied,
    /// Any other failure of the backend.
    Other,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Connection => "connection",
            BackendKind::Timeout => "timeout",
            BackendKind::Full => "full",
            BackendKind::PermissionDenied => "permission denied",
            BackendKind::Other => "other",
        })
    }
}

impl Error {
    /// Builds a [`Error::Backend`] from any error.
    pub fn backend(driver: &'static str, kind: BackendKind, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            driver,
            kind,
            source: source.into(),
        }
    }

    /// Whether calling again, unchanged, may succeed: conflicts, lost connections, timeouts and
    /// unknown commit outcomes. Invalid input and undecodable data stay as they are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict { .. } | Error::CommitUnknown { .. } => true,
            Error::Backend { kind, .. } => {
                matches!(kind, BackendKind::Connection | BackendKind::Timeout)
            }
            _ => false,
        }
    }

    /// Whether this is [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// The backend kind, when this is [`Error::Backend`].
    pub fn backend_kind(&self) -> Option<BackendKind> {
        match self {
            Error::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Cuts a name for an error message so a megabyte of garbage does not end up in a log line.
pub(crate) fn shorten(name: &str) -> String {
    const MAX: usize = 100;
    if name.chars().count() <= MAX {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// A storage URL with its password replaced by `***`, for printing: every error of this crate
/// that shows a URL shows it this way.
///
/// ```
/// assert_eq!(
///     mp_storage::redact_url("mysql://app:s3cret@db:3306/prod"),
///     "mysql://app:***@db:3306/prod"
/// );
/// assert_eq!(mp_storage::redact_url("file:./a:b@c"), "file:./a:b@c");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}://{}:***{}",
        &url[..scheme_end],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("mysql://root:secret@127.0.0.1:3306/test"),
            "mysql://root:***@127.0.0.1:3306/test"
        );
        assert_eq!(
            redact_url("redis://:pw@h:1/0?prefix=a"),
            "redis://:***@h:1/0?prefix=a"
        );
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("file:./x"), "file:./x");
        assert_eq!(
            redact_url("redis://:pw@h:1/0?x=@"),
            "redis://:***@h:1/0?x=@"
        );
    }

    #[test]
    fn shortens_long_names() {
        let long = "é".repeat(500);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), 101);
        assert_eq!(shorten("abc"), "abc");
    }

    #[test]
    fn retryable_kinds() {
        let e = Error::backend("x", BackendKind::Connection, "gone");
        assert!(e.is_retryable());
        let e = Error::backend("x", BackendKind::Full, "full");
        assert!(!e.is_retryable());
        assert_eq!(e.backend_kind(), Some(BackendKind::Full));
    }
}
