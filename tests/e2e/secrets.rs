//! Secrets (PROTOCOL.md §12): a keeper (`dtee-keeper`, in-process or as its binary), workers and
//! tenants on the real RabbitMQ, Redis and swtpm.

use std::process::{Command, Stdio};
use std::time::Duration;

use dtee_keeper::{run as run_keeper, KeeperConfig};
use dtee_schemas::attestation::execution::SecretUse;
use dtee_schemas::secrets::KeeperErrorCode;
use dtee_schemas::{ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{output, secret, wasm_job};
use dtee_submitter::secrets::{Secrets, SecretsError};
use dtee_submitter::{Client, ClientConfig};
use dtee_tests::{binary, run_as, statement_of, tenant_amqp_url, Reaped, TestEnv};
use sha2::Digest as _;
use tokio::sync::watch;

/// A keeper running in this process until dropped.
struct Keeper {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Keeper {
    async fn start(env: &TestEnv, kek: [u8; 32]) -> Keeper {
        let config = KeeperConfig {
            amqp_url: dtee_tests::amqp_url(),
            redis_url: env.redis_url.clone(),
            tls: dtee_tests::tls(),
            namespace: env.namespace.clone(),
            kek: zeroize::Zeroizing::new(kek),
            allow_get: true,
            worker_users: vec![dtee_keeper::client::amqp_user(&dtee_tests::amqp_url())],
            metrics_addr: None,
        };
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_keeper(config, shutdown));
        wait_for_keeper(env).await;
        Keeper { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until the keeper's queue exists (it declares it once connected).
async fn wait_for_keeper(env: &TestEnv) {
    for _ in 0..200 {
        if env.queue_exists(&env.namespace.keeper_queue()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the keeper did not declare its queue");
}

fn config_of(env: &TestEnv, user: &str) -> ClientConfig {
    ClientConfig {
        amqp_url: tenant_amqp_url(user),
        redis_url: env.redis_url.clone(),
        namespace: env.namespace.clone(),
        tls: dtee_tests::tls(),
    }
}

/// A tenant: its job client and its secrets client.
async fn tenant(env: &TestEnv, user: &str) -> (Client, Secrets) {
    let client = env.tenant_client(user).await;
    let secrets = Secrets::connect(&config_of(env, user)).await.unwrap();
    (client, secrets)
}

/// sha256.wasm over the secret: the result shows that the kernel read the value (its digest)
/// without showing the value.
async fn digest_job(env: &TestEnv, tenant: &str, name: &str, version: u64, nonce: &str) -> JobSpec {
    let mut spec = wasm_job(env.put_kernel("sha256").await, "sha256");
    spec.buffers = vec![secret("data", tenant, name, version), output("digest", 32)];
    spec.nonce = Some(nonce.to_owned());
    spec
}

fn refusal(error: SecretsError) -> KeeperErrorCode {
    match error {
        SecretsError::Refused(refusal) => refusal.code,
        other => panic!("expected a refusal, got {other}"),
    }
}

const SOFTWARE: &str = "allow_software = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_job_gets_its_own_secret_and_no_other_tenants() {
    let env = TestEnv::new("secrets-tenants").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let worker = env.start_worker().await;
    let (alice, alice_secrets) = tenant(&env, "dtee-test-alice").await;
    let (bob, bob_secrets) = tenant(&env, "dtee-test-bob").await;
    let value: [u8; 24] = rand::random();
    assert_eq!(alice_secrets.put("token", &value).await.unwrap(), 1);
    alice_secrets.set_policy(SOFTWARE).await.unwrap();

    // Alice's job reads her secret.
    let spec = digest_job(&env, "dtee-test-alice", "token", 1, "alice").await;
    let result = run_as(&alice, &spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    assert_eq!(
        result.output("digest").unwrap().bytes().unwrap(),
        sha2::Sha256::digest(value).to_vec()
    );
    // The statement names the secret and version, never the value or its digest.
    let (statement, payload) = statement_of(&result);
    assert_eq!(
        statement.secrets,
        vec![SecretUse {
            name: "data".into(),
            secret: "dtee-test-alice/token".into(),
            version: 1
        }]
    );
    assert!(statement.inputs.is_empty());
    let text = String::from_utf8(payload).unwrap();
    assert!(!text.contains(&hex::encode(value)));

    // Alice's job naming Bob's secret, and Bob's copy of Alice's job: refused before anything
    // is read (not even the result cache).
    bob_secrets.put("token", b"bob's").await.unwrap();
    let foreign = digest_job(&env, "dtee-test-bob", "token", 1, "alice takes bob's").await;
    let refused = run_as(&alice, &foreign).await;
    assert_eq!(refused.error_code(), Some(ErrorCode::SecretReleaseDenied));
    // (Watch what the worker publishes to Bob: a client that reads Redis could read the cached
    // result itself, as the README's trust model says.)
    let waiter = bob.waiter().await.unwrap();
    let mut published = waiter.subscribe_all().await.unwrap();
    bob.submit(&spec).await.unwrap();
    let (copy, cached) = tokio::time::timeout(dtee_tests::RESULT_TIMEOUT, published.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.error_code(), Some(ErrorCode::SecretReleaseDenied));
    assert!(copy.outputs.is_empty() && !cached);
    waiter.close().await;

    // Bob can neither list, read nor delete Alice's secrets: his namespace is his own.
    let listed = bob_secrets.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "token");
    assert_eq!(
        bob_secrets.get("token", None).await.unwrap().1.as_slice(),
        b"bob's"
    );
    assert_eq!(
        refusal(bob_secrets.delete("token", Some(2)).await.unwrap_err()),
        KeeperErrorCode::SecretNotFound
    );
    assert_eq!(
        alice_secrets
            .get("token", Some(1))
            .await
            .unwrap()
            .1
            .as_slice(),
        value
    );

    // Bob claiming to be Alice: RabbitMQ refuses a request whose user_id is not the
    // connection's user, so the keeper never sees it.
    let connection = dtee_tests::amqp_connect(&tenant_amqp_url("dtee-test-bob")).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let forged = channel
        .basic_publish(
            env.namespace.keeper_exchange().as_str().into(),
            "tenant".into(),
            lapin::options::BasicPublishOptions::default(),
            br#"{"op":"list"}"#,
            lapin::BasicProperties::default().with_user_id("dtee-test-alice".into()),
        )
        .await;
    let refused = match forged {
        Ok(confirm) => confirm.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "RabbitMQ refuses a forged user_id");
    let _ = connection.close(200, "bye".into()).await;

    bob_secrets.close().await;
    alice_secrets.close().await;
    worker.shutdown().await.unwrap();
    keeper.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_follows_the_owners_policy() {
    let env = TestEnv::new("secrets-policy").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let worker = env.start_worker().await;
    let (alice, secrets) = tenant(&env, "dtee-test-alice").await;
    secrets.put("key", b"policy test").await.unwrap();
    let run = |nonce: &'static str| {
        let (env, alice) = (&env, &alice);
        async move {
            let spec = digest_job(env, "dtee-test-alice", "key", 1, nonce).await;
            run_as(alice, &spec).await
        }
    };
    // No policy set: nothing is released.
    assert_eq!(
        run("no policy").await.error_code(),
        Some(ErrorCode::SecretReleaseDenied)
    );
    // A TPM-only policy refuses this software worker.
    secrets
        .set_policy(&format!("[tpm]\nallowed_aks = [\"{}\"]\n", "ab".repeat(32)))
        .await
        .unwrap();
    let refused = run("tpm only").await;
    assert_eq!(refused.error_code(), Some(ErrorCode::SecretReleaseDenied));
    assert!(
        refused.error.unwrap().message.contains("software.allowed"),
        "the refusal names the failed check"
    );
    // A measurement the policy does not allow.
    secrets
        .set_policy(&format!(
            "allow_software = true\nworker_measurements = [\"sha256:{}\"]\n",
            "0".repeat(64)
        ))
        .await
        .unwrap();
    assert_eq!(
        run("other measurement").await.error_code(),
        Some(ErrorCode::SecretReleaseDenied)
    );
    // Stale evidence: the worker's evidence is older than the policy accepts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    secrets
        .set_policy("allow_software = true\nmax_evidence_age_secs = 0\n")
        .await
        .unwrap();
    let stale = run("stale").await;
    assert_eq!(stale.error_code(), Some(ErrorCode::SecretReleaseDenied));
    assert!(stale.error.unwrap().message.contains("policy.evidence_age"));
    // A malformed policy is refused when set, and the previous one stays.
    assert_eq!(
        refusal(
            secrets
                .set_policy("allow_softwar = true")
                .await
                .unwrap_err()
        ),
        KeeperErrorCode::InvalidRequest
    );
    // A policy that accepts the worker: released.
    secrets.set_policy(SOFTWARE).await.unwrap();
    assert!(run("accepted").await.succeeded());

    // A policy written to Redis by anything but the keeper is refused, never read: here the
    // plain text a worker's Redis login could SET, then another tenant's sealed policy moved
    // under alice's key.
    let mut redis = env.client.redis();
    let alice_policy = env.namespace.secret_policy_key("dtee-test-alice");
    let forgeries = [SOFTWARE.as_bytes().to_vec(), {
        let (bob, bob_secrets) = tenant(&env, "dtee-test-bob").await;
        bob_secrets.set_policy(SOFTWARE).await.unwrap();
        let bobs: Vec<u8> = redis::cmd("GET")
            .arg(env.namespace.secret_policy_key("dtee-test-bob"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!contains(&bobs, &encodings(SOFTWARE.as_bytes())), "sealed");
        bob_secrets.close().await;
        bob.close().await;
        bobs
    }];
    for (index, forged) in forgeries.into_iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(&alice_policy)
            .arg(forged)
            .query_async(&mut redis)
            .await
            .unwrap();
        let nonce: &'static str = ["forged policy 0", "forged policy 1"][index];
        let refused = run(nonce).await;
        assert_eq!(refused.error_code(), Some(ErrorCode::SecretReleaseDenied));
        let message = refused.error.unwrap().message;
        assert!(message.contains("not set through the keeper"), "{message}");
    }
    secrets.set_policy(SOFTWARE).await.unwrap();
    assert!(run("set again").await.succeeded());
    worker.shutdown().await.unwrap();

    // A TPM worker (swtpm) whose AK the policy pins gets the secret.
    let tpm_worker = env
        .start_worker_with(|c| {
            c.attestation = dtee_worker::attestation::ProviderChoice::Tpm;
            c.provider_settings.tpm_tcti = tpm_tcti();
        })
        .await;
    let probe = run("which ak").await;
    let identity = &probe.attestation.as_ref().unwrap().identity;
    let dtee_schemas::attestation::evidence::Evidence::Tpm(evidence) = &identity.evidence else {
        panic!("the TPM worker answers with TPM evidence")
    };
    let ak = dtee_schemas::attestation::tpm::ak_fingerprint(&evidence.ak_public);
    secrets
        .set_policy(&format!("[tpm]\nallowed_aks = [\"{ak}\"]\n"))
        .await
        .unwrap();
    let result = run("pinned ak").await;
    assert!(result.succeeded(), "{:?}", result.error);
    tpm_worker.shutdown().await.unwrap();
    secrets.close().await;
    keeper.stop().await;
    env.cleanup().await;
}

fn tpm_tcti() -> String {
    let port = std::env::var("DTEE_SWTPM_PORT").unwrap_or_else(|_| "2321".to_owned());
    format!("swtpm:host=127.0.0.1,port={port}")
}

/// The keeper as its binary, with its log captured; killed if the test fails before
/// [`stop_process`].
fn keeper_process(env: &TestEnv, kek_file: &std::path::Path) -> Reaped {
    keeper_process_at(env, kek_file, None)
}

fn keeper_process_at(
    env: &TestEnv,
    kek_file: &std::path::Path,
    metrics: Option<std::net::SocketAddr>,
) -> Reaped {
    let mut command = Command::new(binary("dtee-keeper"));
    if let Some(addr) = metrics {
        command.env("DTEE_METRICS_ADDR", addr.to_string());
    }
    command
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", &env.redis_url)
        .env("DTEE_KEEPER_KEK_FILE", kek_file)
        .env(
            "DTEE_KEEPER_WORKER_USERS",
            dtee_keeper::client::amqp_user(&dtee_tests::amqp_url()),
        )
        .env("DTEE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped::new)
        .expect("starting dtee-keeper")
}

/// Stops a process with SIGTERM and answers its log.
fn stop_process(child: Reaped) -> String {
    let child = child.into_inner();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_deletion_keeper_restart_and_outage() {
    let env = TestEnv::new("secrets-rotate").await;
    let dir = std::env::temp_dir().join(format!("dtee-keeper-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let kek = dir.join("kek");
    std::fs::write(&kek, hex::encode(rand::random::<[u8; 32]>())).unwrap();
    let probes = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let keeper = keeper_process_at(&env, &kek, Some(probes));
    wait_for_keeper(&env).await;
    dtee_tests::wait_for_status(probes, "/readyz", 200).await;
    let worker = env.start_worker().await;
    let (alice, secrets) = tenant(&env, "dtee-test-alice").await;
    secrets.set_policy(SOFTWARE).await.unwrap();
    assert_eq!(secrets.put("api", b"first").await.unwrap(), 1);
    assert_eq!(secrets.put("api", b"second").await.unwrap(), 2);
    let digest_of = |result: &JobResult| result.output("digest").unwrap().bytes().unwrap();

    // A job naming the new version gets it.
    let v2 = run_as(
        &alice,
        &digest_job(&env, "dtee-test-alice", "api", 2, "v2").await,
    )
    .await;
    assert_eq!(digest_of(&v2), sha2::Sha256::digest(b"second").to_vec());
    // A deleted version fails the jobs that name it.
    assert_eq!(secrets.delete("api", Some(1)).await.unwrap(), 1);
    let gone = run_as(
        &alice,
        &digest_job(&env, "dtee-test-alice", "api", 1, "v1").await,
    )
    .await;
    assert_eq!(gone.error_code(), Some(ErrorCode::SecretNotFound));
    assert_eq!(secrets.list().await.unwrap()[0].versions.len(), 1);
    // The keeper counts requests by operation and outcome: releases and refusals by reason.
    let (status, metrics) = dtee_tests::http_get(probes, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"dtee_keeper_requests_total{op="release",outcome="ok"} 1"#,
        r#"dtee_keeper_requests_total{op="release",outcome="secret_not_found"} 1"#,
        r#"dtee_keeper_requests_total{op="put",outcome="ok"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // A keeper restart loses nothing: the secrets live in Redis under the operator's KEK.
    let log = stop_process(keeper);
    let keeper = keeper_process(&env, &kek);
    wait_for_keeper(&env).await;
    let again = run_as(
        &alice,
        &digest_job(&env, "dtee-test-alice", "api", 2, "restart").await,
    )
    .await;
    assert_eq!(digest_of(&again), sha2::Sha256::digest(b"second").to_vec());
    let mut log = log + &stop_process(keeper);

    // A keeper outage makes a job wait and retry, not fail.
    let spec = digest_job(&env, "dtee-test-alice", "api", 2, "outage").await;
    let waiter = alice.waiter().await.unwrap();
    let watch = waiter
        .watch_fresh(&dtee_schemas::job_id(&spec).unwrap())
        .await
        .unwrap();
    alice.submit(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted_at = dtee_schemas::run::unix_ms();
    let keeper = keeper_process(&env, &kek);
    let late = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    assert!(late.succeeded(), "{:?}", late.error);
    assert!(
        late.execution.unwrap().finished_at_unix_ms >= restarted_at,
        "the job waited for the keeper"
    );
    waiter.close().await;
    log += &stop_process(keeper);

    // The keeper logged releases and refusals, and never a value.
    assert!(log.contains("release"), "{log}");
    for value in [&b"first"[..], b"second"] {
        assert!(!log.contains(std::str::from_utf8(value).unwrap()));
    }
    secrets.close().await;
    worker.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}

/// Every encoding of `value` a leak could take: raw, hex and base64.
fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    vec![
        value.to_vec(),
        hex::encode(value).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(value)
            .into_bytes(),
    ]
}

fn contains(haystack: &[u8], needles: &[Vec<u8>]) -> bool {
    needles
        .iter()
        .any(|needle| haystack.windows(needle.len()).any(|w| w == &needle[..]))
}

/// Every value under the namespace's Redis keys, whatever their type.
async fn redis_values(env: &TestEnv) -> Vec<Vec<u8>> {
    let mut redis = env.client.redis();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", env.namespace))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let mut values = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "string" => "GET",
            "hash" => "HGETALL",
            "set" => "SMEMBERS",
            other => panic!("unexpected Redis type {other} at {key}"),
        };
        let found: redis::Value = redis::cmd(command)
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        values.push(format!("{key} {found:?}").into_bytes());
        if let redis::Value::BulkString(bytes) = found {
            values.push(bytes);
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_crosses_no_broker_store_log_or_result_in_the_clear() {
    use futures_util::StreamExt as _;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    let env = TestEnv::new("secrets-leak").await;
    let dir = std::env::temp_dir().join(format!("dtee-keeper-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let kek = dir.join("kek");
    std::fs::write(&kek, rand::random::<[u8; 32]>()).unwrap();
    let keeper = keeper_process(&env, &kek);
    wait_for_keeper(&env).await;
    // The worker as its binary too, so that its log can be read.
    let worker = Command::new(binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", &env.redis_url)
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped::new)
        .unwrap();
    let (alice, secrets) = tenant(&env, "dtee-test-alice").await;

    // A tap on every exchange of the namespace that carries messages between the parts.
    let channel = env.client.connection().create_channel().await.unwrap();
    let tap = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let taps = [
        (env.namespace.keeper_exchange(), "tenant"),
        (env.namespace.keeper_exchange(), "release"),
    ];
    for (exchange, key) in taps {
        channel
            .queue_bind(
                tap.name().as_str().into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let mut tapped = channel
        .basic_consume(
            tap.name().as_str().into(),
            "tap".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();

    let value: [u8; 24] = rand::random();
    let needles = encodings(&value);
    secrets.put("db", &value).await.unwrap();
    secrets.set_policy(SOFTWARE).await.unwrap();
    assert_eq!(&secrets.get("db", None).await.unwrap().1[..], &value[..]);
    // Waits for the worker process's queue before submitting.
    let spec = digest_job(&env, "dtee-test-alice", "db", 1, "leak test").await;
    let mut result = None;
    for _ in 0..100 {
        if env.queue_exists(&env.namespace.job_queue("wasm")).await {
            result = Some(run_as(&alice, &spec).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = result.expect("the worker process declared its queue");
    assert!(result.succeeded(), "{:?}", result.error);
    // The same job published through the jobs exchange (bound now, so it is tapped too).
    channel
        .queue_bind(
            tap.name().as_str().into(),
            env.namespace.jobs_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.name().as_str().into(),
            env.namespace.results_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let again = run_as(
        &alice,
        &digest_job(&env, "dtee-test-alice", "db", 1, "tapped").await,
    )
    .await;
    assert!(again.succeeded());

    let mut messages = 0;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), tapped.next()).await
    {
        messages += 1;
        assert!(
            !contains(&delivery.data, &needles),
            "a message carries the secret: {:?}",
            String::from_utf8_lossy(&delivery.data)
        );
    }
    assert!(
        messages >= 4,
        "the tap saw the requests, the job and its result ({messages})"
    );
    for stored in redis_values(&env).await {
        assert!(
            !contains(&stored, &needles),
            "Redis holds the secret: {:?}",
            String::from_utf8_lossy(&stored)
        );
    }
    for result in [&result, &again] {
        assert!(!contains(&serde_json::to_vec(result).unwrap(), &needles));
    }
    let worker = worker.into_inner();
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let worker_log = worker.wait_with_output().unwrap().stderr;
    let keeper_log = stop_process(keeper).into_bytes();
    assert!(!worker_log.is_empty() && !keeper_log.is_empty());
    assert!(
        !contains(&worker_log, &needles),
        "the worker's log holds the secret"
    );
    assert!(
        !contains(&keeper_log, &needles),
        "the keeper's log holds the secret"
    );
    secrets.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}

/// `dtee secret ...` and `dtee run --secret`, as a tenant would use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_lists_gets_deletes_and_runs_with_secrets() {
    let env = TestEnv::new("secrets-cli").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let worker = env.start_worker().await;
    let user = "dtee-test-carol";
    dtee_tests::ensure_tenant_user(user);
    env.acts_as(user);
    let dir = std::env::temp_dir().join(format!("dtee-secret-cli-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let dtee = |args: &[&str]| {
        let mut command = Command::new(binary("dtee"));
        command
            .args(args)
            .env("DTEE_NAMESPACE", env.namespace.as_str())
            .env("DTEE_AMQP_URL", tenant_amqp_url(user))
            .env("DTEE_REDIS_URL", &env.redis_url)
            .env("CAROL_TOKEN", "from the environment");
        dtee_tests::blocking(|| command.output()).unwrap()
    };
    let ok = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{} {}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, SOFTWARE).unwrap();
    ok(dtee(&["secret", "policy", "set", policy.to_str().unwrap()]));
    let file = dir.join("value");
    std::fs::write(&file, b"from a file").unwrap();
    assert_eq!(
        ok(dtee(&[
            "secret",
            "put",
            "data",
            "--from-file",
            file.to_str().unwrap()
        ])),
        "data version 1\n"
    );
    assert_eq!(
        ok(dtee(&[
            "secret",
            "put",
            "data",
            "--from-env",
            "CAROL_TOKEN"
        ])),
        "data version 2\n"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(dtee(&["secret", "list", "--output", "json"]))).unwrap();
    assert_eq!(listed[0]["name"], "data");
    assert_eq!(listed[0]["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        ok(dtee(&["secret", "get", "data", "--version", "1"])),
        "from a file"
    );
    // `--secret data` pins the latest version in the job, as the buffer `data` sha256.wasm reads.
    let kernel = dtee_tests::repo_root().join("kernels/wasm/sha256.wasm");
    let run = ok(dtee(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--entry",
        "sha256",
        "--secret",
        "data",
        "--output",
        "digest:32",
    ]));
    let result: JobResult = serde_json::from_str(&run).unwrap();
    assert_eq!(
        result.output("digest").unwrap().bytes().unwrap(),
        sha2::Sha256::digest(b"from the environment").to_vec()
    );
    let (statement, _) = statement_of(&result);
    assert_eq!(statement.secrets[0].version, 2);
    // A bad name is refused by the client, a deleted secret by the keeper (exit 5).
    assert_eq!(
        dtee(&["secret", "put", "a/b", "--from-env", "CAROL_TOKEN"])
            .status
            .code(),
        Some(64)
    );
    ok(dtee(&["secret", "delete", "data"]));
    let gone = dtee(&["secret", "get", "data"]);
    assert_eq!(gone.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no secret data"));
    worker.shutdown().await.unwrap();
    keeper.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}

/// The keeper answers only into its own reply queues (`<ns>.keeper.reply.<…>`): through the
/// default exchange it could otherwise be made to publish into any queue a requester names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_answers_only_into_its_reply_queues() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    use lapin::BasicProperties;
    let env = TestEnv::new("keeper-reply-to").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let connection = dtee_tests::amqp_connect(&dtee_tests::amqp_url()).await;
    let channel = connection.create_channel().await.unwrap();
    let user = dtee_tests::amqp_url()
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned());
    let elsewhere = format!("{}.not-a-reply-queue", env.namespace);
    let ours = format!("{}.reply.test", env.namespace.keeper_queue());
    for queue in [&elsewhere, &ours] {
        dtee_tests::scratch_queue(&channel, queue).await;
        channel
            .basic_publish(
                env.namespace.keeper_exchange().as_str().into(),
                dtee_schemas::namespace::KEEPER_TENANT_KEY.into(),
                BasicPublishOptions::default(),
                br#"{"op":"list"}"#,
                BasicProperties::default()
                    .with_user_id(user.as_str().into())
                    .with_reply_to(queue.as_str().into()),
            )
            .await
            .unwrap();
    }
    let get = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
        }
    };
    let mut answered = false;
    for _ in 0..200 {
        if get(ours.clone()).await.is_some() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the keeper answers into its reply queue");
    // Both requests were taken at once; give the other's answer time it would have needed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        get(elsewhere.clone()).await.is_none(),
        "no answer in a queue that is not a keeper reply queue"
    );

    let _ = connection.close(200, "done".into()).await;
    keeper.stop().await;
    env.cleanup().await;
}

/// A request over the keeper's 1 MiB bound is refused by the size RabbitMQ announced for it
/// without the keeper holding its body: its consumer channel drops the body as it arrives, so
/// the keeper process's peak resident memory grows by far less than the message (before, the
/// whole body was read first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_without_the_keeper_holding_it() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    use lapin::BasicProperties;
    // Under RabbitMQ 3.x's max_message_size (128 MiB; 4.x defaults to 16 MiB).
    const BODY: usize = 32 << 20;
    let env = TestEnv::new("keeper-oversized").await;
    let dir = std::env::temp_dir().join(format!("dtee-keeper-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let kek = dir.join("kek");
    std::fs::write(&kek, hex::encode(rand::random::<[u8; 32]>())).unwrap();
    let keeper = keeper_process(&env, &kek);
    wait_for_keeper(&env).await;
    let connection = dtee_tests::amqp_connect(&dtee_tests::amqp_url()).await;
    let channel = connection.create_channel().await.unwrap();
    let user = dtee_keeper::client::amqp_user(&dtee_tests::amqp_url());
    let replies = format!("{}.reply.oversized", env.namespace.keeper_queue());
    dtee_tests::scratch_queue(&channel, &replies).await;
    let ask = |body: Vec<u8>| {
        let (channel, user, replies) = (channel.clone(), user.clone(), replies.clone());
        let exchange = env.namespace.keeper_exchange();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    dtee_schemas::namespace::KEEPER_TENANT_KEY.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_user_id(user.as_str().into())
                        .with_reply_to(replies.as_str().into()),
                )
                .await
                .unwrap();
            for _ in 0..400 {
                let got = channel
                    .basic_get(replies.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap();
                if let Some(got) = got {
                    let reply: dtee_schemas::secrets::KeeperReply =
                        serde_json::from_slice(&got.delivery.data).unwrap();
                    return reply;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the keeper did not answer");
        }
    };
    // Serving, and warm: one ordinary request first.
    assert!(ask(br#"{"op":"list"}"#.to_vec()).await.error.is_none());
    dtee_tests::reset_peak_resident(keeper.id());
    let before = dtee_tests::peak_resident_bytes(keeper.id());
    let error = ask(vec![b' '; BODY]).await.error.expect("refused");
    assert_eq!(error.code, KeeperErrorCode::InvalidRequest);
    assert!(
        error
            .message
            .contains(&format!("the request is {BODY} bytes")),
        "{}",
        error.message
    );
    let grew = dtee_tests::peak_resident_bytes(keeper.id()).saturating_sub(before);
    assert!(
        grew < (BODY / 4) as u64,
        "the keeper's peak memory grew by {grew} bytes for a {BODY}-byte request it refused"
    );
    let _ = connection.close(200, "done".into()).await;
    drop(keeper);
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}

/// Only the workers' AMQP users get answers to `release` requests. A tenant that signs claims
/// in another tenant's name with an identity of its own (anyone can make a software identity)
/// is refused before anything is read: the answer says nothing of the other tenant's policy
/// or secrets (before, it named the policy's failed checks, or that there was none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_ask_for_a_release_in_another_tenants_name() {
    use dtee_schemas::job::encode_base64;
    use dtee_schemas::secrets::{HpkeKeyPair, KeeperRequest, ReleaseClaims, SecretVersion};
    let env = TestEnv::new("secrets-release-sender").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let (alice, secrets) = tenant(&env, "dtee-test-alice").await;
    secrets.put("key", b"alice's").await.unwrap();
    secrets
        .set_policy(&format!("[tpm]\nallowed_aks = [\"{}\"]\n", "ab".repeat(32)))
        .await
        .unwrap();

    // Bob's own software identity, signing claims for alice's secret.
    let attestor = dtee_tests::software_attestor("bob", dtee_schemas::Digest::of(b"bob's worker"));
    let claims = ReleaseClaims {
        tenant: "dtee-test-alice".to_owned(),
        job_id: dtee_schemas::Digest::of(b"any job"),
        secrets: vec![SecretVersion {
            name: "key".to_owned(),
            version: 1,
        }],
        worker_hpke_key: HpkeKeyPair::generate().public_hex(),
        issued_at_unix_ms: dtee_schemas::run::unix_ms(),
    };
    let request = KeeperRequest::Release {
        signature: encode_base64(&attestor.sign(&claims.signed_bytes())),
        identity: attestor.identity(),
        claims,
    };
    let bob = dtee_keeper::client::KeeperClient::connect(
        &tenant_amqp_url("dtee-test-bob"),
        &dtee_tests::tls(),
        env.namespace.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let reply = bob.request(&request).await.unwrap();
    let error = reply.error.expect("refused");
    assert_eq!(error.code, KeeperErrorCode::SecretReleaseDenied);
    assert!(
        error.message.contains("DTEE_KEEPER_WORKER_USERS"),
        "{}",
        error.message
    );
    for leak in ["tpm", "policy", "key", "dtee-test-alice"] {
        assert!(!error.message.contains(leak), "{leak}: {}", error.message);
    }
    assert!(reply.released.is_none());
    bob.close().await;

    // The same request from a worker user is decided on alice's policy (here: refused, naming
    // the failed check, which is the worker's to report to alice in her job's result).
    let worker_user = dtee_keeper::client::KeeperClient::connect(
        &dtee_tests::amqp_url(),
        &dtee_tests::tls(),
        env.namespace.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let error = worker_user
        .request(&request)
        .await
        .unwrap()
        .error
        .expect("refused by the policy");
    assert_eq!(error.code, KeeperErrorCode::SecretReleaseDenied);
    assert!(
        error.message.contains("tpm.allowed") || error.message.contains("software"),
        "{}",
        error.message
    );
    worker_user.close().await;
    secrets.close().await;
    alice.close().await;
    keeper.stop().await;
    env.cleanup().await;
}

/// A secret keeps at most 64 versions: the 65th put is refused, listing still reads every
/// version's time (and no value), and once old versions are deleted a put is stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_keeps_at_most_64_versions() {
    let env = TestEnv::new("secrets-versions").await;
    let keeper = Keeper::start(&env, rand::random()).await;
    let (alice, secrets) = tenant(&env, "dtee-test-alice").await;
    for version in 1..=64u64 {
        assert_eq!(secrets.put("many", b"v").await.unwrap(), version);
    }
    let refused = secrets.put("many", b"one too many").await.unwrap_err();
    assert_eq!(refusal(refused), KeeperErrorCode::InvalidRequest);
    let listed = secrets.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].versions.len(), 64);
    assert!(listed[0].versions.iter().all(|v| v.created_at_unix_ms > 0));
    assert_eq!(secrets.delete("many", Some(1)).await.unwrap(), 1);
    assert_eq!(secrets.put("many", b"room again").await.unwrap(), 65);
    secrets.close().await;
    alice.close().await;
    keeper.stop().await;
    env.cleanup().await;
}
