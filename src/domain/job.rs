//! A job's state: the projection of its events.
//!
//! The `events` table is the truth; the `jobs` row is a cache of [`JobState::apply`] folded over
//! a job's events. Keeping the fold here, in plain Rust with no SQL, lets the store, `aura check`
//! and the tests compute the same projection and compare it with what is stored.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::event::{EventBody, JobError, JobOutput, StepState};
use super::spec::JobSpec;
pub use super::status::{JobStatus, Stage, round1};

/// The `warning` code appended when `AURA_OUTPUT_RETENTION` deleted a finished job's video: from
/// then on the job has no output (its output route answers 410).
pub const OUTPUT_EXPIRED: &str = "output-expired";

/// The `warning` code of a job parked because the disk is full; it continues as a new attempt
/// once there is room again.
pub const WAITING_FOR_DISK: &str = "waiting-for-disk";

/// The `warning` code of a job whose video (or stage artifact) the object store could not take:
/// the render is kept and storing it is retried with backoff.
pub const WAITING_FOR_STORAGE: &str = "waiting-for-storage";

/// The `warning` code of a job whose stage could not reach the database: it continues as a new
/// attempt once the database answers again.
pub const DATABASE_UNAVAILABLE: &str = "database-unavailable";

/// The owner of every job while Aura runs without tokens.
pub const LOCAL_OWNER: &str = "local";

/// The current state of one job: the `jobs` row, and the snapshot the API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobSnapshot)]
pub struct JobState {
    pub job_id: Uuid,
    pub owner: String,
    pub status: JobStatus,
    pub stage: Option<Stage>,
    pub percent: f64,
    #[serde(with = "crate::domain::event::rfc3339_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "crate::domain::event::rfc3339_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "crate::domain::event::rfc3339_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    pub attempt: u32,
    pub error: Option<JobError>,
    pub output: Option<JobOutput>,
    pub last_event_id: i64,
    pub request: JobSpec,
}

/// Why an event cannot be folded into a job's state.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FoldError {
    #[error("the first event of a job must be job-status Queued with its request")]
    NotCreated,
    #[error("a job is created only once")]
    AlreadyCreated,
}

impl JobState {
    /// Folds one stored event into the state; `None` is the state before the job exists.
    pub fn apply(
        state: Option<JobState>,
        job_id: Uuid,
        id: i64,
        at: OffsetDateTime,
        body: &EventBody,
    ) -> Result<JobState, FoldError> {
        let mut s = match (state, body) {
            (None, EventBody::JobStatus(js)) if js.status == JobStatus::Queued => {
                let request = js.request.clone().ok_or(FoldError::NotCreated)?;
                JobState {
                    job_id,
                    owner: js.owner.clone().unwrap_or_else(|| LOCAL_OWNER.to_owned()),
                    status: JobStatus::Queued,
                    stage: None,
                    percent: 0.0,
                    created_at: at,
                    started_at: None,
                    finished_at: None,
                    attempt: 0,
                    error: None,
                    output: None,
                    last_event_id: id,
                    request: *request,
                }
            }
            (None, _) => return Err(FoldError::NotCreated),
            (Some(_), EventBody::JobStatus(js)) if js.request.is_some() => {
                return Err(FoldError::AlreadyCreated);
            }
            (Some(s), _) => s,
        };
        s.last_event_id = id;
        match body {
            EventBody::JobStatus(js) => {
                s.status = js.status;
                s.stage = js.stage;
                s.percent = js.percent;
                if let Some(attempt) = js.attempt {
                    s.attempt = attempt;
                }
                if js.status == JobStatus::Running {
                    s.started_at.get_or_insert(at);
                }
            }
            EventBody::StepStatus(st) => {
                if st.state == StepState::Started {
                    s.stage = Some(st.step);
                }
            }
            EventBody::StepProgress(p) => {
                s.stage = Some(p.step);
                s.percent = p.percent;
            }
            EventBody::JobCompleted(c) => {
                s.status = JobStatus::Completed;
                s.percent = 100.0;
                s.output = Some(c.output.clone());
                s.finished_at = Some(at);
            }
            EventBody::JobFailed(f) => {
                s.status = JobStatus::Failed;
                s.error = Some(f.error.clone());
                s.finished_at = Some(at);
            }
            EventBody::JobCancelled(_) => {
                s.status = JobStatus::Cancelled;
                s.finished_at = Some(at);
            }
            // The only event that may follow a terminal one: the video is gone, the job stays.
            EventBody::Warning(w) if w.code == OUTPUT_EXPIRED => s.output = None,
            EventBody::Warning(_) | EventBody::Error(_) => {}
        }
        Ok(s)
    }
}
