//! The PostgreSQL event log several nodes share: ids must become visible in commit order.
//!
//! Tests run against a real PostgreSQL: the one `.ci/run` starts (`AURA_TEST_POSTGRES_URL`), or
//! else a throwaway cluster this binary starts with the same script and removes at the end.
//! Each test gets a database of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aura::store::postgres::{NewEvent, PgLog, tail};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::TestResult;

/// The URL of the PostgreSQL server every test of this binary shares, started on first use. A
/// cluster started here is stopped and removed by the script's watchdog once this process ends,
/// however it ends.
fn cluster() -> TestResult<&'static str> {
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster).as_deref().map_err(|e| e.to_owned().into())
}

fn start_cluster() -> Result<String, String> {
    if let Ok(url) = std::env::var("AURA_TEST_POSTGRES_URL") {
        return Ok(url);
    }
    let dir = std::env::temp_dir().join(format!("aura-test-pg-{}", Uuid::new_v4().simple()));
    postgres_sh(&["start", &dir.to_string_lossy(), &std::process::id().to_string()])
}

/// Runs `.ci/postgres.sh` with `args`; its standard output, trimmed.
fn postgres_sh(args: &[&str]) -> Result<String, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/postgres.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("running .ci/postgres.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("postgres.sh {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A cluster of one test's own, which it may stop and start again; removed on drop (and by the
/// script's watchdog if the test binary dies first).
pub(crate) struct OwnCluster {
    dir: String,
    pub url: String,
}

impl OwnCluster {
    pub fn start() -> Result<OwnCluster, String> {
        let dir = std::env::temp_dir().join(format!("aura-test-pg-{}", Uuid::new_v4().simple()));
        let dir = dir.to_string_lossy().into_owned();
        let url = postgres_sh(&["start", &dir, &std::process::id().to_string()])?;
        Ok(OwnCluster { dir, url })
    }

    pub fn pause(&self) -> Result<(), String> {
        postgres_sh(&["pause", &self.dir]).map(drop)
    }

    pub fn resume(&self) -> Result<(), String> {
        postgres_sh(&["resume", &self.dir]).map(drop)
    }

    /// Stops every process of the server with `signal` (`STOP` freezes it: connections stay
    /// open and nothing answers, like a paused VM; `CONT` thaws it).
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid_file = std::path::Path::new(&self.dir).join("data/postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(|e| format!("reading {pid_file:?}: {e}"))?;
        let pid = text.lines().next().unwrap_or_default().trim().to_owned();
        let children = Command::new("pkill").args([&format!("-{signal}"), "-P", &pid]).status();
        let parent = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        match (children, parent) {
            (Ok(_), Ok(p)) if p.success() => Ok(()),
            other => Err(format!("signalling PostgreSQL ({pid}): {other:?}")),
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = postgres_sh(&["stop", &self.dir]);
    }
}

/// A fresh, empty database on the shared cluster; returns its URL.
pub async fn database() -> TestResult<String> {
    let cluster = cluster()?;
    let name = format!("aura_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(cluster).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    admin.close().await?;
    let base = cluster.rsplit_once('/').map_or(cluster, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

fn event(job: Uuid, n: usize) -> NewEvent {
    let at = "2026-12-01T00:00:00.000000Z".to_owned();
    NewEvent {
        job_id: job,
        kind: "step-progress".into(),
        data: format!(r#"{{"jobId":"{job}","at":"{at}","n":{n}}}"#),
        created_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_appending_at_once_give_a_tail_every_id_once_in_ascending_order() -> TestResult {
    const TOTAL: usize = 10_000;
    let url = database().await?;
    // Three nodes, each with its own pool and one writer appending groups of 1..=47 events;
    // a fourth connection tails the log at `id > last` while they race.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(PgLog::open(&url, 2, std::time::Duration::from_secs(10)).await?);
    }
    let reader = PgLog::open(&url, 1, std::time::Duration::from_secs(10)).await?;
    let mut writers = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let node = node.clone();
        let share = TOTAL / 3 + usize::from(k < TOTAL % 3);
        writers.push(tokio::spawn(async move {
            let job = Uuid::new_v4();
            let mut done = 0;
            let mut size = 1 + k * 13;
            while done < share {
                let n = (size % 47 + 1).min(share - done);
                let group: Vec<_> = (done..done + n).map(|i| event(job, i)).collect();
                let stored = node.append(&group).await?;
                assert_eq!(stored.len(), n);
                assert!(stored.windows(2).all(|w| w[1].id == w[0].id + 1), "a group's ids are consecutive");
                done += n;
                size += 7;
            }
            Ok::<_, aura::store::StoreError>(())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = 0i64;
    while last < TOTAL as i64 {
        assert!(Instant::now() < deadline, "the tail reached only id {last} of {TOTAL} in 120 s");
        let page = reader.events_after(last, 1000).await?;
        for e in &page {
            assert_eq!(
                e.id,
                last + 1,
                "the tail saw id {} right after {last}: an id was passed or repeated",
                e.id
            );
            last = e.id;
        }
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for w in writers {
        w.await??;
    }
    assert!(reader.events_after(last, 10).await?.is_empty(), "no id past {TOTAL}");
    for node in nodes.iter().chain([&reader]) {
        node.close().await;
    }
    Ok(())
}

/// Takes batches from a tail until it has handed on `n` events in all (at most `within`).
async fn take(
    feed: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<std::sync::Arc<aura::domain::event::StoredEvent>>>,
    ids: &mut Vec<i64>,
    n: usize,
    within: Duration,
) -> TestResult {
    let deadline = tokio::time::Instant::now() + within;
    while ids.len() < n {
        let batch = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .map_err(|_| format!("the tail handed on {} of {n} events in {within:?}", ids.len()))?
            .ok_or("the tail ended")?;
        ids.extend(batch.iter().map(|e| e.id));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_that_loses_the_database_for_a_while_hands_on_every_event_once_when_it_returns() -> TestResult
{
    let pg = OwnCluster::start()?;
    let writer = PgLog::open(&pg.url, 2, std::time::Duration::from_secs(10)).await?;
    let close = CancellationToken::new();
    let (feed_tx, mut feed) = tokio::sync::mpsc::unbounded_channel();
    tail::spawn(
        PgLog::open(&pg.url, 1, std::time::Duration::from_secs(10)).await?,
        pg.url.clone(),
        0,
        feed_tx,
        close.clone(),
    );
    let job = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..50 {
        writer.append(&[event(job, i)]).await?;
    }
    take(&mut feed, &mut ids, 50, Duration::from_secs(10)).await?;

    // The database goes away for six seconds, longer than a node waits for a connection: the
    // tail's reads and its listening connection fail meanwhile; it must neither end nor lose
    // its place.
    pg.pause()?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg.resume()?;
    for i in 50..100 {
        writer.append(&[event(job, i)]).await?;
    }
    take(&mut feed, &mut ids, 100, Duration::from_secs(20)).await?;
    assert_eq!(ids, (1..=100).collect::<Vec<i64>>(), "every event once, in order");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(feed.try_recv().is_err(), "nothing handed on twice after a timed re-read");
    close.cancel();
    Ok(())
}

/// Two nodes' stores on one fresh database, and a job node `a` created and claimed: the job's
/// id and the claim's attempt.
pub(crate) async fn two_nodes_and_a_claimed_job(
    topic: &str,
) -> TestResult<(String, aura::store::Store, aura::store::Store, Uuid, u32)> {
    use aura::engine::lifecycle;
    use aura::store::postgres::writer::Node;
    use aura::store::{Durability, Store};

    let url = database().await?;
    let (a, _) = Store::open_node(&url, Durability::Full, Node::new(&format!("{topic}-a"), 30)).await?;
    let (b, _) = Store::open_node(&url, Durability::Full, Node::new(&format!("{topic}-b"), 30)).await?;
    let spec = aura::domain::spec::JobSpec::from_value(&serde_json::json!({"brief": {"topic": topic}}))
        .map_err(|e| e.to_string())?;
    let id = Uuid::now_v7();
    lifecycle::create(&a, id, spec, "local".into()).await?;
    let claimed = lifecycle::claim(&a, id).await?;
    Ok((url, a, b, id, claimed.state.attempt))
}

/// A job's status and attempt as its `jobs` row has them.
pub(crate) async fn row_of(url: &str, id: Uuid) -> TestResult<(String, i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_as("SELECT status, attempt, last_event_id FROM jobs WHERE job_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut conn)
        .await?)
}

/// A node's writer appends for a job whose row it cached in one statement that checks the row
/// first. When another node changed the job meanwhile (a cancel), the append is decided again
/// against the locked row: the `jobs` row never goes back to what the stale cache said.
#[tokio::test]
async fn an_append_against_a_row_another_node_changed_is_decided_again_on_the_current_row() -> TestResult {
    use aura::domain::job::Stage;
    use aura::engine::lifecycle::{self, JobHandle};
    use aura::store::ApplyError;

    let (url, a, b, id, _) = two_nodes_and_a_claimed_job("stale").await?;
    let job = JobHandle::new(a.clone(), id);
    // Node a now holds the Running job's state in its writer's cache.
    job.progress(Stage::Script, 10.0, "first".into()).await?;
    let cancelled = lifecycle::cancel(&b, id).await?;
    assert_eq!(cancelled.state.status.name(), "Cancelling");

    let after = job.progress(Stage::Script, 20.0, "second".into()).await;
    match &after {
        Ok(applied) => assert_eq!(applied.state.status.name(), "Cancelling", "decided on the current row"),
        Err(ApplyError::Refused(_)) => {}
        Err(ApplyError::Store(e)) => return Err(format!("the store failed: {e}").into()),
    }
    let (status, _, last) = row_of(&url, id).await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM events WHERE job_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut conn)
        .await?;
    assert_eq!((status.as_str(), last), ("Cancelling", newest), "the row is the fold of the events");
    a.close().await;
    b.close().await;
    Ok(())
}

/// Fencing: once a job continues as a new attempt (here taken by another node), every write of
/// the old attempt is refused, its `job-completed` above all, and its worker is told to stop.
#[tokio::test]
async fn a_worker_whose_job_went_on_as_a_new_attempt_elsewhere_cannot_finish_it() -> TestResult {
    use aura::domain::command::Refused;
    use aura::domain::event::JobOutput;
    use aura::domain::job::Stage;
    use aura::engine::lifecycle::{self, JobHandle};
    use aura::store::{ApplyError, Refusal};

    let (url, a, b, id, attempt) = two_nodes_and_a_claimed_job("fenced").await?;
    let lost = CancellationToken::new();
    let old = JobHandle::fenced(a.clone(), id, attempt, lost.clone());
    old.progress(Stage::Script, 50.0, "working".into()).await?;

    // Node b continues the job as the next attempt (as a takeover does).
    let next = lifecycle::resume_parked(&b, id, attempt).await?;
    assert_eq!(next.state.attempt, attempt + 1);

    let output = JobOutput {
        video_path: format!("jobs/{id}/output.mp4"),
        video_url: format!("/api/jobs/{id}/output"),
        size_bytes: 1,
        duration_sec: 1.0,
    };
    let refused = old.complete(output).await;
    assert!(
        matches!(refused, Err(ApplyError::Refused(Refusal::Report(Refused::Superseded { .. })))),
        "the old attempt finished the job: {refused:?}"
    );
    assert!(lost.is_cancelled(), "the old attempt's worker is told to stop");
    assert!(matches!(
        old.progress(Stage::Script, 60.0, "late".into()).await,
        Err(ApplyError::Refused(Refusal::Report(Refused::Superseded { .. })))
    ));
    let (status, row_attempt, _) = row_of(&url, id).await?;
    assert_eq!((status.as_str(), row_attempt), ("Running", i64::from(attempt + 1)));
    a.close().await;
    b.close().await;
    Ok(())
}
