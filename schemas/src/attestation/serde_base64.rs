//! Serde for bytes as standard, padded base64 strings, as evidence carries them:
//! `#[serde(with = "crate::attestation::serde_base64")]` for `Vec<u8>`, and
//! [`option`] for `Option<Vec<u8>>`.

use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

use crate::job::{decode_base64, encode_base64};

/// Writes the bytes as base64.
pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode_base64(bytes))
}

/// Reads base64 into bytes.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    decode_base64(&text).map_err(D::Error::custom)
}

/// The same for optional bytes: `None` is written as null (and is usually skipped).
pub(crate) mod option {
    use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

    use crate::job::{decode_base64, encode_base64};

    /// Writes the bytes as base64, or null.
    pub(crate) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&encode_base64(bytes)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads base64 or null.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => decode_base64(&text).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}
