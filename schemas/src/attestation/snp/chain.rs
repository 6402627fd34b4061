//! The certificate chain: AMD's pinned ARK signs the ASK (or ASVK), which signs the VCEK (or
//! VLEK), and each certificate's validity period.

use sev::certs::snp::{Certificate as SevCertificate, Verifiable as _};
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};
use x509_cert::Certificate;

use super::check;
use super::evidence::SnpEvidence;
use super::product::Product;
use super::report::{SigningKey, SnpReportClaims};
use crate::attestation::Check;

/// The certificates the chain checks settled on, for the validity checks.
pub(super) struct ChainOutcome {
    pub(super) ark: Option<Certificate>,
    pub(super) why_no_ark: String,
    pub(super) ask: Option<Certificate>,
    pub(super) why_no_ask: String,
    pub(super) ask_label: &'static str,
    pub(super) vek_label: &'static str,
}

/// `snp.ark_pinned`, `snp.ark_self_signature`, `snp.ask_signature` and `snp.vcek_signature`.
pub(super) fn check_chain(
    evidence: &SnpEvidence,
    claims: &SnpReportClaims,
    product: Option<Product>,
    vek: &Result<Certificate, String>,
    checks: &mut Vec<Check>,
) -> ChainOutcome {
    let vlek = claims.signing_key == SigningKey::Vlek;
    let (ask_label, vek_label) = if vlek {
        ("ASVK", "VLEK")
    } else {
        ("ASK", "VCEK")
    };
    let mut outcome = ChainOutcome {
        ark: None,
        why_no_ark: String::new(),
        ask: None,
        why_no_ask: String::new(),
        ask_label,
        vek_label,
    };

    let Some(product) = product else {
        let why = "the product is not identified, so there is no pinned root to check against";
        for name in [
            check::ARK_PINNED,
            check::ARK_SELF_SIGNATURE,
            check::ASK_SIGNATURE,
            check::VCEK_SIGNATURE,
        ] {
            checks.push(Check::skipped(name, why));
        }
        outcome.why_no_ark = why.into();
        outcome.why_no_ask = why.into();
        return outcome;
    };
    let roots = product.roots();

    // ARK: always the pinned one; the evidence's, if any, must be it.
    let ark = match pinned(roots.ark) {
        Ok(ark) => ark,
        Err(why) => {
            // Unreachable with the certificates this crate ships; fail rather than panic.
            checks.push(Check::fail(
                check::ARK_PINNED,
                format!("pinned {product} ARK: {why}"),
            ));
            for name in [
                check::ARK_SELF_SIGNATURE,
                check::ASK_SIGNATURE,
                check::VCEK_SIGNATURE,
            ] {
                checks.push(Check::skipped(name, "no pinned ARK"));
            }
            outcome.why_no_ark = "no pinned ARK".into();
            outcome.why_no_ask = "no pinned ARK".into();
            return outcome;
        }
    };
    checks.push(match &evidence.ark_der {
        None => Check::pass(check::ARK_PINNED),
        Some(der) => Check::from_bool(check::ARK_PINNED, ark.der == *der, || {
            format!("the evidence's ARK is not AMD's pinned {product} ARK")
        }),
    });
    let ark_sev = SevCertificate::from(ark.cert.clone());
    checks.push(match (&ark_sev, &ark_sev).verify() {
        Ok(()) => Check::pass(check::ARK_SELF_SIGNATURE),
        Err(error) => Check::fail(
            check::ARK_SELF_SIGNATURE,
            format!("the {product} ARK does not sign itself: {error}"),
        ),
    });

    // ASK (ASVK for a VLEK): the pinned one, or the evidence's if it is the same key role
    // (same subject) and the ARK signs it.
    let pinned_ask = pinned(if vlek { roots.asvk } else { roots.ask });
    let ask: Result<Certificate, String> = match (&evidence.ask_der, pinned_ask) {
        (_, Err(why)) => Err(format!("pinned {product} {ask_label}: {why}")),
        (None, Ok(pinned)) => Ok(pinned.cert),
        (Some(der), Ok(pinned)) if *der == pinned.der => Ok(pinned.cert),
        (Some(der), Ok(pinned)) => match Certificate::from_der(der) {
            Err(error) => Err(format!(
                "the evidence's {ask_label} is not a DER certificate: {error}"
            )),
            Ok(cert) if cert.tbs_certificate.subject != pinned.cert.tbs_certificate.subject => {
                Err(format!(
                    "the evidence's {ask_label} is for {}, not {}",
                    cert.tbs_certificate.subject, pinned.cert.tbs_certificate.subject
                ))
            }
            Ok(cert) => Ok(cert),
        },
    };
    outcome.ark = Some(ark.cert);
    let ask = match ask {
        Ok(ask) => ask,
        Err(why) => {
            checks.push(Check::fail(check::ASK_SIGNATURE, why));
            checks.push(Check::skipped(
                check::VCEK_SIGNATURE,
                format!("no usable {ask_label}"),
            ));
            outcome.why_no_ask = format!("no usable {ask_label}");
            return outcome;
        }
    };
    let ask_sev = SevCertificate::from(ask.clone());
    checks.push(match (&ark_sev, &ask_sev).verify() {
        Ok(()) => Check::pass(check::ASK_SIGNATURE),
        Err(error) => Check::fail(
            check::ASK_SIGNATURE,
            format!("the {product} ARK does not sign the {ask_label}: {error}"),
        ),
    });
    outcome.ask = Some(ask);

    // VCEK (VLEK) by the ASK (ASVK).
    checks.push(match vek {
        Err(why) => Check::fail(check::VCEK_SIGNATURE, why.clone()),
        Ok(vek) => match (&ask_sev, &SevCertificate::from(vek.clone())).verify() {
            Ok(()) => Check::pass(check::VCEK_SIGNATURE),
            Err(error) => Check::fail(
                check::VCEK_SIGNATURE,
                format!("the {product} {ask_label} does not sign the {vek_label}: {error}"),
            ),
        },
    });
    outcome
}

/// A pinned certificate, parsed, with its DER.
pub(super) struct Pinned {
    cert: Certificate,
    der: Vec<u8>,
}

pub(super) fn pinned(pem: &str) -> Result<Pinned, String> {
    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|error| error.to_string())?;
    let der = cert.to_der().map_err(|error| error.to_string())?;
    Ok(Pinned { cert, der })
}

/// notBefore ≤ now ≤ notAfter.
pub(super) fn check_validity(
    name: &'static str,
    label: &str,
    cert: &Certificate,
    now: i64,
) -> Check {
    let validity = &cert.tbs_certificate.validity;
    let secs = |time: x509_cert::time::Time| {
        i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    let (not_before, not_after) = (secs(validity.not_before), secs(validity.not_after));
    if now < not_before {
        Check::fail(
            name,
            format!(
                "the {label} is not valid before {} (now {now})",
                validity.not_before
            ),
        )
    } else if now > not_after {
        Check::fail(
            name,
            format!("the {label} expired at {} (now {now})", validity.not_after),
        )
    } else {
        Check::pass(name)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::attestation::snp::vcek::common_name;

    /// SHA-256 of each pinned ARK's DER: a change to the PEM files must be deliberate.
    const ARK_SHA256: [(Product, &str); 3] = [
        (
            Product::Milan,
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        ),
        (
            Product::Genoa,
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        ),
        (
            Product::Turin,
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        ),
    ];

    #[test]
    fn pinned_arks_have_the_expected_fingerprints() {
        for (product, fingerprint) in ARK_SHA256 {
            let ark = pinned(product.roots().ark).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&ark.der)),
                fingerprint,
                "{product}"
            );
        }
    }

    #[test]
    fn pinned_chains_verify_and_name_their_roles() {
        for product in Product::ALL {
            let roots = product.roots();
            let ark = pinned(roots.ark).unwrap();
            let ark_sev = SevCertificate::from(ark.cert.clone());
            (&ark_sev, &ark_sev).verify().unwrap();
            assert_eq!(
                common_name(&ark.cert.tbs_certificate.subject).unwrap(),
                format!("ARK-{}", product.amd_name())
            );
            for (pem, cn) in [
                (roots.ask, format!("SEV-{}", product.amd_name())),
                (roots.asvk, format!("SEV-VLEK-{}", product.amd_name())),
            ] {
                let cert = pinned(pem).unwrap();
                (&ark_sev, &SevCertificate::from(cert.cert.clone()))
                    .verify()
                    .unwrap();
                assert_eq!(common_name(&cert.cert.tbs_certificate.subject).unwrap(), cn);
                assert_eq!(
                    cert.cert.tbs_certificate.issuer,
                    ark.cert.tbs_certificate.subject
                );
            }
        }
    }

    #[test]
    fn pinned_roots_match_the_sev_crates_builtins() {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let builtin = [
            (Product::Milan, milan::ARK, milan::ASK),
            (Product::Genoa, genoa::ARK, genoa::ASK),
            (Product::Turin, turin::ARK, turin::ASK),
        ];
        for (product, ark, ask) in builtin {
            let der = |pem: &[u8]| Certificate::from_pem(pem).unwrap().to_der().unwrap();
            assert_eq!(
                pinned(product.roots().ark).unwrap().der,
                der(ark),
                "{product} ARK"
            );
            assert_eq!(
                pinned(product.roots().ask).unwrap().der,
                der(ask),
                "{product} ASK"
            );
        }
    }
}
