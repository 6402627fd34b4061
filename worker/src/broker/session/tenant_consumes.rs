//! Declaring and consuming tenant queues in a session, many at a time, and the consumes the
//! broker had not answered in their time (kept until it does, never dropped).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use super::{topology, Session, TenantQueue};
use crate::config::Config;

/// A consume sent to the broker and not answered in its time.
pub(super) struct PendingConsume {
    pub(super) queue: String,
    tag: String,
    owner: TenantQueue,
    pub(super) answer: tokio::task::JoinHandle<anyhow::Result<lapin::Consumer>>,
}

/// How one try at a tenant queue went ([`Session::try_tenant`]).
enum Attempt {
    /// Declared and consumed: the queue, the consumer tag and the consumer.
    Consuming(String, String, lapin::Consumer),
    /// Declared, and the consume sent but not answered yet.
    Pending(PendingConsume),
    Failed(anyhow::Error),
}

/// Tenant queues declared and consumed at once by [`Session::consume_tenants`].
const TENANT_QUEUES_AT_ONCE: usize = 16;
impl Session {
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
        let tag = self.tenant_tag(config, tenant_queue);
        let consumer = self.start_consumer(&queue, &tag).await?;
        self.add_consumer(queue, tag, consumer, Some(tenant_queue.clone()));
        Ok(())
    }

    /// Declares and consumes `tenant_queues` ([`Session::declare_tenant`]),
    /// [`TENANT_QUEUES_AT_ONCE`] at a time, each within `each`; answers those that failed,
    /// with why. A thousand queues take a second or two this way, where one after the other
    /// they took longer than a session may take to open.
    pub(crate) async fn consume_tenants(
        &mut self,
        config: &Config,
        tenant_queues: &[TenantQueue],
        each: Duration,
    ) -> Vec<(TenantQueue, anyhow::Error)> {
        self.adopt_pending();
        // Made first, then polled: a stream mapping a closure to these futures would not be
        // `Send` for every lifetime, as the spawned consumer loop must be.
        let tries: Vec<_> = tenant_queues
            .iter()
            .map(|tenant_queue| self.try_tenant(config, tenant_queue, each))
            .collect();
        let attempts: Vec<_> = futures_util::stream::iter(tries)
            .buffer_unordered(TENANT_QUEUES_AT_ONCE)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (tenant_queue, attempt) in attempts {
            match attempt {
                Attempt::Consuming(queue, tag, consumer) => {
                    self.add_consumer(queue, tag, consumer, Some(tenant_queue.clone()))
                }
                Attempt::Pending(pending) => {
                    self.pending.push(pending);
                    failed.push((
                        tenant_queue.clone(),
                        anyhow::anyhow!("rabbitmq has not answered the consume yet"),
                    ));
                }
                Attempt::Failed(error) => failed.push((tenant_queue.clone(), error)),
            }
        }
        failed
    }

    /// Declares `tenant_queue` and starts a consumer on it, within `each`. A consume sent is
    /// never given up on: dropped before the broker's answer, lapin would still make the
    /// consumer when the answer came, and nothing would read the messages the broker then
    /// hands it. So it runs on a task of its own, and one not answered in time is kept
    /// ([`Session::adopt_pending`]).
    async fn try_tenant<'a>(
        &self,
        config: &Config,
        tenant_queue: &'a TenantQueue,
        each: Duration,
    ) -> (&'a TenantQueue, Attempt) {
        let started = std::time::Instant::now();
        let late = || anyhow::anyhow!("rabbitmq did not answer within {} ms", each.as_millis());
        let queue =
            match tokio::time::timeout(each, self.declare_tenant(config, tenant_queue)).await {
                Ok(Ok(queue)) => queue,
                Ok(Err(error)) => return (tenant_queue, Attempt::Failed(error)),
                Err(_) => return (tenant_queue, Attempt::Failed(late())),
            };
        let tag = self.tenant_tag(config, tenant_queue);
        let (channel, name, consumer_tag) = (self.consume.clone(), queue.clone(), tag.clone());
        let mut answer = tokio::spawn(async move {
            channel
                .basic_consume(
                    name.as_str().into(),
                    consumer_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {name}"))
        });
        let attempt =
            match tokio::time::timeout(each.saturating_sub(started.elapsed()), &mut answer).await {
                Ok(Ok(Ok(consumer))) => Attempt::Consuming(queue, tag, consumer),
                Ok(Ok(Err(error))) => Attempt::Failed(error),
                Ok(Err(error)) => Attempt::Failed(anyhow::anyhow!("consuming {queue}: {error}")),
                Err(_) => Attempt::Pending(PendingConsume {
                    queue,
                    tag,
                    owner: tenant_queue.clone(),
                    answer,
                }),
            };
        (tenant_queue, attempt)
    }

    /// Takes on the consumers of consumes answered since they were given up on in time
    /// ([`Session::try_tenant`]); those the broker refused are forgotten, so that their queues
    /// count as not consumed and are tried again.
    pub(crate) fn adopt_pending(&mut self) {
        for mut pending in std::mem::take(&mut self.pending) {
            if !pending.answer.is_finished() {
                self.pending.push(pending);
                continue;
            }
            // Finished, but a poll may still say "not yet" (tokio's cooperative budget): kept.
            match (&mut pending.answer).now_or_never() {
                None => self.pending.push(pending),
                Some(Ok(Ok(consumer))) => {
                    self.add_consumer(pending.queue, pending.tag, consumer, Some(pending.owner))
                }
                Some(_) => {}
            }
        }
    }

    /// A consumer tag for `tenant_queue` that this session has not used.
    fn tenant_tag(&self, config: &Config, tenant_queue: &TenantQueue) -> String {
        let number = self.next_tag.fetch_add(1, Ordering::Relaxed);
        format!("{}.{tenant_queue}.{number}", config.worker_id)
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
}
