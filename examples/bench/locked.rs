//! `--only locked`: an uncontended exclusive update (`Storage::locked`: take the lease, run,
//! commit) on one warm scope, one task, against the hand-written `BEGIN; SELECT … FOR UPDATE;
//! UPDATE; COMMIT` baseline on MySQL and PostgreSQL (and the optimistic `scoped` of the same
//! scope for reference), alternately in one run. The library's round trips are its driver calls,
//! counted by a [`CountingDriver`] around the driver; the baseline's are its statements
//! (BEGIN, SELECT, UPDATE, COMMIT: four).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::Storage;
use mp_storage_examples::counting_driver::{Calls, CountingDriver};

use crate::{BenchError, Counter};

fn total(c: &Calls) -> u64 {
    c.load + c.cas + c.put + c.delete + c.list + c.load_many + c.commit + c.other
}

/// One measured side.
struct Side {
    ops: u64,
    secs: f64,
    p50_us: u64,
    calls_per_op: f64,
}

/// Runs `op` for `secs` one after another; the median latency and rate.
async fn time<F, Fut>(secs: f64, mut op: F) -> Result<(u64, f64, u64), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut lat = Vec::new();
    while Instant::now() < until {
        let t0 = Instant::now();
        op().await?;
        lat.push(t0.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0);
    Ok((lat.len() as u64, started.elapsed().as_secs_f64(), p50))
}

async fn library(
    st: &Storage,
    counting: &CountingDriver,
    scope: &str,
    secs: f64,
    exclusive: bool,
) -> Result<Side, BenchError> {
    let before = total(&counting.calls());
    let (ops, took, p50) = time(secs, || async {
        if exclusive {
            st.locked(scope, |mut c: Counter| async move {
                c.count += 1;
                (c, ())
            })
            .await?;
        } else {
            st.scoped(scope, |c: &mut Counter| c.count += 1).await?;
        }
        Ok(())
    })
    .await?;
    let calls = total(&counting.calls()) - before;
    Ok(Side {
        ops,
        secs: took,
        p50_us: p50,
        calls_per_op: calls as f64 / ops.max(1) as f64,
    })
}

fn row(url: &str, label: &str, s: &Side, round_trips: f64) {
    println!(
        "{}",
        serde_json::json!({
            "driver": url.split(':').next().unwrap_or_default(),
            "scenario": "locked",
            "subject": label,
            "ops": s.ops,
            "ops_per_sec": (s.ops as f64 / s.secs).round(),
            "p50_us": s.p50_us,
            "round_trips_per_op": (round_trips * 100.0).round() / 100.0,
        })
    );
}

/// The exclusive-update rows for `url`.
pub async fn bench(url: &str, secs: f64) -> Result<(), BenchError> {
    let counting = Arc::new(CountingDriver::new(mp_storage::driver::open(url).await?));
    let st = Storage::builder()
        .key_prefix(format!("mp-bench-locked-{}/", std::process::id()))
        .build(counting.clone())?;
    let scope = "locked";
    // Warm: the scope exists and is cached.
    st.locked(scope, |c: Counter| async move { (c, ()) })
        .await?;
    let baselines: Vec<Box<dyn crate::Subject>> = crate::baseline::for_url(url, 1)
        .await?
        .into_iter()
        .filter(|b| b.label().contains("FOR UPDATE"))
        .collect();
    for b in &baselines {
        b.prepare(&[scope.to_owned()]).await?;
    }
    for _round in 0..2 {
        let s = library(&st, &counting, scope, secs, true).await?;
        row(url, "mp-storage locked", &s, s.calls_per_op);
        let s = library(&st, &counting, scope, secs, false).await?;
        row(url, "mp-storage scoped (optimistic)", &s, s.calls_per_op);
        for b in &baselines {
            let (ops, took, p50) = time(secs, || async {
                b.increment(0, scope).await?;
                Ok(())
            })
            .await?;
            let s = Side {
                ops,
                secs: took,
                p50_us: p50,
                calls_per_op: 4.0,
            };
            row(url, &b.label(), &s, s.calls_per_op);
        }
    }
    for b in &baselines {
        b.cleanup().await?;
    }
    st.remove(scope).await?;
    Ok(())
}
