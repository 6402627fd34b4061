//! The keeper service: consumes requests from `<ns>.keeper`, answers each on its `reply_to`
//! queue with the same correlation id, then acks. The tenant of a request is its AMQP
//! `user_id`, which RabbitMQ checks against the sender's connection. Values are never logged:
//! a log line names the tenant, the operation, the secret and the outcome.

use std::sync::Arc;

use dtee_schemas::namespace::{Namespace, KEEPER_RELEASE_KEY, KEEPER_TENANT_KEY};
use dtee_schemas::secrets::{
    is_valid_secret_name, owner_aad, parse_public_key, seal, HpkeKeyPair, KeeperErrorCode,
    KeeperReply, KeeperRequest, GET_INFO, MAX_SECRET_BYTES, PUT_INFO,
};
use dtee_schemas::state::is_valid_tenant;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::release::{check_claims, check_signed, release, unsealed_policy, ReleaseRequest};
use crate::store::{SecretStore, StoreError, MAX_SECRETS, MAX_VERSIONS};

/// Requests the keeper takes at once.
pub const KEEPER_PREFETCH: u16 = 16;

/// The largest request body.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What every request handler shares.
#[derive(Debug)]
pub struct Keeper {
    /// Where secrets live.
    pub store: SecretStore,
    /// The key tenants seal values to.
    pub key: HpkeKeyPair,
    /// Whether owners may read values back (`get`).
    pub allow_get: bool,
    /// The AMQP users whose `release` requests are answered (`KeeperConfig::worker_users`).
    pub worker_users: Vec<String>,
    /// The namespace.
    pub namespace: Namespace,
    /// Consuming requests (for `/readyz`).
    pub serving: std::sync::atomic::AtomicBool,
}

/// Declares the keeper's exchange and queue and consumes requests until `shutdown` or the
/// connection ends.
pub async fn serve(
    keeper: Arc<Keeper>,
    amqp_url: &str,
    tls: &dtee_net::Tls,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), lapin::Error> {
    let connection = dtee_net::amqp::connect(
        amqp_url,
        ConnectionProperties::default().with_connection_name("dtee-keeper".into()),
        tls,
    )
    .await?
    .connection;
    let channel = connection.create_channel().await?;
    declare(&channel, &keeper.namespace).await?;
    // No request body over MAX_REQUEST_BYTES is kept (a larger one is dropped as it arrives
    // and refused by its announced size), so the keeper holds at most KEEPER_PREFETCH of them
    // at once, whatever the broker's max_message_size.
    channel.set_max_body_size(Some(MAX_REQUEST_BYTES as u64));
    channel
        .basic_qos(KEEPER_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            keeper.namespace.keeper_queue().as_str().into(),
            "dtee-keeper".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(namespace = %keeper.namespace, public_key = %keeper.key.public_hex(), "keeper serving");
    keeper
        .serving
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (keeper, channel) = (Arc::clone(&keeper), channel.clone());
                    tokio::spawn(async move { answer(&keeper, &channel, delivery).await });
                }
                Some(Err(error)) => {
                    keeper.serving.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Err(error);
                }
                None => break,
            },
        }
    }
    keeper
        .serving
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = connection.close(200, "keeper stopping".into()).await;
    Ok(())
}

async fn declare(channel: &Channel, namespace: &Namespace) -> Result<(), lapin::Error> {
    let durable = || ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            namespace.keeper_exchange().as_str().into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            namespace.keeper_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    for key in [KEEPER_TENANT_KEY, KEEPER_RELEASE_KEY] {
        channel
            .queue_bind(
                namespace.keeper_queue().as_str().into(),
                namespace.keeper_exchange().as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Answers one request, then acks it. A request whose store access failed is answered
/// `unavailable` (the asker retries) rather than left unacked.
async fn answer(keeper: &Keeper, channel: &Channel, delivery: Delivery) {
    let (op, reply) = match parse(&delivery) {
        Err(why) => (
            "invalid",
            KeeperReply::refuse(KeeperErrorCode::InvalidRequest, why),
        ),
        Ok((tenant, request)) => {
            let op = request.op();
            match handle(keeper, &delivery, &tenant, request).await {
                Ok(reply) => (op, reply),
                Err(error) => {
                    warn!(%error, "secret store unavailable");
                    let refusal = KeeperReply::refuse(
                        KeeperErrorCode::Unavailable,
                        "the keeper's store failed; retry",
                    );
                    (op, refusal)
                }
            }
        }
    };
    let outcome = reply
        .error
        .as_ref()
        .map_or("ok", |error| code_name(error.code));
    metrics::counter!("dtee_keeper_requests_total", "op" => op, "outcome" => outcome).increment(1);
    let properties = &delivery.properties;
    // Answers go only to the keeper's reply queues (`<ns>.keeper.reply.<hex>`, what
    // keeper::client declares): through the default exchange the keeper could otherwise be made
    // to publish into any queue a requester names, a job queue included.
    let reply_prefix = format!("{}.reply.", keeper.namespace.keeper_queue());
    let reply_to = properties.reply_to().as_ref().filter(|queue| {
        let ours = queue.as_str().starts_with(&reply_prefix);
        if !ours {
            warn!(reply_to = %queue.as_str(), "not answering into a queue that is not a keeper reply queue");
        }
        ours
    });
    if let Some(reply_to) = reply_to {
        let mut answer = BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = properties.correlation_id() {
            answer = answer.with_correlation_id(id.clone());
        }
        let body = serde_json::to_vec(&reply).expect("a reply serializes");
        let published = channel
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                answer,
            )
            .await;
        if let Err(error) = published {
            warn!(%error, "could not publish a keeper answer");
        }
    }
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
}

fn code_name(code: KeeperErrorCode) -> &'static str {
    match code {
        KeeperErrorCode::InvalidRequest => "invalid_request",
        KeeperErrorCode::SecretNotFound => "secret_not_found",
        KeeperErrorCode::SecretReleaseDenied => "secret_release_denied",
        KeeperErrorCode::GetDisabled => "get_disabled",
        KeeperErrorCode::Unavailable => "unavailable",
    }
}

fn invalid(message: impl Into<String>) -> Result<KeeperReply, StoreError> {
    Ok(KeeperReply::refuse(
        KeeperErrorCode::InvalidRequest,
        message,
    ))
}

/// The tenant (`user_id`) and the request; or, for a message that is not one (too large,
/// checked before it is parsed; without a tenant; not a keeper request), why, for an
/// `invalid_request` answer.
fn parse(delivery: &Delivery) -> Result<(String, KeeperRequest), String> {
    let Some(tenant) = delivery
        .properties
        .user_id()
        .as_ref()
        .map(|user| user.as_str().to_owned())
        .filter(|user| is_valid_tenant(user))
    else {
        return Err("a keeper request needs a user_id that names a tenant".to_owned());
    };
    // A larger body was dropped as it arrived (the consumer channel keeps none over the bound).
    if delivery.body_size > MAX_REQUEST_BYTES as u64 || delivery.data.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "the request is {} bytes; requests are at most {MAX_REQUEST_BYTES}",
            delivery.body_size
        ));
    }
    let request = serde_json::from_slice(&delivery.data)
        .map_err(|error| format!("not a keeper request: {error}"))?;
    Ok((tenant, request))
}

/// Decides one request.
async fn handle(
    keeper: &Keeper,
    delivery: &Delivery,
    tenant: &str,
    request: KeeperRequest,
) -> Result<KeeperReply, StoreError> {
    let is_release = matches!(request, KeeperRequest::Release { .. });
    if is_release != (delivery.routing_key.as_str() == KEEPER_RELEASE_KEY) {
        return invalid("release requests go under routing key `release`, others under `tenant`");
    }
    match request {
        KeeperRequest::Release {
            claims,
            identity,
            signature,
        } => {
            // `tenant` is the sender's user_id here: only a worker asks for releases. Anyone
            // else, a tenant above all, learns nothing, and nothing is read for it.
            if !keeper.worker_users.iter().any(|user| user == tenant) {
                warn!(sender = %tenant, "release refused: the sender is not a worker user");
                return Ok(KeeperReply::refuse(
                    KeeperErrorCode::SecretReleaseDenied,
                    "release requests are answered only for the workers' AMQP users \
                     (DTEE_KEEPER_WORKER_USERS)",
                ));
            }
            let now = dtee_schemas::run::unix_ms();
            // The request itself (its tenant, secret names, key, time and the identity's
            // signature) before the tenant's policy is read.
            if let Err(why) = check_signed(&claims, &identity, &signature, now) {
                warn!(worker = %identity.worker_id, %why, "release refused before any read");
                return Ok(KeeperReply::refuse(
                    KeeperErrorCode::SecretReleaseDenied,
                    why,
                ));
            }
            let policy = match keeper.store.policy(&claims.tenant).await {
                Ok(policy) => policy,
                Err(StoreError::Corrupt(what)) => {
                    warn!(tenant = %claims.tenant, job_id = %claims.job_id, worker = %identity.worker_id, "release refused: {what} was not sealed by this keeper");
                    return Ok(unsealed_policy(&what));
                }
                Err(error) => return Err(error),
            };
            let names: Vec<String> = claims
                .secrets
                .iter()
                .map(|s| format!("{}@{}", s.name, s.version))
                .collect();
            if let Err(why) = check_claims(policy.as_deref(), &claims, &identity, &signature, now) {
                warn!(tenant = %claims.tenant, job_id = %claims.job_id, worker = %identity.worker_id, secrets = ?names, %why, "release refused");
                return Ok(KeeperReply::refuse(
                    KeeperErrorCode::SecretReleaseDenied,
                    why,
                ));
            }
            let request = ReleaseRequest {
                claims: &claims,
                identity: &identity,
                signature: &signature,
            };
            let reply = release(&keeper.store, &request, policy.as_deref(), now).await?;
            info!(tenant = %claims.tenant, job_id = %claims.job_id, worker = %identity.worker_id, secrets = ?names, outcome = reply.error.as_ref().map_or("released", |e| code_name(e.code)), "release");
            Ok(reply)
        }
        request => owner_request(keeper, tenant, request).await,
    }
}

/// `put`, `list`, `get`, `delete` and `set_policy`, for the tenant that sent them.
async fn owner_request(
    keeper: &Keeper,
    tenant: &str,
    request: KeeperRequest,
) -> Result<KeeperReply, StoreError> {
    let store = &keeper.store;
    match request {
        KeeperRequest::Put { name, value } => {
            if !is_valid_secret_name(&name) {
                return invalid(format!("{name:?} is not a secret name"));
            }
            let Ok(plain) = keeper.key.open(&value, PUT_INFO, &owner_aad(tenant, &name)) else {
                return invalid(
                    "the value is not sealed to this keeper's key for this tenant and name",
                );
            };
            if plain.len() > MAX_SECRET_BYTES {
                return invalid(format!("a secret is at most {MAX_SECRET_BYTES} bytes"));
            }
            let Some(version) = store.put(tenant, &name, &plain).await? else {
                return invalid(format!(
                    "a secret keeps at most {MAX_VERSIONS} versions and a tenant at most \
                     {MAX_SECRETS} secrets: delete old versions (dtee secret delete) first"
                ));
            };
            info!(%tenant, secret = %name, version, "secret stored");
            Ok(KeeperReply {
                version: Some(version),
                ..KeeperReply::default()
            })
        }
        KeeperRequest::List => Ok(KeeperReply {
            secrets: Some(store.list(tenant).await?),
            ..KeeperReply::default()
        }),
        KeeperRequest::Get {
            name,
            version,
            reply_key,
        } => {
            if !keeper.allow_get {
                return Ok(KeeperReply::refuse(
                    KeeperErrorCode::GetDisabled,
                    "the operator disabled reading secrets back (DTEE_KEEPER_ALLOW_GET=false)",
                ));
            }
            let Ok(reply_key) = parse_public_key(&reply_key) else {
                return invalid("reply_key is not an X25519 public key");
            };
            let Some((version, plain)) = store.get(tenant, &name, version).await? else {
                return Ok(not_found(tenant, &name, version));
            };
            info!(%tenant, secret = %name, version, "secret read by its owner");
            let Ok(value) = seal(&reply_key, GET_INFO, &owner_aad(tenant, &name), &plain) else {
                return invalid("reply_key cannot be sealed to");
            };
            Ok(KeeperReply {
                version: Some(version),
                value: Some(value),
                ..KeeperReply::default()
            })
        }
        KeeperRequest::Delete { name, version } => {
            let deleted = store.delete(tenant, &name, version).await?;
            if deleted == 0 {
                return Ok(not_found(tenant, &name, version));
            }
            info!(%tenant, secret = %name, ?version, deleted, "secret deleted");
            Ok(KeeperReply {
                deleted: Some(deleted),
                ..KeeperReply::default()
            })
        }
        KeeperRequest::SetPolicy { policy } => {
            if let Err(error) = toml::from_str::<dtee_schemas::attestation::verify::Policy>(&policy)
            {
                return invalid(format!("the policy does not parse: {error}"));
            }
            store.set_policy(tenant, &policy).await?;
            info!(%tenant, "release policy set");
            Ok(KeeperReply::default())
        }
        KeeperRequest::Release { .. } => invalid("release requests are answered by `handle`"),
    }
}

fn not_found(tenant: &str, name: &str, version: Option<u64>) -> KeeperReply {
    let which = version.map_or_else(String::new, |v| format!(" version {v}"));
    KeeperReply::refuse(
        KeeperErrorCode::SecretNotFound,
        format!("tenant {tenant} has no secret {name}{which}"),
    )
}
