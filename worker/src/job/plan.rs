//! What this worker will run a job with, decided before anything is fetched: the target and
//! kernel format it serves, the job's limits with the worker's defaults filled in (never above
//! its maximums), and the attestation the job requires.

use dtee_schemas::job::{KernelFormat, WasmProfile};
use dtee_schemas::result::EffectiveLimits;
use dtee_schemas::{ErrorCode, JobSpec};

use super::admit::Admitted;
use super::outcome::Failure;
use super::Context;
use std::sync::Arc;

use crate::backend::{Backend, Runner};
use crate::config::Config;

/// How a job will run here.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The limits the backend enforces.
    pub limits: EffectiveLimits,
    /// The backend that runs the job.
    pub runner: Runner,
    /// Whether the kernel may run only as a short run on the job's task, stopping the path
    /// with [`super::Halt::UsualOrder`] otherwise ([`super::late`]).
    pub short_only: bool,
}

/// Plans the run, or fails the job with the reason this worker cannot run it.
pub(crate) fn plan(ctx: &Context, job: &Admitted) -> Result<Plan, Failure> {
    let spec = &job.parsed.spec;
    if !ctx.config.targets.contains(&spec.kernel.target) {
        return Err(Failure::new(
            ErrorCode::UnsupportedTarget,
            format!(
                "this worker serves {:?}, not target {:?}",
                ctx.config.targets, spec.kernel.target
            ),
        ));
    }
    let runner = match ctx.gpus.get(&spec.kernel.target) {
        Some(gpu) => Runner::Gpu(Arc::clone(gpu)),
        None if spec.kernel.profile == Some(WasmProfile::Fast) => {
            Runner::Wasm(Arc::clone(&ctx.wasm_fast))
        }
        None => Runner::Wasm(Arc::clone(&ctx.wasm)),
    };
    let format = match &runner {
        Runner::Gpu(gpu) => gpu.format(),
        Runner::Wasm(wasm) => wasm.format(),
    };
    if spec.kernel.format != format {
        return Err(Failure::new(
            ErrorCode::UnsupportedTarget,
            format!(
                "target {:?} runs {} kernels only, not {}",
                spec.kernel.target,
                format.as_str(),
                spec.kernel.format.as_str()
            ),
        ));
    }
    let limits = resolve_limits(&ctx.config, spec).map_err(|error| {
        Failure::new(ErrorCode::ExcessiveResourceRequirements, error.to_string())
    })?;
    if let Some(requirement) = &spec.attestation {
        if !ctx.attestor.satisfies(requirement.platform) {
            return Err(Failure::new(
                ErrorCode::AttestationUnsatisfiable,
                format!(
                    "the job requires {:?} attestation; this worker attests with {}",
                    requirement.platform,
                    ctx.attestor.platform()
                ),
            )
            .with_limits(limits));
        }
    }
    Ok(Plan {
        limits,
        runner,
        short_only: false,
    })
}

/// Refuses a job listing more buffers or parameters than this worker accepts
/// (`excessive_resource_requirements`, not final), before its prior answers are read: their
/// state snapshot reads every binding the job lists, so the count is checked first.
pub(crate) fn counted(ctx: &Context, job: &Admitted) -> Result<(), Failure> {
    let spec = &job.parsed.spec;
    check_counts(&ctx.config, spec).map_err(|error| {
        let failure = Failure::new(ErrorCode::ExcessiveResourceRequirements, error.to_string());
        match resolve_limits(&ctx.config, spec) {
            Ok(limits) => failure.with_limits(limits),
            Err(_) => failure,
        }
    })
}

/// A job listing more buffers or parameters than this worker accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the job lists {count} {what}; this worker accepts at most {max}")]
pub struct TooMany {
    /// `buffers` or `params`.
    pub what: &'static str,
    /// How many the job lists.
    pub count: usize,
    /// The worker's maximum.
    pub max: usize,
}

/// Refuses a job listing more buffers or parameters than this worker accepts: decided from the
/// job alone, before anything is read from Redis.
fn check_counts(config: &Config, spec: &JobSpec) -> Result<(), TooMany> {
    for (what, count, max) in [
        ("buffers", spec.buffers.len(), config.max_buffers),
        ("params", spec.params.len(), config.max_params),
    ] {
        if count > max {
            return Err(TooMany { what, count, max });
        }
    }
    Ok(())
}

/// A limit a job asks for above this worker's maximum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{name} = {asked} exceeds this worker's maximum of {max}")]
pub struct LimitTooHigh {
    /// The limit's field name.
    pub name: &'static str,
    /// What the job asked for.
    pub asked: u64,
    /// The worker's maximum.
    pub max: u64,
}

/// The job's limits with the worker's defaults filled in, or the first that exceeds its
/// maximum.
pub fn resolve_limits(config: &Config, spec: &JobSpec) -> Result<EffectiveLimits, LimitTooHigh> {
    let (asked, defaults, max) = (&spec.limits, &config.default_limits, &config.max_limits);
    let pick = |name: &'static str, asked: Option<u64>, default: u64, max: u64| match asked {
        Some(asked) if asked > max => Err(LimitTooHigh { name, asked, max }),
        Some(asked) => Ok(asked),
        None => Ok(default),
    };
    Ok(EffectiveLimits {
        timeout_ms: pick(
            "timeout_ms",
            asked.timeout_ms,
            defaults.timeout_ms,
            max.timeout_ms,
        )?,
        // A GPU job's memory is its device allocations, not a 32-bit linear memory.
        memory_bytes: pick(
            "memory_bytes",
            asked.memory_bytes,
            defaults.memory_bytes,
            if spec.kernel.format == KernelFormat::Wasm {
                max.memory_bytes
            } else {
                config.max_device_memory_bytes
            },
        )?,
        fuel: pick("fuel", asked.fuel, defaults.fuel, max.fuel)?,
        output_bytes: pick(
            "output_bytes",
            asked.output_bytes,
            defaults.output_bytes,
            max.output_bytes,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_job_may_ask_for_more_memory_than_a_wasm_memory_holds() {
        let config =
            Config::parse_from(["dtee-worker", "--max-device-memory-bytes", "34359738368"])
                .expect("a valid configuration");
        let mut spec = minimal_job();
        spec.limits.memory_bytes = Some(8 << 30);
        let refused = resolve_limits(&config, &spec).unwrap_err();
        assert_eq!((refused.name, refused.max), ("memory_bytes", 1 << 30));
        spec.kernel.format = KernelFormat::Ptx;
        assert_eq!(
            resolve_limits(&config, &spec).unwrap().memory_bytes,
            8 << 30
        );
        spec.limits.memory_bytes = Some(64 << 30);
        assert_eq!(resolve_limits(&config, &spec).unwrap_err().max, 32 << 30);
        spec.limits.memory_bytes = None;
        assert_eq!(
            resolve_limits(&config, &spec).unwrap().memory_bytes,
            config.default_limits.memory_bytes
        );
    }

    /// A minimal wasm job (no buffers).
    fn minimal_job() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "schema": "dtee.job/v1",
            "kernel": {
                "digest": format!("sha256:{}", "0".repeat(64)),
                "format": "wasm",
                "entry": "run",
                "target": "wasm"
            },
            "buffers": []
        }))
        .expect("a job")
    }
}
