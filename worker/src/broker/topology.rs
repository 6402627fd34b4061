//! The topology a worker declares, idempotently, every time it connects.
//!
//! Topology (declared idempotently at start-up, see schemas/PROTOCOL.md §4):
//! - `<ns>.jobs`, a durable topic exchange; jobs are published under `<user>.<routing key>`;
//!   its alternate exchange is `<ns>.intake`;
//! - `<ns>.intake`, a durable topic exchange that routes `*.<routing key>` to the shared queue
//!   `<ns>.jobs.<routing key>`, for tenants that have no queue of their own yet;
//! - `<ns>.jobs.<routing key>/<tenant>`, a tenant's own queue, bound to `<ns>.jobs` by
//!   `<tenant>.<routing key>` ([`declare_tenant_queue`], when a worker first sees the tenant);
//! - `<ns>.tenants`, a fanout exchange and the stream bound to it: one message
//!   `<routing key>/<tenant>` per tenant queue, read by every worker from its start;
//! - `<ns>.results`, a durable topic exchange, routing key = `<user>.<job id>`;
//! - `<ns>.dead`, a fanout exchange, and the quorum queue `<ns>.dead` bound to it.
//!
//! Every job queue is a durable quorum queue with a delivery limit and dead-lettering
//! (at-least-once) into `<ns>.dead`.

use dtee_schemas::protocol::Namespace;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::warn;

/// The arguments of a job queue.
pub(crate) fn job_queue_arguments(namespace: &Namespace, delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(namespace.dead_letter_exchange())),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString(LongString::from("at-least-once")),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    args
}

const DURABLE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// Declares the jobs exchange (a topic exchange whose alternate exchange is the intake
/// exchange) on a channel of its own. A jobs exchange left by a dtee before per-tenant queues
/// (a direct exchange without an alternate exchange) makes the broker refuse the declaration
/// and close the channel: it is then deleted and declared again. Only bindings are lost with
/// it, and every worker declares its own again when it connects.
async fn declare_jobs_exchange(
    connection: &Connection,
    namespace: &Namespace,
) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from(namespace.intake_exchange())),
    );
    let declare = |channel: Channel| {
        let arguments = arguments.clone();
        async move {
            let declared = channel
                .exchange_declare(
                    namespace.jobs_exchange().into(),
                    ExchangeKind::Topic,
                    DURABLE,
                    arguments,
                )
                .await;
            let _ = channel.close(200, "declared".into()).await;
            declared
        }
    };
    match declare(connection.create_channel().await?).await {
        Err(error) if is_precondition_failed(&error) => {
            warn!(
                exchange = %namespace.jobs_exchange(),
                %error,
                "the jobs exchange has another type or arguments (an earlier dtee's direct exchange?); replacing it"
            );
            let channel = connection.create_channel().await?;
            channel
                .exchange_delete(
                    namespace.jobs_exchange().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
            let _ = channel.close(200, "deleted".into()).await;
            declare(connection.create_channel().await?).await
        }
        other => other,
    }
}

/// Whether the broker refused a declaration as inequivalent to what exists (406).
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Declares the exchanges, the dead-letter queue and the shared job queue of each routing key.
pub(crate) async fn declare(
    connection: &Connection,
    channel: &Channel,
    namespace: &Namespace,
    routes: &[String],
    delivery_limit: u32,
) -> Result<(), lapin::Error> {
    let durable = DURABLE;
    channel
        .exchange_declare(
            namespace.intake_exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    declare_jobs_exchange(connection, namespace).await?;
    channel
        .exchange_declare(
            namespace.results_exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            namespace.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let announcements = namespace.tenants_announcements();
    channel
        .exchange_declare(
            announcements.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    declare_bound(
        channel,
        &announcements,
        queue_type("stream"),
        &announcements,
        "",
    )
    .await?;
    declare_bound(
        channel,
        &namespace.dead_letter_queue(),
        queue_type("quorum"),
        &namespace.dead_letter_exchange(),
        "",
    )
    .await?;
    for route in routes {
        declare_bound(
            channel,
            &namespace.job_queue(route),
            job_queue_arguments(namespace, delivery_limit),
            &namespace.intake_exchange(),
            &format!("*.{route}"),
        )
        .await?;
    }
    Ok(())
}

/// Queue arguments naming only the queue type.
fn queue_type(kind: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(kind)),
    );
    arguments
}

/// Declares a durable queue with `arguments` and binds it to `exchange` by `key`.
async fn declare_bound(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares `tenant`'s own queue for `route` and binds it to the jobs exchange by
/// `<tenant>.<route>`: from then on the tenant's jobs for that routing key wait there. Then
/// announces it on `<ns>.tenants` (with a confirm), so that every worker consumes it. Announcing
/// a queue again is harmless: workers ignore what they know.
pub(crate) async fn declare_tenant_queue(
    channel: &Channel,
    namespace: &Namespace,
    route: &str,
    tenant: &str,
    delivery_limit: u32,
) -> Result<String, lapin::Error> {
    let queue = namespace.tenant_job_queue(route, tenant);
    declare_bound(
        channel,
        &queue,
        job_queue_arguments(namespace, delivery_limit),
        &namespace.jobs_exchange(),
        &dtee_schemas::protocol::submit_routing_key(tenant, route),
    )
    .await?;
    Ok(queue)
}

/// Announces a tenant queue on `<ns>.tenants`, waiting for the broker's confirm; a nack is an
/// error (the announcement is not in the stream).
pub(crate) async fn announce_tenant_queue(
    channel: &Channel,
    namespace: &Namespace,
    member: &str,
) -> anyhow::Result<()> {
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            namespace.tenants_announcements().as_str().into(),
            "".into(),
            lapin::options::BasicPublishOptions::default(),
            member.as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    match confirm {
        lapin::Confirmation::Nack(_) => {
            anyhow::bail!("the broker refused the announcement (nack)")
        }
        _ => Ok(()),
    }
}
