//! mp-bench: mp-storage against what a user would write instead, side by side in one run.
//!
//! Run: `cargo run --release -p mp-storage-examples --bin mp-bench -- --storage URL [--storage URL …]`
//! With `MP_TEST_REDIS_CLUSTER_URL` set (or a `redis-cluster://` URL given), the same scenarios
//! run on the cluster and a table sets each cluster row against the single-server Redis row of
//! the same run; a URL with `replica_wait=N` is labelled `+wait` and set against the rows that do
//! not wait (the cost of waiting for replicas).
//! (`--quick` for a smoke run of a few seconds; `--secs S` per measurement, default 3).
//! Without `--storage`, it benches `memory://`, a `file:` directory and a `sqlite:` database in
//! the system temp dir, and the servers named by `MP_TEST_REDIS_URL`, `MP_TEST_MYSQL_URL` and
//! `MP_TEST_POSTGRES_URL` when they are set. Backend calls per op are counted by the server
//! where it can tell (Redis `INFO commandstats`, MySQL `Questions`); for PostgreSQL (whose
//! statistics lag behind by up to seconds, and pg_stat_statements may not be loaded) they are
//! the engine's own count of driver calls, each one statement: the `postgres` test
//! `warm_update_is_one_statement` checks that count against `pg_stat_database`.
//!
//! With the `sqlite` feature (on by default) it also runs the file and SQLite drivers side by
//! side (`embedded`: 1, 8 and 64 tasks on scopes of their own, durable, the ratio sqlite / file)
//! and fills N one-counter scopes into each to measure the disk space per scope (`fill`,
//! `--fill N`, default 100,000, 2,000 with `--quick`; the file driver gets at most 20,000).
//! `--only scenarios|ttl|transfer|fairness|embedded|fill|locked|copy|watch` runs one part (`ttl`:
//! warm updates of a type with `ttl_secs` against the same type without, calls per update
//! included); `locked` (only when asked for) compares an uncontended exclusive update with
//! `SELECT … FOR UPDATE` (see `locked.rs`); `copy` (only when asked for) times the `mp-storage`
//! command-line tool's export, import and copy of `--fill N` scopes (default 100,000) between
//! two drivers (see `copy.rs`; build the binary first); `watch` (only when asked for) measures
//! how soon a watcher hears of a commit, and what announcing commits costs a write (see
//! `watch.rs`).
//!
//! Every scenario runs the library and its baseline alternately (library, baseline, library,
//! baseline) and prints one JSON line, then a table at the end. Fields: driver, scenario, tasks,
//! scopes, ops, secs, ops_per_sec, p50_us, p99_us, attempts_per_commit, backend_calls_per_op,
//! baseline, baseline_ops_per_sec, ratio (library / baseline), exact (final counts checked);
//! the transfer rows add driver_calls_per_op (the engine's), baseline_calls_per_op (counted by
//! the server, like backend_calls_per_op) and baseline_round_trips_per_op (counted in the
//! client).
//!
//! `--only scenarios` runs the counter scenarios and the transfer scenario (two scopes per
//! update, 32 tasks over 64 accounts, warm: see `transfer.rs`), `--only transfer` the transfer
//! scenario alone, `--only fairness` the fairness rows.

mod baseline;
mod copy;
#[cfg(feature = "sqlite")]
mod embedded;
mod fair;
mod locked;
mod transfer;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mp_storage::{Scope, Storage};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Errors of the bench program.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
pub struct Counter {
    count: u64,
}

/// One side of a comparison: the library or a baseline.
#[async_trait]
pub trait Subject: Send + Sync {
    /// What it is, for the report.
    fn label(&self) -> String;
    /// Adds one to `scope`; returns the new count.
    async fn increment(&self, task: usize, scope: &str) -> Result<u64, BenchError>;
    /// Reads `scope` (0 when absent) without changing it.
    async fn read(&self, task: usize, scope: &str) -> Result<u64, BenchError>;
    /// Readies the scopes of a measurement (a baseline may create rows at 0, as a user of a
    /// row-per-counter table would).
    async fn prepare(&self, _scopes: &[String]) -> Result<(), BenchError> {
        Ok(())
    }
    /// Deletes what the measurements wrote.
    async fn cleanup(&self) -> Result<(), BenchError> {
        Ok(())
    }
}

struct Library {
    st: Storage,
}

#[async_trait]
impl Subject for Library {
    fn label(&self) -> String {
        format!("mp-storage {}", self.st.driver_name())
    }
    async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        Ok(self
            .st
            .scoped(scope, |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await?)
    }
    async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        Ok(self.st.scoped(scope, |c: &mut Counter| c.count).await?)
    }
}

/// A counter that lives an hour after its last write: every update also pushes its expiry on.
#[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
#[scope(ttl_secs = 3600)]
pub struct TtlCounter {
    count: u64,
}

/// The library updating [`TtlCounter`]s: the expiry row's subject, whose baseline is
/// [`Library`] updating plain counters.
struct TtlLibrary {
    st: Storage,
}

#[async_trait]
impl Subject for TtlLibrary {
    fn label(&self) -> String {
        format!("mp-storage {} with ttl_secs", self.st.driver_name())
    }
    async fn increment(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        Ok(self
            .st
            .scoped(scope, |c: &mut TtlCounter| {
                c.count += 1;
                c.count
            })
            .await?)
    }
    async fn read(&self, _task: usize, scope: &str) -> Result<u64, BenchError> {
        Ok(self.st.scoped(scope, |c: &mut TtlCounter| c.count).await?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// T tasks, each on a scope of its own.
    Uncontended,
    /// T tasks on one scope.
    Contended,
    /// One task on one scope: the reference of the contended scenario.
    Single,
    /// T tasks reading their own scopes; the closure changes nothing.
    ReadOnly,
    /// 90% reads, 10% updates over 10,000 scopes, Zipf-skewed.
    Mixed,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Uncontended => "uncontended",
            Scenario::Contended => "contended",
            Scenario::Single => "single",
            Scenario::ReadOnly => "read-only",
            Scenario::Mixed => "mixed-90r-10w",
        }
    }
}

/// Per-driver shape of the workload.
struct Profile {
    tasks: usize,
    scopes: usize,
    contended_tasks: usize,
}

/// The driver's name in the rows, `+wait` added when the URL makes writes wait for replicas.
fn driver_label(name: &str, url: &str) -> String {
    let waits = url
        .split(['?', '&'])
        .any(|kv| kv.starts_with("replica_wait=") && kv != "replica_wait=0");
    if waits {
        format!("{name}+wait")
    } else {
        name.to_owned()
    }
}

fn profile(driver: &str) -> Profile {
    match driver.trim_end_matches("+wait") {
        "redis" | "redis-cluster" => Profile {
            tasks: 64,
            scopes: 64,
            contended_tasks: 64,
        },
        "mysql" | "postgres" => Profile {
            tasks: 32,
            scopes: 64,
            contended_tasks: 64,
        },
        "file" => Profile {
            tasks: 1,
            scopes: 1,
            contended_tasks: 64,
        },
        "sqlite" => Profile {
            tasks: 64,
            scopes: 64,
            contended_tasks: 64,
        },
        _ => Profile {
            tasks: 8,
            scopes: 8,
            contended_tasks: 64,
        },
    }
}

#[derive(Default)]
struct Measure {
    ops: u64,
    secs: f64,
    latencies_us: Vec<u32>,
    increments: HashMap<String, u64>,
    errors: u64,
}

impl Measure {
    fn merge(&mut self, other: Measure) {
        self.ops += other.ops;
        self.secs += other.secs;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.increments {
            *self.increments.entry(k).or_default() += v;
        }
    }

    fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    fn percentile(&mut self, p: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

/// Runs `tasks` tasks against `subject` for `secs`, each op picked by `scenario`.
async fn measure(
    subject: Arc<dyn Subject>,
    scenario: Scenario,
    tasks: usize,
    scopes: Arc<Vec<String>>,
    secs: f64,
) -> Measure {
    // Tasks watch the clock themselves: a driver whose futures never yield (memory) would
    // starve a timer.
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let zipf = Zipf::new(scopes.len() as f64, 1.0).ok();
    let started = Instant::now();
    let mut joins = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let subject = subject.clone();
        let scopes = scopes.clone();
        joins.push(tokio::spawn(async move {
            let mut m = Measure::default();
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            while Instant::now() < until {
                let (scope, write) = match scenario {
                    Scenario::Uncontended => (&scopes[task % scopes.len()], true),
                    Scenario::Contended | Scenario::Single => (&scopes[0], true),
                    Scenario::ReadOnly => (&scopes[task % scopes.len()], false),
                    Scenario::Mixed => {
                        let i = zipf.map_or(0, |z| (z.sample(&mut rng) as usize).saturating_sub(1));
                        (&scopes[i.min(scopes.len() - 1)], rng.random_bool(0.1))
                    }
                };
                let t = Instant::now();
                let r = if write {
                    subject.increment(task, scope).await
                } else {
                    subject.read(task, scope).await
                };
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                match r {
                    Ok(_) => {
                        m.ops += 1;
                        m.latencies_us.push(us);
                        if write {
                            *m.increments.entry(scope.clone()).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        m.errors += 1;
                        if m.errors == 1 {
                            eprintln!("mp-bench: {}: {e}", subject.label());
                        }
                    }
                }
            }
            m
        }));
    }
    let mut total = Measure::default();
    for j in joins {
        if let Ok(m) = j.await {
            total.merge(m);
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    total
}

/// Whether every scope holds exactly the increments made (the scopes started empty).
async fn exact(subject: &dyn Subject, m: &Measure) -> bool {
    for (scope, n) in &m.increments {
        match subject.read(0, scope).await {
            Ok(v) if v == *n => {}
            Ok(v) => {
                eprintln!(
                    "mp-bench: {}: scope {scope} holds {v}, expected {n}",
                    subject.label()
                );
                return false;
            }
            Err(e) => {
                eprintln!("mp-bench: {}: {e}", subject.label());
                return false;
            }
        }
    }
    m.errors == 0
}

/// A counter of backend calls, where the backend can count them.
async fn backend_calls(url: &str) -> Option<u64> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        #[cfg(feature = "redis")]
        "redis" | "rediss" => redis_calls(url).await.ok(),
        #[cfg(feature = "mysql")]
        "mysql" => mysql_questions(url).await.ok(),
        _ => None,
    }
}

#[cfg(feature = "redis")]
async fn redis_calls(url: &str) -> Result<u64, BenchError> {
    let client = redis::Client::open(url.split('?').next().unwrap_or(url))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await?;
    // Commands the scripts run inside the server are counted too; the library sends none of
    // them itself but in a load's transaction (MULTI, HGETALL, PEXPIRETIME, EXEC, one round
    // trip; the read script with PTTL before Redis 7; a removal is the delete script), so leave
    // them out to count what crossed the network, a transaction once (its EXEC; a baseline's
    // too). PUBLISH (SPUBLISH on a cluster) is the write scripts' change hint.
    const INSIDE_SCRIPTS: &[&str] = &[
        "cmdstat_multi:",
        "cmdstat_hgetall:",
        "cmdstat_pexpiretime:",
        "cmdstat_pttl:",
        "cmdstat_del:",
        "cmdstat_spublish:",
        "cmdstat_hget:",
        "cmdstat_hmget:",
        "cmdstat_hset:",
        "cmdstat_exists:",
        "cmdstat_hexists:",
        "cmdstat_hdel:",
        "cmdstat_pexpire:",
        "cmdstat_pexpireat:",
        "cmdstat_persist:",
        "cmdstat_time:",
        "cmdstat_publish:",
    ];
    let mut total = 0;
    for line in info
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter(|l| !INSIDE_SCRIPTS.iter().any(|p| l.starts_with(p)))
    {
        let calls = line
            .split([':', ','])
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        total += calls;
    }
    Ok(total)
}

#[cfg(feature = "mysql")]
async fn mysql_questions(url: &str) -> Result<u64, BenchError> {
    use mysql_async::prelude::*;
    let base = url.split('?').next().unwrap_or(url);
    let mut conn = mysql_async::Conn::from_url(base).await?;
    let row: Option<(String, u64)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Questions'")
        .await?;
    conn.disconnect().await?;
    Ok(row.map_or(0, |r| r.1))
}

struct Row {
    driver: String,
    scenario: &'static str,
    tasks: usize,
    scopes: usize,
    ops: u64,
    secs: f64,
    ops_per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    attempts_per_commit: Option<f64>,
    backend_calls_per_op: Option<f64>,
    baseline: String,
    baseline_ops_per_sec: f64,
    ratio: f64,
    exact: bool,
    /// The engine's driver calls per op (the transfer scenario).
    driver_calls_per_op: Option<f64>,
    /// The baseline's commands or statements per op, counted by the server (the transfer
    /// scenario).
    baseline_calls_per_op: Option<f64>,
    /// The baseline's round trips per op, counted in the client (the transfer scenario).
    baseline_round_trips_per_op: Option<f64>,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "driver": self.driver,
            "scenario": self.scenario,
            "tasks": self.tasks,
            "scopes": self.scopes,
            "ops": self.ops,
            "secs": round(self.secs, 2),
            "ops_per_sec": round(self.ops_per_sec, 0),
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "attempts_per_commit": self.attempts_per_commit.map(|v| round(v, 3)),
            "backend_calls_per_op": self.backend_calls_per_op.map(|v| round(v, 3)),
            "baseline": self.baseline,
            "baseline_ops_per_sec": round(self.baseline_ops_per_sec, 0),
            "ratio": round(self.ratio, 3),
            "exact": self.exact,
            "driver_calls_per_op": self.driver_calls_per_op.map(|v| round(v, 3)),
            "baseline_calls_per_op": self.baseline_calls_per_op.map(|v| round(v, 3)),
            "baseline_round_trips_per_op": self.baseline_round_trips_per_op.map(|v| round(v, 3)),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

struct Args {
    urls: Vec<String>,
    secs: f64,
    quick: bool,
    /// Which part runs: the scenarios, the fairness rows, the embedded comparison or the fill;
    /// all of them when `None`.
    only: Option<String>,
    /// Scopes the fill writes.
    fill: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        urls: Vec::new(),
        secs: 3.0,
        quick: false,
        only: None,
        fill: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--storage" => args.urls.push(it.next().ok_or("--storage needs a URL")?),
            "--secs" => {
                args.secs = it
                    .next()
                    .ok_or("--secs needs a number")?
                    .parse()
                    .map_err(|e| format!("--secs: {e}"))?
            }
            "--quick" => args.quick = true,
            "--only" => {
                let part = it.next().ok_or(
                    "--only needs scenarios, ttl, transfer, fairness, embedded, fill, locked, copy or watch",
                )?;
                if !matches!(
                    part.as_str(),
                    "scenarios"
                        | "ttl"
                        | "transfer"
                        | "fairness"
                        | "embedded"
                        | "fill"
                        | "locked"
                        | "copy"
                        | "watch"
                ) {
                    return Err(format!(
                        "--only {part:?}: scenarios, ttl, transfer, fairness, embedded, fill, locked, \
                         copy or watch"
                    ));
                }
                args.only = Some(part);
            }
            "--fill" => {
                args.fill = Some(
                    it.next()
                        .ok_or("--fill needs a number of scopes")?
                        .parse()
                        .map_err(|e| format!("--fill: {e}"))?,
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: mp-bench [--storage URL]… [--secs S] [--quick] \
                     [--only scenarios|ttl|transfer|fairness|embedded|fill|locked|copy|watch] [--fill N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if args.quick {
        args.secs = args.secs.min(0.25);
    }
    Ok(args)
}

async fn bench_driver(url: &str, args: &Args, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let run = format!("{:08x}", rand::random::<u32>());
    let st = Storage::builder()
        .key_prefix(format!("mp-bench:{run}:"))
        .open(url)
        .await?;
    let driver = driver_label(st.driver_name(), url);
    let p = profile(&driver);
    let base_tasks = p.tasks.max(p.contended_tasks);
    let baselines: Vec<Arc<dyn Subject>> = baseline::for_url(url, base_tasks)
        .await?
        .into_iter()
        .map(Arc::from)
        .collect();
    let library: Arc<dyn Subject> = Arc::new(Library { st: st.clone() });

    let mut single_rate = 0.0;
    for scenario in [
        Scenario::Single,
        Scenario::Uncontended,
        Scenario::Contended,
        Scenario::ReadOnly,
        Scenario::Mixed,
    ] {
        let (tasks, n_scopes) = match scenario {
            Scenario::Uncontended => (p.tasks, p.scopes),
            Scenario::Contended => (p.contended_tasks, 1),
            Scenario::Single => (1, 1),
            Scenario::ReadOnly => (p.tasks, p.scopes),
            Scenario::Mixed => (p.tasks.max(8), 10_000),
        };
        let mut lib = Measure::default();
        let mut bases: Vec<Measure> = baselines.iter().map(|_| Measure::default()).collect();
        let stats_before = st.stats();
        let mut lib_calls = 0u64;
        for round in 0..2 {
            let scopes: Arc<Vec<String>> = Arc::new(
                (0..n_scopes)
                    .map(|i| format!("{}:{round}:{i}", scenario.name()))
                    .collect(),
            );
            for b in &baselines {
                b.prepare(&scopes).await?;
            }
            if scenario == Scenario::ReadOnly {
                for s in scopes.iter() {
                    library.increment(0, s).await?;
                    for b in &baselines {
                        b.increment(0, s).await?;
                    }
                }
            }
            let calls_before = backend_calls(url).await;
            let m = measure(library.clone(), scenario, tasks, scopes.clone(), args.secs).await;
            let calls_after = backend_calls(url).await;
            if let (Some(a), Some(b)) = (calls_before, calls_after) {
                // The counter read itself is one call.
                lib_calls += b.saturating_sub(a).saturating_sub(1);
            }
            let mut m = m;
            if scenario == Scenario::ReadOnly {
                m.increments.clear();
            }
            let ok = exact(library.as_ref(), &m).await;
            if !ok {
                m.errors += 1;
            }
            lib.merge(m);
            for (b, base) in baselines.iter().zip(bases.iter_mut()) {
                let mut m = measure(b.clone(), scenario, tasks, scopes.clone(), args.secs).await;
                if scenario == Scenario::ReadOnly {
                    m.increments.clear();
                }
                if !exact(b.as_ref(), &m).await {
                    m.errors += 1;
                }
                base.merge(m);
            }
        }
        let stats = st.stats();
        let attempts = stats.attempts - stats_before.attempts;
        let finished = (stats.commits - stats_before.commits) + (stats.noops - stats_before.noops);
        let engine_calls = (stats.loads - stats_before.loads)
            + (stats.commits - stats_before.commits)
            + (stats.conflicts - stats_before.conflicts);
        let calls = if lib_calls > 0 {
            lib_calls
        } else {
            engine_calls
        };
        let ops_per_sec = lib.ops_per_sec();
        if scenario == Scenario::Single {
            single_rate = ops_per_sec;
        }
        // One row per baseline; the contended scenario compares with the library's own
        // single-task rate.
        let compared: Vec<(String, f64, bool)> = if scenario == Scenario::Contended {
            vec![("mp-storage single task".to_owned(), single_rate, true)]
        } else if baselines.is_empty() {
            vec![("none".to_owned(), 0.0, true)]
        } else {
            baselines
                .iter()
                .zip(&bases)
                .map(|(b, m)| (b.label(), m.ops_per_sec(), m.errors == 0))
                .collect()
        };
        let (p50, p99) = (lib.percentile(0.5), lib.percentile(0.99));
        for (baseline_label, baseline_rate, base_exact) in compared {
            let row = Row {
                driver: driver.clone(),
                scenario: scenario.name(),
                tasks,
                scopes: n_scopes,
                ops: lib.ops,
                secs: lib.secs,
                ops_per_sec,
                p50_us: p50,
                p99_us: p99,
                attempts_per_commit: (finished > 0).then(|| attempts as f64 / finished as f64),
                backend_calls_per_op: (lib.ops > 0).then(|| calls as f64 / lib.ops as f64),
                baseline: baseline_label,
                baseline_ops_per_sec: baseline_rate,
                ratio: if baseline_rate > 0.0 {
                    ops_per_sec / baseline_rate
                } else {
                    0.0
                },
                exact: lib.errors == 0 && base_exact,
                driver_calls_per_op: None,
                baseline_calls_per_op: None,
                baseline_round_trips_per_op: None,
            };
            println!("{}", row.json());
            rows.push(row);
        }
    }
    // Leave nothing behind.
    for name in st.list("").await? {
        st.remove(&name).await?;
    }
    for b in &baselines {
        b.cleanup().await?;
    }
    Ok(())
}

/// The expiry row: warm updates of a type with a time to live (each write also sets the
/// scope's expiry, in the same round trip) against warm updates of a plain type, `tasks` tasks
/// on `n_scopes` scopes, alternately, in the same run; backend calls per update as the other
/// rows count them.
async fn bench_ttl(url: &str, args: &Args, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let st = Storage::builder()
        .key_prefix(format!("mp-bench:{:08x}:", rand::random::<u32>()))
        .open(url)
        .await?;
    let p = profile(st.driver_name());
    let result = ttl_row(url, args, &st, (p.tasks, p.scopes), rows).await;
    for name in st.list("").await? {
        st.remove(&name).await?;
    }
    result
}

async fn ttl_row(
    url: &str,
    args: &Args,
    st: &Storage,
    (tasks, n_scopes): (usize, usize),
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let ttl: Arc<dyn Subject> = Arc::new(TtlLibrary { st: st.clone() });
    let plain: Arc<dyn Subject> = Arc::new(Library { st: st.clone() });
    let (mut lib, mut base) = (Measure::default(), Measure::default());
    let (mut lib_calls, mut counted) = (0u64, true);
    let before = st.stats();
    for round in 0..2 {
        let names = |tag: &str| -> Arc<Vec<String>> {
            Arc::new(
                (0..n_scopes)
                    .map(|i| format!("{tag}:{round}:{i}"))
                    .collect(),
            )
        };
        let (ttl_scopes, plain_scopes) = (names("ttl"), names("plain"));
        // Warm: every scope exists and is cached before the measurement.
        for s in ttl_scopes.iter() {
            ttl.increment(0, s).await?;
        }
        for s in plain_scopes.iter() {
            plain.increment(0, s).await?;
        }
        let calls_before = backend_calls(url).await;
        let stats_before = st.stats();
        let mut m = measure(
            ttl.clone(),
            Scenario::Uncontended,
            tasks,
            ttl_scopes.clone(),
            args.secs,
        )
        .await;
        match (calls_before, backend_calls(url).await) {
            (Some(a), Some(b)) => lib_calls += b.saturating_sub(a).saturating_sub(1),
            _ => counted = false,
        }
        if !counted {
            let s = st.stats();
            lib_calls += (s.loads - stats_before.loads)
                + (s.commits - stats_before.commits)
                + (s.conflicts - stats_before.conflicts);
        }
        // The warm-up wrote 1 to each scope.
        for v in m.increments.values_mut() {
            *v += 1;
        }
        if !exact(ttl.as_ref(), &m).await {
            m.errors += 1;
        }
        lib.merge(m);
        let mut m = measure(
            plain.clone(),
            Scenario::Uncontended,
            tasks,
            plain_scopes,
            args.secs,
        )
        .await;
        for v in m.increments.values_mut() {
            *v += 1;
        }
        if !exact(plain.as_ref(), &m).await {
            m.errors += 1;
        }
        base.merge(m);
    }
    let stats = st.stats();
    let attempts = stats.attempts - before.attempts;
    let finished = (stats.commits - before.commits) + (stats.noops - before.noops);
    let (ops_per_sec, base_rate) = (lib.ops_per_sec(), base.ops_per_sec());
    let row = Row {
        driver: driver_label(st.driver_name(), url),
        scenario: "ttl",
        tasks,
        scopes: n_scopes,
        ops: lib.ops,
        secs: lib.secs,
        ops_per_sec,
        p50_us: lib.percentile(0.5),
        p99_us: lib.percentile(0.99),
        attempts_per_commit: (finished > 0).then(|| attempts as f64 / finished as f64),
        backend_calls_per_op: (lib.ops > 0).then(|| lib_calls as f64 / lib.ops as f64),
        baseline: "mp-storage, the same type without ttl_secs".to_owned(),
        baseline_ops_per_sec: base_rate,
        ratio: if base_rate > 0.0 {
            ops_per_sec / base_rate
        } else {
            0.0
        },
        exact: lib.errors == 0 && base.errors == 0,
        driver_calls_per_op: None,
        baseline_calls_per_op: None,
        baseline_round_trips_per_op: None,
    };
    println!("{}", row.json());
    rows.push(row);
    Ok(())
}

/// The transfer scenario on `url`: the library and each baseline alternately, twice, on
/// accounts of their own; one row per baseline (one without a baseline where there is none).
async fn bench_transfer(url: &str, args: &Args, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let run = format!("{:08x}", rand::random::<u32>());
    // A hash tag in the prefix: in a Redis Cluster the accounts share one slot, so any two can
    // be moved between in one commit (elsewhere the braces are two more characters).
    let st = Storage::builder()
        .key_prefix(format!("mp-bench:{{{run}}}:"))
        .open(url)
        .await?;
    let driver = driver_label(st.driver_name(), url);
    let library: Arc<dyn transfer::Mover> = Arc::new(transfer::Library { st: st.clone() });
    let baselines: Vec<Arc<dyn transfer::Mover>> = transfer::baselines(url)
        .await?
        .into_iter()
        .map(Arc::from)
        .collect();
    let mut lib = transfer::Run {
        exact: true,
        ..transfer::Run::default()
    };
    let mut bases: Vec<transfer::Run> = baselines
        .iter()
        .map(|_| transfer::Run {
            exact: true,
            ..transfer::Run::default()
        })
        .collect();
    for round in 0..2 {
        let accounts = Arc::new(transfer::accounts(&format!("lib{round}")));
        lib.merge(transfer::measure(library.clone(), accounts, args.secs, url).await);
        for (i, (b, m)) in baselines.iter().zip(bases.iter_mut()).enumerate() {
            let accounts = Arc::new(transfer::accounts(&format!("base{i}.{round}")));
            m.merge(transfer::measure(b.clone(), accounts, args.secs, url).await);
        }
    }
    let per_op = |n: u64, ops: u64| (ops > 0).then(|| n as f64 / ops as f64);
    let mut m = Measure {
        latencies_us: std::mem::take(&mut lib.latencies_us),
        ..Measure::default()
    };
    let (p50, p99) = (m.percentile(0.5), m.percentile(0.99));
    let driver_calls = per_op(lib.driver_calls, lib.ops);
    let server_calls = lib.server_calls.and_then(|n| per_op(n, lib.ops));
    type Compared = (String, f64, bool, Option<f64>, Option<f64>);
    let compared: Vec<Compared> = if baselines.is_empty() {
        vec![("none".to_owned(), 0.0, true, None, None)]
    } else {
        baselines
            .iter()
            .zip(&bases)
            .map(|(b, r)| {
                let trips = (r.round_trips > 0).then(|| r.round_trips as f64 / r.ops.max(1) as f64);
                let calls = r.server_calls.and_then(|n| per_op(n, r.ops));
                (b.label(), r.ops_per_sec(), r.exact, calls, trips)
            })
            .collect()
    };
    for (label, rate, base_exact, base_calls, base_trips) in compared {
        let ops_per_sec = lib.ops_per_sec();
        let row = Row {
            driver: driver.clone(),
            scenario: "transfer",
            tasks: transfer::TASKS,
            scopes: transfer::ACCOUNTS,
            ops: lib.ops,
            secs: lib.secs,
            ops_per_sec,
            p50_us: p50,
            p99_us: p99,
            attempts_per_commit: per_op(lib.attempts, lib.finished),
            backend_calls_per_op: server_calls.or(driver_calls),
            baseline: label,
            baseline_ops_per_sec: rate,
            ratio: if rate > 0.0 { ops_per_sec / rate } else { 0.0 },
            exact: lib.exact && base_exact,
            driver_calls_per_op: driver_calls,
            baseline_calls_per_op: base_calls,
            baseline_round_trips_per_op: base_trips,
        };
        println!("{}", row.json());
        rows.push(row);
    }
    library.cleanup().await?;
    for b in &baselines {
        b.cleanup().await?;
    }
    Ok(())
}

fn default_urls() -> Vec<String> {
    let mut urls = vec!["memory://".to_owned()];
    let dir = std::env::temp_dir().join(format!("mp-bench-{}", std::process::id()));
    urls.push(format!("file:{}", dir.display()));
    #[cfg(feature = "sqlite")]
    urls.push(format!("sqlite:{}", dir.join("bench.db").display()));
    for var in [
        "MP_TEST_REDIS_URL",
        "MP_TEST_REDIS_CLUSTER_URL",
        "MP_TEST_MYSQL_URL",
        "MP_TEST_POSTGRES_URL",
    ] {
        if let Ok(url) = std::env::var(var) {
            if !url.is_empty() {
                urls.push(url);
            }
        }
    }
    urls
}

/// The Redis Cluster rows against the single-server Redis rows of the same run (same scenario
/// and tasks), and the rows that wait for a replica against those that do not.
fn print_cluster_ratios(rows: &[Row]) {
    let find = |driver: &str, r: &Row| {
        rows.iter()
            .find(|o| o.driver == driver && o.scenario == r.scenario && o.tasks == r.tasks)
    };
    let mut lines = Vec::new();
    for r in rows.iter().filter(|r| r.driver.starts_with("redis")) {
        let against = match r.driver.as_str() {
            "redis-cluster" => "redis",
            "redis-cluster+wait" => "redis-cluster",
            "redis+wait" => "redis",
            _ => continue,
        };
        if let Some(o) = find(against, r) {
            lines.push(format!(
                "{:<19} {:<14} {:>5} {:>10.0} {:>10.0} {:>7.2} {:>8} {:>8}   against {against}",
                r.driver,
                r.scenario,
                r.tasks,
                r.ops_per_sec,
                o.ops_per_sec,
                if o.ops_per_sec > 0.0 {
                    r.ops_per_sec / o.ops_per_sec
                } else {
                    0.0
                },
                r.p50_us,
                o.p50_us,
            ));
        }
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<19} {:<14} {:>5} {:>10} {:>10} {:>7} {:>8} {:>8}",
        "driver", "scenario", "tasks", "ops/s", "other", "ratio", "p50 us", "other"
    );
    for l in lines {
        println!("{l}");
    }
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<7} {:<14} {:>5} {:>6} {:>10} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7} {:>5}  baseline",
        "driver",
        "scenario",
        "tasks",
        "scopes",
        "ops/s",
        "p50 us",
        "p99 us",
        "att/cmt",
        "calls/op",
        "base ops/s",
        "ratio",
        "exact"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for r in rows {
        println!(
            "{:<7} {:<14} {:>5} {:>6} {:>10.0} {:>8} {:>8} {:>9} {:>9} {:>10.0} {:>7.2} {:>5}  {}",
            r.driver,
            r.scenario,
            r.tasks,
            r.scopes,
            r.ops_per_sec,
            r.p50_us,
            r.p99_us,
            opt(r.attempts_per_commit),
            opt(r.backend_calls_per_op),
            r.baseline_ops_per_sec,
            r.ratio,
            r.exact,
            match (r.baseline_calls_per_op, r.baseline_round_trips_per_op) {
                (Some(c), Some(t)) =>
                    format!("{} ({c:.2} calls/op, {t:.2} round trips/op)", r.baseline),
                (None, Some(t)) => format!("{} ({t:.2} round trips/op)", r.baseline),
                _ => r.baseline.clone(),
            }
        );
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--worker") {
        if let Err(e) = fair::worker(&argv[2..]).await {
            eprintln!("mp-bench worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mp-bench: {e}");
            std::process::exit(2);
        }
    };
    let urls = if args.urls.is_empty() {
        default_urls()
    } else {
        args.urls.clone()
    };
    let mut rows = Vec::new();
    let mut fair_rows = Vec::new();
    let mut failed = false;
    let part = |name: &str| args.only.is_none() || args.only.as_deref() == Some(name);
    if args.only.as_deref() == Some("locked") {
        for url in &urls {
            if let Err(e) = locked::bench(url, args.secs).await {
                eprintln!("mp-bench: {url}: locked: {e}");
                failed = true;
            }
        }
    }
    let mut copy_rows = Vec::new();
    if args.only.as_deref() == Some("copy") {
        let n = args
            .fill
            .unwrap_or(if args.quick { 2_000 } else { 100_000 });
        if let Err(e) = copy::bench(n, &mut copy_rows).await {
            eprintln!("mp-bench: copy: {e}");
            failed = true;
        }
    }
    if args.only.as_deref() == Some("watch") {
        for url in &urls {
            if let Err(e) = watch::bench(url, args.secs, args.quick).await {
                eprintln!("mp-bench: {url}: watch: {e}");
                failed = true;
            }
        }
    }
    for url in &urls {
        if args.only.is_some()
            && !part("scenarios")
            && !part("ttl")
            && !part("transfer")
            && !part("fairness")
        {
            break;
        }
        if part("scenarios") {
            if let Err(e) = bench_driver(url, &args, &mut rows).await {
                eprintln!("mp-bench: {url}: {e}");
                failed = true;
            }
        }
        if part("ttl") {
            if let Err(e) = bench_ttl(url, &args, &mut rows).await {
                eprintln!("mp-bench: {url}: ttl: {e}");
                failed = true;
            }
        }
        if part("transfer") {
            if let Err(e) = bench_transfer(url, &args, &mut rows).await {
                eprintln!("mp-bench: {url}: transfer: {e}");
                failed = true;
            }
        }
        if part("fairness") {
            // 5 s per measurement in a full run, as the targets are stated.
            let secs = if args.quick { args.secs } else { 5.0 };
            if let Err(e) = fair::bench(url, secs, &mut fair_rows).await {
                eprintln!("mp-bench: {url}: fairness: {e}");
                failed = true;
            }
        }
    }
    #[cfg(feature = "sqlite")]
    let (embedded_rows, fill_rows) = {
        let mut embedded_rows = Vec::new();
        let mut fill_rows = Vec::new();
        let dir = std::env::temp_dir().join(format!("mp-bench-embedded-{}", std::process::id()));
        if part("embedded") {
            let shapes: &[usize] = if args.quick { &[1, 64] } else { &[1, 8, 64] };
            if let Err(e) = embedded::compare(&dir, args.secs, shapes, &mut embedded_rows).await {
                eprintln!("mp-bench: embedded: {e}");
                failed = true;
            }
        }
        if part("fill") {
            let n = args
                .fill
                .unwrap_or(if args.quick { 2_000 } else { 100_000 });
            let file_max = if args.quick { 2_000 } else { 20_000 };
            if let Err(e) = embedded::fill(&dir, n, file_max, &mut fill_rows).await {
                eprintln!("mp-bench: fill: {e}");
                failed = true;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        failed |= !embedded::all_exact(&embedded_rows);
        (embedded_rows, fill_rows)
    };
    print_table(&rows);
    print_cluster_ratios(&rows);
    if rows.iter().any(|r| r.driver == "postgres") {
        println!(
            "(postgres calls/op: counted on the client side, the engine's driver calls, one \
             statement each; pg_stat_statements is not needed)"
        );
    }
    fair::print_table(&fair_rows);
    copy::print_table(&copy_rows);
    #[cfg(feature = "sqlite")]
    embedded::print_tables(&embedded_rows, &fill_rows);
    for url in &urls {
        let body = url
            .strip_prefix("file:")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|b| b.split('?').next().unwrap_or(b));
        if let Some(path) = body {
            if let Some(at) = path.find("mp-bench-") {
                // The run's own directory in the temp dir (a sqlite URL names a file in it).
                let end = path[at..].find('/').map_or(path.len(), |i| at + i);
                let _ = std::fs::remove_dir_all(&path[..end]);
            }
        }
    }
    if failed || rows.iter().any(|r| !r.exact) || fair_rows.iter().any(|r| !r.exact) {
        eprintln!("mp-bench: some figures are missing or a count was not exact");
        std::process::exit(1);
    }
}
