//! `mp-profile`: the CPU cost of one warm update on `memory://`, for a profiler.
//!
//! Opens `memory://`, warms eight scopes of a `{count: u64}` counter, then runs N warm updates
//! (writes, or read-only updates whose closure changes nothing) round the eight scopes, one task
//! on a current-thread runtime. The loop is `run_writes` / `run_reads`, so a profiler can count
//! it alone:
//!
//! ```text
//! cargo build --release -p mp-storage-examples --bin mp-profile   # CARGO_PROFILE_RELEASE_DEBUG=true for symbols
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_writes*' \
//!     target/release/mp-profile write 100000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! Instructions per update = the total collected / N. Usage: `mp-profile [write|read|mixed] [N]
//! [URL]` (defaults: write, 100000, `memory://`; another store's URL profiles the client side of
//! its driver, the server's round trips included in the time). `mp-profile bare-read N
//! postgres://…` runs the bench's PostgreSQL baseline read instead (`run_bare_reads`), for the
//! client's instructions per read without the library. `mixed` is the bench's
//! `mixed-90r-10w` row on one task: 10,000 scopes drawn at random, one update in ten a write;
//! count it as the difference of two whole runs (`--collect-atstart=yes`, N and 3N), since its
//! loop's own frame does not hold the updates' instructions under callgrind. Without a profiler
//! it prints the rate it measured.

use std::time::Instant;

use mp_storage::{Scope, Storage};

#[derive(Scope, serde::Serialize, serde::Deserialize, Default)]
struct Counter {
    count: u64,
}

const SCOPES: usize = 8;

#[inline(never)]
async fn run_writes(st: &Storage, names: &[String], n: usize) -> Result<u64, mp_storage::Error> {
    let mut sum = 0;
    for i in 0..n {
        sum += st
            .scoped(&names[i % names.len()], |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await?;
    }
    Ok(sum)
}

#[inline(never)]
async fn run_reads(st: &Storage, names: &[String], n: usize) -> Result<u64, mp_storage::Error> {
    let mut sum = 0;
    for i in 0..n {
        sum += st
            .scoped(&names[i % names.len()], |c: &mut Counter| c.count)
            .await?;
    }
    Ok(sum)
}

/// The bench's `mixed-90r-10w` row on one task: a scope drawn at random from all of them for
/// each update, one in ten a write, the others read-only.
#[inline(never)]
async fn run_mixed(st: &Storage, names: &[String], n: usize) -> Result<u64, mp_storage::Error> {
    let mut sum = 0;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..n {
        // xorshift64: the same sequence every run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = &names[(x % names.len() as u64) as usize];
        sum += if x.is_multiple_of(10) {
            st.scoped(name, |c: &mut Counter| {
                c.count += 1;
                c.count
            })
            .await?
        } else {
            st.scoped(name, |c: &mut Counter| c.count).await?
        };
    }
    Ok(sum)
}

/// The bench's PostgreSQL baseline for a read (`bare-read`): the prepared `SELECT v … WHERE k =
/// $1` on one `tokio-postgres` connection behind a mutex, round the same names, to set the
/// client's instructions per read beside the driver's.
#[cfg(feature = "postgres")]
#[inline(never)]
async fn run_bare_reads(
    conn: &tokio::sync::Mutex<tokio_postgres::Client>,
    read: &tokio_postgres::Statement,
    names: &[String],
    n: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut sum = 0;
    for i in 0..n {
        let client = conn.lock().await;
        let row = client
            .query_opt(read, &[&names[i % names.len()].as_bytes()])
            .await?;
        sum += row.map_or(Ok(0), |r| u64::try_from(r.get::<_, i64>(0)))?;
    }
    Ok(sum)
}

/// `bare-read`: [`run_bare_reads`] on a temporary table of the names, each at 0.
#[cfg(feature = "postgres")]
async fn bare_reads(
    url: &str,
    names: &[String],
    n: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TEMP TABLE mp_profile_bare (k bytea PRIMARY KEY, v bigint NOT NULL)")
        .await?;
    for name in names {
        client
            .execute(
                "INSERT INTO mp_profile_bare (k, v) VALUES ($1, 0)",
                &[&name.as_bytes()],
            )
            .await?;
    }
    let read = client
        .prepare("SELECT v FROM mp_profile_bare WHERE k = $1")
        .await?;
    let conn = tokio::sync::Mutex::new(client);
    run_bare_reads(&conn, &read, names, names.len() * 4).await?;
    run_bare_reads(&conn, &read, names, n).await
}

/// The scopes of the `mixed` mode, as many as the bench's `mixed-90r-10w` row.
const MIXED_SCOPES: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "write".to_owned());
    let n: usize = match args.next() {
        Some(s) => s.parse()?,
        None => 100_000,
    };
    let url = args.next().unwrap_or_else(|| "memory://".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let count = if mode == "mixed" {
            MIXED_SCOPES
        } else {
            SCOPES
        };
        let names: Vec<String> = (0..count).map(|i| format!("profile:{i}")).collect();
        #[cfg(feature = "postgres")]
        if mode == "bare-read" {
            let t = Instant::now();
            let sum = bare_reads(&url, &names, n).await?;
            let secs = t.elapsed().as_secs_f64();
            println!("{mode}: {n} reads in {secs:.3} s (checksum {sum})");
            return Ok(());
        }
        let st = Storage::open(&url).await?;
        // Warm: each scope stored, cached, and its record known as the type's own encoding.
        run_writes(&st, &names, count * 4).await?;
        run_reads(&st, &names, count * 4).await?;
        let t = Instant::now();
        let sum = match mode.as_str() {
            "write" => run_writes(&st, &names, n).await?,
            "read" => run_reads(&st, &names, n).await?,
            "mixed" => run_mixed(&st, &names, n).await?,
            other => return Err(format!("unknown mode {other:?}: write, read or mixed").into()),
        };
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{mode}: {n} updates in {secs:.3} s, {:.0}/s (checksum {sum})",
            n as f64 / secs
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
