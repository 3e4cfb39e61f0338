//! [`Target`]: what a case runs on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;

use crate::{Driver, Error, Storage, StorageBuilder};

type Hook = Box<dyn FnOnce() + Send>;

/// A driver under test and a key prefix of this case's own.
///
/// Every target gets a fresh random prefix ([`unique_prefix`](super::unique_prefix)), so cases
/// and runs that share one store never see each other's keys.
pub struct Target {
    name: String,
    driver: Arc<dyn Driver>,
    prefix: String,
    shared: bool,
    on_drop: Mutex<Vec<Hook>>,
}

impl Target {
    /// A target on `driver`, named `name` (in key prefixes and messages).
    pub fn new(name: impl Into<String>, driver: Arc<dyn Driver>) -> Target {
        let name = name.into();
        let prefix = super::unique_prefix(&name);
        Target {
            name,
            driver,
            prefix,
            shared: false,
            on_drop: Mutex::new(Vec::new()),
        }
    }

    /// The same target with `prefix` instead of its random one (keep it unique to the case): for
    /// a store that gives a prefix a meaning, such as a Redis Cluster hash tag
    /// (`t{<random>}/`) that keeps a case's scopes in one slot.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Target {
        self.prefix = prefix.into();
        self
    }

    /// Marks the store as one that outlives the case (a server, a directory other runs use):
    /// [`run`](Target::run) deletes every key under the case's prefix once the case is over,
    /// passed or failed.
    pub fn shared(mut self) -> Target {
        self.shared = true;
        self
    }

    /// Runs `hook` when the target is dropped, after the case: to remove a temporary directory,
    /// stop a server, close a pool. Hooks run in the order they were added.
    pub fn on_drop(mut self, hook: impl FnOnce() + Send + 'static) -> Target {
        self.on_drop
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
        self
    }

    /// The name given to [`Target::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver every handle of this case shares.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// The key prefix of this case: the raw driver keys of its scopes start with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether [`Target::shared`] was called.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The raw driver key of scope `name` under this case's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A handle with default settings. Each handle has a cache of its own: a second handle acts
    /// like another process.
    pub fn storage(&self) -> Storage {
        self.storage_with(Storage::builder())
    }

    /// A handle with the builder's settings; the key prefix is the target's.
    pub fn storage_with(&self, builder: StorageBuilder) -> Storage {
        match builder.key_prefix(&self.prefix).build(self.driver.clone()) {
            Ok(st) => st,
            Err(e) => panic!("building a storage on the {} driver failed: {e}", self.name),
        }
    }

    /// Awaits `case` (a case on this target, such as `cases::round_trip(&target)`), then, on a
    /// [shared](Target::shared) target, deletes what it wrote; a panic of the case is raised
    /// again after that.
    pub async fn run(&self, case: impl Future<Output = ()>) {
        let outcome = AssertUnwindSafe(case).catch_unwind().await;
        if self.shared {
            if let Err(e) = self.clean_up().await {
                eprintln!(
                    "cleaning up the {} case's keys under {:?} failed: {e}",
                    self.name, self.prefix
                );
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Deletes every key under the case's prefix through the driver; returns how many.
    pub async fn clean_up(&self) -> Result<usize, Error> {
        let keys = self.driver.list(&self.prefix).await?;
        let mut deleted = 0;
        for key in keys {
            if self.driver.delete(&key).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("driver", &self.driver.name())
            .field("prefix", &self.prefix)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let hooks = std::mem::take(self.on_drop.get_mut().unwrap_or_else(|p| p.into_inner()));
        for hook in hooks {
            hook();
        }
    }
}
