//! The worker pool: `AURA_WORKERS` loops that claim Queued jobs and run the pipeline on them.
//!
//! An idle worker sleeps until `POST /api/jobs` signals [`Engine::jobs_created`]; it arms the
//! notification *before* looking for work, so a job created between the look and the wait still
//! wakes it. A slow poll ([`FALLBACK_POLL`]) is only a safety net. Claiming is
//! `lifecycle::claim`, one decision on the store's writer, so two workers never run one job.
//!
//! Jobs that startup recovery resumed (see `recovery`) come first and need no claim. While the
//! data folder's disk is below `AURA_MIN_FREE_MB`, no worker starts anything; a job whose stage
//! runs out of space is parked (see [`park`]) rather than failed.
//!
//! Each job runs in its own task: a panic there fails that job with code `internal` and the
//! worker carries on. A cancelled job has its processes killed (by the pipeline's `Process`
//! children), its files removed and `job-cancelled` appended. On shutdown the running children
//! are killed the same way but nothing is appended: the job stays `Running` for a later attempt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::domain::event::JobOutput;
use crate::domain::job::{DATABASE_UNAVAILABLE, JobStatus, Stage, WAITING_FOR_DISK};
use crate::engine::Engine;
use crate::engine::lifecycle::{self, JobHandle};
use crate::engine::pipeline::progress::Reporter;
use crate::engine::pipeline::{self, Job, PipelineError, StageError};
use crate::engine::publish::{self, Stored};
use crate::store::ApplyError;
use crate::store::StoreError;

/// How often an idle worker looks for work even without a notification.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// How often a worker looks at the free space while it is below the floor.
const DISK_POLL: Duration = Duration::from_secs(1);

/// The running workers.
pub struct Pool {
    workers: JoinSet<()>,
}

/// Starts `settings().worker_count()` workers (none on an API-only node).
pub fn spawn_pool(engine: Engine) -> Pool {
    let mut workers = JoinSet::new();
    for n in 0..engine.settings().worker_count() {
        workers.spawn(work(engine.clone(), n));
    }
    Pool { workers }
}

impl Pool {
    /// Waits up to `bound` for the workers to stop (after the shutdown token was cancelled),
    /// then aborts whatever is left.
    pub async fn join(mut self, bound: Duration) {
        let all = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("workers did not stop in time; aborting them");
            self.workers.abort_all();
            // An aborted worker drops its children (`kill_on_drop`: SIGKILL) when its task ends:
            // wait for that, so that nothing of a job outlives the shutdown.
            let aborted = async { while self.workers.join_next().await.is_some() {} };
            if tokio::time::timeout(ABORT_BOUND, aborted).await.is_err() {
                tracing::error!("aborted workers did not end");
            }
        }
    }
}

/// How long aborted workers may take to end (they only drop what they hold).
const ABORT_BOUND: Duration = Duration::from_secs(2);

#[tracing::instrument(skip_all, fields(worker = n))]
async fn work(engine: Engine, n: usize) {
    let shutdown = engine.shutdown_token();
    tracing::debug!("worker started");
    while !shutdown.is_cancelled() {
        let notified = engine.jobs_created().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Below the free-space floor nothing new starts; the jobs wait in the queue.
        if engine.disk().is_low() {
            idle(&shutdown, notified, DISK_POLL).await;
            continue;
        }
        // Jobs that startup recovery gave a new attempt are already Running: no claim.
        if let Some(job_id) = engine.next_resumed() {
            run_resumed(&engine, job_id).await;
            continue;
        }
        // On a shared store: a new attempt of a job whose node was lost, waiting for a worker.
        match engine.store().take_waiting().await {
            Ok(Some(job_id)) => {
                run_resumed(&engine, job_id).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "looking for attempts that wait for a worker failed"),
        }
        match engine.store().next_queued().await {
            Ok(Some(job_id)) => {
                match lifecycle::claim(engine.store(), job_id).await {
                    Ok(applied) => {
                        run_job(&engine, job_id, applied.state.request, applied.state.attempt).await
                    }
                    Err(ApplyError::Refused(refusal)) => {
                        tracing::debug!(%job_id, %refusal, "another worker took the job")
                    }
                    Err(e) => {
                        tracing::error!(%job_id, error = %e, "claiming a job failed");
                        idle(&shutdown, notified, FALLBACK_POLL).await;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "looking for queued jobs failed"),
        }
        idle(&shutdown, notified, FALLBACK_POLL).await;
    }
    tracing::debug!("worker stopped");
}

/// Runs a job that already has its new attempt (startup recovery, or an attempt taken over
/// from a lost node). One that was cancelled meanwhile is ended here: no worker runs it.
async fn run_resumed(engine: &Engine, job_id: Uuid) {
    match engine.store().job(job_id).await {
        Ok(Some(job)) if job.status == JobStatus::Running => {
            run_job(engine, job_id, job.request, job.attempt).await
        }
        Ok(Some(job)) if job.status == JobStatus::Cancelling => {
            let handle = JobHandle::new(engine.store().clone(), job_id);
            end_job(engine, &handle, handle.cancelled(job.stage).await, "job-cancelled", job.stage).await;
        }
        Ok(_) => tracing::debug!(%job_id, "a resumed job is no longer Running"),
        Err(e) => tracing::error!(%job_id, error = %e, "reading a resumed job failed"),
    }
}

async fn idle(
    shutdown: &tokio_util::sync::CancellationToken,
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    poll: Duration,
) {
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep(poll) => {}
        () = shutdown.cancelled() => {}
    }
}

/// The data folder as an absolute path, so children started elsewhere find the files.
fn absolute(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| {
        std::env::current_dir().map(|cwd| cwd.join(dir)).unwrap_or_else(|_| dir.to_path_buf())
    })
}

/// Runs one claimed job to its end (or to shutdown) and records how it ended.
#[tracing::instrument(skip_all, fields(job_id = %job_id))]
async fn run_job(engine: &Engine, job_id: Uuid, spec: crate::domain::spec::JobSpec, attempt: u32) {
    let tokens = engine.register_running(job_id);
    let cancel = tokens.stop.clone();
    let handle = JobHandle::fenced(engine.store().clone(), job_id, attempt, tokens.leave.clone())
        .stopping(cancel.clone());
    engine.attach_handle(&handle);
    let settings = engine.settings();
    let job_dir = absolute(&settings.data_dir).join("jobs").join(job_id.to_string());
    let ext = spec.render_spec.container.extension();
    let job = Job {
        id: job_id,
        spec,
        handle: handle.clone(),
        reporter: Reporter::new(handle.clone()),
        work_dir: job_dir.join("work"),
        job_dir: job_dir.clone(),
        relative_output: format!("jobs/{job_id}/output.{ext}"),
        ffmpeg: settings.ffmpeg.clone(),
        ffprobe: settings.ffprobe.clone(),
        cancel: cancel.clone(),
        objects: engine.objects().clone(),
        stage_started: std::sync::Mutex::new(std::time::Instant::now()),
    };
    // A cancel that came between the claim and the registration found no token to cancel.
    if matches!(engine.store().job(job_id).await, Ok(Some(s)) if s.status == JobStatus::Cancelling) {
        cancel.cancel();
    }
    let outcome = run_with_waits(engine, job).await;
    engine.unregister_running(job_id);
    let shutting_down = engine.shutdown_token().is_cancelled();
    if tokens.leave.is_cancelled() && !shutting_down {
        // The lease was lost (or the job went on as another attempt, or ended, elsewhere): this
        // node writes nothing more for it. Lease loss is not a cancel: the job continues as a
        // new attempt (`node-lost`), which may reuse this attempt's verified stages.
        tracing::warn!("the job left this node (its lease was lost); nothing is appended for this attempt");
        return;
    }
    let ending = match outcome {
        Ok((job, result)) => classify(result, job.cancel.is_cancelled(), shutting_down),
        Err(join_error) => Ending::Crashed(join_error),
    };
    record(engine, &handle, &tokens, &job_dir, ext, ending).await;
}

/// The pipeline's outcome, once no wait for disk space or for the database is left: a stage
/// that failed for either reason parks the job (see [`park`], [`wait_for_database`]) and the
/// pipeline runs again as the new attempt. `Err` when the job's task panicked or was aborted.
async fn run_with_waits(
    engine: &Engine,
    mut job: Job,
) -> Result<(Job, Result<JobOutput, PipelineError>), tokio::task::JoinError> {
    let mut parked = 0u32;
    loop {
        let task = tokio::spawn(async move {
            let result = pipeline::run(&job).await;
            (job, result)
        });
        match task.await? {
            (back, Err(PipelineError { step, error })) if store_fault(&error) => {
                tracing::warn!(step = step.name(), cause = ?error, "the database is unreachable; the job waits for it");
                match wait_for_database(engine, &back, step).await {
                    Parked::Resumed => job = back,
                    Parked::Stopped(error) => return Ok((back, Err(PipelineError { step, error }))),
                }
            }
            (back, Err(PipelineError { step, error })) if disk_full(engine, &error) => {
                tracing::warn!(step = step.name(), cause = ?error, "the disk is full; the job waits for space");
                parked += 1;
                match park(engine, &back, step, parked).await {
                    Parked::Resumed => job = back,
                    Parked::Stopped(error) => return Ok((back, Err(PipelineError { step, error }))),
                }
            }
            other => return Ok(other),
        }
    }
}

/// How a job's run on this node ends.
#[derive(Debug)]
enum Ending {
    /// Rendered: the video goes to the store, then `job-completed`.
    Rendered(JobOutput),
    /// `job-cancelled` at this step (after the render too: the client asked to stop).
    Cancelled(Stage),
    /// `job-failed` at this step, with a code and a message safe to show.
    Failed { step: Stage, code: &'static str, message: String, cause: Option<anyhow::Error> },
    /// Nothing is appended: the job stays Running for a later attempt (why, for the log).
    StaysRunning(&'static str),
    /// The job's task panicked or was aborted: `job-failed` with `internal`.
    Crashed(tokio::task::JoinError),
}

/// The ending of a pipeline that returned: decided from its result, whether the job was
/// cancelled, and whether the server is shutting down; nothing else.
fn classify(result: Result<JobOutput, PipelineError>, cancelled: bool, shutting_down: bool) -> Ending {
    match result {
        // Cancelled just as the last stage ended: the client asked to stop, so honour it.
        Ok(_) if cancelled && !shutting_down => Ending::Cancelled(Stage::Render),
        Ok(output) => Ending::Rendered(output),
        Err(PipelineError { error: StageError::Cancelled, .. }) if shutting_down => {
            Ending::StaysRunning("shutdown: the job stays Running for a later attempt")
        }
        // `park` handles every full disk; one that reaches here leaves the job Running.
        Err(PipelineError { error: StageError::DiskFull(_), .. }) => {
            Ending::StaysRunning("a full disk reached the end of a job; it stays Running")
        }
        Err(PipelineError { step, error: StageError::Cancelled }) => Ending::Cancelled(step),
        Err(PipelineError { step, error: StageError::Failed { code, message, cause } }) => {
            Ending::Failed { step, code, message, cause }
        }
    }
}

/// Carries out an [`Ending`]: the files, the store and the job's terminal event.
async fn record(
    engine: &Engine,
    handle: &JobHandle,
    tokens: &crate::engine::registry::RunTokens,
    job_dir: &Path,
    ext: &str,
    ending: Ending,
) {
    match ending {
        Ending::Rendered(output) => {
            remove_dir(&job_dir.join("work")).await;
            // The video reaches the store (`AURA_STORAGE_URL`) before the job is completed; a
            // store that fails is retried, with the render kept (`publish`).
            complete(engine, handle, tokens, job_dir, ext, output).await;
        }
        Ending::Cancelled(step) => {
            remove_dir(job_dir).await;
            end_job(engine, handle, handle.cancelled(Some(step)).await, "job-cancelled", Some(step)).await;
        }
        Ending::Failed { step, code, message, cause } => {
            tracing::warn!(step = step.name(), code, %message, cause = ?cause, "job failed");
            remove_dir(job_dir).await;
            end_job(engine, handle, handle.fail(Some(step), code, message).await, "job-failed", Some(step))
                .await;
        }
        Ending::StaysRunning(why) => tracing::info!("{why}"),
        Ending::Crashed(join_error) => {
            let step = engine
                .store()
                .job(handle.job_id())
                .await
                .ok()
                .flatten()
                .and_then(|s| s.stage)
                .unwrap_or(Stage::Script);
            if join_error.is_panic() {
                tracing::error!(step = step.name(), "the job's task panicked");
            } else {
                tracing::error!(error = %join_error, "the job's task ended abnormally");
            }
            remove_dir(job_dir).await;
            if !engine.shutdown_token().is_cancelled() {
                let message = "an internal error stopped the job; the cause is in the server log".to_owned();
                let failed = handle.fail(Some(step), "internal", message).await;
                end_job(engine, handle, failed, "job-failed", Some(step)).await;
            }
        }
    }
}

/// Stores the rendered video and appends `job-completed`; a cancel or a lost lease meanwhile
/// ends the job as they say (see `publish`).
async fn complete(
    engine: &Engine,
    handle: &JobHandle,
    tokens: &crate::engine::registry::RunTokens,
    job_dir: &Path,
    ext: &str,
    output: JobOutput,
) {
    let stored =
        publish::publish_until_stored(engine, handle, &tokens.stop, &tokens.leave, job_dir, ext, &output)
            .await;
    match stored {
        Stored::Yes => {
            let completed = handle.complete(output).await;
            if matches!(completed, Err(ApplyError::Refused(_))) && handle.stopped() {
                // Refused: the job is Cancelling. The video goes, as after any cancel.
                remove_dir(job_dir).await;
                if !engine.objects().in_place() {
                    let key = engine.objects().output_key(handle.job_id(), handle.attempt(), ext);
                    if let Err(e) = engine.objects().delete(&key).await {
                        tracing::warn!(error = %e, "removing a cancelled job's stored video failed");
                    }
                }
            }
            end_job(engine, handle, completed, "job-completed", Some(Stage::Render)).await;
        }
        Stored::Cancelled => {
            remove_dir(job_dir).await;
            let cancelled = handle.cancelled(Some(Stage::Render)).await;
            end_job(engine, handle, cancelled, "job-cancelled", Some(Stage::Render)).await;
            tracing::info!("job cancelled while its video waited for the store");
        }
        Stored::ShuttingDown => {
            tracing::info!("shutdown while storing the video: the job stays Running for a later attempt");
        }
        Stored::Left => tracing::warn!("the job left this node while its video waited for the store"),
    }
}

/// Whether a stage failed because the disk is full: it said so (`StageError::DiskFull`), or it
/// failed in any other way while the data folder's disk is below `AURA_MIN_FREE_MB`. The second
/// catches what no wording does: a program that reports `ENOSPC` in its own words, a truncated
/// file that makes the next step fail. A real failure on a low disk is tried again once there
/// is room, and fails then.
fn disk_full(engine: &Engine, error: &StageError) -> bool {
    match error {
        StageError::DiskFull(_) => true,
        StageError::Failed { .. } => {
            engine.disk().refresh();
            engine.disk().is_low()
        }
        StageError::Cancelled => false,
    }
}

/// Whether a stage failed only because the database could not be reached (an append or a read
/// of the job's own state failed: a cut connection, a pool that timed out, a failed group
/// commit). Not the job's fault, and not final: the job continues as a new attempt once the
/// database answers (see [`wait_for_database`]).
fn store_fault(error: &StageError) -> bool {
    let StageError::Failed { cause: Some(cause), .. } = error else { return false };
    cause.chain().any(|e| {
        matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Sqlx(_) | StoreError::GroupFailed(_)))
    })
}

/// The longest wait between two tries to reach the database for a job that waits for it.
const DATABASE_POLL_MAX: Duration = Duration::from_secs(10);

/// Waits for a database that could not take a stage's events: tries to give the job a new
/// attempt (which reuses every verified stage) with a growing pause, until it succeeds, the job
/// turns out to have changed meanwhile (cancelled, or continued by another node after its lease
/// lapsed: this worker stops), or it is cancelled or the server stops. The new attempt carries
/// a `warning` `database-unavailable` naming the step.
async fn wait_for_database(engine: &Engine, job: &Job, step: Stage) -> Parked {
    let mut pause = Backoff::new(Duration::from_millis(500), DATABASE_POLL_MAX);
    loop {
        if !pause.wait(job.cancel.cancelled()).await {
            return Parked::Stopped(StageError::Cancelled);
        }
        match lifecycle::resume_parked(engine.store(), job.id, job.handle.attempt()).await {
            Ok(applied) => {
                job.handle.set_attempt(applied.state.attempt);
                let message = format!(
                    "the database could not be reached during {}: the job continues as a new attempt",
                    step.name()
                );
                log_append(
                    job.handle.warn(Some(step), DATABASE_UNAVAILABLE, message).await,
                    "database-unavailable",
                );
                tracing::info!(step = step.name(), "the database answers again; the job continues");
                return Parked::Resumed;
            }
            Err(ApplyError::Refused(refusal)) => {
                tracing::info!(%refusal, "the job changed while the database was unreachable");
                return Parked::Stopped(StageError::Cancelled);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database is still unreachable");
            }
        }
    }
}

/// How a parked job's wait ended.
enum Parked {
    /// There is room again and the job has its new attempt: run the pipeline again.
    Resumed,
    /// Cancelled, or the server is shutting down (then the job stays Running for the next
    /// start, whose recovery gives it a new attempt).
    Stopped(StageError),
}

/// The longest a parked job waits before it may continue, however often it was parked.
const PARK_POLL_MAX: Duration = Duration::from_secs(10);

/// Parks a job whose stage ran out of disk space: appends `warning` `waiting-for-disk` (naming
/// the step), waits until the free space is back above `AURA_MIN_FREE_MB`, and gives the job a
/// new attempt, which reuses every verified stage. The job stays Running throughout: nothing is
/// lost and nothing fails. The `parked`-th wait in a row waits at least `parked` seconds (up
/// to [`PARK_POLL_MAX`]), so a disk that fills again at once does not spin.
///
/// When the database shares the full disk, the warning may not be storable yet: it is tried
/// again on every look, and the new attempt follows it.
async fn park(engine: &Engine, job: &Job, step: Stage, parked: u32) -> Parked {
    let message =
        format!("the disk is full: {} waits for free space, then continues where it stopped", step.name());
    // A full disk is news: nobody should go on trusting an older measurement.
    engine.disk().refresh();
    let mut warned = false;
    let at_least = tokio::time::Instant::now() + Duration::from_secs(u64::from(parked)).min(PARK_POLL_MAX);
    loop {
        if !warned {
            match job.handle.warn(Some(step), WAITING_FOR_DISK, message.clone()).await {
                Ok(_) => warned = true,
                Err(ApplyError::Refused(refusal)) => {
                    tracing::info!(%refusal, "a parked job changed under the worker");
                    return Parked::Stopped(StageError::Cancelled);
                }
                Err(e) => tracing::warn!(error = %e, "storing waiting-for-disk failed; trying again"),
            }
        }
        if warned && tokio::time::Instant::now() >= at_least {
            engine.disk().refresh();
            if !engine.disk().is_low() {
                match lifecycle::resume_parked(engine.store(), job.id, job.handle.attempt()).await {
                    Ok(applied) => {
                        job.handle.set_attempt(applied.state.attempt);
                        tracing::info!(step = step.name(), "there is room again; the job continues");
                        return Parked::Resumed;
                    }
                    Err(ApplyError::Refused(refusal)) => {
                        tracing::info!(%refusal, "a parked job changed under the worker");
                        return Parked::Stopped(StageError::Cancelled);
                    }
                    Err(e) => tracing::warn!(error = %e, "storing the new attempt failed; trying again"),
                }
            }
        }
        tokio::select! {
            () = job.cancel.cancelled() => return Parked::Stopped(StageError::Cancelled),
            () = tokio::time::sleep(DISK_POLL) => {}
        }
    }
}

/// Logs an append that did not happen; returns whether it did.
fn log_append(outcome: lifecycle::Outcome, what: &str) -> bool {
    match outcome {
        Ok(_) => true,
        Err(ApplyError::Refused(refusal)) => {
            tracing::warn!(%refusal, "{what} was refused");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "storing {what} failed");
            false
        }
    }
}

/// Logs the append of a job's terminal event (`what`, at `step`). A `job-completed` or
/// `job-failed` refused because the job is Cancelling (a cancel this node had not heard of)
/// ends the job Cancelled instead: the cancel wins. Once a terminal event is in, deletes the
/// stage artifacts every attempt left in the store (see `pipeline::artifacts`), since no
/// attempt will need them. A refusal for any other reason means another attempt owns the job
/// (or it ended): its artifacts stay. A failed delete leaves keys behind, which cost space, not
/// correctness.
async fn end_job(
    engine: &Engine,
    handle: &JobHandle,
    outcome: lifecycle::Outcome,
    what: &str,
    step: Option<Stage>,
) {
    let (outcome, what) = match outcome {
        Err(ApplyError::Refused(refusal)) if handle.stopped() && what != "job-cancelled" => {
            tracing::info!(%refusal, "the job was cancelled before its {what}: it ends Cancelled");
            (handle.cancelled(step).await, "job-cancelled")
        }
        other => (other, what),
    };
    if !log_append(outcome, what) {
        return;
    }
    tracing::info!(step = step.map(Stage::name), "{what}");
    if engine.objects().in_place() {
        return;
    }
    match engine.objects().delete_stages(handle.job_id()).await {
        Ok(n) => tracing::debug!(deleted = n, "the job's stage artifacts were removed from the store"),
        Err(e) => tracing::warn!(error = %e, "removing the job's stage artifacts from the store failed"),
    }
}

async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "removing job files failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::tests::output;

    fn failed(step: Stage, error: StageError) -> Result<JobOutput, PipelineError> {
        Err(PipelineError { step, error })
    }

    fn label(ending: &Ending) -> String {
        match ending {
            Ending::Rendered(_) => "rendered".into(),
            Ending::Cancelled(step) => format!("cancelled in {}", step.name()),
            Ending::Failed { step, code, .. } => format!("{code} in {}", step.name()),
            Ending::StaysRunning(_) => "stays running".into(),
            Ending::Crashed(_) => "crashed".into(),
        }
    }

    #[test]
    fn every_pipeline_result_has_one_ending() {
        let ffmpeg = || StageError::Failed { code: "ffmpeg-failed", message: "m".into(), cause: None };
        let disk = || StageError::DiskFull(anyhow::anyhow!("full"));
        // (result, cancelled, shutting down) → ending
        let table: Vec<(Result<JobOutput, PipelineError>, bool, bool, &str)> = vec![
            (Ok(output()), false, false, "rendered"),
            (Ok(output()), true, false, "cancelled in Render"),
            // Shutdown cancels every job's token; a finished render still completes.
            (Ok(output()), true, true, "rendered"),
            (failed(Stage::Audio, StageError::Cancelled), true, false, "cancelled in Audio"),
            (failed(Stage::Audio, StageError::Cancelled), true, true, "stays running"),
            (failed(Stage::Visuals, disk()), false, false, "stays running"),
            (failed(Stage::Timeline, ffmpeg()), false, false, "ffmpeg-failed in Timeline"),
            (failed(Stage::Timeline, ffmpeg()), true, false, "ffmpeg-failed in Timeline"),
        ];
        for (result, cancelled, shutting_down, expected) in table {
            let ending = classify(result, cancelled, shutting_down);
            assert_eq!(label(&ending), expected, "cancelled {cancelled}, shutting down {shutting_down}");
        }
    }
}
