//! Secrets: the messages of the secret keeper (`dtee-keeper`) and the sealing they use
//! (PROTOCOL.md §12).
//!
//! A tenant's secret is stored by the keeper, encrypted at rest, and released only to a worker
//! whose evidence passes the tenant's release policy, sealed with HPKE (RFC 9180) to a key that
//! the worker's evidence-bound signing key vouches for. Values travel sealed in both
//! directions, so RabbitMQ never sees them:
//!
//! - to the keeper (`put`): sealed to the keeper's public key, with [`PUT_INFO`] and the
//!   `<tenant>/<name>` as associated data;
//! - to a worker (`release`): sealed to the worker's HPKE key, with [`RELEASE_INFO`] and
//!   [`release_aad`] (job, tenant, secret, version, worker key) as associated data, so an answer
//!   sealed to another key, or replayed for another job, does not open;
//! - to the owner (`get`): sealed to a key the owner sends, with [`GET_INFO`].
//!
//! The suite is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (RFC 9180 ids
//! 0x0020, 0x0001, 0x0003), base mode.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::attestation::evidence::WorkerIdentity;
use crate::digest::Digest;
use crate::job::{decode_base64, encode_base64};

/// `info` of a value sealed to the keeper by its owner (`put`).
pub const PUT_INFO: &[u8] = b"dtee.keeper.put.v1";
/// `info` of a value sealed to its owner (`get`).
pub const GET_INFO: &[u8] = b"dtee.keeper.get.v1";
/// `info` of a value released to a worker.
pub const RELEASE_INFO: &[u8] = b"dtee.secret-release.v1";
/// Domain separator of a worker's signature over its release claims.
pub const RELEASE_REQUEST_DOMAIN: &[u8] = b"dtee.secret-release-request.v1\0";
/// The message `type` of keeper requests.
pub const REQUEST_TYPE: &str = "dtee.keeper.request/v1";
/// The largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// How far a release request's time may be from the keeper's clock.
pub const RELEASE_CLOCK_SKEW_MS: u64 = 120_000;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A key is not 32 bytes of hex, or not a valid X25519 key.
    #[error("not a valid X25519 public key")]
    BadKey,
    /// The sealed value is not base64, or does not open with this key, info and aad.
    #[error("the sealed value does not open with this key for this purpose")]
    Open,
}

/// A value sealed with HPKE: the encapsulated key and the ciphertext, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// The encapsulated key (32 bytes).
    pub enc: String,
    /// The ciphertext with its 16-byte tag.
    pub ct: String,
}

/// An HPKE key pair (X25519).
pub struct HpkeKeyPair {
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HpkeKeyPair({})", self.public_hex())
    }
}

impl HpkeKeyPair {
    /// A new random key pair.
    pub fn generate() -> HpkeKeyPair {
        let (private, public) = X25519HkdfSha256::gen_keypair(&mut rand::rng());
        HpkeKeyPair::from_parts(private, &public)
    }

    /// The key pair derived from input keying material (RFC 9180 DeriveKeyPair): the same
    /// material always gives the same pair.
    pub fn derive(ikm: &[u8]) -> HpkeKeyPair {
        let (private, public) = X25519HkdfSha256::derive_keypair(ikm);
        HpkeKeyPair::from_parts(private, &public)
    }

    fn from_parts(
        private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
        public: &<X25519HkdfSha256 as hpke::Kem>::PublicKey,
    ) -> HpkeKeyPair {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        HpkeKeyPair {
            private,
            public: bytes,
        }
    }

    /// The public key, 32 bytes.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as 64 lowercase hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }

    /// Opens a value sealed to this key with `info` and `aad`.
    pub fn open(
        &self,
        sealed: &Sealed,
        info: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let enc = decode_base64(&sealed.enc).map_err(|_| SealError::Open)?;
        let ct = decode_base64(&sealed.ct).map_err(|_| SealError::Open)?;
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&enc)
            .map_err(|_| SealError::Open)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &enc,
            info,
            &ct,
            aad,
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Open)
    }
}

/// Parses a public key written as 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], SealError> {
    let bytes = hex::decode(text).map_err(|_| SealError::BadKey)?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
    <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&key).map_err(|_| SealError::BadKey)?;
    // Any 32 bytes decode as a point, but sealing to a low-order one (all zeros, say) fails:
    // HPKE refuses the all-zero shared secret. Seal once here, so that a key accepted is a key
    // that can be sealed to.
    seal(&key, b"dtee key check", b"", b"")?;
    Ok(key)
}

/// Seals `plaintext` to `recipient` with `info` and `aad`.
pub fn seal(
    recipient: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    let key = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| SealError::BadKey)?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &key,
        info,
        plaintext,
        aad,
        &mut rand::rng(),
    )
    .map_err(|_| SealError::BadKey)?;
    Ok(Sealed {
        enc: encode_base64(&enc.to_bytes()),
        ct: encode_base64(&ct),
    })
}

/// Whether `name` can name a secret: 1 to 128 of `A-Z a-z 0-9 _ . -`, not starting with `.`.
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The associated data of a value sealed to its owner by `put` or `get`.
pub fn owner_aad(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}/{name}").into_bytes()
}

/// A secret and the version a job uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretVersion {
    /// The secret's name, in the tenant's namespace.
    pub name: String,
    /// Its version, from 1.
    pub version: u64,
}

/// What a worker asks the keeper to release, signed with its identity's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseClaims {
    /// The tenant of the job (the delivery's `user_id`), which must own the secrets.
    pub tenant: String,
    /// The job that uses them.
    pub job_id: Digest,
    /// The secrets and versions.
    pub secrets: Vec<SecretVersion>,
    /// The worker's HPKE public key (64 hex digits) to seal them to.
    pub worker_hpke_key: String,
    /// When the worker made the request (its clock, Unix milliseconds).
    pub issued_at_unix_ms: u64,
}

impl ReleaseClaims {
    /// The bytes the worker signs: [`RELEASE_REQUEST_DOMAIN`] and the claims' canonical JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("claims serialize");
        let mut bytes = RELEASE_REQUEST_DOMAIN.to_vec();
        bytes.extend(crate::canonical::to_canonical_vec(&value).expect("claims are canonical"));
        bytes
    }
}

/// The associated data of a secret released to a worker: the canonical JSON of the job, tenant,
/// secret, version and worker key it is for.
pub fn release_aad(claims: &ReleaseClaims, secret: &SecretVersion) -> Vec<u8> {
    let value = serde_json::json!({
        "job_id": claims.job_id,
        "tenant": claims.tenant,
        "name": secret.name,
        "version": secret.version,
        "worker_hpke_key": claims.worker_hpke_key,
    });
    crate::canonical::to_canonical_vec(&value).expect("canonical")
}

/// A request to the keeper. The tenant is the message's AMQP `user_id`, which RabbitMQ checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeeperRequest {
    /// Store a new version of a secret (sealed to the keeper's key, [`PUT_INFO`]).
    Put {
        /// The secret's name.
        name: String,
        /// The value, sealed.
        value: Sealed,
    },
    /// List the tenant's secrets: names, versions and times, no values.
    List,
    /// Read a value back, sealed to `reply_key` ([`GET_INFO`]); the operator may disable it.
    Get {
        /// The secret's name.
        name: String,
        /// The version; the latest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        /// The X25519 public key (hex) to seal the value to.
        reply_key: String,
    },
    /// Delete one version, or every version when `version` is absent.
    Delete {
        /// The secret's name.
        name: String,
        /// The version; all when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Set the tenant's release policy (the TOML that `dtee verify --policy` reads).
    SetPolicy {
        /// The policy file's text.
        policy: String,
    },
    /// A worker asks for secrets for a job.
    Release {
        /// What it asks for.
        claims: ReleaseClaims,
        /// The worker's identity and evidence, which the tenant's policy must accept.
        identity: WorkerIdentity,
        /// Ed25519 signature (base64) by the identity's key over [`ReleaseClaims::signed_bytes`].
        signature: String,
    },
}

impl KeeperRequest {
    /// The operation, as its `op` is written.
    pub fn op(&self) -> &'static str {
        match self {
            KeeperRequest::Put { .. } => "put",
            KeeperRequest::List => "list",
            KeeperRequest::Get { .. } => "get",
            KeeperRequest::Delete { .. } => "delete",
            KeeperRequest::SetPolicy { .. } => "set_policy",
            KeeperRequest::Release { .. } => "release",
        }
    }
}

/// Versions of a secret, without values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// One version of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was stored, Unix milliseconds.
    pub created_at_unix_ms: u64,
}

/// A released secret, sealed to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Released {
    /// The secret and version.
    #[serde(flatten)]
    pub secret: SecretVersion,
    /// The value, sealed with [`RELEASE_INFO`] and [`release_aad`].
    pub value: Sealed,
}

/// Why the keeper refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeeperErrorCode {
    /// The request is malformed, or names something invalid.
    InvalidRequest,
    /// No such secret or version for this tenant.
    SecretNotFound,
    /// The worker's evidence does not pass the tenant's policy (or there is none), its
    /// signature or time is wrong, or the request does not come from the secret's tenant.
    SecretReleaseDenied,
    /// The operator disabled `get`.
    GetDisabled,
    /// The keeper could not reach its store; retry.
    Unavailable,
}

/// The keeper's answer. Exactly one of `error` and the operation's fields is present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeeperReply {
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<KeeperError>,
    /// `put`: the version stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `list`: the tenant's secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretInfo>>,
    /// `get`: the value, sealed to the request's `reply_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Sealed>,
    /// `delete`: how many versions were deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// `release`: the secrets, sealed to the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Vec<Released>>,
}

/// A refusal: a code to branch on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct KeeperError {
    /// What went wrong.
    pub code: KeeperErrorCode,
    /// Why, for people.
    pub message: String,
}

impl KeeperReply {
    /// A refusal.
    pub fn refuse(code: KeeperErrorCode, message: impl Into<String>) -> KeeperReply {
        KeeperReply {
            error: Some(KeeperError {
                code,
                message: message.into(),
            }),
            ..KeeperReply::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_info_and_aad() {
        let worker = HpkeKeyPair::generate();
        let other = HpkeKeyPair::generate();
        let sealed = seal(&worker.public(), RELEASE_INFO, b"job a", b"s3cret").unwrap();
        assert_eq!(
            &worker.open(&sealed, RELEASE_INFO, b"job a").unwrap()[..],
            b"s3cret"
        );
        assert_eq!(
            other.open(&sealed, RELEASE_INFO, b"job a"),
            Err(SealError::Open)
        );
        assert_eq!(
            worker.open(&sealed, RELEASE_INFO, b"job b"),
            Err(SealError::Open),
            "replayed for another job"
        );
        assert_eq!(
            worker.open(&sealed, PUT_INFO, b"job a"),
            Err(SealError::Open)
        );
    }

    #[test]
    fn a_low_order_key_is_refused_when_parsed_not_when_sealed_to() {
        // Points of small order (all zeros, one, and the order-8 point that clamping keeps):
        // sealing to them fails, so they are not keys.
        let low_order = [
            "00".repeat(32),
            format!("01{}", "00".repeat(31)),
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800".to_owned(),
        ];
        for text in low_order {
            let key: [u8; 32] = hex::decode(&text).unwrap().try_into().unwrap();
            assert!(seal(&key, RELEASE_INFO, b"", b"x").is_err(), "{text}");
            assert_eq!(parse_public_key(&text), Err(SealError::BadKey), "{text}");
        }
        let good = hex::encode(HpkeKeyPair::generate().public());
        assert!(parse_public_key(&good).is_ok());
    }

    #[test]
    fn derived_keys_are_stable_and_names_are_checked() {
        assert_eq!(
            HpkeKeyPair::derive(&[7; 32]).public(),
            HpkeKeyPair::derive(&[7; 32]).public()
        );
        assert_ne!(
            HpkeKeyPair::derive(&[7; 32]).public(),
            HpkeKeyPair::derive(&[8; 32]).public()
        );
        assert!(parse_public_key(&HpkeKeyPair::generate().public_hex()).is_ok());
        assert!(parse_public_key("00").is_err());
        for good in ["db-password", "a", "API_KEY.v2"] {
            assert!(is_valid_secret_name(good), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
            assert!(!is_valid_secret_name(bad), "{bad}");
        }
    }
}
