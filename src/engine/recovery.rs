//! Startup recovery: what a dead server left behind is put right before the new one serves.
//!
//! Job queues we measure against find orphaned jobs after a lease expires (30 s to an hour).
//! Aura holds the data folder's lock, so at start it *knows* no other process is working on
//! its jobs: every job still `Running` was orphaned. In order:
//!
//! 1. the process groups a previous run started for its jobs and recorded in their folders
//!    (`<job>/work/processes/`) are killed if still running (they run in their own process groups and
//!    so outlive a SIGKILL of the server); nothing is matched by path, so a process of someone
//!    else's that works in a job folder is left alone (see `process::kill_recorded_orphans`);
//! 2. each `Running` job gets `engine-restarted` and a new attempt (or `too-many-attempts`), and
//!    is queued for the workers ahead of new jobs; each `Cancelling` job ends `Cancelled`;
//! 3. work files of jobs that have ended are removed (a completed job keeps its video).
//!
//! With PostgreSQL only the first and last steps run: other nodes may be running the jobs that
//! are `Running`; a dead node's jobs are found by their expired leases (`engine::leases`).
//!
//! The new attempt resumes at the first stage whose artifacts are not verified (see
//! `pipeline::artifacts`); stages before it are reported `Skipped`.

use std::path::Path;

use uuid::Uuid;

use crate::domain::job::JobStatus;
use crate::engine::lifecycle::{self, Recovered};
use crate::store::{ApplyError, Store};

/// What recovery did, for the log and for the workers.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Jobs with a new attempt, oldest first: the workers take these before any Queued job.
    pub resumed: Vec<Uuid>,
    pub cancelled: usize,
    pub gave_up: usize,
    pub killed_groups: usize,
    pub cleaned_dirs: usize,
}

pub async fn recover(store: &Store, data_dir: &Path, max_attempts: u32) -> anyhow::Result<Recovery> {
    let jobs_dir = data_dir.join("jobs");
    let mut done = Recovery {
        killed_groups: crate::engine::process::kill_recorded_orphans(&jobs_dir),
        ..Recovery::default()
    };
    // With a shared store other nodes run the Running jobs: a lost node's jobs are found by
    // their expired leases (see `leases`), not here.
    let statuses: &[JobStatus] =
        if store.node().is_some() { &[] } else { &[JobStatus::Running, JobStatus::Cancelling] };
    for &status in statuses {
        let mut before = None;
        loop {
            let page = store.list_jobs(None, Some(status), before, 500).await?;
            for job in &page.jobs {
                match lifecycle::recover(store, job.job_id, max_attempts).await {
                    Ok(Recovered::Resumed) => done.resumed.push(job.job_id),
                    Ok(Recovered::Cancelled) => done.cancelled += 1,
                    Ok(Recovered::GaveUp) => done.gave_up += 1,
                    Err(ApplyError::Refused(refusal)) => {
                        tracing::warn!(job_id = %job.job_id, %refusal, "recovery skipped a job")
                    }
                    Err(ApplyError::Store(e)) => return Err(e.into()),
                }
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
    }
    // The list is newest first; run the oldest first.
    done.resumed.reverse();
    done.cleaned_dirs = clean_work_files(store, &jobs_dir).await?;
    tracing::info!(
        resumed = done.resumed.len(),
        cancelled = done.cancelled,
        gave_up = done.gave_up,
        killed_groups = done.killed_groups,
        cleaned = done.cleaned_dirs,
        "startup recovery done"
    );
    Ok(done)
}

/// Removes the folders of ended jobs (a completed job keeps `output.*`, loses `work/`) and of
/// folders that belong to no job. Returns how many folders were changed.
async fn clean_work_files(store: &Store, jobs_dir: &Path) -> anyhow::Result<usize> {
    let Ok(mut entries) = tokio::fs::read_dir(jobs_dir).await else { return Ok(0) };
    let mut cleaned = 0;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let job = match entry.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) {
            Some(id) => store.job(id).await?,
            None => None,
        };
        let target = match job.map(|j| j.status) {
            Some(JobStatus::Queued | JobStatus::Running | JobStatus::Cancelling) => continue,
            Some(JobStatus::Completed) => path.join("work"),
            Some(JobStatus::Failed | JobStatus::Cancelled) | None => path,
        };
        match tokio::fs::remove_dir_all(&target).await {
            Ok(()) => cleaned += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "removing left-over work files failed"),
        }
    }
    Ok(cleaned)
}
