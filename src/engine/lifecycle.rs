//! The only ways a job changes: each function here is one decision run by the store's writer
//! against the job's current state, appending its events through the single append path.
//!
//! The API handlers use [`create`] and [`cancel`]; the pipeline holds a [`JobHandle`] and calls
//! `start_stage`, `progress`, `complete_stage`, `warn`, `fail`, `complete` and `cancelled`,
//! each decided by [`decide_report`] (a Cancelling job takes only `job-cancelled`).
//! Overall percent is clamped here so it never goes down within one attempt.

use uuid::Uuid;

use crate::domain::event::{
    EventBody, JobCancelledData, JobCompletedData, JobError, JobFailedData, JobOutput, JobStatusData,
    NoticeData, StepProgressData, StepState, StepStatusData,
};
use crate::domain::job::{JobState, JobStatus, OUTPUT_EXPIRED, Stage, round1};
use crate::domain::spec::JobSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

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
        Some(mine) if s.attempt != mine => Err(Refused::Superseded { now: s.attempt, mine }.into()),
        _ => Ok(()),
    }
}

/// What the worker running a job asks to append: one command per [`JobHandle`] method.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    StartStage(Stage),
    SkipStage(Stage),
    Progress { step: Stage, pct: f64, message: String },
    CompleteStage { step: Stage, message: String },
    Warn { step: Option<Stage>, code: String, message: String },
    Error { step: Option<Stage>, code: String, message: String },
    Fail { step: Option<Stage>, code: String, message: String },
    Complete(JobOutput),
    Cancelled(Option<Stage>),
}

/// Why a worker's [`Report`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    /// The job has ended: nothing more is written for it.
    Ended(JobStatus),
    /// The job went on as attempt `now`: attempt `mine` may no longer write (its node lost the
    /// lease, or the job was resumed elsewhere).
    Superseded {
        now: u32,
        mine: u32,
    },
    /// The job is Cancelling: the cancel wins, and the only thing left to append is
    /// `job-cancelled`. Neither a stage's work nor `job-completed` nor `job-failed` can take the
    /// job anywhere else.
    Cancelling,
}

impl Refused {
    /// Whether the job is no longer this worker's at all (it ended, or went on as another
    /// attempt): then the worker appends nothing more, not even a terminal event.
    pub fn job_left(self) -> bool {
        !matches!(self, Refused::Cancelling)
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        match r {
            Refused::NotFound => Refusal::NotFound,
            Refused::Ended(status) => Refusal::Conflict(format!("the job is already {}", status.name())),
            Refused::Superseded { now, mine } => Refusal::Conflict(format!(
                "the job continues as attempt {now}; attempt {mine} may no longer write"
            )),
            Refused::Cancelling => {
                Refusal::Conflict("the job is being cancelled; only job-cancelled may end it".into())
            }
        }
    }
}

/// The decision on a worker's report against the job's state (`None`: no such job), for the
/// attempt the worker runs (`None`: not fenced, as tests and benchmarks drive jobs).
///
/// A job that has ended takes nothing; an attempt the job has moved past writes nothing; a
/// Cancelling job takes only `job-cancelled`, so a Cancelling job always ends Cancelled. Every
/// other report is accepted.
pub fn decide_report(
    state: Option<&JobState>,
    attempt: Option<u32>,
    report: &Report,
) -> Result<Vec<EventBody>, Refused> {
    let s = state.ok_or(Refused::NotFound)?;
    if s.status.is_terminal() {
        return Err(Refused::Ended(s.status));
    }
    if let Some(mine) = attempt
        && s.attempt != mine
    {
        return Err(Refused::Superseded { now: s.attempt, mine });
    }
    if s.status == JobStatus::Cancelling && !matches!(report, Report::Cancelled(_)) {
        return Err(Refused::Cancelling);
    }
    Ok(match report {
        Report::StartStage(step) => {
            vec![EventBody::StepStatus(StepStatusData { step: *step, state: StepState::Started })]
        }
        Report::SkipStage(step) => {
            let step = *step;
            let percent = round1(s.percent.max(step.band().1));
            vec![
                EventBody::StepStatus(StepStatusData { step, state: StepState::Skipped }),
                EventBody::StepProgress(StepProgressData {
                    step,
                    progress_pct: 100.0,
                    percent,
                    message: format!("{} kept from an earlier attempt", step.name()),
                }),
            ]
        }
        Report::Progress { step, pct, message } => vec![progress_event(s, *step, *pct, message.clone())],
        Report::CompleteStage { step, message } => vec![
            progress_event(s, *step, 100.0, message.clone()),
            EventBody::StepStatus(StepStatusData { step: *step, state: StepState::Completed }),
        ],
        Report::Warn { step, code, message } => {
            vec![EventBody::Warning(NoticeData { code: code.clone(), message: message.clone(), step: *step })]
        }
        Report::Error { step, code, message } => {
            vec![EventBody::Error(NoticeData { code: code.clone(), message: message.clone(), step: *step })]
        }
        Report::Fail { step, code, message } => {
            let error = JobError { code: code.clone(), message: message.clone() };
            vec![EventBody::JobFailed(JobFailedData { step: *step, error })]
        }
        Report::Complete(output) => {
            vec![EventBody::JobCompleted(JobCompletedData { output: output.clone() })]
        }
        Report::Cancelled(step) => vec![EventBody::JobCancelled(JobCancelledData { step: *step })],
    })
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

    /// Appends what `report` decides on the writer. A decision may run more than once (see
    /// `store::Decide`); the reason of the last refusal is what the answer says.
    async fn report(&self, report: Report) -> Outcome {
        let attempt = self.attempt.as_ref().map(|a| a.load(Ordering::Acquire));
        let why = Arc::new(AtomicU8::new(NOT_REFUSED));
        let seen = why.clone();
        let outcome = self
            .store
            .apply(
                self.job_id,
                Box::new(move |state| {
                    decide_report(state, attempt, &report).map_err(|refused| {
                        seen.store(if refused.job_left() { JOB_LEFT } else { CANCELLING }, Ordering::Release);
                        Refusal::from(refused)
                    })
                }),
            )
            .await;
        if let Ok(Err(_)) = &outcome {
            match why.load(Ordering::Acquire) {
                // Ended, or taken over: this worker's processes have nothing left to do.
                JOB_LEFT if attempt.is_some() => self.lost.cancel(),
                // A cancel this worker missed: stop, and end the job Cancelled.
                CANCELLING => {
                    if let Some(stop) = &self.stop {
                        stop.cancel();
                    }
                }
                _ => {}
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

/// How [`JobHandle::report`]'s decision last ended.
const NOT_REFUSED: u8 = 0;
const JOB_LEFT: u8 = 1;
const CANCELLING: u8 = 2;

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

/// The `warning` codes of the interruptions `AURA_MAX_ATTEMPTS` counts.
const INTERRUPTIONS: [&str; 2] = ["engine-restarted", "node-lost"];

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
                    .is_ok_and(|w| INTERRUPTIONS.contains(&w.code.as_str()))
            })
            .count() as u32;
    }
}

async fn interrupted(
    store: &Store,
    job_id: Uuid,
    max_attempts: u32,
    why: Interruption,
) -> Result<Result<Recovered, Refusal>, StoreError> {
    // Read before the decision: only this node's lease decision may add one, and it is refused
    // unless the job is still the one read here.
    let before = interruptions(store, job_id).await?;
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
                    Interruption::Restart => (INTERRUPTIONS[0], "the server restarted"),
                    Interruption::LeaseExpired => {
                        (INTERRUPTIONS[1], "the node running the job stopped renewing its lease")
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
                        let next = if before + 1 >= max_attempts {
                            EventBody::JobFailed(JobFailedData {
                                step,
                                error: JobError {
                                    code: "too-many-attempts".into(),
                                    message: format!(
                                        "the job was interrupted {} times; giving up",
                                        before + 1
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    /// A job in `status` at attempt 1 (`None`: no such job).
    fn job(status: Option<JobStatus>) -> Option<JobState> {
        let status = status?;
        let spec = JobSpec::from_value(&serde_json::json!({"brief": {"topic": "table"}})).ok()?;
        let mut s = JobState::apply(
            None,
            Uuid::nil(),
            1,
            OffsetDateTime::UNIX_EPOCH,
            &EventBody::JobStatus(JobStatusData {
                status: JobStatus::Queued,
                stage: None,
                percent: 0.0,
                attempt: Some(0),
                owner: None,
                request: Some(Box::new(spec)),
            }),
        )
        .ok()?;
        s.status = status;
        s.attempt = 1;
        s.stage = Some(Stage::Visuals);
        s.percent = 40.0;
        Some(s)
    }

    fn reports() -> Vec<Report> {
        let output = JobOutput {
            video_path: "jobs/x/output.mp4".into(),
            video_url: "/api/jobs/x/output".into(),
            size_bytes: 1,
            duration_sec: 1.0,
        };
        vec![
            Report::StartStage(Stage::Render),
            Report::SkipStage(Stage::Render),
            Report::Progress { step: Stage::Visuals, pct: 50.0, message: "half".into() },
            Report::CompleteStage { step: Stage::Visuals, message: "done".into() },
            Report::Warn { step: None, code: "w".into(), message: "w".into() },
            Report::Error { step: None, code: "e".into(), message: "e".into() },
            Report::Fail { step: Some(Stage::Render), code: "ffmpeg-failed".into(), message: "f".into() },
            Report::Complete(output),
            Report::Cancelled(Some(Stage::Render)),
        ]
    }

    /// What a report leaves the job as, folded the way the store folds it.
    fn status_after(state: &JobState, events: &[EventBody]) -> Option<JobStatus> {
        let mut s = state.clone();
        for (n, e) in events.iter().enumerate() {
            s = JobState::apply(Some(s), state.job_id, 2 + n as i64, OffsetDateTime::UNIX_EPOCH, e).ok()?;
        }
        Some(s.status)
    }

    /// Every report in every state, for the attempt the job is on, another one, and unfenced.
    #[test]
    fn each_report_in_each_state_is_decided_as_the_table_says() {
        use JobStatus::*;
        let statuses = [
            None,
            Some(Queued),
            Some(Running),
            Some(Cancelling),
            Some(Completed),
            Some(Failed),
            Some(Cancelled),
        ];
        for status in statuses {
            let state = job(status);
            for report in reports() {
                for attempt in [Some(1), Some(2), None] {
                    let got = decide_report(state.as_ref(), attempt, &report);
                    let is_cancel = matches!(report, Report::Cancelled(_));
                    let want: Result<(), Refused> = match status {
                        None => Err(Refused::NotFound),
                        Some(done @ (Completed | Failed | Cancelled)) => Err(Refused::Ended(done)),
                        Some(_) if attempt == Some(2) => Err(Refused::Superseded { now: 1, mine: 2 }),
                        Some(Cancelling) if !is_cancel => Err(Refused::Cancelling),
                        Some(_) => Ok(()),
                    };
                    let case = format!("{report:?} in {status:?} for attempt {attempt:?}");
                    match (&got, want) {
                        (Ok(events), Ok(())) => {
                            assert!(!events.is_empty(), "{case}: appends something");
                            let (Some(before), Some(after)) =
                                (state.as_ref(), state.as_ref().and_then(|s| status_after(s, events)))
                            else {
                                panic!("{case}: the events fold");
                            };
                            // From Cancelling the only way out is Cancelled.
                            if before.status == Cancelling {
                                assert_eq!(after, Cancelled, "{case}");
                            }
                        }
                        (Err(refused), Err(wanted)) => assert_eq!(*refused, wanted, "{case}"),
                        _ => panic!("{case}: got {got:?}, wanted {want:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn only_a_refusal_for_cancelling_leaves_the_job_to_its_worker() {
        assert!(!Refused::Cancelling.job_left(), "the worker still ends the job Cancelled");
        assert!(Refused::Superseded { now: 2, mine: 1 }.job_left());
        assert!(Refused::Ended(JobStatus::Completed).job_left());
        assert!(Refused::NotFound.job_left());
    }
}
