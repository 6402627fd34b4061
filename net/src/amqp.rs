//! RabbitMQ connections: one URL or the nodes of a cluster, tried in turn.
//!
//! A setting such as `amqps://w:pw@rabbit-0:5671/dtee,amqps://w:pw@rabbit-1:5671/dtee` names
//! every node. [`connect`] starts with the node after the one whose connection last failed or
//! was lost (see [`lost`]), so a process whose node went down reconnects to another one; the
//! caller then declares its topology and consumes again, as after any reconnection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::{has_scheme, Tls};

/// How long one node of several may take to accept a connection (TCP, TLS and the AMQP
/// handshake) before the next one is tried. A single node has no bound of its own here: the
/// caller's bound applies (the worker's session set-up timeout).
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The node to try first: the one after the node that last failed (shared by the process's
/// connections, which all reach the same cluster).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The URLs of `setting`: one URL, or several separated by commas (blanks ignored).
pub fn urls(setting: &str) -> Vec<&str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Why `setting` is not a usable AMQP setting, if it is not: no URL, or a URL whose scheme is
/// neither `amqp` nor `amqps`.
pub fn check(setting: &str) -> Result<(), String> {
    let urls = urls(setting);
    if urls.is_empty() {
        return Err("no AMQP URL given".to_owned());
    }
    for url in urls {
        if !has_scheme(url, "amqp") && !has_scheme(url, "amqps") {
            return Err(format!(
                "{} is not an amqp:// or amqps:// URL",
                dtee_schemas::cli::redact(url)
            ));
        }
    }
    Ok(())
}

/// Records that the connection to the node at `index` was lost, so the next [`connect`]
/// starts with the next node.
pub fn lost(index: usize) {
    let _ = NEXT.compare_exchange(index, index + 1, Ordering::Relaxed, Ordering::Relaxed);
}

/// A connection and the index of the node it reached (for [`lost`]).
#[derive(Debug)]
pub struct Connected {
    /// The connection.
    pub connection: Connection,
    /// The node's index in the setting.
    pub node: usize,
}

/// Connects to the first node of `setting` that answers, starting after the last one that
/// failed, each within [`NODE_CONNECT_TIMEOUT`] when there are several. The error is the last
/// node's.
pub async fn connect(
    setting: &str,
    properties: ConnectionProperties,
    tls: &Tls,
) -> Result<Connected, lapin::Error> {
    let urls = urls(setting);
    if urls.is_empty() {
        return Err(
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no AMQP URL given").into(),
        );
    }
    let start = NEXT.load(Ordering::Relaxed);
    let mut last_error = None;
    for offset in 0..urls.len() {
        let node = (start + offset) % urls.len();
        let url = urls[node];
        let attempt = connect_one(url, properties.clone(), tls);
        let bound = if urls.len() > 1 {
            NODE_CONNECT_TIMEOUT
        } else {
            Duration::MAX
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(connection)) => {
                NEXT.store(node, Ordering::Relaxed);
                return Ok(Connected { connection, node });
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %dtee_schemas::cli::redact(url), %error, "rabbitmq node refused the connection");
                last_error = Some(error);
            }
            Err(_) => {
                tracing::warn!(node = %dtee_schemas::cli::redact(url), "rabbitmq node did not answer in time");
                last_error = Some(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no AMQP handshake within {} s",
                            NODE_CONNECT_TIMEOUT.as_secs()
                        ),
                    )
                    .into(),
                );
            }
        }
        NEXT.store(node + 1, Ordering::Relaxed);
    }
    Err(last_error.expect("at least one URL was tried"))
}

async fn connect_one(
    url: &str,
    properties: ConnectionProperties,
    tls: &Tls,
) -> Result<Connection, lapin::Error> {
    if has_scheme(url, "amqps") {
        crate::tls::install_provider();
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(url, properties, tls.for_lapin(), runtime).await
    } else {
        Connection::connect(url, properties).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_lists_urls() {
        assert_eq!(urls("amqp://a/%2f"), ["amqp://a/%2f"]);
        assert_eq!(
            urls(" amqp://a/%2f , amqps://b:5671/x,"),
            ["amqp://a/%2f", "amqps://b:5671/x"]
        );
        assert!(check("amqp://a/%2f,AMQPS://b/x").is_ok());
        assert!(check("").unwrap_err().contains("no AMQP URL"));
        assert!(check("amqp://a/,http://u:pw@b/")
            .unwrap_err()
            .contains("http://u:***@b/"));
    }

    #[tokio::test]
    async fn connecting_tries_every_node_and_reports_the_last_error() {
        // Two closed loopback ports: both are tried, and the error is a connection error.
        let setting = "amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f";
        let error = connect(setting, ConnectionProperties::default(), &Tls::default())
            .await
            .unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("refused"),
            "{error}"
        );
    }
}
