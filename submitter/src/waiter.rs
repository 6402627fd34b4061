use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtee_net::RedisConn;
use dtee_schemas::protocol::{result_routing_key, Namespace};
use dtee_schemas::{Digest, JobResult};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::ClientError;

/// Waiters by job id, each with a number so that one can withdraw without disturbing others,
/// and whether it bound the id's routing key (a reply watch binds nothing).
type Pending = Arc<Mutex<HashMap<Digest, Vec<(u64, bool, oneshot::Sender<JobResult>)>>>>;
/// Where a `subscribe_all` subscriber receives every result, with its `dtee-cached` flag.
type AllResults = Arc<Mutex<Option<mpsc::UnboundedSender<(JobResult, bool)>>>>;

/// Waits for results on one exclusive, auto-deleted queue bound to the results exchange.
///
/// [`ResultWaiter::wait`] binds the queue to one job id under the client's own user
/// (`<user>.<job id>`: workers answer each submission under its `user_id`, so only this
/// tenant's own submissions reach it), then checks the result cache, then waits: no result can
/// slip between the two. That costs the broker a binding and an unbinding per job (about 1.4 ms
/// of its CPU), so for the jobs a client submits itself there is a cheaper way: the queue is
/// bound once, at creation, to `<user>.reply.<queue>`; a job submitted with
/// [`crate::Client::submit_replying`] names this queue in `reply_to`, workers route its result
/// there too (a `BCC` key), and [`ResultWaiter::watch_reply`] binds nothing.
/// [`ResultWaiter::subscribe_all`] instead binds `#` and streams every result of the namespace
/// (load tests and monitors).
pub struct ResultWaiter {
    channel: Channel,
    queue: String,
    namespace: Namespace,
    /// The AMQP user: the first word of every routing key bound.
    user: String,
    redis: RedisConn,
    pending: Pending,
    all: AllResults,
    next_waiter: std::sync::atomic::AtomicU64,
    /// Held while a binding is added or removed, so that a watch starting on an id cannot
    /// have its new binding removed by a watch on the same id that is finishing.
    binding_lock: tokio::sync::Mutex<()>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ResultWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultWaiter")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl ResultWaiter {
    pub(crate) async fn new(
        connection: &Connection,
        namespace: Namespace,
        user: String,
        redis: RedisConn,
    ) -> Result<ResultWaiter, ClientError> {
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = queue.name().as_str().to_owned();
        // The one standing binding: answers to the jobs this waiter's client submits with
        // `reply_to` = this queue.
        channel
            .queue_bind(
                queue.as_str().into(),
                namespace.results_exchange().into(),
                dtee_schemas::protocol::reply_routing_key(Some(&user), &queue).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let all: AllResults = Arc::default();
        let dispatcher = {
            let pending = Arc::clone(&pending);
            let all = Arc::clone(&all);
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let Ok(result) = serde_json::from_slice::<JobResult>(&delivery.data) else {
                        continue;
                    };
                    let cached = is_republished(&delivery.properties);
                    if let Some(sender) = all.lock().expect("lock").as_ref() {
                        let _ = sender.send((result.clone(), cached));
                    }
                    let mut waiters = pending
                        .lock()
                        .expect("lock")
                        .remove(&result.job_id)
                        .unwrap_or_default();
                    // The last waiter takes the result itself: one watch (the usual case)
                    // copies nothing.
                    let last = waiters.pop();
                    for (_, _, waiter) in waiters {
                        let _ = waiter.send(result.clone());
                    }
                    if let Some((_, _, waiter)) = last {
                        let _ = waiter.send(result);
                    }
                }
            })
        };
        Ok(ResultWaiter {
            channel,
            queue,
            namespace,
            user,
            redis,
            pending,
            all,
            next_waiter: std::sync::atomic::AtomicU64::new(0),
            binding_lock: tokio::sync::Mutex::new(()),
            dispatcher,
        })
    }

    /// Waits for the result of `job_id`, up to `timeout`.
    pub async fn wait(&self, job_id: &Digest, timeout: Duration) -> Result<JobResult, ClientError> {
        self.watch(job_id).await?.result(timeout).await
    }

    /// Starts watching for the result of `job_id`: binds the queue, then checks the result
    /// cache and the failure slot. Once this returns, no result for the job can be missed, so
    /// a caller may submit the job (or have its user publish anything for that id) and then
    /// await [`Watch::result`].
    pub async fn watch(&self, job_id: &Digest) -> Result<Watch<'_>, ClientError> {
        self.watch_inner(job_id, true, true).await
    }

    /// Like [`ResultWaiter::watch`], for a caller about to submit the job itself: a failure
    /// that is not final (say `kernel_not_found` from before the kernel was stored) is not
    /// taken as the answer, since the new submission runs the job again.
    pub async fn watch_fresh(&self, job_id: &Digest) -> Result<Watch<'_>, ClientError> {
        self.watch_inner(job_id, false, true).await
    }

    /// Like [`ResultWaiter::watch_fresh`], for a job this client is about to submit with
    /// [`crate::Client::submit_replying`] naming [`ResultWaiter::reply_to`]: its result arrives
    /// through the waiter's standing reply binding, so no binding is made per job.
    pub async fn watch_reply(&self, job_id: &Digest) -> Result<Watch<'_>, ClientError> {
        self.watch_inner(job_id, false, false).await
    }

    /// Like [`ResultWaiter::watch_reply`], without reading Redis: for a client that publishes
    /// the job whatever Redis holds (a job with a fresh nonce, say). Nothing is missed: the
    /// answer to a job published with `reply_to` comes through the reply queue in every case,
    /// a cached result too (a worker answers a job whose result is cached from the cache). What
    /// it saves is a Redis round trip per job; what it costs, when the result was cached, is
    /// the publication and the worker's look-up (PROTOCOL.md §9).
    pub async fn watch_reply_only(&self, job_id: &Digest) -> Result<Watch<'_>, ClientError> {
        Ok(self.register(job_id, false))
    }

    /// The queue to name in a job's `reply_to` ([`crate::Client::submit_replying`]).
    pub fn reply_to(&self) -> &str {
        &self.queue
    }

    async fn watch_inner(
        &self,
        job_id: &Digest,
        accept_failure: bool,
        bind: bool,
    ) -> Result<Watch<'_>, ClientError> {
        let binding = if bind {
            Some(self.binding_lock.lock().await)
        } else {
            None
        };
        let mut watch = self.register(job_id, bind);
        if bind {
            self.channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.namespace.results_exchange().into(),
                    result_routing_key(Some(&self.user), job_id).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        drop(binding);
        // Whatever goes wrong from here, the watch is withdrawn (its pending entry and binding
        // go), not left behind.
        match self.read_stored(job_id, accept_failure).await {
            Ok(cached) => watch.cached = cached,
            Err(error) => {
                watch.withdraw().await;
                return Err(error);
            }
        }
        Ok(watch)
    }

    /// A pending watch for `job_id`, registered with the dispatcher before anything is bound,
    /// read or published.
    fn register(&self, job_id: &Digest, bind: bool) -> Watch<'_> {
        let (sender, receiver) = oneshot::channel();
        let number = self
            .next_waiter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending
            .lock()
            .expect("lock")
            .entry(job_id.clone())
            .or_default()
            .push((number, bind, sender));
        Watch {
            waiter: self,
            job_id: job_id.clone(),
            number,
            bound: bind,
            receiver,
            cached: None,
        }
    }

    /// What Redis holds for `job_id`: its result, or with `accept_failure` its failure that is
    /// not final; a value naming another job is refused.
    async fn read_stored(
        &self,
        job_id: &Digest,
        accept_failure: bool,
    ) -> Result<Option<JobResult>, ClientError> {
        let (result, failure): (Option<Vec<u8>>, Option<Vec<u8>>) = if accept_failure {
            let mut values = self
                .redis
                .get_many(&[
                    self.namespace.result_key(job_id),
                    self.namespace.failure_key(job_id),
                ])
                .await?
                .into_iter();
            (values.next().flatten(), values.next().flatten())
        } else {
            // A caller about to submit takes only the result key (§9): one key to read.
            let result = self
                .redis
                .get_bytes(&self.namespace.result_key(job_id))
                .await?;
            (result, None)
        };
        result
            .or(if accept_failure { failure } else { None })
            .map(|bytes| crate::client::stored_result(&bytes, job_id))
            .transpose()
    }

    /// Binds `#` and returns every result of the namespace from now on, whoever submitted the
    /// job, with whether it was republished from the cache. Only one subscription per waiter.
    /// Needs a user without a topic permission on `<ns>.results` (an operator or monitor): the
    /// deployment's submitter permission refuses `#`.
    pub async fn subscribe_all(
        &self,
    ) -> Result<mpsc::UnboundedReceiver<(JobResult, bool)>, ClientError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.all.lock().expect("lock") = Some(sender);
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.namespace.results_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(receiver)
    }

    /// Deletes the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        self.dispatcher.abort();
    }
}

/// Whether a result message was republished from the result cache (its `dtee-cached` header is
/// true) rather than published by the execution that produced it.
pub fn is_republished(properties: &lapin::BasicProperties) -> bool {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| {
            headers
                .inner()
                .get(dtee_schemas::protocol::HEADER_CACHED)
                .cloned()
        })
        .is_some_and(|value| matches!(value, lapin::types::AMQPValue::Boolean(true)))
}

/// A result being watched for; see [`ResultWaiter::watch`].
#[derive(Debug)]
pub struct Watch<'a> {
    waiter: &'a ResultWaiter,
    job_id: Digest,
    number: u64,
    /// Whether this watch bound the id's routing key.
    bound: bool,
    receiver: oneshot::Receiver<JobResult>,
    cached: Option<JobResult>,
}

impl Watch<'_> {
    /// The job id watched.
    pub fn job_id(&self) -> &Digest {
        &self.job_id
    }

    /// Whether an answer was already in Redis when watching began: [`Watch::result`] returns it
    /// at once. For [`ResultWaiter::watch_fresh`] and [`ResultWaiter::watch_reply`], which read
    /// only the result key, that is the job's cached result, and a caller about to submit the
    /// job need not (PROTOCOL.md §9, step 3); for [`ResultWaiter::watch`] it may also be a
    /// failure that is not final, after which the job can run again.
    pub fn is_cached(&self) -> bool {
        self.cached.is_some()
    }

    /// The result: from the cache if it was there when watching began, else the first one
    /// published, up to `timeout`.
    pub async fn result(mut self, timeout: Duration) -> Result<JobResult, ClientError> {
        let outcome = match self.cached.take() {
            Some(result) => Ok(result),
            None => match tokio::time::timeout(timeout, &mut self.receiver).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(ClientError::Amqp(lapin::Error::from(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "result queue",
                    ),
                ))),
                Err(_) => Err(ClientError::Timeout(self.job_id.clone())),
            },
        };
        self.withdraw().await;
        outcome
    }
}

impl Watch<'_> {
    /// Withdraws this waiter; unbinds only when it bound the id and no other bound waiter
    /// watches the same id.
    async fn withdraw(&self) {
        // Only bindings need the lock (a bind and an unbind of one id must not interleave); a
        // watch that bound nothing changes no binding's fate.
        let _binding = if self.bound {
            Some(self.waiter.binding_lock.lock().await)
        } else {
            None
        };
        let bound_remain = {
            let mut pending = self.waiter.pending.lock().expect("lock");
            match pending.get_mut(&self.job_id) {
                Some(waiters) => {
                    waiters.retain(|(number, _, _)| *number != self.number);
                    let remain = waiters.iter().any(|(_, bound, _)| *bound);
                    if waiters.is_empty() {
                        pending.remove(&self.job_id);
                    }
                    remain
                }
                None => false,
            }
        };
        if self.bound && !bound_remain {
            let _ = self
                .waiter
                .channel
                .queue_unbind(
                    self.waiter.queue.as_str().into(),
                    self.waiter.namespace.results_exchange().into(),
                    result_routing_key(Some(&self.waiter.user), &self.job_id).into(),
                    FieldTable::default(),
                )
                .await;
        }
    }
}
