//! The blocking half of the file driver: every call here does file IO and runs on
//! `tokio::task::spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::lock::ScopeLock;
use super::name::{self, LOCK_DIR, LOCK_EXT, RECORD_EXT, RESERVATION_EXT};
use super::record;
use crate::driver::{expired, now_ms, push_token, CasOutcome, Expiry, Record, Revision};
use crate::{BackendKind, Error};

/// How old a temp file must be before `open` removes it: any write still in flight is far
/// younger (and one that is not, a stopped writer's, holds its scope's lock, which the removal
/// takes first).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

/// How often the processes of one directory sweep it for expired records, in all: a sweep
/// that finds the last one younger than this does nothing.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The longest a sweep waits for a scope's lock before it leaves that scope to a later sweep.
const SWEEP_LOCK_WAIT: Duration = Duration::from_secs(1);

/// The file (in the lock directory) that exists once any write has set an expiry: until then,
/// `list` and the sweep need not read a single record.
const EXPIRY_FLAG: &str = "expiry";

/// The lock file (in the lock directory) of the sweep; it holds the time the last whole sweep
/// ended, in ms since 1970.
const SWEEP_LOCK: &str = "sweep.lock";

/// `record` unless it has expired at `now`: what every call but the sweep and the journal's
/// recovery sees.
pub(crate) fn live(record: Option<Record>, now: u64) -> Option<Record> {
    record.filter(|r| !r.expired_at(now))
}

/// A write, owned so it can move to a blocking thread.
pub(crate) struct OwnedWrite {
    pub schema: u32,
    pub data: Vec<u8>,
    pub token: u64,
    pub initial_version: u64,
    pub meta: Vec<u8>,
    pub expiry: Expiry,
    /// Who writes (contract rule 13: another's live reservation refuses the write).
    pub claimant: u64,
    /// Reserve the scope for this long if the compare-and-swap loses (contract rule 13).
    pub reserve: Option<Duration>,
}

/// The directory of a file driver.
#[derive(Debug)]
pub(crate) struct Store {
    pub dir: PathBuf,
    /// The lock directory, `<dir>/%locks`.
    pub locks: PathBuf,
    /// An open handle of `dir` to fsync it (present when `fsync` is on, on Unix).
    dir_handle: Option<File>,
    /// Whether the expiry flag is known to exist.
    expiry_used: AtomicBool,
    pub fsync: bool,
    /// The longest wait for a scope lock.
    lock_timeout: Duration,
}

/// The paths of one key's files.
pub(super) struct Files {
    pub(super) stem: String,
    pub(super) record: PathBuf,
    /// The lock file of the scope's stripe.
    pub(super) lock: PathBuf,
}

/// The file of `dir` whose name is `parts` one after the other: `dir.join(parts.concat())` in one
/// allocation (every operation builds two paths, and formatting them cost more than reading a
/// small record).
fn in_dir(dir: &Path, parts: &[&str]) -> PathBuf {
    let dir = dir.as_os_str();
    let mut path = std::ffi::OsString::with_capacity(
        dir.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>(),
    );
    path.push(dir);
    let ends_in_separator = dir
        .as_encoded_bytes()
        .last()
        .is_some_and(|&b| std::path::is_separator(char::from(b)));
    if !dir.is_empty() && !ends_in_separator {
        path.push(std::path::MAIN_SEPARATOR_STR);
    }
    for part in parts {
        path.push(part);
    }
    PathBuf::from(path)
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

/// What the header of a record file says.
enum Header {
    /// The file is gone.
    Gone,
    /// It cannot tell (see `Store::header_of`).
    Unreadable,
    /// Its key and expiry.
    Read(String, Option<u64>),
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
        let locks = dir.join(LOCK_DIR);
        // A store that cannot be written (a read-only mount of a 0.1 directory) still reads:
        // its writes fail on the lock directory, with this error.
        if let Err(e) = fs::create_dir_all(&locks) {
            tracing::warn!(path = %locks.display(), error = %e, "no lock directory: writes will fail");
        }
        let store = Store {
            expiry_used: AtomicBool::new(locks.join(EXPIRY_FLAG).exists()),
            dir,
            locks,
            dir_handle,
            fsync,
            lock_timeout,
        };
        store.clean_up(STALE_AFTER)?;
        if let Err(e) = store.sweep(usize::MAX, false) {
            tracing::warn!(error = %e, "sweeping expired records on open failed");
        }
        Ok(store)
    }

    /// The lock file of the stripe of `stem`.
    pub(super) fn lock_path(&self, stem: &str) -> PathBuf {
        in_dir(
            &self.locks,
            &[&name::stripe_file_name(name::stripe_of(stem))],
        )
    }

    /// The latest time to wait for locks until, for an operation that starts now.
    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.lock_timeout
    }

    /// Settles the commits cut short whose intent records are in the directory, removes temp
    /// files older than `age` (but those of a pending commit, which recovery owns), each under
    /// its scope's lock, if it is free, and then the per-scope lock files of 0.1.
    pub(crate) fn clean_up(&self, age: Duration) -> Result<(), Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let now = SystemTime::now();
        let mut intents = Vec::new();
        let mut legacy_locks = Vec::new();
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
            if file_name.strip_suffix(LOCK_EXT).is_some_and(name::is_stem) {
                legacy_locks.push(entry.path());
                continue;
            }
            let Some((stem, id)) = name::temp_parts(file_name) else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|a| a >= age);
            if !old {
                continue;
            }
            self.remove_stale_temp(stem, id, &entry.path())?;
        }
        // The commits first: a 0.1 commit cut short left its markers in those lock files.
        self.recover_all(intents);
        for path in legacy_locks {
            self.remove_legacy_lock(&path);
        }
        Ok(())
    }

    /// Removes the temp file `path` of `stem`, with random part (or commit id) `id`, unless
    /// its writer still holds the scope's lock or a pending commit owns it. Under the lock, no
    /// intent record naming it can appear: its commit would hold that lock.
    pub(super) fn remove_stale_temp(&self, stem: &str, id: u64, path: &Path) -> Result<(), Error> {
        let lock_path = self.lock_path(stem);
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
        drop(lock);
        Ok(())
    }

    /// Removes the per-scope lock file `path` that 0.1 kept beside a record, unless it is held
    /// or names a commit still pending (the next open settles it, then removes the file).
    pub(super) fn remove_legacy_lock(&self, path: &Path) {
        if let Ok(Some(lock)) = ScopeLock::try_acquire_existing(path) {
            if !self.names_pending(&lock).unwrap_or(true) {
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
            record: in_dir(&self.dir, &[&stem, RECORD_EXT]),
            lock: self.lock_path(&stem),
            stem,
        })
    }

    /// The record file of `key`.
    pub(crate) fn record_path(&self, key: &str) -> PathBuf {
        in_dir(&self.dir, &[&name::stem(key), RECORD_EXT])
    }

    pub(super) fn read(&self, key: &str, path: &Path) -> Result<Option<Record>, Error> {
        let bytes = match read_whole(path) {
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
    /// its stripe or was cut short: the lock file then holds its marker, and the read first
    /// waits for the commit (or settles it). An expired record reads as absent.
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
        Ok(live(self.read(key, &files.record)?, now_ms()))
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
        // An expired record is absent: a compare-and-swap expecting it conflicts, one expecting
        // absence creates the scope anew over it.
        let current = live(self.read(key, &files.record)?, now_ms());
        if let Some(left) = self.held_for_other(&files, write.claimant) {
            return Ok(CasOutcome::Conflict(
                current.map(|r| r.with_reserved_for(Some(left))),
            ));
        }
        if current.as_ref().map(|r| r.revision()) != expected {
            return Ok(match (write.reserve, current) {
                // Lost, and nobody else holds it (checked above): reserve it (rule 13).
                (Some(ttl), Some(current)) => {
                    self.write_reservation(&files, write.claimant, ttl)?;
                    CasOutcome::Reserved(current)
                }
                (_, current) => CasOutcome::Conflict(current),
            });
        }
        let version = self.replace(key, &files, current.as_ref(), write)?;
        drop(lock);
        Ok(CasOutcome::Committed(version))
    }

    pub(crate) fn put(&self, key: &str, write: &OwnedWrite) -> Result<u64, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        // A corrupt record is an error here too: it is never overwritten.
        let current = live(self.read(key, &files.record)?, now_ms());
        let version = self.replace(key, &files, current.as_ref(), write)?;
        // An unconditional write ends any reservation, as it does on every driver.
        self.drop_reservation(&files);
        drop(lock);
        Ok(version)
    }

    /// Reserves live `key` for `claimant` for `ttl` unless another claimant holds a live
    /// reservation on it (contract rule 13); whether `claimant` holds it now.
    pub(crate) fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        let current = live(self.read(key, &files.record)?, now_ms());
        if current.is_none() || self.held_for_other(&files, claimant).is_some() {
            return Ok(false);
        }
        self.write_reservation(&files, claimant, ttl)?;
        drop(lock);
        Ok(true)
    }

    /// The reservation file of a scope: its claimant and the end of its slice (ms since 1970
    /// by this machine's clock, which every process on the directory shares), 16 bytes, little
    /// endian. Written under the scope's lock and never synced: a reservation lost in a crash
    /// only lets another process in sooner.
    fn reservation_path(&self, files: &Files) -> PathBuf {
        in_dir(&self.locks, &[&files.stem, RESERVATION_EXT])
    }

    /// How long a live reservation of another claimant than `claimant` still holds the scope.
    /// A missing, unreadable or malformed reservation file holds nothing.
    pub(super) fn held_for_other(&self, files: &Files, claimant: u64) -> Option<Duration> {
        let bytes = fs::read(self.reservation_path(files)).ok()?;
        let (by, until) = bytes.split_at_checked(8)?;
        let by = u64::from_le_bytes(by.try_into().ok()?);
        let until = u64::from_le_bytes(until.try_into().ok()?);
        let now = now_ms();
        (by != claimant && until > now).then(|| Duration::from_millis(until - now))
    }

    fn write_reservation(&self, files: &Files, claimant: u64, ttl: Duration) -> Result<(), Error> {
        let until = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut bytes = claimant.to_le_bytes().to_vec();
        bytes.extend_from_slice(&until.to_le_bytes());
        let path = self.reservation_path(files);
        // Written in place: a reader under the same lock never sees it half done.
        fs::write(&path, bytes).map_err(|e| io_error("write reservation", &path, e))
    }

    fn drop_reservation(&self, files: &Files) {
        // Absent is the usual case; a file left behind holds nothing once its slice ends.
        let _ = fs::remove_file(self.reservation_path(files));
    }

    /// Deletes `key`; returns whether it existed (an expired record did not, but its file goes
    /// all the same; a corrupt one did).
    pub(crate) fn delete(&self, key: &str) -> Result<bool, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        let existed = match self.read(key, &files.record) {
            Ok(r) => r.map(|r| !r.expired_at(now_ms())),
            Err(Error::Corrupt { .. }) => Some(true),
            Err(e) => return Err(e),
        };
        self.drop_reservation(&files);
        if existed.is_some() {
            match fs::remove_file(&files.record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &files.record, e)),
            }
            self.sync_dir(
                "fsync directory after delete (the record is gone but may return after a crash)",
            )?;
        }
        drop(lock);
        Ok(existed.unwrap_or(false))
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
        let raw = self.read(key, &files.record)?;
        let current = live(raw.clone(), now_ms());
        // A conditional removal claims nothing: any live reservation refuses it (rule 13).
        if current.as_ref().map(|r| r.revision()) != expected
            || self.held_for_other(&files, 0).is_some()
        {
            return Ok(Some(current));
        }
        self.drop_reservation(&files);
        // Expected absent and expired: its file goes too.
        if raw.is_some() {
            match fs::remove_file(&files.record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &files.record, e)),
            }
            self.sync_dir(
                "fsync directory after delete (the record is gone but may return after a crash)",
            )?;
        }
        drop(lock);
        Ok(None)
    }

    /// Sets the expiry of the live record `key` without changing its revision; `false` when
    /// there is none.
    pub(crate) fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let files = self.files(key)?;
        let lock = self.lock_scope(&files)?;
        let now = now_ms();
        let Some(mut record) = live(self.read(key, &files.record)?, now) else {
            return Ok(false);
        };
        let expires_at = expiry.resolve(record.expires_at, || now);
        if expires_at != record.expires_at {
            record.expires_at = expires_at;
            let bytes = self.encode_record(key, &record)?;
            self.install(&files, &bytes)?;
        }
        drop(lock);
        Ok(true)
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
            // Gone: settled since the listing, which may predate its renames: list again.
            let Some(bytes) = self.read_intent(&self.intent_path(id))? else {
                settled = true;
                continue;
            };
            // A torn record creates nothing: it is rolled back, or still being written.
            let Ok(intent) = super::intent::decode(&bytes, id) else {
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

    /// The live keys with `prefix` in the directory, and the ids of the intent records there.
    fn list_once(&self, prefix: &str) -> Result<(Vec<String>, Vec<u64>), Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        // Each record file, and its key when its name tells it.
        let mut found: Vec<(Option<String>, PathBuf)> = Vec::new();
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
            if name::is_hashed(stem) {
                found.push((None, entry.path()));
            } else if let Some(key) = name::key_of_plain(stem) {
                if key.as_bytes().starts_with(prefix.as_bytes()) {
                    found.push((Some(key), entry.path()));
                }
            }
        }
        // The flag is made before the first record with an expiry is renamed into place: absent
        // now, no record listed above has one.
        let expiry_used = self.expiry_used();
        let now = now_ms();
        let mut keys = Vec::with_capacity(found.len());
        for (key, path) in found {
            let key = match (key, path) {
                (Some(key), _) if !expiry_used => key,
                (key, path) => match self.header_of(&path, key.is_some()) {
                    Header::Gone => continue,
                    Header::Unreadable => match key {
                        Some(key) => key,
                        None => continue,
                    },
                    Header::Read(k, expires_at) => {
                        if expired(expires_at, now) {
                            continue;
                        }
                        match key {
                            Some(key) => key,
                            None => k,
                        }
                    }
                },
            };
            if key.as_bytes().starts_with(prefix.as_bytes()) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok((keys, intents))
    }

    /// The key and expiry in the header of the record file `path`. A hashed name's file must
    /// hold the key its name says (else it is unreadable, with a warning); a plain name's
    /// (`plain`) key is its name's, and a header it cannot read is left to `load` to report.
    fn header_of(&self, path: &Path, plain: bool) -> Header {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Header::Gone,
            Err(e) => {
                if !plain {
                    tracing::warn!(path = %path.display(), error = %e, "record not listed: unreadable");
                }
                return Header::Unreadable;
            }
        };
        let mut line = Vec::new();
        let read = io::BufReader::new(file)
            .take(record::MAX_HEADER as u64)
            .read_until(b'\n', &mut line);
        let header = read
            .map_err(|e| e.to_string())
            .and_then(|_| record::key_of_header(&line));
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(RECORD_EXT))
            .unwrap_or("");
        match header {
            Ok((k, expires_at)) if name::stem(&k) == stem => Header::Read(k, expires_at),
            Ok((k, _)) => {
                if !plain {
                    tracing::warn!(path = %path.display(), key = %crate::error::shorten(&k), "record not listed: it holds another scope");
                }
                Header::Unreadable
            }
            Err(e) => {
                if !plain {
                    tracing::warn!(path = %path.display(), error = %e, "record not listed: corrupt header");
                }
                Header::Unreadable
            }
        }
    }

    /// Whether any write in this directory ever set an expiry (the flag exists).
    fn expiry_used(&self) -> bool {
        if self.expiry_used.load(Ordering::Relaxed) {
            return true;
        }
        let used = self.locks.join(EXPIRY_FLAG).exists();
        if used {
            self.expiry_used.store(true, Ordering::Relaxed);
        }
        used
    }

    /// Makes the expiry flag, before the first record with an expiry goes into place.
    fn mark_expiry_used(&self) -> Result<(), Error> {
        if self.expiry_used.load(Ordering::Relaxed) {
            return Ok(());
        }
        let path = self.locks.join(EXPIRY_FLAG);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        if self.fsync && cfg!(unix) {
            File::open(&self.locks)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("fsync directory", &self.locks, e))?;
        }
        self.expiry_used.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes up to `limit` expired records, each under its scope's lock and only when it is
    /// still expired there (a scope written again after it expired is not touched); returns
    /// how many. One process sweeps at a time (the holder of the sweep lock), and a directory
    /// at most once per [`SWEEP_EVERY`] (unless `force`); a sweep cut short by `limit` leaves
    /// the next one due at once.
    pub(crate) fn sweep(&self, limit: usize, force: bool) -> Result<usize, Error> {
        if limit == 0 || !self.expiry_used() {
            return Ok(0);
        }
        let stamp_path = self.locks.join(SWEEP_LOCK);
        let stamp = match ScopeLock::acquire_within(&stamp_path, Duration::ZERO) {
            Ok(Some(lock)) => lock,
            // Another process sweeps now.
            Ok(None) => return Ok(0),
            Err(e) => return Err(io_error("lock", &stamp_path, e)),
        };
        let last = stamp
            .contents()
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let every = u64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(u64::MAX);
        if !force && now_ms().saturating_sub(last) < every {
            return Ok(0);
        }
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let mut busy = std::collections::HashSet::new();
        let mut deleted = 0;
        for entry in entries {
            if deleted >= limit {
                break;
            }
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(RECORD_EXT)) else {
                continue;
            };
            if !name::is_stem(stem) {
                continue;
            }
            let path = entry.path();
            let Header::Read(key, expires_at) = self.header_of(&path, true) else {
                continue;
            };
            if !expired(expires_at, now_ms()) {
                continue;
            }
            let files = self.files(&key)?;
            if busy.contains(&files.lock) {
                continue;
            }
            let deadline = Instant::now() + SWEEP_LOCK_WAIT.min(self.lock_timeout);
            let lock = match self.lock_scopes(&[files.lock.as_path()], deadline) {
                Ok(mut held) => held.pop(),
                Err(e) => {
                    tracing::debug!(error = %e, "an expired record is left to a later sweep");
                    None
                }
            };
            let Some(lock) = lock else {
                busy.insert(files.lock);
                continue;
            };
            // Under the lock: only a record that is still expired goes.
            let still = match self.read(&key, &files.record) {
                Ok(Some(r)) => r.expired_at(now_ms()),
                Ok(None) | Err(Error::Corrupt { .. }) => false,
                Err(e) => return Err(e),
            };
            if still {
                match fs::remove_file(&files.record) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("delete", &files.record, e)),
                }
            }
            drop(lock);
        }
        if deleted > 0 {
            // An expired record that comes back after a crash is still expired: one sync for
            // the whole sweep.
            self.sync_dir("fsync directory after a sweep")?;
        }
        if deleted < limit {
            if let Err(e) = stamp.set_contents(now_ms().to_string().as_bytes()) {
                tracing::debug!(path = %stamp_path.display(), error = %e, "sweep time not kept");
            }
        }
        Ok(deleted)
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
        let mut taken = ScopeLock::acquire_within(path, wait);
        if matches!(&taken, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // No lock directory: made now (removed by hand, or not writable at open).
            fs::create_dir_all(&self.locks)
                .map_err(|e| io_error("create directory", &self.locks, e))?;
            taken = ScopeLock::acquire_within(path, wait);
        }
        match taken {
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

    /// The version and the record file bytes that `write` makes on top of `current` (the live
    /// record: `None` when absent or expired).
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
        let expires_at = write
            .expiry
            .resolve(current.and_then(|r| r.expires_at), now_ms);
        let record = Record::new(version, write.schema, write.data.clone(), tokens)
            .with_meta(write.meta.clone())
            .with_expiry(expires_at);
        Ok((version, self.encode_record(key, &record)?))
    }

    /// The record file bytes of `record`; makes the expiry flag first when it has an expiry.
    pub(super) fn encode_record(&self, key: &str, record: &Record) -> Result<Vec<u8>, Error> {
        if record.expires_at.is_some() {
            self.mark_expiry_used()?;
        }
        record::encode(
            key,
            record.version,
            record.schema,
            &record.data,
            &record.tokens,
            &record.meta,
            record.expires_at,
        )
        .map_err(|e| Error::backend("file", BackendKind::Other, e))
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
        self.install(files, &bytes)?;
        Ok(version)
    }

    /// Writes `bytes` to a temp file, syncs it and renames it over the record of `files`. On
    /// failure the temp file is removed and the old record is untouched. The caller holds the
    /// scope lock.
    fn install(&self, files: &Files, bytes: &[u8]) -> Result<(), Error> {
        let tmp_path = self
            .dir
            .join(name::temp_file_name(&files.stem, rand::random::<u64>()));
        let mut temps = TempFiles::default();
        self.write_temp(&tmp_path, bytes, &mut temps)?;
        fs::rename(&tmp_path, &files.record)
            .map_err(|e| io_error("rename into place", &files.record, e))?;
        temps.disarm();
        // From here the new record is in place. A failed directory sync leaves it visible but
        // perhaps not durable: that is reported, since the caller asked for durability.
        self.sync_dir(
            "fsync directory after rename (the new record is in place but may not survive a crash)",
        )
    }

    pub(super) fn sync_dir(&self, op: &'static str) -> Result<(), Error> {
        match &self.dir_handle {
            Some(d) => d.sync_all().map_err(|e| io_error(op, &self.dir, e)),
            None => Ok(()),
        }
    }
}

/// The bytes of the file at `path`, as `fs::read` gives them, without asking the file's size
/// first: a record is read in two `read` calls (its bytes, then the end), and a warm read costs
/// four system calls, not five. (`fs::read`, and `File`'s own `read_to_end`, `statx` the file
/// to size the buffer; a record is a few hundred bytes, and a larger one grows the buffer.)
fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::with_capacity(4096);
    // Through `Take`, whose `read_to_end` is the plain one: it reads into the space there is.
    file.take(u64::MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
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

    #[test]
    fn paths_in_a_dir_are_its_joins() {
        for dir in ["", "d", "d/", "/tmp/x", "/tmp/x/", "./a//b", "/"] {
            let dir = Path::new(dir);
            assert_eq!(
                in_dir(dir, &["user%3aalice", RECORD_EXT]),
                dir.join(format!("user%3aalice{RECORD_EXT}")),
                "{dir:?}"
            );
            assert_eq!(in_dir(dir, &["00.lock"]), dir.join("00.lock"), "{dir:?}");
        }
    }
}
