//! One connection to RabbitMQ, opened within a time bound: the topology declared, a result
//! channel in confirm mode, and a consumer channel with a prefetch and one consumer per routing
//! key's queue plus the dead-letter queue.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::SelectAll;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::publisher::ResultPublisher;
use super::topology;
use crate::config::Config;
use crate::hooks::{self, TestHook};
use crate::redact;

/// One connection to RabbitMQ: the consumer channel and its consumers.
pub(crate) struct Session {
    connection: lapin::Connection,
    consume: lapin::Channel,
    pub(crate) consumers: SelectAll<lapin::Consumer>,
    consumer_tags: Vec<String>,
}

/// How long opening a session (connect, declare, consume) may take before it counts as failed:
/// a broker that accepts the TCP connection and then says nothing must not hang the worker.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(20);

impl Session {
    /// Connects, declares the topology, opens the result publisher, and consumes every
    /// routing key's queue and the dead-letter queue, within [`SESSION_OPEN_TIMEOUT`].
    pub(crate) async fn open(
        config: &Config,
        routing_keys: &[String],
    ) -> anyhow::Result<(Session, ResultPublisher)> {
        tokio::time::timeout(
            SESSION_OPEN_TIMEOUT,
            Self::open_unbounded(config, routing_keys),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "rabbitmq at {} did not complete the session set-up within {} s",
                redact(&config.amqp_url),
                SESSION_OPEN_TIMEOUT.as_secs()
            )
        })?
    }

    async fn open_unbounded(
        config: &Config,
        routing_keys: &[String],
    ) -> anyhow::Result<(Session, ResultPublisher)> {
        let connection = super::connect(
            &config.amqp_url,
            &format!("dtee-worker {}", config.worker_id),
        )
        .await
        .with_context(|| format!("connecting to rabbitmq at {}", redact(&config.amqp_url)))?;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        topology::declare(
            &setup,
            &config.namespace,
            routing_keys,
            config.delivery_limit,
        )
        .await
        .context("declaring the topology")?;
        let _ = setup.close(200, "declared".into()).await;
        let publisher = ResultPublisher::new(
            connection
                .create_channel()
                .await
                .context("opening the result channel")?,
            &config.namespace,
            &config.worker_id,
        )
        .await
        .context("enabling publisher confirms")?;
        let consume = connection
            .create_channel()
            .await
            .context("opening the consumer channel")?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let mut consumers = SelectAll::new();
        let mut consumer_tags = Vec::new();
        // Every worker also answers dead-lettered jobs, so that no submitter waits forever.
        let queues = routing_keys
            .iter()
            .map(|key| {
                (
                    config.namespace.job_queue(key),
                    format!("{}.{key}", config.worker_id),
                )
            })
            .chain([(
                config.namespace.dead_letter_queue(),
                format!("{}.dead", config.worker_id),
            )]);
        // The stall-consumer test hook consumes nothing: messages wait while the worker is up.
        let stall = hooks::active(config, TestHook::StallConsumer);
        for (queue, tag) in queues.filter(|_| !stall) {
            let consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            consumers.push(consumer);
            consumer_tags.push(tag);
        }
        Ok((
            Session {
                connection,
                consume,
                consumers,
                consumer_tags,
            },
            publisher,
        ))
    }

    /// Messages ready in the queues this session consumes (0 if the broker cannot say).
    pub(crate) async fn ready_messages(
        &self,
        namespace: &dtee_schemas::protocol::Namespace,
        routing_keys: &[String],
    ) -> u64 {
        let Ok(channel) = self.connection.create_channel().await else {
            return 0;
        };
        let mut ready = 0u64;
        for key in routing_keys {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(queue) = channel
                .queue_declare(
                    namespace.job_queue(key).into(),
                    passive,
                    FieldTable::default(),
                )
                .await
            {
                ready += u64::from(queue.message_count());
            }
        }
        let _ = channel.close(200, "checked".into()).await;
        ready
    }

    /// Stops the broker from delivering more.
    pub(crate) async fn cancel_consumers(&self) {
        for tag in &self.consumer_tags {
            let _ = self
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    /// Closes the connection; unacknowledged deliveries return to their queues.
    pub(crate) async fn close(self) {
        let _ = self.consume.close(200, "worker shutting down".into()).await;
        let _ = self
            .connection
            .close(200, "worker shutting down".into())
            .await;
    }
}
