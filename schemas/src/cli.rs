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
    /// AMQP URL of RabbitMQ.
    #[arg(long, global = true, env = AMQP_URL_ENV, default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, global = true, env = REDIS_URL_ENV, default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Namespace of exchanges, queues and Redis keys.
    #[arg(long, global = true, env = NAMESPACE_ENV, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// The URL without its password, for error messages: `amqp://user:***@host/vhost`.
pub fn redact(url: &str) -> String {
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
            ]
        );
        let cli = Cli::parse_from(["dtee", "--namespace", "other"]);
        assert_eq!(cli.connection.namespace, "other");
    }
}
