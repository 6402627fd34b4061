//! `dtee-worker doctor` (what this machine can do) and `dtee-worker exec` (run one job without a
//! broker), for operators and kernel authors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use dtee_schemas::job::{CheckedBuffer, InputSource, WasmProfile};
use dtee_schemas::result::{Execution, JobError, JobResult, JobStatus, ResultSchema};
use dtee_schemas::run::GpuDevice;
use dtee_schemas::Digest;
use serde_json::json;

use crate::backend::gpu::device::{self, DriverKind};
use crate::backend::gpu::{self, GpuBackend};
use crate::backend::wasm::WasmBackend;
use crate::backend::{Backend, Invocation, ParamValue, Runner, Slot};
use crate::config::Config;

/// What `doctor` found, as JSON.
pub fn doctor_report(config: &Config) -> serde_json::Value {
    let snp = crate::attestation::snp::SnpProvider::open();
    let tpm = tpm_check(config);
    let gpus: Vec<serde_json::Value> = [DriverKind::Cuda, DriverKind::Hip]
        .into_iter()
        .map(|kind| {
            let (devices, detail) = match device::probe(kind) {
                Ok(devices) => (devices, None),
                Err(why) => (Vec::new(), Some(why)),
            };
            json!({
                "driver": kind.name(),
                "built": kind.built(),
                "devices": devices.iter().enumerate().map(|(ordinal, info)| json!({
                    "ordinal": ordinal,
                    "vendor": info.device.vendor,
                    "name": info.device.name,
                    "arch": info.device.arch,
                    "driver": info.device.driver,
                    "memory_bytes": info.memory_bytes,
                    "target": gpu::target_of(kind, info),
                    "format": gpu::format_of(kind).as_str(),
                })).collect::<Vec<_>>(),
                "detail": detail,
            })
        })
        .collect();
    json!({
        "sev_snp": {
            "available": snp.is_ok(),
            "detail": snp.err().map(|e| e.to_string()),
        },
        "tpm": {
            "available": tpm.is_ok(),
            "tcti": config.provider_settings.tpm_tcti,
            "detail": tpm.err(),
        },
        "gpus": gpus,
        "wasm": {
            "available": true,
            "target": "wasm",
            "format": "wasm",
            "engine": "wasmtime",
            "profiles": ["deterministic", "fast"],
        },
    })
}

#[cfg(feature = "tpm")]
fn tpm_check(config: &Config) -> Result<(), String> {
    let settings = &config.provider_settings;
    crate::attestation::tpm::TpmProvider::new(&settings.tpm_tcti, settings.tpm_pcr)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[cfg(not(feature = "tpm"))]
fn tpm_check(_config: &Config) -> Result<(), String> {
    Err("this dtee-worker was built without TPM support (cargo feature `tpm`)".to_owned())
}

/// The report for humans.
pub fn doctor_text(report: &serde_json::Value) -> String {
    let mut out = String::new();
    let line = |ok: bool, what: &str, detail: &str| {
        format!(
            "{} {what}{}\n",
            if ok { "yes" } else { " no" },
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        )
    };
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("").to_owned();
    out += &line(
        report["sev_snp"]["available"] == true,
        "SEV-SNP guest device",
        &text(&report["sev_snp"]["detail"]),
    );
    out += &line(
        report["tpm"]["available"] == true,
        &format!("TPM at {}", text(&report["tpm"]["tcti"])),
        &text(&report["tpm"]["detail"]),
    );
    for gpu in report["gpus"].as_array().into_iter().flatten() {
        let devices = gpu["devices"].as_array().cloned().unwrap_or_default();
        if devices.is_empty() {
            out += &line(
                false,
                &format!("{} GPU", text(&gpu["driver"])),
                &text(&gpu["detail"]),
            );
        }
        for device in devices {
            out += &line(
                true,
                &format!(
                    "{} GPU {} ({}, {}), serves target {}",
                    text(&gpu["driver"]),
                    text(&device["name"]),
                    text(&device["arch"]),
                    text(&device["driver"]),
                    text(&device["target"])
                ),
                "",
            );
        }
    }
    out += &line(
        true,
        "wasm backend (wasmtime), serves target wasm (profiles deterministic and fast)",
        "",
    );
    out
}

/// `dtee-worker exec JOB.json... --blobs DIR`: runs jobs through the backend of their target,
/// under the same limits and attestation as a worker, with no RabbitMQ and no Redis, and returns
/// their signed results. Blobs (kernels, blob inputs) are the files of `blobs`, found by their
/// digests. State bindings are refused: there is no store to read or commit them.
///
/// Several jobs run one after the other in the same process, on the same backends: a job after
/// one whose device host was killed runs on a fresh host, as in a worker. With `repeat` above 0
/// each kernel runs that many more times first, and the wall time of each of those runs is
/// returned: the per-job cost of the backend, for benchmarks (tests/gpu/device-check.sh).
pub fn exec(
    config: &Config,
    jobs: &[&Path],
    blobs: Option<&Path>,
    repeat: usize,
) -> anyhow::Result<Vec<Executed>> {
    let store = match blobs {
        Some(dir) => blob_index(dir)?,
        None => HashMap::new(),
    };
    let attestor = crate::attest(config)?;
    let mut runners: HashMap<(String, WasmProfile), Runner> = HashMap::new();
    let mut executed = Vec::with_capacity(jobs.len());
    for job in jobs {
        let started_at = crate::clock::unix_ms();
        let bytes = std::fs::read(job).with_context(|| format!("reading {}", job.display()))?;
        let parsed = dtee_schemas::parse_job(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let target = parsed.spec.kernel.target.clone();
        let profile = parsed.spec.kernel.profile.unwrap_or_default();
        let key = (target, profile);
        let runner = match runners.get(&key) {
            Some(runner) => runner.clone(),
            None => {
                let runner = start_runner(config, &key.0, profile)?;
                runners.insert(key, runner.clone());
                runner
            }
        };
        let limits = crate::job::plan::resolve_limits(config, &parsed.spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (mut result, timings, ran_on) = run_one(&runner, &parsed, &store, limits, repeat)?;
        // The device the kernel ran on; a GPU job refused before reaching one names the
        // target's first device.
        let (backend, device) = match &runner {
            Runner::Wasm(wasm) => (wasm.name(), None),
            Runner::Gpu(gpu) => (
                gpu.name(),
                Some(ran_on.unwrap_or_else(|| gpu.device().clone())),
            ),
        };
        let execution = Execution {
            execution_id: format!("{:032x}", rand::random::<u128>()),
            worker_id: config.worker_id.clone(),
            backend: backend.to_owned(),
            device,
            started_at_unix_ms: started_at,
            finished_at_unix_ms: crate::clock::unix_ms(),
            attempts: 1,
        };
        result.execution = Some(execution.clone());
        let statement =
            crate::job::outcome::statement(&attestor, &result, execution, Some(&parsed));
        result.attestation = Some(attestor.attest(statement));
        executed.push(Executed { result, timings });
    }
    Ok(executed)
}

/// One job's result, and the wall times of its repeated runs.
#[derive(Debug)]
pub struct Executed {
    /// The signed result.
    pub result: JobResult,
    /// The repeated runs (empty without `--repeat`).
    pub timings: Vec<std::time::Duration>,
}

fn start_runner(config: &Config, target: &str, profile: WasmProfile) -> anyhow::Result<Runner> {
    let program = config
        .compile
        .program
        .clone()
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()));
    if gpu::is_gpu_target(target) {
        let kind = gpu::driver_for_target(target).expect("a GPU target");
        let devices =
            device::probe(kind).map_err(|why| anyhow::anyhow!("target {target}: {why}"))?;
        let Some(group) = gpu::serving_groups(kind, &devices)
            .into_iter()
            .find(|group| group.target == target)
        else {
            bail!("no device here serves target {target}");
        };
        let ordinals = group.ordinals;
        let backend = GpuBackend::start(kind, &ordinals, program, config.gpu_share_host)
            .map_err(|why| anyhow::anyhow!(why))?;
        Ok(Runner::Gpu(Arc::new(backend)))
    } else if target == "wasm" {
        let mut compile = config.compile.clone();
        compile.program = Some(program);
        Ok(Runner::Wasm(Arc::new(WasmBackend::with_profile(
            profile,
            4,
            1 << 30,
            compile,
            1,
        )?)))
    } else {
        bail!("no backend serves target {target:?}")
    }
}

fn run_one(
    runner: &Runner,
    parsed: &dtee_schemas::ParsedJob,
    store: &HashMap<Digest, Vec<u8>>,
    limits: dtee_schemas::result::EffectiveLimits,
    repeat: usize,
) -> anyhow::Result<(JobResult, Vec<std::time::Duration>, Option<GpuDevice>)> {
    let spec = &parsed.spec;
    let blob = |digest: &Digest| {
        store
            .get(digest)
            .cloned()
            .with_context(|| format!("no file in the blobs folder has digest {digest}"))
    };
    let format = match runner {
        Runner::Wasm(wasm) => wasm.format(),
        Runner::Gpu(gpu) => gpu.format(),
    };
    if spec.kernel.format != format {
        bail!(
            "target {} runs {} kernels, not {}",
            spec.kernel.target,
            format.as_str(),
            spec.kernel.format.as_str()
        );
    }
    let mut slots = Vec::new();
    for buffer in &parsed.buffers {
        slots.push(match buffer {
            CheckedBuffer::Input { name, source } => Slot::Input {
                name: name.clone(),
                data: match source {
                    InputSource::Inline(bytes) => Arc::clone(bytes),
                    InputSource::Blob(digest) => Arc::from(blob(digest)?),
                },
            },
            CheckedBuffer::Output { name, size } => Slot::Output {
                name: name.clone(),
                capacity: crate::backend::slot_capacity(
                    spec.kernel.format,
                    Some(*size),
                    limits.output_bytes,
                ),
            },
            CheckedBuffer::State { name, .. } => {
                bail!("buffer {name:?} binds state: exec runs jobs without a store (state bindings are refused)")
            }
            CheckedBuffer::Secret { name, .. } => {
                bail!("buffer {name:?} names a secret: exec runs jobs without a secret keeper")
            }
        });
    }
    let kernel_bytes = blob(&spec.kernel.digest)?;
    // One user: the cache's tenant is this command.
    let prepared = runner.prepare("exec", &spec.kernel.digest, &kernel_bytes)?;
    let invocation = Invocation {
        entry: spec.kernel.entry.clone(),
        slots,
        params: spec
            .params
            .iter()
            .map(|param| ParamValue {
                name: param.name.clone(),
                ty: param.ty,
                value: param.value,
            })
            .collect(),
        limits,
        launch: spec.launch,
        tenant: "exec".to_owned(),
    };
    let mut timings = Vec::with_capacity(repeat);
    if let Ok(kernel) = &prepared {
        for _ in 0..repeat {
            let started = std::time::Instant::now();
            runner
                .run(kernel, &invocation)
                .map_err(|e| anyhow::anyhow!("a repeated run: {e}"))?;
            timings.push(started.elapsed());
        }
    }
    let ran = prepared.and_then(|kernel| runner.run(&kernel, &invocation));
    let (status, error, outputs, resources, device) = match ran {
        Ok(completed) => {
            let outputs = crate::job::execute::output_data(&parsed.buffers, completed.written);
            (
                JobStatus::Succeeded,
                None,
                outputs,
                Some(completed.usage),
                completed.device,
            )
        }
        Err(error) => (
            JobStatus::Failed,
            Some(JobError {
                code: error.code,
                message: error.message,
            }),
            Vec::new(),
            Some(error.usage),
            error.device.map(|d| *d),
        ),
    };
    let result = JobResult {
        schema: ResultSchema::V1,
        job_id: parsed.id.clone(),
        status,
        error,
        outputs,
        state: None,
        limits: Some(limits),
        resources,
        execution: None,
        attestation: None,
    };
    Ok((result, timings, device))
}

/// The files of `dir`, by the digest of their bytes.
fn blob_index(dir: &Path) -> anyhow::Result<HashMap<Digest, Vec<u8>>> {
    let mut index = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        if path.is_file() {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            index.insert(Digest::of(&bytes), bytes);
        }
    }
    Ok(index)
}
