//! Retries of FAILED orders: an order leaves FAILED only through a retry that may have done
//! it, each failure is retried once, and what an order says of its earlier failures is kept.
//!
//! [`OrderStatus::may_reach`] lets a FAILED order reach any status, since a retry puts it back
//! to PENDING; what keeps a worker from doing the same is checked here: every retry appends
//! the failure it retried to the order's `failures`, so two sights of an order whose
//! `failures` are as long were taken in one run of it, and within one run nothing leaves
//! FAILED.

use std::collections::BTreeMap;

use order_core::OrderStatus;

use super::{Observation, Rule, Sightings, Violation, by_order, final_walk, named_status, sorted};
use crate::history::{Action, History, Op};

/// The rules of retries, over every order:
///
/// - a `200` to a retry shows the order PENDING, its failures one more than the sights before
///   it; a `409` names a status other than FAILED;
/// - whenever one sight of an order ended before another began, the first's failures are the
///   start of the second's, and a FAILED sight is followed only by FAILED sights or by sights
///   with more failures (a retry, not a worker, moved it on);
/// - a sight with `n` failures follows `n` retries of the order, invoked before it ended, that
///   were answered `200` or not answered;
/// - the final listing shows each order with no fewer failures than the retries answered
///   `200`, and no more than those and the unanswered ones: each failure was retried once.
///
/// One violation per order and kind: the earliest.
pub fn retries(history: &History) -> Vec<Violation> {
    retries_in(history, &by_order(history))
}

pub(super) fn retries_in(history: &History, seen: &Sightings) -> Vec<Violation> {
    let mut retries: BTreeMap<i64, Vec<&Op>> = BTreeMap::new();
    let mut violations = Vec::new();
    for op in &history.ops {
        let Action::Retry { id, reply } = &op.action else {
            continue;
        };
        retries.entry(*id).or_default().push(op);
        let problem = match reply.decided() {
            Some((200, body)) => match reply.order() {
                None => Some(format!("answered 200 without the order: {body}")),
                Some(order) if order.status != OrderStatus::Pending => {
                    Some(format!("answered 200 with the order {}", order.status))
                }
                Some(order) if order.failures.is_empty() => {
                    Some("answered 200 with no failure kept".to_owned())
                }
                Some(_) => None,
            },
            Some((409, body)) => match named_status(body) {
                None => Some(format!("answered 409 naming no status: {body}")),
                Some(OrderStatus::Failed) => Some("answered 409 naming FAILED".to_owned()),
                Some(_) => None,
            },
            _ => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(
                Rule::Retry,
                format!("retry of order {id} {problem}"),
                &[op],
            ));
        }
    }
    for (id, sights) in seen {
        let retries = retries.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut sights: Vec<&Observation> = sights
            .iter()
            .filter(|seen| seen.failures.is_some())
            .collect();
        sights.sort_by_key(|seen| (seen.to, seen.from));
        violations.extend(over_time(history, *id, &sights));
        violations.extend(unexplained(history, *id, retries, &sights));
    }
    violations.extend(once_each(history, &retries));
    sorted(violations)
}

fn failures_of(seen: &Observation) -> &[crate::history::FailureSnapshot] {
    seen.failures.as_deref().unwrap_or_default()
}

/// The earliest pair of sights, one ended before the other began, between which failures
/// were lost or rewritten, or the order left FAILED without a retry.
fn over_time(history: &History, id: i64, sights: &[&Observation]) -> Option<Violation> {
    let mut by_start = sights.to_vec();
    by_start.sort_by_key(|seen| (seen.from, seen.to));
    for later in by_start {
        let now = failures_of(later);
        // `sights` is sorted by end: those that ended before `later` began are a prefix.
        for earlier in sights.iter().take_while(|seen| seen.to < later.from) {
            let before = failures_of(earlier);
            let problem = if !now.starts_with(before) {
                Some(format!(
                    "showed {} failures, then {} that do not start with them",
                    before.len(),
                    now.len()
                ))
            } else if earlier.status == OrderStatus::Failed
                && later.status != OrderStatus::Failed
                && now.len() == before.len()
            {
                Some(format!(
                    "was seen FAILED, then {} with no new failure kept: it left FAILED \
                     without a retry",
                    later.status
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Some(Violation::new(
                    Rule::Retry,
                    format!("order {id} {problem}"),
                    &[&history.ops[earlier.op], &history.ops[later.op]],
                ));
            }
        }
    }
    None
}

/// Whether `op` may have retried its order: answered `200`, or not answered.
fn may_have_retried(op: &Op) -> bool {
    match &op.action {
        Action::Retry { reply, .. } => matches!(reply.decided(), None | Some((200, _))),
        _ => false,
    }
}

/// The earliest sight that shows more failures than retries before it could have made.
fn unexplained(
    history: &History,
    id: i64,
    retries: &[&Op],
    sights: &[&Observation],
) -> Option<Violation> {
    sights.iter().find_map(|seen| {
        let shown = failures_of(seen).len();
        let possible = retries
            .iter()
            .filter(|op| op.invoked < seen.to && may_have_retried(op))
            .count();
        (shown > possible).then(|| {
            Violation::new(
                Rule::Retry,
                format!(
                    "order {id} shows {shown} failures, after {possible} retries that may \
                     have made them"
                ),
                &[&history.ops[seen.op]],
            )
        })
    })
}

/// Each order of the final listing shows as many failures as the retries of it that were
/// answered `200`, or more by at most those not answered.
fn once_each(history: &History, retries: &BTreeMap<i64, Vec<&Op>>) -> Vec<Violation> {
    let Some((walk, orders)) = final_walk(history) else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    for order in orders {
        let ops = retries
            .get(&order.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let answered = ops
            .iter()
            .filter(|op| matches!(&op.action, Action::Retry { reply, .. } if matches!(reply.decided(), Some((200, _)))))
            .count();
        let unanswered = ops
            .iter()
            .filter(
                |op| matches!(&op.action, Action::Retry { reply, .. } if reply.decided().is_none()),
            )
            .count();
        let kept = order.failures.len();
        if kept < answered || kept > answered + unanswered {
            let mut involved: Vec<&Op> = ops.to_vec();
            involved.push(walk);
            violations.push(Violation::new(
                Rule::Retry,
                format!(
                    "order {} ends with {kept} failures after {answered} retries answered 200 \
                     and {unanswered} unanswered",
                    order.id
                ),
                &involved,
            ));
        }
    }
    violations
}
