//! The engine's promises when the database or the log misbehave, on a real PostgreSQL with real
//! `aura serve` processes and real ffmpeg (API.md "Several nodes on PostgreSQL"):
//!
//! - a cancel that a worker node's ring of recent events lost (`AURA_STREAM_BUFFER=8`, a burst of
//!   creations around the cancel) still stops the job's ffmpeg within 3 s and ends it Cancelled,
//!   never Completed;
//! - a node whose lease renewal blocks past the lease (a test connection holds the lease row)
//!   stops the job's ffmpeg and records no `job-cancelled` for it: the job continues as a new
//!   attempt after `warning` `node-lost`, and completes;
//! - a worker that missed a cancel from another node cannot complete or fail the job;
//! - a lease is judged by the database's clock: another node does not take a job whose lease the
//!   database says is still valid, nor one whose row someone holds (it is being renewed).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use sqlx::Connection;

use crate::cluster::{BOUND, LEASE_SECS, Node, count_of, create, job, processes_naming, slow_ffmpeg};
use crate::helpers::{TestResult, eventually, holds};
use crate::postgres::database;

/// Waits until the job's ffmpeg runs on `node`; returns what names its processes there.
async fn ffmpeg_running(node: &Node, id: &str) -> TestResult<String> {
    let needle = node.dir.join("data").join("jobs").join(id).to_string_lossy().into_owned();
    eventually(BOUND, || async {
        holds(!processes_naming(&needle).is_empty(), || format!("no ffmpeg runs for {id}"))
    })
    .await
    .map_err(|e| format!("{e}; the node's log: {}", node.log()))?;
    Ok(needle)
}

/// Waits up to `bound` for the job to end; returns its snapshot.
async fn ended(node: &Node, id: &str, bound: Duration) -> TestResult<Value> {
    eventually(bound, || async {
        let snapshot = job(&node.base, id).await?;
        let ended = matches!(snapshot["status"].as_str(), Some("Completed" | "Failed" | "Cancelled"));
        holds(ended, || format!("{id} has not ended: {snapshot}"))?;
        Ok(snapshot)
    })
    .await
    .map_err(|e| format!("{e}; log: {}", node.log()).into())
}

/// The job's history, oldest first.
async fn history(node: &Node, id: &str) -> TestResult<Vec<Value>> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/jobs/{id}/history?limit=10000", node.base))
        .send()
        .await?
        .json()
        .await?;
    Ok(body.as_array().ok_or("history is not an array")?.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_the_workers_ring_lost_in_a_burst_of_creations_still_ends_the_job_cancelled() -> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 1.0)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    // The worker keeps only the 8 newest events in memory: a burst of more than 8 events between
    // two of its looks leaves the cancel out of its ring.
    let worker = Node::start_with(
        root.path(),
        "worker",
        &db,
        1,
        &ffmpeg,
        &[],
        &[("AURA_STREAM_BUFFER".into(), "8".into())],
    )
    .await?;
    let id = create(&api.base, "cancel me in a crowd", 12).await?;
    let needle = ffmpeg_running(&worker, &id).await?;

    // The cancel goes to the API node in the middle of 60 concurrent creations.
    let client = reqwest::Client::new();
    let crowd = |range: std::ops::Range<u32>| {
        let base = api.base.clone();
        join_all(range.map(move |n| {
            let base = base.clone();
            async move { create(&base, &format!("crowd {n}"), 2).await }
        }))
    };
    let cancel = async {
        let res = client.post(format!("{}/api/jobs/{id}/cancel", api.base)).send().await;
        (res, Instant::now())
    };
    let (before, (cancelled, sent), after) = tokio::join!(crowd(0..30), cancel, crowd(30..60));
    assert_eq!(cancelled?.status(), 202, "the cancel is accepted");
    for created in before.into_iter().chain(after) {
        created?;
    }

    // The worker stops the job's ffmpeg within 3 s of the cancel's answer.
    eventually(Duration::from_secs(3).saturating_sub(sent.elapsed()), || async {
        holds(processes_naming(&needle).is_empty(), || "ffmpeg still runs after the cancel".into())
    })
    .await
    .map_err(|e| format!("{e}; worker log: {}", worker.log()))?;
    let snapshot = ended(&api, &id, Duration::from_secs(60)).await?;
    assert_eq!(snapshot["status"], "Cancelled", "{snapshot}; worker log: {}", worker.log());
    assert_eq!(count_of(&db, &id, "job-completed").await?, 0, "a Cancelling job never completes");
    assert_eq!(count_of(&db, &id, "job-cancelled").await?, 1, "it is cancelled once");
    assert!(processes_naming(&needle).is_empty(), "nothing runs for the cancelled job");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_renewal_blocks_past_the_lease_stops_its_ffmpeg_and_records_no_cancel()
-> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 2.0)?;
    // One node: nobody else could take the job over, only the node itself once its lease expired.
    let worker = Node::start(root.path(), "worker", &db, 1, &ffmpeg).await?;
    let id = create(&worker.base, "outlive a blocked lease", 20).await?;
    let needle = ffmpeg_running(&worker, &id).await?;

    // A test connection holds the job's lease row: renewals wait on it, while the worker's
    // appends (which leave the lease alone) still go through.
    let mut holder = sqlx::PgConnection::connect(&db).await?;
    let mut lock = holder.begin().await?;
    let held: Option<i64> = sqlx::query_scalar("SELECT attempt FROM leases WHERE job_id = $1 FOR UPDATE")
        .bind(&id)
        .fetch_optional(&mut *lock)
        .await?;
    assert_eq!(held, Some(1), "the lease of the first attempt is held");
    let locked = Instant::now();

    // Within the lease time (plus a renewal period and a margin) the node gives the job up: its
    // ffmpeg is gone, and stays gone for two seconds, while the row is still held.
    let bound = Duration::from_secs(LEASE_SECS + 5);
    let mut last_seen = Instant::now();
    while last_seen.elapsed() < Duration::from_secs(2) {
        if !processes_naming(&needle).is_empty() {
            last_seen = Instant::now();
        }
        assert!(
            locked.elapsed() < bound + Duration::from_secs(2),
            "the job's ffmpeg still ran {:?} after its lease could no longer be renewed; log: {}",
            last_seen.duration_since(locked),
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.rollback().await?;
    holder.close().await?;

    // The job continues as a new attempt, says why, and completes; nobody cancelled it.
    let snapshot = ended(&worker, &id, Duration::from_secs(240)).await?;
    let events = history(&worker, &id).await?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(!kinds.contains(&"job-cancelled"), "lease loss is not a cancel: {kinds:?}");
    assert!(
        events.iter().any(|e| e["type"] == "warning" && e["data"]["code"] == "node-lost"),
        "the new attempt says why: {kinds:?}"
    );
    assert!(snapshot["attempt"].as_u64() >= Some(2), "a new attempt: {snapshot}");
    assert_eq!(snapshot["status"], "Completed", "{snapshot}; log: {}", worker.log());
    assert_eq!(count_of(&db, &id, "job-completed").await?, 1, "completed once");
    Ok(())
}

/// The decision itself, across two nodes' writers: a worker on node a that has not heard of a
/// cancel appended on node b (its writer still caches the Running row) cannot complete the
/// job; its handle is told to stop, and the only end left is `job-cancelled`.
#[tokio::test]
async fn a_worker_that_missed_a_cancel_from_another_node_cannot_complete_the_job() -> TestResult {
    use aura::domain::command::Refused;
    use aura::domain::event::JobOutput;
    use aura::domain::job::Stage;
    use aura::engine::lifecycle::{self, JobHandle};
    use aura::store::{ApplyError, Refusal};
    use tokio_util::sync::CancellationToken;

    let (url, a, b, id, attempt) = crate::postgres::two_nodes_and_a_claimed_job("missed").await?;
    let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
    let worker = JobHandle::fenced(a.clone(), id, attempt, lost.clone()).stopping(stop.clone());
    worker.progress(Stage::Render, 90.0, "nearly".into()).await?;
    assert_eq!(lifecycle::cancel(&b, id).await?.state.status.name(), "Cancelling");

    let progress = worker.progress(Stage::Render, 95.0, "late".into()).await;
    assert!(
        matches!(progress, Err(ApplyError::Refused(Refusal::Report(Refused::Cancelling)))),
        "stage work after the cancel: {progress:?}"
    );
    assert!(stop.is_cancelled() && !lost.is_cancelled(), "told to stop, and that the job is still its own");
    let output = JobOutput {
        video_path: format!("jobs/{id}/output.mp4"),
        video_url: format!("/api/jobs/{id}/output"),
        size_bytes: 1,
        duration_sec: 1.0,
    };
    let completed = worker.complete(output).await;
    assert!(
        matches!(completed, Err(ApplyError::Refused(Refusal::Report(Refused::Cancelling)))),
        "completed after the cancel: {completed:?}"
    );
    let failed = worker.fail(Some(Stage::Render), "ffmpeg-failed", "late".into()).await;
    assert!(
        matches!(failed, Err(ApplyError::Refused(Refusal::Report(Refused::Cancelling)))),
        "failed after the cancel: {failed:?}"
    );
    worker.cancelled(Some(Stage::Render)).await?;
    let (status, _, _) = crate::postgres::row_of(&url, id).await?;
    assert_eq!(status, "Cancelled");
    a.close().await;
    b.close().await;
    Ok(())
}

/// Leases are judged by the database's clock: the lease a claim writes ends a lease time after
/// the database's `now()`, and another node neither lists nor takes it before then, whatever
/// its own clock says; once the database's clock is past it, the other node continues the job
/// (`node-lost`, a new attempt that waits for any worker node).
#[tokio::test]
async fn a_lease_is_judged_by_the_databases_clock_and_not_taken_before_it_expires_there() -> TestResult {
    use aura::engine::lifecycle::{self, Recovered};
    use aura::store::{ApplyError, Refusal};

    let (url, a, b, id, attempt) = crate::postgres::two_nodes_and_a_claimed_job("clock").await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM leases WHERE job_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&mut conn)
    .await?;
    assert!((29.0..=30.5).contains(&left), "the lease ends 30 s after the database's now(): {left} s left");
    assert!(b.expired_leases(10).await?.is_empty(), "a valid lease is not listed as expired");
    let early = lifecycle::recover_expired(&b, id, 3).await;
    assert!(
        matches!(early, Err(ApplyError::Refused(Refusal::Conflict(_)))),
        "taken before it expired: {early:?}"
    );

    // The database's clock passes the lease's end (as a lease time passing would).
    sqlx::query("UPDATE leases SET expires_at = now() - interval '1 second' WHERE job_id = $1")
        .bind(id.to_string())
        .execute(&mut conn)
        .await?;
    assert_eq!(b.expired_leases(10).await?, vec![id], "an expired lease is listed");
    // While someone holds the row (its node renewing it this very moment), a takeover neither
    // waits for it nor takes it: the next sweep decides.
    let mut renewing = sqlx::PgConnection::connect(&url).await?;
    let mut held = renewing.begin().await?;
    sqlx::query("SELECT 1 FROM leases WHERE job_id = $1 FOR UPDATE")
        .bind(id.to_string())
        .execute(&mut *held)
        .await?;
    let busy = tokio::time::timeout(Duration::from_secs(5), lifecycle::recover_expired(&b, id, 3))
        .await
        .map_err(|_| "a takeover waited on a lease row someone holds")?;
    assert!(matches!(busy, Err(ApplyError::Refused(Refusal::Conflict(_)))), "taken while held: {busy:?}");
    held.rollback().await?;
    renewing.close().await?;
    assert_eq!(lifecycle::recover_expired(&b, id, 3).await?, Recovered::Resumed);
    let (status, row_attempt, _) = crate::postgres::row_of(&url, id).await?;
    assert_eq!((status.as_str(), row_attempt), ("Running", i64::from(attempt + 1)));
    let holder: Option<Option<String>> = sqlx::query_scalar("SELECT node FROM leases WHERE job_id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut conn)
        .await?;
    assert_eq!(holder, Some(None), "the new attempt waits for any worker node");
    conn.close().await?;
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_that_waits_on_a_held_lock_fails_within_a_third_of_the_lease_instead_of_hanging()
-> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 0.1)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    create(&api.base, "before the lock", 2).await?;

    // A test connection holds the event counter's row: every append waits on it.
    let mut holder = sqlx::PgConnection::connect(&db).await?;
    let mut lock = holder.begin().await?;
    sqlx::query("SELECT last_id FROM event_counter FOR UPDATE").execute(&mut *lock).await?;
    let client = reqwest::Client::new();
    let asked = Instant::now();
    let res = client
        .post(format!("{}/api/jobs", api.base))
        .json(&serde_json::json!({"brief": {"topic": "behind a held lock"}}))
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    let took = asked.elapsed();
    let status = res.status().as_u16();
    lock.rollback().await?;
    // The writer's statements end after a third of the lease (1 s here), and the answer says so.
    assert!(status >= 500, "a create behind a held lock answered {status}");
    assert!(took < Duration::from_secs(LEASE_SECS), "the create waited {took:?} on the held lock");

    // Released: appends go through again.
    create(&api.base, "after the lock", 2).await?;
    Ok(())
}
