//! [`verify`]: every check of SNP evidence, in [`CHECK_NAMES`] order.

use x509_cert::der::Decode as _;
use x509_cert::Certificate;

use super::chain::{check_chain, check_validity};
use super::check::{self, CHECK_NAMES};
use super::evidence::SnpEvidence;
use super::policy::{check_policy, SnpPolicy};
use super::product::Product;
use super::report::{check_report_signature, parse_report, SigningKey, SnpReportClaims};
use super::vcek::{cert_product, check_vcek_hwid, check_vcek_tcb};
use crate::attestation::Check;

/// Verifies SNP evidence: chain, signature, certificate dates and extensions, and `policy`,
/// with `expected_report_data` the 64 bytes the report must carry (for a worker,
/// [`crate::attestation::snp_report_data`] of its key) and `now_unix_secs` the time to check validity at.
/// Returns every check in [`CHECK_NAMES`] order; accept only if none failed.
pub fn verify(
    evidence: &SnpEvidence,
    expected_report_data: &[u8; 64],
    policy: &SnpPolicy,
    now_unix_secs: i64,
) -> Vec<Check> {
    let mut checks = Vec::with_capacity(CHECK_NAMES.len());

    let claims = match parse_report(&evidence.report) {
        Ok(claims) => {
            checks.push(Check::pass(check::REPORT_PARSE));
            claims
        }
        Err(why) => {
            checks.push(Check::fail(
                check::REPORT_PARSE,
                format!("the report does not parse: {why}"),
            ));
            for name in &CHECK_NAMES[1..] {
                checks.push(Check::skipped(*name, "the report did not parse"));
            }
            return checks;
        }
    };

    checks.push(Check::from_bool(
        check::REPORT_VERSION,
        claims.version >= policy.min_report_version,
        || {
            format!(
                "report version {} is below the policy's minimum {}",
                claims.version, policy.min_report_version
            )
        },
    ));

    let vek = Certificate::from_der(&evidence.vcek_der)
        .map_err(|error| format!("the VCEK is not a DER certificate: {error}"));
    let (product, product_check) = identify_product(&claims, vek.as_ref().ok(), policy);
    checks.push(product_check);

    let chain = check_chain(evidence, &claims, product, &vek, &mut checks);

    // The report signature, by the VCEK or VLEK (whether or not that chains: a failed chain is
    // its own check).
    checks.push(match &vek {
        Ok(vek) => check_report_signature(&evidence.report, &claims, vek),
        Err(_) => Check::skipped(check::REPORT_SIGNATURE, "the VCEK did not parse"),
    });

    // Validity periods.
    checks.push(match &chain.ark {
        Some(ark) => check_validity(check::ARK_VALIDITY, "ARK", ark, now_unix_secs),
        None => Check::skipped(check::ARK_VALIDITY, chain.why_no_ark.clone()),
    });
    checks.push(match &chain.ask {
        Some(ask) => check_validity(check::ASK_VALIDITY, chain.ask_label, ask, now_unix_secs),
        None => Check::skipped(check::ASK_VALIDITY, chain.why_no_ask.clone()),
    });
    checks.push(match &vek {
        Ok(vek) => check_validity(check::VCEK_VALIDITY, chain.vek_label, vek, now_unix_secs),
        Err(_) => Check::skipped(check::VCEK_VALIDITY, "the VCEK did not parse"),
    });

    // The VCEK's extensions against the report.
    checks.push(match &vek {
        Ok(vek) => check_vcek_tcb(vek, &claims.reported_tcb),
        Err(_) => Check::skipped(check::VCEK_TCB, "the VCEK did not parse"),
    });
    checks.push(match (&vek, product, claims.signing_key) {
        (_, _, SigningKey::Vlek) => Check::skipped(
            check::VCEK_HWID,
            "a VLEK is not chip-specific and carries no hwID",
        ),
        (Err(_), _, _) => Check::skipped(check::VCEK_HWID, "the VCEK did not parse"),
        (Ok(_), None, _) => Check::skipped(check::VCEK_HWID, "the product is not identified"),
        (Ok(vek), Some(product), _) => check_vcek_hwid(vek, &claims.chip_id, product),
    });

    checks.extend(check_policy(&claims, expected_report_data, policy));
    checks
}

/// Identifies the product from the report's CPUID (versions 3 and later) and the VCEK's
/// productName (or its issuer's name), which must agree, and checks that the report's TCB
/// layout is the product's and that the policy accepts it. Returns the product the chain is
/// checked against: identified, though perhaps rejected.
fn identify_product(
    claims: &SnpReportClaims,
    vek: Option<&Certificate>,
    policy: &SnpPolicy,
) -> (Option<Product>, Check) {
    let fail = |why: String| Check::fail(check::PRODUCT, why);

    let from_cpuid = match (claims.cpuid_family, claims.cpuid_model) {
        (Some(family), Some(model)) => match Product::from_cpuid(family, model) {
            Some(product) => Some(product),
            None => {
                return (
                    None,
                    fail(format!(
                        "CPUID family {family:#x} model {model:#x} is not Milan, Genoa or Turin"
                    )),
                );
            }
        },
        _ => None,
    };
    let from_cert = vek.and_then(cert_product);

    let product = match (from_cpuid, from_cert) {
        (Some(cpuid), Some(cert)) if cpuid != cert => {
            return (
                None,
                fail(format!(
                    "the report's CPUID says {cpuid} but the VCEK is for {cert}"
                )),
            );
        }
        (Some(product), _) | (None, Some(product)) => product,
        (None, None) => {
            return (
                None,
                fail(format!(
                    "unknown product: a version {} report names no CPUID and the VCEK names no \
                     product AMD makes SNP certificates for",
                    claims.version
                )),
            );
        }
    };

    // The sev crate reads TCB fields in the Turin layout exactly when it takes the report to be
    // from a Turin (from CPUID, or for version 2 from an 8-byte chip id); that must be this product.
    let turin_layout = claims.reported_tcb.fmc.is_some();
    if turin_layout != (product == Product::Turin) {
        let layout = if turin_layout { "Turin" } else { "Milan/Genoa" };
        return (
            Some(product),
            fail(format!(
                "the report has the {layout} layout but the VCEK is for {product}"
            )),
        );
    }

    if !policy.products.contains(&product) {
        return (
            Some(product),
            fail(format!("the policy does not accept {product}")),
        );
    }
    (Some(product), Check::pass(check::PRODUCT))
}
