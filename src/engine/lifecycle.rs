//! The only ways a job changes: each function here is one decision run by the store's writer
//! against the job's current state, appending its events through the single append path.
//!
//! The API handlers use [`create`] and [`cancel`]; the pipeline holds a [`JobHandle`] and calls
//! `start_stage`, `progress`, `complete_stage`, `warn`, `fail`, `complete` and `cancelled`.
//! Overall percent is clamped here so it never goes down within one attempt.

use uuid::Uuid;

use crate::domain::event::{
    EventBody, JobCancelledData, JobCompletedData, JobError, JobFailedData, JobOutput, JobStatusData,
    NoticeData, StepProgressData, StepState, StepStatusData,
};
use crate::domain::job::{JobState, JobStatus, OUTPUT_EXPIRED, Stage, round1};
use crate::domain::spec::JobSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_util::sync::CancellationToken;

use crate::store::{Applied, LeaseOp, Refusal, Store, StoreError};

/// What a lifecycle call returns: the store may fail, or the decision may be refused.
pub type Outcome = Result<Result<Applied, Refusal>, StoreError>;

/// Creates a Queued job whose first event carries its request and owner.
pub async fn create(store: &Store, job_id: Uuid, spec: JobSpec, owner: String) -> Outcome {
    store
        .apply(
            job_id,
            Box::new(move |state| match state {
                Some(_) => Err(Refusal::Conflict("a job with this id exists".into())),
                None => Ok(vec![EventBody::JobStatus(JobStatusData {
                    status: JobStatus::Queued,
                    stage: None,
                    percent: 0.0,
                    attempt: Some(0),
                    owner: Some(owner.clone()),
                    request: Some(Box::new(spec.clone())),
                })]),
            }),
        )
        .await
}

/// Asks a job to stop: a Queued job is cancelled at once, a Running one becomes Cancelling (the
/// worker then stops it and appends `job-cancelled`), a Cancelling one is left as it is.
pub async fn cancel(store: &Store, job_id: Uuid) -> Outcome {
    store
        .apply(
            job_id,
            Box::new(|state| {
                let s = state.ok_or(Refusal::NotFound)?;
                match s.status {
                    JobStatus::Queued => Ok(vec![EventBody::JobCancelled(JobCancelledData { step: None })]),
                    JobStatus::Running => Ok(vec![EventBody::JobStatus(JobStatusData {
                        status: JobStatus::Cancelling,
                        stage: s.stage,
                        percent: s.percent,
                        attempt: Some(s.attempt),
                        owner: None,
                        request: None,
                    })]),
                    JobStatus::Cancelling => Ok(Vec::new()),
                    done => Err(Refusal::Conflict(format!("the job is already {}", done.name()))),
                }
            }),
        )
        .await
}

/// Claims a Queued job for a worker: Running, the next attempt, at the start of `stage`.
pub async fn claim(store: &Store, job_id: Uuid) -> Outcome {
    store
        .apply_leased(
            job_id,
            LeaseOp::Take,
            Box::new(|state| {
                let s = state.ok_or(Refusal::NotFound)?;
                if s.status != JobStatus::Queued {
                    return Err(Refusal::Conflict(format!("the job is {}", s.status.name())));
                }
                Ok(vec![new_attempt(s)])
            }),
        )
        .await
}

/// The event that starts a job's next attempt: Running, at the start of Script.
fn new_attempt(s: &JobState) -> EventBody {
    EventBody::JobStatus(JobStatusData {
        status: JobStatus::Running,
        stage: Some(Stage::Script),
        percent: 0.0,
        attempt: Some(s.attempt + 1),
        owner: None,
        request: None,
    })
}

/// Continues a job parked for lack of disk space as a new attempt (it stays Running; the new
/// attempt skips the stages whose artifacts are verified). Refused unless the job is Running in
/// `attempt`.
pub async fn resume_parked(store: &Store, job_id: Uuid, attempt: u32) -> Outcome {
    store
        .apply_leased(
            job_id,
            LeaseOp::Take,
            Box::new(move |state| {
                let s = live(state)?;
                if s.status != JobStatus::Running {
                    return Err(Refusal::Conflict(format!("the job is {}", s.status.name())));
                }
                fence(s, Some(attempt))?;
                Ok(vec![new_attempt(s)])
            }),
        )
        .await
}

/// Records that a completed job's video was deleted (`AURA_OUTPUT_RETENTION`): a `warning`
/// `output-expired` after its terminal event, which folds into "no output". Refused unless the
/// job is Completed and still has its output, so the warning is appended once.
pub async fn expire_output(store: &Store, job_id: Uuid) -> Outcome {
    store
        .apply(
            job_id,
            Box::new(|state| {
                let s = state.ok_or(Refusal::NotFound)?;
                if s.status != JobStatus::Completed || s.output.is_none() {
                    return Err(Refusal::Conflict("the job has no output to expire".into()));
                }
                Ok(vec![EventBody::Warning(NoticeData {
                    code: OUTPUT_EXPIRED.into(),
                    message: "the video was deleted after the output retention period".into(),
                    step: None,
                })])
            }),
        )
        .await
}

/// Refuses changes to a job that has ended or does not exist.
fn live(state: Option<&JobState>) -> Result<&JobState, Refusal> {
    let s = state.ok_or(Refusal::NotFound)?;
    if s.status.is_terminal() {
        return Err(Refusal::Conflict(format!("the job is already {}", s.status.name())));
    }
    Ok(s)
}

/// Refuses a worker's append to an attempt that is no longer the job's: another node took the
/// job over (its lease had expired), so this node's writes must not count.
fn fence(s: &JobState, attempt: Option<u32>) -> Result<(), Refusal> {
    match attempt {
        Some(mine) if s.attempt != mine => Err(Refusal::Conflict(format!(
            "the job continues as attempt {}; attempt {mine} may no longer write",
            s.attempt
        ))),
        _ => Ok(()),
    }
}

/// A worker's handle on the job it runs.
#[derive(Clone)]
pub struct JobHandle {
    store: Store,
    job_id: Uuid,
    /// The attempt this worker runs, when its writes are fenced (see [`JobHandle::fenced`]).
    attempt: Option<Arc<AtomicU32>>,
    /// Cancelled when a write was refused because the attempt is no longer the job's.
    lost: CancellationToken,
}

impl JobHandle {
    /// A handle whose writes are not fenced (tests and benchmarks drive jobs with it).
    pub fn new(store: Store, job_id: Uuid) -> Self {
        JobHandle { store, job_id, attempt: None, lost: CancellationToken::new() }
    }

    /// A worker's handle on `attempt` of the job: every write is refused once the job has moved
    /// on to another attempt, and `lost` is then cancelled (the worker kills its processes).
    pub fn fenced(store: Store, job_id: Uuid, attempt: u32, lost: CancellationToken) -> Self {
        JobHandle { store, job_id, attempt: Some(Arc::new(AtomicU32::new(attempt))), lost }
    }

    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// The attempt this handle writes for (0 when not fenced).
    pub fn attempt(&self) -> u32 {
        self.attempt.as_ref().map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// The job went on to `attempt` by this worker's own decision (a parked job resumed).
    pub fn set_attempt(&self, attempt: u32) {
        if let Some(a) = &self.attempt {
            a.store(attempt, Ordering::Release);
        }
    }

    async fn decide(
        &self,
        f: impl Fn(&JobState) -> Result<Vec<EventBody>, Refusal> + Send + Sync + 'static,
    ) -> Outcome {
        let attempt = self.attempt.as_ref().map(|a| a.load(Ordering::Acquire));
        let outcome = self
            .store
            .apply(
                self.job_id,
                Box::new(move |state| {
                    let s = live(state)?;
                    fence(s, attempt)?;
                    f(s)
                }),
            )
            .await;
        if let Ok(Err(Refusal::Conflict(_))) = &outcome
            && attempt.is_some()
        {
            // Ended, or taken over: either way this worker's processes have nothing left to do.
            self.lost.cancel();
        }
        outcome
    }

    pub async fn start_stage(&self, step: Stage) -> Outcome {
        self.decide(move |_| {
            Ok(vec![EventBody::StepStatus(StepStatusData { step, state: StepState::Started })])
        })
        .await
    }

    pub async fn skip_stage(&self, step: Stage) -> Outcome {
        self.decide(move |s| {
            let percent = round1(s.percent.max(step.band().1));
            Ok(vec![
                EventBody::StepStatus(StepStatusData { step, state: StepState::Skipped }),
                EventBody::StepProgress(StepProgressData {
                    step,
                    progress_pct: 100.0,
                    percent,
                    message: format!("{} kept from an earlier attempt", step.name()),
                }),
            ])
        })
        .await
    }

    /// `pct` percent through `step`; overall percent never goes below what was reported.
    pub async fn progress(&self, step: Stage, pct: f64, message: String) -> Outcome {
        self.decide(move |s| Ok(vec![progress_event(s, step, pct, message.clone())])).await
    }

    /// The stage's 100 % (always sent) and its `Completed`.
    pub async fn complete_stage(&self, step: Stage, message: String) -> Outcome {
        self.decide(move |s| {
            Ok(vec![
                progress_event(s, step, 100.0, message.clone()),
                EventBody::StepStatus(StepStatusData { step, state: StepState::Completed }),
            ])
        })
        .await
    }

    pub async fn warn(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        let code = code.to_owned();
        self.decide(move |_| {
            Ok(vec![EventBody::Warning(NoticeData { code: code.clone(), message: message.clone(), step })])
        })
        .await
    }

    pub async fn error(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        let code = code.to_owned();
        self.decide(move |_| {
            Ok(vec![EventBody::Error(NoticeData { code: code.clone(), message: message.clone(), step })])
        })
        .await
    }

    pub async fn fail(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        let code = code.to_owned();
        self.decide(move |_| {
            let error = JobError { code: code.clone(), message: message.clone() };
            Ok(vec![EventBody::JobFailed(JobFailedData { step, error })])
        })
        .await
    }

    pub async fn complete(&self, output: JobOutput) -> Outcome {
        self.decide(move |_| Ok(vec![EventBody::JobCompleted(JobCompletedData { output: output.clone() })]))
            .await
    }

    pub async fn cancelled(&self, step: Option<Stage>) -> Outcome {
        self.decide(move |_| Ok(vec![EventBody::JobCancelled(JobCancelledData { step })])).await
    }
}

fn progress_event(s: &JobState, step: Stage, pct: f64, message: String) -> EventBody {
    let pct = round1(pct.clamp(0.0, 100.0));
    EventBody::StepProgress(StepProgressData {
        step,
        progress_pct: pct,
        percent: step.overall(pct).max(s.percent),
        message,
    })
}

/// What [`recover`] did with a job left behind by a dead server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// A new attempt is Running and must be handed to a worker.
    Resumed,
    /// It was Cancelling: now Cancelled.
    Cancelled,
    /// It has used up its attempts: now Failed with `too-many-attempts`.
    GaveUp,
}

/// Why a job's attempt was cut short without a word from its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// The server restarted (SQLite: this process holds the data folder, so every Running job
    /// it finds was orphaned).
    Restart,
    /// The node running it stopped renewing its lease (PostgreSQL): it died or lost the database.
    LeaseExpired,
}

/// After a restart: a Running job gets a `warning` (`engine-restarted`, naming its step) and a
/// new attempt, or fails with `too-many-attempts` once `max_attempts` are used up; a Cancelling
/// job ends Cancelled.
pub async fn recover(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
) -> Result<Result<Recovered, Refusal>, StoreError> {
    interrupted(store, job_id, max_attempts, Interruption::Restart).await
}

/// Like [`recover`], for a job whose lease expired: the warning is `node-lost`, and the new
/// attempt waits for any worker node. Refused unless the lease is still expired when the
/// decision runs.
pub async fn recover_expired(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
) -> Result<Result<Recovered, Refusal>, StoreError> {
    interrupted(store, job_id, max_attempts, Interruption::LeaseExpired).await
}

async fn interrupted(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
    why: Interruption,
) -> Result<Result<Recovered, Refusal>, StoreError> {
    let lease = match why {
        Interruption::Restart => LeaseOp::Keep,
        Interruption::LeaseExpired => LeaseOp::Orphan,
    };
    let outcome = store
        .apply_leased(
            job_id,
            lease,
            Box::new(move |state| {
                let s = live(state)?;
                let step = s.stage;
                let where_ =
                    step.map_or("before its first stage".to_owned(), |st| format!("in {}", st.name()));
                let (code, what) = match why {
                    Interruption::Restart => ("engine-restarted", "the server restarted"),
                    Interruption::LeaseExpired => {
                        ("node-lost", "the node running the job stopped renewing its lease")
                    }
                };
                match s.status {
                    JobStatus::Cancelling => Ok(vec![EventBody::JobCancelled(JobCancelledData { step })]),
                    JobStatus::Running => {
                        let warning = EventBody::Warning(NoticeData {
                            code: code.into(),
                            message: format!("{what} while the job was {where_} (attempt {})", s.attempt),
                            step,
                        });
                        let next = if s.attempt >= max_attempts {
                            EventBody::JobFailed(JobFailedData {
                                step,
                                error: JobError {
                                    code: "too-many-attempts".into(),
                                    message: format!(
                                        "the job was interrupted {} times; giving up",
                                        s.attempt
                                    ),
                                },
                            })
                        } else {
                            new_attempt(s)
                        };
                        Ok(vec![warning, next])
                    }
                    other => Err(Refusal::Conflict(format!("the job is {}", other.name()))),
                }
            }),
        )
        .await?;
    Ok(outcome.map(|applied| match applied.state.status {
        JobStatus::Cancelled => Recovered::Cancelled,
        JobStatus::Failed => Recovered::GaveUp,
        _ => Recovered::Resumed,
    }))
}
