//! Attestation providers: each worker makes a fresh Ed25519 signing key at start-up (never
//! written anywhere), and a provider binds its public key to the platform:
//! - `software`: no hardware root; the evidence says so plainly;
//! - `tpm`: a TPM 2.0 quote by a restricted attestation key (feature `tpm`);
//! - `snp`: an SEV-SNP report from inside an SNP guest.
//!
//! [`Attestor`] holds the key and the current evidence, signs every result's execution
//! statement, and refreshes the evidence periodically.

use std::sync::RwLock;

use dtee_schemas::attestation::dsse::{Envelope, EXECUTION_PAYLOAD_TYPE};
use dtee_schemas::attestation::evidence::{
    Evidence, SoftwareEvidence, WorkerIdentity, SOFTWARE_STATEMENT,
};
use dtee_schemas::attestation::execution::{Attestation, ExecutionStatement, Tcb, WorkerRef};
use dtee_schemas::attestation::Platform;
use dtee_schemas::job::PlatformRequirement;
use dtee_schemas::{Digest, ErrorCode};
use ed25519_dalek::SigningKey;

use crate::clock::unix_ms;

pub mod snp;
#[cfg(feature = "tpm")]
pub mod tpm;

/// Which provider to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChoice {
    /// No hardware root.
    Software,
    /// A TPM 2.0.
    Tpm,
    /// An SEV-SNP guest.
    Snp,
    /// The strongest available: SNP, then TPM, then software.
    Auto,
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "software" => Ok(ProviderChoice::Software),
            "tpm" => Ok(ProviderChoice::Tpm),
            "snp" => Ok(ProviderChoice::Snp),
            "auto" => Ok(ProviderChoice::Auto),
            _ => Err("expected snp, tpm, software or auto".to_owned()),
        }
    }
}

/// Why attestation failed; each kind maps to its stable error code.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// The provider does not exist on this platform (no device, or not compiled in).
    #[error("unsupported_provider: {0}")]
    UnsupportedProvider(String),
    /// The provider was used before it was set up.
    #[error("provider_not_initialized: {0}")]
    ProviderNotInitialized(String),
    /// The provider failed to produce evidence.
    #[error("attestation_failed: {0}")]
    Failed(String),
}

impl AttestationError {
    /// The error code of a failed result caused by this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AttestationError::UnsupportedProvider(_) => ErrorCode::UnsupportedProvider,
            AttestationError::ProviderNotInitialized(_) => ErrorCode::ProviderNotInitialized,
            AttestationError::Failed(_) => ErrorCode::AttestationFailed,
        }
    }
}

/// A platform that can bind a public key.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The platform whose evidence this provider produces.
    fn platform(&self) -> Platform;

    /// Fresh evidence that binds `public_key`, with `nonce` where the platform supports one.
    fn evidence(&self, public_key: &[u8; 32], nonce: &[u8]) -> Result<Evidence, AttestationError>;

    /// What the platform protects.
    fn tcb(&self) -> Tcb;
}

/// The software provider: nothing vouches for the worker.
#[derive(Debug)]
pub struct SoftwareProvider {
    /// The worker's measurement, which the evidence states.
    pub measurement: Digest,
}

impl Provider for SoftwareProvider {
    fn platform(&self) -> Platform {
        Platform::Software
    }

    fn evidence(
        &self,
        _public_key: &[u8; 32],
        _nonce: &[u8],
    ) -> Result<Evidence, AttestationError> {
        Ok(Evidence::Software(SoftwareEvidence {
            statement: SOFTWARE_STATEMENT.to_owned(),
            measurement: self.measurement.clone(),
        }))
    }

    fn tcb(&self) -> Tcb {
        Tcb {
            hardware_rooted: false,
            memory_protected: false,
            gpu_in_tcb: false,
            backend: "wasm".to_owned(),
            device: None,
        }
    }
}

/// Settings the hardware providers need.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// TCTI of the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tpm_tcti: String,
    /// PCR the worker extends with its measurement.
    pub tpm_pcr: u32,
}

/// Opens the chosen provider; `auto` tries SNP, then TPM, then software, and says which.
pub fn open_provider(
    choice: ProviderChoice,
    settings: &ProviderSettings,
    measurement: &Digest,
) -> Result<Box<dyn Provider>, AttestationError> {
    match choice {
        ProviderChoice::Software => Ok(Box::new(SoftwareProvider {
            measurement: measurement.clone(),
        })),
        ProviderChoice::Snp => Ok(Box::new(snp::SnpProvider::open()?)),
        ProviderChoice::Tpm => open_tpm(settings, measurement),
        ProviderChoice::Auto => {
            if let Ok(provider) = snp::SnpProvider::open() {
                tracing::info!("attestation: auto chose snp");
                return Ok(Box::new(provider));
            }
            match open_tpm(settings, measurement) {
                Ok(provider) => {
                    tracing::info!(tcti = %settings.tpm_tcti, "attestation: auto chose tpm");
                    Ok(provider)
                }
                Err(error) => {
                    tracing::warn!(%error, "attestation: auto found no SEV-SNP guest device and no usable TPM; using the software identity, which nothing vouches for");
                    Ok(Box::new(SoftwareProvider {
                        measurement: measurement.clone(),
                    }))
                }
            }
        }
    }
}

#[cfg(feature = "tpm")]
fn open_tpm(
    settings: &ProviderSettings,
    measurement: &Digest,
) -> Result<Box<dyn Provider>, AttestationError> {
    Ok(Box::new(tpm::TpmAttestationProvider::open(
        &settings.tpm_tcti,
        settings.tpm_pcr,
        measurement,
    )?))
}

#[cfg(not(feature = "tpm"))]
fn open_tpm(
    _settings: &ProviderSettings,
    _measurement: &Digest,
) -> Result<Box<dyn Provider>, AttestationError> {
    Err(AttestationError::UnsupportedProvider(
        "this worker was built without the `tpm` feature".to_owned(),
    ))
}

/// The worker's key, identity and provider.
#[derive(Debug)]
pub struct Attestor {
    key: SigningKey,
    provider: Box<dyn Provider>,
    /// The current identity and the digest of its evidence (computed once per refresh, not
    /// per result).
    identity: RwLock<(WorkerIdentity, Digest)>,
}

impl Attestor {
    /// Makes a fresh key and the first evidence.
    pub fn start(
        worker_id: &str,
        measurement: Digest,
        provider: Box<dyn Provider>,
    ) -> Result<Attestor, AttestationError> {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public = key.verifying_key().to_bytes();
        let evidence = provider.evidence(&public, &rand::random::<[u8; 32]>())?;
        let identity = WorkerIdentity {
            worker_id: worker_id.to_owned(),
            public_key: hex::encode(public),
            measurement,
            evidence_created_at_unix_ms: unix_ms(),
            evidence,
        };
        let digest = identity.evidence.digest();
        Ok(Attestor {
            key,
            provider,
            identity: RwLock::new((identity, digest)),
        })
    }

    /// The platform: software, TPM or SEV-SNP.
    pub fn platform(&self) -> Platform {
        self.provider.platform()
    }

    /// The current identity.
    pub fn identity(&self) -> WorkerIdentity {
        self.identity.read().expect("identity lock").0.clone()
    }

    /// Produces fresh evidence (with a new nonce) for the same key.
    pub fn refresh(&self) -> Result<(), AttestationError> {
        let public = self.key.verifying_key().to_bytes();
        let evidence = self
            .provider
            .evidence(&public, &rand::random::<[u8; 32]>())?;
        let digest = evidence.digest();
        let mut current = self.identity.write().expect("identity lock");
        current.0.evidence = evidence;
        current.0.evidence_created_at_unix_ms = unix_ms();
        current.1 = digest;
        Ok(())
    }

    /// Whether this worker can satisfy a job's platform requirement.
    pub fn satisfies(&self, requirement: PlatformRequirement) -> bool {
        self.platform().satisfies(requirement)
    }

    /// The worker as execution statements name it.
    pub fn worker_ref(&self) -> WorkerRef {
        let (identity, evidence_digest) = self.identity.read().expect("identity lock").clone();
        WorkerRef {
            worker_id: identity.worker_id,
            public_key: identity.public_key,
            measurement: identity.measurement,
            platform: self.platform().as_str().to_owned(),
            evidence_digest,
            evidence_created_at_unix_ms: identity.evidence_created_at_unix_ms,
        }
    }

    /// What the platform protects.
    pub fn tcb(&self) -> Tcb {
        self.provider.tcb()
    }

    /// Signs `bytes` with the worker key (Ed25519). Callers prefix their own domain separator.
    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(bytes).to_bytes()
    }

    /// Signs a statement. The identity is read once, so the statement's evidence digest and the
    /// identity carried beside it agree even across a concurrent refresh.
    pub fn attest(&self, mut statement: ExecutionStatement) -> Attestation {
        let (identity, evidence_digest) = self.identity.read().expect("identity lock").clone();
        statement.worker = WorkerRef {
            worker_id: identity.worker_id.clone(),
            public_key: identity.public_key.clone(),
            measurement: identity.measurement.clone(),
            platform: self.platform().as_str().to_owned(),
            evidence_digest,
            evidence_created_at_unix_ms: identity.evidence_created_at_unix_ms,
        };
        let value = serde_json::to_value(&statement).expect("a statement serializes");
        let payload = dtee_schemas::canonical::to_canonical_vec(&value)
            .expect("a statement has a canonical form");
        Attestation {
            envelope: Envelope::sign(EXECUTION_PAYLOAD_TYPE, &payload, &self.key),
            identity,
        }
    }
}

/// The worker's measurement: SHA-256 over the digest of the worker binary and the digest of
/// its effective configuration. Fails when the binary cannot be read (a measurement of
/// nothing would be worse than none).
pub fn measure(configuration: &serde_json::Value) -> Result<Digest, AttestationError> {
    use sha2::Digest as _;
    let binary = binary_digest().map_err(|error| {
        AttestationError::Failed(format!("reading the worker binary to measure it: {error}"))
    })?;
    let config = dtee_schemas::canonical::to_canonical_vec(configuration).map_err(|error| {
        AttestationError::Failed(format!("canonicalizing the configuration: {error}"))
    })?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(binary);
    hasher.update(sha2::Sha256::digest(&config));
    Ok(Digest::from_sha256(hasher.finalize().into()))
}

/// SHA-256 of the running executable, read once per process and streamed (a release binary
/// with line tables is 160 MB; it is never held whole). `/proc/self/exe` is the file the process
/// was started from even if its path has since been replaced (an upgrade in place); elsewhere
/// the path the process was started from.
fn binary_digest() -> std::io::Result<[u8; 32]> {
    static DIGEST: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    if let Some(digest) = DIGEST.get() {
        return Ok(*digest);
    }
    use sha2::Digest as _;
    let mut file = std::fs::File::open("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::File::open))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(*DIGEST.get_or_init(|| hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_measurement_covers_the_running_binary_and_the_configuration() {
        use sha2::Digest as _;
        let config = serde_json::json!({"b": 1, "a": [true]});
        let binary = sha2::Sha256::digest(std::fs::read("/proc/self/exe").unwrap());
        let canonical = sha2::Sha256::digest(br#"{"a":[true],"b":1}"#);
        let mut expected = sha2::Sha256::new();
        expected.update(binary);
        expected.update(canonical);
        let expected = dtee_schemas::Digest::from_sha256(expected.finalize().into());
        assert_eq!(super::measure(&config).unwrap(), expected);
        // Read once: the second measurement is the same, and another configuration differs.
        assert_eq!(super::measure(&config).unwrap(), expected);
        assert_ne!(
            super::measure(&serde_json::json!({"a": 2})).unwrap(),
            expected
        );
    }
}
