//! Redis connections: one node or a Redis Cluster, chosen by the URL.
//!
//! - `redis://host:port/db` and `rediss://…` (TLS): one node, through a connection manager that
//!   reconnects by itself.
//! - `redis+cluster://[user:password@]host:port[,host:port…]` and `rediss+cluster://…`: the
//!   seed nodes of a Redis Cluster; the client learns the slot map from them, follows `MOVED`
//!   and `ASK`, and refreshes the map when a replica is promoted. Every read goes to a primary
//!   (the waiting procedure depends on it: schemas/PROTOCOL.md §7). Commands on keys of several
//!   slots (`MGET`) are split by slot; scripts and transactions must keep to one slot, which
//!   the key layout arranges.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

pub use crate::redis_cluster::Cluster;
use crate::{has_scheme, Tls};

/// Timeouts of a Redis connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    /// How long connecting to a node may take.
    pub connection_timeout: Duration,
    /// How long one command may wait for its answer.
    pub response_timeout: Duration,
    /// The longest pause between reconnection attempts.
    pub max_delay: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// One Redis node or a Redis Cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConn {
    /// One node.
    Single(ConnectionManager),
    /// A Redis Cluster (rebuilt when it keeps timing out: [`Cluster`]).
    Cluster(Cluster),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(connection) => connection.req_packed_command(cmd),
            RedisConn::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConn::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(connection) => connection.get_db(),
            RedisConn::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Whether `url` names a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    has_scheme(url, "redis+cluster") || has_scheme(url, "rediss+cluster")
}

/// Why `url` is not a usable Redis URL, if it is not.
pub fn check(url: &str) -> Result<(), String> {
    if is_cluster_url(url) {
        return cluster_nodes(url).map(|_| ());
    }
    if has_scheme(url, "redis") || has_scheme(url, "rediss") || has_scheme(url, "unix") {
        return Ok(());
    }
    Err(format!(
        "{} is not a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL",
        dtee_schemas::cli::redact(url)
    ))
}

/// The node URLs of a cluster URL: `rediss+cluster://u:p@a:1,b:2/` gives `rediss://u:p@a:1/`
/// and `rediss://u:p@b:2/`.
pub fn cluster_nodes(url: &str) -> Result<Vec<String>, String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "a cluster URL needs a scheme".to_owned())?;
    let node_scheme = if scheme.eq_ignore_ascii_case("rediss+cluster") {
        "rediss"
    } else if scheme.eq_ignore_ascii_case("redis+cluster") {
        "redis"
    } else {
        return Err(format!("{scheme}:// is not a cluster scheme"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if rest.len() > authority.len() && !matches!(&rest[authority.len()..], "/" | "/0") {
        return Err("a Redis Cluster has only database 0: give no path and no query".to_owned());
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| match userinfo {
            Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}/"),
            None => format!("{node_scheme}://{host}/"),
        })
        .collect();
    if nodes.is_empty() {
        return Err("a cluster URL needs at least one host:port".to_owned());
    }
    Ok(nodes)
}

fn invalid(message: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid Redis URL",
        message,
    ))
}

/// Connects to the node or cluster `url` names.
pub async fn connect(url: &str, tls: &Tls, options: RedisOptions) -> RedisResult<RedisConn> {
    crate::tls::install_provider();
    if is_cluster_url(url) {
        let nodes = cluster_nodes(url).map_err(invalid)?;
        let mut builder = redis::cluster::ClusterClient::builder(nodes.clone())
            .connection_timeout(options.connection_timeout)
            .response_timeout(options.response_timeout);
        if has_scheme(&nodes[0], "rediss") {
            builder = builder.certs(tls.for_redis());
        }
        return Ok(RedisConn::Cluster(
            Cluster::connect(builder.build()?).await?,
        ));
    }
    check(url).map_err(invalid)?;
    let client = if has_scheme(url, "rediss") {
        redis::Client::build_with_tls(url, tls.for_redis())?
    } else {
        redis::Client::open(url)?
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connection_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_max_delay(options.max_delay);
    Ok(RedisConn::Single(
        client.get_connection_manager_with_config(config).await?,
    ))
}

/// A Lua script and its hash, run with [`RedisConn::run_script`].
#[derive(Debug, Clone)]
pub struct Lua {
    code: &'static str,
    script: redis::Script,
}

impl Lua {
    /// The script `code`.
    pub fn new(code: &'static str) -> Lua {
        Lua {
            code,
            script: redis::Script::new(code),
        }
    }

    /// A call with no keys or arguments yet.
    pub fn call(&self) -> LuaCall<'_> {
        LuaCall {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The keys and arguments of one run of a [`Lua`] script.
#[derive(Debug)]
pub struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    /// Adds a key.
    pub fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, verb: &str, body: &str) -> Cmd {
        let mut command = redis::cmd(verb);
        command
            .arg(body)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        command
    }
}

impl RedisConn {
    /// Runs a script: `EVALSHA`, and on `NOSCRIPT` `SCRIPT LOAD` then `EVALSHA` again. On a
    /// cluster the script is loaded on the primary of its keys' slot only: redis-rs would send
    /// `SCRIPT LOAD` to every node and fail while any node is down, which is exactly when a
    /// promoted replica, whose script cache is empty, needs it.
    pub async fn run_script<T: redis::FromRedisValue>(&self, call: &LuaCall<'_>) -> RedisResult<T> {
        match self {
            RedisConn::Single(connection) => {
                let mut invocation = call.lua.script.prepare_invoke();
                for key in &call.keys {
                    invocation.key(key.as_slice());
                }
                for arg in &call.args {
                    invocation.arg(arg.as_slice());
                }
                invocation.invoke_async(&mut connection.clone()).await
            }
            RedisConn::Cluster(connection) => {
                let mut connection = connection.clone();
                let by_hash = call.command("EVALSHA", call.lua.script.get_hash());
                match by_hash.query_async(&mut connection).await {
                    Err(error)
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        let slot = call
                            .keys
                            .first()
                            .map_or(0, dtee_schemas::state::cluster_slot);
                        let route = redis::cluster_routing::Route::new(
                            slot,
                            redis::cluster_routing::SlotAddr::Master,
                        );
                        connection
                            .route_command(
                                redis::cmd("SCRIPT").arg("LOAD").arg(call.lua.code).clone(),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                            )
                            .await?;
                        by_hash.query_async(&mut connection).await
                    }
                    answer => answer,
                }
            }
        }
    }

    /// The answers to `commands` ([`RedisConn::each`]) and `call`'s reply: in one pipeline (one
    /// round trip) on one node; on a cluster, all at once.
    pub async fn each_and_script<T: redis::FromRedisValue>(
        &self,
        commands: Vec<Cmd>,
        call: &LuaCall<'_>,
    ) -> RedisResult<(Vec<redis::Value>, T)> {
        match self {
            RedisConn::Single(connection) if !commands.is_empty() => {
                let mut pipe = redis::pipe();
                for command in &commands {
                    pipe.add_command(command.clone());
                }
                pipe.add_command(call.command("EVALSHA", call.lua.script.get_hash()));
                match pipe
                    .query_async::<Vec<redis::Value>>(&mut connection.clone())
                    .await
                {
                    Err(error)
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        Ok((self.each(commands).await?, self.run_script(call).await?))
                    }
                    Err(error) => Err(error),
                    Ok(mut answers) => {
                        let script = answers.pop().ok_or_else(|| {
                            redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "a pipeline answered nothing",
                            ))
                        })?;
                        Ok((answers, redis::from_redis_value(script)?))
                    }
                }
            }
            _ => futures_util::future::try_join(self.each(commands), self.run_script(call)).await,
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// The values of `keys`, in order (`None` where absent): one `MGET` on one node; on a
    /// cluster, one `GET` per key, sent at once (redis-rs splits a multi-slot `MGET`, but
    /// after a failover its split answers stop matching, and its cluster pipelines refuse keys
    /// of several slots). Not atomic across keys on a cluster: for keys of one slot that must
    /// be read together, `MGET` them directly.
    pub async fn get_many(&self, keys: &[String]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(connection) => {
                redis::cmd("MGET")
                    .arg(keys)
                    .query_async(&mut connection.clone())
                    .await
            }
            // `MGET` reads a key of another type as absent; one `GET` per key says `WRONGTYPE`,
            // which is read the same way here.
            RedisConn::Cluster(connection) => {
                futures_util::future::try_join_all(keys.iter().map(|key| {
                    let mut connection = connection.clone();
                    async move {
                        match redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut connection)
                            .await
                        {
                            Err(error) if is_wrong_type(&error) => Ok(None),
                            other => other,
                        }
                    }
                }))
                .await
            }
        }
    }

    /// `GET key`, reading a key that holds another type as absent (as `MGET` does): what every
    /// reader of a key only dtee writes, as a string, wants from a value it never wrote.
    pub async fn get_bytes(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        match redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.clone())
            .await
        {
            Err(error) if is_wrong_type(&error) => Ok(None),
            other => other,
        }
    }

    /// The answers to `commands`, in order: one pipeline (one round trip) on one node; on a
    /// cluster, each command sent to its own slot's node, all at once.
    pub async fn each<T: redis::FromRedisValue>(&self, commands: Vec<Cmd>) -> RedisResult<Vec<T>> {
        match self {
            RedisConn::Single(connection) => {
                if commands.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut connection.clone()).await
            }
            RedisConn::Cluster(connection) => {
                futures_util::future::try_join_all(commands.into_iter().map(|command| {
                    let mut connection = connection.clone();
                    async move { command.query_async(&mut connection).await }
                }))
                .await
            }
        }
    }

    /// Every key matching `pattern` (`SCAN … MATCH`), on every primary of a cluster. Keys may
    /// repeat or be missed while the keyspace changes, as with `SCAN` itself.
    pub async fn scan_match(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            RedisConn::Single(connection) => {
                scan_node(&mut connection.clone(), pattern, None, &mut keys).await?
            }
            RedisConn::Cluster(connection) => {
                let mut connection = connection.clone();
                for (host, port) in primaries(&mut connection).await? {
                    scan_node(&mut connection, pattern, Some((host, port)), &mut keys).await?;
                }
            }
        }
        Ok(keys)
    }
}

/// Whether `error` says a key holds a value of a type the command cannot read (`WRONGTYPE`,
/// also inside a pipeline's answer): what a key that dtee never wrote that way gives, which no
/// retry changes. Nothing else counts (a garbled reply may be transient).
pub fn is_wrong_type(error: &redis::RedisError) -> bool {
    answered(error, "WRONGTYPE")
}

/// Whether `error` is Redis's `CROSSSLOT`: a command or script named keys of more than one hash
/// slot, which a Redis Cluster (or a proxy that shards keys behind one address) refuses whole,
/// before running any of it.
pub fn is_cross_slot(error: &redis::RedisError) -> bool {
    error.code() == Some("CROSSSLOT") || answered(error, "CROSSSLOT")
}

/// Whether the server answered with an error of `code`, alone or inside a pipeline's answer
/// (a pipeline's server errors are reached through `into_server_errors` only).
fn answered(error: &redis::RedisError, code: &str) -> bool {
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, server)| server.code() == code))
}

/// The primaries of a cluster, from `CLUSTER NODES` (those not marked failed).
async fn primaries(connection: &mut Cluster) -> RedisResult<Vec<(String, u16)>> {
    let nodes = connection
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let text: String = redis::from_redis_value(nodes)?;
    Ok(parse_primaries(&text))
}

fn parse_primaries(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|flag| flag == "master")
                || flags
                    .split(',')
                    .any(|flag| flag == "fail" || flag == "noaddr")
            {
                return None;
            }
            // ip:port@cport[,hostname]
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

async fn scan_node(
    connection: &mut (impl ConnectionLike + RouteTo),
    pattern: &str,
    node: Option<(String, u16)>,
    keys: &mut Vec<String>,
) -> RedisResult<()> {
    let mut cursor = 0_u64;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, batch): (u64, Vec<String>) = connection.query_at(cmd, node.clone()).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Sends a command to a given node of a cluster (or to the one node).
trait RouteTo {
    async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        node: Option<(String, u16)>,
    ) -> RedisResult<T>;
}

impl RouteTo for ConnectionManager {
    async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        _node: Option<(String, u16)>,
    ) -> RedisResult<T> {
        cmd.query_async(self).await
    }
}

impl RouteTo for Cluster {
    async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        node: Option<(String, u16)>,
    ) -> RedisResult<T> {
        match node {
            Some((host, port)) => {
                let value = self
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
            None => cmd.query_async(self).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:7001,b:7002/").unwrap(),
            ["rediss://u:p@a:7001/", "rediss://u:p@b:7002/"]
        );
        assert_eq!(
            cluster_nodes("redis+cluster://127.0.0.1:7001").unwrap(),
            ["redis://127.0.0.1:7001/"]
        );
        assert!(cluster_nodes("redis+cluster:///").is_err());
        assert!(cluster_nodes("redis+cluster://a:1/3")
            .unwrap_err()
            .contains("database 0"));
        assert!(is_cluster_url("REDISS+CLUSTER://a:1"));
        assert!(!is_cluster_url("rediss://a:1"));
        assert!(check("redis://a:1/0").is_ok());
        assert!(check("http://a:1/").is_err());
    }

    #[test]
    fn primaries_come_from_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:7004@17004,host-4 slave 07c3 0 1 1 connected
292f 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
e7d1 127.0.0.1:7003@17003 master,fail - 0 1 3 connected
";
        assert_eq!(
            parse_primaries(text),
            [
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
    }
}
