//! Dead-lettered jobs, from `<ns>.dead`. Only the broker publishes there, but what it
//! dead-letters was published by a tenant, so a dead letter is admitted like any job (the
//! broker keeps `user_id` on a dead-lettered message) and answered for that tenant only:
//!
//! - one that expired (a per-message TTL, x-death reason `expired`) is treated as never
//!   submitted: acked without an answer, nothing cached or recorded. Anything published would
//!   reach every waiter on the job id, the job's other submitters included;
//! - one that exceeded its queue's delivery limit (it kept killing or stalling workers) is
//!   answered with its applied record (inside the delivery's tenant) or its cached result, else
//!   `dead_lettered` with the delivery history. That answer is never cached and claims
//!   nothing: on RabbitMQ 3.x a message prefetched by a worker that another tenant's poison
//!   job killed counts a delivery too, so it does not decide the job for anyone.

use dtee_schemas::ErrorCode;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use super::admit::{self, Admitted};
use super::outcome::{self, CachePolicy, Failure, Outcome};
use super::reads::HeldResult;
use super::{prior, Context};
use crate::failure::Transient;

/// Decides the answer to a dead-lettered delivery: `None` for one to ack without an answer.
pub(crate) async fn evaluate(
    ctx: &Context,
    delivery: &Delivery,
) -> Result<Option<Outcome>, Transient> {
    if expired(delivery) {
        tracing::debug!("an expired job was dead-lettered: acked without an answer");
        return Ok(None);
    }
    let job = match admit::admit_message(ctx, delivery) {
        Ok(job) => job,
        Err(refused) => return Ok(Some(refused)),
    };
    answer(ctx, delivery, &job).await.map(Some)
}

/// The answer to an admitted dead letter.
async fn answer(ctx: &Context, delivery: &Delivery, job: &Admitted) -> Result<Outcome, Transient> {
    let id = job.id().clone();
    // Dead letters are few: each reads its stored answers in a result slot, so that a large
    // one is never read beside others (`super::reads`).
    let slot = HeldResult::slot(ctx, &job.tenant).await;
    // A job whose state writes were committed before the crashes that dead-lettered it is
    // answered with the result recorded at the commit: its effects happened.
    if let Some(tag) = job.writable_hash_tag() {
        if let Some(mut first) = prior::applied(ctx, &tag, &id).await? {
            first.held = slot.keep(first.body.len());
            return Ok(first);
        }
    }
    if let Some(cached) = ctx.store.cached_result(&id).await? {
        let held = slot.keep(cached.len());
        let mut outcome = Outcome::cached(id, cached, CachePolicy::Never);
        outcome.held = held;
        return Ok(outcome);
    }
    drop(slot);
    ctx.telemetry.dead_lettered();
    let failure = Failure::new(
        ErrorCode::DeadLettered,
        format!("the job was dead-lettered: {}", delivery_history(delivery)),
    );
    Ok(outcome::failed_as(
        ctx,
        id,
        Some(&job.parsed),
        CachePolicy::Never,
        failure,
        job.started_at,
    ))
}

/// Whether the broker dead-lettered the message because its per-message TTL (`expiration`)
/// ran out: `x-first-death-reason` or any `x-death` entry says `expired`.
fn expired(delivery: &Delivery) -> bool {
    expired_by(delivery.properties.headers().as_ref())
}

fn expired_by(headers: Option<&FieldTable>) -> bool {
    let Some(headers) = headers else {
        return false;
    };
    let is_expired = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::LongString(s)) => s.to_string() == "expired",
        Some(AMQPValue::ShortString(s)) => s.as_str() == "expired",
        _ => false,
    };
    if is_expired(headers.inner().get("x-first-death-reason")) {
        return true;
    }
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().iter().any(|death| {
            matches!(death, AMQPValue::FieldTable(death) if is_expired(death.inner().get("reason")))
        }),
        _ => false,
    }
}

/// RabbitMQ's dead-letter reason (`x-death` `reason`) in words.
fn reason_in_words(reason: &str) -> &'static str {
    match reason {
        "delivery_limit" => {
            "it exceeded its delivery limit (delivered again and again without an answer)"
        }
        "expired" => "its message expired (its time-to-live passed) before a worker answered it",
        "rejected" => "it was rejected without being requeued",
        "maxlen" => "its queue was over its length limit",
        _ => "of a reason this worker does not know",
    }
}

/// The delivery history RabbitMQ records on a dead-lettered message (`x-death`,
/// `x-delivery-count`), in words.
fn delivery_history(delivery: &Delivery) -> String {
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return "no delivery history recorded".to_owned();
    };
    let text = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::Timestamp(t)) => t.to_string(),
        Some(other) => format!("{other:?}"),
        None => "?".to_owned(),
    };
    let mut parts = Vec::new();
    if let Some(count) = headers.inner().get("x-delivery-count") {
        parts.push(format!(
            "delivered {} times without an answer",
            text(Some(count))
        ));
    }
    if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") {
        for death in deaths.as_slice() {
            if let AMQPValue::FieldTable(death) = death {
                let field = |name: &str| text(death.inner().get(name));
                let reason = field("reason");
                parts.push(format!(
                    "queue {} dead-lettered it because {} ({reason}), {} time(s)",
                    field("queue"),
                    reason_in_words(&reason),
                    field("count")
                ));
            }
        }
    }
    if parts.is_empty() {
        "no delivery history recorded".to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    #[test]
    fn an_expired_dead_letter_is_recognised_by_either_header() {
        let mut first = FieldTable::default();
        first.insert("x-first-death-reason".into(), text("expired"));
        assert!(expired_by(Some(&first)));

        let mut death = FieldTable::default();
        death.insert("reason".into(), text("expired"));
        let mut history = FieldTable::default();
        history.insert("x-first-death-reason".into(), text("delivery_limit"));
        history.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        assert!(expired_by(Some(&history)));

        let mut limit = FieldTable::default();
        limit.insert("x-first-death-reason".into(), text("delivery_limit"));
        assert!(!expired_by(Some(&limit)));
        assert!(!expired_by(None));
    }
}
