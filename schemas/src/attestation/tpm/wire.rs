//! The TPM wire structures verification reads: `TPMT_PUBLIC`, `TPMT_SIGNATURE` and
//! `TPMS_ATTEST`, parsed with a small big-endian reader that fails, rather than panics, on
//! malformed input.

use p256::ecdsa::{Signature, VerifyingKey};

use super::evidence::PCR_BANK;

/// `TPM_GENERATED_VALUE`: the magic that starts every structure a TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`: the attestation structure of `TPM2_Quote`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

pub(super) const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// `TPMA_OBJECT` bits.
const FIXED_TPM: u32 = 1 << 1;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN_ENCRYPT: u32 = 1 << 18;

/// Parses a marshalled `TPMT_PUBLIC` as an ECC P-256 restricted signing key (ECDSA, SHA-256)
/// that never leaves its TPM, and returns its verifying key.
pub(super) fn parse_ak_public(bytes: &[u8]) -> Result<VerifyingKey, String> {
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
pub(super) fn parse_signature(bytes: &[u8]) -> Result<Signature, String> {
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
pub(super) struct Quote {
    /// `extraData`: the qualifying data.
    pub(super) extra_data: Vec<u8>,
    /// `TPML_PCR_SELECTION`: (hash algorithm, bitmap) per entry.
    selections: Vec<(u16, Vec<u8>)>,
    /// `pcrDigest`.
    pub(super) pcr_digest: Vec<u8>,
}

impl Quote {
    /// The selected (bank, PCR index) pairs in the order the TPM digests them: entry by entry,
    /// ascending index within an entry.
    pub(super) fn selected_pcrs(&self) -> Vec<(u16, u32)> {
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
pub(super) fn parse_quote(bytes: &[u8]) -> Result<Quote, String> {
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
pub(super) fn parse_pcr_value(text: &str) -> Option<[u8; 32]> {
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

pub(super) fn describe_selection(selected: &[(u16, u32)]) -> String {
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

pub(super) fn index_list(indices: impl Iterator<Item = u32>) -> String {
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
}
