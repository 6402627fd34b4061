//! What `dtee` prints when a command fails: one line with the context and each cause said once,
//! and a hint where the fix is known (issue 17). `-v` prints the whole chain, a cause per line.

use dtee_schemas::cli::ConnectionArgs;
use dtee_schemas::protocol::Namespace;
use dtee_submitter::{Client, ClientConfig, ClientError};

/// The one-line message: the error's chain joined by `: `, with every segment that repeats an
/// earlier one left out (lapin and redis repeat their source in their own message).
pub fn one_line(error: &anyhow::Error) -> String {
    let full = format!("{error:#}");
    let mut seen: Vec<&str> = Vec::new();
    for segment in full.split(": ") {
        let segment = segment.trim();
        if segment.is_empty() || seen.contains(&segment) {
            continue;
        }
        // "IO error" followed by its own cause says nothing more than the cause.
        seen.push(segment);
    }
    seen.join(": ")
}

/// Every cause of the chain, one per line (for `-v`).
pub fn chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .enumerate()
        .map(|(depth, cause)| format!("{}{cause}", "  ".repeat(depth)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the connection was, for hints.
pub struct Setting<'a> {
    /// The AMQP URL, credentials redacted.
    pub amqp_url: &'a str,
    /// The Redis URL, credentials redacted.
    pub redis_url: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The AMQP user.
    pub user: &'a str,
}

/// A hint for the error, where the fix is known.
pub fn hint(error: &anyhow::Error, setting: &Setting<'_>) -> Option<String> {
    let text = format!("{error:#}");
    let lower = text.to_lowercase();
    if let Some(rest) = text.split("no exchange '").nth(1) {
        let exchange = rest.split('\'').next().unwrap_or("");
        let namespace = exchange
            .strip_suffix(".results")
            .or_else(|| exchange.strip_suffix(".jobs"))
            .unwrap_or(setting.namespace);
        return Some(format!(
            "no worker has started in namespace {namespace:?} (or the namespace is misspelt): start dtee-worker with DTEE_NAMESPACE={namespace} first, or pass the namespace your workers use (--namespace)"
        ));
    }
    let refused = lower.contains("connection refused")
        || lower.contains("no route to host")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known");
    if refused && lower.starts_with("connecting to rabbitmq") {
        return Some(format!(
            "is RabbitMQ running and reachable at {}? (--amqp-url, DTEE_AMQP_URL)",
            setting.amqp_url
        ));
    }
    if refused && lower.starts_with("connecting to redis") {
        return Some(format!(
            "is Redis running and reachable at {}? (--redis-url, DTEE_REDIS_URL)",
            setting.redis_url
        ));
    }
    if lower.contains("not_allowed") && lower.contains("user_id") {
        return Some(format!(
            "RabbitMQ accepts a message's user_id only if it is the connection's user: publish as {:?}, the user of --amqp-url",
            setting.user
        ));
    }
    if lower.contains("access_refused") && lower.contains("login") {
        return Some(format!(
            "RabbitMQ refused the user name or password of {}",
            setting.amqp_url
        ));
    }
    if lower.contains("access_refused") {
        return Some(format!(
            "user {:?} lacks a RabbitMQ permission for this (deploy/rabbitmq/definitions.json shows what a submitter may do)",
            setting.user
        ));
    }
    if lower.contains("noauth") || lower.contains("wrongpass") || lower.contains("noperm") {
        return Some(format!(
            "Redis refused this user or command at {} (deploy/redis/users.acl shows what a submitter may do)",
            setting.redis_url
        ));
    }
    None
}

/// One line of cause with its context, then a hint where the fix is known (`-v`: every cause).
pub fn report_failure(
    runtime: &tokio::runtime::Runtime,
    connection: &ConnectionArgs,
    verbose: bool,
    error: &anyhow::Error,
) {
    eprintln!("dtee: {}", one_line(error));
    if verbose {
        eprintln!("dtee: the causes, outermost first:\n{}", chain(error));
    }
    let amqp_url = dtee_schemas::cli::redact(&connection.amqp_url);
    let redis_url = dtee_schemas::cli::redact(&connection.redis_url);
    let user = connection
        .amqp_url
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned());
    let setting = Setting {
        amqp_url: &amqp_url,
        redis_url: &redis_url,
        namespace: &connection.namespace,
        user: &user,
    };
    let hint = match error.downcast_ref::<ClientError>() {
        // Which routing keys the registered workers serve, to say what could have been meant.
        Some(ClientError::NoRoute { .. }) => {
            Some(runtime.block_on(served_routing_keys(connection)))
        }
        _ => hint(error, &setting),
    };
    if let Some(hint) = hint {
        eprintln!("dtee: hint: {hint}");
    }
}

/// What the workers registered in the namespace serve, in words.
async fn served_routing_keys(connection: &ConnectionArgs) -> String {
    let Ok(namespace) = Namespace::new(connection.namespace.clone()) else {
        return "the namespace is not valid".to_owned();
    };
    let client = Client::connect(ClientConfig {
        amqp_url: connection.amqp_url.clone(),
        redis_url: connection.redis_url.clone(),
        namespace,
        tls: dtee_net::Tls::load(&connection.tls).unwrap_or_default(),
    })
    .await;
    let workers = match client {
        Ok(client) => client.workers().await,
        Err(error) => Err(error),
    };
    match workers {
        Ok(workers) if workers.is_empty() => format!(
            "no worker is registered in namespace {:?}: start dtee-worker there first",
            connection.namespace
        ),
        Ok(workers) => {
            let mut keys: Vec<String> = workers
                .iter()
                .flat_map(|worker| worker.routing_keys.iter().cloned())
                .collect();
            keys.sort();
            keys.dedup();
            format!(
                "the {} worker(s) registered in namespace {:?} serve routing keys: {}",
                workers.len(),
                connection.namespace,
                keys.join(", ")
            )
        }
        Err(error) => format!("the worker registry could not be read: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let error = anyhow::Error::new(io)
            .context("IO error: Connection refused (os error 111)")
            .context("rabbitmq: IO error: Connection refused (os error 111)")
            .context("connecting to rabbitmq at amqp://guest:***@127.0.0.1:1/%2f");
        assert_eq!(
            one_line(&error),
            "connecting to rabbitmq at amqp://guest:***@127.0.0.1:1/%2f: rabbitmq: IO error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn hints_name_the_fix() {
        let setting = Setting {
            amqp_url: "amqp://guest:***@h/%2f",
            redis_url: "redis://h/",
            namespace: "dtee",
            user: "guest",
        };
        let error = anyhow::anyhow!(
            "rabbitmq: protocol error: NOT_FOUND - no exchange 'newc.results' in vhost '/'"
        );
        assert!(hint(&error, &setting)
            .unwrap()
            .contains("namespace \"newc\""));
        let error =
            anyhow::anyhow!("Connection refused").context("connecting to redis at redis://h/");
        assert!(hint(&error, &setting).unwrap().contains("is Redis running"));
        assert!(hint(&anyhow::anyhow!("something else"), &setting).is_none());
    }
}
