//! How every dtee process reaches RabbitMQ and Redis, one node or a cluster, in the clear or
//! over TLS:
//!
//! - [`amqp`]: `DTEE_AMQP_URL` may list the nodes of a RabbitMQ cluster, separated by commas;
//!   [`amqp::connect`] tries them in turn, starting after the node that last failed, so a
//!   reconnect fails over to a live node.
//! - [`redis_conn`]: [`RedisConn`] is one Redis node (a reconnecting connection manager) or a
//!   Redis Cluster (`redis+cluster://` / `rediss+cluster://`), behind the one
//!   `redis::aio::ConnectionLike` every store uses.
//! - [`tls`]: `amqps://` and `rediss://` with rustls (ring; no OpenSSL): servers are verified,
//!   host name included (RabbitMQ against the system's CA store plus `DTEE_TLS_CA_FILE`, Redis
//!   against `DTEE_TLS_CA_FILE` alone when it is set, as redis-rs does); a client
//!   certificate is presented when `DTEE_TLS_CERT_FILE` and `DTEE_TLS_KEY_FILE` are set.

pub mod amqp;
mod redis_cluster;
pub mod redis_conn;
pub mod tls;

pub use dtee_schemas::cli::TlsFiles;
pub use redis_conn::{is_cross_slot, is_wrong_type, Lua, LuaCall, RedisConn, RedisOptions};
pub use tls::{Tls, TlsError};

/// Whether `url` has the scheme `scheme` (case-insensitive, RFC 3986 §3.1).
pub fn has_scheme(url: &str, scheme: &str) -> bool {
    url.trim_start()
        .split_once("://")
        .is_some_and(|(found, _)| found.eq_ignore_ascii_case(scheme))
}
