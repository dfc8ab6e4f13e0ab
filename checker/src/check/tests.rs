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

#[derive(Default)]
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
