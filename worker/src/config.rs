//! Worker configuration. Every setting is declared once, on [`Args`]: its flag, its
//! environment variable, its default and its parser. [`Config::parse_from`] reads flags and
//! environment into one typed [`Config`]. A bad setting is reported as `NAME=value is not valid:
//! why`, named after the setting's environment variable; the binary then exits with status 64
//! (EX_USAGE).

pub(crate) mod args;

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;
use dtee_schemas::cli::{self, redact, ConnectionArgs};
use dtee_schemas::protocol::Namespace;
use dtee_schemas::result::EffectiveLimits;

pub use self::args::{Args, LogFormat};
pub use crate::backend::wasm::CompileSettings;

/// A setting that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value} is not valid: {why}")]
pub struct ConfigError {
    /// The environment variable naming the setting.
    pub name: String,
    /// The offending value.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

impl ConfigError {
    /// The bad setting behind a clap error, if one of the settings' parsers refused a value
    /// (other clap errors are usage errors: an unknown flag, a missing value, `--help`).
    pub fn from_clap(error: &clap::Error) -> Option<ConfigError> {
        std::error::Error::source(error)?
            .downcast_ref::<ConfigError>()
            .cloned()
    }
}

/// Points where the test suite can stop a worker (see `hooks.rs`). A worker built without the
/// cargo feature `test-hooks` refuses `DTEE_TEST_HOOK`.
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
    /// Panic in the job's own task, after admission, for a job whose nonce is
    /// `dtee-test-panic`, as a bug in the job path would.
    PanicInJob,
    /// Wait a second before publishing each result, as a broker slow to take them would make
    /// a worker wait.
    SlowPublish,
    /// Wait three seconds before caching a failure that is not final (after the kernel ran and
    /// before the cache is read), so that a test can change Redis meanwhile.
    SlowFailure,
}

/// The worker's typed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// AMQP URL of RabbitMQ.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// TLS material for `amqps://` and `rediss://`.
    pub tls: dtee_net::Tls,
    /// Namespace of every name the worker uses.
    pub namespace: Namespace,
    /// Targets served; one queue each.
    pub targets: Vec<String>,
    /// Kernels running at once.
    pub concurrency: usize,
    /// Threads of the async runtime (`dtee-worker` builds its runtime with this many; a worker
    /// run in another program's runtime ignores it).
    pub runtime_threads: usize,
    /// Broker prefetch (unacknowledged deliveries in flight), per consumed queue.
    pub prefetch: u16,
    /// Tenant queues consumed at most.
    pub max_tenant_queues: usize,
    /// Result cache lifetime.
    pub result_ttl: Duration,
    /// Lifetime of a failure that is not final.
    pub failure_ttl: Duration,
    /// Redis replicas that must acknowledge a job's writes before it is answered (0: none).
    pub redis_wait_replicas: u32,
    /// How long to wait for them.
    pub redis_wait_timeout: Duration,
    /// Largest job message accepted.
    pub max_job_bytes: usize,
    /// Largest kernel accepted.
    pub max_kernel_bytes: usize,
    /// Largest total of a job's inputs, counted once per listing.
    pub max_input_bytes: usize,
    /// Bytes of hot input blobs kept in memory (0: none).
    pub blob_cache_bytes: usize,
    /// Most buffers a job may list.
    pub max_buffers: usize,
    /// Most scalar parameters a job may list.
    pub max_params: usize,
    /// Largest result message published; a larger result becomes `output_limit_exceeded`.
    pub max_result_bytes: usize,
    /// Largest value a bound state key may hold after a commit; a commit that would make one
    /// larger writes nothing and the job is answered `state_value_too_large`.
    pub max_state_value_bytes: u64,
    /// Fuel of a short first run of a WebAssembly kernel on the job's task (0: none).
    pub short_run_fuel: u64,
    /// Whether short stateless jobs read their prior answers after the run (`job::late`).
    pub late_answers: bool,
    /// Compiled modules kept in memory.
    pub module_cache_size: usize,
    /// Bytes of compiled modules kept in memory.
    pub module_cache_bytes: usize,
    /// Bounds on compiling one kernel, and how many compile at once.
    pub compile: CompileSettings,
    /// Limits applied when a job does not ask for one.
    pub default_limits: EffectiveLimits,
    /// Largest limits a job may ask for.
    pub max_limits: EffectiveLimits,
    /// Largest memory limit a GPU job may ask for (device allocations, bytes).
    pub max_device_memory_bytes: u64,
    /// Whether a device host runs the jobs of different tenants one after the other, instead of
    /// a fresh host for each change of tenant (`DTEE_GPU_SHARE_HOST`).
    pub gpu_share_host: bool,
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
    /// Test hook (builds with the cargo feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub test_hook: Option<TestHook>,
    /// Stand-in GPU devices the worker finds (test builds only; set by the test suite).
    #[cfg(feature = "test-hooks")]
    pub stand_in_devices: u32,
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

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

impl Config {
    /// Parses flags (`argv` starts with the program name) and environment into a typed
    /// configuration. Like clap's `parse_from`, prints the help, the version or a usage error
    /// and exits when asked or when the command line is malformed; a bad value is returned.
    pub fn parse_from<I, T>(argv: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match Args::try_parse_from(argv) {
            Ok(args) => Config::from_args(args),
            Err(error) => Err(ConfigError::from_clap(&error).unwrap_or_else(|| error.exit())),
        }
    }

    /// The configuration from the environment (`DTEE_*`) and the defaults, without flags; for
    /// tests and embedding.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::parse_from(["dtee-worker"])
    }

    /// Checks what involves more than one setting, or a connection setting, and fills in the
    /// defaults that depend on the machine; each value was parsed on its own by [`Args`].
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let (namespace, tls) = check_connection(&args.connection)?;
        let (default_limits, max_limits) = limits(&args)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let concurrency = args.concurrency.unwrap_or(cores).min(args::MAX_CONCURRENCY);
        let prefetch = args
            .prefetch
            .unwrap_or_else(|| u16::try_from(concurrency.saturating_mul(8)).unwrap_or(u16::MAX));
        let worker_id = match args.worker_id {
            Some(worker_id) => worker_id,
            None => {
                let generated = default_worker_id();
                args::worker_id(&generated).map_err(|why| ConfigError {
                    name: Args::env_name("worker_id"),
                    value: generated.clone(),
                    why,
                })?
            }
        };
        Ok(Config {
            amqp_url: args.connection.amqp_url,
            redis_url: args.connection.redis_url,
            tls,
            namespace,
            targets: args.targets,
            concurrency,
            runtime_threads: args.runtime_threads.unwrap_or((cores / 2).max(1)),
            prefetch,
            max_tenant_queues: args.max_tenant_queues,
            result_ttl: Duration::from_secs(args.result_ttl_secs),
            failure_ttl: Duration::from_secs(args.failure_ttl_secs),
            redis_wait_replicas: args.redis_wait_replicas,
            redis_wait_timeout: Duration::from_millis(args.redis_wait_timeout_ms),
            max_job_bytes: args.max_job_bytes,
            max_kernel_bytes: args.max_kernel_bytes,
            max_input_bytes: args.max_input_bytes,
            blob_cache_bytes: args.blob_cache_bytes,
            max_buffers: args.max_buffers,
            max_params: args.max_params,
            max_result_bytes: args.max_result_bytes,
            max_state_value_bytes: args.max_state_value_bytes,
            short_run_fuel: args.short_run_fuel,
            late_answers: args.late_answers,
            module_cache_size: args.module_cache_size,
            module_cache_bytes: args.module_cache_bytes,
            compile: CompileSettings {
                timeout: Duration::from_millis(args.compile_timeout_ms),
                memory_bytes: args.compile_memory_bytes,
                concurrency: args
                    .compile_concurrency
                    .unwrap_or_else(|| (concurrency / 2).max(1)),
                // This executable, the dtee-worker binary (an in-process worker names it).
                program: Some(std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())),
            },
            default_limits,
            max_limits,
            max_device_memory_bytes: args.max_device_memory_bytes,
            gpu_share_host: args.gpu_share_host,
            delivery_limit: args.delivery_limit,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            worker_id,
            log_json: args.log_format == LogFormat::Json,
            single_tenant: args.single_tenant,
            state_max_attempts: args.state_max_attempts,
            applied_ttl: Duration::from_secs(args.applied_ttl_secs),
            #[cfg(feature = "test-hooks")]
            test_hook: args.test_hook,
            #[cfg(feature = "test-hooks")]
            stand_in_devices: 1,
            attestation: args.attestation,
            provider_settings: crate::attestation::ProviderSettings {
                tpm_tcti: args.tpm_tcti,
                tpm_pcr: args.tpm_pcr,
            },
            evidence_refresh: Duration::from_secs(args.evidence_refresh_secs),
            heartbeat: Duration::from_secs(args.heartbeat_secs),
            metrics_addr: args.metrics_addr,
        })
    }
}

/// The namespace, after checking the URLs (schemes, cluster node lists) and reading the TLS
/// files, so that a bad setting stops the worker at start-up with its name.
fn check_connection(
    connection: &ConnectionArgs,
) -> Result<(Namespace, dtee_net::Tls), ConfigError> {
    dtee_net::amqp::check(&connection.amqp_url).map_err(|why| ConfigError {
        name: cli::AMQP_URL_ENV.to_owned(),
        value: redact(&connection.amqp_url),
        why,
    })?;
    dtee_net::redis_conn::check(&connection.redis_url).map_err(|why| ConfigError {
        name: cli::REDIS_URL_ENV.to_owned(),
        value: redact(&connection.redis_url),
        why,
    })?;
    let tls = dtee_net::Tls::load(&connection.tls).map_err(|error| {
        let (name, value) = match (&error, &connection.tls.tls_ca_file) {
            (dtee_net::TlsError::HalfIdentity, _) | (_, None) => {
                (cli::TLS_CERT_FILE_ENV, connection.tls.tls_cert_file.clone())
            }
            (_, Some(ca)) => (cli::TLS_CA_FILE_ENV, Some(ca.clone())),
        };
        ConfigError {
            name: name.to_owned(),
            value: value
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            why: error.to_string(),
        }
    })?;
    let namespace = Namespace::new(connection.namespace.clone()).map_err(|error| ConfigError {
        name: cli::NAMESPACE_ENV.to_owned(),
        value: connection.namespace.clone(),
        why: error.to_string(),
    })?;
    Ok((namespace, tls))
}

/// The default and the maximum limits; no default may exceed its maximum.
fn limits(args: &Args) -> Result<(EffectiveLimits, EffectiveLimits), ConfigError> {
    let default_limits = EffectiveLimits {
        timeout_ms: args.default_timeout_ms,
        memory_bytes: args.default_memory_bytes,
        fuel: args.default_fuel,
        output_bytes: args.default_output_bytes,
    };
    let max_limits = EffectiveLimits {
        timeout_ms: args.max_timeout_ms,
        memory_bytes: args.max_memory_bytes,
        fuel: args.max_fuel,
        output_bytes: args.max_output_bytes,
    };
    for (id, default, max) in [
        (
            "default_timeout_ms",
            default_limits.timeout_ms,
            max_limits.timeout_ms,
        ),
        (
            "default_memory_bytes",
            default_limits.memory_bytes,
            max_limits.memory_bytes,
        ),
        (
            "default_memory_bytes",
            default_limits.memory_bytes,
            args.max_device_memory_bytes,
        ),
        ("default_fuel", default_limits.fuel, max_limits.fuel),
        (
            "default_output_bytes",
            default_limits.output_bytes,
            max_limits.output_bytes,
        ),
    ] {
        if default > max {
            return Err(ConfigError {
                name: Args::env_name(id),
                value: default.to_string(),
                why: format!("the default exceeds the maximum ({max})"),
            });
        }
    }
    Ok((default_limits, max_limits))
}

#[cfg(test)]
mod tests;
