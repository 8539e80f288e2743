//! The retention sweeper (`AURA_OUTPUT_RETENTION`): deletes a finished job's video once it is
//! older than the retention, so a long-running server's disk use is bounded. The video is
//! deleted from wherever it lives (`AURA_STORAGE_URL`, see `objects`).
//!
//! One task, started at startup when a retention is set. Every [`period`] it asks the store
//! for completed jobs that still have their output and finished before `now - retention`
//! (at most [`BATCH`] at a time, oldest first), deletes each video, then appends the job's
//! `warning` `output-expired` (`lifecycle::expire_output`), which folds into "no output": the
//! output route answers 410 from then on. The file goes first, so a crash in between leaves a
//! job whose video is gone but whose output is still recorded; the next sweep finds it again,
//! finds nothing to delete, and appends the warning. The job, its status and its events stay.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::time::now_micros;
use crate::engine::lifecycle;
use crate::objects::Objects;
use crate::store::{ApplyError, Store};

/// Most videos deleted per sweep; the next sweep takes the rest.
pub const BATCH: u32 = 200;

/// How often the sweeper looks: a quarter of the retention, between 1 s and a minute.
pub fn period(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Starts the sweeper; it stops when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    data_dir: PathBuf,
    objects: Objects,
    retention: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(retention_secs = retention.as_secs(), "output retention: sweeper started");
        let mut tick = tokio::time::interval(period(retention));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                swept = sweep(&store, &data_dir, &objects, retention) => match swept {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "output retention: videos deleted"),
                    Err(e) => tracing::warn!(error = %e, "output retention: the sweep failed"),
                },
            }
        }
        tracing::debug!("output retention: sweeper stopped");
    })
}

/// One sweep: deletes up to [`BATCH`] expired videos and records each. Returns how many.
pub async fn sweep(
    store: &Store,
    data_dir: &Path,
    objects: &Objects,
    retention: Duration,
) -> anyhow::Result<usize> {
    let Ok(retention) = time::Duration::try_from(retention) else { return Ok(0) };
    let Some(cutoff) = now_micros().checked_sub(retention) else { return Ok(0) };
    let mut expired = 0;
    for job in store.outputs_finished_before(cutoff, BATCH).await? {
        let Some(output) = &job.output else { continue };
        if !objects.in_place() {
            let ext = job.request.render_spec.container.extension();
            let key = objects.output_key(job.job_id, job.attempt, ext);
            if let Err(e) = objects.delete(&key).await {
                tracing::warn!(job_id = %job.job_id, error = %e, "output retention: deleting a video failed");
                continue;
            }
        } else {
            // `videoPath` is Aura's own `jobs/<id>/output.<ext>`; never follow anything else.
            let relative = Path::new(&output.video_path);
            if relative.is_absolute() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
                tracing::warn!(job_id = %job.job_id, "output retention: a stored output path is not plain; skipped");
                continue;
            }
            match tokio::fs::remove_file(data_dir.join(relative)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(job_id = %job.job_id, error = %e, "output retention: deleting a video failed");
                    continue;
                }
            }
        }
        match lifecycle::expire_output(store, job.job_id).await {
            Ok(_) => expired += 1,
            Err(ApplyError::Refused(refusal)) => {
                tracing::debug!(job_id = %job.job_id, %refusal, "output retention: nothing to record")
            }
            Err(ApplyError::Store(e)) => return Err(e.into()),
        }
    }
    Ok(expired)
}
