//! Idempotency keys: a client that retries a submission (after a timeout, a dropped
//! connection, a crash of the server) gets the order its first try created, never a second one.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::order::{Order, ValidatedOrder};

/// How long a key is remembered unless the processor is told otherwise: a day, long enough for
/// any client's retries.
pub(crate) const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A client's name for one submission, unique within its scope (an API token, a tenant):
/// two submissions with the same key in the same scope are the same submission.
///
/// ```
/// use order_core::IdempotencyKey;
///
/// let key = IdempotencyKey::scoped("tenant-7", "checkout-2291").unwrap();
/// assert_eq!((key.scope(), key.key()), ("tenant-7", "checkout-2291"));
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("x".repeat(256)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    scope: String,
    key: String,
}

/// Why a text cannot be an [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key {reason}")]
#[non_exhaustive]
pub struct InvalidIdempotencyKey {
    /// What is wrong with it.
    pub reason: &'static str,
}

impl IdempotencyKey {
    /// The longest key, in characters, as Stripe and the IETF `Idempotency-Key` draft allow.
    pub const MAX_CHARS: usize = 255;

    /// A key in the default (empty) scope.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidIdempotencyKey> {
        Self::scoped("", key)
    }

    /// A key in `scope`: keys of different scopes never meet. The key is 1 to 255 visible
    /// ASCII characters or spaces, and the scope at most 255 of any kind.
    pub fn scoped(
        scope: impl Into<String>,
        key: impl Into<String>,
    ) -> Result<Self, InvalidIdempotencyKey> {
        let (scope, key) = (scope.into(), key.into());
        let invalid = |reason| Err(InvalidIdempotencyKey { reason });
        if key.is_empty() {
            return invalid("must not be empty");
        }
        if key.len() > Self::MAX_CHARS {
            return invalid("must be at most 255 characters");
        }
        if !key.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return invalid("must be visible ASCII characters or spaces");
        }
        if scope.chars().count() > Self::MAX_CHARS {
            return invalid("scope must be at most 255 characters");
        }
        Ok(Self { scope, key })
    }

    /// The scope the key belongs to; empty by default.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key itself.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// A digest of what an order asks for (user, items, amount), stored with its key, so that a
/// replay can be told apart from a different request that reuses the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The SHA-256 of the order's fields, each length-prefixed so that no two orders share an
    /// encoding; the amount in its normal form (`59.9` and `59.90` are one amount).
    pub fn of(order: &ValidatedOrder) -> Self {
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        field(order.user_id().as_bytes());
        field(&(order.item_ids().len() as u64).to_be_bytes());
        for item in order.item_ids() {
            field(item.as_bytes());
        }
        field(order.total_amount().normalize().to_string().as_bytes());
        Self(digest.finalize().into())
    }

    /// Wraps a fingerprint read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest, for storage.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// What [`Repository::insert_keyed`](crate::backend::Repository::insert_keyed) stores beside the order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The client's key.
    pub key: IdempotencyKey,
    /// What the request asked for.
    pub fingerprint: Fingerprint,
    /// How long the key is remembered, on the repository's clock.
    pub ttl: Duration,
}

/// What [`Repository::insert_keyed`](crate::backend::Repository::insert_keyed) did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Insertion {
    /// The key was new (or its time had run out): the order was stored under it.
    Created(Order),
    /// The key names an order already; nothing was stored.
    Existing {
        /// That order, as it is now.
        order: Order,
        /// Whether that order was asked for with the same fingerprint.
        same_request: bool,
    },
}

impl Order {
    /// The order as it was when it was accepted: PENDING, never attempted. What the response
    /// to its submission showed, and so what a replay of that submission answers.
    #[must_use]
    pub fn as_accepted(&self) -> Order {
        Order {
            status: crate::OrderStatus::Pending,
            updated_at: self.created_at,
            processing_start_time: None,
            processing_end_time: None,
            attempts: 0,
            last_error: None,
            steps: Vec::new(),
            cancel_requested_at: None,
            failures: Vec::new(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::NewOrder;

    fn order(user: &str, items: &[&str], cents: i64) -> ValidatedOrder {
        NewOrder {
            user_id: user.into(),
            item_ids: items.iter().map(|&i| i.to_owned()).collect(),
            total_amount: Decimal::new(cents, 2),
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn fingerprints_tell_requests_apart_and_only_them() {
        let base = Fingerprint::of(&order("ann", &["a", "b"], 5990));
        assert_eq!(base, Fingerprint::of(&order("ann", &["a", "b"], 5990)));
        let same_amount = NewOrder {
            total_amount: Decimal::new(599, 1),
            ..order("ann", &["a", "b"], 0).into_inner()
        };
        assert_eq!(base, Fingerprint::of(&same_amount.validate().unwrap()));
        for other in [
            order("bob", &["a", "b"], 5990),
            order("ann", &["b", "a"], 5990),
            order("ann", &["ab"], 5990),
            order("ann", &["a", "b", "b"], 5990),
            order("ann", &["a", "b"], 5991),
            // The same text run together ("annab"): the lengths tell them apart. (An id
            // cannot hold a NUL, so no separator could have done it either way.)
            order("anna", &["b"], 5990),
        ] {
            assert_ne!(base, Fingerprint::of(&other));
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(IdempotencyKey::new("a b-c_9").is_ok());
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        for bad in ["", "tab\there", "é", "new\nline"] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::scoped("s".repeat(256), "k").is_err());
        assert_ne!(
            IdempotencyKey::scoped("a", "k").unwrap(),
            IdempotencyKey::scoped("b", "k").unwrap()
        );
    }
}
