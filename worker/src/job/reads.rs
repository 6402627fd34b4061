//! What jobs that wait may hold in memory. A delivery can wait on a worker (for a kernel slot,
//! a GPU) with up to `DTEE_MAX_INPUT_BYTES` of input blobs and as much again of state values,
//! and a worker holds up to `DTEE_PREFETCH` deliveries of every queue it consumes: without a
//! bound, one tenant's burst of large jobs could make a worker read gigabytes before any of
//! them ran. So a job reads at most [`SMALL_READ_BYTES`] of blobs and [`SMALL_READ_BYTES`] of
//! state on its own; anything larger is read only while the job holds a *data slot* of its
//! runner, one per kernel slot (`DTEE_CONCURRENCY`) or GPU device, shared fairly between
//! tenants like those, and kept until the job has run. The bytes read for jobs that have not
//! finished are counted (`Stats::data_bytes_held`, the gauge `dtee_job_data_bytes`), blobs
//! shared with the worker's blob cache included: a job keeps them after the cache lets go.
//!
//! Results are bounded the same way. A result of more than [`SMALL_READ_BYTES`] waits to be
//! published in a *result slot* (`Context::result_slots`: one per kernel slot and GPU device,
//! fair between tenants), which it takes while its run still holds its kernel slot, so finished
//! results cannot pile up behind a slow broker faster than they go out; between the resends of
//! a result the broker refused, it gives the slot back and keeps no copy (it reads the cached
//! result again). A result-slot holder waits for nothing but Redis and the broker, so holding a
//! kernel slot while waiting for one cannot deadlock. Results held are counted too
//! (`Stats::result_bytes_held`).

use std::sync::Arc;

use crate::backend::Runner;
use crate::fair::{FairSlots, SlotPermit};
use crate::state::Seen;
use crate::stats::Stats;

use super::Context;

/// The most bytes of input blobs, and separately of state values, a job reads without a data
/// slot.
pub(crate) const SMALL_READ_BYTES: u64 = 1 << 20;

/// One job's reads: its data slot once it needs one, and the bytes it holds.
#[derive(Debug)]
pub(crate) struct Reads<'a> {
    stats: &'a Stats,
    tenant: &'a str,
    slots: Option<Arc<FairSlots>>,
    permit: Option<SlotPermit>,
    blob_bytes: u64,
    state_bytes: u64,
    /// A snapshot found more state than a job reads without a data slot.
    large_state: bool,
}

impl<'a> Reads<'a> {
    /// Nothing read yet, by `tenant`'s job.
    pub(crate) fn new(ctx: &'a Context, tenant: &'a str) -> Reads<'a> {
        Reads {
            stats: ctx.telemetry.stats(),
            tenant,
            slots: None,
            permit: None,
            blob_bytes: 0,
            state_bytes: 0,
            large_state: false,
        }
    }

    /// The job will run on `runner`: its data slots are the ones a large read waits for.
    pub(crate) fn runs_on(&mut self, ctx: &Context, runner: &Runner) {
        self.slots = Some(match runner {
            Runner::Wasm(_) => Arc::clone(&ctx.data_slots),
            Runner::Gpu(gpu) => Arc::clone(&gpu.data_slots),
        });
    }

    /// Whether the job holds a data slot.
    pub(crate) fn holds_slot(&self) -> bool {
        self.permit.is_some()
    }

    /// The most bytes of state values to read now: all the worker allows with a data slot,
    /// [`SMALL_READ_BYTES`] without.
    pub(crate) fn state_limit(&self, full: u64) -> u64 {
        if self.holds_slot() {
            full
        } else {
            full.min(SMALL_READ_BYTES)
        }
    }

    /// A snapshot found more state than [`Reads::state_limit`] allowed without a slot: the next
    /// one is read in a data slot.
    pub(crate) fn found_large_state(&mut self) {
        self.large_state = true;
    }

    /// Whether the job's state is known to need a data slot.
    pub(crate) fn large_state(&self) -> bool {
        self.large_state
    }

    /// Waits for a data slot before `bytes` of blobs are read, if they are more than
    /// [`SMALL_READ_BYTES`].
    pub(crate) async fn before_blobs(&mut self, bytes: u64) {
        if bytes > SMALL_READ_BYTES {
            self.take_slot().await;
        }
    }

    /// Waits for a data slot (at once if it holds one). Without a runner (before the plan) a
    /// job never reads more than [`SMALL_READ_BYTES`], so it never waits there.
    pub(crate) async fn take_slot(&mut self) {
        if self.permit.is_some() {
            return;
        }
        if let Some(slots) = &self.slots {
            self.permit = Some(slots.acquire(self.tenant).await);
        }
    }

    /// The job holds `bytes` of blobs (read, or shared with the blob cache).
    pub(crate) fn read_blobs(&mut self, bytes: u64) {
        self.blob_bytes = self.blob_bytes.saturating_add(bytes);
        self.add(bytes);
    }

    /// The job's state values are now those of `seen` (a later snapshot replaces an earlier).
    pub(crate) fn read_state(&mut self, seen: &[Seen]) {
        let bytes: u64 = seen
            .iter()
            .filter_map(|seen| seen.value.as_ref())
            .map(|value| value.len() as u64)
            .sum();
        self.sub(self.state_bytes);
        self.state_bytes = bytes;
        self.add(bytes);
    }

    fn add(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let now = self
            .stats
            .data_bytes_held
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(bytes);
        let now = u64::try_from(now).unwrap_or(0);
        self.stats
            .data_bytes_peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.stats
            .data_bytes_held
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Reads<'_> {
    fn drop(&mut self) {
        self.sub(self.blob_bytes.saturating_add(self.state_bytes));
    }
}

/// A stored answer (a cached result, an applied record) under `key`, for a job of `tenant`:
/// read whole if it is at most [`SMALL_READ_BYTES`], and a larger one read whole only once a
/// result slot is held (`None` when there is none, or none by then).
pub(crate) async fn stored_answer(
    ctx: &Context,
    tenant: &str,
    key: String,
) -> Result<Option<(Vec<u8>, Option<Box<HeldResult>>)>, redis::RedisError> {
    match ctx.store.get_bounded(&key, SMALL_READ_BYTES).await? {
        None => Ok(None),
        Some(stored) => larger_in_slot(ctx, tenant, stored, &key).await,
    }
}

/// `stored` whole: as read, or, if it was larger than a job reads on its own, read again under
/// `key` in a result slot of `tenant` (`None` if it is gone by then).
pub(crate) async fn larger_in_slot(
    ctx: &Context,
    tenant: &str,
    stored: crate::store::Stored,
    key: &str,
) -> Result<Option<(Vec<u8>, Option<Box<HeldResult>>)>, redis::RedisError> {
    match stored {
        crate::store::Stored::Whole(body) => Ok(Some((body, None))),
        crate::store::Stored::Larger => {
            let mut held = HeldResult::slot(ctx, tenant).await;
            let body: Option<Vec<u8>> = ctx.store.get(key).await?;
            Ok(body.map(|body| {
                held.count(body.len());
                (body, Some(Box::new(held)))
            }))
        }
    }
}

/// A large result's result slot, and its bytes counted as held, until dropped.
#[derive(Debug)]
pub(crate) struct HeldResult {
    _permit: SlotPermit,
    stats: Arc<Stats>,
    bytes: u64,
}

impl HeldResult {
    /// Waits for a result slot for `tenant`'s result of `bytes` bytes (at once `None` for a
    /// small one).
    pub(crate) async fn take(ctx: &Context, tenant: &str, bytes: usize) -> Option<Box<HeldResult>> {
        if bytes as u64 <= SMALL_READ_BYTES {
            return None;
        }
        HeldResult::slot(ctx, tenant).await.keep(bytes)
    }

    /// Waits for a result slot for `tenant`, holding no bytes yet.
    pub(crate) async fn slot(ctx: &Context, tenant: &str) -> HeldResult {
        HeldResult {
            _permit: ctx.result_slots.acquire(tenant).await,
            stats: Arc::clone(ctx.telemetry.stats()),
            bytes: 0,
        }
    }

    /// Keeps this slot for a result of `bytes` bytes if it is larger than
    /// [`SMALL_READ_BYTES`]; gives it back otherwise.
    pub(crate) fn keep(mut self, bytes: usize) -> Option<Box<HeldResult>> {
        if bytes as u64 <= SMALL_READ_BYTES {
            return None;
        }
        self.count(bytes);
        Some(Box::new(self))
    }

    /// The result held is `bytes` larger.
    pub(crate) fn count(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.bytes = self.bytes.saturating_add(bytes);
        let now = self
            .stats
            .result_bytes_held
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(bytes);
        self.stats
            .result_bytes_peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for HeldResult {
    fn drop(&mut self) {
        self.stats
            .result_bytes_held
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}
