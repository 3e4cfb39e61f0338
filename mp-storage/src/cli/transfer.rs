//! Moving many scopes: `export`, `import`, `copy` (the two in one process) and `stats`.
//!
//! Reads go by batches of [`READ_BATCH`] names, a few batches at once, in the order of the
//! names. Writes go by batches too, in commits of [`WRITE_CHUNK`] scopes (one transaction or
//! script each), [`WRITE_CONCURRENCY`] at once; a batch never holds one name twice, so when an
//! input names a scope twice, the later line wins.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::json::{export_line, parse_line};
use super::{Failure, EXIT_BACKEND, EXIT_BAD_INPUT, EXIT_OK};
use crate::driver::now_ms;
use crate::{Error, RawScope, Storage};

/// Names read in one round trip.
const READ_BATCH: usize = 256;
/// Read batches in flight at once.
const READS_IN_FLIGHT: usize = 4;
/// Lines written in one batch.
const WRITE_BATCH: usize = 1024;
/// Scopes one write call takes (one commit where the driver commits several scopes at once).
const WRITE_CHUNK: usize = crate::MAX_COMMIT_KEYS;
/// Write calls in flight at once.
const WRITE_CONCURRENCY: usize = 16;

/// A progress bar on stderr when it is a terminal, else nothing at all.
fn bar(progress: bool, len: Option<u64>, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match len {
        Some(_) => format!("{{bar:40}} {{pos}}/{{len}} scopes {what} ({{rate}}, {{eta}} left)"),
        None => format!("{{spinner}} {{pos}} scopes {what} ({{rate}})"),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} scopes/s", state.per_sec());
            },
        ));
    }
    bar
}

/// A scope read: its name, and its stored form or why it cannot be read.
type Read<'a> = (&'a str, Result<RawScope, Error>);

/// Reads the scopes `names` in order, batch by batch: each comes with its stored form, or the
/// error that names it when its record cannot be read. Scopes gone (or expired) since the
/// listing are left out.
fn read_all<'a>(
    st: &'a Storage,
    names: &'a [String],
) -> impl futures::Stream<Item = Result<Vec<Read<'a>>, Error>> + 'a {
    futures::stream::iter(names.chunks(READ_BATCH))
        .map(move |chunk| async move {
            let got = st.get_raw_many(chunk).await?;
            let now = now_ms();
            Ok(chunk
                .iter()
                .zip(got)
                .filter_map(|(name, r)| match r {
                    Ok(Some(raw)) if raw.expires_at().is_some_and(|at| at <= now) => None,
                    Ok(Some(raw)) => Some((name.as_str(), Ok(raw))),
                    Ok(None) => None,
                    Err(e) => Some((name.as_str(), Err(e))),
                })
                .collect())
        })
        .buffered(READS_IN_FLIGHT)
}

/// Reports a record that cannot be read, by its name.
fn unreadable(err: &mut dyn Write, name: &str, e: &Error) {
    let _ = writeln!(
        err,
        "mp-storage: skipped {}: {e}",
        serde_json::to_string(name).unwrap_or_default()
    );
}

/// `export [PREFIX]`.
pub(super) async fn export(
    st: &Storage,
    prefix: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: bool,
) -> Result<u8, Failure> {
    let names = st.list(prefix).await?;
    let bar = bar(progress, Some(names.len() as u64), "exported");
    let mut skipped = 0u64;
    let mut batches = std::pin::pin!(read_all(st, &names));
    while let Some(batch) = batches.try_next().await? {
        for (name, raw) in batch {
            match raw {
                Ok(raw) => writeln!(out, "{}", export_line(name, &raw))?,
                Err(e) => {
                    skipped += 1;
                    unreadable(err, name, &e);
                }
            }
        }
        bar.inc(READ_BATCH as u64);
    }
    bar.finish_and_clear();
    Ok(finish_reading(err, skipped))
}

/// The exit code after reading past `skipped` unreadable records.
fn finish_reading(err: &mut dyn Write, skipped: u64) -> u8 {
    if skipped == 0 {
        return EXIT_OK;
    }
    let _ = writeln!(
        err,
        "mp-storage: {skipped} record(s) could not be read and were skipped"
    );
    EXIT_BACKEND
}

/// Where an import or a copy writes, and what it counted.
pub(super) struct Sink<'a> {
    st: &'a Storage,
    if_absent: bool,
    written: AtomicU64,
    present: AtomicU64,
}

impl<'a> Sink<'a> {
    pub(super) fn new(st: &'a Storage, if_absent: bool) -> Sink<'a> {
        Sink {
            st,
            if_absent,
            written: AtomicU64::new(0),
            present: AtomicU64::new(0),
        }
    }

    /// Writes a batch (distinct names), [`WRITE_CHUNK`] scopes a call (one transaction where
    /// the driver commits several at once), several calls at once; the first error stops it.
    async fn write(&self, batch: &mut Vec<(String, RawScope)>) -> Result<(), Failure> {
        let result = futures::stream::iter(batch.chunks(WRITE_CHUNK))
            .map(|chunk| async move {
                let wrote = if self.if_absent {
                    self.st.create_raw_many(chunk).await
                } else {
                    self.st
                        .set_raw_many(chunk)
                        .await
                        .map(|()| vec![true; chunk.len()])
                };
                match wrote {
                    Ok(wrote) => {
                        let n = wrote.iter().filter(|w| **w).count() as u64;
                        self.written.fetch_add(n, Ordering::Relaxed);
                        self.present
                            .fetch_add(wrote.len() as u64 - n, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(Failure::new(Failure::of(&e), format!("writing: {e}"))),
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<()>()
            .await;
        batch.clear();
        result
    }

    /// Reports what was written.
    fn report(&self, err: &mut dyn Write, what: &str) {
        let (written, present) = (
            self.written.load(Ordering::Relaxed),
            self.present.load(Ordering::Relaxed),
        );
        let _ = if self.if_absent {
            writeln!(
                err,
                "mp-storage: {what} {written} scope(s); {present} present already, left as they were"
            )
        } else {
            writeln!(err, "mp-storage: {what} {written} scope(s)")
        };
    }
}

/// A batch of writes with distinct names.
#[derive(Default)]
struct Batch {
    items: Vec<(String, RawScope)>,
    names: HashSet<String>,
}

impl Batch {
    /// Adds a write, writing the batch first when it is full or names the scope already.
    async fn push(&mut self, sink: &Sink<'_>, name: String, raw: RawScope) -> Result<(), Failure> {
        if self.items.len() >= WRITE_BATCH || self.names.contains(&name) {
            self.flush(sink).await?;
        }
        self.names.insert(name.clone());
        self.items.push((name, raw));
        Ok(())
    }

    async fn flush(&mut self, sink: &Sink<'_>) -> Result<(), Failure> {
        self.names.clear();
        sink.write(&mut self.items).await
    }
}

/// `import`: the JSON lines of `input`.
pub(super) async fn import(
    sink: &Sink<'_>,
    input: impl AsRead,
    err: &mut dyn Write,
    progress: bool,
) -> Result<u8, Failure> {
    let bar = bar(progress, None, "imported");
    let max = sink.st.max_data_len();
    let mut lines = BufReader::with_capacity(1 << 16, input).lines();
    let mut batch = Batch::default();
    let mut number = 0u64;
    loop {
        number += 1;
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                batch.flush(sink).await?;
                return Err(bad_line(sink, err, number, "the line is not UTF-8"));
            }
            Err(e) => {
                batch.flush(sink).await?;
                return Err(Failure::new(
                    EXIT_BACKEND,
                    format!("cannot read line {number} of the input: {e}"),
                ));
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, max) {
            Ok((name, raw)) => batch.push(sink, name, raw).await?,
            Err(reason) => {
                batch.flush(sink).await?;
                return Err(bad_line(sink, err, number, &reason));
            }
        }
        bar.inc(1);
    }
    batch.flush(sink).await?;
    bar.finish_and_clear();
    sink.report(err, "imported");
    Ok(EXIT_OK)
}

/// The failure of a bad input line, after reporting what was written before it.
fn bad_line(sink: &Sink<'_>, err: &mut dyn Write, number: u64, reason: &str) -> Failure {
    sink.report(err, "imported");
    Failure::new(
        EXIT_BAD_INPUT,
        format!("line {number}: {reason}; nothing from this line on was written"),
    )
}

/// What an import reads.
pub(super) trait AsRead: AsyncRead + Unpin + Send {}
impl<T: AsyncRead + Unpin + Send> AsRead for T {}

/// `copy --to URL [PREFIX]`: the reads of the next scopes go on while the last ones are
/// written.
pub(super) async fn copy(
    st: &Storage,
    prefix: &str,
    sink: &Sink<'_>,
    err: &mut dyn Write,
    progress: bool,
) -> Result<u8, Failure> {
    let names = st.list(prefix).await?;
    let bar = bar(progress, Some(names.len() as u64), "copied");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, RawScope)>>(READS_IN_FLIGHT);
    let read = async {
        let mut skipped = 0u64;
        let mut batches = std::pin::pin!(read_all(st, &names));
        while let Some(batch) = batches.try_next().await? {
            let mut items = Vec::with_capacity(batch.len());
            for (name, raw) in batch {
                match raw {
                    Ok(raw) => items.push((name.to_owned(), raw)),
                    Err(e) => {
                        skipped += 1;
                        unreadable(err, name, &e);
                    }
                }
            }
            if tx.send(items).await.is_err() {
                // The writes stopped: their error is the one to report.
                break;
            }
        }
        drop(tx);
        Ok::<u64, Failure>(skipped)
    };
    let write = async {
        // Names come from one listing: distinct, so a read batch is a write batch as it is.
        while let Some(mut items) = rx.recv().await {
            let n = items.len() as u64;
            let written = sink.write(&mut items).await;
            if written.is_err() {
                rx.close();
                return written;
            }
            bar.inc(n);
        }
        Ok(())
    };
    let (skipped, written) = futures::join!(read, write);
    written?;
    let skipped = skipped?;
    bar.finish_and_clear();
    sink.report(err, "copied");
    Ok(finish_reading(err, skipped))
}

/// `stats [PREFIX]`: a JSON object on `out`.
pub(super) async fn stats(
    st: &Storage,
    prefix: &str,
    url: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let names = st.list(prefix).await?;
    let (mut scopes, mut bytes, mut largest, mut expiring, mut skipped) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut schemas: BTreeMap<u32, u64> = BTreeMap::new();
    let mut batches = std::pin::pin!(read_all(st, &names));
    while let Some(batch) = batches.try_next().await? {
        for (name, raw) in batch {
            match raw {
                Ok(raw) => {
                    scopes += 1;
                    let len = raw.json().len() as u64;
                    bytes += len;
                    largest = largest.max(len);
                    expiring += u64::from(raw.expires_at().is_some());
                    *schemas.entry(raw.schema()).or_default() += 1;
                }
                Err(e) => {
                    skipped += 1;
                    unreadable(err, name, &e);
                }
            }
        }
    }
    let report = serde_json::json!({
        "url": crate::redact_url(url),
        "driver": st.driver_name(),
        "prefix": prefix,
        "scopes": scopes,
        "bytes": bytes,
        "largest": largest,
        "expiring": expiring,
        "schemas": schemas.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "unreadable": skipped,
    });
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    )?;
    Ok(finish_reading(err, skipped))
}
