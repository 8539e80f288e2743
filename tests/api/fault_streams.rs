//! Streams under database faults (API.md "Several nodes on PostgreSQL": "a client that
//! reconnects ... misses nothing and sees nothing twice"): real nodes, a real PostgreSQL behind
//! the fault proxy of `faults.rs`, real ffmpeg, and a subscriber that resumes like EventSource.
//! What it saw is checked against the table.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Node, create, job, lease_holder, slow_ffmpeg};
use crate::faults::{FaultProxy, Mode, Seen, check_exactly_once, follow_all, is_pg_writer};
use crate::helpers::{SseStream, TestResult, eventually, holds};
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

/// An EventSource-like subscriber of every job's events on some nodes (`faults::follow_all`).
struct Subscriber {
    stop: CancellationToken,
    through: Arc<AtomicU64>,
    task: JoinHandle<TestResult<Seen>>,
}

impl Subscriber {
    fn follow(bases: Vec<String>) -> Subscriber {
        let stop = CancellationToken::new();
        let through = Arc::new(AtomicU64::new(i64::MAX as u64));
        let task = follow_all(bases, stop.clone(), through.clone(), BOUND);
        Subscriber { stop, through, task }
    }

    /// Waits until it has seen the last of `stored`, then checks it saw all of it exactly once.
    async fn check(self, stored: &[(i64, String)]) -> TestResult {
        self.through.store(stored.last().map_or(0, |(id, _)| *id) as u64, Ordering::Relaxed);
        self.stop.cancel();
        let seen = self.task.await??;
        check_exactly_once(&seen, stored);
        Ok(())
    }
}

/// Waits (until `deadline`) for job `id` to end; its status. `node`'s log explains a timeout.
async fn ended(base: &str, id: &str, deadline: Instant, node: &Node) -> TestResult<String> {
    eventually(deadline.saturating_duration_since(Instant::now()), || async {
        let status = job(base, id).await?["status"].as_str().unwrap_or_default().to_owned();
        holds(matches!(status.as_str(), "Completed" | "Failed" | "Cancelled"), || {
            format!("the job is {status}")
        })?;
        Ok(status)
    })
    .await
    .map_err(|e| format!("{e}; the node's log: {}", node.log()).into())
}

/// The table once a job ended `status`: it must have completed, and nobody asked for a cancel.
async fn completed_without_cancel(db: &str, status: &str) -> TestResult<Vec<(i64, String)>> {
    let stored = table(db).await?;
    assert_eq!(status, "Completed", "events: {stored:?}");
    assert!(!stored.iter().any(|(_, kind)| kind == "job-cancelled"), "a cancel nobody asked for: {stored:?}");
    Ok(stored)
}

/// A database, an API-only node on it, and a worker node on it through a fault proxy.
struct Cluster {
    db: String,
    proxy: Arc<FaultProxy>,
    api: Node,
    worker: Node,
    _root: tempfile::TempDir,
}

async fn worker_behind_a_proxy() -> TestResult<Cluster> {
    let db = database().await?;
    let (proxy, proxied) = FaultProxy::for_postgres(&db).await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = Path::new("ffmpeg");
    let api = Node::start(root.path(), "api", &db, 0, ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &proxied, 1, ffmpeg).await?;
    Ok(Cluster { db, proxy: Arc::new(proxy), api, worker, _root: root })
}

/// Cancels `jobs` on `base` and waits until each has ended.
async fn end_all(base: &str, jobs: &[String]) -> TestResult {
    let client = reqwest::Client::new();
    for id in jobs {
        client.post(format!("{base}/api/jobs/{id}/cancel")).send().await?;
    }
    eventually(BOUND, || async {
        for id in jobs {
            let status = job(base, id).await?["status"].as_str().unwrap_or_default().to_owned();
            holds(matches!(status.as_str(), "Completed" | "Failed" | "Cancelled"), || {
                format!("job {id} is {status}")
            })?;
        }
        Ok(())
    })
    .await
}

/// A worker node's reads of the shared log fail every 50 ms while its own writer commits and
/// another node appends: the worker's fan-out must never publish its own group past an id it
/// has not read, so its subscriber gets every stored event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_a_node_whose_reads_are_cut_every_50_ms_misses_nothing_and_sees_nothing_twice()
-> TestResult {
    let Cluster { db, proxy, api, worker, _root } = worker_behind_a_proxy().await?;

    let subscriber = Subscriber::follow(vec![worker.base.clone()]);

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
    subscriber.check(&table(&db).await?).await?;
    drop(worker);
    Ok(())
}

/// A worker node's writer connections are cut every 200 ms while it renders: some commits fail,
/// some succeed unseen by the node (the outcome is unknown to it). The job still ends
/// `Completed` (on this node or, after its lease lapsed, as a new attempt on it again), nobody
/// records a cancel nobody asked for, and a subscriber on the other node sees every stored event
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_writer_is_cut_mid_commit_still_completes_and_every_stream_is_exact() -> TestResult {
    let Cluster { db, proxy, api, worker, _root } = worker_behind_a_proxy().await?;

    let subscriber = Subscriber::follow(vec![api.base.clone()]);
    let id = create(&api.base, "written under cuts", 4).await?;
    let cutter = proxy.cut_repeatedly(Duration::from_millis(200), Duration::from_secs(10), is_pg_writer);

    let deadline = Instant::now() + BOUND;
    let status = ended(&api.base, &id, deadline, &worker).await?;
    cutter.await?;
    assert!(proxy.cuts() > 0, "the proxy cut no writer connection");
    let stored = completed_without_cancel(&db, &status).await?;
    subscriber.check(&stored).await?;
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

    let subscriber = Subscriber::follow(vec![api.base.clone(), worker.base.clone()]);
    let id = create(&api.base, "rendered across a frozen database", 6).await?;
    // Frozen once the job runs.
    let deadline = Instant::now() + BOUND;
    eventually(BOUND, || async {
        let status = job(&api.base, &id).await?["status"].clone();
        holds(status == "Running", || format!("the job is {status}"))
    })
    .await?;
    cluster.signal("STOP")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.signal("CONT")?;

    let status = ended(&api.base, &id, deadline, &worker).await?;
    let stored = completed_without_cancel(&db, &status).await?;
    subscriber.check(&stored).await?;
    Ok(())
}

/// Kills (SIGKILL) the worker node that runs a job while the job is in `stage` (any, when
/// `None`: as soon as it is claimed); the other
/// worker continues it as a new attempt, it completes once, and a subscriber on the API node
/// sees every stored event exactly once.
async fn killed_during(stage: Option<&str>) -> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    // A second per ffmpeg run: every stage lasts long enough to be caught in it.
    let ffmpeg = slow_ffmpeg(root.path(), 1.0)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let mut workers = [
        Node::start(root.path(), "worker-1", &db, 1, &ffmpeg).await?,
        Node::start(root.path(), "worker-2", &db, 1, &ffmpeg).await?,
    ];
    let subscriber = Subscriber::follow(vec![api.base.clone()]);
    let id = create(&api.base, &format!("killed during {stage:?}"), 4).await?;

    // The job's own stream says when the stage starts: the kill follows within milliseconds,
    // which a stage as short as Timeline (its narration was encoded during Visuals) needs.
    let deadline = Instant::now() + BOUND;
    let res = reqwest::get(format!("{}/api/jobs/{id}/events", api.base)).await?;
    let mut events = SseStream::new(res);
    loop {
        let (_, kind, data) = tokio::time::timeout_at(deadline.into(), events.next_event())
            .await??
            .ok_or_else(|| format!("the job ended before {stage:?} started"))?;
        let started = match stage {
            Some(stage) => kind == "step-status" && data["step"] == stage && data["state"] == "Started",
            None => kind == "job-status" && data["status"] == "Running",
        };
        if started {
            break;
        }
    }
    let holder = lease_holder(&db, &id).await?.ok_or("the running job has no lease")?;
    let victim = if holder == "worker-1" { 0 } else { 1 };
    workers[victim].sigkill().await?;
    let survivor = &workers[1 - victim];

    let status = ended(&api.base, &id, deadline, survivor).await?;
    let stored = completed_without_cancel(&db, &status).await?;
    let completions = stored.iter().filter(|(_, kind)| kind == "job-completed").count();
    assert_eq!(completions, 1, "completed once: {stored:?}");
    subscriber.check(&stored).await
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
    let subscriber = Subscriber::follow(vec![api.base.clone()]);
    let id = create(&api.base, "rendered across a lost database", 8).await?;

    let deadline = Instant::now() + BOUND;
    eventually(BOUND, || async {
        let stage = job(&api.base, &id).await?["stage"].clone();
        holds(stage == "Visuals", || format!("the job is at {stage}"))
    })
    .await?;
    proxy.set(Mode::Refuse);
    proxy.cut_all();
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.set(Mode::Pass);

    let status = ended(&api.base, &id, deadline, &worker).await?;
    let stored = completed_without_cancel(&db, &status).await?;
    subscriber.check(&stored).await?;
    Ok(())
}
