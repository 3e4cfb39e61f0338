//! SQLite errors as [`Error`]s (see the [error table](super#errors)).

use rusqlite::ErrorCode;

use super::NAME;
use crate::{BackendKind, Error};

/// The kind of a SQLite failure.
pub(super) fn kind(e: &rusqlite::Error) -> BackendKind {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => BackendKind::Timeout,
        Some(ErrorCode::DiskFull) => BackendKind::Full,
        Some(
            ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::AuthorizationForStatementDenied,
        ) => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

/// Whether `e` is another process holding the lock past the busy timeout.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A SQLite failure of a statement that may have changed the database (in a transaction that
/// is then rolled back, or of a read).
pub(super) fn sql_error(e: rusqlite::Error) -> Error {
    let kind = kind(&e);
    if kind == BackendKind::Timeout {
        // Waiting for a lock: nothing was changed.
        return Error::backend_unsent(NAME, kind, busy(e));
    }
    Error::backend(NAME, kind, e)
}

/// The message of a lock held past the busy timeout.
fn busy(e: rusqlite::Error) -> String {
    format!("the database is locked by another connection past the busy timeout ({e})")
}

/// A failure before anything was written (taking the write lock, starting the transaction):
/// the writes of the batch did not happen.
pub(super) fn unsent(e: rusqlite::Error) -> Error {
    let kind = kind(&e);
    if kind == BackendKind::Timeout {
        return Error::backend_unsent(NAME, kind, busy(e));
    }
    Error::backend_unsent(NAME, kind, e)
}

/// The kind of a file-system failure (creating the database's directory).
pub(super) fn io_kind(e: &std::io::Error) -> BackendKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => BackendKind::Full,
        K::PermissionDenied | K::ReadOnlyFilesystem => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}
