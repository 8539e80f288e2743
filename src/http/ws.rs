//! The WebSocket transport, `GET /api/ws` and `/api/ws?jobId=…`: the same events with the same
//! ids as the event streams, for clients (or networks) that cannot use Server-Sent Events, and
//! one thing SSE cannot do, a cancel sent on the same connection.
//!
//! Everything is checked at the handshake, as for a stream: credentials (the middleware, as
//! for every `/api` route), the origin (the rule of every `POST`, `sites.rs`: an `Origin` that is
//! neither this host nor one of `AURA_CORS_ORIGINS` gets `403 cross-site`, since a browser
//! sends cookies with a cross-site WebSocket),
//! the query, ownership, then the global and per-owner stream caps. The socket then follows the
//! hub on its own (`streaming::follow`), so it costs the zero-copy SSE path nothing.
//!
//! Messages: the server sends each event as `{"id": N, "type": "…", "data": {…}}`, answers a
//! client's `{"cancel": "<jobId>"}` with `{"cancelled": <snapshot>}` or `{"error": <problem>}`
//! (and keeps the socket open), `{"ping": x}` with `{"pong": x}`, and WebSocket pings with pongs.
//! A job's socket closes with 1000 after its terminal event; 1001 when the stream's lifetime or
//! the server ends (resume from the last id).
//!
//! A socket must stay answerable: the server pings it at once and again a third of
//! `AURA_WS_PONG_SECS` after each pong ([`Pings`]), and closes it (1001) once a ping has gone
//! unanswered for `AURA_WS_PONG_SECS` — a client that stopped reading, or a peer that is gone.
//! Every write gives up after the write timeout without progress (the connection's socket,
//! `streaming::server`), or a moment after shutdown or the stream's deadline. The socket holds
//! its connection's slot in `AURA_MAX_CONNECTIONS` until it closes (`streaming::server`).

use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::access::auth::Caller;
use crate::domain::event::StoredEvent;
use crate::error::AppError;
use crate::http::extract::{
    Scope, acquire, history_start, not_found, parse_job_id, parse_query, stream_request,
};
use crate::http::state::AppState;
use crate::streaming::context::Bounds;
use crate::streaming::follow::{Ended, Follower, Next};
use crate::streaming::request::OpenGauge;

/// The WebSocket route.
pub const PATH: &str = "/api/ws";
/// How long a socket opened without `lastEventId` waits for a first `{"resume": N}` message.
const RESUME_WAIT: Duration = Duration::from_millis(300);
/// A client message larger than this closes the socket: clients send only small commands.
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// Bytes read from the socket at once; small, since it is allocated for the socket's life.
const READ_BUFFER: usize = 4 * 1024;
/// How long the close frame of a socket that stopped answering may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(websocket))
}

/// Events over a WebSocket: one text message per event (`{"id", "type", "data"}`) with the
/// stream's ids; resume with `?lastEventId=N` or a first message `{"resume": N}`; send
/// `{"cancel": "<jobId>"}` to cancel a job. With one `jobId` the socket closes (1000) after
/// that job's terminal event.
#[utoipa::path(get, path = "/api/ws", tag = "events",
    params(
        ("jobId" = Option<Vec<Uuid>>, Query, description = "Only these jobs (repeat the parameter); exactly one makes a job socket that closes with 1000 after the job's terminal event"),
        ("lastEventId" = Option<i64>, Query, description = "Resume after this event id (or send {\"resume\": N} as the first message)"),
        ("batch" = Option<String>, Query, description = "A batch window, as on the event streams"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol. Each event is one text message {\"id\": N, \"type\": \"…\", \"data\": {…}} with the same id and data as on the event streams. The client may send {\"resume\": N} first, {\"cancel\": \"<jobId>\"} (answered {\"cancelled\": snapshot} or {\"error\": problem}, the socket stays open) and {\"ping\": x} (answered {\"pong\": x}). Closes with 1000 after a job socket's terminal event, 1001 when the stream's lifetime or the server ends."),
        (status = 400, description = "Not a WebSocket handshake, or a bad id, resume point or batch window", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "An origin that is neither this host nor in AURA_CORS_ORIGINS (cross-site), a host name the server does not answer to (host-not-allowed), or another owner's job", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "A named job does not exist", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn websocket(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    // The same rule as every POST and DELETE (`sites.rs`); the host was checked by the router.
    app.sites().check_origin(&headers)?;
    let query = parse_query(query.as_deref())?;
    let explicit_resume =
        headers.contains_key("last-event-id") || query.iter().any(|(k, _)| k == "lastEventId");
    let request = stream_request(&app, &caller, &headers, &query, Scope::Socket).await?;
    let upgrade = upgrade.map_err(|_| {
        AppError::bad_request("Not a WebSocket handshake", "this route answers WebSocket handshakes only")
    })?;
    let slots = acquire(&app, &caller)?;
    metrics::counter!("aura_streams_opened_total", "kind" => "ws").increment(1);
    let history_start = request.history_start;
    let follower = Follower::new(app.streaming().clone(), request, slots, OpenGauge::new("ws"));
    let session = Session { app, caller, follower, wait_for_resume: !explicit_resume, history_start };
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| session.run(socket))
        .into_response())
}

/// One open socket.
struct Session {
    app: AppState,
    caller: Caller,
    follower: Follower,
    wait_for_resume: bool,
    /// Where the history starts, when the resume point is older (sent first, once).
    history_start: Option<i64>,
}

impl Session {
    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let bounds = self.follower.bounds();
        let mut pings = Pings::new(Duration::from_secs(self.app.settings().ws_pong_secs));
        if self.wait_for_resume && !self.first_message(&mut tx, &mut rx, &mut pings, &bounds).await {
            return;
        }
        if let Some(start) = self.history_start {
            let told = text_message(&serde_json::json!({ "historyStart": start }));
            if !sent(bounds.within(tx.send(told)).await) {
                return;
            }
        }
        if self.follower.sent_its_last() {
            let _ = bounds.within(tx.send(close(1000, "the job has ended"))).await;
            return;
        }
        loop {
            tokio::select! {
                next = self.follower.next() => {
                    let written = match next {
                        Next::Events(events) => bounds.within(send_events(&mut tx, &events)).await,
                        Next::Idle => {
                            pings.sent();
                            bounds.within(tx.send(Message::Ping(bytes::Bytes::new()))).await
                        }
                        Next::End(end) => {
                            let _ = bounds.within(tx.send(closing(end))).await;
                            return;
                        }
                    };
                    if !sent(written) {
                        return;
                    }
                }
                () = tokio::time::sleep_until(pings.due()) => {
                    if pings.overdue(Instant::now()) {
                        metrics::counter!("aura_ws_pong_timeouts_total").increment(1);
                        let frame = close(1001, "no pong; resume from the last id");
                        let _ = tokio::time::timeout(CLOSE_WAIT, tx.send(frame)).await;
                        return;
                    }
                    pings.sent();
                    if !sent(bounds.within(tx.send(Message::Ping(bytes::Bytes::new()))).await) {
                        return;
                    }
                }
                message = rx.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if !sent(bounds.within(self.answer(&text, &mut tx)).await) {
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let problem = problem_of(bad_message()).await;
                        let reply = text_message(&json!({ "error": problem }));
                        if !sent(bounds.within(tx.send(reply)).await) {
                            return;
                        }
                    }
                    Some(Ok(Message::Pong(_))) => pings.answered(),
                    // Pings are answered by the library.
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                }
            }
        }
    }

    /// Waits a moment for a first `{"resume": N}` (a socket opened without `lastEventId`);
    /// any other first message is answered as usual. `false` when the socket is gone.
    async fn first_message(
        &mut self,
        tx: &mut SplitSink<WebSocket, Message>,
        rx: &mut SplitStream<WebSocket>,
        pings: &mut Pings,
        bounds: &Bounds,
    ) -> bool {
        let Ok(first) = tokio::time::timeout(RESUME_WAIT, rx.next()).await else { return true };
        match first {
            Some(Ok(Message::Text(text))) => match resume_of(&text) {
                Some(resume) => {
                    self.follower.resume_from(resume);
                    match history_start(&self.app, resume).await {
                        Ok(start) => self.history_start = start,
                        Err(e) => tracing::warn!(error = %e, "reading where the history starts failed"),
                    }
                }
                None => return sent(bounds.within(self.answer(&text, tx)).await),
            },
            Some(Ok(Message::Pong(_))) => pings.answered(),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
        true
    }

    /// Answers one client message; `Err` when the socket is gone.
    async fn answer(&self, text: &str, tx: &mut SplitSink<WebSocket, Message>) -> Result<(), axum::Error> {
        let message: Option<Value> = serde_json::from_str(text).ok();
        let reply = match message.as_ref() {
            Some(Value::Object(m)) if m.contains_key("cancel") => match self.cancel(&m["cancel"]).await {
                Ok(snapshot) => json!({ "cancelled": snapshot }),
                Err(e) => json!({ "error": problem_of(e).await }),
            },
            Some(Value::Object(m)) if m.contains_key("ping") => json!({ "pong": m["ping"] }),
            Some(Value::Object(m)) if m.contains_key("resume") => {
                let e = AppError::bad_request(
                    "Too late to resume",
                    "send {\"resume\": N} as the first message, or reconnect with ?lastEventId=N",
                );
                json!({ "error": problem_of(e).await })
            }
            _ => json!({ "error": problem_of(bad_message()).await }),
        };
        tx.send(text_message(&reply)).await
    }

    /// `POST /api/jobs/{id}/cancel` over the socket: the same checks and answers.
    async fn cancel(&self, job_id: &Value) -> Result<Value, AppError> {
        let raw = job_id
            .as_str()
            .ok_or_else(|| AppError::bad_request("Invalid job id", "cancel takes a job id as a string"))?;
        let job_id = parse_job_id(raw)?;
        let job = self.app.store().job(job_id).await?.ok_or_else(not_found)?;
        self.caller.check_owns(&job)?;
        let applied = self.app.engine().cancel(job.job_id).await?;
        Ok(serde_json::to_value(applied.state).map_err(anyhow::Error::from)?)
    }
}

/// Whether a write went out: it ended without an error, before shutdown or the stream's
/// deadline cut it off.
fn sent(written: Option<Result<(), axum::Error>>) -> bool {
    matches!(written, Some(Ok(())))
}

/// When a socket is pinged, and whether it has left a ping unanswered for too long.
struct Pings {
    /// `AURA_WS_PONG_SECS`.
    timeout: Duration,
    /// When the oldest unanswered ping went out.
    waiting_since: Option<Instant>,
    /// When the next ping goes out, while none is unanswered.
    next: Instant,
}

impl Pings {
    /// The first ping goes out at once.
    fn new(timeout: Duration) -> Self {
        Pings { timeout, waiting_since: None, next: Instant::now() }
    }

    /// When [`Pings::overdue`] or the next ping is due.
    fn due(&self) -> Instant {
        self.waiting_since.map_or(self.next, |since| since + self.timeout)
    }

    /// A ping went out (a scheduled one or a heartbeat).
    fn sent(&mut self) {
        self.waiting_since.get_or_insert_with(Instant::now);
    }

    /// A pong came back: the socket is answering.
    fn answered(&mut self) {
        self.waiting_since = None;
        self.next = Instant::now() + self.timeout / 3;
    }

    /// Whether a ping has gone unanswered for the whole timeout.
    fn overdue(&self, now: Instant) -> bool {
        self.waiting_since.is_some_and(|since| now >= since + self.timeout)
    }
}

/// The events as text messages, written in one flush.
async fn send_events(
    tx: &mut SplitSink<WebSocket, Message>,
    events: &[std::sync::Arc<StoredEvent>],
) -> Result<(), axum::Error> {
    for event in events {
        let kind = serde_json::to_string(&event.kind).unwrap_or_else(|_| "\"message\"".into());
        let text = format!("{{\"id\":{},\"type\":{kind},\"data\":{}}}", event.id, event.data());
        tx.feed(Message::Text(Utf8Bytes::from(text))).await?;
    }
    tx.flush().await
}

/// `N` of a `{"resume": N}` message.
fn resume_of(text: &str) -> Option<i64> {
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("resume")?.as_i64().filter(|n| *n >= 0)
}

fn bad_message() -> AppError {
    AppError::bad_request(
        "Unknown message",
        "send {\"cancel\": \"<jobId>\"}, {\"ping\": …} or, first, {\"resume\": N} as JSON text",
    )
}

/// The problem+json body an error gets on HTTP, as a JSON value.
async fn problem_of(e: AppError) -> Value {
    let body = axum::body::to_bytes(e.into_response().into_body(), 64 * 1024).await.unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn text_message(value: &Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

/// The close frame of a socket whose stream ended.
fn closing(end: Ended) -> Message {
    match end {
        Ended::Finished => close(1000, "the job has ended"),
        Ended::Expired | Ended::ShuttingDown => close(1001, "resume from the last id"),
        Ended::Failed => close(1011, "resume from the last id"),
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_message_names_a_non_negative_id() {
        assert_eq!(resume_of(r#"{"resume": 41}"#), Some(41));
        assert_eq!(resume_of(r#"{"resume": -1}"#), None);
        assert_eq!(resume_of(r#"{"cancel": "x"}"#), None);
    }

    #[test]
    fn a_socket_is_pinged_at_once_and_overdue_only_after_a_whole_timeout_without_a_pong() {
        let timeout = Duration::from_secs(30);
        let mut pings = Pings::new(timeout);
        let start = Instant::now();
        assert!(pings.due() <= start, "the first ping is due at once");
        assert!(!pings.overdue(start + timeout * 10), "nothing is overdue before a ping went out");
        pings.sent();
        let sent = Instant::now();
        assert!(!pings.overdue(sent + timeout - Duration::from_millis(1)));
        assert!(pings.overdue(sent + timeout));
        // A second ping (a heartbeat) does not move the oldest unanswered one.
        pings.sent();
        assert!(pings.due() <= sent + timeout);
        pings.answered();
        let answered = Instant::now();
        assert!(!pings.overdue(answered + timeout * 10));
        assert!(pings.due() >= answered + timeout / 3 - Duration::from_millis(1));
    }
}
