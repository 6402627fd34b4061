//! The AMD extensions of VCEK and VLEK certificates: the product, the TCB and the chip id they
//! are for.

use x509_cert::der::asn1::{Ia5StringRef, OctetStringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode as _;
use x509_cert::Certificate;

use super::check;
use super::product::Product;
use super::report::SnpTcb;
use crate::attestation::Check;

/// AMD's X.509 extensions in VCEK/VLEK certificates (VCEK specification, AMD 57230).
pub(super) mod oid {
    use x509_cert::der::oid::ObjectIdentifier;

    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// X.520 commonName.
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
}

/// The product a VEK certificate is for: its productName extension, else its issuer's name.
pub(super) fn cert_product(cert: &Certificate) -> Option<Product> {
    if let Ok(Some(value)) = unique_extension(cert, &oid::PRODUCT_NAME) {
        let name = Ia5StringRef::from_der(value)
            .map(|s| s.as_str().to_owned())
            .or_else(|_| Utf8StringRef::from_der(value).map(|s| s.as_str().to_owned()));
        if let Some(product) = name.ok().and_then(|name| Product::from_amd_name(&name)) {
            return Some(product);
        }
    }
    common_name(&cert.tbs_certificate.issuer).and_then(|cn| Product::from_amd_name(&cn))
}

/// `snp.vcek_tcb`: the VEK's SPL extensions equal the report's reported TCB.
pub(super) fn check_vcek_tcb(vek: &Certificate, reported: &SnpTcb) -> Check {
    let mut components = vec![
        ("bootloader", oid::BL_SPL, reported.bootloader),
        ("tee", oid::TEE_SPL, reported.tee),
        ("snp", oid::SNP_SPL, reported.snp),
        ("microcode", oid::UCODE_SPL, reported.microcode),
    ];
    if let Some(fmc) = reported.fmc {
        components.push(("fmc", oid::FMC_SPL, fmc));
    }
    let mut problems = Vec::new();
    for (label, oid, want) in components {
        match unique_extension(vek, &oid) {
            Err(why) => problems.push(format!("{label}: {why}")),
            Ok(None) => problems.push(format!("{label}: the VCEK has no {oid} extension")),
            Ok(Some(value)) => match u8::from_der(value) {
                Err(_) => problems.push(format!("{label}: extension {oid} is not a small INTEGER")),
                Ok(have) if have != want => {
                    problems.push(format!("{label}: VCEK {have}, report {want}"));
                }
                Ok(_) => {}
            },
        }
    }
    if problems.is_empty() {
        Check::pass(check::VCEK_TCB)
    } else {
        Check::fail(
            check::VCEK_TCB,
            format!(
                "the VCEK is not for the reported TCB: {}",
                problems.join("; ")
            ),
        )
    }
}

/// `snp.vcek_hwid`: the VCEK's hwID is the report's chip id (its first 8 bytes from Turin on).
pub(super) fn check_vcek_hwid(vek: &Certificate, chip_id: &[u8; 64], product: Product) -> Check {
    let fail = |why: String| Check::fail(check::VCEK_HWID, why);
    let value = match unique_extension(vek, &oid::HW_ID) {
        Err(why) => return fail(why),
        Ok(None) => return fail("the VCEK has no hwID extension".into()),
        Ok(Some(value)) => value,
    };
    let len = product.hwid_len();
    // AMD's VCEKs carry the id as the extension's raw value; some issuers wrap it in a DER
    // OCTET STRING. The lengths tell them apart.
    let hwid = if value.len() == len {
        value
    } else {
        match OctetStringRef::from_der(value) {
            Ok(inner) if inner.as_bytes().len() == len => inner.as_bytes(),
            _ => {
                return fail(format!(
                    "the VCEK's hwID is {} bytes, a {product} chip id is {len}",
                    value.len()
                ));
            }
        }
    };
    Check::from_bool(check::VCEK_HWID, hwid == &chip_id[..len], || {
        format!(
            "the VCEK is for chip {}, the report is from chip {}",
            hex::encode(hwid),
            hex::encode(&chip_id[..len])
        )
    })
}

/// The value of the extension `oid`, if the certificate has exactly one.
pub(super) fn unique_extension<'a>(
    cert: &'a Certificate,
    oid: &ObjectIdentifier,
) -> Result<Option<&'a [u8]>, String> {
    let mut found = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|extension| extension.extn_id == *oid);
    let first = found.next();
    if found.next().is_some() {
        return Err(format!("the certificate has more than one {oid} extension"));
    }
    Ok(first.map(|extension| extension.extn_value.as_bytes()))
}

/// The first common name in a distinguished name.
pub(super) fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid::COMMON_NAME)
        .and_then(|atv| {
            let value = &atv.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use x509_cert::der::Encode as _;

    use super::*;
    use crate::attestation::Outcome;

    /// The SNP fixtures (see `schemas/tests/snp.rs` for where they are looked for).
    fn fixture(path: &str) -> Vec<u8> {
        let shared = std::env::var_os("DTEE_SHARED_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
            });
        let path = shared.join("fixtures/snp").join(path);
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    #[test]
    fn turin_vceks_carry_an_eight_byte_hwid_and_an_fmc_spl() {
        let vcek = Certificate::from_der(&fixture("virtee-sev/vcek_turin.der")).unwrap();
        assert_eq!(cert_product(&vcek), Some(Product::Turin));
        let hwid = hex::decode("1e550a8ee5cf9f4d").unwrap();
        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&hwid);
        assert_eq!(
            check_vcek_hwid(&vcek, &chip_id, Product::Turin).outcome,
            Outcome::Pass
        );
        chip_id[7] ^= 1;
        assert!(check_vcek_hwid(&vcek, &chip_id, Product::Turin).failed());
        // Read as a Milan/Genoa VCEK, its hwID has the wrong length.
        assert!(check_vcek_hwid(&vcek, &chip_id, Product::Genoa).failed());

        let tcb = SnpTcb {
            fmc: Some(0),
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 9,
        };
        assert_eq!(check_vcek_tcb(&vcek, &tcb).outcome, Outcome::Pass);
        assert!(check_vcek_tcb(
            &vcek,
            &SnpTcb {
                fmc: Some(1),
                ..tcb
            }
        )
        .failed());
        assert!(check_vcek_tcb(
            &vcek,
            &SnpTcb {
                microcode: 8,
                ..tcb
            }
        )
        .failed());
    }

    #[test]
    fn a_wrapped_hwid_is_read_too() {
        // Some issuers wrap the hwID in a DER OCTET STRING; build such a VCEK from a real one.
        let der = fixture("virtee-sev/vcek_milan.der");
        let mut vcek = Certificate::from_der(&der).unwrap();
        let chip_id: [u8; 64] = {
            let raw = unique_extension(&vcek, &oid::HW_ID).unwrap().unwrap();
            raw.try_into().unwrap()
        };
        for extension in vcek.tbs_certificate.extensions.iter_mut().flatten() {
            if extension.extn_id == oid::HW_ID {
                let wrapped = OctetStringRef::new(&chip_id).unwrap().to_der().unwrap();
                extension.extn_value = x509_cert::der::asn1::OctetString::new(wrapped).unwrap();
            }
        }
        assert_eq!(
            check_vcek_hwid(&vcek, &chip_id, Product::Milan).outcome,
            Outcome::Pass
        );
        let mut other = chip_id;
        other[63] ^= 1;
        assert!(check_vcek_hwid(&vcek, &other, Product::Milan).failed());
    }
}
