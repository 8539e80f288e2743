//! Webhooks (API.md "Settings → Webhooks"): each test runs a real HTTP receiver on 127.0.0.1 and
//! the real server, so registrations need `AURA_WEBHOOK_ALLOW_PRIVATE`. Events come from jobs
//! on an API-only node: creating one appends `job-status`, cancelling it `job-cancelled`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::cli::{AURA, ServerProcess, free_port};
use crate::helpers::{TestApp, TestResult, WAIT, eventually, holds, spawn_app_with};

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// 500 to the first `n` requests it ever gets, then 200.
    FailFirst(usize),
    /// Always this status.
    Always(u16),
    /// Never answers.
    Hang,
    /// This status, after a while.
    Slow(u16, Duration),
}

/// One request the receiver got, and what it answered (0: it never answered).
#[derive(Debug, Clone)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
    at: Instant,
}

#[derive(Default)]
struct Log {
    got: Vec<Got>,
}

/// A receiver on 127.0.0.1 that records every request.
struct Receiver {
    url: String,
    log: Arc<Mutex<Log>>,
    mode: Arc<Mutex<Mode>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    async fn start(mode: Mode) -> TestResult<Receiver> {
        let log = Arc::new(Mutex::new(Log::default()));
        let mode = Arc::new(Mutex::new(mode));
        let arrived = Arc::new(Notify::new());
        let (l, m, a) = (log.clone(), mode.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (log, mode, arrived) = (l.clone(), m.clone(), a.clone());
                async move {
                    let (answer, hang, delay) = {
                        let mut log = log.lock().expect("log");
                        let mode = *mode.lock().expect("mode");
                        let n = log.got.len();
                        let (answer, hang, delay) = match mode {
                            Mode::FailFirst(k) if n < k => (500, false, Duration::ZERO),
                            Mode::FailFirst(_) => (200, false, Duration::ZERO),
                            Mode::Always(code) => (code, false, Duration::ZERO),
                            Mode::Hang => (0, true, Duration::ZERO),
                            Mode::Slow(code, delay) => (code, false, delay),
                        };
                        log.got.push(Got { headers, body, answered: answer, at: Instant::now() });
                        (answer, hang, delay)
                    };
                    arrived.notify_waiters();
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(delay).await;
                    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { url, log, mode, arrived })
    }

    fn got(&self) -> Vec<Got> {
        self.log.lock().map(|l| l.got.clone()).unwrap_or_default()
    }

    fn set_mode(&self, mode: Mode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }

    /// Waits until `done` holds for what was received, at most `bound`.
    async fn wait_until(&self, bound: Duration, done: impl Fn(&[Got]) -> bool) -> TestResult<Vec<Got>> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let arrived = self.arrived.notified();
            let got = self.got();
            if done(&got) {
                return Ok(got);
            }
            // Requests are the only thing that changes the log; a short tick covers a lost wake-up.
            tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    () = arrived => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            })
            .await
            .map_err(|_| format!("the receiver did not get what was expected in {bound:?}; got {got:?}"))?;
        }
    }
}

fn header<'a>(got: &'a Got, name: &str) -> &'a str {
    got.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn event_id(got: &Got) -> i64 {
    header(got, "webhook-id").parse().unwrap_or(-1)
}

/// Whether the request's signature verifies with `secret`, as a receiver would check it.
fn verifies(got: &Got, secret: &str) -> bool {
    let Some(key) = aura::webhooks::sign::key_of(secret) else { return false };
    let Ok(timestamp) = header(got, "webhook-timestamp").parse::<i64>() else { return false };
    aura::webhooks::sign::verify(
        &key,
        header(got, "webhook-id"),
        timestamp,
        &got.body,
        header(got, "webhook-signature"),
    )
}

async fn app_allowing_private(tweak: impl FnOnce(&mut aura::config::ServeConfig)) -> TestResult<TestApp> {
    spawn_app_with(|cfg| {
        cfg.webhook_allow_private = true;
        cfg.webhook_retry_base_ms = 10;
        tweak(cfg);
    })
    .await
}

/// Registers an endpoint; returns its id and secret.
async fn register(app: &TestApp, url: &str, events: &[&str]) -> TestResult<(Uuid, String)> {
    let res =
        app.client.post(app.url("/api/webhooks")).json(&json!({"url": url, "events": events})).send().await?;
    assert_eq!(res.status(), 201, "registering {url}");
    let body: Value = res.json().await?;
    let secret = body["secret"].as_str().ok_or("no secret")?.to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    Ok((body["id"].as_str().ok_or("no id")?.parse()?, secret))
}

/// Creates a job and cancels it; returns the id of its `job-cancelled` event.
async fn cancelled_job(app: &TestApp, topic: &str) -> TestResult<(Uuid, i64)> {
    let job = app.create_job(topic).await?;
    assert_eq!(app.cancel(job).await?, 202);
    let history = app.history(job).await?;
    let last = history.last().ok_or("no events")?;
    assert_eq!(last["type"], "job-cancelled");
    Ok((job, last["id"].as_i64().ok_or("no id")?))
}

#[tokio::test]
async fn a_receiver_failing_three_times_then_gets_every_cancel_of_five_jobs_in_order_signed_with_the_failures_logged()
-> TestResult {
    let receiver = Receiver::start(Mode::FailFirst(3)).await?;
    let app = app_allowing_private(|_| {}).await?;
    let (webhook, secret) =
        register(&app, &receiver.url, &["job-completed", "job-failed", "job-cancelled"]).await?;
    let mut expected = Vec::new();
    for n in 0..5 {
        expected.push(cancelled_job(&app, &format!("hook {n}")).await?);
    }
    let got = receiver.wait_until(WAIT, |got| got.iter().filter(|g| g.answered == 200).count() >= 5).await?;

    // The first event was tried three times (500 each), then everything went in event order.
    let ids: Vec<i64> = got.iter().map(event_id).collect();
    let first = expected[0].1;
    assert_eq!(&ids[..4], &[first; 4], "{ids:?}");
    let delivered: Vec<i64> = got.iter().filter(|g| g.answered == 200).map(event_id).collect();
    assert_eq!(delivered, expected.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    assert_eq!(got.len(), 8, "nothing but the retries and the five deliveries");
    for (g, (job, id)) in got.iter().filter(|g| g.answered == 200).zip(&expected) {
        assert!(verifies(g, &secret), "signature of event {id}");
        assert!(!verifies(g, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
        assert_eq!(g.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        let body: Value = serde_json::from_slice(&g.body)?;
        let history = app.history(*job).await?;
        let stored = history.last().ok_or("no events")?;
        assert_eq!(
            body,
            json!({"type": "job-cancelled", "id": id, "jobId": job.to_string(), "data": stored["data"]})
        );
    }
    for g in &got {
        assert!(verifies(g, &secret), "every attempt is signed");
    }

    // The log shows the three failed attempts with their code, then the success. An attempt is
    // logged after its answer arrives, so the last one may still be on its way.
    let log = eventually(WAIT, || async {
        let (status, log) = app.get_json(&format!("/api/webhooks/{webhook}/deliveries")).await?;
        assert_eq!(status, 200);
        holds(log["deliveries"].as_array().is_some_and(|d| d.len() >= 8), || {
            format!("not 8 attempts: {log}")
        })?;
        Ok(log)
    })
    .await?;
    let attempts: Vec<(i64, i64, Option<i64>, String)> = log["deliveries"]
        .as_array()
        .ok_or("no deliveries")?
        .iter()
        .rev()
        .map(|d| {
            (
                d["eventId"].as_i64().unwrap_or(0),
                d["attempt"].as_i64().unwrap_or(0),
                d["statusCode"].as_i64(),
                d["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        &attempts[..4],
        &[
            (first, 1, Some(500), "retrying".to_owned()),
            (first, 2, Some(500), "retrying".to_owned()),
            (first, 3, Some(500), "retrying".to_owned()),
            (first, 4, Some(200), "delivered".to_owned()),
        ]
    );
    assert_eq!(attempts.len(), 8);
    // The stored position reaches the last event (the position is written with the delivery).
    let (_, list) = app.get_json("/api/webhooks").await?;
    assert_eq!(list["webhooks"][0]["lastEventId"], expected[4].1);
    assert!(app.metric("aura_webhook_deliveries_total{outcome=\"retrying\"}").await? >= 3.0);
    Ok(())
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_no_listing_shows_a_secret_and_aura_webhook_verify_checks_a_saved_request()
-> TestResult {
    let receiver = Receiver::start(Mode::Always(204)).await?;
    let app = app_allowing_private(|_| {}).await?;
    let (webhook, old) = register(&app, &receiver.url, &["job-cancelled"]).await?;
    let res = app.client.post(app.url(&format!("/api/webhooks/{webhook}/rotate"))).send().await?;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await?;
    let new = rotated["secret"].as_str().ok_or("no secret")?.to_owned();
    assert_ne!(new, old);
    cancelled_job(&app, "rotated").await?;
    let got = receiver.wait_until(WAIT, |got| !got.is_empty()).await?;
    let signatures = header(&got[0], "webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(signatures.split(' ').all(|s| s.starts_with("v1,")));
    assert!(verifies(&got[0], &new) && verifies(&got[0], &old));

    let (_, list) = app.get_json("/api/webhooks").await?;
    let text = list.to_string();
    assert!(!text.contains(&new) && !text.contains(&old) && !text.contains("whsec_"), "{text}");
    assert_eq!(list["webhooks"][0]["id"], webhook.to_string());

    // The saved request, as `aura webhook verify` documents it.
    let mut saved = b"POST /hook HTTP/1.1\r\n".to_vec();
    for (name, value) in &got[0].headers {
        saved.extend_from_slice(format!("{name}: {}\r\n", value.to_str()?).as_bytes());
    }
    saved.extend_from_slice(b"\r\n");
    saved.extend_from_slice(&got[0].body);
    let file = app.dir.path().join("saved-request");
    std::fs::write(&file, &saved)?;
    for (secret, code) in
        [(new.as_str(), 0), (old.as_str(), 0), ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1)]
    {
        let out = tokio::process::Command::new(AURA)
            .args(["webhook", "verify", "--secret", secret, "--file"])
            .arg(&file)
            .output()
            .await?;
        assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stdout));
    }

    let res = app.client.delete(app.url(&format!("/api/webhooks/{webhook}"))).send().await?;
    assert_eq!(res.status(), 204);
    let res = app.client.delete(app.url(&format!("/api/webhooks/{webhook}"))).send().await?;
    assert_eq!(res.status(), 404);
    let (status, _) = app.get_json(&format!("/api/webhooks/{webhook}/deliveries")).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn private_file_overlong_or_unknown_event_registrations_are_422_and_store_nothing() -> TestResult {
    let strict = spawn_app_with(|_| {}).await?;
    let open = app_allowing_private(|_| {}).await?;
    let long = format!("https://example.com/{}", "a".repeat(10 * 1024));
    let cases = [
        (&strict, json!({"url": "http://127.0.0.1:9/hook", "events": ["job-completed"]}), "url"),
        (&strict, json!({"url": "http://[::1]:9/hook"}), "url"),
        (&strict, json!({"url": "http://localhost:9/hook"}), "url"),
        (&strict, json!({"url": "file:///etc/passwd"}), "url"),
        (&open, json!({"url": "file:///etc/passwd"}), "url"),
        (&open, json!({"url": long}), "url"),
        (
            &open,
            json!({"url": "http://127.0.0.1:9/hook", "events": ["job-completed", "job-exploded"]}),
            "events",
        ),
        (&open, json!({"url": "http://127.0.0.1:9/hook", "events": []}), "events"),
        (&open, json!({"events": ["job-failed"]}), "url"),
    ];
    for (app, body, field) in cases {
        let res = app.client.post(app.url("/api/webhooks")).json(&body).send().await?;
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: Value = res.json().await?;
        assert_eq!(problem["field"], field, "{problem}");
        assert!(!problem.to_string().contains("whsec_"));
    }
    let res = open
        .client
        .post(open.url("/api/webhooks"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(res.status(), 400);
    for app in [&strict, &open] {
        let (_, list) = app.get_json("/api/webhooks").await?;
        assert_eq!(list, json!({"webhooks": []}));
        assert!(app.state.store().webhooks().await?.is_empty(), "nothing was stored");
    }
    Ok(())
}

#[tokio::test]
async fn special_purpose_addresses_beyond_private_ones_are_422_even_when_private_ones_are_allowed()
-> TestResult {
    let strict = spawn_app_with(|_| {}).await?;
    let open = app_allowing_private(|_| {}).await?;
    // Benchmarking, reserved, IETF protocol assignments, documentation, broadcast, multicast,
    // NAT64 of loopback, 6to4, Teredo, discard-only and IPv4-mapped benchmarking addresses.
    for url in [
        "http://198.18.0.1:9/hook",
        "http://198.19.255.254/hook",
        "http://240.0.0.1:9/hook",
        "http://192.0.0.1:9/hook",
        "http://192.0.2.1:9/hook",
        "http://255.255.255.255:9/hook",
        "http://224.0.0.1:9/hook",
        "http://[64:ff9b::7f00:1]:9/hook",
        "http://[64:ff9b:1::1]:9/hook",
        "http://[2002:7f00:1::1]:9/hook",
        "http://[2001::1]:9/hook",
        "http://[100::1]:9/hook",
        "http://[::ffff:198.18.0.1]:9/hook",
    ] {
        for app in [&strict, &open] {
            let res = app.client.post(app.url("/api/webhooks")).json(&json!({"url": url})).send().await?;
            assert_eq!(res.status(), 422, "{url}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            let problem: Value = res.json().await?;
            assert_eq!(problem["field"], "url", "{problem}");
        }
    }
    for app in [&strict, &open] {
        assert!(app.state.store().webhooks().await?.is_empty(), "nothing was stored");
    }
    Ok(())
}

#[tokio::test]
async fn a_stored_endpoint_on_a_refused_address_gets_no_connection_and_its_attempt_says_blocked_address()
-> TestResult {
    // Stored as another node or an older version might have (its registration check skipped):
    // the delivery refuses the address when it connects.
    let app = app_allowing_private(|cfg| cfg.webhook_timeout_secs = 2).await?;
    let endpoint = app
        .state
        .webhooks()
        .create(aura::webhooks::NewEndpoint {
            url: "http://198.18.0.1:9/hook".into(),
            events: vec!["job-cancelled".into()],
        })
        .await?
        .ok_or("not registered")?;
    cancelled_job(&app, "refused").await?;
    let d = eventually(WAIT, || async {
        let (_, log) = app.get_json(&format!("/api/webhooks/{}/deliveries", endpoint.id)).await?;
        Ok(log["deliveries"].as_array().and_then(|d| d.last()).cloned().ok_or("no attempt logged")?)
    })
    .await?;
    assert_eq!(d["error"], "blocked-address", "{d}");
    assert_eq!(d["statusCode"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn a_redirect_is_recorded_as_the_answer_and_never_followed() -> TestResult {
    let target = Receiver::start(Mode::Always(200)).await?;
    let location = target.url.clone();
    let redirecting = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, location)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, redirecting).await });
    let app = app_allowing_private(|_| {}).await?;
    let (webhook, _) = register(&app, &url, &["job-cancelled"]).await?;
    cancelled_job(&app, "redirected").await?;
    let log = eventually(WAIT, || async {
        let (_, log) = app.get_json(&format!("/api/webhooks/{webhook}/deliveries")).await?;
        let attempts = log["deliveries"].as_array().map_or(0, Vec::len);
        holds(attempts >= 2, || format!("fewer than two attempts logged: {log}"))?;
        Ok(log)
    })
    .await?;
    for d in log["deliveries"].as_array().into_iter().flatten() {
        assert_eq!((d["statusCode"].as_i64(), d["outcome"].as_str()), (Some(307), Some("retrying")), "{d}");
    }
    assert!(target.got().is_empty(), "the redirect was followed");
    Ok(())
}

/// A forward proxy on loopback that counts the connections it gets and answers each with 502.
async fn counting_proxy() -> TestResult<(String, Arc<std::sync::atomic::AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            });
        }
    });
    Ok((url, count))
}

#[tokio::test]
async fn deliveries_ignore_the_proxy_that_http_proxy_https_proxy_and_all_proxy_name() -> TestResult {
    let receiver = Receiver::start(Mode::Always(200)).await?;
    let (proxy, connections) = counting_proxy().await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut command = tokio::process::Command::new(AURA);
    command
        .args(["serve", "--addr", &addr, "--workers", "0", "--webhook-allow-private", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if crate::helpers::on_postgres() {
        command.arg("--database-url").arg(crate::helpers::postgres_database_for(dir.path()).await?);
    }
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env(name, &proxy);
    }
    for name in ["NO_PROXY", "no_proxy"] {
        command.env_remove(name);
    }
    let mut server = command.spawn()?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder().no_proxy().build()?;
    eventually(WAIT, || async { Ok(client.get(format!("{base}/api/health")).send().await?) }).await?;
    let res = client
        .post(format!("{base}/api/webhooks"))
        .json(&json!({"url": receiver.url, "events": ["job-status"]}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let res =
        client.post(format!("{base}/api/jobs")).json(&json!({"brief": {"topic": "proxied?"}})).send().await?;
    assert_eq!(res.status(), 201);
    let got = receiver.wait_until(WAIT, |got| !got.is_empty()).await;
    let through_proxy = connections.load(std::sync::atomic::Ordering::SeqCst);
    server.start_kill()?;
    server.wait().await?;
    assert_eq!(through_proxy, 0, "the delivery went to the proxy");
    assert_eq!(got?.len(), 1, "the receiver got the event directly");
    Ok(())
}

#[tokio::test]
async fn past_one_hundred_endpoints_a_registration_is_409_and_user_tokens_get_403() -> TestResult {
    let mut tokens = None;
    let app = app_allowing_private(|cfg| {
        let store = crate::helpers::Tokens::of(cfg);
        tokens =
            Some((|| Ok::<_, anyhow::Error>((store.create("alice", false)?, store.create("root", true)?)))());
    })
    .await?;
    let (alice, root) = tokens.ok_or("no tokens")??;
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["job-failed"]});
    let res = app.client.post(app.url("/api/webhooks")).bearer_auth(&alice).json(&body).send().await?;
    assert_eq!(res.status(), 403);
    let res = app.client.get(app.url("/api/webhooks")).bearer_auth(&alice).send().await?;
    assert_eq!(res.status(), 403);
    for n in 0..100 {
        let res = app.client.post(app.url("/api/webhooks")).bearer_auth(&root).json(&body).send().await?;
        assert_eq!(res.status(), 201, "endpoint {n}");
    }
    let res = app.client.post(app.url("/api/webhooks")).bearer_auth(&root).json(&body).send().await?;
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let list: Value =
        app.client.get(app.url("/api/webhooks")).bearer_auth(&root).send().await?.json().await?;
    assert_eq!(list["webhooks"].as_array().map(Vec::len), Some(100));
    Ok(())
}

#[tokio::test]
async fn a_hanging_receiver_times_out_without_delaying_another_endpoint_or_a_live_stream() -> TestResult {
    let hanging = Receiver::start(Mode::Hang).await?;
    let fine = Receiver::start(Mode::Always(200)).await?;
    let app = app_allowing_private(|cfg| cfg.webhook_timeout_secs = 2).await?;
    let (stuck, _) = register(&app, &hanging.url, &["job-cancelled"]).await?;
    register(&app, &fine.url, &["job-cancelled"]).await?;
    // With PostgreSQL a node that takes the delivery lock first waits out a previous holder's
    // attempts (timeout + margin); what is measured here starts once this node delivers.
    eventually(WAIT, || async {
        holds(app.state.webhooks().delivering(), || "the node does not deliver".into())
    })
    .await?;
    let mut stream = app.stream("/api/events", &[]).await?;
    let mut latencies = Vec::new();
    for n in 0..3 {
        let started = Instant::now();
        let (_, id) = cancelled_job(&app, &format!("slow {n}")).await?;
        let got = fine.wait_until(WAIT, |got| got.iter().any(|g| event_id(g) == id)).await?;
        let reached = got.iter().find(|g| event_id(g) == id).map(|g| g.at).ok_or("not received")?;
        loop {
            let (sid, _, _) =
                tokio::time::timeout(WAIT, stream.next_event()).await??.ok_or("stream ended")?;
            if sid == id {
                break;
            }
        }
        latencies.push((reached - started, started.elapsed()));
    }
    // Each delivery and each stream event came well within the hanging endpoint's 2 s timeout.
    for (webhook, stream) in &latencies {
        assert!(*webhook < Duration::from_millis(1500), "{latencies:?}");
        assert!(*stream < Duration::from_millis(1500), "{latencies:?}");
    }
    // The hanging endpoint got its first event once and saw it time out.
    hanging.wait_until(WAIT, |got| !got.is_empty()).await?;
    let d = eventually(WAIT, || async {
        let (_, log) = app.get_json(&format!("/api/webhooks/{stuck}/deliveries")).await?;
        Ok(log["deliveries"].as_array().and_then(|d| d.last()).cloned().ok_or("no attempt logged")?)
    })
    .await?;
    assert_eq!(d["error"], "timeout", "{d}");
    assert_eq!(d["statusCode"], Value::Null);
    assert_eq!(d["outcome"], "retrying");
    assert!(d["durationMs"].as_i64().unwrap_or(0) >= 1900, "{d}");
    Ok(())
}

#[tokio::test]
async fn after_a_sigkill_an_unacknowledged_event_is_delivered_once_and_an_acknowledged_one_never_again()
-> TestResult {
    let receiver = Receiver::start(Mode::Always(200)).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let args = ["--workers", "0", "--webhook-allow-private", "--webhook-retry-base-ms", "50"];
    let server = ServerProcess::start(dir.path(), port, &args).await?;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let res = client
        .post(format!("{base}/api/webhooks"))
        .json(&json!({"url": receiver.url, "events": ["job-cancelled"]}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let webhook: Value = res.json().await?;
    let webhook = webhook["id"].as_str().ok_or("no id")?.to_owned();
    let cancel = |topic: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let created: Value = client
                .post(format!("{base}/api/jobs"))
                .json(&json!({"brief": {"topic": topic}}))
                .send()
                .await?
                .json()
                .await?;
            let job = created["jobId"].as_str().ok_or("no id")?.to_owned();
            let res = client.post(format!("{base}/api/jobs/{job}/cancel")).send().await?;
            assert_eq!(res.status(), 202);
            let history: Vec<Value> =
                client.get(format!("{base}/api/jobs/{job}/history")).send().await?.json().await?;
            history.last().and_then(|e| e["id"].as_i64()).ok_or_else(|| "no events".into())
        }
    };

    // Acknowledged before the kill: its delivery (and so the position) is committed.
    let acked: TestResult<i64> = cancel("acked").await;
    let acked = acked?;
    receiver.wait_until(WAIT, |got| got.iter().any(|g| event_id(g) == acked)).await?;
    eventually(WAIT, || async {
        let list: Value = client.get(format!("{base}/api/webhooks")).send().await?.json().await?;
        holds(list["webhooks"][0]["lastEventId"] == acked, || format!("the position is not {acked}: {list}"))
    })
    .await?;

    // Not acknowledged: the receiver fails it until the server is killed.
    receiver.set_mode(Mode::Always(503));
    let pending: TestResult<i64> = cancel("pending").await;
    let pending = pending?;
    receiver.wait_until(WAIT, |got| got.iter().any(|g| event_id(g) == pending)).await?;
    eventually(WAIT, || async {
        let log: Value =
            client.get(format!("{base}/api/webhooks/{webhook}/deliveries")).send().await?.json().await?;
        let failed = log["deliveries"].as_array().is_some_and(|d| {
            d.iter().any(|d| d["eventId"] == pending && d["statusCode"] == 503 && d["outcome"] == "retrying")
        });
        holds(failed, || format!("the 503 is not logged: {log}"))
    })
    .await?;
    server.kill().await?;

    receiver.set_mode(Mode::Always(200));
    let server = ServerProcess::start(dir.path(), port, &args).await?;
    let got = receiver
        .wait_until(WAIT, |got| got.iter().any(|g| event_id(g) == pending && g.answered == 200))
        .await?;
    // One more event afterwards proves the endpoint moved on past both.
    let later: TestResult<i64> = cancel("later").await;
    let later = later?;
    let got_after = receiver.wait_until(WAIT, |got| got.iter().any(|g| event_id(g) == later)).await?;
    let count = |id: i64, answered: u16| {
        got_after.iter().filter(|g| event_id(g) == id && g.answered == answered).count()
    };
    assert_eq!(count(acked, 200), 1, "the acknowledged event was not sent again");
    assert_eq!(got_after.iter().filter(|g| event_id(g) == acked).count(), 1);
    assert_eq!(count(pending, 200), 1, "the pending event was delivered once after the restart");
    assert_eq!(count(later, 200), 1);
    assert!(got.len() <= got_after.len());
    // The retry schedule carried on across the restart: the delivery is a later attempt.
    let log: Value =
        client.get(format!("{base}/api/webhooks/{webhook}/deliveries")).send().await?.json().await?;
    let delivered = log["deliveries"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["eventId"] == pending && d["outcome"] == "delivered"))
        .ok_or("no delivery logged")?;
    assert!(delivered["attempt"].as_i64().unwrap_or(0) >= 2, "{delivered}");
    server.kill().await?;
    Ok(())
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> TestResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').ok_or("no command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).ok_or("no utime")?.parse::<f64>()?
        + fields.get(12).ok_or("no stime")?.parse::<f64>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or("no CLK_TCK")? as f64;
    Ok(ticks / per_second)
}

/// The webhook benchmark of BENCHMARKS.md: a backlog of `N` `job-status` events, held back by
/// a first attempt that failed with a one-hour backoff, is delivered after a restart to a
/// receiver that answers at once. Reports events/s delivered and the server's CPU per
/// delivery. `AURA_BIN` picks the binary (a release build for real numbers); `N` from
/// `WEBHOOK_BENCH_EVENTS` (default 2000).
#[tokio::test]
#[ignore = "a benchmark: AURA_BIN=target/release/aura cargo test --test api webhooks::webhook_delivery_benchmark -- --ignored --nocapture"]
async fn webhook_delivery_benchmark() -> TestResult {
    use futures_util::StreamExt;
    let bin = std::env::var("AURA_BIN").unwrap_or_else(|_| AURA.to_owned());
    let n: usize = std::env::var("WEBHOOK_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let receiver = Receiver::start(Mode::Always(503)).await?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let start = |retry_base: &'static str| {
        let (bin, dir) = (bin.clone(), dir.path().to_owned());
        async move {
            let extra = ["--workers", "0", "--webhook-allow-private", "--webhook-retry-base-ms", retry_base];
            ServerProcess::start_bin(&bin, &dir, port, &extra).await
        }
    };
    let ServerProcess { child: mut server, base } = start("3600000").await?;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/api/webhooks"))
        .json(&json!({"url": receiver.url, "events": ["job-status"]}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let creates = futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let res = client
                    .post(format!("{base}/api/jobs"))
                    .json(&json!({"brief": {"topic": format!("bench {i}")}}))
                    .send()
                    .await?;
                assert_eq!(res.status(), 201);
                Ok::<_, reqwest::Error>(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for c in creates {
        c?;
    }
    receiver.wait_until(WAIT, |got| !got.is_empty()).await?;
    server.start_kill()?;
    server.wait().await?;

    receiver.set_mode(Mode::Always(200));
    let before = receiver.got().len();
    let ServerProcess { child: server, .. } = start("10").await?;
    let pid = server.id().ok_or("no pid")?;
    let cpu_start = cpu_seconds(pid)?;
    let started = Instant::now();
    let got = receiver
        .wait_until(Duration::from_secs(600), |got| got.iter().filter(|g| g.answered == 200).count() >= n)
        .await?;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(pid)? - cpu_start;
    let delivered = got.len() - before;
    assert_eq!(delivered, n, "each event of the backlog once");
    println!(
        "webhooks: {n} events delivered in {:.2} s = {:.0} events/s; server CPU {:.3} s = {:.1} µs per delivery",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu,
        cpu * 1e6 / n as f64
    );
    drop(server);
    Ok(())
}

/// A node of a cluster on the PostgreSQL database `url`, API-only, named `name`.
async fn postgres_node(url: &str, name: &str) -> TestResult<TestApp> {
    app_allowing_private(|cfg| {
        cfg.database_url = Some(url.to_owned());
        cfg.node_name = Some(name.to_owned());
        // A node that takes over waits one attempt's timeout (and a margin) before it sends.
        cfg.webhook_timeout_secs = 1;
    })
    .await
}

/// The `i`-th node, unless it was stopped.
fn node(nodes: &[Option<TestApp>], i: usize) -> TestResult<&TestApp> {
    Ok(nodes.get(i).and_then(Option::as_ref).ok_or("node stopped")?)
}

/// Waits until exactly one of `nodes` delivers; returns its index.
async fn delivering_node(nodes: &[&TestApp]) -> TestResult<usize> {
    eventually(WAIT, || async {
        let delivering: Vec<usize> =
            (0..nodes.len()).filter(|&i| nodes[i].state.webhooks().delivering()).collect();
        assert!(delivering.len() <= 1, "nodes {delivering:?} deliver at once");
        if let [one] = delivering[..] { Ok(one) } else { Err("no node holds the delivery lock".into()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_one_node_delivers_each_event_once_in_order_and_the_other_takes_over_when_it_stops()
-> TestResult {
    let url = crate::postgres::database().await?;
    let receiver = Receiver::start(Mode::Always(200)).await?;
    let mut nodes =
        vec![Some(postgres_node(&url, "hooks-a").await?), Some(postgres_node(&url, "hooks-b").await?)];
    // Throughout the test, never two nodes delivering at once.
    let watched = [node(&nodes, 0)?.state.webhooks().clone(), node(&nodes, 1)?.state.webhooks().clone()];
    let overlap = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let overlap = overlap.clone();
        tokio::spawn(async move {
            loop {
                if watched.iter().filter(|w| w.delivering()).count() > 1 {
                    overlap.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Registered on node A; events from jobs cancelled on both nodes.
    let (webhook, secret) = register(node(&nodes, 0)?, &receiver.url, &["job-cancelled"]).await?;
    let mut expected = Vec::new();
    for n in 0..4 {
        expected.push(cancelled_job(node(&nodes, n % 2)?, &format!("shared hook {n}")).await?.1);
    }
    let first = receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    assert_eq!(first.iter().map(event_id).collect::<Vec<_>>(), expected, "each event once, in order");
    let delivering = delivering_node(&[node(&nodes, 0)?, node(&nodes, 1)?]).await?;

    // The delivering node stops; the other takes over, and gets events made while no node
    // delivered and after.
    let other = 1 - delivering;
    let stopped = nodes[delivering].take().ok_or("no delivering node")?;
    stopped.stop().await?;
    for n in 4..7 {
        expected.push(cancelled_job(node(&nodes, other)?, &format!("shared hook {n}")).await?.1);
    }
    receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    assert_eq!(delivering_node(&[node(&nodes, other)?]).await?, 0);
    // One more event marks the end: deliveries are in order, so a repeat of an earlier event
    // would have come before it.
    expected.push(cancelled_job(node(&nodes, other)?, "shared hook last").await?.1);
    let got = receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    assert_eq!(got.iter().map(event_id).collect::<Vec<_>>(), expected, "each event once, in order");
    assert!(got.iter().all(|g| verifies(g, &secret)), "every delivery is signed");

    // The surviving node lists the endpoint at the last event, with one delivered attempt each.
    let app = node(&nodes, other)?;
    eventually(WAIT, || async {
        let (_, list) = app.get_json("/api/webhooks").await?;
        let last = json!(expected[expected.len() - 1]);
        holds(list["webhooks"][0]["lastEventId"] == last, || {
            format!("the stored position is not {last}: {list}")
        })
    })
    .await?;
    let (status, log) = app.get_json(&format!("/api/webhooks/{webhook}/deliveries")).await?;
    assert_eq!(status, 200);
    let mut logged: Vec<i64> = log["deliveries"]
        .as_array()
        .ok_or("no deliveries")?
        .iter()
        .filter(|d| d["outcome"] == "delivered")
        .map(|d| d["eventId"].as_i64().unwrap_or(0))
        .collect();
    logged.reverse();
    assert_eq!(logged, expected);
    watcher.abort();
    assert!(!overlap.load(std::sync::atomic::Ordering::Relaxed), "two nodes delivered at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_a_node_whose_lock_session_ends_stops_delivering_and_the_other_delivers_the_rest_once()
-> TestResult {
    let url = crate::postgres::database().await?;
    // The first attempt is answered 2xx only after the lock's session has ended: it must still
    // count as delivered (API.md: a delivery that got its 2xx is never sent again).
    let receiver = Receiver::start(Mode::Slow(200, Duration::from_millis(800))).await?;
    let a = postgres_node(&url, "lost-a").await?;
    let b = postgres_node(&url, "lost-b").await?;
    register(&a, &receiver.url, &["job-cancelled"]).await?;
    let mut expected = vec![cancelled_job(&a, "before").await?.1];
    receiver.wait_until(WAIT, |got| !got.is_empty()).await?;
    receiver.set_mode(Mode::Always(200));
    let nodes = [&a, &b];
    let delivering = delivering_node(&nodes).await?;

    // While that answer is on its way, the database ends the lock's session, as it does to a
    // node it no longer hears from.
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&url).await?;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(ended, [true], "one session holds the delivery lock");
    eventually(WAIT, || async {
        holds(!nodes[delivering].state.webhooks().delivering(), || {
            "the node delivers without its lock".into()
        })
    })
    .await?;
    for n in 0..3 {
        expected.push(cancelled_job(nodes[n % 2], &format!("after {n}")).await?.1);
    }
    receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    // Some node delivers again (either may have taken the lock), and the marker ends the list.
    delivering_node(&nodes).await?;
    expected.push(cancelled_job(&b, "last").await?.1);
    let got = receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    assert_eq!(got.iter().map(event_id).collect::<Vec<_>>(), expected, "each event once, in order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_a_2xx_that_arrives_while_the_database_is_away_is_recorded_and_never_sent_again()
-> TestResult {
    let url = crate::postgres::database().await?;
    // Node A reaches the database through the fault proxy and delivers; node B does not.
    let (proxy, proxied) = crate::faults::FaultProxy::for_postgres(&url).await?;
    let receiver = Receiver::start(Mode::Slow(200, Duration::from_millis(800))).await?;
    let a = postgres_node(&proxied, "away-a").await?;
    assert_eq!(delivering_node(&[&a]).await?, 0);
    let b = postgres_node(&url, "away-b").await?;
    register(&a, &receiver.url, &["job-cancelled"]).await?;
    let mut expected = vec![cancelled_job(&a, "before").await?.1];
    receiver.wait_until(WAIT, |got| !got.is_empty()).await?;
    receiver.set_mode(Mode::Always(200));
    // While the 2xx is on its way, A loses the database (its lock's session and every other
    // connection) for a moment shorter than the lock's grace.
    proxy.set(crate::faults::Mode::Refuse);
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(crate::faults::Mode::Pass);
    let nodes = [&a, &b];
    for n in 0..3 {
        expected.push(cancelled_job(nodes[n % 2], &format!("after {n}")).await?.1);
    }
    receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    // Some node delivers again (either may have taken the lock), and the marker ends the list:
    // deliveries are in order, so a repeat would have come before it.
    delivering_node(&nodes).await?;
    expected.push(cancelled_job(&b, "last").await?.1);
    let got = receiver.wait_until(WAIT, |got| got.len() >= expected.len()).await?;
    assert_eq!(got.iter().map(event_id).collect::<Vec<_>>(), expected, "each event once, in order");
    Ok(())
}
