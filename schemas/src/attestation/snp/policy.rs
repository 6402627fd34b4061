//! What an SNP verifier accepts, and the checks on a report's fields against it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::check;
use super::product::Product;
use super::report::{SnpReportClaims, SnpTcb, POLICY_DEBUG_BIT, POLICY_MIGRATE_MA_BIT};
use crate::attestation::Check;

/// What an SNP verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accepted launch measurements, hex of the 48 bytes (case-insensitive). Empty: none.
    pub allowed_measurements: Vec<String>,
    /// The VMPL the report must come from.
    pub vmpl: u32,
    /// Whether a guest whose policy allows debugging (and so whose memory the host can read) is
    /// acceptable.
    pub allow_debug: bool,
    /// Whether a guest whose policy allows a migration agent (which can export the guest's
    /// memory to another machine) is acceptable.
    pub allow_migration_agent: bool,
    /// Lowest accepted report version.
    pub min_report_version: u32,
    /// Lowest accepted reported TCB, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<SnpTcb>,
    /// Accepted products.
    pub products: Vec<Product>,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy {
            allowed_measurements: Vec::new(),
            vmpl: 0,
            allow_debug: false,
            allow_migration_agent: false,
            min_report_version: 2,
            min_tcb: None,
            products: Product::ALL.to_vec(),
        }
    }
}

/// The policy checks on a report's fields: `snp.debug`, `snp.vmpl`, `snp.report_data`,
/// `snp.measurement` and `snp.min_tcb`, in that order. [`verify`](super::verify) ends with these; they are
/// public so that fields no fixture has (a debug policy, say) can be tested directly.
pub fn check_policy(
    claims: &SnpReportClaims,
    expected_report_data: &[u8; 64],
    policy: &SnpPolicy,
) -> Vec<Check> {
    let mut checks = Vec::with_capacity(5);

    // Nothing but the guest reads its memory: neither a debugger nor a migration agent.
    let debug = claims.debug_allowed() && !policy.allow_debug;
    let migration = claims.migration_agent_allowed() && !policy.allow_migration_agent;
    checks.push(Check::from_bool(check::DEBUG, !debug && !migration, || {
        if debug {
            format!(
                "guest policy {:#x} allows debugging (bit {POLICY_DEBUG_BIT}), so the host can \
                 read the guest's memory, and the policy does not allow that",
                claims.guest_policy
            )
        } else {
            format!(
                "guest policy {:#x} allows a migration agent (bit {POLICY_MIGRATE_MA_BIT}), which \
                 can export the guest's memory, and the policy does not allow that",
                claims.guest_policy
            )
        }
    }));

    checks.push(Check::from_bool(
        check::VMPL,
        claims.vmpl == policy.vmpl,
        || {
            format!(
                "the report is from VMPL {}, the policy requires VMPL {}",
                claims.vmpl, policy.vmpl
            )
        },
    ));

    checks.push(Check::from_bool(
        check::REPORT_DATA,
        claims.report_data == *expected_report_data,
        || {
            format!(
                "report_data is {}, expected {}",
                hex::encode(claims.report_data),
                hex::encode(expected_report_data)
            )
        },
    ));

    let measurement = claims.measurement_hex();
    checks.push(if policy.allowed_measurements.is_empty() {
        Check::fail(
            check::MEASUREMENT,
            format!("measurement {measurement}: the policy allows no measurement"),
        )
    } else {
        Check::from_bool(
            check::MEASUREMENT,
            policy
                .allowed_measurements
                .iter()
                .any(|allowed| allowed.trim().eq_ignore_ascii_case(&measurement)),
            || format!("measurement {measurement} is not in the policy's allow-list"),
        )
    });

    checks.push(match &policy.min_tcb {
        None => Check::skipped(check::MIN_TCB, "the policy sets no minimum TCB"),
        Some(min) => Check::from_bool(check::MIN_TCB, claims.reported_tcb.at_least(min), || {
            format!(
                "reported TCB ({}) is below the policy's minimum ({min})",
                claims.reported_tcb
            )
        }),
    });

    checks
}
