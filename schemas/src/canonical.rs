//! Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and strict parsing.
//!
//! The job id is `sha256:` + hex of the SHA-256 of the job spec in canonical form, so every
//! client in every language must produce the same bytes. The test vectors in
//! `schemas/vectors/jcs/` pin the behaviour; a client in another language checks itself against
//! them.
//!
//! Two deliberate restrictions, both allowed by RFC 8785 (which requires I-JSON):
//! - an integer (a number written without fraction or exponent) whose magnitude exceeds 2^53 is
//!   refused unless it is written exactly as ECMAScript prints the nearest double. Such an
//!   integer would otherwise be silently changed by canonicalization (`9007199254740993` would
//!   become `9007199254740992`), so the sender almost certainly meant something else; but
//!   canonical output such as `9007199254740994` or `123456789012345680000` (the form of the
//!   doubles 2^53 + 2 and 1.2345678901234568e20) parses back, so canonicalization is idempotent;
//! - duplicate object keys are refused by [`parse_strict`].

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::digest::Digest;

/// Largest integer magnitude that an IEEE 754 double represents exactly (2^53).
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// An integer outside ±2^53.
    #[error("integer {0} is outside ±2^53 and has no exact canonical form")]
    IntegerOutOfRange(String),
    /// A float that is not finite (cannot come from JSON text, but can from a constructed value).
    #[error("number {0} is not finite")]
    NotFinite(String),
}

/// The canonical (RFC 8785) serialization of `value`.
pub fn to_canonical_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// The canonical serialization as a string.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonicalError> {
    Ok(String::from_utf8(to_canonical_vec(value)?).expect("canonical JSON is UTF-8"))
}

/// The digest of the canonical serialization of `value`.
pub fn canonical_digest(value: &Value) -> Result<Digest, CanonicalError> {
    Ok(Digest::of(&to_canonical_vec(value)?))
}

/// The order of RFC 8785 §3.2.3: by UTF-16 code units. The bytes two names share are skipped
/// first (a common UTF-8 prefix, cut back to a character boundary, is a common UTF-16 prefix),
/// so that names with a long common prefix cost a byte comparison each, not re-encoding.
pub fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // The bytes before `common` are the same in both, so a position there is a character
    // boundary in one exactly when it is one in the other (a leading byte gives its
    // character's length).
    let start = (0..=common)
        .rev()
        .find(|at| a.is_char_boundary(*at))
        .unwrap_or(0);
    match (a.get(start..), b.get(start..)) {
        (Some(a), Some(b)) => a.encode_utf16().cmp(b.encode_utf16()),
        _ => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out)?,
        Value::String(string) => write_string(string, out),
        Value::Array(items) => {
            out.push(b'[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3: members sorted by the UTF-16 code units of their names.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| utf16_order(a, b));
            out.push(b'{');
            for (idx, (key, item)) in entries.into_iter().enumerate() {
                if idx > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(number: &Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let as_f64 = if let Some(int) = number.as_u64() {
        let as_f64 = int as f64;
        if int > MAX_SAFE_INTEGER && !is_ecmascript_form(&int.to_string(), as_f64) {
            return Err(CanonicalError::IntegerOutOfRange(int.to_string()));
        }
        as_f64
    } else if let Some(int) = number.as_i64() {
        let as_f64 = int as f64;
        if int.unsigned_abs() > MAX_SAFE_INTEGER && !is_ecmascript_form(&int.to_string(), as_f64) {
            return Err(CanonicalError::IntegerOutOfRange(int.to_string()));
        }
        as_f64
    } else {
        number.as_f64().expect("a JSON number is u64, i64 or f64")
    };
    if !as_f64.is_finite() {
        return Err(CanonicalError::NotFinite(number.to_string()));
    }
    out.extend_from_slice(ecmascript_number(as_f64).as_bytes());
    Ok(())
}

/// RFC 8785 §3.2.2.3: the ECMAScript Number-to-String algorithm, which ryu-js implements, for a
/// finite `value`.
fn ecmascript_number(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned() // Also turns -0 into 0, as ECMAScript does.
    } else {
        ryu_js::Buffer::new().format_finite(value).to_owned()
    }
}

/// Whether the integer `text` is exactly how ECMAScript prints `nearest`, the double nearest to
/// it: then reading it as a double loses nothing the writer expressed.
fn is_ecmascript_form(text: &str, nearest: f64) -> bool {
    nearest.is_finite() && ecmascript_number(nearest) == text
}

/// Refuses integer tokens beyond ±2^53 that are not in ECMAScript form and that do not fit in 64
/// bits. (serde_json turns those into doubles, so [`write_number`] can no longer tell them from
/// a float; integers that fit in 64 bits keep their exact value and are checked there.) `text`
/// must be valid JSON.
fn check_big_integer_tokens(text: &[u8]) -> Result<(), String> {
    let mut idx = 0;
    while idx < text.len() {
        match text[idx] {
            b'"' => {
                // Skip the string; it is valid JSON, so it ends at an unescaped quote.
                idx += 1;
                while text[idx] != b'"' {
                    idx += if text[idx] == b'\\' { 2 } else { 1 };
                }
                idx += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = idx;
                while idx < text.len()
                    && matches!(text[idx], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    idx += 1;
                }
                let token = std::str::from_utf8(&text[start..idx]).expect("ASCII");
                let is_integer = !token.contains(['.', 'e', 'E']);
                // 2^53 has 16 digits; anything that fits in 64 bits is checked by write_number.
                if is_integer
                    && token.trim_start_matches('-').len() > 16
                    && token.parse::<i64>().is_err()
                    && token.parse::<u64>().is_err()
                {
                    let nearest: f64 = token.parse().expect("a JSON integer parses as f64");
                    if !is_ecmascript_form(token, nearest) {
                        return Err(format!(
                            "integer {token} is outside ±2^53 and has no exact canonical form"
                        ));
                    }
                }
            }
            _ => idx += 1,
        }
    }
    Ok(())
}

fn write_string(string: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for ch in string.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Parses JSON text into a value, refusing duplicate object keys (which I-JSON forbids and
/// which different parsers resolve differently), trailing garbage, and integers too large for
/// 64 bits that are not in canonical form (see the module documentation; integers that fit in
/// 64 bits are kept exactly and checked by [`to_canonical_vec`]).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    parse_strict_within(bytes, usize::MAX).map_err(|error| match error {
        StrictError::Json(error) => error,
        StrictError::TooManyValues(_) => unreachable!("no text holds usize::MAX values"),
    })
}

/// Why [`parse_strict_within`] refused a text.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    /// More values than the limit, which is given.
    #[error("the text holds more than {0} JSON values")]
    TooManyValues(usize),
    /// Not JSON, duplicate keys, trailing garbage, or a big integer not in canonical form.
    #[error(transparent)]
    Json(serde_json::Error),
}

/// [`parse_strict`], refusing text of more than `max_values` JSON values (every scalar, array
/// and object counts one) as soon as the parser meets one more: a parsed value takes 32 bytes
/// or more however short its text (`0,` is two bytes), so the count bounds what parsing
/// allocates, not only the text's length.
pub fn parse_strict_within(bytes: &[u8], max_values: usize) -> Result<Value, StrictError> {
    let budget = Budget {
        left: std::cell::Cell::new(max_values),
        exceeded: std::cell::Cell::new(false),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue { budget: &budget }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Err(_) if budget.exceeded.get() => Err(StrictError::TooManyValues(max_values)),
        Err(error) => Err(StrictError::Json(error)),
        Ok(value) => {
            check_big_integer_tokens(bytes)
                .map_err(|error| StrictError::Json(de::Error::custom(error)))?;
            Ok(value)
        }
    }
}

/// How many JSON values `value` holds, counting up to `limit + 1` at most: whether it holds
/// more than `limit` is `count_values(value, limit) > limit`, with the same count as
/// [`parse_strict_within`].
pub fn count_values(value: &Value, limit: usize) -> usize {
    fn walk(value: &Value, count: &mut usize, limit: usize) {
        *count += 1;
        if *count > limit {
            return;
        }
        match value {
            Value::Array(items) => items.iter().for_each(|item| walk(item, count, limit)),
            Value::Object(members) => members.values().for_each(|item| walk(item, count, limit)),
            _ => {}
        }
    }
    let mut count = 0;
    walk(value, &mut count, limit);
    count.min(limit.saturating_add(1))
}

/// How many more values a text may hold, and whether it held more.
struct Budget {
    left: std::cell::Cell<usize>,
    exceeded: std::cell::Cell<bool>,
}

/// One JSON value, strictly, within the budget.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    budget: &'a Budget,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.budget.left.get().checked_sub(1) {
            Some(left) => self.budget.left.set(left),
            None => {
                self.budget.exceeded.set(true);
                return Err(de::Error::custom("too many JSON values"));
            }
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate object key {key:?}"
                )));
            }
            let item = access.next_value_seed(self)?;
            map.insert(key, item);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sort_by_utf16_code_units_not_bytes() {
        // In UTF-8 byte order U+E000 (EE 80 80) sorts before U+1F600 (F0 9F 98 80); in UTF-16
        // code-unit order, which RFC 8785 requires, U+1F600 is the surrogate pair D83D DE00 and
        // so sorts before U+E000.
        let value = json!({"\u{e000}": 1, "\u{1f600}": 2});
        assert_eq!(
            to_canonical_string(&value).unwrap(),
            "{\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn numbers_use_the_ecmascript_form() {
        let cases = [
            (json!(1.0), "1"),
            (json!(-0.0), "0"),
            (json!(1e21), "1e+21"),
            (json!(1e-7), "1e-7"),
            (json!(0.000001), "0.000001"),
            (json!(123456789012345680000.0), "123456789012345680000"),
            (json!(9007199254740992u64), "9007199254740992"),
        ];
        for (value, expected) in cases {
            assert_eq!(to_canonical_string(&value).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn integers_beyond_two_to_the_53_are_refused() {
        assert!(matches!(
            to_canonical_vec(&json!(9007199254740993u64)),
            Err(CanonicalError::IntegerOutOfRange(_))
        ));
        assert!(to_canonical_vec(&json!(-9007199254740993i64)).is_err());
        assert!(to_canonical_vec(&json!(u64::MAX)).is_err());
        // Too large for 64 bits: refused by the parser, which still sees the digits.
        assert!(parse_strict(b"[123456789012345678901]").is_err());
        assert!(parse_strict(b"[-123456789012345678901]").is_err());
    }

    #[test]
    fn integers_beyond_two_to_the_53_in_ecmascript_form_are_kept() {
        for text in [
            "9007199254740994",
            "-9007199254740994",
            "10000000000000000000",
            "18446744073709552000",
            "123456789012345680000",
        ] {
            let value = parse_strict(text.as_bytes()).unwrap();
            assert_eq!(to_canonical_string(&value).unwrap(), text);
        }
    }

    #[test]
    fn canonical_output_parses_back_to_itself() {
        for text in [
            "[1e19, -1e19]",
            "[9007199254740994.0, 9007199254740995.0]",
            "[1.2345678901234568e20, 1e20, 18446744073709551616.0]",
        ] {
            let once = to_canonical_vec(&parse_strict(text.as_bytes()).unwrap()).unwrap();
            let twice = to_canonical_vec(&parse_strict(&once).unwrap()).unwrap();
            assert_eq!(once, twice, "{}", String::from_utf8_lossy(&once));
        }
    }

    #[test]
    fn strict_parse_refuses_duplicate_keys_and_trailing_text() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        assert_eq!(
            parse_strict(br#" {"a":[1,2]} "#).unwrap(),
            json!({"a":[1,2]})
        );
    }
}
