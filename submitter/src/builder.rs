//! Building a job spec from command-line style arguments, so a user need not write JSON.
//!
//! - input: `NAME=@FILE` (the file's bytes, inline), `NAME=blob:@FILE` (the file stored as a
//!   blob, by digest), `NAME=blob:sha256:...` (a stored blob), `NAME=text:...`,
//!   `NAME=base64:...`, `NAME=hex:...`, `NAME=f32:1,2.5,-3` (little-endian f32s),
//!   `NAME=u32:1,2` (little-endian u32s), `NAME=u64:1,2`;
//! - output: `NAME:SIZE` (bytes; `k`, `m` suffixes allowed);
//! - param: `NAME:TYPE=VALUE` with TYPE one of i32, u32, i64, u64, f32, f64;
//! - state: `NAME=MODE:KEY`, MODE one of read_only, write_only, read_write, append_only, with
//!   a `?` after it when the key may be absent.

use dtee_schemas::job::{encode_base64, ScalarType};
use dtee_schemas::Digest;

/// Where an input's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Bytes sent inline in the job.
    Inline(Vec<u8>),
    /// A file to store as a blob first.
    BlobFile(String),
    /// An already stored blob.
    Blob(Digest),
    /// A file sent inline.
    File(String),
}

/// A parsed `--input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputArg {
    /// Buffer name.
    pub name: String,
    /// The bytes' source.
    pub source: InputSource,
}

fn split<'a>(text: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), String> {
    text.split_once(sep)
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{what} {text:?} is not of the form NAME{sep}..."))
}

fn list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>, String> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            item.trim()
                .parse::<T>()
                .map_err(|_| format!("{item:?} is not a valid {what}"))
        })
        .collect()
}

/// Parses an `--input` argument.
pub fn parse_input(text: &str) -> Result<InputArg, String> {
    let (name, value) = split(text, '=', "input")?;
    let source = if let Some(path) = value.strip_prefix("blob:@") {
        InputSource::BlobFile(path.to_owned())
    } else if let Some(digest) = value.strip_prefix("blob:") {
        InputSource::Blob(
            digest
                .parse()
                .map_err(|e: dtee_schemas::digest::DigestParseError| e.to_string())?,
        )
    } else if let Some(path) = value.strip_prefix('@') {
        InputSource::File(path.to_owned())
    } else if let Some(text) = value.strip_prefix("text:") {
        InputSource::Inline(text.as_bytes().to_vec())
    } else if let Some(b64) = value.strip_prefix("base64:") {
        InputSource::Inline(
            dtee_schemas::job::decode_base64(b64)
                .map_err(|e| format!("input {name}: bad base64: {e}"))?,
        )
    } else if let Some(hex) = value.strip_prefix("hex:") {
        InputSource::Inline(hex::decode(hex).map_err(|e| format!("input {name}: bad hex: {e}"))?)
    } else if let Some(floats) = value.strip_prefix("f32:") {
        InputSource::Inline(
            list::<f32>(floats, "f32")?
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect(),
        )
    } else if let Some(ints) = value.strip_prefix("u32:") {
        InputSource::Inline(
            list::<u32>(ints, "u32")?
                .iter()
                .flat_map(|i| i.to_le_bytes())
                .collect(),
        )
    } else if let Some(ints) = value.strip_prefix("u64:") {
        InputSource::Inline(
            list::<u64>(ints, "u64")?
                .iter()
                .flat_map(|i| i.to_le_bytes())
                .collect(),
        )
    } else {
        return Err(format!(
            "input {name}: {value:?} must start with @, blob:, text:, base64:, hex:, f32:, u32: or u64:"
        ));
    };
    Ok(InputArg {
        name: name.to_owned(),
        source,
    })
}

/// Parses a size such as `4096`, `64k` or `16m`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, factor) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1024),
        Some('m') => (&lower[..lower.len() - 1], 1024 * 1024),
        Some('g') => (&lower[..lower.len() - 1], 1024 * 1024 * 1024),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            format!("{text:?} is not a size (a whole number, optionally with k, m or g)")
        })
}

/// Parses an `--output NAME:SIZE` argument.
pub fn parse_output(text: &str) -> Result<(String, u64), String> {
    let (name, size) = split(text, ':', "output")?;
    Ok((name.to_owned(), parse_size(size)?))
}

/// Parses a `--param NAME:TYPE=VALUE` argument.
pub fn parse_param(text: &str) -> Result<(String, ScalarType, f64), String> {
    let (name, rest) = split(text, ':', "param")?;
    let (ty, value) = rest
        .split_once('=')
        .ok_or_else(|| format!("param {text:?} is not of the form NAME:TYPE=VALUE"))?;
    let ty = match ty {
        "i32" => ScalarType::I32,
        "u32" => ScalarType::U32,
        "i64" => ScalarType::I64,
        "u64" => ScalarType::U64,
        "f32" => ScalarType::F32,
        "f64" => ScalarType::F64,
        other => {
            return Err(format!(
                "param {name}: unknown type {other:?} (i32, u32, i64, u64, f32, f64)"
            ))
        }
    };
    let value: f64 = value
        .parse()
        .map_err(|_| format!("param {name}: {value:?} is not a number"))?;
    Ok((name.to_owned(), ty, value))
}

/// Parses a `--state NAME=MODE:KEY` argument; a `?` after the mode means the key may be
/// absent (`counter=read_write?:alice/hits`).
pub fn parse_state(text: &str) -> Result<dtee_schemas::job::Buffer, String> {
    use dtee_schemas::job::AccessMode;
    let (name, rest) = split(text, '=', "state")?;
    let (mode, key) = rest
        .split_once(':')
        .ok_or_else(|| format!("state {text:?} is not of the form NAME=MODE:KEY"))?;
    let (mode, may_be_absent) = match mode.strip_suffix('?') {
        Some(mode) => (mode, true),
        None => (mode, false),
    };
    let mode = match mode {
        "read_only" => AccessMode::ReadOnly,
        "write_only" => AccessMode::WriteOnly,
        "read_write" => AccessMode::ReadWrite,
        "append_only" => AccessMode::AppendOnly,
        other => {
            return Err(format!(
            "state {name}: unknown mode {other:?} (read_only, write_only, read_write, append_only)"
        ))
        }
    };
    dtee_schemas::state::StateKey::parse(key).map_err(|e| e.to_string())?;
    Ok(state(name, key, mode, may_be_absent))
}

/// A state buffer.
pub fn state(
    name: &str,
    key: &str,
    mode: dtee_schemas::job::AccessMode,
    may_be_absent: bool,
) -> dtee_schemas::job::Buffer {
    dtee_schemas::job::Buffer::State {
        name: name.to_owned(),
        key: key.to_owned(),
        mode,
        may_be_absent,
        max_size: None,
    }
}

/// An inline input buffer.
pub fn inline_input(name: &str, bytes: &[u8]) -> dtee_schemas::job::Buffer {
    dtee_schemas::job::Buffer::Input {
        name: name.to_owned(),
        inline: Some(encode_base64(bytes)),
        blob: None,
    }
}

/// A blob input buffer.
pub fn blob_input(name: &str, digest: Digest) -> dtee_schemas::job::Buffer {
    dtee_schemas::job::Buffer::Input {
        name: name.to_owned(),
        inline: None,
        blob: Some(digest),
    }
}

/// An output buffer.
pub fn output(name: &str, size: u64) -> dtee_schemas::job::Buffer {
    dtee_schemas::job::Buffer::Output {
        name: name.to_owned(),
        size,
    }
}

/// A scalar parameter.
pub fn param(name: &str, ty: ScalarType, value: f64) -> dtee_schemas::job::Param {
    dtee_schemas::job::Param {
        name: name.to_owned(),
        ty,
        value,
    }
}

/// A secret buffer: `tenant`'s secret `secret` at `version`, read by the kernel as `name`.
pub fn secret(name: &str, tenant: &str, secret: &str, version: u64) -> dtee_schemas::job::Buffer {
    dtee_schemas::job::Buffer::Secret {
        name: name.to_owned(),
        secret: format!("{tenant}/{secret}"),
        version,
    }
}

/// Parses `--secret NAME[=VERSION]`.
pub fn parse_secret(text: &str) -> Result<(String, Option<u64>), String> {
    let (name, version) = match text.split_once('=') {
        Some((name, version)) => (
            name,
            Some(
                version
                    .parse::<u64>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| format!("--secret {text}: the version is a number from 1"))?,
            ),
        ),
        None => (text, None),
    };
    if !dtee_schemas::secrets::is_valid_secret_name(name) {
        return Err(format!(
            "--secret {text}: {name:?} is not a secret name (1 to 128 of A-Z a-z 0-9 _ . -)"
        ));
    }
    Ok((name.to_owned(), version))
}

/// A wasm job skeleton for `kernel` and `entry` with no buffers, params or limits.
pub fn wasm_job(kernel: Digest, entry: &str) -> dtee_schemas::JobSpec {
    dtee_schemas::JobSpec {
        schema: dtee_schemas::job::JobSchema::V1,
        kernel: dtee_schemas::job::KernelRef {
            digest: kernel,
            format: dtee_schemas::job::KernelFormat::Wasm,
            entry: entry.to_owned(),
            target: "wasm".to_owned(),
            profile: None,
        },
        buffers: Vec::new(),
        params: Vec::new(),
        launch: None,
        limits: dtee_schemas::job::Limits::default(),
        attestation: None,
        nonce: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_every_form() {
        assert_eq!(
            parse_input("x=text:hi").unwrap().source,
            InputSource::Inline(b"hi".to_vec())
        );
        assert_eq!(
            parse_input("x=hex:00ff").unwrap().source,
            InputSource::Inline(vec![0, 255])
        );
        assert_eq!(
            parse_input("x=f32:1,2").unwrap().source,
            InputSource::Inline([1f32.to_le_bytes(), 2f32.to_le_bytes()].concat())
        );
        assert_eq!(
            parse_input("x=@a.bin").unwrap().source,
            InputSource::File("a.bin".into())
        );
        assert_eq!(
            parse_input("x=blob:@a.bin").unwrap().source,
            InputSource::BlobFile("a.bin".into())
        );
        assert!(parse_input("x=blob:sha256:00").is_err());
        assert!(parse_input("x=raw").is_err());
        assert!(parse_input("=text:a").is_err());
    }

    #[test]
    fn outputs_and_params_parse() {
        assert_eq!(parse_output("out:64k").unwrap(), ("out".into(), 65536));
        assert!(parse_output("out:lots").is_err());
        assert_eq!(
            parse_param("a:f32=2.5").unwrap(),
            ("a".into(), ScalarType::F32, 2.5)
        );
        assert!(parse_param("a:f16=1").is_err());
        assert!(parse_param("a=1").is_err());
        assert!(matches!(
            parse_state("c=read_write?:alice/hits").unwrap(),
            dtee_schemas::job::Buffer::State {
                may_be_absent: true,
                ..
            }
        ));
        assert!(parse_state("c=rw:alice/hits").is_err());
        assert!(parse_state("c=read_only:nohits").is_err());
    }
}
