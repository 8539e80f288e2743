//! Deleting a job: `DELETE /api/jobs/{id}`, `aura jobs delete` and job retention all come here.
//!
//! The store removes the job's events and row in one transaction that records the deletion
//! (`Store::delete_job`); from that commit on the job is gone for every reader. Then its files
//! go (the job's folder in the data folder, and every object the store holds under its key),
//! and the recorded deletion last (`Store::finish_deletion`). A crash, or a store that is away,
//! in between leaves the record: [`finish_pending`] finishes it at the next start and on every
//! retention round, on whichever node runs them.

use std::path::Path;

use uuid::Uuid;

use crate::engine::Engine;
use crate::store::{ApplyError, Deleted};

/// Recorded deletions finished per call of [`finish_pending`].
const PENDING_BATCH: u32 = 100;

/// Deletes a finished job with its events, its row and its files; refused (`NotFound`, or
/// `Conflict` for a job that has not finished) before anything is touched.
pub async fn delete(engine: &Engine, job_id: Uuid) -> Result<Deleted, ApplyError> {
    let deleted = engine.store().delete_job(job_id).await?;
    tracing::info!(%job_id, events = deleted.events, "job deleted");
    if !finish(engine, job_id).await {
        tracing::warn!(%job_id, "the deleted job's files are removed later");
    }
    Ok(deleted)
}

/// Removes a deleted job's files, then forgets its deletion; `false` when something failed
/// (logged): the record stays, and a later [`finish_pending`] tries again.
pub async fn finish(engine: &Engine, job_id: Uuid) -> bool {
    let folder = engine.settings().data_dir.join("jobs").join(job_id.to_string());
    if let Err(e) = remove_folder(&folder).await {
        tracing::warn!(%job_id, error = %e, "removing a deleted job's folder failed");
        return false;
    }
    if !engine.objects().in_place()
        && let Err(e) = engine.objects().delete_job(job_id).await
    {
        tracing::warn!(%job_id, error = %e, "removing a deleted job's stored files failed");
        return false;
    }
    match engine.store().finish_deletion(job_id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "forgetting a finished deletion failed");
            false
        }
    }
}

/// Finishes deletions a crash (or a store that was away) left half done. Returns how many
/// were finished.
pub async fn finish_pending(engine: &Engine) -> usize {
    let pending = match engine.store().pending_deletions(PENDING_BATCH).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "looking for unfinished deletions failed");
            return 0;
        }
    };
    let mut finished = 0;
    for job_id in pending {
        if finish(engine, job_id).await {
            tracing::info!(%job_id, "an interrupted deletion was finished");
            finished += 1;
        }
    }
    finished
}

async fn remove_folder(folder: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(folder).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
