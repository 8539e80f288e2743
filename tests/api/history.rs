//! History an operator can bound (API.md "History: deletion, retention and the horizon"), on
//! whichever database the run uses: deleting a job (who may, what is left), a deletion a crash
//! cut short, retention by age, a stream or a WebSocket resumed below the oldest kept event, a
//! webhook endpoint that never got a deleted job's events, and the schema's own guard.

use std::time::Duration;

use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestResult, Tokens, WAIT, eventually, holds, spawn_app_in, spawn_app_with};

/// Takes a job from Queued to Failed through the lifecycle, as a worker would.
async fn fail(app: &TestApp, id: Uuid) -> TestResult {
    let store = app.state.store();
    lifecycle::claim(store, id).await?;
    JobHandle::new(store.clone(), id)
        .fail(Some(Stage::Script), "ffmpeg-failed", "the test ended it".into())
        .await?;
    Ok(())
}

/// A finished job with a file in its folder, as a render leaves one.
async fn finished_job(app: &TestApp, topic: &str) -> TestResult<Uuid> {
    let id = app.create_job(topic).await?;
    fail(app, id).await?;
    let folder = app.data_path(&format!("jobs/{id}"));
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("output.mp4"), b"not really a video")?;
    Ok(id)
}

async fn delete(app: &TestApp, id: Uuid, token: Option<&str>) -> TestResult<reqwest::Response> {
    let mut req = app.client.request(Method::DELETE, app.url(&format!("/api/jobs/{id}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    Ok(req.send().await?)
}

/// Every route of a job answers 404 and no row of it is left.
async fn gone(app: &TestApp, id: Uuid) -> TestResult {
    for path in ["", "/history", "/events", "/output"] {
        let res = app.client.get(app.url(&format!("/api/jobs/{id}{path}"))).send().await?;
        assert_eq!(res.status(), 404, "GET /api/jobs/{{id}}{path} after the deletion");
    }
    assert!(app.sql_event_ids(id).await?.is_empty(), "no event of the job is left");
    assert!(!app.data_path(&format!("jobs/{id}")).exists(), "its folder is gone");
    Ok(())
}

#[tokio::test]
async fn a_finished_job_is_deleted_with_its_events_and_files_and_its_routes_answer_404() -> TestResult {
    let app = spawn_app_with(|_| {}).await?;
    let kept = finished_job(&app, "kept").await?;
    let id = finished_job(&app, "deleted").await?;
    let before = app.sql_event_ids(id).await?;
    assert!(!before.is_empty());

    let res = delete(&app, id, None).await?;
    assert_eq!(res.status(), 204);
    gone(&app, id).await?;
    assert_eq!(delete(&app, id, None).await?.status(), 404, "a second deletion finds nothing");
    assert_eq!(app.job(kept).await?["status"], "Failed", "the other job is untouched");
    assert!(app.data_path(&format!("jobs/{kept}")).exists());

    // Ids are never reused: the next event is above every deleted one.
    let next = app.create_job("after").await?;
    let first = app.sql_event_ids(next).await?;
    assert!(first[0] > *before.last().ok_or("no events")?, "{first:?} after {before:?}");

    let bad = app.client.delete(app.url("/api/jobs/not-a-uuid")).send().await?;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    app.stop().await
}

#[tokio::test]
async fn only_a_finished_job_can_be_deleted_by_its_owner_or_an_admin() -> TestResult {
    let mut made = None;
    let app = spawn_app_with(|cfg| {
        let tokens = Tokens::of(cfg);
        made = Some((|| {
            Ok::<_, anyhow::Error>((
                tokens.create("alice", false)?,
                tokens.create("bob", false)?,
                tokens.create("root", true)?,
            ))
        })());
    })
    .await?;
    let (alice, bob, root) = made.ok_or("the tweak did not run")??;
    let create = |token: String| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(app.url("/api/jobs"))
                .bearer_auth(token)
                .json(&json!({"brief": {"topic": "owned"}}))
                .send()
                .await?;
            let body: Value = res.json().await?;
            TestResult::Ok(body["jobId"].as_str().ok_or("no jobId")?.parse::<Uuid>()?)
        }
    };

    let queued = create(alice.clone()).await?;
    let res = delete(&app, queued, Some(&alice)).await?;
    assert_eq!(res.status(), 409, "a Queued job is not deleted");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    lifecycle::claim(app.state.store(), queued).await?;
    assert_eq!(delete(&app, queued, Some(&alice)).await?.status(), 409, "nor a Running one");
    assert_eq!(app.sql_event_ids(queued).await?.len(), 2, "a refused deletion changes nothing");

    JobHandle::new(app.state.store().clone(), queued).fail(None, "ffmpeg-failed", "ended".into()).await?;
    assert_eq!(delete(&app, queued, Some(&bob)).await?.status(), 403, "another user's job");
    assert_eq!(delete(&app, queued, None).await?.status(), 401);
    assert_eq!(app.sql_event_ids(queued).await?.len(), 3, "still all there");
    assert_eq!(delete(&app, queued, Some(&alice)).await?.status(), 204, "its owner");

    let other = create(bob.clone()).await?;
    fail(&app, other).await?;
    assert_eq!(delete(&app, other, Some(&root)).await?.status(), 204, "an admin");
    assert!(app.sql_event_ids(other).await?.is_empty());
    app.stop().await
}

/// The state a crash leaves between the deletion's commit and the end of its files: the job's
/// rows are gone, the deletion is recorded, the folder is still there. The next start finishes it.
#[tokio::test]
async fn a_deletion_cut_short_by_a_crash_is_finished_at_the_next_start() -> TestResult {
    let mut app = spawn_app_with(|_| {}).await?;
    let id = finished_job(&app, "interrupted").await?;
    let key = id.to_string();
    // The deletion's own transaction, as the writer commits it, and then the crash.
    if let Some(mut conn) = app.pg().await? {
        use sqlx::Connection;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO deletions (job_id, at) VALUES ($1, '2026-12-07T00:00:00.000000Z')")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM events WHERE job_id = $1").bind(&key).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM jobs WHERE job_id = $1").bind(&key).execute(&mut *tx).await?;
        tx.commit().await?;
    } else {
        use sqlx::Connection;
        let mut conn = app.sql().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO deletions (job_id, at) VALUES (?, '2026-12-07T00:00:00.000000Z')")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM events WHERE job_id = ?").bind(&key).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM jobs WHERE job_id = ?").bind(&key).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let dir = app.keep_dir()?;
    app.stop().await?;
    assert!(dir.path().join(format!("data/jobs/{id}/output.mp4")).exists(), "the crash left the files");

    let app = spawn_app_in(dir, |_| {}).await?;
    gone(&app, id).await?;
    assert!(app.state.store().pending_deletions(10).await?.is_empty(), "and forgot the deletion");
    app.stop().await
}

/// The schema itself keeps events append-only for every statement but a recorded deletion of a
/// finished job.
#[tokio::test]
async fn the_schema_refuses_every_delete_of_events_but_a_recorded_deletion_of_a_finished_job() -> TestResult {
    let app = spawn_app_with(|_| {}).await?;
    let running = app.create_job("running").await?;
    lifecycle::claim(app.state.store(), running).await?;
    let finished = finished_job(&app, "finished").await?;
    let tries: Vec<(String, Uuid)> = vec![
        ("DELETE FROM events WHERE job_id = '{id}'".into(), finished),
        ("INSERT INTO deletions (job_id, at) VALUES ('{id}', 'now')".into(), running),
        ("UPDATE events SET data = '{{}}' WHERE job_id = '{id}'".into(), finished),
    ];
    for (statement, id) in tries {
        let statement = statement.replace("{id}", &id.to_string());
        let refused = match app.pg().await? {
            Some(mut conn) => {
                sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut conn).await.is_err()
            }
            None => sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut app.sql().await?)
                .await
                .is_err(),
        };
        assert!(refused, "{statement} was let through");
    }
    assert_eq!(app.sql_event_ids(finished).await?.len(), 3);
    assert_eq!(app.sql_event_ids(running).await?.len(), 2);
    app.stop().await
}

#[tokio::test]
async fn job_retention_deletes_finished_jobs_older_than_it_and_nothing_else() -> TestResult {
    let app = spawn_app_with(|cfg| cfg.job_retention = aura::config::Retention(Some(Duration::from_secs(1))))
        .await?;
    let queued = app.create_job("waits").await?;
    let running = app.create_job("runs").await?;
    lifecycle::claim(app.state.store(), running).await?;
    let old = finished_job(&app, "old").await?;
    eventually(WAIT, || async {
        let status = app.client.get(app.url(&format!("/api/jobs/{old}"))).send().await?.status();
        holds(status == 404, || format!("the finished job still answers {status}"))
    })
    .await?;
    gone(&app, old).await?;
    assert_eq!(app.job(queued).await?["status"], "Queued", "a job that has not finished stays");
    assert_eq!(app.job(running).await?["status"], "Running");
    app.stop().await
}

#[tokio::test]
async fn job_retention_with_an_export_folder_writes_each_job_whole_before_deleting_it() -> TestResult {
    let exports = tempfile::tempdir()?;
    let folder = exports.path().join("kept");
    let to = folder.clone();
    let app = spawn_app_with(move |cfg| {
        cfg.job_retention = aura::config::Retention(Some(Duration::from_secs(1)));
        cfg.retention_export = Some(to);
    })
    .await?;
    let id = app.create_job("exported").await?;
    fail(&app, id).await?;
    let history = app.history(id).await?;
    eventually(WAIT, || async {
        let status = app.client.get(app.url(&format!("/api/jobs/{id}"))).send().await?.status();
        holds(status == 404, || format!("the finished job still answers {status}"))
    })
    .await?;
    let text = std::fs::read_to_string(folder.join(format!("{id}.ndjson")))?;
    let lines: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), history.len(), "every event, once: {text}");
    for (line, event) in lines.iter().zip(&history) {
        assert_eq!(line["jobId"], id.to_string());
        assert_eq!(
            (&line["id"], &line["type"], &line["data"]),
            (&event["id"], &event["type"], &event["data"])
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&folder)?.flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left: {leftovers:?}");
    app.stop().await
}

#[tokio::test]
async fn a_stream_resumed_below_the_oldest_kept_event_starts_there_and_says_so() -> TestResult {
    let app = spawn_app_with(|_| {}).await?;
    let first = finished_job(&app, "first").await?;
    let deleted_ids = app.sql_event_ids(first).await?;
    let kept = finished_job(&app, "kept").await?;
    let kept_ids = app.sql_event_ids(kept).await?;
    assert_eq!(delete(&app, first, None).await?.status(), 204);
    let oldest = kept_ids[0];

    // Resumed from an id whose successors were deleted: the oldest kept event comes first.
    let resume = deleted_ids[0].to_string();
    for path in ["/api/events".to_owned(), format!("/api/jobs/{kept}/events")] {
        let mut stream = app.stream(&path, &[("Last-Event-ID", resume.as_str())]).await?;
        assert_eq!(stream.status, 200);
        assert_eq!(
            stream.headers.get("aura-history-start").and_then(|v| v.to_str().ok()),
            Some(oldest.to_string().as_str()),
            "{path}"
        );
        let ids = tokio::time::timeout(WAIT, stream.ids_until(*kept_ids.last().ok_or("no ids")?)).await??;
        assert_eq!(ids, kept_ids, "{path}: from the oldest kept event, each once");
    }

    // A resume point inside the kept history, or just below it: no horizon to tell.
    for inside in [kept_ids[0], kept_ids[0] - 1] {
        let inside = inside.to_string();
        let stream = app.stream("/api/events", &[("Last-Event-ID", inside.as_str())]).await?;
        assert!(stream.headers.get("aura-history-start").is_none(), "resumed from {inside}");
    }
    // Nor without a resume point.
    let stream = app.stream(&format!("/api/jobs/{kept}/events"), &[]).await?;
    assert!(stream.headers.get("aura-history-start").is_none());

    // The WebSocket says it in its first message.
    let ws_url = format!("{}/api/ws?lastEventId={resume}", app.base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let first_message = tokio::time::timeout(WAIT, socket.next()).await?.ok_or("the socket closed")??;
    let told: Value = serde_json::from_str(first_message.to_text()?)?;
    assert_eq!(told, json!({"historyStart": oldest}));
    let next = tokio::time::timeout(WAIT, socket.next()).await?.ok_or("the socket closed")??;
    let event: Value = serde_json::from_str(next.to_text()?)?;
    assert_eq!(event["id"], oldest, "then the oldest kept event: {event}");
    socket.close(None).await?;
    app.stop().await
}

#[tokio::test]
async fn a_webhook_endpoint_that_never_got_a_deleted_jobs_events_is_told_how_many() -> TestResult {
    let app = spawn_app_with(|cfg| cfg.webhook_allow_private = true).await?;
    // Nothing listens there: every delivery fails, so the endpoint's position stays put.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let res = app
        .client
        .post(app.url("/api/webhooks"))
        .json(&json!({"url": format!("http://127.0.0.1:{closed}/hook"), "events": ["job-status", "job-failed"]}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let endpoint = res.json::<Value>().await?["id"].as_str().ok_or("no id")?.to_owned();
    let id = finished_job(&app, "undelivered").await?;
    assert_eq!(delete(&app, id, None).await?.status(), 204);

    let (status, log) = app.get_json(&format!("/api/webhooks/{endpoint}/deliveries")).await?;
    assert_eq!(status, 200);
    let missed: Vec<&Value> = log["deliveries"]
        .as_array()
        .ok_or("no deliveries")?
        .iter()
        .filter(|d| d["outcome"] == "missed")
        .collect();
    assert_eq!(missed.len(), 1, "{log}");
    assert_eq!(missed[0]["missed"], 3, "Queued, Running and job-failed were never received: {log}");
    assert_eq!(missed[0]["error"], "deleted-before-delivery");
    app.stop().await
}

#[tokio::test]
async fn check_compact_gives_the_space_of_deleted_jobs_back_to_the_file() -> TestResult {
    if crate::helpers::sqlite_only("the SQLite file's pages") {
        return Ok(());
    }
    let mut app = spawn_app_with(|_| {}).await?;
    let mut conn = app.sql().await?;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut conn).await?;
    assert_eq!(mode, 2, "a new file gives pages back after deletions (incremental)");
    drop(conn);
    let big = "x".repeat(50_000);
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = app.create_job(&format!("{n}")).await?;
        JobHandle::new(app.state.store().clone(), id).warn(None, "note", big.clone()).await?;
        fail(&app, id).await?;
        ids.push(id);
    }
    for id in ids {
        assert_eq!(delete(&app, id, None).await?.status(), 204);
    }
    let dir = app.keep_dir()?;
    app.stop().await?;
    let out = tokio::process::Command::new(crate::cli::AURA)
        .args(["check", "--compact", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .await?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "{stdout}");
    let sizes: Vec<u64> = stdout
        .lines()
        .find(|l| l.starts_with("compacted:"))
        .ok_or("no compacted line")?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(matches!(sizes.as_slice(), [before, after] if after <= before), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn aura_jobs_delete_deletes_a_finished_job_through_the_api() -> TestResult {
    let app = spawn_app_with(|_| {}).await?;
    let id = finished_job(&app, "from the command line").await?;
    let out = tokio::process::Command::new(crate::cli::AURA)
        .args(["jobs", "delete", &id.to_string(), "--server", &app.base])
        .env_remove("AURA_TOKEN")
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    gone(&app, id).await?;
    let again = tokio::process::Command::new(crate::cli::AURA)
        .args(["jobs", "delete", &id.to_string(), "--server", &app.base])
        .output()
        .await?;
    assert!(!again.status.success(), "a job that is gone is an error");
    app.stop().await
}
