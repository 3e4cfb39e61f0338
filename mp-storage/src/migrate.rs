//! Finishing a schema migration: [`Storage::migrate_all`] rewrites every scope of a type that is
//! stored at an older schema version, so that the migration can be dropped from the code.

use std::fmt;
use std::marker::PhantomData;

use futures::StreamExt;

use crate::engine::{Engine, Rewritten};
use crate::{Error, ErrorCategory, Scope};

/// The batch size of [`MigrateAll`] unless [`MigrateAll::batch_size`] says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 100;

/// The most failures a [`MigrationReport`] lists; [`MigrationReport::failed`] counts them all.
pub const MAX_LISTED_FAILURES: usize = 100;

/// The progress callback of a run.
type OnProgress<'a> = Box<dyn FnMut(&MigrationProgress) + Send + 'a>;

/// How many scopes of a batch are rewritten at once.
const CONCURRENCY: usize = 8;

/// A rewrite of every scope of type `T` to `T`'s schema version, made by
/// [`Storage::migrate_all`](crate::Storage::migrate_all); set it up, then [`run`](MigrateAll::run)
/// it.
///
/// The names are listed once, when the run starts, sorted byte-wise, and taken in batches of
/// [`batch_size`](MigrateAll::batch_size). Each scope stored below `T::VERSION` goes through the
/// ordinary update: loaded, migrated on decode (`migrate` or `migrate_from`), written back at
/// `T::VERSION` with a compare-and-swap, retried on conflicts, so writers running meanwhile
/// lose nothing. A scope already at `T::VERSION` is only read. After each batch the progress
/// callback sees the counts so far and the cursor: the last name done, from which
/// [`resume_after`](MigrateAll::resume_after) goes on if the run is stopped.
///
/// A scope that cannot be migrated (its migration fails, it does not decode, the policy's
/// attempts ran out, …) is counted, named in the report with its error, and left as it is; the
/// run goes on. A backend failure (a lost connection, a timeout, a full disk) ends the run with
/// that error: resume from the last cursor the callback saw.
#[must_use = "a migration does nothing until `run` is awaited"]
pub struct MigrateAll<'a, T> {
    engine: &'a Engine,
    prefix: String,
    batch_size: usize,
    resume_after: Option<String>,
    on_progress: Option<OnProgress<'a>>,
    ty: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for MigrateAll<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateAll")
            .field("type", &std::any::type_name::<T>())
            .field("prefix", &self.prefix)
            .field("batch_size", &self.batch_size)
            .field("resume_after", &self.resume_after)
            .finish_non_exhaustive()
    }
}

/// Where a [`MigrateAll`] run stands, after each batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationProgress {
    /// The scopes this run goes through: those listed after the resume cursor.
    pub total: u64,
    /// The scopes done so far (each counted once below).
    pub scanned: u64,
    /// Written at the type's schema version by this run.
    pub migrated: u64,
    /// Already at the type's schema version (or newer, under `#[scope(read_newer)]`).
    pub current: u64,
    /// Removed since they were listed.
    pub absent: u64,
    /// Not migrated: left as they are (see [`MigrationReport::failures`]).
    pub failed: u64,
    /// The last name done, as the typed calls take it (without the type's namespace): hand it
    /// to [`MigrateAll::resume_after`] to go on from there.
    pub cursor: Option<String>,
}

/// What a [`MigrateAll`] run did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The scopes the run went through.
    pub scanned: u64,
    /// Written at the type's schema version by this run.
    pub migrated: u64,
    /// Already at the type's schema version (or newer, under `#[scope(read_newer)]`).
    pub current: u64,
    /// Removed since they were listed.
    pub absent: u64,
    /// Not migrated, left as they are.
    pub failed: u64,
    /// The first [`MAX_LISTED_FAILURES`] of them, in name order, with their errors.
    pub failures: Vec<MigrationFailure>,
    /// The last name done (`None` when there was nothing to do): a later run that resumes after
    /// it only sees scopes created since, with names sorting after it.
    pub cursor: Option<String>,
}

/// A scope a [`MigrateAll`] run could not migrate.
#[derive(Debug)]
#[non_exhaustive]
pub struct MigrationFailure {
    /// Its name, as the typed calls take it (without the type's namespace).
    pub name: String,
    /// Why: [`Error::Migration`], [`Error::Decode`], [`Error::SchemaTooNew`],
    /// [`Error::Conflict`], [`Error::TooLarge`], …
    pub error: Error,
}

impl<'a, T: Scope> MigrateAll<'a, T> {
    pub(crate) fn new(engine: &'a Engine) -> Self {
        MigrateAll {
            engine,
            prefix: String::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            resume_after: None,
            on_progress: None,
            ty: PhantomData,
        }
    }

    /// Only the names that start with `prefix`, inside `T`'s namespace (as
    /// [`Storage::list_as`](crate::Storage::list_as) takes it). Default: every scope of `T`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many scopes make a batch, between two progress reports (at least 1; default
    /// [`DEFAULT_BATCH_SIZE`]).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Starts after `cursor`: a [`MigrationProgress::cursor`] of an earlier run that stopped.
    pub fn resume_after(mut self, cursor: impl Into<String>) -> Self {
        self.resume_after = Some(cursor.into());
        self
    }

    /// Calls `f` after every batch with the counts so far and the cursor to resume from.
    pub fn on_progress(mut self, f: impl FnMut(&MigrationProgress) + Send + 'a) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// Runs the rewrite to its end; see [`MigrateAll`].
    ///
    /// # Errors
    /// An invalid prefix ([`Error::InvalidName`]), or a backend failure, which ends the run
    /// (what was done stays done). A scope that cannot be migrated is not an error of the run:
    /// it is in the report.
    pub async fn run(mut self) -> Result<MigrationReport, Error> {
        let engine = self.engine;
        let ns = T::NAMESPACE.len();
        let mut names: Vec<String> = engine
            .list(&format!("{}{}", T::NAMESPACE, self.prefix))
            .await?
            .into_iter()
            .map(|mut n| n.split_off(ns))
            .collect();
        if let Some(after) = &self.resume_after {
            names.retain(|n| n > after);
        }
        let mut progress = MigrationProgress {
            total: names.len() as u64,
            ..MigrationProgress::default()
        };
        let mut failures = Vec::new();
        for batch in names.chunks(self.batch_size) {
            // The futures made up front (not by a closure inside the stream), so that the run's
            // future is `Send`.
            let rewrites: Vec<_> = batch
                .iter()
                .map(|name| rewrite::<T>(engine, name))
                .collect();
            let mut done = futures::stream::iter(rewrites).buffered(CONCURRENCY);
            while let Some((name, outcome)) = done.next().await {
                match outcome {
                    Ok(Rewritten::Migrated) => progress.migrated += 1,
                    Ok(Rewritten::Current) => progress.current += 1,
                    Ok(Rewritten::Absent) => progress.absent += 1,
                    Err(e) if ends_the_run(&e) => return Err(e),
                    Err(error) => {
                        tracing::debug!(name = %crate::error::shorten(name), %error, "not migrated");
                        progress.failed += 1;
                        if failures.len() < MAX_LISTED_FAILURES {
                            failures.push(MigrationFailure {
                                name: name.clone(),
                                error,
                            });
                        }
                    }
                }
                progress.scanned += 1;
            }
            progress.cursor = batch.last().cloned();
            if let Some(f) = &mut self.on_progress {
                f(&progress);
            }
            // A long run on a backend that answers at once (memory) must not hold its worker:
            // between batches, other tasks (and whoever would stop this one) get a turn.
            tokio::task::yield_now().await;
        }
        Ok(MigrationReport {
            scanned: progress.scanned,
            migrated: progress.migrated,
            current: progress.current,
            absent: progress.absent,
            failed: progress.failed,
            failures,
            cursor: progress.cursor,
        })
    }
}

/// Rewrites scope `name`, handing the name back beside the outcome.
async fn rewrite<'n, T: Scope>(
    engine: &Engine,
    name: &'n String,
) -> (&'n String, Result<Rewritten, Error>) {
    (name, engine.rewrite::<T>(name).await)
}

/// Whether an error of one scope stops the run: the backend is failing, so the next scopes would
/// fail the same way.
fn ends_the_run(e: &Error) -> bool {
    matches!(
        e.category(),
        ErrorCategory::Unavailable | ErrorCategory::Backend
    )
}

#[cfg(test)]
mod tests {
    use crate::Storage;

    #[test]
    fn the_run_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(st: &Storage) {
            let mut seen = 0;
            let run = st
                .migrate_all::<u64>()
                .on_progress(|p| seen += p.scanned)
                .run();
            assert_send(&run);
        }
        let _ = check;
    }
}
