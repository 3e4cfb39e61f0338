//! A worker process for the multi-process tests: increments one scope from several tasks and
//! prints every count it was handed, one per line.
//!
//! `mp-worker --url URL --prefix P --scope NAME --tasks N --increments M`, or `--secs S` instead
//! of `--increments` to run for a time; then a last line `# ops p50_us p99_us max_us` follows.
//! `--pause-ms P` waits P ms before each increment (slow changes, for the watch tests).
//!
//! `mp-worker --url URL --prefix P --scope NAME --tasks N --locked M --lease-ms L --hold-ms H`
//! runs M exclusive updates (`try_locked`) per task instead, each adding one while holding the
//! lease for H ms, and prints `start <pid> <µs since 1970>` and `end <pid> <µs>` from inside the
//! closure, then `ok <count>` or `lost <error>` after it (see `mp_storage_tests::lease`).
//!
//! `mp-worker --url URL --prefix P --bank ACCOUNTS --tasks N --secs S --id-base B` runs random
//! transfers between the accounts instead and prints each one's outcome
//! (see `mp_storage_tests::bank`).

use std::io::Write as _;

use mp_storage::Storage;
use mp_storage_tests::Counter;

struct Args {
    url: String,
    prefix: String,
    scope: String,
    tasks: usize,
    increments: usize,
    secs: Option<f64>,
    bank: Option<usize>,
    id_base: u64,
    locked: Option<usize>,
    lease_ms: u64,
    hold_ms: u64,
    pause_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        prefix: String::new(),
        scope: "hot".to_owned(),
        tasks: 1,
        increments: 1,
        secs: None,
        bank: None,
        id_base: 0,
        locked: None,
        lease_ms: 30_000,
        hold_ms: 0,
        pause_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--prefix" => args.prefix = value.clone(),
            "--scope" => args.scope = value.clone(),
            "--tasks" => args.tasks = number()?,
            "--increments" => args.increments = number()?,
            "--bank" => args.bank = Some(number()?),
            "--locked" => args.locked = Some(number()?),
            "--lease-ms" => args.lease_ms = number()? as u64,
            "--hold-ms" => args.hold_ms = number()? as u64,
            "--pause-ms" => args.pause_ms = number()? as u64,
            "--id-base" => args.id_base = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--secs" => args.secs = Some(value.parse::<f64>().map_err(|e| format!("{flag}: {e}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.url.is_empty() {
        return Err("--url is required".to_owned());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mp-worker: {e}");
            std::process::exit(2);
        }
    };
    if let Some(accounts) = args.bank {
        let st = mp_storage_tests::bank::open(&args.url, &args.prefix).await;
        let secs = args.secs.unwrap_or(1.0);
        mp_storage_tests::bank::worker_main(&st, accounts, args.tasks, secs, args.id_base).await;
        return;
    }
    let st = match Storage::builder()
        .key_prefix(&args.prefix)
        .lease(std::time::Duration::from_millis(args.lease_ms))
        .open(&args.url)
        .await
    {
        Ok(st) => st,
        Err(e) => {
            eprintln!("mp-worker: cannot open {}: {e}", args.url);
            std::process::exit(1);
        }
    };
    if let Some(updates) = args.locked {
        locked_main(&st, &args, updates).await;
        return;
    }
    let until = args
        .secs
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let mut joins = Vec::new();
    for _ in 0..args.tasks {
        let st = st.clone();
        let scope = args.scope.clone();
        let increments = args.increments;
        let pause = std::time::Duration::from_millis(args.pause_ms);
        joins.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut latencies = Vec::new();
            let mut i = 0;
            loop {
                match until {
                    Some(t) if std::time::Instant::now() >= t => break,
                    None if i >= increments => break,
                    _ => i += 1,
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                let started = std::time::Instant::now();
                let n = st
                    .scoped(&scope, |c: &mut Counter| {
                        c.count += 1;
                        c.count
                    })
                    .await?;
                latencies.push(started.elapsed().as_micros() as u64);
                got.push(n);
            }
            Ok::<_, mp_storage::Error>((got, latencies))
        }));
    }
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    let mut latencies = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok((got, lat))) => {
                for n in got {
                    let _ = writeln!(out, "{n}");
                }
                latencies.extend(lat);
            }
            Ok(Err(e)) => {
                eprintln!("mp-worker: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("mp-worker: task failed: {e}");
                failed = true;
            }
        }
    }
    if args.secs.is_some() {
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let _ = writeln!(
            out,
            "# {} {} {} {}",
            latencies.len(),
            pct(0.5),
            pct(0.99),
            latencies.last().copied().unwrap_or(0)
        );
    }
    let _ = out.flush();
    if failed {
        std::process::exit(1);
    }
}

/// Microseconds since 1970 (one clock for the processes of one machine).
fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// `--locked`: exclusive updates, each logged from inside its closure.
async fn locked_main(st: &Storage, args: &Args, updates: usize) {
    let pid = std::process::id();
    let hold = std::time::Duration::from_millis(args.hold_ms);
    let mut joins = Vec::new();
    for _ in 0..args.tasks {
        let (st, scope) = (st.clone(), args.scope.clone());
        joins.push(tokio::spawn(async move {
            let mut failed = false;
            for _ in 0..updates {
                let r = st
                    .try_locked(&scope, |mut c: Counter| async move {
                        println!("start {pid} {}", now_us());
                        tokio::time::sleep(hold).await;
                        c.count += 1;
                        let n = c.count;
                        println!("end {pid} {}", now_us());
                        Ok::<_, mp_storage::Error>((c, n))
                    })
                    .await;
                match r {
                    Ok(n) => println!("ok {n}"),
                    Err(e @ mp_storage::Error::LeaseLost { .. }) => println!("lost {e}"),
                    Err(e) => {
                        eprintln!("mp-worker: {e}");
                        failed = true;
                    }
                }
            }
            failed
        }));
    }
    let mut failed = false;
    for j in joins {
        failed |= j.await.unwrap_or(true);
    }
    if failed {
        std::process::exit(1);
    }
}
