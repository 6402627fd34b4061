//! The raw job round trip in dtee's shape (`roundtrip --shape dtee`): the same messages and
//! broker objects a dtee job uses, with no dtee code. The job goes through a topic exchange
//! with an alternate exchange, by `<user>.<route>`, to a quorum queue with a job queue's
//! arguments (delivery limit, at-least-once dead-lettering, `reject-publish`), published
//! `mandatory` with a job's properties (`user_id`, `reply_to`, a header, message id, type);
//! the result goes through a topic exchange by `<user>.<job id>`, with a `BCC` key to the
//! client's one exclusive classic reply queue, with a result's headers. Set against the plain
//! round trip (default exchange, two quorum queues, bare properties), it tells how much of what
//! RabbitMQ spends on a dtee job is the protocol's shape and how much the rest of dtee.

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

use dtee_schemas::protocol;

/// Where a round trip's jobs and results go, and how they are labelled.
pub(crate) struct Shape {
    /// `Some` in dtee's shape: the user, the exchanges and the reply queue's routing key.
    dtee: Option<DteeShape>,
    /// The queue jobs wait in.
    pub(crate) job_queue: String,
    /// The queue the client consumes results from.
    pub(crate) result_queue: String,
}

struct DteeShape {
    user: String,
    jobs_exchange: String,
    intake_exchange: String,
    results_exchange: String,
    dead_letter_exchange: String,
    reply_key: String,
}

fn arguments(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

const DURABLE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

impl Shape {
    /// The plain round trip: two scratch quorum queues on the default exchange.
    pub(crate) async fn plain(channel: &Channel) -> anyhow::Result<Shape> {
        let job_queue = quorum_queue(channel, "jobs").await?;
        let result_queue = quorum_queue(channel, "results").await?;
        Ok(Shape {
            dtee: None,
            job_queue,
            result_queue,
        })
    }

    /// dtee's shape for the AMQP user `user` (the connection's: `user_id` must match it).
    pub(crate) async fn dtee(channel: &Channel, user: &str) -> anyhow::Result<Shape> {
        let prefix = format!("dtee-loadtest.shape.{:08x}", rand::random::<u32>());
        let name = |what: &str| format!("{prefix}.{what}");
        let (jobs, intake, results, dead) =
            (name("jobs"), name("intake"), name("results"), name("dlx"));
        for (exchange, kind, args) in [
            (&intake, ExchangeKind::Topic, FieldTable::default()),
            (&dead, ExchangeKind::Fanout, FieldTable::default()),
            (&results, ExchangeKind::Topic, FieldTable::default()),
            (
                &jobs,
                ExchangeKind::Topic,
                arguments(&[("alternate-exchange", text(&intake))]),
            ),
        ] {
            channel
                .exchange_declare(exchange.as_str().into(), kind, DURABLE, args)
                .await?;
        }
        let job_arguments = arguments(&[
            ("x-queue-type", text("quorum")),
            ("x-delivery-limit", AMQPValue::LongLongInt(5)),
            ("x-dead-letter-exchange", text(&dead)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]);
        let job_queue = declare(channel, "jobs", job_arguments).await?;
        bind(channel, &job_queue, &jobs, &format!("{user}.loadtest")).await?;
        let reply = channel
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
        let result_queue = reply.name().as_str().to_owned();
        let reply_key = format!("{user}.reply.{result_queue}");
        bind(channel, &result_queue, &results, &reply_key).await?;
        Ok(Shape {
            dtee: Some(DteeShape {
                user: user.to_owned(),
                jobs_exchange: jobs,
                intake_exchange: intake,
                results_exchange: results,
                dead_letter_exchange: dead,
                reply_key,
            }),
            job_queue,
            result_queue,
        })
    }

    /// The exchange, routing key, `mandatory` flag and properties of job number `index`.
    pub(crate) fn job(
        &self,
        index: usize,
        timestamp: u64,
    ) -> (String, String, bool, BasicProperties) {
        let base = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(timestamp);
        let Some(dtee) = &self.dtee else {
            return (String::new(), self.job_queue.clone(), false, base);
        };
        let headers = arguments(&[(
            protocol::HEADER_SUBMITTED_AT,
            AMQPValue::LongLongInt(timestamp as i64),
        )]);
        let properties = base
            .with_headers(headers)
            .with_user_id(dtee.user.as_str().into())
            .with_reply_to(self.result_queue.as_str().into())
            .with_content_type(protocol::CONTENT_TYPE_JSON.into())
            .with_message_id(format!("{index:064x}").as_str().into())
            .with_type(protocol::JOB_MESSAGE_TYPE.into());
        let key = format!("{}.loadtest", dtee.user);
        (dtee.jobs_exchange.clone(), key, true, properties)
    }

    /// The exchange, routing key and properties of the result answering a job with `job`'s
    /// properties.
    pub(crate) fn result(&self, job: &BasicProperties) -> (String, String, BasicProperties) {
        let Some(dtee) = &self.dtee else {
            return (String::new(), self.result_queue.clone(), job.clone());
        };
        let message_id = job
            .message_id()
            .as_ref()
            .map_or_else(String::new, |id| id.as_str().to_owned());
        let headers = arguments(&[
            (
                protocol::HEADER_BCC,
                AMQPValue::FieldArray(vec![text(&dtee.reply_key)].into()),
            ),
            (protocol::HEADER_CACHED, AMQPValue::Boolean(false)),
            (protocol::HEADER_WORKER, text("loadtest-shape")),
        ]);
        let mut properties = BasicProperties::default()
            .with_content_type(protocol::CONTENT_TYPE_JSON.into())
            .with_message_id(message_id.as_str().into())
            .with_type(protocol::RESULT_MESSAGE_TYPE.into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(timestamp) = job.timestamp() {
            properties = properties.with_timestamp(*timestamp);
        }
        let key = format!("{}.{message_id}", dtee.user);
        (dtee.results_exchange.clone(), key, properties)
    }

    /// Deletes what the round trip declared.
    pub(crate) async fn delete(&self, channel: &Channel) -> anyhow::Result<()> {
        for queue in [&self.job_queue, &self.result_queue] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        if let Some(dtee) = &self.dtee {
            for exchange in [
                &dtee.jobs_exchange,
                &dtee.intake_exchange,
                &dtee.results_exchange,
                &dtee.dead_letter_exchange,
            ] {
                channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
        }
        Ok(())
    }
}

/// A durable scratch quorum queue named for `role`.
pub(crate) async fn quorum_queue(channel: &Channel, role: &str) -> anyhow::Result<String> {
    declare(
        channel,
        role,
        arguments(&[("x-queue-type", text("quorum"))]),
    )
    .await
}

async fn declare(channel: &Channel, role: &str, arguments: FieldTable) -> anyhow::Result<String> {
    let queue = format!("dtee-loadtest.{role}.{:08x}", rand::random::<u32>());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    Ok(queue)
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
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
