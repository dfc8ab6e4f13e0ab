//! The checks: each reads a [`History`] and returns the promises it finds broken, earliest
//! first, each with the operations involved.
//!
//! Operations overlap, so a check orders two of them only when one completed before the other
//! was invoked (real time, as in linearizability); overlapping ones may have taken effect in
//! either order. An operation without a decided answer (no answer, or a 5xx) may or may not
//! have happened: it proves nothing, and no check counts it against the server.
//!
//! How an order's status may change is not written here: it is asked of the engine,
//! [`OrderStatus::may_reach`] and [`TransitionKind`], so that the checker follows the rules
//! the engine enforces; likewise a step's, [`StepStatus::may_become`] (see [`steps()`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use order_core::OrderStatus;
use order_core::backend::TransitionKind;
#[cfg(doc)]
use order_core::step::StepStatus;
use serde_json::Value;

use crate::history::{
    Action, FailureSnapshot, History, ListPage, Micros, Op, OrderFields, Reply, Snapshot,
    StepSnapshot,
};

mod retries;
mod steps;
#[cfg(test)]
mod tests;

pub use retries::retries;
pub use steps::{cancel_requests, steps};

/// Which promise a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// One idempotency key led to two orders.
    DuplicateOrder,
    /// A replay did not answer the first `201` body, byte for byte.
    Replay,
    /// A key was answered against its rule: another order under it not refused with `422`,
    /// or the same order refused.
    KeyReuse,
    /// An acknowledged order went missing, or showed other fields than acknowledged.
    Acknowledged,
    /// Two observations of an order's status that no sequence of transitions connects.
    Transition,
    /// A cancelled order moved on, a `409` named a status the order could not have had, an
    /// order was CANCELLED without a cancel that could have done it, or a cancel accepted
    /// while PROCESSING (`202`) was not carried out: the order did not end CANCELLED with its
    /// finished steps compensated.
    Cancel,
    /// An order's steps went back: a step's status against [`StepStatus::may_become`], its
    /// attempts down, a step run again after its checkpoint was acknowledged, steps reordered
    /// or gone, or steps that the server does not run; or a finished order's steps do not
    /// match its end (a COMPLETED order with a step not SUCCEEDED, a finished one with a step
    /// still RUNNING, a CANCELLED one with a step not compensated).
    Step,
    /// A listing walk repeated, misordered or skipped an order.
    Walk,
    /// An event stream broke the order rules or did not end where the order did.
    Stream,
    /// A FAILED order moved on without a retry that could have done it, a retry's answer
    /// broke its promise (a `200` without the order PENDING, a `409` naming FAILED), an
    /// order's failures were lost or rewritten, or it shows more or fewer failures than the
    /// retries that succeeded: each failure is retried once.
    Retry,
    /// `/metrics` disagreed with a direct count.
    Metrics,
    /// An answer the API never gives to what was asked.
    UnexpectedAnswer,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::DuplicateOrder => "duplicate order",
            Rule::Replay => "replay",
            Rule::KeyReuse => "key reuse",
            Rule::Acknowledged => "acknowledged order",
            Rule::Transition => "status transition",
            Rule::Cancel => "cancel",
            Rule::Retry => "retry",
            Rule::Step => "step",
            Rule::Walk => "listing walk",
            Rule::Stream => "event stream",
            Rule::Metrics => "metrics",
            Rule::UnexpectedAnswer => "unexpected answer",
        })
    }
}

/// A broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The promise.
    pub rule: Rule,
    /// What was seen, in words.
    pub message: String,
    /// The operations involved, by index in [`History::ops`].
    pub ops: Vec<usize>,
    /// When it became visible: the completion of the latest operation involved.
    pub at: Micros,
}

impl Violation {
    fn new(rule: Rule, message: String, ops: &[&Op]) -> Self {
        Self {
            rule,
            message,
            ops: ops.iter().map(|op| op.index).collect(),
            at: ops.iter().map(|op| op.completed).max().unwrap_or(0),
        }
    }
}

/// What a check of a whole history found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations checked.
    pub ops: usize,
    /// `POST /orders` sent.
    pub creates: usize,
    /// Distinct orders acknowledged with a `201`.
    pub acknowledged: usize,
    /// Operations that may or may not have happened (no answer, or a 5xx).
    pub indeterminate: usize,
    /// Faults injected.
    pub faults: usize,
    /// Every violation found, earliest first.
    pub violations: Vec<Violation>,
}

impl Report {
    /// The earliest violation, if any.
    pub fn first(&self) -> Option<&Violation> {
        self.violations.first()
    }

    /// How many violations of each rule.
    pub fn counts(&self) -> BTreeMap<Rule, usize> {
        let mut counts = BTreeMap::new();
        for violation in &self.violations {
            *counts.entry(violation.rule).or_insert(0) += 1;
        }
        counts
    }
}

/// Runs every check over `history`.
pub fn check(history: &History) -> Report {
    let seen = by_order(history);
    let mut violations = Vec::new();
    violations.extend(keys(history));
    violations.extend(acknowledged_in(history, &seen));
    violations.extend(transitions_in(history, &seen));
    violations.extend(cancels_in(history, &seen));
    violations.extend(steps::steps_in(history, &seen));
    violations.extend(steps::cancel_requests_in(history, &seen));
    violations.extend(retries::retries_in(history, &seen));
    for rule in [walks, streams, metrics, unexpected_answers] {
        violations.extend(rule(history));
    }
    violations.sort_by_key(|v| (v.at, v.rule));
    let mut report = Report {
        ops: history.ops.len(),
        faults: history.faults.len(),
        violations,
        ..Report::default()
    };
    let mut acknowledged = BTreeSet::new();
    for op in &history.ops {
        if let Action::Create { reply, .. } = &op.action {
            report.creates += 1;
            if let Some(order) = created(reply) {
                acknowledged.insert(order.id);
            }
        }
        if indeterminate(op) {
            report.indeterminate += 1;
        }
    }
    report.acknowledged = acknowledged.len();
    report
}

/// Whether `op` may or may not have taken effect.
fn indeterminate(op: &Op) -> bool {
    match &op.action {
        Action::Create { reply, .. }
        | Action::Get { reply, .. }
        | Action::Cancel { reply, .. }
        | Action::Retry { reply, .. }
        | Action::Metrics { reply } => reply.is_indeterminate(),
        Action::Walk { pages, .. } => pages.iter().any(|page| page.reply.is_indeterminate()),
        Action::Watch { status, .. } => status.is_none_or(|status| status >= 500),
    }
}

/// The order of a `201`, replayed or not.
fn created(reply: &Reply) -> Option<Snapshot> {
    match reply.decided() {
        Some((201, _)) => reply.order(),
        _ => None,
    }
}

fn replayed(reply: &Reply) -> bool {
    matches!(reply, Reply::Answer { replayed: true, .. })
}

/// Each idempotency key names one order: every `201` under it is that order, only one of
/// them created it, the replays answer its first body byte for byte, and another order sent
/// under the key is refused with `422` while the same one never is.
pub fn keys(history: &History) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<(&Op, &OrderFields, &Reply)>> = BTreeMap::new();
    for op in &history.ops {
        if let Action::Create {
            key: Some(key),
            order,
            reply,
        } = &op.action
        {
            by_key.entry(key).or_default().push((op, order, reply));
        }
    }
    let mut violations = Vec::new();
    for (key, creates) in by_key {
        let mut first_of_id: BTreeMap<i64, &Op> = BTreeMap::new();
        let mut owner = None;
        for (op, _, reply) in &creates {
            if let Some(order) = created(reply) {
                first_of_id.entry(order.id).or_insert(op);
                owner.get_or_insert(order.fields);
            }
        }
        if first_of_id.len() > 1 {
            let ids: Vec<_> = first_of_id.keys().map(i64::to_string).collect();
            let ops: Vec<&Op> = first_of_id.values().copied().collect();
            violations.push(Violation::new(
                Rule::DuplicateOrder,
                format!(
                    "key {key:?} created {} orders: {}",
                    ids.len(),
                    ids.join(", ")
                ),
                &ops,
            ));
            continue;
        }
        let originals: Vec<&Op> = creates
            .iter()
            .filter(|(_, _, reply)| created(reply).is_some() && !replayed(reply))
            .map(|(op, _, _)| *op)
            .collect();
        if originals.len() > 1 {
            violations.push(Violation::new(
                Rule::DuplicateOrder,
                format!(
                    "key {key:?} was answered as new {} times (no Idempotent-Replayed)",
                    originals.len()
                ),
                &originals,
            ));
            continue;
        }
        // The first body: the original's when it was seen, else the earliest replay's.
        let first = creates
            .iter()
            .filter(|(_, _, reply)| created(reply).is_some())
            .min_by_key(|(op, _, reply)| (replayed(reply), op.completed));
        if let Some((first_op, _, first_reply)) = first {
            for (op, _, reply) in &creates {
                if created(reply).is_some() && replayed(reply) {
                    let (Some((_, expected)), Some((_, got))) =
                        (first_reply.decided(), reply.decided())
                    else {
                        continue;
                    };
                    if expected != got {
                        violations.push(Violation::new(
                            Rule::Replay,
                            format!(
                                "replay of key {key:?} answered {got} where the first answer was {expected}"
                            ),
                            &[first_op, op],
                        ));
                    }
                }
            }
        }
        let Some(owner) = owner else { continue };
        for (op, fields, reply) in &creates {
            let same = fields.same_order(&owner);
            match reply.decided() {
                Some((201, _)) if !same => violations.push(Violation::new(
                    Rule::KeyReuse,
                    format!("key {key:?} accepted another order than its own"),
                    &[op],
                )),
                Some((422, body)) if same => violations.push(Violation::new(
                    Rule::KeyReuse,
                    format!("key {key:?} refused the very order it names: {body}"),
                    &[op],
                )),
                Some((status, body)) if !same && status != 422 => {
                    violations.push(Violation::new(
                        Rule::KeyReuse,
                        format!("key {key:?} with another order got {status}, not 422: {body}"),
                        &[op],
                    ));
                }
                _ => {}
            }
        }
    }
    sorted(violations)
}

/// The orders acknowledged with a `201`: each id, the create that first acknowledged it, and
/// the fields it was asked with.
fn acknowledgements(history: &History) -> BTreeMap<i64, (&Op, &OrderFields, Snapshot)> {
    let mut acks = BTreeMap::new();
    for op in &history.ops {
        if let Action::Create { order, reply, .. } = &op.action
            && let Some(snapshot) = created(reply)
        {
            let entry = acks
                .entry(snapshot.id)
                .or_insert((op, order, snapshot.clone()));
            if op.completed < entry.0.completed {
                *entry = (op, order, snapshot);
            }
        }
    }
    acks
}

/// The last complete unfiltered walk made once the system was quiet: the direct count.
fn final_walk(history: &History) -> Option<(&Op, Vec<Snapshot>)> {
    let quiet = history.quiet_since?;
    history
        .ops
        .iter()
        .rev()
        .filter(|op| op.invoked >= quiet)
        .find_map(|op| match &op.action {
            Action::Walk { user: None, pages } => walked(pages).map(|orders| (op, orders)),
            _ => None,
        })
}

/// The orders of a walk that reached its last page, in order; `None` for one cut short.
fn walked(pages: &[crate::history::Page]) -> Option<Vec<Snapshot>> {
    let mut orders = Vec::new();
    let mut last_cursor = Some(String::new());
    for page in pages {
        let page = ListPage::from_reply(&page.reply)?;
        orders.extend(page.orders);
        last_cursor = page.next_cursor;
    }
    last_cursor.is_none().then_some(orders)
}

/// Every acknowledged order exists, exactly once, with the fields it was acknowledged with:
/// the `201` shows the fields sent, every later read shows them, no read after the `201`
/// answers `404`, and the final walk lists it once.
pub fn acknowledged(history: &History) -> Vec<Violation> {
    acknowledged_in(history, &by_order(history))
}

fn acknowledged_in(history: &History, seen: &Sightings) -> Vec<Violation> {
    let acks = acknowledgements(history);
    let mut violations = Vec::new();
    for (id, (op, sent, snapshot)) in &acks {
        if !snapshot.fields.same_order(sent) {
            violations.push(Violation::new(
                Rule::Acknowledged,
                format!("order {id} was acknowledged with other fields than sent"),
                &[op],
            ));
        }
    }
    for (id, observations) in seen {
        let Some((ack, sent, _)) = acks.get(id) else {
            continue;
        };
        let changed = observations
            .iter()
            .find(|seen| seen.fields.as_ref().is_some_and(|f| !f.same_order(sent)));
        if let Some(observation) = changed {
            let op = &history.ops[observation.op];
            violations.push(Violation::new(
                Rule::Acknowledged,
                format!("order {id} shows other fields than acknowledged"),
                &[ack, op],
            ));
        }
    }
    for op in &history.ops {
        let (id, status) = match &op.action {
            Action::Get { id, reply }
            | Action::Cancel { id, reply }
            | Action::Retry { id, reply } => (*id, reply.decided().map(|(status, _)| status)),
            Action::Watch { id, status, .. } => (*id, *status),
            _ => continue,
        };
        if status == Some(404)
            && let Some((ack, _, _)) = acks.get(&id)
            && ack.completed < op.invoked
        {
            violations.push(Violation::new(
                Rule::Acknowledged,
                format!("order {id} was acknowledged, then not found"),
                &[ack, op],
            ));
        }
    }
    if let Some((walk, orders)) = final_walk(history) {
        let mut listed: HashMap<i64, usize> = HashMap::new();
        for order in &orders {
            *listed.entry(order.id).or_insert(0) += 1;
        }
        for (id, (ack, _, _)) in &acks {
            match listed.get(id).copied().unwrap_or(0) {
                1 => {}
                0 => violations.push(Violation::new(
                    Rule::Acknowledged,
                    format!("order {id} was acknowledged but the final listing lacks it"),
                    &[ack, walk],
                )),
                n => violations.push(Violation::new(
                    Rule::Acknowledged,
                    format!("order {id} is listed {n} times in the final listing"),
                    &[ack, walk],
                )),
            }
        }
    }
    sorted(violations)
}

/// One sight of an order's status, and the time within which it held.
#[derive(Debug, Clone)]
struct Observation {
    op: usize,
    /// The status held at some instant in `from..=to`.
    from: Micros,
    to: Micros,
    status: OrderStatus,
    /// `None` when the answer did not show it (a `409`).
    attempts: Option<u64>,
    fields: Option<OrderFields>,
    /// `None` when the answer did not show them (a `409`).
    steps: Option<Vec<StepSnapshot>>,
    /// Whether `cancelRequestedAt` was set; `None` when the answer did not show it (a `409`).
    cancel_requested: Option<bool>,
    /// Its earlier failures; `None` when the answer did not show them (a `409`).
    failures: Option<Vec<FailureSnapshot>>,
}

impl Observation {
    fn of(op: &Op, from: Micros, to: Micros, order: Snapshot) -> (i64, Self) {
        (
            order.id,
            Self {
                op: op.index,
                from,
                to,
                status: order.status,
                attempts: Some(order.attempts),
                fields: Some(order.fields),
                steps: Some(order.steps),
                cancel_requested: Some(order.cancel_requested_at.is_some()),
                failures: Some(order.failures),
            },
        )
    }

    /// A sight of only a status, as a `409` names it.
    fn named(op: &Op, status: OrderStatus) -> Self {
        Self {
            op: op.index,
            from: op.invoked,
            to: op.completed,
            status,
            attempts: None,
            fields: None,
            steps: None,
            cancel_requested: None,
            failures: None,
        }
    }

    /// How many times the order had been retried, when the answer showed it.
    fn retries(&self) -> Option<usize> {
        self.failures.as_ref().map(Vec::len)
    }
}

/// The status named by a `409` to a cancel: "order 7 is PROCESSING and can no longer ...".
pub fn named_status(body: &str) -> Option<OrderStatus> {
    let value: Value = serde_json::from_str(body).ok()?;
    let message = value.get("error")?.as_str()?;
    message
        .split(|c: char| !c.is_ascii_alphabetic())
        .find_map(|word| {
            OrderStatus::ALL
                .into_iter()
                .find(|status| status.as_str() == word)
        })
}

/// Every sight of every order's status in `history`, by order id.
fn observations(history: &History) -> Vec<(i64, Observation)> {
    let mut seen = Vec::new();
    for op in &history.ops {
        match &op.action {
            // A replay answers the order as first created, not as it is now.
            Action::Create { reply, .. } if !replayed(reply) => {
                if let Some(order) = created(reply) {
                    seen.push(Observation::of(op, op.invoked, op.completed, order));
                }
            }
            Action::Get { reply, .. } => {
                if let Some(order) = reply.order() {
                    seen.push(Observation::of(op, op.invoked, op.completed, order));
                }
            }
            Action::Cancel { id, reply } => match reply.decided() {
                Some((200, _)) => {
                    if let Some(order) = reply.order() {
                        // A cancel that succeeded saw the order PENDING, then made it
                        // CANCELLED, both within the request.
                        let (id, mut before) =
                            Observation::of(op, op.invoked, op.completed, order.clone());
                        before.status = OrderStatus::Pending;
                        seen.push((id, before));
                        seen.push(Observation::of(op, op.invoked, op.completed, order));
                    }
                }
                // A cancel accepted while PROCESSING answers the order as it left it.
                Some((202, _)) => {
                    if let Some(order) = reply.order() {
                        seen.push(Observation::of(op, op.invoked, op.completed, order));
                    }
                }
                Some((409, body)) => {
                    if let Some(status) = named_status(body) {
                        seen.push((*id, Observation::named(op, status)));
                    }
                }
                _ => {}
            },
            Action::Retry { id, reply } => match reply.decided() {
                Some((200, _)) => {
                    if let Some(order) = reply.order() {
                        // A retry that succeeded saw the order FAILED, with one failure fewer
                        // than it answers, then made it PENDING, both within the request.
                        let (id, mut before) =
                            Observation::of(op, op.invoked, op.completed, order.clone());
                        before.status = OrderStatus::Failed;
                        before.steps = None;
                        if let Some(failures) = &mut before.failures {
                            failures.pop();
                        }
                        seen.push((id, before));
                        seen.push(Observation::of(op, op.invoked, op.completed, order));
                    }
                }
                Some((409, body)) => {
                    if let Some(status) = named_status(body) {
                        seen.push((*id, Observation::named(op, status)));
                    }
                }
                _ => {}
            },
            Action::Walk { pages, .. } => {
                for page in pages {
                    if let Some(list) = ListPage::from_reply(&page.reply) {
                        for order in list.orders {
                            seen.push(Observation::of(op, page.invoked, page.completed, order));
                        }
                    }
                }
            }
            Action::Watch { events, .. } => {
                for event in events {
                    if let Some(order) = event_order(&event.data) {
                        seen.push(Observation::of(op, op.invoked, event.received, order));
                    }
                }
            }
            Action::Create { .. } | Action::Metrics { .. } => {}
        }
    }
    seen
}

fn event_order(data: &str) -> Option<Snapshot> {
    Snapshot::from_body(data)
}

/// Every sight of every order, by order id.
type Sightings = BTreeMap<i64, Vec<Observation>>;

fn by_order(history: &History) -> Sightings {
    let mut orders: Sightings = BTreeMap::new();
    for (id, observation) in observations(history) {
        orders.entry(id).or_default().push(observation);
    }
    orders
}

/// Whenever one sight of an order ended before another began, the engine's transitions lead
/// from the first status to the second ([`OrderStatus::may_reach`]). One violation per order:
/// the earliest.
pub fn transitions(history: &History) -> Vec<Violation> {
    transitions_in(history, &by_order(history))
}

/// [`OrderStatus::may_reach`] as a table, asked once per pair of statuses rather than once
/// per pair of sights.
struct Reach([[bool; 5]; 5]);

impl Reach {
    fn new() -> Self {
        let mut table = [[false; 5]; 5];
        for (from, row) in OrderStatus::ALL.into_iter().zip(table.iter_mut()) {
            for (to, cell) in OrderStatus::ALL.into_iter().zip(row.iter_mut()) {
                *cell = from.may_reach(to);
            }
        }
        Self(table)
    }

    fn allows(&self, from: OrderStatus, to: OrderStatus) -> bool {
        self.0[index(from)][index(to)]
    }
}

fn index(status: OrderStatus) -> usize {
    OrderStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

fn transitions_in(history: &History, seen: &Sightings) -> Vec<Violation> {
    let reach = Reach::new();
    let mut violations = Vec::new();
    for (id, observations) in seen {
        // Sweep the sights by start; those that ended before the current one started are a
        // prefix of the sights sorted by end, and of them only the first sight of each status
        // matters: the status is what may or may not reach the later one.
        let mut by_end: Vec<&Observation> = observations.iter().collect();
        by_end.sort_by_key(|o| o.to);
        let mut by_start: Vec<&Observation> = observations.iter().collect();
        by_start.sort_by_key(|o| (o.from, o.to));
        let mut first_of_status: [Option<&Observation>; 5] = [None; 5];
        let mut ended = 0;
        let mut found = None;
        for later in by_start {
            while let Some(earlier) = by_end.get(ended).filter(|o| o.to < later.from) {
                first_of_status[index(earlier.status)].get_or_insert(earlier);
                ended += 1;
            }
            let breaking = first_of_status
                .iter()
                .flatten()
                .find(|earlier| !reach.allows(earlier.status, later.status));
            if let Some(earlier) = breaking {
                found = Some((*earlier, later));
                break;
            }
        }
        if let Some((a, b)) = found {
            let (first, second) = (&history.ops[a.op], &history.ops[b.op]);
            violations.push(Violation::new(
                Rule::Transition,
                format!(
                    "order {id} was seen {}, then {}: no transition leads there",
                    a.status, b.status
                ),
                &[first, second],
            ));
        }
    }
    sorted(violations)
}

/// A `200` to a cancel: it shows the order CANCELLED, and the order stays so with the
/// attempts it had, so no worker started it after. A `409`: it names a status the cancel does
/// not leave from (the other sights of the order are held to it by [`transitions`]). A `202`
/// is held to its promise by [`cancel_requests`].
pub fn cancels(history: &History) -> Vec<Violation> {
    cancels_in(history, &by_order(history))
}

fn cancels_in(history: &History, orders: &Sightings) -> Vec<Violation> {
    let mut violations = Vec::new();
    for op in &history.ops {
        let Action::Cancel { id, reply } = &op.action else {
            continue;
        };
        match reply.decided() {
            Some((200, _)) => {
                let Some(cancelled) = reply.order() else {
                    violations.push(Violation::new(
                        Rule::Cancel,
                        format!("cancel of order {id} answered 200 without the order"),
                        &[op],
                    ));
                    continue;
                };
                if cancelled.status != OrderStatus::Cancelled {
                    violations.push(Violation::new(
                        Rule::Cancel,
                        format!(
                            "cancel of order {id} answered 200 with the order {}, not CANCELLED",
                            cancelled.status
                        ),
                        &[op],
                    ));
                    continue;
                }
                let later = orders
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter(|seen| seen.from > op.completed)
                    .find(|seen| {
                        seen.status != OrderStatus::Cancelled
                            || seen.attempts.is_some_and(|a| a != cancelled.attempts)
                    });
                if let Some(seen) = later {
                    violations.push(Violation::new(
                        Rule::Cancel,
                        format!(
                            "order {id} was cancelled with {} attempts, then seen {} with {:?}",
                            cancelled.attempts, seen.status, seen.attempts
                        ),
                        &[op, &history.ops[seen.op]],
                    ));
                }
            }
            Some((409, body)) => match named_status(body) {
                None => violations.push(Violation::new(
                    Rule::Cancel,
                    format!("409 to a cancel of order {id} names no status: {body}"),
                    &[op],
                )),
                Some(status) if TransitionKind::Cancel.leaves_from().contains(&status) => {
                    violations.push(Violation::new(
                        Rule::Cancel,
                        format!("409 to a cancel of order {id} names {status}, which cancels"),
                        &[op],
                    ));
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
    sorted(violations)
}

/// A walk from the first page to the last, following `nextCursor`, lists orders newest first
/// without repeating one, only the user's when filtered, and every order acknowledged before
/// it began.
pub fn walks(history: &History) -> Vec<Violation> {
    let acks = acknowledgements(history);
    let mut violations = Vec::new();
    for op in &history.ops {
        let Action::Walk { user, pages } = &op.action else {
            continue;
        };
        let Some(orders) = walked(pages) else {
            continue;
        };
        let began = pages.first().map_or(op.invoked, |page| page.invoked);
        let mut previous: Option<i64> = None;
        let mut listed = BTreeSet::new();
        let mut broken = None;
        for order in &orders {
            if !listed.insert(order.id) {
                broken = Some(format!("the walk repeats order {}", order.id));
            } else if previous.is_some_and(|p| p <= order.id) {
                broken = Some(format!(
                    "the walk lists order {} after {}, not newest first",
                    order.id,
                    previous.unwrap_or_default()
                ));
            } else if let Some(user) = user
                && &order.fields.user_id != user
            {
                broken = Some(format!(
                    "the walk for {user:?} lists order {} of {:?}",
                    order.id, order.fields.user_id
                ));
            }
            if broken.is_some() {
                break;
            }
            previous = Some(order.id);
        }
        if let Some(message) = broken {
            violations.push(Violation::new(Rule::Walk, message, &[op]));
            continue;
        }
        let skipped = acks.iter().find(|(id, (ack, sent, _))| {
            ack.completed < began
                && user.as_ref().is_none_or(|user| &sent.user_id == user)
                && !listed.contains(id)
        });
        if let Some((id, (ack, _, _))) = skipped {
            violations.push(Violation::new(
                Rule::Walk,
                format!(
                    "the walk{} skips order {id}, acknowledged before it began",
                    user.as_ref()
                        .map(|u| format!(" for {u:?}"))
                        .unwrap_or_default()
                ),
                &[ack, op],
            ));
        }
    }
    sorted(violations)
}

/// An event stream's statuses follow one another as the engine's transitions allow; one the
/// server ended, ends at a terminal status, the one the order has once all is quiet (unless
/// it ended FAILED and the order was retried since: it shows more failures at the end).
pub fn streams(history: &History) -> Vec<Violation> {
    let last = final_walk(history).map(|(walk, orders)| {
        let statuses: HashMap<i64, (OrderStatus, usize)> = orders
            .iter()
            .map(|order| (order.id, (order.status, order.failures.len())))
            .collect();
        (walk, statuses)
    });
    let mut violations = Vec::new();
    for op in &history.ops {
        let Action::Watch {
            id,
            status: Some(200),
            events,
            ended,
        } = &op.action
        else {
            continue;
        };
        let orders: Vec<Snapshot> = events
            .iter()
            .filter_map(|event| event_order(&event.data))
            .collect();
        let statuses: Vec<OrderStatus> = orders.iter().map(|order| order.status).collect();
        let retries = orders.last().map_or(0, |order| order.failures.len());
        if statuses.len() != events.len() {
            violations.push(Violation::new(
                Rule::Stream,
                format!("the stream of order {id} sent an event that is not an order"),
                &[op],
            ));
            continue;
        }
        if let Some(pair) = statuses.windows(2).find(|w| !w[0].may_reach(w[1])) {
            violations.push(Violation::new(
                Rule::Stream,
                format!(
                    "the stream of order {id} went from {} to {}",
                    pair[0], pair[1]
                ),
                &[op],
            ));
            continue;
        }
        if !ended {
            continue;
        }
        match statuses.last() {
            Some(status) if !status.is_terminal() => violations.push(Violation::new(
                Rule::Stream,
                format!("the stream of order {id} ended at {status}, not a terminal status"),
                &[op],
            )),
            None => violations.push(Violation::new(
                Rule::Stream,
                format!("the stream of order {id} ended without an event"),
                &[op],
            )),
            Some(status) => {
                if let Some((walk, finals)) = &last
                    && let Some((now, retried)) = finals.get(id)
                    && now != status
                    && !(*status == OrderStatus::Failed && *retried > retries)
                {
                    violations.push(Violation::new(
                        Rule::Stream,
                        format!("the stream of order {id} ended at {status}, but it is {now}"),
                        &[op, walk],
                    ));
                }
            }
        }
    }
    sorted(violations)
}

/// Every `/metrics` adds up (its statuses sum to `totalOrders`); once quiet, its counts equal
/// a direct count of the final walk, and of the database when it was counted.
pub fn metrics(history: &History) -> Vec<Violation> {
    // Counts by status, in the order of `OrderStatus::ALL`.
    let counts = |op: &Op| -> Option<(u64, Vec<u64>)> {
        let Action::Metrics { reply } = &op.action else {
            return None;
        };
        let (200, body) = reply.decided()? else {
            return None;
        };
        let value: Value = serde_json::from_str(body).ok()?;
        let total = value.get("totalOrders")?.as_u64()?;
        let statuses = value.get("statuses")?;
        let by_status = OrderStatus::ALL
            .into_iter()
            .map(|status| {
                let key = status.as_str().to_ascii_lowercase();
                statuses.get(&key)?.as_u64()
            })
            .collect::<Option<_>>()?;
        Some((total, by_status))
    };
    let direct = final_walk(history).map(|(walk, orders)| {
        let by_status: Vec<u64> = OrderStatus::ALL
            .into_iter()
            .map(|status| orders.iter().filter(|o| o.status == status).count() as u64)
            .collect();
        (walk, orders.len() as u64, by_status)
    });
    let in_database = history.database_counts.as_ref().map(|counts| {
        let by_status: Vec<u64> = OrderStatus::ALL
            .into_iter()
            .map(|status| counts.get(status.as_str()).copied().unwrap_or(0))
            .collect();
        (counts.values().sum::<u64>(), by_status)
    });
    let mut violations = Vec::new();
    for op in &history.ops {
        if !matches!(op.action, Action::Metrics { .. }) {
            continue;
        }
        let Some((total, by_status)) = counts(op) else {
            if matches!(&op.action, Action::Metrics { reply } if reply.decided().is_some()) {
                violations.push(Violation::new(
                    Rule::Metrics,
                    "a /metrics answer without its counts".to_owned(),
                    &[op],
                ));
            }
            continue;
        };
        let sum: u64 = by_status.iter().sum();
        if sum != total {
            violations.push(Violation::new(
                Rule::Metrics,
                format!("/metrics statuses add up to {sum}, totalOrders is {total}"),
                &[op],
            ));
            continue;
        }
        let quiet = history.quiet_since.is_some_and(|quiet| op.invoked >= quiet);
        if let (true, Some((walk, direct_total, direct_by_status))) = (quiet, &direct)
            && (total != *direct_total || &by_status != direct_by_status)
        {
            violations.push(Violation::new(
                Rule::Metrics,
                format!(
                    "once quiet, /metrics counts {total} orders {by_status:?} (by status, \
                     PENDING first); the final listing has {direct_total} {direct_by_status:?}"
                ),
                &[walk, op],
            ));
        }
        if let (true, Some((db_total, db_by_status))) = (quiet, &in_database)
            && (total != *db_total || &by_status != db_by_status)
        {
            violations.push(Violation::new(
                Rule::Metrics,
                format!(
                    "once quiet, /metrics counts {total} orders {by_status:?} (by status, \
                     PENDING first); the database holds {db_total} {db_by_status:?}"
                ),
                &[op],
            ));
        }
    }
    sorted(violations)
}

/// Answers outside what each route may answer to the requests the clients make (a 5xx is
/// always possible, and never counted).
pub fn unexpected_answers(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for op in &history.ops {
        let unexpected = match &op.action {
            Action::Create { key, reply, .. } => reply
                .decided()
                .filter(|(status, _)| *status != 201 && !(key.is_some() && *status == 422)),
            Action::Get { reply, .. } => reply
                .decided()
                .filter(|(status, _)| ![200, 404].contains(status)),
            // A 202 only from a server that runs steps, which can cancel a PROCESSING order.
            Action::Retry { reply, .. } => reply
                .decided()
                .filter(|(status, _)| ![200, 404, 409].contains(status)),
            Action::Cancel { reply, .. } => reply.decided().filter(|(status, _)| {
                let accepted = if history.pipeline.is_some() {
                    &[200, 202, 404, 409][..]
                } else {
                    &[200, 404, 409]
                };
                !accepted.contains(status)
            }),
            Action::Walk { pages, .. } => pages
                .iter()
                .filter_map(|page| page.reply.decided())
                .find(|(status, _)| *status != 200),
            Action::Metrics { reply } => reply.decided().filter(|(status, _)| *status != 200),
            Action::Watch { status, .. } => status
                .filter(|status| ![200, 404].contains(status) && *status < 500)
                .map(|status| (status, "")),
        };
        if let Some((status, body)) = unexpected {
            violations.push(Violation::new(
                Rule::UnexpectedAnswer,
                format!("answered {status}: {body}"),
                &[op],
            ));
        }
    }
    sorted(violations)
}

fn sorted(mut violations: Vec<Violation>) -> Vec<Violation> {
    violations.sort_by_key(|v| v.at);
    violations
}
