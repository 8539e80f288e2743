//! Puts a completed job's video where finished videos live (`AURA_STORAGE_URL`, see `objects`)
//! before the job is recorded as completed.
//!
//! With the default store (the data folder) the rendered file already is the stored video and
//! nothing happens. Otherwise the video goes under its per-attempt key, the stored size is
//! checked against the rendered one, and only then is the job's local folder removed: a
//! `job-completed` is never appended for a video the store does not hold.
//!
//! A store that cannot take the video (down, unreachable, refusing) does not fail the job: the
//! render is kept, a `warning` `waiting-for-storage` is appended once, and storing is retried
//! with a backoff that doubles up to [`MAX_BACKOFF`], until it succeeds, the job is cancelled or
//! the server shuts down (the job then stays Running for a later attempt). A stage's artifacts
//! wait the same way ([`StoreWait`], used by `pipeline::artifacts`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::domain::event::JobOutput;
use crate::domain::job::{Stage, WAITING_FOR_STORAGE};
use crate::engine::Engine;
use crate::engine::lifecycle::JobHandle;
use crate::store::ApplyError;

/// The first wait after a failed attempt to store a video.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How storing a video ended.
pub enum Stored {
    /// The store holds the video (or the store is the data folder).
    Yes,
    /// The job was cancelled while the video waited: it was not stored.
    Cancelled,
    /// The server is shutting down: the job stays Running for a later attempt.
    ShuttingDown,
    /// The job left this node (its lease was lost): nothing more is written for this attempt.
    Left,
}

/// Stores the video like [`publish`], retrying with backoff while the store fails (see the
/// module's doc). The render stays on disk until it is stored.
pub async fn publish_until_stored(
    engine: &Engine,
    handle: &JobHandle,
    cancel: &CancellationToken,
    leave: &CancellationToken,
    job_dir: &Path,
    ext: &str,
    output: &JobOutput,
) -> Stored {
    let shutdown = engine.shutdown_token();
    let job_id = handle.job_id();
    let mut wait = StoreWait::default();
    loop {
        let attempt = tokio::select! {
            stored = publish(engine, job_id, handle.attempt(), job_dir, ext, output) => stored,
            () = shutdown.cancelled() => return Stored::ShuttingDown,
        };
        let Err(e) = attempt else { return Stored::Yes };
        tracing::warn!(%job_id, error = format!("{e:#}"), "storing the video failed; retrying");
        let message = "the object store could not take the video: it is kept and storing is retried";
        let Some(backoff) = wait.failed(handle, Stage::Render, message).await else {
            return Stored::Cancelled;
        };
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => return Stored::Cancelled,
            () = leave.cancelled() => return Stored::Left,
            () = shutdown.cancelled() => return Stored::ShuttingDown,
        }
    }
}

/// The wait of a job whose files the store cannot take (its video, or a stage's artifacts):
/// one `warning` `waiting-for-storage` for the outage, and a backoff that doubles from
/// [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
pub struct StoreWait {
    backoff: Backoff,
    warned: bool,
}

impl Default for StoreWait {
    fn default() -> Self {
        StoreWait { backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF), warned: false }
    }
}

impl StoreWait {
    /// After a failed put: appends the warning (naming `step`) unless it already is, and
    /// answers how long to wait before the next try; `None` when the job refused the warning
    /// (it was cancelled, or continued elsewhere): it must not wait any longer.
    pub async fn failed(&mut self, handle: &JobHandle, step: Stage, message: &str) -> Option<Duration> {
        if !self.warned {
            match handle.warn(Some(step), WAITING_FOR_STORAGE, message.to_owned()).await {
                Ok(_) => self.warned = true,
                Err(ApplyError::Refused(refusal)) => {
                    tracing::info!(%refusal, "the job changed while its files waited for the store");
                    return None;
                }
                Err(e) => tracing::warn!(error = %e, "storing waiting-for-storage failed; trying again"),
            }
        }
        Some(self.backoff.next_wait())
    }
}

/// Stores the video rendered into `job_dir` by `attempt` (the worker's own, which fences the
/// `job-completed` that follows); then removes `job_dir`, which held only that video. A no-op
/// when the store is the data folder.
pub async fn publish(
    engine: &Engine,
    job_id: Uuid,
    attempt: u32,
    job_dir: &Path,
    ext: &str,
    output: &JobOutput,
) -> anyhow::Result<()> {
    let objects = engine.objects();
    if objects.in_place() {
        return Ok(());
    }
    let key = objects.output_key(job_id, attempt, ext);
    let file = job_dir.join(format!("output.{ext}"));
    let stored =
        objects.put_file(&key, &file).await.with_context(|| format!("storing the video as {key}"))?;
    anyhow::ensure!(
        stored == output.size_bytes,
        "the stored video {key} has {stored} bytes but the rendered one had {}",
        output.size_bytes
    );
    match tokio::fs::remove_dir_all(job_dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // The video is stored: a leftover local copy costs space, not correctness.
        Err(e) => tracing::warn!(%job_id, error = %e, "removing the stored video's local copy failed"),
    }
    tracing::info!(%job_id, %key, bytes = stored, "video stored");
    Ok(())
}
