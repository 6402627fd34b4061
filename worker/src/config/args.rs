//! The worker's settings, each declared once: its flag, its environment variable, its default
//! and its parser. A parser's error becomes a [`ConfigError`] named after the setting's
//! environment variable, read from the argument itself.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::builder::TypedValueParser;
use clap::{Arg, Command, CommandFactory, Parser};
use dtee_schemas::cli::ConnectionArgs;
use dtee_schemas::protocol::DEFAULT_DELIVERY_LIMIT;

use super::{ConfigError, TestHook};
use crate::attestation::ProviderChoice;

// A field whose type is written `::std::vec::Vec` or `::std::option::Option` is one value for
// clap (not a repeated or an optional flag): its parser makes the list, or reads an empty value
// as unset. (Not a doc comment: clap would print it in `--help`.)
/// Command-line flags; each falls back to its environment variable, then to its default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtee-worker",
    version,
    about = "Runs dtee kernel jobs from RabbitMQ under hard limits"
)]
pub struct Args {
    /// RabbitMQ, Redis and the namespace (`DTEE_AMQP_URL`, `DTEE_REDIS_URL`, `DTEE_NAMESPACE`).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Comma-separated targets to serve (queues to consume): `wasm`, `cuda`, `hip.<gfx arch>`;
    /// `auto` serves wasm and every GPU target this machine's devices serve.
    #[arg(long, env = "DTEE_TARGETS", default_value = "auto")]
    #[arg(value_parser = setting(targets))]
    pub targets: ::std::vec::Vec<String>,
    /// Kernels running at once (default: the number of cores; at most 1024: each slot reserves
    /// about 4 GiB of address space for a kernel's linear memory in each of the two wasm
    /// profiles' instance pools).
    #[arg(long, env = "DTEE_CONCURRENCY")]
    #[arg(value_parser = setting(concurrency))]
    pub concurrency: Option<usize>,
    /// Threads of the async runtime, which receives, checks, signs and publishes jobs (kernels
    /// run on threads of their own). Default: half the cores, at least 1.
    #[arg(long, env = "DTEE_RUNTIME_THREADS")]
    #[arg(value_parser = setting(runtime_threads))]
    pub runtime_threads: Option<usize>,
    /// Unacknowledged deliveries the broker may push to this worker (default: 8 per kernel slot).
    #[arg(long, env = "DTEE_PREFETCH")]
    #[arg(value_parser = at_least(1u16))]
    pub prefetch: Option<u16>,
    /// Tenant queues this worker consumes at most; further tenants are served from the shared
    /// queues. Each consumed queue may hold up to the prefetch in flight here.
    #[arg(long, env = "DTEE_MAX_TENANT_QUEUES", default_value = "1000")]
    #[arg(value_parser = at_least(0usize))]
    pub max_tenant_queues: usize,
    /// Result cache lifetime in seconds.
    #[arg(long, env = "DTEE_RESULT_TTL_SECS", default_value = "86400")]
    #[arg(value_parser = setting(ttl_secs))]
    pub result_ttl_secs: u64,
    /// Redis replicas that must hold a job's writes (its state commit and cached result) before
    /// the result is published and the job acked (Redis `WAIT`; on a cluster, every primary's
    /// replicas). 0: do not wait (Redis replication is asynchronous: a primary that crashes can
    /// lose its last writes).
    #[arg(long, env = "DTEE_REDIS_WAIT_REPLICAS", default_value = "0")]
    #[arg(value_parser = at_least(0u32))]
    pub redis_wait_replicas: u32,
    /// How long, in milliseconds, to wait for those replicas; a job whose writes they have not
    /// acknowledged by then is retried with backoff, and not answered.
    #[arg(long, env = "DTEE_REDIS_WAIT_TIMEOUT_MS", default_value = "1000")]
    #[arg(value_parser = whole_ms_under_response_timeout)]
    pub redis_wait_timeout_ms: u64,
    /// Lifetime, in seconds, of a failure that is not final (kernel_not_found, ...).
    #[arg(long, env = "DTEE_FAILURE_TTL_SECS", default_value = "60")]
    #[arg(value_parser = setting(ttl_secs))]
    pub failure_ttl_secs: u64,
    /// Largest job message accepted, in bytes.
    #[arg(long, env = "DTEE_MAX_JOB_BYTES", default_value = "16777216")]
    #[arg(value_parser = at_least(1024usize))]
    pub max_job_bytes: usize,
    /// Largest kernel accepted, in bytes.
    #[arg(long, env = "DTEE_MAX_KERNEL_BYTES", default_value = "67108864")]
    #[arg(value_parser = at_least(8usize))]
    pub max_kernel_bytes: usize,
    /// Largest total of a job's inputs, inline and blob, in bytes; a blob listed twice counts
    /// twice. Also, separately, the largest total of the state values a job reads.
    #[arg(long, env = "DTEE_MAX_INPUT_BYTES", default_value = "268435456")]
    #[arg(value_parser = at_least(1usize))]
    pub max_input_bytes: usize,
    /// Bytes of input blobs kept in memory by digest, so that inputs many jobs read are not
    /// fetched per job (0 turns the cache off); a blob over a quarter of it is not kept.
    /// Shared fairly by tenants, like the module cache.
    #[arg(long, env = "DTEE_BLOB_CACHE_BYTES", default_value = "67108864")]
    pub blob_cache_bytes: usize,
    /// Most buffers (inputs, outputs and state) a job may list.
    #[arg(long, env = "DTEE_MAX_BUFFERS", default_value = "64")]
    #[arg(value_parser = at_least(1usize))]
    pub max_buffers: usize,
    /// Most scalar parameters a job may list.
    #[arg(long, env = "DTEE_MAX_PARAMS", default_value = "64")]
    #[arg(value_parser = at_least(1usize))]
    pub max_params: usize,
    /// Largest result message published, in bytes: at most the broker's `max_message_size`
    /// (128 MiB by default on RabbitMQ 3.x, 16 MiB on 4.x).
    #[arg(long, env = "DTEE_MAX_RESULT_BYTES", default_value = "134217728")]
    #[arg(value_parser = at_least(4096usize))]
    pub max_result_bytes: usize,
    /// Largest value a bound state key may hold after a commit, in bytes: at most Redis's
    /// `proto-max-bulk-len` (512 MiB by default), which the worker also reads at start.
    #[arg(long, env = "DTEE_MAX_STATE_VALUE_BYTES", default_value = "536870912")]
    #[arg(value_parser = at_least(1u64))]
    pub max_state_value_bytes: u64,
    /// Fuel a WebAssembly kernel may use in a short first run on the job's own task, before it
    /// is run again, from the start, on a blocking thread (0: every kernel on a blocking thread).
    #[arg(long, env = "DTEE_SHORT_RUN_FUEL", default_value = "2000000")]
    pub short_run_fuel: u64,
    /// Whether a stateless job without secrets whose kernel is compiled here and known to
    /// finish in a short run runs before its cached result and revocation are read, which are
    /// then read in the round trip that caches its result (one round trip instead of two; the
    /// run is discarded when either answers).
    #[arg(
        long,
        env = "DTEE_LATE_ANSWERS",
        action = clap::ArgAction::Set,
        default_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub late_answers: bool,
    /// Compiled modules kept in memory, for each wasm profile (`deterministic`, `fast`).
    #[arg(long, env = "DTEE_MODULE_CACHE_SIZE", default_value = "128")]
    #[arg(value_parser = at_least(1usize))]
    pub module_cache_size: usize,
    /// Bytes of compiled code and data the module cache keeps, for each wasm profile (shared
    /// fairly by tenants: room comes from those holding the most, least recently used first).
    #[arg(long, env = "DTEE_MODULE_CACHE_BYTES", default_value = "536870912")]
    #[arg(value_parser = at_least(1usize))]
    pub module_cache_bytes: usize,
    /// Wall-clock time one kernel compilation may take, milliseconds (the compiler is a child
    /// process, killed at this deadline).
    #[arg(long, env = "DTEE_COMPILE_TIMEOUT_MS", default_value = "10000")]
    #[arg(value_parser = at_least(1u64))]
    pub compile_timeout_ms: u64,
    /// Address space one kernel compilation may use, bytes (the compiler's RLIMIT_AS).
    #[arg(long, env = "DTEE_COMPILE_MEMORY_BYTES", default_value = "2147483648")]
    #[arg(value_parser = at_least(67108864u64))]
    pub compile_memory_bytes: u64,
    /// Kernel compilations running at once (default: half the kernel slots, at least 1).
    #[arg(long, env = "DTEE_COMPILE_CONCURRENCY")]
    #[arg(value_parser = at_least(1usize))]
    pub compile_concurrency: Option<usize>,
    /// Default wall-clock limit, milliseconds.
    #[arg(long, env = "DTEE_DEFAULT_TIMEOUT_MS", default_value = "10000")]
    #[arg(value_parser = at_least(1u64))]
    pub default_timeout_ms: u64,
    /// Largest wall-clock limit a job may ask for, milliseconds.
    #[arg(long, env = "DTEE_MAX_TIMEOUT_MS", default_value = "300000")]
    #[arg(value_parser = at_least(1u64))]
    pub max_timeout_ms: u64,
    /// Default memory limit, bytes.
    #[arg(long, env = "DTEE_DEFAULT_MEMORY_BYTES", default_value = "67108864")]
    #[arg(value_parser = at_least(65536u64))]
    pub default_memory_bytes: u64,
    /// Largest memory limit a job may ask for, bytes.
    #[arg(long, env = "DTEE_MAX_MEMORY_BYTES", default_value = "1073741824")]
    #[arg(value_parser = setting(max_memory_bytes))]
    pub max_memory_bytes: u64,
    /// Largest memory limit a GPU job may ask for, bytes: the sum of its device allocations.
    /// Not bound by WebAssembly's 4 GiB; each device's own memory still bounds it.
    #[arg(
        long,
        env = "DTEE_MAX_DEVICE_MEMORY_BYTES",
        default_value = "17179869184"
    )]
    #[arg(value_parser = at_least(65536u64))]
    pub max_device_memory_bytes: u64,
    /// Lets one device host (and its GPU context) run the jobs of different tenants one after
    /// the other. By default a job of another tenant than the last gets a fresh host: memory
    /// the driver reuses between launches in one context (a kernel's local memory, AMD's
    /// scratch) is never cleared, so a kernel could read what the last tenant's left there.
    /// Set `true` for pools whose tenants trust each other: it saves a context creation per
    /// change of tenant.
    #[arg(
        long,
        env = "DTEE_GPU_SHARE_HOST",
        action = clap::ArgAction::Set,
        default_value = "false",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub gpu_share_host: bool,
    /// Default fuel.
    #[arg(long, env = "DTEE_DEFAULT_FUEL", default_value = "10000000000")]
    #[arg(value_parser = at_least(1u64))]
    pub default_fuel: u64,
    /// Largest fuel a job may ask for.
    #[arg(long, env = "DTEE_MAX_FUEL", default_value = "1000000000000")]
    #[arg(value_parser = at_least(1u64))]
    pub max_fuel: u64,
    /// Default output limit, bytes.
    #[arg(long, env = "DTEE_DEFAULT_OUTPUT_BYTES", default_value = "16777216")]
    #[arg(value_parser = at_least(1u64))]
    pub default_output_bytes: u64,
    /// Largest output limit a job may ask for, bytes.
    #[arg(long, env = "DTEE_MAX_OUTPUT_BYTES", default_value = "67108864")]
    #[arg(value_parser = at_least(1u64))]
    pub max_output_bytes: u64,
    /// Delivery limit of the quorum job queues this worker declares.
    #[arg(long, env = "DTEE_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    #[arg(value_parser = at_least(1u32))]
    pub delivery_limit: u32,
    /// Seconds in-flight jobs get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "DTEE_SHUTDOWN_GRACE_SECS", default_value = "30")]
    #[arg(value_parser = at_least(0u64))]
    pub shutdown_grace_secs: u64,
    /// Worker id (default: host name and a random suffix).
    #[arg(long, env = "DTEE_WORKER_ID")]
    #[arg(value_parser = setting(worker_id))]
    pub worker_id: Option<String>,
    /// Serve a single tenant: every job belongs to it, whatever its user_id (otherwise the
    /// tenant is the AMQP user_id, and a job without one is refused).
    #[arg(long, env = "DTEE_SINGLE_TENANT")]
    #[arg(value_parser = setting(single_tenant))]
    pub single_tenant: Option<String>,
    /// Runs of a job whose bound state keeps changing, before it fails with state_conflict.
    #[arg(long, env = "DTEE_STATE_MAX_ATTEMPTS", default_value = "100")]
    #[arg(value_parser = at_least(1u32))]
    pub state_max_attempts: u32,
    /// Seconds a job's applied record (exactly-once guard and first result) is kept.
    #[arg(long, env = "DTEE_APPLIED_TTL_SECS", default_value = "604800")]
    #[arg(value_parser = setting(ttl_secs))]
    pub applied_ttl_secs: u64,
    /// Test hook, for the test suite only (see `TestHook`).
    #[arg(long, env = "DTEE_TEST_HOOK", hide = true, default_value = "")]
    #[arg(value_parser = setting(test_hook))]
    pub test_hook: ::std::option::Option<TestHook>,
    /// Attestation provider: snp, tpm, software or auto (the strongest available).
    #[arg(long, env = "DTEE_ATTESTATION", default_value = "auto")]
    #[arg(value_parser = setting(str::parse::<ProviderChoice>))]
    pub attestation: ProviderChoice,
    /// TPM TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.
    #[arg(long, env = "DTEE_TPM_TCTI", default_value = "device:/dev/tpmrm0")]
    pub tpm_tcti: String,
    /// PCR the worker extends with its measurement (23: resettable, for applications; 16 also
    /// works, and verifiers' policies then need `measurement_pcr = 16`).
    #[arg(long, env = "DTEE_TPM_PCR", default_value_t = dtee_schemas::attestation::tpm::DEFAULT_MEASUREMENT_PCR)]
    #[arg(value_parser = setting(tpm_pcr))]
    pub tpm_pcr: u32,
    /// Seconds between evidence refreshes.
    #[arg(long, env = "DTEE_EVIDENCE_REFRESH_SECS", default_value = "300")]
    #[arg(value_parser = at_least(1u64))]
    pub evidence_refresh_secs: u64,
    /// Seconds between registry heartbeats (the entry lives three heartbeats).
    #[arg(long, env = "DTEE_HEARTBEAT_SECS", default_value = "10")]
    #[arg(value_parser = at_least(1u64))]
    pub heartbeat_secs: u64,
    /// Address for /metrics, /healthz and /readyz (e.g. 0.0.0.0:9464); none by default.
    #[arg(
        long,
        env = "DTEE_METRICS_ADDR",
        default_value = "",
        hide_default_value = true
    )]
    #[arg(value_parser = setting(metrics_addr))]
    pub metrics_addr: ::std::option::Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "DTEE_LOG_FORMAT", default_value = "text")]
    #[arg(value_parser = setting(log_format))]
    pub log_format: LogFormat,
}

impl Args {
    /// The environment variable of the setting held in field `id`, for errors that involve
    /// more than one setting.
    pub(crate) fn env_name(id: &str) -> String {
        Args::command()
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(Arg::get_env)
            .map_or_else(|| id.to_owned(), |name| name.to_string_lossy().into_owned())
    }
}

/// How the worker writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Turns a setting's text into its value, or says why it cannot.
type Parse<T> = dyn Fn(&str) -> Result<T, String> + Send + Sync;

/// The value parser of one setting.
#[derive(Clone)]
struct Setting<T>(Arc<Parse<T>>);

fn setting<T>(parse: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static) -> Setting<T> {
    Setting(Arc::new(parse))
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Setting<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let name = arg
            .and_then(Arg::get_env)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parse = Arc::clone(&self.0);
        let named = move |text: &str| {
            parse(text).map_err(|why| ConfigError {
                name: name.clone(),
                value: text.to_owned(),
                why,
            })
        };
        // Through clap's parser for functions, so that the ConfigError becomes the source of
        // clap's error, where `ConfigError::from_clap` finds it (and a value that is not UTF-8
        // is clap's usual error).
        named.parse_ref(cmd, arg, value)
    }
}

/// A whole number of at least `min`.
/// A `WAIT` timeout: 1 ms or more, and under the Redis response timeout (10 s), so that a
/// `WAIT` is answered before the connection gives up on it.
fn whole_ms_under_response_timeout(text: &str) -> Result<u64, String> {
    let limit = dtee_net::redis_conn::RedisOptions::default().response_timeout;
    let ms = whole_number(text, 1u64)?;
    if u128::from(ms) >= limit.as_millis() {
        return Err(format!(
            "must be under {} ms (the Redis response timeout)",
            limit.as_millis()
        ));
    }
    Ok(ms)
}

/// The longest lifetime a worker gives a Redis key, in seconds: ten years. Redis refuses an
/// `EX` whose expiry in milliseconds overflows, and a write that fails on it after a commit's
/// writes would make every job that binds state fail the same way.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A key's lifetime in seconds: 1 to [`MAX_TTL_SECS`].
fn ttl_secs(text: &str) -> Result<u64, String> {
    let secs = whole_number(text, 1u64)?;
    if secs > MAX_TTL_SECS {
        return Err(format!("must be at most {MAX_TTL_SECS} (ten years)"));
    }
    Ok(secs)
}

fn at_least<T>(min: T) -> Setting<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    setting(move |text| whole_number(text, min))
}

fn whole_number<T>(text: &str, min: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let parsed: T = text
        .trim()
        .parse()
        .map_err(|_| "expected a whole number".to_owned())?;
    if parsed < min {
        return Err(format!("must be at least {min}"));
    }
    Ok(parsed)
}

/// `DTEE_TARGETS=auto`: wasm and every GPU target this machine's devices serve.
pub const AUTO_TARGETS: &str = "auto";

fn targets(text: &str) -> Result<Vec<String>, String> {
    let mut targets = Vec::new();
    for target in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !dtee_schemas::job::is_valid_target(target) {
            return Err(format!("{target:?} is not a valid target"));
        }
        if target != "wasm" && target != AUTO_TARGETS && !crate::backend::gpu::is_gpu_target(target)
        {
            return Err(format!(
                "this worker has no backend for target {target:?} (it serves: wasm, cuda, hip.<gfx arch>, or auto)"
            ));
        }
        if !targets.iter().any(|t| t == target) {
            targets.push(target.to_owned());
        }
    }
    if targets.is_empty() {
        return Err("needs at least one target".to_owned());
    }
    if targets.len() > 1 && targets.iter().any(|t| t == AUTO_TARGETS) {
        return Err("auto stands alone".to_owned());
    }
    Ok(targets)
}

/// The most kernel slots a worker may have.
pub const MAX_CONCURRENCY: usize = 1024;

fn concurrency(text: &str) -> Result<usize, String> {
    let slots = whole_number(text, 1usize)?;
    if slots > MAX_CONCURRENCY {
        return Err(format!(
            "must be at most {MAX_CONCURRENCY} (each kernel slot reserves about 8 GiB of address space)"
        ));
    }
    Ok(slots)
}

fn runtime_threads(text: &str) -> Result<usize, String> {
    let threads = whole_number(text, 1usize)?;
    if threads > MAX_CONCURRENCY {
        return Err(format!("must be at most {MAX_CONCURRENCY}"));
    }
    Ok(threads)
}

fn max_memory_bytes(text: &str) -> Result<u64, String> {
    let bytes = whole_number(text, 65536u64)?;
    if bytes > 4 << 30 {
        return Err("a 32-bit WebAssembly memory cannot exceed 4 GiB".to_owned());
    }
    Ok(bytes)
}

/// Also applied to the default worker id.
pub(crate) fn worker_id(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 128
        || text.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("must be 1 to 128 printable characters without spaces".to_owned());
    }
    Ok(text.to_owned())
}

fn single_tenant(text: &str) -> Result<String, String> {
    if !dtee_schemas::state::is_valid_tenant(text) {
        return Err("a tenant is 1 to 64 letters, digits, '_', '.', '@', '-'".to_owned());
    }
    Ok(text.to_owned())
}

fn test_hook(text: &str) -> Result<Option<TestHook>, String> {
    if !text.is_empty() && !cfg!(feature = "test-hooks") {
        return Err(
            "this worker was built without test hooks (cargo feature test-hooks)".to_owned(),
        );
    }
    match text {
        "" => Ok(None),
        "pause-after-commit" => Ok(Some(TestHook::PauseAfterCommit)),
        "stall-consumer" => Ok(Some(TestHook::StallConsumer)),
        "panic-in-kernel" => Ok(Some(TestHook::PanicInKernel)),
        "panic-in-job" => Ok(Some(TestHook::PanicInJob)),
        "slow-publish" => Ok(Some(TestHook::SlowPublish)),
        "slow-failure" => Ok(Some(TestHook::SlowFailure)),
        _ => Err(
            "hooks: pause-after-commit, stall-consumer, panic-in-kernel, panic-in-job, slow-publish, slow-failure"
                .to_owned(),
        ),
    }
}

fn tpm_pcr(text: &str) -> Result<u32, String> {
    let pcr = whole_number(text, 0u32)?;
    if pcr > 23 {
        return Err("PCRs are 0 to 23".to_owned());
    }
    Ok(pcr)
}

fn metrics_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| "expected HOST:PORT, e.g. 0.0.0.0:9464".to_owned())
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}
