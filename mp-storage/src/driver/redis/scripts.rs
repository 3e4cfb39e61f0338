//! The Lua scripts of the compare-and-swap and of the unconditional write. Each touches only
//! `KEYS[1]`, so scopes can shard across a Redis Cluster.
//!
//! Every script that changes a record announces it (contract rule 17) with
//! `redis.pcall(publish, key, version)` (version `''` for a removal or a new expiry), the local
//! `publish` being the command that [`with_publish`] names: on the channel named like the
//! record's key, so that a sharded publish (`SPUBLISH`, for a cluster) lands on the key's own
//! slot; `PUBLISH` here. With nobody subscribed, the publish is one lookup in the server's
//! channel table. `pcall`, not `call`: a user whose ACL grants no channels (Redis 7's default for
//! new users) still writes; only watching fails for it, with the subscription's permission error.
//!
//! The server runs one script at a time, so the time a warm update spends in it bounds the
//! throughput of every client of the server. The scripts are written for it: no Lua function
//! defined per call (each definition makes a closure on every run), no expiry command when the
//! write keeps the expiry, no field read that the common path does not use, and no more Lua
//! strings than needed (the server's Lua hashes every byte of every string it makes, and the
//! commit tokens are 256 bytes). See BENCHMARKS.md for what each costs.

/// The command the scripts of a single server announce changes with.
pub(super) const PUBLISH: &str = "PUBLISH";

/// `body` with the local `publish` defined: the command the writes announce their changes with
/// (`PUBLISH` or `SPUBLISH`), or `false` when `command` is `None` (a storage whose writes
/// announce nothing, `watch=false`).
pub(super) fn with_publish(command: Option<&str>, body: &str) -> String {
    match command {
        Some(command) => format!("local publish = '{command}'\n{body}"),
        None => format!("local publish = false\n{body}"),
    }
}

/// Compare-and-swap (contract rule 5). ARGV: expected version (`''`: absent), expected last
/// token (`''`: none), new version, schema, data, token, meta, claimant (16 hex digits), expiry
/// kind (`k` keep, `n` never, `a` after the value in ms, `t` at the value in ms since 1970),
/// value (left out for `k` and `n` unless a reservation follows), and the reservation to take if
/// the write loses to another revision (ms; left out when not asked for). Replies 1 when
/// written, else the record as `HGETALL` gives it (empty when absent), its `rc` naming the
/// claimant when the lost write reserved it (contract rule 13), and followed by the pair `rl`,
/// the milliseconds left, when another claimant's reservation turned the write away.
pub(super) const CAS_SCRIPT: &str = r"
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'v', 't', 'rc')
local v, t, rc = cur[1], cur[2], cur[3]
if ARGV[1] == '' then
  if v or redis.call('EXISTS', key) == 1 then return redis.call('HGETALL', key) end
  t = ''
elseif v ~= ARGV[1] or not t or string.sub(t, -16) ~= ARGV[2] then
  if ARGV[11] and v then -- lost, and asked to reserve: unless another claimant holds it
    local now = redis.call('TIME')
    local ms = now[1] * 1000 + math.floor(now[2] / 1000)
    local until_ms = rc and rc ~= ARGV[8] and tonumber(redis.call('HGET', key, 'ru'))
    if until_ms and until_ms > ms then
      local all = redis.call('HGETALL', key)
      all[#all + 1] = 'rl'
      all[#all + 1] = string.format('%d', until_ms - ms)
      return all
    end
    redis.call('HSET', key, 'rc', ARGV[8], 'ru', string.format('%d', ms + tonumber(ARGV[11])))
  end
  return redis.call('HGETALL', key)
elseif #t % 16 ~= 0 or #t > 256 then
  return redis.error_reply('MPCORRUPT the commit tokens (field t) are malformed')
end
if rc and rc ~= ARGV[8] then
  local now = redis.call('TIME')
  local until_ms = tonumber(redis.call('HGET', key, 'ru'))
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  if until_ms and until_ms > ms then
    local all = redis.call('HGETALL', key)
    all[#all + 1] = 'rl'
    all[#all + 1] = string.format('%d', until_ms - ms)
    return all
  end
  redis.call('HDEL', key, 'rc', 'ru')
end
if #t == 256 then t = string.sub(t, 17) .. ARGV[6] else t = t .. ARGV[6] end
redis.call('HSET', key, 'v', ARGV[3], 's', ARGV[4], 'd', ARGV[5], 't', t, 'm', ARGV[7])
local kind = ARGV[9]
if kind ~= 'k' then
  if kind == 'n' then redis.call('PERSIST', key)
  elseif kind == 'a' then redis.call('PEXPIRE', key, ARGV[10])
  elseif kind == 't' then redis.call('PEXPIREAT', key, ARGV[10])
  end
end
if publish then redis.pcall(publish, key, ARGV[3]) end -- the change hint (contract rule 17)
return 1
";

/// A commit of several keys, all or nothing (contract rule 14). ARGV[1]: the claimant (16 hex
/// digits); then 10 arguments per key, in the order of KEYS: expected version (`''`: absent),
/// expected last token (`''`: none), `c` (check), `w` (write) or `d` (delete), new version,
/// schema, data, token, meta, expiry kind and value (as for the compare-and-swap). Every key is checked before anything is written (a script that fails half-way
/// does not roll back). Replies 1 when written, else a flat array of the failed keys' 1-based
/// indexes, each followed by its record as `HGETALL` gives it.
pub(super) const COMMIT_SCRIPT: &str = r"
local me = ARGV[1]
local now_ms = nil
local failed = {}
local tokens = {}
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 10
  local key = KEYS[i]
  local cur = redis.call('HMGET', key, 'v', 't', 'rc')
  local v, t, rc = cur[1], cur[2], cur[3]
  local ok
  if ARGV[b + 1] == '' then
    ok = (not v) and redis.call('EXISTS', key) == 0
    t = ''
  else
    ok = v == ARGV[b + 1] and t and string.sub(t, -16) == ARGV[b + 2]
    if ok and (#t % 16 ~= 0 or #t > 256) then
      return redis.error_reply('MPCORRUPT the commit tokens (field t) of ' .. key .. ' are malformed')
    end
  end
  if ok and ARGV[b + 3] ~= 'c' and rc and rc ~= me then
    if not now_ms then
      local tm = redis.call('TIME')
      now_ms = tm[1] * 1000 + math.floor(tm[2] / 1000)
    end
    local until_ms = tonumber(redis.call('HGET', key, 'ru'))
    if until_ms and until_ms > now_ms then ok = false end
  end
  if not ok then
    failed[#failed + 1] = i
    failed[#failed + 1] = redis.call('HGETALL', key)
  end
  tokens[i] = t
end
if #failed > 0 then return failed end
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 10
  local key = KEYS[i]
  local op = ARGV[b + 3]
  if op == 'w' then
    local t = tokens[i]
    if #t == 256 then t = string.sub(t, 17) .. ARGV[b + 7] else t = t .. ARGV[b + 7] end
    redis.call('HSET', key, 'v', ARGV[b + 4], 's', ARGV[b + 5], 'd', ARGV[b + 6], 't', t, 'm', ARGV[b + 8])
    local kind = ARGV[b + 9]
    if kind ~= 'k' then
      if kind == 'n' then redis.call('PERSIST', key)
      elseif kind == 'a' then redis.call('PEXPIRE', key, ARGV[b + 10])
      elseif kind == 't' then redis.call('PEXPIREAT', key, ARGV[b + 10])
      end
    end
    if publish then redis.pcall(publish, key, ARGV[b + 4]) end -- the change hint (contract rule 17)
  elseif op == 'd' then
    redis.call('DEL', key)
    if publish then redis.pcall(publish, key, '') end
  end
end
return 1
";

/// Reservation (contract rule 13). ARGV: claimant (16 hex digits), time to live in ms. Replies 1
/// when the claimant holds the reservation now, 0 when the key is absent or another claimant
/// holds a live one. The record's fields are left alone.
pub(super) const RESERVE_SCRIPT: &str = r"
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'v', 'rc', 'ru')
if not cur[1] then return 0 end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = tonumber(cur[3])
if cur[2] and cur[2] ~= ARGV[1] and until_ms and until_ms > ms then return 0 end
redis.call('HSET', key, 'rc', ARGV[1], 'ru', string.format('%d', ms + tonumber(ARGV[2])))
return 1
";

/// The checks of [`PUT_SCRIPT`], which writes over a record it has not read: sets `key`, `v`
/// and `t` (false when the key is absent); a malformed record is an error reply starting with
/// `MPCORRUPT`, and nothing is written.
pub(super) const PUT_CHECK: &str = r"
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

/// Unconditional write. ARGV: initial version (when absent), schema, data, token, meta, expiry
/// kind and value (as for the compare-and-swap). Replies the new
/// version as a string: the stored one plus one, counted in decimal digits so it stays exact.
pub(super) const PUT_SCRIPT: &str = r"
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
t = t or ''
if #t == 256 then t = string.sub(t, 17) .. ARGV[4] else t = t .. ARGV[4] end
redis.call('HSET', key, 'v', nv, 's', ARGV[2], 'd', ARGV[3], 't', t, 'm', ARGV[5])
local kind = ARGV[6]
if kind ~= 'k' then
  if kind == 'n' then redis.call('PERSIST', key)
  elseif kind == 'a' then redis.call('PEXPIRE', key, ARGV[7])
  elseif kind == 't' then redis.call('PEXPIREAT', key, ARGV[7])
  end
end
if publish then redis.pcall(publish, key, nv) end -- the change hint (contract rule 17)
return nv
";

/// Sets a key's expiry (contract rule 15). ARGV: kind and value, as for the compare-and-swap.
/// Replies 1 when the key exists (Redis drops expired keys itself), else 0.
pub(super) const EXPIRE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'n' then redis.call('PERSIST', KEYS[1])
elseif ARGV[1] == 'a' then redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif ARGV[1] == 't' then redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
if publish then redis.pcall(publish, KEYS[1], '') end -- the change hint (contract rule 17)
return 1
";

/// Reads a record with its expiry. Replies `{hash, at}`: the hash as `HGETALL` gives it (empty
/// when absent) and its expiry in ms since 1970 (negative: none); `{0, -2}` when the key holds
/// another type than a hash. A server older than Redis 7 has no `PEXPIRETIME`: the expiry is
/// then the server's time plus `PTTL`.
pub(super) const LOAD_SCRIPT: &str = r"
local read, h = pcall(redis.call, 'HGETALL', KEYS[1])
if not read then return {0, -2} end
if #h == 0 then return {h, -2} end
local ok, at = pcall(redis.call, 'PEXPIRETIME', KEYS[1])
if ok then return {h, at} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return {h, ttl} end
local now = redis.call('TIME')
return {h, now[1] * 1000 + math.floor(now[2] / 1000) + ttl}
";

/// Deletes a key and, when it existed, announces it (contract rule 17). Replies how many keys
/// were deleted (0 or 1).
pub(super) const DELETE_SCRIPT: &str = r"
local n = redis.call('DEL', KEYS[1])
if n > 0 and publish then redis.pcall(publish, KEYS[1], '') end
return n
";

/// A script and its SHA-1, sent as `EVALSHA` and, when the server does not have it
/// (`NOSCRIPT`: a restart, a failover, `SCRIPT FLUSH`), as `EVAL` with its body, which cannot
/// miss: no window in which another `SCRIPT FLUSH` loses it again.
pub(super) struct Lua {
    body: String,
    sha: String,
}

impl Lua {
    pub(super) fn new(body: String) -> Lua {
        let sha = redis::Script::new(&body).get_hash().to_owned();
        Lua { body, sha }
    }

    /// The `EVALSHA` command with `keys` and `args`.
    pub(super) fn evalsha(&self, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        self.command("EVALSHA", &self.sha, keys, args)
    }

    /// The `EVAL` command with `keys` and `args`.
    pub(super) fn eval(&self, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        self.command("EVAL", &self.body, keys, args)
    }

    fn command(&self, name: &str, script: &str, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        // Sized up front: growing the buffers argument by argument costs more than the rest.
        let size = name.len()
            + script.len()
            + 3
            + keys.iter().map(|k| k.len()).sum::<usize>()
            + args.iter().map(|a| a.len()).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(args.len() + keys.len() + 3, size);
        cmd.arg(name).arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}
