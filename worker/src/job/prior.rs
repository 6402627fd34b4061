//! Answers that exist before anything runs, checked in this order:
//!
//! 1. the result cache: a success or final failure cached for the job id answers it (a
//!    failure that is not final is never read here, so it does not deduplicate);
//! 2. the applied record: a redelivery of a job whose writes were committed (a crash before
//!    its result was cached) is answered with the result recorded at the commit — its effects
//!    happened, whatever a revocation or this worker's limits now say;
//! 3. a revocation (`dtee cancel`) by the delivery's own tenant: the job is answered
//!    `cancelled` and never runs. Another tenant's revocation of the same id is not read.

use dtee_schemas::state::applied_key;
use dtee_schemas::{Digest, ErrorCode};
use tracing::debug;

use super::admit::Admitted;
use super::outcome::{CachePolicy, Failure, Outcome};
use super::reads::{HeldResult, Reads, SMALL_READ_BYTES};
use super::{Context, Halt};
use crate::failure::Transient;
use crate::state::{read_snapshot, Seen, Snapshot};
use crate::store::{Prior, Stored};
use std::time::Instant;

/// Stops the path with the answer that already exists, if one does. Otherwise, for a job
/// that binds state, answers the snapshot of its state read in the same round trip (the first
/// attempt runs on it: [`super::execute`]), unless `snapshot` is false (a job this worker
/// refuses anyway, whose bindings are not to be read). Values totalling more than a job reads
/// without a data slot are not read here ([`super::reads`]): the first attempt reads them.
pub(crate) async fn answer(
    ctx: &Context,
    job: &Admitted,
    snapshot: bool,
    reads: &mut Reads<'_>,
) -> Result<Option<Vec<Seen>>, Halt> {
    let id = job.id();
    // All read at once (one round trip on one node); the answers keep their order of precedence.
    let applied_key = job
        .writable_hash_tag()
        .map(|tag| applied_key(&ctx.config.namespace, &tag, id));
    let keys = if snapshot {
        job.snapshot_keys()
    } else {
        Vec::new()
    };
    let full = super::execute::state_read_limit(ctx);
    let call = (!keys.is_empty()).then(|| ctx.state.snapshot_call(&keys, reads.state_limit(full)));
    let started = Instant::now();
    let (
        Prior {
            cached,
            revoked,
            applied,
        },
        snapshot,
    ) = ctx
        .store
        .prior(
            &job.tenant,
            id,
            applied_key.clone(),
            call.as_ref(),
            SMALL_READ_BYTES,
        )
        .await
        .map_err(|error| foreign_value(error, id))?;
    if let Some(cached) = cached {
        // A large one is read whole in a result slot (`reads`); gone meanwhile, it answers
        // nothing.
        if let Some((body, held)) = whole(ctx, job, cached, ctx.store.result_key(id)).await? {
            ctx.telemetry.answered_from_cache();
            debug!(job_id = %id, "answered from the result cache");
            let mut outcome = Outcome::cached(id.clone(), body, CachePolicy::Never);
            outcome.held = held;
            return Err(Halt::Answer(outcome));
        }
    }
    if let (Some(first), Some(key)) = (applied, applied_key) {
        // An applied record does not expire before its job's redeliveries do.
        if let Some((body, held)) = whole(ctx, job, first, key).await? {
            ctx.telemetry.found_applied();
            let mut outcome = Outcome::cached(id.clone(), body, CachePolicy::Final);
            outcome.held = held;
            return Err(Halt::Answer(outcome));
        }
    }
    if revoked {
        return Err(Halt::Fail(Failure::new(
            ErrorCode::Cancelled,
            "the job was cancelled before it ran",
        )));
    }
    let Some(reply) = snapshot else {
        return Ok(None);
    };
    ctx.telemetry.state_read(started.elapsed());
    let snapshot = read_snapshot(reply, &keys).map_err(Transient::Redis)?;
    if matches!(snapshot, Snapshot::TooLarge(total) if total <= full) {
        reads.found_large_state();
        return Ok(None);
    }
    let seen = super::execute::seen_or_refused(ctx, snapshot)?;
    reads.read_state(&seen);
    Ok(Some(seen))
}

/// A stored result, whole: as read, or, if it was larger than a job reads on its own, read
/// again under `key` in a result slot (`None` if it is gone by then).
async fn whole(
    ctx: &Context,
    job: &Admitted,
    stored: Stored,
    key: String,
) -> Result<Option<(Vec<u8>, Option<Box<HeldResult>>)>, Halt> {
    Ok(super::reads::larger_in_slot(ctx, &job.tenant, stored, &key).await?)
}

/// The job's applied record under `hash_tag`, as the outcome to cache and publish.
pub(crate) async fn applied(
    ctx: &Context,
    hash_tag: &str,
    id: &Digest,
) -> Result<Option<Outcome>, Transient> {
    let first = ctx.state.applied(hash_tag, id).await?;
    Ok(first.map(|first| Outcome::cached(id.clone(), first, CachePolicy::Final)))
}

/// A Redis error of the prior look-ups as the path's answer. A key that holds a value of a
/// type the worker never writes there (an operator's mistake) fails the job with
/// `internal_error`, not cached, instead of retrying for ever what cannot change by itself;
/// anything else is transient.
fn foreign_value(error: redis::RedisError, id: &Digest) -> Halt {
    if dtee_net::is_wrong_type(&error) {
        return Halt::Fail(Failure::new(
            ErrorCode::InternalError,
            format!("a redis key of job {id} (its cached result or applied record) holds a value the worker never writes there ({error}); nothing was read, nothing ran"),
        ));
    }
    Halt::from(error)
}

/// As [`foreign_value`], for a result key found holding another type than a string after a
/// short run ([`super::late`]): the run is discarded, nothing was cached.
pub(crate) fn foreign_result(id: &Digest) -> Halt {
    Halt::Fail(Failure::new(
        ErrorCode::InternalError,
        format!("the redis key of job {id}'s cached result holds a value the worker never writes there; nothing was read, nothing was cached"),
    ))
}
