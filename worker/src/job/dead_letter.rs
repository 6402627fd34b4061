//! Dead-lettered jobs: a job that exceeded its queue's delivery limit (it kept killing or
//! stalling workers) arrives through `<ns>.dead`, and is answered `dead_lettered` with the
//! delivery history the broker recorded, unless a final result exists.

use dtee_schemas::ErrorCode;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

use super::admit::{fallback_id, writable_hash_tag};
use super::outcome::{self, CachePolicy, Failure, Outcome};
use super::{prior, Context};
use crate::clock::unix_ms;
use crate::failure::Transient;

/// Decides the answer to a dead-lettered delivery.
pub(crate) async fn evaluate(ctx: &Context, delivery: &Delivery) -> Result<Outcome, Transient> {
    let started_at = unix_ms();
    let parsed = dtee_schemas::parse_job(&delivery.data).ok();
    let id = parsed
        .as_ref()
        .map_or_else(|| fallback_id(delivery), |parsed| parsed.id.clone());
    if let Some(parsed) = &parsed {
        // A job whose state writes were committed before the crashes that dead-lettered it is
        // answered with the result recorded at the commit: its effects happened.
        if let Some(tag) = writable_hash_tag(parsed) {
            if let Some(first) = prior::applied(ctx, &tag, &id).await? {
                return Ok(first);
            }
        }
        if let Some(cached) = ctx.store.cached_result(&id).await? {
            return Ok(Outcome::cached(id, cached, CachePolicy::Never));
        }
    }
    ctx.telemetry.dead_lettered();
    let failure = Failure::new(
        ErrorCode::DeadLettered,
        format!("the job was dead-lettered: {}", delivery_history(delivery)),
    );
    let cache = if parsed.is_some() {
        CachePolicy::Final
    } else {
        CachePolicy::Never
    };
    Ok(outcome::failed_as(
        ctx,
        id,
        parsed.as_ref(),
        cache,
        failure,
        started_at,
    ))
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
