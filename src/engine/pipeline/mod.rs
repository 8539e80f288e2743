//! The render pipeline: one job's five stages, Script → Audio → Visuals → Timeline → Render.
//!
//! The worker hands [`run`] a [`Job`]: the request, the job's folders, the ffmpeg binaries and a
//! cancellation token. Each stage announces itself, reports progress and completes through the
//! [`JobHandle`], so every step reaches the event log through the store's single append path.
//!
//! **Encode once.** Visuals renders each scene clip directly in the final codec settings (codec,
//! size, fps, yuv420p, bitrate, a GOP that starts at the clip's first frame); the narration is
//! encoded once to the final audio codec and Timeline checks durations; Render only joins the clips
//! with the concat demuxer and `-c copy` and muxes the audio into the final container. Nothing is
//! decoded and re-encoded twice, so the whole job costs about one hand-written ffmpeg command.
//!
//! **Overlap.** The clips start encoding while Audio narrates, and the narration is encoded as
//! soon as Audio is done, beside the clips; stage events still come in order (see [`run`]).
//!
//! **Time budgets.** Every stage gets a deadline proportional to the video's duration and its
//! pixel rate (see [`Job::stage_budget`]); each child gets what remains of it as its timeout, and
//! one that runs past it is killed and fails the job with `stage-timeout`.

pub mod artifacts;
pub mod audio;
pub mod probe;
pub mod progress;
pub mod render;
pub mod script;
pub mod visuals;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::event::JobOutput;
use crate::domain::job::Stage;
use crate::domain::spec::JobSpec;
use crate::engine::lifecycle::{self, JobHandle};
use crate::engine::process::{Process, ProcessError};
use crate::store::ApplyError;
use crate::sync::lock;
use progress::Reporter;
use script::{Script, ScriptWriter, TemplateWriter};

/// Everything one run of the pipeline needs.
pub struct Job {
    pub id: Uuid,
    pub spec: JobSpec,
    pub handle: JobHandle,
    pub reporter: Reporter,
    /// `<data_dir>/jobs/<id>`: holds the output once rendered.
    pub job_dir: PathBuf,
    /// `<job_dir>/work`: intermediate files, removed when the job ends.
    pub work_dir: PathBuf,
    /// The output's path relative to the data folder, as reported in `videoPath`.
    pub relative_output: String,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    pub cancel: CancellationToken,
    /// Where finished videos live (`AURA_STORAGE_URL`); a store that is not the data folder
    /// also keeps each attempt's verified stage artifacts (see [`artifacts`]).
    pub objects: crate::objects::Objects,
    /// When the running stage started, for the `aura_stage_seconds` histogram.
    pub stage_started: std::sync::Mutex<Instant>,
}

/// How a stage ended other than by success.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cancelled")]
    Cancelled,
    #[error("{message}")]
    Failed {
        /// `ffmpeg-missing`, `ffmpeg-failed`, `stage-timeout` or `internal`.
        code: &'static str,
        /// Safe to show: no paths, command lines or stderr.
        message: String,
        #[source]
        cause: Option<anyhow::Error>,
    },
    /// The disk filled up: not the job's fault, and not final. The worker parks the job until
    /// there is room again (see `worker`), then gives it a new attempt.
    #[error("the disk is full")]
    DiskFull(#[source] anyhow::Error),
}

/// What ffmpeg (and every other program using `strerror`) says when a write hits `ENOSPC`.
const NO_SPACE: &str = "No space left on device";

/// Whether `cause` comes from a full disk: `ENOSPC` from one of our own writes, `SQLITE_FULL`
/// from the database, or a child that said so.
pub fn is_disk_full(cause: &anyhow::Error) -> bool {
    cause.chain().any(|e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32)
                || io.kind() == std::io::ErrorKind::StorageFull;
        }
        if let Some(db) = e.downcast_ref::<sqlx::Error>().and_then(sqlx::Error::as_database_error) {
            // SQLITE_FULL, and its extended codes (the low byte is the primary code).
            return db.code().and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| c & 0xff == 13);
        }
        e.to_string().contains(NO_SPACE)
    })
}

impl StageError {
    pub fn internal(cause: anyhow::Error) -> Self {
        if is_disk_full(&cause) {
            return StageError::DiskFull(cause);
        }
        StageError::Failed {
            code: "internal",
            message: "an internal error stopped the job; the cause is in the server log".into(),
            cause: Some(cause),
        }
    }

    /// Maps a child's failure while doing `what` (e.g. "rendering scene 2") to a client-safe error.
    pub fn process(what: &str, e: ProcessError) -> Self {
        match e {
            ProcessError::Cancelled { .. } => StageError::Cancelled,
            ProcessError::NotFound(program) => StageError::Failed {
                code: "ffmpeg-missing",
                message: format!("{program} is not installed or not executable on the server"),
                cause: None,
            },
            ProcessError::Timeout { program, secs } => StageError::Failed {
                code: "stage-timeout",
                message: format!("{program} ran past the stage's time budget while {what} and was stopped"),
                cause: Some(anyhow::anyhow!("timed out after {secs} s")),
            },
            ProcessError::Failed { program, status, stderr_tail } if stderr_tail.contains(NO_SPACE) => {
                StageError::DiskFull(anyhow::anyhow!(
                    "{program} ran out of disk space while {what} ({status})"
                ))
            }
            ProcessError::Failed { program, status, .. } => StageError::Failed {
                code: "ffmpeg-failed",
                message: format!("{program} failed while {what} ({status})"),
                cause: None,
            },
            ProcessError::Io { ref source, .. }
                if source.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) =>
            {
                StageError::DiskFull(e.into())
            }
            e @ ProcessError::Io { .. } => StageError::Failed {
                code: "ffmpeg-failed",
                message: format!("{} could not be started while {what}", program_of(&e)),
                cause: Some(e.into()),
            },
        }
    }
}

fn program_of(e: &ProcessError) -> String {
    match e {
        ProcessError::Io { program, .. } => program.clone(),
        _ => "ffmpeg".into(),
    }
}

impl From<anyhow::Error> for StageError {
    fn from(e: anyhow::Error) -> Self {
        StageError::internal(e)
    }
}

/// A stage's failure with the stage it happened in.
#[derive(Debug)]
pub struct PipelineError {
    pub step: Stage,
    pub error: StageError,
}

/// A stage's deadline.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

impl Job {
    /// A generous time budget for one stage: a minute plus ten times real time at 1080p30,
    /// scaled by the job's pixel rate (never below a quarter of it).
    pub fn stage_budget(&self) -> Duration {
        let r = &self.spec.render_spec;
        let (w, h) = r.frame_size(self.spec.brief.aspect);
        let rate = f64::from(w) * f64::from(h) * f64::from(r.fps) / (1920.0 * 1080.0 * 30.0);
        let secs = 60.0 + 10.0 * f64::from(self.spec.plan_spec.target_duration) * rate.max(0.25);
        Duration::from_secs_f64(secs)
    }

    /// An ffmpeg child for this job: in the work folder, under the stage's deadline, stopped by
    /// the job's cancel token.
    pub fn ffmpeg(&self, deadline: Deadline) -> Process {
        self.child(&self.ffmpeg, deadline).args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
    }

    pub fn ffprobe(&self, deadline: Deadline) -> Process {
        self.child(&self.ffprobe, deadline).args(["-v", "error", "-of", "json"])
    }

    fn child(&self, program: &Path, deadline: Deadline) -> Process {
        Process::new(program)
            .job(self.id)
            .recorded_in(self.work_dir.join("processes"), self.handle.attempt())
            .current_dir(&self.work_dir)
            .timeout(deadline.remaining())
            .cancel_on(self.cancel.clone())
    }

    pub fn work(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.is_cancelled() { Err(StageError::Cancelled) } else { Ok(()) }
    }

    /// Starts `step`: appends its `Started` and returns its deadline.
    async fn start(&self, step: Stage) -> Result<Deadline, StageError> {
        self.check_cancelled()?;
        stored(self.handle.start_stage(step).await, "storing a stage start")?;
        self.reporter.enter(step);
        if let Ok(mut started) = lock(&self.stage_started, "stage start") {
            *started = Instant::now();
        }
        Ok(self.deadline())
    }

    /// A stage's deadline, [`Job::stage_budget`] from now.
    fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.stage_budget())
    }

    /// Records the stage's artifacts (so a later attempt may skip it), then appends its end.
    async fn finish_recorded<T: serde::Serialize>(
        &self,
        step: Stage,
        message: String,
        output: &T,
        files: Vec<String>,
    ) -> Result<(), StageError> {
        self.check_cancelled()?;
        artifacts::record(self, step, output, &files).await?;
        if let Ok(started) = lock(&self.stage_started, "stage start") {
            metrics::histogram!("aura_stage_seconds", "stage" => step.name())
                .record(started.elapsed().as_secs_f64());
        }
        stored(self.handle.complete_stage(step, message).await, "storing a stage end")?;
        Ok(())
    }
}

/// A refused append means the job ended under us (it was cancelled): stop.
/// A stage's own write, appended, or why the stage stops: refused (the job changed under the
/// worker), or `what` could not be stored.
fn stored(outcome: lifecycle::Outcome, what: &'static str) -> Result<(), StageError> {
    match outcome {
        Ok(_) => Ok(()),
        Err(ApplyError::Refused(r)) => {
            tracing::info!(refusal = %r, "the job changed under the worker; stopping");
            Err(StageError::Cancelled)
        }
        Err(ApplyError::Store(e)) => Err(anyhow::Error::new(e).context(what).into()),
    }
}

/// Skips stages whose artifacts survived an earlier attempt, until the first one that did not.
struct Resume {
    possible: bool,
}

impl Resume {
    /// The recorded output of `step` if it and every stage before it can be skipped.
    async fn skip<T: serde::de::DeserializeOwned + artifacts::Supplies>(
        &mut self,
        job: &Job,
        step: Stage,
    ) -> Result<Option<T>, StageError> {
        if self.possible {
            if let Some(output) = artifacts::verified(job, step).await {
                job.check_cancelled()?;
                stored(job.handle.skip_stage(step).await, "storing a skipped stage")?;
                return Ok(Some(output));
            }
            self.possible = false;
        }
        Ok(None)
    }
}

/// `work/<name>` for each name: artifact paths are relative to the job's folder.
fn in_work<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    names.into_iter().map(|n| format!("work/{n}")).collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The Audio stage, start to end.
async fn narrate(job: &Job, script: &Script) -> Result<audio::Narration, StageError> {
    let step = Stage::Audio;
    let deadline = job.start(step).await?;
    let narration = audio::narrate(job, script, deadline).await?;
    let n = script.scenes.len();
    job.finish_recorded(
        step,
        format!("Narrated {n} scene{}", plural(n)),
        &narration,
        in_work(&narration.files),
    )
    .await?;
    Ok(narration)
}

/// Runs the five stages and returns the output to report in `job-completed`. A stage whose
/// verified artifacts survived an earlier attempt is reported `Skipped` instead of run again.
#[tracing::instrument(skip_all, fields(job_id = %job.id))]
pub async fn run(job: &Job) -> Result<JobOutput, PipelineError> {
    tokio::fs::create_dir_all(&job.work_dir)
        .await
        .context("creating the work folder")
        .map_err(|e| PipelineError { step: Stage::Script, error: e.into() })?;
    let mut resume = Resume { possible: true };
    let script: Script = stage(job, &mut resume, Stage::Script, || write_script(job)).await?;
    let (narration, clips, encoded) = sound_and_pictures(job, &mut resume, &script).await?;
    let timeline: render::Timeline = stage(job, &mut resume, Stage::Timeline, || async {
        let step = Stage::Timeline;
        let deadline = job.start(step).await?;
        let timeline = render::assemble(job, &script, &clips, &narration, encoded, deadline).await?;
        let files = [timeline.clip_list.clone(), "narration.txt".to_owned(), timeline.audio.clone()];
        job.finish_recorded(step, "Timeline assembled".into(), &timeline, in_work(&files)).await?;
        Ok(timeline)
    })
    .await?;
    stage(job, &mut resume, Stage::Render, || async {
        let step = Stage::Render;
        let deadline = job.start(step).await?;
        let output = render::render(job, &timeline, deadline).await?;
        let file = Path::new(&output.video_path).file_name().map(|f| f.to_string_lossy().into_owned());
        job.finish_recorded(step, "Video rendered".into(), &output, file.into_iter().collect()).await?;
        Ok(output)
    })
    .await
}

/// One stage: its output from an earlier attempt when that is verified (see [`Resume`]), else
/// what `work` makes of it (which starts, reports and records the stage); a failure either way
/// is tagged with `step`.
async fn stage<T, F, Fut>(job: &Job, resume: &mut Resume, step: Stage, work: F) -> Result<T, PipelineError>
where
    T: serde::de::DeserializeOwned + artifacts::Supplies,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, StageError>>,
{
    let tagged = |error| PipelineError { step, error };
    match resume.skip(job, step).await.map_err(tagged)? {
        Some(kept) => Ok(kept),
        None => work().await.map_err(tagged),
    }
}

/// Script: the scenes and their narration text, from the request alone.
async fn write_script(job: &Job) -> Result<Script, StageError> {
    let step = Stage::Script;
    job.start(step).await?;
    let script = TemplateWriter.write(&job.spec)?;
    let json = serde_json::to_vec_pretty(&script).context("encoding the script")?;
    tokio::fs::write(job.work("script.json"), json).await.context("writing script.json")?;
    let n = script.scenes.len();
    let message = format!("Script ready: {n} scene{}", plural(n));
    job.finish_recorded(step, message, &script, in_work([&"script.json".to_owned()])).await?;
    Ok(script)
}

/// What Audio and Visuals hand on: the narration, the clips, and the narration encoded to the
/// final audio codec (none when both stages were kept; a failed encode fails Timeline).
type SoundAndPictures = (audio::Narration, Vec<visuals::Clip>, Option<Result<render::Encoded, StageError>>);

/// Audio and Visuals, overlapped: the scene clips start encoding while the narration is
/// synthesized, and the narration is encoded to the final audio codec while the clips still
/// encode, so neither leaves a core idle. The events still read in stage order: Visuals is
/// `Started` once Audio has `Completed`, and its progress goes out only from then on.
async fn sound_and_pictures(
    job: &Job,
    resume: &mut Resume,
    script: &Script,
) -> Result<SoundAndPictures, PipelineError> {
    let at = |step: Stage| move |error: StageError| PipelineError { step, error };
    let narration_kept: Option<audio::Narration> =
        resume.skip(job, Stage::Audio).await.map_err(at(Stage::Audio))?;
    let clips_kept: Option<Vec<visuals::Clip>> = match narration_kept {
        Some(_) => resume.skip(job, Stage::Visuals).await.map_err(at(Stage::Visuals))?,
        None => None,
    };
    let narration_kept = match (narration_kept, clips_kept) {
        (Some(narration), Some(clips)) => return Ok((narration, clips, None)),
        (narration_kept, _) => narration_kept,
    };
    let visuals_started = tokio::sync::Notify::new();
    let video = async {
        let clips = visuals::render_scenes(job, script, job.deadline()).await;
        // A failed clip fails Visuals, so it is reported once Visuals has started.
        visuals_started.notified().await;
        clips.map_err(at(Stage::Visuals))
    };
    let sound = async {
        let narration = match narration_kept {
            Some(narration) => narration,
            None => narrate(job, script).await.map_err(at(Stage::Audio))?,
        };
        job.start(Stage::Visuals).await.map_err(at(Stage::Visuals))?;
        visuals_started.notify_one();
        // A failed encode fails Timeline, which waits for it.
        let encoded = render::encode_narration(job, script.duration_sec(), &narration, job.deadline()).await;
        Ok((narration, Some(encoded)))
    };
    let (clips, (narration, encoded)) = tokio::try_join!(video, sound)?;
    let n = script.scenes.len();
    let files: Vec<String> = clips.iter().map(|c| c.file.clone()).collect();
    let message = format!("Rendered {n} scene clip{}", plural(n));
    job.finish_recorded(Stage::Visuals, message, &clips, in_work(&files))
        .await
        .map_err(at(Stage::Visuals))?;
    Ok((narration, clips, encoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ProcessError) -> (Option<&'static str>, String) {
        match StageError::process("rendering scene 2", e) {
            StageError::Cancelled => (None, String::new()),
            StageError::DiskFull(_) => (Some("waiting-for-disk"), String::new()),
            StageError::Failed { code, message, .. } => (Some(code), message),
        }
    }

    #[test]
    fn child_failures_map_to_client_codes_without_paths_or_stderr() {
        let p = || "ffmpeg".to_owned();
        assert_eq!(code(ProcessError::NotFound(p())).0, Some("ffmpeg-missing"));
        assert_eq!(code(ProcessError::Timeout { program: p(), secs: 60 }).0, Some("stage-timeout"));
        assert_eq!(code(ProcessError::Cancelled { program: p() }).0, None);
        let (c, message) = code(ProcessError::Failed {
            program: p(),
            status: "exit status: 1".into(),
            stderr_tail: "/secret/work/clip02.mp4: Invalid argument".into(),
        });
        assert_eq!(c, Some("ffmpeg-failed"));
        assert_eq!(message, "ffmpeg failed while rendering scene 2 (exit status: 1)");
    }

    #[test]
    fn a_full_disk_is_told_apart_from_a_failing_ffmpeg() {
        let (c, _) = code(ProcessError::Failed {
            program: "ffmpeg".into(),
            status: "exit status: 1".into(),
            stderr_tail: "[out#0/mp4] Error writing trailer: No space left on device".into(),
        });
        assert_eq!(c, Some("waiting-for-disk"));
        let enospc = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        let ours = StageError::internal(anyhow::Error::new(enospc).context("writing script.json"));
        assert!(matches!(ours, StageError::DiskFull(_)));
        let other = std::io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32);
        let ours = StageError::internal(anyhow::Error::new(other).context("writing script.json"));
        assert!(matches!(ours, StageError::Failed { code: "internal", .. }));
    }
}
