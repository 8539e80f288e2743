//! The application state every handler and worker shares, built once at start.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Auth;
use crate::config::ServeConfig;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::store::Store;
use crate::stream::StreamCounter;

/// Cheap to clone: everything is behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ServeConfig,
    store: Store,
    hub: Arc<Hub>,
    streams: Arc<StreamCounter>,
    shutdown: CancellationToken,
    jobs_created: Notify,
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    resumed: Mutex<VecDeque<Uuid>>,
    metrics: PrometheusHandle,
    auth: Auth,
    limits: Arc<Limits>,
}

impl AppState {
    pub fn new(
        settings: ServeConfig,
        store: Store,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        metrics: PrometheusHandle,
        auth: Auth,
        limits: Limits,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                settings,
                store,
                hub,
                streams: Arc::default(),
                shutdown,
                jobs_created: Notify::new(),
                running: Mutex::default(),
                resumed: Mutex::default(),
                metrics,
                auth,
                limits: Arc::new(limits),
            }),
        }
    }

    pub fn settings(&self) -> &ServeConfig {
        &self.inner.settings
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn streams(&self) -> &Arc<StreamCounter> {
        &self.inner.streams
    }

    /// Cancelled when the server begins to shut down: streams end, workers stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Signalled whenever a job is created, so idle workers wake without polling.
    pub fn jobs_created(&self) -> &Notify {
        &self.inner.jobs_created
    }

    /// Tokens and sessions: who a request comes from.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Per-owner stream and job-creation limits.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.inner.limits
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    /// Registers a job a worker is running; its token is cancelled by [`AppState::cancel_running`].
    pub fn register_running(&self, job_id: Uuid) -> CancellationToken {
        let token = self.inner.shutdown.child_token();
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(job_id, token.clone());
        }
        token
    }

    pub fn unregister_running(&self, job_id: Uuid) {
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(&job_id);
        }
    }

    /// Queues jobs that startup recovery gave a new attempt; workers take them first.
    pub fn queue_resumed(&self, jobs: impl IntoIterator<Item = Uuid>) {
        if let Ok(mut q) = self.inner.resumed.lock() {
            q.extend(jobs);
        }
    }

    /// The next recovered job to run, if any.
    pub fn next_resumed(&self) -> Option<Uuid> {
        self.inner.resumed.lock().ok().and_then(|mut q| q.pop_front())
    }

    /// Tells the worker running `job_id`, if any, to stop it.
    pub fn cancel_running(&self, job_id: Uuid) {
        if let Some(token) = self.inner.running.lock().ok().and_then(|r| r.get(&job_id).cloned()) {
            token.cancel();
        }
    }
}
