//! A worker process for the multi-process tests: increments one scope from several tasks and
//! prints every count it was handed, one per line.
//!
//! `mp-worker --url URL --prefix P --scope NAME --tasks N --increments M`

use std::io::Write as _;

use mp_storage::Storage;
use mp_storage_tests::Counter;

struct Args {
    url: String,
    prefix: String,
    scope: String,
    tasks: usize,
    increments: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        prefix: String::new(),
        scope: "hot".to_owned(),
        tasks: 1,
        increments: 1,
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
    let st = match Storage::builder()
        .key_prefix(&args.prefix)
        .open(&args.url)
        .await
    {
        Ok(st) => st,
        Err(e) => {
            eprintln!("mp-worker: cannot open {}: {e}", args.url);
            std::process::exit(1);
        }
    };
    let mut joins = Vec::new();
    for _ in 0..args.tasks {
        let st = st.clone();
        let scope = args.scope.clone();
        let increments = args.increments;
        joins.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(increments);
            for _ in 0..increments {
                let n = st
                    .scoped(&scope, |c: &mut Counter| {
                        c.count += 1;
                        c.count
                    })
                    .await?;
                got.push(n);
            }
            Ok::<_, mp_storage::Error>(got)
        }));
    }
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for j in joins {
        match j.await {
            Ok(Ok(got)) => {
                for n in got {
                    let _ = writeln!(out, "{n}");
                }
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
    let _ = out.flush();
    if failed {
        std::process::exit(1);
    }
}
