//! [`Engine`]: the worker side's shared state while the server runs, and the calls the HTTP edge
//! makes into it (create, cancel).
//!
//! It owns the registry of running jobs (job id → the token that cancels its processes), the
//! queue of jobs startup recovery resumed, and the notification that wakes idle workers. Locks
//! here guard plain bookkeeping; a poisoned one is logged and the step skipped (the fallback
//! poll and the pipeline's own checks of the job's status still stop a cancelled job).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ServeConfig;
use crate::domain::event::{JobStatusData, StoredEvent};
use crate::domain::job::JobStatus;
use crate::domain::spec::JobSpec;
use crate::engine::disk::Disk;
use crate::engine::lifecycle::{self, JobHandle};
use crate::objects::Objects;
use crate::store::Store;
use crate::sync::lock;

/// A job this node runs: its tokens, and the handle that knows its attempt (for the lease
/// renewals of a shared store).
struct Running {
    tokens: RunTokens,
    handle: Option<JobHandle>,
}

/// How a job this node runs is stopped, and why.
#[derive(Clone)]
pub struct RunTokens {
    /// The job leaves this node without a word from it: the server shuts down (this token is a
    /// child of the shutdown token), or this node lost the job's lease, or the job went on as
    /// another attempt or ended elsewhere. Its processes are killed and the worker appends
    /// nothing terminal: another attempt (on any node, after `node-lost`, or after the next
    /// start's recovery) continues the job.
    pub leave: CancellationToken,
    /// Kills the job's processes: a cancel (the worker then appends `job-cancelled`), or
    /// anything that cancels `leave` (this token is its child).
    pub stop: CancellationToken,
}

/// Cheap to clone: everything is behind one `Arc`.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ServeConfig,
    store: Store,
    shutdown: CancellationToken,
    jobs_created: Notify,
    running: Mutex<HashMap<Uuid, Running>>,
    resumed: Mutex<VecDeque<Uuid>>,
    disk: Disk,
    objects: Objects,
}

impl Engine {
    pub fn new(settings: ServeConfig, store: Store, objects: Objects, shutdown: CancellationToken) -> Self {
        Engine {
            inner: Arc::new(Inner {
                disk: Disk::new(&settings.data_dir, settings.min_free_bytes()),
                settings,
                store,
                shutdown,
                jobs_created: Notify::new(),
                running: Mutex::default(),
                resumed: Mutex::default(),
                objects,
            }),
        }
    }

    pub fn settings(&self) -> &ServeConfig {
        &self.inner.settings
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Where finished videos live (`AURA_STORAGE_URL`).
    pub fn objects(&self) -> &Objects {
        &self.inner.objects
    }

    /// The data folder's disk and its free-space floor.
    pub fn disk(&self) -> &Disk {
        &self.inner.disk
    }

    /// Cancelled when the server begins to shut down: workers stop, children are killed.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Signalled whenever a job is created, so idle workers wake without polling.
    pub fn jobs_created(&self) -> &Notify {
        &self.inner.jobs_created
    }

    /// Creates a job (one `job-status Queued` event) and wakes an idle worker.
    pub async fn create(&self, job_id: Uuid, spec: JobSpec, owner: String) -> lifecycle::Outcome {
        let applied = lifecycle::create(self.store(), job_id, spec, owner).await?;
        self.inner.jobs_created.notify_waiters();
        Ok(applied)
    }

    /// Cancels a job: Queued ends at once, Running becomes Cancelling and the worker running it,
    /// if any, has its processes killed.
    pub async fn cancel(&self, job_id: Uuid) -> lifecycle::Outcome {
        let applied = lifecycle::cancel(self.store(), job_id).await?;
        self.cancel_running(job_id);
        Ok(applied)
    }

    /// Registers a job a worker is running: [`Engine::cancel`] (or a cancel this node observes)
    /// cancels its `stop` token, [`Engine::lose`] and shutdown its `leave` token.
    pub fn register_running(&self, job_id: Uuid) -> RunTokens {
        let leave = self.inner.shutdown.child_token();
        let tokens = RunTokens { stop: leave.child_token(), leave };
        match lock(&self.inner.running, "running jobs") {
            Ok(mut running) => {
                running.insert(job_id, Running { tokens: tokens.clone(), handle: None });
            }
            Err(e) => tracing::error!(error = %e, %job_id, "cannot register a running job"),
        }
        tokens
    }

    pub fn unregister_running(&self, job_id: Uuid) {
        match lock(&self.inner.running, "running jobs") {
            Ok(mut running) => {
                running.remove(&job_id);
            }
            Err(e) => tracing::error!(error = %e, %job_id, "cannot unregister a running job"),
        }
    }

    /// Remembers the handle of a job this node runs (its attempt is renewed on the lease).
    pub fn attach_handle(&self, handle: &JobHandle) {
        match lock(&self.inner.running, "running jobs") {
            Ok(mut running) => {
                if let Some(job) = running.get_mut(&handle.job_id()) {
                    job.handle = Some(handle.clone());
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot record a running job's attempt"),
        }
    }

    /// The jobs this node runs with their attempts.
    pub fn running_attempts(&self) -> Vec<(Uuid, u32)> {
        match lock(&self.inner.running, "running jobs") {
            Ok(running) => running
                .iter()
                .filter_map(|(id, job)| job.handle.as_ref().map(|h| (*id, h.attempt())))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the running jobs");
                Vec::new()
            }
        }
    }

    /// Stops a job whose lease this node lost: its processes are killed and its worker appends
    /// nothing terminal (lease loss is not a cancel). Once the lease has expired by the
    /// database's clock, any node continues the job as a new attempt (`warning` `node-lost`);
    /// whatever the old attempt still tries to write is refused by its fence.
    pub fn lose(&self, job_id: Uuid) {
        tracing::warn!(%job_id, "this node lost the job's lease; stopping its processes");
        match lock(&self.inner.running, "running jobs") {
            Ok(running) => {
                if let Some(job) = running.get(&job_id) {
                    job.tokens.leave.cancel();
                }
            }
            Err(e) => tracing::error!(error = %e, %job_id, "cannot reach the running job to stop it"),
        }
    }

    /// What this node learns from events committed by any node: a job asked to stop while
    /// this node runs it is stopped (a cancel sent to another node), and idle workers wake for
    /// a new job or a new attempt that waits for a worker node.
    pub fn observe(&self, events: &[Arc<StoredEvent>]) {
        let mut wake = false;
        for event in events {
            match event.kind.as_str() {
                "job-status" => match serde_json::from_str::<JobStatusData>(event.data()) {
                    Ok(data) if data.status == JobStatus::Cancelling => self.cancel_running(event.job_id),
                    Ok(data) if data.status == JobStatus::Queued => wake = true,
                    _ => {}
                },
                "warning" => wake = true,
                _ => {}
            }
        }
        if wake {
            self.inner.jobs_created.notify_waiters();
        }
    }

    /// Tells the worker running `job_id`, if any, to stop it (it then appends `job-cancelled`).
    fn cancel_running(&self, job_id: Uuid) {
        match lock(&self.inner.running, "running jobs") {
            Ok(running) => {
                if let Some(job) = running.get(&job_id) {
                    job.tokens.stop.cancel();
                }
            }
            Err(e) => tracing::error!(error = %e, %job_id, "cannot reach the running job to cancel it"),
        }
    }

    /// Reads the status of every job this node runs from the table and stops those cancelled
    /// meanwhile. For when this node may have missed events: the ring of recent events moved
    /// past what [`Engine::observe`] last saw. It costs one read per running job, and only
    /// then. A job that ended or went on as another attempt is left to the fence and the lease
    /// renewal, which already stop it (an attempt this node has just begun may not be in its
    /// handle yet).
    pub async fn recheck_running(&self) {
        for (job_id, attempt) in self.running_attempts() {
            match self.store().job(job_id).await {
                Ok(Some(s)) if s.status == JobStatus::Cancelling && s.attempt == attempt => {
                    tracing::info!(%job_id, "a cancel this node had missed: stopping the job");
                    self.cancel_running(job_id);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %job_id, "reading a running job's status failed"),
            }
        }
    }

    /// Queues jobs that startup recovery gave a new attempt; workers take them first.
    pub fn queue_resumed(&self, jobs: impl IntoIterator<Item = Uuid>) {
        match lock(&self.inner.resumed, "resumed jobs") {
            Ok(mut q) => q.extend(jobs),
            Err(e) => tracing::error!(error = %e, "cannot queue recovered jobs"),
        }
    }

    /// The next recovered job to run, if any.
    pub fn next_resumed(&self) -> Option<Uuid> {
        match lock(&self.inner.resumed, "resumed jobs") {
            Ok(mut q) => q.pop_front(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the recovered jobs");
                None
            }
        }
    }
}
