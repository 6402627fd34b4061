//! A job's buffers once validated ([`CheckedBuffer`]): inputs decoded or named by digest,
//! state keys parsed, secrets split into owner and name, so that nothing downstream parses or
//! checks them again.

use std::sync::Arc;

use super::validate::{invalid, ValidationError};
use super::AccessMode;
use crate::digest::Digest;
use crate::state::StateKey;

/// Where an input's bytes come from, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Bytes carried in the job (`inline`, decoded).
    Inline(Arc<[u8]>),
    /// A stored blob, by digest (`blob`).
    Blob(Digest),
}

/// A buffer after validation: everything the spec encodes is decoded and parsed once, so that
/// nothing downstream checks it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedBuffer {
    /// An input, with its bytes or the digest of its blob.
    Input {
        /// Buffer name.
        name: String,
        /// Where the bytes are.
        source: InputSource,
    },
    /// An output of at most `size` bytes (at least 1).
    Output {
        /// Buffer name.
        name: String,
        /// Capacity in bytes.
        size: u64,
    },
    /// Bound state, with its key parsed.
    State {
        /// Buffer name.
        name: String,
        /// The parsed key.
        key: StateKey,
        /// How the kernel may use it.
        mode: AccessMode,
        /// Whether the key may be absent.
        may_be_absent: bool,
        /// Largest value the kernel may write (at least 1), if the job caps it.
        max_size: Option<u64>,
    },
    /// A secret, read-only to the kernel.
    Secret {
        /// Buffer name.
        name: String,
        /// The tenant that owns the secret (the job's tenant, or the job is refused).
        tenant: String,
        /// The secret and version.
        secret: crate::secrets::SecretVersion,
    },
}

impl CheckedBuffer {
    /// The buffer's name.
    pub fn name(&self) -> &str {
        match self {
            CheckedBuffer::Input { name, .. }
            | CheckedBuffer::Output { name, .. }
            | CheckedBuffer::State { name, .. }
            | CheckedBuffer::Secret { name, .. } => name,
        }
    }
}

/// A `secret` buffer's reference, `<tenant>/<name>` and its version.
pub(super) fn check_secret(
    name: &str,
    secret: &str,
    version: u64,
    field: impl Fn(&str) -> String,
) -> Result<CheckedBuffer, ValidationError> {
    let (tenant, secret_name) = secret
        .split_once('/')
        .filter(|(tenant, secret_name)| {
            crate::state::is_valid_tenant(tenant)
                && crate::secrets::is_valid_secret_name(secret_name)
        })
        .ok_or_else(|| {
            invalid(
                field("secret"),
                format!("{secret:?} is not <tenant>/<secret name> (1 to 128 of A-Z a-z 0-9 _ . -)"),
            )
        })?;
    if version == 0 {
        return Err(invalid(field("version"), "must be at least 1"));
    }
    Ok(CheckedBuffer::Secret {
        name: name.to_owned(),
        tenant: tenant.to_owned(),
        secret: crate::secrets::SecretVersion {
            name: secret_name.to_owned(),
            version,
        },
    })
}
