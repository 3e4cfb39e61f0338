//! `memory://`: records in a map inside the process. The reference driver of the behavior suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{CasOutcome, Driver, Record, Write};
use crate::Error;

/// An in-process driver for tests and development. Every handle made by [`MemoryDriver::new`]
/// is a store of its own; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryDriver {
    map: Arc<Mutex<HashMap<String, Record>>>,
}

impl MemoryDriver {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding the lock cannot leave a record half-written (every update is one
        // insert), so a poisoned lock is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every call is ready at once, so a loop of them would never give other tasks a turn; spend the
/// task's cooperative budget like a real I/O resource does.
async fn coop() {
    tokio::task::coop::consume_budget().await;
}

#[async_trait]
impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        coop().await;
        Ok(self.map().get(key).cloned())
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        coop().await;
        let mut map = self.map();
        match map.get_mut(key) {
            Some(current) if Some(current.version) == expected => {
                let version = write.next_version(expected);
                *current = write.to_record(version, &current.tokens);
                Ok(CasOutcome::Committed(version))
            }
            Some(current) => Ok(CasOutcome::Conflict(Some(current.clone()))),
            None if expected.is_none() => {
                let version = write.next_version(None);
                map.insert(key.to_owned(), write.to_record(version, &[]));
                Ok(CasOutcome::Committed(version))
            }
            None => Ok(CasOutcome::Conflict(None)),
        }
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        coop().await;
        let mut map = self.map();
        let current = map.get(key);
        let version = write.next_version(current.map(|r| r.version));
        let tokens = current.map(|r| r.tokens.as_slice()).unwrap_or_default();
        let record = write.to_record(version, tokens);
        map.insert(key.to_owned(), record);
        Ok(version)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        coop().await;
        Ok(self.map().remove(key).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        coop().await;
        let map = self.map();
        let sorted: BTreeMap<&String, ()> = map
            .keys()
            .filter(|k| k.as_bytes().starts_with(prefix.as_bytes()))
            .map(|k| (k, ()))
            .collect();
        Ok(sorted.into_keys().cloned().collect())
    }
}
