//! `redis://[user:pass@]host:port/db`: one Redis hash per scope, compare-and-swap in one Lua script.
//!
//! # Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `mp:` | put before every key, so several applications can share a database |
//! | `connect_timeout` | `2s` | the longest a connection attempt may take (`500ms`, `2s`, `1.5`) |
//! | `response_timeout` | `5s` | the longest a command may wait for its reply |
//! | `protocol` | `resp2` | handed to the redis crate as is (`resp2`, `resp3`) |
//!
//! A server that is down or unreachable is an [`Error::Backend`] of kind
//! [`BackendKind::Connection`] (or [`BackendKind::Timeout`]) within `connect_timeout`: at
//! [`Storage::open`](crate::Storage::open), which connects at once, and on any later call while
//! the connection is being made again (the connection reconnects by itself, one attempt per
//! failed call). `rediss://` (TLS) is not supported by this build.
//!
//! # Layout
//!
//! A scope named `n` is the hash at key `<prefix>n` with four fields:
//!
//! | field | holds |
//! |---|---|
//! | `v` | the version, in decimal |
//! | `s` | the schema version, in decimal |
//! | `d` | the data (the scope's JSON), as is |
//! | `t` | the commit tokens of the last 16 writes, oldest first, each as 16 lower-case hex digits, with no separator |
//!
//! Versions and tokens stay strings inside Redis (Lua numbers are doubles): a compare is a string
//! compare, and the next version of a compare-and-swap is computed here, not in Lua.
//!
//! # Commands
//!
//! - load: one `HGETALL`.
//! - compare-and-swap: one `EVALSHA` of a script that compares the version (or absence), writes
//!   every field and appends the token; on a conflict it returns the current record in the same
//!   reply, so a warm uncontended update costs one command and a conflict no extra one. When the
//!   server lost the script (`NOSCRIPT`, after a restart or `SCRIPT FLUSH`), it is loaded again.
//!   Inside the server the script makes two calls (`HMGET`, `HSET`), which `INFO commandstats`
//!   counts under their own names (so does `total_commands_processed`): count `evalsha` for what
//!   the client sends.
//! - put: one `EVALSHA` (the version rises by one; the record's tokens are kept).
//! - delete: `DEL`. list: `SCAN … MATCH <escaped prefix>* COUNT 1000`, never `KEYS`.
//! - A load or a list whose connection turns out to be dropped (an idle connection the server
//!   closed, a restart) is sent once more on the new connection; writes are not: the engine
//!   settles a write whose reply was lost from the commit tokens.
//!
//! Every script touches only `KEYS[1]`, so scopes can shard across a Redis Cluster.
//!
//! A record whose fields are missing or malformed (or a key that is not a hash) is
//! [`Error::Corrupt`] naming the key; it is left untouched (remove it to start over).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use super::{CasOutcome, Driver, Record, Write, RECENT_TOKENS};
use crate::error::redact_url;
use crate::url::Parsed;
use crate::{BackendKind, Error};

/// The key prefix when the URL gives none.
pub const DEFAULT_PREFIX: &str = "mp:";

/// How long a connection attempt may take when the URL does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a command may wait for its reply when the URL does not say.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

const NAME: &str = "redis";

/// The hex digits of one token in field `t`.
const TOKEN_HEX: usize = 16;

/// The options this driver reads from the URL (`protocol` goes on to the redis crate).
const OPTIONS: &[&str] = &["prefix", "connect_timeout", "response_timeout", "protocol"];

/// Compare-and-swap. ARGV: expected version (`''`: the key must be absent), new version, schema,
/// data, token (16 hex digits). Replies 1 when written, else the current record as `HGETALL`
/// gives it (empty when absent), for the driver to parse (and refuse when malformed).
///
/// The update path checks only what it needs: the engine sends a version only after it read (and
/// checked) the record at that version, so a matching version vouches for the other fields. This
/// keeps the script at two calls and no pattern scans, the bulk of its cost on the server.
const CAS_SCRIPT: &str = r"
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'v', 't')
local v, t = cur[1], cur[2]
if ARGV[1] == '' then
  if v or redis.call('EXISTS', key) == 1 then return redis.call('HGETALL', key) end
  t = ''
elseif v ~= ARGV[1] then
  return redis.call('HGETALL', key)
elseif not t or #t % 16 ~= 0 or #t > 256 then
  return redis.error_reply('MPCORRUPT the commit tokens (field t) are missing or malformed')
end
t = t .. ARGV[5]
if #t > 256 then t = string.sub(t, -256) end
redis.call('HSET', key, 'v', ARGV[2], 's', ARGV[3], 'd', ARGV[4], 't', t)
return 1
";

/// The checks of [`PUT_SCRIPT`], which writes over a record it has not read: sets `key`, `v`
/// and `t` (false when the key is absent); a malformed record is an error reply starting with
/// `MPCORRUPT`, and nothing is written.
const PUT_CHECK: &str = r"
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'v', 's', 't')
local v, s, t = cur[1], cur[2], cur[3]
local function corrupt(what)
  return redis.error_reply('MPCORRUPT ' .. what)
end
if not v then
  if redis.call('EXISTS', key) == 1 then return corrupt('the version (field v) is missing') end
else
  if not string.find(v, '^[1-9][0-9]*$') then return corrupt('the version (field v) is not a number') end
  if not s or not string.find(s, '^[0-9]+$') then return corrupt('the schema version (field s) is missing or not a number') end
  if not t or #t % 16 ~= 0 or #t > 256 or string.find(t, '[^0-9a-f]') then return corrupt('the commit tokens (field t) are missing or malformed') end
  if redis.call('HEXISTS', key, 'd') == 0 then return corrupt('the data (field d) is missing') end
end
";

/// Unconditional write. ARGV: initial version (when absent), schema, data, token. Replies the new
/// version as a string: the stored one plus one, counted in decimal digits so it stays exact.
const PUT_SCRIPT: &str = r"
local nv = ARGV[1]
if v then
  local i = #v
  while i > 0 and string.byte(v, i) == 57 do i = i - 1 end
  if i == 0 then
    nv = '1' .. string.rep('0', #v)
  else
    nv = string.sub(v, 1, i - 1) .. string.char(string.byte(v, i) + 1) .. string.rep('0', #v - i)
  end
end
t = (t or '') .. ARGV[4]
if #t > 256 then t = string.sub(t, -256) end
redis.call('HSET', key, 'v', nv, 's', ARGV[2], 'd', ARGV[3], 't', t)
return nv
";

/// A driver over one Redis server (or one Redis-compatible server such as Valkey).
///
/// Cheap to clone: clones share one multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisDriver {
    con: ConnectionManager,
    prefix: String,
    cas: Script,
    put: Script,
    /// The URL without its password, for `Debug`.
    url: String,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// Connects to the server `url` names (see the [module docs](self) for the options).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mp_storage::Error> {
    /// use mp_storage::driver::redis::RedisDriver;
    /// let driver = RedisDriver::open("redis://127.0.0.1:6379/0?prefix=app1:").await?;
    /// let st = mp_storage::Storage::with_driver(std::sync::Arc::new(driver))?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<RedisDriver, Error> {
        let parsed = crate::url::parse(url)?;
        if !matches!(parsed.scheme.as_str(), "redis" | "rediss") {
            return Err(invalid(url, "the redis driver takes redis:// URLs"));
        }
        open_parsed(url, &parsed).await
    }

    /// The prefix put before every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sends a command that only reads. When the connection turns out to be dropped (the server
    /// restarted, or closed an idle connection), it is sent once more on the new connection:
    /// reading twice is harmless, and a handle idle for a while should not fail its first read.
    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match cmd.query_async(&mut self.con.clone()).await {
            Err(e) if e.is_connection_dropped() => cmd.query_async(&mut self.con.clone()).await,
            other => other,
        }
    }

    fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }
}

/// Opens the driver for an already parsed `redis://` or `rediss://` URL.
pub(crate) async fn open_parsed(url: &str, parsed: &Parsed<'_>) -> Result<RedisDriver, Error> {
    parsed.only_options(url, OPTIONS)?;
    if parsed.scheme == "rediss" {
        return Err(invalid(
            url,
            "TLS (rediss://) is not supported by this build of the redis driver",
        ));
    }
    let prefix = parsed.option("prefix").unwrap_or(DEFAULT_PREFIX).to_owned();
    let connect_timeout = match parsed.option("connect_timeout") {
        Some(v) => parse_duration(url, "connect_timeout", v)?,
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let response_timeout = match parsed.option("response_timeout") {
        Some(v) => parse_duration(url, "response_timeout", v)?,
        None => DEFAULT_RESPONSE_TIMEOUT,
    };
    // Our own options stay here; the redis crate gets the rest.
    let mut target = format!("{}:{}", parsed.scheme, parsed.body);
    if let Some(protocol) = parsed.option("protocol") {
        target.push_str("?protocol=");
        target.extend(form_urlencoded::byte_serialize(protocol.as_bytes()));
    }
    let client = redis::Client::open(target.as_str())
        .map_err(|e| invalid(url, &format!("the redis crate refused it: {e}")))?;
    // One connection attempt per call that needs one, so that a server that is down fails a
    // call within `connect_timeout` instead of after a series of retries.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_secs(1));
    // The connection timeout covers each step, this one the whole of the first connection
    // (name resolution included).
    let con = match tokio::time::timeout(
        connect_timeout,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    {
        Ok(Ok(con)) => con,
        Ok(Err(e)) if e.kind() == ErrorKind::InvalidClientConfig => {
            return Err(invalid(url, &e.to_string()));
        }
        Ok(Err(e)) => return Err(backend_error(e)),
        Err(_) => {
            return Err(Error::backend(
                NAME,
                BackendKind::Timeout,
                format!(
                    "no connection to {} within {connect_timeout:?}",
                    redact_url(url)
                ),
            ))
        }
    };
    Ok(RedisDriver {
        con,
        prefix,
        cas: Script::new(CAS_SCRIPT),
        put: Script::new(&format!("{PUT_CHECK}{PUT_SCRIPT}")),
        url: redact_url(url),
    })
}

#[async_trait]
impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn load(&self, key: &str) -> Result<Option<Record>, Error> {
        let rkey = self.redis_key(key);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&rkey);
        let reply: Value = self
            .read(&cmd)
            .await
            .map_err(|e| command_error(e, key, &rkey))?;
        parse_record(reply, key, &rkey)
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        write: Write<'_>,
    ) -> Result<CasOutcome, Error> {
        let rkey = self.redis_key(key);
        let version = write.next_version(expected);
        let expected_arg = expected.map(|v| v.to_string()).unwrap_or_default();
        let reply: Value = self
            .cas
            .key(&rkey)
            .arg(expected_arg)
            .arg(version.to_string())
            .arg(write.schema.to_string())
            .arg(write.data)
            .arg(token_hex(write.token))
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(|e| command_error(e, key, &rkey))?;
        match reply {
            Value::Int(1) => Ok(CasOutcome::Committed(version)),
            other => {
                let current = parse_record(other, key, &rkey)?;
                if current.as_ref().map(|r| r.version) == expected {
                    // The script writes whenever the version matches; a reply saying otherwise
                    // is not ours to interpret.
                    return Err(corrupt(key, &rkey, "unexpected reply to the write script"));
                }
                Ok(CasOutcome::Conflict(current))
            }
        }
    }

    async fn put(&self, key: &str, write: Write<'_>) -> Result<u64, Error> {
        let rkey = self.redis_key(key);
        let reply: Value = self
            .put
            .key(&rkey)
            .arg(write.initial_version.to_string())
            .arg(write.schema.to_string())
            .arg(write.data)
            .arg(token_hex(write.token))
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(|e| command_error(e, key, &rkey))?;
        match &reply {
            Value::BulkString(b) => parse_version(b),
            Value::SimpleString(s) => parse_version(s.as_bytes()),
            _ => None,
        }
        .ok_or_else(|| corrupt(key, &rkey, "the version after the write is not a number"))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let rkey = self.redis_key(key);
        let removed: i64 = redis::cmd("DEL")
            .arg(&rkey)
            .query_async(&mut self.con.clone())
            .await
            .map_err(|e| command_error(e, key, &rkey))?;
        Ok(removed > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let full = self.redis_key(prefix);
        let mut pattern = glob_escape(&full);
        pattern.push('*');
        // A key can come back more than once while the table grows: keep each once.
        let mut keys = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<Vec<u8>>) =
                self.read(&cmd).await.map_err(backend_error)?;
            for raw in batch {
                // Keys that are not UTF-8 are not ours.
                let Ok(k) = String::from_utf8(raw) else {
                    continue;
                };
                if let Some(name) = k.strip_prefix(&self.prefix) {
                    if name.starts_with(prefix) {
                        keys.insert(name.to_owned());
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(keys.into_iter().collect())
    }
}

/// Parses a record from an `HGETALL` reply (an array of field/value pairs, or a map in RESP3).
fn parse_record(reply: Value, key: &str, rkey: &str) -> Result<Option<Record>, Error> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(None),
        Value::Array(items) => {
            if !items.len().is_multiple_of(2) {
                return Err(corrupt(key, rkey, "odd number of hash fields in reply"));
            }
            let mut it = items.into_iter();
            let mut pairs = Vec::with_capacity(4);
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                pairs.push((f, v));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        _ => return Err(corrupt(key, rkey, "unexpected reply type for a record")),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let (mut v, mut s, mut d, mut t) = (None, None, None, None);
    for (field, value) in pairs {
        let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
            return Err(corrupt(key, rkey, "a hash field is not a string"));
        };
        match field.as_slice() {
            b"v" => v = Some(value),
            b"s" => s = Some(value),
            b"d" => d = Some(value),
            b"t" => t = Some(value),
            _ => {}
        }
    }
    let version = match v {
        None => return Err(corrupt(key, rkey, "the version (field v) is missing")),
        Some(v) => parse_version(&v).ok_or_else(|| {
            corrupt(
                key,
                rkey,
                "the version (field v) is not a canonical decimal number",
            )
        })?,
    };
    let schema = match s {
        None => {
            return Err(corrupt(
                key,
                rkey,
                "the schema version (field s) is missing",
            ))
        }
        Some(s) => std::str::from_utf8(&s)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| corrupt(key, rkey, "the schema version (field s) is not a number"))?,
    };
    let Some(data) = d else {
        return Err(corrupt(key, rkey, "the data (field d) is missing"));
    };
    let tokens = match t {
        None => {
            return Err(corrupt(
                key,
                rkey,
                "the commit tokens (field t) are missing",
            ))
        }
        Some(t) => parse_tokens(&t)
            .ok_or_else(|| corrupt(key, rkey, "the commit tokens (field t) are malformed"))?,
    };
    Ok(Some(Record {
        version,
        schema,
        data,
        tokens,
    }))
}

/// A version as the scripts write it: decimal digits, no sign, no leading zero.
fn parse_version(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw[0] == b'0' || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Tokens as field `t` holds them: 16 lower-case hex digits each, at most [`RECENT_TOKENS`].
fn parse_tokens(raw: &[u8]) -> Option<Vec<u64>> {
    if !raw.len().is_multiple_of(TOKEN_HEX) || raw.len() > TOKEN_HEX * RECENT_TOKENS {
        return None;
    }
    raw.chunks(TOKEN_HEX)
        .map(|c| {
            if !c.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u64::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()
        })
        .collect()
}

fn token_hex(token: u64) -> String {
    format!("{token:016x}")
}

/// Escapes the characters Redis glob patterns give a meaning to.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses `500ms`, `2s` or `1.5` (seconds).
fn parse_duration(url: &str, key: &str, value: &str) -> Result<Duration, Error> {
    let v = value.trim();
    let (number, scale) = if let Some(ms) = v.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = v.strip_suffix('s') {
        (s, 1.0)
    } else {
        (v, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * scale <= 86_400.0 => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(invalid(
            url,
            &format!(
                "option {key} must be a positive duration such as 500ms, 2s or 1.5, not {value:?}"
            ),
        )),
    }
}

fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    }
}

fn corrupt(key: &str, rkey: &str, detail: &str) -> Error {
    Error::Corrupt {
        scope: crate::error::shorten(key),
        location: format!("redis key {:?}", crate::error::shorten(rkey)),
        detail: detail.to_owned(),
    }
}

/// Maps an error of a command on one key: a record that is not ours to read is
/// [`Error::Corrupt`], the rest goes through [`backend_error`].
fn command_error(e: RedisError, key: &str, rkey: &str) -> Error {
    match e.code() {
        Some("WRONGTYPE") => corrupt(key, rkey, "the key holds a value that is not a hash"),
        Some("MPCORRUPT") => corrupt(key, rkey, e.detail().unwrap_or("malformed record")),
        _ => backend_error(e),
    }
}

/// Sorts a redis error into a [`BackendKind`]. Lost or refused connections and timeouts are the
/// kinds after which the engine checks whether a write took effect.
fn backend_error(e: RedisError) -> Error {
    Error::backend(NAME, backend_kind(&e), e)
}

fn backend_kind(e: &RedisError) -> BackendKind {
    if e.is_timeout() {
        return BackendKind::Timeout;
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return BackendKind::Connection;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return BackendKind::PermissionDenied;
        }
        // The server is there but cannot serve yet (loading a dump, failing over).
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown,
        ) => return BackendKind::Connection,
        _ => {}
    }
    match e.code() {
        Some("OOM") => BackendKind::Full,
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => BackendKind::PermissionDenied,
        _ => BackendKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_canonical() {
        assert_eq!(parse_version(b"1"), Some(1));
        assert_eq!(parse_version(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_version(b"18446744073709551616"), None);
        assert_eq!(parse_version(b"007"), None);
        assert_eq!(parse_version(b"0"), None);
        assert_eq!(parse_version(b""), None);
        assert_eq!(parse_version(b"-1"), None);
        assert_eq!(parse_version(b"1e3"), None);
    }

    #[test]
    fn tokens_round_trip() {
        let raw: String = [1u64, u64::MAX, 0xabc]
            .iter()
            .map(|t| token_hex(*t))
            .collect();
        assert_eq!(parse_tokens(raw.as_bytes()), Some(vec![1, u64::MAX, 0xabc]));
        assert_eq!(parse_tokens(b""), Some(vec![]));
        assert_eq!(parse_tokens(b"123"), None);
        assert_eq!(parse_tokens(b"000000000000000G"), None);
        assert_eq!(parse_tokens(b"000000000000000A"), None);
        assert_eq!(parse_tokens("0".repeat(16 * 17).as_bytes()), None);
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("mp:a*b?[c]\\"), "mp:a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("é"), "é");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("u", "k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("u", "k", "2s").unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse_duration("u", "k", "1.5").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "0", "-1", "x", "nan", "1e9"] {
            assert!(parse_duration("u", "k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_parse_or_are_corrupt() {
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let reply = |fields: &[(&[u8], &[u8])]| {
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(f, v)| [bulk(f), bulk(v)])
                    .collect(),
            )
        };
        let tok = token_hex(7);
        let good = reply(&[
            (b"v", b"42"),
            (b"s", b"3"),
            (b"d", b"{}"),
            (b"t", tok.as_bytes()),
            (b"x", b"ignored"),
        ]);
        let r = parse_record(good, "k", "mp:k").unwrap().unwrap();
        assert_eq!((r.version, r.schema, r.tokens), (42, 3, vec![7]));
        assert_eq!(r.data, b"{}");
        assert_eq!(
            parse_record(Value::Array(vec![]), "k", "mp:k").unwrap(),
            None
        );

        let missing_v = reply(&[(b"s", b"3"), (b"d", b"{}"), (b"t", b"")]);
        match parse_record(missing_v, "k", "mp:k") {
            Err(Error::Corrupt {
                location, detail, ..
            }) => {
                assert!(location.contains("mp:k"), "{location}");
                assert!(detail.contains("field v"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let bad_s = reply(&[(b"v", b"1"), (b"s", b"x"), (b"d", b"{}"), (b"t", b"")]);
        assert!(matches!(
            parse_record(bad_s, "k", "mp:k"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn error_kinds() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(backend_kind(&io), BackendKind::Connection);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(backend_kind(&io), BackendKind::Timeout);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(backend_kind(&io), BackendKind::Connection);
        let oom = redis::make_extension_error(
            "OOM".to_owned(),
            Some("command not allowed when used memory > 'maxmemory'.".to_owned()),
        );
        assert_eq!(backend_kind(&oom), BackendKind::Full);
        let noauth = redis::make_extension_error(
            "NOAUTH".to_owned(),
            Some("Authentication required.".to_owned()),
        );
        assert_eq!(backend_kind(&noauth), BackendKind::PermissionDenied);
    }
}
