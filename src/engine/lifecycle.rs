//! The only ways a job changes, as the engine and the HTTP edge call them: each function here
//! sends one [`Command`] (decided by the pure `Command::decide` in `domain::command`) to the
//! store's writer, which decides it against the job's current state and appends its events
//! through the single append path.
//!
//! The API handlers use [`create`] and [`cancel`]; the pipeline holds a [`JobHandle`] and calls
//! `start_stage`, `progress`, `complete_stage`, `warn`, `fail`, `complete` and `cancelled`,
//! each a [`Report`] (a Cancelling job takes only `job-cancelled`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::command::{Command, Interruption, Report};
use crate::domain::event::{JobOutput, NoticeData};
use crate::domain::job::{JobStatus, Stage};
use crate::domain::spec::JobSpec;
use crate::store::{Applied, ApplyError, LeaseOp, Refusal, Store, StoreError};

/// What a lifecycle call returns: what was appended, or why nothing was (refused, or the store
/// failed).
pub type Outcome = Result<Applied, ApplyError>;

/// Creates a Queued job whose first event carries its request and owner.
pub async fn create(store: &Store, job_id: Uuid, spec: JobSpec, owner: String) -> Outcome {
    store.apply(job_id, Command::Create { spec: Box::new(spec), owner }).await
}

/// Asks a job to stop (see [`Command::Cancel`]).
pub async fn cancel(store: &Store, job_id: Uuid) -> Outcome {
    store.apply(job_id, Command::Cancel).await
}

/// Claims a Queued job for a worker: Running, the next attempt, at the start of Script.
pub async fn claim(store: &Store, job_id: Uuid) -> Outcome {
    store.apply_leased(job_id, LeaseOp::Take, Command::Claim).await
}

/// Continues a job parked for lack of disk space (or store, or database) as a new attempt (it
/// stays Running; the new attempt skips the stages whose artifacts are verified). Refused unless
/// the job is Running in `attempt`.
pub async fn resume_parked(store: &Store, job_id: Uuid, attempt: u32) -> Outcome {
    store.apply_leased(job_id, LeaseOp::Take, Command::ResumeParked { attempt }).await
}

/// Records that a completed job's video was deleted (`AURA_OUTPUT_RETENTION`): a `warning`
/// `output-expired` after its terminal event, which folds into "no output". Refused unless the
/// job is Completed and still has its output, so the warning is appended once.
pub async fn expire_output(store: &Store, job_id: Uuid) -> Outcome {
    store.apply(job_id, Command::ExpireOutput).await
}

/// A worker's handle on the job it runs.
#[derive(Clone)]
pub struct JobHandle {
    store: Store,
    job_id: Uuid,
    /// The attempt this worker runs, when its writes are fenced (see [`JobHandle::fenced`]).
    attempt: Option<Arc<AtomicU32>>,
    /// Cancelled when a write was refused because the job is no longer this attempt's (it
    /// ended, or went on as another attempt): the worker stops and appends nothing more.
    lost: CancellationToken,
    /// Cancelled when a write was refused because the job is Cancelling: the worker stops its
    /// processes and appends `job-cancelled` (see [`JobHandle::stopping`]).
    stop: Option<CancellationToken>,
}

impl JobHandle {
    /// A handle whose writes are not fenced (tests and benchmarks drive jobs with it).
    pub fn new(store: Store, job_id: Uuid) -> Self {
        JobHandle { store, job_id, attempt: None, lost: CancellationToken::new(), stop: None }
    }

    /// A worker's handle on `attempt` of the job: every write is refused once the job has moved
    /// on to another attempt or ended, and `lost` is then cancelled (the worker kills its
    /// processes and appends nothing more).
    pub fn fenced(store: Store, job_id: Uuid, attempt: u32, lost: CancellationToken) -> Self {
        JobHandle { store, job_id, attempt: Some(Arc::new(AtomicU32::new(attempt))), lost, stop: None }
    }

    /// `stop` is cancelled when a write is refused because the job is Cancelling (a cancel this
    /// node had not heard of yet): the worker kills its processes and ends the job Cancelled.
    pub fn stopping(mut self, stop: CancellationToken) -> Self {
        self.stop = Some(stop);
        self
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

    /// Appends what `report` decides on the writer. A refusal says whether the job is still
    /// this worker's: if it ended or went on as another attempt, `lost` is cancelled; if it is
    /// Cancelling, `stop` is.
    async fn report(&self, report: Report) -> Outcome {
        let attempt = self.attempt.as_ref().map(|a| a.load(Ordering::Acquire));
        let outcome = self.store.apply(self.job_id, Command::Report { attempt, report }).await;
        if let Err(ApplyError::Refused(Refusal::Report(refused))) = &outcome {
            if refused.job_left() {
                // Ended, or taken over: this worker's processes have nothing left to do.
                if attempt.is_some() {
                    self.lost.cancel();
                }
            } else if let Some(stop) = &self.stop {
                // A cancel this worker missed: stop, and end the job Cancelled.
                stop.cancel();
            }
        }
        outcome
    }

    /// Whether a refused write said the job is Cancelling (see [`JobHandle::stopping`]).
    pub fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(CancellationToken::is_cancelled)
    }

    pub async fn start_stage(&self, step: Stage) -> Outcome {
        self.report(Report::StartStage(step)).await
    }

    pub async fn skip_stage(&self, step: Stage) -> Outcome {
        self.report(Report::SkipStage(step)).await
    }

    /// `pct` percent through `step`; overall percent never goes below what was reported.
    pub async fn progress(&self, step: Stage, pct: f64, message: String) -> Outcome {
        self.report(Report::Progress { step, pct, message }).await
    }

    /// The stage's 100 % (always sent) and its `Completed`.
    pub async fn complete_stage(&self, step: Stage, message: String) -> Outcome {
        self.report(Report::CompleteStage { step, message }).await
    }

    pub async fn warn(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        self.report(Report::Warn { step, code: code.to_owned(), message }).await
    }

    pub async fn error(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        self.report(Report::Error { step, code: code.to_owned(), message }).await
    }

    pub async fn fail(&self, step: Option<Stage>, code: &str, message: String) -> Outcome {
        self.report(Report::Fail { step, code: code.to_owned(), message }).await
    }

    pub async fn complete(&self, output: JobOutput) -> Outcome {
        self.report(Report::Complete(output)).await
    }

    pub async fn cancelled(&self, step: Option<Stage>) -> Outcome {
        self.report(Report::Cancelled(step)).await
    }
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

/// After a restart: a Running job gets a `warning` (`engine-restarted`, naming its step) and a
/// new attempt, or fails with `too-many-attempts` once `max_attempts` are used up; a Cancelling
/// job ends Cancelled.
pub async fn recover(store: &Store, job_id: Uuid, max_attempts: u32) -> Result<Recovered, ApplyError> {
    interrupted(store, job_id, max_attempts, Interruption::Restart).await
}

/// Like [`recover`], for a job whose lease expired: the warning is `node-lost`, and the new
/// attempt waits for any worker node. Refused unless the lease is still expired when the
/// decision runs.
pub async fn recover_expired(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
) -> Result<Recovered, ApplyError> {
    interrupted(store, job_id, max_attempts, Interruption::LeaseExpired).await
}

/// How many times the job was interrupted (a restart or a lost node), from its events. A job
/// parked for a full disk, a store or a database that went away also continues as a new
/// attempt, but those waits are not interruptions: they never use up `AURA_MAX_ATTEMPTS`.
async fn interruptions(store: &Store, job_id: Uuid) -> Result<u32, StoreError> {
    let filter = crate::store::EventFilter::Jobs(vec![job_id]);
    let (mut after, mut count) = (0, 0u32);
    loop {
        let page = store.events_after(&filter, after, 1000).await?;
        let Some(last) = page.last() else { return Ok(count) };
        after = last.id;
        count += page
            .iter()
            .filter(|e| e.kind == "warning")
            .filter(|e| {
                serde_json::from_str::<NoticeData>(e.data())
                    .is_ok_and(|w| Interruption::CODES.contains(&w.code.as_str()))
            })
            .count() as u32;
    }
}

async fn interrupted(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
    why: Interruption,
) -> Result<Recovered, ApplyError> {
    let lease = match why {
        Interruption::Restart => LeaseOp::Keep,
        Interruption::LeaseExpired => LeaseOp::Orphan,
    };
    // Read before the decision: only this node's lease decision may add one, and it is refused
    // unless the job is still the one read here.
    let before = interruptions(store, job_id).await?;
    let applied = store.apply_leased(job_id, lease, Command::Interrupt { why, before, max_attempts }).await?;
    Ok(match applied.state.status {
        JobStatus::Cancelled => Recovered::Cancelled,
        JobStatus::Failed => Recovered::GaveUp,
        _ => Recovered::Resumed,
    })
}
