//! A deliberately tiny HTTP/1.1 server for probes and metrics: one request per connection, GET
//! only, ten seconds per connection. The worker and the keeper serve `/metrics`, `/healthz` and
//! `/readyz` with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status line, e.g. `200 OK`.
    pub status: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// `200 OK` with a text body.
    pub fn ok(body: impl Into<String>) -> Response {
        Response {
            status: "200 OK",
            content_type: "text/plain",
            body: body.into(),
        }
    }

    /// `503 Service Unavailable` with the reason.
    pub fn unavailable(why: impl std::fmt::Display) -> Response {
        Response {
            status: "503 Service Unavailable",
            content_type: "text/plain",
            body: format!("{why}\n"),
        }
    }

    /// A Prometheus text exposition.
    pub fn metrics(body: String) -> Response {
        Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }
}

/// Answers a GET of a path (without its query), or `None` for 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &handler)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
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
    let response = match method {
        "GET" => handler(path.split('?').next().unwrap_or("")).unwrap_or(Response {
            status: "404 Not Found",
            content_type: "text/plain",
            body: "try /metrics, /healthz or /readyz\n".to_owned(),
        }),
        _ => Response {
            status: "405 Method Not Allowed",
            content_type: "text/plain",
            body: "GET only\n".to_owned(),
        },
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.shutdown().await
}
