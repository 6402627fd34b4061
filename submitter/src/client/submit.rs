//! Submitting jobs: a job serialized and checked once ([`PreparedJob`]), published with a
//! publisher confirm, and sent again when the broker nacks it.

use dtee_schemas::protocol;
use dtee_schemas::{Digest, JobSpec};
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

use super::{Client, ClientError};

/// A job as it is sent: its canonical JSON, id and routing key, checked as the worker will
/// check it ([`dtee_schemas::serialize_job`]).
#[derive(Debug, Clone)]
pub struct PreparedJob {
    body: Vec<u8>,
    id: Digest,
    routing_key: String,
}

impl PreparedJob {
    /// Serializes and checks `spec`: [`ClientError::InvalidJob`] for a job the worker would
    /// refuse.
    pub fn new(spec: &JobSpec) -> Result<PreparedJob, ClientError> {
        let (body, id) = dtee_schemas::serialize_job(spec)?;
        Ok(PreparedJob {
            body,
            id,
            routing_key: dtee_schemas::protocol::job_routing_key(spec),
        })
    }

    /// The job id.
    pub fn id(&self) -> &Digest {
        &self.id
    }

    /// The canonical JSON that is published.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// How many times [`Client`] sends a nacked job again by default.
pub const DEFAULT_NACK_RETRIES: u32 = 2;

/// The pause before the `attempt`-th resend of a nacked job: 100 ms, then 400 ms, then 1.6 s
/// and so on, capped at 5 s.
fn nack_backoff(attempt: u32) -> std::time::Duration {
    let ms = 100u64.saturating_mul(4u64.saturating_pow(attempt.saturating_sub(1)));
    std::time::Duration::from_millis(ms.min(5_000))
}

impl Client {
    /// How many times this client has published a nacked job again since it connected: a
    /// count that keeps rising means a queue at its length limit or a broker in trouble.
    pub fn resends(&self) -> u64 {
        self.resends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets how many times a job the broker nacks is published again before
    /// [`ClientError::Nacked`] is returned (default [`DEFAULT_NACK_RETRIES`], after 100 ms and
    /// then 400 ms). A nack says the broker did not take the message: a job queue at its length
    /// limit refuses every resend too, but a quorum queue also nacks when it could not register
    /// the channel as a publisher in time (a busy broker), and a resend then goes through. A
    /// job's id is its content, so a resend of a job the broker did keep after all is a
    /// duplicate that the workers answer once. `0` reports the first nack at once.
    pub fn set_nack_retries(&mut self, retries: u32) {
        self.nack_retries = retries;
    }

    /// Submits a job and returns its id once the broker confirmed it.
    pub async fn submit(&self, spec: &JobSpec) -> Result<Digest, ClientError> {
        let job = PreparedJob::new(spec)?;
        self.submit_prepared(&job, None).await?;
        Ok(job.id)
    }

    /// Submits a job serialized and checked beforehand ([`PreparedJob::new`]), with its result
    /// also routed to the waiter queue `reply_to` if given: for a caller that needs the id
    /// before it submits (to watch it) without serializing the job twice.
    pub async fn submit_prepared(
        &self,
        job: &PreparedJob,
        reply_to: Option<&str>,
    ) -> Result<(), ClientError> {
        self.publish(
            &job.body,
            job.id.as_str(),
            &job.routing_key,
            Some(&self.user),
            reply_to,
        )
        .await
    }

    /// Submits a job whose result should also reach `reply_to`, the queue of a waiter of this
    /// client ([`crate::ResultWaiter::reply_to`]; watch it with
    /// [`crate::ResultWaiter::watch_reply`]): no binding per job.
    pub async fn submit_replying(
        &self,
        spec: &JobSpec,
        reply_to: &str,
    ) -> Result<Digest, ClientError> {
        let job = PreparedJob::new(spec)?;
        self.submit_prepared(&job, Some(reply_to)).await?;
        Ok(job.id)
    }

    /// Submits a job given as JSON text: it is parsed, validated and sent in canonical form.
    pub async fn submit_json(&self, json: &[u8]) -> Result<Digest, ClientError> {
        self.submit_json_replying(json, None).await
    }

    /// [`Client::submit_json`], with the result also routed to the waiter queue `reply_to`.
    pub async fn submit_json_replying(
        &self,
        json: &[u8],
        reply_to: Option<&str>,
    ) -> Result<Digest, ClientError> {
        let parsed = dtee_schemas::parse_job(json)?;
        let value = dtee_schemas::canonical::parse_strict(json)
            .map_err(dtee_schemas::JobParseError::Json)?;
        let body = dtee_schemas::canonical::to_canonical_vec(&value)
            .map_err(dtee_schemas::JobParseError::Canonical)?;
        self.publish(
            &body,
            parsed.id.as_str(),
            &dtee_schemas::protocol::job_routing_key(&parsed.spec),
            Some(&self.user),
            reply_to,
        )
        .await?;
        Ok(parsed.id)
    }

    /// Publishes raw bytes as a job message, without any check: for tests of hostile input.
    pub async fn publish_job(
        &self,
        body: &[u8],
        message_id: &str,
        target: &str,
    ) -> Result<(), ClientError> {
        self.publish_job_as(body, message_id, target, Some(&self.user))
            .await
    }

    /// Publishes raw bytes as a job message with the given `user_id` (or none): for tests of
    /// tenant isolation. RabbitMQ closes the channel when `user_id` is not the connection's
    /// user, so this client cannot publish again afterwards.
    pub async fn publish_job_as(
        &self,
        body: &[u8],
        message_id: &str,
        target: &str,
        user_id: Option<&str>,
    ) -> Result<(), ClientError> {
        self.publish(body, message_id, target, user_id, None).await
    }

    async fn publish(
        &self,
        body: &[u8],
        message_id: &str,
        target: &str,
        user_id: Option<&str>,
        reply_to: Option<&str>,
    ) -> Result<(), ClientError> {
        if !dtee_schemas::state::is_routable_tenant(&self.user) {
            return Err(ClientError::UnroutableUser(self.user.clone()));
        }
        let routing_key = protocol::submit_routing_key(&self.user, target);
        let mut headers = FieldTable::default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        headers.insert(
            protocol::HEADER_SUBMITTED_AT.into(),
            lapin::types::AMQPValue::LongLongInt(now_ms),
        );
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(user) = user_id {
            properties = properties.with_user_id(user.into());
        }
        if let Some(queue) = reply_to {
            properties = properties.with_reply_to(queue.into());
        }
        let properties = properties
            .with_content_type(protocol::CONTENT_TYPE_JSON.into())
            .with_message_id(message_id.into())
            .with_type(protocol::JOB_MESSAGE_TYPE.into())
            .with_delivery_mode(2);
        let mut attempt = 0;
        loop {
            let confirm = self
                .channel
                .basic_publish(
                    self.config.namespace.jobs_exchange().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.clone(),
                )
                .await?
                .await?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => return Ok(()),
                Confirmation::Ack(Some(_returned)) => {
                    return Err(ClientError::NoRoute {
                        target: target.to_owned(),
                        namespace: self.config.namespace.to_string(),
                    })
                }
                Confirmation::Nack(_) if attempt < self.nack_retries => {
                    attempt += 1;
                    self.resends
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(
                        message_id,
                        attempt,
                        "the broker nacked a job; sending it again"
                    );
                    tokio::time::sleep(nack_backoff(attempt)).await;
                }
                Confirmation::Nack(_) => return Err(ClientError::Nacked),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_resends_back_off_fourfold_up_to_five_seconds() {
        let ms = |attempt| nack_backoff(attempt).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [100, 400, 1600, 5000, 5000]
        );
        assert_eq!(ms(u32::MAX), 5000);
    }
}
