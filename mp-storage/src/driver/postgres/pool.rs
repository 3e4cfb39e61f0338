//! The pool's connections, each holding the driver's statements prepared on it.
//!
//! `deadpool-postgres` caches the statements a connection prepared in a map keyed by the SQL,
//! and every lookup hashes the whole text (a load's is about 200 bytes): the two lookups of a
//! warm load took a third of the client's instructions. The driver asks for a handful of fixed
//! statements, so a connection here also keeps its own short list of them, found by the address
//! of the driver's SQL string and then compared byte for byte: the text decides, so another text
//! at a reused address is never taken for it. What is not in the list comes from
//! `deadpool-postgres`'s cache as before, which prepares it the first time.

use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::Statement;

/// The most statements a connection keeps in its own list (the driver has fewer).
const KEPT: usize = 32;

/// `deadpool-postgres`'s manager, making [`PgConn`]s.
pub(super) struct PgManager(pub(super) deadpool_postgres::Manager);

/// The pool of [`PgConn`]s.
pub(super) type Pool = managed::Pool<PgManager>;

/// A connection taken from the pool.
pub(super) type Object = managed::Object<PgManager>;

/// A pooled connection and the statements it prepared.
pub(super) struct PgConn {
    client: ClientWrapper,
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    /// Where the SQL asked for was stored (a hint: the text decides).
    at: usize,
    sql: Box<str>,
    statement: Statement,
}

impl Kept {
    /// Whether this is `sql`, stored at `at`.
    fn is(&self, at: usize, sql: &str) -> bool {
        self.at == at && *self.sql == *sql
    }
}

impl PgConn {
    fn kept(&self) -> MutexGuard<'_, Vec<Kept>> {
        // Each change under this lock is one push: a panic elsewhere leaves it consistent.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `sql` prepared on this connection: from its own list, else from `deadpool-postgres`'s
    /// cache (preparing it the first time), then kept.
    pub(super) async fn prepare_kept(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let at = sql.as_ptr() as usize;
        if let Some(k) = self.kept().iter().find(|k| k.is(at, sql)) {
            return Ok(k.statement.clone());
        }
        let statement = self.client.prepare_cached(sql).await?;
        let mut kept = self.kept();
        if kept.len() < KEPT && !kept.iter().any(|k| k.is(at, sql)) {
            kept.push(Kept {
                at,
                sql: sql.into(),
                statement: statement.clone(),
            });
        }
        Ok(statement)
    }
}

impl Deref for PgConn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl managed::Manager for PgManager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        Ok(PgConn {
            client: self.0.create().await?,
            kept: Mutex::new(Vec::new()),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        metrics: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        self.0.recycle(&mut conn.client, metrics).await
    }

    fn detach(&self, conn: &mut PgConn) {
        self.0.detach(&mut conn.client);
    }
}
