//! The command line of `dtee`: every command, flag and argument, in clap's derive form (also
//! the source of `dtee completions` and `dtee man`).

use clap::{Args, Parser, Subcommand};
use dtee_schemas::cli::ConnectionArgs;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "dtee",
    version,
    about = "Submit attested kernel jobs to dtee workers and fetch their results"
)]
pub(crate) struct Cli {
    /// RabbitMQ, Redis and the namespace.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// On failure, print every cause of the error, one per line.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Kernels: `dtee kernel put FILE` stores a kernel binary and prints its digest.
    Kernel {
        #[command(subcommand)]
        action: BlobAction,
    },
    /// Blobs (large inputs): `dtee blob put FILE` stores a file and prints its digest.
    Blob {
        #[command(subcommand)]
        action: BlobAction,
    },
    /// Bound state, for operators: `dtee state get KEY`, `dtee state put KEY FILE`.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Secrets of this client's tenant, kept by the secret keeper and released only to workers
    /// that pass the tenant's policy: `dtee secret put NAME --from-file F`, `list`, `get`,
    /// `delete`, `policy set FILE`.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Checks a result's attestation offline against a policy; prints every check and exits 0
    /// only when all pass.
    Verify {
        /// The result (dtee.result/v1 JSON), as `dtee wait` or `dtee run` print it.
        result: PathBuf,
        /// The policy (TOML; see deploy/policies/).
        #[arg(long)]
        policy: PathBuf,
        /// Verify as of this Unix time (default: now), e.g. to check certificate validity.
        #[arg(long)]
        at: Option<i64>,
    },
    /// Cancels a job of this client's tenant (the AMQP user): a worker that receives it from
    /// this tenant answers `cancelled` without running it. Jobs already answered keep their
    /// result; other tenants' jobs are not affected.
    Cancel {
        /// The job id (sha256:...).
        job_id: String,
        /// How long the revocation lasts, in seconds.
        #[arg(long, default_value = "604800")]
        ttl_secs: u64,
    },
    /// Lists the workers registered in the namespace, with platform, measurement and evidence
    /// age.
    Workers {
        /// `table` for people, `json` for programs (the registry entries as they are stored).
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Prints a shell completion script: `dtee completions bash > /etc/bash_completion.d/dtee`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff): `dtee man > /usr/local/share/man/man1/dtee.1`.
    Man,
    /// Checks this client's set-up: RabbitMQ, the namespace's exchanges, Redis, the tenant, the
    /// registered workers, and a canary job's round trip. Exit status 0 only when all pass.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
        /// Skip the canary job.
        #[arg(long)]
        no_canary: bool,
    },
    /// Submits a job and prints its id once the broker has confirmed it.
    Submit(JobArgs),
    /// Waits for a job's result and prints it (the answer to a submission by this user, or the
    /// cached result).
    Wait {
        /// The job id (sha256:...).
        job_id: String,
        /// Seconds to wait.
        #[arg(long, default_value = "60")]
        timeout: f64,
        /// Write each output to DIR/NAME.
        #[arg(long, value_name = "DIR")]
        save_outputs: Option<PathBuf>,
    },
    /// Submits a job, waits for its result and prints it.
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Seconds to wait.
        #[arg(long, default_value = "60")]
        timeout: f64,
        /// Write each output to DIR/NAME.
        #[arg(long, value_name = "DIR")]
        save_outputs: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlobAction {
    /// Stores FILE under its digest (only if absent) and prints the digest.
    Put {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateAction {
    /// Prints a key's version, size, digest and value (base64), or the raw value with --raw.
    Get {
        /// The key, `<tenant>/<path>`.
        key: String,
        /// Write the raw value to standard output instead.
        #[arg(long)]
        raw: bool,
    },
    /// Replaces a key's value with FILE's bytes and prints the new version.
    Put {
        /// The key, `<tenant>/<path>`.
        key: String,
        /// The file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretAction {
    /// Stores a new version of a secret and prints it: `NAME version N`.
    Put {
        /// The secret's name (1 to 128 of A-Z a-z 0-9 _ . -).
        name: String,
        /// Read the value from this file.
        #[arg(
            long,
            conflicts_with = "from_env",
            required_unless_present = "from_env"
        )]
        from_file: Option<PathBuf>,
        /// Read the value from this environment variable.
        #[arg(long)]
        from_env: Option<String>,
    },
    /// Lists the tenant's secrets and versions (never values).
    List {
        /// `table` for people, `json` for programs.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Writes a secret's value to standard output (if the operator allows reading back).
    Get {
        /// The secret's name.
        name: String,
        /// The version; the latest by default.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Deletes a secret: every version, or one. Jobs naming a deleted version fail with
    /// `secret_not_found`.
    Delete {
        /// The secret's name.
        name: String,
        /// Delete only this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// The release policy: which workers may receive this tenant's secrets.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyAction {
    /// Sets the policy from a TOML file (the format `dtee verify --policy` reads).
    Set {
        /// The policy file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// A job spec (dtee.job/v1 JSON); the flags below build one instead.
    pub(crate) job_file: Option<PathBuf>,
    /// Kernel binary to store and run.
    #[arg(long, conflicts_with = "job_file")]
    pub(crate) kernel: Option<PathBuf>,
    /// Digest of an already stored kernel.
    #[arg(long, conflicts_with_all = ["job_file", "kernel"])]
    pub(crate) kernel_digest: Option<String>,
    /// Exported function to call.
    #[arg(long, default_value = "run")]
    pub(crate) entry: String,
    /// Input buffer: NAME=@FILE, NAME=blob:@FILE, NAME=blob:sha256:..., NAME=text:..., NAME=base64:...,
    /// NAME=hex:..., NAME=f32:1,2,3, NAME=u32:1,2, NAME=u64:1,2 (repeatable).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub(crate) inputs: Vec<String>,
    /// Bound state NAME=MODE:KEY, e.g. counter=read_write?:alice/hits ('?': may be absent)
    /// (repeatable).
    #[arg(long = "state", value_name = "NAME=MODE:KEY")]
    pub(crate) states: Vec<String>,
    /// Output buffer NAME:SIZE, e.g. out:4096 or out:1m (repeatable).
    #[arg(long = "output", value_name = "NAME:SIZE")]
    pub(crate) outputs: Vec<String>,
    /// Scalar parameter NAME:TYPE=VALUE, e.g. a:f32=2.5 (repeatable).
    #[arg(long = "param", value_name = "NAME:TYPE=VALUE")]
    pub(crate) params: Vec<String>,
    /// Wall-clock limit, milliseconds.
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Memory limit, bytes.
    #[arg(long)]
    pub(crate) memory_bytes: Option<u64>,
    /// Fuel limit (the deterministic profile only).
    #[arg(long)]
    pub(crate) fuel: Option<u64>,
    /// How the wasm kernel runs: `deterministic` (the default: fuel metered, canonical NaN bit
    /// patterns, the same bytes on every host) or `fast` (the wall-clock deadline only, NaN
    /// bit patterns as the host CPU makes them).
    #[arg(long, value_parser = ["deterministic", "fast"])]
    pub(crate) profile: Option<String>,
    /// Output limit, bytes.
    #[arg(long)]
    pub(crate) output_bytes: Option<u64>,
    /// Nonce: makes otherwise identical work a new job.
    #[arg(long)]
    pub(crate) nonce: Option<String>,
    /// A secret of this tenant as a read-only input buffer of the same name:
    /// `NAME` (the latest version, looked up now and pinned in the job) or `NAME=VERSION`.
    #[arg(long = "secret", value_name = "NAME[=VERSION]")]
    pub(crate) secrets: Vec<String>,
    /// Print the job spec instead of submitting it: nothing is connected to or stored (kernel
    /// and blob files are only hashed).
    #[arg(long)]
    pub(crate) print_job: bool,
}
