//! Fetching what a run needs: the kernel (compiled once per digest, in a compile slot and
//! within the compile bounds, and kept in the backend's cache; a compile limit is kept for the
//! tenant that met it only, [`CompileRefusals`]) and the input blobs, turned into
//! the backend's slots. Inputs are content-addressed, so they are fetched once per job and
//! cannot change between attempts.
//!
//! Nothing is read before it is measured: the blobs' lengths come first (one round trip), the
//! job's inputs are refused if they total more than the worker's input limit (a blob counted
//! once per listing) and the kernel if it is over the kernel limit, and then each distinct blob
//! is read once, no further than the length that was checked.

use std::collections::HashMap;
use std::sync::Arc;

use dtee_schemas::job::{CheckedBuffer, InputSource};
use dtee_schemas::{Digest, ErrorCode};

use super::admit::Admitted;
use super::outcome::Failure;
use super::plan::Plan;
use super::reads::Reads;
use super::Kernel;
use super::{Context, Halt};
use crate::backend::{slot_capacity, KernelError, Prepared, Slot};
use crate::failure::Transient;
use crate::secrets::SecretValues;

/// The job's kernel, compiled and linked: from the module cache, or from Redis by digest.
pub(crate) async fn kernel(ctx: &Context, job: &Admitted, plan: &Plan) -> Result<Kernel, Halt> {
    let digest = &job.parsed.spec.kernel.digest;
    let prepared = match plan.runner.cached(&job.tenant, digest) {
        Some(prepared) => prepared,
        None => match ctx.compile_refusals.get(&job.tenant, plan, digest) {
            Some(refused) => Err(refused),
            None => compile(ctx, &job.tenant, digest, plan).await?,
        },
    };
    prepared.map_err(|error| {
        Halt::Fail(Failure::new(error.code, error.message).with_limits(plan.limits))
    })
}

/// Fetches and compiles the kernel in a compile slot (separate from the kernel slots, so that
/// compiling never holds one), unless a job that held the slot before compiled it meanwhile.
/// Compile slots are shared fairly between tenants, like kernel slots.
async fn compile(
    ctx: &Context,
    tenant: &str,
    digest: &Digest,
    plan: &Plan,
) -> Result<Prepared<Kernel>, Halt> {
    let _permit = ctx.compile_slots.acquire(tenant).await;
    if let Some(prepared) = plan.runner.cached(tenant, digest) {
        return Ok(prepared);
    }
    if let Some(refused) = ctx.compile_refusals.get(tenant, plan, digest) {
        return Ok(Err(refused));
    }
    let bytes = kernel_bytes(ctx, digest, plan).await?;
    let runner = plan.runner.clone();
    let compiled = digest.clone();
    let charged = tenant.to_owned();
    let prepared = tokio::task::spawn_blocking(move || runner.prepare(&charged, &compiled, &bytes))
        .await
        .map_err(|source| Transient::TaskLost {
            what: "compilation",
            source,
        })?
        .map_err(Transient::Prepare)?;
    if let Err(error) = &prepared {
        if error.code == ErrorCode::KernelCompileLimitExceeded {
            ctx.compile_refusals.insert(tenant, plan, digest, error);
        }
    }
    Ok(prepared)
}

/// Compile limits (`kernel_compile_limit_exceeded`) by tenant and digest. The backend's module
/// cache keeps a kernel's deterministic outcome for every tenant, but not this one: whether a
/// compile finishes within the worker's bounds depends on how loaded the worker is, which
/// another tenant may have caused, so one tenant's refusal must not answer another's job. The
/// tenant that met it gets it again for [`CompileRefusals::KEPT`] without the worker spending its
/// bounds again; others compile the kernel themselves.
#[derive(Debug, Default)]
pub(crate) struct CompileRefusals {
    entries: std::sync::Mutex<HashMap<RefusalKey, (std::time::Instant, KernelError)>>,
}

/// A tenant, what the kernel compiles to (`Runner::compiled_as`) and its digest.
type RefusalKey = (String, &'static str, Digest);

impl CompileRefusals {
    /// How long a refusal is kept.
    pub(crate) const KEPT: std::time::Duration = std::time::Duration::from_secs(60);
    /// The most refusals kept; the oldest goes first.
    const CAPACITY: usize = 1024;

    /// The refusal `tenant` met for `digest` on `plan`'s runner, if it is recent.
    fn get(&self, tenant: &str, plan: &Plan, digest: &Digest) -> Option<KernelError> {
        let key = (tenant.to_owned(), plan.runner.compiled_as(), digest.clone());
        let mut entries = self.entries.lock().expect("compile refusals lock");
        match entries.get(&key) {
            Some((at, error)) if at.elapsed() < Self::KEPT => Some(error.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, tenant: &str, plan: &Plan, digest: &Digest, error: &KernelError) {
        let mut entries = self.entries.lock().expect("compile refusals lock");
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < Self::KEPT);
        }
        if entries.len() >= Self::CAPACITY {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(key, _)| key.clone());
            oldest.map(|key| entries.remove(&key));
        }
        let key = (tenant.to_owned(), plan.runner.compiled_as(), digest.clone());
        entries.insert(key, (std::time::Instant::now(), error.clone()));
    }
}

/// The kernel's bytes, its length checked against the worker's size limit before they are read,
/// and the bytes against their digest.
async fn kernel_bytes(ctx: &Context, digest: &Digest, plan: &Plan) -> Result<Vec<u8>, Halt> {
    let fail = |code, message| Halt::Fail(Failure::new(code, message).with_limits(plan.limits));
    let Some(length) = ctx.store.blob_lengths(&[digest]).await?.pop().flatten() else {
        return Err(fail(
            ErrorCode::KernelNotFound,
            format!("no blob is stored under {digest}"),
        ));
    };
    if length > ctx.config.max_kernel_bytes {
        // A worker setting, not a property of the kernel: not final.
        return Err(fail(
            ErrorCode::ExcessiveResourceRequirements,
            format!(
                "the kernel is {length} bytes; this worker accepts at most {}",
                ctx.config.max_kernel_bytes
            ),
        ));
    }
    let bytes = ctx
        .store
        .blobs_bounded(&[(digest, length)])
        .await?
        .pop()
        .unwrap_or_default();
    ctx.telemetry.kernel_fetched(bytes.len());
    if !digest.matches(&bytes) {
        remove_bad_blob(ctx, digest, &bytes).await;
        return Err(fail(
            ErrorCode::KernelHashMismatch,
            format!(
                "the bytes stored under {digest} hash to {}",
                Digest::of(&bytes)
            ),
        ));
    }
    Ok(bytes)
}

/// Deletes a blob whose bytes do not hash to its digest, so that the next upload of the right
/// bytes (`SET NX`) stores them; a failure to delete is only logged (the job's answer says
/// what was wrong either way).
async fn remove_bad_blob(ctx: &Context, digest: &Digest, bad: &[u8]) {
    match ctx.store.remove_bad_blob(digest, bad).await {
        Ok(true) => tracing::warn!(%digest, "deleted a blob whose bytes do not match its digest"),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%digest, %error, "could not delete a blob whose bytes do not match its digest")
        }
    }
}

/// The job's input blobs, measured and within the worker's input limit: each distinct digest
/// stored and its length, in first-listed order, and the first input whose blob is missing.
/// Blobs in the worker's blob cache are measured there, not in Redis; no blob is held before
/// [`slots`] reads it (in the job's data slot, if they are large: `super::reads`).
#[derive(Debug)]
pub(crate) struct Inputs {
    blobs: Vec<(Digest, usize)>,
    missing: Option<(String, Digest)>,
}

/// Measures the job's inputs without reading any blob, and refuses a job whose inputs total
/// more than `max_input_bytes`, inline bytes and each blob listing counted
/// (`excessive_resource_requirements`, not final: a worker setting). A missing blob is reported
/// by [`slots`], after the kernel, as before.
pub(crate) async fn measure_inputs(
    ctx: &Context,
    job: &Admitted,
    plan: &Plan,
) -> Result<Inputs, Halt> {
    let (mut inline, mut listed) = (0usize, Vec::new());
    for buffer in &job.parsed.buffers {
        match buffer {
            CheckedBuffer::Input {
                source: InputSource::Inline(bytes),
                ..
            } => inline = inline.saturating_add(bytes.len()),
            CheckedBuffer::Input {
                name,
                source: InputSource::Blob(digest),
            } => listed.push((name, digest)),
            _ => {}
        }
    }
    let mut distinct: Vec<&Digest> = Vec::new();
    for (_, digest) in &listed {
        if !distinct.contains(digest) {
            distinct.push(digest);
        }
    }
    let cached: HashMap<&Digest, usize> = distinct
        .iter()
        .filter_map(|digest| Some((*digest, ctx.blob_cache.peek_len(digest)?)))
        .collect();
    let uncached: Vec<&Digest> = distinct
        .iter()
        .copied()
        .filter(|digest| !cached.contains_key(digest))
        .collect();
    let lengths = ctx.store.blob_lengths(&uncached).await?;
    let mut length_of: HashMap<&Digest, Option<usize>> =
        uncached.iter().copied().zip(lengths).collect();
    for (digest, length) in &cached {
        length_of.insert(digest, Some(*length));
    }
    let total = listed.iter().fold(inline, |total, (_, digest)| {
        total.saturating_add(length_of[digest].unwrap_or(0))
    });
    if total > ctx.config.max_input_bytes {
        return Err(Halt::Fail(
            Failure::new(
                ErrorCode::ExcessiveResourceRequirements,
                format!(
                    "the job's inputs total {total} bytes ({} blob listings, {inline} inline bytes); this worker accepts at most {}",
                    listed.len(),
                    ctx.config.max_input_bytes
                ),
            )
            .with_limits(plan.limits),
        ));
    }
    let missing = listed
        .iter()
        .find(|(_, digest)| length_of[digest].is_none())
        .map(|(name, digest)| ((*name).clone(), (*digest).clone()));
    let blobs = distinct
        .into_iter()
        .filter_map(|digest| Some((digest.clone(), length_of[digest]?)))
        .collect();
    Ok(Inputs { blobs, missing })
}

/// The job's buffers as backend slots, in job order: inputs with their bytes (each distinct blob
/// read once, in one round trip, checked against its digest, and shared by every listing),
/// outputs and state with their capacity ([`slot_capacity`]: for wasm the output limit also
/// caps what any one buffer can hold). State slots are filled by each attempt's snapshot.
pub(crate) async fn slots(
    ctx: &Context,
    job: &Admitted,
    plan: &Plan,
    inputs: Inputs,
    secrets: &SecretValues,
    reads: &mut Reads<'_>,
) -> Result<Vec<Slot>, Halt> {
    if let Some((name, digest)) = inputs.missing {
        return Err(Halt::Fail(
            Failure::new(
                ErrorCode::InputNotFound,
                format!("input {name:?}: no blob is stored under {digest}"),
            )
            .with_limits(plan.limits),
        ));
    }
    let blob_bytes: u64 = inputs.blobs.iter().map(|(_, length)| *length as u64).sum();
    reads.before_blobs(blob_bytes).await;
    let blobs = blob_data(ctx, &job.tenant, plan, &inputs, reads).await?;
    let output_bytes = plan.limits.output_bytes;
    let format = job.parsed.spec.kernel.format;
    let buffers = &job.parsed.buffers;
    let mut slots = Vec::with_capacity(buffers.len());
    for (index, buffer) in buffers.iter().enumerate() {
        slots.push(match buffer {
            CheckedBuffer::Input {
                name,
                source: InputSource::Inline(bytes),
            } => Slot::Input {
                name: name.clone(),
                data: Arc::clone(bytes),
            },
            CheckedBuffer::Input {
                name,
                source: InputSource::Blob(digest),
            } => Slot::Input {
                name: name.clone(),
                data: Arc::clone(&blobs[digest]),
            },
            CheckedBuffer::Output { name, size } => Slot::Output {
                name: name.clone(),
                capacity: slot_capacity(format, Some(*size), output_bytes),
            },
            CheckedBuffer::State {
                name,
                mode,
                max_size,
                ..
            } => Slot::State {
                name: name.clone(),
                mode: *mode,
                current: Arc::from(Vec::new()),
                capacity: slot_capacity(format, *max_size, output_bytes),
            },
            // Released for this job by the keeper (every secret the job names, or it failed).
            CheckedBuffer::Secret { name, .. } => match secrets.get(index) {
                Some(value) => Slot::Input {
                    name: name.clone(),
                    data: Arc::clone(value),
                },
                None => {
                    return Err(Halt::Fail(Failure::new(
                        ErrorCode::SecretReleaseDenied,
                        format!("secret buffer {name:?} was not released"),
                    )))
                }
            },
        });
    }
    Ok(slots)
}

/// Reads each measured blob once, no further than its measured length, and checks it against
/// its digest.
async fn blob_data(
    ctx: &Context,
    tenant: &str,
    plan: &Plan,
    inputs: &Inputs,
    reads: &mut Reads<'_>,
) -> Result<HashMap<Digest, Arc<[u8]>>, Halt> {
    // From the blob cache where they still are; the rest from Redis, no further than the length
    // measured.
    let mut blobs = HashMap::new();
    let mut wanted: Vec<(&Digest, usize)> = Vec::new();
    for (digest, length) in &inputs.blobs {
        match ctx.blob_cache.get(tenant, digest) {
            Some(bytes) => {
                blobs.insert(digest.clone(), bytes);
            }
            None => wanted.push((digest, *length)),
        }
    }
    let read = ctx.store.blobs_bounded(&wanted).await?;
    ctx.telemetry
        .inputs_fetched(read.iter().map(Vec::len).sum());
    for ((digest, _), bytes) in wanted.into_iter().zip(read) {
        if !digest.matches(&bytes) {
            remove_bad_blob(ctx, digest, &bytes).await;
            return Err(Halt::Fail(
                Failure::new(
                    ErrorCode::InputNotFound,
                    format!(
                        "the bytes stored under {digest} hash to {} (the blob was removed or replaced)",
                        Digest::of(&bytes)
                    ),
                )
                .with_limits(plan.limits),
            ));
        }
        let bytes: Arc<[u8]> = Arc::from(bytes);
        ctx.blob_cache.insert(tenant, digest, &bytes);
        blobs.insert(digest.clone(), bytes);
    }
    // Counted whether read or shared with the cache: the job holds them until it has run.
    reads.read_blobs(blobs.values().map(|bytes| bytes.len() as u64).sum());
    Ok(blobs)
}
