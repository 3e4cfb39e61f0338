//! A driver that wraps another one to count calls or inject faults, for the engine and server
//! tests. It passes everything else through: several-scope commits (faults included), batched
//! loads, expiry and its sweeps; not reservations, so that call counts stay those of the
//! compare-and-swap alone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use mp_storage::driver::Capabilities;
use mp_storage::{
    Action, BackendKind, CasOutcome, CommitOutcome, Driver, Error, Expiry, Op, Record, Revision,
    Write,
};

/// Counts the calls that reach the wrapped driver.
#[derive(Default)]
pub struct Calls {
    /// `load` calls.
    pub loads: AtomicU64,
    /// `cas` calls.
    pub cas: AtomicU64,
    /// `put` calls.
    pub puts: AtomicU64,
    /// `commit` calls of several keys (a commit of one write is counted as a `cas`).
    pub commits: AtomicU64,
}

impl Calls {
    /// (loads, cas, puts) so far.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.loads.load(Ordering::SeqCst),
            self.cas.load(Ordering::SeqCst),
            self.puts.load(Ordering::SeqCst),
        )
    }
}

/// The claimant of [`Fault::HolderWrites`].
pub const HOLDER: u64 = 999;

/// What [`Faulty`] does to the next `cas` calls (and `commit` calls, where the "stored counter"
/// is the first key the commit writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass every call through.
    None,
    /// Before each of the next N `cas` calls, another writer adds 100 to the stored counter, so
    /// the call genuinely conflicts.
    Interfere(u32),
    /// Before each of the next N `cas` calls, the claimant [`HOLDER`] adds 100 to the stored
    /// counter with a compare-and-swap of its own, which goes through the reservation it holds
    /// (where [`Fault::Interfere`]'s unconditional write would end it).
    HolderWrites(u32),
    /// The next N `cas` calls take effect, but their reply is lost (a connection error).
    LoseReplyAfterCommit(u32),
    /// The next N `cas` calls fail with a connection error before reaching the backend.
    FailBeforeSend(u32),
    /// The next `cas` call takes effect, then N other writes add 100 each, then its reply is
    /// lost.
    LoseReplyThenOthersWrite(u32),
    /// The next N `cas` calls fail before anything is sent: the server refuses connections.
    Refused(u32),
    /// The next N `cas` calls take effect, then another process deletes the key, then their
    /// reply is lost: a create (or update) that committed and was removed before the engine
    /// could look.
    LoseReplyThenDelete(u32),
}

/// A driver that counts calls, injects [`Fault`]s into `cas`, and can be taken down whole.
pub struct Faulty {
    inner: Arc<dyn Driver>,
    /// The calls seen.
    pub calls: Calls,
    fault: std::sync::Mutex<Fault>,
    left: AtomicU32,
    down: std::sync::Mutex<Option<BackendKind>>,
    load_delay: std::sync::Mutex<std::time::Duration>,
}

impl Faulty {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Driver>) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            calls: Calls::default(),
            fault: std::sync::Mutex::new(Fault::None),
            left: AtomicU32::new(0),
            down: std::sync::Mutex::new(None),
            load_delay: std::sync::Mutex::new(std::time::Duration::ZERO),
        })
    }

    /// Makes every load take `delay` before it reads (a backend's round trip).
    pub fn set_load_delay(&self, delay: std::time::Duration) {
        *self.load_delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// While `Some(kind)`, every call fails with a backend error of that kind before reaching
    /// the wrapped driver (a store that is down); `None` brings it back.
    pub fn set_down(&self, kind: Option<BackendKind>) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = kind;
    }

    fn check_up(&self) -> Result<(), Error> {
        match *self.down.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(kind) => Err(Error::backend(
                "faulty",
                kind,
                "the store is down (injected)",
            )),
        }
    }

    /// Sets the fault for the next `cas` calls.
    pub fn set_fault(&self, fault: Fault) {
        let n = match fault {
            Fault::None => 0,
            Fault::Interfere(n)
            | Fault::HolderWrites(n)
            | Fault::LoseReplyAfterCommit(n)
            | Fault::FailBeforeSend(n)
            | Fault::Refused(n)
            | Fault::LoseReplyThenDelete(n) => n,
            Fault::LoseReplyThenOthersWrite(_) => 1,
        };
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        self.left.store(n, Ordering::SeqCst);
    }

    fn take_fault(&self) -> Fault {
        let fault = *self.fault.lock().unwrap_or_else(|p| p.into_inner());
        let taken = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            fault
        } else {
            Fault::None
        }
    }
}

impl Faulty {
    /// Another writer adds 100 to the stored counter: unconditionally, or as `claimant` with a
    /// compare-and-swap on the stored revision.
    async fn add_100(
        &self,
        key: &str,
        like: Write<'_>,
        claimant: Option<u64>,
    ) -> Result<(), Error> {
        let current = self.inner.load(key).await?;
        let mut value: serde_json::Value = current
            .as_ref()
            .and_then(|r| serde_json::from_slice(&r.data).ok())
            .unwrap_or_else(|| serde_json::json!({"count": 0}));
        let n = value["count"].as_u64().unwrap_or(0) + 100;
        value["count"] = n.into();
        let data = serde_json::to_vec(&value)
            .map_err(|e| Error::backend("faulty", BackendKind::Other, e))?;
        // Like the engine, the other writer keeps the record's notes.
        let meta = current.as_ref().map_or(&[][..], |r| &r.meta[..]);
        let other = crate::write_with(
            like.schema,
            &data,
            rand::random_range(1..=u64::MAX),
            like.initial_version,
        )
        .with_meta(meta);
        match (claimant, &current) {
            (Some(claimant), Some(current)) => {
                let outcome = self
                    .inner
                    .cas(key, Some(current.revision()), other.with_claimant(claimant))
                    .await?;
                if !matches!(outcome, CasOutcome::Committed(_)) {
                    return Err(Error::backend(
                        "faulty",
                        BackendKind::Other,
                        format!("the holder's write did not commit: {outcome:?}"),
                    ));
                }
            }
            _ => {
                self.inner.put(key, other).await?;
            }
        }
        Ok(())
    }
}

fn lost() -> Error {
    Error::backend(
        "faulty",
        BackendKind::Connection,
        std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset (injected)",
        ),
    )
}

fn refused() -> Error {
    Error::backend_unsent(
        "faulty",
        BackendKind::Connection,
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused (injected)",
        ),
    )
}

#[async_trait]
impl Driver for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn max_data_len(&self) -> usize {
        self.inner.max_data_len()
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        self.check_up()?;
        self.calls.loads.fetch_add(1, Ordering::SeqCst);
        let delay = *self.load_delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.inner.load(key).await
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        self.check_up()?;
        self.calls.cas.fetch_add(1, Ordering::SeqCst);
        match self.take_fault() {
            Fault::None => self.inner.cas(key, expected, write).await,
            Fault::Interfere(_) => {
                self.add_100(key, write, None).await?;
                self.inner.cas(key, expected, write).await
            }
            Fault::HolderWrites(_) => {
                self.add_100(key, write, Some(HOLDER)).await?;
                self.inner.cas(key, expected, write).await
            }
            Fault::LoseReplyThenOthersWrite(n) => {
                self.inner.cas(key, expected, write).await?;
                for _ in 0..n {
                    self.add_100(key, write, None).await?;
                }
                Err(lost())
            }
            Fault::LoseReplyAfterCommit(_) => {
                self.inner.cas(key, expected, write).await?;
                Err(lost())
            }
            Fault::LoseReplyThenDelete(_) => {
                self.inner.cas(key, expected, write).await?;
                self.inner.delete(key).await?;
                Err(lost())
            }
            Fault::FailBeforeSend(_) => Err(lost()),
            Fault::Refused(_) => Err(refused()),
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn changes(
        &self,
        watched: Arc<mp_storage::driver::WatchSet>,
    ) -> Option<mp_storage::driver::ChangeStream> {
        self.inner.changes(watched)
    }

    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        self.check_up()?;
        self.calls.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_many(keys).await
    }

    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        if let [Op {
            key,
            expected,
            action: Action::Write(write),
        }] = ops
        {
            // One write is a compare-and-swap, faults and counts included.
            return Ok(self.cas(key, *expected, *write).await?.into());
        }
        self.check_up()?;
        self.calls.commits.fetch_add(1, Ordering::SeqCst);
        let fault = self.take_fault();
        let first_write = ops.iter().find_map(|op| match op.action {
            Action::Write(w) => Some((op.key, w)),
            _ => None,
        });
        match (fault, first_write) {
            (Fault::FailBeforeSend(_), _) => Err(lost()),
            (Fault::Refused(_), _) => Err(refused()),
            (Fault::None, _) | (_, None) => self.inner.commit(ops).await,
            (Fault::Interfere(_), Some((key, w))) => {
                self.add_100(key, w, None).await?;
                self.inner.commit(ops).await
            }
            (Fault::HolderWrites(_), Some((key, w))) => {
                self.add_100(key, w, Some(HOLDER)).await?;
                self.inner.commit(ops).await
            }
            (Fault::LoseReplyAfterCommit(_), _) => {
                self.inner.commit(ops).await?;
                Err(lost())
            }
            (Fault::LoseReplyThenOthersWrite(n), Some((key, w))) => {
                let done = self.inner.commit(ops).await?;
                if matches!(done, CommitOutcome::Committed(_)) {
                    for _ in 0..n {
                        self.add_100(key, w, None).await?;
                    }
                }
                Err(lost())
            }
            (Fault::LoseReplyThenDelete(_), Some((key, _))) => {
                let done = self.inner.commit(ops).await?;
                if matches!(done, CommitOutcome::Committed(_)) {
                    self.inner.delete(key).await?;
                }
                Err(lost())
            }
        }
    }

    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        self.check_up()?;
        self.inner.expire(key, expiry).await
    }

    async fn reserve(
        &self,
        key: &str,
        claimant: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, Error> {
        self.check_up()?;
        self.inner.reserve(key, claimant, ttl).await
    }

    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        self.check_up()?;
        self.inner.sweep(limit).await
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        self.check_up()?;
        self.calls.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, write).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.check_up()?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        self.check_up()?;
        self.inner.list(prefix).await
    }
}
