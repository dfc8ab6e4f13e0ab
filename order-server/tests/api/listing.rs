//! Listing, cancelling and watching orders over HTTP, in memory.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use order_core::handler::SimulatedStep;
use order_core::{NewOrder, OrderProcessor, OrderStatus};
use rust_decimal::Decimal;
use serde_json::Value;
use tower::ServiceExt;

use crate::helpers::{get, idle_app, init_logs, post_json};

fn order_of(user: &str) -> NewOrder {
    NewOrder::new(user, ["item1"], Decimal::new(1999, 2))
}

/// The ids of a listing's page, in its order.
pub(crate) fn ids(body: &Value) -> Vec<i64> {
    body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["id"].as_i64().unwrap())
        .collect()
}

/// The `data` of each `status` event of a Server-Sent Events body, as JSON.
pub(crate) fn status_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|block| block.lines().any(|line| line == "event: status"))
        .map(|block| {
            let data = block
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("an event without data: {block:?}"));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

pub(crate) fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["order"]["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn orders_list_newest_first_by_page_and_filter() {
    let (app, processor) = idle_app();
    let mut created = Vec::new();
    for user in ["ann", "bob", "ann", "ann", "bob"] {
        created.push(processor.submit(order_of(user)).await.unwrap().id.get());
    }
    processor
        .cancel(order_core::OrderId::new(created[2]).unwrap())
        .await
        .unwrap();

    let all = get(&app, "/orders").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(ids(&all.body), [5, 4, 3, 2, 1]);
    assert_eq!(all.body["nextCursor"], Value::Null);
    assert_eq!(all.body["orders"][0]["userId"], "bob");
    assert_eq!(all.body["orders"][0]["totalAmount"], 19.99);

    let first = get(&app, "/orders?limit=2").await;
    assert_eq!(ids(&first.body), [5, 4]);
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    let second = get(&app, &format!("/orders?limit=2&after={cursor}")).await;
    assert_eq!(ids(&second.body), [3, 2]);
    let cursor = second.body["nextCursor"].as_str().unwrap().to_owned();
    let last = get(&app, &format!("/orders?limit=2&after={cursor}")).await;
    assert_eq!(
        (ids(&last.body), &last.body["nextCursor"]),
        (vec![1], &Value::Null)
    );

    let ann = get(&app, "/orders?userId=ann").await;
    assert_eq!(ids(&ann.body), [4, 3, 1]);
    let pending_ann = get(&app, "/orders?userId=ann&status=PENDING").await;
    assert_eq!(ids(&pending_ann.body), [4, 1]);
    let cancelled = get(&app, "/orders?status=cancelled").await;
    assert_eq!(ids(&cancelled.body), [3]);
    let nobody = get(&app, "/orders?userId=nobody").await;
    assert_eq!(
        (ids(&nobody.body), &nobody.body["nextCursor"]),
        (vec![], &Value::Null)
    );
}

#[tokio::test]
async fn listing_rejects_what_it_cannot_serve_with_400() {
    let (app, _) = idle_app();
    let long_user = "u".repeat(129);
    for (query, expected) in [
        ("limit=0", "limit must be from 1 to 100"),
        ("limit=101", "limit must be from 1 to 100"),
        ("limit=ten", "limit must be from 1 to 100"),
        ("status=SHIPPED", "status must be one of"),
        ("after=abc", "after must be"),
        ("after=-4", "after must be"),
        (&format!("userId={long_user}"), "userId must be at most 128"),
        ("colour=red", "unknown field `colour`"),
        // Given without a value: outside every parameter's rules, not a request for all.
        ("status=", "status must not be empty; leave it out instead"),
        ("userId=", "userId must not be empty; leave it out instead"),
        ("limit=", "limit must not be empty; leave it out instead"),
        ("after=", "after must not be empty; leave it out instead"),
        ("status=PENDING&userId=", "userId must not be empty"),
        // No stored user id holds a NUL, and PostgreSQL cannot compare with one.
        ("userId=a%00b", "userId must not contain the NUL character"),
        // Integers as the document writes them: no sign, no leading zero.
        ("limit=+5", "limit must be from 1 to 100"),
        ("limit=05", "limit must be from 1 to 100"),
        ("after=+4", "after must be"),
        ("after=04", "after must be"),
        ("after=9223372036854775808", "after must be"),
    ] {
        let reply = get(&app, &format!("/orders?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(reply.error().contains(expected), "{query}: {}", reply.body);
    }
}

#[tokio::test]
async fn a_pending_order_cancels_once_and_then_conflicts() {
    let (app, processor) = idle_app();
    let id = processor.submit(order_of("ann")).await.unwrap().id;

    let cancelled = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["order"]["status"], "CANCELLED");
    assert_eq!(cancelled.body["order"]["id"], id.get());
    let read = get(&app, &format!("/orders/{id}")).await;
    assert_eq!(read.body["order"]["status"], "CANCELLED");

    let again = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.error(),
        format!("order {id} is CANCELLED and can no longer be cancelled")
    );

    let unknown = post_json(&app, "/orders/999/cancel", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error(), "order 999 not found");
    let bad = post_json(&app, "/orders/abc/cancel", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("order id"), "{}", bad.body);
    let wrong_method = get(&app, &format!("/orders/{id}/cancel")).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!wrong_method.error().is_empty());
}

#[tokio::test]
async fn an_order_being_processed_cannot_be_cancelled_and_a_cancelled_one_is_never_started() {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_secs(30)))
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &crate::helpers::serve_options());
    // Queued before the workers start, and cancelled while it waits.
    let cancelled = processor.submit(order_of("ann")).await.unwrap().id;
    assert_eq!(
        post_json(&app, &format!("/orders/{cancelled}/cancel"), "")
            .await
            .status,
        StatusCode::OK
    );
    let busy = processor.submit(order_of("bob")).await.unwrap().id;
    let running = processor.start();
    tokio::time::timeout(Duration::from_secs(10), async {
        while processor.get(busy).await.unwrap().unwrap().status != OrderStatus::Processing {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    let refused = post_json(&app, &format!("/orders/{busy}/cancel"), "").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.error().contains("is PROCESSING"),
        "{}",
        refused.body
    );

    // The cancelled order left the queue without being started.
    tokio::time::timeout(Duration::from_secs(10), async {
        while processor.queue_depth().await.unwrap().ready > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let read = get(&app, &format!("/orders/{cancelled}")).await;
    assert_eq!(read.body["order"]["status"], "CANCELLED");
    assert_eq!(read.body["order"]["attempts"], 0);
    assert_eq!(read.body["order"]["processingStartTime"], Value::Null);
    running.shutdown(Duration::ZERO).await;
}

/// The whole event stream of `uri`, which must end within 10 s.
async fn event_stream(app: &axum::Router, uri: &str) -> (StatusCode, String, String) {
    let watch = Watch::open(app, uri).await;
    let (status, content_type) = (watch.status, watch.content_type.clone());
    (status, content_type, watch.read_to_end().await)
}

/// An order's event stream, read as its events arrive: a test that must act only once the
/// stream is open waits for the first event (the order's state when the watch began) instead
/// of sleeping and hoping the subscription came first.
pub(crate) struct Watch {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    source: WatchSource,
    text: String,
}

enum WatchSource {
    Router(Body),
    // Only the tests of several servers on one database watch over HTTP.
    #[cfg(feature = "postgres")]
    Http(reqwest::Response),
}

/// How long a test waits for the next event or the end of a stream.
const WATCH_BOUND: Duration = Duration::from_secs(10);

impl Watch {
    /// Opens `uri` on the in-process `app`.
    pub(crate) async fn open(app: &axum::Router, uri: &str) -> Self {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        Watch {
            status: response.status(),
            content_type,
            source: WatchSource::Router(response.into_body()),
            text: String::new(),
        }
    }

    /// Opens `url` over HTTP.
    #[cfg(feature = "postgres")]
    pub(crate) async fn connect(url: &str) -> Self {
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        Watch {
            status: response.status(),
            content_type,
            source: WatchSource::Http(response),
            text: String::new(),
        }
    }

    /// The next piece of the body, or `None` at its end; panics after [`WATCH_BOUND`].
    async fn read(&mut self) -> bool {
        let chunk = async {
            match &mut self.source {
                WatchSource::Router(body) => loop {
                    match body.frame().await {
                        None => return None,
                        Some(frame) => {
                            if let Ok(data) = frame.unwrap().into_data() {
                                return Some(data.to_vec());
                            }
                        }
                    }
                },
                #[cfg(feature = "postgres")]
                WatchSource::Http(response) => response.chunk().await.unwrap().map(|b| b.to_vec()),
            }
        };
        match tokio::time::timeout(WATCH_BOUND, chunk)
            .await
            .unwrap_or_else(|_| panic!("nothing streamed within {WATCH_BOUND:?}: {:?}", self.text))
        {
            Some(chunk) => {
                self.text.push_str(std::str::from_utf8(&chunk).unwrap());
                true
            }
            None => false,
        }
    }

    /// The status events received whole so far.
    fn complete_events(&self) -> Vec<Value> {
        let whole = self.text.rfind("\n\n").map_or("", |end| &self.text[..end]);
        status_events(whole)
    }

    /// Reads until `count` status events have arrived; returns them all.
    pub(crate) async fn until_events(&mut self, count: usize) -> Vec<Value> {
        while self.complete_events().len() < count {
            assert!(self.read().await, "the stream ended early: {:?}", self.text);
        }
        self.complete_events()
    }

    /// Reads to the end of the stream, which must come within [`WATCH_BOUND`] of each event;
    /// returns the whole body.
    pub(crate) async fn read_to_end(mut self) -> String {
        while self.read().await {}
        self.text
    }
}

#[tokio::test]
async fn events_stream_an_order_until_it_ends() {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(100)))
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &crate::helpers::serve_options());
    let id = processor.submit(order_of("ann")).await.unwrap().id;
    let mut watch = Watch::open(&app, &format!("/orders/{id}/events")).await;
    assert_eq!(watch.status, StatusCode::OK);
    assert_eq!(watch.content_type, "text/event-stream");
    // The order's state when the watch began: the stream is open before any work starts.
    assert_eq!(statuses(&watch.until_events(1).await), ["PENDING"]);
    let running = processor.start();
    let body = watch.read_to_end().await;
    let events = status_events(&body);
    assert_eq!(
        statuses(&events),
        ["PENDING", "PROCESSING", "COMPLETED"],
        "{body}"
    );
    assert_eq!(events[2]["order"]["id"], id.get());
    assert_eq!(events[2]["order"]["attempts"], 1);

    // After the end: the final state, and the stream ends.
    let (_, _, body) = event_stream(&app, &format!("/orders/{id}/events")).await;
    assert_eq!(statuses(&status_events(&body)), ["COMPLETED"]);
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn events_show_a_cancel_and_unknown_orders_are_404() {
    let (app, processor) = idle_app();
    let id = processor.submit(order_of("ann")).await.unwrap().id;
    let mut watch = Watch::open(&app, &format!("/orders/{id}/events")).await;
    assert_eq!(statuses(&watch.until_events(1).await), ["PENDING"]);
    let cancel = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(cancel.status, StatusCode::OK);
    let body = watch.read_to_end().await;
    assert_eq!(statuses(&status_events(&body)), ["PENDING", "CANCELLED"]);

    let unknown = get(&app, "/orders/999/events").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error(), "order 999 not found");
}
