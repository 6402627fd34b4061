//! Graceful shutdown on SIGTERM: stop consuming, let in-flight jobs finish within the grace
//! period, return the rest to the queue, exit cleanly. Nothing is lost.

use std::process::{Command, Stdio};
use std::time::Duration;

use dtee_schemas::job::Limits;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::wasm_job;
use dtee_tests::{TestEnv, RESULT_TIMEOUT};

fn start_worker(env: &TestEnv, grace_secs: u32) -> std::process::Child {
    Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_SHUTDOWN_GRACE_SECS", grace_secs.to_string())
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dtee-worker")
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn until_depth(env: &TestEnv, depth: u32) {
    for _ in 0..600 {
        if env.queue_depth("wasm").await == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the queue never held {depth} ready messages");
}

fn spin_job(digest: dtee_schemas::Digest, timeout_ms: u64, nonce: &str) -> dtee_schemas::JobSpec {
    let mut spec = wasm_job(digest, "spin");
    spec.limits = Limits {
        timeout_ms: Some(timeout_ms),
        fuel: Some(1_000_000_000_000),
        ..Limits::default()
    };
    spec.nonce = Some(nonce.to_owned());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_jobs_finish_and_returns_the_rest() {
    let env = TestEnv::new("sigterm").await;
    env.start_worker().await.shutdown().await.unwrap(); // declare the topology
    let spin = env.put_kernel("spin").await;
    let waiter = env.client.waiter().await.unwrap();

    // A job that runs for 1.5 s, inside a 20 s grace period: it finishes and is answered.
    let spec = spin_job(spin.clone(), 1500, "finishes");
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();
    let mut worker = start_worker(&env, 20);
    until_depth(&env, 0).await; // delivered
    sigterm(&worker);
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::ExecutionTimeout),
        "the job ran to its own end"
    );
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    assert_eq!(env.queue_depth("wasm").await, 0, "answered and acked");

    // A job that would run for a minute, with a 1 s grace period: it goes back to the queue.
    let spec = spin_job(spin, 60_000, "returns");
    env.client.submit(&spec).await.unwrap();
    let mut worker = start_worker(&env, 1);
    until_depth(&env, 0).await;
    sigterm(&worker);
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    until_depth(&env, 1).await; // nothing lost: the unfinished job is back in the queue
    waiter.close().await;
    env.cleanup().await;
}
