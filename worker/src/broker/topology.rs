//! The topology a worker declares, idempotently, every time it connects.
//!
//! Topology (declared idempotently at start-up, see schemas/PROTOCOL.md):
//! - `<ns>.jobs`, a durable direct exchange routing jobs by target;
//! - `<ns>.results`, a durable topic exchange, routing key = job id;
//! - `<ns>.dead`, a fanout exchange, and the quorum queue `<ns>.dead` bound to it;
//! - `<ns>.jobs.<target>`, a durable quorum queue per served target, with a delivery limit and
//!   dead-lettering (at-least-once) into `<ns>.dead`.

use dtee_schemas::protocol::Namespace;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

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

/// Declares the exchanges, the dead-letter queue and one job queue per target.
pub(crate) async fn declare(
    channel: &Channel,
    namespace: &Namespace,
    targets: &[String],
    delivery_limit: u32,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            namespace.jobs_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
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
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            namespace.dead_letter_queue().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await?;
    channel
        .queue_bind(
            namespace.dead_letter_queue().into(),
            namespace.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for target in targets {
        let queue = namespace.job_queue(target);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                job_queue_arguments(namespace, delivery_limit),
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                namespace.jobs_exchange().into(),
                target.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
