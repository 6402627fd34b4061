//! The TPM provider against a real software TPM (swtpm on 127.0.0.1, port `DTEE_SWTPM_PORT`,
//! default 2321, started by deploy/local/setup.sh): its evidence verifies with dtee's own
//! verifier and, independently, with `tpm2_checkquote` from tpm2-tools.
//!
//! With `DTEE_TPM_VECTOR_OUT=<dir>` (relative to the workspace root) the test
//! `writes_a_test_vector_when_asked` writes a fresh sample to `<dir>/quote.json`: the vector
//! schemas/tests/tpm.rs checks lives in schemas/tests/data/tpm.
#![cfg(feature = "tpm")]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use dtee_schemas::attestation::evidence::Evidence;
use dtee_schemas::attestation::tpm::{self, PcrValue, TpmEvidence, TpmPolicy};
use dtee_schemas::attestation::{tpm_qualifying_data, Outcome};
use dtee_worker::attestation::tpm::{TpmAttestationProvider, TpmProvider};
use dtee_worker::attestation::Provider as _;
use sha2::{Digest as _, Sha256};

const MEASUREMENT_PCR: u32 = 23;

/// The TCTI of the test swtpm; fails the test, saying what to do, when it is not listening.
fn swtpm_tcti() -> String {
    let port: u16 = match std::env::var("DTEE_SWTPM_PORT") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("DTEE_SWTPM_PORT={text} is not a port")),
        Err(_) => 2321,
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(error) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        panic!(
            "swtpm is not reachable at {address} ({error}); start it with deploy/local/setup.sh \
             (as root), or set DTEE_SWTPM_PORT to the port of a running swtpm"
        );
    }
    format!("swtpm:host=127.0.0.1,port={port}")
}

fn measurement_of(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

fn failures(checks: &[dtee_schemas::attestation::Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|check| check.failed())
        .map(|check| format!("{}: {:?}", check.name, check.outcome))
        .collect()
}

/// A provider with its measurement set, and a fresh quote for a random key and nonce.
fn fresh_quote(label: &str) -> (TpmProvider, [u8; 32], [u8; 32], TpmEvidence) {
    let mut provider = TpmProvider::new(&swtpm_tcti(), MEASUREMENT_PCR).expect("opening swtpm");
    let measurement = measurement_of(label);
    provider
        .extend_measurement(&measurement)
        .expect("extending the PCR");
    let worker_key: [u8; 32] = rand::random();
    let nonce: [u8; 32] = rand::random();
    let evidence = provider.quote(&worker_key, &nonce).expect("quoting");
    (provider, measurement, worker_key, evidence)
}

#[test]
fn quote_verifies_with_the_pinned_ak_and_measurement() {
    let (provider, measurement, worker_key, evidence) = fresh_quote("quote_verifies");
    assert_eq!(evidence.pcr_bank, "sha256");
    let indices: Vec<u32> = evidence.pcrs.iter().map(|pcr| pcr.index).collect();
    assert_eq!(indices, vec![0, MEASUREMENT_PCR]);
    let policy = TpmPolicy {
        allowed_aks: vec![provider.ak_fingerprint()],
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: tpm::measurement_pcr_value(&measurement),
        }],
        measurement_pcr: Some(MEASUREMENT_PCR),
    };
    let checks = tpm::verify(&evidence, &worker_key, &policy);
    assert_eq!(failures(&checks), Vec::<String>::new());
    let with_measurement =
        tpm::verify_with_measurement(&evidence, &worker_key, &measurement, &policy);
    assert_eq!(failures(&with_measurement), Vec::<String>::new());
    let another = measurement_of("another worker");
    let failed = failures(&tpm::verify_with_measurement(
        &evidence,
        &worker_key,
        &another,
        &policy,
    ));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("tpm.measurement: "), "{failed:?}");
    assert!(
        checks.iter().all(|check| check.outcome == Outcome::Pass),
        "{checks:?}"
    );

    // The evidence survives its JSON form.
    let json = serde_json::to_string(&evidence).unwrap();
    let parsed: TpmEvidence = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, evidence);

    // Another key, another measurement: rejected.
    let other_key: [u8; 32] = rand::random();
    let names: Vec<String> = tpm::verify(&evidence, &other_key, &policy)
        .into_iter()
        .filter(|check| check.failed())
        .map(|check| check.name)
        .collect();
    assert_eq!(names, vec!["tpm.qualifying_data"]);
    let other_policy = TpmPolicy {
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: tpm::measurement_pcr_value(&measurement_of("another worker")),
        }],
        ..policy
    };
    let names: Vec<String> = tpm::verify(&evidence, &worker_key, &other_policy)
        .into_iter()
        .filter(|check| check.failed())
        .map(|check| check.name)
        .collect();
    assert_eq!(names, vec!["tpm.pcr_values"]);
}

#[test]
fn the_ak_persists_across_providers() {
    let tcti = swtpm_tcti();
    let first = TpmProvider::new(&tcti, MEASUREMENT_PCR).expect("opening swtpm");
    let second = TpmProvider::new(&tcti, MEASUREMENT_PCR).expect("opening swtpm again");
    assert_eq!(first.ak_fingerprint(), second.ak_fingerprint());
    tpm::check_ak_public(first.ak_public()).expect("the AK is a restricted P-256 signing key");
}

/// Evicts whatever is persistent at `handle`, if anything.
fn evict(tcti: &str, handle: u32) {
    use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
    use tss_esapi::interface_types::{
        dynamic_handles::Persistent, resource_handles::Provision, session_handles::AuthSession,
    };
    let mut context = tss_esapi::Context::new(tcti.parse().unwrap()).unwrap();
    let persistent = PersistentTpmHandle::new(handle).unwrap();
    let Ok(object) = context
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)))
    else {
        return;
    };
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(Provision::Owner, object, Persistent::Persistent(persistent))
        })
        .expect("evicting the test object");
}

/// A persistent handle for this test run alone.
fn scratch_handle() -> u32 {
    0x8100_e000 + u32::from(rand::random::<u16>() & 0x0fff)
}

#[test]
fn creates_an_ak_at_a_free_handle_and_refuses_a_handle_holding_another_key() {
    use tss_esapi::interface_types::{
        algorithm::HashingAlgorithm, ecc::EccCurve, resource_handles::Hierarchy,
        resource_handles::Provision, session_handles::AuthSession,
    };
    use tss_esapi::structures::{EccScheme, HashScheme};
    let tcti = swtpm_tcti();

    // A free handle: the provider creates an AK there, a new key.
    let handle = scratch_handle();
    evict(&tcti, handle);
    let created = TpmProvider::with_ak_handle(&tcti, MEASUREMENT_PCR, handle);
    evict(&tcti, handle);
    let created = created.expect("creating an AK at a free handle");
    let default = TpmProvider::new(&tcti, MEASUREMENT_PCR).unwrap();
    assert_ne!(created.ak_fingerprint(), default.ak_fingerprint());

    // A handle holding an unrestricted signing key: refused, and left alone.
    let handle = scratch_handle();
    evict(&tcti, handle);
    let mut context = tss_esapi::Context::new(tcti.parse().unwrap()).unwrap();
    let template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .unwrap();
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            let key = ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)?;
            let persistent = tss_esapi::handles::PersistentTpmHandle::new(handle)?;
            let made = ctx.evict_control(
                Provision::Owner,
                key.key_handle.into(),
                tss_esapi::interface_types::dynamic_handles::Persistent::Persistent(persistent),
            );
            ctx.flush_context(key.key_handle.into())?;
            made
        })
        .expect("persisting a non-AK key");
    drop(context);
    let refused = TpmProvider::with_ak_handle(&tcti, MEASUREMENT_PCR, handle);
    evict(&tcti, handle);
    let error = refused.unwrap_err();
    assert!(error.to_string().contains("lack restricted"), "{error}");
}

#[test]
fn unsupported_pcrs_are_refused() {
    let error = TpmProvider::new(&swtpm_tcti(), 7).unwrap_err();
    assert!(error.to_string().contains("PCR 7"), "{error}");
}

#[test]
fn the_provider_trait_yields_tpm_evidence() {
    let measurement = dtee_schemas::Digest::from_sha256(measurement_of("provider trait"));
    let provider = TpmAttestationProvider::open(&swtpm_tcti(), MEASUREMENT_PCR, &measurement)
        .expect("opening the provider");
    assert_eq!(provider.platform(), "tpm");
    let key: [u8; 32] = rand::random();
    let nonce = b"a nonce of any length";
    let Evidence::Tpm(evidence) = provider.evidence(&key, nonce).expect("evidence") else {
        panic!("not TPM evidence");
    };
    let policy = TpmPolicy {
        allowed_aks: vec![provider.tpm().ak_fingerprint()],
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: tpm::measurement_pcr_value(&measurement.to_bytes()),
        }],
        measurement_pcr: Some(MEASUREMENT_PCR),
    };
    assert_eq!(
        failures(&tpm::verify(&evidence, &key, &policy)),
        Vec::<String>::new()
    );
}

#[test]
fn an_unreachable_tpm_is_reported_as_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let error = TpmProvider::new("swtpm:host=127.0.0.1,port=1", MEASUREMENT_PCR).unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    let error = TpmProvider::new("device:/dev/no-such-tpm", MEASUREMENT_PCR).unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("/dev/no-such-tpm"), "{error}");
}

/// A scratch directory unique to this test run.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dtee-tpm-{name}-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PCR file `tpm2_quote -o` writes (tpm2-tools 5.x, `pcr_fwrite_serialized`): the C
/// structures as they sit in memory, little-endian: a `TPML_PCR_SELECTION` (a count and 16
/// `TPMS_PCR_SELECTION`s of hash, sizeofSelect, pcrSelect[4] and a padding byte), a count of
/// `TPML_DIGEST`s, and the `TPML_DIGEST`s (a count and 8 `TPM2B_DIGEST`s of size and 64 bytes).
fn tpm2_tools_pcr_file(pcrs: &[PcrValue]) -> Vec<u8> {
    assert!(pcrs.len() <= 8, "one TPML_DIGEST holds 8 digests");
    let mut file = Vec::new();
    file.extend_from_slice(&1u32.to_le_bytes());
    let mut bitmap = [0u8; 4];
    for pcr in pcrs {
        bitmap[pcr.index as usize / 8] |= 1 << (pcr.index % 8);
    }
    file.extend_from_slice(&0x000bu16.to_le_bytes()); // TPM_ALG_SHA256
    file.push(3); // sizeofSelect
    file.extend_from_slice(&bitmap);
    file.push(0); // padding
    file.resize(4 + 16 * 8, 0);
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&(pcrs.len() as u32).to_le_bytes());
    for slot in 0..8 {
        let mut digest = [0u8; 66];
        if let Some(pcr) = pcrs.get(slot) {
            let value = hex::decode(&pcr.value).unwrap();
            digest[..2].copy_from_slice(&(value.len() as u16).to_le_bytes());
            digest[2..2 + value.len()].copy_from_slice(&value);
        }
        file.extend_from_slice(&digest);
    }
    assert_eq!(file.len(), 132 + 4 + 532);
    file
}

/// The AK as a PEM SubjectPublicKeyInfo, from the ECC point that ends its `TPMT_PUBLIC`
/// (`x` and `y`, each a 2-byte size 32 and 32 bytes).
fn ak_pem(ak_public: &[u8]) -> String {
    let n = ak_public.len();
    assert_eq!(&ak_public[n - 68..n - 66], &[0, 32]);
    assert_eq!(&ak_public[n - 34..n - 32], &[0, 32]);
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (uncompressed point) }.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    der.push(0x04);
    der.extend_from_slice(&ak_public[n - 66..n - 34]);
    der.extend_from_slice(&ak_public[n - 32..]);
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn checkquote(dir: &Path, public: &str, qualification: &str) -> std::process::Output {
    Command::new("tpm2_checkquote")
        .current_dir(dir)
        .args(["-u", public, "-m", "quote.bin", "-s", "signature.bin", "-f", "pcrs.bin"])
        .args(["-g", "sha256", "-q", qualification])
        .output()
        .expect("running tpm2_checkquote (Debian package tpm2-tools; deploy/local/setup.sh installs it)")
}

#[test]
fn tpm2_checkquote_verifies_the_same_quote() {
    let (_provider, _measurement, worker_key, evidence) = fresh_quote("tpm2_checkquote");
    let dir = scratch("checkquote");
    // TSS format: TPM2B_PUBLIC, the TPMT_PUBLIC behind its 16-bit size.
    let mut tss_public = (evidence.ak_public.len() as u16).to_be_bytes().to_vec();
    tss_public.extend_from_slice(&evidence.ak_public);
    std::fs::write(dir.join("ak.tss"), tss_public).unwrap();
    std::fs::write(dir.join("ak.pem"), ak_pem(&evidence.ak_public)).unwrap();
    std::fs::write(dir.join("quote.bin"), &evidence.quote).unwrap();
    std::fs::write(dir.join("signature.bin"), &evidence.signature).unwrap();
    std::fs::write(dir.join("pcrs.bin"), tpm2_tools_pcr_file(&evidence.pcrs)).unwrap();
    let qualification = hex::encode(tpm_qualifying_data(&worker_key, &evidence.nonce));

    for public in ["ak.tss", "ak.pem"] {
        let output = checkquote(&dir, public, &qualification);
        assert!(
            output.status.success(),
            "tpm2_checkquote -u {public} rejected the quote: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // It printed the PCR values the evidence lists.
        let stdout = String::from_utf8_lossy(&output.stdout).to_lowercase();
        for pcr in &evidence.pcrs {
            assert!(
                stdout.contains(&pcr.value),
                "{stdout} lacks PCR {}",
                pcr.index
            );
        }
    }

    // The qualifying data of another key: rejected.
    let wrong = hex::encode(tpm_qualifying_data(
        &rand::random::<[u8; 32]>(),
        &evidence.nonce,
    ));
    let output = checkquote(&dir, "ak.tss", &wrong);
    assert!(
        !output.status.success(),
        "tpm2_checkquote accepted the wrong qualifying data"
    );

    // A changed PCR value: rejected.
    let mut pcrs = evidence.pcrs.clone();
    pcrs[1].value = hex::encode([0x55u8; 32]);
    std::fs::write(dir.join("pcrs.bin"), tpm2_tools_pcr_file(&pcrs)).unwrap();
    let output = checkquote(&dir, "ak.tss", &qualification);
    assert!(
        !output.status.success(),
        "tpm2_checkquote accepted a changed PCR value"
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a fresh sample for schemas/tests/tpm.rs when `DTEE_TPM_VECTOR_OUT` names a
/// directory; does nothing otherwise.
#[test]
fn writes_a_test_vector_when_asked() {
    let Some(out) = std::env::var_os("DTEE_TPM_VECTOR_OUT") else {
        return;
    };
    let (provider, measurement, worker_key, evidence) = fresh_quote("dtee test vector");
    let vector = serde_json::json!({
        "description": "a quote by swtpm through dtee_worker::attestation::tpm::TpmProvider (worker/tests/tpm.rs, DTEE_TPM_VECTOR_OUT)",
        "worker_public_key": hex::encode(worker_key),
        "measurement": hex::encode(measurement),
        "measurement_pcr": MEASUREMENT_PCR,
        "ak_fingerprint": provider.ak_fingerprint(),
        "evidence": evidence,
    });
    // Relative to the workspace root (tests run in worker/).
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(out);
    let path = out.join("quote.json");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}
