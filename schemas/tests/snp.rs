//! SEV-SNP verification against real reports and AMD certificates (`shared/fixtures/snp`, see its
//! SOURCES.md). The fixtures were not made by dtee, so the expected report data is each report's
//! own; what the tests pin is the time (certificates expire) and what each tampering breaks.
//!
//! Fixtures are found at `$DTEE_SHARED_DIR/fixtures/snp` if that variable is set, else at
//! `CARGO_MANIFEST_DIR/../../shared/fixtures/snp`, which is right when `shared/` sits beside the
//! checkout (as `/work/main` and `/work/shared` do here, and as in CI).

use std::path::PathBuf;

use dtee_schemas::attestation::snp::{
    self, check, parse_report, Product, SnpEvidence, SnpPolicy, SnpReportClaims, SnpTcb,
    CHECK_NAMES,
};
use dtee_schemas::attestation::{Check, Outcome};

/// 2025-01-01T00:00:00Z: within both Milan VCEKs' validity (2023 to 2030) and the Turin one's.
const NOW: i64 = 1_735_689_600;
/// 2031-01-01T00:00:00Z: after both Milan VCEKs expired.
const AFTER_EXPIRY: i64 = 1_924_992_000;
/// 2022-01-01T00:00:00Z: before both Milan VCEKs were issued (the ARK and ASK are from 2020).
const BEFORE_ISSUE: i64 = 1_640_995_200;

fn fixtures() -> PathBuf {
    let shared = match std::env::var_os("DTEE_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let dir = shared.join("fixtures/snp");
    assert!(
        dir.is_dir(),
        "SNP fixtures not found at {}: put shared/ beside the checkout or set DTEE_SHARED_DIR",
        dir.display()
    );
    dir
}

fn read(path: &str) -> Vec<u8> {
    let path = fixtures().join(path);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The PEM certificates in a file, as DER.
fn pem_certs(path: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8(read(path)).unwrap();
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            dtee_schemas::job::decode_base64(&body).unwrap()
        })
        .collect()
}

/// The two real Milan reports with their VCEKs.
#[derive(Clone, Copy, Debug)]
enum Fixture {
    Virtee,
    Trustee,
}

const FIXTURES: [Fixture; 2] = [Fixture::Virtee, Fixture::Trustee];

impl Fixture {
    fn report(self) -> Vec<u8> {
        match self {
            Fixture::Virtee => {
                let text = String::from_utf8(read("virtee-sev/report_milan.hex")).unwrap();
                hex::decode(text.trim()).unwrap()
            }
            Fixture::Trustee => read("trustee/test-report.bin"),
        }
    }

    fn vcek(self) -> Vec<u8> {
        match self {
            Fixture::Virtee => read("virtee-sev/vcek_milan.der"),
            Fixture::Trustee => read("trustee/test-vcek.der"),
        }
    }

    fn other(self) -> Fixture {
        match self {
            Fixture::Virtee => Fixture::Trustee,
            Fixture::Trustee => Fixture::Virtee,
        }
    }

    fn evidence(self) -> SnpEvidence {
        SnpEvidence {
            report: self.report(),
            vcek_der: self.vcek(),
            ask_der: None,
            ark_der: None,
        }
    }

    fn claims(self) -> SnpReportClaims {
        parse_report(&self.report()).unwrap()
    }

    /// A policy that accepts this report: its measurement, VMPL 0, the defaults otherwise.
    fn policy(self) -> SnpPolicy {
        SnpPolicy {
            allowed_measurements: vec![self.claims().measurement_hex()],
            ..SnpPolicy::default()
        }
    }

    fn report_data(self) -> [u8; 64] {
        self.claims().report_data
    }
}

fn failed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.name.as_str())
        .collect()
}

fn outcome<'a>(checks: &'a [Check], name: &str) -> &'a Outcome {
    &checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
        .outcome
}

/// Runs `verify` and checks the shape every result has: every name once, in order.
fn verify(evidence: &SnpEvidence, expected: &[u8; 64], policy: &SnpPolicy, now: i64) -> Vec<Check> {
    let checks = snp::verify(evidence, expected, policy, now);
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, CHECK_NAMES.to_vec());
    checks
}

/// Asserts that exactly the `expected` checks failed, printing all of them otherwise.
#[track_caller]
fn assert_failed(checks: &[Check], expected: &[&str]) {
    assert_eq!(failed(checks), expected.to_vec(), "checks: {checks:#?}");
}

#[test]
fn real_milan_reports_are_accepted() {
    for fixture in FIXTURES {
        let checks = verify(
            &fixture.evidence(),
            &fixture.report_data(),
            &fixture.policy(),
            NOW,
        );
        assert_failed(&checks, &[]);
        // Every check passes, but for the TCB minimum, which this policy does not set.
        for c in &checks {
            if c.name == check::MIN_TCB {
                assert!(matches!(c.outcome, Outcome::Skipped(_)), "{fixture:?}");
            } else {
                assert_eq!(c.outcome, Outcome::Pass, "{fixture:?} {}", c.name);
            }
        }
    }
}

#[test]
fn fixtures_are_what_sources_md_says() {
    for fixture in FIXTURES {
        let claims = fixture.claims();
        assert_eq!(claims.version, 2);
        assert_eq!(claims.vmpl, 0);
        assert!(!claims.debug_allowed());
        assert_eq!(claims.cpuid_family, None);
        assert_eq!(
            claims.reported_tcb,
            SnpTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 0x73,
                fmc: None
            }
        );
    }
}

#[test]
fn evidence_may_carry_the_pinned_ark_and_ask() {
    let milan = pem_certs("virtee-sev/cert_chain_milan"); // ASK, ARK
    assert_eq!(milan.len(), 2);
    for fixture in FIXTURES {
        let evidence = SnpEvidence {
            ask_der: Some(milan[0].clone()),
            ark_der: Some(milan[1].clone()),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[]);
    }
}

#[test]
fn a_foreign_ark_in_the_evidence_is_rejected() {
    let turin = pem_certs("virtee-sev/cert_chain_turin"); // Turin ARK, ASK
    let genoa = pem_certs("trustee/genoa_ask_ark_asvk.pem"); // Genoa ASK, ARK, ASVK
    let fixture = Fixture::Virtee;
    for ark in [
        turin[0].clone(),
        genoa[1].clone(),
        fixture.vcek(),
        b"garbage".to_vec(),
    ] {
        let evidence = SnpEvidence {
            ark_der: Some(ark),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::ARK_PINNED]);
    }
}

#[test]
fn a_foreign_ask_in_the_evidence_is_rejected() {
    let genoa = pem_certs("trustee/genoa_ask_ark_asvk.pem"); // Genoa ASK, ARK, ASVK
    let milan = pem_certs("trustee/milan_ask_ark_asvk.pem"); // Milan ASK, ARK, ASVK
    let fixture = Fixture::Trustee;
    // Another product's ASK; the Milan ASVK (right ARK, wrong role); not a certificate.
    for ask in [genoa[0].clone(), milan[2].clone(), b"garbage".to_vec()] {
        let evidence = SnpEvidence {
            ask_der: Some(ask),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::ASK_SIGNATURE]);
        assert!(matches!(
            outcome(&checks, check::VCEK_SIGNATURE),
            Outcome::Skipped(_)
        ));
    }
}

#[test]
fn a_different_expected_report_data_is_rejected() {
    for fixture in FIXTURES {
        let mut expected = fixture.report_data();
        expected[0] ^= 1;
        let checks = verify(&fixture.evidence(), &expected, &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_DATA]);
        // dtee's own binding of some key is not what these reports carry.
        let bound = dtee_schemas::attestation::snp_report_data(b"some key");
        let checks = verify(&fixture.evidence(), &bound, &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_DATA]);
    }
}

#[test]
fn a_tampered_report_fails_its_signature() {
    for fixture in FIXTURES {
        let mut evidence = fixture.evidence();
        evidence.report[0x50] ^= 1; // report_data[0]
        let tampered = parse_report(&evidence.report).unwrap().report_data;

        // Expecting the original data: both the signature and the data fail.
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE, check::REPORT_DATA]);
        // Expecting what the tampered report says: only the signature tells.
        let checks = verify(&evidence, &tampered, &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE]);
    }
}

#[test]
fn tampering_anywhere_in_the_signed_bytes_or_the_signature_fails() {
    let fixture = Fixture::Virtee;
    // guest_svn, family_id, host_data, id_key_digest, R, S: the signature check fails; the
    // measurement: and the measurement is no longer the allowed one.
    for offset in [0x04, 0x10, 0xC0, 0xE0, 0x2A0, 0x2E8] {
        let mut evidence = fixture.evidence();
        evidence.report[offset] ^= 0x01;
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE]);
    }
    let mut evidence = fixture.evidence();
    evidence.report[0x90] ^= 0x01;
    let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
    assert_failed(&checks, &[check::REPORT_SIGNATURE, check::MEASUREMENT]);
    // Reserved bytes (signed, and in the signature), the high bytes of R and S: either the parser
    // (which wants reserved bytes zero) or the signature check refuses them.
    for offset in [0x29F, 0x2A0 + 60, 0x2E8 + 71, 0x330, 0x400, 0x49F] {
        let mut evidence = fixture.evidence();
        evidence.report[offset] ^= 0x01;
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        let failed = failed(&checks);
        assert!(
            failed.contains(&check::REPORT_PARSE) || failed == [check::REPORT_SIGNATURE],
            "offset {offset:#x}: {checks:#?}"
        );
    }
}

#[test]
fn a_measurement_not_allowed_is_rejected() {
    for fixture in FIXTURES {
        let other = fixture.other().policy(); // allows the other report's measurement only
        let checks = verify(&fixture.evidence(), &fixture.report_data(), &other, NOW);
        assert_failed(&checks, &[check::MEASUREMENT]);

        let none = SnpPolicy {
            allowed_measurements: vec![],
            ..fixture.policy()
        };
        let checks = verify(&fixture.evidence(), &fixture.report_data(), &none, NOW);
        assert_failed(&checks, &[check::MEASUREMENT]);
    }
    // Hex case does not matter.
    let fixture = Fixture::Virtee;
    let upper = SnpPolicy {
        allowed_measurements: vec![fixture.claims().measurement_hex().to_uppercase()],
        ..SnpPolicy::default()
    };
    let checks = verify(&fixture.evidence(), &fixture.report_data(), &upper, NOW);
    assert_failed(&checks, &[]);
}

#[test]
fn another_chips_vcek_is_rejected() {
    // The other Milan chip's VCEK: same product, chain and TCB; wrong key and chip.
    for fixture in FIXTURES {
        let evidence = SnpEvidence {
            vcek_der: fixture.other().vcek(),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE, check::VCEK_HWID]);
    }
    // A Turin VCEK (valid, chains to the Turin ARK) with a Milan report: the report has the
    // Milan layout, and the key, TCB and 8-byte chip id are not this report's.
    for fixture in FIXTURES {
        let evidence = SnpEvidence {
            vcek_der: read("virtee-sev/vcek_turin.der"),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(
            &checks,
            &[
                check::PRODUCT,
                check::REPORT_SIGNATURE,
                check::VCEK_TCB,
                check::VCEK_HWID,
            ],
        );
        // The Turin chain itself is sound.
        assert_eq!(outcome(&checks, check::VCEK_SIGNATURE), &Outcome::Pass);
    }
}

#[test]
fn certificates_outside_their_validity_are_rejected() {
    for fixture in FIXTURES {
        let checks = verify(
            &fixture.evidence(),
            &fixture.report_data(),
            &fixture.policy(),
            AFTER_EXPIRY,
        );
        assert_failed(&checks, &[check::VCEK_VALIDITY]);
        let checks = verify(
            &fixture.evidence(),
            &fixture.report_data(),
            &fixture.policy(),
            BEFORE_ISSUE,
        );
        assert_failed(&checks, &[check::VCEK_VALIDITY]);
    }
    // Past the ARK's and ASK's notAfter (2045) too.
    let fixture = Fixture::Virtee;
    let year_2046 = 2_398_291_200;
    let checks = verify(
        &fixture.evidence(),
        &fixture.report_data(),
        &fixture.policy(),
        year_2046,
    );
    assert_failed(
        &checks,
        &[
            check::ARK_VALIDITY,
            check::ASK_VALIDITY,
            check::VCEK_VALIDITY,
        ],
    );
}

#[test]
fn the_debug_bit_is_rejected_unless_allowed() {
    for fixture in FIXTURES {
        // Set DEBUG (policy bit 19) in the report: the signature fails too.
        let mut evidence = fixture.evidence();
        evidence.report[0x08 + 2] |= 0x08;
        assert!(parse_report(&evidence.report).unwrap().debug_allowed());
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE, check::DEBUG]);
        let allow = SnpPolicy {
            allow_debug: true,
            ..fixture.policy()
        };
        let checks = verify(&evidence, &fixture.report_data(), &allow, NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE]);
    }

    // The policy check on fields, as a genuine debug guest's report would carry them.
    let fixture = Fixture::Trustee;
    let claims = SnpReportClaims {
        guest_policy: 0x3001f | (1 << 19),
        ..fixture.claims()
    };
    let checks = snp::check_policy(&claims, &fixture.report_data(), &fixture.policy());
    assert_failed(&checks, &[check::DEBUG]);
    let allow = SnpPolicy {
        allow_debug: true,
        ..fixture.policy()
    };
    assert_failed(
        &snp::check_policy(&claims, &fixture.report_data(), &allow),
        &[],
    );

    // A migration agent can export the guest's memory: refused the same way unless allowed.
    let claims = SnpReportClaims {
        guest_policy: 0x3001f | (1 << 18),
        ..fixture.claims()
    };
    assert!(claims.migration_agent_allowed() && !claims.debug_allowed());
    let checks = snp::check_policy(&claims, &fixture.report_data(), &fixture.policy());
    assert_failed(&checks, &[check::DEBUG]);
    let allow = SnpPolicy {
        allow_migration_agent: true,
        ..fixture.policy()
    };
    assert_failed(
        &snp::check_policy(&claims, &fixture.report_data(), &allow),
        &[],
    );
    // In a signed report: the bit fails the check, as the changed bytes fail the signature.
    for fixture in FIXTURES {
        let mut evidence = fixture.evidence();
        evidence.report[0x08 + 2] |= 0x04;
        let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
        assert_failed(&checks, &[check::REPORT_SIGNATURE, check::DEBUG]);
    }
}

#[test]
fn a_wrong_vmpl_is_rejected() {
    for fixture in FIXTURES {
        let vmpl1 = SnpPolicy {
            vmpl: 1,
            ..fixture.policy()
        };
        let checks = verify(&fixture.evidence(), &fixture.report_data(), &vmpl1, NOW);
        assert_failed(&checks, &[check::VMPL]);
    }
    let fixture = Fixture::Virtee;
    let claims = SnpReportClaims {
        vmpl: 2,
        ..fixture.claims()
    };
    let checks = snp::check_policy(&claims, &fixture.report_data(), &fixture.policy());
    assert_failed(&checks, &[check::VMPL]);
}

#[test]
fn report_version_product_and_tcb_minimums() {
    let fixture = Fixture::Virtee;
    let run = |policy: &SnpPolicy| verify(&fixture.evidence(), &fixture.report_data(), policy, NOW);

    let v3 = SnpPolicy {
        min_report_version: 3,
        ..fixture.policy()
    };
    assert_failed(&run(&v3), &[check::REPORT_VERSION]);

    let genoa_only = SnpPolicy {
        products: vec![Product::Genoa, Product::Turin],
        ..fixture.policy()
    };
    assert_failed(&run(&genoa_only), &[check::PRODUCT]);

    let reported = fixture.claims().reported_tcb;
    let equal = SnpPolicy {
        min_tcb: Some(reported),
        ..fixture.policy()
    };
    let checks = run(&equal);
    assert_failed(&checks, &[]);
    assert_eq!(outcome(&checks, check::MIN_TCB), &Outcome::Pass);

    let newer_snp = SnpTcb {
        snp: reported.snp + 1,
        ..reported
    };
    let above = SnpPolicy {
        min_tcb: Some(newer_snp),
        ..fixture.policy()
    };
    assert_failed(&run(&above), &[check::MIN_TCB]);
}

#[test]
fn a_report_claiming_a_vlek_is_checked_against_the_asvk() {
    // Setting KEY_INFO.SIGNING_KEY to 1 (VLEK) sends the chain through the pinned ASVK, which
    // does not sign this VCEK; and the report no longer matches its signature.
    let fixture = Fixture::Virtee;
    let mut evidence = fixture.evidence();
    evidence.report[0x48] |= 1 << 2;
    let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
    assert_failed(&checks, &[check::VCEK_SIGNATURE, check::REPORT_SIGNATURE]);
    assert_eq!(
        outcome(&checks, check::ASK_SIGNATURE),
        &Outcome::Pass,
        "the ARK signs the ASVK"
    );
    assert!(matches!(
        outcome(&checks, check::VCEK_HWID),
        Outcome::Skipped(_)
    ));

    // MASK_CHIP_KEY: an unsigned report.
    let mut evidence = fixture.evidence();
    evidence.report[0x48] |= 1 << 1;
    let checks = verify(&evidence, &fixture.report_data(), &fixture.policy(), NOW);
    assert_failed(&checks, &[check::REPORT_SIGNATURE]);
}

#[test]
fn evidence_travels_as_base64() {
    let fixture = Fixture::Trustee;
    let milan = pem_certs("virtee-sev/cert_chain_milan");
    let evidence = SnpEvidence {
        ark_der: Some(milan[1].clone()),
        ..fixture.evidence()
    };
    let json = serde_json::to_value(&evidence).unwrap();
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ark", "report", "vcek"]);
    assert_eq!(
        object["report"].as_str().unwrap(),
        dtee_schemas::job::encode_base64(&fixture.report())
    );
    let back: SnpEvidence = serde_json::from_value(json).unwrap();
    assert_eq!(back, evidence);

    let bad = serde_json::json!({"report": "not base64!", "vcek": ""});
    assert!(serde_json::from_value::<SnpEvidence>(bad).is_err());

    // A policy file: defaults fill in, unknown fields are refused.
    let policy: SnpPolicy = serde_json::from_value(serde_json::json!({
        "allowed_measurements": ["00"],
        "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    }))
    .unwrap();
    assert_eq!(policy.products, Product::ALL.to_vec());
    assert_eq!(
        (policy.vmpl, policy.allow_debug, policy.min_report_version),
        (0, false, 2)
    );
    assert!(serde_json::from_value::<SnpPolicy>(serde_json::json!({"allow_debg": true})).is_err());
    assert!(
        serde_json::from_value::<SnpPolicy>(serde_json::json!({"products": ["naples"]})).is_err()
    );
}

#[test]
fn garbage_never_panics_and_never_passes() {
    let fixture = Fixture::Virtee;
    let report = fixture.report();
    let vcek = fixture.vcek();
    let policy = fixture.policy();
    let expected = fixture.report_data();

    let mut reports = vec![
        vec![],
        vec![0u8; 1],
        vec![0u8; snp::REPORT_LEN],
        vec![0xFF; snp::REPORT_LEN],
        report[..snp::REPORT_LEN - 1].to_vec(),
        [report.as_slice(), &[0]].concat(),
    ];
    // Versions 0, 1, 3 (CPUID 0), 5, 0xFFFFFFFF.
    for version in [0u32, 1, 3, 5, u32::MAX] {
        let mut bytes = report.clone();
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        reports.push(bytes);
    }
    let vceks = vec![
        vec![],
        b"garbage".to_vec(),
        vec![0x30, 0x82, 0xFF, 0xFF],
        vcek[..vcek.len() / 2].to_vec(),
        pem_certs("virtee-sev/milan_ark.pem").remove(0), // an RSA key, not P-384
    ];
    for report in &reports {
        for vcek_der in [&vcek].into_iter().chain(&vceks) {
            let evidence = SnpEvidence {
                report: report.clone(),
                vcek_der: vcek_der.clone(),
                ask_der: Some(b"junk".to_vec()),
                ark_der: None,
            };
            let checks = verify(&evidence, &expected, &policy, NOW);
            assert!(!failed(&checks).is_empty(), "{checks:#?}");
        }
    }
    for vcek_der in &vceks {
        let evidence = SnpEvidence {
            vcek_der: vcek_der.clone(),
            ..fixture.evidence()
        };
        let checks = verify(&evidence, &expected, &policy, NOW);
        // A version-2 report names no CPUID, so a VCEK that names no product leaves the product
        // unknown; one that does fails its chain.
        let failed = failed(&checks);
        assert!(
            failed.contains(&check::PRODUCT) || failed.contains(&check::VCEK_SIGNATURE),
            "{checks:#?}"
        );
    }

    // Random byte flips in the report and the VCEK (xorshift, fixed seed): no panics, and a flip
    // in the signed bytes or the signature never goes unnoticed.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut evidence = fixture.evidence();
        let offset = (next() % snp::REPORT_LEN as u64) as usize;
        evidence.report[offset] ^= (next() % 255 + 1) as u8;
        let checks = verify(&evidence, &expected, &policy, NOW);
        assert!(
            !failed(&checks).is_empty(),
            "flip at report {offset:#x} passed: {checks:#?}"
        );

        let mut evidence = fixture.evidence();
        let offset = (next() % vcek.len() as u64) as usize;
        evidence.vcek_der[offset] ^= (next() % 255 + 1) as u8;
        let _ = verify(&evidence, &expected, &policy, NOW);
    }
}

#[test]
fn the_evidence_schema_names_base64_strings() {
    let schema = serde_json::to_value(schemars::schema_for!(SnpEvidence)).unwrap();
    let properties = schema["properties"].as_object().unwrap();
    let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["ark", "ask", "report", "vcek"]);
    for name in names {
        assert_eq!(
            properties[name]["contentEncoding"], "base64",
            "{name}: {schema:#}"
        );
    }
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["report", "vcek"]);
}
