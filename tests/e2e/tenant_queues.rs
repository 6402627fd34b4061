//! Tenant queues that could not be consumed or announced at first are tried again, so that no
//! bound tenant queue is left without a consumer: its tenant's jobs wait there and nowhere else.

use std::time::Duration;

use dtee_schemas::JobSpec;
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::{eventually, run_as, TestEnv};
use dtee_worker::stats::Stats;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

fn echo_job(kernel: dtee_schemas::Digest, text: &str) -> JobSpec {
    let mut spec = wasm_job(kernel, "echo");
    spec.buffers = vec![inline_input("in", text.as_bytes()), output("out", 64)];
    spec
}

/// Waits up to 30 s for `queue` to have `count` consumers.
async fn until_consumers(env: &TestEnv, queue: &str, count: u32) {
    let mut seen = None;
    for _ in 0..300 {
        seen = env.queue_consumers(queue).await;
        if seen == Some(count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{queue} has {seen:?} consumers after 30 s, not {count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_announcement_is_sent_again_and_the_other_workers_then_serve_the_tenant() {
    let env = TestEnv::new("announce-again").await;
    let echo = env.put_kernel("echo").await;
    let first = env.start_worker().await;
    // The announcements' exchange is gone: the first worker's announcement fails.
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .exchange_delete(
            env.namespace.tenants_announcements().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    let result = run_as(&env.client, &echo_job(echo.clone(), "first")).await;
    assert!(result.succeeded(), "{result:?}");
    let queue = env.namespace.tenant_job_queue("wasm", env.client.tenant());
    eventually(|| Stats::get(&first.stats.tenant_queue_failures) >= 1).await;
    assert_eq!(
        env.queue_consumers(&queue).await,
        Some(1),
        "the worker that declared it consumes it"
    );
    // A second worker declares the exchange again when it connects; the first worker's next
    // try reaches the stream, and the second consumes the queue.
    let second = env.start_worker().await;
    until_consumers(&env, &queue, 2).await;
    first.shutdown().await.unwrap();
    let result = run_as(&env.client, &echo_job(echo, "second")).await;
    assert!(result.succeeded(), "{result:?}");
    assert!(
        Stats::get(&second.stats.executed) >= 1,
        "the second worker ran it"
    );
    second.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_queue_that_could_not_be_consumed_is_tried_again() {
    let env = TestEnv::new("consume-again").await;
    let echo = env.put_kernel("echo").await;
    let first = env.start_worker().await;
    let result = run_as(&env.client, &echo_job(echo.clone(), "first")).await;
    assert!(result.succeeded(), "{result:?}");
    first.shutdown().await.unwrap();
    // The tenant's queue is replaced by a classic queue: a worker's declaration (a quorum
    // queue) is refused.
    let queue = env.namespace.tenant_job_queue("wasm", env.client.tenant());
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let second = env.start_worker().await;
    eventually(|| Stats::get(&second.stats.tenant_queue_failures) >= 1).await;
    assert_eq!(env.queue_consumers(&queue).await, Some(0));
    // Once it can be declared, the worker declares, binds and consumes it without another
    // announcement.
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    until_consumers(&env, &queue, 1).await;
    let result = run_as(&env.client, &echo_job(echo, "second")).await;
    assert!(result.succeeded(), "{result:?}");
    second.shutdown().await.unwrap();
    env.cleanup().await;
}
