//! The HTTP accept loop: hyper for every request, except that an event stream asked for as a
//! connection's first request gets the socket itself.
//!
//! hyper keeps two buffers and a task's worth of state per connection, and a streamed body
//! costs a task wake-up and a trip through its dispatcher per event. For the one response that
//! lives for hours and carries most of the traffic, Aura does better on its own: the head of a
//! connection's first request is read here, and if it is `GET` of an events path over HTTP/1.1
//! the request still goes through the whole router (authentication, limits, CORS, tracing),
//! but a stream it opens is written straight onto the socket by the fan-out (see `sink`). Any
//! other connection goes to hyper with the bytes already read put back in front.
//!
//! The accept loop keeps every protection hyper would give a connection, and adds the ones
//! hyper lacks (API.md "Connections"; `tests/api/connections.rs` has a test for each):
//! - a head not complete within the header timeout closes the connection, whoever reads it —
//!   the sniffer here for a connection's first request, hyper (with a timer) and the idle
//!   watch below for every later one;
//! - a head over 16 KiB is answered `431` and the connection closed;
//! - a keep-alive connection with no request in flight for the idle timeout is closed (an open
//!   stream is a request in flight);
//! - a client that takes no byte of a response for the write timeout is dropped: a write of
//!   ours that waits fails (`sink` for a stream that owns its socket, [`Watched`] for hyper and
//!   every WebSocket), and bytes already handed to the kernel count too — every connection has
//!   `TCP_USER_TIMEOUT` set to the write timeout, so the kernel drops a connection whose data
//!   has waited that long unacknowledged or behind a zero window (a replay that fit in the send
//!   buffer, then nothing more to write until the next event or heartbeat);
//! - past the connection cap (a semaphore sized from the open-file limit) a new connection is
//!   closed at once, so the process never runs out of descriptors; a connection upgraded to a
//!   WebSocket keeps its slot until the socket closes; an accept error that is
//!   not about one connection (`EMFILE`) pauses the loop with a bounded back-off.
//!
//! `AURA_STREAM_TAKEOVER=false` skips the sniffer: hyper serves every connection and stream.
//!
//! Either way every request carries its connection's peer address as axum's
//! `ConnectInfo<SocketAddr>` (the budget of unknown credentials is per client address, see
//! `access::lookups`).
//!
//! Shutdown: no new connections, hyper's connections close gracefully, streams end (the
//! fan-out closes them; a stream blocked on a client that stopped reading gives up within a
//! second), and this returns once every connection task has finished, or after a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::backoff::Backoff;
use crate::streaming::paths;
use crate::streaming::sink::Sink;
use crate::streaming::stream::StreamStart;
use crate::sync::{Poisoned, lock};

/// The longest request head, here and in hyper; a longer one is answered `431`.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a connection answered `431` may keep sending before it is closed (so that the
/// client reads the answer rather than a reset).
const LINGER: Duration = Duration::from_secs(2);
/// How long a hyper connection whose client takes nothing may stay once shutdown has begun.
const SHUTDOWN_STALL: Duration = Duration::from_secs(1);
/// The shortest and longest pause after an accept error that is not about one connection.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Most request headers parsed here.
const MAX_HEADERS: usize = 64;
/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest non-stream answer (an error) written here.
const MAX_ANSWER: usize = 64 * 1024;

/// What the accept loop allows a connection (API.md "Connections").
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest a request head may take to arrive whole.
    pub header_timeout: Duration,
    /// The longest a keep-alive connection may wait with no request in flight.
    pub idle_timeout: Duration,
    /// The longest a client may take no byte of a response.
    pub write_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Whether a stream asked for as a connection's first request gets the socket.
    pub takeover: bool,
}

/// Serves `router` on `listener` until `stop` resolves, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    let (closing, closing_rx) = watch::channel(());
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let settings = Arc::new(settings);
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff.reset();
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Past the cap: closed at once, so that the cap bounds descriptors.
                    metrics::counter!("aura_connections_refused_total").increment(1);
                    drop(socket);
                    continue;
                };
                connections.spawn(connection(
                    socket,
                    peer,
                    permit,
                    router.clone(),
                    settings.clone(),
                    closing_rx.clone(),
                ));
            }
            // Out of file descriptors and the like: accepting again at once would spin.
            Err(e) if !is_per_connection(&e) => {
                tracing::error!(error = %e, "accepting a connection failed; pausing");
                if !backoff.wait(&mut stop).await {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    drop(listener);
    drop(closing_rx);
    // Tells every hyper connection to finish its current request and close.
    drop(closing);
    connections.close();
    // A client that stopped reading could hold its stream's last write forever.
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the shutdown grace period; closing them"
        );
    }
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    router: Router,
    settings: Arc<Settings>,
    closing: watch::Receiver<()>,
) {
    // Held for the connection's life: the cap counts open connections. hyper's socket carries
    // it (`Watched`), so that a WebSocket upgraded from it holds it until the socket closes.
    let accepted = Instant::now();
    // Small frames must leave at once: an event stream is latency, not throughput.
    let _ = socket.set_nodelay(true);
    // Bytes the kernel holds for a client that takes none count against the write timeout
    // too, not only a write that waits: the kernel drops the connection once data has waited
    // unacknowledged, or behind a zero window, for the write timeout.
    let _ = socket2::SockRef::from(&socket).set_tcp_user_timeout(Some(settings.write_timeout));
    if !settings.takeover {
        Box::pin(serve_hyper((socket, permit), peer, Bytes::new(), accepted, router, &settings, closing))
            .await;
        return;
    }
    let mut head = BytesMut::with_capacity(1024);
    match sniff(&mut socket, &mut head, accepted + settings.header_timeout).await {
        Sniffed::Stream(mut request) => {
            // Kept for hours from here on: nothing the request needed stays allocated.
            drop(head);
            request.extensions_mut().insert(ConnectInfo(peer));
            serve_stream(socket, *request, router, settings.write_timeout).await;
            drop(permit);
        }
        // Boxed so that hyper's connection state is not part of every stream's task.
        Sniffed::Other => {
            let prefix = head.freeze();
            Box::pin(serve_hyper((socket, permit), peer, prefix, accepted, router, &settings, closing)).await;
        }
        Sniffed::TooLarge => {
            too_large(socket, settings.write_timeout).await;
            drop(permit);
        }
        Sniffed::Gone => drop(permit),
    }
}

enum Sniffed {
    /// The first request is a stream's, complete, and nothing follows it.
    Stream(Box<Request<Body>>),
    /// Anything else: hyper's.
    Other,
    /// A stream request's head past [`MAX_HEAD`].
    TooLarge,
    /// Closed, failed, or no whole head within the header timeout: nothing to answer.
    Gone,
}

/// Reads the start of the connection until it is clear whether it opens with a stream request.
async fn sniff(socket: &mut TcpStream, head: &mut BytesMut, deadline: Instant) -> Sniffed {
    loop {
        match tokio::time::timeout_at(deadline, socket.read_buf(head)).await {
            Ok(Ok(0)) if head.is_empty() => return Sniffed::Gone,
            // A client that ended its side mid-head: hyper answers what it can.
            Ok(Ok(0)) => return Sniffed::Other,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Sniffed::Gone,
            // The head did not arrive in time: closed here, never handed on.
            Err(_) => {
                metrics::counter!("aura_header_timeouts_total").increment(1);
                return Sniffed::Gone;
            }
        }
        match classify(head) {
            Class::NeedMore | Class::Stream(_) if head.len() > MAX_HEAD => return Sniffed::TooLarge,
            Class::NeedMore => {}
            Class::Other => return Sniffed::Other,
            Class::Stream(request) => return Sniffed::Stream(request),
        }
    }
}

/// Answers `431` to a head that is too long, then reads (and drops) what the client still
/// sends for a moment before closing, so that the client sees the answer, not a reset.
async fn too_large(mut socket: TcpStream, write_timeout: Duration) {
    let mut answer = status_line(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    push_header(&mut answer, "content-length", b"0");
    push_header(&mut answer, "connection", b"close");
    answer.extend_from_slice(b"\r\n");
    let written = tokio::time::timeout(write_timeout, socket.write_all(&answer)).await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = socket.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = socket.read(&mut scratch).await
            && n > 0
        {}
    })
    .await;
}

enum Class {
    NeedMore,
    Other,
    Stream(Box<Request<Body>>),
}

/// The literal starts of the stream request lines (`paths`), built once.
static STREAM_PREFIXES: LazyLock<[String; 2]> = LazyLock::new(paths::request_prefixes);

fn classify(buf: &[u8]) -> Class {
    let n = buf.len();
    let prefixes = STREAM_PREFIXES.iter().map(String::as_bytes);
    if !prefixes.clone().any(|p| if n < p.len() { p.starts_with(buf) } else { buf.starts_with(p) }) {
        return Class::Other;
    }
    if prefixes.clone().all(|p| n < p.len()) {
        return Class::NeedMore;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => Class::NeedMore,
        // Pipelined bytes after the head belong to a later request: hyper's business.
        Ok(httparse::Status::Complete(len)) if len == n => {
            to_request(&parsed).map_or(Class::Other, |r| Class::Stream(Box::new(r)))
        }
        _ => Class::Other,
    }
}

/// A `GET` of a stream path over HTTP/1.1 without a body, as a request for the router.
fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let (Some("GET"), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return None;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !paths::is_stream(path) {
        return None;
    }
    let mut request = Request::builder().method(Method::GET).uri(target).version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
        {
            return None;
        }
        request = request.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

/// Runs the router on a stream request read here; a stream it opens gets the socket.
async fn serve_stream(socket: TcpStream, request: Request<Body>, router: Router, write_timeout: Duration) {
    let Ok(response) = router.oneshot(request).await;
    let start = response.extensions().get::<StreamStart>().and_then(StreamStart::take);
    let Some(subscriber) = start else {
        answer(socket, response, write_timeout).await;
        return;
    };
    let mut head = status_line(response.status());
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            push_header(&mut head, name.as_str(), value.as_bytes());
        }
    }
    push_header(&mut head, "transfer-encoding", b"chunked");
    head.extend_from_slice(b"\r\n");
    drop(response);
    metrics::counter!("aura_streams_served_total", "via" => "socket").increment(1);
    let sink = Arc::new(Sink::socket(socket, write_timeout));
    if sink.push_wire(head.freeze()).await.is_ok() {
        subscriber.run(sink).await;
    }
}

/// Writes a whole (small) response that is not a stream, then closes the connection.
async fn answer(socket: TcpStream, response: Response<Body>, write_timeout: Duration) {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER).await.unwrap_or_default();
    let mut head = status_line(parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            push_header(&mut head, name.as_str(), value.as_bytes());
        }
    }
    if parts.status != StatusCode::NO_CONTENT && parts.status != StatusCode::NOT_MODIFIED {
        push_header(&mut head, "content-length", body.len().to_string().as_bytes());
    }
    push_header(&mut head, "connection", b"close");
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&body);
    let sink = Sink::socket(socket, write_timeout);
    let _ = sink.push_wire(head.freeze()).await;
}

fn status_line(status: StatusCode) -> BytesMut {
    let mut head = BytesMut::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    push_header(&mut head, "date", http_date().as_bytes());
    head
}

fn push_header(head: &mut BytesMut, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Now, as an HTTP `Date` (IMF-fixdate).
fn http_date() -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc().format(format).unwrap_or_default()
}

/// hyper serves the connection, reading first the bytes `sniff` took (`prefix`), until it
/// ends, a head is late, it has been idle too long, or shutdown has closed it. The socket's
/// slot in the cap goes with it, into a WebSocket the connection is upgraded to.
async fn serve_hyper(
    (socket, permit): (TcpStream, OwnedSemaphorePermit),
    peer: SocketAddr,
    prefix: Bytes,
    accepted: Instant,
    router: Router,
    settings: &Settings,
    mut closing: watch::Receiver<()>,
) {
    let activity = Arc::new(Activity::new(accepted));
    let io = Watched {
        prefix,
        io: socket,
        _permit: permit,
        activity: activity.clone(),
        write_timeout: settings.write_timeout,
        stall: None,
    };
    let service = Tracked { router, activity: activity.clone(), peer };
    let conn = hyper::server::conn::http1::Builder::new()
        // Without a timer hyper's header timeout is silently off. Its timer starts as soon as
        // a response is done, so on its own it would close idle connections after the header
        // timeout; the watch below applies both timeouts exactly, and hyper's is a backstop.
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout + settings.idle_timeout)
        .max_header_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut asked = false;
    loop {
        let due = activity.due(settings.header_timeout, settings.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing.changed(), if !asked => {
                asked = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            // A client that stopped reading must not hold shutdown for the whole write timeout.
            () = tokio::time::sleep(SHUTDOWN_STALL), if asked => {
                if activity.locked().map_or(true, |state| state.write_stalled) {
                    return;
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or(accepted)), if due.is_some() => {
                if activity.due(settings.header_timeout, settings.idle_timeout).is_some_and(|d| d <= Instant::now()) {
                    if activity.reading_head() {
                        metrics::counter!("aura_header_timeouts_total").increment(1);
                    }
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

/// What a hyper connection is doing, for its header and idle timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when a request starts or ends, or the first byte of a head arrives.
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response is not finished (an open stream is one).
    in_flight: usize,
    /// When the last response finished (or the connection was accepted).
    idle_since: Instant,
    /// When the first byte of the next head arrived, while no request is in flight.
    head_since: Option<Instant>,
    /// The last write took nothing: the client is not reading.
    write_stalled: bool,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        // The first head is awaited from the moment the connection was accepted.
        let state = ActivityState {
            in_flight: 0,
            idle_since: accepted,
            head_since: Some(accepted),
            write_stalled: false,
        };
        Activity { state: Mutex::new(state), changed: Notify::new() }
    }

    /// The connection's state, unless a panic poisoned it: then the connection's timeouts
    /// cannot be known, and it closes (its timeout is due at once).
    fn locked(&self) -> Result<MutexGuard<'_, ActivityState>, Poisoned> {
        lock(&self.state, "connection activity")
    }

    /// When the connection must close unless something happens first; `None` while a request
    /// is in flight.
    fn due(&self, header_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        let Ok(state) = self.locked() else { return Some(Instant::now()) };
        if state.in_flight > 0 {
            return None;
        }
        Some(match state.head_since {
            Some(since) => since + header_timeout,
            None => state.idle_since + idle_timeout,
        })
    }

    fn reading_head(&self) -> bool {
        self.locked().is_ok_and(|state| state.head_since.is_some())
    }

    /// Bytes arrived: while no request is in flight, they start a head.
    fn read(&self) {
        let Ok(mut state) = self.locked() else { return };
        if state.in_flight == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// hyper has parsed a whole head and calls the router.
    fn begin(self: &Arc<Self>) -> InFlight {
        if let Ok(mut state) = self.locked() {
            state.in_flight += 1;
            state.head_since = None;
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight: from its head to the end of its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.locked() {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = Instant::now();
                state.head_since = None;
            }
        }
        self.0.changed.notify_one();
    }
}

/// The router as hyper's service, counting requests in flight until their bodies end; each
/// request gets the connection's peer address.
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Guarded>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Guarded>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let router = self.router.clone();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        Box::pin(async move {
            let Ok(response) = router.oneshot(request.map(Body::new)).await;
            Ok(response.map(|body| Guarded { body, _in_flight: in_flight }))
        })
    }
}

/// A response body that keeps its request in flight until hyper drops it.
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket served by hyper: the bytes the sniffer took are read again first, reads are
/// reported to the connection's [`Activity`], and a write that takes no byte for the write
/// timeout fails. It holds the connection's slot in the cap: when a WebSocket upgrade takes
/// the socket from hyper, the slot goes with it and is freed only when the socket closes.
struct Watched {
    prefix: Bytes,
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    write_timeout: Duration,
    /// Armed when a write could take nothing; cleared by any write that takes bytes.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    fn watch_write(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if poll.is_ready() {
            if self.stall.take().is_some()
                && let Ok(mut state) = self.activity.locked()
            {
                state.write_stalled = false;
            }
            return poll;
        }
        if self.stall.is_none()
            && let Ok(mut state) = self.activity.locked()
        {
            state.write_stalled = true;
        }
        let timeout = self.write_timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.stall = None;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(raw: &str) -> &'static str {
        match classify(raw.as_bytes()) {
            Class::NeedMore => "more",
            Class::Other => "other",
            Class::Stream(_) => "stream",
        }
    }

    #[test]
    fn only_a_whole_stream_request_is_taken() {
        assert_eq!(class("GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n"), "stream");
        assert_eq!(class("GET /api/events?jobId=1&lastEventId=3 HTTP/1.1\r\n\r\n"), "stream");
        assert_eq!(class("GET /api/jobs/abc/events HTTP/1.1\r\nLast-Event-ID: 4\r\n\r\n"), "stream");
        assert_eq!(class("GET /api/ev"), "more");
        assert_eq!(class("GET /api/events HTTP/1.1\r\nHost"), "more");
        assert_eq!(class("POST /api/jobs HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(class("GET /api/jobs/abc HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(class("GET /api/jobs/a/b/events HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(class("GET /api/events HTTP/1.0\r\n\r\n"), "other");
        assert_eq!(class("GET /api/events HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), "other");
        assert_eq!(class("GET /api/events HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(class("GET /api/eventsx HTTP/1.1\r\n\r\n"), "other");
    }
}
