//! The file driver: the behavior suite, several processes on one scope, writers (and
//! several-scope commits) killed with SIGKILL, the file-name encoding as a property, and a full
//! disk.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp_storage::driver::file::{
    key_of_record_file_name, record_file_name, FileDriver, FileOptions,
};
use mp_storage::{BackendKind, Error, Storage};
use mp_storage_tests::Counter;
use proptest::prelude::*;

mp_storage::behavior_suite!(mp_storage_tests::targets::file());

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Several processes

/// 4 processes x 4 tasks x 250 increments of one scope: exactly 4,000, every count handed out
/// once. Without fsync, which the locking does not depend on, so that the count does not wait on
/// a slow disk (durable writes are checked by the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly() {
    processes_count_exactly("?fsync=false", 250).await;
}

/// The same with durable writes, fewer of them (a commit costs two fsyncs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly_durable() {
    processes_count_exactly("", 20).await;
}

/// Two processes × 16 tasks on one scope for 2 s (durable writes): exact, every count
/// distinct; each process's share and tail latency are printed (the bench measures them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_hot_scope() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}", dir.path().display());
    let per = mp_storage_tests::fair_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "mp/",
        "hot",
        2,
        16,
        2.0,
    )
    .await;
    assert!(per.iter().sum::<u64>() > 0);
}

async fn processes_count_exactly(options: &str, increments: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}{options}", dir.path().display());
    let started = Instant::now();
    let total = mp_storage_tests::multi_process_increments(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "mp/",
        "hot",
        4,
        4,
        increments,
    )
    .await;
    assert_eq!(total, 16 * increments as u64);
    eprintln!(
        "4 processes x 4 tasks x {increments} increments ({url}): {:?}",
        started.elapsed()
    );
    // Nothing but the record and the lock directory is left.
    assert_eq!(file_names(dir.path()), vec!["%locks", "mp%2fhot.json"]);
}

/// The bank across processes: 3 processes x 4 tasks over 8 accounts for 2 s (see
/// `mp_storage_tests::bank`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    mp_storage_tests::bank::across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "file-bank",
        mp_storage_tests::bank::Shape {
            accounts: 8,
            procs: 3,
            tasks: 4,
            secs: 2.0,
        },
        None::<mp_storage_tests::bank::NoKill>,
    )
    .await;
}

/// The bank with its writers killed: 2 processes x 4 tasks over 8 accounts (durable writes),
/// both killed with SIGKILL at random moments, 6 rounds; after each, a fresh handle finds the
/// money conserved and every transfer in both ledgers or neither.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_with_killed_writers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}", dir.path().display());
    mp_storage_tests::bank::killed_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        "file-bank-kill",
        8,
        2,
        4,
        6,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// SIGKILL

const KILL_CHILD_DIR: &str = "MP_FILE_TEST_KILL_CHILD_DIR";

/// Not a test on its own: the writer process of `killed_writers_leave_a_whole_record`, which
/// runs this test binary again with `KILL_CHILD_DIR` set. It increments a scope forever and
/// prints `ack N` once each count is committed.
#[test]
fn kill_child_writer() {
    let Ok(dir) = std::env::var(KILL_CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let st = Storage::open(&format!("file:{dir}"))
            .await
            .expect("open in the child");
        let mut out = std::io::stdout();
        loop {
            let n = st
                .scoped("killed", |c: &mut Counter| {
                    c.count += 1;
                    c.count
                })
                .await
                .expect("increment in the child");
            writeln!(out, "ack {n}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

/// A writer killed with SIGKILL at a random moment, 20 times over: the record always decodes
/// and holds the last acknowledged count or one more.
#[cfg(unix)]
#[test]
fn killed_writers_leave_a_whole_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let read_count = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let st = Storage::open(&format!("file:{}", dir.path().display()))
                .await
                .expect("open");
            let count = st
                .get::<Counter>("killed")
                .await
                .unwrap_or_else(|e| panic!("the record does not decode after a kill: {e}"))
                .map_or(0, |c| c.count);
            assert_eq!(st.list("").await.expect("list"), vec!["killed".to_owned()]);
            count
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = 0;
    let mut rounds_mid_write = 0;
    for round in 0..20 {
        assert!(Instant::now() < deadline, "took too long");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test kill_child_writer ... ` before the first line.
                if let Some(at) = line.find("ack ") {
                    if let Ok(n) = line[at + 4..].trim().parse() {
                        let _ = tx.send(n);
                    }
                }
            }
        });
        // Wait for the first ack, then let it run a random while before the kill.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer acknowledged nothing");
        assert_eq!(
            first,
            before + 1,
            "round {round} started from a wrong count"
        );
        std::thread::sleep(Duration::from_millis(rand::random_range(5..150)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let _ = reader.join();
        let last_ack = rx.try_iter().last().unwrap_or(first).max(first);
        let stored = read_count(&rt);
        assert!(
            stored == last_ack || stored == last_ack + 1,
            "round {round}: stored {stored}, last acknowledged {last_ack}"
        );
        if stored == last_ack + 1 {
            rounds_mid_write += 1;
        }
        before = stored;
    }
    eprintln!(
        "20 kills: final count {before}, {rounds_mid_write} kills landed after a commit was written but before its ack was read"
    );
}

/// An account of the transfer tests: a balance and the ids of the transfers it took part in.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug)]
struct Account {
    balance: i64,
    ledger: Vec<u64>,
}

impl mp_storage::Scope for Account {}

const ACCOUNTS: [&str; 4] = ["acct:a", "acct:b", "acct:c", "acct:d"];
const OPENING_BALANCE: i64 = 1000;
const TRANSFER_CHILD_DIR: &str = "MP_FILE_TEST_TRANSFER_CHILD_DIR";

/// Not a test on its own: the process of `killed_transfers_are_all_or_nothing`, which runs this
/// test binary again with `TRANSFER_CHILD_DIR` set. Four tasks move money between the accounts
/// forever, with durable writes, and print `ack ID` once each transfer is committed.
#[test]
fn kill_child_transfers() {
    let Ok(dir) = std::env::var(TRANSFER_CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let st = Storage::open(&format!("file:{dir}"))
            .await
            .expect("open in the child");
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (st, out) = (st.clone(), out.clone());
                tokio::spawn(async move {
                    loop {
                        let id = rand::random::<u64>() >> 1;
                        let from = rand::random_range(0..ACCOUNTS.len());
                        let to = (from + rand::random_range(1..ACCOUNTS.len())) % ACCOUNTS.len();
                        let amount = rand::random_range(1..=300i64);
                        let moved = st
                            .scoped_many(&[ACCOUNTS[from], ACCOUNTS[to]], |a: &mut [Account]| {
                                if a[0].balance < amount {
                                    return false;
                                }
                                a[0].balance -= amount;
                                a[1].balance += amount;
                                a[0].ledger.push(id);
                                a[1].ledger.push(id);
                                true
                            })
                            .await
                            .expect("a transfer in the child");
                        if moved {
                            let mut out = out.lock().expect("stdout");
                            writeln!(out, "ack {id}").expect("stdout");
                            out.flush().expect("stdout");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a transfer task");
        }
    });
}

/// A process of `kill_child_transfers`, its acknowledgements read on a thread.
#[cfg(unix)]
struct Mover {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    acks: std::sync::mpsc::Receiver<u64>,
}

#[cfg(unix)]
impl Mover {
    /// Starts a mover on `dir` and waits for its first acknowledged transfer.
    fn start(dir: &Path) -> (Mover, u64) {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_transfers",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(TRANSFER_CHILD_DIR, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the mover");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, acks) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("ack ") {
                    if let Ok(n) = line[at + 4..].trim().parse() {
                        let _ = tx.send(n);
                    }
                }
            }
        });
        let first = acks
            .recv_timeout(Duration::from_secs(30))
            .expect("the mover acknowledged nothing");
        (
            Mover {
                child,
                reader,
                acks,
            },
            first,
        )
    }

    /// Kills it with SIGKILL; returns the transfers it acknowledged.
    fn kill(mut self) -> Vec<u64> {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        let _ = self.reader.join();
        self.acks.try_iter().collect()
    }
}

/// Processes moving money between four accounts (several-scope commits, durable writes) killed
/// with SIGKILL at random moments, 20 rounds (`MP_KILL_ROUNDS` for more). With one mover, the
/// store is opened after each kill, which settles a commit cut short. With two, the first is
/// killed while the second goes on (it settles the commit when it touches one of its scopes),
/// then the second. Then, every account decodes, the money is all there, no intent record is
/// left, each transfer is in both of its accounts' ledgers or in neither, and every
/// acknowledged one is in both.
#[cfg(unix)]
fn kill_transfers(movers: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!("file:{}", dir.path().display());
    rt.block_on(async {
        let st = Storage::open(&url).await.expect("open");
        for name in ACCOUNTS {
            st.set(
                name,
                &Account {
                    balance: OPENING_BALANCE,
                    ledger: Vec::new(),
                },
            )
            .await
            .expect("an opening balance");
        }
    });
    let rounds: u32 = std::env::var("MP_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let deadline = Instant::now() + Duration::from_secs(120) * (rounds / 20).max(1);
    let mut acked: HashSet<u64> = HashSet::new();
    // Intent records found after a kill, by name: whole (to roll forward) or torn (to roll
    // back).
    let mut found: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut transfers = 0;
    let look = |found: &mut std::collections::HashMap<String, bool>| {
        for n in file_names(dir.path())
            .into_iter()
            .filter(|n| n.starts_with("%commit.") && n.ends_with(".intent"))
        {
            let Ok(bytes) = std::fs::read(dir.path().join(&n)) else {
                continue; // settled meanwhile by a live mover
            };
            let parses = bytes.ends_with(b"\n")
                && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
            found.insert(n, parses);
        }
    };
    for round in 0..rounds {
        assert!(Instant::now() < deadline, "took too long");
        let mut running = Vec::new();
        for _ in 0..movers {
            let (mover, first) = Mover::start(dir.path());
            acked.insert(first);
            running.push(mover);
        }
        for mover in running {
            std::thread::sleep(Duration::from_micros(rand::random_range(0..150_000)));
            acked.extend(mover.kill());
            look(&mut found);
        }

        let (accounts, left) = rt.block_on(async {
            let st = Storage::open(&url).await.expect("open after a kill");
            assert_eq!(
                st.list("").await.expect("list"),
                ACCOUNTS.map(str::to_owned).to_vec()
            );
            let accounts: Vec<Account> = st
                .get_many(&ACCOUNTS)
                .await
                .unwrap_or_else(|e| panic!("round {round}: an account does not decode: {e}"))
                .into_iter()
                .map(|a| a.expect("an account"))
                .collect();
            (accounts, file_names(dir.path()))
        });
        assert!(
            !left.iter().any(|n| n.ends_with(".intent")),
            "round {round}: an intent record is left after open: {left:?}"
        );
        let total: i64 = accounts.iter().map(|a| a.balance).sum();
        assert_eq!(
            total,
            OPENING_BALANCE * ACCOUNTS.len() as i64,
            "round {round}: money is not conserved: {accounts:?}"
        );
        assert!(accounts.iter().all(|a| a.balance >= 0), "{accounts:?}");
        let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for a in &accounts {
            let distinct: HashSet<&u64> = a.ledger.iter().collect();
            assert_eq!(
                distinct.len(),
                a.ledger.len(),
                "round {round}: a transfer twice in one ledger"
            );
            for id in &a.ledger {
                *seen.entry(*id).or_default() += 1;
            }
        }
        if let Some((id, n)) = seen.iter().find(|(_, n)| **n != 2) {
            panic!("round {round}: transfer {id} is in {n} ledgers");
        }
        if let Some(id) = acked.iter().find(|id| !seen.contains_key(id)) {
            panic!("round {round}: acknowledged transfer {id} is in no ledger");
        }
        transfers = seen.len();
    }
    let whole = found.values().filter(|w| **w).count();
    let torn = found.len() - whole;
    eprintln!(
        "{rounds} rounds of {movers} mover(s) killed: {transfers} transfers committed ({} \
         acknowledged); the kills left {whole} whole intent records (rolled forward) and {torn} \
         torn ones (rolled back)",
        acked.len()
    );
}

#[cfg(unix)]
#[test]
fn killed_transfers_are_all_or_nothing() {
    kill_transfers(1);
}

#[cfg(unix)]
#[test]
fn killed_transfers_are_settled_by_a_live_process() {
    kill_transfers(2);
}

// ---------------------------------------------------------------------------------------------
// SIGSTOP

/// Sends `signal` (`STOP`, `CONT`) to process `pid` with `kill(1)`.
#[cfg(unix)]
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Waits until process `pid` is stopped (state `T` in `/proc/<pid>/stat`; where there is no
/// `/proc`, a short pause).
#[cfg(unix)]
fn wait_stopped(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::read_to_string(&stat) {
            Ok(s) => {
                // `pid (comm) state …`: the state follows the last `)`.
                let state = s
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next());
                if state == Some('T') {
                    return;
                }
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
        }
        assert!(Instant::now() < until, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether another process holds the lock of the file at `path`.
fn lock_is_held(path: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return false;
    };
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => false,
        Err(fs4::TryLockError::WouldBlock) => true,
        Err(fs4::TryLockError::Error(e)) => panic!("try_lock {}: {e}", path.display()),
    }
}

/// A child process that is continued and killed when dropped, a failing test included: a
/// stopped lock holder must not outlive the test.
#[cfg(unix)]
struct StoppableChild(std::process::Child);

#[cfg(unix)]
impl Drop for StoppableChild {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A writer stopped (SIGSTOP) while it holds a scope's lock: another writer with
/// `lock_timeout=1s` fails after about a second with a timeout error that says nothing was
/// sent, instead of hanging as long as the holder stays stopped. Reads go on meanwhile; once the
/// holder is gone, writes do too.
#[cfg(unix)]
#[test]
fn a_stopped_lock_holder_times_out_writers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The writer of `killed_writers_leave_a_whole_record`, with durable writes: most of its
    // time is spent inside the scope's lock.
    let mut child = StoppableChild(
        Command::new(&exe)
            .args([
                "--exact",
                "kill_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer"),
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("ack ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the writer acknowledged nothing");
    let lock = rt
        .block_on(FileDriver::open(dir.path(), FileOptions::new()))
        .expect("open")
        .lock_path("killed");

    // Stop it, and look whether it stopped inside the lock; else let it go on a little.
    let mut held = false;
    for tries in 1..=300 {
        signal(pid, "STOP");
        wait_stopped(pid);
        if lock_is_held(&lock) {
            eprintln!("the writer stopped inside the lock at try {tries}");
            held = true;
            break;
        }
        signal(pid, "CONT");
        std::thread::sleep(Duration::from_micros(rand::random_range(200..3000)));
    }
    assert!(
        held,
        "the writer was never caught holding {}",
        lock.display()
    );

    let url = format!("file:{}?lock_timeout=1s", dir.path().display());
    rt.block_on(async {
        let st = Storage::open(&url).await.expect("open");
        let before = st
            .get::<Counter>("killed")
            .await
            .expect("a read takes no lock")
            .expect("a record")
            .count;
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            st.scoped("killed", |c: &mut Counter| c.count += 1),
        )
        .await
        .expect("the update hung behind a stopped lock holder");
        let took = started.elapsed();
        match &r {
            Err(Error::Backend {
                kind: BackendKind::Timeout,
                sent: false,
                ..
            }) => {}
            other => panic!("expected an unsent timeout error, got {other:?}"),
        }
        let e = r.unwrap_err();
        assert!(e.is_retryable() && !e.may_have_happened(), "{e:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "took {took:?}"
        );
        eprintln!("the update gave up after {took:?}: {e}");
        // Nothing was written.
        assert!(lock_is_held(&lock));
        assert_eq!(
            st.get::<Counter>("killed").await.unwrap().unwrap().count,
            before
        );
    });

    // The holder goes away; the lock with it.
    drop(child);
    let _ = reader.join();
    rt.block_on(async {
        let st = Storage::open(&url).await.expect("open");
        let n = st
            .scoped("killed", |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await
            .expect("an update once the holder is gone");
        assert!(n >= 2);
    });
}

// ---------------------------------------------------------------------------------------------
// The name encoding

/// Keys as the engine hands them: non-empty, no NUL, at most 2,048 bytes.
fn any_key() -> impl Strategy<Value = String> {
    let tricky = prop::sample::select(vec![
        ".", "..", "/", "\\", "%", "%2e", "%h", "A", "a", " ", ".json", ".lock", ".tmp", "con",
        "NUL", "é", "e\u{301}", "ß", "İ", "\u{feff}", "\u{202e}", ":", "*", "?", "~",
    ]);
    let pieces = prop::collection::vec(
        prop_oneof![
            3 => any::<char>().prop_map(String::from),
            2 => tricky.prop_map(str::to_owned),
            1 => "[a-z0-9._-]{1,8}",
        ],
        1..40,
    )
    .prop_map(|p| p.concat());
    let long = (any::<char>(), 100usize..1100).prop_map(|(c, n)| c.to_string().repeat(n));
    prop_oneof![4 => pieces, 1 => long, 1 => any::<String>()]
        .prop_map(|k| k.replace('\0', "0"))
        .prop_filter("a key", |k| !k.is_empty())
        .prop_map(|mut k| {
            while k.len() > 2048 {
                k.pop();
            }
            k
        })
}

fn assert_plain_file_name(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= 255,
        "{name} is {} bytes",
        name.len()
    );
    assert!(
        name != "." && name != ".." && !name.starts_with('.'),
        "{name}"
    );
    assert!(
        name.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'%')),
        "{name} holds a byte outside the lower-case ASCII set"
    );
    assert!(name.ends_with(".json"), "{name}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Every key maps to one plain, short, lower-case file name that gives the key back (or,
    /// when too long, a hashed one that does not pretend to).
    #[test]
    fn names_round_trip_and_are_plain(key in any_key()) {
        let name = record_file_name(&key);
        assert_plain_file_name(&name);
        match key_of_record_file_name(&name) {
            Some(back) => prop_assert_eq!(back, key),
            None => prop_assert!(name.contains("%h"), "{} neither decodes nor is hashed", name),
        }
        // Pushing a path through Path::join stays one component inside the directory.
        let joined = Path::new("/d").join(&name);
        prop_assert_eq!(joined.parent(), Some(Path::new("/d")));
    }

    /// Different keys never share a file, even on a case-insensitive file system.
    #[test]
    fn names_are_distinct(a in any_key(), b in any_key()) {
        prop_assume!(a != b);
        let (na, nb) = (record_file_name(&a), record_file_name(&b));
        prop_assert_ne!(na.to_ascii_lowercase(), nb.to_ascii_lowercase());
    }

    /// Keys that differ only in case, trailing spaces or one last character stay apart.
    #[test]
    fn near_keys_are_distinct(key in any_key(), c in any::<char>()) {
        prop_assume!(c != '\0');
        let variants = [
            key.clone(),
            key.to_uppercase(),
            key.to_lowercase(),
            format!("{key} "),
            format!("{key}{c}"),
        ];
        let keys: HashSet<&String> = variants.iter().filter(|k| k.len() <= 2048).collect();
        let names: HashSet<String> =
            keys.iter().map(|k| record_file_name(k).to_ascii_lowercase()).collect();
        prop_assert_eq!(names.len(), keys.len());
    }
}

/// Through the driver: any key is stored, read back and listed exactly.
#[test]
fn any_key_is_stored_and_listed_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let st = rt.block_on(async {
        let driver = FileDriver::open(dir.path(), FileOptions::new().fsync(false))
            .await
            .expect("open");
        Storage::with_driver(Arc::new(driver)).expect("storage")
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
    let strategy = any_key().prop_filter("a name", |k| k.len() <= mp_storage::MAX_NAME_LEN);
    let stored = std::sync::Mutex::new(Vec::new());
    runner
        .run(&strategy, |key| {
            rt.block_on(async {
                st.set(
                    &key,
                    &Counter {
                        count: key.len() as u64,
                    },
                )
                .await
                .map_err(|e| TestCaseError::fail(format!("set {key:?}: {e}")))?;
                let got: Option<Counter> = st
                    .get(&key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got.map(|c| c.count), Some(key.len() as u64));
                let listed = st
                    .list(&key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(listed.contains(&key), "{:?} not in {:?}", key, listed);
                prop_assert!(listed.iter().all(|k| k.starts_with(key.as_str())));
                Ok(())
            })?;
            stored.lock().expect("lock").push(key);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut want: Vec<String> = stored.into_inner().expect("lock");
    want.sort();
    want.dedup();
    let all = rt.block_on(st.list("")).expect("list");
    assert_eq!(all, want);
    // Every file is directly inside the directory, but the lock files in theirs.
    for entry in std::fs::read_dir(dir.path()).expect("read_dir") {
        let entry = entry.expect("entry");
        let is_file = entry.file_type().expect("type").is_file();
        assert!(is_file || entry.file_name() == "%locks", "{entry:?}");
    }
    let locks = std::fs::read_dir(dir.path().join("%locks")).expect("read_dir");
    assert!(locks.count() <= 256);
}

// ---------------------------------------------------------------------------------------------
// Full disk

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        if !cfg!(target_os = "linux") {
            return Err("mounting a tmpfs is only tried on Linux".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    fn remount(&self, mode: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// On a full disk a write is a `Full` backend error, the old record is intact and no temp file
/// is left.
#[tokio::test]
async fn full_disk_keeps_the_old_record() {
    let disk = match SmallDisk::mount("256k") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED full_disk_keeps_the_old_record: {why}");
            return;
        }
    };
    let st = Storage::open(&format!("file:{}", disk.path().display()))
        .await
        .expect("open");
    st.set("doc", &serde_json::json!({"text": "small"}))
        .await
        .expect("a small write fits");

    // A value larger than the disk.
    let big = serde_json::json!({ "text": "x".repeat(400 << 10) });
    let e = st
        .set("doc", &big)
        .await
        .expect_err("a write larger than the disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    let e = st
        .scoped("doc", |v: &mut serde_json::Value| *v = big.clone())
        .await
        .expect_err("an update larger than the disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    assert!(matches!(e, Error::Backend { driver: "file", .. }));

    // Fill the disk to the last byte, then try a small update.
    let filler = disk.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
    }
    let e = st
        .scoped("doc", |v: &mut serde_json::Value| {
            v["text"] = "changed".into()
        })
        .await
        .expect_err("an update on a full disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");

    let fresh = Storage::open(&format!("file:{}", disk.path().display()))
        .await
        .expect("reopen");
    assert_eq!(
        fresh
            .get::<serde_json::Value>("doc")
            .await
            .expect("old record"),
        Some(serde_json::json!({"text": "small"}))
    );
    let names = file_names(&disk.path());
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "temp files left: {names:?}"
    );

    // Space back: writes work again.
    std::fs::remove_file(&filler).expect("remove filler");
    st.scoped("doc", |v: &mut serde_json::Value| {
        v["text"] = "changed".into()
    })
    .await
    .expect("an update once space is back");

    // Read-only: a permission error, reads still work. (Root passes EACCES checks, so a
    // read-only mount stands in for a directory the process may not write.)
    if disk.remount("ro") {
        let e = st
            .scoped("doc", |v: &mut serde_json::Value| {
                v["text"] = "again".into()
            })
            .await
            .expect_err("an update on a read-only disk");
        assert_eq!(e.backend_kind(), Some(BackendKind::PermissionDenied), "{e}");
        assert_eq!(
            fresh.get::<serde_json::Value>("doc").await.expect("read"),
            Some(serde_json::json!({"text": "changed"}))
        );
        disk.remount("rw");
    } else {
        eprintln!("full_disk_keeps_the_old_record: remounting read-only failed, that part skipped");
    }
}

/// A several-scope commit on a full disk: a `Full` error, every old record intact, and no temp
/// file, intent record or commit marker left.
#[tokio::test]
async fn full_disk_keeps_several_scopes_whole() {
    let disk = match SmallDisk::mount("256k") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED full_disk_keeps_several_scopes_whole: {why}");
            return;
        }
    };
    let st = Storage::open(&format!("file:{}", disk.path().display()))
        .await
        .expect("open");
    let names = ["a", "b", "c"];
    st.set("a", &serde_json::json!("small a"))
        .await
        .expect("a small write fits");
    st.set("b", &serde_json::json!("small b"))
        .await
        .expect("a small write fits");
    let unchanged = |st: Storage| async move {
        let all: Vec<Option<serde_json::Value>> = st.get_many(&names).await.expect("read");
        assert_eq!(
            all,
            vec![
                Some(serde_json::json!("small a")),
                Some(serde_json::json!("small b")),
                None
            ]
        );
    };
    let no_journal = || {
        let names = file_names(&disk.path());
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".tmp") || n.ends_with(".intent")),
            "left: {names:?}"
        );
        for n in file_names(&disk.path().join("%locks"))
            .iter()
            .filter(|n| n.ends_with(".lock"))
        {
            let len = std::fs::metadata(disk.path().join("%locks").join(n))
                .expect("stat")
                .len();
            assert_eq!(len, 0, "{n} holds a commit marker");
        }
    };

    // The last of three writes does not fit: the first two are undone.
    let big = serde_json::json!("x".repeat(300 << 10));
    let e = st
        .scoped_many(&names, |v: &mut [serde_json::Value]| {
            v[0] = "changed a".into();
            v[1] = "changed b".into();
            v[2] = big.clone();
        })
        .await
        .expect_err("a commit larger than the disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    unchanged(st.clone()).await;
    no_journal();

    // Fill the disk to the last byte, then try a small commit.
    let filler = disk.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
    }
    let e = st
        .scoped_many(&names, |v: &mut [serde_json::Value]| {
            v[0] = "changed a".into();
            v[2] = "new c".into();
        })
        .await
        .expect_err("a commit on a full disk");
    assert_eq!(e.backend_kind(), Some(BackendKind::Full), "{e}");
    let fresh = Storage::open(&format!("file:{}", disk.path().display()))
        .await
        .expect("reopen");
    unchanged(fresh).await;
    no_journal();

    // Space back: the commit goes through.
    std::fs::remove_file(&filler).expect("remove filler");
    st.scoped_many(&names, |v: &mut [serde_json::Value]| {
        v[0] = "changed a".into();
        v[2] = "new c".into();
    })
    .await
    .expect("a commit once space is back");
    let all: Vec<Option<serde_json::Value>> = st.get_many(&names).await.expect("read");
    assert_eq!(all[0], Some(serde_json::json!("changed a")));
    assert_eq!(all[2], Some(serde_json::json!("new c")));
    no_journal();
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// Durable commits per second, one writer: `Storage` over the file driver against a bare
/// temp + write + fsync + rename + directory-fsync loop on the same disk, in the same run. The
/// two alternate commit by commit, so a disk whose speed drifts (a shared machine) weighs on
/// both alike. `MP_BENCH_COMMITS` (default 2000) and `MP_BENCH_DIR` (default the temp dir).
///
/// `cargo test -p mp-storage-tests --test file --release -- --ignored --nocapture durable`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn durable_commit_rate() {
    let n: usize = std::env::var("MP_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let base = std::env::var("MP_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let bare_dir = dir.path().join("bare");
    std::fs::create_dir_all(&bare_dir).expect("dir");
    let bare_handle = std::fs::File::open(&bare_dir).expect("dir handle");
    let st = Storage::open(&format!("file:{}", dir.path().join("storage").display()))
        .await
        .expect("open");
    st.scoped("counter", |c: &mut Counter| c.count += 1)
        .await
        .expect("warm up");

    let (mut bare, mut file) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let started = Instant::now();
        bare_commit(&bare_dir, &bare_handle, i);
        bare.push(started.elapsed());
        let started = Instant::now();
        st.scoped("counter", |c: &mut Counter| c.count += 1)
            .await
            .expect("increment");
        file.push(started.elapsed());
    }
    let rate = |v: &[Duration]| v.len() as f64 / v.iter().sum::<Duration>().as_secs_f64();
    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (b, f) = (rate(&bare), rate(&file));
    eprintln!(
        "{n} durable commits each: bare loop {b:.0}/s (median {:?}), Storage over file {f:.0}/s \
         (median {:?}), ratio {:.2}",
        median(&mut bare),
        median(&mut file),
        f / b
    );
}

/// The floor: one durable replace of a small file.
fn bare_commit(d: &Path, dir_handle: &std::fs::File, i: usize) {
    let tmp = d.join(format!("counter.{i}.tmp"));
    let mut f = std::fs::File::create(&tmp).expect("create");
    f.write_all(format!("{{\"count\":{i}}}\n").as_bytes())
        .expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::rename(&tmp, d.join("counter.json")).expect("rename");
    dir_handle.sync_all().expect("dir fsync");
}

// ---------------------------------------------------------------------------------------------
// Disk cost

/// Files and bytes on disk of one-counter scopes: `cargo test -p mp-storage-tests --test file
/// -- --ignored --nocapture disk_cost` (`MP_FILE_TEST_SCOPES`, default 100,000). One file per
/// scope, and the lock directory (at most 258 files) for the whole store.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: 100,000 scopes take a while"]
async fn disk_cost() {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, totals: &mut [u64; 4]) {
        for e in std::fs::read_dir(p).expect("read_dir") {
            let e = e.expect("entry");
            let m = std::fs::symlink_metadata(e.path()).expect("stat");
            totals[2] += m.len();
            totals[3] += m.blocks() * 512;
            if m.is_dir() {
                totals[1] += 1;
                walk(&e.path(), totals);
            } else {
                totals[0] += 1;
            }
        }
    }
    let n: u64 = std::env::var("MP_FILE_TEST_SCOPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let st = Storage::open(&format!("file:{}?fsync=false", dir.path().display()))
        .await
        .expect("open");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                st.scoped(&format!("counter:{i}"), |c: &mut Counter| c.count += 1)
                    .await
                    .expect("update");
                i += 8;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Files, subdirectories, bytes (apparent), bytes (allocated).
    let mut totals = [0u64; 4];
    walk(dir.path(), &mut totals);
    let [files, dirs, len, alloc] = totals;
    let top = std::fs::metadata(dir.path()).expect("stat").len();
    eprintln!(
        "{n} scopes: {files} files and {dirs} subdirectories ({} inodes with the store's \
         directory), {len} bytes ({:.1} a scope), {alloc} bytes allocated ({:.0} a scope), the \
         directory itself {top} bytes",
        files + dirs + 1,
        len as f64 / n as f64,
        alloc as f64 / n as f64,
    );
    assert!(files <= n + 258, "{files} files for {n} scopes");
}

// ---------------------------------------------------------------------------------------------
// Exclusive updates across processes (see `mp_storage_tests::lease`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_updates_exclude_each_other_across_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::exclusion_across_processes(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_outlived() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::killed_holder_is_outlived(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lease_holder_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let prefix = "mp/".to_owned();
    mp_storage_tests::lease::stopped_holder_is_refused(
        env!("CARGO_BIN_EXE_mp-worker"),
        &url,
        &prefix,
    )
    .await;
}

/// A watcher sees other processes' increments end at the final count, never backwards, and
/// slow changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_other_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    mp_storage_tests::watch::other_processes(env!("CARGO_BIN_EXE_mp-worker"), &url, "mp/").await;
}

/// Changes reach a watcher of another handle by file events, well before the periodic check
/// would find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_by_file_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}?fsync=false", dir.path().display());
    let watcher = Storage::open(&url).await.unwrap();
    let writer = Storage::open(&url).await.unwrap();
    let seen = mp_storage_tests::watch::latencies(&watcher, &writer, "fast", 20).await;
    let worst = seen[seen.len() - 1];
    eprintln!(
        "file change to watcher: median {:?}, worst {worst:?}",
        seen[seen.len() / 2]
    );
    assert!(
        worst < mp_storage::driver::file::SAFETY_NET / 2,
        "a change took {worst:?}: not by a file event"
    );
}
