//! The records of an order's steps, as stored with the order: [`StepStatus`], [`StepRecord`]
//! and [`StepOutput`], shown under [`step`](crate::step), and the compact text a backend keeps.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where one step of an order is.
///
/// A step's status only moves forward: RUNNING and RETRYING alternate while it is tried;
/// then SUCCEEDED or FAILED; a SUCCEEDED step may become COMPENSATING, then COMPENSATED.
///
/// ```
/// use order_core::step::StepStatus::{Compensated, Compensating, Failed, Retrying, Running, Succeeded};
///
/// assert!(Running.may_become(Retrying) && Retrying.may_become(Running));
/// assert!(Running.may_become(Succeeded) && Succeeded.may_become(Compensating));
/// assert!(Compensating.may_become(Compensated));
/// assert!(!Succeeded.may_become(Running));
/// assert!(!Failed.may_become(Compensating));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    /// A worker is running it.
    Running,
    /// An attempt failed with a transient error; it is run again after a backoff.
    Retrying,
    /// It finished; its output is stored.
    Succeeded,
    /// It failed for good (a permanent error, or its attempts used up).
    Failed,
    /// It finished, and its compensation is running or waiting to be tried again.
    Compensating,
    /// It finished and was compensated.
    Compensated,
}

impl StepStatus {
    /// Every status, in the order of a step's life.
    pub const ALL: [StepStatus; 6] = [
        StepStatus::Running,
        StepStatus::Retrying,
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::Compensating,
        StepStatus::Compensated,
    ];

    /// The name used in the API and in storage: `RUNNING`, `SUCCEEDED`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "RUNNING",
            StepStatus::Retrying => "RETRYING",
            StepStatus::Succeeded => "SUCCEEDED",
            StepStatus::Failed => "FAILED",
            StepStatus::Compensating => "COMPENSATING",
            StepStatus::Compensated => "COMPENSATED",
        }
    }

    /// Whether a step's record may go from this status to `next` in one write, or stay.
    pub fn may_become(self, next: StepStatus) -> bool {
        use StepStatus::{Compensated, Compensating, Failed, Retrying, Running, Succeeded};
        self == next
            || matches!(
                (self, next),
                (Running | Retrying, Running | Retrying | Succeeded | Failed)
                    | (Succeeded, Compensating | Compensated)
                    | (Compensating, Compensated)
            )
    }

    /// Whether a step in this status has work done that a compensation would undo.
    pub fn needs_undo(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Compensating)
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a step returned, as JSON text kept exactly as the step wrote it: money in an output
/// never passes through a float, and the key order and spacing stay the step's.
///
/// ```
/// use order_core::step::StepOutput;
///
/// let output = StepOutput::from_json(r#"{"charge": "ch_1", "amount": 12.10}"#.to_owned()).unwrap();
/// assert_eq!(output.as_json(), r#"{"charge": "ch_1", "amount": 12.10}"#);
/// assert!(StepOutput::from_json("{not json".to_owned()).is_err());
/// assert_eq!(StepOutput::none().as_json(), "null");
/// ```
#[derive(Clone)]
pub struct StepOutput(Arc<RawValue>);

impl StepOutput {
    /// No output: JSON `null`.
    pub fn none() -> Self {
        // `null` is valid JSON: this cannot fail.
        Self::from_json("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
    }

    /// `value` serialized as JSON. Serialize money as a string or with
    /// [`exact_amount`](crate::order::exact_amount), never as a float. Its error turns into a
    /// permanent [`HandlerError`](crate::HandlerError) with `?`.
    pub fn json(value: &impl Serialize) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| Self(Arc::from(raw)))
    }

    /// An output from JSON text, kept as written; an error if the text is not JSON.
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(|raw| Self(Arc::from(raw)))
    }

    /// The JSON text, exactly as the step wrote it.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The output read into `T`. Its error turns into a permanent
    /// [`HandlerError`](crate::HandlerError) with `?`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl fmt::Debug for StepOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

/// Two outputs are equal when their JSON text is.
impl PartialEq for StepOutput {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for StepOutput {}

/// One step of an order as stored: the checkpoint a worker writes under its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StepRecord {
    /// The step's name in its pipeline.
    pub name: String,
    /// Where the step is.
    pub status: StepStatus,
    /// How many times the step was started, crashes and retries included.
    pub attempts: u32,
    /// How many times its compensation was tried.
    #[serde(default)]
    pub compensation_attempts: u32,
    /// When its first attempt began (this worker's clock).
    #[serde(serialize_with = "crate::order::rfc3339::serialize")]
    pub started_at: DateTime<Utc>,
    /// When it reached SUCCEEDED or FAILED.
    #[serde(serialize_with = "crate::order::rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ended_at: Option<DateTime<Utc>>,
    /// When its compensation succeeded (it is COMPENSATED).
    #[serde(default, serialize_with = "crate::order::rfc3339::serialize_option")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub compensated_at: Option<DateTime<Utc>>,
    /// The latest error of an attempt or a compensation, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// Which run of the order this step's work belongs to: 0 before any retry, `n` once an
    /// operator has retried the order `n` times. A step run again after a retry gets a new
    /// [`idempotency_key`](crate::step::StepContext::idempotency_key).
    #[serde(default)]
    pub retry: u32,
    /// What the step returned, once SUCCEEDED. Not shown by the HTTP API: it is the steps' own
    /// data, for the steps after it.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub output: Option<StepOutput>,
}

impl StepRecord {
    /// A step started now, its `attempts`-th run.
    pub fn started(name: impl Into<String>, attempts: u32) -> Self {
        Self {
            name: name.into(),
            status: StepStatus::Running,
            attempts,
            compensation_attempts: 0,
            started_at: now(),
            ended_at: None,
            compensated_at: None,
            error: None,
            retry: 0,
            output: None,
        }
    }

    /// The same record, its work that of the order's `retry`-th run.
    #[must_use]
    pub fn in_retry(mut self, retry: u32) -> Self {
        self.retry = retry;
        self
    }
}

/// The worker's clock to the microsecond, as the backends keep the order's own times.
pub(crate) fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// The stored form of a step: [`StepRecord`] with its output, as the JSON text a backend keeps.
///
/// Compact, because every checkpoint rewrites it and a commit waits for its bytes to reach the
/// write-ahead log: one-letter keys, times as microseconds since the epoch, and fields at their
/// default left out. A three-step order's steps take about 250 bytes rather than 650.
// Only the PostgreSQL backend stores steps as text; the in-memory one keeps the records.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
#[derive(Serialize, Deserialize)]
struct StoredStep<'a> {
    #[serde(rename = "n", borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(rename = "s")]
    status: StepStatus,
    #[serde(rename = "a")]
    attempts: u32,
    #[serde(rename = "c", default, skip_serializing_if = "is_zero")]
    compensation_attempts: u32,
    #[serde(rename = "t")]
    started_at: i64,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    ended_at: Option<i64>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    compensated_at: Option<i64>,
    #[serde(rename = "x", default, borrow, skip_serializing_if = "Option::is_none")]
    error: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "r", default, skip_serializing_if = "is_zero")]
    retry: u32,
    #[serde(rename = "o", default, borrow, skip_serializing_if = "Option::is_none")]
    output: Option<&'a RawValue>,
}

/// Whether a step in `status` has succeeded, and so has an output.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn finished(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Succeeded | StepStatus::Compensating | StepStatus::Compensated
    )
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A stored time back as a time; a value out of chrono's range (written by hand) is an error.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn time(micros: i64) -> Result<DateTime<Utc>, serde_json::Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| serde::de::Error::custom(format!("time {micros} is out of range")))
}

/// An order's steps as the JSON text a backend stores; `None` when there are none.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn encode_steps(steps: &[StepRecord]) -> Option<String> {
    if steps.is_empty() {
        return None;
    }
    let stored: Vec<StoredStep<'_>> = steps
        .iter()
        .map(|step| StoredStep {
            name: step.name.as_str().into(),
            status: step.status,
            attempts: step.attempts,
            compensation_attempts: step.compensation_attempts,
            started_at: step.started_at.timestamp_micros(),
            ended_at: step.ended_at.map(|at| at.timestamp_micros()),
            compensated_at: step.compensated_at.map(|at| at.timestamp_micros()),
            error: step.error.as_deref().map(Into::into),
            retry: step.retry,
            // A finished step's `null` output is left out, and read back as `null`.
            output: step
                .output
                .as_ref()
                .filter(|output| output.as_json() != "null")
                .map(|output| &*output.0),
        })
        .collect();
    // Strings, numbers and raw JSON always serialize.
    serde_json::to_string(&stored).ok()
}

/// The steps stored as `text` by [`encode_steps`].
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn decode_steps(text: &str) -> Result<Vec<StepRecord>, serde_json::Error> {
    let stored: Vec<StoredStep<'_>> = serde_json::from_str(text)?;
    stored
        .into_iter()
        .map(|step| {
            Ok(StepRecord {
                name: step.name.into_owned(),
                status: step.status,
                attempts: step.attempts,
                compensation_attempts: step.compensation_attempts,
                started_at: time(step.started_at)?,
                ended_at: step.ended_at.map(time).transpose()?,
                compensated_at: step.compensated_at.map(time).transpose()?,
                error: step.error.map(std::borrow::Cow::into_owned),
                retry: step.retry,
                output: match step.output {
                    Some(raw) => Some(StepOutput::from_json(raw.get().to_owned())?),
                    None if finished(step.status) => Some(StepOutput::none()),
                    None => None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_steps_keep_the_output_text_and_every_field() {
        let mut step = StepRecord::started("charge", 2);
        step.status = StepStatus::Succeeded;
        step.ended_at = Some(now());
        step.compensated_at = Some(now());
        step.error = Some("gateway timed out".to_owned());
        step.output = Some(
            StepOutput::from_json(r#"{"amount": 12345678.91, "z": 1, "a": 0.10}"#.to_owned())
                .unwrap(),
        );
        let mut quiet = StepRecord::started("reserve", 1);
        quiet.status = StepStatus::Succeeded;
        quiet.output = Some(StepOutput::none());
        let steps = vec![quiet, step, StepRecord::started("ship", 1).in_retry(2)];
        let text = encode_steps(&steps).unwrap();
        assert!(
            text.contains(r#"{"amount": 12345678.91, "z": 1, "a": 0.10}"#),
            "{text}"
        );
        assert_eq!(decode_steps(&text).unwrap(), steps);
        assert!(text.len() < 330, "compact: {} bytes, {text}", text.len());
        assert_eq!(encode_steps(&[]), None);
    }

    #[test]
    fn statuses_only_move_forward() {
        use StepStatus::*;
        for status in StepStatus::ALL {
            assert!(status.may_become(status));
        }
        assert!(!Compensated.may_become(Compensating));
        assert!(!Failed.may_become(Running));
        assert!(!Succeeded.may_become(Failed));
        assert!(!Running.may_become(Compensating));
    }
}
