//! What every stream's task needs of the server ([`Context`]: the store, the hub, shutdown and
//! the stream limits) and what bounds its waits ([`Bounds`]: shutdown and its deadline). Both the
//! plain streams (`stream`) and the streams that follow the hub on their own (`follow`, the
//! WebSocket) use them, so they live below both.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::streaming::hub::Hub;
use crate::streaming::sink::Sink;

/// What a stream needs of the server while it runs: cheap to clone (one `Arc`), so that an
/// idle stream costs a pointer, not a copy of the application's state.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextParts>,
}

/// What [`Context::new`] is built from, read once at start.
pub struct ContextParts {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
    pub retry_ms: u64,
    pub max_stream_secs: u64,
    /// The chunks a stream served through hyper may queue.
    pub hyper_buffer: u64,
    /// The longest a write may wait with no byte taken by the client.
    pub write_timeout: Duration,
    /// The longest a stream that follows the hub on its own stays silent.
    pub heartbeat: Duration,
}

/// How long a stream's writes may still wait after shutdown or the stream's deadline.
const FINISH_GRACE: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(parts: ContextParts) -> Self {
        Context { inner: Arc::new(parts) }
    }

    /// The longest a write may wait with no byte taken by the client.
    pub fn write_timeout(&self) -> Duration {
        self.inner.write_timeout
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The chunks a stream served through hyper may queue.
    pub fn hyper_buffer(&self) -> u64 {
        self.inner.hyper_buffer
    }

    /// The `retry:` hint every stream opens with, in milliseconds.
    pub fn retry_ms(&self) -> u64 {
        self.inner.retry_ms
    }

    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// When a stream opened now must end (`AURA_MAX_STREAM_SECS`).
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.inner.max_stream_secs)
    }
}

/// What bounds every wait of a stream's task besides the write timeout: shutdown and the
/// stream's deadline. Followers (`follow`) and WebSockets (`http::ws`) use it too.
pub struct Bounds {
    pub shutdown: CancellationToken,
    pub deadline: Instant,
}

impl Bounds {
    /// Runs a write to its end (the sink fails it after the write timeout without progress),
    /// or fails it [`FINISH_GRACE`] after shutdown or the stream's deadline.
    pub async fn write(&self, write: impl Future<Output = io::Result<()>>) -> io::Result<()> {
        self.within(write).await.unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Runs `work` to its end, or gives up on it ([`None`]) [`FINISH_GRACE`] after shutdown or
    /// the stream's deadline.
    pub async fn within<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.cutoff() => None,
        }
    }

    /// Whether shutdown has begun or the stream's deadline has passed.
    pub fn is_over(&self) -> bool {
        self.shutdown.is_cancelled() || Instant::now() >= self.deadline
    }

    /// Ends the response, within the same bounds as any write.
    pub async fn finish(&self, sink: &Sink) {
        let finish = async {
            sink.finish().await;
            Ok(())
        };
        let _ = self.write(finish).await;
    }

    async fn cutoff(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep_until(self.deadline) => {}
        }
        tokio::time::sleep(FINISH_GRACE).await;
    }
}
