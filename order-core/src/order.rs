//! The domain: what an order is, what makes one valid, and how its status may change.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The identity of an order: a positive 64-bit integer assigned by the [`Repository`](crate::backend::Repository).
///
/// ```
/// use order_core::OrderId;
///
/// let id: OrderId = "42".parse().unwrap();
/// assert_eq!(id.get(), 42);
/// assert!("0".parse::<OrderId>().is_err());
/// assert!("abc".parse::<OrderId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "An order's id: a positive 64-bit integer, assigned when the order is accepted.",
        examples(1)
    )
)]
#[serde(transparent)]
pub struct OrderId(i64);

impl OrderId {
    /// Wraps a raw id; `None` unless it is positive, as every assigned id is.
    pub fn new(raw: i64) -> Option<Self> {
        (raw > 0).then_some(Self(raw))
    }

    /// The raw integer, as stored and as shown in the API.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a text is not an [`OrderId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order id must be a positive integer no larger than {max}, got {input:?}", max = i64::MAX)]
pub struct ParseOrderIdError {
    /// The text that was offered, cut to 64 characters so an error never echoes a huge input.
    pub input: String,
}

impl FromStr for OrderId {
    type Err = ParseOrderIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<i64>()
            .ok()
            .and_then(OrderId::new)
            .ok_or_else(|| ParseOrderIdError {
                input: s.chars().take(64).collect(),
            })
    }
}

/// Where an order is in its life.
///
/// ```text
///            cancel
///   PENDING ────────► CANCELLED
///    │   ▲
///  start │ retry (handler failed, attempts left)
///    ▼   │
///   PROCESSING ──────► COMPLETED
///        │  └────────► FAILED (attempts used up, or a permanent error)
///        └── start (the lease ran out: another worker takes over)
/// ```
///
/// COMPLETED, FAILED and CANCELLED are terminal: nothing moves an order out of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted and waiting for a worker (also between retries).
    Pending,
    /// A worker holds a lease on it and its handler is running.
    Processing,
    /// The handler succeeded.
    Completed,
    /// The handler failed permanently or ran out of attempts; `last_error` says why.
    Failed,
    /// Cancelled before any worker started it.
    Cancelled,
}

impl OrderStatus {
    /// Every status, in the order of an order's life.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Completed,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
    ];

    /// True for the statuses nothing leaves: COMPLETED, FAILED, CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed | OrderStatus::Failed | OrderStatus::Cancelled
        )
    }

    /// Whether one [`Transition`](crate::backend::Transition) may take an order from this status to
    /// `next`: some [`TransitionKind`] leaves from here and leads there. PROCESSING may become
    /// PROCESSING (a renewal, or a takeover after a lapsed lease); no other status may become
    /// itself.
    ///
    /// ```
    /// use order_core::OrderStatus::{Cancelled, Completed, Pending, Processing};
    ///
    /// assert!(Pending.may_become(Processing));
    /// assert!(Processing.may_become(Pending)); // a retry, or work handed back at shutdown
    /// assert!(Processing.may_become(Processing)); // a takeover
    /// assert!(!Pending.may_become(Completed));
    /// assert!(!Cancelled.may_become(Pending));
    /// ```
    pub fn may_become(self, next: OrderStatus) -> bool {
        TransitionKind::ALL
            .into_iter()
            .any(|kind| kind.target() == next && kind.leaves_from().contains(&self))
    }

    /// Whether an order in this status may be seen in `later` at any later time: `later` is
    /// this status (no step taken) or follows from it by any number of
    /// [`may_become`](OrderStatus::may_become) steps. A client that samples an order's status
    /// misses steps, so this, not `may_become`, is what two samples must satisfy.
    ///
    /// ```
    /// use order_core::OrderStatus::{Cancelled, Completed, Failed, Pending, Processing};
    ///
    /// assert!(Pending.may_reach(Completed));
    /// assert!(Processing.may_reach(Cancelled)); // retried, then cancelled while PENDING
    /// assert!(Completed.may_reach(Completed));
    /// assert!(!Completed.may_reach(Pending));
    /// assert!(!Failed.may_reach(Completed));
    /// ```
    pub fn may_reach(self, later: OrderStatus) -> bool {
        // A walk over five statuses: each is visited at most once.
        let mut reached = vec![self];
        let mut next = 0;
        while let Some(&status) = reached.get(next) {
            if status == later {
                return true;
            }
            for candidate in OrderStatus::ALL {
                if status.may_become(candidate) && !reached.contains(&candidate) {
                    reached.push(candidate);
                }
            }
            next += 1;
        }
        false
    }

    /// The name used in the API and in storage: `PENDING`, `PROCESSING`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Failed => "FAILED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(s.chars().take(64).collect()))
    }
}

/// A text that names no [`OrderStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

/// An order as stored: what was asked for, where it is, and what happened to it.
///
/// Serialises to the API's camelCase JSON; `totalAmount` is an exact JSON number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Order {
    /// Assigned by the repository at insert.
    pub id: OrderId,
    /// Who placed the order.
    pub user_id: String,
    /// What was ordered, in the order given.
    pub item_ids: Vec<String>,
    /// The order's total, exact to the cent.
    #[serde(with = "exact_amount")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::amount))]
    pub total_amount: Decimal,
    /// Where the order is now.
    pub status: OrderStatus,
    /// When it was accepted.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    /// When anything about it last changed.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
    /// When a worker first started it; kept across retries, so that
    /// `processing_end_time - processing_start_time` is the whole time spent getting it done.
    // Serialised as `null` until set, never left out: required, as are the two below.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub processing_start_time: Option<DateTime<Utc>>,
    /// When it reached COMPLETED or FAILED.
    #[serde(serialize_with = "rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub processing_end_time: Option<DateTime<Utc>>,
    /// How many times a worker has started it (1 in a run without failures or crashes).
    pub attempts: u32,
    /// The handler's error from the latest failed attempt, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_error: Option<String>,
}

/// The most items one order may hold.
pub const MAX_ITEMS: usize = 1000;
/// The longest user id or item id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// The largest total an order may have: 10^10.
pub const MAX_TOTAL_AMOUNT: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 0);
/// How many decimal places a total may have: money is in cents.
pub const MAX_AMOUNT_SCALE: u32 = 2;

/// An order as a client asks for it, before validation.
///
/// Deserialises from the API's JSON (`userId`, `itemIds`, `totalAmount`, nothing else);
/// [`NewOrder::validate`] turns it into a [`ValidatedOrder`], the only thing a repository stores.
///
/// ```
/// use order_core::NewOrder;
/// use rust_decimal::Decimal;
///
/// let order = NewOrder {
///     user_id: "user-123".into(),
///     item_ids: vec!["item1".into(), "item2".into()],
///     total_amount: Decimal::new(5999, 2),
/// };
/// let valid = order.validate().unwrap();
/// assert_eq!(valid.total_amount().to_string(), "59.99");
///
/// let err = NewOrder { user_id: String::new(), ..valid.into_inner() }.validate().unwrap_err();
/// assert_eq!(err.field, "userId");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        // The doc comment's Rust example means nothing to an HTTP client.
        description = "An order as a client asks for it: `userId`, `itemIds` and `totalAmount`, \
            nothing else. It is accepted only within the limits given for each field.",
        examples(json!({"userId": "user-123", "itemIds": ["item1", "item2"], "totalAmount": 59.99}))
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct NewOrder {
    /// Who places the order: 1 to 128 characters.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::user_id))]
    pub user_id: String,
    /// What is ordered: 1 to 1000 ids of 1 to 128 characters each.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::item_ids))]
    pub item_ids: Vec<String>,
    /// The total: at least 0, at most 10^10, at most 2 decimal places. In JSON, a number
    /// (never a string), read from its exact text.
    #[serde(with = "exact_amount")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::amount))]
    pub total_amount: Decimal,
}

/// Money as a JSON number, read and written from its decimal text so that no float is ever
/// involved: `59.99` stays `59.99`. For `#[serde(with = "order_core::order::exact_amount")]`
/// on a `rust_decimal::Decimal` field of your own types; [`NewOrder`] and [`Order`] use it.
///
/// ```
/// use rust_decimal::Decimal;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Refund {
///     #[serde(with = "order_core::order::exact_amount")]
///     amount: Decimal,
/// }
///
/// let refund: Refund = serde_json::from_str(r#"{"amount": 12345678901234.56}"#)?;
/// assert_eq!(refund.amount, Decimal::new(1234567890123456, 2));
/// assert_eq!(serde_json::to_string(&refund)?, r#"{"amount":12345678901234.56}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// It reads JSON text (serde_json's deserializers, `serde_json::Value` included), not other
/// formats. The text comes through serde_json's `RawValue` (feature `raw_value`), not through
/// `arbitrary_precision`: Cargo unifies features, so the latter would change how serde_json
/// parses numbers in every crate of a dependent's build (untagged and internally tagged enums,
/// `flatten`), while `RawValue` changes nothing for anyone else.
pub mod exact_amount {
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
}

/// Times written exactly as chrono's own `Serialize` writes them (RFC 3339 in UTC with `Z`,
/// the fraction in 0, 3, 6 or 9 digits, the fewest that keep it exact), with the digits put
/// in place by hand: through `fmt`, the four times of an order were the largest part of
/// serialising it, on every read the API answers.
mod rfc3339 {
    use chrono::{DateTime, Datelike, Timelike, Utc};
    use serde::{Serialize, Serializer};

    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest written here.
    const LONGEST: usize = 30;

    pub(super) fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut text = [0_u8; LONGEST];
        match write(time, &mut text) {
            // Only ASCII digits and separators are written, so the bytes are UTF-8.
            Some(len) => match std::str::from_utf8(text.get(..len).unwrap_or_default()) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => time.serialize(serializer),
            },
            // A year outside 0..=9999 or a leap second: chrono's own form.
            None => time.serialize(serializer),
        }
    }

    pub(super) fn serialize_option<S: Serializer>(
        time: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Writes `time` into `out` and returns its length, or `None` for what only chrono's
    /// general form covers.
    fn write(time: &DateTime<Utc>, out: &mut [u8; LONGEST]) -> Option<usize> {
        let year = u32::try_from(time.year()).ok().filter(|&y| y <= 9999)?;
        let nanos = time.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        let mut at = 0;
        put(out, &mut at, year, 4, b'-')?;
        put(out, &mut at, time.month(), 2, b'-')?;
        put(out, &mut at, time.day(), 2, b'T')?;
        put(out, &mut at, time.hour(), 2, b':')?;
        put(out, &mut at, time.minute(), 2, b':')?;
        if nanos == 0 {
            put(out, &mut at, time.second(), 2, b'Z')?;
        } else {
            put(out, &mut at, time.second(), 2, b'.')?;
            if nanos.is_multiple_of(1_000_000) {
                put(out, &mut at, nanos / 1_000_000, 3, b'Z')?;
            } else if nanos.is_multiple_of(1_000) {
                put(out, &mut at, nanos / 1_000, 6, b'Z')?;
            } else {
                put(out, &mut at, nanos, 9, b'Z')?;
            }
        }
        Some(at)
    }

    /// Writes `value`'s last `width` decimal digits at `at`, zero-padded, then `separator`.
    fn put(out: &mut [u8], at: &mut usize, value: u32, width: usize, separator: u8) -> Option<()> {
        let mut rest = value;
        for byte in out.get_mut(*at..*at + width)?.iter_mut().rev() {
            *byte = *b"0123456789".get(usize::try_from(rest % 10).ok()?)?;
            rest /= 10;
        }
        *out.get_mut(*at + width)? = separator;
        *at += width + 1;
        Some(())
    }

    #[cfg(test)]
    mod tests {
        use chrono::{DateTime, TimeZone, Utc};

        /// `time` as this module writes it, and as chrono does.
        fn both(time: DateTime<Utc>) -> (String, String) {
            #[derive(serde::Serialize)]
            struct Ours(#[serde(serialize_with = "super::serialize")] DateTime<Utc>);
            (
                serde_json::to_string(&Ours(time)).unwrap_or_default(),
                serde_json::to_string(&time).unwrap_or_default(),
            )
        }

        #[test]
        fn times_are_written_as_chrono_writes_them() {
            let base = Utc.with_ymd_and_hms(2026, 12, 3, 9, 5, 7).unwrap();
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut times = vec![
                base,
                Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
                Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
                DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(),
            ];
            for _ in 0..20_000 {
                let seconds = i64::try_from(next() % 8_000_000_000).unwrap() - 1_000_000_000;
                let nanos = match next() % 4 {
                    0 => 0,
                    1 => u32::try_from(next() % 1_000).unwrap() * 1_000_000,
                    2 => u32::try_from(next() % 1_000_000).unwrap() * 1_000,
                    _ => u32::try_from(next() % 1_000_000_000).unwrap(),
                };
                times.push(DateTime::from_timestamp(seconds, nanos).unwrap());
            }
            for time in times {
                let (ours, chrono) = both(time);
                assert_eq!(ours, chrono, "{time:?}");
            }
        }
    }
}

/// The OpenAPI schemas of the fields whose rules derive attributes cannot state (an item id's
/// length, an exact number), built from the limits above so that the documented rules and
/// [`NewOrder::validate`] cannot drift apart.
#[cfg(feature = "openapi")]
mod schema {
    use rust_decimal::Decimal;
    use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, Type};

    use super::{MAX_AMOUNT_SCALE, MAX_ID_CHARS, MAX_ITEMS, MAX_TOTAL_AMOUNT};

    /// What [`check_id`](super::check_id) accepts, as a pattern: no NUL, and at least one
    /// character that is not whitespace as Rust's `char::is_whitespace` has it (Unicode's
    /// `White_Space`), listed rather than written `\s`, whose meaning varies between regex
    /// engines (Python's takes U+001C to U+001F, ECMAScript's U+FEFF).
    const ID_PATTERN: &str = r"^[^\u0000]*[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

    /// A user or item id: 1 to `MAX_ID_CHARS` characters, not all whitespace, no NUL.
    fn id(description: &str, example: &str) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .min_length(Some(1))
            .max_length(Some(MAX_ID_CHARS))
            .pattern(Some(ID_PATTERN))
            .examples([example])
            .build()
    }

    pub(super) fn user_id() -> Object {
        id(
            &format!(
                "Who places the order: 1 to {MAX_ID_CHARS} characters, not all whitespace, none \
                 of them NUL."
            ),
            "user-123",
        )
    }

    pub(super) fn item_ids() -> Array {
        ArrayBuilder::new()
            .items(id(
                &format!(
                    "An item id: 1 to {MAX_ID_CHARS} characters, not all whitespace, none of \
                     them NUL."
                ),
                "item1",
            ))
            .min_items(Some(1))
            .max_items(Some(MAX_ITEMS))
            .description(Some(format!(
                "What is ordered, in order: 1 to {MAX_ITEMS} item ids; the same id may appear more than once."
            )))
            .examples([serde_json::json!(["item1", "item2"])])
            .build()
    }

    pub(super) fn amount() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .description(Some(format!(
                "An amount of money as an exact JSON number, never a string: from 0 to \
                 {MAX_TOTAL_AMOUNT}, with at most {MAX_AMOUNT_SCALE} decimal places. It is read \
                 from its decimal text, so 59.99 stays 59.99; stored orders show two decimal \
                 places (59.9 becomes 59.90)."
            )))
            .minimum(Some(0))
            .maximum(u64::try_from(MAX_TOTAL_AMOUNT).ok())
            // One cent: the smallest step an amount can take.
            .multiple_of(f64::try_from(Decimal::new(1, MAX_AMOUNT_SCALE)).ok())
            .examples([serde_json::json!(59.99)])
            .build()
    }
}

/// A rule an order broke, naming the field (as the API spells it) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
#[non_exhaustive]
pub struct ValidationError {
    /// The field as the API names it: `userId`, `itemIds`, `itemIds[3]`, `totalAmount`.
    pub field: String,
    /// What is wrong with it, in words a client can act on.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn check_id(field: impl Into<String>, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    // Every backend must store what one accepts, and PostgreSQL text cannot hold a NUL.
    if value.contains('\0') {
        return Err(ValidationError::new(
            field,
            "must not contain the NUL character",
        ));
    }
    // Characters, not bytes: a limit of 128 should not punish non-ASCII names.
    if value.chars().count() > MAX_ID_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

impl NewOrder {
    /// An order from its fields; nothing is checked until [`validate`](Self::validate) (or
    /// [`OrderProcessor::submit`](crate::OrderProcessor::submit)).
    ///
    /// ```
    /// use order_core::NewOrder;
    /// use rust_decimal::Decimal;
    ///
    /// let order = NewOrder::new("user-123", ["item1", "item2"], Decimal::new(5999, 2));
    /// assert_eq!(order.validate()?.total_amount().to_string(), "59.99");
    /// # Ok::<(), order_core::ValidationError>(())
    /// ```
    pub fn new(
        user_id: impl Into<String>,
        item_ids: impl IntoIterator<Item = impl Into<String>>,
        total_amount: Decimal,
    ) -> Self {
        Self {
            user_id: user_id.into(),
            item_ids: item_ids.into_iter().map(Into::into).collect(),
            total_amount,
        }
    }

    /// Checks every rule, returning the first one broken.
    ///
    /// The total is brought to two decimal places (`59.9` becomes `59.90`, `60` becomes
    /// `60.00`), so every backend stores and shows the same text for the same amount.
    pub fn validate(self) -> Result<ValidatedOrder, ValidationError> {
        check_id("userId", &self.user_id)?;
        if self.item_ids.is_empty() {
            return Err(ValidationError::new(
                "itemIds",
                "must hold at least one item",
            ));
        }
        if self.item_ids.len() > MAX_ITEMS {
            return Err(ValidationError::new(
                "itemIds",
                format!("must hold at most {MAX_ITEMS} items"),
            ));
        }
        for (index, item) in self.item_ids.iter().enumerate() {
            check_id(format!("itemIds[{index}]"), item)?;
        }
        let amount = self.total_amount.normalize();
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(ValidationError::new("totalAmount", "must not be negative"));
        }
        if amount.scale() > MAX_AMOUNT_SCALE {
            return Err(ValidationError::new(
                "totalAmount",
                format!("must have at most {MAX_AMOUNT_SCALE} decimal places"),
            ));
        }
        if amount > MAX_TOTAL_AMOUNT {
            return Err(ValidationError::new(
                "totalAmount",
                format!("must be at most {MAX_TOTAL_AMOUNT}"),
            ));
        }
        // Cents, always: `59.9` is stored and shown as `59.90`, as PostgreSQL's NUMERIC(12, 2)
        // holds it. `-0` keeps its sign bit through normalising; store a plain zero.
        let mut cents = if amount.is_zero() {
            Decimal::ZERO
        } else {
            amount
        };
        cents.rescale(MAX_AMOUNT_SCALE);
        Ok(ValidatedOrder(NewOrder {
            total_amount: cents,
            ..self
        }))
    }
}

/// A [`NewOrder`] that passed [`NewOrder::validate`]: the only way to get one, so a repository
/// can trust every field.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedOrder(NewOrder);

impl ValidatedOrder {
    /// Who places the order.
    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }

    /// What is ordered.
    pub fn item_ids(&self) -> &[String] {
        &self.0.item_ids
    }

    /// The total, with exactly two decimal places.
    pub fn total_amount(&self) -> Decimal {
        self.0.total_amount
    }

    /// The validated fields, given back.
    pub fn into_inner(self) -> NewOrder {
        self.0
    }
}

/// The kind of a [`Transition`](crate::backend::Transition), without its data: the engine's rules for how an order's
/// status may change, as values that a client can reason with.
///
/// Each kind leaves from the statuses of [`leaves_from`](TransitionKind::leaves_from) and
/// leads to [`target`](TransitionKind::target); [`OrderStatus::may_become`] and
/// [`OrderStatus::may_reach`] are derived from these two, so a checker of observed statuses
/// follows the engine rather than a list of its own.
///
/// ```
/// use order_core::OrderStatus;
/// use order_core::backend::TransitionKind;
///
/// assert_eq!(TransitionKind::Cancel.leaves_from(), &[OrderStatus::Pending]);
/// assert_eq!(TransitionKind::Retry.target(), OrderStatus::Pending);
/// let into_completed: Vec<_> = TransitionKind::ALL
///     .into_iter()
///     .filter(|kind| kind.target() == OrderStatus::Completed)
///     .collect();
/// assert_eq!(into_completed, [TransitionKind::Complete]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionKind {
    /// [`Transition::Start`](crate::backend::Transition::Start): a first start, a start after a retry, or a takeover of a lapsed
    /// lease.
    Start,
    /// [`Transition::Renew`](crate::backend::Transition::Renew): a longer lease for the same worker.
    Renew,
    /// [`Transition::Complete`](crate::backend::Transition::Complete): the handler succeeded.
    Complete,
    /// [`Transition::Retry`](crate::backend::Transition::Retry): the handler failed, and the order will be tried again.
    Retry,
    /// [`Transition::Fail`](crate::backend::Transition::Fail): the handler failed for good.
    Fail,
    /// [`Transition::Release`](crate::backend::Transition::Release): work handed back unfinished at shutdown.
    Release,
    /// [`Transition::Cancel`](crate::backend::Transition::Cancel): a client cancelled a PENDING order.
    Cancel,
}

impl TransitionKind {
    /// Every kind of transition.
    pub const ALL: [TransitionKind; 7] = [
        TransitionKind::Start,
        TransitionKind::Renew,
        TransitionKind::Complete,
        TransitionKind::Retry,
        TransitionKind::Fail,
        TransitionKind::Release,
        TransitionKind::Cancel,
    ];

    /// The statuses a transition of this kind may leave from. A start leaves from PROCESSING
    /// too: that is a takeover, once the holder's lease has run out.
    pub fn leaves_from(self) -> &'static [OrderStatus] {
        match self {
            TransitionKind::Start => &[OrderStatus::Pending, OrderStatus::Processing],
            TransitionKind::Renew
            | TransitionKind::Complete
            | TransitionKind::Retry
            | TransitionKind::Fail
            | TransitionKind::Release => &[OrderStatus::Processing],
            TransitionKind::Cancel => &[OrderStatus::Pending],
        }
    }

    /// The status a transition of this kind leads to.
    pub fn target(self) -> OrderStatus {
        match self {
            TransitionKind::Start | TransitionKind::Renew => OrderStatus::Processing,
            TransitionKind::Complete => OrderStatus::Completed,
            TransitionKind::Retry | TransitionKind::Release => OrderStatus::Pending,
            TransitionKind::Fail => OrderStatus::Failed,
            TransitionKind::Cancel => OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn order(user: &str, items: &[&str], amount: &str) -> NewOrder {
        NewOrder {
            user_id: user.into(),
            item_ids: items.iter().map(|s| (*s).to_owned()).collect(),
            total_amount: Decimal::from_str(amount).unwrap(),
        }
    }

    fn field_of(result: Result<ValidatedOrder, ValidationError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn a_well_formed_order_is_valid_and_its_amount_in_cents() {
        let valid = order("user-123", &["item1", "item2"], "59.9")
            .validate()
            .unwrap();
        assert_eq!(valid.user_id(), "user-123");
        assert_eq!(valid.item_ids(), ["item1", "item2"]);
        assert_eq!(valid.total_amount().to_string(), "59.90");
        let whole = order("u", &["i"], "60").validate().unwrap();
        assert_eq!(whole.total_amount().to_string(), "60.00");
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let long = "x".repeat(MAX_ID_CHARS);
        let items: Vec<&str> = std::iter::repeat_n(long.as_str(), MAX_ITEMS).collect();
        let valid = order(&long, &items, "10000000000.00").validate().unwrap();
        assert_eq!(valid.total_amount(), Decimal::from(10_000_000_000_i64));
        assert_eq!(
            order("u", &["i"], "0").validate().unwrap().total_amount(),
            Decimal::ZERO
        );
        assert_eq!(
            order("u", &["i"], "-0.00")
                .validate()
                .unwrap()
                .total_amount()
                .to_string(),
            "0.00"
        );
    }

    #[test]
    fn user_id_must_be_present_and_short() {
        assert_eq!(field_of(order("", &["i"], "1").validate()), "userId");
        assert_eq!(field_of(order("   ", &["i"], "1").validate()), "userId");
        let long = "é".repeat(MAX_ID_CHARS + 1);
        let err = order(&long, &["i"], "1").validate().unwrap_err();
        assert_eq!(err.field, "userId");
        assert_eq!(err.reason, "must be at most 128 characters");
        // 128 two-byte characters are 256 bytes, and still allowed.
        assert!(
            order(&"é".repeat(MAX_ID_CHARS), &["i"], "1")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn item_ids_must_be_between_one_and_a_thousand_non_empty_ids() {
        assert_eq!(field_of(order("u", &[], "1").validate()), "itemIds");
        let many: Vec<&str> = std::iter::repeat_n("i", MAX_ITEMS + 1).collect();
        assert_eq!(field_of(order("u", &many, "1").validate()), "itemIds");
        assert_eq!(
            field_of(order("u", &["a", "", "c"], "1").validate()),
            "itemIds[1]"
        );
        let long = "x".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            field_of(order("u", &["a", &long], "1").validate()),
            "itemIds[1]"
        );
    }

    #[test]
    fn total_amount_is_non_negative_cents_up_to_ten_billion() {
        let err = order("u", &["i"], "-0.01").validate().unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("totalAmount", "must not be negative")
        );
        let err = order("u", &["i"], "1.001").validate().unwrap_err();
        assert_eq!(err.reason, "must have at most 2 decimal places");
        // Trailing zeros are not extra precision.
        assert!(order("u", &["i"], "1.1000").validate().is_ok());
        let err = order("u", &["i"], "10000000000.01").validate().unwrap_err();
        assert_eq!(err.reason, "must be at most 10000000000");
    }

    #[test]
    fn the_error_message_names_field_and_reason() {
        let err = order("u", &[], "1").validate().unwrap_err();
        assert_eq!(err.to_string(), "itemIds: must hold at least one item");
    }

    #[test]
    fn order_ids_parse_only_from_positive_integers() {
        assert_eq!("7".parse::<OrderId>().unwrap().get(), 7);
        assert_eq!(
            "9223372036854775807".parse::<OrderId>().unwrap().get(),
            i64::MAX
        );
        for bad in ["0", "-1", "9223372036854775808", "1.5", "abc", "", " 1"] {
            assert!(bad.parse::<OrderId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names_and_only_three_are_terminal() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        let terminal: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                OrderStatus::Completed,
                OrderStatus::Failed,
                OrderStatus::Cancelled
            ]
        );
    }

    #[test]
    fn amounts_cross_json_exactly() {
        let parsed: NewOrder =
            serde_json::from_str(r#"{"userId":"u","itemIds":["i"],"totalAmount":9999999999.99}"#)
                .unwrap();
        assert_eq!(parsed.total_amount.to_string(), "9999999999.99");
        let json = serde_json::to_string(&parsed).unwrap();
        assert!(json.contains(r#""totalAmount":9999999999.99"#), "{json}");
        // 0.1 + 0.2 style float noise would show here if a float were involved anywhere.
        let parsed: NewOrder =
            serde_json::from_str(r#"{"userId":"u","itemIds":["i"],"totalAmount":0.30}"#).unwrap();
        assert_eq!(
            parsed.validate().unwrap().total_amount().to_string(),
            "0.30"
        );
    }

    #[test]
    fn amounts_must_be_json_numbers_held_exactly() {
        let parse = |amount: &str| {
            serde_json::from_str::<NewOrder>(&format!(
                r#"{{"userId":"u","itemIds":["i"],"totalAmount":{amount}}}"#
            ))
        };
        assert!(
            parse(r#""1.00""#)
                .unwrap_err()
                .to_string()
                .contains("invalid type: string")
        );
        assert!(
            parse("1e400")
                .unwrap_err()
                .to_string()
                .contains("not an amount")
        );
        assert!(parse("0.1234567890123456789012345678901").is_err());
        assert_eq!(parse("1.5e2").unwrap().total_amount.to_string(), "150");
        assert_eq!(
            parse("-0").unwrap().validate().unwrap().total_amount(),
            Decimal::ZERO
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<NewOrder>(
            r#"{"userId":"u","itemIds":["i"],"totalAmount":1,"totalAmmount":2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn one_step_follows_the_transitions_and_nothing_leaves_a_terminal_status() {
        use OrderStatus::{Cancelled, Completed, Failed, Pending, Processing};
        let steps: Vec<_> = OrderStatus::ALL
            .into_iter()
            .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(
            steps,
            [
                (Pending, Processing),
                (Pending, Cancelled),
                (Processing, Pending),
                (Processing, Processing),
                (Processing, Completed),
                (Processing, Failed),
            ]
        );
        for terminal in OrderStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(OrderStatus::ALL.iter().all(|s| !terminal.may_become(*s)));
        }
    }

    #[test]
    fn reach_is_every_status_from_the_living_ones_and_only_itself_from_a_terminal_one() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let expected = from == to || !from.is_terminal();
                assert_eq!(from.may_reach(to), expected, "{from} -> {to}");
            }
        }
    }
}
