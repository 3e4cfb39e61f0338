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

    /// A setting of the [`StorageBuilder`](crate::StorageBuilder) or a driver's options is not
    /// usable (a key prefix with a NUL byte, a zero duration, …).
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting, as the builder or the driver names it (`key_prefix`, …).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The storage URL or an option of it is malformed.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The driver cannot do what the call needs (a several-scope commit on a driver without
    /// them, say). Nothing was written.
    #[error("the {driver} driver does not support {capability}")]
    Unsupported {
        /// The driver's name.
        driver: &'static str,
        /// What it cannot do.
        capability: &'static str,
    },

    /// The URL names a scheme no compiled-in driver takes.
    #[error("unknown storage scheme {scheme:?} in {url:?} (known: {})", known.join(", "))]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The schemes of the table of drivers ([`crate::driver::drivers`]), those of drivers
        /// compiled out included.
        known: Vec<&'static str>,
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
        /// The scope name as stored (a namespaced type's namespace included, the storage's key
        /// prefix not). A driver fills in the key it was asked for; the engine puts the scope
        /// name in its place.
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

    /// Writing the value back would lose stored data: the record holds fields (at any depth)
    /// that the decoded value does not write back, or values it writes back changed (an enum
    /// variant read through `#[serde(other)]`). Typical after a field was renamed or removed.
    /// Nothing was written; the record is left as it is, and reading it still works.
    ///
    /// Mark the type `#[scope(lossy)]` when dropping those fields is intended, keep them (a
    /// field of that name, or `#[serde(flatten)]` into a map), or migrate (`version` with
    /// `migrate` or `migrate_from`).
    #[error(
        "scope {scope:?}: writing {type_name} would lose stored data at {}; nothing was \
         written (`#[scope(lossy)]` on the type allows dropping it)",
        list_fields(.fields, *.more)
    )]
    WouldLoseData {
        /// The scope name.
        scope: String,
        /// The Rust type that would write.
        type_name: &'static str,
        /// Where the data would be lost, as paths into the stored JSON: `items`, `owner.email`,
        /// `lines[2].qty`, `tags["a b"]`, and `$` for the whole value. At most 20.
        fields: Vec<String>,
        /// How many more such paths there are beyond those listed.
        more: usize,
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

    /// Another caller's exclusive update ([`Storage::locked`](crate::Storage::locked)) held the
    /// scope's lease, live, until the retry policy's deadline. Nothing of this call was
    /// written; calling again later may succeed (category [`ErrorCategory::Conflict`]).
    #[error("scope {scope:?}: waited {waited:?} for another caller's lease, which is still held")]
    Leased {
        /// The scope name.
        scope: String,
        /// Time spent waiting.
        waited: Duration,
    },

    /// An exclusive update ([`Storage::locked`](crate::Storage::locked)) lost its lease: it
    /// stalled past the lease length (a paused process, a long GC pause, a lost network) and
    /// another update took the scope over. Nothing of the closure's change was stored. The
    /// closure may have run in part or in full, so its side effects (a payment, an email) may
    /// have happened: the caller must reconcile them with the scope as it now stands.
    #[error(
        "scope {scope:?}: the lease was lost ({reason}); the closure's effects were not stored, \
         reconcile any side effects it had with the scope as it now stands"
    )]
    LeaseLost {
        /// The scope name.
        scope: String,
        /// How it was lost.
        reason: String,
    },

    /// The connection failed after a write was sent, and it can no longer be told whether the
    /// write took effect: it was neither retried nor reported as done. Calling again may apply
    /// the change twice ([`Error::is_retryable`] is false; see [`ErrorCategory::MayHaveHappened`]).
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
        /// Whether the request may have reached the backend. `false` only when the failure came
        /// before anything was sent (no connection could be made, or the pool had none to give):
        /// a write then certainly did not happen. Built by [`Error::backend`] (true) and
        /// [`Error::backend_unsent`] (false).
        sent: bool,
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

/// What kind of problem an [`Error`] is, coarsely: one `match` maps every error to a response.
///
/// ```
/// use mp_storage::{Error, ErrorCategory};
///
/// fn status(e: &Error) -> u16 {
///     match e.category() {
///         ErrorCategory::BadInput => 400,
///         ErrorCategory::Conflict | ErrorCategory::Unavailable => 503,
///         ErrorCategory::StoredData | ErrorCategory::MayHaveHappened | _ => 500,
///     }
/// }
/// let e = Error::backend("redis", mp_storage::BackendKind::Connection, "reset");
/// assert_eq!(status(&e), 503);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCategory {
    /// The call's input cannot work: an invalid name, URL or setting, a value that cannot be
    /// encoded or is too large. Calling again unchanged fails the same way; nothing was written.
    BadInput,
    /// Other writers kept winning until the retry policy gave up. Nothing was written; calling
    /// again later may succeed.
    Conflict,
    /// The backend could not be reached or did not answer in time, and nothing was changed (a
    /// read, or a write that was never sent or is known not to have happened). Safe to retry.
    Unavailable,
    /// The stored data cannot be used as the asked type: it does not decode, is corrupt, was
    /// written by a newer schema, its migration failed, or writing over it would lose some of
    /// it. It was left untouched.
    StoredData,
    /// A write was sent and its outcome is unknown: it may have taken effect. Retrying may apply
    /// it twice; use an idempotency key, or read the scope, to find out.
    MayHaveHappened,
    /// The backend refused the operation: full, access denied, or another server error.
    Backend,
    /// An exclusive update lost its lease: nothing was stored, but the closure's side effects
    /// may have happened. Reconcile before calling again.
    LeaseLost,
}

impl Error {
    /// Builds a [`Error::Backend`] from any error, for a request that may have reached the
    /// backend.
    pub fn backend(driver: &'static str, kind: BackendKind, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            driver,
            kind,
            sent: true,
            source: source.into(),
        }
    }

    /// Builds a [`Error::Backend`] for a failure before anything was sent (no connection could
    /// be made): the engine then knows that a write did not happen.
    pub fn backend_unsent(
        driver: &'static str,
        kind: BackendKind,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            driver,
            kind,
            sent: false,
            source: source.into(),
        }
    }

    /// The coarse category of this error: what a caller should do about it.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::InvalidName { .. }
            | Error::InvalidConfig { .. }
            | Error::InvalidUrl { .. }
            | Error::UnknownScheme { .. }
            | Error::Encode { .. }
            | Error::TooLarge { .. }
            | Error::Unsupported { .. } => ErrorCategory::BadInput,
            Error::Decode { .. }
            | Error::Corrupt { .. }
            | Error::SchemaTooNew { .. }
            | Error::WouldLoseData { .. }
            | Error::Migration { .. } => ErrorCategory::StoredData,
            Error::Conflict { .. } | Error::Leased { .. } => ErrorCategory::Conflict,
            Error::LeaseLost { .. } => ErrorCategory::LeaseLost,
            Error::CommitUnknown { .. } => ErrorCategory::MayHaveHappened,
            Error::Backend { kind, .. } => match kind {
                BackendKind::Connection | BackendKind::Timeout => ErrorCategory::Unavailable,
                _ => ErrorCategory::Backend,
            },
        }
    }

    /// Whether calling again, unchanged, is safe and may succeed: conflicts, and backend
    /// failures (lost connections, timeouts) after which nothing was changed. False for
    /// [`Error::CommitUnknown`], whose write may have taken effect (calling again may apply it
    /// twice), and for invalid input and unusable stored data, which stay as they are.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.category(),
            ErrorCategory::Conflict | ErrorCategory::Unavailable
        )
    }

    /// Whether this error leaves a write's outcome unknown ([`ErrorCategory::MayHaveHappened`]).
    pub fn may_have_happened(&self) -> bool {
        self.category() == ErrorCategory::MayHaveHappened
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

    /// Whether this is a lost connection or a timeout after a request may have been sent: for a
    /// write, its outcome is unknown until the engine settles it.
    pub(crate) fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                kind: BackendKind::Connection | BackendKind::Timeout,
                sent: true,
                ..
            }
        )
    }

    /// The same backend error, marked as coming before anything was sent.
    #[cfg_attr(not(any(feature = "mysql", feature = "postgres")), allow(dead_code))]
    pub(crate) fn unsent_now(self) -> Self {
        match self {
            Error::Backend {
                driver,
                kind,
                source,
                ..
            } => Error::Backend {
                driver,
                kind,
                sent: false,
                source,
            },
            other => other,
        }
    }

    /// Whether this is a connection failure before anything was sent.
    pub(crate) fn unsent(&self) -> bool {
        matches!(self, Error::Backend { sent: false, .. })
    }

    /// Puts the scope name into an error a driver raised with the key it was asked for.
    pub(crate) fn for_scope(mut self, scope: &str) -> Self {
        if let Error::Corrupt { scope: s, .. } = &mut self {
            *s = shorten(scope);
        }
        self
    }
}

/// The lost fields of [`Error::WouldLoseData`] for its message.
fn list_fields(fields: &[String], more: usize) -> String {
    let mut s = fields.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
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
    fn lost_fields_are_listed() {
        let e = Error::WouldLoseData {
            scope: "cart:alice".into(),
            type_name: "app::Cart",
            fields: vec!["items".into(), "owner.email".into()],
            more: 3,
        };
        assert_eq!(
            e.to_string(),
            "scope \"cart:alice\": writing app::Cart would lose stored data at items, \
             owner.email and 3 more; nothing was written (`#[scope(lossy)]` on the type allows \
             dropping it)"
        );
        assert_eq!(e.category(), ErrorCategory::StoredData);
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_kinds() {
        let e = Error::backend("x", BackendKind::Connection, "gone");
        assert!(e.is_retryable());
        assert!(e.outcome_unknown() && !e.unsent());
        let e = Error::backend_unsent("x", BackendKind::Connection, "refused");
        assert!(e.is_retryable() && e.unsent() && !e.outcome_unknown());
        let e = Error::CommitUnknown {
            scope: "s".into(),
            reason: "lost".into(),
        };
        assert!(!e.is_retryable() && e.may_have_happened());
        assert_eq!(e.category(), ErrorCategory::MayHaveHappened);
        let e = Error::backend("x", BackendKind::Full, "full");
        assert!(!e.is_retryable());
        assert_eq!(e.backend_kind(), Some(BackendKind::Full));
    }
}
