//! The eight event types, their `data` payloads, and their one encoding on the wire.
//!
//! An event's `data` is stored once, as the JSON text the writer produced at append time, and
//! sent as-is in SSE frames, `/history` and to `sqlite3` users. [`Frame`] renders the SSE form
//! (`id:`/`event:`/`data:`) once per event so that every subscriber shares the same bytes.
//! Anything read back from the table is treated as untrusted: a `data` or `type` written by
//! another program is normalized so no CR or LF can ever break an SSE line.

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;
use uuid::Uuid;

use super::spec::JobSpec;
use super::status::{JobStatus, Stage};
pub use super::time::{format_at, now_micros, rfc3339_micros};

/// Every event type, in the order API.md lists them.
pub const EVENT_TYPES: [&str; 8] = [
    "job-status",
    "step-status",
    "step-progress",
    "job-completed",
    "job-failed",
    "job-cancelled",
    "warning",
    "error",
];

/// The terminal event types: after one of these a job's stream ends.
pub const TERMINAL_TYPES: [&str; 3] = ["job-completed", "job-failed", "job-cancelled"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StepState {
    Started,
    Completed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusData {
    pub status: JobStatus,
    pub stage: Option<Stage>,
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Present on the Queued event only: whose job this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Present on the Queued event only: the normalized request, so the log alone rebuilds the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Box<JobSpec>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatusData {
    pub step: Stage,
    pub state: StepState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepProgressData {
    pub step: Stage,
    pub progress_pct: f64,
    pub percent: f64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOutput {
    pub video_path: String,
    pub video_url: String,
    pub size_bytes: u64,
    pub duration_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCompletedData {
    pub output: JobOutput,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFailedData {
    pub step: Option<Stage>,
    pub error: JobError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCancelledData {
    pub step: Option<Stage>,
}

/// The payload of `warning` and `error` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoticeData {
    pub code: String,
    pub message: String,
    pub step: Option<Stage>,
}

/// One event's type and type-specific data (everything but `jobId` and `at`).
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    JobStatus(JobStatusData),
    StepStatus(StepStatusData),
    StepProgress(StepProgressData),
    JobCompleted(JobCompletedData),
    JobFailed(JobFailedData),
    JobCancelled(JobCancelledData),
    Warning(NoticeData),
    Error(NoticeData),
}

/// The envelope every `data` object shares: `jobId`, `at`, then the type's own fields.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    job_id: Uuid,
    #[serde(with = "rfc3339_micros")]
    at: OffsetDateTime,
    #[serde(flatten)]
    body: T,
}

/// An event body read back from stored `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub job_id: Uuid,
    pub at: OffsetDateTime,
    pub body: EventBody,
}

impl EventBody {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::JobStatus(_) => "job-status",
            EventBody::StepStatus(_) => "step-status",
            EventBody::StepProgress(_) => "step-progress",
            EventBody::JobCompleted(_) => "job-completed",
            EventBody::JobFailed(_) => "job-failed",
            EventBody::JobCancelled(_) => "job-cancelled",
            EventBody::Warning(_) => "warning",
            EventBody::Error(_) => "error",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, EventBody::JobCompleted(_) | EventBody::JobFailed(_) | EventBody::JobCancelled(_))
    }

    /// The `data` JSON text: one line, never a raw CR or LF.
    pub fn to_data(&self, job_id: Uuid, at: OffsetDateTime) -> String {
        fn enc<T: Serialize>(job_id: Uuid, at: OffsetDateTime, body: &T) -> String {
            // Serializing plain data structs to a String cannot fail.
            serde_json::to_string(&Envelope { job_id, at, body }).unwrap_or_default()
        }
        match self {
            EventBody::JobStatus(b) => enc(job_id, at, b),
            EventBody::StepStatus(b) => enc(job_id, at, b),
            EventBody::StepProgress(b) => enc(job_id, at, b),
            EventBody::JobCompleted(b) => enc(job_id, at, b),
            EventBody::JobFailed(b) => enc(job_id, at, b),
            EventBody::JobCancelled(b) => enc(job_id, at, b),
            EventBody::Warning(b) | EventBody::Error(b) => enc(job_id, at, b),
        }
    }

    /// Reads a stored event back; `None` for a type or payload Aura does not know.
    pub fn decode(type_name: &str, data: &str) -> Option<Decoded> {
        fn dec<T: DeserializeOwned>(data: &str, wrap: fn(T) -> EventBody) -> Option<Decoded> {
            let e: Envelope<T> = serde_json::from_str(data).ok()?;
            Some(Decoded { job_id: e.job_id, at: e.at, body: wrap(e.body) })
        }
        match type_name {
            "job-status" => dec(data, EventBody::JobStatus),
            "step-status" => dec(data, EventBody::StepStatus),
            "step-progress" => dec(data, EventBody::StepProgress),
            "job-completed" => dec(data, EventBody::JobCompleted),
            "job-failed" => dec(data, EventBody::JobFailed),
            "job-cancelled" => dec(data, EventBody::JobCancelled),
            "warning" => dec(data, EventBody::Warning),
            "error" => dec(data, EventBody::Error),
            _ => None,
        }
    }
}

/// A committed row of the `events` table, with its SSE frame rendered once.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub job_id: Uuid,
    pub kind: String,
    pub created_at: String,
    /// `id: …\nevent: …\ndata: …\n\n`, shared by every subscriber; `data` is a slice of it
    /// (the event's payload is kept once, which matters while a slow subscriber pins it).
    pub frame: Bytes,
    data_start: usize,
    /// When this process appended it (for the delivery-lag metric); `None` when read back.
    pub appended: Option<std::time::Instant>,
    /// The job's owner, set by the writer that appended it; `None` when read back from the
    /// table (streams filtered by owner then learn it once per job).
    pub owner: Option<std::sync::Arc<str>>,
}

impl StoredEvent {
    pub fn new(id: i64, job_id: Uuid, kind: String, data: String, created_at: String) -> Self {
        let kind = one_line_type(kind);
        let data = one_line_json(data);
        let head = format!("id: {id}\nevent: {kind}\ndata: ");
        let data_start = head.len();
        let mut frame = String::with_capacity(head.len() + data.len() + 2);
        frame.push_str(&head);
        frame.push_str(&data);
        frame.push_str("\n\n");
        StoredEvent {
            id,
            job_id,
            kind,
            created_at,
            frame: Bytes::from(frame),
            data_start,
            appended: None,
            owner: None,
        }
    }

    /// The event's `data` JSON, one line.
    pub fn data(&self) -> &str {
        let end = self.frame.len().saturating_sub(2);
        self.frame.get(self.data_start..end).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("null")
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL_TYPES.contains(&self.kind.as_str())
    }
}

/// An event type safe for an `event:` line (rows written by other programs may hold anything).
fn one_line_type(kind: String) -> String {
    if kind.bytes().all(|b| b.is_ascii_graphic()) && !kind.is_empty() {
        kind
    } else {
        let cleaned: String = kind.chars().filter(|c| !c.is_control() && !c.is_whitespace()).collect();
        if cleaned.is_empty() { "message".to_owned() } else { cleaned }
    }
}

/// JSON text on one line. Aura's own data already is; a foreign row with line breaks is
/// re-serialized compactly, and text that is not JSON at all is sent as a JSON string.
pub fn one_line_json(data: String) -> String {
    if !data.contains(['\n', '\r']) {
        return data;
    }
    match serde_json::from_str::<serde_json::Value>(&data) {
        Ok(v) => v.to_string(),
        Err(_) => serde_json::Value::String(data).to_string(),
    }
}

/// An event id as clients send it back (`Last-Event-ID`, `lastEventId`, `after`): a
/// non-negative decimal integer that fits an id; nothing else.
pub fn parse_event_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_and_carries_job_id_and_at() {
        let id = Uuid::new_v4();
        let at = now_micros();
        let body = EventBody::StepProgress(StepProgressData {
            step: Stage::Audio,
            progress_pct: 50.0,
            percent: 25.0,
            message: "line\nbreak \"quoted\"".into(),
        });
        let data = body.to_data(id, at);
        assert!(!data.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&data).expect("json");
        assert_eq!(v["jobId"], id.to_string());
        assert_eq!(v["progressPct"], 50.0);
        let back = EventBody::decode("step-progress", &data).expect("decodes");
        assert_eq!((back.job_id, back.at, back.body), (id, at, body));
    }

    #[test]
    fn foreign_rows_never_break_an_sse_line() {
        let e =
            StoredEvent::new(7, Uuid::nil(), "bad\ntype".into(), "{\n\"a\": 1\r\n}".into(), String::new());
        let text = std::str::from_utf8(&e.frame).expect("utf8");
        assert_eq!(text, "id: 7\nevent: badtype\ndata: {\"a\":1}\n\n");
        let e = StoredEvent::new(8, Uuid::nil(), "x".into(), "not\njson".into(), String::new());
        assert_eq!(e.data(), "\"not\\njson\"");
    }

    #[test]
    fn at_has_six_fraction_digits() {
        let at = OffsetDateTime::from_unix_timestamp(0).expect("epoch");
        assert_eq!(format_at(at), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn event_ids_are_plain_non_negative_integers() {
        assert_eq!(parse_event_id("0"), Some(0));
        assert_eq!(parse_event_id("42"), Some(42));
        for bad in ["", "abc", "-1", "1.5", " 1", "+1", "1180591620717411303424", "9223372036854775808"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
