//! RabbitMQ: the worker's session (connection, channels, consumers), the topology it
//! declares, and result publishing with confirms.
//!
//! - [`session`] — one connection: topology, result channel, consumer channel, consumers;
//! - [`topology`] — exchanges and queues (see schemas/PROTOCOL.md);
//! - [`tenants`] — which tenants' own queues the worker consumes;
//! - [`publisher`] — results, published with a confirm;
//! - [`acks`] — the consumer channel's acknowledgements, batched with `multiple` where safe.

pub(crate) mod acks;
pub(crate) mod publisher;
pub(crate) mod session;
pub(crate) mod tenants;
pub(crate) mod topology;

use lapin::ConnectionProperties;

/// Connects to RabbitMQ (the first node of `url` that answers, over TLS for `amqps://`) with a
/// connection name that shows up in the management UI.
pub(crate) async fn connect(
    url: &str,
    tls: &dtee_net::Tls,
    name: &str,
) -> Result<dtee_net::amqp::Connected, lapin::Error> {
    dtee_net::amqp::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
        tls,
    )
    .await
}
