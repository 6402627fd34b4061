//! Every result carries a signed execution attestation; `verify_result` checks it offline.

use dtee_schemas::attestation::verify::{accepted, verify_identity, verify_result, Policy};
use dtee_schemas::attestation::Check;
use dtee_schemas::job::{AttestationRequirement, PlatformRequirement};
use dtee_schemas::{ErrorCode, JobResult};
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_submitter::ClientError;
use dtee_tests::{TestEnv, RESULT_TIMEOUT};

/// A change to a signed result that verification must notice.
type Mutation = Box<dyn Fn(&mut JobResult)>;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn failed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.name.as_str())
        .collect()
}

async fn echo_result(env: &TestEnv) -> JobResult {
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"attest me"), output("out", 64)];
    env.run(&spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_software_result_verifies_only_where_the_policy_allows_software() {
    let env = TestEnv::new("software-attest").await;
    let worker = env.start_worker().await;
    let result = echo_result(&env).await;
    let attestation = result
        .attestation
        .as_ref()
        .expect("every result is attested");
    assert_eq!(attestation.identity.evidence.platform(), "software");
    assert_eq!(attestation.identity.worker_id, worker.worker_id);

    let permissive = Policy {
        allow_software: true,
        ..Policy::default()
    };
    let checks = verify_result(&result, &permissive, now());
    assert!(accepted(&checks), "{checks:#?}");
    let strict = Policy::default();
    let checks = verify_result(&result, &strict, now());
    assert!(!accepted(&checks));
    assert_eq!(failed(&checks), vec!["software.allowed"]);

    // Pinning the worker measurement: the right one passes, another fails.
    let pinned = Policy {
        allow_software: true,
        worker_measurements: vec![attestation.identity.measurement.clone()],
        ..Policy::default()
    };
    assert!(accepted(&verify_result(&result, &pinned, now())));
    let other = Policy {
        allow_software: true,
        worker_measurements: vec![dtee_schemas::Digest::of(b"another build")],
        ..Policy::default()
    };
    assert_eq!(
        failed(&verify_result(&result, &other, now())),
        vec!["policy.worker_measurement"]
    );

    // Failed results are attested too.
    let failure = env
        .run(&wasm_job(env.put_kernel("trap").await, "boom"))
        .await;
    assert_eq!(failure.error_code(), Some(ErrorCode::KernelTrapped));
    assert!(accepted(&verify_result(&failure, &permissive, now())));
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_any_part_of_a_signed_result_fails_verification() {
    let env = TestEnv::new("mutations").await;
    let worker = env.start_worker().await;
    let result = echo_result(&env).await;
    let policy = Policy {
        allow_software: true,
        ..Policy::default()
    };
    assert!(accepted(&verify_result(&result, &policy, now())));

    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "a payload field",
            Box::new(|r: &mut JobResult| {
                let envelope = &mut r.attestation.as_mut().unwrap().envelope;
                let mut statement: serde_json::Value =
                    serde_json::from_slice(&envelope.payload_bytes().unwrap()).unwrap();
                statement["resources"]["fuel_consumed"] = 1.into();
                envelope.payload =
                    dtee_schemas::job::encode_base64(&serde_json::to_vec(&statement).unwrap());
            }),
        ),
        (
            "the signature",
            Box::new(|r: &mut JobResult| {
                let signature = &mut r.attestation.as_mut().unwrap().envelope.signatures[0];
                let mut bytes = dtee_schemas::job::decode_base64(&signature.sig).unwrap();
                bytes[10] ^= 1;
                signature.sig = dtee_schemas::job::encode_base64(&bytes);
            }),
        ),
        (
            "the public key",
            Box::new(|r: &mut JobResult| {
                let other = ed25519_dalek_key();
                r.attestation.as_mut().unwrap().identity.public_key = other;
            }),
        ),
        (
            "the evidence",
            Box::new(|r: &mut JobResult| {
                let identity = &mut r.attestation.as_mut().unwrap().identity;
                let dtee_schemas::attestation::evidence::Evidence::Software(software) =
                    &mut identity.evidence
                else {
                    panic!("a software worker's evidence");
                };
                software.statement.push_str(" (trust me)");
            }),
        ),
        (
            "the measurement",
            Box::new(|r: &mut JobResult| {
                r.attestation.as_mut().unwrap().identity.measurement =
                    dtee_schemas::Digest::of(b"x");
            }),
        ),
        (
            "an output's bytes",
            Box::new(|r: &mut JobResult| {
                r.outputs[0].data = dtee_schemas::job::encode_base64(b"forged");
            }),
        ),
        (
            "an output's bytes and digest",
            Box::new(|r: &mut JobResult| {
                r.outputs[0].data = dtee_schemas::job::encode_base64(b"forged");
                r.outputs[0].digest = dtee_schemas::Digest::of(b"forged");
                r.outputs[0].size = 6;
            }),
        ),
        (
            "the status",
            Box::new(|r: &mut JobResult| {
                r.status = dtee_schemas::result::JobStatus::Failed;
            }),
        ),
        (
            "the job id",
            Box::new(|r: &mut JobResult| {
                r.job_id = dtee_schemas::Digest::of(b"another job");
            }),
        ),
        (
            "the resources",
            Box::new(|r: &mut JobResult| {
                r.resources.as_mut().unwrap().fuel_consumed += 1;
            }),
        ),
        (
            "the execution record",
            Box::new(|r: &mut JobResult| {
                r.execution.as_mut().unwrap().worker_id = "someone-else".to_owned();
            }),
        ),
        (
            "the backend the execution record names",
            Box::new(|r: &mut JobResult| {
                r.execution.as_mut().unwrap().backend = "cuda".to_owned();
            }),
        ),
        (
            "a device claimed in the execution record",
            Box::new(|r: &mut JobResult| {
                r.execution.as_mut().unwrap().device = Some(dtee_schemas::run::GpuDevice {
                    vendor: "nvidia".to_owned(),
                    name: "NVIDIA H200".to_owned(),
                    arch: "sm_90".to_owned(),
                    driver: "cuda 13000".to_owned(),
                    ordinal: None,
                });
            }),
        ),
    ];
    for (what, mutate) in mutations {
        let mut forged = result.clone();
        mutate(&mut forged);
        let checks = verify_result(&forged, &policy, now());
        assert!(!accepted(&checks), "changing {what} went unnoticed");
    }
    let mut stripped = result.clone();
    stripped.attestation = None;
    assert_eq!(
        failed(&verify_result(&stripped, &policy, now())),
        vec!["attestation.present"]
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

fn ed25519_dalek_key() -> String {
    // A valid Ed25519 public key that is not the worker's: the basepoint's encoding.
    "5866666666666666666666666666666666666666666666666666666666666666".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_requirements_route_to_capable_workers_only() {
    let env = TestEnv::new("requirements").await;
    let worker = env.start_worker().await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "noop");
    spec.attestation = Some(AttestationRequirement {
        platform: PlatformRequirement::Tpm,
    });
    // No TPM worker serves this namespace: the broker has no queue for "wasm.tpm", and the
    // client says so instead of losing the job.
    let error = env.client.submit(&spec).await.unwrap_err();
    assert!(
        matches!(error, ClientError::NoRoute { ref target, .. } if target == "wasm.tpm"),
        "{error}"
    );
    // Forced onto a software worker's queue anyway, it is refused, not run.
    let waiter = env.client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch(&id).await.unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    env.client
        .publish_job(&body, id.as_str(), "wasm")
        .await
        .unwrap();
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::AttestationUnsatisfiable)
    );
    waiter.close().await;
    // "any" goes to the plain target queue.
    spec.attestation = Some(AttestationRequirement {
        platform: PlatformRequirement::Any,
    });
    assert!(env.run(&spec).await.succeeded());
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_register_with_a_heartbeat_and_deregister_on_shutdown() {
    let env = TestEnv::new("registry").await;
    let worker = env.start_worker().await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = env.client.workers().await.unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].identity.worker_id, worker.worker_id.as_str());
    assert_eq!(listed[0].platform, "software");
    assert!(listed[0]
        .identity
        .measurement
        .as_str()
        .starts_with("sha256:"));
    worker.shutdown().await.unwrap();
    assert!(
        env.client.workers().await.unwrap().is_empty(),
        "deregistered on shutdown"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_snp_worker_without_the_guest_device_refuses_to_start() {
    // Stand-in note: these machines are not SEV-SNP guests. The real provider code runs and
    // must fail clearly rather than fall back to a software identity.
    let env = TestEnv::new("snp-absent").await;
    assert!(
        !std::path::Path::new("/dev/sev-guest").exists(),
        "this test expects a machine that is not an SNP guest"
    );
    let mut config = env.worker_config();
    config.attestation = dtee_worker::attestation::ProviderChoice::Snp;
    let error = dtee_worker::start(config)
        .await
        .expect_err("no SNP guest device, no worker");
    let message = format!("{error:#}");
    assert!(
        message.contains("unsupported_provider") && message.contains("/dev/sev-guest"),
        "{message}"
    );
    assert!(
        env.client.workers().await.unwrap().is_empty(),
        "nothing registered"
    );
    env.cleanup().await;
}

/// The TCTI of the software TPM that deploy/local/setup.sh starts.
fn swtpm_tcti() -> String {
    let port = std::env::var("DTEE_SWTPM_PORT").unwrap_or_else(|_| "2321".to_owned());
    assert!(
        std::net::TcpStream::connect((
            "127.0.0.1",
            port.parse::<u16>().expect("DTEE_SWTPM_PORT is a port")
        ))
        .is_ok(),
        "no swtpm on 127.0.0.1:{port}: start it with deploy/local/setup.sh (as root)"
    );
    format!("swtpm:host=127.0.0.1,port={port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_worker_result_verifies_under_its_pinned_ak_only() {
    use dtee_schemas::attestation::evidence::Evidence;
    use dtee_schemas::attestation::tpm::{
        ak_fingerprint, measurement_pcr_value, PcrValue, TpmPolicy,
    };
    let env = TestEnv::new("tpm-attest").await;
    let worker = env
        .start_worker_with(|c| {
            c.attestation = dtee_worker::attestation::ProviderChoice::Tpm;
            c.provider_settings.tpm_tcti = swtpm_tcti();
        })
        .await;
    // A job that requires a TPM is routed to this worker's wasm.tpm queue.
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"on a tpm"), output("out", 16)];
    spec.attestation = Some(AttestationRequirement {
        platform: PlatformRequirement::Tpm,
    });
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let identity = &result.attestation.as_ref().unwrap().identity;
    let Evidence::Tpm(evidence) = &identity.evidence else {
        panic!("TPM evidence expected")
    };

    // The AK, as an operator would pin it (here taken from the evidence; in production from
    // the machine, see deploy/policies/tpm.toml), and PCR 23 as the measurement makes it.
    let measurement: [u8; 32] = identity.measurement.to_bytes();
    let pinned = Policy {
        tpm: Some(TpmPolicy {
            allowed_aks: vec![ak_fingerprint(&evidence.ak_public)],
            pcrs: vec![PcrValue {
                index: 23,
                value: measurement_pcr_value(&measurement),
            }],
            measurement_pcr: None,
        }),
        ..Policy::default()
    };
    let checks = verify_result(&result, &pinned, now());
    assert!(accepted(&checks), "{checks:#?}");

    // The quoted PCR 23 states the measurement (`tpm.measurement`), also under a policy that
    // pins no PCR value: an identity naming another measurement than the one the worker
    // extended is refused.
    let ak_only = Policy {
        tpm: Some(TpmPolicy {
            allowed_aks: vec![ak_fingerprint(&evidence.ak_public)],
            pcrs: vec![],
            measurement_pcr: None,
        }),
        ..Policy::default()
    };
    let key = identity.public_key_bytes().unwrap();
    assert!(accepted(&verify_identity(identity, &key, &ak_only, now())));
    let mut lying = identity.clone();
    lying.measurement = dtee_schemas::Digest::of(b"another worker");
    assert_eq!(
        failed(&verify_identity(&lying, &key, &ak_only, now())),
        vec!["tpm.measurement"]
    );
    let other_ak = Policy {
        tpm: Some(TpmPolicy {
            allowed_aks: vec!["00".repeat(32)],
            pcrs: vec![],
            measurement_pcr: None,
        }),
        ..Policy::default()
    };
    assert_eq!(
        failed(&verify_result(&result, &other_ak, now())),
        vec!["tpm.ak_pinned"]
    );
    let software_only = Policy {
        allow_software: true,
        ..Policy::default()
    };
    assert_eq!(
        failed(&verify_result(&result, &software_only, now())),
        vec!["tpm.allowed"]
    );

    // The same through `dtee verify`, with policy files.
    let dir = std::env::temp_dir().join(format!("dtee-tpm-verify-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let result_path = dir.join("result.json");
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    let write_policy = |name: &str, ak: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("[tpm]\nallowed_aks = [\"{ak}\"]\n")).unwrap();
        path
    };
    let verify = |policy: &std::path::Path| {
        std::process::Command::new(dtee_tests::binary("dtee"))
            .args([
                "verify",
                result_path.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
            ])
            .output()
            .expect("running dtee verify")
    };
    let accepted_run = verify(&write_policy(
        "pinned.toml",
        &ak_fingerprint(&evidence.ak_public),
    ));
    let stdout = String::from_utf8_lossy(&accepted_run.stdout);
    assert_eq!(accepted_run.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("PASS  tpm.signature") && stdout.contains("PASS  tpm.qualifying_data"),
        "{stdout}"
    );
    let rejected_run = verify(&write_policy("other.toml", &"11".repeat(32)));
    let stdout = String::from_utf8_lossy(&rejected_run.stdout);
    assert_eq!(rejected_run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  tpm.ak_pinned"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Re-signs `result`'s statement, changed by `change`, under a fresh key that takes the worker's
/// place in the identity: what anyone can do with a software identity.
fn re_signed(result: &JobResult, change: impl Fn(&mut serde_json::Value)) -> JobResult {
    use dtee_schemas::attestation::dsse::{Envelope, EXECUTION_PAYLOAD_TYPE};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let mut forged = result.clone();
    let attestation = forged.attestation.as_mut().unwrap();
    let mut statement: serde_json::Value =
        serde_json::from_slice(&attestation.envelope.payload_bytes().unwrap()).unwrap();
    statement["worker"]["public_key"] = public_key.clone().into();
    change(&mut statement);
    let payload =
        dtee_schemas::canonical::to_canonical_vec(&statement).expect("canonical statement");
    attestation.envelope = Envelope::sign(EXECUTION_PAYLOAD_TYPE, &payload, &key);
    attestation.identity.public_key = public_key;
    forged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_software_identity_cannot_claim_a_hardware_root() {
    let env = TestEnv::new("tcb-claims").await;
    let worker = env.start_worker().await;
    let result = echo_result(&env).await;
    let policy = Policy {
        allow_software: true,
        ..Policy::default()
    };
    // Re-signed as it was under another software key: accepted (software identities are
    // self-made, which is why a policy must allow them).
    let honest = re_signed(&result, |_| {});
    assert!(
        accepted(&verify_result(&honest, &policy, now())),
        "{:?}",
        failed(&verify_result(&honest, &policy, now()))
    );
    // Claiming what only hardware gives is refused.
    for flag in ["hardware_rooted", "memory_protected", "gpu_in_tcb"] {
        let forged = re_signed(&result, |statement| {
            statement["tcb"][flag] = true.into();
        });
        assert_eq!(
            failed(&verify_result(&forged, &policy, now())),
            vec!["statement.platform"],
            "a software statement claiming {flag}"
        );
    }
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
