//! The state every handler shares, built once at start: settings, the store's reads, the
//! engine (create, cancel), the stream machinery's context, callers' access and limits, and
//! the webhooks.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::access::auth::Auth;
use crate::access::limits::{Limits, StreamCounter};
use crate::config::ServeConfig;
use crate::engine::Engine;
use crate::http::sites::Sites;
use crate::store::Store;
use crate::streaming;
use crate::webhooks::Webhooks;

/// Cheap to clone: everything is behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ServeConfig,
    sites: Arc<Sites>,
    store: Store,
    engine: Engine,
    streaming: streaming::Context,
    streams: Arc<StreamCounter>,
    metrics: PrometheusHandle,
    auth: Auth,
    limits: Arc<Limits>,
    webhooks: Webhooks,
}

/// What [`AppState::new`] is built from.
pub struct Parts {
    pub settings: ServeConfig,
    pub store: Store,
    pub engine: Engine,
    pub streaming: streaming::Context,
    pub metrics: PrometheusHandle,
    pub auth: Auth,
    pub limits: Limits,
    pub webhooks: Webhooks,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let Parts { settings, store, engine, streaming, metrics, auth, limits, webhooks } = parts;
        AppState {
            inner: Arc::new(Inner {
                sites: Arc::new(Sites::from_config(&settings)),
                settings,
                store,
                engine,
                streaming,
                streams: Arc::default(),
                metrics,
                auth,
                limits: Arc::new(limits),
                webhooks,
            }),
        }
    }

    pub fn settings(&self) -> &ServeConfig {
        &self.inner.settings
    }

    /// The host and origin rules (`sites.rs`), parsed once from the settings.
    pub fn sites(&self) -> &Arc<Sites> {
        &self.inner.sites
    }

    /// Reads; every write goes through the engine.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// What a stream needs while it runs.
    pub fn streaming(&self) -> &streaming::Context {
        &self.inner.streaming
    }

    /// The global count of open streams (`AURA_MAX_STREAMS`).
    pub fn streams(&self) -> &Arc<StreamCounter> {
        &self.inner.streams
    }

    /// Tokens and sessions: who a request comes from.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Per-owner stream and job-creation limits.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.inner.limits
    }

    /// Webhook endpoints: registration and their delivery tasks.
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }
}
