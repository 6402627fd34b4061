//! Failover under load, against the cluster of deploy/local/cluster.sh (three RabbitMQ nodes,
//! a Redis Cluster of three primaries and three replicas, TLS with client certificates).
//!
//! Ignored by default: it stops and restarts nodes of that cluster, so it runs only where the
//! cluster is up and its settings are exported (`eval "$(deploy/local/cluster.sh env)"`), as
//! deploy/local/test-cluster.sh does:
//!
//! ```text
//! cargo test -p dtee-tests --test cluster -- --ignored --nocapture
//! ```

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, JobResult};
use dtee_submitter::builder::{state, wasm_job};
use dtee_submitter::{Client, ClientConfig};
use dtee_tests::{amqp_url, http_get, redis_url, repo_root, tls, TestEnv};
use dtee_worker::stats::Stats;
use dtee_worker::WorkerHandle;

const JOBS: usize = 1500;
const COUNTERS: usize = 10;
/// How long every worker may take to be ready again after a node stops (the stated bound).
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

fn cluster(args: &[&str]) {
    let status = Command::new("bash")
        .arg(repo_root().join("deploy/local/cluster.sh"))
        .args(args)
        .status()
        .expect("running cluster.sh");
    assert!(status.success(), "cluster.sh {args:?}");
}

/// The RabbitMQ node (1..=3) that leads `queue`, and how many nodes hold a replica of it.
fn queue_leader(queue: &str) -> (usize, usize) {
    for ask in 1..=3 {
        let output = Command::new("rabbitmqctl")
            .args(["-q", "-n", &format!("dtee-c{ask}@localhost")])
            .args([
                "list_queues",
                "-p",
                "/",
                "name",
                "leader",
                "members",
                "--formatter",
                "json",
            ])
            .output()
            .expect("rabbitmqctl");
        if !output.status.success() {
            continue;
        }
        let queues: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).expect("rabbitmqctl json");
        for entry in queues {
            if entry["name"] == queue {
                let leader = entry["leader"]
                    .as_str()
                    .expect("a quorum queue has a leader");
                let members = entry["members"]
                    .as_array()
                    .expect("a quorum queue has members")
                    .len();
                let leader = leader
                    .trim_start_matches("dtee-c")
                    .split('@')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("a dtee-cN node");
                return (leader, members);
            }
        }
    }
    panic!("no node knows {queue}");
}

/// The port of the Redis primary that serves `key`'s slot, and whether it has a live replica.
async fn primary_of(
    redis: &mut dtee_net::RedisConn,
    key: &str,
) -> Result<(u16, bool), redis::RedisError> {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(redis)
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(redis)
        .await?;
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let has_replica = nodes.lines().any(|other| {
            let other: Vec<&str> = other.split_whitespace().collect();
            other[2].contains("slave") && !other[2].contains("fail") && other[3] == fields[0]
        });
        for range in &fields[8..] {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(low), Ok(high)) = (low.parse::<u16>(), high.parse::<u16>()) {
                if (low..=high).contains(&slot) {
                    let address = fields[1].split('@').next().unwrap();
                    let port = address.rsplit_once(':').unwrap().1.parse().unwrap();
                    return Ok((port, has_replica));
                }
            }
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Client,
        "no live primary serves the slot",
    )))
}

/// After `killed` was killed: how long until another primary serves `key`'s slot (its replica
/// was promoted).
async fn promotion(redis: &mut dtee_net::RedisConn, key: &str, killed: u16) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok((port, _)) = primary_of(redis, key).await {
            if port != killed {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "no replica of 127.0.0.1:{killed} was promoted within {RECOVERY_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many times a cluster connection replaced itself (dtee_net::redis_conn::Cluster).
fn rebuilt(redis: &dtee_net::RedisConn) -> u32 {
    match redis {
        dtee_net::RedisConn::Cluster(cluster) => cluster.rebuilt(),
        dtee_net::RedisConn::Single(_) => 0,
    }
}

/// Starts what the test stopped when it ends, passed or not, so the cluster stays whole.
struct Restart(Vec<Vec<String>>);

impl Drop for Restart {
    fn drop(&mut self) {
        for args in &self.0 {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster(&args);
        }
    }
}

fn commits(workers: &[WorkerHandle]) -> u64 {
    workers.iter().map(|w| Stats::get(&w.stats.commits)).sum()
}

async fn all_ready(workers: &[WorkerHandle]) -> bool {
    for worker in workers {
        let (status, _) = http_get(worker.metrics_addr.unwrap(), "/readyz").await;
        if status != 200 {
            return false;
        }
    }
    true
}

/// After a node stopped at `since`: how long until every worker was ready and a commit past
/// `commits_then` happened, polled every 50 ms.
async fn recovery(workers: &[WorkerHandle], since: Instant, commits_then: u64) -> Duration {
    loop {
        if all_ready(workers).await && commits(workers) > commits_then {
            return since.elapsed();
        }
        if since.elapsed() > RECOVERY_BOUND {
            let mut ready = Vec::new();
            for worker in workers {
                ready.push(http_get(worker.metrics_addr.unwrap(), "/readyz").await);
            }
            panic!(
                "the workers did not recover within {RECOVERY_BOUND:?}: commits {} (then \
                 {commits_then}), /readyz {ready:?}",
                commits(workers)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_commits(workers: &[WorkerHandle], at_least: u64) {
    let start = Instant::now();
    while commits(workers) < at_least {
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs deploy/local/cluster.sh up and its settings (deploy/local/test-cluster.sh)"]
async fn jobs_survive_a_rabbitmq_node_and_a_redis_primary_stopping_under_load() {
    assert!(
        dtee_net::redis_conn::is_cluster_url(&redis_url()),
        "DTEE_TEST_REDIS_URL must name the test cluster (eval \"$(deploy/local/cluster.sh env)\")"
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DTEE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let env = TestEnv::new("failover").await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(
            env.start_worker_with(|c| {
                c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
                c.state_max_attempts = 1000;
                // No job is answered before a replica holds its writes: a commit that the
                // primary's crash loses belongs to a job that was never acked, and runs again.
                c.redis_wait_replicas = 1;
            })
            .await,
        );
    }
    let tenant = env.client.tenant().to_owned();
    let kernel = env.put_kernel("increment").await;
    let spec_of = |idx: usize| {
        let mut spec = wasm_job(kernel.clone(), "increment");
        let key = format!("{tenant}/failover/{}/{}", env.namespace, idx % COUNTERS);
        spec.buffers = vec![state("counter", &key, AccessMode::ReadWrite, true)];
        spec.nonce = Some(idx.to_string());
        spec
    };
    // A job of its own after each stop (on another key than the counters), so that a commit
    // follows the stop even when the load's jobs were all done before it: submitted, as the
    // load's are, again after every error until accepted.
    let probe = |name: &str| {
        let mut spec = wasm_job(kernel.clone(), "increment");
        let key = format!("{tenant}/failover/{}/probe-{name}", env.namespace);
        spec.buffers = vec![state("counter", &key, AccessMode::ReadWrite, true)];
        let namespace = env.namespace.clone();
        tokio::spawn(async move {
            loop {
                let config = ClientConfig {
                    amqp_url: amqp_url(),
                    redis_url: redis_url(),
                    namespace: namespace.clone(),
                    tls: tls(),
                };
                if let Ok(client) = Client::connect(config).await {
                    if client.submit(&spec).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // A first job makes the tenant's own jobs queue, whose leader is then stopped.
    assert!(env.run(&spec_of(JOBS)).await.succeeded());
    let queue = env.namespace.tenant_job_queue("wasm", &tenant);
    let (leader, replicas) = queue_leader(&queue);
    // deploy/rabbitmq/advanced.config: quorum_cluster_size 3.
    assert_eq!(replicas, 3, "{queue} is replicated on every node");
    // Every result message, counted by a subscriber on a node that stays up.
    let watcher_node = if leader == 3 { 2 } else { 3 };
    let watcher_url = dtee_net::amqp::urls(&amqp_url())[watcher_node - 1].to_owned();
    let watcher = Client::connect(ClientConfig {
        amqp_url: watcher_url,
        redis_url: redis_url(),
        namespace: env.namespace.clone(),
        tls: tls(),
    })
    .await
    .unwrap();
    let waiter = watcher.waiter().await.unwrap();
    let mut messages = waiter.subscribe_all().await.unwrap();
    let counted = tokio::spawn(async move {
        let mut seen: HashMap<Digest, Vec<JobResult>> = HashMap::new();
        while let Some((result, _)) = messages.recv().await {
            seen.entry(result.job_id.clone()).or_default().push(result);
        }
        seen
    });

    // The submitter: on any error it connects again (to the next node) and publishes the
    // same job again. Publishing is idempotent: the job id is the job's digest.
    let started = Instant::now();
    let specs: Arc<Vec<_>> = Arc::new((0..JOBS).map(spec_of).collect());
    let namespace = env.namespace.clone();
    let submitter = {
        let specs = Arc::clone(&specs);
        tokio::spawn(async move {
            let connect = || {
                Client::connect(ClientConfig {
                    amqp_url: amqp_url(),
                    redis_url: redis_url(),
                    namespace: namespace.clone(),
                    tls: tls(),
                })
            };
            let mut client = connect().await.unwrap();
            let mut resubmitted = 0;
            for spec in specs.iter() {
                while client.submit(spec).await.is_err() {
                    resubmitted += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(fresh) = connect().await {
                        client = fresh;
                    }
                }
            }
            resubmitted
        })
    };

    wait_for_commits(&workers, JOBS as u64 / 4).await;
    let before = commits(&workers);
    let mut restart = Restart(Vec::new());
    let stopped_rabbit = Instant::now();
    restart
        .0
        .push(vec!["start-rabbit".into(), leader.to_string()]);
    cluster(&["stop-rabbit", &leader.to_string()]);
    let stop_rabbit_took = stopped_rabbit.elapsed();
    let probed = probe("rabbit");
    let rabbit_recovery = recovery(&workers, stopped_rabbit, before).await;
    tokio::time::timeout(RECOVERY_BOUND, probed)
        .await
        .expect("the probe job was submitted")
        .unwrap();

    wait_for_commits(&workers, JOBS as u64 / 2).await;
    let counter_key = StateKey::parse(&format!("{tenant}/failover/{}/0", env.namespace)).unwrap();
    let mut redis = env.client.redis();
    let value_key = counter_key.value_key(&env.namespace);
    let (primary, has_replica) = primary_of(&mut redis, &value_key).await.unwrap();
    assert!(
        has_replica,
        "the primary of the counters' slot has a live replica"
    );
    let before = commits(&workers);
    let killed_redis = Instant::now();
    cluster(&["kill-redis", &primary.to_string()]);
    // The crashed node is restarted once its replica took over, as a supervisor would restart
    // it; it rejoins as the new primary's replica. Until then the new primary has no replica,
    // and the workers (DTEE_REDIS_WAIT_REPLICAS=1) answer nothing.
    let promoted_after = promotion(&mut redis, &value_key, primary).await;
    cluster(&["start-redis", &primary.to_string()]);
    let probed = probe("redis");
    let redis_recovery = recovery(&workers, killed_redis, before).await;
    tokio::time::timeout(RECOVERY_BOUND, probed)
        .await
        .expect("the probe job was submitted")
        .unwrap();

    let resubmitted = submitter.await.unwrap();
    // Every job's terminal result in the cache.
    let ids: Vec<Digest> = specs
        .iter()
        .map(|spec| dtee_schemas::job_id(spec).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut read_errors = 0;
    let cached = loop {
        let keys: Vec<String> = ids.iter().map(|id| env.namespace.result_key(id)).collect();
        // A read may fail while the client learns the new slot map: it is read again.
        let bodies = match redis.get_many(&keys).await {
            Ok(bodies) => bodies,
            Err(error) => {
                read_errors += 1;
                assert!(Instant::now() < deadline, "reading results: {error}");
                eprintln!("reading the results failed ({error}); reading again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if bodies.iter().all(Option::is_some) {
            break bodies;
        }
        assert!(
            Instant::now() < deadline,
            "{} jobs have no result after 300 s",
            bodies.iter().filter(|b| b.is_none()).count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    for (id, body) in ids.iter().zip(&cached) {
        let result: JobResult = serde_json::from_slice(body.as_ref().unwrap()).unwrap();
        assert!(result.succeeded(), "job {id}: {:?}", result.error);
    }
    // Counters exact: each counter was incremented once per job of its own.
    let mut total = 0;
    for counter in 0..COUNTERS {
        let key =
            StateKey::parse(&format!("{tenant}/failover/{}/{counter}", env.namespace)).unwrap();
        let (value, version) = env.client.state_get(&key).await.unwrap();
        let value = u64::from_le_bytes(value.unwrap().try_into().unwrap());
        let expected = (0..=JOBS).filter(|idx| idx % COUNTERS == counter).count() as u64;
        assert_eq!((value, version), (expected, expected), "counter {counter}");
        total += value;
    }
    assert_eq!(total, JOBS as u64 + 1);

    // Result messages: every job's, each copy the same result.
    tokio::time::sleep(Duration::from_secs(2)).await;
    waiter.close().await;
    watcher.close().await;
    let seen = counted.await.unwrap();
    let mut duplicates = 0;
    let mut missing = 0;
    for id in &ids {
        match seen.get(id) {
            None => missing += 1,
            Some(copies) => {
                duplicates += copies.len() - 1;
                assert!(
                    copies.windows(2).all(|pair| pair[0] == pair[1]),
                    "every copy of {id}'s result is the same result"
                );
            }
        }
    }
    let executed: u64 = workers.iter().map(|w| Stats::get(&w.stats.executed)).sum();
    println!(
        "failover figures: jobs {JOBS} (+1 warm-up), counters {COUNTERS}, wall {:.1} s;\n  \
         RabbitMQ node dtee-c{leader} (leader of {queue}) stopped (stop took {:.1} s): every \
         worker ready and committing again {:.2} s after the stop began;\n  \
         Redis primary 127.0.0.1:{primary} killed (SIGKILL): replica promoted after {:.2} s, \
         the killed node restarted as its replica, committing again {:.2} s after the kill;\n  \
         executions {executed}, commits {}, submissions repeated after errors {resubmitted};\n  \
         result messages: {} jobs seen, {duplicates} duplicate messages (identical), \
         {missing} jobs with no message seen by the subscriber;\n  \
         the test's own reads of the result cache that failed and were repeated: {read_errors}; \
         the test client's cluster connection rebuilt after repeated timeouts: {} times",
        elapsed.as_secs_f64(),
        stop_rabbit_took.as_secs_f64(),
        rabbit_recovery.as_secs_f64(),
        promoted_after.as_secs_f64(),
        redis_recovery.as_secs_f64(),
        commits(&workers),
        ids.len() - missing,
        rebuilt(&env.client.redis()),
    );
    assert_eq!(missing, 0, "the subscriber saw a result for every job");

    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    drop(restart);
    env.cleanup().await;
}
