//! The event log and its projection: the jobs row equals the fold of the events, foreign rows
//! reach streams, and ids stay in commit order.

use std::time::{Duration, Instant};

use aura::domain::event::EventBody;
use aura::domain::job::{JobState, Stage};
use aura::engine::lifecycle::{self, JobHandle};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestResult, WAIT, spawn_app};

/// Appends a realistic life through the real append path: claim, stages, progress, a warning.
pub async fn run_through_stages(
    app: &crate::helpers::TestApp,
    job_id: Uuid,
    progress_per_stage: usize,
) -> TestResult {
    let store = app.state.store();
    lifecycle::claim(store, job_id).await?;
    let job = JobHandle::new(store.clone(), job_id);
    for stage in Stage::ALL {
        job.start_stage(stage).await?;
        for i in 0..progress_per_stage {
            let pct = 100.0 * i as f64 / progress_per_stage as f64;
            job.progress(stage, pct, format!("{} step {i}", stage.name())).await?;
        }
        if stage == Stage::Audio {
            job.warn(Some(stage), "voice-substituted", "voice \"X\" is unknown; using kal16".into()).await?;
        }
        job.complete_stage(stage, format!("{} done", stage.name())).await?;
    }
    Ok(())
}

/// Folds the rows of `events` read with plain SQL, the way `aura check` does.
async fn fold_from_sql(app: &crate::helpers::TestApp, job_id: Uuid) -> TestResult<JobState> {
    let mut conn = app.sql().await?;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, type, data FROM events WHERE job_id = ? ORDER BY id")
            .bind(job_id.to_string())
            .fetch_all(&mut conn)
            .await?;
    let mut state = None;
    for (id, kind, data) in rows {
        let decoded = EventBody::decode(&kind, &data).ok_or("undecodable event")?;
        state = Some(JobState::apply(state, decoded.job_id, id, decoded.at, &decoded.body)?);
    }
    Ok(state.ok_or("no events")?)
}

#[tokio::test]
async fn the_jobs_row_always_equals_the_fold_of_its_events() -> TestResult {
    if crate::helpers::sqlite_only("reads the SQLite file") {
        return Ok(());
    }
    let app = spawn_app().await?;
    let running = app.create_job("fold me").await?;
    let queued = app.create_job("stay queued").await?;
    let cancelled = app.create_job("cancel me").await?;
    run_through_stages(&app, running, 3).await?;
    let job = JobHandle::new(app.state.store().clone(), running);
    let cancel = app.client.post(app.url(&format!("/api/jobs/{cancelled}/cancel"))).send().await?;
    assert_eq!(cancel.status(), 202);
    for id in [running, queued, cancelled] {
        assert_eq!(Some(fold_from_sql(&app, id).await?), app.state.store().job(id).await?, "job {id}");
    }
    job.fail(Some(Stage::Render), "ffmpeg-failed", "the encoder stopped".into()).await?;
    let folded = fold_from_sql(&app, running).await?;
    assert_eq!(Some(folded.clone()), app.state.store().job(running).await?);
    assert_eq!(folded.status.name(), "Failed");
    assert_eq!(folded.percent, 100.0);
    // A terminal job takes no more events.
    assert!(job.progress(Stage::Render, 10.0, "late".into()).await.is_err());
    Ok(())
}

#[tokio::test]
async fn percent_never_goes_down_within_an_attempt() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("monotonic").await?;
    lifecycle::claim(app.state.store(), id).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    job.progress(Stage::Visuals, 50.0, "half".into()).await?;
    let back = job.progress(Stage::Audio, 10.0, "earlier stage".into()).await?;
    assert_eq!(back.state.percent, 50.0, "a lower report is clamped");
    let mut last = -1.0;
    for e in app.history(id).await? {
        if let Some(p) = e["data"]["percent"].as_f64() {
            assert!(p >= last, "percent went down: {p} after {last}");
            last = p;
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_event_inserted_by_another_connection_reaches_an_open_stream_within_a_second() -> TestResult {
    if crate::helpers::sqlite_only("another process writing to the SQLite file") {
        return Ok(());
    }
    let app = spawn_app().await?;
    let id = app.create_job("foreign writer").await?;
    let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let (first, _, _) = stream.next_event().await?.ok_or("no first event")?;

    let mut conn = app.sql().await?;
    let data = json!({"jobId": id, "at": "2026-01-01T00:00:00.000000Z", "code": "maintenance",
                      "message": "written by\na script", "step": null});
    let inserted_at = Instant::now();
    let foreign: i64 = sqlx::query_scalar(
        "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'warning', ?, ?) RETURNING id",
    )
    .bind(id.to_string())
    .bind(serde_json::to_string_pretty(&data)?)
    .bind("2026-01-01T00:00:00.000000Z")
    .fetch_one(&mut conn)
    .await?;
    assert!(foreign > first);

    let (got, kind, payload) =
        tokio::time::timeout(Duration::from_secs(1), stream.next_event()).await??.ok_or("stream ended")?;
    assert!(inserted_at.elapsed() < Duration::from_secs(1));
    assert_eq!((got, kind.as_str()), (foreign, "warning"));
    assert_eq!(payload["message"], "written by\na script", "multi-line JSON arrives as one data line");
    // Replayed from the table later, the foreign row is normalized the same way.
    let mut replay = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let mut replayed = None;
    while let Some((eid, _, data)) = tokio::time::timeout(WAIT, replay.next_event()).await?? {
        if eid == foreign {
            replayed = Some(data);
            break;
        }
    }
    assert_eq!(replayed.map(|d| d["message"].clone()), Some(serde_json::json!("written by\na script")));

    // Our own appends after it keep the order.
    let cancel = app.client.post(app.url(&format!("/api/jobs/{id}/cancel"))).send().await?;
    assert_eq!(cancel.status(), 202);
    let (last, kind, _) = tokio::time::timeout(WAIT, stream.next_event()).await??.ok_or("stream ended")?;
    assert!(last > foreign);
    assert_eq!(kind, "job-cancelled");
    Ok(())
}

#[tokio::test]
async fn events_cannot_be_changed_or_deleted() -> TestResult {
    if crate::helpers::sqlite_only("the SQLite triggers") {
        return Ok(());
    }
    let app = spawn_app().await?;
    app.create_job("append only").await?;
    let mut conn = app.sql().await?;
    assert!(sqlx::query("UPDATE events SET type = 'x'").execute(&mut conn).await.is_err());
    assert!(sqlx::query("DELETE FROM events").execute(&mut conn).await.is_err());
    assert_eq!(app.table_counts().await?, (1, 1));
    Ok(())
}

#[tokio::test]
async fn the_database_is_in_wal_mode_with_the_schema_from_migrations() -> TestResult {
    if crate::helpers::sqlite_only("SQLite pragmas") {
        return Ok(());
    }
    let app = spawn_app().await?;
    let mut conn = app.sql().await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await?;
    assert_eq!(mode, "wal");
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&mut conn).await?;
    assert!(applied >= 1);
    Ok(())
}

#[tokio::test]
async fn decisions_on_one_job_committed_in_one_group_fold_to_its_row() -> TestResult {
    if crate::helpers::sqlite_only("reads the SQLite file") {
        return Ok(());
    }
    let app = spawn_app().await?;
    let store = app.state.store();
    // Created and cancelled in the same group: the new row is written with its final state.
    let id = Uuid::now_v7();
    let spec = aura::domain::spec::JobSpec::from_value(&json!({"brief": {"topic": "one group"}}))
        .map_err(|e| e.to_string())?;
    let (created, cancelled) =
        tokio::join!(lifecycle::create(store, id, spec, "local".into()), lifecycle::cancel(store, id));
    created?;
    cancelled?;
    assert_eq!(store.job(id).await?.map(|j| j.status.name()), Some("Cancelled"));
    assert_eq!(Some(fold_from_sql(&app, id).await?), store.job(id).await?);

    // A hundred appends racing on one job: every one lands, in order, and the row follows.
    let busy = app.create_job("busy").await?;
    lifecycle::claim(store, busy).await?;
    let job = JobHandle::new(store.clone(), busy);
    let results = futures_util::future::join_all(
        (0..100).map(|i| job.progress(Stage::Visuals, f64::from(i), format!("step {i}"))),
    )
    .await;
    for r in results {
        r?;
    }
    job.cancelled(Some(Stage::Visuals)).await?;
    assert_eq!(app.sql_event_ids(busy).await?.len(), 2 + 100 + 1);
    assert_eq!(Some(fold_from_sql(&app, busy).await?), store.job(busy).await?);
    Ok(())
}

#[tokio::test]
async fn a_group_that_sqlite_refuses_leaves_no_trace_and_the_next_group_commits() -> TestResult {
    if crate::helpers::sqlite_only("a trigger added to the SQLite file") {
        return Ok(());
    }
    let app = spawn_app().await?;
    let store = app.state.store();
    let id = app.create_job("refused group").await?;
    lifecycle::claim(store, id).await?;
    let job = JobHandle::new(store.clone(), id);
    let before = app.sql_event_ids(id).await?;
    // Another connection makes SQLite refuse one kind of event mid-group.
    let mut conn = app.sql().await?;
    sqlx::query(
        "CREATE TRIGGER refuse_warnings BEFORE INSERT ON events WHEN NEW.type = 'warning'
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
    )
    .execute(&mut conn)
    .await?;
    let refused = job.warn(None, "test-warning", "never stored".into()).await;
    assert!(refused.is_err(), "the failed group answers its caller with the cause: {refused:?}");
    assert_eq!(app.sql_event_ids(id).await?, before, "a failed group leaves no event behind");
    sqlx::query("DROP TRIGGER refuse_warnings").execute(&mut conn).await?;
    // The transaction of the failed group was rolled back: the next group commits.
    job.warn(None, "test-warning", "stored".into()).await?;
    job.progress(Stage::Script, 10.0, "after".into()).await?;
    assert_eq!(app.sql_event_ids(id).await?.len(), before.len() + 2);
    assert_eq!(Some(fold_from_sql(&app, id).await?), store.job(id).await?);
    Ok(())
}
