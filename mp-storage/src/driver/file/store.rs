//! The blocking half of the file driver: every call here does file IO and runs on
//! `tokio::task::spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::lock::ScopeLock;
use super::name::{self, LOCK_EXT, RECORD_EXT};
use super::record;
use crate::driver::{push_token, CasOutcome, Record, Revision};
use crate::{BackendKind, Error};

/// How old a temp or orphaned lock file must be before `open` removes it: any write still in
/// flight is far younger (and one that is not, a stopped writer's, holds its scope's lock, which
/// the removal takes first).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

/// A write, owned so it can move to a blocking thread.
pub(crate) struct OwnedWrite {
    pub schema: u32,
    pub data: Vec<u8>,
    pub token: u64,
    pub initial_version: u64,
    pub meta: Vec<u8>,
}

/// The directory of a file driver.
#[derive(Debug)]
pub(crate) struct Store {
    pub dir: PathBuf,
    /// An open handle of `dir` to fsync it (present when `fsync` is on, on Unix).
    dir_handle: Option<File>,
    pub fsync: bool,
    /// The longest wait for a scope lock.
    lock_timeout: Duration,
}

/// The paths of one key's files.
pub(super) struct Files {
    pub(super) stem: String,
    pub(super) record: PathBuf,
    pub(super) lock: PathBuf,
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

/// Temp files that are removed on drop, unless renamed into place or handed over (`disarm`).
#[derive(Default)]
pub(super) struct TempFiles {
    paths: Vec<PathBuf>,
}

impl TempFiles {
    /// Keeps the files: they were renamed, or an intent record now owns them.
    pub(super) fn disarm(&mut self) {
        self.paths.clear();
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "temp file not removed");
            }
        }
    }
}

impl Store {
    /// Creates `dir` if needed and cleans up what crashed writers left behind.
    pub(crate) fn open(dir: &Path, fsync: bool, lock_timeout: Duration) -> Result<Store, Error> {
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
            lock_timeout,
        };
        store.clean_up(STALE_AFTER)?;
        Ok(store)
    }

    /// The latest time to wait for locks until, for an operation that starts now.
    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.lock_timeout
    }

    /// Settles the commits cut short whose intent records are in the directory, and removes
    /// temp files older than `age` (but those of a pending commit, which recovery owns) and lock
    /// files of absent scopes older than `age`, each under its scope's lock, if it is free.
    pub(crate) fn clean_up(&self, age: Duration) -> Result<(), Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let now = SystemTime::now();
        let mut intents = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(id) = name::intent_id(file_name) {
                intents.push(id);
                continue;
            }
            // Only files this driver names: a user's `notes.tmp` is left alone.
            let temp = name::temp_parts(file_name);
            let lock_stem = file_name
                .strip_suffix(LOCK_EXT)
                .filter(|stem| name::is_stem(stem));
            if temp.is_none() && lock_stem.is_none() {
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
            if let Some((stem, id)) = temp {
                self.remove_stale_temp(stem, id, &path)?;
            } else if let Some(stem) = lock_stem {
                if cfg!(unix) {
                    self.remove_orphan_lock(stem, &path);
                }
            }
        }
        self.recover_all(intents);
        Ok(())
    }

    /// Removes the temp file `path` of `stem`, with random part (or commit id) `id`, unless
    /// its writer still holds the scope's lock or a pending commit owns it. Under the lock, no
    /// intent record naming it can appear: its commit would hold that lock.
    pub(super) fn remove_stale_temp(&self, stem: &str, id: u64, path: &Path) -> Result<(), Error> {
        let lock_path = self.dir.join(format!("{stem}{LOCK_EXT}"));
        let lock = match ScopeLock::acquire_within(&lock_path, Duration::ZERO) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!(path = %lock_path.display(), error = %e, "stale temp file kept");
                return Ok(());
            }
        };
        // A pending commit's (or one that cannot be told): recovery owns it.
        if self.intent_exists(id).unwrap_or(true) {
            return Ok(());
        }
        match fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale temp file"),
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "stale temp file kept"),
        }
        let record = self.dir.join(format!("{stem}{RECORD_EXT}"));
        if !record.exists() && cfg!(unix) && !self.names_pending(&lock).unwrap_or(true) {
            lock.remove();
        }
        Ok(())
    }

    pub(super) fn remove_orphan_lock(&self, stem: &str, lock_path: &Path) {
        let record = self.dir.join(format!("{stem}{RECORD_EXT}"));
        if record.exists() {
            return;
        }
        if let Ok(Some(lock)) = ScopeLock::try_acquire_existing(lock_path) {
            // Under the lock, nobody creates the record: check again. A lock file that names a
            // pending commit (which creates the scope) stays, marker and all.
            if !record.exists() && !self.names_pending(&lock).unwrap_or(true) {
                lock.remove();
            }
        }
    }

    pub(super) fn files(&self, key: &str) -> Result<Files, Error> {
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

    pub(super) fn read(&self, key: &str, path: &Path) -> Result<Option<Record>, Error> {
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

    /// Reads the record of `key`, without a lock, unless a several-scope commit is under way on
    /// it or was cut short: the lock file then holds its marker, and the read first waits for
    /// the commit (or settles it).
    pub(crate) fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let files = self.files(key)?;
        let marked = match fs::metadata(&files.lock) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_error("stat", &files.lock, e)),
        };
        if marked {
            drop(self.lock_scope(&files)?);
        }
        self.read(key, &files.record)
    }

    /// Reads the records of `keys`, in their order (each as `load` does: not one snapshot).
    pub(crate) fn load_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, Error> {
        keys.iter().map(|k| self.load(k)).collect()
    }

    pub(crate) fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: &OwnedWrite,
    ) -> Result<CasOutcome, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        let current = self.read(key, &files.record)?;
        if current.as_ref().map(|r| r.revision()) != expected {
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
        let lock = self.lock_scope(&files)?;
        // A corrupt record is an error here too: it is never overwritten.
        let current = self.read(key, &files.record)?;
        let version = self.replace(key, &files, current.as_ref(), write)?;
        drop(lock);
        Ok(version)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<bool, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
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

    /// Deletes `key` only when it is at revision `expected`; `None` when it was not (then the
    /// current record, or its absence).
    pub(crate) fn delete_at(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Option<Option<Record>>, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        let current = self.read(key, &files.record)?;
        if current.as_ref().map(|r| r.revision()) != expected {
            if current.is_none() {
                lock.remove();
            }
            return Ok(Some(current));
        }
        if current.is_some() {
            match fs::remove_file(&files.record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &files.record, e)),
            }
            self.sync_dir(
                "fsync directory after delete (the record is gone but may return after a crash)",
            )?;
        }
        lock.remove();
        Ok(None)
    }

    /// Every key with `prefix`. A commit under way or cut short that writes such a key is waited
    /// for (or settled) first, so that a scope it creates is listed once it can be read.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let (keys, intents) = self.list_once(prefix)?;
        if intents.is_empty() {
            return Ok(keys);
        }
        let deadline = self.deadline();
        let mut settled = false;
        for id in intents {
            // A torn record creates nothing: it is rolled back, or still being written.
            let Some(intent) = self.read_whole_intent(id)? else {
                continue;
            };
            let touches = intent
                .writes
                .iter()
                .any(|(k, _)| k.as_bytes().starts_with(prefix.as_bytes()));
            if touches {
                self.recover(id, deadline)?;
                settled = true;
            }
        }
        if !settled {
            return Ok(keys);
        }
        Ok(self.list_once(prefix)?.0)
    }

    /// The keys with `prefix` in the directory, and the ids of the intent records there.
    fn list_once(&self, prefix: &str) -> Result<(Vec<String>, Vec<u64>), Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let mut keys = Vec::new();
        let mut intents = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(id) = name::intent_id(file_name) {
                intents.push(id);
                continue;
            }
            let Some(stem) = file_name.strip_suffix(RECORD_EXT) else {
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
        Ok((keys, intents))
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

    /// Takes the scope's lock, once no several-scope commit is pending on it (see
    /// `Store::lock_scopes`), waiting at most the lock timeout in all.
    fn lock_scope(&self, files: &Files) -> Result<ScopeLock, Error> {
        let mut locks = self.lock_scopes(&[files.lock.as_path()], self.deadline())?;
        locks
            .pop()
            .ok_or_else(|| Error::backend_unsent("file", BackendKind::Other, "no lock was taken"))
    }

    /// Takes the lock at `path`, waiting at most until `deadline`: a writer stopped while
    /// holding it (SIGSTOP, a debugger) must not hang every other writer. Running out of time
    /// is a timeout before anything was written.
    pub(super) fn lock_until(&self, path: &Path, deadline: Instant) -> Result<ScopeLock, Error> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match ScopeLock::acquire_within(path, wait) {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => Err(Error::backend_unsent(
                "file",
                BackendKind::Timeout,
                format!(
                    "the lock {} stayed held by another writer for {:?} (a stopped process?); \
                     nothing was written",
                    path.display(),
                    self.lock_timeout
                ),
            )),
            Err(e) => Err(io_error("lock", path, e)),
        }
    }

    /// The version and the record file bytes that `write` makes on top of `current`.
    pub(super) fn encode(
        &self,
        key: &str,
        current: Option<&Record>,
        write: &OwnedWrite,
    ) -> Result<(u64, Vec<u8>), Error> {
        let version = match current {
            Some(r) => r.version.saturating_add(1),
            None => write.initial_version,
        };
        let tokens = push_token(current.map_or(&[][..], |r| &r.tokens), write.token);
        let bytes = record::encode(
            key,
            version,
            write.schema,
            &write.data,
            &tokens,
            &write.meta,
        )
        .map_err(|e| Error::backend("file", BackendKind::Other, e))?;
        Ok((version, bytes))
    }

    /// Writes `bytes` to the new temp file `path` (added to `temps` once created) and syncs it.
    pub(super) fn write_temp(
        &self,
        path: &Path,
        bytes: &[u8],
        temps: &mut TempFiles,
    ) -> Result<(), Error> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_error("create temp file", path, e))?;
        temps.paths.push(path.to_owned());
        file.write_all(bytes)
            .map_err(|e| io_error("write", path, e))?;
        if self.fsync {
            file.sync_all().map_err(|e| io_error("fsync", path, e))?;
        }
        Ok(())
    }

    /// Writes the record that `write` makes on top of `current` to a temp file, syncs it and
    /// renames it over the record. On failure the temp file is removed and the old record is
    /// untouched. Returns the new version. The caller holds the scope lock.
    pub(super) fn replace(
        &self,
        key: &str,
        files: &Files,
        current: Option<&Record>,
        write: &OwnedWrite,
    ) -> Result<u64, Error> {
        let (version, bytes) = self.encode(key, current, write)?;
        let tmp_path = self
            .dir
            .join(name::temp_file_name(&files.stem, rand::random::<u64>()));
        let mut temps = TempFiles::default();
        self.write_temp(&tmp_path, &bytes, &mut temps)?;
        fs::rename(&tmp_path, &files.record)
            .map_err(|e| io_error("rename into place", &files.record, e))?;
        temps.disarm();
        // From here the new record is in place. A failed directory sync leaves it visible but
        // perhaps not durable: that is reported, since the caller asked for durability.
        self.sync_dir(
            "fsync directory after rename (the new record is in place but may not survive a crash)",
        )?;
        Ok(version)
    }

    pub(super) fn sync_dir(&self, op: &'static str) -> Result<(), Error> {
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
