//! Bulk actions: cancelling every PENDING order, or retrying every FAILED one, that a filter
//! selects, in pages, from storage, so that any process reports the progress and a restart
//! resumes the work.
//!
//! A [`BulkRequest`] names the action, the listing's filter and a limit. When it is accepted
//! the ids of the orders it selects then (up to the limit, oldest first) are stored with the
//! action: those, and only those, are acted on, however the orders change afterwards. Each
//! order is acted on if it can still be (a cancel of an order that started since is skipped,
//! as is a retry of one retried since), a page of at most [`PAGE`] orders per transaction,
//! and the action's progress is written with each page.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::idempotency::IdempotencyKey;
use crate::order::{Order, OrderStatus};
use crate::queue::ClaimToken;

/// The identity of a bulk action: a UUID, assigned when it is accepted.
///
/// ```
/// use order_core::bulk::BulkId;
///
/// let id: BulkId = "0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10".parse().unwrap();
/// assert_eq!(id.to_string(), "0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10");
/// assert!("7".parse::<BulkId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(value_type = String, format = "uuid", examples("0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10"))
)]
#[serde(transparent)]
pub struct BulkId(uuid::Uuid);

impl BulkId {
    /// A new, random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The id of a stored action.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID, as stored.
    pub fn as_uuid(self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for BulkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Why a text is not a [`BulkId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bulk action's id is a UUID, got {0:?}")]
pub struct ParseBulkIdError(pub String);

impl FromStr for BulkId {
    type Err = ParseBulkIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ParseBulkIdError(s.chars().take(64).collect()))
    }
}

/// What a bulk action does to each order it selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BulkKind {
    /// Cancels PENDING orders ([`Transition::Cancel`](crate::backend::Transition::Cancel)).
    Cancel,
    /// Retries FAILED orders ([`Transition::Requeue`](crate::backend::Transition::Requeue)).
    Retry,
}

impl BulkKind {
    /// The status of the orders the action selects.
    pub fn selects(self) -> OrderStatus {
        match self {
            BulkKind::Cancel => OrderStatus::Pending,
            BulkKind::Retry => OrderStatus::Failed,
        }
    }

    /// The name used in storage: `CANCEL`, `RETRY`.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkKind::Cancel => "CANCEL",
            BulkKind::Retry => "RETRY",
        }
    }
}

impl FromStr for BulkKind {
    type Err = ParseBulkIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "CANCEL" => Ok(BulkKind::Cancel),
            "RETRY" => Ok(BulkKind::Retry),
            other => Err(ParseBulkIdError(other.chars().take(64).collect())),
        }
    }
}

/// The most orders one bulk action may select.
pub const MAX_BULK_LIMIT: u32 = 1_000_000;

/// A bulk action as a client asks for it: what to do, to whose orders, and to how many at
/// most.
///
/// ```
/// use order_core::bulk::{BulkKind, BulkRequest};
///
/// let request = BulkRequest::new(BulkKind::Retry, 5_000).user("user-123");
/// assert_eq!(request.kind.selects().as_str(), "FAILED");
/// assert!(BulkRequest::new(BulkKind::Cancel, 0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkRequest {
    /// What to do.
    pub kind: BulkKind,
    /// Only this user's orders (the listing's `userId`).
    pub user_id: Option<String>,
    /// At most this many orders, the oldest first: 1 to [`MAX_BULK_LIMIT`].
    pub limit: u32,
}

impl BulkRequest {
    /// `kind` on up to `limit` orders of every user.
    pub fn new(kind: BulkKind, limit: u32) -> Self {
        Self {
            kind,
            user_id: None,
            limit,
        }
    }

    /// Only `user_id`'s orders.
    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// The request, if its limit is within bounds and its user id is one an order could have.
    pub fn validate(self) -> Result<Self, crate::ValidationError> {
        if self.limit == 0 || self.limit > MAX_BULK_LIMIT {
            return Err(crate::ValidationError {
                field: "limit".to_owned(),
                reason: format!("must be from 1 to {MAX_BULK_LIMIT}"),
            });
        }
        if let Some(user) = &self.user_id {
            crate::order::check_id("userId", user)?;
        }
        Ok(self)
    }

    /// What tells two requests under one idempotency key apart: `RETRY user-1 500`.
    pub fn fingerprint(&self) -> String {
        format!(
            "{} {} {}",
            self.kind.as_str(),
            self.user_id
                .as_deref()
                .map_or("*".to_owned(), |user| format!("{user:?}")),
            self.limit
        )
    }
}

/// Why [`OrderProcessor::bulk`](crate::OrderProcessor::bulk) did not accept a bulk action.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// The request breaks a rule (its limit, its user id).
    #[error(transparent)]
    Invalid(#[from] crate::ValidationError),
    /// The idempotency key was used before for another bulk request.
    #[error(
        "idempotency key {key:?} was already used for a different bulk request (action {action})"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The action it names.
        action: BulkId,
    },
    /// The storage failed; the action may or may not have been accepted.
    #[error("could not accept the bulk action")]
    Storage(#[from] StorageError),
}

/// Whether a bulk action still has orders to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BulkStatus {
    /// Accepted; its orders are being gone through.
    Running,
    /// Every order it selected was acted on or skipped.
    Done,
}

/// A bulk action as stored: what was asked, what it selected, and how far it has got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BulkAction {
    /// Its id.
    pub id: BulkId,
    /// What it does.
    pub kind: BulkKind,
    /// The status of the orders it selected.
    pub selects: OrderStatus,
    /// The user whose orders it selected, if one was named.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub user_id: Option<String>,
    /// The limit asked for.
    pub limit: u32,
    /// How many orders it selected when it was accepted.
    pub matched: u64,
    /// How many of them it has cancelled or retried.
    pub acted: u64,
    /// How many of them it found no longer in the status it selects (started, cancelled or
    /// retried since), and left alone.
    pub skipped: u64,
    /// The longest any of its pages held its orders locked, in milliseconds: what the action
    /// made other writers of those orders wait at most.
    pub longest_page_ms: f64,
    /// Where it is.
    pub status: BulkStatus,
    /// When it was accepted.
    #[serde(serialize_with = "crate::order::rfc3339::serialize")]
    pub accepted_at: DateTime<Utc>,
    /// When it last made progress.
    #[serde(serialize_with = "crate::order::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
    /// When it went through its last order.
    #[serde(serialize_with = "crate::order::rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub finished_at: Option<DateTime<Utc>>,
}

impl BulkAction {
    /// How many of its orders it has gone through.
    pub fn processed(&self) -> u64 {
        self.acted + self.skipped
    }
}

/// What [`BulkActions::accept`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Acceptance {
    /// A new action, its orders selected now.
    Accepted(BulkAction),
    /// The idempotency key was used before for the same request: that action, as it is now.
    Replayed(BulkAction),
    /// The idempotency key was used before for another request: nothing was stored.
    KeyReused(BulkAction),
}

/// One page gone through: the action as written, and the orders it changed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Page {
    /// The action, its progress written.
    pub action: BulkAction,
    /// The orders this page cancelled or retried, as written.
    pub changed: Vec<Order>,
}

/// Where bulk actions live, with the ids they selected.
///
/// # Contract
///
/// - [`accept`](Self::accept) stores the action and the ids of up to `limit` orders that are
///   in the status its kind selects (and of its user, if named) at that moment, oldest first,
///   in one atomic step. Under an idempotency key it stores at most one action per key,
///   however many callers race, as [`Repository::insert_keyed`] does for orders.
/// - [`claim`](Self::claim) hands an unfinished action to one caller at a time, for a lease
///   measured on the storage's clock; an action whose lease ran out (its holder died) is
///   handed out again, and resumes where its last page left it.
/// - [`page`](Self::page) goes through the next (at most [`PAGE`]) selected
///   orders after the last page's, in id order, as one atomic step: each order still in the
///   selected status is cancelled or requeued (the same writes as [`Transition::Cancel`] and
///   [`Transition::Requeue`], queueing included), the others are skipped, and the action's
///   counts, place and lease are written with them. It is fenced by the claim: a holder whose
///   lease ran out, and whose action another has claimed since, writes nothing.
///
/// [`Repository::insert_keyed`]: crate::backend::Repository::insert_keyed
/// [`Transition::Cancel`]: crate::backend::Transition::Cancel
/// [`Transition::Requeue`]: crate::backend::Transition::Requeue
#[async_trait]
pub trait BulkActions: Send + Sync {
    /// Stores `request` as a new action, selecting its orders now; under `key`, the action
    /// stored for the key before, if any.
    async fn accept(
        &self,
        request: &BulkRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<Acceptance, StorageError>;

    /// How many orders `request` would select now (at most its limit), without storing
    /// anything: what a confirmation asks before the action is accepted.
    async fn preview(&self, request: &BulkRequest) -> Result<u64, StorageError>;

    /// The action with this id, or `None`.
    async fn get(&self, id: BulkId) -> Result<Option<BulkAction>, StorageError>;

    /// An unfinished action nobody holds (or whose holder's lease ran out), now held under a
    /// new claim for `lease`; `None` when there is none.
    async fn claim(
        &self,
        lease: Duration,
    ) -> Result<Option<(BulkAction, ClaimToken)>, StorageError>;

    /// Goes through the action's next page under `claim`, holding it for `lease` from now;
    /// `None` when the claim no longer holds it (nothing was written).
    async fn page(
        &self,
        id: BulkId,
        claim: ClaimToken,
        lease: Duration,
    ) -> Result<Option<Page>, StorageError>;
}

/// The most orders one page of a bulk action goes through: one transaction's worth.
pub const PAGE: usize = 1_000;
