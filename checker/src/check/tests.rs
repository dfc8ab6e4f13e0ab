//! Hand-built histories, a clean one and a broken one for each rule.

use serde_json::json;

use super::*;
use crate::history::{Page, StreamEvent};

fn fields(user: &str) -> OrderFields {
    OrderFields {
        user_id: user.to_owned(),
        item_ids: vec!["item-1".to_owned()],
        total_amount: "12.50".to_owned(),
    }
}

fn order(id: i64, user: &str, status: &str, attempts: u64) -> Value {
    // The amount as the server writes it: a JSON number with two decimals.
    let amount: Value = serde_json::from_str("12.50").unwrap_or_default();
    json!({
        "id": id, "userId": user, "itemIds": ["item-1"], "totalAmount": amount,
        "status": status, "attempts": attempts,
    })
}

fn body(id: i64, status: &str, attempts: u64) -> String {
    json!({ "order": order(id, "ann", status, attempts) }).to_string()
}

fn answer(status: u16, body: String) -> Reply {
    Reply::Answer {
        status,
        replayed: false,
        body,
    }
}

fn replay(body: String) -> Reply {
    Reply::Answer {
        status: 201,
        replayed: true,
        body,
    }
}

fn lost() -> Reply {
    Reply::Lost {
        error: "connection refused".to_owned(),
    }
}

#[derive(Clone, Default)]
struct Recorder(History);

impl Recorder {
    fn op(&mut self, invoked: Micros, completed: Micros, action: Action) -> &mut Self {
        self.0.record(0, invoked, completed, action);
        self
    }

    fn create(&mut self, at: Micros, key: Option<&str>, user: &str, reply: Reply) -> &mut Self {
        self.op(
            at,
            at + 10,
            Action::Create {
                key: key.map(str::to_owned),
                order: fields(user),
                reply,
            },
        )
    }

    fn get(&mut self, at: Micros, id: i64, reply: Reply) -> &mut Self {
        self.op(at, at + 10, Action::Get { id, reply })
    }

    fn cancel(&mut self, at: Micros, id: i64, reply: Reply) -> &mut Self {
        self.op(at, at + 10, Action::Cancel { id, reply })
    }

    fn walk(
        &mut self,
        at: Micros,
        user: Option<&str>,
        pages: &[(&[Value], Option<&str>)],
    ) -> &mut Self {
        let pages = pages
            .iter()
            .enumerate()
            .map(|(i, (orders, next))| {
                let start = at + 10 * i as u64;
                Page {
                    invoked: start,
                    completed: start + 5,
                    after: None,
                    reply: answer(
                        200,
                        json!({ "orders": orders, "nextCursor": next }).to_string(),
                    ),
                }
            })
            .collect();
        let end = at + 100;
        self.op(
            at,
            end,
            Action::Walk {
                user: user.map(str::to_owned),
                pages,
            },
        )
    }

    fn watch(&mut self, at: Micros, id: i64, statuses: &[&str], ended: bool) -> &mut Self {
        let events = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| StreamEvent {
                received: at + 1 + i as u64,
                data: body(id, status, 1),
            })
            .collect();
        self.op(
            at,
            at + 50,
            Action::Watch {
                id,
                status: Some(200),
                events,
                ended,
            },
        )
    }

    fn metrics(&mut self, at: Micros, total: u64, completed: u64) -> &mut Self {
        let statuses = json!({ "pending": 0, "processing": 0, "completed": completed,
            "failed": 0, "cancelled": total - completed });
        let body = json!({ "totalOrders": total, "statuses": statuses }).to_string();
        self.op(
            at,
            at + 5,
            Action::Metrics {
                reply: answer(200, body),
            },
        )
    }

    fn quiet(&mut self, at: Micros) -> &mut Self {
        self.0.quiet_since = Some(at);
        self
    }

    fn rules(&self) -> Vec<Rule> {
        check(&self.0).violations.iter().map(|v| v.rule).collect()
    }
}

#[test]
fn racing_copies_of_a_key_make_one_order_and_replay_its_body() {
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", answer(201, body(1, "PENDING", 0)))
        .create(5, Some("k"), "ann", replay(body(1, "PENDING", 0)))
        .create(20, Some("k"), "ann-other", answer(422, "{}".to_owned()));
    assert_eq!(h.rules(), []);
    let report = check(&h.0);
    assert_eq!((report.creates, report.acknowledged), (3, 1));
}

#[test]
fn a_key_that_created_two_orders_is_a_duplicate() {
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", answer(201, body(1, "PENDING", 0)))
        .create(5, Some("k"), "ann", answer(201, body(2, "PENDING", 0)));
    let report = check(&h.0);
    assert_eq!(h.rules(), [Rule::DuplicateOrder]);
    assert_eq!(report.first().map(|v| v.ops.clone()), Some(vec![0, 1]));
}

#[test]
fn a_replay_must_answer_the_first_body_byte_for_byte() {
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", answer(201, body(1, "PENDING", 0)))
        .create(20, Some("k"), "ann", replay(body(1, "PROCESSING", 1)));
    assert_eq!(h.rules(), [Rule::Replay]);
}

#[test]
fn a_key_refuses_another_order_and_accepts_its_own() {
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", answer(201, body(1, "PENDING", 0)))
        .create(20, Some("k"), "bob", replay(body(1, "PENDING", 0)));
    assert_eq!(h.rules(), [Rule::KeyReuse]);
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", answer(201, body(1, "PENDING", 0)))
        .create(20, Some("k"), "ann", answer(422, "{}".to_owned()));
    assert_eq!(h.rules(), [Rule::KeyReuse]);
}

#[test]
fn a_lost_first_request_and_its_replay_are_no_violation() {
    let mut h = Recorder::default();
    h.create(0, Some("k"), "ann", lost())
        .create(20, Some("k"), "ann", replay(body(1, "PENDING", 0)))
        .get(40, 1, answer(503, "{}".to_owned()))
        .cancel(50, 1, lost())
        .get(70, 1, answer(200, body(1, "COMPLETED", 1)));
    assert_eq!(h.rules(), []);
    assert_eq!(check(&h.0).indeterminate, 3);
}

#[test]
fn an_acknowledged_order_is_never_not_found_after_its_201() {
    let mut h = Recorder::default();
    // A read that overlaps the create may miss it.
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(5, 1, answer(404, "{}".to_owned()));
    assert_eq!(h.rules(), []);
    h.get(30, 1, answer(404, "{}".to_owned()));
    assert_eq!(h.rules(), [Rule::Acknowledged]);
}

#[test]
fn an_acknowledged_order_keeps_its_fields_and_is_listed_once_at_the_end() {
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)));
    h.0.record(
        0,
        30,
        40,
        Action::Get {
            id: 1,
            reply: answer(
                200,
                json!({ "order": order(1, "bob", "PENDING", 0) }).to_string(),
            ),
        },
    );
    assert_eq!(h.rules(), [Rule::Acknowledged]);

    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .create(10, None, "ann", answer(201, body(2, "PENDING", 0)))
        .quiet(100)
        .walk(100, None, &[(&[order(2, "ann", "COMPLETED", 1)], None)])
        .metrics(300, 1, 1);
    assert_eq!(h.rules(), [Rule::Acknowledged, Rule::Walk]);
}

#[test]
fn statuses_seen_one_after_another_follow_the_engine_transitions() {
    let mut h = Recorder::default();
    // Started, retried, taken over after a lapsed lease, completed.
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(20, 1, answer(200, body(1, "PROCESSING", 1)))
        .get(40, 1, answer(200, body(1, "PENDING", 1)))
        .get(60, 1, answer(200, body(1, "PROCESSING", 2)))
        .get(80, 1, answer(200, body(1, "PROCESSING", 3)))
        .get(100, 1, answer(200, body(1, "COMPLETED", 3)));
    assert_eq!(h.rules(), []);
    // Overlapping reads may see the order in either order.
    h.get(95, 1, answer(200, body(1, "PROCESSING", 3)));
    assert_eq!(h.rules(), []);
    h.get(200, 1, answer(200, body(1, "PROCESSING", 4)));
    let report = check(&h.0);
    assert_eq!(h.rules(), [Rule::Transition]);
    assert!(
        report.violations[0]
            .message
            .contains("COMPLETED, then PROCESSING"),
        "{:?}",
        report.violations
    );
}

#[test]
fn a_cancelled_order_stays_cancelled_with_its_attempts() {
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .cancel(20, 1, answer(200, body(1, "CANCELLED", 0)))
        .get(40, 1, answer(200, body(1, "CANCELLED", 0)))
        .cancel(
            60,
            1,
            answer(
                409,
                json!({"error": "order 1 is CANCELLED and can no longer be cancelled"}).to_string(),
            ),
        );
    assert_eq!(h.rules(), []);
    h.get(80, 1, answer(200, body(1, "CANCELLED", 1)));
    assert_eq!(h.rules(), [Rule::Cancel]);

    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .cancel(20, 1, answer(200, body(1, "CANCELLED", 0)))
        .get(40, 1, answer(200, body(1, "PROCESSING", 1)));
    assert_eq!(h.rules(), [Rule::Transition, Rule::Cancel]);
}

#[test]
fn a_conflict_names_a_status_the_order_could_be_in() {
    let conflict = |status: &str| {
        answer(
            409,
            json!({ "error": format!("order 1 is {status} and can no longer be cancelled") })
                .to_string(),
        )
    };
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(20, 1, answer(200, body(1, "COMPLETED", 1)))
        .cancel(40, 1, conflict("COMPLETED"));
    assert_eq!(h.rules(), []);
    h.cancel(60, 1, conflict("PROCESSING"));
    assert_eq!(h.rules(), [Rule::Transition]);
    h.cancel(80, 1, conflict("PENDING"));
    assert_eq!(h.rules(), [Rule::Transition, Rule::Cancel]);
    let mut h = Recorder::default();
    h.cancel(0, 1, answer(409, json!({"error": "no"}).to_string()));
    assert_eq!(h.rules(), [Rule::Cancel]);
}

#[test]
fn a_walk_lists_every_order_acknowledged_before_it_began_once() {
    let ann = |id: i64| order(id, "ann", "PENDING", 0);
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .create(10, None, "ann", answer(201, body(2, "PENDING", 0)))
        // Order 3 was acknowledged while the walk ran: it may be missing.
        .create(35, None, "ann", answer(201, body(3, "PENDING", 0)))
        .walk(
            30,
            Some("ann"),
            &[(&[ann(2)], Some("2")), (&[ann(1)], None)],
        );
    assert_eq!(h.rules(), []);
    h.walk(
        100,
        None,
        &[(&[ann(3), ann(2)], Some("2")), (&[ann(2), ann(1)], None)],
    );
    assert_eq!(h.rules(), [Rule::Walk]);

    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .create(10, None, "ann", answer(201, body(2, "PENDING", 0)))
        .walk(30, None, &[(&[ann(2)], Some("2")), (&[], None)]);
    let report = check(&h.0);
    assert_eq!(h.rules(), [Rule::Walk]);
    assert!(report.violations[0].message.contains("skips order 1"));
    // A walk cut short proves nothing.
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .walk(30, None, &[(&[], Some("5"))]);
    assert_eq!(h.rules(), []);
}

#[test]
fn a_stream_follows_the_order_and_ends_where_it_is() {
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .watch(20, 1, &["PENDING", "PROCESSING", "COMPLETED"], true)
        .watch(20, 1, &["PENDING", "PROCESSING"], false)
        .quiet(100)
        .walk(100, None, &[(&[order(1, "ann", "COMPLETED", 1)], None)])
        .metrics(300, 1, 1);
    assert_eq!(h.rules(), []);
    h.watch(20, 1, &["PENDING", "COMPLETED", "PROCESSING"], false);
    assert_eq!(h.rules(), [Rule::Stream]);

    let mut h = Recorder::default();
    h.watch(20, 1, &["PENDING", "PROCESSING"], true);
    assert_eq!(h.rules(), [Rule::Stream]);
    let mut h = Recorder::default();
    h.watch(20, 1, &["PENDING", "CANCELLED"], true)
        .quiet(100)
        .walk(100, None, &[(&[order(1, "ann", "COMPLETED", 1)], None)]);
    assert!(h.rules().contains(&Rule::Stream), "{:?}", h.rules());
}

#[test]
fn metrics_once_quiet_equal_the_final_listing() {
    let done = |id: i64| order(id, "ann", "COMPLETED", 1);
    let mut h = Recorder::default();
    h.quiet(0)
        .walk(0, None, &[(&[done(2), done(1)], None)])
        .metrics(200, 2, 2);
    assert_eq!(h.rules(), []);
    h.metrics(300, 3, 3);
    assert_eq!(h.rules(), [Rule::Metrics]);
    // The database, when counted, holds what /metrics says.
    let mut h = Recorder::default();
    h.quiet(0)
        .walk(0, None, &[(&[done(2), done(1)], None)])
        .metrics(200, 2, 2);
    h.0.database_counts = Some([("COMPLETED".to_owned(), 2)].into());
    assert_eq!(h.rules(), []);
    h.0.database_counts = Some([("COMPLETED".to_owned(), 3)].into());
    assert_eq!(h.rules(), [Rule::Metrics]);
    // Before the quiet, counts need only add up.
    let mut h = Recorder::default();
    h.metrics(0, 7, 2).quiet(100);
    assert_eq!(h.rules(), []);
}

#[test]
fn statuses_are_named_from_conflict_messages() {
    let body = json!({"error": "order 4 is FAILED and can no longer be cancelled"}).to_string();
    assert_eq!(named_status(&body), Some(OrderStatus::Failed));
    assert_eq!(named_status("not json"), None);
}

#[test]
fn answers_outside_the_contract_are_reported() {
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(400, "{}".to_owned()));
    assert_eq!(h.rules(), [Rule::UnexpectedAnswer]);
}

/// A step as an answer shows it: `(name, status, attempts)`.
type StepShown<'a> = (&'a str, &'a str, u32);

/// An order of a pipeline: its steps, and whether a cancel was requested while it was
/// PROCESSING.
fn stepped(id: i64, status: &str, steps: &[StepShown<'_>], cancel_requested: bool) -> Value {
    let mut order = order(id, "ann", status, 1);
    order["steps"] = steps
        .iter()
        .map(|(name, status, attempts)| {
            json!({ "name": name, "status": status, "attempts": attempts,
                "compensationAttempts": 0, "startedAt": "2026-12-01T10:00:00.000001Z",
                "endedAt": null, "error": null })
        })
        .collect();
    order["cancelRequestedAt"] = if cancel_requested {
        json!("2026-12-01T10:00:00.5Z")
    } else {
        Value::Null
    };
    order
}

fn stepped_body(id: i64, status: &str, steps: &[StepShown<'_>], requested: bool) -> String {
    json!({ "order": stepped(id, status, steps, requested) }).to_string()
}

/// A recorder for a server that runs every order in the steps reserve, charge and ship.
fn pipeline() -> Recorder {
    let mut h = Recorder::default();
    h.0.pipeline = Some(["reserve", "charge", "ship"].map(str::to_owned).to_vec());
    h
}

fn messages(h: &Recorder) -> Vec<String> {
    let report = check(&h.0);
    report
        .violations
        .iter()
        .map(|v| v.message.clone())
        .collect()
}

/// Reads of order 1 at 20, 40, 60, ..., each showing `status` and these steps.
fn reads(h: &mut Recorder, reads: &[(&str, &[StepShown<'_>])]) {
    for (i, (status, steps)) in reads.iter().enumerate() {
        let at = 20 * (i as u64 + 1);
        h.get(at, 1, answer(200, stepped_body(1, status, steps, false)));
    }
}

#[test]
fn a_step_only_moves_forward_and_its_attempts_never_go_down() {
    let mut h = pipeline();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)));
    // Retried, then succeeded; the next step started; all done.
    reads(
        &mut h,
        &[
            ("PROCESSING", &[]),
            ("PROCESSING", &[("reserve", "RETRYING", 1)]),
            ("PROCESSING", &[("reserve", "RUNNING", 2)]),
            (
                "PROCESSING",
                &[("reserve", "SUCCEEDED", 2), ("charge", "RUNNING", 1)],
            ),
            (
                "COMPLETED",
                &[
                    ("reserve", "SUCCEEDED", 2),
                    ("charge", "SUCCEEDED", 1),
                    ("ship", "SUCCEEDED", 1),
                ],
            ),
        ],
    );
    // A read that overlaps another may see the order earlier.
    h.get(
        55,
        1,
        answer(
            200,
            stepped_body(1, "PROCESSING", &[("reserve", "RETRYING", 1)], false),
        ),
    );
    assert_eq!(h.rules(), []);

    let mut forward = h.clone();
    forward.get(
        200,
        1,
        answer(
            200,
            stepped_body(
                1,
                "FAILED",
                &[
                    ("reserve", "FAILED", 2),
                    ("charge", "COMPENSATED", 1),
                    ("ship", "COMPENSATED", 1),
                ],
                false,
            ),
        ),
    );
    assert_eq!(forward.rules(), [Rule::Transition, Rule::Step]);
    assert!(
        messages(&forward)[1].contains("step reserve was seen SUCCEEDED, then FAILED"),
        "{:?}",
        messages(&forward)
    );

    let mut attempts = pipeline();
    reads(
        &mut attempts,
        &[
            ("PROCESSING", &[("reserve", "RUNNING", 2)]),
            ("PROCESSING", &[("reserve", "RUNNING", 1)]),
        ],
    );
    assert_eq!(attempts.rules(), [Rule::Step]);
    assert!(messages(&attempts)[0].contains("after 2 attempts, then after 1"));
}

#[test]
fn a_step_seen_succeeded_is_never_run_again() {
    let done = [("reserve", "SUCCEEDED", 1), ("charge", "RUNNING", 1)];
    let mut h = pipeline();
    // Taken over after a crash: the next worker resumes at charge.
    reads(
        &mut h,
        &[
            ("PROCESSING", &done),
            (
                "PROCESSING",
                &[("reserve", "SUCCEEDED", 1), ("charge", "RUNNING", 2)],
            ),
        ],
    );
    assert_eq!(h.rules(), []);

    let mut rerun = pipeline();
    reads(
        &mut rerun,
        &[
            ("PROCESSING", &done),
            (
                "PROCESSING",
                &[("reserve", "RUNNING", 2), ("charge", "RUNNING", 1)],
            ),
        ],
    );
    assert_eq!(rerun.rules(), [Rule::Step]);
    assert!(
        messages(&rerun).iter().any(|m| m.contains(
            "step reserve was seen SUCCEEDED after 1 attempts, then RUNNING after 2: run again"
        )),
        "{:?}",
        messages(&rerun)
    );
    let mut again = pipeline();
    reads(
        &mut again,
        &[
            ("PROCESSING", &done),
            (
                "PROCESSING",
                &[("reserve", "SUCCEEDED", 2), ("charge", "RUNNING", 1)],
            ),
        ],
    );
    assert_eq!(again.rules(), [Rule::Step]);
    assert!(messages(&again)[0].contains("run again after its outcome was stored"));
}

#[test]
fn steps_keep_their_places_and_never_disappear() {
    let mut gone = pipeline();
    reads(
        &mut gone,
        &[
            (
                "PROCESSING",
                &[("reserve", "SUCCEEDED", 1), ("charge", "RUNNING", 1)],
            ),
            ("PROCESSING", &[("reserve", "SUCCEEDED", 1)]),
        ],
    );
    assert_eq!(gone.rules(), [Rule::Step]);
    assert!(messages(&gone)[0].contains("step charge was seen, then gone"));

    // Of a server whose steps are not known to the history, places still hold.
    let mut moved = Recorder::default();
    reads(
        &mut moved,
        &[
            ("PROCESSING", &[("reserve", "SUCCEEDED", 1)]),
            ("PROCESSING", &[("charge", "SUCCEEDED", 1)]),
        ],
    );
    assert!(
        messages(&moved)
            .iter()
            .any(|m| m.contains("step 1 was reserve, then charge")),
        "{:?}",
        messages(&moved)
    );
}

#[test]
fn steps_are_the_servers_and_a_finished_order_shows_them_finished() {
    let succeeded = [
        ("reserve", "SUCCEEDED", 1),
        ("charge", "SUCCEEDED", 1),
        ("ship", "SUCCEEDED", 1),
    ];
    let mut h = pipeline();
    reads(&mut h, &[("COMPLETED", &succeeded)]);
    assert_eq!(h.rules(), []);

    let broken: [(&str, &[StepShown<'_>], &str); 6] = [
        (
            "COMPLETED",
            &succeeded[..2],
            "COMPLETED after 2 of its 3 steps",
        ),
        (
            "COMPLETED",
            &[("reserve", "SUCCEEDED", 1), ("charge", "RUNNING", 1)],
            "COMPLETED with step charge RUNNING",
        ),
        (
            "PROCESSING",
            &[("reserve", "SUCCEEDED", 1), ("ship", "RUNNING", 1)],
            "shows steps reserve,ship, but the server runs reserve,charge,ship",
        ),
        // A step a worker was running when it died, left as it was.
        (
            "CANCELLED",
            &[
                ("reserve", "COMPENSATED", 1),
                ("charge", "COMPENSATED", 1),
                ("ship", "RUNNING", 1),
            ],
            "CANCELLED with step ship still RUNNING",
        ),
        (
            "CANCELLED",
            &[("reserve", "COMPENSATED", 1), ("charge", "SUCCEEDED", 1)],
            "CANCELLED with step charge still SUCCEEDED: never compensated",
        ),
        (
            "FAILED",
            &[("reserve", "COMPENSATING", 1), ("charge", "FAILED", 5)],
            "FAILED with step reserve still COMPENSATING",
        ),
    ];
    for (status, steps, expected) in broken {
        let mut h = pipeline();
        h.cancel(0, 1, lost());
        reads(&mut h, &[(status, steps)]);
        assert_eq!(h.rules(), [Rule::Step], "{expected}");
        assert!(
            messages(&h)[0].contains(expected),
            "{expected}: {:?}",
            messages(&h)
        );
    }
    // A plain handler's orders show no steps.
    let mut plain = Recorder::default();
    reads(&mut plain, &[("COMPLETED", &succeeded)]);
    assert_eq!(plain.rules(), [Rule::Step]);
    assert!(messages(&plain)[0].contains("the server runs a plain handler"));
}

#[test]
fn a_cancel_accepted_while_processing_ends_cancelled_with_its_steps_compensated() {
    let running = [("reserve", "SUCCEEDED", 1), ("charge", "RUNNING", 1)];
    let accepted = |h: &mut Recorder| {
        h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
            .get(
                20,
                1,
                answer(200, stepped_body(1, "PROCESSING", &running, false)),
            )
            .cancel(
                40,
                1,
                answer(202, stepped_body(1, "PROCESSING", &running, true)),
            );
    };
    let mut h = pipeline();
    accepted(&mut h);
    // Charge finishes; both are compensated in reverse; the order ends CANCELLED.
    let compensating = [("reserve", "COMPENSATING", 1), ("charge", "COMPENSATED", 1)];
    let compensated = [("reserve", "COMPENSATED", 1), ("charge", "COMPENSATED", 1)];
    h.get(
        60,
        1,
        answer(200, stepped_body(1, "PROCESSING", &compensating, true)),
    )
    // Asked again, it answers the same.
    .cancel(
        70,
        1,
        answer(202, stepped_body(1, "PROCESSING", &compensating, true)),
    )
    .get(
        80,
        1,
        answer(200, stepped_body(1, "CANCELLED", &compensated, true)),
    );
    assert_eq!(h.rules(), []);
    assert_eq!(check(&h.0).violations, []);

    let mut completed = pipeline();
    accepted(&mut completed);
    let all = [
        ("reserve", "SUCCEEDED", 1),
        ("charge", "SUCCEEDED", 1),
        ("ship", "SUCCEEDED", 1),
    ];
    completed.get(80, 1, answer(200, stepped_body(1, "COMPLETED", &all, true)));
    assert_eq!(completed.rules(), [Rule::Cancel]);
    assert!(messages(&completed)[0].contains("(202), then ended COMPLETED"));

    let mut uncompensated = pipeline();
    accepted(&mut uncompensated);
    let left = [("reserve", "SUCCEEDED", 1), ("charge", "COMPENSATED", 1)];
    uncompensated.get(
        80,
        1,
        answer(200, stepped_body(1, "CANCELLED", &left, true)),
    );
    assert!(
        messages(&uncompensated)
            .iter()
            .any(|m| m
                .contains("ended CANCELLED with step reserve, seen SUCCEEDED before, SUCCEEDED")),
        "{:?}",
        messages(&uncompensated)
    );
    assert!(uncompensated.rules().contains(&Rule::Cancel));

    let mut forgotten = pipeline();
    accepted(&mut forgotten);
    forgotten.get(
        80,
        1,
        answer(200, stepped_body(1, "PROCESSING", &running, false)),
    );
    assert_eq!(forgotten.rules(), [Rule::Cancel]);
    assert!(messages(&forgotten)[0].contains("then showed no cancelRequestedAt"));

    // The 202 itself shows the order PROCESSING with the request.
    for (status, requested, expected) in [
        (
            "PROCESSING",
            false,
            "answered 202 without cancelRequestedAt",
        ),
        ("CANCELLED", true, "answered 202 with the order CANCELLED"),
    ] {
        let mut h = pipeline();
        h.cancel(0, 1, answer(202, stepped_body(1, status, &[], requested)));
        assert!(
            messages(&h).iter().any(|m| m.contains(expected)),
            "{expected}: {:?}",
            messages(&h)
        );
    }
    // A server of plain handlers never answers 202.
    let mut plain = Recorder::default();
    plain.cancel(0, 1, answer(202, stepped_body(1, "PROCESSING", &[], true)));
    assert_eq!(plain.rules(), [Rule::UnexpectedAnswer]);
}

#[test]
fn an_order_is_cancelled_only_by_a_cancel_that_may_have_done_it() {
    let cancelled = |h: &mut Recorder| {
        h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
            .get(20, 1, answer(200, body(1, "PROCESSING", 1)))
            .get(60, 1, answer(200, body(1, "CANCELLED", 1)));
    };
    // A cancel whose answer was lost may have been accepted.
    let mut h = Recorder::default();
    cancelled(&mut h);
    h.cancel(40, 1, lost());
    assert_eq!(h.rules(), []);
    // A 200: the order went back to PENDING (a retry) before it was cancelled.
    let mut h = Recorder::default();
    cancelled(&mut h);
    h.cancel(40, 1, answer(200, body(1, "CANCELLED", 1)));
    assert_eq!(h.rules(), []);

    let mut none = Recorder::default();
    cancelled(&mut none);
    assert_eq!(none.rules(), [Rule::Cancel]);
    assert!(messages(&none)[0].contains("seen CANCELLED with no cancel before"));
    // A 409 cancels nothing; a 200 before the order was PROCESSING does not explain it.
    let mut refused = Recorder::default();
    cancelled(&mut refused);
    refused.cancel(
        40,
        1,
        answer(
            409,
            json!({"error": "order 1 is PROCESSING and can no longer be cancelled"}).to_string(),
        ),
    );
    assert_eq!(refused.rules(), [Rule::Cancel]);
    let mut early = Recorder::default();
    early
        .create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .cancel(5, 1, answer(200, body(1, "CANCELLED", 0)))
        .get(20, 1, answer(200, body(1, "PROCESSING", 1)))
        .get(60, 1, answer(200, body(1, "CANCELLED", 1)));
    assert!(
        messages(&early)
            .iter()
            .any(|m| m.contains("seen PROCESSING, then CANCELLED, with no cancel answered 202")),
        "{:?}",
        messages(&early)
    );

    // A cancel request shown follows a cancel that may have made it.
    let mut requested = pipeline();
    requested.get(20, 1, answer(200, stepped_body(1, "PROCESSING", &[], true)));
    assert_eq!(requested.rules(), [Rule::Cancel]);
    assert!(messages(&requested)[0].contains("shows cancelRequestedAt, with no cancel before"));
}

#[test]
fn a_200_to_a_cancel_shows_the_order_cancelled() {
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .cancel(20, 1, answer(200, body(1, "PENDING", 0)));
    assert_eq!(h.rules(), [Rule::Cancel]);
    assert!(messages(&h)[0].contains("answered 200 with the order PENDING, not CANCELLED"));
}

/// An order with `failures` earlier failures, each of the `charge` step.
fn retried(id: i64, status: &str, attempts: u64, failures: usize) -> Value {
    let mut order = order(id, "ann", status, attempts);
    order["failures"] = (0..failures)
        .map(|n| {
            json!({"failedAt": format!("2026-12-03T10:00:0{n}Z"), "step": "charge",
                "error": "charge: declined", "attempts": n + 1})
        })
        .collect();
    order
}

fn retried_body(id: i64, status: &str, attempts: u64, failures: usize) -> String {
    json!({ "order": retried(id, status, attempts, failures) }).to_string()
}

impl Recorder {
    fn retry(&mut self, at: Micros, id: i64, reply: Reply) -> &mut Self {
        self.op(at, at + 10, Action::Retry { id, reply })
    }
}

#[test]
fn a_failed_order_moves_on_only_through_a_retry_once_per_failure() {
    let conflict = |status: &str| {
        answer(
            409,
            json!({"error": format!("order 1 is {status}; only a FAILED order can be retried")})
                .to_string(),
        )
    };
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(20, 1, answer(200, retried_body(1, "FAILED", 1, 0)))
        .retry(40, 1, answer(200, retried_body(1, "PENDING", 1, 1)))
        .retry(41, 1, conflict("PENDING"))
        .get(60, 1, answer(200, retried_body(1, "COMPLETED", 2, 1)))
        .quiet(100)
        .walk(100, None, &[(&[retried(1, "COMPLETED", 2, 1)], None)]);
    assert_eq!(h.rules(), []);

    // Seen FAILED, then PROCESSING in the same run: no retry moved it.
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(20, 1, answer(200, retried_body(1, "FAILED", 1, 0)))
        .get(40, 1, answer(200, retried_body(1, "PROCESSING", 2, 0)));
    assert_eq!(h.rules(), [Rule::Retry]);

    // A failure shown with no retry that could have made it.
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .get(40, 1, answer(200, retried_body(1, "PENDING", 1, 1)));
    assert_eq!(h.rules(), [Rule::Retry]);

    // Two retries answered 200 for one failure kept, and a 409 naming FAILED.
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .retry(40, 1, answer(200, retried_body(1, "PENDING", 1, 1)))
        .retry(41, 1, answer(200, retried_body(1, "PENDING", 1, 1)))
        .retry(42, 1, conflict("FAILED"))
        .quiet(100)
        .walk(100, None, &[(&[retried(1, "COMPLETED", 2, 1)], None)]);
    assert_eq!(h.rules(), [Rule::Retry, Rule::Retry]);

    // A failure forgotten.
    let mut h = Recorder::default();
    h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
        .retry(40, 1, answer(200, retried_body(1, "PENDING", 1, 1)))
        .get(60, 1, answer(200, retried_body(1, "COMPLETED", 2, 0)));
    assert_eq!(h.rules(), [Rule::Retry]);

    // An unanswered retry may have retried it, or not.
    for kept in [0, 1] {
        let mut h = Recorder::default();
        h.create(0, None, "ann", answer(201, body(1, "PENDING", 0)))
            .get(20, 1, answer(200, retried_body(1, "FAILED", 1, 0)))
            .retry(40, 1, lost())
            .quiet(100)
            .walk(
                100,
                None,
                &[(
                    &[retried(
                        1,
                        ["FAILED", "COMPLETED"][kept],
                        1 + kept as u64,
                        kept,
                    )],
                    None,
                )],
            );
        assert_eq!(h.rules(), [], "{kept} kept");
    }
}
