//! Cases for the idempotency keys a [`Repository`] keeps with its orders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use super::start;
use crate::idempotency::{Fingerprint, IdempotencyKey, Insertion, KeyRecord};
use crate::order::{OrderId, OrderStatus};
use crate::repository::{Repository, Transition};
use crate::testing::{LONG, SHORT, race, sample_order, sleep};

fn keyed(key: &str, order: &crate::order::ValidatedOrder, ttl: std::time::Duration) -> KeyRecord {
    KeyRecord {
        key: IdempotencyKey::scoped("scope-a", key).unwrap(),
        fingerprint: Fingerprint::of(order),
        ttl,
    }
}

/// A key creates one order; using it again returns that order and says whether the
/// request was the same; scopes keep keys apart.
pub async fn a_key_creates_one_order(repo: Arc<dyn Repository>) {
    let order = sample_order("ann", 2);
    let record = keyed("k-1", &order, LONG * 100);
    let Insertion::Created(created) = repo.insert_keyed(&order, &record).await.unwrap() else {
        panic!("a new key creates");
    };
    assert_eq!(created.status, OrderStatus::Pending);
    assert_eq!(repo.get(created.id).await.unwrap(), Some(created.clone()));
    let (claim, start_it) = start(LONG);
    repo.transition(created.id, start_it).await.unwrap();

    match repo.insert_keyed(&order, &record).await.unwrap() {
        Insertion::Existing {
            order: existing,
            same_request,
        } => {
            assert!(same_request);
            assert_eq!(existing.id, created.id);
            assert_eq!(
                existing.status,
                OrderStatus::Processing,
                "the order as it is now"
            );
        }
        other => panic!("expected the existing order, got {other:?}"),
    }
    let other_order = sample_order("bob", 1);
    let reused = KeyRecord {
        fingerprint: Fingerprint::of(&other_order),
        ..record.clone()
    };
    assert!(matches!(
        repo.insert_keyed(&other_order, &reused).await.unwrap(),
        Insertion::Existing { same_request: false, order } if order.id == created.id
    ));
    let elsewhere = KeyRecord {
        key: IdempotencyKey::scoped("scope-b", "k-1").unwrap(),
        ..record.clone()
    };
    assert!(matches!(
        repo.insert_keyed(&order, &elsewhere).await.unwrap(),
        Insertion::Created(order) if order.id != created.id
    ));
    assert_eq!(repo.metrics().await.unwrap().total_orders, 2);
    repo.transition(created.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
}

/// Many submissions through one handle at once, some sharing keys and some asking for
/// another order under a key in use, among plain inserts: each key makes one order, and
/// every request hears of it (a backend that writes a burst in one
/// statement must hold each key once in it). Counted in the storage.
pub async fn a_burst_through_one_handle_makes_one_order_per_key(repo: Arc<dyn Repository>) {
    const KEYS: usize = 6;
    const COPIES: usize = 5;
    let calls: Vec<_> = (0..KEYS * COPIES)
        .map(|i| {
            let repo = repo.clone();
            let key = i % KEYS;
            // Odd copies of key 0 ask for another order: a key reused.
            let user = if key == 0 && i % 2 == 1 { "bob" } else { "ann" };
            let order = sample_order(user, 1 + key);
            let record = keyed(&format!("burst-{key}"), &sample_order("ann", 1 + key), LONG);
            let record = KeyRecord {
                fingerprint: Fingerprint::of(&order),
                ..record
            };
            tokio::spawn(async move {
                let plain = repo.insert(&sample_order("plain", 1)).await.unwrap();
                (
                    key,
                    repo.insert_keyed(&order, &record).await.unwrap(),
                    plain,
                )
            })
        })
        .collect();
    let mut created: std::collections::HashMap<usize, OrderId> = Default::default();
    let mut answers = Vec::new();
    for call in calls {
        let (key, insertion, _) = call.await.unwrap();
        if let Insertion::Created(order) = &insertion {
            assert!(
                created.insert(key, order.id).is_none(),
                "key {key} made two orders"
            );
        }
        answers.push((key, insertion));
    }
    assert_eq!(created.len(), KEYS, "every key made its order");
    for (key, insertion) in answers {
        match insertion {
            Insertion::Created(order) | Insertion::Existing { order, .. } => {
                assert_eq!(order.id, created[&key], "key {key}");
            }
        }
    }
    let metrics = repo.metrics().await.unwrap();
    assert_eq!(metrics.total_orders, (KEYS + KEYS * COPIES) as u64);
}

/// Of many submissions with one key that reach the storage at once, through handles as
/// separate as two servers, exactly one creates and every other names its order; round
/// after round, each time with a new key.
pub async fn concurrent_submissions_with_one_key_create_one_order<R>(repos: Vec<Arc<R>>)
where
    R: Repository + ?Sized + 'static,
{
    const ROUNDS: usize = 30;
    let order = sample_order("ann", 1);
    let rounds = race(
        &repos,
        ROUNDS,
        |repo, place| {
            let (order, record) = (order.clone(), keyed(&format!("warm-{place}"), &order, LONG));
            async move {
                repo.insert_keyed(&order, &record).await.unwrap();
            }
        },
        |repo, round, _| {
            let (order, record) = (order.clone(), keyed(&format!("race-{round}"), &order, LONG));
            async move { repo.insert_keyed(&order, &record).await.unwrap() }
        },
    )
    .await;
    for (round, answers) in rounds.iter().enumerate() {
        let created: Vec<OrderId> = answers
            .iter()
            .filter_map(|answer| match answer {
                Insertion::Created(order) => Some(order.id),
                Insertion::Existing { .. } => None,
            })
            .collect();
        assert_eq!(
            created.len(),
            1,
            "round {round}: exactly one creates: {answers:?}"
        );
        for answer in answers {
            if let Insertion::Existing {
                order,
                same_request,
            } = answer
            {
                assert!(same_request, "round {round}");
                assert_eq!(
                    order.id, created[0],
                    "round {round}: the order that was created"
                );
            }
        }
    }
    let stored = repos[0].metrics().await.unwrap().total_orders;
    assert_eq!(stored, (repos.len() + ROUNDS) as u64, "one order per key");
}

/// Of many submissions racing for one expired key, exactly one takes it over and creates
/// a new order; every other names that new order, none the old one.
pub async fn concurrent_takeovers_of_an_expired_key_create_one_order<R>(repos: Vec<Arc<R>>)
where
    R: Repository + ?Sized + 'static,
{
    const ROUNDS: usize = 12;
    let order = sample_order("ann", 1);
    let mut expired = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let record = keyed(&format!("expiring-{round}"), &order, SHORT / 2);
        let Insertion::Created(first) = repos[0].insert_keyed(&order, &record).await.unwrap()
        else {
            panic!("a new key creates");
        };
        expired.push(first.id);
    }
    sleep(SHORT).await;
    let rounds = race(
        &repos,
        ROUNDS,
        |repo, _| async move {
            repo.get(OrderId::new(1).unwrap()).await.unwrap();
        },
        |repo, round, _| {
            let order = order.clone();
            let record = keyed(&format!("expiring-{round}"), &order, LONG);
            async move { repo.insert_keyed(&order, &record).await.unwrap() }
        },
    )
    .await;
    for (round, answers) in rounds.iter().enumerate() {
        let created: Vec<OrderId> = answers
            .iter()
            .filter_map(|answer| match answer {
                Insertion::Created(order) => Some(order.id),
                Insertion::Existing { .. } => None,
            })
            .collect();
        assert_eq!(
            created.len(),
            1,
            "round {round}: exactly one takes over: {answers:?}"
        );
        assert_ne!(created[0], expired[round], "round {round}: a new order");
        for answer in answers {
            if let Insertion::Existing { order, .. } = answer {
                assert_eq!(order.id, created[0], "round {round}: the new order");
            }
        }
    }
    let stored = repos[0].metrics().await.unwrap().total_orders;
    assert_eq!(stored, 2 * ROUNDS as u64, "one order per key and expiry");
}

/// A key is forgotten once its time runs out: pruned, or taken over by a new submission.
pub async fn expired_keys_are_forgotten(repo: Arc<dyn Repository>) {
    let order = sample_order("ann", 1);
    let short = keyed("short", &order, SHORT);
    let long = keyed("long", &order, LONG * 100);
    let Insertion::Created(first) = repo.insert_keyed(&order, &short).await.unwrap() else {
        panic!("a new key creates");
    };
    repo.insert_keyed(&order, &long).await.unwrap();
    sleep(SHORT * 3).await;
    let Insertion::Created(second) = repo.insert_keyed(&order, &short).await.unwrap() else {
        panic!("an expired key creates again");
    };
    assert_ne!(first.id, second.id);
    sleep(SHORT * 3).await;
    assert_eq!(repo.prune_keys().await.unwrap(), 1, "only the expired key");
    assert!(matches!(
        repo.insert_keyed(&order, &long).await.unwrap(),
        Insertion::Existing {
            same_request: true,
            ..
        }
    ));
}
