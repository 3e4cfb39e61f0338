//! The per-scope lock: an OS advisory lock (`flock` on Unix, `LockFileEx` on Windows) on a
//! `<stem>.lock` file beside the record.
//!
//! The lock is on a file of its own because the record file is replaced by a rename on every
//! write: a lock on the old record would not stop a process that opens the new one.
//!
//! Lock files are removed once their scope is gone (after a delete, or when a locked operation
//! finds no record), so a workload that creates and deletes many scopes does not pile them up.
//! Removing a file that others may be waiting on is safe only with a check, and on Unix every
//! acquirer makes it: after the lock is granted, the path must still name the very file that is
//! locked (same device and inode). A waiter that was granted the lock of a file unlinked
//! meanwhile sees that the path is gone or names a new file, drops its lock and starts over on
//! the current file. The remover unlinks as the last step while it holds the lock, so whoever
//! locks the new file sees the scope as the remover left it. Elsewhere lock files are never
//! removed.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use fs4::FileExt;

/// A held scope lock; released on drop.
pub(crate) struct ScopeLock {
    file: File,
    path: PathBuf,
}

impl ScopeLock {
    /// Blocks until the lock of `path` is held.
    pub(crate) fn acquire(path: &Path) -> io::Result<ScopeLock> {
        loop {
            let file = open(path)?;
            FileExt::lock(&file)?;
            if still_current(&file, path)? {
                return Ok(ScopeLock {
                    file,
                    path: path.to_owned(),
                });
            }
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

    /// Removes the lock file while still holding it, then releases it: for a scope that no
    /// longer exists. Best effort: a lock file left behind is harmless.
    pub(crate) fn remove(self) {
        if cfg!(unix) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %self.path.display(), error = %e, "lock file not removed");
                }
            }
        }
        drop(self.file);
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

/// Whether `path` still names the open `file`.
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

/// Lock files are never removed here, so the path always names the file.
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
                        let lock = ScopeLock::acquire(&path).unwrap();
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
