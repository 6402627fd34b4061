//! RabbitMQ: connection, topology and result publishing.
//!
//! Topology (declared idempotently at start-up, see schemas/PROTOCOL.md):
//! - `<ns>.jobs`, a durable direct exchange routing jobs by target;
//! - `<ns>.results`, a durable topic exchange, routing key = job id;
//! - `<ns>.dead`, a fanout exchange, and the quorum queue `<ns>.dead` bound to it;
//! - `<ns>.jobs.<target>`, a durable quorum queue per served target, with a delivery limit and
//!   dead-lettering (at-least-once) into `<ns>.dead`.

use dtee_schemas::protocol::{self, Namespace};
use dtee_schemas::Digest;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

/// Connects to RabbitMQ with a connection name that shows up in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// The arguments of a job queue.
pub fn job_queue_arguments(namespace: &Namespace, delivery_limit: u32) -> FieldTable {
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
pub async fn declare_topology(
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

/// Why a result was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("publishing the result: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take responsibility for the message.
    #[error("the broker did not confirm the result (nack)")]
    Nacked,
}

/// Publishes results with publisher confirms.
#[derive(Clone)]
pub struct ResultPublisher {
    channel: Channel,
    exchange: ShortString,
    worker_id: String,
}

impl std::fmt::Debug for ResultPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultPublisher")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl ResultPublisher {
    /// Puts `channel` in confirm mode and publishes to the namespace's results exchange.
    pub async fn new(
        channel: Channel,
        namespace: &Namespace,
        worker_id: &str,
    ) -> Result<ResultPublisher, lapin::Error> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ResultPublisher {
            channel,
            exchange: namespace.results_exchange().into(),
            worker_id: worker_id.to_owned(),
        })
    }

    /// Whether the result channel is still open (the broker closes it on a channel error,
    /// such as a message over its size limit or a deleted exchange).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes one result and waits for the broker's confirm.
    pub async fn publish(
        &self,
        job_id: &Digest,
        body: &[u8],
        cached: bool,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        headers.insert(protocol::HEADER_CACHED.into(), AMQPValue::Boolean(cached));
        headers.insert(
            protocol::HEADER_WORKER.into(),
            AMQPValue::LongString(LongString::from(self.worker_id.as_str())),
        );
        let properties = BasicProperties::default()
            .with_content_type(protocol::CONTENT_TYPE_JSON.into())
            .with_message_id(job_id.as_str().into())
            .with_type(protocol::RESULT_MESSAGE_TYPE.into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                protocol::result_routing_key(job_id).into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }
}
