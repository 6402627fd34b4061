//! The AMD EPYC products with SEV-SNP, and AMD's certificates for each, pinned in this crate.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An AMD EPYC product line with SEV-SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    /// 3rd generation EPYC.
    Milan,
    /// 4th generation EPYC.
    Genoa,
    /// 5th generation EPYC.
    Turin,
}

/// AMD's certificates for one product, PEM, pinned in this crate.
#[derive(Debug, Clone, Copy)]
pub struct AmdRoots {
    /// The AMD Root Key, self-signed: the trust anchor.
    pub ark: &'static str,
    /// The AMD SEV Key, signed by the ARK; signs VCEKs.
    pub ask: &'static str,
    /// The AMD SEV VLEK Key, signed by the ARK; signs VLEKs.
    pub asvk: &'static str,
}

impl Product {
    /// Every product, in release order.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The lowercase name used in policies: `milan`, `genoa`, `turin`.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        }
    }

    /// AMD's name, as certificates spell it.
    pub(super) fn amd_name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// The product named by a VCEK's productName (`Milan-B0`, `Genoa`, `Turin`…) or an issuer's
    /// common name (`SEV-Milan`, `SEV-VLEK-Genoa`).
    pub(super) fn from_amd_name(text: &str) -> Option<Product> {
        let text = text.strip_prefix("SEV-").unwrap_or(text);
        let text = text.strip_prefix("VLEK-").unwrap_or(text);
        let base = text.split('-').next().unwrap_or(text);
        Product::ALL
            .into_iter()
            .find(|product| base.eq_ignore_ascii_case(product.amd_name()))
    }

    /// The product of a CPUID family and model, as report versions 3 and later carry them.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }

    /// Bytes of the chip id a VCEK's hwID carries: 64, but 8 from Turin on.
    pub(super) fn hwid_len(self) -> usize {
        match self {
            Product::Turin => 8,
            Product::Milan | Product::Genoa => 64,
        }
    }

    /// AMD's certificates for this product, pinned in this crate.
    pub fn roots(self) -> AmdRoots {
        match self {
            Product::Milan => AmdRoots {
                ark: include_str!("milan_ark.pem"),
                ask: include_str!("milan_ask.pem"),
                asvk: include_str!("milan_asvk.pem"),
            },
            Product::Genoa => AmdRoots {
                ark: include_str!("genoa_ark.pem"),
                ask: include_str!("genoa_ask.pem"),
                asvk: include_str!("genoa_asvk.pem"),
            },
            Product::Turin => AmdRoots {
                ark: include_str!("turin_ark.pem"),
                ask: include_str!("turin_ask.pem"),
                asvk: include_str!("turin_asvk.pem"),
            },
        }
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names() {
        assert_eq!(Product::from_amd_name("Milan-B0"), Some(Product::Milan));
        assert_eq!(Product::from_amd_name("Genoa"), Some(Product::Genoa));
        assert_eq!(Product::from_amd_name("SEV-Turin"), Some(Product::Turin));
        assert_eq!(
            Product::from_amd_name("SEV-VLEK-Genoa"),
            Some(Product::Genoa)
        );
        assert_eq!(Product::from_amd_name("Naples"), None);
        assert_eq!(Product::from_amd_name(""), None);
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }
}
