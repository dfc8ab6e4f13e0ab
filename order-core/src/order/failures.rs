//! The earlier failures of an order that was retried: [`FailureRecord`], and the text a
//! backend keeps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Order;
use super::steps::StepStatus;

/// One time an order ended FAILED before an operator put it back in the queue: kept with the
/// order, oldest first, so that a retried order still says what went wrong before.
///
/// ```
/// use order_core::FailureRecord;
///
/// let record: FailureRecord = serde_json::from_str(
///     r#"{"failedAt":"2026-12-03T10:00:00Z","step":"charge","error":"charge: card declined","attempts":2}"#,
/// ).unwrap();
/// assert_eq!(record.step.as_deref(), Some("charge"));
/// assert_eq!(record.attempts, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct FailureRecord {
    /// When the order ended FAILED.
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub failed_at: DateTime<Utc>,
    /// The step that failed, for an order processed in steps; `null` for a plain handler's.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub step: Option<String>,
    /// The order's `lastError` then.
    pub error: String,
    /// The order's `attempts` then: the attempts after it are counted against the retried
    /// order's limit.
    pub attempts: u32,
}

impl FailureRecord {
    /// The failure a FAILED `order` records when it is retried: its end, the step that failed
    /// and its error.
    pub fn of(order: &Order) -> Self {
        Self {
            failed_at: order.processing_end_time.unwrap_or(order.updated_at),
            step: order
                .steps
                .iter()
                .find(|step| step.status == StepStatus::Failed)
                .map(|step| step.name.clone()),
            error: order
                .last_error
                .clone()
                .unwrap_or_else(|| "failed".to_owned()),
            attempts: order.attempts,
        }
    }
}

/// An order's failures as the JSON text a backend stores; `None` when there are none, so that
/// an order never retried stores nothing.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn encode_failures(failures: &[FailureRecord]) -> Option<String> {
    if failures.is_empty() {
        return None;
    }
    serde_json::to_string(failures).ok()
}

/// The failures stored as `text` by [`encode_failures`].
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn decode_failures(text: &str) -> Result<Vec<FailureRecord>, serde_json::Error> {
    serde_json::from_str(text)
}
