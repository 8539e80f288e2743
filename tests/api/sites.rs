//! Requests from other sites and host names (API.md "Access and limits"): a web page the user
//! merely visits cannot drive the default, open, loopback Aura through the user's browser, nor
//! read it through a name re-pointed at 127.0.0.1. Each test sends what the browser would send
//! for such a page, to the real server, and checks both the answer and that nothing changed.

use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResult, spawn_app, spawn_app_with};

const EVIL: &str = "https://evil.example";

/// A request another site's page makes: method, path, the headers its browser adds.
type Attempt = (Method, String, &'static [(&'static str, &'static str)]);

async fn assert_kind(res: Response, status: u16, kind: &str, what: &str) -> TestResult {
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(res.headers()["content-type"], "application/problem+json", "{what}");
    let body: Value = res.json().await?;
    assert_eq!(body["type"], format!("urn:aura:problem:{kind}"), "{what}: {body}");
    Ok(())
}

async fn job_count(app: &TestApp) -> TestResult<usize> {
    let (status, body) = app.get_json("/api/jobs").await?;
    assert_eq!(status, 200);
    Ok(body["jobs"].as_array().ok_or("no jobs array")?.len())
}

fn job_body() -> String {
    json!({"brief": {"topic": "from another site"}}).to_string()
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_415_and_creates_nothing() -> TestResult {
    let app = spawn_app().await?;
    // What an HTML form on any page can send without a preflight: text/plain holding JSON.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for path in ["/api/jobs", "/api/webhooks", "/api/session"] {
            let mut req = app.client.post(app.url(path)).body(job_body());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            assert_kind(
                req.send().await?,
                415,
                "unsupported-media-type",
                &format!("{path} as {content_type:?}"),
            )
            .await?;
        }
    }
    assert_eq!(job_count(&app).await?, 0, "no job was created");
    let (_, hooks) = app.get_json("/api/webhooks").await?;
    assert_eq!(hooks["webhooks"].as_array().map(Vec::len), Some(0), "no webhook was registered: {hooks}");
    // JSON with a charset is JSON.
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "application/json; charset=utf-8")
        .body(job_body())
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    Ok(())
}

#[tokio::test]
async fn a_post_or_delete_from_another_site_is_403_cross_site_and_changes_nothing() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("mine").await?;
    let hook = app
        .client
        .post(app.url("/api/webhooks"))
        .json(&json!({"url": "https://hooks.example.com/aura"}))
        .send()
        .await?;
    let hook_id = match hook.status().as_u16() {
        201 => hook.json::<Value>().await?["id"].as_str().map(str::to_owned),
        _ => None, // No resolver here for the example host: the DELETE below still must be refused.
    }
    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());

    let attempts: [Attempt; 7] = [
        (Method::POST, "/api/jobs".into(), &[("origin", EVIL)]),
        (Method::POST, "/api/jobs".into(), &[("origin", "null")]),
        (Method::POST, "/api/jobs".into(), &[("sec-fetch-site", "cross-site")]),
        (Method::POST, format!("/api/jobs/{id}/cancel"), &[("origin", EVIL)]),
        (
            Method::POST,
            format!("/api/jobs/{id}/cancel"),
            &[("origin", EVIL), ("sec-fetch-site", "cross-site")],
        ),
        (Method::DELETE, format!("/api/webhooks/{hook_id}"), &[("origin", EVIL)]),
        (Method::POST, "/api/session".into(), &[("origin", "http://localhost:1")]),
    ];
    for (method, path, headers) in attempts {
        let mut req =
            app.client.request(method.clone(), app.url(&path)).json(&json!({"brief": {"topic": "x"}}));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        assert_kind(req.send().await?, 403, "cross-site", &format!("{method} {path} with {headers:?}"))
            .await?;
    }
    assert_eq!(job_count(&app).await?, 1, "no job was created");
    assert_eq!(app.job(id).await?["status"], "Queued", "the job was not cancelled");

    // The server's own origin (the UI) and no origin at all (curl, the CLI) are unaffected.
    let own = app.base.clone();
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("origin", &own)
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"brief": {"topic": "from the UI"}}))
        .send()
        .await?;
    assert_eq!(res.status(), 201, "the UI's own origin");
    let res =
        app.client.post(app.url(&format!("/api/jobs/{id}/cancel"))).header("origin", &own).send().await?;
    assert_eq!(res.status(), 202, "a cancel from the UI");
    Ok(())
}

#[tokio::test]
async fn an_origin_listed_in_cors_origins_may_post() -> TestResult {
    let app = spawn_app_with(|c| c.cors_origins = vec!["https://app.example".into()]).await?;
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"brief": {"topic": "listed"}}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    Ok(())
}

#[tokio::test]
async fn a_foreign_host_name_is_refused_on_every_route_streams_and_metrics_included() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("rebinding").await?;
    let port = app.base.rsplit(':').next().ok_or("no port")?.to_owned();
    let foreign = format!("evil.example:{port}");
    let paths = [
        "/api/jobs".to_owned(),
        format!("/api/jobs/{id}"),
        format!("/api/jobs/{id}/events"),
        format!("/api/jobs/{id}/history"),
        "/api/events".to_owned(),
        "/api/health".to_owned(),
        "/metrics".to_owned(),
        "/".to_owned(),
    ];
    for path in &paths {
        // A fresh connection per request: a stream as a connection's first request is served
        // by the accept loop's takeover path, which must refuse it as well.
        let res = app.client.get(app.url(path)).header("host", &foreign).send().await?;
        assert_kind(res, 403, "host-not-allowed", &format!("GET {path} with Host {foreign}")).await?;
        let res =
            app.client.get(app.url(path)).header("host", format!("127.0.0.1.nip.io:{port}")).send().await?;
        assert_eq!(res.status(), 403, "GET {path} through a name that resolves to loopback");
    }
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("host", &foreign)
        .header("origin", format!("http://{foreign}"))
        .json(&json!({"brief": {"topic": "rebound"}}))
        .send()
        .await?;
    assert_kind(res, 403, "host-not-allowed", "a same-origin POST through a rebound name").await?;
    assert_eq!(job_count(&app).await?, 1, "nothing was created");

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LocalHost".into(),
    ] {
        let res = app.client.get(app.url("/api/jobs")).header("host", &host).send().await?;
        assert_eq!(res.status(), 200, "Host {host}");
    }
    Ok(())
}

#[tokio::test]
async fn a_host_listed_in_allowed_hosts_is_answered() -> TestResult {
    let app = spawn_app_with(|c| c.allowed_hosts = vec!["aura.example.com".into()]).await?;
    let res = app.client.get(app.url("/api/jobs")).header("host", "aura.example.com").send().await?;
    assert_eq!(res.status(), 200);
    let res = app.client.get(app.url("/api/jobs")).header("host", "other.example.com").send().await?;
    assert_eq!(res.status(), 403);
    // Behind a proxy that passes the public name, the UI's requests are same-origin.
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("host", "aura.example.com")
        .header("origin", "https://aura.example.com")
        .json(&json!({"brief": {"topic": "proxied"}}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    Ok(())
}
