//! The TPM 2.0 provider: a quote by a restricted ECC P-256 attestation key (AK) over the
//! SHA-256 bank's PCR 0 and the worker's measurement PCR, with the worker key and a nonce as
//! qualifying data ([`dtee_schemas::attestation::tpm_qualifying_data`]).
//!
//! - **The AK** is created once per TPM under the endorsement key (TCG EK template, ECC P-256,
//!   through `tss_esapi::abstraction::{ek, ak}`) and made persistent at [`DEFAULT_AK_HANDLE`],
//!   so that its public area, and so its fingerprint that policies pin, survives restarts. A
//!   persistent object already there is used only if it is such an AK; anything else is an
//!   error, never overwritten. `tpm2_readpublic -c 0x8100d7ee` prints its name, `000b`
//!   followed by the fingerprint.
//! - **The measurement PCR** (23 by default, or 16) is one that locality 0 may reset. Before
//!   every quote the provider resets it and extends it once with the measurement, so that it
//!   holds [`dtee_schemas::attestation::tpm::measurement_pcr_value`] and a policy can pin it.
//!   PCRs 0 to 15 belong to firmware and the OS and cannot be reset; 17 to 22 are for dynamic
//!   launch. The PCR should be dedicated to dtee.
//! - **Sharing the TPM:** every operation opens its own TSS context and drops it (flushing what
//!   it loaded) before returning, so a provider holds no context: it is `Send + Sync`. Its
//!   calls block (tens of milliseconds on a hardware TPM); async code should make them from
//!   `spawn_blocking`. A simulator (swtpm) has no resource manager, 3 object slots and 3
//!   session slots, and its TCTI connects once per command, so the commands of concurrent
//!   clients interleave. Hence the provider authorizes with password sessions (which take no
//!   session slot; an unsalted, unbound HMAC session with an empty auth value protects
//!   nothing more), runs one TPM operation at a time per process (several workers in one test
//!   process share a lock), and retries the TPM's "out of memory, try later" warnings.
//! - Evidence is checked with [`dtee_schemas::attestation::tpm::verify`], including the
//!   measurement PCR's value, before it is returned: the worker never publishes a quote it
//!   cannot verify itself. When the check fails because another client touched the PCR between
//!   the extend and the quote, the quote is taken again.

use std::convert::TryFrom;
use std::sync::{Mutex, MutexGuard};

use dtee_schemas::attestation::evidence::Evidence;
use dtee_schemas::attestation::execution::Tcb;
use dtee_schemas::attestation::tpm::{self as tpm_schema, PcrValue, TpmEvidence, TpmPolicy};
use dtee_schemas::attestation::Platform;
use dtee_schemas::Digest;
use tss_esapi::constants::Tss2ResponseCodeKind;
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
};
use tss_esapi::traits::Marshall;

use super::{AttestationError, Provider};

mod context;

use context::{
    create_persistent_ak, open, pause_with_jitter, pcr_handle, pcr_slot, read_persistent_ak,
    set_measurement_pcr,
};

/// Where the AK is made persistent unless told otherwise: in the owner's persistent range,
/// away from the TCG's EK (0x81010001…) and SRK (0x81000001) handles.
pub const DEFAULT_AK_HANDLE: u32 = 0x8100_d7ee;

/// The PCR that holds the firmware's measurement, quoted beside the measurement PCR.
pub const FIRMWARE_PCR: u32 = 0;

/// How often a quote is taken when it does not verify (a PCR changed in between).
const QUOTE_ATTEMPTS: usize = 5;

/// Pauses before retrying a command the TPM was too busy for (each plus up to as much again,
/// at random, so that clients that collided do not collide again): about 5 s in all.
const BUSY_BACKOFF_MS: [u64; 10] = [5, 10, 25, 50, 100, 200, 300, 400, 500, 500];

/// One TPM operation at a time in this process: several workers (in tests) may share a TPM
/// that has no resource manager.
static TPM_LOCK: Mutex<()> = Mutex::new(());

fn tpm_lock() -> MutexGuard<'static, ()> {
    // The guarded state is the TPM's, not ours: a panic elsewhere leaves nothing to repair.
    TPM_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse, or the TPM behind it cannot be reached.
    #[error("cannot open the TPM through TCTI {tcti:?}: {source}")]
    Connect {
        /// The TCTI string.
        tcti: String,
        /// What the TSS said.
        source: tss_esapi::Error,
    },
    /// The TCTI names a device that does not exist.
    #[error("no TPM device at {0} (TCTI device:{0})")]
    NoDevice(String),
    /// The PCR cannot serve as the measurement PCR.
    #[error("PCR {0} cannot hold the measurement: only 16 and 23 can be reset from locality 0")]
    UnsupportedPcr(u32),
    /// The persistent handle holds an object that is not a usable AK.
    #[error("persistent handle 0x{handle:08x} holds an object that is not a dtee attestation key ({why}); evict it with `tpm2_evictcontrol -C o -c 0x{handle:08x}` or choose another handle")]
    HandleTaken {
        /// The handle.
        handle: u32,
        /// What is wrong with the object.
        why: String,
    },
    /// A TPM command failed.
    #[error("TPM {operation} failed: {source}")]
    Command {
        /// What was being done.
        operation: &'static str,
        /// What the TSS said.
        source: tss_esapi::Error,
    },
    /// The TPM returned something the provider did not expect.
    #[error("unexpected TPM response: {0}")]
    Unexpected(String),
}

impl TpmError {
    /// Whether the error means there is no usable TPM here (as opposed to a TPM that failed).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TpmError::Connect { .. } | TpmError::NoDevice(_))
    }

    /// Whether the TPM asked to be tried again later: out of object or session slots (other
    /// clients of a TPM without resource manager hold them), or not able to start the command.
    pub fn is_busy(&self) -> bool {
        self.response_kind().is_some_and(|kind| {
            matches!(
                kind,
                Tss2ResponseCodeKind::ObjectMemory
                    | Tss2ResponseCodeKind::SessionMemory
                    | Tss2ResponseCodeKind::Memory
                    | Tss2ResponseCodeKind::ObjectHandles
                    | Tss2ResponseCodeKind::SessionHandles
                    | Tss2ResponseCodeKind::Retry
                    | Tss2ResponseCodeKind::Yielded
                    | Tss2ResponseCodeKind::Testing
            )
        })
    }

    fn response_kind(&self) -> Option<Tss2ResponseCodeKind> {
        match self {
            TpmError::Command {
                source: tss_esapi::Error::Tss2Error(code),
                ..
            } => code.kind(),
            _ => None,
        }
    }
}

/// Runs `attempt`, again after a pause while the TPM is busy.
fn retrying_busy<T>(mut attempt: impl FnMut() -> Result<T, TpmError>) -> Result<T, TpmError> {
    for pause in BUSY_BACKOFF_MS {
        match attempt() {
            Err(error) if error.is_busy() => pause_with_jitter(pause),
            done => return done,
        }
    }
    attempt()
}

/// Wraps a TSS error with what was being done.
fn command(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { operation, source }
}

/// A TPM that quotes the worker's measurement PCR with a persistent attestation key.
#[derive(Debug, Clone)]
pub struct TpmProvider {
    /// TCTI string, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    tcti: String,
    /// The measurement PCR (16 or 23).
    pcr: u32,
    /// The AK's persistent handle.
    ak_handle: u32,
    /// The AK's marshalled `TPMT_PUBLIC`.
    ak_public: Vec<u8>,
    /// The measurement the PCR is set to before each quote; `None` quotes the PCR as it is.
    measurement: Option<[u8; 32]>,
}

impl TpmProvider {
    /// Opens the TPM behind `tcti`, creating the AK at [`DEFAULT_AK_HANDLE`] if none is there.
    pub fn new(tcti: &str, pcr: u32) -> Result<TpmProvider, TpmError> {
        TpmProvider::with_ak_handle(tcti, pcr, DEFAULT_AK_HANDLE)
    }

    /// Like [`TpmProvider::new`], with the AK at `ak_handle` (a persistent handle).
    pub fn with_ak_handle(tcti: &str, pcr: u32, ak_handle: u32) -> Result<TpmProvider, TpmError> {
        if pcr_handle(pcr).is_none() {
            return Err(TpmError::UnsupportedPcr(pcr));
        }
        let persistent =
            PersistentTpmHandle::new(ak_handle).map_err(|source| TpmError::Command {
                operation: "persistent handle check",
                source,
            })?;
        let _tpm = tpm_lock();
        let ak_public = retrying_busy(|| {
            let mut context = open(tcti)?;
            if let Some(public) = read_persistent_ak(&mut context, persistent)? {
                return Ok(public);
            }
            match create_persistent_ak(&mut context, persistent) {
                // Another process made its AK persistent there first: use that one.
                Err(error) if error.response_kind() == Some(Tss2ResponseCodeKind::NvDefined) => {
                    read_persistent_ak(&mut context, persistent)?.ok_or(error)
                }
                created => created,
            }
        })?;
        tpm_schema::check_ak_public(&ak_public).map_err(|why| TpmError::HandleTaken {
            handle: ak_handle,
            why,
        })?;
        Ok(TpmProvider {
            tcti: tcti.to_owned(),
            pcr,
            ak_handle,
            ak_public,
            measurement: None,
        })
    }

    /// The AK's marshalled `TPMT_PUBLIC`.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// The AK's fingerprint, which policies pin.
    pub fn ak_fingerprint(&self) -> String {
        tpm_schema::ak_fingerprint(&self.ak_public)
    }

    /// The measurement PCR.
    pub fn pcr(&self) -> u32 {
        self.pcr
    }

    /// Resets the measurement PCR and extends it with `measurement`. Every later quote does the
    /// same first, in the same connection, so that the quoted value is always
    /// SHA-256(0³² ‖ measurement) even if something else touched the PCR in between.
    pub fn extend_measurement(&mut self, measurement: &[u8; 32]) -> Result<(), TpmError> {
        let _tpm = tpm_lock();
        retrying_busy(|| set_measurement_pcr(&mut open(&self.tcti)?, self.pcr, measurement))?;
        self.measurement = Some(*measurement);
        Ok(())
    }

    /// A quote of PCR 0 and the measurement PCR (SHA-256 bank) by the AK, with
    /// `tpm_qualifying_data(worker_public_key, nonce)` as qualifying data.
    pub fn quote(&self, worker_public_key: &[u8], nonce: &[u8]) -> Result<TpmEvidence, TpmError> {
        let qualifying_data =
            dtee_schemas::attestation::tpm_qualifying_data(worker_public_key, nonce);
        let indices = [FIRMWARE_PCR, self.pcr];
        let slots: Vec<PcrSlot> = indices
            .iter()
            .map(|&index| pcr_slot(index))
            .collect::<Result<_, _>>()?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(command("PCR selection"))?;
        let policy = TpmPolicy {
            allowed_aks: vec![self.ak_fingerprint()],
            pcrs: self
                .measurement
                .map(|measurement| {
                    vec![PcrValue {
                        index: self.pcr,
                        value: tpm_schema::measurement_pcr_value(&measurement),
                    }]
                })
                .unwrap_or_default(),
            measurement_pcr: Some(self.pcr),
        };
        let _tpm = tpm_lock();
        let mut last_failure = String::new();
        for _ in 0..QUOTE_ATTEMPTS {
            let evidence =
                retrying_busy(|| self.quote_once(&qualifying_data, &selection, &indices, nonce))?;
            // The quote fails its own check only if another client changed a PCR between the
            // extend, the quote and the read: take it again.
            let checks = match &self.measurement {
                Some(measurement) => tpm_schema::verify_with_measurement(
                    &evidence,
                    worker_public_key,
                    measurement,
                    &policy,
                ),
                None => tpm_schema::verify(&evidence, worker_public_key, &policy),
            };
            let failures: Vec<String> = checks
                .into_iter()
                .filter(|check| check.failed())
                .map(|check| format!("{}: {:?}", check.name, check.outcome))
                .collect();
            if failures.is_empty() {
                return Ok(evidence);
            }
            last_failure = failures.join("; ");
            pause_with_jitter(10);
        }
        Err(TpmError::Unexpected(format!(
            "the quote does not verify after {QUOTE_ATTEMPTS} attempts: {last_failure}"
        )))
    }

    /// One connection: set the measurement PCR, quote, read the quoted PCRs.
    fn quote_once(
        &self,
        qualifying_data: &[u8; 32],
        selection: &PcrSelectionList,
        indices: &[u32],
        nonce: &[u8],
    ) -> Result<TpmEvidence, TpmError> {
        let mut context = open(&self.tcti)?;
        if let Some(measurement) = &self.measurement {
            set_measurement_pcr(&mut context, self.pcr, measurement)?;
        }
        let persistent =
            PersistentTpmHandle::new(self.ak_handle).map_err(command("persistent handle check"))?;
        let ak = context
            .execute_without_session(|ctx| {
                ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent))
            })
            .map_err(command("loading the AK handle"))?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(command("qualifying data"))?;
        let quoted = context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.quote(
                KeyHandle::from(ak),
                data,
                SignatureScheme::Null,
                selection.clone(),
            )
        });
        let mut ak_object = ak;
        let _ = context.tr_close(&mut ak_object);
        let (attest, signature) = quoted.map_err(command("quote"))?;
        let (_, read_selection, digests) = context
            .execute_without_session(|ctx| ctx.pcr_read(selection.clone()))
            .map_err(command("PCR read"))?;
        if read_selection != *selection || digests.len() != indices.len() {
            return Err(TpmError::Unexpected(format!(
                "PCR read returned {} of the {} quoted PCRs",
                digests.len(),
                indices.len()
            )));
        }
        let pcrs = indices
            .iter()
            .zip(digests.value())
            .map(|(&index, digest)| PcrValue::new(index, digest.value()))
            .collect();
        Ok(TpmEvidence {
            ak_public: self.ak_public.clone(),
            quote: attest
                .marshall()
                .map_err(command("marshalling the quote"))?,
            signature: signature
                .marshall()
                .map_err(command("marshalling the signature"))?,
            pcr_bank: tpm_schema::PCR_BANK.to_owned(),
            pcrs,
            nonce: nonce.to_vec(),
        })
    }
}

/// The [`Provider`] face of a [`TpmProvider`]: the PCR holds the worker's measurement, and
/// every evidence is a fresh quote.
#[derive(Debug)]
pub struct TpmAttestationProvider {
    /// The TPM.
    tpm: TpmProvider,
}

impl TpmAttestationProvider {
    /// Opens the TPM, makes sure the AK exists, and sets the measurement PCR.
    pub fn open(
        tcti: &str,
        pcr: u32,
        measurement: &Digest,
    ) -> Result<TpmAttestationProvider, AttestationError> {
        let map = |error: TpmError| {
            if error.is_unavailable() {
                AttestationError::UnsupportedProvider(error.to_string())
            } else {
                AttestationError::Failed(error.to_string())
            }
        };
        let mut tpm = TpmProvider::new(tcti, pcr).map_err(map)?;
        tpm.extend_measurement(&measurement.to_bytes())
            .map_err(map)?;
        tracing::info!(
            tcti,
            pcr,
            ak_handle = format_args!("0x{:08x}", tpm.ak_handle),
            ak_fingerprint = %tpm.ak_fingerprint(),
            pcr_value = %tpm_schema::measurement_pcr_value(&measurement.to_bytes()),
            "TPM attestation key ready"
        );
        Ok(TpmAttestationProvider { tpm })
    }

    /// The TPM underneath.
    pub fn tpm(&self) -> &TpmProvider {
        &self.tpm
    }
}

impl Provider for TpmAttestationProvider {
    fn platform(&self) -> Platform {
        Platform::Tpm
    }

    fn evidence(&self, public_key: &[u8; 32], nonce: &[u8]) -> Result<Evidence, AttestationError> {
        self.tpm
            .quote(public_key, nonce)
            .map(Evidence::Tpm)
            .map_err(|error| AttestationError::Failed(error.to_string()))
    }

    fn tcb(&self) -> Tcb {
        // A TPM measures and signs; it does not protect memory.
        Tcb {
            hardware_rooted: true,
            memory_protected: false,
            gpu_in_tcb: false,
            backend: "wasm".to_owned(),
            device: None,
        }
    }
}
