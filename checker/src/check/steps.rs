//! Orders processed in steps: each step's record only moves forward, and a cancel accepted
//! while an order is PROCESSING (`202`) is carried out.
//!
//! A step's record is the checkpoint a worker stores under its claim: once a client has seen a
//! step SUCCEEDED, a worker that takes the order over resumes after it and never runs it
//! again, and every later sight shows it SUCCEEDED, or on its way to COMPENSATED. How a step's
//! status may change is asked of the engine ([`StepStatus::may_become`], chained: a client
//! may miss any number of writes between two sights), and which steps are left to undo
//! ([`StepStatus::needs_undo`]).

use std::collections::BTreeMap;

use order_core::OrderStatus;
use order_core::step::StepStatus;

use super::{Observation, Rule, Sightings, Violation, by_order, sorted};
use crate::history::{Action, History, Micros, Op, StepSnapshot};

/// Whenever one sight of an order ended before another began: each step the first shows is in
/// the second, at the same place, in a status the first's leads to, after no fewer attempts;
/// and a step the first shows finished (SUCCEEDED, FAILED, ...) was not run again: it is
/// not RUNNING or RETRYING, nor after more attempts. Each sight by itself: its steps are the
/// server's, in the server's order (none from a plain handler); a COMPLETED order shows them
/// all SUCCEEDED; a finished order has no step still being tried, and a CANCELLED or FAILED
/// one none left to undo (the server's simulated steps can all be compensated). One
/// violation per order and kind: the earliest.
pub fn steps(history: &History) -> Vec<Violation> {
    steps_in(history, &by_order(history))
}

pub(super) fn steps_in(history: &History, seen: &Sightings) -> Vec<Violation> {
    let reach = StepReach::new();
    let mut violations = Vec::new();
    for (id, observations) in seen {
        // Each run of the order apart: a retry after it FAILED runs its steps again, as new
        // records, and every sight says which run it saw by the failures it shows.
        let mut runs: BTreeMap<usize, Vec<&Observation>> = BTreeMap::new();
        for seen in observations.iter().filter(|seen| seen.steps.is_some()) {
            runs.entry(seen.retries().unwrap_or(0))
                .or_default()
                .push(seen);
        }
        for sights in runs.values() {
            violations.extend(shown(history, *id, sights));
            violations.extend(over_time(history, &reach, *id, sights));
        }
    }
    sorted(violations)
}

/// [`StepStatus::may_become`] chained, as a table: whether a step seen in one status may be
/// seen in another later, whatever writes came between.
struct StepReach([[bool; 6]; 6]);

impl StepReach {
    fn new() -> Self {
        let mut table = [[false; 6]; 6];
        for (from, row) in StepStatus::ALL.into_iter().zip(table.iter_mut()) {
            for (to, cell) in StepStatus::ALL.into_iter().zip(row.iter_mut()) {
                *cell = from.may_become(to);
            }
        }
        // Warshall's closure: through `via`, in any number of writes.
        for via in 0..table.len() {
            for from in 0..table.len() {
                for to in 0..table.len() {
                    table[from][to] |= table[from][via] && table[via][to];
                }
            }
        }
        Self(table)
    }

    fn allows(&self, from: StepStatus, to: StepStatus) -> bool {
        self.0[step_index(from)][step_index(to)]
    }
}

fn step_index(status: StepStatus) -> usize {
    StepStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

/// Whether a step in `status` may still be run: it is being tried, not finished.
fn may_run(status: StepStatus) -> bool {
    status.may_become(StepStatus::Running)
}

fn steps_of(seen: &Observation) -> &[StepSnapshot] {
    seen.steps.as_deref().unwrap_or_default()
}

fn names(steps: &[StepSnapshot]) -> String {
    let names: Vec<&str> = steps.iter().map(|step| step.name.as_str()).collect();
    names.join(",")
}

/// The earliest sight of the order whose steps, by themselves, break a rule.
fn shown(history: &History, id: i64, sights: &[&Observation]) -> Option<Violation> {
    let mut sights = sights.to_vec();
    sights.sort_by_key(|seen| seen.to);
    sights.into_iter().find_map(|seen| {
        let problem = problem_in(history.pipeline.as_deref(), seen.status, steps_of(seen))?;
        Some(Violation::new(
            Rule::Step,
            format!("order {id} {problem}"),
            &[&history.ops[seen.op]],
        ))
    })
}

fn problem_in(
    pipeline: Option<&[String]>,
    status: OrderStatus,
    steps: &[StepSnapshot],
) -> Option<String> {
    match pipeline {
        None if !steps.is_empty() => {
            return Some(format!(
                "shows steps {}, but the server runs a plain handler",
                names(steps)
            ));
        }
        Some(pipeline)
            if steps.len() > pipeline.len()
                || steps
                    .iter()
                    .zip(pipeline)
                    .any(|(step, name)| step.name != *name) =>
        {
            return Some(format!(
                "shows steps {}, but the server runs {}",
                names(steps),
                pipeline.join(",")
            ));
        }
        _ => {}
    }
    if status == OrderStatus::Completed {
        if let Some(step) = steps.iter().find(|s| s.status != StepStatus::Succeeded) {
            return Some(format!(
                "is COMPLETED with step {} {}",
                step.name, step.status
            ));
        }
        if let Some(pipeline) = pipeline
            && steps.len() != pipeline.len()
        {
            return Some(format!(
                "is COMPLETED after {} of its {} steps",
                steps.len(),
                pipeline.len()
            ));
        }
    }
    if status.is_terminal() {
        if let Some(step) = steps.iter().find(|s| may_run(s.status)) {
            return Some(format!(
                "is {status} with step {} still {}",
                step.name, step.status
            ));
        }
        // A cancel is accepted only while every finished step can be compensated, and a
        // failure compensates them too; the server's steps all can be.
        if status != OrderStatus::Completed
            && let Some(step) = steps.iter().find(|s| s.status.needs_undo())
        {
            return Some(format!(
                "is {status} with step {} still {}: never compensated",
                step.name, step.status
            ));
        }
    }
    None
}

/// What the sights that ended before the one at hand showed of one step's place.
struct Position<'a> {
    /// Each name shown there, with a sight that showed it.
    names: Vec<(&'a str, &'a Observation)>,
    /// The first sight of each status, by [`step_index`].
    first_of_status: [Option<&'a Observation>; 6],
    /// The most attempts shown, and a sight that showed them.
    most_attempts: (u32, &'a Observation),
    /// A sight of the step finished, with its status and attempts: it is never run again.
    finished: Option<(StepStatus, u32, &'a Observation)>,
}

/// The earliest pair of sights of the order, one ended before the other began, between which
/// a step went back.
fn over_time(
    history: &History,
    reach: &StepReach,
    id: i64,
    sights: &[&Observation],
) -> Option<Violation> {
    // Sweep the sights by start, as the status check does: those that ended before the
    // current one began are a prefix of the sights sorted by end, summed up step by step.
    let mut by_end = sights.to_vec();
    by_end.sort_by_key(|seen| seen.to);
    let mut by_start = sights.to_vec();
    by_start.sort_by_key(|seen| (seen.from, seen.to));
    let mut known: Vec<Position<'_>> = Vec::new();
    let mut longest: Option<&Observation> = None;
    let mut ended = 0;
    for later in by_start {
        while let Some(earlier) = by_end.get(ended).filter(|seen| seen.to < later.from) {
            learn(&mut known, &mut longest, earlier);
            ended += 1;
        }
        if let Some((earlier, problem)) = went_back(reach, &known, longest, later) {
            return Some(Violation::new(
                Rule::Step,
                format!("order {id}: {problem}"),
                &[&history.ops[earlier.op], &history.ops[later.op]],
            ));
        }
    }
    None
}

fn learn<'a>(
    known: &mut Vec<Position<'a>>,
    longest: &mut Option<&'a Observation>,
    earlier: &'a Observation,
) {
    let steps = steps_of(earlier);
    if longest.is_none_or(|seen| steps_of(seen).len() < steps.len()) {
        *longest = Some(earlier);
    }
    for (i, step) in steps.iter().enumerate() {
        if i == known.len() {
            known.push(Position {
                names: vec![(&step.name, earlier)],
                first_of_status: [None; 6],
                most_attempts: (step.attempts, earlier),
                finished: None,
            });
        }
        let position = &mut known[i];
        if !position.names.iter().any(|(name, _)| *name == step.name) {
            position.names.push((&step.name, earlier));
        }
        position.first_of_status[step_index(step.status)].get_or_insert(earlier);
        if step.attempts > position.most_attempts.0 {
            position.most_attempts = (step.attempts, earlier);
        }
        if position.finished.is_none() && !may_run(step.status) {
            position.finished = Some((step.status, step.attempts, earlier));
        }
    }
}

/// How `later`'s steps contradict what the sights before it showed, and one of those.
fn went_back<'a>(
    reach: &StepReach,
    known: &[Position<'a>],
    longest: Option<&'a Observation>,
    later: &Observation,
) -> Option<(&'a Observation, String)> {
    let now = steps_of(later);
    if let Some(longest) = longest
        && let Some(gone) = steps_of(longest).get(now.len())
    {
        return Some((
            longest,
            format!(
                "step {} was seen, then gone: {} steps ({}), then {} ({})",
                gone.name,
                steps_of(longest).len(),
                names(steps_of(longest)),
                now.len(),
                names(now)
            ),
        ));
    }
    for (i, (position, step)) in known.iter().zip(now).enumerate() {
        if let Some((name, earlier)) = position.names.iter().find(|(name, _)| *name != step.name) {
            return Some((
                earlier,
                format!("step {} was {name}, then {}", i + 1, step.name),
            ));
        }
        if let Some((status, attempts, earlier)) = position.finished
            && (may_run(step.status) || step.attempts > attempts)
        {
            return Some((
                earlier,
                format!(
                    "step {} was seen {status} after {attempts} attempts, then {} after {}: \
                     run again after its outcome was stored",
                    step.name, step.status, step.attempts
                ),
            ));
        }
        let backwards = position
            .first_of_status
            .iter()
            .flatten()
            .find(|earlier| !reach.allows(steps_of(earlier)[i].status, step.status));
        if let Some(earlier) = backwards {
            return Some((
                earlier,
                format!(
                    "step {} was seen {}, then {}: a step's status only moves forward",
                    step.name,
                    steps_of(earlier)[i].status,
                    step.status
                ),
            ));
        }
        let (most, earlier) = position.most_attempts;
        if step.attempts < most {
            return Some((
                earlier,
                format!(
                    "step {} was seen after {most} attempts, then after {}",
                    step.name, step.attempts
                ),
            ));
        }
    }
    None
}

/// A cancel's answer: the status of a decided one, `None` for one that may or may not have
/// taken effect.
fn answered(op: &Op) -> Option<u16> {
    match &op.action {
        Action::Cancel { reply, .. } => reply.decided().map(|(status, _)| status),
        _ => None,
    }
}

/// Whether the cancel `op` may have recorded a cancel request: answered `202`, or undecided.
fn may_request(op: &Op) -> bool {
    matches!(answered(op), None | Some(202))
}

/// A cancel accepted while the order was PROCESSING is carried out, and an order is cancelled
/// only by a cancel:
///
/// - a `202` shows the order PROCESSING with `cancelRequestedAt` set;
/// - after a `202`, every sight shows the request, and the order PROCESSING, or CANCELLED once
///   finished (never COMPLETED nor FAILED), with every step seen SUCCEEDED before COMPENSATED;
/// - a sight with `cancelRequestedAt` set follows a cancel invoked before it completed that
///   may have recorded it (answered `202`, or undecided); a CANCELLED sight, one that may have
///   cancelled it (`200` too);
/// - an order seen PROCESSING, then CANCELLED, was cancelled while PROCESSING (a `202`, or
///   undecided), or went back to PENDING before a `200` cancelled it.
pub fn cancel_requests(history: &History) -> Vec<Violation> {
    cancel_requests_in(history, &by_order(history))
}

pub(super) fn cancel_requests_in(history: &History, seen: &Sightings) -> Vec<Violation> {
    let mut cancels: BTreeMap<i64, Vec<&Op>> = BTreeMap::new();
    let mut violations = Vec::new();
    for op in &history.ops {
        let Action::Cancel { id, reply } = &op.action else {
            continue;
        };
        cancels.entry(*id).or_default().push(op);
        let Some((202, body)) = reply.decided() else {
            continue;
        };
        let problem = match reply.order() {
            None => Some(format!("without the order: {body}")),
            Some(order) if order.status != OrderStatus::Processing => {
                Some(format!("with the order {}, not PROCESSING", order.status))
            }
            Some(order) if order.cancel_requested_at.is_none() => {
                Some("without cancelRequestedAt".to_owned())
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(
                Rule::Cancel,
                format!("cancel of order {id} answered 202 {problem}"),
                &[op],
            ));
        }
    }
    for (id, sights) in seen {
        let cancels = cancels.get(id).map(Vec::as_slice).unwrap_or_default();
        violations.extend(after_acceptance(history, *id, cancels, sights));
        violations.extend(unexplained(history, *id, cancels, sights));
    }
    sorted(violations)
}

/// The earliest sight, after the order's first `202`, that the accepted cancel does not
/// explain.
fn after_acceptance(
    history: &History,
    id: i64,
    cancels: &[&Op],
    sights: &[Observation],
) -> Option<Violation> {
    let accepted = cancels
        .iter()
        .filter(|op| answered(op) == Some(202))
        .min_by_key(|op| op.completed)?;
    // The run of the order the cancel was accepted in: steps of an earlier run, which failed,
    // were compensated then and ran again in this one.
    let run = match &accepted.action {
        Action::Cancel { reply, .. } => reply.order().map(|order| order.failures.len()),
        _ => None,
    };
    let sights: Vec<&Observation> = sights
        .iter()
        .filter(|seen| run.is_none() || seen.retries().is_none() || seen.retries() == run)
        .collect();
    // Each step seen SUCCEEDED, and when that sight ended at the earliest.
    let mut succeeded: BTreeMap<&str, (Micros, &Observation)> = BTreeMap::new();
    for seen in sights.iter().copied() {
        for step in steps_of(seen) {
            if step.status == StepStatus::Succeeded {
                let entry = succeeded.entry(&step.name).or_insert((seen.to, seen));
                if seen.to < entry.0 {
                    *entry = (seen.to, seen);
                }
            }
        }
    }
    let mut after: Vec<&Observation> = sights
        .iter()
        .copied()
        .filter(|seen| seen.from > accepted.completed)
        .collect();
    after.sort_by_key(|seen| seen.to);
    after.into_iter().find_map(|seen| {
        let (problem, earlier) = if seen.cancel_requested == Some(false) {
            ("then showed no cancelRequestedAt".to_owned(), None)
        } else if seen.status.is_terminal() && seen.status != OrderStatus::Cancelled {
            (format!("then ended {}", seen.status), None)
        } else if seen.status == OrderStatus::Cancelled
            && let Some(steps) = &seen.steps
            && let Some((name, (_, before))) = succeeded.iter().find(|(name, (to, _))| {
                *to < seen.from
                    && steps
                        .iter()
                        .find(|step| step.name == **name)
                        .is_none_or(|step| step.status != StepStatus::Compensated)
            })
        {
            let now = steps
                .iter()
                .find(|step| step.name == *name)
                .map_or("gone".to_owned(), |step| step.status.to_string());
            (
                format!("then ended CANCELLED with step {name}, seen SUCCEEDED before, {now}"),
                Some(*before),
            )
        } else {
            return None;
        };
        let mut ops = vec![*accepted];
        ops.extend(earlier.map(|before| &history.ops[before.op]));
        ops.push(&history.ops[seen.op]);
        Some(Violation::new(
            Rule::Cancel,
            format!("order {id}'s cancel was accepted while PROCESSING (202), {problem}"),
            &ops,
        ))
    })
}

/// The earliest sight of a cancel request or of CANCELLED that no cancel explains.
fn unexplained(
    history: &History,
    id: i64,
    cancels: &[&Op],
    sights: &[Observation],
) -> Option<Violation> {
    let mut sights: Vec<&Observation> = sights.iter().collect();
    sights.sort_by_key(|seen| seen.to);
    // The PROCESSING sights, by end: those that ended before a CANCELLED one began.
    let processing: Vec<&Observation> = sights
        .iter()
        .copied()
        .filter(|seen| seen.status == OrderStatus::Processing)
        .collect();
    let before =
        |to: Micros, may: fn(&Op) -> bool| cancels.iter().any(|op| op.invoked < to && may(op));
    for seen in sights {
        let op = &history.ops[seen.op];
        if seen.cancel_requested == Some(true) && !before(seen.to, may_request) {
            return Some(Violation::new(
                Rule::Cancel,
                format!(
                    "order {id} shows cancelRequestedAt, with no cancel before that was \
                     answered 202 or went unanswered"
                ),
                &[op],
            ));
        }
        if seen.status != OrderStatus::Cancelled {
            continue;
        }
        if !before(seen.to, |op| may_request(op) || answered(op) == Some(200)) {
            return Some(Violation::new(
                Rule::Cancel,
                format!(
                    "order {id} was seen CANCELLED with no cancel before that may have done it"
                ),
                &[op],
            ));
        }
        if before(seen.to, may_request) {
            continue;
        }
        // Only 200s: each says the order was PENDING; one must come after the PROCESSING
        // sight that began last of those that ended before this one.
        let last_processing = processing
            .iter()
            .take_while(|p| p.to < seen.from)
            .max_by_key(|p| p.from);
        if let Some(processing) = last_processing {
            let pending_after = cancels.iter().any(|cancel| {
                answered(cancel) == Some(200)
                    && cancel.invoked < seen.to
                    && cancel.completed > processing.from
            });
            if !pending_after {
                return Some(Violation::new(
                    Rule::Cancel,
                    format!(
                        "order {id} was seen PROCESSING, then CANCELLED, with no cancel \
                         answered 202 or unanswered"
                    ),
                    &[&history.ops[processing.op], op],
                ));
            }
        }
    }
    None
}
