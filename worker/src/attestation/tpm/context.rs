//! TPM plumbing for the provider: opening a TSS context, PCR handles and slots, resetting and
//! extending the measurement PCR, and finding or creating the persistent attestation key.

use std::convert::TryFrom;
use std::str::FromStr;
use std::time::Duration;

use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Digest as TpmDigest, DigestValues, PcrSlot};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

use super::{command, TpmError};

pub(super) fn pause_with_jitter(millis: u64) {
    std::thread::sleep(Duration::from_millis(
        millis + rand::random::<u64>() % (millis + 1),
    ));
}

/// Opens a TSS context on `tcti`.
pub(super) fn open(tcti: &str) -> Result<Context, TpmError> {
    // Checked here so that a machine without a TPM gets one clear error rather than the TSS
    // library's own complaints on stderr.
    if let Some(path) = tcti.strip_prefix("device:") {
        if !std::path::Path::new(path).exists() {
            return Err(TpmError::NoDevice(path.to_owned()));
        }
    }
    let connect = |source| TpmError::Connect {
        tcti: tcti.to_owned(),
        source,
    };
    let name = TctiNameConf::from_str(tcti).map_err(connect)?;
    Context::new(name).map_err(connect)
}

/// The PCR handle of a PCR locality 0 may reset.
pub(super) fn pcr_handle(pcr: u32) -> Option<PcrHandle> {
    match pcr {
        16 => Some(PcrHandle::Pcr16),
        23 => Some(PcrHandle::Pcr23),
        _ => None,
    }
}

pub(super) fn pcr_slot(index: u32) -> Result<PcrSlot, TpmError> {
    1u32.checked_shl(index)
        .and_then(|bit| PcrSlot::try_from(bit).ok())
        .ok_or_else(|| TpmError::Unexpected(format!("PCR {index} has no slot")))
}

/// Resets the PCR and extends it once with the measurement.
pub(super) fn set_measurement_pcr(
    context: &mut Context,
    pcr: u32,
    measurement: &[u8; 32],
) -> Result<(), TpmError> {
    let handle = pcr_handle(pcr).ok_or(TpmError::UnsupportedPcr(pcr))?;
    let digest =
        TpmDigest::try_from(measurement.to_vec()).map_err(command("measurement digest"))?;
    let mut values = DigestValues::new();
    values.set(HashingAlgorithm::Sha256, digest);
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| ctx.pcr_reset(handle))
        .map_err(command("PCR reset"))?;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.pcr_extend(handle, values)
        })
        .map_err(command("PCR extend"))
}

/// The marshalled public area of the object at `handle`, if there is one.
pub(super) fn read_persistent_ak(
    context: &mut Context,
    handle: PersistentTpmHandle,
) -> Result<Option<Vec<u8>>, TpmError> {
    let wanted = u32::from(TpmHandle::Persistent(handle));
    let (data, _) = context
        .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, wanted, 1))
        .map_err(command("listing persistent handles"))?;
    let present = match data {
        CapabilityData::Handles(handles) => handles.iter().any(|&found| u32::from(found) == wanted),
        other => {
            return Err(TpmError::Unexpected(format!(
                "handle capability returned {other:?}"
            )));
        }
    };
    if !present {
        return Ok(None);
    }
    let object = context
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        .map_err(command("loading the AK handle"))?;
    let public = context.read_public(KeyHandle::from(object));
    let mut object = object;
    let _ = context.tr_close(&mut object);
    let (public, _, _) = public.map_err(command("reading the AK"))?;
    public
        .marshall()
        .map(Some)
        .map_err(command("marshalling the AK"))
}

/// Creates the EK and an AK under it, makes the AK persistent at `handle`, and returns its
/// marshalled public area. Transient objects are flushed whatever happens.
pub(super) fn create_persistent_ak(
    context: &mut Context,
    handle: PersistentTpmHandle,
) -> Result<Vec<u8>, TpmError> {
    let p256 = AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256);
    let ek = ek::create_ek_object_2(context, p256, None).map_err(command("creating the EK"))?;
    let result = (|| {
        let created = ak::create_ak_2(
            context,
            ek,
            HashingAlgorithm::Sha256,
            p256,
            SignatureSchemeAlgorithm::EcDsa,
            None,
            None,
        )
        .map_err(command("creating the AK"))?;
        let public = created
            .out_public
            .marshall()
            .map_err(command("marshalling the AK"))?;
        let loaded = ak::load_ak(context, ek, None, created.out_private, created.out_public)
            .map_err(command("loading the AK"))?;
        let persisted = context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(
                Provision::Owner,
                ObjectHandle::from(loaded),
                Persistent::Persistent(handle),
            )
        });
        let _ = context.flush_context(ObjectHandle::from(loaded));
        let mut persisted = persisted.map_err(command("making the AK persistent"))?;
        let _ = context.tr_close(&mut persisted);
        Ok(public)
    })();
    let _ = context.flush_context(ObjectHandle::from(ek));
    result
}
