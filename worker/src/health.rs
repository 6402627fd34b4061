//! The worker's HTTP endpoints on the metrics address: `/metrics` (Prometheus), `/healthz`
//! (alive and making progress) and `/readyz` (connected to RabbitMQ and Redis, and attested).
//!
//! A deliberately tiny HTTP/1.1 server: one request per connection, GET only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, health, attestor) = (
            Arc::clone(&metrics),
            Arc::clone(&health),
            Arc::clone(&attestor),
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                answer(stream, &metrics, &health, &attestor),
            )
            .await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &Health,
    attestor: &Attestor,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let created = attestor.identity().evidence_created_at_unix_ms;
            (
                "200 OK",
                "text/plain; version=0.0.4",
                metrics.render(created),
            )
        }
        ("GET", "/healthz") => match health.alive() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", "/readyz") => match health.ready() {
            Ok(()) => (
                "200 OK",
                "text/plain",
                format!("ready ({} attestation)\n", attestor.platform()),
            ),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
