//! The opt-in transports (API.md "Batching, compression, WebSocket"): `?batch=` windows,
//! gzip-compressed streams and the WebSocket at `/api/ws`, each against the real server, and
//! each compared with what the plain event stream sends for the same job.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use crate::cli::{ServerProcess, free_port};
use crate::helpers::{SseStream, TestApp, TestResult, WAIT, small_job, spawn_app_with};

/// An app with one render worker and no heartbeats during a test.
async fn spawn_worker_app(compress: bool) -> TestResult<TestApp> {
    spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        cfg.heartbeat_secs = 3600;
        if compress {
            cfg.stream_compression = aura::config::StreamCompression::Gzip;
        }
    })
    .await
}

/// `(id, type, data, when it arrived)` of every event until the stream ends.
async fn events_to_end(stream: &mut SseStream) -> TestResult<Vec<(i64, String, Value, Instant)>> {
    let mut seen = Vec::new();
    while let Some((id, kind, data)) = tokio::time::timeout(WAIT, stream.next_event()).await?? {
        seen.push((id, kind, data, Instant::now()));
    }
    Ok(seen)
}

/// The events a batched client must get of `events` read at once: every event but a
/// `step-progress` that a newer one of the same job and step follows.
fn collapsed(events: &[(i64, String, Value)]) -> Vec<i64> {
    let key = |e: &(i64, String, Value)| (e.2["jobId"].to_string(), e.2["step"].to_string());
    let newest: HashMap<_, i64> =
        events.iter().filter(|e| e.1 == "step-progress").map(|e| (key(e), e.0)).collect();
    events.iter().filter(|e| e.1 != "step-progress" || newest[&key(e)] == e.0).map(|e| e.0).collect()
}

fn stored(history: &[Value]) -> TestResult<Vec<(i64, String, Value)>> {
    history
        .iter()
        .map(|e| {
            Ok((
                e["id"].as_i64().ok_or("no id")?,
                e["type"].as_str().ok_or("no type")?.to_owned(),
                e["data"].clone(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_batched_stream_collapses_progress_within_its_window_and_keeps_every_other_event() -> TestResult {
    let app = spawn_worker_app(false).await?;
    let job = app.create(&small_job("batched")).await?;
    let mut batched = app.stream(&format!("/api/jobs/{job}/events?batch=100ms"), &[]).await?;
    assert_eq!(batched.status, 200);
    let live = tokio::time::timeout(Duration::from_secs(120), events_to_end(&mut batched)).await??;
    let all = stored(&app.history(job).await?)?;
    assert_eq!(all.last().map(|e| e.1.as_str()), Some("job-completed"), "the job rendered");
    assert!(all.iter().filter(|e| e.1 == "step-progress").count() > 5, "the job reported progress");

    // Ids ascending, every one a stored id, every event but step-progress present.
    let ids: Vec<i64> = live.iter().map(|e| e.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let stored_ids: HashSet<i64> = all.iter().map(|e| e.0).collect();
    assert!(ids.iter().all(|id| stored_ids.contains(id)));
    let others: Vec<i64> = all.iter().filter(|e| e.1 != "step-progress").map(|e| e.0).collect();
    let live_others: Vec<i64> = live.iter().filter(|e| e.1 != "step-progress").map(|e| e.0).collect();
    assert_eq!(live_others, others, "every event but step-progress is sent");
    // At most one step-progress of a job and step per 100 ms (arrival times; a little slack
    // for the client's own scheduling).
    let mut last_of: HashMap<String, Instant> = HashMap::new();
    for (id, kind, data, at) in &live {
        if kind == "step-progress" {
            let step = data["step"].to_string();
            if let Some(before) = last_of.insert(step.clone(), *at) {
                let gap = at.duration_since(before);
                assert!(
                    gap >= Duration::from_millis(70),
                    "progress {id} of {step} came {gap:?} after the previous"
                );
            }
        }
    }

    // A replay reads the history at once: exactly one step-progress per step survives.
    let mut replay = app.stream(&format!("/api/jobs/{job}/events?batch=100ms"), &[]).await?;
    let replayed: Vec<i64> = replay.ids_to_end().await?;
    assert_eq!(replayed, collapsed(&all));
    assert!(replayed.len() < all.len());

    // Resuming mid-way gets the stored events after the resume point, collapsed the same way.
    let middle = all[all.len() / 3].0;
    let mut resumed = app
        .stream(&format!("/api/jobs/{job}/events?batch=250"), &[("Last-Event-ID", &middle.to_string())])
        .await?;
    let after: Vec<_> = all.iter().filter(|e| e.0 > middle).cloned().collect();
    assert_eq!(resumed.ids_to_end().await?, collapsed(&after));
    Ok(())
}

#[tokio::test]
async fn a_batch_window_outside_zero_to_a_second_is_a_400_problem() -> TestResult {
    let app = spawn_app_with(|_| {}).await?;
    let job = app.create_job("bad batch").await?;
    for bad in ["1001ms", "fast", "-5ms", "2s"] {
        for path in [format!("/api/jobs/{job}/events?batch={bad}"), format!("/api/events?batch={bad}")] {
            let res = app.client.get(app.url(&path)).send().await?;
            assert_eq!(res.status(), 400, "{path}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }
    }
    let mut ok = app.stream(&format!("/api/jobs/{job}/events?batch=0ms"), &[]).await?;
    assert_eq!(ok.status, 200);
    assert!(ok.next_event().await?.is_some());
    Ok(())
}

/// Reads a whole response body as it came over the wire (no decoding).
async fn raw_body(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> TestResult<(reqwest::header::HeaderMap, Vec<u8>)> {
    let mut req = app.client.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await?;
    assert_eq!(res.status(), 200, "{path}");
    let headers = res.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(120), res.bytes()).await??;
    Ok((headers, body.to_vec()))
}

fn gunzip(bytes: &[u8]) -> TestResult<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

#[tokio::test]
async fn a_compressed_stream_decodes_to_the_plain_bytes_with_far_fewer_on_the_wire() -> TestResult {
    let app = spawn_worker_app(true).await?;
    let job = app.create(&small_job("compressed")).await?;
    let path = format!("/api/jobs/{job}/events");
    // Both live from the first event on: each event is its own flushed write.
    let (plain, gzip) = tokio::join!(
        raw_body(&app, &path, &[]),
        raw_body(&app, &path, &[("Accept-Encoding", "gzip, deflate, br")])
    );
    let ((plain_headers, plain), (gzip_headers, gzip)) = (plain?, gzip?);
    assert!(plain_headers.get("content-encoding").is_none());
    assert_eq!(gzip_headers["content-encoding"], "gzip");
    assert_eq!(gzip_headers["vary"], "accept-encoding");
    assert_eq!(gzip_headers["content-type"], "text/event-stream");
    let decoded = gunzip(&gzip)?;
    assert_eq!(String::from_utf8(decoded)?, String::from_utf8(plain.clone())?);
    assert!(plain.len() > 2000, "the job streamed {} bytes", plain.len());
    let saved = 1.0 - gzip.len() as f64 / plain.len() as f64;
    println!(
        "wire bytes for one job: plain {} gzip {} ({:.0} % less)",
        plain.len(),
        gzip.len(),
        saved * 100.0
    );
    assert!(saved >= 0.6, "gzip saved only {:.0} %: {} of {}", saved * 100.0, gzip.len(), plain.len());

    // curl --compressed decodes it too, to the same bytes.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--compressed", &app.url(&path)])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out).await??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout)?, String::from_utf8(plain)?);
    Ok(())
}

#[tokio::test]
async fn without_the_setting_or_the_header_a_stream_is_never_compressed() -> TestResult {
    let off = spawn_app_with(|_| {}).await?;
    let job = off.create_job("off").await?;
    let res = off.stream(&format!("/api/jobs/{job}/events"), &[("Accept-Encoding", "gzip")]).await?;
    assert!(res.headers.get("content-encoding").is_none());
    let on = spawn_app_with(|cfg| cfg.stream_compression = aura::config::StreamCompression::Gzip).await?;
    let job = on.create_job("on").await?;
    let mut res = on.stream(&format!("/api/jobs/{job}/events"), &[("Accept-Encoding", "identity")]).await?;
    assert!(res.headers.get("content-encoding").is_none());
    assert!(res.next_event().await?.is_some());
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(base: &str, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = format!("{}{path}", base.replacen("http://", "ws://", 1)).into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| WsError::Io(std::io::Error::other(e)))?,
            v.parse().map_err(|e| WsError::Io(std::io::Error::other(e)))?,
        );
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// What a socket said: its events, other JSON messages, and its close code.
#[derive(Default)]
struct Heard {
    events: Vec<(i64, String, Value)>,
    replies: Vec<Value>,
    close: Option<CloseCode>,
}

/// Reads `ws` until it closes, or until `stop` says so.
async fn listen(ws: &mut Ws, mut stop: impl FnMut(&Heard) -> bool) -> TestResult<Heard> {
    let mut heard = Heard::default();
    while !stop(&heard) {
        let Some(message) = tokio::time::timeout(WAIT, ws.next()).await? else { break };
        match message? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text)?;
                match value["id"].as_i64() {
                    Some(id) => {
                        let kind = value["type"].as_str().ok_or("no type")?.to_owned();
                        heard.events.push((id, kind, value["data"].clone()));
                    }
                    None => heard.replies.push(value),
                }
            }
            Message::Close(frame) => {
                heard.close = Some(frame.map_or(CloseCode::Status, |f| f.code));
                break;
            }
            _ => {}
        }
    }
    Ok(heard)
}

#[tokio::test]
async fn a_websocket_gets_the_same_ids_and_data_as_the_event_stream_and_closes_normally() -> TestResult {
    let app = spawn_worker_app(false).await?;
    let job = app.create(&small_job("socket")).await?;
    let mut ws = ws_connect(&app.base, &format!("/api/ws?jobId={job}"), &[]).await?;
    let mut sse = app.stream(&format!("/api/jobs/{job}/events"), &[]).await?;
    let (heard, seen) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(120), listen(&mut ws, |_| false)),
        tokio::time::timeout(Duration::from_secs(120), events_to_end(&mut sse))
    );
    let (heard, seen) = (heard??, seen??);
    assert_eq!(heard.close, Some(CloseCode::Normal), "a job socket closes with 1000 after its end");
    let ws_events: Vec<(i64, String, Value)> = heard.events;
    let sse_events: Vec<(i64, String, Value)> = seen.into_iter().map(|(id, k, d, _)| (id, k, d)).collect();
    assert!(sse_events.len() > 5);
    assert_eq!(ws_events, sse_events);
    assert_eq!(ws_events.last().map(|e| e.1.as_str()), Some("job-completed"));

    // A job socket resumed at its end closes at once; one resumed mid-way gets the rest.
    let last = ws_events.last().map_or(0, |e| e.0);
    let mut done = ws_connect(&app.base, &format!("/api/ws?jobId={job}&lastEventId={last}"), &[]).await?;
    let heard = listen(&mut done, |_| false).await?;
    assert!(heard.events.is_empty());
    assert_eq!(heard.close, Some(CloseCode::Normal));
    let middle = ws_events[ws_events.len() / 2].0;
    let mut rest = ws_connect(&app.base, &format!("/api/ws?jobId={job}"), &[]).await?;
    rest.send(Message::text(json!({"resume": middle}).to_string())).await?;
    let heard = listen(&mut rest, |_| false).await?;
    let expected: Vec<i64> = ws_events.iter().map(|e| e.0).filter(|&id| id > middle).collect();
    assert_eq!(heard.events.iter().map(|e| e.0).collect::<Vec<_>>(), expected);
    Ok(())
}

#[tokio::test]
async fn a_websocket_resumes_across_a_sigkill_restart_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server = ServerProcess::start(dir.path(), port, &["--workers", "0"]).await?;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/api/jobs", server.base))
        .json(&json!({"brief": {"topic": "crash"}}))
        .send()
        .await?
        .json()
        .await?;
    let job: Uuid = created["jobId"].as_str().ok_or("no id")?.parse()?;
    let mut ws = ws_connect(&server.base, &format!("/api/ws?jobId={job}&lastEventId=0"), &[]).await?;
    let before = listen(&mut ws, |h| !h.events.is_empty()).await?;
    let seen = before.events.last().ok_or("no first event")?.0;
    server.kill().await?;

    let server = ServerProcess::start(dir.path(), port, &["--workers", "0"]).await?;
    let res = client.post(format!("{}/api/jobs/{job}/cancel", server.base)).send().await?;
    assert_eq!(res.status(), 202);
    // The first message resumes this time.
    let mut ws = ws_connect(&server.base, &format!("/api/ws?jobId={job}"), &[]).await?;
    ws.send(Message::text(json!({"resume": seen}).to_string())).await?;
    let after = listen(&mut ws, |_| false).await?;
    assert_eq!(after.close, Some(CloseCode::Normal));
    let history: Vec<Value> =
        client.get(format!("{}/api/jobs/{job}/history", server.base)).send().await?.json().await?;
    let stored: Vec<i64> = history.iter().filter_map(|e| e["id"].as_i64()).collect();
    let got: Vec<i64> = before.events.iter().chain(&after.events).map(|e| e.0).collect();
    assert_eq!(got, stored, "every event exactly once, in order");
    assert_eq!(after.events.last().map(|e| e.1.as_str()), Some("job-cancelled"));
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_websocket_cancels_its_owners_job_and_gets_403_for_anothers_keeping_the_socket_open() -> TestResult
{
    let mut tokens = None;
    let app = spawn_app_with(|cfg| {
        let store = crate::helpers::Tokens::of(cfg);
        tokens =
            Some((|| Ok::<_, anyhow::Error>((store.create("alice", false)?, store.create("bob", false)?)))());
    })
    .await?;
    let (alice, bob) = tokens.ok_or("no tokens")??;
    let create = |token: String| {
        let req = app
            .client
            .post(app.url("/api/jobs"))
            .bearer_auth(token)
            .json(&json!({"brief": {"topic": "mine"}}));
        async move {
            let body: Value = req.send().await?.json().await?;
            Ok::<Uuid, Box<dyn std::error::Error + Send + Sync>>(
                body["jobId"].as_str().ok_or("no id")?.parse()?,
            )
        }
    };
    let (alices, bobs) = (create(alice.clone()).await?, create(bob.clone()).await?);

    // No credentials: 401 at the handshake; a foreign origin: 403.
    match ws_connect(&app.base, "/api/ws", &[]).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 401),
        other => return Err(format!("expected 401, got {:?}", other.map(|_| ())).into()),
    }
    let bearer = format!("Bearer {bob}");
    match ws_connect(&app.base, "/api/ws", &[("Authorization", &bearer), ("Origin", "https://evil.example")])
        .await
    {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 403),
        other => return Err(format!("expected 403, got {:?}", other.map(|_| ())).into()),
    }
    // Another owner's job is 403 at the handshake, as on the stream.
    match ws_connect(&app.base, &format!("/api/ws?jobId={alices}"), &[("Authorization", &bearer)]).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 403),
        other => return Err(format!("expected 403, got {:?}", other.map(|_| ())).into()),
    }

    let mut ws = ws_connect(&app.base, "/api/ws?lastEventId=0", &[("Authorization", &bearer)]).await?;
    ws.send(Message::text(json!({"cancel": alices.to_string()}).to_string())).await?;
    let heard = listen(&mut ws, |h| !h.replies.is_empty()).await?;
    assert_eq!(heard.replies[0]["error"]["status"], 403, "{:?}", heard.replies);
    assert!(heard.events.iter().all(|e| e.2["jobId"] == bobs.to_string()), "bob sees only his own jobs");
    ws.send(Message::text(json!({"ping": 7}).to_string())).await?;
    let heard = listen(&mut ws, |h| !h.replies.is_empty()).await?;
    assert_eq!(heard.replies[0], json!({"pong": 7}));
    ws.send(Message::text(json!({"cancel": bobs.to_string()}).to_string())).await?;
    let heard = listen(&mut ws, |h| h.events.iter().any(|e| e.1 == "job-cancelled")).await?;
    assert_eq!(heard.replies[0]["cancelled"]["jobId"], bobs.to_string(), "{:?}", heard.replies);
    let status: Value = app
        .client
        .get(app.url(&format!("/api/jobs/{alices}")))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["status"], "Queued", "alice's job was not touched");
    Ok(())
}
