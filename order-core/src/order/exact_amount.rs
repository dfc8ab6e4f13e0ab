//! Money as a JSON number, read and written from its decimal text so that no float is ever
//! involved: `59.99` stays `59.99`. For `#[serde(with = "order_core::order::exact_amount")]`
//! on a `rust_decimal::Decimal` field of your own types; [`NewOrder`](super::NewOrder) and [`Order`](super::Order) use it.
//!
//! ```
//! use rust_decimal::Decimal;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Refund {
//!     #[serde(with = "order_core::order::exact_amount")]
//!     amount: Decimal,
//! }
//!
//! let refund: Refund = serde_json::from_str(r#"{"amount": 12345678901234.56}"#)?;
//! assert_eq!(refund.amount, Decimal::new(1234567890123456, 2));
//! assert_eq!(serde_json::to_string(&refund)?, r#"{"amount":12345678901234.56}"#);
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! It reads JSON text (serde_json's deserializers, `serde_json::Value` included), not other
//! formats. The text comes through serde_json's `RawValue` (feature `raw_value`), not through
//! `arbitrary_precision`: Cargo unifies features, so the latter would change how serde_json
//! parses numbers in every crate of a dependent's build (untagged and internally tagged enums,
//! `flatten`), while `RawValue` changes nothing for anyone else.

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Writes `amount` as a JSON number with its exact digits (`0.10` stays `0.10`).
///
/// # Errors
///
/// Only the serializer's own.
pub fn serialize<S: Serializer>(amount: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    // A `Decimal`'s text is a JSON number: digits, at most one `.`, perhaps a leading `-`.
    RawValue::from_string(amount.to_string())
        .map_err(S::Error::custom)?
        .serialize(serializer)
}

/// Reads a JSON number from its text, exactly: a string, a float's rounding or more than
/// 28 significant digits is an error.
///
/// # Errors
///
/// When the value is not a JSON number, or not one a `Decimal` holds exactly.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    let text = raw.get().trim();
    let kind = match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => None,
        Some(b'"') => Some("string"),
        Some(b't' | b'f') => Some("boolean"),
        Some(b'n') => Some("null"),
        Some(b'[') => Some("sequence"),
        _ => Some("map"),
    };
    if let Some(kind) = kind {
        return Err(D::Error::custom(format!(
            "invalid type: {kind}, expected a JSON number"
        )));
    }
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| D::Error::custom(format!("{text} is not an amount this system can hold exactly (at most 28 significant digits)")))
}
