//! `--only copy`: the `mp-storage` command-line tool moving N scopes (`--fill N`, default
//! 100,000; 2,000 with `--quick`) between two drivers, timed as an operator runs it: the
//! binary's `export` into a pipe that is thrown away, its `import` of that export, and its
//! `copy --to` (the two in one process), each as one process start to end.
//!
//! The pairs: file → sqlite, sqlite → redis, redis → postgres, sqlite → mysql (the server ones
//! when `MP_TEST_*_URL` names them). The scopes are small JSON objects, every other one with an
//! expiry, written under a name prefix of the run's own and removed afterwards. Each pair runs
//! export, import (into the empty destination), then copy (into the destination emptied again).
//!
//! The binary must be built first, with the drivers it should reach:
//! `cargo build --release -p mp-storage --features cli,redis,mysql,postgres`; it is looked up
//! next to mp-bench, or where `MP_STORAGE_BIN` says.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use mp_storage::{RawScope, Storage};

use crate::BenchError;

/// One pair's figures.
pub struct CopyRow {
    from: String,
    to: String,
    scopes: usize,
    export_secs: f64,
    import_secs: f64,
    copy_secs: f64,
}

/// The `mp-storage` binary.
fn binary() -> Result<PathBuf, BenchError> {
    if let Ok(path) = std::env::var("MP_STORAGE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()?
        .parent()
        .map(|d| d.join(format!("mp-storage{}", std::env::consts::EXE_SUFFIX)));
    match beside {
        Some(p) if p.exists() => Ok(p),
        _ => Err(
            "the mp-storage binary is not built: run `cargo build --release -p mp-storage \
                  --features cli,redis,mysql,postgres` first (or set MP_STORAGE_BIN)"
                .into(),
        ),
    }
}

fn driver_of(url: &str) -> String {
    url.split(':').next().unwrap_or_default().to_owned()
}

/// Runs the binary on `url` with `args`, `stdin` from a file or nothing, `stdout` to a file
/// or nowhere; returns the seconds it took.
fn timed(
    bin: &Path,
    url: &str,
    args: &[&str],
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Result<f64, BenchError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--url").arg(url).args(args).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p)?),
        None => Stdio::null(),
    });
    cmd.stdout(match stdout {
        Some(p) => Stdio::from(std::fs::File::create(p)?),
        None => Stdio::null(),
    });
    let started = Instant::now();
    let out = cmd.output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "mp-storage {args:?} on {} failed ({}): {}",
            mp_storage::redact_url(url),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(secs)
}

/// Writes `n` scopes under `prefix`, in commits of 64, 16 at once.
async fn fill(st: &Storage, prefix: &str, n: usize) -> Result<(), BenchError> {
    let at = mp_storage::driver::now_ms() + 3_600_000;
    let scopes = (0..n)
        .map(|i| {
            let raw = RawScope::new(
                format!("{{\"count\":{i},\"owner\":\"user-{i}\",\"tags\":[\"a\",\"b\"]}}"),
                1,
            )?
            .with_expires_at((i % 2 == 0).then_some(at));
            Ok((format!("{prefix}{i:06}"), raw))
        })
        .collect::<Result<Vec<_>, mp_storage::Error>>()?;
    futures::stream::iter(scopes.chunks(64))
        .map(|chunk| st.set_raw_many(chunk))
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// Removes every scope under `prefix`, many at once.
async fn clean(st: &Storage, prefix: &str) -> Result<usize, BenchError> {
    let names = st.list(prefix).await?;
    let n = names.len();
    futures::stream::iter(names)
        .map(|name| async move { st.remove(&name).await.map(|_| ()) })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    Ok(n)
}

/// The pairs this run can reach, on stores in `dir`.
fn pairs(dir: &Path) -> Vec<(String, String)> {
    let file = format!("file:{}?fsync=false", dir.join("files").display());
    let sqlite = format!("sqlite:{}", dir.join("scopes.db").display());
    let env = |var: &str| std::env::var(var).ok().filter(|u| !u.is_empty());
    let with = |url: String, opt: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{opt}")
    };
    let mut pairs = vec![(file, sqlite.clone())];
    let redis = env("MP_TEST_REDIS_URL").map(|u| with(u, "prefix=mp-bench-copy:"));
    let postgres = env("MP_TEST_POSTGRES_URL").map(|u| with(u, "table=mp_bench_copy"));
    // A pool of 16: the server's connections are shared (max_connections).
    let mysql = env("MP_TEST_MYSQL_URL").map(|u| with(u, "table=mp_bench_copy&pool_max=16"));
    if let Some(r) = &redis {
        pairs.push((sqlite.clone(), r.clone()));
        if let Some(p) = &postgres {
            pairs.push((r.clone(), p.clone()));
        }
    }
    if let Some(m) = mysql {
        pairs.push((sqlite, m));
    }
    pairs
}

/// Runs every pair with `n` scopes; prints a JSON line per pair.
pub async fn bench(n: usize, rows: &mut Vec<CopyRow>) -> Result<(), BenchError> {
    let bin = binary()?;
    let dir = std::env::temp_dir().join(format!("mp-bench-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_pairs(&bin, &dir, n, rows).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_pairs(
    bin: &Path,
    dir: &Path,
    n: usize,
    rows: &mut Vec<CopyRow>,
) -> Result<(), BenchError> {
    let export_file = dir.join("export.jsonl");
    for (from, to) in pairs(dir) {
        let prefix = format!("copy-{:08x}/", rand::random::<u32>());
        let src = Storage::open(&from).await?;
        let dst = Storage::open(&to).await?;
        fill(&src, &prefix, n).await?;
        let export_secs = timed(bin, &from, &["export", &prefix], None, Some(&export_file))?;
        let import_secs = timed(bin, &to, &["import"], Some(&export_file), None)?;
        let imported = clean(&dst, &prefix).await?;
        let copy_secs = timed(bin, &from, &["copy", "--to", &to, &prefix], None, None)?;
        let copied = dst.list(&prefix).await?.len();
        clean(&dst, &prefix).await?;
        clean(&src, &prefix).await?;
        if imported != n || copied != n {
            return Err(format!(
                "{} → {}: {imported} imported and {copied} copied of {n}",
                driver_of(&from),
                driver_of(&to)
            )
            .into());
        }
        let row = CopyRow {
            from: driver_of(&from),
            to: driver_of(&to),
            scopes: n,
            export_secs,
            import_secs,
            copy_secs,
        };
        println!(
            "{}",
            serde_json::json!({
                "scenario": "copy",
                "from": row.from,
                "to": row.to,
                "scopes": n,
                "export_secs": crate::round(export_secs, 2),
                "export_per_sec": (n as f64 / export_secs).round(),
                "import_secs": crate::round(import_secs, 2),
                "import_per_sec": (n as f64 / import_secs).round(),
                "copy_secs": crate::round(copy_secs, 2),
                "copy_per_sec": (n as f64 / copy_secs).round(),
            })
        );
        rows.push(row);
    }
    Ok(())
}

/// The table of the copy rows.
pub fn print_table(rows: &[CopyRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<8} {:<9} {:>8} {:>13} {:>13} {:>13}",
        "from", "to", "scopes", "export/s", "import/s", "copy/s"
    );
    for r in rows {
        let rate = |secs: f64| (r.scopes as f64 / secs).round();
        println!(
            "{:<8} {:<9} {:>8} {:>13} {:>13} {:>13}",
            r.from,
            r.to,
            r.scopes,
            rate(r.export_secs),
            rate(r.import_secs),
            rate(r.copy_secs)
        );
    }
}
