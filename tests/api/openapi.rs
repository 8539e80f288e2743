//! The OpenAPI document describes what the server really answers, and `/metrics` is valid
//! Prometheus text whose counters move.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResult, spawn_app};

/// Validates `body` against the schema the document gives for this operation and status.
fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) -> TestResult {
    let content = &doc["paths"][path][method]["responses"][status.to_string()]["content"];
    let schema = content
        .as_object()
        .and_then(|c| c.values().next())
        .map(|c| c["schema"].clone())
        .ok_or_else(|| format!("no schema for {method} {path} {status}"))?;
    validate(doc, &schema, body).map_err(|e| format!("{method} {path} {status}: {e}").into())
}

fn validate(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("bad schema: {e}"))?;
    validator.validate(instance).map_err(|e| format!("{e} at {}\n{instance}", e.instance_path()))
}

async fn call(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> TestResult<(u16, Value)> {
    let url = app.url(path);
    let req = match method {
        "post" => app.client.post(url).json(&body.unwrap_or(Value::Null)),
        _ => app.client.get(url),
    };
    let res = req.send().await?;
    Ok((res.status().as_u16(), res.json().await?))
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_real_responses_validate_against_it() -> TestResult {
    let app = spawn_app().await?;
    let (status, doc) = app.get_json("/api/openapi.json").await?;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
    for path in ["/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/events", "/api/health"]
    {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(
        doc["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
            .as_object()
            .map(|c| c.contains_key("text/event-stream")),
        Some(true)
    );

    let (status, created) =
        call(&app, "post", "/api/jobs", Some(json!({"brief": {"topic": "documented"}}))).await?;
    check(&doc, "post", "/api/jobs", status, &created)?;
    let id = created["jobId"].as_str().ok_or("no id")?.to_owned();
    for (body, want) in [(json!({"brief": {"topic": ""}}), 422), (json!([]), 422)] {
        let (status, problem) = call(&app, "post", "/api/jobs", Some(body)).await?;
        assert_eq!(status, want);
        check(&doc, "post", "/api/jobs", status, &problem)?;
    }
    let res = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await?;
    assert_eq!(res.status(), 400);
    check(&doc, "post", "/api/jobs", 400, &res.json().await?)?;

    for (path, template) in [
        (format!("/api/jobs/{id}"), "/api/jobs/{job_id}"),
        ("/api/jobs/nope".to_owned(), "/api/jobs/{job_id}"),
        (format!("/api/jobs/{}", uuid::Uuid::new_v4()), "/api/jobs/{job_id}"),
        ("/api/jobs?limit=1".to_owned(), "/api/jobs"),
        ("/api/jobs?limit=0".to_owned(), "/api/jobs"),
        ("/api/health".to_owned(), "/api/health"),
    ] {
        let (status, body) = call(&app, "get", &path, None).await?;
        check(&doc, "get", template, status, &body)?;
    }
    crate::log::run_through_stages(&app, id.parse()?, 1).await?;
    let (status, cancelled) = call(&app, "post", &format!("/api/jobs/{id}/cancel"), None).await?;
    check(&doc, "post", "/api/jobs/{job_id}/cancel", status, &cancelled)?;
    let job = aura::engine::lifecycle::JobHandle::new(app.state.store().clone(), id.parse()?);
    job.cancelled(Some(aura::domain::job::Stage::Render)).await?;
    let (status, conflict) = call(&app, "post", &format!("/api/jobs/{id}/cancel"), None).await?;
    assert_eq!(status, 409);
    check(&doc, "post", "/api/jobs/{job_id}/cancel", status, &conflict)?;

    let (status, history) = call(&app, "get", &format!("/api/jobs/{id}/history"), None).await?;
    check(&doc, "get", "/api/jobs/{job_id}/history", status, &history)?;
    let mut types = std::collections::BTreeSet::new();
    for item in history.as_array().ok_or("not an array")? {
        let kind = item["type"].as_str().ok_or("no type")?;
        let name = aura::http::openapi::event_schema_name(kind).ok_or("undocumented event type")?;
        validate(&doc, &json!({"$ref": format!("#/components/schemas/{name}")}), &item["data"])?;
        types.insert(kind.to_owned());
    }
    assert!(types.len() >= 5, "{types:?}");

    // A wrong payload must not validate: the check can fail.
    let wrong = json!({"jobId": id, "at": "2026-01-01T00:00:00Z", "step": "Nowhere", "state": "Started"});
    assert!(validate(&doc, &json!({"$ref": "#/components/schemas/StepStatusEvent"}), &wrong).is_err());
    Ok(())
}

/// Parses the Prometheus text exposition format strictly enough to catch a broken exposition.
fn parse_prometheus(text: &str) -> TestResult<std::collections::HashMap<String, f64>> {
    let mut typed = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("bad TYPE line")?;
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or("sample without value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line}"))?,
        };
        let name = series.split('{').next().unwrap_or("");
        assert!(name_ok(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
        }
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(typed.contains_key(family) || typed.contains_key(name), "sample without TYPE: {line}");
        samples.insert(series.to_owned(), value);
    }
    Ok(samples)
}

fn sum(samples: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.split('{').next() == Some(name)).map(|(_, v)| v).sum()
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_counters_move() -> TestResult {
    let app = spawn_app().await?;
    let before = parse_prometheus(&app.metrics().await?)?;
    let id = app.create_job("metered").await?;
    crate::log::run_through_stages(&app, id, 1).await?;
    let mut stream = app.stream(&format!("/api/jobs/{id}/events?lastEventId=0"), &[]).await?;
    stream.next_event().await?.ok_or("no event")?;
    let after = parse_prometheus(&app.metrics().await?)?;
    for counter in ["aura_events_appended_total", "aura_events_delivered_total", "aura_events_replayed_total"]
    {
        assert!(sum(&after, counter) > sum(&before, counter), "{counter} did not move");
    }
    assert!(sum(&after, "aura_sqlite_commit_seconds_count") > 0.0);
    assert!(after.keys().any(|k| k.starts_with("aura_jobs{status=\"Running\"}")));
    assert!(after.keys().any(|k| k.starts_with("aura_open_streams{kind=\"job\"}")));
    Ok(())
}
