//! A job that keeps killing workers is dead-lettered by the broker after its delivery limit,
//! and still gets an answer: `dead_lettered`, with its delivery history (never cached).

use std::process::{Command, Stdio};
use std::time::Duration;

use dtee_schemas::job::Limits;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::wasm_job;
use dtee_tests::{TestEnv, RESULT_TIMEOUT};

fn worker_process(env: &TestEnv) -> dtee_tests::Reaped {
    Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_DELIVERY_LIMIT", "1")
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_CONCURRENCY", "1")
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(dtee_tests::Reaped::new)
        .expect("starting dtee-worker")
}

/// Polls until the queue holds `depth` ready messages.
async fn until_depth(env: &TestEnv, queue: &str, depth: u32) {
    for _ in 0..600 {
        if env.queue_depth_of(queue).await == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{queue} never held {depth} ready messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_killing_workers_gets_a_dead_lettered_result() {
    let env = TestEnv::new("dead-letter").await;
    // Declare the topology with a delivery limit of 1.
    env.start_worker_with(|c| c.delivery_limit = 1)
        .await
        .shutdown()
        .await
        .unwrap();
    let jobs = env.namespace.job_queue("wasm");
    let dead = env.namespace.dead_letter_queue();

    // A job that spins until its (long) deadline: every worker that takes it gets killed.
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    spec.limits = Limits {
        timeout_ms: Some(300_000),
        fuel: Some(1_000_000_000_000),
        ..Limits::default()
    };
    let waiter = env.client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();
    until_depth(&env, &jobs, 1).await;

    for round in 1..=2 {
        let worker = worker_process(&env);
        until_depth(&env, &jobs, 0).await; // delivered to that worker
        drop(worker); // SIGKILL, and reaped
        if round == 1 {
            until_depth(&env, &jobs, 1).await; // returned to the queue
        }
    }
    // Delivered twice without an answer: past the limit of 1, the broker dead-letters it.
    until_depth(&env, &dead, 1).await;
    assert_eq!(env.queue_depth_of(&jobs).await, 0);

    // Any worker answers dead letters.
    let worker = env.start_worker_with(|c| c.delivery_limit = 1).await;
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(result.error_code(), Some(ErrorCode::DeadLettered));
    let message = result.error.as_ref().unwrap().message.clone();
    assert!(
        message.contains("delivery_limit") || message.contains("delivered"),
        "{message}"
    );
    // Not cached: the delivery limit counts returns of messages prefetched by a worker that
    // another job killed, so `dead_lettered` does not decide the job; resubmitted, it runs.
    assert_eq!(
        env.client.cached_result(&id).await.unwrap(),
        None,
        "dead_lettered is never cached"
    );
    waiter.close().await;
    let stats = std::sync::Arc::clone(&worker.stats);
    worker.shutdown().await.unwrap();
    assert_eq!(dtee_worker::stats::Stats::get(&stats.dead_lettered), 1);
    assert_eq!(
        env.queue_depth_of(&dead).await,
        0,
        "the dead letter was acked"
    );
    env.cleanup().await;
}
