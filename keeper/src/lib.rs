//! dtee's secret keeper (`dtee-keeper`) and the client of its protocol.
//!
//! The keeper stores tenants' secrets in Redis, encrypted at rest under a key derived from the
//! operator's key-encryption key (KEK), and answers requests over AMQP (PROTOCOL.md §12): from
//! tenants, `put`, `list`, `get`, `delete` and `set_policy`; from workers, `release`, which it
//! grants only when the worker's evidence passes the secret owner's policy, sealing each value
//! to the worker's attested HPKE key and to the job. It keeps no state but its key, so several
//! keepers can serve one namespace, and a restart loses nothing.
//!
//! - [`client`]: [`client::KeeperClient`], used by `dtee` and by workers.
//! - [`release`]: the release decision; [`store`]: the secrets and policies in Redis;
//!   `service`: the request handlers.

pub mod client;
pub mod http;
pub mod release;
mod service;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use dtee_schemas::namespace::Namespace;
use dtee_schemas::secrets::HpkeKeyPair;
use redis::AsyncCommands;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use zeroize::Zeroizing;

pub use release::{check_claims, check_signed, ReleaseRequest, MAX_SECRETS_PER_JOB};

/// What a keeper needs.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// RabbitMQ.
    pub amqp_url: String,
    /// Redis.
    pub redis_url: String,
    /// TLS material for `amqps://` and `rediss://`.
    pub tls: dtee_net::Tls,
    /// The namespace it serves.
    pub namespace: Namespace,
    /// The key-encryption key: every keeper of a namespace has the same.
    pub kek: Zeroizing<[u8; 32]>,
    /// Whether owners may read values back.
    pub allow_get: bool,
    /// The AMQP users whose `release` requests are answered: the workers'. A release from any
    /// other user (a tenant) is refused before anything is read, so that no tenant can learn
    /// another's policy or secret names by asking in the other's name.
    pub worker_users: Vec<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The keys a KEK gives: the at-rest key and the HPKE key pair tenants seal to. Each is
/// SHA-256 of a label and the KEK, so neither reveals the other or the KEK.
pub fn derive_keys(kek: &[u8; 32]) -> (Zeroizing<[u8; 32]>, HpkeKeyPair) {
    let derive = |label: &[u8]| {
        let mut hasher = Sha256::new();
        hasher.update(label);
        hasher.update(kek);
        Zeroizing::new(<[u8; 32]>::from(hasher.finalize()))
    };
    let at_rest = derive(b"dtee.keeper.at-rest.v1\0");
    let hpke = HpkeKeyPair::derive(&derive(b"dtee.keeper.hpke.v1\0")[..]);
    (at_rest, hpke)
}

/// Reads a KEK file: 32 raw bytes, or 64 hex digits (a trailing newline allowed).
pub fn read_kek(path: &std::path::Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading the KEK file {}", path.display()))?,
    );
    let raw = if bytes.len() == 32 {
        Zeroizing::new(bytes.to_vec())
    } else {
        let text = std::str::from_utf8(&bytes).unwrap_or("").trim();
        Zeroizing::new(hex::decode(text).unwrap_or_default())
    };
    let kek: [u8; 32] = raw[..].try_into().map_err(|_| {
        anyhow::anyhow!(
            "{} must hold 32 bytes, raw or as 64 hex digits (make one with: head -c 32 /dev/urandom > FILE)",
            path.display()
        )
    })?;
    Ok(Zeroizing::new(kek))
}

/// Aborts the probe tasks when dropped.
struct Probes(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Probes {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Serves `/metrics` (a Prometheus recorder installed for this process), `/healthz` (the process
/// answers) and `/readyz` (consuming requests, and Redis answered its last PING, every 5 s).
async fn serve_probes(
    addr: std::net::SocketAddr,
    keeper: Arc<service::Keeper>,
    redis: dtee_net::RedisConn,
) -> anyhow::Result<Probes> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let redis_ok = Arc::new(AtomicBool::new(false));
    let watched = Arc::clone(&redis_ok);
    let watcher = tokio::spawn(async move {
        loop {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut redis.clone()).await;
            watched.store(pong.is_ok(), Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    let handler: http::Handler = Arc::new(move |path: &str| match path {
        "/metrics" => Some(http::Response::metrics(metrics.render())),
        "/healthz" => Some(http::Response::ok("ok\n")),
        "/readyz" => Some(
            match (
                keeper.serving.load(Ordering::Relaxed),
                redis_ok.load(Ordering::Relaxed),
            ) {
                (true, true) => http::Response::ok("ready\n"),
                (false, _) => http::Response::unavailable("not consuming requests from RabbitMQ"),
                (_, false) => http::Response::unavailable("Redis does not answer"),
            },
        ),
        _ => None,
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Probes(vec![
        watcher,
        tokio::spawn(http::serve(listener, handler)),
    ]))
}

/// Runs a keeper until `shutdown`: publishes its public key in Redis, then serves requests,
/// reconnecting to RabbitMQ when the connection is lost.
pub async fn run(config: KeeperConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (at_rest, key) = derive_keys(&config.kek);
    let redis = dtee_net::redis_conn::connect(
        &config.redis_url,
        &config.tls,
        dtee_net::RedisOptions::default(),
    )
    .await
    .context("connecting to redis")?;
    redis
        .clone()
        .set::<_, _, ()>(config.namespace.keeper_public_key(), key.public_hex())
        .await
        .context("publishing the keeper's public key")?;
    let keeper = Arc::new(service::Keeper {
        store: store::SecretStore::new(redis.clone(), config.namespace.clone(), &at_rest),
        key,
        allow_get: config.allow_get,
        worker_users: config.worker_users.clone(),
        namespace: config.namespace.clone(),
        serving: AtomicBool::new(false),
    });
    let _probes = match config.metrics_addr {
        Some(addr) => Some(serve_probes(addr, Arc::clone(&keeper), redis).await?),
        None => None,
    };
    loop {
        match service::serve(
            Arc::clone(&keeper),
            &config.amqp_url,
            &config.tls,
            shutdown.clone(),
        )
        .await
        {
            Ok(()) if *shutdown.borrow() => return Ok(()),
            Ok(()) => tracing::warn!("the broker connection ended; reconnecting"),
            Err(error) => tracing::warn!(%error, "broker connection failed; reconnecting"),
        }
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
