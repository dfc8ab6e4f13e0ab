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
///        │  ├────────► FAILED (attempts used up, or a permanent error)
///        │  └────────► CANCELLED (a pipeline's cancel, once its steps are compensated)
///        └── start (the lease ran out: another worker takes over)
///
///   FAILED ──────────► PENDING (requeue: an operator retries it)
/// ```
///
/// COMPLETED, FAILED and CANCELLED are terminal: no worker moves an order out of them, and
/// the only way out of any of them is an operator's retry of a FAILED order.
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
    /// The handler failed permanently or ran out of attempts; `last_error` says why. An
    /// operator may retry it ([`OrderProcessor::retry`](crate::OrderProcessor::retry)).
    Failed,
    /// Cancelled before any worker started it, or, for an order processed in steps, cancelled
    /// while PROCESSING and its finished steps compensated.
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

    /// True for the statuses no worker leaves: COMPLETED, FAILED, CANCELLED. (A FAILED order
    /// leaves only when an operator retries it.)
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
    /// assert!(Failed.may_reach(Completed)); // retried by an operator
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
    /// The handler's error from the latest failed attempt, if any. For an order processed in
    /// steps, prefixed with the step's name (`charge: card declined`).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_error: Option<String>,
    /// The steps of an order processed by a [`Pipeline`](crate::step::Pipeline), in order, as
    /// far as they have started. Empty for an order processed by a plain
    /// [`OrderHandler`](crate::OrderHandler): its one step is the order itself.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// When a client asked to cancel this order while it was PROCESSING: its running step
    /// finishes, the finished steps are compensated, and it ends CANCELLED.
    #[serde(default, serialize_with = "rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The times this order ended FAILED and was retried, oldest first; empty for an order
    /// never retried.
    #[serde(default)]
    pub failures: Vec<FailureRecord>,
}

impl Order {
    /// The attempts made since the order was last retried (all of them if it never was):
    /// what its retry policy's limit counts, so that a retried order gets a full set.
    ///
    /// ```
    /// # use order_core::Order;
    /// # fn check(order: &Order) {
    /// assert!(order.attempts_since_retry() <= order.attempts);
    /// # }
    /// ```
    pub fn attempts_since_retry(&self) -> u32 {
        let before = self.failures.last().map_or(0, |failure| failure.attempts);
        self.attempts.saturating_sub(before)
    }

    /// How many times the order was retried after it FAILED.
    pub fn retries(&self) -> u32 {
        u32::try_from(self.failures.len()).unwrap_or(u32::MAX)
    }
}

/// What a user or item id (`NewOrder::validate`) accepts, as a pattern: no NUL, and at least one
/// character that is not whitespace as Rust's `char::is_whitespace` has it (Unicode's
/// `White_Space`), listed rather than written `\s`, whose meaning varies between regex
/// engines (Python's takes U+001C to U+001F, ECMAScript's U+FEFF).
pub const ID_PATTERN: &str = r"^[^\u0000]*[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

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
/// let order = NewOrder::new("user-123", ["item1", "item2"], Decimal::new(5999, 2));
/// let valid = order.validate().unwrap();
/// assert_eq!(valid.total_amount().to_string(), "59.99");
///
/// let mut unnamed = valid.into_inner();
/// unnamed.user_id = String::new();
/// assert_eq!(unnamed.validate().unwrap_err().field, "userId");
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

pub mod exact_amount;

pub(crate) mod failures;
pub(crate) mod rfc3339;
pub(crate) mod steps;

pub use failures::FailureRecord;
use steps::StepRecord;

#[cfg(feature = "openapi")]
mod schema;

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
    /// The rule `reason` that `field` (as the API names it) broke.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Whether `value` may be a user or item id, named `field` in the error.
pub(crate) fn check_id(field: impl Into<String>, value: &str) -> Result<(), ValidationError> {
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
    /// [`Transition::Checkpoint`](crate::backend::Transition::Checkpoint): a step's outcome stored.
    Checkpoint,
    /// [`Transition::RequestCancel`](crate::backend::Transition::RequestCancel): a client asked to
    /// cancel a PROCESSING order whose steps can be compensated.
    RequestCancel,
    /// [`Transition::FinishCancel`](crate::backend::Transition::FinishCancel): a requested cancel
    /// done, every finished step compensated.
    FinishCancel,
    /// [`Transition::Requeue`](crate::backend::Transition::Requeue): an operator retried a
    /// FAILED order.
    Requeue,
}

impl TransitionKind {
    /// Every kind of transition.
    pub const ALL: [TransitionKind; 11] = [
        TransitionKind::Start,
        TransitionKind::Renew,
        TransitionKind::Complete,
        TransitionKind::Retry,
        TransitionKind::Fail,
        TransitionKind::Release,
        TransitionKind::Cancel,
        TransitionKind::Checkpoint,
        TransitionKind::RequestCancel,
        TransitionKind::FinishCancel,
        TransitionKind::Requeue,
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
            | TransitionKind::Release
            | TransitionKind::Checkpoint
            | TransitionKind::RequestCancel
            | TransitionKind::FinishCancel => &[OrderStatus::Processing],
            TransitionKind::Cancel => &[OrderStatus::Pending],
            TransitionKind::Requeue => &[OrderStatus::Failed],
        }
    }

    /// The status a transition of this kind leads to.
    pub fn target(self) -> OrderStatus {
        match self {
            TransitionKind::Start
            | TransitionKind::Renew
            | TransitionKind::Checkpoint
            | TransitionKind::RequestCancel => OrderStatus::Processing,
            TransitionKind::Complete => OrderStatus::Completed,
            TransitionKind::Retry | TransitionKind::Release | TransitionKind::Requeue => {
                OrderStatus::Pending
            }
            TransitionKind::Fail => OrderStatus::Failed,
            TransitionKind::Cancel | TransitionKind::FinishCancel => OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests;
