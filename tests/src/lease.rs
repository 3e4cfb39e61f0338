//! Exclusive updates across real processes, written once over a URL and called from each
//! driver's test file: mutual exclusion beside optimistic increments, a holder killed with
//! SIGKILL, a holder stopped with SIGSTOP past its lease and resumed.
//!
//! The workers are `mp-worker --locked` processes: each closure prints `start`/`end` lines with
//! the machine's clock in µs, and each call `ok <count>` or `lost <error>`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mp_storage::Storage;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Counter;

/// Starts an `mp-worker --locked` process.
fn locked_worker(
    worker: &str,
    url: &str,
    prefix: &str,
    tasks: usize,
    updates: usize,
    lease_ms: u64,
    hold_ms: u64,
) -> Child {
    Command::new(worker)
        .args([
            "--url",
            url,
            "--prefix",
            prefix,
            "--scope",
            "leased",
            "--tasks",
            &tasks.to_string(),
            "--locked",
            &updates.to_string(),
            "--lease-ms",
            &lease_ms.to_string(),
            "--hold-ms",
            &hold_ms.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {worker}: {e}"))
}

/// Starts an increments worker (`mp-worker --increments`).
fn increments_worker(worker: &str, url: &str, prefix: &str, tasks: usize, n: usize) -> Child {
    Command::new(worker)
        .args([
            "--url",
            url,
            "--prefix",
            prefix,
            "--scope",
            "leased",
            "--tasks",
            &tasks.to_string(),
            "--increments",
            &n.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {worker}: {e}"))
}

async fn open(url: &str, prefix: &str, lease: Duration) -> Storage {
    Storage::builder()
        .key_prefix(prefix)
        .lease(lease)
        .open(url)
        .await
        .expect("open")
}

/// Reads `child`'s stdout until a line starting with `start`.
async fn wait_for_start(child: &mut Child) -> tokio::process::ChildStdout {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(20), lines.read_line(&mut line))
            .await
            .expect("the holder started in time")
            .expect("read the holder's output");
        assert!(n > 0, "the holder ended before its closure started");
        if line.starts_with("start") {
            return lines.into_inner();
        }
        assert!(Instant::now() < until, "the holder did not start");
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid` with `kill(1)`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// 3 processes × 2 tasks × 4 exclusive updates (each holding the lease 20 ms) beside 2
/// processes × 2 tasks × 40 optimistic increments, all on one scope: no two closures overlap (by
/// their start/end lines), every call succeeds, and the count is every `Ok` of both kinds.
pub async fn exclusion_across_processes(worker: &str, url: &str, prefix: &str) {
    let lockers: Vec<Child> = (0..3)
        .map(|_| locked_worker(worker, url, prefix, 2, 4, 5_000, 20))
        .collect();
    let bumpers: Vec<Child> = (0..2)
        .map(|_| increments_worker(worker, url, prefix, 2, 40))
        .collect();
    let mut intervals: Vec<(u128, u128, String)> = Vec::new();
    let mut oks = 0u64;
    for child in lockers {
        let out = child.wait_with_output().await.expect("locker output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "a locker failed ({}): {}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Per process, the start and end lines of its tasks, paired by order per task is not
        // possible (tasks interleave), so pair each end with the open start of this process:
        // exclusion means at most one is open anywhere at a time.
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("start"), Some(pid), Some(us)) => {
                    intervals.push((us.parse().unwrap(), u128::MAX, pid.to_owned()))
                }
                (Some("end"), Some(pid), Some(us)) => {
                    let open = intervals
                        .iter_mut()
                        .rev()
                        .find(|(_, end, p)| *end == u128::MAX && p == pid)
                        .expect("an end after its start");
                    open.1 = us.parse().unwrap();
                }
                (Some("ok"), _, _) => oks += 1,
                _ => panic!("unexpected line {line:?}"),
            }
        }
    }
    for child in bumpers {
        let out = child.wait_with_output().await.expect("bumper output");
        assert!(
            out.status.success(),
            "an incrementer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        oks += String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    }
    assert_eq!(intervals.len(), 3 * 2 * 4);
    intervals.sort_unstable();
    for w in intervals.windows(2) {
        assert!(w[0].1 != u128::MAX, "a closure never ended");
        assert!(
            w[1].0 >= w[0].1,
            "two exclusive updates overlapped: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    assert_eq!(oks, 3 * 2 * 4 + 2 * 2 * 40);
    let st = open(url, prefix, Duration::from_secs(30)).await;
    let stored: Counter = st.get("leased").await.unwrap().unwrap();
    assert_eq!(stored.count, oks, "the count is every Ok");
    st.remove("leased").await.unwrap();
}

/// A holder killed with SIGKILL inside its closure (lease 500 ms): another process's update
/// waits for the lease to run out, then goes on; the dead holder wrote nothing.
pub async fn killed_holder_is_outlived(worker: &str, url: &str, prefix: &str) {
    let lease = Duration::from_millis(500);
    let st = open(url, prefix, lease).await;
    st.set("leased", &Counter { count: 10 }).await.unwrap();
    let mut holder = locked_worker(worker, url, prefix, 1, 1, 500, 60_000);
    let _stdout = wait_for_start(&mut holder).await;
    holder.kill().await.expect("SIGKILL the holder");
    let t0 = Instant::now();
    let n = st
        .scoped("leased", |c: &mut Counter| {
            c.count += 1;
            c.count
        })
        .await
        .expect("an update after the dead holder's lease");
    let waited = t0.elapsed();
    assert_eq!(n, 11, "the dead holder wrote nothing");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    eprintln!("after a SIGKILLed holder (lease {lease:?}): the next update waited {waited:?}");
    st.remove("leased").await.unwrap();
}

/// A holder stopped with SIGSTOP inside its closure for longer than its lease (500 ms), then
/// resumed: another process took the scope over meanwhile; the resumed holder's commit is
/// refused (`lost …`, `Error::LeaseLost`) and the newer value is kept.
pub async fn stopped_holder_is_refused(worker: &str, url: &str, prefix: &str) {
    let lease = Duration::from_millis(500);
    let st = open(url, prefix, lease).await;
    st.set("leased", &Counter { count: 10 }).await.unwrap();
    let mut holder = locked_worker(worker, url, prefix, 1, 1, 500, 200);
    let stdout = wait_for_start(&mut holder).await;
    let pid = holder.id().expect("the holder's pid");
    signal(pid, "STOP");
    let t0 = Instant::now();
    let n = st
        .scoped("leased", |c: &mut Counter| {
            c.count += 100;
            c.count
        })
        .await
        .expect("an update over the stopped holder's lease");
    let waited = t0.elapsed();
    assert_eq!(n, 110);
    // Past the lease, so that the holder's own renewal timer has run out too.
    tokio::time::sleep(lease).await;
    signal(pid, "CONT");
    let mut rest = String::new();
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
            .await
            .expect("the holder answered in time")
            .expect("read");
        if read == 0 {
            break;
        }
        rest.push_str(&line);
    }
    let status = holder.wait().await.expect("the holder ended");
    assert!(status.success(), "the holder failed: {status}\n{rest}");
    assert!(
        rest.lines().any(|l| l.starts_with("lost ")),
        "the resumed holder was not told it lost its lease: {rest:?}"
    );
    assert!(!rest.lines().any(|l| l.starts_with("ok ")), "{rest:?}");
    let stored: Counter = st.get("leased").await.unwrap().unwrap();
    assert_eq!(stored.count, 110, "the newer value is kept");
    eprintln!(
        "a SIGSTOPped holder (lease {lease:?}): taken over after {waited:?}; resumed: {rest}"
    );
    st.remove("leased").await.unwrap();
}
