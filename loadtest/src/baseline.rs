//! The broker baselines a job is measured against, with the same broker and client library:
//! `amqp` (confirm-and-consume on one quorum queue) and `roundtrip` (a raw job round trip).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use crate::shaped::Shape;
use crate::{cpu, AmqpArgs, Report};

pub(crate) async fn amqp(
    url: &str,
    tls: &dtee_net::Tls,
    args: &AmqpArgs,
) -> anyhow::Result<Report> {
    let before = cpu::snapshot();
    let mut report = amqp_baseline(url, tls, args).await?;
    report.cpu_us_per_job = cpu::per_job(&before, &cpu::snapshot(), report.count);
    Ok(report)
}

async fn amqp_baseline(url: &str, tls: &dtee_net::Tls, args: &AmqpArgs) -> anyhow::Result<Report> {
    let connection = connect(url, tls).await?;
    let setup = connection.create_channel().await?;
    let queue = crate::shaped::quorum_queue(&setup, "baseline").await?;

    let consume = connection.create_channel().await?;
    consume
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let payload = vec![b'x'; args.size];
    // As in the jobs mode, at most `in_flight` messages are between publish and consumption.
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let messages = args.messages;
    let consumer_task = {
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                let delivery = consumer.next().await.context("consumer closed")??;
                let sent_ns = delivery.properties.timestamp().unwrap_or(0);
                let now_ns = started.elapsed().as_nanos() as u64;
                latencies.push(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                slots.add_permits(1);
                // Ack off the hot path, one by one, as the worker does.
                let acker = delivery.acker;
                tokio::spawn(async move { acker.ack(BasicAckOptions::default()).await });
            }
            anyhow::Ok(latencies)
        })
    };
    let plain = |_, timestamp| {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(timestamp);
        (String::new(), queue.clone(), false, properties)
    };
    publish_timed(&publish, plain, &payload, args.messages, &slots, started).await?;
    let latencies = consumer_task.await??;
    let elapsed = started.elapsed();
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(Report::new("amqp", args.in_flight, elapsed, latencies))
}

pub(crate) async fn roundtrip(
    url: &str,
    tls: &dtee_net::Tls,
    args: &AmqpArgs,
) -> anyhow::Result<Report> {
    let before = cpu::snapshot();
    let mut report = roundtrip_raw(url, tls, args).await?;
    report.cpu_us_per_job = cpu::per_job(&before, &cpu::snapshot(), report.count);
    Ok(report)
}

/// Publishes `count` messages with confirms (waiting for a slot before each, at most the
/// semaphore's permits in flight), each timestamped with nanoseconds since `started`; `message`
/// gives each one's exchange, routing key, `mandatory` flag and properties.
async fn publish_timed(
    publish: &lapin::Channel,
    message: impl Fn(usize, u64) -> (String, String, bool, BasicProperties),
    payload: &[u8],
    count: usize,
    slots: &Semaphore,
    started: Instant,
) -> anyhow::Result<()> {
    let mut confirms = tokio::task::JoinSet::new();
    for index in 0..count {
        slots.acquire().await?.forget();
        let (exchange, key, mandatory, properties) =
            message(index, started.elapsed().as_nanos() as u64);
        let confirm = publish
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?;
        confirms.spawn(async move {
            match confirm.await? {
                lapin::Confirmation::Ack(Some(_)) => {
                    anyhow::bail!("a message was returned unroutable")
                }
                lapin::Confirmation::Nack(_) => {
                    anyhow::bail!("the broker refused a message")
                }
                _ => Ok(()),
            }
        });
        while let Some(done) = confirms.try_join_next() {
            done??;
        }
    }
    while let Some(done) = confirms.join_next().await {
        done??;
    }
    Ok(())
}

/// A connection to the first node of `url` that answers (TLS for `amqps://`).
async fn connect(url: &str, tls: &dtee_net::Tls) -> anyhow::Result<Connection> {
    Ok(
        dtee_net::amqp::connect(url, ConnectionProperties::default(), tls)
            .await?
            .connection,
    )
}

async fn roundtrip_raw(url: &str, tls: &dtee_net::Tls, args: &AmqpArgs) -> anyhow::Result<Report> {
    let client = connect(url, tls).await?;
    let server = connect(url, tls).await?;
    let setup = client.create_channel().await?;
    let shape = match args.shape.as_str() {
        "plain" => Shape::plain(&setup).await?,
        "dtee" => {
            let uri: lapin::uri::AMQPUri = url
                .split(',')
                .next()
                .unwrap_or(url)
                .parse()
                .map_err(|error| anyhow::anyhow!("{url}: {error}"))?;
            Shape::dtee(&setup, &uri.authority.userinfo.username).await?
        }
        other => anyhow::bail!("--shape {other}: plain or dtee"),
    };
    let shape = Arc::new(shape);

    // The "worker": consume a job, publish a result with a confirm, then ack the job.
    let work = server.create_channel().await?;
    work.basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let answer = server.create_channel().await?;
    answer
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut job_consumer = work
        .basic_consume(
            shape.job_queue.as_str().into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let result_body = vec![b'r'; 1700];
    let worker = {
        let (answer, shape) = (answer.clone(), Arc::clone(&shape));
        tokio::spawn(async move {
            let mut answering = tokio::task::JoinSet::new();
            while let Some(delivery) = job_consumer.next().await {
                let delivery = delivery?;
                let (answer, shape, body) =
                    (answer.clone(), Arc::clone(&shape), result_body.clone());
                answering.spawn(async move {
                    let (exchange, key, properties) = shape.result(&delivery.properties);
                    answer
                        .basic_publish(
                            exchange.as_str().into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            properties,
                        )
                        .await?
                        .await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    anyhow::Ok(())
                });
                while let Some(done) = answering.try_join_next() {
                    done??;
                }
            }
            anyhow::Ok(())
        })
    };

    let listen = client.create_channel().await?;
    let mut result_consumer = listen
        .basic_consume(
            shape.result_queue.as_str().into(),
            "client".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let publish = client.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let payload = vec![b'x'; args.size];
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let messages = args.messages;
    let listener = {
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                let delivery = result_consumer.next().await.context("consumer closed")??;
                let sent_ns = delivery.properties.timestamp().unwrap_or(0);
                let now_ns = started.elapsed().as_nanos() as u64;
                latencies.push(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                slots.add_permits(1);
            }
            anyhow::Ok(latencies)
        })
    };
    let job = |index, timestamp| shape.job(index, timestamp);
    publish_timed(&publish, job, &payload, args.messages, &slots, started).await?;
    let latencies = listener.await??;
    let elapsed = started.elapsed();
    worker.abort();
    shape.delete(&setup).await?;
    let _ = client.close(200, "done".into()).await;
    let _ = server.close(200, "done".into()).await;
    let mode = match args.shape.as_str() {
        "plain" => "roundtrip",
        _ => "roundtrip/dtee-shape",
    };
    Ok(Report::new(mode, args.in_flight, elapsed, latencies))
}
