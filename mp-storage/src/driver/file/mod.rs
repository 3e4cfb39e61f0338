//! `file:<dir>`: one file per scope in a directory, safe across the processes of one host.
//!
//! # Files
//!
//! A key is stored in `<dir>/<stem>.json`, where the stem spells the key in lower-case ASCII:
//! `a`–`z`, `0`–`9`, `-`, `_` and `.` stand for themselves, every other byte is `%` and two hex
//! digits (`user:Alice` is `user%3a%41lice.json`). Nothing a key holds (`..`, `/`, `\`, upper
//! case, unicode) can name a file outside `<dir>` or share a file with another key, even on a
//! case-insensitive file system; see [`record_file_name`]. A key whose stem would pass 200 bytes
//! is stored under a readable prefix, `%h` and the SHA-256 of the key; the full key is kept in
//! the file either way, and [`list`](crate::Driver::list) returns exact keys.
//!
//! A record file reads with `cat`: a JSON header line, then the data.
//!
//! ```text
//! {"format":1,"key":"user:Alice","version":8,"schema":0,"len":11,"tokens":["3f09c1d2a4b5e6f7"]}
//! {"count":3}
//! ```
//!
//! # Writes
//!
//! Every write holds the scope's OS advisory lock (`flock` on `<stem>.lock`), reads the record,
//! compares versions, writes a temp file `<stem>.<random>.tmp` in the same directory, fsyncs it,
//! renames it over the record and fsyncs the directory. A crash at any moment leaves the old
//! record or the new one, never a torn one. Reads take no lock. `?fsync=false` (or
//! [`FileOptions::fsync`]) skips both fsyncs: still atomic for other processes and after a
//! crash of the process, but a power loss may lose recent writes or leave a record that reads as
//! [`Error::Corrupt`]. Temp files are ignored by reads and `list`; [`FileDriver::open`]
//! removes those older than a minute (a crashed writer's). All file IO runs on
//! `tokio::task::spawn_blocking`, never on the runtime's worker threads.
//!
//! Lock files are removed with their scope: a deleter removes the lock file while it still holds
//! the lock, and every locker checks, once granted the lock, that the path still names the file
//! it locked (else it starts over), so removal never lets two writers in at once. Lock files of
//! absent scopes that a crash left behind are removed by `open` after a minute.
//!
//! # Errors
//!
//! A record file that does not parse (torn by hand, foreign, or holding another key) is
//! [`Error::Corrupt`] naming the file. It is never overwritten: `load`, `cas` and `put` all
//! refuse it, so a blind [`set`](crate::Storage::set) does not destroy data that could still be
//! recovered by hand. [`remove`](crate::Storage::remove) does delete it, as the explicit way out.
//! `list` names a corrupt plain-named record (its key is in its file name) but skips, with a
//! warning in the log, a hashed-name record whose header cannot be read.
//!
//! A full disk or quota (`ENOSPC`, `EDQUOT`) is [`BackendKind::Full`](crate::BackendKind),
//! `EACCES`, `EPERM` and a read-only file system are
//! [`BackendKind::PermissionDenied`](crate::BackendKind), anything else
//! [`BackendKind::Other`](crate::BackendKind); in each case the temp file is removed and the old
//! record is intact. The one exception is a failed fsync of the directory after the rename: the
//! new record is then in place but maybe not durable, and the error says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{CasOutcome, Driver, Record, Write};
use crate::error::redact_url;
use crate::{BackendKind, Error};

mod lock;
mod name;
mod record;
mod store;

use store::{OwnedWrite, Store};

/// Options of a [`FileDriver`].
#[derive(Clone, Debug)]
#[must_use]
pub struct FileOptions {
    fsync: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { fsync: true }
    }
}

impl FileOptions {
    /// The defaults: durable writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every write is fsynced (the file, then the directory) before it counts as
    /// committed. Default `true`; `false` for tests and development.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }
}

/// The file driver: one file per scope in a directory. See the [module docs](self).
///
/// Cheap to clone; clones share the directory handle.
///
/// ```
/// use mp_storage::driver::file::{FileDriver, FileOptions};
///
/// # async fn demo() -> Result<(), mp_storage::Error> {
/// let dir = std::env::temp_dir().join("mp-storage-doc-file");
/// let driver = FileDriver::open(&dir, FileOptions::new().fsync(false)).await?;
/// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
/// st.set("greeting", &"hello".to_owned()).await?;
/// # st.remove("greeting").await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct FileDriver {
    store: Arc<Store>,
}

impl FileDriver {
    /// Opens (and creates, when absent) the directory `dir`, and removes temp files that
    /// crashed writers left there more than a minute ago.
    pub async fn open(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileDriver, Error> {
        let dir = dir.as_ref().to_owned();
        let store = blocking(move || Store::open(&dir, options.fsync)).await?;
        Ok(FileDriver {
            store: Arc::new(store),
        })
    }

    /// The directory, as an absolute path.
    pub fn dir(&self) -> &Path {
        &self.store.dir
    }

    /// Whether writes are fsynced.
    pub fn fsync(&self) -> bool {
        self.store.fsync
    }

    /// The file that holds (or would hold) the record of `key`.
    pub fn record_path(&self, key: &str) -> PathBuf {
        self.store.record_path(key)
    }
}

/// The name of the file that holds the record of `key` (`<stem>.json`): a single file name of
/// at most 255 bytes, made of lower-case ASCII letters, digits, `-`, `_`, `.` and `%`, never
/// starting with `.`, and different for every key. See the [module docs](self).
///
/// ```
/// use mp_storage::driver::file::record_file_name;
/// assert_eq!(record_file_name("user:Alice"), "user%3a%41lice.json");
/// assert_eq!(record_file_name("../etc"), "%2e.%2fetc.json");
/// ```
pub fn record_file_name(key: &str) -> String {
    format!("{}{}", name::stem(key), name::RECORD_EXT)
}

/// The key a record file name stands for, when the name is the plain (reversible) form that
/// [`record_file_name`] gives; `None` for a hashed name (the key is then only inside the file)
/// and for any name this driver would not have written.
///
/// ```
/// use mp_storage::driver::file::key_of_record_file_name;
/// assert_eq!(key_of_record_file_name("user%3a%41lice.json").as_deref(), Some("user:Alice"));
/// assert_eq!(key_of_record_file_name("User.json"), None);
/// ```
pub fn key_of_record_file_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(name::RECORD_EXT)?;
    if name::is_hashed(stem) {
        return None;
    }
    name::key_of_plain(stem)
}

/// Runs blocking file IO off the runtime's worker threads.
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::backend("file", BackendKind::Other, e)),
    }
}

fn owned(write: Write<'_>) -> OwnedWrite {
    OwnedWrite {
        schema: write.schema,
        data: write.data.to_vec(),
        token: write.token,
        initial_version: write.initial_version,
    }
}

#[async_trait]
impl Driver for FileDriver {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let (store, key) = (self.store.clone(), key.to_owned());
        blocking(move || store.load(&key)).await
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        let (store, key, write) = (self.store.clone(), key.to_owned(), owned(write));
        blocking(move || store.cas(&key, expected, &write)).await
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        let (store, key, write) = (self.store.clone(), key.to_owned(), owned(write));
        blocking(move || store.put(&key, &write)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let (store, key) = (self.store.clone(), key.to_owned());
        blocking(move || store.delete(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let (store, prefix) = (self.store.clone(), prefix.to_owned());
        blocking(move || store.list(&prefix)).await
    }
}

/// Opens the driver of a parsed `file:` URL.
///
/// Forms: `file:./rel`, `file:rel`, `file:/abs`, `file:///abs`, `file://localhost/abs`; the
/// path is percent-decoded (`%20` for a space, `%3F` for `?`). Option `fsync` (default `true`).
pub(crate) async fn open_parsed(
    url: &str,
    parsed: &crate::url::Parsed<'_>,
) -> Result<FileDriver, Error> {
    parsed.only_options(url, &["fsync"])?;
    let fsync = match parsed.option("fsync") {
        Some(v) => crate::url::parse_bool(url, "fsync", v)?,
        None => true,
    };
    let dir = dir_of(url, parsed.body)?;
    FileDriver::open(dir, FileOptions::new().fsync(fsync)).await
}

/// The directory a `file:` URL body names.
fn dir_of(url: &str, body: &str) -> Result<PathBuf, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let path = match body.strip_prefix("//") {
        Some(rest) => {
            let slash = rest.find('/').unwrap_or(rest.len());
            let host = &rest[..slash];
            if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                return Err(invalid(format!(
                    "a file URL cannot name a host ({host:?}): write file:///abs/dir or file:./rel/dir"
                )));
            }
            &rest[slash..]
        }
        None => body,
    };
    if path.is_empty() {
        return Err(invalid(
            "no directory: write file:./mp-data or file:///abs/dir".to_owned(),
        ));
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| invalid("the path is not UTF-8 once percent-decoded".to_owned()))?;
    if decoded.contains('\0') {
        return Err(invalid("the path holds a NUL byte".to_owned()));
    }
    Ok(PathBuf::from(decoded.into_owned()))
}

#[cfg(test)]
mod tests;
