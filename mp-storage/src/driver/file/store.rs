//! The blocking half of the file driver: every call here does file IO and runs on
//! `tokio::task::spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::lock::ScopeLock;
use super::name::{self, LOCK_EXT, RECORD_EXT, TEMP_EXT};
use super::record;
use crate::driver::{push_token, CasOutcome, Record};
use crate::{BackendKind, Error};

/// How old a temp or orphaned lock file must be before `open` removes it: any write still in
/// flight is far younger.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

/// A write, owned so it can move to a blocking thread.
pub(crate) struct OwnedWrite {
    pub schema: u32,
    pub data: Vec<u8>,
    pub token: u64,
    pub initial_version: u64,
}

/// The directory of a file driver.
#[derive(Debug)]
pub(crate) struct Store {
    pub dir: PathBuf,
    /// An open handle of `dir` to fsync it (present when `fsync` is on, on Unix).
    dir_handle: Option<File>,
    pub fsync: bool,
}

/// The paths of one key's files.
struct Files {
    stem: String,
    record: PathBuf,
    lock: PathBuf,
}

/// An IO failure with what was being done and where.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub(crate) struct FileError {
    op: &'static str,
    path: String,
    #[source]
    source: io::Error,
}

/// The backend kind of an IO error.
pub(crate) fn kind_of(e: &io::Error) -> BackendKind {
    use io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => BackendKind::Full,
        K::PermissionDenied | K::ReadOnlyFilesystem => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

/// Wraps an IO error as a backend error of the right kind.
pub(crate) fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    let kind = kind_of(&source);
    Error::backend(
        "file",
        kind,
        FileError {
            op,
            path: path.display().to_string(),
            source,
        },
    )
}

fn corrupt(key: &str, path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        scope: key.to_owned(),
        location: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Removes a temp file on drop unless it was renamed into place.
struct TempFile<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "temp file not removed");
            }
        }
    }
}

impl Store {
    /// Creates `dir` if needed and cleans up what crashed writers left behind.
    pub(crate) fn open(dir: &Path, fsync: bool) -> Result<Store, Error> {
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
        // Pin a relative path now, so a later change of the working directory moves nothing.
        let dir = fs::canonicalize(dir).map_err(|e| io_error("resolve directory", dir, e))?;
        let meta = fs::metadata(&dir).map_err(|e| io_error("stat directory", &dir, e))?;
        if !meta.is_dir() {
            return Err(io_error(
                "open directory",
                &dir,
                io::Error::other("not a directory"),
            ));
        }
        let dir_handle = if fsync && cfg!(unix) {
            Some(File::open(&dir).map_err(|e| io_error("open directory", &dir, e))?)
        } else {
            None
        };
        let store = Store {
            dir,
            dir_handle,
            fsync,
        };
        store.clean_up(STALE_AFTER)?;
        Ok(store)
    }

    /// Removes temp files older than `age`, and lock files of absent scopes older than `age`.
    pub(crate) fn clean_up(&self, age: Duration) -> Result<(), Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            // Only files this driver names: a user's `notes.tmp` is left alone.
            let is_temp = file_name
                .strip_suffix(TEMP_EXT)
                .and_then(|n| n.rsplit_once('.'))
                .is_some_and(|(stem, random)| {
                    name::is_stem(stem)
                        && random.len() == 16
                        && random
                            .bytes()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
            let lock_stem = file_name
                .strip_suffix(LOCK_EXT)
                .filter(|stem| name::is_stem(stem));
            if !is_temp && lock_stem.is_none() {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|a| a >= age);
            if !old {
                continue;
            }
            let path = entry.path();
            if is_temp {
                match fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed a stale temp file"),
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "stale temp file kept")
                    }
                }
            } else if let Some(stem) = lock_stem {
                if cfg!(unix) {
                    self.remove_orphan_lock(stem, &path);
                }
            }
        }
        Ok(())
    }

    fn remove_orphan_lock(&self, stem: &str, lock_path: &Path) {
        let record = self.dir.join(format!("{stem}{RECORD_EXT}"));
        if record.exists() {
            return;
        }
        if let Ok(Some(lock)) = ScopeLock::try_acquire_existing(lock_path) {
            // Under the lock, nobody creates the record: check again.
            if !record.exists() {
                lock.remove();
            }
        }
    }

    fn files(&self, key: &str) -> Result<Files, Error> {
        if key.is_empty() {
            return Err(Error::InvalidName {
                name: String::new(),
                reason: "the name is empty",
            });
        }
        let stem = name::stem(key);
        Ok(Files {
            record: self.dir.join(format!("{stem}{RECORD_EXT}")),
            lock: self.dir.join(format!("{stem}{LOCK_EXT}")),
            stem,
        })
    }

    /// The record file of `key`.
    pub(crate) fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}{RECORD_EXT}", name::stem(key)))
    }

    fn read(&self, key: &str, path: &Path) -> Result<Option<Record>, Error> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", path, e)),
        };
        let (stored_key, record) = record::decode(&bytes).map_err(|d| corrupt(key, path, d))?;
        if stored_key != key {
            return Err(corrupt(
                key,
                path,
                format!(
                    "the file holds scope {:?}",
                    crate::error::shorten(&stored_key)
                ),
            ));
        }
        Ok(Some(record))
    }

    pub(crate) fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let files = self.files(key)?;
        self.read(key, &files.record)
    }

    pub(crate) fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: &OwnedWrite,
    ) -> Result<CasOutcome, Error> {
        let files = self.files(key)?;
        let lock = self.lock(&files)?;
        let current = self.read(key, &files.record)?;
        if current.as_ref().map(|r| r.version) != expected {
            if current.is_none() {
                lock.remove();
            }
            return Ok(CasOutcome::Conflict(current));
        }
        let version = self.replace(key, &files, current.as_ref(), write)?;
        drop(lock);
        Ok(CasOutcome::Committed(version))
    }

    pub(crate) fn put(&self, key: &str, write: &OwnedWrite) -> Result<u64, Error> {
        let files = self.files(key)?;
        let lock = self.lock(&files)?;
        // A corrupt record is an error here too: it is never overwritten.
        let current = self.read(key, &files.record)?;
        let version = self.replace(key, &files, current.as_ref(), write)?;
        drop(lock);
        Ok(version)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<bool, Error> {
        let files = self.files(key)?;
        let lock = self.lock(&files)?;
        let existed = match fs::remove_file(&files.record) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_error("delete", &files.record, e)),
        };
        if existed {
            self.sync_dir(
                "fsync directory after delete (the record is gone but may return after a crash)",
            )?;
        }
        lock.remove();
        Ok(existed)
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(RECORD_EXT)) else {
                continue;
            };
            let key = if name::is_hashed(stem) {
                match self.key_of_hashed(stem, &entry.path()) {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                match name::key_of_plain(stem) {
                    Some(k) => k,
                    None => continue,
                }
            };
            if key.as_bytes().starts_with(prefix.as_bytes()) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }

    /// The key a hashed record file holds, read from its header; `None` (with a warning) when
    /// the file cannot tell, or is not the file of the key it names.
    fn key_of_hashed(&self, stem: &str, path: &Path) -> Option<String> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "record not listed: unreadable");
                return None;
            }
        };
        let mut line = Vec::new();
        let read = io::BufReader::new(file)
            .take(record::MAX_HEADER as u64)
            .read_until(b'\n', &mut line);
        let key = read
            .map_err(|e| e.to_string())
            .and_then(|_| record::key_of_header(&line));
        match key {
            Ok(k) if name::stem(&k) == stem => Some(k),
            Ok(k) => {
                tracing::warn!(path = %path.display(), key = %crate::error::shorten(&k), "record not listed: it holds another scope");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "record not listed: corrupt header");
                None
            }
        }
    }

    fn lock(&self, files: &Files) -> Result<ScopeLock, Error> {
        ScopeLock::acquire(&files.lock).map_err(|e| io_error("lock", &files.lock, e))
    }

    /// Writes the record that `write` makes on top of `current` to a temp file, syncs it and
    /// renames it over the record. On failure the temp file is removed and the old record is
    /// untouched. Returns the new version. The caller holds the scope lock.
    fn replace(
        &self,
        key: &str,
        files: &Files,
        current: Option<&Record>,
        write: &OwnedWrite,
    ) -> Result<u64, Error> {
        let version = match current {
            Some(r) => r.version.saturating_add(1),
            None => write.initial_version,
        };
        let tokens = push_token(current.map_or(&[][..], |r| &r.tokens), write.token);
        let bytes = record::encode(key, version, write.schema, &write.data, &tokens)
            .map_err(|e| Error::backend("file", BackendKind::Other, e))?;

        let tmp_path = self.dir.join(format!(
            "{}.{:016x}{TEMP_EXT}",
            files.stem,
            rand::random::<u64>()
        ));
        let mut tmp = TempFile {
            path: &tmp_path,
            armed: false,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| io_error("create temp file", &tmp_path, e))?;
        tmp.armed = true;
        file.write_all(&bytes)
            .map_err(|e| io_error("write", &tmp_path, e))?;
        if self.fsync {
            file.sync_all()
                .map_err(|e| io_error("fsync", &tmp_path, e))?;
        }
        drop(file);
        fs::rename(&tmp_path, &files.record)
            .map_err(|e| io_error("rename into place", &files.record, e))?;
        tmp.armed = false;
        // From here the new record is in place. A failed directory sync leaves it visible but
        // perhaps not durable: that is reported, since the caller asked for durability.
        self.sync_dir(
            "fsync directory after rename (the new record is in place but may not survive a crash)",
        )?;
        Ok(version)
    }

    fn sync_dir(&self, op: &'static str) -> Result<(), Error> {
        match &self.dir_handle {
            Some(d) => d.sync_all().map_err(|e| io_error(op, &self.dir, e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        let k = |code| kind_of(&io::Error::from_raw_os_error(code));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(k(28), BackendKind::Full); // ENOSPC
            assert_eq!(k(122), BackendKind::Full); // EDQUOT
            assert_eq!(k(13), BackendKind::PermissionDenied); // EACCES
            assert_eq!(k(1), BackendKind::PermissionDenied); // EPERM
            assert_eq!(k(30), BackendKind::PermissionDenied); // EROFS
            assert_eq!(k(5), BackendKind::Other); // EIO
        }
        let _ = k;
    }
}
