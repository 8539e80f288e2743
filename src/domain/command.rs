//! The only ways a job changes, as data: each [`Command`] is decided against the job's current
//! state by one pure function, [`Command::decide`], which says what events to append or why
//! not ([`Refusal`]). Both stores' writers run that decision inside their transaction (through
//! `engine::lifecycle`), so the rules of the job's life are written once, here, and tested
//! here without a database.
//!
//! The rules: a job that has ended takes nothing; a worker's write for an attempt the job has
//! moved past is refused; a `Cancelling` job takes only `job-cancelled` from its worker, so it
//! always ends `Cancelled`; overall percent never goes down within one attempt.

use super::event::{
    EventBody, JobCancelledData, JobCompletedData, JobError, JobFailedData, JobOutput, JobStatusData,
    NoticeData, StepProgressData, StepState, StepStatusData,
};
use super::job::{JobState, JobStatus, OUTPUT_EXPIRED, Stage, round1};
use super::spec::JobSpec;

/// Why a decision appended nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no such job")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the events do not fit the job's state: {0}")]
    Invalid(String),
    /// A worker's report (or a parked job's resume), refused for this reason: the worker reads
    /// it to know whether the job is still its own ([`Refused::job_left`]).
    #[error("{}", .0.detail())]
    Report(Refused),
}

/// What someone asks of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A new Queued job whose first event carries its request and owner.
    Create { spec: Box<JobSpec>, owner: String },
    /// Stop it: a Queued job is cancelled at once, a Running one becomes Cancelling (its worker
    /// then stops it and appends `job-cancelled`), a Cancelling one is left as it is.
    Cancel,
    /// A worker takes a Queued job: Running, the next attempt, at the start of Script.
    Claim,
    /// What the worker running `attempt` appends (`None`: not fenced, as tests drive jobs).
    Report { attempt: Option<u32>, report: Report },
    /// A job that waited (for disk, store or database) continues as a new attempt; refused
    /// unless it is Running in `attempt`.
    ResumeParked { attempt: u32 },
    /// A completed job's video was deleted after the retention: `warning` `output-expired`, once.
    ExpireOutput,
    /// An attempt cut short without a word from its worker: a `warning` naming why and where,
    /// and a new attempt, or `too-many-attempts` once this is interruption number
    /// `max_attempts` (`before` counts the earlier ones); a Cancelling job ends Cancelled.
    Interrupt { why: Interruption, before: u32, max_attempts: u32 },
}

/// What the worker running a job asks to append: one command per method of its handle.
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

impl Refused {
    /// What the refusal says, in words.
    pub fn detail(self) -> String {
        match self {
            Refused::NotFound => "no such job".into(),
            Refused::Ended(status) => format!("the job is already {}", status.name()),
            Refused::Superseded { now, mine } => {
                format!("the job continues as attempt {now}; attempt {mine} may no longer write")
            }
            Refused::Cancelling => "the job is being cancelled; only job-cancelled may end it".into(),
        }
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        Refusal::Report(r)
    }
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

impl Interruption {
    /// The `warning` code that records it; `AURA_MAX_ATTEMPTS` counts these and nothing else.
    pub fn code(self) -> &'static str {
        match self {
            Interruption::Restart => "engine-restarted",
            Interruption::LeaseExpired => "node-lost",
        }
    }

    /// Every such code.
    pub const CODES: [&'static str; 2] = ["engine-restarted", "node-lost"];

    fn what(self) -> &'static str {
        match self {
            Interruption::Restart => "the server restarted",
            Interruption::LeaseExpired => "the node running the job stopped renewing its lease",
        }
    }
}

impl Command {
    /// The events this command appends to a job in `state` (`None`: no such job), or why it
    /// appends nothing. An empty list is an accepted no-op (a second cancel).
    pub fn decide(&self, state: Option<&JobState>) -> Result<Vec<EventBody>, Refusal> {
        match self {
            Command::Create { spec, owner } => match state {
                Some(_) => Err(Refusal::Conflict("a job with this id exists".into())),
                None => Ok(vec![EventBody::JobStatus(JobStatusData {
                    status: JobStatus::Queued,
                    stage: None,
                    percent: 0.0,
                    attempt: Some(0),
                    owner: Some(owner.clone()),
                    request: Some(spec.clone()),
                })]),
            },
            Command::Cancel => {
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
            }
            Command::Claim => {
                let s = state.ok_or(Refusal::NotFound)?;
                if s.status != JobStatus::Queued {
                    return Err(Refusal::Conflict(format!("the job is {}", s.status.name())));
                }
                Ok(vec![new_attempt(s)])
            }
            Command::Report { attempt, report } => Ok(decide_report(state, *attempt, report)?),
            Command::ResumeParked { attempt } => {
                let s = live(state)?;
                if s.status != JobStatus::Running {
                    return Err(Refusal::Conflict(format!("the job is {}", s.status.name())));
                }
                if s.attempt != *attempt {
                    return Err(Refused::Superseded { now: s.attempt, mine: *attempt }.into());
                }
                Ok(vec![new_attempt(s)])
            }
            Command::ExpireOutput => {
                let s = state.ok_or(Refusal::NotFound)?;
                if s.status != JobStatus::Completed || s.output.is_none() {
                    return Err(Refusal::Conflict("the job has no output to expire".into()));
                }
                Ok(vec![EventBody::Warning(NoticeData {
                    code: OUTPUT_EXPIRED.into(),
                    message: "the video was deleted after the output retention period".into(),
                    step: None,
                })])
            }
            Command::Interrupt { why, before, max_attempts } => {
                interrupt(state, *why, *before, *max_attempts)
            }
        }
    }
}

/// The decision on a worker's report against the job's state (`None`: no such job), for the
/// attempt the worker runs (`None`: not fenced, as tests and benchmarks drive jobs).
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

fn interrupt(
    state: Option<&JobState>,
    why: Interruption,
    before: u32,
    max_attempts: u32,
) -> Result<Vec<EventBody>, Refusal> {
    let s = live(state)?;
    let step = s.stage;
    match s.status {
        JobStatus::Cancelling => Ok(vec![EventBody::JobCancelled(JobCancelledData { step })]),
        JobStatus::Running => {
            let where_ = step.map_or("before its first stage".to_owned(), |st| format!("in {}", st.name()));
            let warning = EventBody::Warning(NoticeData {
                code: why.code().into(),
                message: format!("{} while the job was {where_} (attempt {})", why.what(), s.attempt),
                step,
            });
            let next = if before + 1 >= max_attempts {
                EventBody::JobFailed(JobFailedData {
                    step,
                    error: JobError {
                        code: "too-many-attempts".into(),
                        message: format!("the job was interrupted {} times; giving up", before + 1),
                    },
                })
            } else {
                new_attempt(s)
            };
            Ok(vec![warning, next])
        }
        other => Err(Refusal::Conflict(format!("the job is {}", other.name()))),
    }
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

/// Refuses changes to a job that has ended or does not exist.
fn live(state: Option<&JobState>) -> Result<&JobState, Refusal> {
    let s = state.ok_or(Refusal::NotFound)?;
    if s.status.is_terminal() {
        return Err(Refusal::Conflict(format!("the job is already {}", s.status.name())));
    }
    Ok(s)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::OffsetDateTime;
    use uuid::Uuid;

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

    /// A rendered video's output, as a job's `job-completed` carries it.
    pub(crate) fn output() -> JobOutput {
        JobOutput {
            video_path: "jobs/x/output.mp4".into(),
            video_url: "/api/jobs/x/output".into(),
            size_bytes: 1,
            duration_sec: 1.0,
        }
    }

    fn reports() -> Vec<Report> {
        vec![
            Report::StartStage(Stage::Render),
            Report::SkipStage(Stage::Render),
            Report::Progress { step: Stage::Visuals, pct: 50.0, message: "half".into() },
            Report::CompleteStage { step: Stage::Visuals, message: "done".into() },
            Report::Warn { step: None, code: "w".into(), message: "w".into() },
            Report::Error { step: None, code: "e".into(), message: "e".into() },
            Report::Fail { step: Some(Stage::Render), code: "ffmpeg-failed".into(), message: "f".into() },
            Report::Complete(output()),
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

    fn label(got: &Result<Vec<EventBody>, Refusal>) -> String {
        match got {
            Ok(events) => events.iter().map(EventBody::type_name).collect::<Vec<_>>().join("+"),
            Err(Refusal::NotFound) => "not-found".into(),
            Err(Refusal::Conflict(_)) => "conflict".into(),
            Err(Refusal::Invalid(_)) => "invalid".into(),
            Err(Refusal::Report(Refused::NotFound)) => "not-found".into(),
            Err(Refusal::Report(_)) => "conflict".into(),
        }
    }

    /// Every command but the worker's reports (above) in every state: what it appends, or why not.
    #[test]
    fn each_command_in_each_state_is_decided_as_the_table_says() {
        use JobStatus::*;
        let spec = JobSpec::from_value(&serde_json::json!({"brief": {"topic": "table"}})).expect("spec");
        let create = Command::Create { spec: Box::new(spec), owner: "o".into() };
        let interrupt = |before| Command::Interrupt { why: Interruption::Restart, before, max_attempts: 3 };
        let statuses = [
            None,
            Some(Queued),
            Some(Running),
            Some(Cancelling),
            Some(Completed),
            Some(Failed),
            Some(Cancelled),
        ];
        #[rustfmt::skip]
        let table: Vec<(Command, [&str; 7])> = vec![
            //                                  none         Queued         Running                Cancelling      Completed   Failed      Cancelled
            (create.clone(),                   ["job-status", "conflict",   "conflict",            "conflict",     "conflict", "conflict", "conflict"]),
            (Command::Cancel,                  ["not-found", "job-cancelled", "job-status",        "",             "conflict", "conflict", "conflict"]),
            (Command::Claim,                   ["not-found", "job-status",  "conflict",            "conflict",     "conflict", "conflict", "conflict"]),
            (Command::ResumeParked { attempt: 1 }, ["not-found", "conflict", "job-status",         "conflict",     "conflict", "conflict", "conflict"]),
            (Command::ResumeParked { attempt: 2 }, ["not-found", "conflict", "conflict",           "conflict",     "conflict", "conflict", "conflict"]),
            (Command::ExpireOutput,            ["not-found", "conflict",    "conflict",            "conflict",     "conflict", "conflict", "conflict"]),
            (interrupt(0),                     ["not-found", "conflict",    "warning+job-status",  "job-cancelled", "conflict", "conflict", "conflict"]),
            (interrupt(2),                     ["not-found", "conflict",    "warning+job-failed",  "job-cancelled", "conflict", "conflict", "conflict"]),
        ];
        for (command, wanted) in table {
            for (status, want) in statuses.iter().zip(wanted) {
                let got = command.decide(job(*status).as_ref());
                assert_eq!(label(&got), want, "{command:?} in {status:?}: {got:?}");
            }
        }
        // A completed job with its video expires it once.
        let mut done = job(Some(Completed)).expect("job");
        done.output = Some(output());
        assert_eq!(label(&Command::ExpireOutput.decide(Some(&done))), "warning");
    }

    /// A small language of commands for the property below.
    fn command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        let stage = prop_oneof![
            Just(Stage::Script),
            Just(Stage::Audio),
            Just(Stage::Visuals),
            Just(Stage::Timeline),
            Just(Stage::Render)
        ];
        let attempt = prop_oneof![Just(None), (0u32..4).prop_map(Some)];
        let report = prop_oneof![
            stage.clone().prop_map(Report::StartStage),
            stage.clone().prop_map(Report::SkipStage),
            (stage.clone(), 0.0f64..120.0).prop_map(|(step, pct)| Report::Progress {
                step,
                pct,
                message: "p".into()
            }),
            stage.clone().prop_map(|step| Report::CompleteStage { step, message: "c".into() }),
            Just(Report::Warn { step: None, code: "w".into(), message: "w".into() }),
            Just(Report::Fail { step: None, code: "ffmpeg-failed".into(), message: "f".into() }),
            Just(Report::Complete(output())),
            Just(Report::Cancelled(None)),
        ];
        prop_oneof![
            Just(Command::Cancel),
            Just(Command::Claim),
            (attempt, report).prop_map(|(attempt, report)| Command::Report { attempt, report }),
            (0u32..4).prop_map(|attempt| Command::ResumeParked { attempt }),
            Just(Command::ExpireOutput),
            (0u32..4).prop_map(|before| Command::Interrupt {
                why: Interruption::LeaseExpired,
                before,
                max_attempts: 3
            }),
        ]
    }

    proptest::proptest! {
        /// Any sequence of commands, each decided and folded the way a writer does: the state
        /// kept (the `jobs` row) is the fold of the events appended, a terminal state takes
        /// nothing but the output's expiry, a Cancelling job leaves only for Cancelled, and
        /// percent never goes down within an attempt.
        #[test]
        fn accepted_commands_fold_to_the_state_their_events_fold_to(commands in proptest::collection::vec(command(), 1..60)) {
            let spec = JobSpec::from_value(&serde_json::json!({"brief": {"topic": "fold"}})).expect("spec");
            let create = Command::Create { spec: Box::new(spec), owner: "o".into() };
            let at = OffsetDateTime::UNIX_EPOCH;
            let mut row: Option<JobState> = None;
            let mut log: Vec<EventBody> = Vec::new();
            for command in std::iter::once(create).chain(commands) {
                let before = row.clone();
                let Ok(events) = command.decide(row.as_ref()) else { continue };
                for body in &events {
                    let id = log.len() as i64 + 1;
                    let next = JobState::apply(row.take(), Uuid::nil(), id, at, body);
                    proptest::prop_assert!(next.is_ok(), "{command:?} decided {body:?}, which does not fold");
                    row = next.ok();
                    log.push(body.clone());
                }
                if let (Some(b), Some(a)) = (&before, &row) {
                    if b.status.is_terminal() && !events.is_empty() {
                        proptest::prop_assert_eq!(&command, &Command::ExpireOutput, "an ended job took {:?}", events);
                    }
                    if b.status == JobStatus::Cancelling {
                        proptest::prop_assert!(matches!(a.status, JobStatus::Cancelling | JobStatus::Cancelled), "{command:?} took a Cancelling job to {:?}", a.status);
                    }
                    if a.attempt == b.attempt && a.status == JobStatus::Running {
                        proptest::prop_assert!(a.percent >= b.percent, "percent went down: {} -> {} by {command:?}", b.percent, a.percent);
                    }
                }
            }
            let mut folded: Option<JobState> = None;
            for (n, body) in log.iter().enumerate() {
                folded = JobState::apply(folded, Uuid::nil(), n as i64 + 1, at, body).ok();
            }
            proptest::prop_assert_eq!(folded, row);
        }
    }
}
