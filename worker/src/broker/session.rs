//! One connection to RabbitMQ, opened within a time bound: the topology declared, a result
//! channel in confirm mode, and a consumer channel with a prefetch and one consumer per routing
//! key's shared queue, per known tenant queue, and the dead-letter queue. The prefetch counts
//! per consumer, so it also bounds what one tenant has in flight on this worker.

use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use futures_util::stream::{SelectAll, Stream};
use futures_util::StreamExt as _;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::publisher::ResultPublisher;
use super::topology;
use crate::config::Config;
use crate::hooks::{self, TestHook};
use crate::redact;

/// A tenant's own queue for one routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TenantQueue {
    /// The routing key (`wasm`, `wasm.tpm`, …).
    pub route: String,
    /// The tenant (a [routable](dtee_schemas::state::is_routable_tenant) AMQP user).
    pub tenant: String,
}

impl TenantQueue {
    /// Whether `delivery` is a job of this queue's tenant for its routing key: published by the
    /// tenant (`user_id`) under `<tenant>.<routing key>`. Anything else reached the queue
    /// through the extra routing keys of a `CC` or `BCC` header, which RabbitMQ before 4.0.3
    /// routes without checking the publisher's topic permission for them.
    pub(crate) fn owns(&self, delivery: &lapin::message::Delivery) -> bool {
        delivery
            .properties
            .user_id()
            .as_ref()
            .is_some_and(|user| user.as_str() == self.tenant)
            && dtee_schemas::protocol::split_submit_routing_key(delivery.routing_key.as_str())
                == Some((self.tenant.as_str(), self.route.as_str()))
    }

    /// Parses a member of the tenant-queue set, `<routing key>/<tenant>`.
    pub(crate) fn parse(member: &str) -> Option<TenantQueue> {
        let (route, tenant) = member.split_once('/')?;
        (!route.is_empty() && dtee_schemas::state::is_routable_tenant(tenant)).then(|| {
            TenantQueue {
                route: route.to_owned(),
                tenant: tenant.to_owned(),
            }
        })
    }
}

impl std::fmt::Display for TenantQueue {
    /// `<routing key>/<tenant>`: the member of the tenant-queue set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.route, self.tenant)
    }
}

/// What the consumers yield: each delivery with the tenant queue it came from (`None` for a
/// shared queue or the dead-letter queue).
pub(crate) enum Delivered {
    /// A delivery, or the consumer's error.
    Delivery(
        Option<Arc<TenantQueue>>,
        lapin::Result<lapin::message::Delivery>,
    ),
    /// The consumer with this tag ended: cancelled by this worker ([`Session::cancel_routes`])
    /// or by the broker (its queue deleted, say), which `SelectAll` would drop without a word.
    /// With the tenant queue it consumed, if it was one.
    Ended(String, Option<Arc<TenantQueue>>),
}

/// One consumer's deliveries, each with its queue's owner.
pub(crate) type Consumed = std::pin::Pin<Box<dyn Stream<Item = Delivered> + Send + Sync>>;

/// One connection to RabbitMQ: the consumer channel and its consumers.
pub(crate) struct Session {
    connection: lapin::Connection,
    consume: lapin::Channel,
    pub(crate) consumers: SelectAll<Consumed>,
    /// The acknowledgements of the consumer channel's deliveries.
    pub(crate) acks: super::acks::Acks,
    /// The tenant-queue announcements (`<ns>.tenants`), read from the stream's start.
    pub(crate) announcements: lapin::Consumer,
    consumer_tags: Vec<String>,
    /// The queues consumed: the shared queues and the tenant queues.
    queues: Vec<String>,
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
        tenant_queues: &[TenantQueue],
    ) -> anyhow::Result<(Session, ResultPublisher)> {
        tokio::time::timeout(
            SESSION_OPEN_TIMEOUT,
            Self::open_unbounded(config, routing_keys, tenant_queues),
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
        tenant_queues: &[TenantQueue],
    ) -> anyhow::Result<(Session, ResultPublisher)> {
        let connected = super::connect(
            &config.amqp_url,
            &config.tls,
            &format!("dtee-worker {}", config.worker_id),
        )
        .await
        .with_context(|| format!("connecting to rabbitmq at {}", redact(&config.amqp_url)))?;
        let node = connected.node;
        let opened = Self::set_up(connected.connection, config, routing_keys, tenant_queues).await;
        if opened.is_err() {
            // A node that accepts connections but cannot serve the topology (one cut off from
            // its cluster's majority, say): the next attempt starts with another node.
            dtee_net::amqp::lost(node);
        }
        opened
    }

    async fn set_up(
        connection: lapin::Connection,
        config: &Config,
        routing_keys: &[String],
        tenant_queues: &[TenantQueue],
    ) -> anyhow::Result<(Session, ResultPublisher)> {
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        topology::declare(
            &connection,
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
        let announcements = consume_announcements(&connection, config).await?;
        let mut session = Session {
            connection,
            consume,
            consumers: SelectAll::new(),
            acks: super::acks::Acks::start(),
            announcements,
            consumer_tags: Vec::new(),
            queues: Vec::new(),
        };
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
        for (queue, tag) in queues {
            if stall {
                // Not consumed, but watched by the stall check.
                session.queues.push(queue);
            } else {
                session.consume_queue(queue, tag, None).await?;
            }
        }
        // A tenant queue that cannot be consumed must not keep the worker from connecting; the
        // consumer loop tries it again (`Consumer::retry_tenant_queues`).
        for tenant_queue in tenant_queues.iter().filter(|_| !stall) {
            if let Err(error) = session.consume_tenant(config, tenant_queue).await {
                tracing::warn!(queue = %tenant_queue, error = %format!("{error:#}"), "could not consume a tenant queue");
            }
        }
        Ok((session, publisher))
    }

    async fn consume_queue(
        &mut self,
        queue: String,
        tag: String,
        owner: Option<TenantQueue>,
    ) -> anyhow::Result<()> {
        let consumer = self
            .consume
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let owner = owner.map(Arc::new);
        let (ended, ended_owner) = (tag.clone(), owner.clone());
        self.consumers.push(Box::pin(
            consumer
                .map(move |delivery| Delivered::Delivery(owner.clone(), delivery))
                .chain(futures_util::stream::once(async move {
                    Delivered::Ended(ended, ended_owner)
                })),
        ));
        self.consumer_tags.push(tag);
        self.queues.push(queue);
        Ok(())
    }

    /// Declares a tenant's queue and binds it (on a channel of its own, so that a refusal
    /// cannot close the consumer channel); answers its name.
    pub(crate) async fn declare_tenant(
        &self,
        config: &Config,
        tenant_queue: &TenantQueue,
    ) -> anyhow::Result<String> {
        let channel = self.side_channel().await?;
        let declared = topology::declare_tenant_queue(
            &channel,
            &config.namespace,
            &tenant_queue.route,
            &tenant_queue.tenant,
            config.delivery_limit,
        )
        .await;
        let _ = channel.close(200, "declared".into()).await;
        declared.with_context(|| format!("declaring the queue of {tenant_queue}"))
    }

    /// Consumes a tenant queue [`Session::declare_tenant`] declared.
    pub(crate) async fn consume_declared(
        &mut self,
        config: &Config,
        tenant_queue: &TenantQueue,
        queue: String,
    ) -> anyhow::Result<()> {
        let tag = format!("{}.{}", config.worker_id, tenant_queue);
        self.consume_queue(queue, tag, Some(tenant_queue.clone()))
            .await
    }

    /// Declares a tenant's queue ([`Session::declare_tenant`]) and consumes it.
    pub(crate) async fn consume_tenant(
        &mut self,
        config: &Config,
        tenant_queue: &TenantQueue,
    ) -> anyhow::Result<()> {
        let queue = self.declare_tenant(config, tenant_queue).await?;
        self.consume_declared(config, tenant_queue, queue).await
    }

    /// Announces a tenant queue on `<ns>.tenants` (on a channel of its own), with a confirm.
    pub(crate) async fn announce_tenant(
        &self,
        config: &Config,
        tenant_queue: &TenantQueue,
    ) -> anyhow::Result<()> {
        let channel = self.side_channel().await?;
        let announced =
            topology::announce_tenant_queue(&channel, &config.namespace, &tenant_queue.to_string())
                .await;
        let _ = channel.close(200, "announced".into()).await;
        announced.with_context(|| format!("announcing the queue of {tenant_queue}"))
    }

    /// A channel for one declaration or announcement, which the broker may close on a refusal
    /// without touching the consumer channel.
    async fn side_channel(&self) -> anyhow::Result<lapin::Channel> {
        self.connection
            .create_channel()
            .await
            .context("opening a channel")
    }

    /// Whether this session consumes `tenant_queue`.
    pub(crate) fn consumes(&self, config: &Config, tenant_queue: &TenantQueue) -> bool {
        let queue = config
            .namespace
            .tenant_job_queue(&tenant_queue.route, &tenant_queue.tenant);
        self.queues.contains(&queue)
    }

    /// Messages ready in the queues this session consumes (0 if the broker cannot say).
    pub(crate) async fn ready_messages(&self) -> u64 {
        let Ok(channel) = self.connection.create_channel().await else {
            return 0;
        };
        let mut ready = 0u64;
        for queue in &self.queues {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(queue) = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                ready += u64::from(queue.message_count());
            }
        }
        let _ = channel.close(200, "checked".into()).await;
        ready
    }

    /// Whether the consumer with `tag` is one this session still consumes with (not one it
    /// cancelled itself).
    pub(crate) fn consumes_with(&self, tag: &str) -> bool {
        self.consumer_tags.iter().any(|consumed| consumed == tag)
    }

    /// Forgets the consumer with `tag` and its queue (it ended), so that the queue counts as
    /// not consumed (`Session::consumes`) and is declared and consumed again.
    pub(crate) fn forget_consumer(&mut self, tag: &str) {
        if let Some(index) = self
            .consumer_tags
            .iter()
            .position(|consumed| consumed == tag)
        {
            self.consumer_tags.remove(index);
            if index < self.queues.len() {
                self.queues.remove(index);
            }
        }
    }

    /// Stops consuming the shared and tenant queues of `routes` (their device was given up).
    pub(crate) async fn cancel_routes(
        &mut self,
        namespace: &dtee_schemas::protocol::Namespace,
        routes: &[String],
    ) {
        let prefixes: Vec<String> = routes
            .iter()
            .map(|route| namespace.job_queue(route))
            .collect();
        let mut index = 0;
        while index < self.queues.len() {
            let queue = &self.queues[index];
            let of_route = prefixes.iter().any(|prefix| {
                queue == prefix
                    || queue
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            });
            if of_route && index < self.consumer_tags.len() {
                let tag = self.consumer_tags.remove(index);
                self.queues.remove(index);
                let _ = self
                    .consume
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
            } else {
                index += 1;
            }
        }
    }

    /// Stops the broker from delivering more.
    pub(crate) async fn cancel_consumers(&self) {
        let cancels = async {
            for tag in &self.consumer_tags {
                let _ = self
                    .consume
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
            }
        };
        bounded("cancelling the consumers", cancels).await;
    }

    /// Closes the connection; unacknowledged deliveries return to their queues. Each step is
    /// bounded by [`SHUTDOWN_STEP`]: a broker that does not answer (a node stopped under the
    /// connection, a connection half gone) must not keep the worker from exiting.
    pub(crate) async fn close(self) {
        // Acknowledgements handed over by finished jobs go out before the channel closes.
        bounded("sending the last acknowledgements", self.acks.flush()).await;
        bounded(
            "closing the consumer channel",
            self.consume.close(200, "worker shutting down".into()),
        )
        .await;
        bounded(
            "closing the connection",
            self.connection.close(200, "worker shutting down".into()),
        )
        .await;
    }
}

/// How long each step of a shutdown may wait for the broker or Redis.
pub(crate) const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// Waits for `step` at most [`SHUTDOWN_STEP`]; logs what was given up.
pub(crate) async fn bounded<T>(what: &str, step: impl std::future::Future<Output = T>) {
    if tokio::time::timeout(SHUTDOWN_STEP, step).await.is_err() {
        tracing::warn!(
            step = what,
            "shutdown step took too long; going on without it"
        );
    }
}

/// Consumes the tenant-queue announcements from the stream's first message, on a channel of its
/// own (a stream consumer needs a prefetch and acknowledgements).
async fn consume_announcements(
    connection: &lapin::Connection,
    config: &Config,
) -> anyhow::Result<lapin::Consumer> {
    let channel = connection
        .create_channel()
        .await
        .context("opening the announcements channel")?;
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .context("setting the announcements prefetch")?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let stream = config.namespace.tenants_announcements();
    channel
        .basic_consume(
            stream.as_str().into(),
            format!("{}.tenants", config.worker_id).as_str().into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .with_context(|| format!("consuming {stream}"))
}
