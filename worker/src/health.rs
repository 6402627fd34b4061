//! The worker's HTTP endpoints on the metrics address: `/metrics` (Prometheus), `/healthz`
//! (alive and making progress) and `/readyz` (connected to RabbitMQ and Redis, and attested).
//!
//! Served by the tiny HTTP/1.1 server of `dtee_keeper::http`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtee_keeper::http::{Handler, Response};
use tokio::net::TcpListener;

use crate::attestation::Attestor;
use crate::clock::unix_ms;
use crate::metrics::Metrics;

/// How long the consumer loop may go without a tick before `/healthz` reports it stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// What the probes report, updated by the consumer loop and the readiness watcher.
#[derive(Debug, Default)]
pub struct Health {
    /// Last time the consumer loop ran, Unix milliseconds (it ticks every second even when idle).
    pub loop_tick_unix_ms: AtomicU64,
    /// The consumer channel is open.
    pub amqp_connected: AtomicBool,
    /// Redis answered the last PING.
    pub redis_ok: AtomicBool,
    /// Set when the worker's queues hold ready messages, it has room for more, and nothing
    /// was delivered for a while: the consumer is stalled (the worker is up but consumes
    /// nothing). Cleared by the next delivery.
    pub stalled: AtomicBool,
    /// Last delivery, Unix milliseconds.
    pub last_delivery_unix_ms: AtomicU64,
    /// The GPUs: one given up makes the worker not ready.
    pub devices: Vec<std::sync::Arc<crate::backend::gpu::GpuBackend>>,
}

impl Health {
    /// Records that the consumer loop is alive.
    pub fn tick(&self) {
        self.loop_tick_unix_ms.store(unix_ms(), Ordering::Relaxed);
    }

    fn alive(&self) -> Result<(), String> {
        let since = unix_ms().saturating_sub(self.loop_tick_unix_ms.load(Ordering::Relaxed));
        if since > STALL_AFTER.as_millis() as u64 {
            return Err(format!(
                "the consumer loop has not run for {} s",
                since / 1000
            ));
        }
        if self.stalled.load(Ordering::Relaxed) {
            let idle = unix_ms().saturating_sub(self.last_delivery_unix_ms.load(Ordering::Relaxed));
            return Err(format!(
                "the consumer is stalled: messages wait in its queues, yet nothing was delivered for {} s",
                idle / 1000
            ));
        }
        Ok(())
    }

    /// Records a delivery (progress).
    pub fn delivered(&self) {
        self.last_delivery_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.stalled.store(false, Ordering::Relaxed);
    }

    /// Milliseconds since the last delivery (or since start).
    pub fn idle_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.last_delivery_unix_ms.load(Ordering::Relaxed))
    }

    fn ready(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(why) = self.alive() {
            problems.push(why);
        }
        if !self.amqp_connected.load(Ordering::Relaxed) {
            problems.push("not connected to RabbitMQ".to_owned());
        }
        if !self.redis_ok.load(Ordering::Relaxed) {
            problems.push("Redis does not answer".to_owned());
        }
        for device in &self.devices {
            if let Some(why) = device.failed() {
                problems.push(format!(
                    "GPU target {} is not served: {why}",
                    device.target()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    attestor: Arc<Attestor>,
) {
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/metrics" => {
            let created = attestor.identity().evidence_created_at_unix_ms;
            Some(Response::metrics(metrics.render(created)))
        }
        "/healthz" => Some(match health.alive() {
            Ok(()) => Response::ok("ok\n"),
            Err(why) => Response::unavailable(why),
        }),
        "/readyz" => Some(match health.ready() {
            Ok(()) => Response::ok(format!("ready ({} attestation)\n", attestor.platform())),
            Err(why) => Response::unavailable(why),
        }),
        _ => None,
    });
    dtee_keeper::http::serve(listener, handler).await;
}
