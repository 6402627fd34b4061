//! The attestation platform of a worker: what, if anything, vouches for its key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::PlatformRequirement;

/// The platform whose evidence binds a worker's key. Written `software`, `tpm` or `snp` (its
/// [`as_str`](Platform::as_str)) in metrics labels, routing keys, registry entries and
/// execution statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// No hardware root: a self-reported measurement.
    Software,
    /// A TPM 2.0 quote.
    Tpm,
    /// An AMD SEV-SNP report.
    Snp,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 3] = [Platform::Software, Platform::Tpm, Platform::Snp];

    /// `software`, `tpm` or `snp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Software => "software",
            Platform::Tpm => "tpm",
            Platform::Snp => "snp",
        }
    }

    /// Whether a hardware root of trust vouches for the worker key (TPM or SEV-SNP).
    pub fn is_hardware(self) -> bool {
        self != Platform::Software
    }

    /// Whether a worker on this platform can run a job that requires `requirement`: `any` is
    /// satisfied by every platform, `any-hardware` by TPM and SEV-SNP, `tpm` and `snp` by
    /// themselves.
    pub fn satisfies(self, requirement: PlatformRequirement) -> bool {
        match requirement {
            PlatformRequirement::Any => true,
            PlatformRequirement::Tpm => self == Platform::Tpm,
            PlatformRequirement::Snp => self == Platform::Snp,
            PlatformRequirement::AnyHardware => self.is_hardware(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the written form, so that `platform == "tpm"` reads as it did when platforms
/// were strings.
impl PartialEq<&str> for Platform {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_forms_are_the_serde_names() {
        for platform in Platform::ALL {
            assert_eq!(
                serde_json::to_value(platform).unwrap(),
                serde_json::Value::from(platform.as_str())
            );
            assert_eq!(platform.to_string(), platform.as_str());
            assert_eq!(platform, platform.as_str());
        }
        assert_eq!(
            ["software", "tpm", "snp"],
            Platform::ALL.map(Platform::as_str)
        );
    }

    #[test]
    fn requirements_are_satisfied_by_the_platforms_they_name() {
        use PlatformRequirement::{Any, AnyHardware, Snp, Tpm};
        let satisfied = |platform: Platform| {
            [Any, Tpm, Snp, AnyHardware]
                .into_iter()
                .filter(|requirement| platform.satisfies(*requirement))
                .collect::<Vec<_>>()
        };
        assert_eq!(satisfied(Platform::Software), [Any]);
        assert_eq!(satisfied(Platform::Tpm), [Any, Tpm, AnyHardware]);
        assert_eq!(satisfied(Platform::Snp), [Any, Snp, AnyHardware]);
    }
}
