//! Result publishing: persistent messages to `<ns>.results`, routed by the user of the delivery
//! answered and the job id (`<user_id>.<job id>`), each awaited until the broker confirms it.

use dtee_schemas::protocol::{self, Namespace};
use dtee_schemas::Digest;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

/// Why a result was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("publishing the result: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take responsibility for the message.
    #[error("the broker did not confirm the result (nack)")]
    Nacked,
}

/// Publishes results with publisher confirms.
#[derive(Clone)]
pub(crate) struct ResultPublisher {
    channel: Channel,
    exchange: ShortString,
    worker_id: String,
}

impl std::fmt::Debug for ResultPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultPublisher")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl ResultPublisher {
    /// Puts `channel` in confirm mode and publishes to the namespace's results exchange.
    pub(crate) async fn new(
        channel: Channel,
        namespace: &Namespace,
        worker_id: &str,
    ) -> Result<ResultPublisher, lapin::Error> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ResultPublisher {
            channel,
            exchange: namespace.results_exchange().into(),
            worker_id: worker_id.to_owned(),
        })
    }

    /// Whether the result channel is still open (the broker closes it on a channel error,
    /// such as a message over its size limit or a deleted exchange).
    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes one result for the submitter `user` (the `user_id` of the delivery it
    /// answers; `None` when the delivery had none) and waits for the broker's confirm.
    ///
    /// With a valid `reply_to` (the queue of the waiter that submitted the job), the result is
    /// also routed to `<user>.reply.<reply_to>` (a `BCC` key): the waiter's one standing binding.
    pub(crate) async fn publish(
        &self,
        user: Option<&str>,
        reply_to: Option<&str>,
        job_id: &Digest,
        body: &[u8],
        cached: bool,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        if let Some(queue) = reply_to.filter(|queue| protocol::is_valid_reply_to(queue)) {
            headers.insert(
                protocol::HEADER_BCC.into(),
                AMQPValue::FieldArray(
                    vec![AMQPValue::LongString(LongString::from(
                        protocol::reply_routing_key(user, queue),
                    ))]
                    .into(),
                ),
            );
        }
        headers.insert(protocol::HEADER_CACHED.into(), AMQPValue::Boolean(cached));
        headers.insert(
            protocol::HEADER_WORKER.into(),
            AMQPValue::LongString(LongString::from(self.worker_id.as_str())),
        );
        let properties = BasicProperties::default()
            .with_content_type(protocol::CONTENT_TYPE_JSON.into())
            .with_message_id(job_id.as_str().into())
            .with_type(protocol::RESULT_MESSAGE_TYPE.into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                protocol::result_routing_key(user, job_id).into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }
}
