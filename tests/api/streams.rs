//! The SSE streams: framing, replay and resume, the hand-over to live, heartbeats and limits.

use std::time::Duration;

use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use uuid::Uuid;

use crate::helpers::{SseItem, TestApp, TestResult, WAIT, eventually, holds, spawn_app, spawn_app_with};

/// A finished job with exactly 50 events, all appended through the real append path.
async fn job_with_50_events(app: &TestApp) -> TestResult<(Uuid, Vec<i64>)> {
    let id = app.create_job("fifty events").await?;
    lifecycle::claim(app.state.store(), id).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    // 2 so far; 47 progress events, then 1 terminal event.
    for i in 0..47 {
        let stage = Stage::ALL[i % 5];
        job.progress(stage, (i * 2) as f64, format!("step {i}")).await?;
    }
    job.cancelled(Some(Stage::Render)).await?;
    let ids = app.sql_event_ids(id).await?;
    assert_eq!(ids.len(), 50);
    Ok((id, ids))
}

#[tokio::test]
async fn stream_history_and_sql_tell_the_same_story() -> TestResult {
    for takeover in TAKEOVER {
        stream_history_and_sql_agree(takeover).await?;
    }
    Ok(())
}

/// Both ways a stream is served: on its own socket (the accept loop's takeover) and by hyper.
const TAKEOVER: [bool; 2] = [true, false];

async fn stream_history_and_sql_agree(takeover: bool) -> TestResult {
    let app = spawn_app_with(|c| c.stream_takeover = takeover).await?;
    let (id, ids) = job_with_50_events(&app).await?;
    let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert_eq!(stream.next().await?, Some(SseItem::Retry(3000)), "the stream opens with retry:");
    let mut streamed = Vec::new();
    while let Some((sid, kind, data)) = tokio::time::timeout(WAIT, stream.next_event()).await?? {
        assert_eq!(data["jobId"], id.to_string());
        streamed.push((sid, kind, data));
    }
    let history = app.history(id).await?;
    let from_history: Vec<_> = history
        .iter()
        .map(|e| {
            (e["id"].as_i64().unwrap_or(-1), e["type"].as_str().unwrap_or("").to_owned(), e["data"].clone())
        })
        .collect();
    assert_eq!(streamed, from_history);
    assert_eq!(streamed.iter().map(|e| e.0).collect::<Vec<_>>(), ids);
    Ok(())
}

#[tokio::test]
async fn resuming_after_every_event_yields_the_rest_exactly_once() -> TestResult {
    let app = spawn_app().await?;
    let (id, ids) = job_with_50_events(&app).await?;
    let path = format!("/api/jobs/{id}/events");
    for k in 0..ids.len() {
        let resume = if k == 0 { 0 } else { ids[k - 1] };
        let want = &ids[k..];
        let header = resume.to_string();
        let by_header = app.stream(&path, &[("Last-Event-ID", &header)]).await?.ids_to_end().await?;
        assert_eq!(by_header, want, "Last-Event-ID {resume}");
        let by_query = app.stream(&format!("{path}?lastEventId={resume}"), &[]).await?.ids_to_end().await?;
        assert_eq!(by_query, want, "lastEventId={resume}");
    }
    // The header wins over the query parameter.
    let both =
        app.stream(&format!("{path}?lastEventId=0"), &[("Last-Event-ID", &ids[47].to_string())]).await?;
    assert_eq!(both.status, 200);
    let mut both = both;
    assert_eq!(both.ids_to_end().await?, ids[48..]);
    // At or past the terminal event: 204, so EventSource stops reconnecting.
    for resume in [ids[49], ids[49] + 1000] {
        let done = app.stream(&path, &[("Last-Event-ID", &resume.to_string())]).await?;
        assert_eq!(done.status, 204);
    }
    Ok(())
}

#[tokio::test]
async fn a_resume_point_that_is_not_a_non_negative_integer_is_400() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("bad resume").await?;
    for bad in ["abc", "-1", "1.5", "1180591620717411303424", ""] {
        for path in [format!("/api/jobs/{id}/events"), "/api/events".to_owned()] {
            let res = app.stream(&path, &[("Last-Event-ID", bad)]).await?;
            assert_eq!(res.status, 400, "header {bad:?} on {path}");
            assert_eq!(res.headers["content-type"], "application/problem+json");
            let q = app.stream(&format!("{path}?lastEventId={}", urlencode(bad)), &[]).await?;
            assert_eq!(q.status, 400, "query {bad:?} on {path}");
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn a_live_stream_replays_then_follows_and_ends_after_the_terminal_event() -> TestResult {
    for takeover in TAKEOVER {
        live_stream_replays_then_follows(takeover).await?;
    }
    Ok(())
}

async fn live_stream_replays_then_follows(takeover: bool) -> TestResult {
    let app = spawn_app_with(|c| c.stream_takeover = takeover).await?;
    let id = app.create_job("live").await?;
    let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let (first, kind, _) = stream.next_event().await?.ok_or("no replay")?;
    assert_eq!(kind, "job-status");
    lifecycle::claim(app.state.store(), id).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    job.start_stage(Stage::Script).await?;
    job.cancelled(Some(Stage::Script)).await?;
    let rest = stream.ids_to_end().await?;
    let all = app.sql_event_ids(id).await?;
    assert_eq!([vec![first], rest].concat(), all);
    Ok(())
}

#[tokio::test]
async fn the_all_jobs_stream_filters_by_repeated_job_ids() -> TestResult {
    let app = spawn_app().await?;
    let a = app.create_job("a").await?;
    let b = app.create_job("b").await?;
    let c = app.create_job("c").await?;
    let mut some = app.stream(&format!("/api/events?jobId={a}&jobId={c}"), &[]).await?;
    let mut all = app.stream("/api/events", &[]).await?;
    for id in [a, b, c] {
        app.client.post(app.url(&format!("/api/jobs/{id}/cancel"))).send().await?;
    }
    let last_c = *app.sql_event_ids(c).await?.last().ok_or("no events")?;
    let mut want_some = [app.sql_event_ids(a).await?, app.sql_event_ids(c).await?].concat();
    want_some.sort();
    assert_eq!(some.ids_until(last_c).await?, want_some);
    let mut want_all = [want_some.clone(), app.sql_event_ids(b).await?].concat();
    want_all.sort();
    assert_eq!(all.ids_until(last_c).await?, want_all);
    // The all-jobs stream resumes like the per-job one.
    let mut resumed = app.stream("/api/events", &[("Last-Event-ID", &want_all[2].to_string())]).await?;
    assert_eq!(resumed.ids_until(last_c).await?, want_all[3..]);
    Ok(())
}

#[tokio::test]
async fn a_keepalive_comment_goes_out_after_the_heartbeat_interval_of_silence() -> TestResult {
    let app = spawn_app_with(|c| c.heartbeat_secs = 1).await?;
    let id = app.create_job("quiet").await?;
    let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let started = tokio::time::Instant::now();
    let mut beats = 0;
    while beats < 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await??.ok_or("stream ended")? {
            SseItem::Comment(text) => {
                assert_eq!(text, "keepalive");
                beats += 1;
            }
            SseItem::Event { .. } | SseItem::Retry(_) => {}
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1900), "two beats need two intervals of silence");
    Ok(())
}

#[tokio::test]
async fn past_the_global_stream_cap_new_streams_get_503_before_any_byte() -> TestResult {
    let app = spawn_app_with(|c| c.max_streams = 2).await?;
    let id = app.create_job("capped").await?;
    let mut one = app.stream("/api/events", &[]).await?;
    let mut two = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    assert_eq!((one.status, two.status), (200, 200));
    let third = app.stream("/api/events", &[]).await?;
    assert_eq!(third.status, 503);
    assert!(third.headers.contains_key("retry-after"));
    assert_eq!(third.headers["content-type"], "application/problem+json");
    assert!(matches!(one.next().await?, Some(SseItem::Retry(_))));
    assert!(matches!(two.next().await?, Some(SseItem::Retry(_))));
    drop(one);
    // The slot frees once the server notices the closed connection.
    eventually(WAIT, || async {
        let status = app.stream("/api/events", &[]).await?.status;
        holds(status == 200, || format!("a new stream answered {status}"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_age_and_the_client_resumes_missing_nothing() -> TestResult {
    for takeover in TAKEOVER {
        stream_ends_at_its_maximum_age(takeover).await?;
    }
    Ok(())
}

async fn stream_ends_at_its_maximum_age(takeover: bool) -> TestResult {
    let app = spawn_app_with(|c| {
        c.max_stream_secs = 1;
        c.stream_takeover = takeover;
    })
    .await?;
    let id = app.create_job("aging").await?;
    lifecycle::claim(app.state.store(), id).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    let producer = {
        let job = job.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                job.progress(Stage::Audio, f64::from(i), format!("tick {i}")).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            job.cancelled(Some(Stage::Audio)).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    };
    let mut seen = Vec::new();
    let mut reconnects = 0;
    loop {
        let resume = seen.last().copied().unwrap_or(0i64).to_string();
        let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[("Last-Event-ID", &resume)]).await?;
        if stream.status == 204 {
            break;
        }
        seen.extend(stream.ids_to_end().await?);
        reconnects += 1;
        assert!(reconnects < 20, "too many reconnects");
    }
    producer.await??;
    assert!(reconnects >= 2, "the stream was cut at least once");
    assert_eq!(seen, app.sql_event_ids(id).await?);
    Ok(())
}

#[tokio::test]
async fn shutting_down_ends_open_streams_cleanly() -> TestResult {
    for takeover in TAKEOVER {
        shutting_down_ends_streams(takeover).await?;
    }
    Ok(())
}

async fn shutting_down_ends_streams(takeover: bool) -> TestResult {
    let app = spawn_app_with(|c| c.stream_takeover = takeover).await?;
    let id = app.create_job("shutdown").await?;
    let mut job_stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let mut all_stream = app.stream("/api/events", &[]).await?;
    assert!(job_stream.next_event().await?.is_some());
    assert!(all_stream.next_event().await?.is_some());
    tokio::time::timeout(WAIT, app.stop()).await??;
    assert_eq!(tokio::time::timeout(WAIT, job_stream.next_event()).await??, None);
    assert_eq!(tokio::time::timeout(WAIT, all_stream.next_event()).await??, None);
    Ok(())
}
