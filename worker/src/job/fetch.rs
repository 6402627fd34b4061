//! Fetching what a run needs: the kernel (compiled once per digest, in a compile slot and
//! within the compile bounds, and kept in the backend's cache) and the input blobs, turned into the backend's slots. Inputs are content-addressed,
//! so they are fetched once per job and cannot change between attempts.

use std::sync::Arc;

use dtee_schemas::job::{CheckedBuffer, InputSource};
use dtee_schemas::{Digest, ErrorCode};

use super::admit::Admitted;
use super::outcome::Failure;
use super::plan::Plan;
use super::Kernel;
use super::{Context, Halt};
use crate::backend::wasm::Prepared;
use crate::backend::{Backend, Slot};
use crate::failure::Transient;

/// The job's kernel, compiled and linked: from the module cache, or from Redis by digest.
pub(crate) async fn kernel(ctx: &Context, job: &Admitted, plan: &Plan) -> Result<Kernel, Halt> {
    let digest = &job.parsed.spec.kernel.digest;
    let prepared = match ctx.wasm.cached(digest) {
        Some(prepared) => prepared,
        None => compile(ctx, digest, plan).await?,
    };
    match prepared.as_ref() {
        Ok(kernel) => Ok(kernel.clone()),
        Err(error) => Err(Halt::Fail(
            Failure::new(error.code, error.message.clone()).with_limits(plan.limits),
        )),
    }
}

/// Fetches and compiles the kernel in a compile slot (separate from the kernel slots, so that
/// compiling never holds one), unless a job that held the slot before compiled it meanwhile.
async fn compile(ctx: &Context, digest: &Digest, plan: &Plan) -> Result<Arc<Prepared>, Halt> {
    let _permit = ctx
        .compile_slots
        .acquire()
        .await
        .map_err(|_| Transient::SlotsClosed)?;
    if let Some(prepared) = ctx.wasm.cached(digest) {
        return Ok(prepared);
    }
    let bytes = kernel_bytes(ctx, digest, plan).await?;
    let wasm = Arc::clone(&ctx.wasm);
    let digest = digest.clone();
    let prepared = tokio::task::spawn_blocking(move || wasm.prepare(&digest, &bytes))
        .await
        .map_err(|source| Transient::TaskLost {
            what: "compilation",
            source,
        })?;
    Ok(prepared.map_err(Transient::Prepare)?)
}

/// The kernel's bytes, checked against the worker's size limit and against their digest.
async fn kernel_bytes(ctx: &Context, digest: &Digest, plan: &Plan) -> Result<Vec<u8>, Halt> {
    let fail = |code, message| Halt::Fail(Failure::new(code, message).with_limits(plan.limits));
    let Some(bytes) = ctx.store.blob(digest).await? else {
        return Err(fail(
            ErrorCode::KernelNotFound,
            format!("no blob is stored under {digest}"),
        ));
    };
    if bytes.len() > ctx.config.max_kernel_bytes {
        // A worker setting, not a property of the kernel: not final.
        return Err(fail(
            ErrorCode::ExcessiveResourceRequirements,
            format!(
                "the kernel is {} bytes; this worker accepts at most {}",
                bytes.len(),
                ctx.config.max_kernel_bytes
            ),
        ));
    }
    if !digest.matches(&bytes) {
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

/// The job's buffers as backend slots, in job order: inputs with their bytes (blobs fetched in
/// one round trip and checked against their digests), outputs and state with their capacity
/// (the output limit also caps what any one buffer can hold). State slots are filled by each
/// attempt's snapshot.
pub(crate) async fn slots(ctx: &Context, job: &Admitted, plan: &Plan) -> Result<Vec<Slot>, Halt> {
    let fail = |message: String| {
        Halt::Fail(Failure::new(ErrorCode::InputNotFound, message).with_limits(plan.limits))
    };
    let buffers = &job.parsed.buffers;
    let blob_digests: Vec<&Digest> = buffers
        .iter()
        .filter_map(|buffer| match buffer {
            CheckedBuffer::Input {
                source: InputSource::Blob(digest),
                ..
            } => Some(digest),
            _ => None,
        })
        .collect();
    let mut blobs = ctx.store.blobs(&blob_digests).await?.into_iter();
    let output_bytes = plan.limits.output_bytes;
    let mut slots = Vec::with_capacity(buffers.len());
    for buffer in buffers {
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
            } => {
                let Some(bytes) = blobs.next().flatten() else {
                    return Err(fail(format!(
                        "input {name:?}: no blob is stored under {digest}"
                    )));
                };
                if !digest.matches(&bytes) {
                    return Err(fail(format!(
                        "input {name:?}: the bytes stored under {digest} hash to {}",
                        Digest::of(&bytes)
                    )));
                }
                Slot::Input {
                    name: name.clone(),
                    data: bytes.into(),
                }
            }
            CheckedBuffer::Output { name, size } => Slot::Output {
                name: name.clone(),
                capacity: (*size).min(output_bytes),
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
                capacity: max_size.unwrap_or(output_bytes).min(output_bytes),
            },
        });
    }
    Ok(slots)
}
