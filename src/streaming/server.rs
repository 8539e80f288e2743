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
//! Shutdown: no new connections, hyper's connections close gracefully, streams end (the
//! fan-out closes them), and this returns once every connection task has finished, or after a
//! grace period (a client that stopped reading must not hold the server up).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::streaming::paths;
use crate::streaming::sink::Sink;
use crate::streaming::stream::StreamStart;

/// The longest request head read here; a longer one goes to hyper, which answers it.
const MAX_HEAD: usize = 8 * 1024;
/// How long a connection may take to send its first request head before hyper gets it as is.
const HEAD_WAIT: Duration = Duration::from_secs(10);
/// Most request headers parsed here.
const MAX_HEADERS: usize = 64;
/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest non-stream answer (an error) written here.
const MAX_ANSWER: usize = 64 * 1024;

/// Serves `router` on `listener` until `stop` resolves, then shuts down gracefully.
pub async fn serve(listener: TcpListener, router: Router, stop: impl Future<Output = ()>) -> io::Result<()> {
    let connections = TaskTracker::new();
    let (closing, closing_rx) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => {
                connections.spawn(connection(socket, router.clone(), closing_rx.clone()));
            }
            // Out of file descriptors and the like: accepting again at once would spin.
            Err(e) if !is_per_connection(&e) => {
                tracing::error!(error = %e, "accepting a connection failed; pausing for a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
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

async fn connection(mut socket: TcpStream, router: Router, closing: watch::Receiver<()>) {
    // Small frames must leave at once: an event stream is latency, not throughput.
    let _ = socket.set_nodelay(true);
    let mut head = BytesMut::with_capacity(1024);
    match sniff(&mut socket, &mut head).await {
        Sniffed::Stream(request) => {
            // Kept for hours from here on: nothing the request needed stays allocated.
            drop(head);
            serve_stream(socket, *request, router).await;
        }
        // Boxed so that hyper's connection state is not part of every stream's task.
        Sniffed::Other => {
            Box::pin(serve_hyper(Prefixed { prefix: head.freeze(), io: socket }, router, closing)).await;
        }
        Sniffed::Gone => {}
    }
}

enum Sniffed {
    /// The first request is a stream's, complete, and nothing follows it.
    Stream(Box<Request<Body>>),
    /// Anything else: hyper's.
    Other,
    Gone,
}

/// Reads the start of the connection until it is clear whether it opens with a stream request.
async fn sniff(socket: &mut TcpStream, head: &mut BytesMut) -> Sniffed {
    let deadline = tokio::time::Instant::now() + HEAD_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, socket.read_buf(head)).await {
            Ok(Ok(0)) if head.is_empty() => return Sniffed::Gone,
            Ok(Ok(0)) | Err(_) => return Sniffed::Other,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Sniffed::Gone,
        }
        match classify(head) {
            Class::NeedMore if head.len() < MAX_HEAD => {}
            Class::NeedMore | Class::Other => return Sniffed::Other,
            Class::Stream(request) => return Sniffed::Stream(request),
        }
    }
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
async fn serve_stream(socket: TcpStream, request: Request<Body>, router: Router) {
    let Ok(response) = router.oneshot(request).await;
    let start = response.extensions().get::<StreamStart>().and_then(StreamStart::take);
    let Some(subscriber) = start else {
        answer(socket, response).await;
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
    let sink = Arc::new(Sink::Socket(socket));
    if sink.push_wire(head.freeze()).await.is_ok() {
        subscriber.run(sink).await;
    }
}

/// Writes a whole (small) response that is not a stream, then closes the connection.
async fn answer(socket: TcpStream, response: Response<Body>) {
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
    let sink = Sink::Socket(socket);
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

/// hyper serves the connection, reading first the bytes `sniff` took.
async fn serve_hyper(io: Prefixed, router: Router, mut closing: watch::Receiver<()>) {
    let service =
        TowerToHyperService::new(router.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut asked = false;
    loop {
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
        }
    }
}

/// A socket with some of its input already read: those bytes are read again first.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
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
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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
