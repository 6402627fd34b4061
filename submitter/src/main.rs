//! `dtee`: store kernels, submit jobs, wait for results.
//!
//! Exit codes: 0 the job succeeded (or the command worked, or `verify` accepted); 1 the job
//! failed (its result is printed), or `verify` rejected; 3 no result arrived before the timeout; 4 RabbitMQ or Redis failed; 64 bad input
//! (an invalid job, an unreadable file); 2 bad command-line usage.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;
use dtee_schemas::attestation::verify::{self, Policy};
use dtee_schemas::attestation::Outcome;
use dtee_schemas::job::{Limits, WasmProfile};
use dtee_schemas::protocol::Namespace;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, JobResult, JobSpec};
use dtee_submitter::builder::{self, InputSource};
use dtee_submitter::{Client, ClientConfig, ClientError};

mod args;
mod doctor;
mod explain;
mod progress;
mod secret_cmd;

use args::{BlobAction, Cli, Command, JobArgs, StateAction};
use explain::report_failure;
use progress::with_progress;

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 64, error }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        let code = match &error {
            ClientError::InvalidJob(_)
            | ClientError::NoRoute { .. }
            | ClientError::InvalidSetting(_) => 64,
            ClientError::Timeout(_) => 3,
            _ => 4,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dtee: starting the runtime: {error}");
            return ExitCode::from(4);
        }
    };
    let connection = cli.connection.clone();
    let verbose = cli.verbose;
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            report_failure(&runtime, &connection, verbose, &failure.error);
            ExitCode::from(failure.code)
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let namespace =
        Namespace::new(cli.connection.namespace.clone()).map_err(|e| usage(e.into()))?;
    let config = ClientConfig {
        amqp_url: cli.connection.amqp_url.clone(),
        redis_url: cli.connection.redis_url.clone(),
        namespace,
        tls: dtee_net::Tls::load(&cli.connection.tls).map_err(|e| usage(e.into()))?,
    };
    let (amqp_url, redis_url) = (
        dtee_schemas::cli::redact(&config.amqp_url),
        dtee_schemas::cli::redact(&config.redis_url),
    );
    Client::connect(config).await.map_err(|error| {
        let context = match &error {
            ClientError::Redis(_) => format!("connecting to redis at {redis_url}"),
            _ => format!("connecting to rabbitmq at {amqp_url}"),
        };
        let failure = Failure::from(error);
        Failure {
            code: failure.code,
            error: failure.error.context(context),
        }
    })
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Kernel {
            action: BlobAction::Put { file },
        }
        | Command::Blob {
            action: BlobAction::Put { file },
        } => {
            let bytes = read(file)?;
            let client = connect(&cli).await?;
            let (digest, _stored) = client.put_blob(&bytes).await?;
            println!("{digest}");
            client.close().await;
            Ok(0)
        }
        Command::Verify { result, policy, at } => {
            let result: JobResult = serde_json::from_slice(&read(result)?)
                .map_err(|e| usage(anyhow!("the result is not dtee.result/v1 JSON: {e}")))?;
            let policy_text = String::from_utf8(read(policy)?).map_err(|e| usage(e.into()))?;
            let policy: Policy = toml::from_str(&policy_text)
                .map_err(|e| usage(anyhow!("{}: {e}", policy_path_display(&cli))))?;
            let now = at.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            });
            let checks = verify::verify_result(&result, &policy, now);
            // A reason can quote what the result itself says (evidence text, a platform name):
            // its control characters are printed escaped, so that a result cannot move the
            // cursor or hide lines and show a verdict of its own.
            let shown = |text: &str| -> String {
                text.chars()
                    .flat_map(|c| match c.is_control() {
                        true => c.escape_default().collect::<Vec<_>>(),
                        false => vec![c],
                    })
                    .collect()
            };
            for check in &checks {
                match &check.outcome {
                    Outcome::Pass => println!("PASS  {}", check.name),
                    Outcome::Fail(why) => println!("FAIL  {}: {}", check.name, shown(why)),
                    Outcome::Skipped(why) => println!("SKIP  {}: {}", check.name, shown(why)),
                }
            }
            let accepted = verify::accepted(&checks);
            println!(
                "{}",
                if accepted {
                    "verdict: ACCEPTED"
                } else {
                    "verdict: REJECTED"
                }
            );
            Ok(if accepted { 0 } else { 1 })
        }
        Command::Cancel { job_id, ttl_secs } => {
            let id: Digest = job_id
                .parse()
                .map_err(|e: dtee_schemas::digest::DigestParseError| usage(e.into()))?;
            let client = connect(&cli).await?;
            client.cancel(&id, Duration::from_secs(*ttl_secs)).await?;
            match client.cached_result(&id).await? {
                Some(result) => eprintln!(
                    "{id} already has a final result ({:?}); it stands",
                    result.status
                ),
                None => eprintln!("{id} revoked for {ttl_secs} s (tenant {})", client.tenant()),
            }
            client.close().await;
            Ok(0)
        }
        Command::Doctor { json, no_canary } => {
            let checks = doctor::run(&cli.connection, !no_canary).await;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks).map_err(|e| usage(e.into()))?
                );
            } else {
                print!("{}", doctor::text(&checks));
            }
            Ok(if checks.iter().all(|c| c.ok) { 0 } else { 1 })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "dtee", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure {
                    code: 4,
                    error: e.into(),
                })?;
            Ok(0)
        }
        Command::Workers { output } => {
            let client = connect(&cli).await?;
            let entries = client.workers().await?;
            if output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).map_err(|e| usage(e.into()))?
                );
                client.close().await;
                return Ok(0);
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            println!(
                "{:<32} {:<9} {:<73} {:>12} {:>14}",
                "worker", "platform", "measurement", "evidence age", "last heartbeat"
            );
            let age = |ms: u64| format!("{:.0} s", now_ms.saturating_sub(ms) as f64 / 1000.0);
            for entry in &entries {
                let identity = &entry.identity;
                println!(
                    "{:<32} {:<9} {:<73} {:>12} {:>14}",
                    identity.worker_id,
                    entry.platform.as_str(),
                    identity.measurement.as_str(),
                    age(identity.evidence_created_at_unix_ms),
                    age(entry.heartbeat_at_unix_ms),
                );
            }
            client.close().await;
            Ok(0)
        }
        Command::Secret { action } => secret_cmd::run(&cli, action).await,
        Command::State { action } => {
            let key_text = match action {
                StateAction::Get { key, .. } | StateAction::Put { key, .. } => key,
            };
            let key = StateKey::parse(key_text).map_err(|e| usage(e.into()))?;
            let client = connect(&cli).await?;
            match action {
                StateAction::Get { raw: true, .. } => {
                    let (value, _) = client.state_get(&key).await?;
                    use std::io::Write as _;
                    std::io::stdout()
                        .write_all(&value.unwrap_or_default())
                        .map_err(|e| Failure {
                            code: 4,
                            error: e.into(),
                        })?;
                }
                StateAction::Get { .. } => {
                    let (value, version) = client.state_get(&key).await?;
                    let view = serde_json::json!({
                        "key": key.to_string(),
                        "exists": value.is_some(),
                        "version": version,
                        "size": value.as_ref().map_or(0, Vec::len),
                        "digest": value.as_deref().map(Digest::of),
                        "value": value.as_deref().map(dtee_schemas::job::encode_base64),
                    });
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&view).expect("serializes")
                    );
                }
                StateAction::Put { file, .. } => {
                    let bytes = read(file)?;
                    let version = client.state_put(&key, &bytes).await?;
                    println!("{key} version {version}");
                }
            }
            client.close().await;
            Ok(0)
        }
        Command::Submit(job) => {
            if job.print_job {
                return print_job(&cli, job).await;
            }
            let client = connect(&cli).await?;
            let body = job_body(Some(&client), client.tenant(), job).await?;
            let id = client.submit_json(&body).await?;
            println!("{id}");
            client.close().await;
            Ok(0)
        }
        Command::Wait {
            job_id,
            timeout,
            save_outputs,
        } => {
            let id: Digest = job_id
                .parse()
                .map_err(|e: dtee_schemas::digest::DigestParseError| usage(e.into()))?;
            let client = connect(&cli).await?;
            let result = with_progress(&id, client.wait(&id, seconds(*timeout)?)).await?;
            client.close().await;
            report(&result, save_outputs.as_deref())
        }
        Command::Run {
            job,
            timeout,
            save_outputs,
        } => {
            if job.print_job {
                return print_job(&cli, job).await;
            }
            let client = connect(&cli).await?;
            let body = job_body(Some(&client), client.tenant(), job).await?;
            // Watch before submitting, so even a very fast result is not missed.
            let waiter = client.waiter().await?;
            let parsed = dtee_schemas::parse_job(&body).map_err(|e| usage(e.into()))?;
            // The result comes through the waiter's one reply binding: no binding per job.
            let watch = waiter.watch_reply(&parsed.id).await?;
            let id = parsed.id;
            // A result already cached is the answer: the job is not published again (§9).
            if watch.is_cached() {
                eprintln!("answered from the result cache: {id}");
            } else {
                client
                    .submit_json_replying(&body, Some(waiter.reply_to()))
                    .await?;
                eprintln!("submitted {id}");
            }
            let result = with_progress(&id, watch.result(seconds(*timeout)?)).await?;
            waiter.close().await;
            client.close().await;
            report(&result, save_outputs.as_deref())
        }
    }
}

fn seconds(value: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| usage(anyhow!("--timeout {value} is not a number of seconds")))
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(usage)
}

/// The `--secret NAME[=VERSION]` buffers; a version left out is the latest, asked of the keeper
/// now and pinned in the job.
async fn secret_buffers(
    client: Option<&Client>,
    tenant: &str,
    texts: &[String],
) -> Result<Vec<dtee_schemas::job::Buffer>, Failure> {
    let mut buffers = Vec::with_capacity(texts.len());
    let mut keeper = None;
    for text in texts {
        let (name, version) = builder::parse_secret(text).map_err(|e| usage(anyhow!(e)))?;
        let version = match (version, client) {
            (Some(version), _) => version,
            (None, None) => {
                return Err(usage(anyhow!(
                    "--print-job does not ask the keeper: give --secret {name}=VERSION"
                )))
            }
            (None, Some(client)) => {
                if keeper.is_none() {
                    keeper = Some(secret_cmd::open(client.config()).await?);
                }
                let keeper = keeper.as_ref().expect("opened above");
                keeper
                    .latest_version(&name)
                    .await
                    .map_err(secret_cmd::failure)?
            }
        };
        buffers.push(builder::secret(&name, tenant, &name, version));
    }
    if let Some(keeper) = keeper {
        keeper.close().await;
    }
    Ok(buffers)
}

/// `--print-job`: the job as JSON, built from the flags without connecting or storing anything
/// (kernel and blob files are only hashed).
async fn print_job(cli: &Cli, job: &JobArgs) -> Result<u8, Failure> {
    let tenant = dtee_keeper::client::amqp_user(&cli.connection.amqp_url);
    let body = job_body(None, &tenant, job).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| "the job is not JSON")
        .map_err(usage)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("serializes")
    );
    Ok(0)
}

/// Stores `bytes` as a blob and returns their digest; without a client (`--print-job`), only
/// computes the digest.
async fn blob(client: Option<&Client>, bytes: &[u8]) -> Result<Digest, Failure> {
    match client {
        Some(client) => Ok(client.put_blob(bytes).await?.0),
        None => Ok(Digest::of(bytes)),
    }
}

/// The job's JSON text: the file as given, or a spec built from the flags (uploading the
/// kernel and blob inputs first, when there is a client).
async fn job_body(
    client: Option<&Client>,
    tenant: &str,
    job: &JobArgs,
) -> Result<Vec<u8>, Failure> {
    if let Some(path) = &job.job_file {
        return read(path);
    }
    // Refused before the kernel or any blob is stored (the whole spec is validated below).
    // clap allows only the profiles' names.
    let profile = job.profile.as_deref().and_then(WasmProfile::from_name);
    if profile == Some(WasmProfile::Fast) && job.fuel.is_some() {
        return Err(usage(anyhow!(
            "limits.fuel: the fast profile meters no fuel (leave --fuel out, or use --profile deterministic)"
        )));
    }
    let kernel = match (&job.kernel, &job.kernel_digest) {
        (Some(path), _) => blob(client, &read(path)?).await?,
        (None, Some(digest)) => digest
            .parse()
            .map_err(|e: dtee_schemas::digest::DigestParseError| usage(e.into()))?,
        (None, None) => {
            return Err(usage(anyhow!(
                "give a JOB.json, --kernel FILE or --kernel-digest DIGEST"
            )))
        }
    };
    let mut spec: JobSpec = builder::wasm_job(kernel, &job.entry);
    for text in &job.inputs {
        let input = builder::parse_input(text).map_err(|e| usage(anyhow!(e)))?;
        spec.buffers.push(match input.source {
            InputSource::Inline(bytes) => builder::inline_input(&input.name, &bytes),
            InputSource::File(path) => builder::inline_input(&input.name, &read(Path::new(&path))?),
            InputSource::Blob(digest) => builder::blob_input(&input.name, digest),
            InputSource::BlobFile(path) => {
                let digest = blob(client, &read(Path::new(&path))?).await?;
                builder::blob_input(&input.name, digest)
            }
        });
    }
    for text in &job.states {
        spec.buffers
            .push(builder::parse_state(text).map_err(|e| usage(anyhow!(e)))?);
    }
    spec.buffers
        .extend(secret_buffers(client, tenant, &job.secrets).await?);
    for text in &job.outputs {
        let (name, size) = builder::parse_output(text).map_err(|e| usage(anyhow!(e)))?;
        spec.buffers.push(builder::output(&name, size));
    }
    for text in &job.params {
        let (name, ty, value) = builder::parse_param(text).map_err(|e| usage(anyhow!(e)))?;
        spec.params.push(builder::param(&name, ty, value));
    }
    spec.limits = Limits {
        timeout_ms: job.timeout_ms,
        memory_bytes: job.memory_bytes,
        fuel: job.fuel,
        output_bytes: job.output_bytes,
    };
    spec.nonce = job.nonce.clone();
    spec.kernel.profile = profile;
    spec.validate().map_err(|e| usage(anyhow!(e)))?;
    let value = serde_json::to_value(&spec).expect("a JobSpec serializes");
    dtee_schemas::canonical::to_canonical_vec(&value).map_err(|e| usage(e.into()))
}

fn report(result: &JobResult, save_outputs: Option<&Path>) -> Result<u8, Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(result).expect("a result serializes")
    );
    if let Some(dir) = save_outputs {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .map_err(usage)?;
        // Output names are buffer names ([A-Za-z_][A-Za-z0-9_.-]*), but the result came over
        // the network: refuse, before writing anything, any name that could leave the directory.
        if let Some(bad) = result.outputs.iter().find(|output| {
            output.name.is_empty()
                || output.name.starts_with('.')
                || output.name.contains(['/', '\\', ':'])
        }) {
            return Err(Failure {
                code: 4,
                error: anyhow!("refusing to save output named {:?}", bad.name),
            });
        }
        for output in &result.outputs {
            let bytes = output.bytes().map_err(|e| Failure {
                code: 4,
                error: anyhow!("output {}: {e}", output.name),
            })?;
            let path = dir.join(&output.name);
            std::fs::write(&path, bytes)
                .with_context(|| format!("writing {}", path.display()))
                .map_err(usage)?;
        }
    }
    Ok(if result.succeeded() { 0 } else { 1 })
}

fn policy_path_display(cli: &Cli) -> String {
    match &cli.command {
        Command::Verify { policy, .. } => policy.display().to_string(),
        _ => "policy".to_owned(),
    }
}
