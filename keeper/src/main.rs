//! `dtee-keeper`: the secret keeper service (see the library's documentation and PROTOCOL.md
//! §12).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dtee_keeper::{derive_keys, read_kek, run, KeeperConfig};
use dtee_schemas::cli::ConnectionArgs;
use dtee_schemas::namespace::Namespace;

/// dtee's secret keeper: stores tenants' secrets encrypted at rest and releases them only to
/// workers whose evidence passes the owner's policy.
#[derive(Debug, Parser)]
#[command(name = "dtee-keeper", version)]
struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The key-encryption key: a file of 32 bytes (raw, or 64 hex digits). Every keeper of a
    /// namespace needs the same file; losing it loses every stored secret.
    #[arg(long, env = "DTEE_KEEPER_KEK_FILE")]
    kek_file: PathBuf,
    /// Whether tenants may read their secrets back (`dtee secret get`).
    #[arg(long, env = "DTEE_KEEPER_ALLOW_GET", default_value_t = true, action = clap::ArgAction::Set)]
    allow_get: bool,
    /// The AMQP users whose `release` requests are answered (the workers' users, comma
    /// separated). Releases from any other user are refused before anything is read.
    #[arg(
        long,
        env = "DTEE_KEEPER_WORKER_USERS",
        default_value = "dtee-worker",
        value_delimiter = ','
    )]
    worker_users: Vec<String>,
    /// Address for /metrics, /healthz and /readyz (e.g. 0.0.0.0:9465); none by default.
    #[arg(long, env = "DTEE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Print the keeper's HPKE public key (what tenants seal values to) and exit.
    #[arg(long)]
    print_public_key: bool,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTEE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = (|| -> anyhow::Result<()> {
        let kek = read_kek(&args.kek_file)?;
        if args.print_public_key {
            println!("{}", derive_keys(&kek).1.public_hex());
            return Ok(());
        }
        let config = KeeperConfig {
            amqp_url: args.connection.amqp_url.clone(),
            redis_url: args.connection.redis_url.clone(),
            tls: dtee_net::Tls::load(&args.connection.tls)?,
            namespace: Namespace::new(args.connection.namespace.clone())?,
            kek,
            allow_get: args.allow_get,
            worker_users: args.worker_users.clone(),
            metrics_addr: args.metrics_addr,
        };
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                let _ = stop.send(true);
            });
            run(config, shutdown).await
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dtee-keeper: {error:#}");
            ExitCode::from(1)
        }
    }
}
