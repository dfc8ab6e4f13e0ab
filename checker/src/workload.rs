//! The clients: each makes random requests of every kind for a bounded time and records what
//! it sent and what came back. Orders and keys are shared between clients through pools, so
//! that they race on the same orders and keys, which is where the promises are tested.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use order_checker::history::{Action, History, Micros, OrderFields, Page, Reply, StreamEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The client number the final reads are recorded under.
pub(crate) const FINAL_CLIENT: usize = usize::MAX;

/// How many users the orders are spread over: few, so that per-user walks cross pages while
/// orders are being created.
const USERS: u32 = 8;

/// What the clients share: the server's address, the clock, the history and the pools.
#[derive(Debug)]
pub(crate) struct Workload {
    base: String,
    http: reqwest::Client,
    started: Instant,
    seed: u64,
    /// How long a client watches an event stream at most.
    watch_for: Duration,
    /// How long a worker takes to process an order, every step of it: clients cancel orders
    /// at some point within it, so that cancels land while orders are PROCESSING.
    processing: Duration,
    history: Mutex<History>,
    pools: Mutex<Pools>,
}

/// Orders and keys the clients have been answered with, for other requests to use.
#[derive(Debug, Default)]
struct Pools {
    ids: Vec<i64>,
    keys: Vec<(String, OrderFields)>,
    /// Orders a read showed FAILED, for retries.
    failed: Vec<i64>,
}

/// The most recent entries a pool keeps: recent orders are the ones still moving.
const POOL: usize = 200;

impl Workload {
    pub(crate) fn new(
        base: String,
        seed: u64,
        request_timeout: Duration,
        processing: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            base,
            http: reqwest::Client::builder()
                .timeout(request_timeout)
                .build()?,
            started: Instant::now(),
            seed,
            watch_for: Duration::from_secs(3),
            processing,
            history: Mutex::new(History::default()),
            pools: Mutex::new(Pools::default()),
        })
    }

    /// How long the server takes to process one order, all its steps.
    pub(crate) fn processing(&self) -> Duration {
        self.processing
    }

    /// Microseconds since the run started.
    pub(crate) fn now(&self) -> Micros {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A client that panicked cannot leave a half-written record: each record is one push.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, client: usize, invoked: Micros, action: Action) {
        let completed = self.now();
        self.history().record(client, invoked, completed, action);
    }

    /// Records a fault injected now.
    pub(crate) fn fault(&self, kind: order_checker::history::FaultKind) {
        let at = self.now();
        self.history()
            .faults
            .push(order_checker::history::Fault { at, kind });
    }

    /// Records the database's own count of orders by status, made once quiet.
    pub(crate) fn database_counts(&self, counts: std::collections::BTreeMap<String, u64>) {
        self.history().database_counts = Some(counts);
    }

    /// The history so far.
    pub(crate) fn take_history(&self) -> History {
        std::mem::take(&mut *self.history())
    }

    /// Runs `clients` clients until `deadline`.
    pub(crate) async fn run(self: &Arc<Self>, clients: usize, deadline: Instant) {
        let mut tasks = JoinSet::new();
        for client in 0..clients {
            let workload = self.clone();
            tasks.spawn(async move { workload.client(client, deadline).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn client(self: Arc<Self>, client: usize, deadline: Instant) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (client as u64).wrapping_mul(0x9e37_79b9));
        let mut keys = 0u64;
        while Instant::now() < deadline {
            let answered = match rng.random_range(0..100) {
                0..25 => {
                    let order = random_order(&mut rng);
                    self.create(client, None, order).await
                }
                25..40 => {
                    // Several copies of one new keyed request at once: the race the key
                    // must decide, as a client retrying over a slow network makes it.
                    keys += 1;
                    let key = format!("key-{}-{client}-{keys}", self.seed);
                    let order = random_order(&mut rng);
                    let copies = rng.random_range(2..=4);
                    let mut racers = JoinSet::new();
                    for _ in 0..copies {
                        let workload = self.clone();
                        let (key, order) = (key.clone(), order.clone());
                        racers
                            .spawn(async move { workload.create(client, Some(key), order).await });
                    }
                    let mut all = true;
                    while let Some(answered) = racers.join_next().await {
                        all &= answered.unwrap_or(false);
                    }
                    all
                }
                40..52 => {
                    let reused = {
                        let pools = self.pools();
                        pick(&mut rng, &pools.keys).cloned()
                    };
                    match reused {
                        Some((key, mut order)) => {
                            if rng.random_bool(0.3) {
                                // Another order under a used key: must be refused.
                                order.user_id.push_str("-other");
                            }
                            self.create(client, Some(key), order).await
                        }
                        None => true,
                    }
                }
                52..67 => match self.pick_id(&mut rng, POOL) {
                    Some(id) => self.get(client, id).await,
                    None => true,
                },
                67..72 => match self.pick_id(&mut rng, 20) {
                    Some(id) => self.cancel(client, id).await,
                    None => true,
                },
                72..80 => {
                    let order = random_order(&mut rng);
                    match self.create_order(client, None, order).await {
                        // Cancel an order at once after its 201, racing the worker that
                        // starts it: orders stay PENDING for milliseconds only.
                        Created::Order(id) if rng.random_bool(0.5) => self.cancel(client, id).await,
                        Created::Order(id) => {
                            self.cancel_while_processing(client, &mut rng, id).await
                        }
                        Created::Refused => true,
                        Created::Unknown => false,
                    }
                }
                80..87 => {
                    let user = format!("user-{}", rng.random_range(0..USERS));
                    let limit = [3, 10, 25][rng.random_range(0..3)];
                    self.walk(client, Some(user), limit).await
                }
                // Rarer: each lists every order, and each order it lists is checked.
                87..88 => self.walk(client, None, 100).await,
                88..94 => match self.pick_id(&mut rng, 20) {
                    Some(id) => self.watch(client, id).await,
                    None => true,
                },
                94..97 => self.retry_failed(client, &mut rng).await,
                _ => self.metrics(client).await.is_some(),
            };
            if !answered {
                // The server is down or failing: do not spin on refused connections.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Cancels order `id` at a random point of its processing, in whichever step it is; then,
    /// when the cancel was accepted (`202`), reads it while its steps are compensated.
    async fn cancel_while_processing(&self, client: usize, rng: &mut StdRng, id: i64) -> bool {
        tokio::time::sleep(self.processing.mul_f64(rng.random_range(0.0..1.1))).await;
        let answer = self.cancel_answered(client, id).await;
        if answer == Some(202) {
            for _ in 0..2 {
                tokio::time::sleep(self.processing.mul_f64(rng.random_range(0.1..0.5))).await;
                self.get(client, id).await;
            }
        }
        answer.is_some()
    }

    /// Retries an order a read showed FAILED (taken from the pool: retried once, unless it is
    /// seen FAILED again), or a recent one, which may not be FAILED; now and then as several
    /// copies at once, racing as an operator's double click does.
    async fn retry_failed(self: &Arc<Self>, client: usize, rng: &mut StdRng) -> bool {
        let failed = {
            let mut pools = self.pools();
            (!pools.failed.is_empty()).then(|| {
                let at = rng.random_range(0..pools.failed.len());
                pools.failed.swap_remove(at)
            })
        };
        let Some(id) = failed.or_else(|| self.pick_id(rng, 20)) else {
            return true;
        };
        let copies = if rng.random_bool(0.3) { 3 } else { 1 };
        let mut racers = JoinSet::new();
        for _ in 0..copies {
            let workload = self.clone();
            racers.spawn(async move { workload.retry(client, id).await });
        }
        let mut all = true;
        while let Some(answered) = racers.join_next().await {
            all &= answered.unwrap_or(false);
        }
        all
    }

    async fn retry(&self, client: usize, id: i64) -> bool {
        let invoked = self.now();
        let reply = self
            .send(self.http.post(format!("{}/orders/{id}/retry", self.base)))
            .await;
        let decided = !reply.is_indeterminate();
        self.record(client, invoked, Action::Retry { id, reply });
        decided
    }

    fn pick_id(&self, rng: &mut StdRng, recent: usize) -> Option<i64> {
        let pools = self.pools();
        let from = pools.ids.len().saturating_sub(recent);
        pick(rng, &pools.ids[from..]).copied()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let replayed = response
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|value| value == "true");
                match response.text().await {
                    Ok(body) => Reply::Answer {
                        status,
                        replayed,
                        body,
                    },
                    Err(err) => Reply::Lost {
                        error: format!("{status}, then the body failed: {err}"),
                    },
                }
            }
            Err(err) => Reply::Lost {
                error: err.to_string(),
            },
        }
    }

    /// Whether the answer was decided (not lost, not a 5xx).
    async fn create(&self, client: usize, key: Option<String>, order: OrderFields) -> bool {
        !matches!(
            self.create_order(client, key, order).await,
            Created::Unknown
        )
    }

    async fn create_order(
        &self,
        client: usize,
        key: Option<String>,
        order: OrderFields,
    ) -> Created {
        let mut request = self
            .http
            .post(format!("{}/orders", self.base))
            .header("content-type", "application/json")
            .body(order.to_json());
        if let Some(key) = &key {
            request = request.header("idempotency-key", key);
        }
        let invoked = self.now();
        let reply = self.send(request).await;
        let mut outcome = if reply.is_indeterminate() {
            Created::Unknown
        } else {
            Created::Refused
        };
        if let Some(created) = reply.order() {
            outcome = Created::Order(created.id);
            let mut pools = self.pools();
            if !pools.ids.contains(&created.id) {
                pools.ids.push(created.id);
                trim(&mut pools.ids);
            }
            if let Some(key) = &key
                && !pools.keys.iter().any(|(k, _)| k == key)
            {
                pools.keys.push((key.clone(), created.fields));
                trim(&mut pools.keys);
            }
        }
        self.record(client, invoked, Action::Create { key, order, reply });
        outcome
    }

    async fn get(&self, client: usize, id: i64) -> bool {
        let invoked = self.now();
        let reply = self
            .send(self.http.get(format!("{}/orders/{id}", self.base)))
            .await;
        let decided = !reply.is_indeterminate();
        if reply
            .order()
            .is_some_and(|order| order.status == order_core::OrderStatus::Failed)
        {
            let mut pools = self.pools();
            if !pools.failed.contains(&id) {
                pools.failed.push(id);
                trim(&mut pools.failed);
            }
        }
        self.record(client, invoked, Action::Get { id, reply });
        decided
    }

    async fn cancel(&self, client: usize, id: i64) -> bool {
        self.cancel_answered(client, id).await.is_some()
    }

    /// Cancels order `id`; the status of a decided answer.
    async fn cancel_answered(&self, client: usize, id: i64) -> Option<u16> {
        let invoked = self.now();
        let reply = self
            .send(self.http.post(format!("{}/orders/{id}/cancel", self.base)))
            .await;
        let answer = reply.decided().map(|(status, _)| status);
        self.record(client, invoked, Action::Cancel { id, reply });
        answer
    }

    /// Walks every page of a listing; whether every page was answered.
    pub(crate) async fn walk(&self, client: usize, user: Option<String>, limit: u32) -> bool {
        let invoked = self.now();
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        // A bound on a walk that a bug would make endless (a cursor that never moves).
        while pages.len() < 10_000 {
            // User ids and cursors here are letters, digits and dashes: nothing to escape.
            let mut url = format!("{}/orders?limit={limit}", self.base);
            if let Some(user) = &user {
                url.push_str(&format!("&userId={user}"));
            }
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let page_invoked = self.now();
            let reply = self.send(self.http.get(url)).await;
            let next =
                order_checker::history::ListPage::from_reply(&reply).map(|page| page.next_cursor);
            pages.push(Page {
                invoked: page_invoked,
                completed: self.now(),
                after: after.clone(),
                reply,
            });
            match next {
                Some(Some(cursor)) => after = Some(cursor),
                Some(None) => break,
                None => {
                    self.record(client, invoked, Action::Walk { user, pages });
                    return false;
                }
            }
        }
        self.record(client, invoked, Action::Walk { user, pages });
        true
    }

    async fn watch(&self, client: usize, id: i64) -> bool {
        let invoked = self.now();
        let mut events = Vec::new();
        let mut ended = false;
        let response = self
            .http
            .get(format!("{}/orders/{id}/events", self.base))
            .send()
            .await;
        let status = match response {
            Ok(mut response) => {
                let status = response.status().as_u16();
                if status == 200 {
                    let mut buffer = String::new();
                    let read = tokio::time::timeout(self.watch_for, async {
                        loop {
                            match response.chunk().await {
                                Ok(Some(chunk)) => {
                                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                                    while let Some(end) = buffer.find("\n\n") {
                                        let block: String = buffer.drain(..end + 2).collect();
                                        if let Some(data) = status_event(&block) {
                                            events.push(StreamEvent {
                                                received: self.now(),
                                                data,
                                            });
                                        }
                                    }
                                }
                                Ok(None) => return true,
                                Err(_) => return false,
                            }
                        }
                    })
                    .await;
                    ended = read.unwrap_or(false);
                }
                Some(status)
            }
            Err(_) => None,
        };
        self.record(
            client,
            invoked,
            Action::Watch {
                id,
                status,
                events,
                ended,
            },
        );
        status.is_some_and(|status| status < 500)
    }

    /// `GET /metrics`, recorded; its body when it answered 200.
    pub(crate) async fn metrics(&self, client: usize) -> Option<Value> {
        let invoked = self.now();
        let reply = self
            .send(self.http.get(format!("{}/metrics", self.base)))
            .await;
        let body = match reply.decided() {
            Some((200, body)) => serde_json::from_str(body).ok(),
            _ => None,
        };
        self.record(client, invoked, Action::Metrics { reply });
        body
    }

    /// Waits until no order is PENDING or PROCESSING, up to `timeout`; then marks the
    /// history quiet and makes the final reads: a walk over every order and `/metrics`.
    pub(crate) async fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(body) = self.metrics(FINAL_CLIENT).await {
                let moving = ["pending", "processing"]
                    .iter()
                    .map(|status| body["statuses"][status].as_u64().unwrap_or(u64::MAX))
                    .try_fold(0u64, u64::checked_add);
                if moving == Some(0) {
                    break;
                }
            }
            if Instant::now() > give_up {
                anyhow::bail!(
                    "orders were still PENDING or PROCESSING {} s after the clients stopped",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let quiet = self.now();
        self.history().quiet_since = Some(quiet);
        if !self.walk(FINAL_CLIENT, None, 100).await {
            anyhow::bail!("the final listing was not answered");
        }
        self.metrics(FINAL_CLIENT).await;
        Ok(())
    }
}

/// What a create led to, as far as the client knows.
enum Created {
    /// A 201 with this order.
    Order(i64),
    /// A decided answer without an order (a 422).
    Refused,
    /// No answer, or a 5xx.
    Unknown,
}

/// The `data` of a `status` event block, lines joined as SSE says.
fn status_event(block: &str) -> Option<String> {
    let mut kind = "message";
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim_start();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    (kind == "status" && !data.is_empty()).then(|| data.join("\n"))
}

fn random_order(rng: &mut StdRng) -> OrderFields {
    let items = rng.random_range(1..=3);
    OrderFields {
        user_id: format!("user-{}", rng.random_range(0..USERS)),
        item_ids: (0..items)
            .map(|_| format!("item-{}", rng.random_range(0..50)))
            .collect(),
        total_amount: format!(
            "{}.{:02}",
            rng.random_range(0..1000),
            rng.random_range(0..100)
        ),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[rng.random_range(0..items.len())])
}

fn trim<T>(pool: &mut Vec<T>) {
    if pool.len() > POOL {
        pool.drain(..pool.len() - POOL);
    }
}
