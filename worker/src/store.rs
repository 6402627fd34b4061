//! Redis access: blobs by digest and the result cache.
//!
//! Every call can fail only transiently (Redis unreachable or restarting); the caller retries.
//! The connection is a [`RedisConn`] (one node or a Redis Cluster), which reconnects by itself.

use std::time::Duration;

use dtee_net::{LuaCall, RedisConn};
use dtee_schemas::protocol::Namespace;
use dtee_schemas::Digest;
use redis::AsyncCommands;

/// The length of each key's string value, or -1 where the key holds none: one round trip that
/// reads no value.
const BLOB_LENGTHS: &str = r"
local lengths = {}
for i, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'string' then
    lengths[i] = redis.call('STRLEN', key)
  else
    lengths[i] = -1
  end
end
return lengths
";

/// KEYS[1]: a blob key; ARGV[1], ARGV[2]: the length and SHA-1 (hex) of bytes a worker read
/// there that do not hash to the key's digest. Deletes the key if it still holds those bytes
/// (not if anyone has stored something else since), without the bytes being sent back.
const REMOVE_BAD_BLOB: &str = r"
if redis.call('TYPE', KEYS[1]).ok == 'string'
   and redis.call('STRLEN', KEYS[1]) == tonumber(ARGV[1])
   and redis.sha1hex(redis.call('GET', KEYS[1])) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS[1]: a job's result key; KEYS[2]: its revocation by the delivery's tenant. ARGV[1]: the
/// most bytes of a cached result to answer (one more answers "larger"); ARGV[2]: "1" to cache
/// ARGV[3] for ARGV[4] seconds unless a result is cached already. The answers of
/// [`Store::late`], in the order of precedence of [`Store::prior`] (a cached result, then the
/// revocation), all at once: nothing is cached for a revoked job. 4 when the result key holds
/// another type than a string (never a worker's doing); any other error is the script's
/// error. Two calls in the usual case (each call costs Redis a few µs in a script); a third,
/// bounded, only when a result is cached already. The shebang makes Redis refuse the whole
/// script up front, instead of its write alone, while it refuses writes (out of memory, a
/// replica, a failed save): the worker then takes the usual order, which may still answer
/// with reads alone.
const LATE: &str = r"#!lua
local function cached()
  local value = redis.pcall('GETRANGE', KEYS[1], 0, ARGV[1])
  if type(value) == 'table' then
    if value.err and string.sub(value.err, 1, 9) == 'WRONGTYPE' then
      return {4, ''}
    end
    return redis.error_reply(value.err or 'unexpected reply')
  end
  if value ~= '' then
    return {1, value}
  end
  return nil
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return cached() or {2, ''}
end
if ARGV[2] == '1' then
  if redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[4]) then
    return {0, ''}
  end
end
return cached() or {3, ''}
";

/// What a job's prior answers said after it ran ([`Store::late`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Late {
    /// A result was cached first: it is the answer.
    Cached(Stored),
    /// The delivery's tenant revoked the job.
    Revoked,
    /// Nothing answered, and the result given is now cached.
    Stored,
    /// Nothing answered, and nothing was cached (the caller caches the usual way).
    Nothing,
    /// The result key holds a value of a type the worker never writes there.
    Foreign,
}

/// What exists for a job before it runs ([`Store::prior`]).
#[derive(Debug, Default)]
pub struct Prior {
    /// The cached result.
    pub cached: Option<Stored>,
    /// Whether the delivery's tenant revoked the job.
    pub revoked: bool,
    /// The applied record of a job that writes state: the result recorded with its commit.
    pub applied: Option<Stored>,
}

/// A stored result read no further than a bound ([`Store::prior`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The whole value.
    Whole(Vec<u8>),
    /// A value larger than the bound: not read.
    Larger,
}

/// The worker's view of Redis.
#[derive(Clone)]
pub struct Store {
    redis: RedisConn,
    namespace: Namespace,
    late: dtee_net::Lua,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to Redis.
    pub async fn connect(
        url: &str,
        tls: &dtee_net::Tls,
        namespace: Namespace,
    ) -> Result<Store, redis::RedisError> {
        let redis =
            dtee_net::redis_conn::connect(url, tls, dtee_net::RedisOptions::default()).await?;
        Ok(Store {
            redis,
            namespace,
            late: dtee_net::Lua::new(LATE),
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    /// The underlying connection (cheap to clone).
    pub fn connection(&self) -> RedisConn {
        self.redis.clone()
    }

    /// Deletes the blob stored under `digest` if it still holds `bad`, bytes that do not hash
    /// to `digest` (replaced by a plain `SET`: any user that may store blobs can do that, since
    /// Redis's ACLs cannot insist on `NX`). Uploads are `SET NX`, so until the key is gone even
    /// its owner could not store the right bytes again; once it is, the next upload heals it.
    /// Returns whether it was deleted.
    pub async fn remove_bad_blob(
        &self,
        digest: &Digest,
        bad: &[u8],
    ) -> Result<bool, redis::RedisError> {
        use sha1::Digest as _;
        let script = dtee_net::Lua::new(REMOVE_BAD_BLOB);
        let mut call = script.call();
        call.key(self.namespace.blob_key(digest))
            .arg(bad.len())
            .arg(hex::encode(sha1::Sha1::digest(bad)));
        let deleted: i64 = self.redis.run_script(&call).await?;
        Ok(deleted == 1)
    }

    /// The lengths of the blobs stored under `digests`, in order, in one round trip and without
    /// reading them: `None` where no blob (no string) is stored.
    pub async fn blob_lengths(
        &self,
        digests: &[&Digest],
    ) -> Result<Vec<Option<usize>>, redis::RedisError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let lengths: Vec<i64> = if self.redis.is_cluster() {
            // Blobs lie in many slots, and a script may touch only one: the same script once
            // per blob, all sent at once (each to its blob's node).
            let script = dtee_net::Lua::new(BLOB_LENGTHS);
            let each = futures_util::future::try_join_all(digests.iter().map(|digest| {
                let script = &script;
                async move {
                    let mut call = script.call();
                    call.key(self.namespace.blob_key(digest));
                    self.redis.run_script::<Vec<i64>>(&call).await
                }
            }))
            .await?;
            each.into_iter().flatten().collect()
        } else {
            let script = dtee_net::Lua::new(BLOB_LENGTHS);
            let mut invocation = script.call();
            for digest in digests {
                invocation.key(self.namespace.blob_key(digest));
            }
            self.redis.run_script(&invocation).await?
        };
        Ok(lengths
            .into_iter()
            .map(|length| usize::try_from(length).ok())
            .collect())
    }

    /// The blobs stored under `digests`, in order, each read up to the length given with it (so
    /// no more than the lengths checked beforehand is ever read, even if a blob was replaced
    /// since): the caller checks the bytes against their digests.
    pub async fn blobs_bounded(
        &self,
        digests: &[(&Digest, usize)],
    ) -> Result<Vec<Vec<u8>>, redis::RedisError> {
        // GETRANGE 1 0 reads nothing: an empty blob.
        let commands = digests
            .iter()
            .map(|(digest, length)| {
                let (start, end) = match length {
                    0 => (1, 0),
                    length => (0, *length as i64 - 1),
                };
                redis::cmd("GETRANGE")
                    .arg(self.namespace.blob_key(digest))
                    .arg(start)
                    .arg(end)
                    .clone()
            })
            .collect();
        self.redis.each(commands).await
    }

    /// The cached result of `job_id`, if any, whether `tenant` revoked it (`dtee cancel`), and
    /// the value of `applied_key` (the job's applied record, for a job that writes state), if
    /// one is named and set; with `snapshot`, that script's reply too (a job's state snapshot,
    /// read before it is known whether the job runs, to save a round trip when it does): in one
    /// round trip on one node; on a Redis Cluster key by key, all at once.
    ///
    /// The result and the applied record are read no further than `max_bytes`: a larger one
    /// is [`Stored::Larger`], for the caller to read once it may hold it (`job::reads`).
    pub async fn prior(
        &self,
        tenant: &str,
        job_id: &Digest,
        applied_key: Option<String>,
        snapshot: Option<&LuaCall<'_>>,
        max_bytes: u64,
    ) -> Result<(Prior, Option<redis::Value>), redis::RedisError> {
        // GETRANGE answers at most `max_bytes` + 1 bytes, and "" for a missing key (a result is
        // never empty).
        let bounded = |key: String| {
            redis::cmd("GETRANGE")
                .arg(key)
                .arg(0)
                .arg(max_bytes)
                .clone()
        };
        let mut commands = vec![
            bounded(self.namespace.result_key(job_id)),
            redis::cmd("EXISTS")
                .arg(self.namespace.revoked_key(tenant, job_id))
                .clone(),
        ];
        commands.extend(applied_key.map(bounded));
        let (values, snapshot) = match snapshot {
            Some(call) => {
                let (values, reply) = self.redis.each_and_script(commands, call).await?;
                (values, Some(reply))
            }
            None => (self.redis.each::<redis::Value>(commands).await?, None),
        };
        let stored = |value: Option<redis::Value>| -> Result<Option<Stored>, redis::RedisError> {
            let bytes: Vec<u8> = match value {
                Some(value) => redis::from_redis_value(value)?,
                None => Vec::new(),
            };
            Ok(match bytes.len() as u64 {
                0 => None,
                length if length > max_bytes => Some(Stored::Larger),
                _ => Some(Stored::Whole(bytes)),
            })
        };
        let mut values = values.into_iter();
        let cached = stored(values.next())?;
        let revoked: i64 = match values.next() {
            Some(value) => redis::from_redis_value(value)?,
            None => 0,
        };
        let applied = stored(values.next())?;
        Ok((
            Prior {
                cached,
                revoked: revoked > 0,
                applied,
            },
            snapshot,
        ))
    }

    /// Whether Redis is a cluster (where a script may touch the keys of one slot only).
    pub fn is_cluster(&self) -> bool {
        self.redis.is_cluster()
    }

    /// The answers [`Store::prior`] reads, read after the job ran, in one round trip and at
    /// once with caching `result` (its bytes and lifetime) when neither is there: a cached
    /// result (read no further than `max_bytes`), then `tenant`'s revocation. One script, so
    /// nothing is cached for a revoked job, even for a moment; one node only (the two keys lie
    /// in different slots of a cluster).
    pub async fn late(
        &self,
        tenant: &str,
        job_id: &Digest,
        result: Option<(&[u8], Duration)>,
        max_bytes: u64,
    ) -> Result<Late, redis::RedisError> {
        let mut call = self.late.call();
        call.key(self.namespace.result_key(job_id))
            .key(self.namespace.revoked_key(tenant, job_id))
            .arg(max_bytes);
        match result {
            Some((bytes, ttl)) => call.arg("1").arg(bytes).arg(ttl.as_secs().max(1)),
            None => call.arg("0"),
        };
        let (answer, cached): (i64, Vec<u8>) = self.redis.run_script(&call).await?;
        Ok(match answer {
            0 => Late::Stored,
            1 if cached.len() as u64 > max_bytes => Late::Cached(Stored::Larger),
            1 => Late::Cached(Stored::Whole(cached)),
            2 => Late::Revoked,
            3 => Late::Nothing,
            _ => Late::Foreign,
        })
    }

    /// The name of `job_id`'s result key.
    pub fn result_key(&self, job_id: &Digest) -> String {
        self.namespace.result_key(job_id)
    }

    /// The value of `key` read no further than `max_bytes` ([`Stored::Larger`] beyond); `None`
    /// when absent. A key of another type holds nothing, as for [`Store::cached_result`].
    pub async fn get_bounded(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Stored>, redis::RedisError> {
        // GETRANGE answers at most `max_bytes` + 1 bytes, and "" for a missing key (a result or
        // an applied record is never empty).
        let read: Result<Vec<u8>, redis::RedisError> = redis::cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(max_bytes)
            .query_async(&mut self.redis.clone())
            .await;
        let bytes = match read {
            Err(error) if dtee_net::is_wrong_type(&error) => return Ok(None),
            other => other?,
        };
        Ok(match bytes.len() as u64 {
            0 => None,
            length if length > max_bytes => Some(Stored::Larger),
            _ => Some(Stored::Whole(bytes)),
        })
    }

    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, redis::RedisError> {
        self.redis.clone().get(key).await
    }

    /// The cached result of `job_id`, if any. A result key holding another type than a
    /// string (never a worker's doing) holds no result: the job's prior look-up answered
    /// `internal_error` for it (`job::prior`), and a failure is then recorded under the
    /// failure key instead of being retried for as long as the key stays.
    pub async fn cached_result(
        &self,
        job_id: &Digest,
    ) -> Result<Option<Vec<u8>>, redis::RedisError> {
        self.redis
            .get_bytes(&self.namespace.result_key(job_id))
            .await
    }

    /// Records a failure that is not final, replacing any earlier one, for `ttl`: waiters find
    /// it, but the job runs again when resubmitted.
    pub async fn cache_failure(
        &self,
        job_id: &Digest,
        result: &[u8],
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        redis::cmd("SET")
            .arg(self.namespace.failure_key(job_id))
            .arg(result)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Waits until `replicas` replicas hold every write this worker made so far (Redis `WAIT`,
    /// on the connection that made them; on a cluster every primary answers and the smallest
    /// count counts), for at most `timeout`. Returns how many did.
    pub async fn wait_replicated(
        &self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<i64, redis::RedisError> {
        redis::cmd("WAIT")
            .arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Caches a final result. The first result cached for a job wins: a second execution (after a
    /// crash between caching and acking) does not overwrite it.
    pub async fn cache_result(
        &self,
        job_id: &Digest,
        result: &[u8],
        ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(self.namespace.result_key(job_id))
            .arg(result)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(stored.is_some())
    }
}
