//! Bound state in Redis: consistent snapshots and atomic, exactly-once commits.
//!
//! Layout and the Redis Cluster rule: see [`dtee_schemas::state`]. Two Lua scripts, loaded
//! once and called by hash ([`dtee_net::RedisConn::run_script`] sends them again after a Redis restart or a failover):
//! - the *snapshot* reads the version (and, for readable modes, the value) of every bound key
//!   in one atomic step;
//! - the *commit* checks that no bound key changed since the snapshot, applies every write and
//!   append, bumps the versions, and records the job as applied together with its result, in
//!   one atomic step. It answers ok, conflict, or already-applied (with the result recorded the
//!   first time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::store::Stored;
use dtee_net::RedisConn;
use dtee_net::{Lua, LuaCall};
use dtee_schemas::protocol::Namespace;
use dtee_schemas::state::{applied_key, StateKey};
use dtee_schemas::Digest;
use redis::Value;
use tracing::warn;

const SNAPSHOT: &str = r#"
-- KEYS: value and version key of each binding, in pairs. ARGV[i]: '1' to read value i; the
-- last ARGV: the most bytes the values read may total. Over it, nothing is read and the answer
-- is {'too_large', total}; a key that is not a string (the worker writes only strings) answers
-- {'wrong_type', key}, and so does a version that is not a number, so that no read fails.
-- A version as INCR writes it: '0', or at most 18 digits without a leading 0. INCR refuses
-- anything else ('05' included), so a commit must never get to an INCR of one.
local function canonical(v)
  return string.len(v) <= 18 and (v == '0' or string.match(v, '^[1-9]%d*$') ~= nil)
end
local n = #ARGV - 1
local total = 0
local out = {}
for i = 1, n do
  local value_type = redis.call('TYPE', KEYS[2 * i - 1])['ok']
  if value_type ~= 'none' and value_type ~= 'string' then return {'wrong_type', KEYS[2 * i - 1]} end
  local version_type = redis.call('TYPE', KEYS[2 * i])['ok']
  if version_type ~= 'none' and version_type ~= 'string' then return {'wrong_type', KEYS[2 * i]} end
  local version = redis.call('GET', KEYS[2 * i]) or '0'
  if not canonical(version) then
    return {'wrong_type', KEYS[2 * i]}
  end
  local exists = 0
  if value_type == 'string' then
    exists = 1
    if ARGV[i] == '1' then total = total + redis.call('STRLEN', KEYS[2 * i - 1]) end
  end
  out[i] = {version, exists, false}
end
if total > tonumber(ARGV[#ARGV]) then return {'too_large', tostring(total)} end
for i = 1, n do
  if ARGV[i] == '1' and out[i][2] == 1 then out[i][3] = redis.call('GET', KEYS[2 * i - 1]) end
end
return out
"#;

// The commit script reads an applied record whole only up to 1 MiB, the bound of
// `job::reads::SMALL_READ_BYTES`, written into the script as a literal.
const _: () = assert!(crate::job::reads::SMALL_READ_BYTES == 1 << 20);

const COMMIT: &str = r#"
-- KEYS[1]: the applied record; then the value and version key of each binding, in pairs; then,
-- when ARGV[4] is not '0', the job's result key.
-- ARGV[1]: the result; ARGV[2]: the applied record's TTL in seconds; ARGV[3]: the largest value
-- a binding may hold, in bytes; ARGV[4]: the result's TTL in seconds when the commit caches it
-- too, else '0'; then, per binding: the version seen by the snapshot, the operation (none, set,
-- append), the bytes.
-- A commit that caches the result sets it only where no result is cached (first result wins,
-- as the worker's own SET NX does) and answers {'ok', '1'} if it did, {'ok', '0'} if not.
-- Redis does not roll back a script that fails half-way, so every check that can fail (the
-- applied record, the versions, the key types, the resulting sizes) runs before any write.
-- A version as INCR writes it: '0', or at most 18 digits without a leading 0. INCR refuses
-- anything else ('05' included), so a commit must never get to an INCR of one.
local function canonical(v)
  return string.len(v) <= 18 and (v == '0' or string.match(v, '^[1-9]%d*$') ~= nil)
end
-- The applied record, read up to 1 MiB + 1 bytes (reads::SMALL_READ_BYTES): a larger one is
-- only reported, and read by the worker in a result slot.
local applied = redis.call('GETRANGE', KEYS[1], 0, 1048576)
if string.len(applied) > 1048576 then return {'applied_large'} end
if string.len(applied) > 0 then return {'applied', applied} end
local max = tonumber(ARGV[3])
local cache = ARGV[4] ~= '0'
local n = (#KEYS - 1) / 2
if cache then n = (#KEYS - 2) / 2 end
-- The applied record, then the result where it is cached here.
local function record()
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if not cache then return {'ok', '0'} end
  if redis.call('SET', KEYS[#KEYS], ARGV[1], 'NX', 'EX', ARGV[4]) then return {'ok', '1'} end
  return {'ok', '0'}
end
-- A run that wrote nothing stands at its snapshot: only its applied record is written, so that
-- no other execution of the job commits writes after it (no version is checked).
local writes = false
for i = 1, n do
  if ARGV[3 * i + 3] ~= 'none' then writes = true end
end
if not writes then return record() end
for i = 1, n do
  local key, version_key = KEYS[2 * i], KEYS[2 * i + 1]
  local key_type = redis.call('TYPE', key)['ok']
  local version_type = redis.call('TYPE', version_key)['ok']
  if (key_type ~= 'none' and key_type ~= 'string') or
     (version_type ~= 'none' and version_type ~= 'string') then
    return {'wrong_type', key}
  end
  local raw = redis.call('GET', version_key) or '0'
  if not canonical(raw) then
    return {'wrong_type', version_key}
  end
  if tonumber(raw) ~= tonumber(ARGV[3 * i + 2]) then return {'conflict', key} end
  local op, bytes = ARGV[3 * i + 3], ARGV[3 * i + 4]
  local size = 0
  if op == 'set' then
    size = string.len(bytes)
  elseif op == 'append' then
    size = redis.call('STRLEN', key) + string.len(bytes)
  end
  if size > max then return {'too_large', key, tostring(size)} end
end
for i = 1, n do
  local op = ARGV[3 * i + 3]
  if op == 'set' then
    redis.call('SET', KEYS[2 * i], ARGV[3 * i + 4])
    redis.call('INCR', KEYS[2 * i + 1])
  elseif op == 'append' then
    redis.call('APPEND', KEYS[2 * i], ARGV[3 * i + 4])
    redis.call('INCR', KEYS[2 * i + 1])
  end
end
return record()
"#;

/// One key as the snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Version (0 when the key never existed).
    pub version: u64,
    /// Whether the key exists.
    pub exists: bool,
    /// The value, when the binding's mode reads it (empty when absent).
    pub value: Option<Vec<u8>>,
}

/// What a commit does to one binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Nothing: the key is only checked for changes.
    None,
    /// Replace the value.
    Set(Vec<u8>),
    /// Append to the value.
    Append(Vec<u8>),
}

/// One binding in a commit.
#[derive(Debug, Clone)]
pub struct CommitEntry {
    /// The key.
    pub key: StateKey,
    /// The version the snapshot saw.
    pub seen_version: u64,
    /// The write.
    pub op: WriteOp,
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Applied; `cached` when the commit also cached the result (no result was cached before).
    Committed {
        /// Whether the result was cached in the same step.
        cached: bool,
    },
    /// A bound key changed since the snapshot (the Redis key named).
    Conflict(String),
    /// The job was applied before; this is the result recorded then, read whole only up to
    /// 1 MiB (a larger one is for the caller to read in a result slot).
    AlreadyApplied(Stored),
    /// A write would make the value larger than the limit; nothing was written.
    TooLarge {
        /// The Redis key.
        key: String,
        /// The size the value would have had, in bytes.
        size: u64,
    },
    /// A bound key (or its version) holds something the worker never writes (not a string,
    /// or a version that is not a number); nothing was written.
    WrongType(String),
}

/// Why a Redis reply made no sense.
fn malformed(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        what.to_owned(),
    ))
}

fn as_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.as_bytes().to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// Redis's `proto-max-bulk-len` (the largest string it stores), when the ACL lets the worker
/// read it with `CONFIG GET`; `None` otherwise.
pub async fn redis_value_limit(redis: &RedisConn) -> Option<u64> {
    let reply: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .query_async(&mut redis.clone())
        .await
        .ok()?;
    reply.get("proto-max-bulk-len")?.parse().ok()
}

/// A reply field as text (empty when absent).
fn text(value: Option<&Value>) -> String {
    value
        .and_then(as_bytes)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The worker's access to bound state.
#[derive(Clone)]
pub struct StateStore {
    redis: RedisConn,
    namespace: Namespace,
    snapshot: Lua,
    commit: Lua,
    /// Set once Redis refused a commit that named the result key beside the state keys
    /// (`CROSSSLOT`): results are cached after the commit from then on.
    no_cache_in_commit: Arc<AtomicBool>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// A store on an existing Redis connection.
    pub fn new(redis: RedisConn, namespace: Namespace) -> StateStore {
        StateStore {
            redis,
            namespace,
            snapshot: Lua::new(SNAPSHOT),
            commit: Lua::new(COMMIT),
            no_cache_in_commit: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Reads every key in one atomic step; `read_value[i]` says whether to fetch key i's value.
    /// Values that would total more than `max_bytes` are not read: [`Snapshot::TooLarge`].
    pub async fn snapshot(
        &self,
        keys: &[(&StateKey, bool)],
        max_bytes: u64,
    ) -> Result<Snapshot, redis::RedisError> {
        if keys.is_empty() {
            return Ok(Snapshot::Seen(Vec::new()));
        }
        let reply: Value = self
            .redis
            .run_script(&self.snapshot_call(keys, max_bytes))
            .await?;
        read_snapshot(reply, keys)
    }

    /// The snapshot of `keys` (not empty) as a script call, for a caller that sends it together
    /// with other reads ([`dtee_net::RedisConn::each_and_script`]) and reads the reply
    /// with [`read_snapshot`].
    pub fn snapshot_call(&self, keys: &[(&StateKey, bool)], max_bytes: u64) -> LuaCall<'_> {
        let mut invocation = self.snapshot.call();
        for (key, read) in keys {
            invocation
                .key(key.value_key(&self.namespace))
                .key(key.version_key(&self.namespace));
            invocation.arg(if *read { "1" } else { "0" });
        }
        invocation.arg(max_bytes);
        invocation
    }

    /// The result recorded when the job's writes were committed, if they were.
    pub async fn applied(
        &self,
        hash_tag: &str,
        job_id: &Digest,
    ) -> Result<Option<Vec<u8>>, redis::RedisError> {
        // A key of another type (never a worker's doing) holds no applied record, as a result
        // key of another type holds no result (`Store::cached_result`).
        self.redis
            .get_bytes(&applied_key(&self.namespace, hash_tag, job_id))
            .await
    }

    /// Records `result` (a final failure) as the job's applied result unless the job was
    /// applied already: `true` when it did. A commit of the same job afterwards answers
    /// already-applied with `result`, so it writes nothing. When the job was applied already,
    /// the caller reads the record first made (bounded, `job::reads::stored_answer`).
    pub async fn claim_applied(
        &self,
        hash_tag: &str,
        job_id: &Digest,
        result: &[u8],
        applied_ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        // Not `SET NX GET`, which would answer a large record whole outside any result slot.
        let set: Option<String> = redis::cmd("SET")
            .arg(applied_key(&self.namespace, hash_tag, job_id))
            .arg(result)
            .arg("NX")
            .arg("EX")
            .arg(applied_ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Commits a job's writes atomically, recording `result` as the job's applied result and,
    /// with `cache_ttl`, caching it as the job's result in the same step unless one is cached
    /// (one Redis node only: the result key lies in another slot of a cluster). Should Redis
    /// refuse that as crossing slots (a proxy that shards keys behind one address), the commit
    /// is made without it, and so is every later one: `Committed { cached: false }`, for the
    /// caller to cache the result itself.
    /// Nothing is written when the job was applied already, a key changed, a key has the wrong
    /// type, or a value would grow past `max_value_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        hash_tag: &str,
        job_id: &Digest,
        entries: &[CommitEntry],
        result: &[u8],
        applied_ttl: Duration,
        cache_ttl: Option<Duration>,
        max_value_bytes: u64,
    ) -> Result<Commit, redis::RedisError> {
        let mut cache_ttl = cache_ttl.filter(|_| !self.no_cache_in_commit.load(Ordering::Relaxed));
        let reply = loop {
            let mut invocation = self.commit.call();
            invocation.key(applied_key(&self.namespace, hash_tag, job_id));
            invocation
                .arg(result)
                .arg(applied_ttl.as_secs().max(1))
                .arg(max_value_bytes)
                .arg(cache_ttl.map_or(0, |ttl| ttl.as_secs().max(1)));
            for entry in entries {
                invocation
                    .key(entry.key.value_key(&self.namespace))
                    .key(entry.key.version_key(&self.namespace));
                invocation.arg(entry.seen_version);
                match &entry.op {
                    WriteOp::None => invocation.arg("none").arg(""),
                    WriteOp::Set(bytes) => invocation.arg("set").arg(bytes.as_slice()),
                    WriteOp::Append(bytes) => invocation.arg("append").arg(bytes.as_slice()),
                };
            }
            if cache_ttl.is_some() {
                invocation.key(self.namespace.result_key(job_id));
            }
            match self.redis.run_script::<Value>(&invocation).await {
                // Refused whole, before the script ran: nothing was written. Made again
                // without the result key.
                Err(error) if cache_ttl.is_some() && dtee_net::is_cross_slot(&error) => {
                    if !self.no_cache_in_commit.swap(true, Ordering::Relaxed) {
                        warn!(%error, "Redis refused a commit naming the result key beside the state keys (a proxy that shards keys behind one address?); results are cached after their commit from now on");
                    }
                    cache_ttl = None;
                }
                reply => break reply?,
            }
        };
        let Value::Array(fields) = reply else {
            return Err(malformed("commit reply is not an array"));
        };
        let status = fields.first().and_then(as_bytes).unwrap_or_default();
        match status.as_slice() {
            b"ok" => Ok(Commit::Committed {
                cached: fields.get(1).and_then(as_bytes).as_deref() == Some(b"1"),
            }),
            b"conflict" => Ok(Commit::Conflict(text(fields.get(1)))),
            b"applied" => Ok(Commit::AlreadyApplied(Stored::Whole(
                fields.get(1).and_then(as_bytes).unwrap_or_default(),
            ))),
            b"applied_large" => Ok(Commit::AlreadyApplied(Stored::Larger)),
            b"too_large" => Ok(Commit::TooLarge {
                key: text(fields.get(1)),
                size: text(fields.get(2))
                    .parse()
                    .map_err(|_| malformed("commit reply has a size that is not a number"))?,
            }),
            b"wrong_type" => Ok(Commit::WrongType(text(fields.get(1)))),
            _ => Err(malformed("commit reply has an unknown status")),
        }
    }
}

/// A snapshot of a job's bound state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Each key as the snapshot saw it.
    Seen(Vec<Seen>),
    /// The values to read total this many bytes, more than allowed: none was read.
    TooLarge(u64),
    /// This Redis key (a value or its version) is not a string: nothing was read.
    WrongType(String),
}

/// The snapshot script's reply for `keys`.
pub fn read_snapshot(
    reply: Value,
    keys: &[(&StateKey, bool)],
) -> Result<Snapshot, redis::RedisError> {
    let Value::Array(entries) = reply else {
        return Err(malformed("snapshot reply is not an array"));
    };
    if let [Value::BulkString(marker), detail] = entries.as_slice() {
        match marker.as_slice() {
            b"too_large" => {
                return text(Some(detail))
                    .parse()
                    .map(Snapshot::TooLarge)
                    .map_err(|_| malformed("snapshot reply has a size that is not a number"))
            }
            b"wrong_type" => return Ok(Snapshot::WrongType(text(Some(detail)))),
            _ => {}
        }
    }
    if entries.len() != keys.len() {
        return Err(malformed("snapshot reply has the wrong length"));
    }
    let seen: Result<Vec<Seen>, redis::RedisError> = entries
        .into_iter()
        .zip(keys)
        .map(|(entry, (_, read))| {
            let Value::Array(mut fields) = entry else {
                return Err(malformed("snapshot entry is not an array"));
            };
            let version = fields
                .first()
                .and_then(as_bytes)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| malformed("snapshot version is not a number"))?;
            let exists = matches!(fields.get(1), Some(Value::Int(n)) if *n > 0) || version > 0;
            let value = if *read {
                Some(match fields.get_mut(2).map(std::mem::take) {
                    Some(Value::BulkString(bytes)) => bytes,
                    other => other.as_ref().and_then(as_bytes).unwrap_or_default(),
                })
            } else {
                None
            };
            Ok(Seen {
                version,
                exists,
                value,
            })
        })
        .collect();
    seen.map(Snapshot::Seen)
}
