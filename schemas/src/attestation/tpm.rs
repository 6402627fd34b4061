//! TPM 2.0 quote verification.
//!
//! A worker with a TPM proves its key like this: it resets a resettable PCR (23 by default),
//! extends it with its measurement, and asks the TPM for a quote of that PCR and PCR 0 by a
//! restricted attestation key (AK), with [`super::tpm_qualifying_data`] of its public key and a
//! nonce as the quote's qualifying data. The evidence ([`TpmEvidence`]) carries the AK's public
//! area, the quote (`TPMS_ATTEST`), its signature (`TPMT_SIGNATURE`) and the quoted PCR values,
//! all as the TPM marshalled them.
//!
//! [`verify`] checks that evidence against a [`TpmPolicy`], which pins AKs by
//! [`ak_fingerprint`] and may require PCR values. Only ECC P-256 AKs signing with ECDSA over
//! SHA-256, and the SHA-256 PCR bank, are accepted.
//!
//! What a passing verdict means: a TPM holding a pinned AK quoted PCRs with these values, and
//! the quote names this worker key and nonce. A restricted AK signs only data the TPM itself
//! generated (it refuses to sign anything that starts with `TPM_GENERATED_VALUE`), so a valid
//! signature over a quote with that magic is the TPM's own statement. The measurement PCR is
//! resettable, so its value is as trustworthy as the software that may reset and extend it: the
//! boot PCRs (0 here) say which software that is.
//!
//! The TPM structures are parsed with a small big-endian reader; any malformed input yields a
//! failed check, never a panic.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Check;

/// The PCR bank quotes use.
pub const PCR_BANK: &str = "sha256";

/// `TPM_GENERATED_VALUE`: the magic that starts every structure a TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`: the attestation structure of `TPM2_Quote`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// `TPMA_OBJECT` bits.
const FIXED_TPM: u32 = 1 << 1;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN_ENCRYPT: u32 = 1 << 18;

/// One PCR and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PcrValue {
    /// The PCR index, 0 to 23 on common TPMs.
    pub index: u32,
    /// Its value, hex (32 bytes for the SHA-256 bank).
    pub value: String,
}

impl PcrValue {
    /// A PCR value from raw bytes.
    pub fn new(index: u32, value: &[u8]) -> PcrValue {
        PcrValue {
            index,
            value: hex::encode(value),
        }
    }
}

/// A TPM quote binding a worker key, as a worker publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TpmEvidence {
    /// The attestation key's `TPMT_PUBLIC`, marshalled, base64. A policy pins the SHA-256 of
    /// these bytes ([`ak_fingerprint`]).
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub ak_public: Vec<u8>,
    /// The quote's `TPMS_ATTEST`, marshalled, base64: the message the AK signed.
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub quote: Vec<u8>,
    /// The quote's `TPMT_SIGNATURE`, marshalled, base64.
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub signature: Vec<u8>,
    /// The PCR bank quoted: always `sha256`.
    pub pcr_bank: String,
    /// The quoted PCRs and their values, in the quote's selection order (ascending index).
    pub pcrs: Vec<PcrValue>,
    /// The nonce mixed into the qualifying data, base64.
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub nonce: Vec<u8>,
}

/// What a verifier accepts from TPM evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmPolicy {
    /// Accepted attestation keys: hex SHA-256 of their marshalled `TPMT_PUBLIC`
    /// ([`ak_fingerprint`]). Evidence from any other key fails.
    pub allowed_aks: Vec<String>,
    /// PCR values the quote must show (SHA-256 bank); may be empty.
    #[serde(default)]
    pub pcrs: Vec<PcrValue>,
}

/// The fingerprint by which a policy pins an attestation key: hex SHA-256 of its marshalled
/// `TPMT_PUBLIC`.
pub fn ak_fingerprint(ak_public: &[u8]) -> String {
    hex::encode(Sha256::digest(ak_public))
}

/// Whether a marshalled `TPMT_PUBLIC` is an attestation key [`verify`] accepts: ECC P-256,
/// restricted, signing only, fixedTPM, ECDSA over SHA-256, SHA-256 names.
pub fn check_ak_public(ak_public: &[u8]) -> Result<(), String> {
    parse_ak_public(ak_public).map(|_| ())
}

/// `TPM2_PCR_Extend` in the SHA-256 bank: SHA-256(old ‖ digest).
pub fn pcr_extend(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(digest);
    hasher.finalize().into()
}

/// The value of the measurement PCR once a worker has reset it and extended it with its
/// measurement, hex: what a policy requires to pin the worker's measurement.
pub fn measurement_pcr_value(measurement: &[u8; 32]) -> String {
    hex::encode(pcr_extend(&[0; 32], measurement))
}

/// Checks TPM evidence for `worker_public_key` against `policy`.
///
/// Always returns the same checks, in this order, so that a verifier can print them:
/// `tpm.ak_pinned`, `tpm.ak_public`, `tpm.signature`, `tpm.quote_format`,
/// `tpm.qualifying_data`, `tpm.pcr_selection`, `tpm.pcr_digest`, `tpm.pcr_values`. The
/// evidence is acceptable only if none fails.
pub fn verify(evidence: &TpmEvidence, worker_public_key: &[u8], policy: &TpmPolicy) -> Vec<Check> {
    let mut checks = Vec::with_capacity(8);

    // The AK is pinned by its exact public area.
    let fingerprint = ak_fingerprint(&evidence.ak_public);
    checks.push(if policy.allowed_aks.is_empty() {
        Check::fail("tpm.ak_pinned", "the policy pins no attestation key")
    } else {
        Check::from_bool(
            "tpm.ak_pinned",
            policy
                .allowed_aks
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(&fingerprint)),
            || format!("attestation key {fingerprint} is not in the policy's allowed_aks"),
        )
    });

    // The AK is an ECC P-256 restricted signing key.
    let ak = parse_ak_public(&evidence.ak_public);
    checks.push(match &ak {
        Ok(_) => Check::pass("tpm.ak_public"),
        Err(why) => Check::fail("tpm.ak_public", format!("attestation key: {why}")),
    });

    // The AK signed the quote.
    checks.push(match (&ak, parse_signature(&evidence.signature)) {
        (Err(_), _) => Check::fail("tpm.signature", "no usable attestation key"),
        (Ok(_), Err(why)) => Check::fail("tpm.signature", format!("signature: {why}")),
        (Ok(key), Ok(signature)) => Check::from_bool(
            "tpm.signature",
            key.verify(&evidence.quote, &signature).is_ok(),
            || "the signature does not verify over the quote with the attestation key".to_owned(),
        ),
    });

    // The quote is a TPM-generated quote.
    let quote = parse_quote(&evidence.quote);
    checks.push(match &quote {
        Ok(_) => Check::pass("tpm.quote_format"),
        Err(why) => Check::fail("tpm.quote_format", format!("quote: {why}")),
    });
    let Ok(quote) = quote else {
        for name in [
            "tpm.qualifying_data",
            "tpm.pcr_selection",
            "tpm.pcr_digest",
            "tpm.pcr_values",
        ] {
            checks.push(Check::fail(name, "the quote does not parse"));
        }
        return checks;
    };

    // The quote names this worker key and nonce.
    let expected = super::tpm_qualifying_data(worker_public_key, &evidence.nonce);
    checks.push(Check::from_bool(
        "tpm.qualifying_data",
        quote.extra_data == expected,
        || {
            format!(
                "the quote's qualifying data {} is not {} (the worker key and nonce)",
                hex::encode(&quote.extra_data),
                hex::encode(expected)
            )
        },
    ));

    // The quote selects exactly the PCRs the evidence lists, in the same order.
    let selected = quote.selected_pcrs();
    let listed: Vec<(u16, u32)> = evidence
        .pcrs
        .iter()
        .map(|pcr| (TPM_ALG_SHA256, pcr.index))
        .collect();
    checks.push(if evidence.pcr_bank != PCR_BANK {
        Check::fail(
            "tpm.pcr_selection",
            format!(
                "PCR bank {:?} is not supported (only {PCR_BANK})",
                evidence.pcr_bank
            ),
        )
    } else {
        Check::from_bool("tpm.pcr_selection", selected == listed, || {
            format!(
                "the quote selects {} but the evidence lists {PCR_BANK}:{}",
                describe_selection(&selected),
                index_list(listed.iter().map(|(_, index)| *index))
            )
        })
    });

    // The listed values are the quoted ones.
    let values: Result<Vec<[u8; 32]>, String> = evidence
        .pcrs
        .iter()
        .map(|pcr| {
            parse_pcr_value(&pcr.value).ok_or_else(|| {
                format!(
                    "PCR {} value {:?} is not 32 bytes of hex",
                    pcr.index, pcr.value
                )
            })
        })
        .collect();
    checks.push(match values {
        Err(why) => Check::fail("tpm.pcr_digest", why),
        Ok(values) => {
            let mut hasher = Sha256::new();
            for value in &values {
                hasher.update(value);
            }
            let digest = hasher.finalize();
            Check::from_bool(
                "tpm.pcr_digest",
                quote.pcr_digest == digest.as_slice(),
                || {
                    format!(
                        "the quote's PCR digest {} is not the digest of the listed values {}",
                        hex::encode(&quote.pcr_digest),
                        hex::encode(digest)
                    )
                },
            )
        }
    });

    // The policy's PCR values.
    checks.push(if policy.pcrs.is_empty() {
        Check::skipped("tpm.pcr_values", "the policy requires no PCR values")
    } else {
        let mismatches: Vec<String> = policy
            .pcrs
            .iter()
            .filter_map(|required| {
                let found = evidence.pcrs.iter().find(|pcr| pcr.index == required.index);
                match found {
                    None => Some(format!("PCR {} is not quoted", required.index)),
                    Some(pcr) if pcr.value.eq_ignore_ascii_case(&required.value) => None,
                    Some(pcr) => Some(format!(
                        "PCR {} is {}, the policy requires {}",
                        required.index, pcr.value, required.value
                    )),
                }
            })
            .collect();
        Check::from_bool("tpm.pcr_values", mismatches.is_empty(), || {
            mismatches.join("; ")
        })
    });

    checks
}

/// Parses a marshalled `TPMT_PUBLIC` as an ECC P-256 restricted signing key (ECDSA, SHA-256)
/// that never leaves its TPM, and returns its verifying key.
fn parse_ak_public(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let mut reader = Reader::new(bytes);
    let key_type = reader.u16()?;
    if key_type != TPM_ALG_ECC {
        return Err(format!("type 0x{key_type:04x} is not ECC"));
    }
    let name_alg = reader.u16()?;
    if name_alg != TPM_ALG_SHA256 {
        return Err(format!("name algorithm 0x{name_alg:04x} is not SHA-256"));
    }
    let attributes = reader.u32()?;
    for (bit, what) in [
        (RESTRICTED, "restricted"),
        (SIGN_ENCRYPT, "sign"),
        (FIXED_TPM, "fixedTPM"),
    ] {
        if attributes & bit == 0 {
            return Err(format!("attributes 0x{attributes:08x} lack {what}"));
        }
    }
    if attributes & DECRYPT != 0 {
        return Err(format!("attributes 0x{attributes:08x} include decrypt"));
    }
    let _auth_policy = reader.tpm2b()?;
    // TPMS_ECC_PARMS: a signing key has no symmetric algorithm.
    let symmetric = reader.u16()?;
    if symmetric != TPM_ALG_NULL {
        return Err(format!("symmetric algorithm 0x{symmetric:04x} is not null"));
    }
    let scheme = reader.u16()?;
    if scheme != TPM_ALG_ECDSA {
        return Err(format!("signing scheme 0x{scheme:04x} is not ECDSA"));
    }
    let scheme_hash = reader.u16()?;
    if scheme_hash != TPM_ALG_SHA256 {
        return Err(format!("signing hash 0x{scheme_hash:04x} is not SHA-256"));
    }
    let curve = reader.u16()?;
    if curve != TPM_ECC_NIST_P256 {
        return Err(format!("curve 0x{curve:04x} is not NIST P-256"));
    }
    let kdf = reader.u16()?;
    if kdf != TPM_ALG_NULL {
        let _kdf_hash = reader.u16()?;
    }
    let x = left_pad_32(reader.tpm2b()?).ok_or("point x is longer than 32 bytes")?;
    let y = left_pad_32(reader.tpm2b()?).ok_or("point y is longer than 32 bytes")?;
    reader.finish()?;
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point).map_err(|_| "the point is not on P-256".to_owned())
}

/// Parses a marshalled `TPMT_SIGNATURE` as ECDSA over SHA-256.
fn parse_signature(bytes: &[u8]) -> Result<Signature, String> {
    let mut reader = Reader::new(bytes);
    let algorithm = reader.u16()?;
    if algorithm != TPM_ALG_ECDSA {
        return Err(format!("algorithm 0x{algorithm:04x} is not ECDSA"));
    }
    let hash = reader.u16()?;
    if hash != TPM_ALG_SHA256 {
        return Err(format!("hash 0x{hash:04x} is not SHA-256"));
    }
    let r = left_pad_32(reader.tpm2b()?).ok_or("r is longer than 32 bytes")?;
    let s = left_pad_32(reader.tpm2b()?).ok_or("s is longer than 32 bytes")?;
    reader.finish()?;
    Signature::from_scalars(r, s).map_err(|_| "r or s is out of range".to_owned())
}

/// The parts of a `TPMS_ATTEST` quote that are checked.
#[derive(Debug)]
struct Quote {
    /// `extraData`: the qualifying data.
    extra_data: Vec<u8>,
    /// `TPML_PCR_SELECTION`: (hash algorithm, bitmap) per entry.
    selections: Vec<(u16, Vec<u8>)>,
    /// `pcrDigest`.
    pcr_digest: Vec<u8>,
}

impl Quote {
    /// The selected (bank, PCR index) pairs in the order the TPM digests them: entry by entry,
    /// ascending index within an entry.
    fn selected_pcrs(&self) -> Vec<(u16, u32)> {
        let mut selected = Vec::new();
        for (hash, bitmap) in &self.selections {
            for (byte_index, byte) in bitmap.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        selected.push((*hash, byte_index as u32 * 8 + bit));
                    }
                }
            }
        }
        selected
    }
}

/// Parses a marshalled `TPMS_ATTEST` that must be a TPM-generated quote.
fn parse_quote(bytes: &[u8]) -> Result<Quote, String> {
    let mut reader = Reader::new(bytes);
    let magic = reader.u32()?;
    if magic != TPM_GENERATED_VALUE {
        return Err(format!("magic 0x{magic:08x} is not TPM_GENERATED_VALUE"));
    }
    let attest_type = reader.u16()?;
    if attest_type != TPM_ST_ATTEST_QUOTE {
        return Err(format!(
            "type 0x{attest_type:04x} is not TPM_ST_ATTEST_QUOTE"
        ));
    }
    let _qualified_signer = reader.tpm2b()?;
    let extra_data = reader.tpm2b()?.to_vec();
    // TPMS_CLOCK_INFO (clock, resetCount, restartCount, safe), then firmwareVersion.
    reader.take(8 + 4 + 4 + 1)?;
    reader.take(8)?;
    // TPMS_QUOTE_INFO.
    let count = reader.u32()?;
    // A TPM has a handful of banks; a bound keeps hostile counts from allocating.
    if count > 16 {
        return Err(format!("{count} PCR selections are too many"));
    }
    let mut selections = Vec::new();
    for _ in 0..count {
        let hash = reader.u16()?;
        let size = reader.u8()?;
        selections.push((hash, reader.take(usize::from(size))?.to_vec()));
    }
    let pcr_digest = reader.tpm2b()?.to_vec();
    reader.finish()?;
    Ok(Quote {
        extra_data,
        selections,
        pcr_digest,
    })
}

/// A PCR value from 64 hex digits.
fn parse_pcr_value(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// Left-pads a big-endian integer to 32 bytes; `None` if longer.
fn left_pad_32(bytes: &[u8]) -> Option<[u8; 32]> {
    let mut padded = [0u8; 32];
    let start = 32usize.checked_sub(bytes.len())?;
    padded[start..].copy_from_slice(bytes);
    Some(padded)
}

fn describe_selection(selected: &[(u16, u32)]) -> String {
    if selected.iter().all(|(hash, _)| *hash == TPM_ALG_SHA256) {
        format!(
            "{PCR_BANK}:{}",
            index_list(selected.iter().map(|(_, index)| *index))
        )
    } else {
        let parts: Vec<String> = selected
            .iter()
            .map(|(hash, index)| format!("0x{hash:04x}:{index}"))
            .collect();
        format!("[{}]", parts.join(","))
    }
}

fn index_list(indices: impl Iterator<Item = u32>) -> String {
    let parts: Vec<String> = indices.map(|index| index.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// A reader of big-endian TPM wire structures that fails, rather than panics, on short input.
#[derive(Debug)]
struct Reader<'a> {
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.rest.len()
            ));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A `TPM2B_*`: a 16-bit size and that many bytes.
    fn tpm2b(&mut self) -> Result<&'a [u8], String> {
        let size = self.u16()?;
        self.take(usize::from(size))
    }

    /// Fails if bytes are left over.
    fn finish(self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.rest.len()))
        }
    }
}

/// Serde for bytes as standard, padded base64 strings.
mod base64_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::job::encode_base64(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::job::decode_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_fails_on_short_input() {
        let mut reader = Reader::new(&[0x00, 0x05, 0x01]);
        assert!(reader.tpm2b().is_err());
        assert!(Reader::new(&[0x01]).u16().is_err());
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        // Every prefix and every single-byte corruption of a plausible structure.
        let quote: Vec<u8> = [
            &TPM_GENERATED_VALUE.to_be_bytes()[..],
            &TPM_ST_ATTEST_QUOTE.to_be_bytes(),
            &[0x00, 0x02, 0xaa, 0xbb, 0x00, 0x01, 0xcc],
            &[0; 25],
            &[0, 0, 0, 1, 0x00, 0x0b, 0x03, 0x01, 0x00, 0x80, 0x00, 0x20],
            &[0x11; 32],
        ]
        .concat();
        assert!(parse_quote(&quote).is_ok());
        for end in 0..quote.len() {
            assert!(parse_quote(&quote[..end]).is_err());
        }
        for index in 0..quote.len() {
            for value in [0x00, 0xff] {
                let mut corrupted = quote.clone();
                corrupted[index] = value;
                let _ = parse_quote(&corrupted);
                let _ = parse_ak_public(&corrupted);
                let _ = parse_signature(&corrupted);
            }
        }
    }

    #[test]
    fn selection_order_is_entry_then_ascending_bit() {
        let quote = Quote {
            extra_data: Vec::new(),
            selections: vec![(TPM_ALG_SHA256, vec![0x01, 0x00, 0x80])],
            pcr_digest: Vec::new(),
        };
        assert_eq!(
            quote.selected_pcrs(),
            vec![(TPM_ALG_SHA256, 0), (TPM_ALG_SHA256, 23)]
        );
    }

    #[test]
    fn measurement_pcr_value_is_one_extend_from_zero() {
        let measurement = [7u8; 32];
        let mut hasher = Sha256::new();
        hasher.update([0u8; 32]);
        hasher.update(measurement);
        assert_eq!(
            measurement_pcr_value(&measurement),
            hex::encode(hasher.finalize())
        );
    }
}
