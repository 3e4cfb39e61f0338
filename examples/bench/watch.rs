//! `--only watch`: how soon a watcher hears of a commit, and what announcing commits costs a
//! write that nobody watches.
//!
//! - latency: one writer storage and one watcher storage over the same driver (each an engine
//!   of its own, as two processes would be); the writer commits an increment every 5 ms, and the
//!   time from the commit's return to the watcher's item is taken (an item that comes before
//!   the return counts as 0). p50 and p99 per driver.
//! - publish cost (Redis and Redis Cluster, PostgreSQL): uncontended warm updates of one scope, one task, with the
//!   announcement on and off, alternately in one run: Redis with `watch=true` and `watch=false`
//!   (the `PUBLISH`, or `SPUBLISH` on a cluster, in the write script or not), PostgreSQL on a table with its watch trigger
//!   and on one whose trigger was dropped. The other drivers announce nothing on the write path
//!   (memory and SQLite hint in-process watchers only when there are some; file events come
//!   from the kernel; MySQL is polled).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mp_storage::Storage;

use crate::{BenchError, Counter};

/// The latency row of `url`: p50 and p99 in µs.
async fn latency(url: &str, changes: u64, pace: Duration) -> Result<(u64, u64), BenchError> {
    let driver = mp_storage::driver::open(url).await?;
    let prefix = format!("mp-bench-watch-{}/", std::process::id());
    let watcher = Storage::builder()
        .key_prefix(&prefix)
        .build(driver.clone())?;
    let writer = Storage::builder().key_prefix(&prefix).build(driver)?;
    writer.set("w", &Counter { count: 0 }).await?;
    let mut w = watcher.watch::<Counter>("w").await?;
    // The current value, then the subscription is live once a change comes through.
    w.next().await;
    writer.set("w", &Counter { count: 0 }).await?;
    w.next().await;
    let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(item) = w.next().await {
                if let Ok(Some(c)) = item {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((c.count, Instant::now()));
                    if c.count >= changes {
                        return;
                    }
                }
            }
        })
    };
    let mut committed = Vec::new();
    for _ in 0..changes {
        tokio::time::sleep(pace).await;
        let n = writer
            .scoped("w", |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await?;
        committed.push((n, Instant::now()));
    }
    tokio::time::timeout(Duration::from_secs(10), recorder).await??;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<u64> = committed
        .iter()
        .filter_map(|(n, at)| {
            let (_, saw) = seen.iter().find(|(c, _)| c == n)?;
            Some(saw.saturating_duration_since(*at).as_micros() as u64)
        })
        .collect();
    writer.remove("w").await?;
    // Coalescing is allowed (the latest value is what a watcher is owed), but a latency figure
    // from a few changes would say little: most must be seen one by one.
    if lat.is_empty() || (lat.len() as u64) * 10 < changes * 9 {
        return Err(format!(
            "{} of {changes} changes were seen one by one (the rest coalesced)",
            lat.len()
        )
        .into());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.5), pct(0.99)))
}

/// Warm uncontended updates of one scope for `secs`: updates per second.
async fn updates(st: &Storage, secs: f64) -> Result<f64, BenchError> {
    st.scoped("cost", |c: &mut Counter| c.count += 1).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        st.scoped("cost", |c: &mut Counter| c.count += 1).await?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

/// The two storages whose write costs are compared: announcing, and not.
async fn cost_pair(url: &str) -> Result<Option<(Storage, Storage, String)>, BenchError> {
    let prefix = format!("mp-bench-watch-cost-{}/", std::process::id());
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "redis" | "redis-cluster" => {
            let command = if scheme == "redis" {
                "PUBLISH"
            } else {
                "SPUBLISH"
            };
            let on = Storage::builder()
                .key_prefix(&prefix)
                .open(&with_option(url, "watch=true"))
                .await?;
            let off = Storage::builder()
                .key_prefix(&prefix)
                .open(&with_option(url, "watch=false"))
                .await?;
            Ok(Some((on, off, format!("{command} in the write script"))))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let pid = std::process::id();
            let (with, without) = (
                format!("mp_bench_trig_{pid}"),
                format!("mp_bench_notrig_{pid}"),
            );
            // The trigger only on the first table (`notify=true`); the second never gets one.
            let base = url.split('?').next().unwrap_or(url);
            let on =
                Storage::open(&with_option(base, &format!("table={with}&notify=true"))).await?;
            let off =
                Storage::open(&with_option(base, &format!("table={without}&notify=false"))).await?;
            Ok(Some((on, off, "the pg_notify trigger".to_owned())))
        }
        _ => Ok(None),
    }
}

/// Drops what [`cost_pair`] made.
async fn cost_cleanup(url: &str, on: &Storage, off: &Storage) -> Result<(), BenchError> {
    on.remove("cost").await?;
    off.remove("cost").await?;
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        let pid = std::process::id();
        let (client, conn) =
            tokio_postgres::connect(url.split('?').next().unwrap_or(url), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS mp_bench_trig_{pid}, mp_bench_notrig_{pid}"
            ))
            .await?;
    }
    let _ = url;
    Ok(())
}

/// The watch rows of `url`.
pub async fn bench(url: &str, secs: f64, quick: bool) -> Result<(), BenchError> {
    let driver = url.split(':').next().unwrap_or_default();
    // A polled driver gets changes further apart than its poll, so that each is seen.
    let polled =
        driver == "mysql" || (driver.starts_with("postgres") && !url.contains("notify=true"));
    let (changes, pace) = if polled {
        (if quick { 10 } else { 50 }, Duration::from_millis(130))
    } else {
        (if quick { 40 } else { 400 }, Duration::from_millis(5))
    };
    let (p50, p99) = latency(url, changes, pace).await?;
    println!(
        "{}",
        serde_json::json!({
            "driver": driver, "scenario": "watch-latency", "changes": changes,
            "pace_ms": pace.as_millis() as u64, "p50_us": p50, "p99_us": p99,
        })
    );
    if let Some((on, off, what)) = cost_pair(url).await? {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _round in 0..2 {
            with.push(updates(&on, secs).await?);
            without.push(updates(&off, secs).await?);
        }
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (a, b) = (avg(&with), avg(&without));
        println!(
            "{}",
            serde_json::json!({
                "driver": driver, "scenario": "watch-publish-cost", "announcing": what,
                "updates_per_sec_with": a.round(), "updates_per_sec_without": b.round(),
                "ratio": ((a / b) * 1000.0).round() / 1000.0,
            })
        );
        cost_cleanup(url, &on, &off).await?;
    }
    Ok(())
}
