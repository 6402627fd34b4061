//! Fairness between tenants (issue 11, finding 7): a tenant's backlog waits in its own queue, and
//! kernel slots go round the tenants that wait for one, so a tenant that floods a worker pool
//! with slow jobs delays another tenant's job by about one of its jobs, not by its backlog. And
//! a queue length limit refuses the flood, not the other tenant.

use std::time::{Duration, Instant};

use dtee_schemas::job::Limits;
use dtee_schemas::{ErrorCode, JobSpec};
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_submitter::{Client, ClientError};
use dtee_tests::{rabbitmqctl, run_as, TestEnv};

/// How long each flood job holds a kernel slot: it spins until this deadline.
const FLOOD_JOB_MS: u64 = 1_000;
/// The stated bound: the other tenant's job is answered within one flood job's deadline, plus
/// slack for a loaded 2-core CI machine (scheduling, compilation of the echo kernel, the
/// round trips). Without fairness it waits for the whole backlog: FLOOD_JOBS × FLOOD_JOB_MS.
const BOUND: Duration = Duration::from_millis(FLOOD_JOB_MS + 5_000);
const FLOOD_JOBS: u64 = 20;

fn spin_job(kernel: dtee_schemas::Digest, nonce: u64) -> JobSpec {
    let mut spec = wasm_job(kernel, "spin");
    spec.limits = Limits {
        fuel: Some(1_000_000_000_000),
        timeout_ms: Some(FLOOD_JOB_MS),
        ..Limits::default()
    };
    spec.nonce = Some(format!("flood-{nonce}"));
    spec
}

fn echo_job(kernel: dtee_schemas::Digest, text: &str) -> JobSpec {
    let mut spec = wasm_job(kernel, "echo");
    spec.buffers = vec![inline_input("in", text.as_bytes()), output("out", 64)];
    spec
}

/// Runs one quick job as each tenant, so that a worker declares the tenants' queues (a tenant's
/// first job comes through the shared queue), and checks that the queues exist.
async fn make_tenant_queues(env: &TestEnv, echo: &dtee_schemas::Digest, clients: &[&Client]) {
    for client in clients {
        let result = run_as(client, &echo_job(echo.clone(), client.tenant())).await;
        assert!(result.succeeded(), "{result:?}");
        let queue = env.namespace.tenant_job_queue("wasm", client.tenant());
        assert!(env.queue_exists(&queue).await, "{queue} was not declared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_slow_jobs_delays_another_tenants_job_by_about_one_job() {
    let env = TestEnv::new("fair").await;
    // One kernel slot and a prefetch of 2: the flood cannot all sit in the worker's memory, so
    // without a queue of its own the other tenant's job would wait behind it in the broker.
    let worker = env
        .start_worker_with(|c| {
            c.concurrency = 1;
            c.prefetch = 2;
        })
        .await;
    let flood = env.tenant_client("dtee-test-fair-flood").await;
    let other = env.tenant_client("dtee-test-fair-other").await;
    let spin = env.put_kernel("spin").await;
    let echo = env.put_kernel("echo").await;
    make_tenant_queues(&env, &echo, &[&flood, &other]).await;

    for nonce in 0..FLOOD_JOBS {
        flood.submit(&spin_job(spin.clone(), nonce)).await.unwrap();
    }
    // The worker has taken what its prefetch allows; the rest waits in the flood's queue.
    let flood_queue = env.namespace.tenant_job_queue("wasm", flood.tenant());
    for _ in 0..200 {
        if env.queue_depth_of(&flood_queue).await <= (FLOOD_JOBS - 2) as u32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let started = Instant::now();
    let result = run_as(&other, &echo_job(echo.clone(), "served in turn")).await;
    let waited = started.elapsed();
    assert!(result.succeeded(), "{result:?}");
    let backlog = env.queue_depth_of(&flood_queue).await;
    println!(
        "the other tenant's job was answered in {} ms, behind a flood of {FLOOD_JOBS} jobs of {FLOOD_JOB_MS} ms ({backlog} still queued)",
        waited.as_millis()
    );
    assert!(
        waited < BOUND,
        "the other tenant waited {waited:?}, more than the bound {BOUND:?}"
    );
    // The flood was really ahead of it: most of it is still waiting.
    assert!(
        u64::from(backlog) >= FLOOD_JOBS / 2,
        "only {backlog} flood jobs still queued: the test did not flood"
    );

    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tenant_queue_refuses_that_tenants_jobs_and_no_one_elses() {
    let env = TestEnv::new("fair-full").await;
    let worker = env
        .start_worker_with(|c| {
            c.concurrency = 1;
            c.prefetch = 1;
        })
        .await;
    let mut flood = env.tenant_client("dtee-test-full-flood").await;
    // Each refusal is counted at the first nack, not after the client's resends (below, and
    // in `a_nacked_job_is_sent_again_and_taken_once_the_queue_has_room`).
    flood.set_nack_retries(0);
    let other = env.tenant_client("dtee-test-full-other").await;
    let spin = env.put_kernel("spin").await;
    let echo = env.put_kernel("echo").await;
    make_tenant_queues(&env, &echo, &[&flood, &other]).await;

    // The operator's quota, as deploy/rabbitmq/definitions.json ships it (there with a larger
    // length): every job queue of the namespace holds at most 3 ready messages, and refuses
    // publishes beyond.
    let policy = set_length_limit(&env, 3).await;

    let mut refused = 0;
    for nonce in 0..12 {
        match flood.submit(&spin_job(spin.clone(), nonce)).await {
            Ok(_) => {}
            Err(ClientError::Nacked) => refused += 1,
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
    // One job runs, one may sit in the prefetch, three wait: the rest were refused.
    assert!(refused >= 6, "only {refused} of 12 flood jobs were refused");
    // The other tenant's queue is its own: its job is accepted and served.
    let result = run_as(&other, &echo_job(echo.clone(), "still accepted")).await;
    assert!(result.succeeded(), "{result:?}");
    assert_eq!(result.error_code(), None::<ErrorCode>);

    rabbitmqctl(&["clear_policy", "-p", "/", &policy]);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Limits every job queue of the test's namespace to `length` ready messages, refusing
/// publishes beyond, and returns the policy's name.
async fn set_length_limit(env: &TestEnv, length: u32) -> String {
    let policy = format!("{}-job-queue-length", env.namespace);
    let pattern = format!("^{}\\.jobs\\.", regex_escape(env.namespace.as_str()));
    let definition = format!(r#"{{"max-length": {length}, "overflow": "reject-publish"}}"#);
    assert!(rabbitmqctl(&[
        "set_policy",
        "-p",
        "/",
        "--apply-to",
        "queues",
        &policy,
        &pattern,
        &definition,
    ]));
    // Give the queues a moment to take the policy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    policy
}

/// A nack is not always final: a quorum queue also refuses a publish when it could not register
/// the publisher in time on a busy broker. The client sends a nacked job again (twice by
/// default, after 100 and 400 ms): a queue that is still full refuses each resend, and one that
/// has room by then takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_job_is_sent_again_and_taken_once_the_queue_has_room() {
    let env = TestEnv::new("fair-resend").await;
    let echo = env.put_kernel("echo").await;
    let mut tenant = env.tenant_client("dtee-test-resend").await;
    // A worker declares the tenant's queue and stops: nothing consumes it afterwards.
    let worker = env.start_worker().await;
    make_tenant_queues(&env, &echo, &[&tenant]).await;
    worker.shutdown().await.unwrap();
    let queue = env.namespace.tenant_job_queue("wasm", tenant.tenant());
    let policy = set_length_limit(&env, 1).await;
    // A quorum queue takes publishes until it is over its limit (and tells its publishers so
    // only then): fill it until it refuses one. Without resends, the first nack is the answer.
    tenant.set_nack_retries(0);
    let mut kept = 0;
    let at_once = loop {
        let started = Instant::now();
        match tenant
            .submit(&echo_job(echo.clone(), &format!("fill {kept}")))
            .await
        {
            Ok(_) => kept += 1,
            Err(ClientError::Nacked) => break started.elapsed(),
            Err(error) => panic!("unexpected error: {error}"),
        }
        assert!(kept <= 5, "a queue limited to one job took {kept}");
    };
    assert!(kept >= 1);
    assert_eq!(env.queue_depth_of(&queue).await, kept);

    // With the default two resends, a queue that stays full refuses all three publishes, the
    // last after the two pauses.
    tenant.set_nack_retries(dtee_submitter::DEFAULT_NACK_RETRIES);
    let started = Instant::now();
    let refused = tenant
        .submit(&echo_job(echo.clone(), "refused thrice"))
        .await;
    assert!(matches!(refused, Err(ClientError::Nacked)), "{refused:?}");
    let after_resends = started.elapsed();
    assert!(
        after_resends >= Duration::from_millis(500) && after_resends > at_once,
        "refused after {after_resends:?} (at once: {at_once:?}): the resends did not wait"
    );
    assert_eq!(
        env.queue_depth_of(&queue).await,
        kept,
        "a refused job was kept"
    );

    assert_eq!(tenant.resends(), 2, "the two resends are counted");

    // The queue gets room while the client pauses between resends: a resend is taken. The
    // purge waits for the first nack (the client's resend count), and four resends (the last
    // 7.1 s after the first publish) leave a loaded machine time to purge.
    tenant.set_nack_retries(4);
    let tenant = std::sync::Arc::new(tenant);
    let spec = echo_job(echo.clone(), "taken on a resend");
    let submit = tokio::spawn({
        let tenant = tenant.clone();
        let spec = spec.clone();
        async move { tenant.submit(&spec).await }
    });
    let nacked = Instant::now();
    while tenant.resends() == 2 {
        assert!(
            nacked.elapsed() < Duration::from_secs(5),
            "the job was never nacked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .queue_purge(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let id = submit.await.unwrap().expect("a resend was taken");
    assert!(tenant.resends() >= 3);
    assert_eq!(id, dtee_schemas::job_id(&spec).unwrap());
    assert_eq!(
        env.queue_depth_of(&queue).await,
        1,
        "the resent job waits, once"
    );

    rabbitmqctl(&["clear_policy", "-p", "/", &policy]);
    env.cleanup().await;
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_jobs_exchange_of_an_earlier_dtee_is_replaced_by_the_first_new_worker() {
    let env = TestEnv::new("fair-upgrade").await;
    // What a dtee before tenant queues declared.
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .exchange_declare(
            env.namespace.jobs_exchange().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;

    let worker = env.start_worker().await;
    let echo = env.put_kernel("echo").await;
    let result = run_as(&env.client, &echo_job(echo, "after the upgrade")).await;
    assert!(result.succeeded(), "{result:?}");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_later_consumes_the_tenant_queues_declared_before_it() {
    let env = TestEnv::new("fair-later").await;
    let echo = env.put_kernel("echo").await;
    let tenant = env.tenant_client("dtee-test-later").await;
    // The first worker declares the tenant's queue, and stops.
    let first = env.start_worker().await;
    make_tenant_queues(&env, &echo, &[&tenant]).await;
    first.shutdown().await.unwrap();
    // A job now waits in the tenant's queue, which no worker consumes.
    let spec = echo_job(echo.clone(), "waiting in its own queue");
    let waiter = tenant.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    tenant.submit(&spec).await.unwrap();
    let queue = env.namespace.tenant_job_queue("wasm", tenant.tenant());
    assert_eq!(env.queue_depth_of(&queue).await, 1);
    // A fresh worker learns of the queue from the announcements in the broker (not from its own
    // memory or from Redis) and serves the job.
    let second = env.start_worker().await;
    let result = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    assert!(result.succeeded(), "{result:?}");
    waiter.close().await;
    second.shutdown().await.unwrap();
    env.cleanup().await;
}
