//! The scope locks: OS advisory locks (`flock` on Unix, `LockFileEx` on Windows) on a fixed set
//! of [`STRIPES`](super::name::STRIPES) lock files, `%locks/00.lock` to `%locks/ff.lock`. A
//! scope's lock is the stripe its stem hashes to ([`stripe_of`](super::name::stripe_of)): scopes
//! that share a stripe take turns, and a directory holds 256 lock files however many scopes it
//! has, none of which is ever removed.
//!
//! The lock is on a file of its own because the record file is replaced by a rename on every
//! write: a lock on the old record would not stop a process that opens the new one.
//!
//! Whoever takes several stripes (a several-scope commit, the settling of one) takes them in
//! ascending stripe order, each once, so two takers never wait for each other in a circle.
//!
//! A lock file is empty, except while a several-scope commit is under way on one of its
//! scopes: the commit then writes its id into it (the *marker*, 16 hex digits and a newline)
//! before its intent record, and empties it once done. Whoever takes the lock reads the marker:
//! one that names an intent record still present is a commit to finish first (see
//! `journal.rs`). The marker is read and written only by the holder of the lock, through the
//! locked handle.
//!
//! Directories written by 0.1 hold a lock file per scope, `<stem>.lock` beside the record:
//! [`Store::open`](super::store::Store::open) removes them (all processes on a directory must
//! run one version: a 0.1 process and this one do not lock each other out).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs4::FileExt;

/// A held scope lock; released on drop.
pub(crate) struct ScopeLock {
    file: File,
    path: PathBuf,
}

/// What a lock file says about a several-scope commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    /// Nothing: no commit is under way.
    Empty,
    /// The commit with this id wrote the scope (or was about to).
    Commit(u64),
    /// Anything else (written by hand, or torn by a power loss without fsync).
    Garbage,
}

/// The bytes of a marker: 16 hex digits and a newline.
const MARKER_LEN: usize = 17;

impl ScopeLock {
    /// Takes the lock of `path`, waiting at most `wait`; `None` when it stayed held that long.
    /// Polls (from 50 µs, doubling to 200 µs), since a blocking lock cannot be given up. The
    /// pause stays short because a process whose tasks write back to back takes the lock again
    /// within microseconds of releasing it: a waiter that polled every 5 ms got in by luck, and
    /// with two to four processes on one scope its p99 was 9–15× that of one process alone
    /// (`mp-bench --only fairness`; 1–2.6× at 200 µs). A poll is an `open` and a `flock`.
    pub(crate) fn acquire_within(path: &Path, wait: Duration) -> io::Result<Option<ScopeLock>> {
        let until = Instant::now() + wait;
        let mut pause = Duration::from_micros(50);
        loop {
            let file = open(path)?;
            match FileExt::try_lock(&file) {
                Ok(()) => {
                    if still_current(&file, path)? {
                        return Ok(Some(ScopeLock {
                            file,
                            path: path.to_owned(),
                        }));
                    }
                    // Removed meanwhile: start over on the current file at once.
                    continue;
                }
                Err(fs4::TryLockError::WouldBlock) => {}
                Err(fs4::TryLockError::Error(e)) => return Err(e),
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            std::thread::sleep(pause.min(until - now));
            pause = (pause * 2).min(Duration::from_micros(200));
        }
    }

    /// Takes the lock of `path` if it is free and the file exists; `None` otherwise.
    pub(crate) fn try_acquire_existing(path: &Path) -> io::Result<Option<ScopeLock>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Ok(None),
            Err(fs4::TryLockError::Error(e)) => return Err(e),
        }
        if !still_current(&file, path)? {
            return Ok(None);
        }
        Ok(Some(ScopeLock {
            file,
            path: path.to_owned(),
        }))
    }

    /// The marker in the lock file.
    pub(crate) fn marker(&self) -> io::Result<Marker> {
        let mut buf = Vec::with_capacity(MARKER_LEN + 1);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.take(64).read_to_end(&mut buf)?;
        Ok(parse_marker(&buf))
    }

    /// Writes the marker of commit `id` into the (empty) lock file.
    pub(crate) fn set_marker(&self, id: u64) -> io::Result<()> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(format!("{id:016x}\n").as_bytes())
    }

    /// Empties the lock file.
    pub(crate) fn clear_marker(&self) -> io::Result<()> {
        self.file.set_len(0)
    }

    /// The path of the lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lock file while still holding it, then releases it: for the per-scope lock
    /// files of 0.1. Best effort: a lock file left behind is harmless.
    pub(crate) fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %self.path.display(), error = %e, "lock file not removed");
            }
        }
        drop(self.file);
    }

    /// The bytes of the lock file (for the sweep's time stamp, see `Store::sweep`).
    pub(crate) fn contents(&self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.take(64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Replaces the bytes of the lock file with `bytes`.
    pub(crate) fn set_contents(&self, bytes: &[u8]) -> io::Result<()> {
        self.file.set_len(0)?;
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(bytes)
    }
}

fn parse_marker(bytes: &[u8]) -> Marker {
    if bytes.is_empty() {
        return Marker::Empty;
    }
    let id = bytes
        .strip_suffix(b"\n")
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(super::name::parse_id);
    match id {
        Some(id) if bytes.len() == MARKER_LEN => Marker::Commit(id),
        _ => Marker::Garbage,
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Whether `path` still names the open `file`: lock files are not removed while in use, but a
/// hand (or a 0.1 clean-up of `<stem>.lock` files) may remove one.
#[cfg(unix)]
fn still_current(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A lock file in use cannot be removed there, so the path always names the file.
#[cfg(not(unix))]
fn still_current(_file: &File, _path: &Path) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn markers() {
        let dir = std::env::temp_dir().join(format!("mp-lock-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.lock");
        let lock = ScopeLock::acquire_within(&path, std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert_eq!(lock.marker().unwrap(), Marker::Empty);
        lock.set_marker(0xabc).unwrap();
        assert_eq!(lock.marker().unwrap(), Marker::Commit(0xabc));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "0000000000000abc\n"
        );
        lock.clear_marker().unwrap();
        assert_eq!(lock.marker().unwrap(), Marker::Empty);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        for junk in [
            &b"x"[..],
            b"0000000000000abc",
            b"0000000000000ABC\n",
            b"0000000000000abc\n\n",
        ] {
            assert_eq!(parse_marker(junk), Marker::Garbage, "{junk:?}");
        }
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removal_while_others_wait_keeps_mutual_exclusion() {
        let dir = std::env::temp_dir().join(format!("mp-lock-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Arc::new(dir.join("k.lock"));
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (path, inside) = (path.clone(), inside.clone());
                std::thread::spawn(move || {
                    for n in 0..200 {
                        let lock =
                            ScopeLock::acquire_within(&path, std::time::Duration::from_secs(30))
                                .unwrap()
                                .unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        if (n + i) % 3 == 0 {
                            lock.remove();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
