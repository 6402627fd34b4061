//! The worker registry: each worker keeps an entry ([`WorkerEntry`]) in Redis with its identity
//! and evidence, refreshed on a heartbeat (the entry expires three heartbeats after the last
//! one), and produces fresh evidence periodically. `dtee workers` lists the entries.

use std::sync::Arc;
use std::time::Duration;

use dtee_net::RedisConn;
use dtee_schemas::protocol::{Namespace, WorkerEntry};
use tracing::warn;

use crate::attestation::Attestor;
use crate::clock::unix_ms;
use crate::telemetry::Telemetry;

/// Heartbeats and refreshes evidence until aborted.
pub async fn run(
    redis: RedisConn,
    namespace: Namespace,
    attestor: Arc<Attestor>,
    routing_keys: Vec<String>,
    heartbeat: Duration,
    evidence_refresh: Duration,
    telemetry: Telemetry,
) {
    let started_at = unix_ms();
    let mut last_refresh = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(heartbeat);
    loop {
        ticker.tick().await;
        if last_refresh.elapsed() >= evidence_refresh {
            let attestor_for_refresh = Arc::clone(&attestor);
            match tokio::task::spawn_blocking(move || attestor_for_refresh.refresh()).await {
                Ok(Ok(())) => {
                    last_refresh = tokio::time::Instant::now();
                    telemetry.evidence_refreshed();
                }
                Ok(Err(error)) => {
                    warn!(%error, "refreshing the evidence failed; keeping the previous evidence")
                }
                Err(error) => warn!(%error, "the evidence refresh task failed"),
            }
        }
        let identity = attestor.identity();
        let entry = WorkerEntry {
            platform: attestor.platform(),
            routing_keys: routing_keys.clone(),
            started_at_unix_ms: started_at,
            heartbeat_at_unix_ms: unix_ms(),
            identity,
        };
        let body = serde_json::to_vec(&entry).expect("an entry serializes");
        let ttl = (heartbeat.as_secs() * 3).max(3);
        let stored: Result<(), redis::RedisError> = redis::cmd("SET")
            .arg(namespace.worker_key(&entry.identity.worker_id))
            .arg(body)
            .arg("EX")
            .arg(ttl)
            .query_async(&mut redis.clone())
            .await;
        if let Err(error) = stored {
            warn!(%error, "registry heartbeat failed");
        }
    }
}

/// Removes a worker's entry (on graceful shutdown).
pub async fn deregister(redis: RedisConn, namespace: &Namespace, worker_id: &str) {
    let _: Result<(), redis::RedisError> = redis::cmd("DEL")
        .arg(namespace.worker_key(worker_id))
        .query_async(&mut redis.clone())
        .await;
}
