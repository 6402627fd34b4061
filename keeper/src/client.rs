//! The keeper's protocol from the asking side, over AMQP: one connection, a confirm channel for
//! requests and one exclusive reply queue; answers are matched by correlation id. Used by the
//! `dtee` command line (tenants) and by workers (`release`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtee_schemas::namespace::{Namespace, KEEPER_RELEASE_KEY, KEEPER_TENANT_KEY};
use dtee_schemas::secrets::{KeeperReply, KeeperRequest, REQUEST_TYPE};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::oneshot;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum KeeperClientError {
    /// RabbitMQ failed or refused.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// No keeper queue exists in the namespace (no keeper ever started).
    #[error("no secret keeper serves namespace {0}: start dtee-keeper")]
    NoKeeper(String),
    /// The broker refused the request.
    #[error("the broker refused the request")]
    Nacked,
    /// No answer in time (the keeper is down or overloaded); the request may be retried.
    #[error("the secret keeper did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer is not a keeper reply.
    #[error("the keeper's answer does not parse: {0}")]
    BadReply(serde_json::Error),
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<KeeperReply>>>>;

/// A connection to the keepers of one namespace.
#[derive(Debug)]
pub struct KeeperClient {
    connection: Connection,
    channel: Channel,
    reply_queue: String,
    pending: Pending,
    namespace: Namespace,
    user: String,
    timeout: Duration,
}

impl KeeperClient {
    /// Connects and opens the reply queue. `user` is sent as `user_id` (RabbitMQ checks it
    /// against the connection): it is the tenant of `put`, `list`, `get`, `delete` and
    /// `set_policy`.
    pub async fn connect(
        amqp_url: &str,
        tls: &dtee_net::Tls,
        namespace: Namespace,
        timeout: Duration,
    ) -> Result<KeeperClient, KeeperClientError> {
        let connection = dtee_net::amqp::connect(
            amqp_url,
            ConnectionProperties::default().with_connection_name("dtee keeper client".into()),
            tls,
        )
        .await?
        .connection;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Named under the namespace (not `amq.gen-`), so a worker's RabbitMQ user, whose
        // rights stop at `<ns>.`, may declare it; exclusive, so only this connection reads it.
        let reply_queue = format!(
            "{}.reply.{}",
            namespace.keeper_queue(),
            hex::encode(rand::random::<[u8; 12]>())
        );
        let queue = channel
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let reply_queue = queue.name().as_str().to_owned();
        let mut consumer = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let dispatch = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                let waiter = dispatch.lock().expect("pending lock").remove(id.as_str());
                if let (Some(waiter), Ok(reply)) = (waiter, serde_json::from_slice(&delivery.data))
                {
                    let _ = waiter.send(reply);
                }
            }
        });
        let user = amqp_user(amqp_url);
        Ok(KeeperClient {
            connection,
            channel,
            reply_queue,
            pending,
            namespace,
            user,
            timeout,
        })
    }

    /// The AMQP user: the tenant of this client's requests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, request: &KeeperRequest) -> Result<KeeperReply, KeeperClientError> {
        let routing_key = match request {
            KeeperRequest::Release { .. } => KEEPER_RELEASE_KEY,
            _ => KEEPER_TENANT_KEY,
        };
        let id = hex::encode(rand::random::<[u8; 16]>());
        let (sender, answer) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(id.clone(), sender);
        let result = self.send(request, routing_key, &id, answer).await;
        self.pending.lock().expect("pending lock").remove(&id);
        result
    }

    async fn send(
        &self,
        request: &KeeperRequest,
        routing_key: &str,
        id: &str,
        answer: oneshot::Receiver<KeeperReply>,
    ) -> Result<KeeperReply, KeeperClientError> {
        let body = serde_json::to_vec(request).expect("a request serializes");
        let properties = BasicProperties::default()
            .with_user_id(self.user.as_str().into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(id.into())
            .with_content_type("application/json".into())
            .with_type(REQUEST_TYPE.into())
            // A request nobody takes before the asker gives up is dropped by the broker, not
            // answered late: the asker retries with a fresh one.
            .with_expiration(self.timeout.as_millis().to_string().into());
        let confirm = self
            .channel
            .basic_publish(
                self.namespace.keeper_exchange().as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await;
        let confirm = match confirm {
            Ok(confirm) => confirm.await?,
            // The exchange does not exist: no keeper ever started in this namespace.
            Err(error) if is_not_found(&error) => {
                return Err(KeeperClientError::NoKeeper(self.namespace.to_string()))
            }
            Err(error) => return Err(error.into()),
        };
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) => {
                return Err(KeeperClientError::NoKeeper(self.namespace.to_string()))
            }
            Confirmation::Nack(_) => return Err(KeeperClientError::Nacked),
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) | Err(_) => Err(KeeperClientError::Timeout(self.timeout)),
        }
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// The user name of an AMQP URL (RabbitMQ's default `guest` when it names none): the tenant
/// of what a client with that URL sends as `user_id`. Of a list of cluster nodes, the first
/// URL's (every node of a cluster has the same users).
pub fn amqp_user(amqp_url: &str) -> String {
    dtee_net::amqp::urls(amqp_url)
        .first()
        .copied()
        .unwrap_or("")
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned())
}

fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}
