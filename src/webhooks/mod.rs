//! Webhooks: the event log delivered to users' own HTTP endpoints, in order, signed, across
//! restarts.
//!
//! An endpoint is one more subscriber of the log whose `Last-Event-ID` is stored (its
//! `position`). Each endpoint has its own task ([`deliver`]) that reads the events of its types
//! after its position from the table, POSTs them one at a time and moves the stored position
//! only after a 2xx (or after giving up on an event for 24 h). The tasks wake on the tail's
//! "published up to id N" signal, so the stream fan-out does no work for them, and a slow or
//! hanging endpoint holds up nobody but itself.
//!
//! [`Webhooks`] is what the HTTP edge calls: it checks a new endpoint, registers it through the
//! store's writer and wakes the delivering side; it stops the task of a deleted endpoint.
//!
//! Tasks run only while this node holds the store's [`DeliveryLock`]: with SQLite always, with
//! PostgreSQL on exactly one node at a time. Every node tries to take it every
//! [`TAKE_EVERY`]; the node that has it confirms it every [`CHECK_EVERY`] (and before every
//! attempt), starts a task for each endpoint, including those registered on other nodes, and
//! the moment the lock is lost lets no task start another attempt: the attempts in flight end
//! and are recorded within the grace a node that takes the lock waits first.

pub mod deliver;
pub mod sign;
pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ServeConfig;
use crate::domain::event::EVENT_TYPES;
use crate::domain::spec::FieldError;
use crate::store::webhooks::{DeliveryLock, Endpoint, Write, Written};
use crate::store::{Store, StoreError};
use crate::sync;

/// Most endpoints one server keeps; a registration past it is refused with 409.
pub const MAX_ENDPOINTS: i64 = 100;
/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// How often a node that does not deliver tries to take the delivery lock.
pub const TAKE_EVERY: Duration = Duration::from_secs(2);
/// How often the delivering node confirms its lock and looks for new or deleted endpoints.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// What the lock's holder may take beyond the attempt's own timeout between confirming the
/// lock and the end of the attempt (the confirmation's answer, the request's start).
const CONFIRM_MARGIN: Duration = Duration::from_secs(3);

/// The webhook settings, from `aura serve`'s.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AURA_WEBHOOK_ALLOW_PRIVATE`: endpoints may be on loopback, private or link-local addresses
    /// (the ranges `target` marks private; never the other special-purpose ones).
    pub allow_private: bool,
    /// `AURA_WEBHOOK_TIMEOUT_SECS`: the longest one attempt may take, answer included.
    pub timeout: Duration,
    /// `AURA_WEBHOOK_RETRY_BASE_MS`: the wait after a first failed attempt; it doubles with each
    /// further one (with jitter), up to an hour.
    pub retry_base: Duration,
    /// How long an event is retried before it is recorded `failed` and the endpoint moves on.
    pub give_up_after: Duration,
}

impl Settings {
    pub fn from_config(config: &ServeConfig) -> Settings {
        Settings {
            allow_private: config.webhook_allow_private,
            timeout: Duration::from_secs(config.webhook_timeout_secs),
            retry_base: Duration::from_millis(config.webhook_retry_base_ms),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// The webhook machinery: cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    client: reqwest::Client,
    head: watch::Receiver<i64>,
    shutdown: CancellationToken,
    /// The running delivery task of each endpoint, by the token that stops it.
    tasks: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Woken when an endpoint is registered on this node, so its task starts at once.
    registered: Notify,
    /// Whether this node delivers now (it holds the delivery lock and its wait is over).
    delivering: AtomicBool,
    /// The task that takes the lock and runs the deliveries.
    taking_part: Mutex<Option<JoinHandle<()>>>,
    /// What this node's tasks delivered, recorded or not (kept across losing the lock).
    acked: Arc<deliver::Acknowledged>,
}

/// A registration request that passed every check.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
}

impl Webhooks {
    /// Starts taking part in deliveries: this node delivers to every registered endpoint
    /// whenever it holds the delivery lock. `head` follows the highest published event id.
    pub async fn start(
        store: Store,
        head: watch::Receiver<i64>,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Webhooks> {
        // No proxy, whatever HTTP(S)_PROXY or ALL_PROXY say: behind a proxy the resolver below
        // would check only the proxy's address while the proxy resolves (and may rebind) the
        // target. A webhook proxy, if one is ever offered, must be a setting of its own,
        // documented as trusting that proxy to refuse what `target` refuses. No redirect is
        // followed either: a 3xx is the answer, recorded as it is.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(target::CheckedResolver { allow_private: settings.allow_private }))
            .user_agent(concat!("Aura-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the webhook HTTP client: {e}"))?;
        // A database that cannot list endpoints stops the start, as it did before it was shared.
        store.webhooks().await?;
        let webhooks = Webhooks {
            inner: Arc::new(Inner {
                store,
                settings,
                client,
                head,
                shutdown,
                tasks: Mutex::new(HashMap::new()),
                registered: Notify::new(),
                delivering: AtomicBool::new(false),
                taking_part: Mutex::new(None),
                acked: Arc::default(),
            }),
        };
        let handle = tokio::spawn(webhooks.clone().take_part());
        if let Ok(mut taking_part) = sync::lock(&webhooks.inner.taking_part, "webhook delivery task") {
            *taking_part = Some(handle);
        }
        Ok(webhooks)
    }

    /// Tries to take the delivery lock every [`TAKE_EVERY`] and delivers while it holds it,
    /// until shutdown.
    async fn take_part(self) {
        // The longest a holder may go between a confirmation of the lock and the end of an
        // attempt: the database keeps a silent holder's session at least this long.
        let grace = self.inner.settings.timeout + CONFIRM_MARGIN;
        let shutdown = self.inner.shutdown.clone();
        loop {
            match self.inner.store.delivery_lock(grace).await {
                Ok(Some(lock)) => self.deliver_while_held(Arc::new(lock)).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "taking the webhook delivery lock failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(TAKE_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs a task for every endpoint until the lock is lost or the server shuts down. Either
    /// way the attempts in flight end and are recorded before the lock is let go.
    async fn deliver_while_held(&self, lock: Arc<DeliveryLock>) {
        let shutdown = &self.inner.shutdown;
        let delivering = metrics::gauge!("aura_webhook_delivering");
        let wait = lock.wait_before_delivering();
        if !wait.is_zero() {
            tracing::info!(wait_ms = wait.as_millis() as u64, "took the webhook delivery lock");
        }
        let held = tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = shutdown.cancelled() => false,
        };
        // Not a child of the shutdown token: a shutdown lets attempts in flight finish.
        let leading = CancellationToken::new();
        // Cancelled at shutdown or when the lock is lost: no new attempt starts, and the one in
        // flight ends and is recorded (a 2xx must not go unrecorded), within the grace a node
        // that takes the lock over waits before its first attempt.
        let finishing = shutdown.child_token();
        let mut running = JoinSet::new();
        if held {
            delivering.set(1.0);
            self.inner.delivering.store(true, Ordering::Relaxed);
        }
        while held && !shutdown.is_cancelled() {
            if let Err(e) = lock.confirm().await {
                tracing::warn!(error = %e, "lost the webhook delivery lock; deliveries stop on this node");
                break;
            }
            match self.inner.store.webhooks().await {
                Ok(endpoints) => self.run_tasks(&endpoints, &lock, &leading, &finishing, &mut running),
                Err(e) => tracing::warn!(error = %e, "listing webhook endpoints failed"),
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                () = self.inner.registered.notified() => {}
                () = shutdown.cancelled() => {}
            }
        }
        finishing.cancel();
        let bound = self.inner.settings.timeout + CONFIRM_MARGIN;
        if tokio::time::timeout(bound, async { while running.join_next().await.is_some() {} }).await.is_err()
        {
            tracing::warn!("webhook attempts in flight did not end in time");
        }
        leading.cancel();
        running.abort_all();
        if let Ok(mut tasks) = sync::lock(&self.inner.tasks, "endpoint tasks") {
            tasks.clear();
        }
        delivering.set(0.0);
        self.inner.delivering.store(false, Ordering::Relaxed);
        lock.release().await;
    }

    /// Starts a task for each endpoint that has none running and stops those of endpoints
    /// that are gone.
    fn run_tasks(
        &self,
        endpoints: &[Endpoint],
        lock: &Arc<DeliveryLock>,
        leading: &CancellationToken,
        finishing: &CancellationToken,
        running: &mut JoinSet<()>,
    ) {
        let ids: HashSet<Uuid> = endpoints.iter().map(|e| e.id).collect();
        let Ok(mut tasks) = sync::lock(&self.inner.tasks, "endpoint tasks") else { return };
        tasks.retain(|id, stop| {
            let keep = ids.contains(id) && !stop.is_cancelled();
            if !keep {
                stop.cancel();
            }
            keep
        });
        for id in ids {
            if tasks.contains_key(&id) {
                continue;
            }
            let stop = leading.child_token();
            tasks.insert(id, stop.clone());
            let task = deliver::Task {
                store: self.inner.store.clone(),
                client: self.inner.client.clone(),
                settings: self.inner.settings.clone(),
                endpoint: id,
                head: self.inner.head.clone(),
                lock: lock.clone(),
                stop: stop.clone(),
                finish: finishing.clone(),
                acked: self.inner.acked.clone(),
            };
            running.spawn(async move {
                deliver::run(task).await;
                // A task that ended on its own is started again if its endpoint still exists.
                stop.cancel();
            });
        }
    }

    /// Waits until this node has stopped delivering: the attempts in flight at shutdown are
    /// recorded and the delivery lock is let go. Call after the shutdown token is cancelled.
    pub async fn stopped(&self) {
        let handle =
            sync::lock(&self.inner.taking_part, "webhook delivery task").ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let bound = self.inner.settings.timeout + CONFIRM_MARGIN * 2;
            if tokio::time::timeout(bound, handle).await.is_err() {
                tracing::warn!("webhook deliveries did not stop in time");
            }
        }
    }

    /// Whether this node is the one delivering now (always, once started, with SQLite).
    pub fn delivering(&self) -> bool {
        self.inner.delivering.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Checks a registration body (`{"url", "events"}`): every problem, each named by its field.
    /// `events` may be left out for every type.
    pub async fn check(&self, body: &Value) -> Result<NewEndpoint, Vec<FieldError>> {
        let mut errors = Vec::new();
        let field = |name: &str, detail: String| FieldError {
            field: name.to_owned(),
            pointer: format!("/{name}"),
            detail,
        };
        let url = match body.get("url") {
            Some(Value::String(raw)) => match target::parse_url(raw) {
                Ok(url) => match target::check_addresses(&url, self.inner.settings.allow_private).await {
                    Ok(()) => Some(url.to_string()),
                    Err(e) => {
                        errors.push(field("url", e.to_string()));
                        None
                    }
                },
                Err(e) => {
                    errors.push(field("url", e.to_string()));
                    None
                }
            },
            Some(_) => {
                errors.push(field("url", "must be a string".into()));
                None
            }
            None => {
                errors.push(field("url", "is required".into()));
                None
            }
        };
        let events = match body.get("events") {
            None | Some(Value::Null) => Some(EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect()),
            Some(Value::Array(items)) if items.is_empty() => {
                errors.push(field("events", "must name at least one event type".into()));
                None
            }
            Some(Value::Array(items)) => {
                let mut events: Vec<String> = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(t) if EVENT_TYPES.contains(&t) => {
                            if !events.iter().any(|e| e == t) {
                                events.push(t.to_owned());
                            }
                        }
                        _ => {
                            let shown: String = item.to_string().chars().take(40).collect();
                            errors.push(field(
                                "events",
                                format!("{shown} is not an event type; use {}", EVENT_TYPES.join(", ")),
                            ));
                        }
                    }
                }
                Some(events)
            }
            Some(_) => {
                errors.push(field("events", "must be an array of event types".into()));
                None
            }
        };
        match (url, events) {
            (Some(url), Some(events)) if errors.is_empty() => Ok(NewEndpoint { url, events }),
            _ => Err(errors),
        }
    }

    /// Registers a checked endpoint at the current end of the log and starts its task; the
    /// answer carries the secret, for the one time it is shown. `Ok(None)` when [`MAX_ENDPOINTS`] are already registered.
    pub async fn create(&self, new: NewEndpoint) -> Result<Option<Endpoint>, StoreError> {
        let id = Uuid::now_v7();
        let secret = sign::new_secret().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let created_at = crate::domain::event::format_at(crate::domain::event::now_micros());
        let written = self
            .inner
            .store
            .webhook_write(Write::Create {
                id,
                url: new.url.clone(),
                events: new.events.clone(),
                secret: secret.clone(),
                created_at: created_at.clone(),
                limit: MAX_ENDPOINTS,
            })
            .await?;
        let Written::Created { position } = written else { return Ok(None) };
        self.inner.registered.notify_one();
        tracing::info!(webhook_id = %id, "webhook endpoint registered");
        Ok(Some(Endpoint {
            id,
            url: new.url,
            events: new.events,
            secret,
            previous: None,
            position,
            created_at,
        }))
    }

    /// Deletes an endpoint and stops its task; `false` when there was none.
    pub async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let written = self.inner.store.webhook_write(Write::Delete { id }).await?;
        if let Ok(mut tasks) = sync::lock(&self.inner.tasks, "endpoint tasks")
            && let Some(stop) = tasks.remove(&id)
        {
            stop.cancel();
        }
        self.inner.acked.forget(id);
        metrics::gauge!("aura_webhook_lag_events", "endpoint" => id.to_string()).set(0.0);
        Ok(written == Written::Done)
    }

    /// Issues a new secret; the old one keeps signing for [`ROTATION_OVERLAP`]. Returns the new
    /// secret and the unix second the old one stops, or `None` for an unknown endpoint.
    pub async fn rotate(&self, id: Uuid) -> Result<Option<(String, i64)>, StoreError> {
        let secret = sign::new_secret().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let until = unix_now() + ROTATION_OVERLAP.as_secs() as i64;
        let written = self
            .inner
            .store
            .webhook_write(Write::Rotate { id, secret: secret.clone(), previous_until: until })
            .await?;
        Ok((written == Written::Done).then_some((secret, until)))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
