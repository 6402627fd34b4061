//! Test harness for the end-to-end suites: every test gets its own namespace (so its own
//! exchanges, queues and Redis keys) on the real RabbitMQ and Redis, and in-process workers.
//!
//! The broker and Redis come from `DTEE_TEST_AMQP_URL` and `DTEE_TEST_REDIS_URL`, with
//! loopback defaults; TLS files from `DTEE_TLS_CA_FILE`, `DTEE_TLS_CERT_FILE` and
//! `DTEE_TLS_KEY_FILE` (as for the binaries), and `rabbitmqctl` addresses
//! `DTEE_TEST_RABBITMQ_NODE` when it is set (a node of the test cluster, see
//! deploy/local/cluster.sh).

use std::path::PathBuf;
use std::time::Duration;

use dtee_schemas::protocol::Namespace;
use dtee_schemas::{Digest, JobResult, JobSpec};
use dtee_submitter::{Client, ClientConfig};
use dtee_worker::config::Config;
use dtee_worker::WorkerHandle;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

/// How long a test waits for one result before failing.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The AMQP URL tests use.
pub fn amqp_url() -> String {
    std::env::var("DTEE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("DTEE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// The TLS material tests connect with (the `DTEE_TLS_*` files, if set).
pub fn tls() -> dtee_net::Tls {
    let file = |name: &str| std::env::var_os(name).map(PathBuf::from);
    dtee_net::Tls::load(&dtee_net::TlsFiles {
        tls_ca_file: file("DTEE_TLS_CA_FILE"),
        tls_cert_file: file("DTEE_TLS_CERT_FILE"),
        tls_key_file: file("DTEE_TLS_KEY_FILE"),
    })
    .expect("reading the DTEE_TLS_* files")
}

/// An AMQP connection to the test broker as `url` says (TLS and node lists included).
pub async fn amqp_connect(url: &str) -> lapin::Connection {
    dtee_net::amqp::connect(url, lapin::ConnectionProperties::default(), &tls())
        .await
        .expect("connecting to RabbitMQ")
        .connection
}

/// Declares an exclusive, auto-deleted queue on `channel` (`name`, or a server-named one when
/// empty): a test's own scratch queue, gone with its connection.
pub async fn scratch_queue(channel: &lapin::Channel, name: &str) -> lapin::Queue {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declaring a scratch queue")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The bytes of `kernels/wasm/NAME.wasm`.
pub fn kernel(name: &str) -> Vec<u8> {
    let path = repo_root()
        .join("kernels/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// A software identity (`DTEE_ATTESTATION=software`, no hardware) for worker `worker_id` with
/// `measurement`, as a worker makes at start-up: for tests that sign as a worker would.
pub fn software_attestor(
    worker_id: &str,
    measurement: dtee_schemas::Digest,
) -> dtee_worker::attestation::Attestor {
    let provider = dtee_worker::attestation::open_provider(
        dtee_worker::attestation::ProviderChoice::Software,
        &dtee_worker::attestation::ProviderSettings {
            tpm_tcti: String::new(),
            tpm_pcr: 23,
        },
        &measurement,
    )
    .expect("a software identity");
    dtee_worker::attestation::Attestor::start(worker_id, measurement, provider)
        .expect("an attestor")
}

/// A child process that is killed and reaped when dropped, so that a test that fails part-way
/// leaves no worker or keeper running (dropping a `Child` does not stop it).
#[derive(Debug)]
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Reaped {
        Reaped(Some(child))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("a child").id()
    }

    /// The child, no longer killed on drop: for a test that stops it itself and reads its
    /// output.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resets the peak resident memory that [`peak_resident_bytes`] reads to what process `pid`
/// holds now (`/proc/<pid>/clear_refs`), so that a later peak measures what came after.
pub fn reset_peak_resident(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");
}

/// The peak resident memory of process `pid` so far (`VmHWM` in `/proc/<pid>/status`), bytes.
pub fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .expect("VmHWM in kB")
        * 1024
}

/// A built binary of the workspace (`dtee`, `dtee-worker`, `dtee-loadtest`). `cargo test`
/// does not build other packages' binaries: run `cargo build --workspace --bins` first (as
/// deploy/local/test.sh does).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// One test's world: a unique namespace and a client.
#[derive(Debug)]
pub struct TestEnv {
    /// The namespace; every exchange, queue and key of this test lives in it.
    pub namespace: Namespace,
    /// A connected client.
    pub client: Client,
    /// The Redis this test uses.
    pub redis_url: String,
    /// The tenants of this test's clients (their tenant queues are the test's too).
    tenants: std::sync::Mutex<Vec<String>>,
}

/// The password of the RabbitMQ users that tests make for tenants.
pub const TENANT_PASSWORD: &str = "dtee-test-password";

/// Runs `f`, a blocking call (a child process run to its end), without holding up the async
/// runtime's other tasks: on a multi-thread runtime through `block_in_place`, which hands the
/// thread's queued tasks to another thread first. lapin's I/O loops are tasks of the runtime
/// (third_party/lapin), so an in-process worker that a blocked thread held up could not answer
/// the child that the test waits for.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `rabbitmqctl -q` with `args`; whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    let mut command = std::process::Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var("DTEE_TEST_RABBITMQ_NODE") {
        command.arg("-n").arg(node);
    }
    command.arg("-q").args(args);
    blocking(|| command.output())
        .expect("running rabbitmqctl")
        .status
        .success()
}

/// Creates (or resets) the RabbitMQ user `user`, password [`TENANT_PASSWORD`], with full rights
/// on the default vhost: a tenant of its own.
pub fn ensure_tenant_user(user: &str) {
    if !rabbitmqctl(&["add_user", user, TENANT_PASSWORD]) {
        assert!(
            rabbitmqctl(&["change_password", user, TENANT_PASSWORD]),
            "rabbitmqctl change_password"
        );
    }
    assert!(
        rabbitmqctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]),
        "rabbitmqctl set_permissions"
    );
}

/// The AMQP URL of the tenant user `user` (see [`ensure_tenant_user`]).
/// The test broker's URL (each node's, for a cluster) with that user's credentials.
pub fn tenant_amqp_url(user: &str) -> String {
    dtee_net::amqp::urls(&amqp_url())
        .into_iter()
        .map(|url| {
            let (scheme, rest) = url.split_once("://").expect("an AMQP URL has a scheme");
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let host = match rest[..authority_end].rfind('@') {
                Some(at) => &rest[at + 1..],
                None => rest,
            };
            format!("{scheme}://{user}:{TENANT_PASSWORD}@{host}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Submits `spec` as `client`'s tenant and waits for its result.
pub async fn run_as(client: &Client, spec: &JobSpec) -> JobResult {
    let waiter = client.waiter().await.expect("waiter");
    let id = dtee_schemas::job_id(spec).expect("job id");
    let watch = waiter.watch_fresh(&id).await.expect("watch");
    client.submit(spec).await.expect("submit");
    let result = watch.result(RESULT_TIMEOUT).await.expect("result");
    waiter.close().await;
    result
}

impl TestEnv {
    /// A client of this namespace whose tenant is `user` (the RabbitMQ user is made first).
    pub async fn tenant_client(&self, user: &str) -> Client {
        ensure_tenant_user(user);
        self.acts_as(user);
        Client::connect(ClientConfig {
            amqp_url: tenant_amqp_url(user),
            redis_url: redis_url(),
            namespace: self.namespace.clone(),
            tls: tls(),
        })
        .await
        .expect("connecting as a tenant")
    }

    /// Records that this test acts as tenant `user` (its own connection, the `dtee` command line
    /// as that user), so that [`TestEnv::cleanup`] deletes the user's tenant queues too.
    pub fn acts_as(&self, user: &str) {
        self.tenants
            .lock()
            .expect("tenants lock")
            .push(user.to_owned());
    }

    /// A fresh namespace named after the test.
    pub async fn new(test: &str) -> TestEnv {
        TestEnv::with_redis(test, &redis_url()).await
    }

    /// A fresh namespace named after the test, on the Redis at `redis`.
    pub async fn with_redis(test: &str, redis: &str) -> TestEnv {
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(24)
            .collect();
        let namespace = Namespace::new(format!("t-{slug}-{:08x}", rand::random::<u32>()))
            .expect("valid namespace");
        let client = Client::connect(ClientConfig {
            amqp_url: amqp_url(),
            redis_url: redis.to_owned(),
            namespace: namespace.clone(),
            tls: tls(),
        })
        .await
        .expect("connecting to RabbitMQ and Redis (are they running? see README)");
        TestEnv {
            namespace,
            client,
            redis_url: redis.to_owned(),
            tenants: std::sync::Mutex::default(),
        }
    }

    /// A worker configuration for this namespace: environment defaults, 2 kernel slots,
    /// a short shutdown grace.
    pub fn worker_config(&self) -> Config {
        let mut config = Config::from_env().expect("worker defaults");
        config.amqp_url = amqp_url();
        config.redis_url = self.redis_url.clone();
        config.namespace = self.namespace.clone();
        config.concurrency = 2;
        config.prefetch = 16;
        config.shutdown_grace = Duration::from_secs(5);
        config.attestation = dtee_worker::attestation::ProviderChoice::Software;
        // An in-process worker's executable is the test binary: compile with the worker's.
        config.compile.program = Some(binary("dtee-worker"));
        config
    }

    /// Starts an in-process worker with the default test configuration.
    pub async fn start_worker(&self) -> WorkerHandle {
        self.start_worker_with(|_| {}).await
    }

    /// Starts an in-process worker after `adjust` changed its configuration.
    pub async fn start_worker_with(&self, adjust: impl FnOnce(&mut Config)) -> WorkerHandle {
        let mut config = self.worker_config();
        adjust(&mut config);
        dtee_worker::start(config).await.expect("starting a worker")
    }

    /// A worker that reaches RabbitMQ and Redis through an [`OutageProxy`] each (returned:
    /// RabbitMQ's, then Redis's), so that a test can take either away from it alone.
    pub async fn start_worker_behind_proxies(
        &self,
        adjust: impl FnOnce(&mut Config),
    ) -> (WorkerHandle, OutageProxy, OutageProxy) {
        let (amqp, amqp_url) = OutageProxy::in_front_of(&amqp_url()).await;
        let (redis, redis_url) = OutageProxy::in_front_of(&self.redis_url).await;
        let worker = self
            .start_worker_with(|c| {
                c.amqp_url = amqp_url;
                c.redis_url = redis_url;
                adjust(c);
            })
            .await;
        (worker, amqp, redis)
    }

    /// Stores a kernel from kernels/wasm and returns its digest.
    pub async fn put_kernel(&self, name: &str) -> Digest {
        self.client
            .put_blob(&kernel(name))
            .await
            .expect("storing the kernel")
            .0
    }

    /// Submits a job and waits for its result (watching before submitting).
    pub async fn run(&self, spec: &JobSpec) -> JobResult {
        let waiter = self.client.waiter().await.expect("waiter");
        let id = dtee_schemas::job_id(spec).expect("job id");
        let watch = waiter.watch_fresh(&id).await.expect("watch");
        let submitted = self.client.submit(spec).await.expect("submit");
        assert_eq!(submitted, id);
        let result = watch.result(RESULT_TIMEOUT).await.expect("result");
        waiter.close().await;
        result
    }

    /// Messages ready in the routing key's queues, the shared one and every tenant's (not
    /// counting unacknowledged ones).
    pub async fn queue_depth(&self, route: &str) -> u32 {
        let mut depth = 0;
        for queue in self.job_queues(route).await {
            depth += self.queue_depth_of(&queue).await;
        }
        depth
    }

    /// The routing key's job queues: the shared one, and the tenant queue of each of this
    /// test's clients (which may not exist yet: a missing queue counts as empty).
    pub async fn job_queues(&self, route: &str) -> Vec<String> {
        let mut tenants = vec![self.client.tenant().to_owned()];
        tenants.extend(self.tenants.lock().expect("tenants lock").iter().cloned());
        let mut queues = vec![self.namespace.job_queue(route)];
        queues.extend(
            tenants
                .iter()
                .map(|tenant| self.namespace.tenant_job_queue(route, tenant)),
        );
        queues
    }

    /// Whether the named queue exists.
    pub async fn queue_exists(&self, queue: &str) -> bool {
        self.queue_consumers(queue).await.is_some()
    }

    /// Binds to the results exchange, by `routing_key`, a queue that refuses every message
    /// (length 0, `reject-publish`), so that the broker nacks every result routed there. The
    /// queue lives as long as the returned channel.
    pub async fn refuse_results(&self, routing_key: &str) -> lapin::Channel {
        let channel = self
            .client
            .connection()
            .create_channel()
            .await
            .expect("channel");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-max-length".into(),
            lapin::types::AMQPValue::LongLongInt(0),
        );
        arguments.insert(
            "x-overflow".into(),
            lapin::types::AMQPValue::LongString("reject-publish".into()),
        );
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, arguments)
            .await
            .expect("a refusing queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.namespace.results_exchange().into(),
                routing_key.into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("binding the refusing queue");
        channel
    }

    /// The consumers of the named queue; `None` if it does not exist.
    pub async fn queue_consumers(&self, queue: &str) -> Option<u32> {
        let channel = self.client.connection().create_channel().await.ok()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let consumers = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|queue| queue.consumer_count());
        let _ = channel.close(200, "ok".into()).await;
        consumers
    }

    /// Messages ready in the named queue (not counting unacknowledged ones); 0 if it does not
    /// exist.
    pub async fn queue_depth_of(&self, queue: &str) -> u32 {
        let channel = self
            .client
            .connection()
            .create_channel()
            .await
            .expect("channel");
        let depth = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(0, |queue| queue.message_count());
        let _ = channel.close(200, "ok".into()).await;
        depth
    }

    /// Deletes the namespace's queues, exchanges and Redis keys. Each deletion gets its own
    /// channel, so that one refusal cannot stop the others.
    pub async fn cleanup(self) {
        // Best effort, and bounded: a broker that stopped answering (the cluster test stops
        // nodes) must not hang the test after its assertions passed; leftovers are confined
        // to this test's namespace.
        if tokio::time::timeout(Duration::from_secs(60), self.remove_all())
            .await
            .is_err()
        {
            eprintln!(
                "cleanup of {} gave up after 60 s: some of its queues or keys may be left",
                self.namespace
            );
            return;
        }
        self.client.close().await;
    }

    /// Deletes the test's queues, exchanges and Redis keys.
    async fn remove_all(&self) {
        let mut queues = vec![
            self.namespace.dead_letter_queue(),
            self.namespace.tenants_announcements(),
            self.namespace.keeper_queue(),
        ];
        for route in [
            "wasm",
            "wasm.tpm",
            "wasm.snp",
            "wasm.any-hardware",
            "stand-in",
        ] {
            queues.extend(self.job_queues(route).await);
        }
        for queue in queues {
            if let Ok(channel) = self.client.connection().create_channel().await {
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "ok".into()).await;
            }
        }
        for exchange in [
            self.namespace.jobs_exchange(),
            self.namespace.intake_exchange(),
            self.namespace.tenants_announcements(),
            self.namespace.results_exchange(),
            self.namespace.dead_letter_exchange(),
            self.namespace.keeper_exchange(),
        ] {
            if let Ok(channel) = self.client.connection().create_channel().await {
                let _ = channel
                    .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "ok".into()).await;
            }
        }
        let mut redis = self.client.redis();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.namespace))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await;
        }
    }
}

/// The signed execution statement of a result, and its payload bytes as signed.
pub fn statement_of(
    result: &JobResult,
) -> (
    dtee_schemas::attestation::execution::ExecutionStatement,
    Vec<u8>,
) {
    let payload = result
        .attestation
        .as_ref()
        .expect("an attested result")
        .envelope
        .payload_bytes()
        .expect("a base64 payload");
    let statement = serde_json::from_slice(&payload).expect("an execution statement");
    (statement, payload)
}

/// Little-endian f32 bytes.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian f32 bytes.
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Waits (up to 30 s, polling every 10 ms) until `condition` holds; panics otherwise. For
/// counters that a worker updates after the client has already seen the outcome.
pub async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..3000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 30 s");
}

/// A loopback TCP proxy that can take its upstream "down": [`OutageProxy::cut`] drops every
/// connection through it and refuses new ones until [`OutageProxy::restore`];
/// [`OutageProxy::freeze`] makes it silent instead, every connection open and nothing
/// forwarded (a peer that hangs); [`OutageProxy::delay`] makes it slow, every byte forwarded
/// that much later in each direction (a distant or overloaded broker). Pointing a worker at it
/// simulates a RabbitMQ or Redis outage without stopping the shared servers other tests use in
/// parallel.
#[derive(Debug)]
pub struct OutageProxy {
    /// The address to connect to instead of the upstream.
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    frozen: tokio::sync::watch::Sender<bool>,
    latency: tokio::sync::watch::Sender<Duration>,
    accept: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, each chunk `latency` (as it is when the chunk is read) after it was
/// read: a delay, not a bandwidth limit.
async fn forward_late(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    latency: tokio::sync::watch::Receiver<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel();
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer).await {
            let when = tokio::time::Instant::now() + *latency.borrow();
            if chunks.send((when, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((when, chunk)) = due.recv().await {
            tokio::time::sleep_until(when).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl OutageProxy {
    /// A proxy in front of `upstream` (`host:port`), up.
    pub async fn start(upstream: &str) -> OutageProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = tokio::sync::watch::channel(true);
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (latency, _) = tokio::sync::watch::channel(Duration::ZERO);
        let upstream = upstream.to_owned();
        let (state, silence, slowness) = (up.clone(), frozen.clone(), latency.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut watch = state.subscribe();
                let mut frozen = silence.subscribe();
                if !*watch.borrow_and_update() {
                    drop(inbound); // down: the client sees its connection closed at once
                    continue;
                }
                let upstream = upstream.clone();
                let (up_late, down_late) = (slowness.subscribe(), slowness.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Owned here, so that a frozen connection stays open after the copying stops.
                    let (mut inbound_read, mut inbound_write) = inbound.into_split();
                    let (mut outbound_read, mut outbound_write) = outbound.into_split();
                    let copy = async {
                        tokio::join!(
                            forward_late(&mut inbound_read, &mut outbound_write, up_late),
                            forward_late(&mut outbound_read, &mut inbound_write, down_late)
                        )
                    };
                    let silent = tokio::select! {
                        _ = copy => false,
                        _ = watch.wait_for(|up| !*up) => false, // cut: drop both sides
                        _ = frozen.wait_for(|frozen| *frozen) => true,
                    };
                    if silent {
                        // Both sides stay open, nothing goes through, until the proxy is cut.
                        let _ = watch.wait_for(|up| !*up).await.map(|_| ());
                    }
                });
            }
        });
        OutageProxy {
            addr,
            up,
            frozen,
            latency,
            accept,
        }
    }

    /// `url` with its `host:port` replaced by the proxy's address, and the upstream it named.
    pub async fn in_front_of(url: &str) -> (OutageProxy, String) {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (format!("{credentials}@"), rest),
            None => (String::new(), rest),
        };
        let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
        let proxy = OutageProxy::start(host_port).await;
        let proxied = format!("{scheme}://{credentials}{}/{path}", proxy.addr);
        (proxy, proxied)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Stops forwarding on every connection, keeping them open: the peer hangs.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards every byte read from now on `latency` later, in each direction.
    pub fn delay(&self, latency: Duration) {
        self.latency.send_replace(latency);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.accept.abort();
    }
}

/// `GET path` on a worker's metrics port: the status code and the body (status 0 if nothing
/// listens there yet).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `path` until it answers `status` (up to 30 s) and returns the body.
pub async fn wait_for_status(addr: std::net::SocketAddr, path: &str, status: u16) -> String {
    let mut last = (0, String::new());
    for _ in 0..300 {
        last = http_get(addr, path).await;
        if last.0 == status {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} still answers {} after 30 s, not {status}: {}",
        last.0, last.1
    );
}
