//! Scopes as stored, without their types: [`RawScope`] (the JSON text, the schema version and
//! the expiry) and the [`Storage`] calls that read and write them. They are what a backup, a
//! move to another backend or the `mp-storage` command-line tool needs: an export read with
//! [`Storage::get_raw_many`] and written back with [`Storage::set_raw`] restores every scope
//! exactly, whatever its type.

use std::fmt;

use crate::driver::{now_ms, Expiry, Record};
use crate::error::shorten;
use crate::{Error, Storage};

/// A scope as stored: its value as JSON text, the schema version it was written at, and when it
/// expires.
///
/// ```
/// let raw = mp_storage::RawScope::new(r#"{"count":3}"#, 2)?.with_expires_at(Some(4_102_444_800_000));
/// assert_eq!((raw.json(), raw.schema(), raw.expires_at()), (r#"{"count":3}"#, 2, Some(4_102_444_800_000)));
/// assert!(mp_storage::RawScope::new("{not json", 0).is_err());
/// # Ok::<(), mp_storage::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RawScope {
    json: String,
    schema: u32,
    expires_at: Option<u64>,
}

impl fmt::Debug for RawScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawScope")
            .field("json", &shorten(&self.json))
            .field("schema", &self.schema)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The type name raw errors give: the data must be JSON, of any shape.
const JSON: &str = "JSON";

impl RawScope {
    /// A scope holding the JSON text `json` at schema version `schema`, never expiring. JSON
    /// that does not parse (or more than one value) is [`Error::Encode`].
    pub fn new(json: impl Into<String>, schema: u32) -> Result<RawScope, Error> {
        let json = json.into();
        check_json(&json).map_err(|e| Error::Encode {
            scope: String::new(),
            type_name: JSON,
            reason: e.to_string(),
        })?;
        Ok(RawScope {
            json,
            schema,
            expires_at: None,
        })
    }

    /// The same scope expiring at `expires_at` (milliseconds since 1970, by the backend's
    /// clock), or never.
    #[must_use]
    pub fn with_expires_at(mut self, expires_at: Option<u64>) -> RawScope {
        self.expires_at = expires_at;
        self
    }

    /// The value, as JSON text exactly as stored.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The schema version the value was written at (0 for scopes of types without one).
    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// When the scope expires, in milliseconds since 1970; `None`: never.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// The raw scope of a stored record: [`Error::Decode`] naming the scope when its data is
    /// not JSON.
    fn from_record(scope: &str, record: Record) -> Result<RawScope, Error> {
        let decode = |source: crate::BoxError| Error::Decode {
            scope: shorten(scope),
            type_name: JSON,
            source,
        };
        let json = String::from_utf8(record.data).map_err(|e| decode(Box::new(e)))?;
        check_json(&json).map_err(|e| decode(Box::new(e)))?;
        Ok(RawScope {
            json,
            schema: record.schema,
            expires_at: record.expires_at,
        })
    }
}

/// Parses `json` without building it: one JSON value, surrounding whitespace allowed.
fn check_json(json: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(json).map(|_| ())
}

/// The most names one [`Storage::get_raw_many`] reads.
pub const MAX_RAW_BATCH: usize = 1024;

impl Storage {
    /// Reads scope `name` (taken as stored, like [`Storage::remove`]) as it is stored: its JSON
    /// text, schema version and expiry, whatever type wrote it. Always read from the backend,
    /// never from the cache. `None` when absent (or expired). Data that is not JSON is
    /// [`Error::Decode`] naming the scope.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set("n", &5u64).await?;
    /// let raw = st.get_raw("n").await?.expect("stored");
    /// assert_eq!((raw.json(), raw.schema(), raw.expires_at()), ("5", 0, None));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn get_raw(&self, name: impl AsRef<str>) -> Result<Option<RawScope>, Error> {
        let engine = self.engine();
        let key = engine.key("", name.as_ref())?;
        let record = engine
            .driver()
            .load(key.as_str())
            .await
            .map_err(|e| e.for_scope(key.scope()))?;
        record
            .map(|r| RawScope::from_record(key.scope(), r))
            .transpose()
    }

    /// Reads the scopes `names` (taken as stored, at most [`MAX_RAW_BATCH`]) like
    /// [`Storage::get_raw`], in one round trip where the backend allows. The outer error is
    /// the backend's (nothing could be read); each scope then has its own result, so that one
    /// record that cannot be read ([`Error::Corrupt`], or [`Error::Decode`] when its data is
    /// not JSON, both naming the scope) does not hide the others.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set("a", &"x".to_owned()).await?;
    /// let got = st.get_raw_many(&["a", "b"]).await?;
    /// assert_eq!(got[0].as_ref().ok().and_then(|r| r.as_ref()).map(|r| r.json()), Some("\"x\""));
    /// assert!(matches!(got[1], Ok(None)));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn get_raw_many<N: AsRef<str>>(
        &self,
        names: &[N],
    ) -> Result<Vec<Result<Option<RawScope>, Error>>, Error> {
        if names.len() > MAX_RAW_BATCH {
            return Err(Error::InvalidName {
                name: format!("{} names", names.len()),
                reason: "one get_raw_many reads at most 1024 scopes",
            });
        }
        let engine = self.engine();
        let keys = names
            .iter()
            .map(|n| engine.key("", n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let plain: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        match engine.driver().load_many(&plain).await {
            Ok(records) => Ok(keys
                .iter()
                .zip(records)
                .map(|(k, r)| r.map(|r| RawScope::from_record(k.scope(), r)).transpose())
                .collect()),
            // One record that cannot be parsed fails the whole read: read them one by one.
            Err(Error::Corrupt { .. }) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in &keys {
                    out.push(match engine.driver().load(key.as_str()).await {
                        Ok(r) => r.map(|r| RawScope::from_record(key.scope(), r)).transpose(),
                        Err(e @ Error::Corrupt { .. }) => Err(e.for_scope(key.scope())),
                        Err(e) => return Err(e),
                    });
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes scope `name` (taken as stored) exactly as `raw` says, whatever is stored: its
    /// JSON, its schema version and its expiry (an expiry already passed leaves the scope
    /// absent). Like [`Storage::set`], it waits for an exclusive update holding the scope.
    ///
    /// An expiry on a driver without expiry is [`Error::Unsupported`]; data larger than the
    /// limit [`Error::TooLarge`].
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let src = mp_storage::Storage::open("memory://").await?;
    /// let dst = mp_storage::Storage::open("memory://").await?;
    /// src.set("n", &5u64).await?;
    /// for name in src.list("").await? {
    ///     if let Some(raw) = src.get_raw(&name).await? {
    ///         dst.set_raw(&name, &raw).await?;
    ///     }
    /// }
    /// assert_eq!(dst.get::<u64>("n").await?, Some(5));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn set_raw(&self, name: impl AsRef<str>, raw: &RawScope) -> Result<(), Error> {
        self.write_raw(name.as_ref(), raw, false).await.map(|_| ())
    }

    /// Like [`Storage::set_raw`], but only when scope `name` is absent (or expired); returns
    /// whether it wrote.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let raw = mp_storage::RawScope::new("1", 0)?;
    /// assert!(st.create_raw("n", &raw).await?);
    /// assert!(!st.create_raw("n", &mp_storage::RawScope::new("2", 0)?).await?);
    /// assert_eq!(st.get::<u64>("n").await?, Some(1));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn create_raw(&self, name: impl AsRef<str>, raw: &RawScope) -> Result<bool, Error> {
        self.write_raw(name.as_ref(), raw, true).await
    }

    /// Writes several scopes like [`Storage::set_raw`], many in one transaction (or one
    /// script) where the driver commits several scopes at once: what an import or a copy of a
    /// whole store needs. Not all or nothing: a batch that meets a concurrent change is written
    /// scope by scope; on an error, the scopes before it may have been written.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// let scopes: Vec<(String, mp_storage::RawScope)> = (0..100)
    ///     .map(|i| Ok((format!("n{i}"), mp_storage::RawScope::new(i.to_string(), 0)?)))
    ///     .collect::<Result<_, mp_storage::Error>>()?;
    /// st.set_raw_many(&scopes).await?;
    /// assert_eq!(st.get::<u64>("n42").await?, Some(42));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn set_raw_many<N: AsRef<str>>(&self, scopes: &[(N, RawScope)]) -> Result<(), Error> {
        self.write_raw_many(scopes, false).await.map(|_| ())
    }

    /// Like [`Storage::set_raw_many`], each scope only when it is absent (or expired), like
    /// [`Storage::create_raw`]; returns, per scope, whether it wrote.
    pub async fn create_raw_many<N: AsRef<str>>(
        &self,
        scopes: &[(N, RawScope)],
    ) -> Result<Vec<bool>, Error> {
        self.write_raw_many(scopes, true).await
    }

    async fn write_raw_many<N: AsRef<str>>(
        &self,
        scopes: &[(N, RawScope)],
        only_if_absent: bool,
    ) -> Result<Vec<bool>, Error> {
        let engine = self.engine();
        let now = now_ms();
        let mut entries = Vec::with_capacity(scopes.len());
        let mut passed = Vec::with_capacity(scopes.len());
        for (name, raw) in scopes {
            let key = engine.key("", name.as_ref())?;
            check_json(&raw.json).map_err(|e| Error::Encode {
                scope: shorten(key.scope()),
                type_name: JSON,
                reason: e.to_string(),
            })?;
            let expiry = self.expiry_of(raw)?;
            // Absent either way: nothing to create.
            let gone = only_if_absent && raw.expires_at.is_some_and(|at| at <= now);
            passed.push(gone);
            if !gone {
                entries.push((key, raw.schema, raw.json.as_bytes(), expiry));
            }
        }
        let mut wrote = engine
            .write_many(&entries, only_if_absent)
            .await?
            .into_iter();
        Ok(passed
            .into_iter()
            .map(|gone| !gone && wrote.next().unwrap_or(false))
            .collect())
    }

    /// What a write of `raw` does to the expiry.
    fn expiry_of(&self, raw: &RawScope) -> Result<Expiry, Error> {
        let driver = self.engine().driver();
        let capable = driver.capabilities().expiry;
        Ok(match raw.expires_at {
            Some(_) if !capable => {
                return Err(Error::Unsupported {
                    driver: driver.name(),
                    capability: "expiry (the scope has an expiry)",
                })
            }
            Some(at) => Expiry::At(at.max(1)),
            None if capable => Expiry::Never,
            None => Expiry::Keep,
        })
    }

    /// Writes the JSON text `json` to scope `name` (taken as stored), whatever is stored,
    /// keeping the schema version (0 for a new scope) and the expiry the scope has: what an
    /// operator's fix by hand needs. JSON that does not parse is [`Error::Encode`], and nothing
    /// is written.
    ///
    /// ```
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// let st = mp_storage::Storage::open("memory://").await?;
    /// st.set_json("n", "12345678901234567890123").await?;
    /// assert_eq!(st.get_raw("n").await?.map(|r| r.json().to_owned()).as_deref(), Some("12345678901234567890123"));
    /// assert!(st.set_json("n", "{oops").await.is_err());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn set_json(&self, name: impl AsRef<str>, json: &str) -> Result<(), Error> {
        let engine = self.engine();
        let key = engine.key("", name.as_ref())?;
        check_json(json).map_err(|e| Error::Encode {
            scope: shorten(key.scope()),
            type_name: JSON,
            reason: e.to_string(),
        })?;
        engine
            .write(&key, None, json.as_bytes().to_vec(), Expiry::Keep, false)
            .await
            .map(|_| ())
    }

    /// The largest value this storage writes, in bytes of JSON: the driver's limit or the
    /// builder's [`max_data_len`](crate::StorageBuilder::max_data_len), whichever is lower.
    pub fn max_data_len(&self) -> usize {
        self.engine().max_data_len()
    }

    async fn write_raw(
        &self,
        name: &str,
        raw: &RawScope,
        only_if_absent: bool,
    ) -> Result<bool, Error> {
        let engine = self.engine();
        let key = engine.key("", name)?;
        check_json(&raw.json).map_err(|e| Error::Encode {
            scope: shorten(key.scope()),
            type_name: JSON,
            reason: e.to_string(),
        })?;
        let expiry = self.expiry_of(raw)?;
        // An expiry already passed: the scope is absent either way.
        if only_if_absent && raw.expires_at.is_some_and(|at| at <= now_ms()) {
            return Ok(false);
        }
        engine
            .write(
                &key,
                Some(raw.schema),
                raw.json.as_bytes().to_vec(),
                expiry,
                only_if_absent,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raw_scopes_round_trip_exactly() {
        let st = Storage::open("memory://").await.unwrap();
        let at = now_ms() + 3_600_000;
        // A number serde_json's Value would round, and whitespace kept as stored.
        let raw = RawScope::new("{\"n\": 123456789012345678901234567890}", 7)
            .unwrap()
            .with_expires_at(Some(at));
        st.set_raw("café \"x\"/ ", &raw).await.unwrap();
        assert_eq!(st.get_raw("café \"x\"/ ").await.unwrap(), Some(raw.clone()));
        assert_eq!(st.get_raw("café \"x\"/").await.unwrap(), None);
        // set_json keeps schema and expiry.
        st.set_json("café \"x\"/ ", "[1, 2]").await.unwrap();
        let got = st.get_raw("café \"x\"/ ").await.unwrap().unwrap();
        assert_eq!(
            (got.json(), got.schema(), got.expires_at()),
            ("[1, 2]", 7, Some(at))
        );
        // Never expiring clears it.
        st.set_raw("café \"x\"/ ", &RawScope::new("1", 0).unwrap())
            .await
            .unwrap();
        let got = st.get_raw("café \"x\"/ ").await.unwrap().unwrap();
        assert_eq!((got.schema(), got.expires_at()), (0, None));
        // Create only when absent.
        assert!(!st.create_raw("café \"x\"/ ", &raw).await.unwrap());
        assert!(st.create_raw("new", &raw).await.unwrap());
        // Past expiry: absent.
        let old = RawScope::new("1", 0).unwrap().with_expires_at(Some(1));
        assert!(!st.create_raw("old", &old).await.unwrap());
        st.set_raw("old", &old).await.unwrap();
        assert_eq!(st.get_raw("old").await.unwrap(), None);
        // Bad JSON writes nothing.
        assert!(matches!(
            st.set_json("bad", "{").await,
            Err(Error::Encode { .. })
        ));
        assert_eq!(st.get_raw("bad").await.unwrap(), None);
        assert!(RawScope::new("1 2", 0).is_err());
        assert!(matches!(
            st.get_raw("").await,
            Err(Error::InvalidName { .. })
        ));
    }

    #[tokio::test]
    async fn many_at_once_write_like_one_by_one() {
        let st = Storage::open("memory://").await.unwrap();
        let raw = |json: &str, schema| RawScope::new(json, schema).unwrap();
        st.set_raw("b", &raw("\"old\"", 1)).await.unwrap();
        let at = now_ms() + 60_000;
        let scopes: Vec<(String, RawScope)> = (0..150)
            .map(|i| {
                let name = if i == 1 {
                    "b".to_owned()
                } else {
                    format!("n{i}")
                };
                (
                    name,
                    raw(&i.to_string(), 2).with_expires_at((i % 2 == 0).then_some(at)),
                )
            })
            .collect();
        // Only when absent: "b" stays, the rest is written, in commits of 64 and the remainder.
        let wrote = st.create_raw_many(&scopes).await.unwrap();
        assert_eq!(wrote.iter().filter(|w| !**w).count(), 1);
        assert!(!wrote[1]);
        assert_eq!(st.get_raw("b").await.unwrap(), Some(raw("\"old\"", 1)));
        assert_eq!(
            st.get_raw("n2").await.unwrap(),
            Some(raw("2", 2).with_expires_at(Some(at)))
        );
        assert_eq!(st.list("").await.unwrap().len(), 150);
        // Over whatever is stored: "b" too, and expiries as given.
        let again: Vec<(String, RawScope)> = scopes
            .iter()
            .map(|(n, r)| (n.clone(), raw(&format!("[{}]", r.json()), 3)))
            .collect();
        st.set_raw_many(&again).await.unwrap();
        for (name, r) in &again {
            assert_eq!(st.get_raw(name).await.unwrap().as_ref(), Some(r), "{name}");
        }
        // A passed expiry creates nothing; a bad name writes nothing of the batch.
        let old = [("gone", raw("1", 0).with_expires_at(Some(1)))];
        assert_eq!(st.create_raw_many(&old).await.unwrap(), [false]);
        assert_eq!(st.get_raw("gone").await.unwrap(), None);
        let bad = [("x", raw("1", 0)), ("", raw("1", 0))];
        assert!(st.set_raw_many(&bad).await.is_err());
        assert_eq!(st.get_raw("x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn data_that_is_not_json_is_named() {
        use crate::driver::{memory::MemoryDriver, Driver, Write};
        let driver = std::sync::Arc::new(MemoryDriver::new());
        driver
            .put("broken", Write::new(0, b"{not json", 1, 1))
            .await
            .unwrap();
        driver
            .put("fine", Write::new(3, b"true", 2, 1))
            .await
            .unwrap();
        let st = Storage::with_driver(driver).unwrap();
        match st.get_raw("broken").await {
            Err(Error::Decode { scope, .. }) => assert_eq!(scope, "broken"),
            other => panic!("{other:?}"),
        }
        let got = st
            .get_raw_many(&["broken", "fine", "absent"])
            .await
            .unwrap();
        assert!(matches!(&got[0], Err(Error::Decode { scope, .. }) if scope == "broken"));
        assert_eq!(got[1].as_ref().unwrap().as_ref().unwrap().schema(), 3);
        assert!(matches!(got[2], Ok(None)));
        let too_many: Vec<String> = (0..=MAX_RAW_BATCH).map(|i| i.to_string()).collect();
        assert!(st.get_raw_many(&too_many).await.is_err());
    }
}
