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

/// A tenant cannot put jobs into another tenant's queue with a `CC` header: RabbitMQ before
/// 4.0.3 routes `CC`/`BCC` keys without checking the publisher's topic permission for them, so
/// the copy reaches the other tenant's queue, but the worker drops it there without running or
/// answering it (it is not that tenant's job: another `user_id`, another routing key). The
/// sender's own copy, under its own routing key, runs once and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cc_header_puts_nothing_into_another_tenants_queue() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, LongString};
    use lapin::BasicProperties;
    let env = TestEnv::new("tenant-cc").await;
    let worker = env.start_worker().await;
    let echo = env.put_kernel("echo").await;
    // Bob's queue exists once his first job went through the shared queue.
    let bob = env.tenant_client("dtee-test-bob").await;
    assert!(run_as(&bob, &echo_job(echo.clone(), "bob"))
        .await
        .succeeded());
    let bobs_queue = env.namespace.tenant_job_queue("wasm", "dtee-test-bob");
    until_consumers(&env, &bobs_queue, 1).await;

    let alice = env.tenant_client("dtee-test-alice").await;
    assert!(run_as(&alice, &echo_job(echo.clone(), "alice"))
        .await
        .succeeded());
    let spec = echo_job(echo, "alice, copied to bob");
    let id = dtee_schemas::job_id(&spec).unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    let waiter = alice.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    let executed = Stats::get(&worker.stats.executed);
    let channel = alice.connection().create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(
            vec![AMQPValue::LongString(LongString::from(
                "dtee-test-bob.wasm",
            ))]
            .into(),
        ),
    );
    channel
        .basic_publish(
            env.namespace.jobs_exchange().as_str().into(),
            "dtee-test-alice.wasm".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_user_id("dtee-test-alice".into())
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let result = watch.result(Duration::from_secs(30)).await.unwrap();
    assert!(result.succeeded(), "{:?}", result.error);
    eventually(|| Stats::get(&worker.stats.misrouted) == 1).await;
    assert_eq!(env.queue_depth_of(&bobs_queue).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        Stats::get(&worker.stats.executed),
        executed + 1,
        "only alice's own copy ran"
    );
    let _ = channel.close(200, "done".into()).await;
    waiter.close().await;
    alice.close().await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A tenant queue deleted under a running worker (by an operator, say) ends the worker's
/// consumer; the worker notices and declares and consumes the queue again, so that the
/// tenant's jobs do not wait in a queue nobody consumes once it is bound again. Before, the
/// ended consumer was dropped without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_queue_is_declared_and_consumed_again() {
    let env = TestEnv::new("tenant-queue-deleted").await;
    let worker = env.start_worker().await;
    let echo = env.put_kernel("echo").await;
    let bob = env.tenant_client("dtee-test-bob").await;
    assert!(run_as(&bob, &echo_job(echo.clone(), "first"))
        .await
        .succeeded());
    let bobs_queue = env.namespace.tenant_job_queue("wasm", "dtee-test-bob");
    until_consumers(&env, &bobs_queue, 1).await;
    let reconnects = Stats::get(&worker.stats.reconnects);

    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .queue_delete(bobs_queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // Declared and consumed again by the retries, within their 5 s tick, without a new
    // session (which would return every other delivery in flight to its queue).
    until_consumers(&env, &bobs_queue, 1).await;
    assert!(run_as(&bob, &echo_job(echo, "again")).await.succeeded());
    assert_eq!(Stats::get(&worker.stats.reconnects), reconnects);
    let _ = channel.close(200, "done".into()).await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A worker that knows many tenant queues gets them all back after losing its connection, from
/// a slow broker. Before, a new session consumed every known tenant queue one after the other
/// (five round trips each) inside its 20 s set-up bound: past about a thousand queues on a
/// local broker, or a hundred at 50 ms a round trip, no session could open again and the
/// worker stayed disconnected for ever. Now the session opens with the shared queues and the
/// tenant queues are consumed after it, 16 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_knows_many_tenant_queues_reconnects_to_a_slow_broker() {
    const QUEUES: usize = 120;
    let env = TestEnv::new("many-tenant-queues").await;
    let (worker, amqp, _redis) = env.start_worker_behind_proxies(|_| {}).await;
    let tenants: Vec<String> = (0..QUEUES).map(|i| format!("dtee-test-many-{i}")).collect();
    for tenant in &tenants {
        env.acts_as(tenant);
    }
    // Announced as another worker would: this worker declares and consumes each one.
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    for tenant in &tenants {
        channel
            .basic_publish(
                env.namespace.tenants_announcements().as_str().into(),
                "".into(),
                lapin::options::BasicPublishOptions::default(),
                format!("wasm/{tenant}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let queues: Vec<String> = tenants
        .iter()
        .map(|tenant| env.namespace.tenant_job_queue("wasm", tenant))
        .collect();
    for queue in &queues {
        until_consumers(&env, queue, 1).await;
    }

    // 25 ms each way: 50 ms a round trip, 30 s for the queues one after the other (five round
    // trips each), past the 20 s a session may take to open.
    amqp.delay(Duration::from_millis(25));
    amqp.cut();
    // Long enough for the proxy's connections to see the cut (a watch keeps the last value).
    tokio::time::sleep(Duration::from_millis(500)).await;
    amqp.restore();
    for _ in 0..600 {
        if Stats::get(&worker.stats.reconnects) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Stats::get(&worker.stats.reconnects) >= 1,
        "no session opened again within 60 s"
    );
    for queue in &queues {
        until_consumers(&env, queue, 1).await;
    }
    // And it serves them: a job of one of those tenants, through its queue and the slow broker.
    let echo = env.put_kernel("echo").await;
    let tenant = env.tenant_client(&tenants[7]).await;
    assert!(run_as(&tenant, &echo_job(echo, "after")).await.succeeded());
    tenant.close().await;
    let _ = channel.close(200, "done".into()).await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
