//! The embedded stores side by side: the file driver and the SQLite driver, both durable, on
//! the same disk in the same run, with the same tasks; and the disk space a small scope takes
//! in each (`fill`).
//!
//! `embedded` rows: for 1 task on 1 scope, and T tasks on T scopes of their own (8 and 64), each
//! driver runs twice, alternately (file, sqlite, file, sqlite); the ratio is sqlite over file.
//! The sqlite rows also give the jobs its writer committed per transaction (group commit).
//!
//! `fill` rows: N one-counter scopes written into a fresh store, then the bytes on disk per
//! scope (allocated blocks, and file lengths).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mp_storage::driver::sqlite::SqliteDriver;
use mp_storage::Storage;

use crate::{measure, BenchError, Counter, Library, Measure, Scenario, Subject};

/// One row of the side-by-side table.
pub struct EmbeddedRow {
    tasks: usize,
    file: f64,
    sqlite: f64,
    file_p99_us: u32,
    sqlite_p99_us: u32,
    jobs_per_transaction: f64,
    exact: bool,
}

/// One row of the fill table.
pub struct FillRow {
    driver: &'static str,
    scopes: usize,
    secs: f64,
    allocated: u64,
}

/// Runs the side-by-side rows in `dir` (a fresh directory, removed by the caller).
pub async fn compare(
    dir: &Path,
    secs: f64,
    shapes: &[usize],
    rows: &mut Vec<EmbeddedRow>,
) -> Result<(), BenchError> {
    let file_url = format!("file:{}", dir.join("files").display());
    let sqlite_url = format!("sqlite:{}", dir.join("scopes.db").display());
    let file = Storage::open(&file_url).await?;
    let driver = Arc::new(SqliteDriver::open(&sqlite_url).await?);
    let sqlite = Storage::with_driver(driver.clone())?;
    let subjects: [Arc<dyn Subject>; 2] = [
        Arc::new(Library { st: file.clone() }),
        Arc::new(Library { st: sqlite.clone() }),
    ];
    for &tasks in shapes {
        let mut m = [Measure::default(), Measure::default()];
        let mut exact = true;
        let before = driver.writer_stats();
        for round in 0..2 {
            let scopes: Arc<Vec<String>> = Arc::new(
                (0..tasks)
                    .map(|i| format!("e{tasks}:{round}:{i}"))
                    .collect(),
            );
            for (i, subject) in subjects.iter().enumerate() {
                let got = measure(
                    subject.clone(),
                    Scenario::Uncontended,
                    tasks,
                    scopes.clone(),
                    secs,
                )
                .await;
                exact &= crate::exact(subject.as_ref(), &got).await;
                m[i].merge(got);
            }
        }
        let after = driver.writer_stats();
        let [mut f, mut s] = m;
        let row = EmbeddedRow {
            tasks,
            file: f.ops_per_sec(),
            sqlite: s.ops_per_sec(),
            file_p99_us: f.percentile(0.99),
            sqlite_p99_us: s.percentile(0.99),
            jobs_per_transaction: (after.jobs - before.jobs) as f64
                / (after.transactions - before.transactions).max(1) as f64,
            exact,
        };
        println!(
            "{}",
            serde_json::json!({
                "scenario": "embedded",
                "tasks": tasks,
                "scopes": tasks,
                "file_ops_per_sec": row.file.round(),
                "sqlite_ops_per_sec": row.sqlite.round(),
                "ratio": crate::round(row.sqlite / row.file.max(1e-9), 2),
                "file_p99_us": row.file_p99_us,
                "sqlite_p99_us": row.sqlite_p99_us,
                "sqlite_jobs_per_transaction": crate::round(row.jobs_per_transaction, 1),
                "exact": row.exact,
            })
        );
        rows.push(row);
    }
    Ok(())
}

/// Fills `n` one-counter scopes into a fresh store of each embedded driver under `dir` (the
/// file driver gets at most `file_max`: a million files is a test of the file system) and
/// measures the disk space per scope.
pub async fn fill(
    dir: &Path,
    n: usize,
    file_max: usize,
    rows: &mut Vec<FillRow>,
) -> Result<(), BenchError> {
    // SQLite, durable, as a user would run it.
    let db = dir.join("fill.db");
    let driver = Arc::new(SqliteDriver::open(&format!("sqlite:{}", db.display())).await?);
    let st = Storage::with_driver(driver.clone())?;
    let secs = fill_scopes(&st, n).await?;
    driver.checkpoint().await?;
    let (allocated, length) = usage(&[
        db.clone(),
        PathBuf::from(format!("{}-wal", db.display())),
        PathBuf::from(format!("{}-shm", db.display())),
    ]);
    push_fill(rows, "sqlite", n, secs, allocated, length);
    drop(st);
    // The file driver, without fsync: the space does not depend on it.
    let files = dir.join("fill-files");
    let m = n.min(file_max);
    let st = Storage::open(&format!("file:{}?fsync=false", files.display())).await?;
    let secs = fill_scopes(&st, m).await?;
    let paths: Vec<PathBuf> = std::fs::read_dir(&files)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let (allocated, length) = usage(&paths);
    push_fill(rows, "file", m, secs, allocated, length);
    Ok(())
}

fn push_fill(
    rows: &mut Vec<FillRow>,
    driver: &'static str,
    scopes: usize,
    secs: f64,
    allocated: u64,
    length: u64,
) {
    let row = FillRow {
        driver,
        scopes,
        secs,
        allocated,
    };
    println!(
        "{}",
        serde_json::json!({
            "scenario": "fill",
            "driver": driver,
            "scopes": scopes,
            "secs": crate::round(secs, 1),
            "scopes_per_sec": (scopes as f64 / secs.max(1e-9)).round(),
            "bytes_on_disk": allocated,
            "bytes_per_scope": crate::round(allocated as f64 / scopes.max(1) as f64, 1),
            "file_bytes_per_scope": crate::round(length as f64 / scopes.max(1) as f64, 1),
        })
    );
    rows.push(row);
}

/// Writes `{"count":1}` into scopes `user:0` … from 256 tasks; returns the seconds it took.
async fn fill_scopes(st: &Storage, n: usize) -> Result<f64, BenchError> {
    let started = Instant::now();
    let tasks = 256.min(n.max(1));
    let mut joins = Vec::new();
    for t in 0..tasks {
        let st = st.clone();
        joins.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                st.set(&format!("user:{i}"), &Counter { count: 1 }).await?;
                i += tasks;
            }
            Ok::<(), mp_storage::Error>(())
        }));
    }
    for j in joins {
        j.await??;
    }
    let check: Option<Counter> = st.get(&format!("user:{}", n.saturating_sub(1))).await?;
    if n > 0 && check.map(|c| c.count) != Some(1) {
        return Err("the last scope filled reads back wrong".into());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The disk space of `paths` (those that exist): allocated blocks, and lengths.
fn usage(paths: &[PathBuf]) -> (u64, u64) {
    let mut allocated = 0;
    let mut length = 0;
    for p in paths {
        if let Ok(meta) = std::fs::metadata(p) {
            length += meta.len();
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                allocated += meta.blocks() * 512;
            }
            #[cfg(not(unix))]
            {
                allocated += meta.len();
            }
        }
    }
    (allocated, length)
}

/// Prints both tables.
pub fn print_tables(rows: &[EmbeddedRow], fills: &[FillRow]) {
    if !rows.is_empty() {
        println!();
        println!(
            "{:<8} {:>6} {:>11} {:>11} {:>7} {:>12} {:>14} {:>9} {:>5}",
            "embedded",
            "tasks",
            "file ops/s",
            "sqlite op/s",
            "ratio",
            "file p99 us",
            "sqlite p99 us",
            "jobs/txn",
            "exact"
        );
        for r in rows {
            println!(
                "{:<8} {:>6} {:>11.0} {:>11.0} {:>7.2} {:>12} {:>14} {:>9.1} {:>5}",
                "durable",
                format!("{0}x{0}", r.tasks),
                r.file,
                r.sqlite,
                r.sqlite / r.file.max(1e-9),
                r.file_p99_us,
                r.sqlite_p99_us,
                r.jobs_per_transaction,
                r.exact
            );
        }
        println!("(T tasks on T scopes of their own, durable writes; ratio: sqlite / file)");
    }
    if !fills.is_empty() {
        println!();
        println!(
            "{:<8} {:>10} {:>9} {:>12} {:>14} {:>15}",
            "fill", "scopes", "secs", "scopes/s", "bytes on disk", "bytes per scope"
        );
        for r in fills {
            println!(
                "{:<8} {:>10} {:>9.1} {:>12.0} {:>14} {:>15.1}",
                r.driver,
                r.scopes,
                r.secs,
                r.scopes as f64 / r.secs.max(1e-9),
                r.allocated,
                r.allocated as f64 / r.scopes.max(1) as f64
            );
        }
    }
}

/// Whether every row's counts were exact.
pub fn all_exact(rows: &[EmbeddedRow]) -> bool {
    rows.iter().all(|r| r.exact)
}
