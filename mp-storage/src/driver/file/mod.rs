//! `file:<dir>`: one file per scope in a directory, safe across the processes of one host.
//!
//! # URLs
//!
//! | URL form | directory |
//! |---|---|
//! | `file:./rel`, `file:rel` | relative to the working directory |
//! | `file:/abs`, `file:///abs`, `file://localhost/abs` | absolute |
//!
//! The path is percent-decoded (`%20` for a space, `%3F` for `?`); a host other than
//! `localhost` is refused. [`FileOptions::from_url`] reads a URL without opening it;
//! [`FileDriver::open`] takes the directory and [`FileOptions`] built in code.
//!
//! | option | default | [`FileOptions`] | meaning |
//! |---|---|---|---|
//! | `fsync` | `true` | [`fsync`](FileOptions::fsync) | fsync the record, then the directory, before a write counts as committed |
//! | `lock_timeout` | `30s` | [`lock_timeout`](FileOptions::lock_timeout) | the longest a write waits for its scopes' locks held by other writers (and a read for a several-scope commit on its scope); then a [`Timeout`](crate::BackendKind::Timeout) error, nothing written |
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
//! A record with an expiry has `"expires_at"` (ms since 1970) in its header; files without it
//! (every file of 0.1) never expire.
//!
//! Beside the records, the subdirectory `%locks` holds the lock files: at most 256 of them,
//! `00.lock` to `ff.lock`, whatever the number of scopes (see *Writes*), and two small files of
//! the expiry sweep, and the reservation files of contended scopes (see *Reservations*).
//! **Disk cost**: one file (one inode) per scope: a header of about 90 bytes
//! plus the key, 19 bytes per commit token kept (up to 16) and the data; for a one-counter scope
//! named `counter:N`, 123 bytes, which take one 4 KiB block on ext4, plus its directory entry.
//! The whole store adds the `%locks` directory and its at most 258 empty or near-empty files,
//! and 16 bytes in a file of its own for each scope that was ever reserved.
//! (100,000 such scopes: 100,258 inodes and 410 MB allocated, against 200,001 inodes for 0.1,
//! which kept an empty lock file beside each record.)
//!
//! # Writes
//!
//! Every write holds the scope's OS advisory lock (`flock` on the lock file of its *stripe*:
//! `%locks/<nn>.lock`, `<nn>` being the FNV-1a hash of the stem modulo 256 in two hex digits),
//! reads the record, compares versions, writes a temp file `<stem>.<random>.tmp` in the same
//! directory, fsyncs it, renames it over the record and fsyncs the directory. A crash at any moment leaves the old
//! record or the new one, never a torn one. `?fsync=false` (or [`FileOptions::fsync`]) skips
//! every fsync: still atomic for other processes and after a crash of the process, but a power
//! loss may lose recent writes, leave a record that reads as [`Error::Corrupt`], or (the
//! journal below being unsynced too) half a several-scope commit. Temp files are ignored by
//! reads and `list`; [`FileDriver::open`] removes those older than a minute (a crashed
//! writer's), each under its scope's lock. All file IO runs on `tokio::task::spawn_blocking`,
//! never on the runtime's worker threads.
//!
//! Scopes of one stripe take turns on its lock (with 256 stripes, two writers of different
//! scopes meet on one about once in 256), and so does a writer stopped inside a lock: it holds
//! back the scopes of its stripe, not only its own, until `lock_timeout`. The lock files are
//! never removed, so no locker can lock a file that another just unlinked. A directory written
//! by 0.1 holds a lock file per scope beside the records (`<stem>.lock`): `open` settles the
//! commits they name and removes them. Every process on a directory must run one version: a
//! 0.1 process locks other files than this one.
//!
//! ## Reservations
//!
//! A process that keeps losing a scope to another's commits reserves it for a slice (contract
//! rule 13): `%locks/<stem>.res` holds the claimant and the end of the slice (ms since 1970 by
//! the machine's clock, which every process on the directory shares), written under the scope's
//! lock and never synced, since a reservation lost in a crash only lets another process in
//! sooner. Until the slice ends, compare-and-swaps and commits of other claimants are refused
//! with the time it has left. An unconditional write or a removal ends it. A reservation file
//! stays behind once its slice is over and holds nothing; there is at most one per scope that
//! was ever contended. Without them, a process whose every retry found the lock taken by the
//! other process's next commit could lose a hot scope a hundred times in a row.
//!
//! ## Several scopes, all or nothing
//!
//! [`Driver::commit`] of several keys ([`Storage::scoped_many`](crate::Storage::scoped_many))
//! takes the locks of its keys' stripes in ascending order, each stripe once however many of
//! its keys share it (the one order of every taker of several locks, so two commits over the
//! same scopes in other orders never wait for each other in a circle; a single-scope write takes
//! one lock), each wait bounded by `lock_timeout` in all
//! (then an unsent [`Timeout`](crate::BackendKind::Timeout) error, nothing written). It reads
//! every record and checks every revision, a check-only op's too; one miss is a conflict that
//! names the ops that missed, with their records, and nothing is written. Then, with a journal:
//!
//! 1. each new record goes to its temp file `<stem>.<id>.tmp`, synced (`<id>`: the commit's
//!    random id, 16 hex digits);
//! 2. the commit's id goes into the lock file of each written scope's stripe (its *marker*);
//! 3. the *intent record* `%commit.<id>.intent` is written, then synced with the directory. It
//!    names the commit, and for each written key its temp file and the revision the commit
//!    replaces (`null`: absent), as one JSON line:
//!    ```text
//!    {"format":1,"commit":"3f09c1d2a4b5e6f7","writes":[{"key":"acct:alice","temp":"acct%3aalice.3f09c1d2a4b5e6f7.tmp","replaces":{"version":8,"token":"00000000000000a1"}},{"key":"acct:bob","temp":"acct%3abob.3f09c1d2a4b5e6f7.tmp","replaces":null}]}
//!    ```
//!    From here the commit is decided;
//! 4. the temp files are renamed over the records, and the directory synced;
//! 5. the intent record is removed and the lock files emptied.
//!
//! A commit of one write (checks aside) is one rename, with no journal. No key's files can
//! have the intent record's name (a stem never starts with `%co`); `list` and the clean-up
//! skip it. A failure before the intent record is durable (a full disk is a
//! [`Full`](crate::BackendKind::Full) error) leaves the old records intact and removes the temp
//! files, markers and intent record.
//!
//! **Recovery.** A process killed between steps 1 and 5 leaves its intent record (or a part of
//! it) and its markers. [`FileDriver::open`] settles every intent record it finds, and every
//! operation that takes a scope's lock reads the marker first: one naming an intent record that
//! is still there makes it let go of its locks, settle that commit and start over. Settling
//! takes the locks of the commit's scopes (the same order), reads the intent record again (gone:
//! another process settled it) and rolls it:
//!
//! - **forward** when it is whole: every temp file it names that is still there is renamed over
//!   its record (one that is gone was renamed already); then the directory is synced and the
//!   intent record and markers removed. Temp files are synced before the intent record is
//!   written, so a whole intent can always be rolled forward. (A temp file that does not decode,
//!   or whose record is no longer at the revision the intent names, is dropped with an error in
//!   the log: only a power loss without fsync, or a hand, does that.);
//! - **back** when it is torn (no final newline, or unreadable): its process died writing it,
//!   before any rename, so the intent record, then the temp files are removed.
//!
//! A commit holds its locks from step 1 to step 5, so a process that holds one of them knows
//! the commit is over: done (the intent record is gone) or dead. Several processes settling at
//! once take turns on the locks: one settles, the others find the intent record gone. A
//! failure after step 3 is settled by the committer at once, like a recovery; if that fails too
//! the error is [`Error::CommitUnknown`] (the commit is completed by the next touch).
//!
//! **What readers see.** Reads take no lock, except on a scope whose stripe's lock file holds a
//! marker: a several-scope commit is then under way on that stripe or was cut short, and the
//! read first waits for it (at most `lock_timeout`) or settles it. So once any read has seen a commit's value of one
//! scope, every later read sees its values of the others: a commit is never seen applied and
//! then not, even after a crash between two renames. A read of several scopes
//! ([`Storage::get_many`](crate::Storage::get_many), [`Driver::load_many`]: one blocking call,
//! one read per key) is not a snapshot: a commit may land between two of its reads. The engine
//! checks every revision again when it commits, so an update that read half of another's commit
//! writes nothing and reruns. `list` likewise first settles (or waits for) the commits that
//! write keys with its prefix.
//!
//! # Expiry
//!
//! By the local clock: a record whose `expires_at` has passed is absent for every call of every
//! process at once (`load`, `load_many`, `list`, `delete` and `expire` say it is not there; a
//! compare-and-swap expecting it conflicts, one expecting absence creates the scope anew, at the
//! write's initial version, over the expired file), though its file stays until it is swept.
//! Several-scope commits check it the same way. A write sets the expiry as
//! [`Write::expiry`](crate::Write) says; [`Driver::expire`] rewrites the record with the new
//! expiry at the same revision.
//!
//! The first write of a directory that sets an expiry makes the file `%locks/expiry`: until then
//! `list` reads no record and a sweep does nothing; after it, `list` reads the header of each
//! record it returns. [`Driver::sweep`] (run by the engine now and then, and by `open`) lists
//! the directory, and deletes each record whose header says it expired, under its scope's lock,
//! after reading it again there: a scope written again after it expired is never swept. One
//! process sweeps at a time (the holder of `%locks/sweep.lock`, which keeps the time of the
//! last whole sweep), and a directory at most every 30 s; a scope whose lock stays held for a
//! second is left to the next sweep.
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
//! new record is then in place but maybe not durable, and the error says so (for a commit of
//! several scopes, its intent record stays until the next touch, so a crash rolls it forward).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Action, Capabilities, CasOutcome, CommitOutcome, Driver, Expiry, Op, Record, Revision, Write,
};
use crate::{BackendKind, Error};

mod config;
mod intent;
mod journal;
mod lock;
mod name;
mod record;
mod store;
mod watch;

pub use config::{FileOptions, DEFAULT_LOCK_TIMEOUT};
use journal::OwnedOp;
use store::{OwnedWrite, Store};
pub use watch::{POLL_WITHOUT_EVENTS, SAFETY_NET};

/// The URL schemes this driver takes.
pub const SCHEMES: &[&str] = &["file"];

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
        let store =
            blocking(move || Store::open(&dir, options.fsync, options.lock_timeout)).await?;
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

    /// The lock file of `key`: the lock file of its stripe, in `<dir>/%locks`, which other
    /// scopes share (see the [module docs](self)).
    pub fn lock_path(&self, key: &str) -> PathBuf {
        self.store.lock_path(&name::stem(key))
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
        meta: write.meta.to_vec(),
        expiry: write.expiry,
        claimant: write.claimant,
        reserve: write.reserve,
    }
}

#[async_trait]
impl Driver for FileDriver {
    fn name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_multi_key_commit()
            .with_expiry()
            .with_watch()
            .with_reservations()
            .with_reserve_on_conflict()
    }

    fn changes(
        &self,
        watched: Arc<crate::driver::WatchSet>,
    ) -> Option<crate::driver::ChangeStream> {
        Some(watch::changes(self, &self.store.dir, watched))
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let (store, key) = (self.store.clone(), key.to_owned());
        blocking(move || store.load(&key)).await
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        let store = self.store.clone();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        blocking(move || store.load_many(&keys)).await
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        if let [Op {
            key,
            expected,
            action: Action::Delete,
        }] = ops
        {
            let (store, key, expected) = (self.store.clone(), key.to_string(), *expected);
            return Ok(
                match blocking(move || store.delete_at(&key, expected)).await? {
                    None => CommitOutcome::Committed(vec![None]),
                    Some(current) => CommitOutcome::Conflict(vec![(0, current)]),
                },
            );
        }
        if ops.len() > 1 && ops.iter().any(|op| matches!(op.action, Action::Delete)) {
            return Err(Error::Unsupported {
                driver: "file",
                capability: "removals within several-scope commits",
            });
        }
        let store = self.store.clone();
        let ops: Vec<OwnedOp> = ops
            .iter()
            .map(|op| OwnedOp {
                key: op.key.to_owned(),
                expected: op.expected,
                write: match op.action {
                    Action::Check | Action::Delete => None,
                    Action::Write(w) => Some(owned(w)),
                },
            })
            .collect();
        blocking(move || store.commit(&ops)).await
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
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

    async fn reserve(
        &self,
        key: &str,
        claimant: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, Error> {
        let (store, key) = (self.store.clone(), key.to_owned());
        blocking(move || store.reserve(&key, claimant, ttl)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let (store, prefix) = (self.store.clone(), prefix.to_owned());
        blocking(move || store.list(&prefix)).await
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let (store, key) = (self.store.clone(), key.to_owned());
        blocking(move || store.expire(&key, expiry)).await
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        let store = self.store.clone();
        blocking(move || store.sweep(limit, false)).await
    }
}

#[cfg(test)]
mod tests;
