//! Builds the application (store, fan-out, router, workers) bound to its listener, and runs
//! it until a shutdown future resolves. `main`, the CLI and the tests all start Aura here.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::auth::Auth;
use crate::access::limits::Limits;
use crate::config::ServeConfig;
use crate::engine::worker::{self, Pool};
use crate::engine::{Engine, leases, recovery, retention};
use crate::http::router::cors_layer;
use crate::http::state::{AppState, Parts};
use crate::lock::DataDirLock;
use crate::objects::Objects;
use crate::store::{Node, Store, Unusable};
use crate::streaming::{self, hub::Hub};
use crate::webhooks::{self, Webhooks};

/// How long shutdown waits for the workers after killing their children.
const WORKER_STOP_BOUND: Duration = Duration::from_secs(5);
/// Descriptors never given to connections: the database, the tokens file, stage files, ffmpeg's
/// pipes. At least this many, and at least a tenth of the limit.
const FD_RESERVE: u64 = 64;

/// A built application: listening, not yet serving.
pub struct Application {
    lock: DataDirLock,
    listener: TcpListener,
    router: Router,
    state: AppState,
    port: u16,
    workers: Pool,
    sweeper: Option<tokio::task::JoinHandle<()>>,
    /// Job retention and the end of interrupted deletions (`engine::job_retention`).
    history: tokio::task::JoinHandle<()>,
    leases: Option<tokio::task::JoinHandle<()>>,
    connections: streaming::server::Settings,
}

/// Raises the soft open-file limit to the hard one and returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit"),
        }
    }
    soft
}

/// Connections the kernel queues before the accept loop takes them (capped by
/// `net.core.somaxconn`): a burst of connections must not push a health check's SYN out of
/// the queue, which would cost it a second of retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `AURA_MAX_CONNECTIONS`, or 90 % of the open-file limit; never more than the limit less its
/// reserve.
fn connection_cap(asked: Option<u64>, limit: u64) -> usize {
    let room = limit.saturating_sub(FD_RESERVE.max(limit / 10)).max(1);
    let cap = match asked {
        Some(asked) if asked > room => {
            tracing::warn!(
                asked,
                room,
                "AURA_MAX_CONNECTIONS is past the open-file limit less its reserve; using the latter"
            );
            room
        }
        Some(asked) => asked,
        None => room,
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// The process-wide Prometheus recorder (a recorder can be installed once per process). The
/// install runs inside `get_or_init`, so applications built at the same time (tests) never race
/// to install two.
/// Every series carries the `node` label of the first application built in the process.
fn metrics_handle(node: &str) -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = crate::telemetry::catalog::exporter(node)
                .map_err(|e| format!("configuring metric buckets: {e}"))?
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))?;
            crate::telemetry::catalog::describe();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Creates the data folder if needed and proves it writable (by creating and removing a probe
/// file), or says in one line what to do.
fn writable_data_dir(dir: &std::path::Path) -> Result<(), Unusable> {
    let shown = dir.display();
    let refuse = |e: std::io::Error| {
        Unusable(format!(
            "the data folder {shown} is not writable ({e}): make it writable by this user, or choose \
             another with --data-dir (AURA_DATA_DIR)"
        ))
    };
    std::fs::create_dir_all(dir).map_err(refuse)?;
    let probe = dir.join(format!(".aura-write-probe-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe).map_err(refuse)?;
    std::fs::remove_file(&probe).map_err(refuse)?;
    Ok(())
}

impl Application {
    pub async fn build(settings: ServeConfig) -> anyhow::Result<Application> {
        settings.check_database_url()?;
        settings.check_storage_url()?;
        let fd_limit = raise_open_file_limit();
        let connections = streaming::server::Settings {
            header_timeout: Duration::from_secs(settings.header_timeout_secs),
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
            write_timeout: Duration::from_secs(settings.write_timeout_secs),
            max_connections: connection_cap(settings.max_connections, fd_limit),
            takeover: settings.stream_takeover,
        };
        // Before anything is written: a folder or a database Aura must not use stops the start
        // with an `Unusable` (exit code 2), leaving every file as it was.
        writable_data_dir(&settings.data_dir)?;
        crate::store::inspect(&settings.database()).await?;
        let limits = Limits::new(settings.max_streams_per_owner as usize, settings.job_rate)?;
        let cors = cors_layer(&settings.cors_origins)?;
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        let metrics = metrics_handle(&Node::configured(&settings).name)?;
        let shutdown = CancellationToken::new();
        let (store, feed) =
            Store::open_node(settings.database(), settings.synchronous.into(), Node::configured(&settings))
                .await
                .with_context(|| format!("opening the database {}", settings.database_shown()))?;
        let auth =
            Auth::load(&settings, store.credentials()).await.context("loading the tokens and sessions")?;
        if !settings.is_loopback() && !settings.insecure_open && !auth.has_tokens().await {
            anyhow::bail!(
                "refusing to serve {} without tokens: anyone who can reach it could use it. Create a \
                 token with `aura token create NAME` first, or pass --insecure-open \
                 (AURA_INSECURE_OPEN=true) on a network you trust",
                settings.addr
            );
        }
        let hub = Hub::start(
            store.clone(),
            feed,
            Duration::from_secs(settings.heartbeat_secs),
            settings.stream_buffer as usize,
            shutdown.clone(),
        )
        .await
        .context("starting the event tail")?;
        let webhooks = Webhooks::start(
            store.clone(),
            hub.watch(),
            webhooks::Settings::from_config(&settings),
            shutdown.clone(),
        )
        .await
        .context("starting the webhook deliveries")?;
        let listener = listen(settings.addr).with_context(|| format!("binding {}", settings.addr))?;
        let port = listener.local_addr().context("reading the bound address")?.port();
        // After the data folder exists: the default store is that folder.
        let objects = Objects::open(&settings.storage(), &settings.data_dir, &settings.storage_options)
            .context("opening the storage for finished videos (AURA_STORAGE_URL)")?;
        let engine = Engine::new(settings.clone(), store.clone(), objects.clone(), shutdown.clone());
        if store.node().is_some() {
            // A cancel sent to another node reaches this node's processes through the log.
            tokio::spawn(observe(hub.clone(), engine.clone(), shutdown.clone()));
        }
        let streaming = streaming::Context::new(streaming::context::ContextParts {
            store: store.clone(),
            hub,
            shutdown: shutdown.clone(),
            retry_ms: settings.retry_ms,
            max_stream_secs: settings.max_stream_secs,
            hyper_buffer: settings.stream_buffer,
            write_timeout: connections.write_timeout,
            heartbeat: Duration::from_secs(settings.heartbeat_secs),
        });
        let state = AppState::new(Parts {
            settings,
            store,
            engine: engine.clone(),
            streaming,
            metrics,
            auth,
            limits,
            webhooks,
        });
        let router = crate::http::router(state.clone()).layer(cors);
        // Before serving and before any worker looks for work: put right what a dead run left.
        let recovered =
            recovery::recover(state.store(), &state.settings().data_dir, state.settings().max_attempts)
                .await
                .context("recovering jobs left by the previous run")?;
        engine.queue_resumed(recovered.resumed);
        // A deletion a crash cut short: the job is gone already; its files go now.
        crate::engine::deletion::finish_pending(&engine).await;
        let workers = worker::spawn_pool(engine.clone());
        let leases = leases::spawn(engine.clone());
        let sweeper = state.settings().output_retention.0.map(|keep| {
            retention::spawn(
                state.store().clone(),
                state.settings().data_dir.clone(),
                objects,
                keep,
                engine.shutdown_token(),
            )
        });
        let history = crate::engine::job_retention::spawn(engine.clone());
        Ok(Application {
            lock,
            listener,
            router,
            state,
            port,
            workers,
            sweeper,
            history,
            leases,
            connections,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then ends every stream, stops the workers and closes
    /// the store.
    ///
    /// In order, each step logged: the accept loop takes no new connection and ends every stream
    /// (clients resume with `Last-Event-ID`; it waits for connections at most its grace, see
    /// `streaming::server`); the one shutdown token kills the running children, whose jobs stay
    /// `Running` for the next start or another node; the workers and the retention sweeper get
    /// [`WORKER_STOP_BOUND`]; webhook attempts in flight are recorded; this node's leases are
    /// let go (a shared store); the store closes (the writer commits what is queued, and SQLite
    /// checkpoints its WAL); the data folder's lock is released last.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = self.state.engine().shutdown_token();
        let signal_token = token.clone();
        tracing::info!(
            addr = %self.listener.local_addr()?,
            max_connections = self.connections.max_connections,
            "aura is listening"
        );
        let stop = async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutdown requested: no new connections, ending streams"),
                () = signal_token.cancelled() => {}
            }
            signal_token.cancel();
        };
        let result = streaming::server::serve(self.listener, self.router, self.connections, stop)
            .await
            .context("serving HTTP");
        token.cancel();
        tracing::info!("HTTP server stopped");
        // Cancelling the token killed every running child; the workers leave their jobs Running.
        self.workers.join(WORKER_STOP_BOUND).await;
        if let Some(sweeper) = self.sweeper {
            // It stops at the token between two deletions; a sweep in flight is cut short.
            if tokio::time::timeout(WORKER_STOP_BOUND, sweeper).await.is_err() {
                tracing::warn!("the retention sweeper did not stop in time");
            }
        }
        if tokio::time::timeout(WORKER_STOP_BOUND, self.history).await.is_err() {
            tracing::warn!("job retention did not stop in time");
        }
        // Attempts in flight end and are recorded while the store is still open.
        self.state.webhooks().stopped().await;
        let store = self.state.store().clone();
        if let Some(leases) = self.leases {
            leases.abort();
            // The jobs this node leaves Running continue on other nodes at once.
            if let Err(e) = store.release_leases().await {
                tracing::warn!(error = %e, "letting go of this node's leases failed; they expire on their own");
            }
        }
        drop(self.state);
        store.close().await;
        tracing::info!(lock = %self.lock.path().display(), "store closed; releasing the data folder");
        drop(self.lock);
        result
    }
}

/// Hands every event this node publishes (its own and other nodes') to the engine, which stops
/// its processes of a job cancelled on another node and wakes idle workers for new work.
async fn observe(hub: std::sync::Arc<Hub>, engine: Engine, shutdown: CancellationToken) {
    let mut published = hub.watch();
    let mut seen = *published.borrow_and_update();
    loop {
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let now = *published.borrow_and_update();
        match hub.recent_after(seen) {
            Some((events, through)) => {
                engine.observe(&events);
                seen = through;
            }
            // The ring moved past what this node last saw: the events in between may hold a
            // cancel of a job it runs, so it reads those jobs' statuses from the table.
            None => {
                seen = now;
                engine.recheck_running().await;
            }
        }
    }
}
