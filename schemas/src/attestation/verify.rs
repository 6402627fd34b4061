//! Offline verification of a result's attestation against a [`Policy`]. Every check is
//! reported, passed or not, so a verifier can print them all; the result is accepted only when
//! none failed.

use serde::{Deserialize, Serialize};

use super::dsse::EXECUTION_PAYLOAD_TYPE;
use super::evidence::{Evidence, WorkerIdentity};
use super::execution::{ExecutionStatement, OutputDigest, EXECUTION_SCHEMA};
use super::platform::Platform;
use super::Check;
use crate::digest::Digest;
use crate::result::JobResult;

/// What a verifier accepts. Written as TOML (see deploy/policies/).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accept software evidence, which no hardware vouches for.
    #[serde(default)]
    pub allow_software: bool,
    /// Worker measurements accepted (`sha256:...`); empty accepts any.
    #[serde(default)]
    pub worker_measurements: Vec<Digest>,
    /// Oldest evidence accepted, in seconds before the verification time.
    #[serde(default)]
    pub max_evidence_age_secs: Option<u64>,
    /// TPM evidence is accepted only with this section.
    #[serde(default)]
    pub tpm: Option<super::tpm::TpmPolicy>,
    /// SEV-SNP evidence is accepted only with this section.
    #[serde(default)]
    pub snp: Option<super::snp::SnpPolicy>,
}

/// All checks of a result against a policy at `now_unix_secs`.
pub fn verify_result(result: &JobResult, policy: &Policy, now_unix_secs: i64) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(attestation) = &result.attestation else {
        checks.push(Check::fail(
            "attestation.present",
            "the result carries no attestation",
        ));
        return checks;
    };
    checks.push(Check::pass("attestation.present"));
    let identity = &attestation.identity;
    let envelope = &attestation.envelope;
    checks.push(Check::from_bool(
        "envelope.payload_type",
        envelope.payload_type == EXECUTION_PAYLOAD_TYPE,
        || {
            format!(
                "payload type is {:?}, not {EXECUTION_PAYLOAD_TYPE:?}",
                envelope.payload_type
            )
        },
    ));
    let Some(public_key) = identity.public_key_bytes() else {
        checks.push(Check::fail(
            "identity.public_key",
            "the worker public key is not 32 bytes of hex",
        ));
        return checks;
    };
    match envelope.verify(&public_key) {
        Ok(()) => checks.push(Check::pass("envelope.signature")),
        Err(why) => {
            checks.push(Check::fail("envelope.signature", why));
            return checks;
        }
    }
    let statement: ExecutionStatement = match envelope.payload_bytes().and_then(|bytes| {
        serde_json::from_slice(&bytes)
            .map_err(|error| format!("the payload is not an execution statement: {error}"))
    }) {
        Ok(statement) => statement,
        Err(why) => {
            checks.push(Check::fail("statement.parse", why));
            return checks;
        }
    };
    checks.push(Check::from_bool(
        "statement.schema",
        statement.schema == EXECUTION_SCHEMA,
        || format!("schema is {:?}", statement.schema),
    ));

    // The statement names this worker, this evidence, and this result.
    checks.push(Check::from_bool(
        "statement.worker_key",
        statement.worker.public_key == identity.public_key,
        || "the statement names another worker key".to_owned(),
    ));
    checks.push(Check::from_bool(
        "statement.worker_measurement",
        statement.worker.measurement == identity.measurement,
        || "the statement names another measurement".to_owned(),
    ));
    checks.push(Check::from_bool(
        "statement.worker_identity",
        statement.worker.worker_id == identity.worker_id
            && statement.worker.evidence_created_at_unix_ms == identity.evidence_created_at_unix_ms,
        || "the statement names another worker id or evidence time".to_owned(),
    ));
    let evidence_digest = identity.evidence.digest();
    checks.push(Check::from_bool(
        "statement.evidence_digest",
        statement.worker.evidence_digest == evidence_digest,
        || {
            format!(
                "the statement names evidence {}, the result carries {evidence_digest}",
                statement.worker.evidence_digest
            )
        },
    ));
    // The platform, and what the statement says that platform protected: a worker cannot
    // claim more than its evidence gives (a software identity claiming a hardware root).
    let platform = identity.evidence.platform();
    let tcb = &statement.tcb;
    checks.push(Check::from_bool(
        "statement.platform",
        statement.worker.platform == platform.as_str()
            && tcb.hardware_rooted == platform.is_hardware()
            && tcb.memory_protected == (platform == Platform::Snp)
            && !tcb.gpu_in_tcb,
        || {
            format!(
                "the statement says {} (hardware_rooted {}, memory_protected {}, gpu_in_tcb {}), the evidence is {platform}",
                statement.worker.platform, tcb.hardware_rooted, tcb.memory_protected, tcb.gpu_in_tcb
            )
        },
    ));
    checks.push(Check::from_bool(
        "result.job_id",
        statement.job_id == result.job_id,
        || {
            format!(
                "the statement is about {}, the result about {}",
                statement.job_id, result.job_id
            )
        },
    ));
    checks.push(Check::from_bool(
        "result.status",
        statement.status == result.status && statement.error_code == result.error_code(),
        || "status or error code differ from the statement".to_owned(),
    ));
    let claimed: Vec<OutputDigest> = result
        .outputs
        .iter()
        .map(|o| OutputDigest {
            name: o.name.clone(),
            size: o.size,
            digest: o.digest.clone(),
        })
        .collect();
    checks.push(Check::from_bool(
        "result.outputs_listed",
        claimed == statement.outputs,
        || "the result's outputs (names, sizes, digests) differ from the statement's".to_owned(),
    ));
    let mut data_ok = Ok(());
    for output in &result.outputs {
        match output.bytes() {
            Ok(bytes) if bytes.len() as u64 == output.size && output.digest.matches(&bytes) => {}
            Ok(_) => {
                data_ok = Err(format!(
                    "output {:?}: its bytes do not match its size and digest",
                    output.name
                ));
                break;
            }
            Err(error) => {
                data_ok = Err(format!("output {:?}: not base64: {error}", output.name));
                break;
            }
        }
    }
    checks.push(match data_ok {
        Ok(()) => Check::pass("result.output_data"),
        Err(why) => Check::fail("result.output_data", why),
    });
    checks.push(Check::from_bool(
        "result.state_limits_resources",
        statement.state == result.state
            && statement.limits == result.limits
            && statement.resources == result.resources,
        || "state, limits or resources differ from the statement".to_owned(),
    ));
    let execution_ok = result.execution.as_ref().is_some_and(|e| {
        e.execution_id == statement.execution_id
            && e.worker_id == statement.worker.worker_id
            && e.started_at_unix_ms == statement.started_at_unix_ms
            && e.finished_at_unix_ms == statement.finished_at_unix_ms
            && e.backend == statement.tcb.backend
            && e.device == statement.tcb.device
    });
    checks.push(Check::from_bool("result.execution", execution_ok, || {
        "the execution record (id, worker, times, backend, device) differs from the statement"
            .to_owned()
    }));

    // The worker and its evidence.
    checks.extend(verify_identity(
        identity,
        &public_key,
        policy,
        now_unix_secs,
    ));
    checks
}

/// The checks of a worker identity against a policy, without a result: the measurement, the
/// evidence age and the platform's evidence binding `public_key`. `verify_result` ends with
/// these; the secret keeper (`dtee-keeper`) runs them before it releases a secret.
pub fn verify_identity(
    identity: &WorkerIdentity,
    public_key: &[u8; 32],
    policy: &Policy,
    now_unix_secs: i64,
) -> Vec<Check> {
    let public_key = *public_key;
    let mut checks = Vec::new();
    checks.push(if policy.worker_measurements.is_empty() {
        Check::skipped(
            "policy.worker_measurement",
            "the policy accepts any worker measurement",
        )
    } else {
        Check::from_bool(
            "policy.worker_measurement",
            policy.worker_measurements.contains(&identity.measurement),
            || format!("worker measurement {} is not allowed", identity.measurement),
        )
    });
    if let Some(max_age) = policy.max_evidence_age_secs {
        let age =
            now_unix_secs.saturating_sub((identity.evidence_created_at_unix_ms / 1000) as i64);
        // Evidence from more than five minutes in the future is as suspect as old evidence.
        let age = if age < -300 { i64::MAX } else { age };
        checks.push(Check::from_bool(
            "policy.evidence_age",
            age <= max_age as i64,
            || format!("the evidence is {age} s old; the policy accepts {max_age} s"),
        ));
    }
    match &identity.evidence {
        Evidence::Software(software) => {
            checks.push(Check::from_bool(
                "software.allowed",
                policy.allow_software,
                || {
                    format!(
                        "the policy does not accept software evidence ({})",
                        software.statement
                    )
                },
            ));
            checks.push(Check::from_bool(
                "software.measurement",
                software.measurement == identity.measurement,
                || "the evidence states another measurement than the identity".to_owned(),
            ));
        }
        Evidence::Tpm(evidence) => match &policy.tpm {
            None => checks.push(Check::fail(
                "tpm.allowed",
                "the policy has no [tpm] section",
            )),
            Some(tpm_policy) => {
                checks.push(Check::pass("tpm.allowed"));
                checks.extend(super::tpm::verify_with_measurement(
                    evidence,
                    &public_key,
                    &identity.measurement.to_bytes(),
                    tpm_policy,
                ));
            }
        },
        Evidence::Snp(evidence) => match &policy.snp {
            None => checks.push(Check::fail(
                "snp.allowed",
                "the policy has no [snp] section",
            )),
            Some(snp_policy) => {
                checks.push(Check::pass("snp.allowed"));
                let expected = super::snp_report_data(&public_key);
                checks.extend(super::snp::verify(
                    evidence,
                    &expected,
                    snp_policy,
                    now_unix_secs,
                ));
            }
        },
    }
    checks
}

/// Whether every check passed or was skipped.
pub fn accepted(checks: &[Check]) -> bool {
    !checks.is_empty() && checks.iter().all(|check| !check.failed())
}
