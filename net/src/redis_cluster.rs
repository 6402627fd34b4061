//! A Redis Cluster connection that replaces itself when it stops answering.
//!
//! redis-rs 1.8's asynchronous cluster connection can wedge after a node is killed and
//! restarted under load: every later command on it, to any node, times out, although the
//! cluster is healthy and a new connection works at once (reproduced on
//! deploy/local/cluster.sh: many concurrent reads and `CLUSTER NODES` while a primary is killed,
//! its replica promoted and the node restarted; the failover test in tests/cluster hit it).
//! Timeouts do not make redis-rs reconnect, so this wrapper does: after
//! [`TIMEOUTS_BEFORE_REBUILD`] timeouts with no success between them, it builds a new connection
//! from the same client in the background and swaps it in; commands already sent finish (or
//! time out) on the old one. Clones share the connection.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tracing::{info, warn};

/// Timeouts in a row (no success between them) after which the connection is rebuilt.
pub const TIMEOUTS_BEFORE_REBUILD: u32 = 2;

/// A cluster connection, rebuilt when it keeps timing out.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClusterClient,
    connection: RwLock<ClusterConnection>,
    timeouts: AtomicU32,
    rebuilding: AtomicBool,
    rebuilt: AtomicU32,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("rebuilt", &self.rebuilt())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects through `client`.
    pub async fn connect(client: ClusterClient) -> RedisResult<Cluster> {
        let connection = client.get_async_connection().await?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                client,
                connection: RwLock::new(connection),
                timeouts: AtomicU32::new(0),
                rebuilding: AtomicBool::new(false),
                rebuilt: AtomicU32::new(0),
            }),
        })
    }

    /// How many times the connection was rebuilt.
    pub fn rebuilt(&self) -> u32 {
        self.inner.rebuilt.load(Ordering::Relaxed)
    }

    fn current(&self) -> ClusterConnection {
        self.inner
            .connection
            .read()
            .expect("cluster connection lock")
            .clone()
    }

    /// Counts a command's outcome; the [`TIMEOUTS_BEFORE_REBUILD`]th timeout in a row starts a
    /// rebuild (one at a time).
    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Ok(_) => self.inner.timeouts.store(0, Ordering::Relaxed),
            Err(error) if error.is_timeout() => {
                let timeouts = self.inner.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if timeouts >= TIMEOUTS_BEFORE_REBUILD
                    && !self.inner.rebuilding.swap(true, Ordering::AcqRel)
                {
                    warn!(
                        timeouts,
                        "redis cluster connection keeps timing out; building a new one"
                    );
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move { rebuild(inner).await });
                }
            }
            Err(_) => {}
        }
    }

    /// [`ClusterConnection::route_command`], counted.
    pub async fn route_command(&mut self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let result = self.current().route_command(cmd, routing).await;
        self.observe(&result);
        result
    }
}

async fn rebuild(inner: Arc<Inner>) {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match inner.client.get_async_connection().await {
            Ok(connection) => {
                *inner.connection.write().expect("cluster connection lock") = connection;
                inner.timeouts.store(0, Ordering::Relaxed);
                inner.rebuilt.fetch_add(1, Ordering::Relaxed);
                inner.rebuilding.store(false, Ordering::Release);
                info!("redis cluster connection rebuilt");
                return;
            }
            Err(error) => {
                warn!(%error, "building a new redis cluster connection failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

impl ConnectionLike for Cluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current().req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
