//! Job retention (`AURA_JOB_RETENTION`): a finished job older than the retention is deleted
//! with its events, video and artifacts (see `deletion`), so a long-running server's database
//! stays bounded. The same task finishes deletions a crash or an absent store left half done,
//! whether or not a retention is set.
//!
//! One task per node. Each round takes the store's retention turn (with a shared database, one
//! node at a time has it), finishes what is pending, then deletes expired jobs oldest first, in
//! batches of [`BATCH`]: each deletion is its own short transaction on the writer, so appends
//! never wait behind a large delete. A round stops after [`ROUND`] jobs and the next one goes on.
//! With `AURA_RETENTION_EXPORT` each job is first written to `<folder>/<jobId>.ndjson` (`aura
//! export`'s format), synced and renamed into place; a job whose copy fails is not deleted.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::time::now_micros;
use crate::engine::Engine;
use crate::engine::deletion;
use crate::store::ApplyError;
use crate::store::export::export_jobs;

/// Jobs looked up per query.
pub const BATCH: u32 = 100;
/// Most jobs deleted per round.
const ROUND: usize = 1000;
/// How often a node looks when no retention is set (only for interrupted deletions).
const IDLE_PERIOD: Duration = Duration::from_secs(60);

/// How often the task looks: a quarter of the retention, between 1 s and a minute.
fn period(retention: Option<Duration>) -> Duration {
    retention.map_or(IDLE_PERIOD, |r| (r / 4).clamp(Duration::from_secs(1), IDLE_PERIOD))
}

/// Starts the task; it stops at shutdown.
pub fn spawn(engine: Engine) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = engine.shutdown_token();
        let retention = engine.settings().job_retention.0;
        let mut tick = tokio::time::interval(period(retention));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                deleted = round(&engine) => match deleted {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "job retention: jobs deleted"),
                    Err(e) => tracing::warn!(error = %e, "job retention: the round failed"),
                },
            }
        }
    })
}

/// One round: finishes interrupted deletions, then deletes up to [`ROUND`] expired jobs.
/// Returns how many jobs were deleted; 0 when another node has the turn.
pub async fn round(engine: &Engine) -> anyhow::Result<usize> {
    let Some(turn) = engine.store().retention_turn().await? else { return Ok(0) };
    deletion::finish_pending(engine).await;
    let deleted = expire(engine).await;
    turn.release().await;
    deleted
}

async fn expire(engine: &Engine) -> anyhow::Result<usize> {
    let Some(retention) = engine.settings().job_retention.0 else { return Ok(0) };
    let Ok(retention) = time::Duration::try_from(retention) else { return Ok(0) };
    let Some(cutoff) = now_micros().checked_sub(retention) else { return Ok(0) };
    let mut deleted = 0;
    while deleted < ROUND {
        let expired = engine.store().finished_before(cutoff, BATCH).await?;
        let full = expired.len() == BATCH as usize;
        for job_id in expired {
            if let Some(folder) = &engine.settings().retention_export
                && let Err(e) = export(engine, job_id, folder).await
            {
                // Never deleted without its copy: it stays, and the next round tries again.
                tracing::warn!(%job_id, error = format!("{e:#}"), "job retention: exporting a job failed; it is kept");
                continue;
            }
            match deletion::delete(engine, job_id).await {
                Ok(_) => deleted += 1,
                Err(ApplyError::Refused(refusal)) => {
                    tracing::debug!(%job_id, %refusal, "job retention: not deleted")
                }
                Err(ApplyError::Store(e)) => return Err(e.into()),
            }
        }
        if !full {
            break;
        }
    }
    Ok(deleted)
}

/// Writes the job to `<folder>/<jobId>.ndjson` whole: a temporary file, synced, renamed, and the
/// folder synced, so a crash leaves the old file or the new one, never half of one.
async fn export(engine: &Engine, job_id: uuid::Uuid, folder: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let path = folder.join(format!("{job_id}.ndjson"));
    let tmp = folder.join(format!(".{job_id}.ndjson.tmp"));
    let written = async {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        export_jobs(engine.store(), &[job_id], &mut out).await?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(folder)?.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}
