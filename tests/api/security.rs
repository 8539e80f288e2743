//! Access and limits (API.md): tokens, sessions, job ownership, per-owner limits, CORS and the
//! refusal to serve a non-loopback address open. Every test runs the real server on loopback.

use std::time::Duration;

use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cli::AURA;
use crate::helpers::{
    SseStream, TestApp, TestResult, Tokens, WAIT, eventually, holds, on_postgres, spawn_app_with,
};

/// An app with tokens for `alice`, `bob` (users) and `root` (admin).
struct Secured {
    app: TestApp,
    alice: String,
    bob: String,
    root: String,
    tokens: Tokens,
}

async fn spawn_secured(tweak: impl FnOnce(&mut aura::config::ServeConfig)) -> TestResult<Secured> {
    let mut made = None;
    let app = spawn_app_with(|cfg| {
        let tokens = Tokens::of(cfg);
        made = Some((|| {
            Ok::<_, anyhow::Error>((
                tokens.create("alice", false)?,
                tokens.create("bob", false)?,
                tokens.create("root", true)?,
                tokens.clone(),
            ))
        })());
        tweak(cfg);
    })
    .await?;
    let (alice, bob, root, tokens) = made.ok_or("the tweak did not run")??;
    Ok(Secured { app, alice, bob, root, tokens })
}

impl Secured {
    fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.app.client.request(method, self.app.url(path)).bearer_auth(token)
    }

    async fn create_job(&self, token: &str, topic: &str) -> TestResult<Uuid> {
        let res = self
            .req(Method::POST, "/api/jobs", token)
            .json(&json!({"brief": {"topic": topic}}))
            .send()
            .await?;
        assert_eq!(res.status(), 201, "creating a job");
        let body: Value = res.json().await?;
        Ok(body["jobId"].as_str().ok_or("no jobId")?.parse()?)
    }

    async fn stream(&self, path: &str, token: &str) -> TestResult<SseStream> {
        Ok(SseStream::new(self.req(Method::GET, path, token).send().await?))
    }

    async fn job_ids(&self, token: &str) -> TestResult<Vec<String>> {
        let body: Value = self.req(Method::GET, "/api/jobs", token).send().await?.json().await?;
        Ok(body["jobs"]
            .as_array()
            .ok_or("no jobs array")?
            .iter()
            .filter_map(|j| j["jobId"].as_str().map(str::to_owned))
            .collect())
    }
}

fn assert_problem(res: &Response, status: u16, what: &str) {
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(res.headers()["content-type"], "application/problem+json", "{what}");
}

fn assert_unauthorized(res: &Response, what: &str) {
    assert_problem(res, 401, what);
    assert_eq!(res.headers()["www-authenticate"], "Bearer", "{what}");
}

/// A revoked credential is refused: at once with the tokens file; with the tokens in PostgreSQL
/// within the second a node trusts what it read (API.md), so there this waits up to 3 s.
async fn assert_refused_soon(send: impl Fn() -> RequestBuilder, what: &str) -> TestResult {
    let bound = if on_postgres() { Duration::from_secs(3) } else { Duration::ZERO };
    let res = eventually(bound, || async {
        let res = send().send().await?;
        holds(res.status() == 401, || format!("{what}: answered {}", res.status()))?;
        Ok(res)
    })
    .await?;
    assert_unauthorized(&res, what);
    Ok(())
}

/// The session cookie's `name=value` from a `Set-Cookie` answer.
fn session_cookie(res: &Response) -> TestResult<String> {
    let set = res.headers().get("set-cookie").ok_or("no Set-Cookie")?.to_str()?;
    Ok(set.split(';').next().ok_or("empty Set-Cookie")?.trim().to_owned())
}

#[tokio::test]
async fn without_credentials_every_api_route_but_health_and_session_is_401() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let id = s.create_job(&s.alice, "private").await?;
    let routes = [
        (Method::GET, "/api/jobs".to_owned()),
        (Method::POST, "/api/jobs".to_owned()),
        (Method::GET, format!("/api/jobs/{id}")),
        (Method::POST, format!("/api/jobs/{id}/cancel")),
        (Method::GET, format!("/api/jobs/{id}/history")),
        (Method::GET, format!("/api/jobs/{id}/output")),
        (Method::GET, format!("/api/jobs/{id}/events")),
        (Method::GET, "/api/events".to_owned()),
        (Method::GET, format!("/api/events?jobId={id}")),
        (Method::GET, "/api/openapi.json".to_owned()),
        (Method::GET, "/metrics".to_owned()),
    ];
    for (method, path) in &routes {
        let client = &s.app.client;
        let res = client.request(method.clone(), s.app.url(path)).send().await?;
        assert_unauthorized(&res, &format!("{method} {path}"));
        // A token in the query string is never accepted, whatever the parameter is called.
        for name in ["token", "access_token", "bearer", "auth"] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let res = client
                .request(method.clone(), s.app.url(&format!("{path}{sep}{name}={}", s.root)))
                .send()
                .await?;
            assert_unauthorized(&res, &format!("{method} {path} with ?{name}="));
        }
        let res = s.req(method.clone(), path, "aura_not-a-token").send().await?;
        assert_unauthorized(&res, &format!("{method} {path} with an unknown token"));
    }
    let health = s.app.client.get(s.app.url("/api/health")).send().await?.status();
    assert!(health == 200 || health == 503, "health needs no credentials: {health}");
    for page in ["/", &format!("/jobs/{id}"), "/assets/sse-client.js", "/assets/sign-in.js"] {
        let res = s.app.client.get(s.app.url(page)).send().await?;
        assert_eq!(res.status(), 200, "{page} stays public");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str()?;
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    Ok(())
}

#[tokio::test]
async fn a_session_cookie_opens_the_api_and_streams_until_signed_out() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let url = s.app.url("/api/session");
    let bad = s.app.client.post(&url).json(&json!({"token": "aura_wrong"})).send().await?;
    assert_unauthorized(&bad, "a bad token");
    let res = s.app.client.post(&url).json(&json!({"token": s.alice})).send().await?;
    assert_eq!(res.status(), 204);
    let set = res.headers()["set-cookie"].to_str()?.to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set} has {attribute}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: no Secure");
    let cookie = session_cookie(&res)?;
    assert!(!cookie.contains(&s.alice), "the cookie is a session id, not the token");

    let id = s.create_job(&s.alice, "mine").await?;
    let with_cookie = |path: &str| s.app.client.get(s.app.url(path)).header("cookie", &cookie);
    assert_eq!(with_cookie(&format!("/api/jobs/{id}")).send().await?.status(), 200);
    let mut stream = SseStream::new(with_cookie(&format!("/api/jobs/{id}/events")).send().await?);
    assert_eq!(stream.status, 200);
    let (_, kind, data) = tokio::time::timeout(WAIT, stream.next_event()).await??.ok_or("no event")?;
    assert_eq!((kind.as_str(), data["jobId"].as_str()), ("job-status", Some(id.to_string().as_str())));

    let out = s.app.client.delete(&url).header("cookie", &cookie).send().await?;
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
    assert_unauthorized(&with_cookie("/api/jobs").send().await?, "after sign-out");
    Ok(())
}

#[tokio::test]
async fn a_session_survives_a_restart_and_ends_with_its_token() -> TestResult {
    let mut s = spawn_secured(|_| {}).await?;
    let res = s.app.client.post(s.app.url("/api/session")).json(&json!({"token": s.bob})).send().await?;
    let cookie = session_cookie(&res)?;
    let kept = s.app.keep_dir()?;
    let data_dir = kept.path().join("data");
    s.app.stop().await?;
    let app = spawn_app_with(|cfg| cfg.data_dir = data_dir.clone()).await?;
    let res = app.client.get(app.url("/api/jobs")).header("cookie", &cookie).send().await?;
    assert_eq!(res.status(), 200, "the session outlived the restart");
    assert!(s.tokens.revoke("bob")?);
    assert_refused_soon(
        || app.client.get(app.url("/api/jobs")).header("cookie", &cookie),
        "a revoked token's session",
    )
    .await?;
    app.stop().await?;
    drop(kept);
    Ok(())
}

/// API.md: a browser session belongs to the token that opened it, not to the token's name.
#[tokio::test]
async fn a_session_ends_with_its_token_and_a_new_token_of_the_same_name_does_not_revive_it() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let old = s.tokens.create("rotated", true)?;
    let res = s.app.client.post(s.app.url("/api/session")).json(&json!({"token": old})).send().await?;
    assert_eq!(res.status(), 204);
    let cookie = session_cookie(&res)?;
    let metrics = || s.app.client.get(s.app.url("/metrics")).header("cookie", &cookie);
    assert_eq!(metrics().send().await?.status(), 200, "the session of the admin token");

    assert!(s.tokens.revoke("rotated")?);
    assert_refused_soon(metrics, "the session of a revoked token").await?;
    let new = s.tokens.create("rotated", true)?;
    assert_eq!(s.req(Method::GET, "/metrics", &new).send().await?.status(), 200, "the new token");
    // The old session stays ended, also once every cache has had time to expire (a PostgreSQL
    // node trusts an answer for a second): it is refused on every try for two seconds.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert_unauthorized(&metrics().send().await?, "an old session under a new token of its name");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A session opened with the new token works; the old token cannot open one.
    let res = s.app.client.post(s.app.url("/api/session")).json(&json!({"token": old})).send().await?;
    assert_unauthorized(&res, "signing in with the revoked token");
    let res = s.app.client.post(s.app.url("/api/session")).json(&json!({"token": new})).send().await?;
    assert_eq!(res.status(), 204);
    let renewed = session_cookie(&res)?;
    let res = s.app.client.get(s.app.url("/metrics")).header("cookie", &renewed).send().await?;
    assert_eq!(res.status(), 200, "a session of the new token");
    assert_unauthorized(&metrics().send().await?, "the old session, after the new one started");
    Ok(())
}

/// A client bound to `ip`: all of 127.0.0.0/8 is loopback, so each test "address" is its own.
fn client_from(ip: [u8; 4]) -> TestResult<reqwest::Client> {
    let ip = std::net::IpAddr::from(ip);
    Ok(reqwest::Client::builder().local_address(ip).pool_max_idle_per_host(0).build()?)
}

/// API.md: lookups of unknown credentials are limited per client address. Flooders on three
/// addresses (one of them the legitimate client's own, 127.0.0.1) send made-up bearer tokens
/// for two seconds; they get `401` until their address's budget is spent, then `429`. All the
/// while, tokens the server knows get `200` on every poll, and a token presented for the first
/// time from an address that is not flooding gets in too.
#[tokio::test]
async fn a_flood_of_made_up_tokens_costs_the_flooder_429_and_every_known_token_keeps_working() -> TestResult {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const FLOOD: Duration = Duration::from_secs(2);
    const MOST_PER_FLOODER: usize = 5_000;
    let s = spawn_secured(|_| {}).await?;
    let get = |client: &reqwest::Client, path: &str, token: &str| {
        client.get(s.app.url(path)).bearer_auth(token.to_owned()).send()
    };
    let legit = client_from([127, 0, 0, 1])?;
    assert_eq!(get(&legit, "/api/jobs", &s.alice).await?.status(), 200);
    assert_eq!(get(&legit, "/metrics", &s.root).await?.status(), 200);

    let throttled = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let flood_from = |ip: [u8; 4]| {
        let (throttled, get) = (&throttled, &get);
        async move {
            let client = client_from(ip)?;
            let start = std::time::Instant::now();
            let (mut refused, mut limited) = (0usize, 0usize);
            while start.elapsed() < FLOOD && refused + limited < MOST_PER_FLOODER {
                let made_up = format!("aura_{}", Uuid::new_v4().simple());
                let res = get(&client, "/api/jobs", &made_up).await?;
                match res.status().as_u16() {
                    401 => refused += 1,
                    429 => {
                        assert_problem(&res, 429, "a flooder past its budget");
                        let retry: u64 = res.headers()["retry-after"].to_str()?.parse()?;
                        assert!((1..=60).contains(&retry), "Retry-After: {retry}");
                        let body: Value = res.json().await?;
                        assert_eq!(body["type"], "urn:aura:problem:too-many-requests");
                        limited += 1;
                        throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return Err(format!("a made-up token from {ip:?} got {other}").into()),
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((refused, limited))
        }
    };
    let flood = async {
        let answers =
            futures_util::future::join_all([[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]].map(flood_from))
                .await;
        done.store(true, Ordering::Relaxed);
        answers
    };
    let known = async {
        let mut polls = 0;
        let mut newcomer = None;
        while !done.load(Ordering::Relaxed) {
            let res = get(&legit, "/api/jobs", &s.alice).await?;
            assert_eq!(res.status(), 200, "a known token during the flood, poll {polls}");
            polls += 1;
            // Once the flood is being held back, a token this server has not seen yet, from an
            // address of its own, is looked up and let in.
            if newcomer.is_none() && throttled.load(Ordering::Relaxed) > 0 {
                let res = get(&client_from([127, 0, 0, 9])?, "/api/jobs", &s.bob).await?;
                newcomer = Some(res.status().as_u16());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((polls, newcomer))
    };
    let (answers, known) = tokio::time::timeout(WAIT, async { tokio::join!(flood, known) }).await?;
    let (polls, newcomer) = known?;
    for (ip, answer) in [1, 2, 3].iter().zip(answers) {
        let (refused, limited) = answer?;
        assert!(limited > 0, "127.0.0.{ip}: {refused} refused with 401, none held back with 429");
        assert!(refused <= 100, "127.0.0.{ip}: {refused} made-up tokens looked up in {FLOOD:?}");
    }
    assert!(polls >= 10, "the known token was polled {polls} times");
    assert_eq!(newcomer, Some(200), "a new caller from another address during the flood");
    assert_eq!(get(&legit, "/metrics", &s.root).await?.status(), 200, "the admin after the flood");
    let metrics = crate::helpers::without_node(&get(&legit, "/metrics", &s.root).await?.text().await?);
    assert!(metrics.contains("aura_rejections_total{reason=\"credential-lookups\"}"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn changes_to_the_tokens_file_apply_without_a_restart() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    assert_eq!(s.req(Method::GET, "/api/jobs", &s.bob).send().await?.status(), 200);
    assert!(s.tokens.revoke("bob")?);
    assert_refused_soon(|| s.req(Method::GET, "/api/jobs", &s.bob), "a revoked token").await?;
    let carol = s.tokens.create("carol", false)?;
    assert_eq!(s.req(Method::GET, "/api/jobs", &carol).send().await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn another_owner_gets_403_on_each_job_route_and_admins_see_everything() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let alices = s.create_job(&s.alice, "alice's").await?;
    let bobs = s.create_job(&s.bob, "bob's").await?;
    // Her own unfinished job's output is 404 for alice; for bob it is 403 before anything else.
    let output = format!("/api/jobs/{alices}/output");
    assert_eq!(s.req(Method::GET, &output, &s.alice).send().await?.status(), 404);
    for (method, path) in [
        (Method::GET, format!("/api/jobs/{alices}")),
        (Method::GET, format!("/api/jobs/{alices}/events")),
        (Method::GET, format!("/api/jobs/{alices}/events?lastEventId=abc")),
        (Method::GET, format!("/api/jobs/{alices}/history")),
        (Method::GET, output.clone()),
        (Method::POST, format!("/api/jobs/{alices}/cancel")),
        (Method::GET, format!("/api/events?jobId={alices}")),
        (Method::GET, format!("/api/events?jobId={bobs}&jobId={alices}")),
    ] {
        let res = s.req(method.clone(), &path, &s.bob).send().await?;
        assert_problem(&res, 403, &format!("bob: {method} {path}"));
    }
    assert_eq!(s.job_ids(&s.bob).await?, [bobs.to_string()]);
    assert_eq!(s.job_ids(&s.alice).await?, [alices.to_string()]);
    assert_eq!(s.job_ids(&s.root).await?, [bobs.to_string(), alices.to_string()]);
    let metrics_user = s.req(Method::GET, "/metrics", &s.bob).send().await?;
    assert_problem(&metrics_user, 403, "a user token on /metrics");
    assert_eq!(s.req(Method::GET, "/metrics", &s.root).send().await?.status(), 200);
    assert_eq!(
        s.req(Method::GET, &format!("/api/jobs/{alices}/history"), &s.root).send().await?.status(),
        200
    );
    assert_eq!(
        s.req(Method::POST, &format!("/api/jobs/{alices}/cancel"), &s.root).send().await?.status(),
        202
    );
    Ok(())
}

#[tokio::test]
async fn the_all_jobs_stream_carries_only_the_callers_jobs_replayed_live_and_foreign() -> TestResult {
    if crate::helpers::sqlite_only("another process writing to the SQLite file") {
        return Ok(());
    }
    let s = spawn_secured(|_| {}).await?;
    let alices = s.create_job(&s.alice, "alice's").await?;
    let bobs = s.create_job(&s.bob, "bob's").await?;
    let mut bob = s.stream("/api/events", &s.bob).await?;
    let mut root = s.stream("/api/events", &s.root).await?;
    assert_eq!((bob.status, root.status), (200, 200));

    // Live: progress on both jobs, appended by this process.
    let store = s.app.state.store();
    for id in [alices, bobs] {
        lifecycle::claim(store, id).await?;
        JobHandle::new(store.clone(), id).progress(Stage::Script, 50.0, "half way".into()).await?;
    }
    // Foreign: rows another program appends, which reach the hub without an owner.
    let mut conn = s.app.sql().await?;
    let mut last = 0;
    for id in [alices, bobs] {
        let data = json!({"jobId": id, "at": "2026-01-01T00:00:00.000000Z", "code": "x", "message": "m", "step": null});
        last = sqlx::query_scalar(
            "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'warning', ?, ?) RETURNING id",
        )
        .bind(id.to_string())
        .bind(data.to_string())
        .bind("2026-01-01T00:00:00.000000Z")
        .fetch_one(&mut conn)
        .await?;
    }

    let mut seen_by_bob = Vec::new();
    loop {
        let (id, _, data) =
            tokio::time::timeout(WAIT, bob.next_event()).await??.ok_or("bob's stream ended")?;
        seen_by_bob.push(data["jobId"].as_str().ok_or("no jobId")?.to_owned());
        if id >= last {
            break;
        }
    }
    assert!(seen_by_bob.iter().all(|j| *j == bobs.to_string()), "bob saw only his job: {seen_by_bob:?}");
    let bob_ids = s.app.sql_event_ids(bobs).await?;
    assert_eq!(seen_by_bob.len(), bob_ids.len(), "bob saw every event of his job");

    let root_ids = root.ids_until(last).await?;
    let mut all = s.app.sql_event_ids(alices).await?;
    all.extend(bob_ids);
    all.sort_unstable();
    assert_eq!(root_ids, all, "the admin sees every job");
    Ok(())
}

#[tokio::test]
async fn the_21st_stream_of_one_owner_is_429_while_another_owner_still_connects() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let mut open = Vec::new();
    for _ in 0..20 {
        let stream = s.stream("/api/events", &s.alice).await?;
        assert_eq!(stream.status, 200);
        open.push(stream);
    }
    let res = s.req(Method::GET, "/api/events", &s.alice).send().await?;
    assert_problem(&res, 429, "alice's 21st stream");
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(s.stream("/api/events", &s.bob).await?.status, 200, "bob still connects");
    // A closed stream frees its slot.
    open.pop();
    eventually(WAIT, || async {
        let status = s.stream("/api/events", &s.alice).await?.status;
        holds(status == 200, || format!("a stream answered {status}"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_global_cap_answers_503_and_wins_over_the_owner_limit() -> TestResult {
    let s = spawn_secured(|c| {
        c.max_streams = 2;
        c.max_streams_per_owner = 1;
    })
    .await?;
    let _first = s.stream("/api/events", &s.alice).await?;
    let second = s.req(Method::GET, "/api/events", &s.alice).send().await?;
    assert_problem(&second, 429, "alice's second stream, below the global cap");
    let _bobs = s.stream("/api/events", &s.bob).await?;
    let third = s.req(Method::GET, "/api/events", &s.alice).send().await?;
    assert_problem(&third, 503, "both limits exceeded");
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await?;
    assert_eq!(body["status"], 503);
    Ok(())
}

#[tokio::test]
async fn job_creation_past_the_bucket_is_429_for_that_owner_only() -> TestResult {
    let s = spawn_secured(|c| c.job_rate = 0.01).await?;
    for i in 0..20 {
        s.create_job(&s.alice, &format!("burst {i}")).await?;
    }
    let res = s
        .req(Method::POST, "/api/jobs", &s.alice)
        .json(&json!({"brief": {"topic": "one too many"}}))
        .send()
        .await?;
    assert_problem(&res, 429, "the 21st job");
    let retry: u64 = res.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry >= 1);
    s.create_job(&s.bob, "bob is not limited by alice").await?;
    let metrics =
        crate::helpers::without_node(&s.req(Method::GET, "/metrics", &s.root).send().await?.text().await?);
    assert!(metrics.contains("aura_rejections_total{reason=\"job-rate\"}"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_stream_with_a_token_ends_at_its_maximum_age_and_resumes_missing_nothing() -> TestResult {
    let s = spawn_secured(|c| c.max_stream_secs = 1).await?;
    let id = s.create_job(&s.alice, "aging").await?;
    let store = s.app.state.store().clone();
    lifecycle::claim(&store, id).await?;
    let job = JobHandle::new(store, id);
    let producer = tokio::spawn(async move {
        for i in 0..40 {
            job.progress(Stage::Audio, f64::from(i), format!("tick {i}")).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        job.cancelled(Some(Stage::Audio)).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let mut seen: Vec<i64> = Vec::new();
    for reconnects in 0.. {
        assert!(reconnects < 20, "too many reconnects");
        let resume = seen.last().copied().unwrap_or(0).to_string();
        let res = s
            .req(Method::GET, &format!("/api/jobs/{id}/events"), &s.alice)
            .header("Last-Event-ID", resume)
            .send()
            .await?;
        let mut stream = SseStream::new(res);
        if stream.status == 204 {
            break;
        }
        seen.extend(stream.ids_to_end().await?);
    }
    producer.await??;
    assert_eq!(seen, s.app.sql_event_ids(id).await?);
    Ok(())
}

#[tokio::test]
async fn cors_preflight_is_allowed_only_for_listed_origins() -> TestResult {
    let s = spawn_secured(|c| c.cors_origins = vec!["https://app.example".into()]).await?;
    let preflight = |origin: &'static str| {
        s.app
            .client
            .request(Method::OPTIONS, s.app.url("/api/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let ok = preflight("https://app.example").await?;
    assert!(ok.status().is_success(), "a preflight needs no credentials");
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let other = preflight("https://evil.example").await?;
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let get =
        s.req(Method::GET, "/api/jobs", &s.alice).header("origin", "https://evil.example").send().await?;
    assert!(!get.headers().contains_key("access-control-allow-origin"));
    Ok(())
}

#[tokio::test]
async fn a_non_loopback_address_without_tokens_is_refused_unless_insecure_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(AURA)
            .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("AURA_INSECURE_OPEN")
            .env_remove("AURA_TOKENS_FILE")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("aura token create") && stderr.contains("--insecure-open"), "{stderr}");

    let app = spawn_app_with(|c| {
        c.addr = "0.0.0.0:0".parse().unwrap_or(c.addr);
        c.insecure_open = true;
    })
    .await?;
    let port = app.base.rsplit(':').next().ok_or("no port")?;
    let res = app.client.get(format!("http://127.0.0.1:{port}/api/jobs")).send().await?;
    assert_eq!(res.status(), 200, "open, as asked");
    Ok(())
}

#[tokio::test]
async fn token_create_prints_the_token_alone_and_stores_only_its_hash() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(AURA)
        .args(["token", "create", "ci", "--admin", "--data-dir"])
        .arg(dir.path())
        .env_remove("AURA_TOKENS_FILE")
        .output()
        .await?;
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout)?;
    let token = stdout.trim_end_matches('\n');
    assert!(!token.contains(char::is_whitespace) && token.len() >= 64, "{stdout:?}");
    let file = std::fs::read_to_string(dir.path().join("tokens"))?;
    assert!(!file.contains(token), "the file keeps only a hash");
    let listed = tokio::process::Command::new(AURA)
        .args(["token", "list", "--data-dir"])
        .arg(dir.path())
        .env_remove("AURA_TOKENS_FILE")
        .output()
        .await?;
    assert_eq!(String::from_utf8(listed.stdout)?, "ci\tadmin\n");
    Ok(())
}

#[tokio::test]
async fn the_command_line_sends_aura_token() -> TestResult {
    let s = spawn_secured(|_| {}).await?;
    let id = s.create_job(&s.alice, "from the cli").await?;
    let mut without = crate::cli::aura(&s.app.base);
    without.args(["show", &id.to_string()]).env_remove("AURA_TOKEN");
    let out = tokio::time::timeout(WAIT, without.output()).await??;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("Unauthorized"));
    let mut with = crate::cli::aura(&s.app.base);
    with.args(["show", &id.to_string()]).env("AURA_TOKEN", &s.alice);
    let out = tokio::time::timeout(WAIT, with.output()).await??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown["owner"], "alice");
    Ok(())
}
