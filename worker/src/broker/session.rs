//! One connection to RabbitMQ, opened within a time bound: the topology declared, a result
//! channel in confirm mode, and a consumer channel with a prefetch and one consumer per routing
//! key's shared queue, per known tenant queue, and the dead-letter queue. The prefetch counts
//! per consumer, so it also bounds what one tenant has in flight on this worker.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use futures_util::stream::{SelectAll, Stream};
use futures_util::StreamExt as _;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::publisher::ResultPublisher;
use super::topology;
use crate::config::Config;
use crate::hooks::{self, TestHook};
use crate::redact;

mod tenant_consumes;

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
    /// The queue of each consumer, by consumer tag.
    consumed: BTreeMap<String, String>,
    /// The queues consumed (those of `consumed`), for look-ups by name.
    queues: HashSet<String>,
    /// The shared queues and the dead-letter queue (consumed, or only watched by the stall
    /// check with the stall-consumer test hook): checked first by [`Session::messages_ready`].
    shared: Vec<String>,
    /// Consumes sent and not answered in their time ([`Session::try_tenant`]): their queues
    /// count as consumed until the answer comes.
    pending: Vec<tenant_consumes::PendingConsume>,
    /// Numbers the tenant-queue consumers' tags, so that a tag is never used twice in a session
    /// (a consume given up on after its time may still have reached the broker, and the broker
    /// closes the channel on a tag used again).
    next_tag: AtomicU64,
}

/// Tenant queues whose ready messages one stall check reads, besides the shared queues.
const READY_CHECKS: usize = 32;

/// How long opening a session (connect, declare, consume) may take before it counts as failed:
/// a broker that accepts the TCP connection and then says nothing must not hang the worker.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(20);

impl Session {
    /// Connects, declares the topology, opens the result publisher, and consumes every
    /// routing key's queue and the dead-letter queue, within [`SESSION_OPEN_TIMEOUT`]. Tenant
    /// queues are not consumed here ([`Session::consume_tenants`]): however many a worker knows,
    /// they must not keep a session from opening.
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
        let connected = super::connect(
            &config.amqp_url,
            &config.tls,
            &format!("dtee-worker {}", config.worker_id),
        )
        .await
        .with_context(|| format!("connecting to rabbitmq at {}", redact(&config.amqp_url)))?;
        let node = connected.node;
        let opened = Self::set_up(connected.connection, config, routing_keys).await;
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
        // A job body over DTEE_MAX_JOB_BYTES is dropped as it arrives, not held whole until
        // its size is checked: the job is refused by the size the broker announced for it.
        consume.set_max_body_size(Some(config.max_job_bytes as u64));
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
            consumed: BTreeMap::new(),
            queues: HashSet::new(),
            shared: Vec::new(),
            pending: Vec::new(),
            next_tag: AtomicU64::new(0),
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
            // With the hook, not consumed but watched by the stall check.
            if !stall {
                let consumer = session.start_consumer(&queue, &tag).await?;
                session.add_consumer(queue.clone(), tag, consumer, None);
            }
            session.shared.push(queue);
        }
        Ok((session, publisher))
    }

    async fn start_consumer(&self, queue: &str, tag: &str) -> anyhow::Result<lapin::Consumer> {
        self.consume
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))
    }

    fn add_consumer(
        &mut self,
        queue: String,
        tag: String,
        consumer: lapin::Consumer,
        owner: Option<TenantQueue>,
    ) {
        let owner = owner.map(Arc::new);
        let (ended, ended_owner) = (tag.clone(), owner.clone());
        self.consumers.push(Box::pin(
            consumer
                .map(move |delivery| Delivered::Delivery(owner.clone(), delivery))
                .chain(futures_util::stream::once(async move {
                    Delivered::Ended(ended, ended_owner)
                })),
        ));
        self.queues.insert(queue.clone());
        self.consumed.insert(tag, queue);
    }

    /// Whether this session consumes `tenant_queue`.
    pub(crate) fn consumes(&self, config: &Config, tenant_queue: &TenantQueue) -> bool {
        let queue = config
            .namespace
            .tenant_job_queue(&tenant_queue.route, &tenant_queue.tenant);
        self.queues.contains(&queue) || self.pending.iter().any(|pending| pending.queue == queue)
    }

    /// Whether the consumer channel is still open (a new session's catch-up stops when not).
    pub(crate) fn is_open(&self) -> bool {
        self.consume.status().connected()
    }

    /// Whether messages are ready in the queues this session consumes: the shared queues and
    /// the dead-letter queue, then [`READY_CHECKS`] tenant queues from `cursor` on (which moves
    /// on, so that successive checks go round them all without each reading a thousand).
    /// `false` if the broker cannot say.
    pub(crate) async fn messages_ready(&self, cursor: &mut usize) -> bool {
        let Ok(channel) = self.connection.create_channel().await else {
            return false;
        };
        let shared: HashSet<&String> = self.shared.iter().collect();
        let mut tenant_queues: Vec<&String> = self
            .queues
            .iter()
            .filter(|queue| !shared.contains(queue))
            .collect();
        tenant_queues.sort_unstable();
        let start = *cursor % tenant_queues.len().max(1);
        let checks = READY_CHECKS.min(tenant_queues.len());
        let to_check = self.shared.iter().chain(
            tenant_queues
                .iter()
                .copied()
                .cycle()
                .skip(start)
                .take(checks),
        );
        let mut ready = false;
        let mut checked = 0usize;
        for queue in to_check {
            checked += 1;
            // The tenant queues read move the window on, as each is read (the caller may give
            // up on a slow broker half way); those not reached are read next time.
            *cursor = start + checked.saturating_sub(self.shared.len());
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(queue) if queue.message_count() > 0 => {
                    ready = true;
                    break;
                }
                Ok(_) => {}
                // A queue gone (deleted under the worker) closes the channel.
                Err(_) => break,
            }
        }
        let _ = channel.close(200, "checked".into()).await;
        ready
    }

    /// Whether the consumer with `tag` is one this session still consumes with (not one it
    /// cancelled itself).
    pub(crate) fn consumes_with(&self, tag: &str) -> bool {
        self.consumed.contains_key(tag)
    }

    /// Forgets the consumer with `tag` and its queue (it ended), so that the queue counts as
    /// not consumed (`Session::consumes`) and is declared and consumed again.
    pub(crate) fn forget_consumer(&mut self, tag: &str) {
        if let Some(queue) = self.consumed.remove(tag) {
            self.queues.remove(&queue);
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
        let of_routes = |queue: &str| {
            prefixes.iter().any(|prefix| {
                queue == prefix
                    || queue
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        // A consume of those routes not answered yet is awaited (a little) and its consumer
        // taken on, to be cancelled with the others: dropped, it would hold the messages the
        // broker had handed it until the session ends. One still not answered stays pending.
        for pending in self.pending.iter_mut() {
            if of_routes(&pending.queue) {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut pending.answer).await;
            }
        }
        self.adopt_pending();
        let cancelled: Vec<String> = self
            .consumed
            .iter()
            .filter(|(_, queue)| of_routes(queue))
            .map(|(tag, _)| tag.clone())
            .collect();
        for tag in cancelled {
            self.forget_consumer(&tag);
            let _ = self
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        self.shared.retain(|queue| !of_routes(queue));
    }

    /// Stops the broker from delivering more.
    pub(crate) async fn cancel_consumers(&self) {
        let cancels = async {
            for tag in self.consumed.keys() {
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
