//! Worker configuration: every setting has a flag, an environment variable and a default, and
//! is parsed into one typed [`Config`]. A bad setting is reported as `NAME=value is not valid:
//! why`; the binary then exits with status 64 (EX_USAGE).

use std::time::Duration;

use clap::Parser;
use dtee_schemas::protocol::{Namespace, DEFAULT_DELIVERY_LIMIT};
use dtee_schemas::result::EffectiveLimits;

/// A setting that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value} is not valid: {why}")]
pub struct ConfigError {
    /// The environment variable naming the setting.
    pub name: &'static str,
    /// The offending value.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

/// Command-line flags; each falls back to its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtee-worker",
    version,
    about = "Runs dtee kernel jobs from RabbitMQ under hard limits"
)]
pub struct Args {
    /// AMQP URL of RabbitMQ.
    #[arg(
        long,
        env = "DTEE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "DTEE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    /// Namespace of exchanges, queues and Redis keys.
    #[arg(long, env = "DTEE_NAMESPACE", default_value = "dtee")]
    pub namespace: String,
    /// Comma-separated targets to serve (queues to consume).
    #[arg(long, env = "DTEE_TARGETS", default_value = "wasm")]
    pub targets: String,
    /// Kernels running at once (default: the number of cores).
    #[arg(long, env = "DTEE_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// Unacknowledged deliveries the broker may push to this worker (default: 8 per kernel slot).
    #[arg(long, env = "DTEE_PREFETCH")]
    pub prefetch: Option<String>,
    /// Result cache lifetime in seconds.
    #[arg(long, env = "DTEE_RESULT_TTL_SECS", default_value = "86400")]
    pub result_ttl_secs: String,
    /// Lifetime, in seconds, of a failure that is not final (kernel_not_found, ...).
    #[arg(long, env = "DTEE_FAILURE_TTL_SECS", default_value = "60")]
    pub failure_ttl_secs: String,
    /// Largest job message accepted, in bytes.
    #[arg(long, env = "DTEE_MAX_JOB_BYTES", default_value = "16777216")]
    pub max_job_bytes: String,
    /// Largest kernel accepted, in bytes.
    #[arg(long, env = "DTEE_MAX_KERNEL_BYTES", default_value = "67108864")]
    pub max_kernel_bytes: String,
    /// Largest result message published, in bytes: at most the broker's `max_message_size`
    /// (128 MiB by default on RabbitMQ 3.x, 16 MiB on 4.x).
    #[arg(long, env = "DTEE_MAX_RESULT_BYTES", default_value = "134217728")]
    pub max_result_bytes: String,
    /// Compiled modules kept in memory.
    #[arg(long, env = "DTEE_MODULE_CACHE_SIZE", default_value = "128")]
    pub module_cache_size: String,
    /// Default wall-clock limit, milliseconds.
    #[arg(long, env = "DTEE_DEFAULT_TIMEOUT_MS", default_value = "10000")]
    pub default_timeout_ms: String,
    /// Largest wall-clock limit a job may ask for, milliseconds.
    #[arg(long, env = "DTEE_MAX_TIMEOUT_MS", default_value = "300000")]
    pub max_timeout_ms: String,
    /// Default memory limit, bytes.
    #[arg(long, env = "DTEE_DEFAULT_MEMORY_BYTES", default_value = "67108864")]
    pub default_memory_bytes: String,
    /// Largest memory limit a job may ask for, bytes.
    #[arg(long, env = "DTEE_MAX_MEMORY_BYTES", default_value = "1073741824")]
    pub max_memory_bytes: String,
    /// Default fuel.
    #[arg(long, env = "DTEE_DEFAULT_FUEL", default_value = "10000000000")]
    pub default_fuel: String,
    /// Largest fuel a job may ask for.
    #[arg(long, env = "DTEE_MAX_FUEL", default_value = "1000000000000")]
    pub max_fuel: String,
    /// Default output limit, bytes.
    #[arg(long, env = "DTEE_DEFAULT_OUTPUT_BYTES", default_value = "16777216")]
    pub default_output_bytes: String,
    /// Largest output limit a job may ask for, bytes.
    #[arg(long, env = "DTEE_MAX_OUTPUT_BYTES", default_value = "67108864")]
    pub max_output_bytes: String,
    /// Delivery limit of the quorum job queues this worker declares.
    #[arg(long, env = "DTEE_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT.to_string())]
    pub delivery_limit: String,
    /// Seconds in-flight jobs get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "DTEE_SHUTDOWN_GRACE_SECS", default_value = "30")]
    pub shutdown_grace_secs: String,
    /// Worker id (default: host name and a random suffix).
    #[arg(long, env = "DTEE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Serve a single tenant: every job belongs to it, whatever its user_id (otherwise the
    /// tenant is the AMQP user_id, and a job without one is refused).
    #[arg(long, env = "DTEE_SINGLE_TENANT")]
    pub single_tenant: Option<String>,
    /// Runs of a job whose bound state keeps changing, before it fails with state_conflict.
    #[arg(long, env = "DTEE_STATE_MAX_ATTEMPTS", default_value = "100")]
    pub state_max_attempts: String,
    /// Seconds a job's applied record (exactly-once guard and first result) is kept.
    #[arg(long, env = "DTEE_APPLIED_TTL_SECS", default_value = "604800")]
    pub applied_ttl_secs: String,
    /// Test hook, for the test suite only: `pause-after-commit`, `stall-consumer`.
    #[arg(long, env = "DTEE_TEST_HOOK", hide = true)]
    pub test_hook: Option<String>,
    /// Attestation provider: snp, tpm, software or auto (the strongest available).
    #[arg(long, env = "DTEE_ATTESTATION", default_value = "auto")]
    pub attestation: String,
    /// TPM TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.
    #[arg(long, env = "DTEE_TPM_TCTI", default_value = "device:/dev/tpmrm0")]
    pub tpm_tcti: String,
    /// PCR the worker extends with its measurement (23: resettable, for applications).
    #[arg(long, env = "DTEE_TPM_PCR", default_value = "23")]
    pub tpm_pcr: String,
    /// Seconds between evidence refreshes.
    #[arg(long, env = "DTEE_EVIDENCE_REFRESH_SECS", default_value = "300")]
    pub evidence_refresh_secs: String,
    /// Seconds between registry heartbeats (the entry lives three heartbeats).
    #[arg(long, env = "DTEE_HEARTBEAT_SECS", default_value = "10")]
    pub heartbeat_secs: String,
    /// Address for /metrics, /healthz and /readyz (e.g. 0.0.0.0:9464); none by default.
    #[arg(long, env = "DTEE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "DTEE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Points where the test suite can stop a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// Block forever right after a state commit, before the result is cached, published and
    /// acked (the test then kills the process).
    PauseAfterCommit,
    /// Stop taking deliveries from the consumer (while the loop keeps running), as a consumer
    /// that silently stopped receiving would.
    StallConsumer,
    /// Panic on the kernel's thread instead of running the kernel, as a bug in the worker or
    /// in Wasmtime would.
    PanicInKernel,
}

/// The worker's typed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// AMQP URL of RabbitMQ.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Namespace of every name the worker uses.
    pub namespace: Namespace,
    /// Targets served; one queue each.
    pub targets: Vec<String>,
    /// Kernels running at once.
    pub concurrency: usize,
    /// Broker prefetch (unacknowledged deliveries in flight).
    pub prefetch: u16,
    /// Result cache lifetime.
    pub result_ttl: Duration,
    /// Lifetime of a failure that is not final.
    pub failure_ttl: Duration,
    /// Largest job message accepted.
    pub max_job_bytes: usize,
    /// Largest kernel accepted.
    pub max_kernel_bytes: usize,
    /// Largest result message published; a larger result becomes `output_limit_exceeded`.
    pub max_result_bytes: usize,
    /// Compiled modules kept in memory.
    pub module_cache_size: usize,
    /// Limits applied when a job does not ask for one.
    pub default_limits: EffectiveLimits,
    /// Largest limits a job may ask for.
    pub max_limits: EffectiveLimits,
    /// Delivery limit of declared job queues.
    pub delivery_limit: u32,
    /// Time in-flight jobs get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// This worker's id.
    pub worker_id: String,
    /// Emit logs as JSON lines.
    pub log_json: bool,
    /// The single tenant, if the worker serves one.
    pub single_tenant: Option<String>,
    /// Runs of a job on conflicting state before `state_conflict`.
    pub state_max_attempts: u32,
    /// Lifetime of applied records.
    pub applied_ttl: Duration,
    /// Test hook.
    pub test_hook: Option<TestHook>,
    /// Attestation provider.
    pub attestation: crate::attestation::ProviderChoice,
    /// TPM settings.
    pub provider_settings: crate::attestation::ProviderSettings,
    /// Evidence refresh period.
    pub evidence_refresh: Duration,
    /// Registry heartbeat period.
    pub heartbeat: Duration,
    /// Where to serve metrics and health.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn number<T>(name: &'static str, value: &str, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let error = |why: String| ConfigError {
        name,
        value: value.to_owned(),
        why,
    };
    let parsed: T = value
        .trim()
        .parse()
        .map_err(|_| error("expected a whole number".to_owned()))?;
    if parsed < min {
        return Err(error(format!("must be at least {min}")));
    }
    Ok(parsed)
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

impl Config {
    /// Parses flags and environment into a typed configuration.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        // lapin and redis are built without TLS: refuse TLS URLs rather than connect in the clear.
        if args.amqp_url.starts_with("amqps://") {
            return Err(ConfigError {
                name: "DTEE_AMQP_URL",
                value: crate::redact(&args.amqp_url),
                why: "TLS (amqps://) is not built into this worker; use amqp:// on a trusted network or a TLS-terminating proxy".to_owned(),
            });
        }
        if args.redis_url.starts_with("rediss://") {
            return Err(ConfigError {
                name: "DTEE_REDIS_URL",
                value: crate::redact(&args.redis_url),
                why: "TLS (rediss://) is not built into this worker; use redis:// on a trusted network or a TLS-terminating proxy".to_owned(),
            });
        }
        let namespace = Namespace::new(args.namespace.clone()).map_err(|error| ConfigError {
            name: "DTEE_NAMESPACE",
            value: args.namespace.clone(),
            why: error.to_string(),
        })?;
        let mut targets = Vec::new();
        for target in args
            .targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if !dtee_schemas::job::is_valid_target(target) {
                return Err(ConfigError {
                    name: "DTEE_TARGETS",
                    value: args.targets.clone(),
                    why: format!("{target:?} is not a valid target"),
                });
            }
            if target != "wasm" {
                return Err(ConfigError {
                    name: "DTEE_TARGETS",
                    value: args.targets.clone(),
                    why: format!(
                        "this worker has no backend for target {target:?} (it serves: wasm)"
                    ),
                });
            }
            targets.push(target.to_owned());
        }
        if targets.is_empty() {
            return Err(ConfigError {
                name: "DTEE_TARGETS",
                value: args.targets.clone(),
                why: "needs at least one target".to_owned(),
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let concurrency = match &args.concurrency {
            Some(value) => number("DTEE_CONCURRENCY", value, 1usize)?,
            None => cores,
        };
        let prefetch = match &args.prefetch {
            Some(value) => number("DTEE_PREFETCH", value, 1u16)?,
            None => u16::try_from(concurrency.saturating_mul(8)).unwrap_or(u16::MAX),
        };
        let default_limits = EffectiveLimits {
            timeout_ms: number("DTEE_DEFAULT_TIMEOUT_MS", &args.default_timeout_ms, 1)?,
            memory_bytes: number(
                "DTEE_DEFAULT_MEMORY_BYTES",
                &args.default_memory_bytes,
                65536,
            )?,
            fuel: number("DTEE_DEFAULT_FUEL", &args.default_fuel, 1)?,
            output_bytes: number("DTEE_DEFAULT_OUTPUT_BYTES", &args.default_output_bytes, 1)?,
        };
        let max_limits = EffectiveLimits {
            timeout_ms: number("DTEE_MAX_TIMEOUT_MS", &args.max_timeout_ms, 1)?,
            memory_bytes: number("DTEE_MAX_MEMORY_BYTES", &args.max_memory_bytes, 65536)?,
            fuel: number("DTEE_MAX_FUEL", &args.max_fuel, 1)?,
            output_bytes: number("DTEE_MAX_OUTPUT_BYTES", &args.max_output_bytes, 1)?,
        };
        for (name, value, default, max) in [
            (
                "DTEE_DEFAULT_TIMEOUT_MS",
                &args.default_timeout_ms,
                default_limits.timeout_ms,
                max_limits.timeout_ms,
            ),
            (
                "DTEE_DEFAULT_MEMORY_BYTES",
                &args.default_memory_bytes,
                default_limits.memory_bytes,
                max_limits.memory_bytes,
            ),
            (
                "DTEE_DEFAULT_FUEL",
                &args.default_fuel,
                default_limits.fuel,
                max_limits.fuel,
            ),
            (
                "DTEE_DEFAULT_OUTPUT_BYTES",
                &args.default_output_bytes,
                default_limits.output_bytes,
                max_limits.output_bytes,
            ),
        ] {
            if default > max {
                return Err(ConfigError {
                    name,
                    value: value.clone(),
                    why: format!("the default exceeds the maximum ({max})"),
                });
            }
        }
        if max_limits.memory_bytes > 4 << 30 {
            return Err(ConfigError {
                name: "DTEE_MAX_MEMORY_BYTES",
                value: args.max_memory_bytes.clone(),
                why: "a 32-bit WebAssembly memory cannot exceed 4 GiB".to_owned(),
            });
        }
        let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
        if worker_id.is_empty()
            || worker_id.len() > 128
            || worker_id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError {
                name: "DTEE_WORKER_ID",
                value: worker_id,
                why: "must be 1 to 128 printable characters without spaces".to_owned(),
            });
        }
        let log_json = match args.log_format.as_str() {
            "text" => false,
            "json" => true,
            _ => {
                return Err(ConfigError {
                    name: "DTEE_LOG_FORMAT",
                    value: args.log_format.clone(),
                    why: "expected text or json".to_owned(),
                })
            }
        };
        if let Some(tenant) = &args.single_tenant {
            if !dtee_schemas::state::is_valid_tenant(tenant) {
                return Err(ConfigError {
                    name: "DTEE_SINGLE_TENANT",
                    value: tenant.clone(),
                    why: "a tenant is 1 to 64 letters, digits, '_', '.', '@', '-'".to_owned(),
                });
            }
        }
        let test_hook = match args.test_hook.as_deref() {
            None | Some("") => None,
            Some("pause-after-commit") => Some(TestHook::PauseAfterCommit),
            Some("stall-consumer") => Some(TestHook::StallConsumer),
            Some("panic-in-kernel") => Some(TestHook::PanicInKernel),
            Some(other) => {
                return Err(ConfigError {
                    name: "DTEE_TEST_HOOK",
                    value: other.to_owned(),
                    why: "hooks: pause-after-commit, stall-consumer, panic-in-kernel".to_owned(),
                })
            }
        };
        let attestation = args.attestation.parse().map_err(|why| ConfigError {
            name: "DTEE_ATTESTATION",
            value: args.attestation.clone(),
            why,
        })?;
        let tpm_pcr: u32 = number("DTEE_TPM_PCR", &args.tpm_pcr, 0)?;
        if tpm_pcr > 23 {
            return Err(ConfigError {
                name: "DTEE_TPM_PCR",
                value: args.tpm_pcr.clone(),
                why: "PCRs are 0 to 23".to_owned(),
            });
        }
        let metrics_addr = match args.metrics_addr.as_deref() {
            None | Some("") => None,
            Some(text) => Some(text.parse().map_err(|_| ConfigError {
                name: "DTEE_METRICS_ADDR",
                value: text.to_owned(),
                why: "expected HOST:PORT, e.g. 0.0.0.0:9464".to_owned(),
            })?),
        };
        Ok(Config {
            metrics_addr,
            attestation,
            provider_settings: crate::attestation::ProviderSettings {
                tpm_tcti: args.tpm_tcti.clone(),
                tpm_pcr,
            },
            evidence_refresh: Duration::from_secs(number(
                "DTEE_EVIDENCE_REFRESH_SECS",
                &args.evidence_refresh_secs,
                1,
            )?),
            heartbeat: Duration::from_secs(number("DTEE_HEARTBEAT_SECS", &args.heartbeat_secs, 1)?),
            single_tenant: args.single_tenant.clone(),
            state_max_attempts: number("DTEE_STATE_MAX_ATTEMPTS", &args.state_max_attempts, 1)?,
            applied_ttl: Duration::from_secs(number(
                "DTEE_APPLIED_TTL_SECS",
                &args.applied_ttl_secs,
                1,
            )?),
            test_hook,
            amqp_url: args.amqp_url,
            redis_url: args.redis_url,
            namespace,
            targets,
            concurrency,
            prefetch,
            result_ttl: Duration::from_secs(number(
                "DTEE_RESULT_TTL_SECS",
                &args.result_ttl_secs,
                1,
            )?),
            failure_ttl: Duration::from_secs(number(
                "DTEE_FAILURE_TTL_SECS",
                &args.failure_ttl_secs,
                1,
            )?),
            max_job_bytes: number("DTEE_MAX_JOB_BYTES", &args.max_job_bytes, 1024)?,
            max_kernel_bytes: number("DTEE_MAX_KERNEL_BYTES", &args.max_kernel_bytes, 8)?,
            max_result_bytes: number("DTEE_MAX_RESULT_BYTES", &args.max_result_bytes, 4096)?,
            module_cache_size: number("DTEE_MODULE_CACHE_SIZE", &args.module_cache_size, 1)?,
            default_limits,
            max_limits,
            delivery_limit: number("DTEE_DELIVERY_LIMIT", &args.delivery_limit, 1)?,
            shutdown_grace: Duration::from_secs(number(
                "DTEE_SHUTDOWN_GRACE_SECS",
                &args.shutdown_grace_secs,
                0,
            )?),
            worker_id,
            log_json,
        })
    }

    /// The configuration from the environment (`DTEE_*`) and the defaults, without flags; for
    /// tests and embedding.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_args(Args::parse_from(["dtee-worker"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["dtee-worker"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn bad_settings_name_the_variable_and_the_value() {
        let error = parse(&["--concurrency", "many"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "DTEE_CONCURRENCY=many is not valid: expected a whole number"
        );
        let error = parse(&["--prefetch", "0"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "DTEE_PREFETCH=0 is not valid: must be at least 1"
        );
        let error = parse(&["--default-fuel", "5", "--max-fuel", "4"]).unwrap_err();
        assert_eq!(error.name, "DTEE_DEFAULT_FUEL");
        let error = parse(&["--targets", "hip.gfx90a"]).unwrap_err();
        assert_eq!(error.name, "DTEE_TARGETS");
        let error = parse(&["--namespace", "Bad.Name"]).unwrap_err();
        assert_eq!(error.name, "DTEE_NAMESPACE");
        let error = parse(&["--amqp-url", "amqps://user:secret@host/%2f"]).unwrap_err();
        assert_eq!(error.name, "DTEE_AMQP_URL");
        assert!(
            !error.to_string().contains("secret"),
            "passwords are not echoed"
        );
    }

    #[test]
    fn defaults_are_consistent() {
        let config = parse(&[]).unwrap();
        assert!(config.concurrency >= 1);
        assert_eq!(config.prefetch as usize, config.concurrency * 8);
        assert_eq!(config.targets, vec!["wasm".to_owned()]);
    }
}
