//! The driver contract: the only thing a backend implements.
//!
//! A driver stores records under keys; the retry loop, the cache, the codec and the name checks
//! live in the engine, so a driver stays small. Which driver a URL picks is one table,
//! [`registry`]: [`open`] looks the scheme up there.
//!
//! # The contract
//!
//! Each rule names the case of the behavior suite ([`crate::testkit`], feature `testkit`) that
//! checks it. A driver of your own runs the same cases with
//! `mp_storage::behavior_suite!(…)`: see the testkit's docs.
//!
//! 1. **Keys are opaque**: exact bytes, exact case, exact trailing spaces, any unicode, up to
//!    [`crate::MAX_KEY_LEN`] bytes, never empty, never holding NUL. Two keys that differ in any
//!    byte are two records. (`odd_names_are_distinct_and_exact`, `generated_names_round_trip`)
//! 2. **Versions rise by one**: every write of a key (by [`Driver::cas`] or [`Driver::put`])
//!    gives the record the stored version plus one. (`versions_rise_and_tokens_are_kept`)
//! 3. **A new record starts at the engine's random version**: a write that creates a record
//!    gives it [`Write::initial_version`], so a scope deleted and created again never brings
//!    back a version some cache still holds. (`create_if_absent`,
//!    `delete_and_recreate_is_not_aba`)
//! 4. **The last 16 commit tokens**: every write appends its [`Write::token`] to the record's
//!    [`Record::tokens`], which keeps the newest [`RECENT_TOKENS`], oldest first: the engine
//!    tells from them whether a write whose reply was lost took effect.
//!    (`versions_rise_and_tokens_are_kept`)
//! 5. **Compare-and-swap on the revision**: [`Driver::cas`] writes only when the stored record's
//!    [`Revision`] (its version *and* its last token) is the expected one, or, expecting `None`,
//!    when the key is absent; otherwise it writes nothing. The token makes a revision
//!    unrepeatable: after a restore or a failover that rolled versions back, a new write at an
//!    old version number still does not match. (`stale_version_rejected`,
//!    `rolled_back_revision_is_refused`)
//! 6. **`Conflict(Some(record))`** returns the current record when the backend can read it in
//!    the same round trip, so a conflict costs no extra call; **`Conflict(None)`** means the key
//!    is absent or the driver could not read it at once: the engine loads it.
//!    (`stale_version_rejected`, `stale_cache_is_corrected`)
//! 7. **`meta` is kept as given**: the bytes of [`Write::meta`] are stored beside the data and
//!    returned in [`Record::meta`] unchanged. (`meta_is_kept_as_given`) The engine keeps the
//!    idempotency receipts and the leases of exclusive updates there, so a driver that keeps
//!    `meta` and checks revisions has leases with nothing more to do (the `locked_…`,
//!    `lease_…` and `…_holder_…` cases).
//! 8. **Errors say what may have happened.** A request that may have reached the backend and
//!    whose answer was lost is [`Error::Backend`] of kind
//!    [`Connection`](crate::BackendKind::Connection) or [`Timeout`](crate::BackendKind::Timeout)
//!    (built by [`Error::backend`]): for a write the outcome is unknown, and the engine settles
//!    it from the tokens. A failure before anything was sent (no connection could be made, no
//!    connection in the pool, a lock that could not be taken) is built by
//!    [`Error::backend_unsent`]: the engine then knows nothing happened. A full store is
//!    [`Full`](crate::BackendKind::Full), refused access
//!    [`PermissionDenied`](crate::BackendKind::PermissionDenied). (the drivers' fault tests:
//!    `tests/tests/<driver>.rs`)
//! 9. **A corrupt record is never overwritten**: a stored record that cannot be parsed is
//!    [`Error::Corrupt`] for [`Driver::load`], [`Driver::cas`] and [`Driver::put`], and stays as
//!    it is; [`Driver::delete`] removes it. (the drivers' `…corrupted_by_hand…` tests)
//! 10. **`list` is exact**: every key that starts with the prefix byte-wise, and no other, in
//!     any order. (`list_by_prefix_is_exact`)
//! 11. **`delete` says whether the key existed.** (`remove_says_whether_it_existed`)
//! 12. **`max_data_len` is honest**: data of exactly that many bytes is stored.
//!     (`size_limit_is_exact`)
//! 13. **Reservations** (optional: [`Capabilities::reservations`]; without them
//!     [`Driver::reserve`] returns `false`).
//!     A process that loses a scope to another process's commits reserves it for a short time
//!     slice: until the reservation runs out (by the backend's clock), a compare-and-swap from
//!     any other [`Write::claimant`] is refused even at the expected revision
//!     (`Conflict(Some(record))` with the record at that revision), while the holder's writes go
//!     through and leave it in place. A reservation does not change the record.
//!     (`reservations_let_their_holder_in_first`)
//!     A driver with [`Capabilities::reserve_on_conflict`] also takes it in the compare-and-swap
//!     that loses: a write with [`Write::reserve`] set, expecting a revision, that finds the
//!     live record at another one and no live reservation of another claimant on it reserves
//!     the record for its claimant in the same step (as [`Driver::reserve`] would, writing
//!     nothing else) and answers [`CasOutcome::Reserved`] with the current record; with
//!     another's live reservation it answers `Conflict(Some(record))` and reserves nothing.
//!     (`a_losing_write_reserves_when_asked`)
//!     A driver may say in [`Record::reserved_for`] of such a `Conflict(Some(record))` how long
//!     the other's reservation has left (by the backend's clock, at most the time it was taken
//!     for); the engine then sleeps until the slice ends instead of polling it.
//!     (`a_refusal_says_how_long_the_reservation_lasts`)
//!
//! 14. **Several keys, all or nothing** (optional: [`Capabilities::multi_key_commit`]).
//!     [`Driver::commit`] checks every op's expected revision (and reservations) before it writes
//!     anything; when one fails, nothing is written and the failing ops come back with their
//!     current records where the backend can read them at once. Its writes follow rules 2 to 7.
//!     (`several_scopes_commit_all_or_nothing`, `check_only_scopes_are_checked`)
//!
//! 15. **Expiry** (optional: [`Capabilities::expiry`]). A record whose
//!     [`Record::expires_at`] has passed, by the backend's clock, is absent for every call at
//!     once, before its space is reclaimed: `load`, `load_many` and `list` leave it out,
//!     `delete` and `expire` say it did not exist, a compare-and-swap expecting it conflicts
//!     (`Conflict(None)`) and one expecting absence creates the key anew at the write's initial
//!     version. Every write sets the expiry as [`Write::expiry`] says ([`Expiry::Keep`] keeps it);
//!     [`Driver::expire`] changes it without changing the revision. (`expired_scopes_are_absent`,
//!     `expiry_is_kept_and_cleared`)
//! 16. **Deletes at a revision**: an [`Action::Delete`] op of [`Driver::commit`] deletes its key
//!     only at the expected revision, like a write. (`a_scope_ends_through_the_compare_and_swap`)
//! 17. **Change hints** (optional: [`Capabilities::watch`]). [`Driver::changes`] gives one
//!     stream of [`Change`]s per call, serving every watched key of the engine that asked:
//!     after a write, a delete or an expiry change of a key in the [`WatchSet`] commits (from
//!     this process or any other) after `changes` returned, a [`Change::Key`] for that key
//!     follows, soon, on the open stream. Hints may be coalesced, repeated or spurious: the
//!     engine re-reads the key and keeps the newest revision, so only a missed change is wrong.
//!     When the driver may have missed changes (a lost connection, a subscription made after
//!     `changes` returned or after a key joined the set), it sends [`Change::Resync`] (or a
//!     hint for each key concerned) once it listens, and the engine re-reads every watched
//!     key. An `Err` item reaches the watchers as an error and the stream goes on; a driver
//!     reconnects by itself, and ending the stream makes the engine ask again a second later.
//!     Dropping the stream frees what it holds (its connection, its task). Expiry needs no
//!     hint: the engine re-reads a watched key when its record expires, by the
//!     [`Record::expires_at`] that [`Driver::load_many`] gives.
//!     (`watch_sees_every_change_in_order`, `watch_sees_removal_and_expiry`)
//!
//! A driver never panics on stored data or on any key.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Error;

mod watch;
pub(crate) use watch::Feeds;
pub use watch::{poll_changes, Change, ChangeStream, WatchSet};

#[cfg(feature = "file")]
pub mod file;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(any(feature = "redis", feature = "mysql", feature = "postgres"))]
mod net;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
#[cfg(any(feature = "mysql", feature = "postgres", feature = "sqlite"))]
mod sql_rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use registry::{driver_for_scheme, drivers, known_schemes, open, DriverEntry};

/// How many commit tokens a record remembers (see [`Record::tokens`]).
pub const RECENT_TOKENS: usize = 16;

/// A commit token as the stores that keep tokens as text write it: 16 lowercase hex digits,
/// the most significant first.
#[cfg(any(feature = "file", feature = "redis"))]
pub(crate) fn token_digits(token: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((token >> (60 - 4 * i)) & 15) as usize];
    }
    digits
}

/// The token written as exactly 16 hex digits (see [`token_digits`]); `either_case` also takes
/// `A`–`F`.
#[cfg(any(feature = "file", feature = "redis"))]
pub(crate) fn parse_token_digits(digits: &[u8], either_case: bool) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' if either_case => c - b'A' + 10,
            _ => return None,
        };
        Some(v << 4 | u64::from(digit))
    })
}

/// What a compare-and-swap expects to find: the version and the last commit token of the
/// record the engine read. The token makes it unrepeatable (contract rule 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Revision {
    /// The record's version.
    pub version: u64,
    /// The newest of the record's commit tokens (0 for a record that has none).
    pub token: u64,
}

impl Revision {
    /// Whether `record` is at this revision.
    pub fn matches(&self, record: &Record) -> bool {
        record.version == self.version && record.last_token() == self.token
    }
}

/// A stored record as a driver returns it. Two records are equal when what is stored is:
/// [`Record::reserved_for`], a hint about the moment, is left out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Record {
    /// The version: rises by one on every write of the key; a new record starts at
    /// [`Write::initial_version`].
    pub version: u64,
    /// The schema version the data was written with.
    pub schema: u32,
    /// The data: the scope encoded as JSON.
    pub data: Vec<u8>,
    /// The commit tokens of the latest writes, oldest first, at most [`RECENT_TOKENS`]:
    /// the engine uses them to tell whether a write whose reply was lost took effect.
    pub tokens: Vec<u64>,
    /// The engine's own notes on the record (the answers of idempotent updates, the lease of an
    /// exclusive update), kept beside the data: opaque to a driver, stored and returned as
    /// given. Usually empty.
    pub meta: Vec<u8>,
    /// When the record expires, in milliseconds since 1970 by the backend's clock; `None`
    /// never (contract rule 15).
    pub expires_at: Option<u64>,
    /// How long another claimant's reservation still holds the record, where a refused or
    /// lost compare-and-swap reports it (contract rule 13); `None` when nobody else holds it or
    /// the driver does not say. A hint: the engine waits that long before it asks again,
    /// instead of polling the holder's slice.
    pub reserved_for: Option<Duration>,
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.version == other.version
            && self.schema == other.schema
            && self.data == other.data
            && self.tokens == other.tokens
            && self.meta == other.meta
            && self.expires_at == other.expires_at
    }
}

impl Eq for Record {}

impl Record {
    /// A record with no meta.
    pub fn new(version: u64, schema: u32, data: Vec<u8>, tokens: Vec<u64>) -> Record {
        Record {
            version,
            schema,
            data,
            tokens,
            meta: Vec::new(),
            expires_at: None,
            reserved_for: None,
        }
    }

    /// The same record reported as held by another claimant's reservation for `left` more
    /// ([`Record::reserved_for`]).
    pub fn with_reserved_for(mut self, left: Option<Duration>) -> Record {
        self.reserved_for = left;
        self
    }

    /// Whether this record has expired at `now` (ms since 1970).
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        expired(self.expires_at, now)
    }

    /// Whether it has expired by this machine's clock, which is read only when it has an
    /// expiry.
    pub(crate) fn expired_now(&self) -> bool {
        self.expires_at.is_some() && self.expired_at(now_ms())
    }

    /// The same record expiring at `expires_at` (ms since 1970), or never.
    pub fn with_expiry(mut self, expires_at: Option<u64>) -> Record {
        self.expires_at = expires_at;
        self
    }

    /// The same record with `meta`.
    pub fn with_meta(mut self, meta: Vec<u8>) -> Record {
        self.meta = meta;
        self
    }

    /// The newest commit token, 0 when there is none.
    pub fn last_token(&self) -> u64 {
        self.tokens.last().copied().unwrap_or(0)
    }

    /// The revision a compare-and-swap from this record expects.
    pub fn revision(&self) -> Revision {
        Revision {
            version: self.version,
            token: self.last_token(),
        }
    }
}

/// What a write stores, as the engine hands it to a driver.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Write<'a> {
    /// The schema version of the data.
    pub schema: u32,
    /// The scope encoded as JSON.
    pub data: &'a [u8],
    /// A random token naming this write, never 0; the driver appends it to the record's tokens
    /// and keeps the last [`RECENT_TOKENS`].
    pub token: u64,
    /// The version to give the record when this write creates it (below 2^48, so it stays exact
    /// in a double, as Lua and JSON numbers are). An update gives the old version plus one.
    pub initial_version: u64,
    /// The engine's notes to keep beside the data ([`Record::meta`]).
    pub meta: &'a [u8],
    /// Who writes: the engine's random id (0: nobody in particular). A record reserved by
    /// another claimant refuses the write (contract rule 13).
    pub claimant: u64,
    /// What the write does to the record's expiry (contract rule 15).
    pub expiry: Expiry,
    /// When the write loses to a newer revision, reserve the record for [`Write::claimant`]
    /// for this long in the same step, if nobody else holds it (contract rule 13; only drivers
    /// with [`Capabilities::reserve_on_conflict`]; others ignore it).
    pub reserve: Option<Duration>,
}

/// What a write does to its record's expiry (contract rule 15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Keeps the expiry the record has (none for a record the write creates).
    #[default]
    Keep,
    /// Clears it: the record never expires.
    Never,
    /// Expires this long after the write, by the backend's clock.
    After(Duration),
    /// Expires at this time, in milliseconds since 1970 by the backend's clock (to restore a
    /// record as it was exported).
    At(u64),
}

impl Expiry {
    /// The expiry in ms since 1970 this gives a record that had `current`, `now` telling the
    /// time (ms since 1970) when it is needed: a helper for drivers that keep time themselves.
    pub fn resolve(self, current: Option<u64>, now: impl FnOnce() -> u64) -> Option<u64> {
        match self {
            Expiry::Keep => current,
            Expiry::Never => None,
            Expiry::After(d) => {
                Some(now().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }
            Expiry::At(at) => Some(at),
        }
    }
}

/// Whether a record expiring at `expires_at` has expired at `now` (both ms since 1970): at its
/// expiry it is gone (contract rule 15).
pub(crate) fn expired(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_some_and(|t| t <= now)
}

/// Milliseconds since 1970 by this machine's clock, for drivers whose backend has none.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<'a> Write<'a> {
    /// A write of `data` at `schema` with the given token and initial version, and no meta.
    pub fn new(schema: u32, data: &'a [u8], token: u64, initial_version: u64) -> Write<'a> {
        Write {
            schema,
            data,
            token,
            initial_version,
            meta: &[],
            claimant: 0,
            expiry: Expiry::Keep,
            reserve: None,
        }
    }

    /// The same write, reserving the record for its claimant for `ttl` if it loses to a newer
    /// revision (contract rule 13).
    pub fn with_reserve(mut self, ttl: Duration) -> Write<'a> {
        self.reserve = Some(ttl);
        self
    }

    /// The same write with `expiry`.
    pub fn with_expiry(mut self, expiry: Expiry) -> Write<'a> {
        self.expiry = expiry;
        self
    }

    /// The same write on behalf of `claimant`.
    pub fn with_claimant(mut self, claimant: u64) -> Write<'a> {
        self.claimant = claimant;
        self
    }

    /// The same write with `meta`.
    pub fn with_meta(mut self, meta: &'a [u8]) -> Write<'a> {
        self.meta = meta;
        self
    }

    /// The version this write gives on top of `current` (the stored version, if any).
    pub fn next_version(&self, current: Option<u64>) -> u64 {
        match current {
            Some(v) => v.saturating_add(1),
            None => self.initial_version,
        }
    }

    /// Overwrites `record` with this write at `version`, appending the token to its tokens and
    /// reusing its buffers: a helper for drivers that keep records in memory.
    pub fn apply(&self, version: u64, record: &mut Record) {
        record.expires_at = self.expiry.resolve(record.expires_at, now_ms);
        record.version = version;
        record.schema = self.schema;
        record.data.clear();
        record.data.extend_from_slice(self.data);
        record.meta.clear();
        record.meta.extend_from_slice(self.meta);
        if record.tokens.len() >= RECENT_TOKENS {
            let drop = record.tokens.len() + 1 - RECENT_TOKENS;
            record.tokens.drain(..drop);
        }
        record.tokens.push(self.token);
    }

    /// The record this write produces at `version` on top of `previous` tokens: a helper for
    /// drivers that keep records in memory.
    pub fn to_record(&self, version: u64, previous: &[u64]) -> Record {
        Record {
            version,
            schema: self.schema,
            data: self.data.to_vec(),
            tokens: push_token(previous, self.token),
            meta: self.meta.to_vec(),
            expires_at: self.expiry.resolve(None, now_ms),
            reserved_for: None,
        }
    }
}

/// Appends `token` to `previous`, keeping the newest [`RECENT_TOKENS`].
pub fn push_token(previous: &[u64], token: u64) -> Vec<u64> {
    let keep = previous.len().min(RECENT_TOKENS - 1);
    let mut tokens = Vec::with_capacity(keep + 1);
    tokens.extend_from_slice(&previous[previous.len() - keep..]);
    tokens.push(token);
    tokens
}

/// The outcome of [`Driver::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write took effect; the record now has this version.
    Committed(u64),
    /// The stored record was not at the expected revision; nothing was written. Carries the
    /// current record when the backend could read it in the same round trip, `None` when the
    /// key is absent or the caller must load it (contract rule 6).
    Conflict(Option<Record>),
    /// The stored record was at a newer revision; nothing was written, and the record is now
    /// reserved for the write's claimant, as [`Write::reserve`] asked (contract rule 13).
    /// Carries the current record.
    Reserved(Record),
}

impl From<CasOutcome> for CommitOutcome {
    /// The outcome of a one-op [`Driver::commit`] made of a compare-and-swap's: a
    /// [`CasOutcome::Reserved`] is a conflict too.
    fn from(outcome: CasOutcome) -> CommitOutcome {
        match outcome {
            CasOutcome::Committed(v) => CommitOutcome::Committed(vec![Some(v)]),
            CasOutcome::Conflict(r) => CommitOutcome::Conflict(vec![(0, r)]),
            CasOutcome::Reserved(r) => CommitOutcome::Conflict(vec![(0, Some(r))]),
        }
    }
}

/// The most keys one [`Driver::commit`] takes (and one `scoped_many` call).
pub const MAX_COMMIT_KEYS: usize = 64;

/// What a [`Driver::commit`] does to one key.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Only checks the revision: the update read the scope and left it as it was.
    Check,
    /// Writes the key (at the next version, or at the initial version when it is absent).
    Write(Write<'a>),
    /// Deletes the key, at its expected revision (a scope that ends on purpose).
    Delete,
}

/// One key of a [`Driver::commit`]: the revision it must be at (`None`: absent) and what to do.
#[derive(Clone, Copy, Debug)]
pub struct Op<'a> {
    /// The key.
    pub key: &'a str,
    /// The revision the key must be at, `None` when it must be absent.
    pub expected: Option<Revision>,
    /// What to do with it.
    pub action: Action<'a>,
}

/// The outcome of [`Driver::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Every check held and every write took effect: the new version of each op, in the order
    /// of the ops (`None` for a check or a delete).
    Committed(Vec<Option<u64>>),
    /// Some key was not at its revision (or was reserved by another claimant, contract rule
    /// 13): nothing was written. The ops that failed, by index, each with the key's current
    /// record when the backend could read it at once (`None`: absent, or load it).
    Conflict(Vec<(usize, Option<Record>)>),
}

/// What a driver can do beyond the single-key calls every driver has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Driver::commit`] of several keys, all or nothing.
    pub multi_key_commit: bool,
    /// Expiry ([`Write::expiry`], [`Driver::expire`], contract rule 15).
    pub expiry: bool,
    /// Change hints ([`Driver::changes`], contract rule 17).
    pub watch: bool,
    /// Reservations: [`Driver::reserve`] can reserve a record (contract rule 13).
    pub reservations: bool,
    /// A compare-and-swap that loses reserves the record when [`Write::reserve`] asks
    /// (contract rule 13); implies [`Capabilities::reservations`].
    pub reserve_on_conflict: bool,
}

impl Capabilities {
    /// No capability beyond the single-key calls.
    pub const NONE: Capabilities = Capabilities {
        multi_key_commit: false,
        expiry: false,
        watch: false,
        reservations: false,
        reserve_on_conflict: false,
    };

    /// With change hints.
    pub const fn with_watch(mut self) -> Capabilities {
        self.watch = true;
        self
    }

    /// With expiry.
    pub const fn with_expiry(mut self) -> Capabilities {
        self.expiry = true;
        self
    }

    /// With reservations ([`Driver::reserve`]).
    pub const fn with_reservations(mut self) -> Capabilities {
        self.reservations = true;
        self
    }

    /// With reservations, also taken by the compare-and-swap that loses.
    pub const fn with_reserve_on_conflict(mut self) -> Capabilities {
        self.reservations = true;
        self.reserve_on_conflict = true;
        self
    }

    /// With several-key commits.
    pub const fn with_multi_key_commit(mut self) -> Capabilities {
        self.multi_key_commit = true;
        self
    }
}

/// A storage backend: see [the contract](self#the-contract).
///
/// Every method is one logical operation on one key (except `list`). Errors are
/// [`Error::Backend`] (with a [`BackendKind`](crate::BackendKind)) or [`Error::Corrupt`] for a
/// stored record that cannot be parsed; a driver never panics on stored data.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for errors and logs, such as `"redis"`.
    fn name(&self) -> &'static str;

    /// The largest `data` this backend stores, in bytes.
    fn max_data_len(&self) -> usize {
        crate::DEFAULT_MAX_DATA_LEN
    }

    /// What this driver can do beyond the single-key calls. Default: nothing more.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    /// Reads the records of `keys`, in their order. The default loads them one by one; a driver
    /// that can read several in one round trip overrides it.
    async fn load_many(&self, keys: &[&str]) -> Result<Vec<Option<Record>>, Error> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.load(key).await?);
        }
        Ok(out)
    }

    /// Commits `ops` (distinct keys, at most [`MAX_COMMIT_KEYS`]) all or nothing: every check
    /// holds and every write takes effect, or nothing is written (contract rule 14). A single
    /// write is [`Driver::cas`], which the default calls; several keys, and a removal checked
    /// against a revision (a scope that ends through the compare-and-swap), need
    /// [`Capabilities::multi_key_commit`], and the default refuses them with
    /// [`Error::Unsupported`].
    async fn commit(&self, ops: &[Op<'_>]) -> Result<CommitOutcome, Error> {
        match ops {
            [Op {
                key,
                expected,
                action: Action::Write(write),
            }] => Ok(self.cas(key, *expected, *write).await?.into()),
            [Op {
                action: Action::Delete,
                ..
            }] => Err(Error::Unsupported {
                driver: self.name(),
                capability: "removals checked against a revision (Driver::commit)",
            }),
            _ => Err(Error::Unsupported {
                driver: self.name(),
                capability: "several-scope commits",
            }),
        }
    }

    /// Reads the record of `key`, `None` when absent.
    async fn load(&self, key: &str) -> Result<Option<Record>, Error>;

    /// [`Driver::load`], for a driver that keeps its records in shared memory and can hand one
    /// out without copying it. The default wraps what `load` returns; the engine reads through
    /// this call.
    async fn load_shared(&self, key: &str) -> Result<Option<Arc<Record>>, Error> {
        Ok(self.load(key).await?.map(Arc::new))
    }

    /// [`Driver::load_shared`] done at once, for a driver that never waits (one in memory):
    /// `None`, the default, when the call must be awaited. The engine tries this first, which
    /// spares it the boxed future of an async call, and spends the task's cooperative budget
    /// itself after a call answered here.
    fn load_shared_now(&self, key: &str) -> Option<Result<Option<Arc<Record>>, Error>> {
        let _ = key;
        None
    }

    /// [`Driver::cas`] done at once, like [`Driver::load_shared_now`]: `None`, the default,
    /// when the call must be awaited (nothing was written then).
    fn cas_now(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Option<Result<CasOutcome, Error>> {
        let _ = (key, expected, write);
        None
    }

    /// Writes `write` when the stored record is at revision `expected` (`None`: only when the
    /// key is absent); see contract rules 2 to 6.
    async fn cas(
        &self,
        key: &str,
        expected: Option<Revision>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error>;

    /// Writes `write` whatever is stored; returns the new version.
    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, Error>;

    /// Every stored key that starts with `prefix` (byte-wise), in any order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error>;

    /// Sets the expiry of the existing record `key` (contract rule 15) without changing its
    /// revision; returns whether the record exists (an expired one does not). The default:
    /// [`Error::Unsupported`].
    async fn expire(&self, key: &str, expiry: Expiry) -> Result<bool, Error> {
        let _ = (key, expiry);
        Err(Error::Unsupported {
            driver: self.name(),
            capability: "expiry",
        })
    }

    /// Deletes up to `limit` expired records whose space is not reclaimed yet; returns how many.
    /// For backends without native expiry; the engine calls it now and then, and a driver
    /// coordinates its processes so that they do not all sweep at once. The default: nothing to
    /// do.
    async fn sweep(&self, limit: usize) -> Result<usize, Error> {
        let _ = limit;
        Ok(0)
    }

    /// A stream of hints that keys of `watched` changed (contract rule 17), or `None` when the
    /// driver has none ([`Capabilities::watch`] off). The engine calls it once, when its first
    /// watcher starts, and drops the stream when its last watcher goes; `watched` holds the keys
    /// watched at any moment, for a driver that subscribes or polls per key.
    fn changes(&self, watched: std::sync::Arc<WatchSet>) -> Option<ChangeStream> {
        let _ = watched;
        None
    }

    /// Reserves the next write of the existing record `key` for `claimant` for `ttl` (by the
    /// backend's clock), unless another claimant holds a live reservation; returns whether
    /// `claimant` holds it now. Does not change the record. The default: no reservations
    /// (`false`); see contract rule 13.
    async fn reserve(&self, key: &str, claimant: u64, ttl: Duration) -> Result<bool, Error> {
        let _ = (key, claimant, ttl);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_the_newest() {
        let mut t = Vec::new();
        for i in 0..40 {
            t = push_token(&t, i);
        }
        assert_eq!(t.len(), RECENT_TOKENS);
        assert_eq!(t.first(), Some(&24));
        assert_eq!(t.last(), Some(&39));
        assert_eq!(push_token(&[], 5), vec![5]);
        let mut r = Record::new(1, 0, b"old".to_vec(), (0..16).collect());
        let w = Write::new(2, b"new!", 99, 7).with_meta(b"m");
        w.apply(2, &mut r);
        assert_eq!(
            (r.version, r.schema, r.data.as_slice()),
            (2, 2, &b"new!"[..])
        );
        assert_eq!(r.tokens.len(), RECENT_TOKENS);
        assert_eq!((r.tokens[0], r.tokens[15]), (1, 99));
        assert_eq!(r.meta, b"m");
        assert_eq!(
            r.revision(),
            Revision {
                version: 2,
                token: 99
            }
        );
        assert!(r.revision().matches(&r));
        assert_eq!(Record::new(5, 0, vec![], vec![]).last_token(), 0);
    }
}
