//! Delivering an outcome: cache it (first result wins), publish it with a publisher confirm
//! under the delivery's own submitter (`<user_id>.<job id>`), and only then hand the delivery's
//! ack to the channel's [`Acks`] (which may send it together with others). If the worker dies anywhere before the ack, the broker
//! redelivers the job and the cache answers it.

use std::time::{Duration, Instant};

use crate::broker::acks::Acks;
use crate::broker::publisher::PublishError;
use tracing::warn;

/// The waits before each resend of a result the broker nacked (a transient refusal, such as a
/// quorum queue's publisher registration timing out under load, passes on a resend); after the
/// last (about 7 s of waits), the job is acknowledged without the message: a success or final
/// failure stays cached in Redis, a failure that is not final in the failure key for
/// `DTEE_FAILURE_TTL_SECS`, and an answer that is never cached (a refused message,
/// `dead_lettered`) is lost. A result over 1 MiB keeps no copy between resends and is read
/// again from the result cache; should the cache have lost it by then, the job is acknowledged
/// without it too.
const RESULT_NACKS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
    Duration::from_secs(5),
];
use lapin::message::Delivery;

use super::outcome::{CachePolicy, Outcome, Verdict};
use super::reads::{stored_answer, SMALL_READ_BYTES};
use super::Context;
use crate::failure::Transient;
use crate::store::Stored;
use dtee_schemas::state::applied_key;

/// Caches, publishes with a confirm, and acks.
pub(crate) async fn deliver(
    ctx: &Context,
    delivery: &Delivery,
    acks: &Acks,
    outcome: Outcome,
) -> Result<(), Transient> {
    deliver_cached(ctx, delivery, acks, outcome, None).await
}

/// As [`deliver`], ending the job's `turn` once the outcome is cached, before it is published.
pub(crate) async fn deliver_after_turn(
    ctx: &Context,
    delivery: &Delivery,
    acks: &Acks,
    outcome: Outcome,
    turn: super::turns::Turn<'_>,
) -> Result<(), Transient> {
    deliver_cached(ctx, delivery, acks, outcome, Some(turn)).await
}

async fn deliver_cached(
    ctx: &Context,
    delivery: &Delivery,
    acks: &Acks,
    mut outcome: Outcome,
    turn: Option<super::turns::Turn<'_>>,
) -> Result<(), Transient> {
    let tenant = delivery
        .properties
        .user_id()
        .as_ref()
        .map_or("_", |user| user.as_str());
    cache(ctx, tenant, &mut outcome).await?;
    replicated(ctx).await?;
    // The next delivery of the id finds this outcome in the cache from here on.
    drop(turn);
    let publisher = ctx.publisher.read().expect("publisher lock").clone();
    let started = Instant::now();
    // The answer goes to the submitter of this delivery only (`<user_id>.<job id>`): a copy of
    // someone else's job is answered to the copy's sender, never into the owner's waiter.
    let user = delivery
        .properties
        .user_id()
        .as_ref()
        .map(|user| user.as_str());
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|queue| queue.as_str());
    let mut nacks = 0;
    if crate::hooks::active(&ctx.config, crate::hooks::TestHook::SlowPublish) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    loop {
        let published = publisher
            .publish(
                user,
                reply_to,
                &outcome.job_id,
                &outcome.body,
                outcome.from_cache,
            )
            .await;
        match published {
            Ok(()) => break,
            Err(PublishError::Nacked) if nacks < RESULT_NACKS.len() => {
                // A large result gives its result slot back between resends and keeps no copy:
                // it is read again from the result cache (`super::reads`).
                // (In the result cache: a success or final failure this worker cached, or an
                // answer it read from there or from the applied record and cached.)
                let reread = outcome.held.is_some()
                    && (matches!(outcome.cache, CachePolicy::Final | CachePolicy::Cached)
                        || outcome.from_cache);
                if reread {
                    outcome.held = None;
                    outcome.body = Vec::new();
                }
                tokio::time::sleep(RESULT_NACKS[nacks]).await;
                nacks += 1;
                if reread {
                    let tenant = user.unwrap_or("_");
                    let mut held = super::reads::HeldResult::slot(ctx, tenant).await;
                    match ctx.store.cached_result(&outcome.job_id).await {
                        Ok(Some(body)) => {
                            held.count(body.len());
                            outcome.verdict = Verdict::of_bytes(&body);
                            outcome.body = body;
                        }
                        // Nothing left to send: the cache lost it within seconds of writing it
                        // (a result TTL of a few seconds, eviction under `maxmemory`, a failover
                        // without DTEE_REDIS_WAIT_REPLICAS). Acknowledged without it, like a
                        // result refused every time: evaluating the job again could loop for as
                        // long as the broker refuses and the cache forgets.
                        Ok(None) => {
                            warn!(job_id = %outcome.job_id, "a refused result left the result cache before it could be sent again; the job is acknowledged without it");
                            ctx.telemetry.result_refused();
                            acks.answered(delivery.delivery_tag, delivery.acker.clone());
                            ctx.telemetry.acked();
                            return Ok(());
                        }
                        Err(error) => return Err(Transient::Redis(error)),
                    }
                    outcome.held = Some(Box::new(held));
                }
            }
            Err(PublishError::Nacked) => {
                // Every try refused: a queue bound for this result refuses messages (one its
                // submitter declared with a length limit and reject-publish, say). Retrying
                // for ever would hold the delivery, and the acks behind it, as long as the
                // submitter likes; the answer is in Redis (a failure that is not final for
                // DTEE_FAILURE_TTL_SECS), where a waiter that binds afterwards reads it.
                warn!(job_id = %outcome.job_id, user = user.unwrap_or("_"), tries = nacks + 1, "the broker refused the result every time; the job is acknowledged without it (Redis holds it if it is cached)");
                ctx.telemetry.result_refused();
                acks.answered(delivery.delivery_tag, delivery.acker.clone());
                ctx.telemetry.acked();
                return Ok(());
            }
            Err(error) => {
                if !publisher.is_open() {
                    ctx.session_broken.notify_one();
                }
                return Err(Transient::Publish(error));
            }
        }
    }
    let status = match outcome.verdict {
        Verdict::Succeeded => Ok(()),
        Verdict::Failed(code) => Err(code),
    };
    ctx.telemetry.result_published(started.elapsed(), status);
    // The result is out and cached: should the ack be lost, a redelivery is answered from the
    // cache.
    acks.answered(delivery.delivery_tag, delivery.acker.clone());
    ctx.telemetry.acked();
    Ok(())
}

/// With `DTEE_REDIS_WAIT_REPLICAS`, waits until that many replicas hold this worker's writes
/// (this job's commit and cached result among them) before anything is published or acked. A
/// job answered from the cache waits too: a retry after a shortfall finds its own result there.
async fn replicated(ctx: &Context) -> Result<(), Transient> {
    let wanted = ctx.config.redis_wait_replicas;
    if wanted == 0 {
        return Ok(());
    }
    let acknowledged = ctx
        .store
        .wait_replicated(wanted, ctx.config.redis_wait_timeout)
        .await?;
    if acknowledged < i64::from(wanted) {
        return Err(Transient::NotReplicated {
            wanted,
            acknowledged,
        });
    }
    Ok(())
}

/// Acks a delivery that gets no answer (an expired dead letter: as if never submitted; if the
/// ack is lost, it is dropped again when redelivered).
pub(crate) fn ack_unanswered(ctx: &Context, delivery: &Delivery, acks: &Acks) {
    acks.answered(delivery.delivery_tag, delivery.acker.clone());
    ctx.telemetry.acked();
}

/// Caches the outcome as its policy says. Where another execution of the same job recorded a
/// result first, the outcome adopts that one, so every result published for an id is the same.
async fn cache(ctx: &Context, tenant: &str, outcome: &mut Outcome) -> Result<(), Transient> {
    let store = &ctx.store;
    match outcome.cache {
        CachePolicy::Never | CachePolicy::Cached => {}
        CachePolicy::Failure => {
            if crate::hooks::active(&ctx.config, crate::hooks::TestHook::SlowFailure) {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            // A final result cached meanwhile (another delivery of the same job succeeded)
            // wins over this failure. Read as a repeat of the job reads it: a large one only
            // in a result slot, which it holds until published (`super::reads`).
            let cached = store.result_key(&outcome.job_id);
            if adopt_stored(ctx, tenant, cached, outcome).await? {
                return Ok(());
            }
            // So does a commit of the job's writes by another execution that did not get as
            // far as caching its result (it crashed in between, say): otherwise the state
            // would be applied while the only answer published was a failure to retry.
            if let Some(tag) = outcome.claim.clone() {
                let key = applied_key(&ctx.config.namespace, &tag, &outcome.job_id);
                if adopt_stored(ctx, tenant, key, outcome).await? {
                    cache_final(ctx, tenant, outcome).await?;
                    return Ok(());
                }
            }
            store
                .cache_failure(&outcome.job_id, &outcome.body, ctx.config.failure_ttl)
                .await?
        }
        CachePolicy::Final => {
            if let Some(tag) = outcome.claim.clone() {
                claim_or_adopt(ctx, tenant, &tag, outcome).await?;
            }
            cache_final(ctx, tenant, outcome).await?;
        }
    }
    Ok(())
}

/// Records a final failure as the job's applied result, or, when another execution committed
/// the job's writes first, adopts the result recorded then (read bounded: a large one in a
/// result slot). A record that expires between the two is claimed again.
async fn claim_or_adopt(
    ctx: &Context,
    tenant: &str,
    tag: &str,
    outcome: &mut Outcome,
) -> Result<(), Transient> {
    let key = applied_key(&ctx.config.namespace, tag, &outcome.job_id);
    for _ in 0..3 {
        let ttl = ctx.config.applied_ttl;
        if ctx
            .state
            .claim_applied(tag, &outcome.job_id, &outcome.body, ttl)
            .await?
        {
            return Ok(());
        }
        if adopt_stored(ctx, tenant, key.clone(), outcome).await? {
            return Ok(());
        }
    }
    Err(Transient::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "the job's applied record kept appearing and expiring",
    ))))
}

/// Caches a final result unless one is cached already, which it then adopts (read bounded: a
/// large one in a result slot).
async fn cache_final(ctx: &Context, tenant: &str, outcome: &mut Outcome) -> Result<(), Transient> {
    let store = &ctx.store;
    let stored = store
        .cache_result(&outcome.job_id, &outcome.body, ctx.config.result_ttl)
        .await?;
    if !stored {
        let key = store.result_key(&outcome.job_id);
        if !adopt_stored(ctx, tenant, key, outcome).await? {
            // Gone between the two (its lifetime ended): this one is cached after all (should
            // another be cached meanwhile, both are the job's answers, as with any race of two
            // executions of a stateless job).
            store
                .cache_result(&outcome.job_id, &outcome.body, ctx.config.result_ttl)
                .await?;
        }
    }
    Ok(())
}

/// Adopts what `key` holds; `true` if it held something. Without a result slot the outcome
/// reads it as a repeat of the job does (`stored_answer`: a large one in a result slot). With
/// one, held for its own large body, it reads it in that same slot, counting both bodies until
/// the old one goes: a task never waits for a second slot while it holds one (with one result
/// slot per kernel slot, jobs doing so could wait on each other, or on themselves, for ever),
/// and no large body is held without a slot.
async fn adopt_stored(
    ctx: &Context,
    tenant: &str,
    key: String,
    outcome: &mut Outcome,
) -> Result<bool, Transient> {
    let Some(mut held) = outcome.held.take() else {
        let Some((body, held)) = stored_answer(ctx, tenant, key).await? else {
            return Ok(false);
        };
        outcome.adopt(body);
        outcome.held = held;
        return Ok(true);
    };
    let found = match ctx.store.get_bounded(&key, SMALL_READ_BYTES).await? {
        None => None,
        Some(Stored::Whole(body)) => Some(body),
        Some(Stored::Larger) => ctx.store.get(&key).await?,
    };
    let Some(body) = found else {
        outcome.held = Some(held);
        return Ok(false);
    };
    let large = body.len() as u64 > SMALL_READ_BYTES;
    if large {
        held.count(body.len());
    }
    outcome.adopt(body);
    outcome.held = large.then_some(held);
    Ok(true)
}
