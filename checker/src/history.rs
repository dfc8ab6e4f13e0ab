//! What the clients did and saw: one record per operation, with the times it was invoked and
//! completed, measured from the start of the run on one clock.
//!
//! The records keep the server's answers as they came (status, the replay header, the body
//! text), so that a check can compare bodies byte for byte and a report can show them.

use std::collections::BTreeMap;
use std::str::FromStr;

use order_core::OrderStatus;
use order_core::step::StepStatus;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Microseconds since the run started.
pub type Micros = u64;

/// Everything a run recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The operations, in the order they completed; `Op::index` is the position here.
    pub ops: Vec<Op>,
    /// The faults injected, in order.
    pub faults: Vec<Fault>,
    /// From when nothing but the final reads ran: no client, no fault, and every order in a
    /// terminal status. `None` when the run never got there.
    pub quiet_since: Option<Micros>,
    /// Orders by status (`PENDING`, ...) counted in the database once quiet, when the run
    /// had one to count in.
    #[serde(default)]
    pub database_counts: Option<BTreeMap<String, u64>>,
    /// The steps every order runs, by name and in order (the server's `PROCESSING_STEPS`):
    /// simulated steps, each of which can be compensated. `None` when orders run one plain
    /// step, which shows no steps and cannot be cancelled once PROCESSING.
    #[serde(default)]
    pub pipeline: Option<Vec<String>>,
}

impl History {
    /// Appends `action`, done by `client` from `invoked` to `completed`; returns its index.
    pub fn record(
        &mut self,
        client: usize,
        invoked: Micros,
        completed: Micros,
        action: Action,
    ) -> usize {
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            client,
            invoked,
            completed,
            action,
        });
        index
    }
}

/// One fault, and when it was injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// When it began.
    pub at: Micros,
    /// What it was.
    pub kind: FaultKind,
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The server was killed with SIGKILL and started again.
    ServerKill,
    /// PostgreSQL was restarted with `pg_ctl restart -m immediate`.
    DatabaseRestart,
    /// The primary was killed with SIGKILL, every process of it, and the connection pointed
    /// at its synchronous standby, still read-only.
    PrimaryKill,
    /// The standby was promoted: the new primary takes writes from here on.
    Promotion,
}

/// One operation of one client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Its position in [`History::ops`].
    pub index: usize,
    /// The client that made it; the final reads are made by client `usize::MAX`.
    pub client: usize,
    /// When the request was sent.
    pub invoked: Micros,
    /// When the answer (or the failure) came back.
    pub completed: Micros,
    /// What was asked, and what came back.
    pub action: Action,
}

/// What an operation asked, and what it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    /// `POST /orders`, with an `Idempotency-Key` or not.
    Create {
        /// The key sent, if any.
        key: Option<String>,
        /// The order sent.
        order: OrderFields,
        /// The answer.
        reply: Reply,
    },
    /// `GET /orders/{id}`.
    Get {
        /// The order asked for.
        id: i64,
        /// The answer.
        reply: Reply,
    },
    /// `POST /orders/{id}/cancel`.
    Cancel {
        /// The order to cancel.
        id: i64,
        /// The answer.
        reply: Reply,
    },
    /// `POST /orders/{id}/retry`.
    Retry {
        /// The order to retry.
        id: i64,
        /// The answer.
        reply: Reply,
    },
    /// `GET /orders`, page after page following `nextCursor`.
    Walk {
        /// The `userId` filter, if any.
        user: Option<String>,
        /// Each page asked for, in order; the walk stops at the first page that is not a 200.
        pages: Vec<Page>,
    },
    /// `GET /orders/{id}/events`, read for a bounded time.
    Watch {
        /// The order watched.
        id: i64,
        /// The status code of the stream's response, or `None` when none came.
        status: Option<u16>,
        /// Each `status` event, in the order it came.
        events: Vec<StreamEvent>,
        /// True when the server ended the stream; false when it was cut or the time ran out.
        ended: bool,
    },
    /// `GET /metrics`.
    Metrics {
        /// The answer.
        reply: Reply,
    },
}

/// One page of a walk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    /// When it was asked for.
    pub invoked: Micros,
    /// When it came back.
    pub completed: Micros,
    /// The `after` sent.
    pub after: Option<String>,
    /// The answer.
    pub reply: Reply,
}

/// One `status` event of a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamEvent {
    /// When it was read.
    pub received: Micros,
    /// Its `data`: `{"order": ...}`.
    pub data: String,
}

/// What came back for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// An HTTP answer.
    Answer {
        /// Its status code.
        status: u16,
        /// Whether it carried `Idempotent-Replayed: true`.
        replayed: bool,
        /// Its body, as sent.
        body: String,
    },
    /// No answer: a timeout, a refused or cut connection.
    Lost {
        /// What went wrong.
        error: String,
    },
}

impl Reply {
    /// The status code and body of an answer that was not a 5xx: what the server decided.
    /// `None` for what may or may not have happened: no answer, or a 5xx.
    pub fn decided(&self) -> Option<(u16, &str)> {
        match self {
            Reply::Answer { status, body, .. } if *status < 500 => Some((*status, body)),
            _ => None,
        }
    }

    /// True when the operation may or may not have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        self.decided().is_none()
    }

    /// The order in a `{"order": ...}` body of a 2xx answer.
    pub fn order(&self) -> Option<Snapshot> {
        match self.decided() {
            Some((200..=299, body)) => Snapshot::from_body(body),
            _ => None,
        }
    }
}

/// The fields a client chooses when it creates an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderFields {
    /// `userId`.
    pub user_id: String,
    /// `itemIds`.
    pub item_ids: Vec<String>,
    /// `totalAmount`, as the JSON number's text.
    pub total_amount: String,
}

impl OrderFields {
    /// The fields as a `POST /orders` body.
    pub fn to_json(&self) -> String {
        let items = serde_json::to_string(&self.item_ids).unwrap_or_default();
        let user = serde_json::to_string(&self.user_id).unwrap_or_default();
        // The amount is written as the number's own text: the server reads it exactly.
        format!(
            r#"{{"userId":{user},"itemIds":{items},"totalAmount":{}}}"#,
            self.total_amount
        )
    }

    /// Whether `other` names the same order: the same user and items, and an equal amount
    /// (`60` and `60.00` are one amount).
    pub fn same_order(&self, other: &OrderFields) -> bool {
        let amount = |text: &str| Decimal::from_str(text).ok();
        self.user_id == other.user_id
            && self.item_ids == other.item_ids
            && amount(&self.total_amount).is_some()
            && amount(&self.total_amount) == amount(&other.total_amount)
    }
}

/// An order as one answer showed it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its id.
    pub id: i64,
    /// Its status.
    pub status: OrderStatus,
    /// Its `attempts`.
    pub attempts: u64,
    /// What it was created with.
    pub fields: OrderFields,
    /// Its `steps`, in order: empty for an order of a plain handler, and for a pipeline's
    /// order until its first step's outcome is stored.
    pub steps: Vec<StepSnapshot>,
    /// Its `cancelRequestedAt`, as the server wrote it: set once a cancel of the order was
    /// accepted while it was PROCESSING.
    pub cancel_requested_at: Option<String>,
    /// Its `failures`: one for each time it was retried after it FAILED, oldest first.
    pub failures: Vec<FailureSnapshot>,
}

/// One earlier failure of a retried order, as one answer showed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureSnapshot {
    /// When it ended FAILED, as the server wrote it.
    pub failed_at: String,
    /// The step that failed, for an order in steps.
    pub step: Option<String>,
    /// Its `lastError` then.
    pub error: String,
    /// Its `attempts` then.
    pub attempts: u64,
}

/// One step of an order as one answer showed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StepSnapshot {
    /// Its name in the pipeline.
    pub name: String,
    /// Where it was.
    pub status: StepStatus,
    /// How many times it had been started.
    pub attempts: u32,
}

impl Snapshot {
    /// Reads a `{"order": ...}` body; `None` when it is not one.
    pub fn from_body(body: &str) -> Option<Self> {
        serde_json::from_str::<RawBody>(body)
            .ok()
            .map(|raw| raw.order.into())
    }
}

// The API's order objects as far as the checks read them, deserialised straight into types
// rather than through `Value`: a run's history holds hundreds of thousands of them.
#[derive(Deserialize)]
struct RawBody {
    order: RawOrder,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOrder {
    id: i64,
    status: OrderStatus,
    attempts: u64,
    user_id: String,
    item_ids: Vec<String>,
    /// The number's own text, as the server wrote it.
    total_amount: Box<serde_json::value::RawValue>,
    // Absent from the answers of a server older than steps: read as none.
    #[serde(default)]
    steps: Vec<StepSnapshot>,
    #[serde(default)]
    cancel_requested_at: Option<String>,
    // Absent from the answers of a server older than retries: read as none.
    #[serde(default)]
    failures: Vec<FailureSnapshot>,
}

impl From<RawOrder> for Snapshot {
    fn from(raw: RawOrder) -> Self {
        Self {
            id: raw.id,
            status: raw.status,
            attempts: raw.attempts,
            fields: OrderFields {
                user_id: raw.user_id,
                item_ids: raw.item_ids,
                total_amount: raw.total_amount.get().to_owned(),
            },
            steps: raw.steps,
            cancel_requested_at: raw.cancel_requested_at,
            failures: raw.failures,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPage {
    orders: Vec<RawOrder>,
    next_cursor: Option<String>,
}

/// A page of `GET /orders`, read.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Its orders, in the order given.
    pub orders: Vec<Snapshot>,
    /// Its `nextCursor`.
    pub next_cursor: Option<String>,
}

impl ListPage {
    /// Reads a 200 answer of `GET /orders`; `None` for anything else.
    pub fn from_reply(reply: &Reply) -> Option<Self> {
        let (200, body) = reply.decided()? else {
            return None;
        };
        let raw: RawPage = serde_json::from_str(body).ok()?;
        Some(Self {
            orders: raw.orders.into_iter().map(Snapshot::from).collect(),
            next_cursor: raw.next_cursor,
        })
    }
}
