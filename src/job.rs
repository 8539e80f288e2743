//! A job's lifecycle: its status, its stages and the projection of its events.
//!
//! The `events` table is the truth; the `jobs` row is a cache of [`JobState::apply`] folded over
//! a job's events. Keeping the fold here, in plain Rust with no SQL, lets the store, `aura check`
//! and the tests compute the same projection and compare it with what is stored.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{EventBody, JobError, JobOutput, StepState};
use crate::spec::JobSpec;

/// The owner of every job while Aura runs without tokens.
pub const LOCAL_OWNER: &str = "local";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JobStatus {
    Queued,
    Running,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Cancelling,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Cancelling => "Cancelling",
            JobStatus::Completed => "Completed",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// The five stages of a render, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Stage {
    Script,
    Audio,
    Visuals,
    Timeline,
    Render,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Script, Stage::Audio, Stage::Visuals, Stage::Timeline, Stage::Render];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Script => "Script",
            Stage::Audio => "Audio",
            Stage::Visuals => "Visuals",
            Stage::Timeline => "Timeline",
            Stage::Render => "Render",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The span of overall percent this stage covers (API.md).
    pub fn band(self) -> (f64, f64) {
        match self {
            Stage::Script => (0.0, 15.0),
            Stage::Audio => (15.0, 35.0),
            Stage::Visuals => (35.0, 65.0),
            Stage::Timeline => (65.0, 85.0),
            Stage::Render => (85.0, 100.0),
        }
    }

    /// Overall percent for `pct` percent of the way through this stage.
    pub fn overall(self, pct: f64) -> f64 {
        let (lo, hi) = self.band();
        round1(lo + (hi - lo) * pct.clamp(0.0, 100.0) / 100.0)
    }
}

/// Rounds to one decimal, the precision percent travels with.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

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
    #[serde(with = "crate::event::rfc3339_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "crate::event::rfc3339_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "crate::event::rfc3339_micros::option")]
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
            EventBody::Warning(_) | EventBody::Error(_) => {}
        }
        Ok(s)
    }
}
