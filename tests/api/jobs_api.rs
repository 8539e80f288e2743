//! The job resources: creation and validation, snapshots, the list, cancel and history.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResult, spawn_app};

fn assert_problem(res: &reqwest::Response, status: u16) {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "a {status} answer is problem+json"
    );
}

async fn problem_body(res: reqwest::Response) -> TestResult<Value> {
    let body: Value = res.json().await?;
    for key in ["title", "status", "detail"] {
        assert!(body.get(key).is_some(), "problem without {key}: {body}");
    }
    let text = body.to_string();
    for leak in ["/tmp", "SELECT", "sqlx", "panicked", ".rs:"] {
        assert!(!text.contains(leak), "problem leaks {leak}: {text}");
    }
    Ok(body)
}

#[tokio::test]
async fn creating_a_job_answers_201_with_its_location_and_stream() -> TestResult {
    let app = spawn_app().await?;
    let res = app
        .post_job(&json!({
            "brief": {"topic": "Test Video", "audience": "Developers", "goal": "Test SSE",
                      "tone": "Technical", "language": "en", "aspect": "Widescreen16x9"},
            "planSpec": {"targetDuration": "00:01:00", "pacing": "Conversational",
                         "density": "Balanced", "style": "Modern"},
            "voiceSpec": {"voiceName": "David", "rate": 1.0, "pitch": 1.0, "pause": "Natural"},
            "renderSpec": {"res": "1080p", "container": "mp4", "videoBitrateK": 5000,
                           "audioBitrateK": 192, "fps": 30, "codec": "h264", "qualityLevel": "High"}
        }))
        .await?;
    assert_eq!(res.status(), 201);
    let location = res.headers().get("location").ok_or("no Location")?.to_str()?.to_owned();
    let body: Value = res.json().await?;
    let id = body["jobId"].as_str().ok_or("no jobId")?;
    assert_eq!(location, format!("/api/jobs/{id}"));
    assert_eq!(body["status"], "Queued");
    assert_eq!(body["eventsUrl"], format!("/api/jobs/{id}/events"));

    let (status, snap) = app.get_json(&location).await?;
    assert_eq!(status, 200);
    for key in [
        "jobId",
        "status",
        "stage",
        "percent",
        "createdAt",
        "startedAt",
        "finishedAt",
        "attempt",
        "error",
        "output",
        "lastEventId",
        "request",
    ] {
        assert!(snap.get(key).is_some(), "snapshot lacks {key}");
    }
    assert_eq!(snap["request"]["planSpec"]["targetDuration"], "00:01:00");
    assert_eq!(snap["lastEventId"], 1);
    Ok(())
}

#[tokio::test]
async fn topics_round_trip_byte_for_byte() -> TestResult {
    let app = spawn_app().await?;
    for topic in
        ["It's 100% \"quoted\": a\\b", "'; DROP TABLE jobs; --", "👋 שלום émoji ✨", "<script>x</script>"]
    {
        let id = app.create_job(topic).await?;
        let (_, snap) = app.get_json(&format!("/api/jobs/{id}")).await?;
        assert_eq!(snap["request"]["brief"]["topic"], topic);
        let history = app.history(id).await?;
        assert_eq!(history[0]["data"]["request"]["brief"]["topic"], topic);
    }
    assert_eq!(app.table_counts().await?, (4, 4), "the tables survived");
    Ok(())
}

/// Sends a raw body and checks it is refused with `status` while the tables stay as they were.
async fn refused(app: &TestApp, body: impl Into<reqwest::Body>, status: u16) -> TestResult<Value> {
    let before = app.table_counts().await?;
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_problem(&res, status);
    let problem = problem_body(res).await?;
    assert_eq!(app.table_counts().await?, before, "a refused request changed the tables");
    Ok(problem)
}

#[tokio::test]
async fn bad_requests_are_refused_with_problem_json_and_change_nothing() -> TestResult {
    let app = spawn_app().await?;
    refused(&app, "{\"brief\": ", 400).await?;
    refused(&app, "not json", 400).await?;
    refused(&app, "", 400).await?;
    refused(&app, vec![b'{'; 70 * 1024], 413).await?;
    let cases = [
        (json!({}), "brief"),
        (json!({"brief": {}}), "brief.topic"),
        (json!({"brief": {"topic": ""}}), "brief.topic"),
        (json!({"brief": {"topic": "x".repeat(201)}}), "brief.topic"),
        (json!({"brief": {"topic": 7}}), "brief.topic"),
        (json!({"brief": {"topic": "t", "aspect": "Round"}}), "brief.aspect"),
        (
            json!({"brief": {"topic": "t"}, "planSpec": {"targetDuration": "00:00:01"}}),
            "planSpec.targetDuration",
        ),
        (
            json!({"brief": {"topic": "t"}, "planSpec": {"targetDuration": "00:10:01"}}),
            "planSpec.targetDuration",
        ),
        (
            json!({"brief": {"topic": "t"}, "planSpec": {"targetDuration": "1 minute"}}),
            "planSpec.targetDuration",
        ),
        (json!({"brief": {"topic": "t"}, "voiceSpec": {"rate": 0.4}}), "voiceSpec.rate"),
        (json!({"brief": {"topic": "t"}, "voiceSpec": {"pitch": 2.5}}), "voiceSpec.pitch"),
        (json!({"brief": {"topic": "t"}, "renderSpec": {"fps": 0}}), "renderSpec.fps"),
        (json!({"brief": {"topic": "t"}, "renderSpec": {"fps": 61}}), "renderSpec.fps"),
        (json!({"brief": {"topic": "t"}, "renderSpec": {"fps": 29.97}}), "renderSpec.fps"),
        (json!({"brief": {"topic": "t"}, "renderSpec": {"res": "4k"}}), "renderSpec.res"),
        (json!({"brief": {"topic": "t"}, "renderSpec": {"container": "avi"}}), "renderSpec.container"),
        (
            json!({"brief": {"topic": "t"}, "renderSpec": {"container": "mp4", "codec": "vp9"}}),
            "renderSpec.codec",
        ),
        (
            json!({"brief": {"topic": "t"}, "renderSpec": {"container": "webm", "codec": "h264"}}),
            "renderSpec.codec",
        ),
        (json!([1, 2, 3]), "$"),
    ];
    for (body, field) in cases {
        let problem = refused(&app, body.to_string(), 422).await?;
        assert_eq!(problem["field"], field, "{body}");
        assert!(problem["detail"].as_str().unwrap_or("").contains(field), "{problem}");
        let errors = problem["errors"].as_array().ok_or("no errors list")?;
        assert!(errors.iter().any(|e| e["field"] == field && e["pointer"].is_string()));
    }
    assert_eq!(app.table_counts().await?, (0, 0));
    Ok(())
}

#[tokio::test]
async fn ids_that_are_not_uuids_get_400_and_unknown_ones_404_on_every_route() -> TestResult {
    let app = spawn_app().await?;
    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        ("GET", "/api/jobs/{}"),
        ("POST", "/api/jobs/{}/cancel"),
        ("GET", "/api/jobs/{}/history"),
        ("GET", "/api/jobs/{}/events"),
        ("GET", "/api/events?jobId={}"),
    ] {
        for (id, status) in [("not-a-uuid".to_owned(), 400), (unknown.to_string(), 404)] {
            let url = app.url(&path.replace("{}", &id));
            let req = if method == "GET" { app.client.get(url) } else { app.client.post(url) };
            let res = req.send().await?;
            assert_problem(&res, status);
            problem_body(res).await?;
        }
    }
    let res = app.client.get(app.url("/api/nothing-here")).send().await?;
    assert_problem(&res, 404);
    let res = app.client.delete(app.url("/api/jobs")).send().await?;
    assert_problem(&res, 405);
    Ok(())
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_at_once_and_a_second_cancel_conflicts() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("cancel").await?;
    let res = app.client.post(app.url(&format!("/api/jobs/{id}/cancel"))).send().await?;
    assert_eq!(res.status(), 202);
    let snap: Value = res.json().await?;
    assert_eq!(snap["status"], "Cancelled");
    assert!(snap["finishedAt"].is_string());
    let history = app.history(id).await?;
    assert_eq!(history.last().map(|e| e["type"].clone()), Some(json!("job-cancelled")));
    assert_eq!(history.last().map(|e| e["data"]["step"].clone()), Some(Value::Null));
    let again = app.client.post(app.url(&format!("/api/jobs/{id}/cancel"))).send().await?;
    assert_problem(&again, 409);
    Ok(())
}

#[tokio::test]
async fn the_list_pages_newest_first_and_filters_by_status() -> TestResult {
    let app = spawn_app().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_job(&format!("job {i}")).await?);
    }
    let res = app.client.post(app.url(&format!("/api/jobs/{}/cancel", ids[1]))).send().await?;
    assert_eq!(res.status(), 202);

    let mut seen = Vec::new();
    let mut url = "/api/jobs?limit=2".to_owned();
    loop {
        let (status, page) = app.get_json(&url).await?;
        assert_eq!(status, 200);
        for job in page["jobs"].as_array().ok_or("no jobs")? {
            seen.push(job["jobId"].as_str().ok_or("no id")?.parse::<uuid::Uuid>()?);
        }
        match page["next"].as_str() {
            Some(next) => url = format!("/api/jobs?limit=2&before={next}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, every job once");

    let (_, cancelled) = app.get_json("/api/jobs?status=Cancelled").await?;
    let cancelled = cancelled["jobs"].as_array().ok_or("no jobs")?.clone();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["jobId"], ids[3].to_string());

    for bad in ["status=Sleeping", "limit=0", "limit=x", "before=abc", "before=-1"] {
        let res = app.client.get(app.url(&format!("/api/jobs?{bad}"))).send().await?;
        assert_problem(&res, 400);
    }
    Ok(())
}

#[tokio::test]
async fn history_pages_by_after_and_limit() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("history").await?;
    crate::log::run_through_stages(&app, id, 2).await?;
    let all = app.history(id).await?;
    let ids: Vec<i64> = all.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, app.sql_event_ids(id).await?);
    for e in &all {
        assert!(e["type"].is_string() && e["data"].is_object() && e["createdAt"].is_string());
        assert_eq!(e["data"]["at"], e["createdAt"]);
    }
    let (_, page) = app.get_json(&format!("/api/jobs/{id}/history?after={}&limit=3", ids[2])).await?;
    let page: Vec<i64> =
        page.as_array().ok_or("not an array")?.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(page, ids[3..6]);
    for bad in ["after=-1", "after=x", "limit=0"] {
        let res = app.client.get(app.url(&format!("/api/jobs/{id}/history?{bad}"))).send().await?;
        assert_problem(&res, 400);
    }
    Ok(())
}

#[tokio::test]
async fn health_reports_the_database_and_metrics_are_prometheus_text() -> TestResult {
    let app = spawn_app().await?;
    let (status, health) = app.get_json("/api/health").await?;
    assert_eq!(health["database"], "ok");
    if status == 200 {
        assert_eq!(health["status"], "ok");
        assert!(health["ffmpeg"].is_string());
    }
    app.create_job("count me").await?;
    let res = app.client.get(app.url("/metrics")).send().await?;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str()?.starts_with("text/plain"));
    let text = crate::helpers::without_node(&res.text().await?);
    assert!(text.contains("aura_jobs{status=\"Queued\"} 1"), "{text}");
    assert!(text.contains("aura_events_appended_total"), "{text}");
    assert!(text.contains("aura_open_streams_total"), "{text}");
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_a_content_length() -> TestResult {
    let app = spawn_app().await?;
    for size in [64 * 1024 + 1, 200 * 1024, 900 * 1024] {
        for _ in 0..10 {
            let body = format!("{{\"brief\": {{\"topic\": \"{}\"}}}}", "x".repeat(size));
            let res = app
                .client
                .post(app.url("/api/jobs"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            assert_problem(&res, 413);
        }
    }
    // Without a Content-Length (chunked), the limit holds as well.
    let chunks = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8 * 1024])));
    let res = app.client.post(app.url("/api/jobs")).body(reqwest::Body::wrap_stream(chunks)).send().await?;
    assert_problem(&res, 413);
    assert_eq!(app.table_counts().await?, (0, 0));
    Ok(())
}
