//! A history checker for `order-server`, after Jepsen and Elle: concurrent clients record
//! every operation they make against a real server (when it was invoked and completed, what
//! was asked and what came back), faults are injected meanwhile, and the recorded
//! [`History`] is then checked against what the API promises:
//!
//! - every acknowledged create exists exactly once, with the acknowledged fields; an
//!   idempotency key names one order, its replays answer the first `201` body byte for byte,
//!   and another order under it is refused with `422`;
//! - an order's status, as seen by any client over time, follows the engine's own
//!   transitions ([`order_core::OrderStatus::may_reach`]);
//! - a cancelled order stays CANCELLED and is never started; a `409` names a status the order
//!   was in; an order is CANCELLED only by a cancel that may have done it;
//! - of an order processed in steps, each step's status only moves forward
//!   ([`order_core::step::StepStatus::may_become`]), its attempts never go down, a step seen
//!   finished is never run again, and steps keep their places; a cancel accepted while the
//!   order was PROCESSING (`202`) ends it CANCELLED with its finished steps compensated, and a
//!   COMPLETED order shows every step SUCCEEDED;
//! - listing walks never repeat nor skip an order acknowledged before they began;
//! - event streams follow the same rules and end where the order is;
//! - `/metrics` equals a direct count once all is quiet.
//!
//! An operation without an answer, or with a 5xx, may or may not have happened, and is
//! treated so: it is never held against the server.
//!
//! # Layout
//!
//! [`history`] holds the records, [`mod@check`] the checks. The `order-checker` binary runs the
//! clients and the faults (its `workload` and `cluster` modules) and prints the report.

pub mod check;
pub mod history;

pub use check::{Report, Rule, Violation, check};
pub use history::{Action, History, Op, OrderFields, Reply};
