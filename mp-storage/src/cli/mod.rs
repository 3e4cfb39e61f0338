//! The `mp-storage` command-line tool (feature `cli`): look at and move the scopes of a store,
//! whatever the driver.
//!
//! ```text
//! mp-storage --url URL <command>          (or MP_STORAGE_URL=URL)
//!   list [PREFIX]            the names, one JSON string a line
//!   get NAME                 the value, as indented JSON
//!   set NAME JSON            writes the value (the schema version and expiry stay)
//!   rm NAME                  removes the scope
//!   export [PREFIX]          JSON lines: {"name","value","schema","expires_at"}
//!   import [--if-absent]     JSON lines from stdin, as export writes them
//!   copy --to URL [PREFIX]   export piped into import, in one process
//!   stats [PREFIX]           counts, sizes, schema versions
//! ```
//!
//! Exit codes (the constants below): 0 done; 1 not found (`get`, `rm`); 2 bad
//! input (arguments, a URL, JSON, a line of an import); 3 the backend failed, or some records
//! could not be read (an export, a copy or stats goes on past them, names each on stderr, and
//! exits 3 at the end). Passwords in URLs are never printed.
//!
//! The binary is this module's [`main`].

mod json;
mod transfer;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{redact_url, Error, ErrorCategory, Storage};

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the scope does not exist (`get`, `rm`).
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: bad input (arguments, URL, JSON, a line of an import). Nothing after it written.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the backend failed, or records that could not be read were skipped.
pub const EXIT_BACKEND: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "mp-storage",
    version,
    about = "Look at and move the scopes of an mp-storage store",
    after_help = "Exit codes: 0 done, 1 not found (get, rm), 2 bad input, 3 backend error or \
                  unreadable records skipped."
)]
struct Args {
    /// The store: `sqlite:./data.db`, `file:./dir`, `redis://host:6379/0`,
    /// `mysql://user:pass@host/db`, `postgres://user:pass@host/db`, …
    #[arg(long, env = "MP_STORAGE_URL", hide_env_values = true, global = true)]
    url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists the names of the scopes that start with PREFIX (all without), sorted, one JSON
    /// string a line.
    List {
        /// Only names that start with this, byte for byte.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Prints the value of scope NAME as indented JSON (exit 1 when absent).
    Get {
        /// The name as stored.
        name: String,
    },
    /// Writes JSON to scope NAME, whatever is stored; its schema version and expiry stay.
    Set {
        /// The name as stored.
        name: String,
        /// The value: one JSON value (quote it for the shell).
        json: String,
    },
    /// Removes scope NAME (exit 1 when absent).
    Rm {
        /// The name as stored.
        name: String,
    },
    /// Writes every scope that starts with PREFIX to stdout, one JSON line each:
    /// {"name":…,"value":…,"schema":…,"expires_at":…} (expiry in ms since 1970, or null).
    Export {
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Writes the scopes of the JSON lines on stdin (as `export` writes them). A bad line stops
    /// the import: the lines before it are written, nothing from it on.
    Import {
        /// Skip scopes that exist already instead of writing over them.
        #[arg(long)]
        if_absent: bool,
    },
    /// Copies every scope that starts with PREFIX to the store at --to: `export` piped into
    /// `import`, in one process.
    Copy {
        /// The store to copy to.
        #[arg(long)]
        to: String,
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Skip scopes that exist already at --to instead of writing over them.
        #[arg(long)]
        if_absent: bool,
    },
    /// Prints scope NAME now and after each committed change, from any process, one JSON line
    /// each: {"name":…,"exists":true,"value":…}, or {"name":…,"exists":false,"value":null}
    /// once removed or expired. A burst of changes may show as its last value. Runs until
    /// stopped, or until COUNT lines.
    Watch {
        /// The name as stored.
        name: String,
        /// Stop after this many lines.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Prints what the store holds under PREFIX: how many scopes, bytes of JSON, expiring
    /// scopes, schema versions, unreadable records.
    Stats {
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
}

/// The tool's outcome: an exit code, and a message for stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// The exit code of a storage error: bad input, or the backend's.
    fn of(e: &Error) -> u8 {
        match e.category() {
            ErrorCategory::BadInput => EXIT_BAD_INPUT,
            _ => EXIT_BACKEND,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(Failure::of(&e), e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(EXIT_BACKEND, format!("cannot write the output: {e}"))
    }
}

/// The streams a run writes.
struct Io<'a> {
    /// Where results go (stdout).
    out: &'a mut dyn Write,
    /// Where errors and reports go (stderr).
    err: &'a mut dyn Write,
    /// Whether stderr is a terminal: progress bars are drawn only then.
    progress: bool,
}

/// The `mp-storage` binary: parses the process's arguments, runs the command on a runtime of
/// its own, and returns the exit code.
pub fn main() -> ExitCode {
    use std::io::IsTerminal;
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mp-storage: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_BACKEND);
        }
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let progress = err.is_terminal();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut out);
    let code = runtime.block_on(execute(
        args,
        Io {
            out: &mut out,
            err: &mut err,
            progress,
        },
    ));
    ExitCode::from(code)
}

async fn execute(args: Args, io: Io<'_>) -> u8 {
    let Io { out, err, progress } = io;
    let result = dispatch(args, out, err, progress).await;
    let flushed = out.flush();
    match (result, flushed) {
        (Ok(code), Ok(())) => code,
        (Err(f), _) => {
            let _ = writeln!(err, "mp-storage: {}", f.message);
            f.code
        }
        (Ok(_), Err(e)) => {
            let _ = writeln!(err, "mp-storage: cannot write the output: {e}");
            EXIT_BACKEND
        }
    }
}

/// Opens the store at `url`, with no cache: every read goes to the backend.
async fn open(url: &str) -> Result<Storage, Failure> {
    Storage::builder()
        .cache_capacity(0)
        .open(url)
        .await
        .map_err(|e| {
            Failure::new(
                Failure::of(&e),
                format!("cannot open {}: {e}", redact_url(url)),
            )
        })
}

async fn dispatch(
    args: Args,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: bool,
) -> Result<u8, Failure> {
    let Some(url) = args.url else {
        return Err(Failure::new(
            EXIT_BAD_INPUT,
            "no store given: pass --url URL or set MP_STORAGE_URL",
        ));
    };
    let st = open(&url).await?;
    match args.command {
        Command::List { prefix } => {
            for name in st.list(&prefix).await? {
                writeln!(out, "{}", serde_json::to_string(&name).unwrap_or_default())?;
            }
            Ok(EXIT_OK)
        }
        Command::Get { name } => match st.get_raw(&name).await? {
            Some(raw) => {
                writeln!(out, "{}", json::pretty(raw.json()))?;
                Ok(EXIT_OK)
            }
            None => Err(Failure::new(
                EXIT_NOT_FOUND,
                format!("no scope {name:?} in {}", redact_url(&url)),
            )),
        },
        Command::Set { name, json } => {
            st.set_json(&name, &json).await?;
            Ok(EXIT_OK)
        }
        Command::Rm { name } => {
            if st.remove(&name).await? {
                Ok(EXIT_OK)
            } else {
                Err(Failure::new(
                    EXIT_NOT_FOUND,
                    format!("no scope {name:?} in {}", redact_url(&url)),
                ))
            }
        }
        Command::Export { prefix } => transfer::export(&st, &prefix, out, err, progress).await,
        Command::Import { if_absent } => {
            let sink = transfer::Sink::new(&st, if_absent);
            transfer::import(&sink, tokio::io::stdin(), err, progress).await
        }
        Command::Copy {
            to,
            prefix,
            if_absent,
        } => {
            let dest = open(&to).await?;
            let sink = transfer::Sink::new(&dest, if_absent);
            transfer::copy(&st, &prefix, &sink, err, progress).await
        }
        Command::Stats { prefix } => transfer::stats(&st, &prefix, &url, out, err).await,
        Command::Watch { name, count } => {
            use futures::StreamExt;
            let mut changes = st.watch::<serde_json::Value>(&name).await?;
            let mut lines = 0u64;
            while count.is_none_or(|c| lines < c) {
                match changes.next().await {
                    Some(Ok(value)) => {
                        let line = serde_json::json!({
                            "name": name,
                            "exists": value.is_some(),
                            "value": value,
                        });
                        writeln!(out, "{line}")?;
                        out.flush()?;
                        lines += 1;
                    }
                    // The stream goes on after an error (a lost connection is made again).
                    Some(Err(e)) => writeln!(err, "mp-storage: watching {name:?}: {e}")?,
                    None => break,
                }
            }
            Ok(EXIT_OK)
        }
    }
}
