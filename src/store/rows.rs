//! Rows as the database returns them, and their conversion to Aura's types.
//!
//! Kept apart from the queries so that the mapping between columns and fields is in one place.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::StoreError;
use crate::domain::event::{StoredEvent, format_at};
use crate::domain::job::{JobState, JobStatus, Stage};

/// A `jobs` row, column for column.
#[derive(Debug, Clone)]
pub(super) struct JobRow {
    pub job_id: String,
    pub created_event_id: i64,
    pub owner: String,
    pub status: String,
    pub stage: Option<String>,
    pub percent: f64,
    pub attempt: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub output: Option<String>,
    pub last_event_id: i64,
    pub request: String,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn parse_time(s: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| corrupt("a jobs timestamp"))
}

impl TryFrom<JobRow> for JobState {
    type Error = StoreError;

    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(JobState {
            job_id: Uuid::parse_str(&r.job_id).map_err(|_| corrupt("jobs.job_id"))?,
            owner: r.owner,
            status: JobStatus::parse(&r.status).ok_or_else(|| corrupt("jobs.status"))?,
            stage: r
                .stage
                .as_deref()
                .map(|s| Stage::parse(s).ok_or_else(|| corrupt("jobs.stage")))
                .transpose()?,
            percent: r.percent,
            created_at: parse_time(&r.created_at)?,
            started_at: r.started_at.as_deref().map(parse_time).transpose()?,
            finished_at: r.finished_at.as_deref().map(parse_time).transpose()?,
            attempt: u32::try_from(r.attempt).map_err(|_| corrupt("jobs.attempt"))?,
            error: r
                .error
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|_| corrupt("jobs.error"))?,
            output: r
                .output
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|_| corrupt("jobs.output"))?,
            last_event_id: r.last_event_id,
            request: serde_json::from_str(&r.request).map_err(|_| corrupt("jobs.request"))?,
        })
    }
}

/// The columns of a new `jobs` row: what an event can change, plus what the first event fixes.
pub(super) struct JobColumns {
    pub changes: JobChanges,
    pub owner: String,
    pub created_at: String,
    pub request: String,
}

impl From<&JobState> for JobColumns {
    fn from(s: &JobState) -> Self {
        JobColumns {
            changes: JobChanges::from(s),
            owner: s.owner.clone(),
            created_at: format_at(s.created_at),
            request: serde_json::to_string(&s.request).unwrap_or_default(),
        }
    }
}

/// An `events` row.
pub(super) struct EventRow {
    pub id: i64,
    pub job_id: String,
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

impl EventRow {
    /// The event, or `None` for a row whose job id is not a UUID (written by something else).
    pub fn into_event(self) -> Option<StoredEvent> {
        let job_id = Uuid::parse_str(&self.job_id).ok()?;
        Some(StoredEvent::new(self.id, job_id, self.kind, self.data, self.created_at))
    }
}

/// The columns an event can change, for the writer's per-event `UPDATE` (no request to encode).
pub(super) struct JobChanges {
    pub job_id: String,
    pub status: &'static str,
    pub stage: Option<&'static str>,
    pub percent: f64,
    pub attempt: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub output: Option<String>,
    pub last_event_id: i64,
}

impl From<&JobState> for JobChanges {
    fn from(s: &JobState) -> Self {
        JobChanges {
            job_id: s.job_id.to_string(),
            status: s.status.name(),
            stage: s.stage.map(Stage::name),
            percent: s.percent,
            attempt: i64::from(s.attempt),
            started_at: s.started_at.map(format_at),
            finished_at: s.finished_at.map(format_at),
            error: s.error.as_ref().and_then(|e| serde_json::to_string(e).ok()),
            output: s.output.as_ref().and_then(|o| serde_json::to_string(o).ok()),
            last_event_id: s.last_event_id,
        }
    }
}

/// The one-row answer of a framed replay page.
pub(super) struct FramedRow {
    pub count: i64,
    pub last_id: Option<i64>,
    pub terminal_id: Option<i64>,
    pub dirty: Option<i64>,
    pub frames: Option<String>,
}

/// Whether the frames of a page (`id: N\n…\n\n` each) carry strictly ascending ids.
fn ids_ascend(frames: &str) -> bool {
    let mut last = i64::MIN;
    for frame in frames.split_terminator("\n\n") {
        let Some(id) = frame.strip_prefix("id: ").and_then(|rest| rest.split('\n').next()) else {
            return false;
        };
        match id.parse::<i64>() {
            Ok(id) if id > last => last = id,
            _ => return false,
        }
    }
    true
}

impl FramedRow {
    /// The page, or `None` when a row needs normalization (or a terminal event is not last).
    pub fn into_page(self) -> Option<super::FramedPage> {
        if self.dirty.unwrap_or(0) > 0 || self.terminal_id.is_some_and(|t| Some(t) != self.last_id) {
            return None;
        }
        let frames = self.frames.unwrap_or_default();
        // `id: …\nevent: …\ndata: …\n\n`: any other line break came from a `type` or `data`.
        let line_feeds = frames.bytes().filter(|&b| b == b'\n').count();
        if line_feeds != 4 * usize::try_from(self.count).unwrap_or(0) || frames.contains('\r') {
            return None;
        }
        if !ids_ascend(&frames) {
            return None;
        }
        Some(super::FramedPage {
            frames: bytes::Bytes::from(frames),
            count: usize::try_from(self.count).unwrap_or(0),
            last_id: self.last_id,
            terminal_id: self.terminal_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ids_ascend;

    #[test]
    fn a_page_is_accepted_only_with_ascending_ids() {
        assert!(ids_ascend("id: 1\nevent: a\ndata: {}\n\nid: 5\nevent: b\ndata: {}\n\n"));
        assert!(ids_ascend(""));
        assert!(!ids_ascend("id: 5\nevent: a\ndata: {}\n\nid: 1\nevent: b\ndata: {}\n\n"));
        assert!(!ids_ascend("id: 5\nevent: a\ndata: {}\n\nid: 5\nevent: b\ndata: {}\n\n"));
        assert!(!ids_ascend("event: a\ndata: {}\n\n"));
    }
}
