//! Several-scope commits and their journal: the intent record, the markers in the lock files,
//! and the recovery of a commit whose process died half-way (see the module docs of the driver,
//! section *Writes*).
//!
//! A commit of several writes, holding the locks of every scope (their stripes, in ascending
//! order, each once):
//!
//! 1. writes each new record to its temp file `<stem>.<id>.tmp` (synced);
//! 2. writes the marker `<id>` into the lock file of each written scope's stripe;
//! 3. writes the intent record `%commit.<id>.intent` and syncs it and the directory: from here
//!    the commit is decided, and whoever finds the intent rolls it forward;
//! 4. renames the temp files over the records and syncs the directory;
//! 5. removes the intent record and empties the lock files.
//!
//! Recovery of commit `id` takes the locks of its scopes in stripe order, reads the intent again
//! and, when it is still there: a whole intent is rolled *forward* (every temp file still there
//! is renamed over its record; one that is gone was renamed already); a torn one (its writer
//! died while writing it, before any rename) is rolled *back* (the intent, then the temp files
//! are removed). A commit holds its locks from step 1 to step 5, so an intent whose locks
//! another process holds is no longer being written: its commit died, or finished and removed
//! it.
//!
//! Expiry: the checks see an expired record as absent (the commit creates the scope anew over
//! it), while the intent names the revision of the file the commit replaces, expired or not,
//! since that is what recovery finds there (a sweep takes the lock, so it settles the commit
//! before it can delete that file).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::intent::{self, Intent};
use super::lock::{Marker, ScopeLock};
use super::name;
use super::record;
use super::store::{io_error, live, Files, OwnedWrite, Store, TempFiles};
use crate::driver::{now_ms, CommitOutcome, Record, Revision, MAX_COMMIT_KEYS};
use crate::error::shorten;
use crate::{BackendKind, Error};

/// How many cut-short commits one operation settles before it gives up: each is found on a
/// scope it takes the lock of, and a scope is in at most one at a time, so more means someone
/// keeps writing intent records that cannot be settled.
const MAX_SETTLES: usize = 16;

/// One op of a commit, owned so it can move to a blocking thread.
pub(crate) struct OwnedOp {
    pub key: String,
    pub expected: Option<Revision>,
    /// `None`: only check the revision.
    pub write: Option<OwnedWrite>,
}

/// Where a commit stops: at the end, or (for the recovery tests) at a simulated crash, leaving
/// what it wrote so far as a killed process would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum Until {
    /// The whole commit.
    Done,
    /// Crash once the temp files and the markers are written, before the intent record.
    Markers,
    /// Crash once the intent record is written, before any rename.
    Intent,
    /// Crash after this many renames.
    Renames(usize),
}

impl Store {
    /// Commits `ops` all or nothing (contract rule 14).
    pub(crate) fn commit(&self, ops: &[OwnedOp]) -> Result<CommitOutcome, Error> {
        self.commit_until(ops, Until::Done)
    }

    pub(super) fn commit_until(
        &self,
        ops: &[OwnedOp],
        until: Until,
    ) -> Result<CommitOutcome, Error> {
        if ops.len() > MAX_COMMIT_KEYS {
            return Err(Error::InvalidName {
                name: format!("{} keys", ops.len()),
                reason: "one commit takes at most 64 keys",
            });
        }
        let files = ops
            .iter()
            .map(|op| self.files(&op.key))
            .collect::<Result<Vec<Files>, Error>>()?;
        let mut by_stem: Vec<usize> = (0..ops.len()).collect();
        by_stem.sort_by(|&a, &b| files[a].stem.cmp(&files[b].stem));
        if let Some(w) = by_stem
            .windows(2)
            .find(|w| files[w[0]].stem == files[w[1]].stem)
        {
            return Err(Error::InvalidName {
                name: shorten(&ops[w[0]].key),
                reason: "the name appears twice in one commit",
            });
        }
        // Every stripe once, in ascending order: the one order of every taker of several locks.
        let mut paths: Vec<&Path> = files.iter().map(|f| f.lock.as_path()).collect();
        paths.sort_unstable();
        paths.dedup();
        let locks = self.lock_scopes(&paths, self.deadline())?;
        // The lock each op's scope is under.
        let lock_of: Vec<usize> = files
            .iter()
            .map(|f| paths.binary_search(&f.lock.as_path()).unwrap_or(0))
            .collect();

        // Every check, under every lock, before any write; an expired record is absent.
        let now = now_ms();
        let mut raw = Vec::with_capacity(ops.len());
        for (op, f) in ops.iter().zip(&files) {
            raw.push(self.read(&op.key, &f.record)?);
        }
        let current: Vec<Option<Record>> = raw.iter().map(|r| live(r.clone(), now)).collect();
        // A write is refused by another claimant's live reservation too (rule 13).
        let failed: Vec<(usize, Option<Record>)> = ops
            .iter()
            .zip(&current)
            .zip(&files)
            .enumerate()
            .filter(|(_, ((op, cur), f))| {
                cur.as_ref().map(Record::revision) != op.expected
                    || op
                        .write
                        .as_ref()
                        .is_some_and(|w| self.held_for_other(f, w.claimant).is_some())
            })
            .map(|(i, ((_, cur), _))| (i, cur.clone()))
            .collect();
        if !failed.is_empty() {
            return Ok(CommitOutcome::Conflict(failed));
        }

        let writes: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].write.is_some()).collect();
        let mut versions = vec![None; ops.len()];
        match writes.as_slice() {
            [] => {}
            // One rename is atomic as it is.
            &[i] => {
                if let Some(w) = &ops[i].write {
                    versions[i] =
                        Some(self.replace(&ops[i].key, &files[i], current[i].as_ref(), w)?);
                }
            }
            _ => {
                // The stripes of the written scopes, each once.
                let mut marked: Vec<usize> = writes.iter().map(|&i| lock_of[i]).collect();
                marked.sort_unstable();
                marked.dedup();
                let marked: Vec<&ScopeLock> = marked.iter().filter_map(|&l| locks.get(l)).collect();
                let state = Current {
                    live: &current,
                    raw: &raw,
                };
                self.journaled(ops, &files, &state, &marked, &writes, &mut versions, until)?;
            }
        }
        drop(locks);
        Ok(CommitOutcome::Committed(versions))
    }

    /// Steps 1 to 5 of the module docs for the ops `writes` (at least two), every lock held;
    /// `written` are the locks of their stripes, each once.
    #[allow(clippy::too_many_arguments)]
    fn journaled(
        &self,
        ops: &[OwnedOp],
        files: &[Files],
        current: &Current<'_>,
        written: &[&ScopeLock],
        writes: &[usize],
        versions: &mut [Option<u64>],
        until: Until,
    ) -> Result<(), Error> {
        let id = rand::random::<u64>();
        // 1. The new records, each in its temp file; removed on an early return.
        let mut temps = TempFiles::default();
        for &i in writes {
            let Some(w) = &ops[i].write else { continue };
            let (version, bytes) = self.encode(&ops[i].key, current.live[i].as_ref(), w)?;
            let path = self.dir.join(name::temp_file_name(&files[i].stem, id));
            self.write_temp(&path, &bytes, &mut temps)?;
            versions[i] = Some(version);
        }
        // 2. The markers; emptied again on an early return.
        let mut markers = Markers {
            locks: Vec::with_capacity(written.len()),
        };
        for lock in written {
            // Pushed first: a marker written in part is emptied too.
            markers.locks.push(lock);
            lock.set_marker(id)
                .map_err(|e| io_error("write the commit marker", lock.path(), e))?;
        }
        if until == Until::Markers {
            crash(temps, markers);
            return Ok(());
        }
        // 3. The intent record: once it is durable, the commit is decided. It names what is in
        // the files now, an expired record too: recovery compares with that.
        let intent = Intent {
            id,
            writes: writes
                .iter()
                .map(|&i| {
                    (
                        ops[i].key.clone(),
                        current.raw[i].as_ref().map(Record::revision),
                    )
                })
                .collect(),
        };
        self.write_intent(&intent)?;
        temps.disarm();
        markers.locks.clear();
        if until == Until::Intent {
            return Ok(());
        }
        // 4. The renames.
        for (n, &i) in writes.iter().enumerate() {
            if until == Until::Renames(n) {
                return Ok(());
            }
            let temp = self.dir.join(name::temp_file_name(&files[i].stem, id));
            if let Err(e) = fs::rename(&temp, &files[i].record) {
                let first = io_error("rename into place", &files[i].record, e);
                return self.finish_decided(&intent, written, first);
            }
        }
        // A failed sync leaves the new records in place but maybe not durable, and the intent
        // record with them, so that a crash rolls the commit forward again.
        self.sync_dir(
            "fsync directory after the renames of a commit (the new records are in place but \
             may not survive a crash; its intent record stays until they are known to)",
        )?;
        // 5. Done: the intent record and the markers go. Left behind, they are found stale
        // (every temp file renamed) and removed by the next taker of a lock.
        let path = self.intent_path(id);
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "intent record not removed");
        }
        for lock in written {
            if let Err(e) = lock.clear_marker() {
                tracing::debug!(path = %lock.path().display(), error = %e, "commit marker left");
            }
        }
        Ok(())
    }

    /// A rename of a decided commit failed with `first`: rolls the rest forward now, as
    /// recovery would; if that fails too, the commit is left to recovery and the error says so.
    fn finish_decided(
        &self,
        intent: &Intent,
        locks: &[&ScopeLock],
        first: Error,
    ) -> Result<(), Error> {
        match self.roll_forward(intent, locks) {
            Ok(()) => Ok(()),
            Err(again) => {
                tracing::warn!(error = %again, "a decided commit could not be finished");
                Err(Error::CommitUnknown {
                    scope: shorten(intent.writes.first().map_or("", |(k, _)| k.as_str())),
                    reason: format!(
                        "the commit is decided (its intent record {} is written) but {first}; \
                         it is completed when one of its scopes is next read or written, or the \
                         store opened",
                        self.intent_path(intent.id).display()
                    ),
                })
            }
        }
    }

    /// Writes the intent record and syncs it and the directory; removes it on failure.
    fn write_intent(&self, intent: &Intent) -> Result<(), Error> {
        let path = self.intent_path(intent.id);
        let bytes =
            intent::encode(intent).map_err(|e| Error::backend("file", BackendKind::Other, e))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("create the intent record", &path, e))?;
        let written = file
            .write_all(&bytes)
            .map_err(|e| io_error("write", &path, e))
            .and_then(|()| {
                if self.fsync {
                    file.sync_all().map_err(|e| io_error("fsync", &path, e))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| self.sync_dir("fsync directory after the intent record"));
        if written.is_err() {
            drop(file);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "intent record not removed");
            }
        }
        written
    }

    /// The file of the intent record of commit `id`.
    pub(super) fn intent_path(&self, id: u64) -> PathBuf {
        self.dir.join(name::intent_file_name(id))
    }

    /// Whether the intent record of commit `id` is there.
    pub(super) fn intent_exists(&self, id: u64) -> Result<bool, Error> {
        let path = self.intent_path(id);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("stat", &path, e)),
        }
    }

    /// The bytes of the intent record at `path`, `None` when it is gone.
    pub(super) fn read_intent(&self, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open the intent record", path, e)),
        };
        let mut bytes = Vec::new();
        file.take(intent::MAX_INTENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read the intent record", path, e))?;
        Ok(Some(bytes))
    }

    /// Takes the locks at `paths` (in stripe order, each once), each in its turn, until
    /// `deadline`. A lock
    /// whose file names a commit that is still pending lets everything go, settles that commit
    /// and starts over, so that no caller acts on a scope a cut-short commit has not finished.
    pub(super) fn lock_scopes(
        &self,
        paths: &[&Path],
        deadline: Instant,
    ) -> Result<Vec<ScopeLock>, Error> {
        let mut settled = 0;
        'again: loop {
            let mut held = Vec::with_capacity(paths.len());
            for path in paths {
                let lock = self.lock_until(path, deadline)?;
                let Some(id) = self.pending(&lock)? else {
                    held.push(lock);
                    continue;
                };
                drop(lock);
                drop(held);
                settled += 1;
                if settled > MAX_SETTLES {
                    return Err(Error::backend_unsent(
                        "file",
                        BackendKind::Other,
                        format!(
                            "{} kept naming unfinished commits; nothing was written",
                            path.display()
                        ),
                    ));
                }
                self.recover(id, deadline)?;
                continue 'again;
            }
            return Ok(held);
        }
    }

    /// The commit still pending on the scope of `lock` (held), by the marker in its lock file;
    /// a marker whose intent record is gone (or garbage) is emptied.
    fn pending(&self, lock: &ScopeLock) -> Result<Option<u64>, Error> {
        let marker = lock
            .marker()
            .map_err(|e| io_error("read", lock.path(), e))?;
        match marker {
            Marker::Empty => return Ok(None),
            Marker::Commit(id) if self.intent_exists(id)? => return Ok(Some(id)),
            Marker::Commit(_) | Marker::Garbage => {}
        }
        lock.clear_marker()
            .map_err(|e| io_error("empty the lock file", lock.path(), e))?;
        Ok(None)
    }

    /// Whether the lock file of `lock` (held) names a pending commit; changes nothing.
    pub(super) fn names_pending(&self, lock: &ScopeLock) -> Result<bool, Error> {
        match lock.marker() {
            Ok(Marker::Commit(id)) => self.intent_exists(id),
            Ok(_) => Ok(false),
            Err(e) => Err(io_error("read", lock.path(), e)),
        }
    }

    /// Settles commit `id` if its intent record is still there: forward when whole, back when
    /// torn (see the module docs), holding the locks of its scopes in stripe order, waiting for
    /// them until `deadline`. Several processes may call it at once: one settles, the others
    /// then find the intent gone.
    pub(super) fn recover(&self, id: u64, deadline: Instant) -> Result<(), Error> {
        let path = self.intent_path(id);
        for _ in 0..MAX_SETTLES {
            let Some(bytes) = self.read_intent(&path)? else {
                return Ok(());
            };
            let mut stems: Vec<String> = match intent::decode(&bytes, id) {
                Ok(intent) => intent.writes.iter().map(|(k, _)| name::stem(k)).collect(),
                // Torn, or still being written: its scopes are those of its temp files.
                Err(_) => self.temp_stems(id)?,
            };
            stems.sort_unstable();
            stems.dedup();
            if stems.is_empty() {
                // Torn, and no temp file of its commit left. Still torn now, it never will be
                // whole: a live commit keeps its temp files until its intent is whole, so its
                // process died (and maybe another rolled it back meanwhile). Whole now, it
                // was being written: look again.
                match self.read_intent(&path)? {
                    None => return Ok(()),
                    Some(bytes) if intent::decode(&bytes, id).is_ok() => continue,
                    Some(_) => {
                        remove_intent(&path)?;
                        return Ok(());
                    }
                }
            }
            let mut lock_paths: Vec<std::path::PathBuf> =
                stems.iter().map(|stem| self.lock_path(stem)).collect();
            lock_paths.sort_unstable();
            lock_paths.dedup();
            let mut locks = Vec::with_capacity(lock_paths.len());
            for lock_path in &lock_paths {
                locks.push(self.lock_until(lock_path, deadline)?);
            }
            // Under the locks: its commit is over, one way or the other.
            let Some(bytes) = self.read_intent(&path)? else {
                return Ok(());
            };
            let held: Vec<&ScopeLock> = locks.iter().collect();
            match intent::decode(&bytes, id) {
                Ok(intent) => {
                    let all_held = intent
                        .writes
                        .iter()
                        .all(|(k, _)| stems.binary_search(&name::stem(k)).is_ok());
                    if !all_held {
                        continue;
                    }
                    tracing::info!(commit = %format!("{id:016x}"), "rolling a cut-short commit forward");
                    return self.roll_forward(&intent, &held);
                }
                Err(why) => {
                    let now = self.temp_stems(id)?;
                    if !now.iter().all(|s| stems.binary_search(s).is_ok()) {
                        continue;
                    }
                    tracing::info!(commit = %format!("{id:016x}"), why, "rolling back a commit whose intent record is torn");
                    return self.roll_back(id, &now, &held);
                }
            }
        }
        Err(Error::backend_unsent(
            "file",
            BackendKind::Other,
            format!(
                "the cut-short commit {} changed under every look; nothing was written",
                path.display()
            ),
        ))
    }

    /// Settles the commits `ids` (as `open` does); one that cannot be settled now is left, with
    /// a warning, to the next taker of its locks.
    pub(super) fn recover_all(&self, ids: Vec<u64>) {
        for id in ids {
            if let Err(e) = self.recover(id, self.deadline()) {
                tracing::warn!(commit = %format!("{id:016x}"), error = %e, "a cut-short commit is left for later");
            }
        }
    }

    /// The stems of the temp files of commit `id`.
    fn temp_stems(&self, id: u64) -> Result<Vec<String>, Error> {
        let mut stems = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))? {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let file_name = entry.file_name();
            if let Some((stem, _)) = file_name
                .to_str()
                .and_then(name::temp_parts)
                .filter(|(_, t)| *t == id)
            {
                stems.push(stem.to_owned());
            }
        }
        stems.sort_unstable();
        Ok(stems)
    }

    /// Rolls the decided commit `intent` forward, holding the locks of its scopes (`locks`):
    /// every temp file still there is renamed over its record, then the intent record goes.
    fn roll_forward(&self, intent: &Intent, locks: &[&ScopeLock]) -> Result<(), Error> {
        enum Temp {
            Gone,
            Whole,
            Bad(String),
        }
        let mut temps = Vec::with_capacity(intent.writes.len());
        for (key, _) in &intent.writes {
            let files = self.files(key)?;
            let path = self.dir.join(name::temp_file_name(&files.stem, intent.id));
            let state = match fs::read(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Temp::Gone,
                Err(e) => return Err(io_error("read", &path, e)),
                Ok(bytes) => match record::decode(&bytes) {
                    Ok((k, _)) if k == *key => Temp::Whole,
                    Ok((k, _)) => Temp::Bad(format!("it holds scope {:?}", shorten(&k))),
                    Err(d) => Temp::Bad(d),
                },
            };
            temps.push((files, path, state));
        }
        // Temp files are synced before the intent record is written, so a damaged one (a power
        // loss without fsync) before any rename means the commit is better undone.
        let untouched = temps.iter().all(|(_, _, t)| !matches!(t, Temp::Gone));
        if untouched && temps.iter().any(|(_, _, t)| matches!(t, Temp::Bad(_))) {
            tracing::warn!(commit = %format!("{:016x}", intent.id), "a temp file of a cut-short commit is damaged: rolled back");
            let stems: Vec<String> = temps.into_iter().map(|(f, _, _)| f.stem).collect();
            return self.roll_back(intent.id, &stems, locks);
        }
        for ((key, replaces), (files, path, state)) in intent.writes.iter().zip(&temps) {
            let keep = match state {
                Temp::Gone => continue,
                Temp::Bad(why) => {
                    tracing::error!(path = %path.display(), why, "a damaged temp file of a cut-short commit is dropped");
                    false
                }
                Temp::Whole => match self.read(key, &files.record) {
                    Ok(cur) => {
                        let at = cur.as_ref().map(Record::revision) == *replaces;
                        if !at {
                            tracing::error!(path = %files.record.display(), "the record is not at the revision a cut-short commit replaced: its new record is dropped");
                        }
                        at
                    }
                    Err(e @ Error::Corrupt { .. }) => {
                        tracing::error!(error = %e, "a cut-short commit does not write over a corrupt record");
                        false
                    }
                    Err(e) => return Err(e),
                },
            };
            if keep {
                fs::rename(path, &files.record)
                    .map_err(|e| io_error("rename into place", &files.record, e))?;
            } else if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "temp file not removed");
            }
        }
        // The renames are durable before the intent record goes.
        self.sync_dir("fsync directory after rolling a commit forward")?;
        remove_intent(&self.intent_path(intent.id))?;
        clear_markers(locks, intent.id);
        Ok(())
    }

    /// Rolls the commit `id` back, holding the locks of `stems`: the intent record goes first
    /// (then the commit did not happen), then its temp files.
    fn roll_back(&self, id: u64, stems: &[String], locks: &[&ScopeLock]) -> Result<(), Error> {
        remove_intent(&self.intent_path(id))?;
        for stem in stems {
            let path = self.dir.join(name::temp_file_name(stem, id));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "temp file not removed")
                }
            }
        }
        clear_markers(locks, id);
        Ok(())
    }
}

fn remove_intent(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove the intent record", path, e)),
    }
}

/// Empties the lock files of `locks` that name commit `id` (or hold garbage). Best effort: a
/// marker left behind names a commit that is gone, and the next taker of the lock empties it.
fn clear_markers(locks: &[&ScopeLock], id: u64) {
    for lock in locks {
        let ours = matches!(lock.marker(), Ok(Marker::Commit(m)) if m == id)
            || matches!(lock.marker(), Ok(Marker::Garbage));
        if ours {
            if let Err(e) = lock.clear_marker() {
                tracing::debug!(path = %lock.path().display(), error = %e, "commit marker left");
            }
        }
    }
}

/// The records of a commit's scopes as it read them, by op: `raw` as the files hold them,
/// `live` with the expired ones absent.
struct Current<'a> {
    live: &'a [Option<Record>],
    raw: &'a [Option<Record>],
}

/// Markers written by a commit that has not reached its intent record: emptied on drop.
struct Markers<'a> {
    locks: Vec<&'a ScopeLock>,
}

impl Drop for Markers<'_> {
    fn drop(&mut self) {
        for lock in &self.locks {
            if let Err(e) = lock.clear_marker() {
                tracing::debug!(path = %lock.path().display(), error = %e, "commit marker left");
            }
        }
    }
}

/// A simulated crash: what was written stays.
fn crash(mut temps: TempFiles, mut markers: Markers<'_>) {
    temps.disarm();
    markers.locks.clear();
}
