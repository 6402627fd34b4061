//! Horizontal scaling: two workers on one queue process every job exactly once.

use std::collections::HashMap;
use std::time::Duration;

use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_process_a_thousand_jobs_exactly_once() {
    const JOBS: usize = 1000;
    let env = TestEnv::new("two-workers").await;
    let first = env.start_worker_with(|c| c.prefetch = 8).await;
    let second = env.start_worker_with(|c| c.prefetch = 8).await;
    let echo = env.put_kernel("echo").await;

    let waiter = env.client.waiter().await.unwrap();
    let mut results = waiter.subscribe_all().await.unwrap();
    let mut expected = HashMap::new();
    for idx in 0..JOBS {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![
            inline_input("in", format!("job {idx}").as_bytes()),
            output("out", 64),
        ];
        spec.nonce = Some(idx.to_string());
        let id = env.client.submit(&spec).await.unwrap();
        expected.insert(id, format!("job {idx}"));
    }
    assert_eq!(expected.len(), JOBS, "job ids are distinct");

    let mut seen: HashMap<_, usize> = HashMap::new();
    while seen.len() < JOBS {
        let (result, _cached) = tokio::time::timeout(Duration::from_secs(120), results.recv())
            .await
            .expect("results keep coming")
            .expect("subscription open");
        let want = expected
            .get(&result.job_id)
            .expect("a result for a job we sent");
        assert_eq!(
            result.output("out").unwrap().bytes().unwrap(),
            want.as_bytes()
        );
        *seen.entry(result.job_id.clone()).or_default() += 1;
    }
    // Anything late would be a duplicate; give it a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok((result, _)) = results.try_recv() {
        *seen.entry(result.job_id).or_default() += 1;
    }
    assert!(
        seen.values().all(|count| *count == 1),
        "a job had more than one result"
    );
    let executed = Stats::get(&first.stats.executed) + Stats::get(&second.stats.executed);
    assert_eq!(
        executed, JOBS as u64,
        "each job executed exactly once across both workers"
    );
    assert!(
        Stats::get(&first.stats.executed) > 0 && Stats::get(&second.stats.executed) > 0,
        "both workers took part"
    );
    waiter.close().await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(env.queue_depth("wasm").await, 0);
    env.cleanup().await;
}
