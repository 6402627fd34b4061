//! Metrics and health endpoints: scraped around a run of jobs.

use std::collections::HashMap;
use std::time::Duration;

use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::{http_get as get, wait_for_status, TestEnv};

/// Sample values by series (name with labels), from the exposition text.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_move_with_the_jobs() {
    let env = TestEnv::new("metrics").await;
    // The usual order (a repeat answered from the cache does not run): late answers off.
    let worker = env
        .start_worker_with(|c| {
            c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
            c.late_answers = false;
        })
        .await;
    let addr = worker.metrics_addr.expect("metrics served");

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let ready = wait_for_status(addr, "/readyz", 200).await;
    assert!(ready.contains("software"));

    let before = samples(&get(addr, "/metrics").await.1);
    assert_eq!(before.get("dtee_jobs_received_total"), Some(&0.0));
    assert!(before
        .keys()
        .any(|k| k.starts_with("dtee_build_info{") && k.contains("platform=\"software\"")));

    let echo = env.put_kernel("echo").await;
    for idx in 0..3 {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![
            inline_input("in", format!("m{idx}").as_bytes()),
            output("out", 8),
        ];
        assert!(env.run(&spec).await.succeeded());
    }
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    spec.limits.fuel = Some(1000);
    assert!(!env.run(&spec).await.succeeded());

    let after = samples(&get(addr, "/metrics").await.1);
    assert_eq!(after["dtee_jobs_received_total"], 4.0);
    assert_eq!(after["dtee_jobs_succeeded_total"], 3.0);
    assert_eq!(
        after["dtee_jobs_failed_total{code=\"fuel_exhausted\"}"],
        1.0
    );
    assert_eq!(
        after["dtee_jobs_failed_total{code=\"kernel_trapped\"}"],
        0.0
    );
    assert_eq!(after["dtee_limit_kills_total{limit=\"fuel\"}"], 1.0);
    assert_eq!(after["dtee_kernel_execution_seconds_count"], 4.0);
    assert_eq!(after["dtee_result_publish_seconds_count"], 4.0);
    assert_eq!(after["dtee_job_duration_seconds_count"], 4.0);
    assert_eq!(after["dtee_queue_wait_seconds_count"], 4.0);
    assert!(after["dtee_kernel_execution_seconds_sum"] > 0.0);
    assert_eq!(after["dtee_jobs_in_flight"], 0.0);
    // The same job again is answered from the cache: one more failed result, no second kill.
    env.client.submit(&spec).await.unwrap();
    dtee_tests::eventually(|| dtee_worker::stats::Stats::get(&worker.stats.failed) == 2).await;
    assert_eq!(
        dtee_worker::stats::Stats::get(&worker.stats.deduplicated),
        1
    );
    let again = samples(&get(addr, "/metrics").await.1);
    assert_eq!(
        again["dtee_jobs_failed_total{code=\"fuel_exhausted\"}"],
        2.0
    );
    assert_eq!(again["dtee_limit_kills_total{limit=\"fuel\"}"], 1.0);
    assert_eq!(again["dtee_kernel_execution_seconds_count"], 4.0);
    assert_eq!(again["dtee_jobs_settled_late_total"], 0.0);
    // No job id or key ever becomes a label.
    let text = get(addr, "/metrics").await.1;
    assert!(!text.contains("sha256:"), "a digest leaked into a label");
    assert_eq!(get(addr, "/nope").await.0, 404);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Closes the worker's AMQP connections from the broker side, as a broker restart would.
fn close_worker_connections(worker_id: &str) -> usize {
    let output = dtee_tests::blocking(|| {
        std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
    })
    .expect("running rabbitmqctl");
    let listing = String::from_utf8_lossy(&output.stdout);
    let mut closed = 0;
    for line in listing
        .lines()
        .filter(|line| line.contains(&format!("dtee-worker {worker_id}")))
    {
        let pid = line.split_whitespace().next().unwrap();
        let status = dtee_tests::blocking(|| {
            std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid,
                    "test: simulated broker restart",
                ])
                .status()
        })
        .unwrap();
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_losing_rabbitmq_and_serves_again() {
    let env = TestEnv::new("reconnect").await;
    let worker = env
        .start_worker_with(|c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap()))
        .await;
    let echo = env.put_kernel("echo").await;
    let job = |text: &str| {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![inline_input("in", text.as_bytes()), output("out", 16)];
        spec
    };
    assert!(env.run(&job("before")).await.succeeded());
    assert_eq!(
        close_worker_connections(&worker.worker_id),
        1,
        "one connection per worker"
    );
    dtee_tests::eventually(|| dtee_worker::stats::Stats::get(&worker.stats.reconnects) == 1).await;
    let result = env.run(&job("after")).await;
    assert_eq!(result.output("out").unwrap().bytes().unwrap(), b"after");
    let addr = worker.metrics_addr.unwrap();
    wait_for_status(addr, "/readyz", 200).await; // ready again after reconnecting
    assert_eq!(
        samples(&get(addr, "/metrics").await.1)["dtee_rabbitmq_reconnects_total"],
        1.0
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_consumes_nothing_while_jobs_wait_is_reported_not_alive() {
    // Stand-in for a consumer that silently stopped receiving (the classic "up but never
    // consumes again" failure): the stall-consumer test hook takes no deliveries.
    let env = TestEnv::new("stalled").await;
    let worker = env
        .start_worker_with(|c| {
            c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
            c.test_hook = Some(dtee_worker::config::TestHook::StallConsumer);
        })
        .await;
    let addr = worker.metrics_addr.unwrap();
    assert_eq!(
        get(addr, "/healthz").await.0,
        200,
        "alive while nothing waits"
    );
    let mut spec = wasm_job(env.put_kernel("echo").await, "noop");
    spec.nonce = Some("waits".to_owned());
    env.client.submit(&spec).await.unwrap();
    // Within the stall window (10 s idle, checked every 5 s) /healthz turns 503.
    let health = wait_for_status(addr, "/healthz", 503).await;
    assert!(health.contains("stalled"), "{health}");
    assert_eq!(
        env.queue_depth("wasm").await,
        1,
        "the job still waits, nothing lost"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_rabbitmq_and_redis_outages_and_jobs_wait_them_out() {
    // The worker reaches RabbitMQ and Redis through loopback proxies that the test takes down
    // and brings back: a real outage for this worker, while the shared servers stay up for
    // the tests running beside it.
    let env = TestEnv::new("outage").await;
    let (worker, amqp, redis) = env
        .start_worker_behind_proxies(|c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap()))
        .await;
    let addr = worker.metrics_addr.unwrap();
    wait_for_status(addr, "/readyz", 200).await;
    let echo = env.put_kernel("echo").await;
    let job = |text: &str| {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![inline_input("in", text.as_bytes()), output("out", 16)];
        spec
    };
    assert!(env.run(&job("before")).await.succeeded());
    let waiter = env.client.waiter().await.unwrap();

    // RabbitMQ goes away: not ready (but alive), and a job submitted meanwhile waits.
    amqp.cut();
    let body = wait_for_status(addr, "/readyz", 503).await;
    assert!(body.contains("not connected to RabbitMQ"), "{body}");
    let during = job("amqp outage");
    let id = dtee_schemas::job_id(&during).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&during).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(addr, "/readyz").await.0, 503, "ready during the outage");
        assert_eq!(
            get(addr, "/healthz").await.0,
            200,
            "alive during the outage"
        );
    }
    assert_eq!(
        env.queue_depth("wasm").await,
        1,
        "the job waits for a worker"
    );
    amqp.restore();
    wait_for_status(addr, "/readyz", 200).await;
    let result = watch.result(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap(),
        b"amqp outage"
    );
    assert!(dtee_worker::stats::Stats::get(&worker.stats.reconnects) >= 1);

    // Redis goes away: not ready, and a job delivered meanwhile is retried, not failed.
    redis.cut();
    let body = wait_for_status(addr, "/readyz", 503).await;
    assert!(body.contains("Redis does not answer"), "{body}");
    let during = job("redis outage");
    let id = dtee_schemas::job_id(&during).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&during).await.unwrap();
    dtee_tests::eventually(|| dtee_worker::stats::Stats::get(&worker.stats.retried) >= 1).await;
    assert_eq!(get(addr, "/readyz").await.0, 503, "ready during the outage");
    redis.restore();
    wait_for_status(addr, "/readyz", 200).await;
    let result = watch.result(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap(),
        b"redis outage"
    );
    assert_eq!(dtee_worker::stats::Stats::get(&worker.stats.failed), 0);
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
