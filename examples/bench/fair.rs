//! The fairness scenario: several OS processes, each with 32 tasks, update one scope for a few
//! seconds; every process's share of the commits and its latency are compared with one process
//! running all the tasks alone, in the same run.
//!
//! Each process is this program again (`mp-bench --worker …`): it waits for a common start
//! time, runs its tasks, and prints one JSON line with its figures.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mp_storage::Storage;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::{BenchError, Counter};

/// What one worker process measured.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Worker {
    pub ops: u64,
    pub errors: u64,
    pub attempts: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub secs: f64,
    /// The engine's counters over the run (conflicts, reservations, refusals, backoffs).
    #[serde(default)]
    pub stats: Option<serde_json::Value>,
}

/// One row of the fairness table: `procs` processes × `tasks` tasks.
pub struct FairRow {
    pub driver: String,
    pub procs: usize,
    pub tasks: usize,
    pub workers: Vec<Worker>,
    /// The single process running `procs * tasks` tasks, measured just before.
    pub alone: Worker,
    pub exact: bool,
}

impl FairRow {
    fn total(&self) -> u64 {
        self.workers.iter().map(|w| w.ops).sum()
    }

    fn secs(&self) -> f64 {
        self.workers.iter().map(|w| w.secs).fold(0.0, f64::max)
    }

    pub fn json(&self) -> serde_json::Value {
        let total = self.total().max(1) as f64;
        let alone_rate = self.alone.ops as f64 / self.alone.secs.max(1e-9);
        let rate = self.total() as f64 / self.secs().max(1e-9);
        let attempts: u64 = self.workers.iter().map(|w| w.attempts).sum();
        serde_json::json!({
            "driver": self.driver,
            "scenario": "fairness",
            "procs": self.procs,
            "tasks_per_proc": self.tasks,
            "ops_per_sec": rate.round(),
            "alone_ops_per_sec": alone_rate.round(),
            "throughput_ratio": (rate / alone_rate.max(1e-9) * 1000.0).round() / 1000.0,
            "shares": self.workers.iter().map(|w| (w.ops as f64 / total * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            "p99_us": self.workers.iter().map(|w| w.p99_us).collect::<Vec<_>>(),
            "max_us": self.workers.iter().map(|w| w.max_us).collect::<Vec<_>>(),
            "alone_p99_us": self.alone.p99_us,
            "alone_max_us": self.alone.max_us,
            "attempts_per_commit": (attempts as f64 / total * 1000.0).round() / 1000.0,
            "stats": self.workers.iter().map(|w| w.stats.clone()).collect::<Vec<_>>(),
            "exact": self.exact,
        })
    }
}

/// Prints the fairness table.
pub fn print_table(rows: &[FairRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<7} {:>9} {:>9} {:>7} {:<24} {:>12} {:>13} {:>9} {:>7} {:>5}",
        "driver",
        "procs",
        "ops/s",
        "ratio",
        "shares",
        "worst p99",
        "worst max",
        "att/cmt",
        "alone",
        "exact"
    );
    for r in rows {
        let j = r.json();
        let total = r.total().max(1) as f64;
        let shares: Vec<String> = r
            .workers
            .iter()
            .map(|w| format!("{:.0}%", w.ops as f64 / total * 100.0))
            .collect();
        let worst_p99 = r.workers.iter().map(|w| w.p99_us).max().unwrap_or(0);
        let worst_max = r.workers.iter().map(|w| w.max_us).max().unwrap_or(0);
        println!(
            "{:<7} {:>9} {:>9} {:>7.2} {:<24} {:>5.1}x {:>4}ms {:>5.1}x {:>5}ms {:>9.2} {:>7} {:>5}",
            r.driver,
            format!("{}x{}", r.procs, r.tasks),
            j["ops_per_sec"].as_f64().unwrap_or(0.0),
            j["throughput_ratio"].as_f64().unwrap_or(0.0),
            shares.join(" "),
            worst_p99 as f64 / r.alone.p99_us.max(1) as f64,
            worst_p99 / 1000,
            worst_max as f64 / r.alone.max_us.max(1) as f64,
            worst_max / 1000,
            j["attempts_per_commit"].as_f64().unwrap_or(0.0),
            r.alone.ops,
            r.exact
        );
    }
    println!(
        "(ratio: total rate against one process running all the tasks; worst p99 and max: the"
    );
    println!(" worst process's, as a multiple of that one process's and in ms)");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `mp-bench --worker URL PREFIX SCOPE TASKS SECS START_MS`: runs `TASKS` tasks incrementing
/// `SCOPE` from `START_MS` (ms since 1970) for `SECS` seconds, then prints its figures.
pub async fn worker(args: &[String]) -> Result<(), BenchError> {
    let [url, prefix, scope, tasks, secs, start] = args else {
        return Err("--worker URL PREFIX SCOPE TASKS SECS START_MS".into());
    };
    let tasks: usize = tasks.parse()?;
    let secs: f64 = secs.parse()?;
    let start: u64 = start.parse()?;
    // `MP_BENCH_IMMEDIATE_RETRIES=0` runs the workers with the backoff of 0.1 (every conflict
    // after the first backs off), to compare with the default in one run.
    let mut policy = mp_storage::RetryPolicy::default();
    if let Ok(n) = std::env::var("MP_BENCH_IMMEDIATE_RETRIES") {
        policy = policy.immediate_retries(n.parse()?);
    }
    // `MP_BENCH_RESERVATION_MS=0` runs them without reservations (10 is the default).
    if let Ok(ms) = std::env::var("MP_BENCH_RESERVATION_MS") {
        policy = policy.reservation(Duration::from_millis(ms.parse()?));
    }
    let st = Storage::builder()
        .key_prefix(prefix)
        .retry(policy)
        .open(url)
        .await?;
    let w = run_tasks(&st, scope, tasks, secs, start).await;
    println!("{}", serde_json::to_string(&w)?);
    Ok(())
}

async fn run_tasks(st: &Storage, scope: &str, tasks: usize, secs: f64, start: u64) -> Worker {
    let wait = start.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let before = st.stats();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let began = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let st = st.clone();
        let scope = scope.to_owned();
        joins.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                match st
                    .scoped(&scope, |c: &mut Counter| {
                        c.count += 1;
                        c.count
                    })
                    .await
                {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("mp-bench worker: {e}");
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for j in joins {
        if let Ok((l, e)) = j.await {
            lat.extend(l);
            errors += e;
        }
    }
    let secs = began.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let after = st.stats();
    let stats = serde_json::json!({
        "conflicts": after.conflicts - before.conflicts,
        "reservations": after.reservations - before.reservations,
        "refused": after.refused - before.refused,
        "backoffs": after.backoffs - before.backoffs,
        "gave_up": after.gave_up - before.gave_up,
    });
    Worker {
        stats: Some(stats),
        ops: lat.len() as u64,
        errors,
        attempts: after.attempts - before.attempts,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: lat.last().copied().unwrap_or(0),
        secs,
    }
}

/// Runs `procs` worker processes of `tasks` tasks each on one fresh scope for `secs`.
async fn processes(
    url: &str,
    prefix: &str,
    scope: &str,
    procs: usize,
    tasks: usize,
    secs: f64,
) -> Result<Vec<Worker>, BenchError> {
    let exe = std::env::current_exe()?;
    let start = now_ms() + 700;
    let mut children = Vec::new();
    for _ in 0..procs {
        children.push(
            Command::new(&exe)
                .args([
                    "--worker",
                    url,
                    prefix,
                    scope,
                    &tasks.to_string(),
                    &secs.to_string(),
                    &start.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let mut out = Vec::new();
    for c in children {
        let o = c.wait_with_output().await?;
        if !o.status.success() {
            return Err(format!("a worker failed: {}", o.status).into());
        }
        let line = String::from_utf8_lossy(&o.stdout);
        out.push(serde_json::from_str(line.trim())?);
    }
    Ok(out)
}

/// The fairness rows of one driver: 2 and 4 processes × 32 tasks, each against one process
/// running all the tasks, every count checked.
pub async fn bench(url: &str, secs: f64, rows: &mut Vec<FairRow>) -> Result<(), BenchError> {
    if url.starts_with("memory:") {
        // Each process would have a store of its own: nothing shared to be fair about.
        eprintln!("mp-bench: {url}: fairness skipped: a memory store is not shared by processes");
        return Ok(());
    }
    // Four processes with MySQL's default pool (up to 100 connections each) can pass
    // MariaDB's default limit of 151 connections: give each a pool of 16, as a deployment of
    // several servers on one database would.
    let bounded;
    let url = if url.starts_with("mysql") && !url.contains("pool_max=") {
        bounded = format!(
            "{url}{}pool_max=16",
            if url.contains('?') { '&' } else { '?' }
        );
        bounded.as_str()
    } else {
        url
    };
    let prefix = format!("mp-bench-fair:{:08x}:", rand::random::<u32>());
    let st = Storage::builder().key_prefix(&prefix).open(url).await?;
    let driver = st.driver_name().to_owned();
    for procs in [2usize, 4] {
        let tasks = 32;
        let alone_scope = format!("alone{procs}");
        let alone = processes(url, &prefix, &alone_scope, 1, procs * tasks, secs).await?;
        let shared_scope = format!("shared{procs}");
        let workers = processes(url, &prefix, &shared_scope, procs, tasks, secs).await?;
        let count = |scope: String| {
            let st = st.clone();
            async move {
                st.get::<Counter>(&scope)
                    .await
                    .map(|c| c.map_or(0, |c| c.count))
            }
        };
        let alone = alone.into_iter().next().unwrap_or_default();
        let exact = count(alone_scope.clone()).await? == alone.ops
            && count(shared_scope.clone()).await? == workers.iter().map(|w| w.ops).sum::<u64>()
            && alone.errors == 0
            && workers.iter().all(|w| w.errors == 0);
        let row = FairRow {
            driver: driver.clone(),
            procs,
            tasks,
            workers,
            alone,
            exact,
        };
        println!("{}", row.json());
        rows.push(row);
        st.remove(&alone_scope).await?;
        st.remove(&shared_scope).await?;
    }
    Ok(())
}
