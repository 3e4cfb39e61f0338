//! A bank: accounts moved between by several-scope commits, checked for conservation,
//! non-negative balances and exactly-once ledger entries. Generic over the storage URL, so a
//! driver joins with a few lines in its test file.
//!
//! Each account is one scope ([`Account`]): a balance and a bounded ledger of the transfers it
//! took part in, each entry its transfer id and the amount it moved in or out. A transfer is one
//! [`Storage::try_scoped_many`] over its two accounts: it refuses an overdraft and a full ledger,
//! else moves the amount and writes one entry in each ledger.
//!
//! Transfers run in tasks ([`run`]), in this process or in `mp-worker --bank` processes
//! ([`Workers`]), which print every outcome as it happens, so a process killed with SIGKILL has
//! reported all it knew. [`check`] then reads every account and asserts:
//! - the money is conserved, and no balance is negative (nor was one ever seen negative);
//! - each balance is the opening balance plus its ledger's amounts;
//! - every transfer in a ledger is in exactly its two accounts' ledgers, once each, with
//!   opposite amounts;
//! - every transfer reported committed is there; one whose outcome was unknown
//!   ([`Error::may_have_happened`]) is in both ledgers or neither; one that failed otherwise,
//!   or was refused, is in none; and no unreported one is there, unless processes were killed
//!   mid-transfer.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mp_storage::{Error, Scope, Storage};

/// Every account's opening balance.
pub const OPENING: i64 = 1_000;

/// The most entries a ledger keeps; a transfer into a full ledger is refused, so every committed
/// transfer stays checkable while records stay small.
pub const LEDGER_CAP: usize = 2_000;

/// One account: its balance and the transfers it took part in.
#[derive(Scope, serde::Serialize, serde::Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The balance; never negative.
    pub balance: i64,
    /// `(transfer id, amount in (+) or out (-))`, oldest first, at most [`LEDGER_CAP`].
    pub ledger: Vec<(u64, i64)>,
}

/// The name of account `i`.
pub fn account(i: usize) -> String {
    format!("acct:{i:03}")
}

/// The names of `n` accounts.
pub fn accounts(n: usize) -> Vec<String> {
    (0..n).map(account).collect()
}

/// Writes the opening balance of `n` accounts (empty ledgers).
pub async fn open_accounts(st: &Storage, n: usize) {
    for name in accounts(n) {
        st.set(
            &name,
            &Account {
                balance: OPENING,
                ledger: Vec::new(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("the opening balance of {name}: {e}"));
    }
}

/// One transfer: `amount` from account `from` to account `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// Unique across every task and process of a run.
    pub id: u64,
    /// Account index it takes from.
    pub from: usize,
    /// Account index it gives to.
    pub to: usize,
    /// Positive.
    pub amount: i64,
}

/// What became of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: in both ledgers.
    Committed,
    /// Refused by the closure (overdraft or a full ledger): in neither.
    Refused,
    /// Failed with an error that may have taken effect: in both or neither.
    Unknown,
    /// Failed with an error that did not take effect: in neither.
    Failed,
}

impl Outcome {
    fn tag(self) -> &'static str {
        match self {
            Outcome::Committed => "ok",
            Outcome::Refused => "no",
            Outcome::Unknown => "?",
            Outcome::Failed => "x",
        }
    }

    fn from_tag(tag: &str) -> Option<Outcome> {
        Some(match tag {
            "ok" => Outcome::Committed,
            "no" => Outcome::Refused,
            "?" => Outcome::Unknown,
            "x" => Outcome::Failed,
            _ => return None,
        })
    }
}

/// One line of a worker's output: `TAG ID FROM TO AMOUNT`.
pub fn line(t: &Transfer, o: Outcome) -> String {
    format!("{} {} {} {} {}", o.tag(), t.id, t.from, t.to, t.amount)
}

/// Parses a line of [`line()`]; `None` for anything else.
pub fn parse_line(s: &str) -> Option<(Transfer, Outcome)> {
    let mut it = s.split_whitespace();
    let o = Outcome::from_tag(it.next()?)?;
    let id = it.next()?.parse().ok()?;
    let from = it.next()?.parse().ok()?;
    let to = it.next()?.parse().ok()?;
    let amount = it.next()?.parse().ok()?;
    Some((
        Transfer {
            id,
            from,
            to,
            amount,
        },
        o,
    ))
}

/// Everything the tasks of a run reported.
#[derive(Debug, Default)]
pub struct Report {
    /// Every transfer tried, with what became of it.
    pub outcomes: Vec<(Transfer, Outcome)>,
    /// Unexpected errors (neither a connection or timeout error nor "may have happened"), as
    /// text; a run under faults checks it is empty.
    pub unexpected: Vec<String>,
    /// Times a closure saw a negative balance (never, in a correct store).
    pub negatives_seen: u64,
}

impl Report {
    /// Adds another report.
    pub fn merge(&mut self, other: Report) {
        self.outcomes.extend(other.outcomes);
        self.unexpected.extend(other.unexpected);
        self.negatives_seen += other.negatives_seen;
    }

    /// How many transfers had outcome `o`.
    pub fn count(&self, o: Outcome) -> usize {
        self.outcomes.iter().filter(|(_, x)| *x == o).count()
    }
}

/// Why a transfer was refused, or the storage error that stopped it.
#[derive(Debug)]
enum Refusal {
    Overdraft,
    LedgerFull,
    Negative,
    Storage(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Storage(e)
    }
}

/// Runs transfer `t` on `st`.
async fn transfer(st: &Storage, t: &Transfer) -> (Outcome, Option<String>, bool) {
    let names = [account(t.from), account(t.to)];
    let r = st
        .try_scoped_many(&names, |a: &mut [Account]| {
            if a.iter().any(|a| a.balance < 0) {
                return Err(Refusal::Negative);
            }
            if a[0].balance < t.amount {
                return Err(Refusal::Overdraft);
            }
            if a.iter().any(|a| a.ledger.len() >= LEDGER_CAP) {
                return Err(Refusal::LedgerFull);
            }
            a[0].balance -= t.amount;
            a[1].balance += t.amount;
            a[0].ledger.push((t.id, -t.amount));
            a[1].ledger.push((t.id, t.amount));
            Ok(())
        })
        .await;
    match r {
        Ok(()) => (Outcome::Committed, None, false),
        Err(Refusal::Overdraft | Refusal::LedgerFull) => (Outcome::Refused, None, false),
        Err(Refusal::Negative) => (Outcome::Refused, None, true),
        Err(Refusal::Storage(e)) if e.may_have_happened() => (Outcome::Unknown, None, false),
        Err(Refusal::Storage(e)) => {
            let expected = matches!(
                e.backend_kind(),
                Some(mp_storage::BackendKind::Connection | mp_storage::BackendKind::Timeout)
            );
            (
                Outcome::Failed,
                (!expected).then(|| format!("{e:?}")),
                false,
            )
        }
    }
}

/// Runs `tasks` tasks making random transfers between `n_accounts` accounts on `st` for `secs`
/// seconds (ids from `id_base` on, each task a range of its own); `each` sees every outcome as it
/// happens. After an error a task waits 5 ms, so a store that is down is not hammered.
pub async fn run<F>(
    st: &Storage,
    n_accounts: usize,
    tasks: usize,
    secs: f64,
    id_base: u64,
    each: F,
) -> Report
where
    F: Fn(&Transfer, Outcome) + Send + Sync + 'static,
{
    assert!(n_accounts >= 2, "a bank needs two accounts");
    let each = Arc::new(each);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut joins = Vec::new();
    for task in 0..tasks as u64 {
        let (st, each) = (st.clone(), each.clone());
        joins.push(tokio::spawn(async move {
            let mut report = Report::default();
            let mut seq = 0u64;
            // Tasks watch the clock themselves: the memory driver's futures may never yield.
            while Instant::now() < until {
                seq += 1;
                let from = rand::random_range(0..n_accounts);
                let t = Transfer {
                    id: id_base + (task << 32) + seq,
                    from,
                    to: (from + rand::random_range(1..n_accounts)) % n_accounts,
                    amount: rand::random_range(1..=OPENING / 4),
                };
                let (o, unexpected, negative) = transfer(&st, &t).await;
                each(&t, o);
                report.outcomes.push((t, o));
                report.unexpected.extend(unexpected);
                report.negatives_seen += u64::from(negative);
                if matches!(o, Outcome::Unknown | Outcome::Failed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if seq.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            report
        }));
    }
    let mut all = Report::default();
    for j in joins {
        all.merge(j.await.expect("a transfer task"));
    }
    all
}

/// The entry of `mp-worker --bank`: runs [`run`] and prints each outcome as one [`line()`],
/// flushed at once, then `# done`.
pub async fn worker_main(st: &Storage, n_accounts: usize, tasks: usize, secs: f64, id_base: u64) {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let printer = out.clone();
    let report = run(st, n_accounts, tasks, secs, id_base, move |t, o| {
        let mut out = printer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{}", line(t, o));
        let _ = out.flush();
    })
    .await;
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    for e in &report.unexpected {
        let _ = writeln!(out, "! {e}");
    }
    if report.negatives_seen > 0 {
        let _ = writeln!(out, "! negative balances seen {}", report.negatives_seen);
    }
    let _ = writeln!(out, "# done");
    let _ = out.flush();
}

/// The next worker's id range (ids `n << 40` and on; a task's range is `task << 32` within it).
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// `mp-worker --bank` processes, their output read on threads as it comes.
pub struct Workers {
    children: Vec<Child>,
    readers: Vec<std::thread::JoinHandle<(Report, bool)>>,
}

impl Workers {
    /// Starts `procs` processes of `worker` (the `mp-worker` binary), each running `tasks`
    /// tasks of transfers between `n_accounts` accounts under `prefix` on `url` for `secs`.
    pub fn start(
        worker: &str,
        url: &str,
        prefix: &str,
        n_accounts: usize,
        procs: usize,
        tasks: usize,
        secs: f64,
    ) -> Workers {
        let mut children = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..procs {
            // Ids are unique across the processes this test process starts.
            let id_base = NEXT_WORKER.fetch_add(1, Ordering::SeqCst) << 40;
            let mut child = Command::new(worker)
                .args([
                    "--url",
                    url,
                    "--prefix",
                    prefix,
                    "--bank",
                    &n_accounts.to_string(),
                    "--tasks",
                    &tasks.to_string(),
                    "--secs",
                    &secs.to_string(),
                    "--id-base",
                    &id_base.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {worker}: {e}"));
            let stdout = child.stdout.take().expect("worker stdout");
            readers.push(std::thread::spawn(move || {
                let mut report = Report::default();
                let mut done = false;
                for l in BufReader::new(stdout).lines() {
                    let Ok(l) = l else { break };
                    if let Some(e) = l.strip_prefix("! ") {
                        report.unexpected.push(e.to_owned());
                    } else if l == "# done" {
                        done = true;
                    } else if let Some(x) = parse_line(&l) {
                        report.outcomes.push(x);
                    }
                }
                (report, done)
            }));
            children.push(child);
        }
        Workers { children, readers }
    }

    /// How many processes are started.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Kills process `i` with SIGKILL (if it still runs).
    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
    }

    /// Waits for every process; asserts each ended on its own (exit 0, `# done` printed) unless
    /// `killed` says it was killed. Returns their reports merged.
    pub fn wait(self, killed: &[bool]) -> Report {
        let mut all = Report::default();
        for (i, (mut child, reader)) in self.children.into_iter().zip(self.readers).enumerate() {
            let status = child.wait().expect("wait for a worker");
            let (report, done) = reader.join().expect("a worker's reader");
            if !killed.get(i).copied().unwrap_or(false) {
                assert!(
                    status.success() && done,
                    "worker {i} failed ({status}), done: {done}"
                );
            }
            all.merge(report);
        }
        all
    }

    /// Waits for every process, none killed (see [`Workers::wait`]), without blocking the
    /// runtime.
    pub async fn join(self) -> Report {
        tokio::task::spawn_blocking(move || self.wait(&[]))
            .await
            .expect("join the workers")
    }
}

/// What [`check`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Transfers in the ledgers.
    pub in_ledgers: usize,
    /// Transfers reported committed.
    pub committed: usize,
    /// Reported unknown, and found committed.
    pub unknown_committed: usize,
    /// Reported unknown, and found not committed.
    pub unknown_not: usize,
    /// Found committed, reported by no one (a process killed mid-transfer).
    pub unreported: usize,
    /// Refused (overdraft or a full ledger).
    pub refused: usize,
    /// Failed with an error that did not take effect.
    pub failed: usize,
}

/// Reads the `n_accounts` accounts on `st` (retrying for up to 10 s while the store does not
/// answer) and checks them against `report` (see the module's comment). `killed` says processes
/// were killed mid-transfer, whose last transfers nobody reported.
pub async fn check(st: &Storage, n_accounts: usize, report: &Report, killed: bool) -> Summary {
    assert!(
        report.unexpected.is_empty(),
        "unexpected errors: {:?}",
        &report.unexpected[..report.unexpected.len().min(5)]
    );
    assert_eq!(report.negatives_seen, 0, "a closure saw a negative balance");
    let names = accounts(n_accounts);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        match st.get_many::<Account, _>(&names).await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the accounts do not read: {e}"),
        }
    };
    let accounts: Vec<Account> = stored
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|| panic!("account {i} is gone")))
        .collect();

    let total: i64 = accounts.iter().map(|a| a.balance).sum();
    assert_eq!(
        total,
        OPENING * n_accounts as i64,
        "the money is not conserved"
    );
    // Where each transfer is: (account, amount) per entry.
    let mut found: HashMap<u64, Vec<(usize, i64)>> = HashMap::new();
    for (i, a) in accounts.iter().enumerate() {
        assert!(a.balance >= 0, "account {i} is negative: {}", a.balance);
        assert!(
            a.ledger.len() <= LEDGER_CAP,
            "account {i}'s ledger overflows"
        );
        let sum: i64 = a.ledger.iter().map(|(_, m)| m).sum();
        assert_eq!(
            a.balance,
            OPENING + sum,
            "account {i}'s balance is not its ledger's"
        );
        for (id, amount) in &a.ledger {
            found.entry(*id).or_default().push((i, *amount));
        }
    }
    for (id, entries) in &found {
        let ok = matches!(entries.as_slice(),
            [(a, x), (b, y)] if a != b && *x == -*y && *x != 0);
        assert!(ok, "transfer {id} is in the ledgers as {entries:?}");
    }

    let mut s = Summary {
        in_ledgers: found.len(),
        ..Summary::default()
    };
    let mut reported = HashSet::new();
    for (t, o) in &report.outcomes {
        assert!(reported.insert(t.id), "transfer {} reported twice", t.id);
        let entries = found.get(&t.id);
        let expected = {
            let mut e = vec![(t.from, -t.amount), (t.to, t.amount)];
            e.sort_unstable();
            e
        };
        let matches_transfer = entries.is_some_and(|e| {
            let mut e = e.clone();
            e.sort_unstable();
            e == expected
        });
        match o {
            Outcome::Committed => {
                assert!(
                    matches_transfer,
                    "committed transfer {t:?} is in the ledgers as {entries:?}"
                );
                s.committed += 1;
            }
            Outcome::Unknown => {
                assert!(
                    entries.is_none() || matches_transfer,
                    "unknown transfer {t:?} is in the ledgers as {entries:?}"
                );
                if entries.is_some() {
                    s.unknown_committed += 1;
                } else {
                    s.unknown_not += 1;
                }
            }
            Outcome::Refused | Outcome::Failed => {
                assert!(
                    entries.is_none(),
                    "transfer {t:?} ({o:?}) is in the ledgers as {entries:?}"
                );
                if *o == Outcome::Refused {
                    s.refused += 1;
                } else {
                    s.failed += 1;
                }
            }
        }
    }
    s.unreported = found.keys().filter(|id| !reported.contains(id)).count();
    assert!(
        killed || s.unreported == 0,
        "{} transfers are in the ledgers that nobody reported",
        s.unreported
    );
    s
}

/// Opens `url` (a [`Storage`] under `prefix`) with a retry deadline fit for faults. A failure
/// that calling again may cure (a connection killed while opening) is retried for up to 15 s,
/// as a client under connection kills would.
pub async fn open(url: &str, prefix: &str) -> Storage {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let opened = Storage::builder()
            .key_prefix(prefix)
            .retry(mp_storage::RetryPolicy::default().deadline(Some(Duration::from_secs(30))))
            .open(url)
            .await;
        match opened {
            Ok(st) => return st,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", mp_storage::redact_url(url)),
        }
    }
}

/// Removes the accounts (the end of a test on a shared server), retrying a connection killed
/// just before for up to 10 s; what cannot be removed is reported, not raised.
pub async fn close_accounts(st: &Storage, n_accounts: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for name in accounts(n_accounts) {
        loop {
            match st.remove(&name).await {
                Ok(_) => break,
                Err(e)
                    if Instant::now() < deadline
                        && e.category() != mp_storage::ErrorCategory::BadInput =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    eprintln!("cannot remove {name}: {e}");
                    break;
                }
            }
        }
    }
}

/// The bank in this process: `tasks` tasks over `n_accounts` accounts for `secs` on `url` under
/// a fresh prefix, then [`check`]. Returns the summary.
pub async fn in_process(
    url: &str,
    tag: &str,
    n_accounts: usize,
    tasks: usize,
    secs: f64,
) -> Summary {
    let st = open(url, &crate::unique_prefix(tag)).await;
    open_accounts(&st, n_accounts).await;
    let report = run(&st, n_accounts, tasks, secs, 0, |_, _| {}).await;
    let s = check(&st, n_accounts, &report, false).await;
    eprintln!("{tag}: {tasks} tasks over {n_accounts} accounts for {secs} s: {s:?}");
    assert!(s.committed > 0, "no transfer committed");
    close_accounts(&st, n_accounts).await;
    s
}

/// The shape of a run across processes.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Accounts.
    pub accounts: usize,
    /// `mp-worker` processes.
    pub procs: usize,
    /// Tasks per process.
    pub tasks: usize,
    /// Seconds of transfers.
    pub secs: f64,
}

/// The bank in `mp-worker` processes (`worker`, the binary's path) shaped by `shape`, on `url`
/// under a fresh prefix, then [`check`]. With `kill`, it runs every 100 ms meanwhile (returning
/// how many connections it killed), and at least one kill must land. A driver joins with one
/// call in its test file:
///
/// ```ignore
/// let shape = Shape { accounts: 16, procs: 3, tasks: 4, secs: 2.0 };
/// bank::across_processes(env!("CARGO_BIN_EXE_mp-worker"), &url, "pg-bank", shape, None::<bank::NoKill>).await;
/// ```
pub async fn across_processes<K, Fut>(
    worker: &str,
    url: &str,
    tag: &str,
    shape: Shape,
    mut kill: Option<K>,
) -> Summary
where
    K: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let Shape {
        accounts: n_accounts,
        procs,
        tasks,
        secs,
    } = shape;
    let prefix = crate::unique_prefix(tag);
    let st = open(url, &prefix).await;
    open_accounts(&st, n_accounts).await;
    let workers = Workers::start(worker, url, &prefix, n_accounts, procs, tasks, secs);
    // Finished also when it panics (a worker failed): the kills stop either way.
    let joined = tokio::spawn(workers.join());
    let mut killed = 0;
    if let Some(kill) = kill.as_mut() {
        while !joined.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !joined.is_finished() {
                killed += kill().await;
            }
        }
    }
    let report = joined.await.expect("the workers");
    let s = check(&st, n_accounts, &report, false).await;
    eprintln!(
        "{tag}: {procs} processes x {tasks} tasks over {n_accounts} accounts for {secs} s, \
         {killed} connections killed: {s:?}"
    );
    if kill.is_some() {
        assert!(killed > 0, "no connection was killed");
    }
    assert!(s.committed > 0, "no transfer committed");
    close_accounts(&st, n_accounts).await;
    s
}

/// The bank in `procs` `mp-worker` processes of `tasks` tasks each over `n_accounts` accounts on
/// `url`, `rounds` times: each round the processes are killed with SIGKILL at random moments
/// (after 100 to 600 ms), then the store is opened afresh and [`check`]ed against everything
/// reported so far. Returns the last summary.
pub async fn killed_processes(
    worker: &str,
    url: &str,
    tag: &str,
    n_accounts: usize,
    procs: usize,
    tasks: usize,
    rounds: usize,
) -> Summary {
    let prefix = crate::unique_prefix(tag);
    open_accounts(&open(url, &prefix).await, n_accounts).await;
    let mut report = Report::default();
    let mut s = Summary::default();
    for round in 0..rounds {
        let mut workers = Workers::start(worker, url, &prefix, n_accounts, procs, tasks, 60.0);
        let waits: Vec<u64> = (0..workers.len())
            .map(|_| rand::random_range(100..600))
            .collect();
        let started = Instant::now();
        for (i, ms) in waits.iter().enumerate() {
            let at = started + Duration::from_millis(*ms);
            tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
            workers.kill(i);
        }
        let killed = vec![true; workers.len()];
        report.merge(
            tokio::task::spawn_blocking(move || workers.wait(&killed))
                .await
                .expect("join the workers"),
        );
        // A fresh handle, as after a restart: it settles what the kills cut short.
        let st = open(url, &prefix).await;
        s = check(&st, n_accounts, &report, true).await;
        eprintln!("{tag}: round {round}: {s:?}");
    }
    assert!(s.committed > 0, "no transfer committed");
    s
}

/// The type of `kill` for [`across_processes`] without kills.
pub type NoKill = fn() -> std::future::Ready<u64>;
