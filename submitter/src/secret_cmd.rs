//! `dtee secret`: a tenant's secrets through the keeper (dtee_submitter::secrets).

use anyhow::{anyhow, Context as _};
use dtee_schemas::namespace::Namespace;
use dtee_schemas::secrets::KeeperErrorCode;
use dtee_submitter::secrets::{Secrets, SecretsError};
use dtee_submitter::ClientConfig;

use crate::args::{Cli, PolicyAction, SecretAction};
use crate::{read, usage, Failure};

/// A keeper failure as an exit status: 64 for what the caller asked wrong, 5 for a refusal, 4
/// for the keeper or the broker failing.
pub(crate) fn failure(error: SecretsError) -> Failure {
    let code = match &error {
        SecretsError::Refused(refusal) => match refusal.code {
            KeeperErrorCode::InvalidRequest => 64,
            KeeperErrorCode::Unavailable => 4,
            _ => 5,
        },
        _ => 4,
    };
    Failure {
        code,
        error: error.into(),
    }
}

/// Connects to the namespace's keepers.
pub(crate) async fn open(config: &ClientConfig) -> Result<Secrets, Failure> {
    Secrets::connect(config).await.map_err(failure)
}

/// Runs `dtee secret ...`.
pub(crate) async fn run(cli: &Cli, action: &SecretAction) -> Result<u8, Failure> {
    let config = ClientConfig {
        amqp_url: cli.connection.amqp_url.clone(),
        redis_url: cli.connection.redis_url.clone(),
        namespace: Namespace::new(cli.connection.namespace.clone()).map_err(|e| usage(e.into()))?,
        tls: dtee_net::Tls::load(&cli.connection.tls).map_err(|e| usage(e.into()))?,
    };
    let secrets = open(&config).await?;
    let code = act(&secrets, action).await;
    secrets.close().await;
    code
}

async fn act(secrets: &Secrets, action: &SecretAction) -> Result<u8, Failure> {
    match action {
        SecretAction::Put {
            name,
            from_file,
            from_env,
        } => {
            let value = match (from_file, from_env) {
                (Some(path), _) => zeroize::Zeroizing::new(read(path)?),
                (None, Some(var)) => zeroize::Zeroizing::new(
                    std::env::var(var)
                        .with_context(|| format!("reading the environment variable {var}"))
                        .map_err(usage)?
                        .into_bytes(),
                ),
                (None, None) => return Err(usage(anyhow!("give --from-file or --from-env"))),
            };
            let version = secrets.put(name, &value).await.map_err(failure)?;
            println!("{name} version {version}");
        }
        SecretAction::List { output } => {
            let list = secrets.list().await.map_err(failure)?;
            if output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
            } else {
                println!(
                    "{:<32} {:>8} {:>16}",
                    "NAME", "VERSION", "CREATED (UNIX MS)"
                );
                for secret in &list {
                    for version in &secret.versions {
                        println!(
                            "{:<32} {:>8} {:>16}",
                            secret.name, version.version, version.created_at_unix_ms
                        );
                    }
                }
            }
        }
        SecretAction::Get { name, version } => {
            let (_, value) = secrets.get(name, *version).await.map_err(failure)?;
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&value)
                .context("writing to standard output")
                .map_err(|error| Failure { code: 4, error })?;
        }
        SecretAction::Delete { name, version } => {
            let deleted = secrets.delete(name, *version).await.map_err(failure)?;
            println!("{name}: {deleted} version(s) deleted");
        }
        SecretAction::Policy {
            action: PolicyAction::Set { file },
        } => {
            let text = String::from_utf8(read(file)?)
                .map_err(|_| usage(anyhow!("{} is not UTF-8 text", file.display())))?;
            secrets.set_policy(&text).await.map_err(failure)?;
            println!("release policy set for tenant {}", secrets.tenant());
        }
    }
    Ok(0)
}
