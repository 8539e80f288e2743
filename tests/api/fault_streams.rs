//! Streams under database faults (API.md "Several nodes on PostgreSQL": "a client that
//! reconnects ... misses nothing and sees nothing twice"): real nodes, a real PostgreSQL behind
//! the fault proxy of `faults.rs`, real ffmpeg, and a subscriber that resumes like EventSource.
//! What it saw is checked against the table.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Node, create, job, lease_holder, slow_ffmpeg};
use crate::faults::{FaultProxy, Mode, check_exactly_once, follow_all, is_pg_writer};
use crate::helpers::TestResult;
use crate::postgres::{OwnCluster, database};

/// The longest any one wait here may take.
const BOUND: Duration = Duration::from_secs(240);

/// Every `(id, type)` in the table, ascending.
async fn table(db: &str) -> TestResult<Vec<(i64, String)>> {
    let mut conn = sqlx::PgConnection::connect(db).await?;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, type FROM events ORDER BY id").fetch_all(&mut conn).await?;
    conn.close().await?;
    Ok(rows)
}

/// Cancels `jobs` on `base` and waits until each has ended.
async fn end_all(base: &str, jobs: &[String]) -> TestResult {
    let client = reqwest::Client::new();
    for id in jobs {
        client.post(format!("{base}/api/jobs/{id}/cancel")).send().await?;
    }
    let deadline = Instant::now() + BOUND;
    for id in jobs {
        loop {
            let status = job(base, id).await?["status"].as_str().unwrap_or_default().to_owned();
            if matches!(status.as_str(), "Completed" | "Failed" | "Cancelled") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("job {id} is still {status}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A worker node's reads of the shared log fail every 50 ms while its own writer commits and
/// another node appends: the worker's fan-out must never publish its own group past an id it
/// has not read, so its subscriber gets every stored event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_a_node_whose_reads_are_cut_every_50_ms_misses_nothing_and_sees_nothing_twice()
-> TestResult {
    let db = database().await?;
    let (proxy, proxied) = FaultProxy::for_postgres(&db).await?;
    let proxy = Arc::new(proxy);
    let root = tempfile::tempdir()?;
    let ffmpeg = Path::new("ffmpeg");
    let api = Node::start(root.path(), "api", &db, 0, ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &proxied, 1, ffmpeg).await?;

    let stop = CancellationToken::new();
    let through = Arc::new(AtomicU64::new(i64::MAX as u64));
    let subscriber = follow_all(vec![worker.base.clone()], stop.clone(), through.clone(), BOUND);

    // The worker renders (its own commits) while the API node appends others' events.
    let mut jobs = vec![create(&api.base, "rendered under cuts", 2).await?];
    let cutter =
        proxy.cut_repeatedly(Duration::from_millis(50), Duration::from_secs(12), |h| !is_pg_writer(h));
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        jobs.push(create(&api.base, "appended elsewhere", 2).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cutter.await?;
    assert!(proxy.cuts() > 20, "the proxy cut only {} connections", proxy.cuts());

    end_all(&api.base, &jobs).await?;
    let stored = table(&db).await?;
    through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
    stop.cancel();
    let seen = subscriber.await??;
    check_exactly_once(&seen, &stored);
    drop(worker);
    drop(api);
    Ok(())
}

/// A worker node's writer connections are cut every 200 ms while it renders: some commits fail,
/// some succeed unseen by the node (the outcome is unknown to it). The job still ends
/// `Completed` (on this node or, after its lease lapsed, as a new attempt on it again), nobody
/// records a cancel nobody asked for, and a subscriber on the other node sees every stored event
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_writer_is_cut_mid_commit_still_completes_and_every_stream_is_exact() -> TestResult {
    let db = database().await?;
    let (proxy, proxied) = FaultProxy::for_postgres(&db).await?;
    let proxy = Arc::new(proxy);
    let root = tempfile::tempdir()?;
    let ffmpeg = Path::new("ffmpeg");
    let api = Node::start(root.path(), "api", &db, 0, ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &proxied, 1, ffmpeg).await?;

    let stop = CancellationToken::new();
    let through = Arc::new(AtomicU64::new(i64::MAX as u64));
    let subscriber = follow_all(vec![api.base.clone()], stop.clone(), through.clone(), BOUND);
    let id = create(&api.base, "written under cuts", 4).await?;
    let cutter = proxy.cut_repeatedly(Duration::from_millis(200), Duration::from_secs(10), is_pg_writer);

    let deadline = Instant::now() + BOUND;
    let status = loop {
        let status = job(&api.base, &id).await?["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "Completed" | "Failed" | "Cancelled") {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("the job is still {status}; worker log: {}", worker.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    cutter.await?;
    assert!(proxy.cuts() > 0, "the proxy cut no writer connection");
    let stored = table(&db).await?;
    assert_eq!(status, "Completed", "events: {stored:?}");
    assert!(!stored.iter().any(|(_, kind)| kind == "job-cancelled"), "a cancel nobody asked for: {stored:?}");
    through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
    stop.cancel();
    let seen = subscriber.await??;
    check_exactly_once(&seen, &stored);
    Ok(())
}

/// PostgreSQL is frozen (SIGSTOP, as a paused VM or a stalled disk would) for 10 s, longer
/// than the nodes' lease, while a job renders: nothing fails, no cancel is invented, the job
/// completes (perhaps as a new attempt after `node-lost`), and a subscriber that keeps
/// reconnecting sees every stored event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_frozen_for_ten_seconds_mid_render_loses_nothing_and_invents_no_cancel() -> TestResult {
    let cluster = OwnCluster::start()?;
    let db = cluster.url.clone();
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 0.5)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &db, 1, &ffmpeg).await?;

    let stop = CancellationToken::new();
    let through = Arc::new(AtomicU64::new(i64::MAX as u64));
    let subscriber =
        follow_all(vec![api.base.clone(), worker.base.clone()], stop.clone(), through.clone(), BOUND);
    let id = create(&api.base, "rendered across a frozen database", 6).await?;
    // Frozen once the job runs.
    let deadline = Instant::now() + BOUND;
    while job(&api.base, &id).await?["status"] != "Running" {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.signal("STOP")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.signal("CONT")?;

    let status = loop {
        let status = match job(&api.base, &id).await {
            Ok(job) => job["status"].as_str().unwrap_or_default().to_owned(),
            Err(_) => String::new(),
        };
        if matches!(status.as_str(), "Completed" | "Failed" | "Cancelled") {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("the job is still {status}; worker log: {}", worker.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = table(&db).await?;
    assert_eq!(status, "Completed", "events: {stored:?}\nworker log: {}", worker.log());
    assert!(!stored.iter().any(|(_, kind)| kind == "job-cancelled"), "a cancel nobody asked for: {stored:?}");
    through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
    stop.cancel();
    let seen = subscriber.await??;
    check_exactly_once(&seen, &stored);
    Ok(())
}

/// Kills (SIGKILL) the worker node that runs a job while the job is in `stage` (any, when
/// `None`: as soon as it is claimed); the other
/// worker continues it as a new attempt, it completes once, and a subscriber on the API node
/// sees every stored event exactly once.
async fn killed_during(stage: Option<&str>) -> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 0.3)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let mut workers = [
        Node::start(root.path(), "worker-1", &db, 1, &ffmpeg).await?,
        Node::start(root.path(), "worker-2", &db, 1, &ffmpeg).await?,
    ];
    let stop = CancellationToken::new();
    let through = Arc::new(AtomicU64::new(i64::MAX as u64));
    let subscriber = follow_all(vec![api.base.clone()], stop.clone(), through.clone(), BOUND);
    let id = create(&api.base, &format!("killed during {stage:?}"), 4).await?;

    let deadline = Instant::now() + BOUND;
    let holder = loop {
        let snapshot = job(&api.base, &id).await?;
        if stage.is_none_or(|stage| snapshot["stage"] == stage)
            && snapshot["status"] == "Running"
            && let Some(holder) = lease_holder(&db, &id).await?
        {
            break holder;
        }
        let ended = matches!(snapshot["status"].as_str(), Some("Completed" | "Failed" | "Cancelled"));
        assert!(!ended && Instant::now() < deadline, "the job never ran {stage:?}: {snapshot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim = if holder == "worker-1" { 0 } else { 1 };
    workers[victim].sigkill().await?;
    let survivor = &workers[1 - victim];

    let status = loop {
        let status = job(&api.base, &id).await?["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "Completed" | "Failed" | "Cancelled") {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("the job is still {status}; survivor's log: {}", survivor.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = table(&db).await?;
    assert_eq!(status, "Completed", "events: {stored:?}");
    let kinds = |kind: &str| stored.iter().filter(|(_, k)| k == kind).count();
    assert_eq!(kinds("job-completed"), 1, "completed once: {stored:?}");
    assert_eq!(kinds("job-cancelled"), 0, "a cancel nobody asked for: {stored:?}");
    through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
    stop.cancel();
    let seen = subscriber.await??;
    check_exactly_once(&seen, &stored);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_as_soon_as_it_claims_a_job_loses_nothing() -> TestResult {
    // Script takes no time worth aiming at: this kills right after the claim, in Script or so.
    killed_during(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_during_audio_loses_nothing() -> TestResult {
    killed_during(Some("Audio")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_during_timeline_loses_nothing() -> TestResult {
    killed_during(Some("Timeline")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_during_render_loses_nothing() -> TestResult {
    killed_during(Some("Render")).await
}

/// A worker node loses the database (every connection refused and cut) for 12 s mid-render,
/// shorter than its lease: appends of its stage events fail meanwhile. The job does not fail:
/// it waits for the database and continues (a new attempt, `warning` `database-unavailable`
/// when an append failed), completes, and the stream is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_loses_the_database_mid_render_waits_for_it_instead_of_failing_the_job() -> TestResult {
    let db = database().await?;
    let (proxy, proxied) = FaultProxy::for_postgres(&db).await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 0.3)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let lease = ["--lease-secs".to_owned(), "30".to_owned()];
    let worker = Node::start_with(root.path(), "worker", &proxied, 1, &ffmpeg, &lease, &[]).await?;
    let stop = CancellationToken::new();
    let through = Arc::new(AtomicU64::new(i64::MAX as u64));
    let subscriber = follow_all(vec![api.base.clone()], stop.clone(), through.clone(), BOUND);
    let id = create(&api.base, "rendered across a lost database", 8).await?;

    let deadline = Instant::now() + BOUND;
    while job(&api.base, &id).await?["stage"] != "Visuals" {
        assert!(Instant::now() < deadline, "the job never reached Visuals");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set(Mode::Refuse);
    proxy.cut_all();
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.set(Mode::Pass);

    let status = loop {
        let status = job(&api.base, &id).await?["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "Completed" | "Failed" | "Cancelled") {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("the job is still {status}; worker log: {}", worker.log()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = table(&db).await?;
    assert_eq!(status, "Completed", "events: {stored:?}\nworker log: {}", worker.log());
    assert!(!stored.iter().any(|(_, kind)| kind == "job-cancelled"), "a cancel nobody asked for: {stored:?}");
    through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
    stop.cancel();
    let seen = subscriber.await??;
    check_exactly_once(&seen, &stored);
    Ok(())
}
