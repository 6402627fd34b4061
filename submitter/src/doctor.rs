//! `dtee doctor`: is this client's set-up right? Each check says ok or fail, with a hint.

use std::time::{Duration, Instant};

use dtee_schemas::cli::ConnectionArgs;
use dtee_schemas::protocol::Namespace;
use dtee_submitter::{Client, ClientConfig};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use serde::Serialize;

/// The canary's kernel: kernels/wasm/echo.wasm (its `noop` entry).
const CANARY_KERNEL: &[u8] = include_bytes!("../../kernels/wasm/echo.wasm");

/// One check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>, hint: Option<String>) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail: detail.into(),
        hint: if ok { None } else { hint },
    }
}

/// Runs every check (the canary too, unless `canary` is false).
pub async fn run(connection: &ConnectionArgs, canary: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let amqp_url = dtee_schemas::cli::redact(&connection.amqp_url);
    let redis_url = dtee_schemas::cli::redact(&connection.redis_url);
    let namespace = match Namespace::new(connection.namespace.clone()) {
        Ok(namespace) => namespace,
        Err(error) => {
            checks.push(check(
                "namespace",
                false,
                error.to_string(),
                Some("--namespace takes lowercase letters, digits, '_' and '-'".into()),
            ));
            return checks;
        }
    };

    let tls = match dtee_net::Tls::load(&connection.tls) {
        Ok(tls) => tls,
        Err(error) => {
            checks.push(check(
                "tls files",
                false,
                error.to_string(),
                Some("--tls-ca-file, --tls-cert-file and --tls-key-file name PEM files (DTEE_TLS_CA_FILE, DTEE_TLS_CERT_FILE, DTEE_TLS_KEY_FILE)".into()),
            ));
            return checks;
        }
    };

    // RabbitMQ, alone first, so that its failure is told apart from Redis's.
    match dtee_net::amqp::connect(
        &connection.amqp_url,
        lapin::ConnectionProperties::default(),
        &tls,
    )
    .await
    {
        Ok(connected) => {
            let amqp = connected.connection;
            let node = dtee_net::amqp::urls(&connection.amqp_url)[connected.node];
            let version = rabbitmq_version(node)
                .await
                .unwrap_or_else(|| "unknown version".to_owned());
            checks.push(check(
                "rabbitmq",
                true,
                format!("reachable at {amqp_url}, logged in, RabbitMQ {version}"),
                None,
            ));
            for (what, exchange, kind) in [
                (
                    "jobs exchange",
                    namespace.jobs_exchange(),
                    ExchangeKind::Topic,
                ),
                (
                    "results exchange",
                    namespace.results_exchange(),
                    ExchangeKind::Topic,
                ),
            ] {
                let exists = passive_exchange(&amqp, &exchange, kind).await;
                checks.push(check(
                    what,
                    exists,
                    format!("{exchange} {}", if exists { "exists" } else { "does not exist" }),
                    Some(format!(
                        "no worker has started in namespace {namespace}: start dtee-worker with DTEE_NAMESPACE={namespace}, or pass the namespace your workers use"
                    )),
                ));
            }
            let dead = namespace.dead_letter_queue();
            let exists = passive_queue(&amqp, &dead).await;
            checks.push(check(
                "dead-letter queue",
                exists,
                format!(
                    "{dead} {}",
                    if exists { "exists" } else { "does not exist" }
                ),
                Some("workers declare it when they start".into()),
            ));
            let _ = amqp.close(200, "doctor".into()).await;
        }
        Err(error) => checks.push(check(
            "rabbitmq",
            false,
            format!("{amqp_url}: {error}"),
            Some(format!(
                "is RabbitMQ running and reachable at {amqp_url}? (--amqp-url, DTEE_AMQP_URL)"
            )),
        )),
    }

    // Redis.
    let redis = tokio::time::timeout(
        Duration::from_secs(10),
        dtee_net::redis_conn::connect(
            &connection.redis_url,
            &tls,
            dtee_net::RedisOptions::default(),
        ),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_owned())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match redis {
        Ok(mut redis) => {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut redis).await;
            let info: Result<String, _> = redis::cmd("INFO")
                .arg("server")
                .arg("replication")
                .query_async(&mut redis)
                .await;
            let (version, role) = match &info {
                // Each node of a cluster has its own role; the client sends every read and
                // write to the primary of the key's slot.
                _ if redis.is_cluster() => ("of a Redis Cluster", "master"),
                Ok(info) => (
                    field(info, "redis_version").unwrap_or("unknown"),
                    field(info, "role").unwrap_or("unknown"),
                ),
                // The shipped submitter ACL does not allow INFO.
                Err(_) => ("not readable by this user", "not readable by this user"),
            };
            checks.push(check(
                "redis",
                pong.is_ok(),
                format!("reachable at {redis_url}, Redis {version}, role {role}"),
                Some(format!(
                    "Redis at {redis_url} does not answer PING: {:?}",
                    pong.err()
                )),
            ));
            if role != "not readable by this user" {
                checks.push(check(
                    "redis role",
                    role == "master",
                    format!("role {role}"),
                    Some("point --redis-url at the primary: results and state are written there and the waiting procedure reads there".into()),
                ));
            }
        }
        Err(error) => checks.push(check(
            "redis",
            false,
            format!("{redis_url}: {error}"),
            Some(format!(
                "is Redis running and reachable at {redis_url}? (--redis-url, DTEE_REDIS_URL)"
            )),
        )),
    }

    // The tenant, the workers and the canary need both.
    if checks
        .iter()
        .any(|c| !c.ok && (c.name == "rabbitmq" || c.name == "redis"))
    {
        return checks;
    }
    let client = match Client::connect(ClientConfig {
        amqp_url: connection.amqp_url.clone(),
        redis_url: connection.redis_url.clone(),
        namespace: namespace.clone(),
        tls: tls.clone(),
    })
    .await
    {
        Ok(client) => client,
        Err(error) => {
            checks.push(check("client", false, error.to_string(), None));
            return checks;
        }
    };
    let tenant = client.tenant().to_owned();
    let routable = dtee_schemas::state::is_routable_tenant(&tenant);
    checks.push(check(
        "tenant",
        routable,
        format!("jobs are submitted as tenant {tenant:?} (the AMQP user)"),
        Some("a dtee user name is letters, digits, '_', '@' and '-' (no '.')".into()),
    ));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match client.workers().await {
        Ok(workers) => {
            let detail = if workers.is_empty() {
                "none registered".to_owned()
            } else {
                workers
                    .iter()
                    .map(|w| {
                        format!(
                            "{} ({}; {}; evidence {} s old)",
                            w.identity.worker_id,
                            w.platform,
                            w.routing_keys.join(", "),
                            now_ms.saturating_sub(w.identity.evidence_created_at_unix_ms) / 1000
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            checks.push(check(
                "workers",
                !workers.is_empty(),
                detail,
                Some(format!("start dtee-worker with DTEE_NAMESPACE={namespace}")),
            ));
        }
        Err(error) => checks.push(check("workers", false, error.to_string(), None)),
    }
    if canary && checks.iter().all(|c| c.ok) {
        checks.push(canary_check(&client).await);
    }
    client.close().await;
    checks
}

async fn canary_check(client: &Client) -> Check {
    let started = Instant::now();
    let outcome = async {
        let (digest, _) = client.put_blob(CANARY_KERNEL).await?;
        let mut spec = dtee_submitter::builder::wasm_job(digest, "noop");
        spec.nonce = Some(format!("dtee doctor {:032x}", rand::random::<u128>()));
        let waiter = client.waiter().await?;
        let job = dtee_submitter::PreparedJob::new(&spec)?;
        let watch = waiter.watch_reply(job.id()).await?;
        client
            .submit_prepared(&job, Some(waiter.reply_to()))
            .await?;
        let result = watch.result(Duration::from_secs(30)).await;
        waiter.close().await;
        result
    }
    .await;
    match outcome {
        Ok(result) if result.succeeded() => check(
            "canary job",
            true,
            format!(
                "a noop job ran on {} and came back in {} ms",
                result
                    .execution
                    .as_ref()
                    .map_or("a worker", |e| e.worker_id.as_str()),
                started.elapsed().as_millis()
            ),
            None,
        ),
        Ok(result) => check(
            "canary job",
            false,
            format!("failed: {:?}", result.error),
            Some("see the worker's log".into()),
        ),
        Err(error) => check(
            "canary job",
            false,
            error.to_string(),
            Some("a worker for target wasm must be running in this namespace".into()),
        ),
    }
}

/// The broker's version, from the server properties of its `connection.start` (lapin does not
/// expose them): a second TCP connection sends the protocol header and reads that one frame.
async fn rabbitmq_version(url: &str) -> Option<String> {
    use amq_protocol::frame::{parse_frame, AMQPFrame};
    use amq_protocol::protocol::{connection::AMQPMethod, AMQPClass};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    if uri.scheme != lapin::uri::AMQPScheme::AMQP {
        // Read in the clear only: over TLS the version is left unknown.
        return None;
    }
    let address = (uri.authority.host.clone(), uri.authority.port);
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while bytes.len() < 1 << 16 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            bytes.extend_from_slice(&chunk[..n]);
            if let Ok((_, frame)) = parse_frame(bytes.as_slice()) {
                let AMQPFrame::Method(_, AMQPClass::Connection(AMQPMethod::Start(start))) = frame
                else {
                    return None;
                };
                return match start.server_properties.inner().get("version")? {
                    lapin::types::AMQPValue::LongString(version) => Some(version.to_string()),
                    other => Some(format!("{other:?}")),
                };
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

async fn passive_exchange(amqp: &lapin::Connection, name: &str, kind: ExchangeKind) -> bool {
    let Ok(channel) = amqp.create_channel().await else {
        return false;
    };
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let exists = channel
        .exchange_declare(name.into(), kind, passive, FieldTable::default())
        .await
        .is_ok();
    let _ = channel.close(200, "doctor".into()).await;
    exists
}

async fn passive_queue(amqp: &lapin::Connection, name: &str) -> bool {
    let Ok(channel) = amqp.create_channel().await else {
        return false;
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = channel.close(200, "doctor".into()).await;
    exists
}

/// The report for humans: a line per check, hints under failures.
pub fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out += &format!(
            "{} {:<18} {}\n",
            if c.ok { "  ok" } else { "FAIL" },
            c.name,
            c.detail
        );
        if let Some(hint) = &c.hint {
            out += &format!("     {:<18} hint: {hint}\n", "");
        }
    }
    out
}
