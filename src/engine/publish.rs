//! Puts a completed job's video where finished videos live (`AURA_STORAGE_URL`, see `objects`)
//! before the job is recorded as completed.
//!
//! With the default store (the data folder) the rendered file already is the stored video and
//! nothing happens. Otherwise the video goes under its per-attempt key, the stored size is
//! checked against the rendered one, and only then is the job's local folder removed: a
//! `job-completed` is never appended for a video the store does not hold.

use std::path::Path;

use anyhow::Context;
use uuid::Uuid;

use crate::domain::event::JobOutput;
use crate::engine::Engine;

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
