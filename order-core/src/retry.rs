//! [`RetryPolicy`]: how long to wait after a failure, for orders and for the engine's own
//! loops alike.

use std::time::Duration;

/// How failed attempts are retried: exponential backoff, then FAILED.
///
/// Its [`backoff`](Self::backoff) is also the one pause every loop of this crate waits between
/// failed tries (reconnecting, re-queueing, recording an outcome), each with a policy of its
/// own.
///
/// ```
/// use std::time::Duration;
/// use order_core::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(3)
///     .backoff_between(Duration::from_millis(200), Duration::from_secs(10));
/// assert_eq!(policy.max_attempts, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included; when the last fails the order is FAILED.
    pub max_attempts: u32,
    /// The delay after the first failed attempt.
    pub initial_backoff: Duration,
    /// No delay is longer than this.
    pub max_backoff: Duration,
    /// Each delay is this many times the one before.
    pub multiplier: f64,
    /// Spreads each delay uniformly over its upper half, so orders that failed together do not
    /// all come back at the same instant.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s then doubling up to 5 minutes, with jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The same policy with `attempts` attempts in all.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The same policy with its first delay `initial` and no delay longer than `max`.
    #[must_use]
    pub fn backoff_between(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The same policy with each delay `multiplier` times the one before.
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The same policy with or without jitter.
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the attempt after `failed_attempts` failed ones (1-based).
    ///
    /// ```
    /// use std::time::Duration;
    /// use order_core::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().jitter(false);
    /// assert_eq!(policy.backoff(1), Duration::from_secs(1));
    /// assert_eq!(policy.backoff(3), Duration::from_secs(4));
    /// assert_eq!(policy.backoff(30), Duration::from_secs(300));
    /// ```
    #[must_use]
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = i32::try_from(failed_attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let scaled = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = if scaled.is_finite() {
            scaled.min(self.max_backoff.as_secs_f64())
        } else {
            self.max_backoff.as_secs_f64()
        };
        let seconds = if self.jitter {
            capped * rand::random_range(0.5..=1.0)
        } else {
            capped
        };
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max_backoff)
    }
}

impl RetryPolicy {
    /// The engine's quick retries of a write it must not lose (queueing an order just stored,
    /// recording an outcome): 50 ms, doubling, a handful of times.
    pub(crate) const QUICK: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: true,
    };

    /// Reconnecting, and claiming again after a failed claim: 100 ms, doubling up to 1 s, for
    /// as long as it takes. A longer pause would outlast the outage it waits on: after a
    /// failover the new primary takes writes within a second or two, and a worker asleep for
    /// five would leave its queue idle for most of them. One claim a second from each server
    /// is nothing to a database coming back.
    pub(crate) const RECONNECT: RetryPolicy = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: true,
    };
}
