//! Command-line pieces shared by the dtee binaries (feature `cli`): where RabbitMQ and Redis
//! are, and the namespace, as the same flags and environment variables in `dtee-worker`, `dtee`
//! and `dtee-loadtest`; and [`redact`], how those URLs appear in messages.
//!
//! Nothing here reads the environment by itself: the binaries do, when they parse their
//! command line, so the crate's no-I/O invariant holds for everyone else.

use crate::protocol::{DEFAULT_AMQP_URL, DEFAULT_NAMESPACE, DEFAULT_REDIS_URL};

/// Environment variable of `--amqp-url`.
pub const AMQP_URL_ENV: &str = "DTEE_AMQP_URL";
/// Environment variable of `--redis-url`.
pub const REDIS_URL_ENV: &str = "DTEE_REDIS_URL";
/// Environment variable of `--namespace`.
pub const NAMESPACE_ENV: &str = "DTEE_NAMESPACE";
/// Environment variable of `--tls-ca-file`.
pub const TLS_CA_FILE_ENV: &str = "DTEE_TLS_CA_FILE";
/// Environment variable of `--tls-cert-file`.
pub const TLS_CERT_FILE_ENV: &str = "DTEE_TLS_CERT_FILE";
/// Environment variable of `--tls-key-file`.
pub const TLS_KEY_FILE_ENV: &str = "DTEE_TLS_KEY_FILE";

/// Where RabbitMQ and Redis are, and the namespace of every name used there. Each binary
/// flattens it into its own arguments (`#[command(flatten)]`); the flags are global, so they
/// may also follow a subcommand.
///
/// The namespace is kept as text: each binary validates it (`Namespace::new`) and reports a bad
/// one in its own way.
#[derive(Debug, Clone, clap::Args)]
// Flattened into each binary's arguments: without this, the doc comment above would become the
// description each binary prints in `--help`.
#[command(about = None, long_about = None)]
pub struct ConnectionArgs {
    /// AMQP URL of RabbitMQ (`amqp://` or `amqps://`); the nodes of a cluster as several URLs
    /// separated by commas, tried in turn.
    /// (`--help` never shows the value the environment gives: it may hold a password.)
    #[arg(long, global = true, env = AMQP_URL_ENV, default_value = DEFAULT_AMQP_URL)]
    #[arg(hide_env_values = true)]
    pub amqp_url: String,
    /// Redis URL: `redis://` or `rediss://` for one node, `redis+cluster://` or
    /// `rediss+cluster://` with one or more `host:port` separated by commas for Redis Cluster.
    #[arg(long, global = true, env = REDIS_URL_ENV, default_value = DEFAULT_REDIS_URL)]
    #[arg(hide_env_values = true)]
    pub redis_url: String,
    /// Namespace of exchanges, queues and Redis keys.
    #[arg(long, global = true, env = NAMESPACE_ENV, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// TLS files for `amqps://` and `rediss://`.
    #[command(flatten)]
    pub tls: TlsFiles,
}

/// The PEM files TLS connections (`amqps://`, `rediss://`) use. Servers are always verified,
/// host name included: RabbitMQ against the system's CA store plus `ca_file`, Redis against
/// `ca_file` alone when it is given (the system's store otherwise); a client certificate is
/// presented when `cert_file` and `key_file` are given (both or neither).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(about = None, long_about = None)]
pub struct TlsFiles {
    /// PEM file of CA certificates trusted for RabbitMQ (besides the system's) and Redis
    /// (instead of the system's).
    #[arg(long, global = true, env = TLS_CA_FILE_ENV)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate (chain) to present, with `--tls-key-file`.
    #[arg(long, global = true, env = TLS_CERT_FILE_ENV, requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key, with `--tls-cert-file`.
    #[arg(long, global = true, env = TLS_KEY_FILE_ENV, requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
}

/// The URL without its password, for error messages: `amqp://user:***@host/vhost`. A list of
/// URLs separated by commas is redacted URL by URL; a comma not followed by a new `scheme://`
/// belongs to the URL before it (a cluster URL's host list, or a password that holds one).
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        let mut urls: Vec<String> = Vec::new();
        for piece in url.split(',') {
            match urls.last_mut() {
                Some(last) if !piece.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => urls.push(piece.to_owned()),
            }
        }
        if urls.len() > 1 {
            return urls
                .iter()
                .map(|url| redact_one(url))
                .collect::<Vec<_>>()
                .join(",");
        }
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        connection: ConnectionArgs,
    }

    #[test]
    fn help_never_prints_the_urls_the_environment_gives() {
        use clap::CommandFactory;
        let command = Cli::command();
        for id in ["amqp_url", "redis_url"] {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .unwrap();
            assert!(arg.is_hide_env_values_set(), "{id}");
        }
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://worker:s3cret@rabbit:5672/dtee"),
            "amqp://worker:***@rabbit:5672/dtee"
        );
        assert_eq!(
            redact("redis://default:p@ss@redis:6379/"),
            "redis://default:***@redis:6379/"
        );
        assert_eq!(redact("redis://redis:6379/"), "redis://redis:6379/");
        assert_eq!(redact("not a url @ all"), "not a url @ all");
        assert_eq!(
            redact("amqps://w:a@h1:5671/dtee,amqps://w:b@h2:5671/dtee"),
            "amqps://w:***@h1:5671/dtee,amqps://w:***@h2:5671/dtee"
        );
        // A comma in the password, or a cluster's host list, is not a new URL.
        assert_eq!(
            redact("redis://default:p,w@redis:6379/"),
            "redis://default:***@redis:6379/"
        );
        assert_eq!(
            redact("rediss+cluster://u:s,3@a:1,b:2/"),
            "rediss+cluster://u:***@a:1,b:2/"
        );
        assert_eq!(
            redact("rediss+cluster://u:p@h1:7001,h2:7002"),
            "rediss+cluster://u:***@h1:7001,h2:7002"
        );
    }

    #[test]
    fn flags_and_environment_variables() {
        let command = <Cli as clap::CommandFactory>::command();
        let envs: Vec<_> = command
            .get_arguments()
            .map(|arg| (arg.get_id().as_str(), arg.get_env()))
            .collect();
        assert_eq!(
            envs,
            [
                ("amqp_url", Some(AMQP_URL_ENV.as_ref())),
                ("redis_url", Some(REDIS_URL_ENV.as_ref())),
                ("namespace", Some(NAMESPACE_ENV.as_ref())),
                ("tls_ca_file", Some(TLS_CA_FILE_ENV.as_ref())),
                ("tls_cert_file", Some(TLS_CERT_FILE_ENV.as_ref())),
                ("tls_key_file", Some(TLS_KEY_FILE_ENV.as_ref())),
            ]
        );
        let cli = Cli::parse_from(["dtee", "--namespace", "other"]);
        assert_eq!(cli.connection.namespace, "other");
    }
}
