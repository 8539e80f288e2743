//! Several nodes on one PostgreSQL (API.md "Several nodes on PostgreSQL"), as real processes:
//! an API-only node and worker nodes share the log; a worker SIGKILLed mid-Visuals has its job
//! continued by another node as a new attempt; every subscriber on every node, and one that hops
//! between nodes with `Last-Event-ID`, sees exactly the table's ids; a cancel sent to the API
//! node kills the job's ffmpeg on its worker node; a node that loses the database for 10 s keeps
//! its streams and finishes nothing twice. In the first, videos go to an S3-compatible store
//! (`s3s-fs`), and every node still running serves each of them.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use tokio::process::{Child, Command};

use crate::cli::free_port;
use crate::helpers::{SseStream, TestResult, eventually, holds};
use crate::objects::S3;
use crate::postgres::{OwnCluster, database};

const AURA: &str = env!("CARGO_BIN_EXE_aura");
/// Lease time of the nodes in these tests: short, so a lost node's job continues soon.
pub(crate) const LEASE_SECS: u64 = 3;
/// The longest any one wait here may take.
pub(crate) const BOUND: Duration = Duration::from_secs(120);

/// An `aura serve` process on a shared database, with its log in its data folder.
pub(crate) struct Node {
    child: Child,
    pub base: String,
    pub dir: PathBuf,
}

impl Node {
    pub async fn start(root: &Path, name: &str, db: &str, workers: u32, ffmpeg: &Path) -> TestResult<Node> {
        Node::start_storing(root, name, db, workers, ffmpeg, None).await
    }

    /// A node whose videos go to `storage` (an S3-compatible server) instead of its data folder.
    async fn start_storing(
        root: &Path,
        name: &str,
        db: &str,
        workers: u32,
        ffmpeg: &Path,
        storage: Option<&S3>,
    ) -> TestResult<Node> {
        let (args, env) = match storage {
            Some(s3) => {
                let (url, env) = s3.for_process();
                (vec!["--storage-url".to_owned(), url], env)
            }
            None => (Vec::new(), Vec::new()),
        };
        Node::start_with(root, name, db, workers, ffmpeg, &args, &env).await
    }

    /// A node with further `aura serve` arguments and environment. A node started again under
    /// the same name keeps its data folder, and its log grows.
    pub async fn start_with(
        root: &Path,
        name: &str,
        db: &str,
        workers: u32,
        ffmpeg: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> TestResult<Node> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log"))?;
        let mut command = Command::new(AURA);
        command.args(["serve", "--addr", &addr, "--data-dir"]).arg(dir.join("data"));
        command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .args(["--database-url", db, "--node-name", name, "--workers", &workers.to_string()])
            .args(if args.iter().any(|a| a == "--lease-secs") {
                Vec::new()
            } else {
                vec!["--lease-secs".to_owned(), LEASE_SECS.to_string()]
            })
            .arg("--ffmpeg")
            .arg(ffmpeg)
            .env("RUST_LOG", "warn,aura=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        eventually(BOUND, || async { Ok(client.get(format!("{base}/api/health")).send().await?) })
            .await
            .map_err(|e| format!("node {name} did not start: {e}; its log: {}", Node::log_of(&dir)))?;
        Ok(Node { child, base, dir })
    }

    fn log_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        Node::log_of(&self.dir)
    }

    pub async fn sigkill(&mut self) -> TestResult {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// An ffmpeg that waits `secs` before each run, so that a test can act mid-stage.
pub(crate) fn slow_ffmpeg(dir: &Path, secs: f64) -> TestResult<PathBuf> {
    let path = dir.join("slow-ffmpeg");
    std::fs::write(&path, format!("#!/bin/sh\nsleep {secs}\nexec ffmpeg \"$@\"\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

pub(crate) async fn create(base: &str, topic: &str, seconds: u32) -> TestResult<String> {
    let body = json!({"brief": {"topic": topic}, "planSpec": {"targetDuration": format!("00:00:{seconds:02}")},
                      "renderSpec": {"res": "480p", "fps": 10}});
    let res = reqwest::Client::new().post(format!("{base}/api/jobs")).json(&body).send().await?;
    if res.status() != 201 {
        return Err(format!("create answered {}", res.status()).into());
    }
    let created: Value = res.json().await?;
    Ok(created["jobId"].as_str().ok_or("no jobId")?.to_owned())
}

pub(crate) async fn job(base: &str, id: &str) -> TestResult<Value> {
    Ok(reqwest::Client::new().get(format!("{base}/api/jobs/{id}")).send().await?.json().await?)
}

async fn open(base: &str, path: &str, last: i64) -> TestResult<SseStream> {
    let res = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await?;
    if res.status() != 200 {
        return Err(format!("{path} answered {}", res.status()).into());
    }
    Ok(SseStream::new(res))
}

/// The node whose lease a job has now, if any.
pub(crate) async fn lease_holder(db: &str, id: &str) -> TestResult<Option<String>> {
    let mut conn = sqlx::PgConnection::connect(db).await?;
    let node: Option<Option<String>> = sqlx::query_scalar("SELECT node FROM leases WHERE job_id = $1")
        .bind(id)
        .fetch_optional(&mut conn)
        .await?;
    conn.close().await?;
    Ok(node.flatten())
}

/// Every event id in the table, ascending.
async fn table_ids(db: &str) -> TestResult<Vec<i64>> {
    let mut conn = sqlx::PgConnection::connect(db).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id").fetch_all(&mut conn).await?;
    conn.close().await?;
    Ok(ids)
}

/// How many events of `kind` the table holds for a job.
pub(crate) async fn count_of(db: &str, id: &str, kind: &str) -> TestResult<i64> {
    let mut conn = sqlx::PgConnection::connect(db).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE job_id = $1 AND type = $2")
        .bind(id)
        .bind(kind)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n)
}

/// Takes a job off `left` once its terminal event is read.
fn forget_if_ended(left: &mut BTreeSet<String>, kind: &str, data: &Value) {
    if matches!(kind, "job-completed" | "job-failed" | "job-cancelled")
        && let Some(job) = data["jobId"].as_str()
    {
        left.remove(job);
    }
}

/// Reads a whole-log stream until every job in `jobs` has a terminal event; returns the ids.
async fn follow_all(mut stream: SseStream, jobs: BTreeSet<String>) -> TestResult<Vec<i64>> {
    let mut ids = Vec::new();
    let mut left = jobs;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !left.is_empty() {
        let (id, kind, data) =
            tokio::time::timeout_at(deadline, stream.next_event()).await??.ok_or("the stream ended")?;
        ids.push(id);
        forget_if_ended(&mut left, &kind, &data);
    }
    Ok(ids)
}

/// Like [`follow_all`], moving to the other node every `hop` events with `Last-Event-ID`.
async fn follow_hopping(bases: [String; 2], jobs: BTreeSet<String>, hop: usize) -> TestResult<Vec<i64>> {
    let mut ids: Vec<i64> = Vec::new();
    let mut left = jobs;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut turn = 0;
    while !left.is_empty() {
        let last = ids.last().copied().unwrap_or(0);
        let mut stream = open(&bases[turn % 2], "/api/events", last).await?;
        turn += 1;
        for _ in 0..hop {
            let (id, kind, data) =
                tokio::time::timeout_at(deadline, stream.next_event()).await??.ok_or("the stream ended")?;
            ids.push(id);
            forget_if_ended(&mut left, &kind, &data);
            if left.is_empty() {
                break;
            }
        }
    }
    Ok(ids)
}

fn assert_once_ascending(who: &str, ids: &[i64], table: &[i64]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{who}: ids ascend, none twice");
    assert_eq!(ids, table, "{who}: the ids seen are the table's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_node_killed_mid_visuals_loses_nothing_and_every_subscriber_sees_the_table() -> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 0.3)?;
    let s3 = S3::start().await?;
    let api = Node::start_storing(root.path(), "api", &db, 0, &ffmpeg, Some(&s3)).await?;
    let mut one = Node::start_storing(root.path(), "worker-1", &db, 1, &ffmpeg, Some(&s3)).await?;
    let two = Node::start_storing(root.path(), "worker-2", &db, 1, &ffmpeg, Some(&s3)).await?;

    // Subscribers from the start of the log: on the API node, on a worker node, and hopping.
    let on_api = open(&api.base, "/api/events", 0).await?;
    let on_worker = open(&two.base, "/api/events", 0).await?;
    let mut jobs = BTreeSet::new();
    for n in 0..6 {
        jobs.insert(create(&api.base, &format!("cluster {n}"), 4).await?);
    }
    let api_ids = tokio::spawn(follow_all(on_api, jobs.clone()));
    let worker_ids = tokio::spawn(follow_all(on_worker, jobs.clone()));
    let hopping = tokio::spawn(follow_hopping([api.base.clone(), two.base.clone()], jobs.clone(), 7));

    // Wait until worker-1 runs a job in Visuals, then SIGKILL it.
    let victim = eventually(BOUND, || async {
        for id in &jobs {
            let snapshot = job(&api.base, id).await?;
            if snapshot["stage"] == "Visuals"
                && snapshot["status"] == "Running"
                && lease_holder(&db, id).await?.as_deref() == Some("worker-1")
            {
                return Ok(id.clone());
            }
        }
        Err("worker-1 runs no job in Visuals".into())
    })
    .await
    .map_err(|e| format!("{e}; its log: {}", one.log()))?;
    let attempt = job(&api.base, &victim).await?["attempt"].as_u64().ok_or("no attempt")?;
    one.sigkill().await?;

    // The victim continues as a new attempt within the lease time plus 10 s.
    eventually(Duration::from_secs(LEASE_SECS + 10), || async {
        let snapshot = job(&api.base, &victim).await?;
        holds(snapshot["attempt"].as_u64().is_some_and(|a| a > attempt), || {
            format!("no new attempt: {snapshot}")
        })
    })
    .await
    .map_err(|e| format!("{e}; api log: {}", api.log()))?;

    let api_ids = tokio::time::timeout(Duration::from_secs(300), api_ids).await???;
    let worker_ids = tokio::time::timeout(Duration::from_secs(300), worker_ids).await???;
    let hopping = tokio::time::timeout(Duration::from_secs(300), hopping).await???;
    for id in &jobs {
        let snapshot = job(&api.base, id).await?;
        assert_eq!(snapshot["status"], "Completed", "{id}: {snapshot}; worker-2 log: {}", two.log());
        assert_eq!(count_of(&db, id, "job-completed").await?, 1, "{id} finished once");
        // The video is in the bucket, so every node still running serves the same bytes.
        let size = snapshot["output"]["sizeBytes"].as_u64().ok_or("no sizeBytes")?;
        for node in [&api, &two] {
            let res = reqwest::get(format!("{}/api/jobs/{id}/output", node.base)).await?;
            assert_eq!(res.status(), 200, "{id} from {}", node.base);
            let body = res.bytes().await?;
            assert_eq!(body.len() as u64, size, "{id} from {}", node.base);
        }
    }
    assert_eq!(s3.videos().len(), jobs.len(), "one video per job in the bucket");
    assert!(crate::objects::output_files(root.path()).is_empty(), "no video in a node's data folder");
    let table = table_ids(&db).await?;
    assert_once_ascending("the API node's subscriber", &api_ids, &table);
    assert_once_ascending("the worker node's subscriber", &worker_ids, &table);
    assert_once_ascending("the hopping subscriber", &hopping, &table);
    let history: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/api/jobs/{victim}/history", api.base))
        .send()
        .await?
        .json()
        .await?;
    let lost = history
        .iter()
        .position(|e| e["type"] == "warning" && e["data"]["code"] == "node-lost")
        .ok_or("the victim's history says why it has a new attempt")?;
    // Script and Audio were verified and stored by the dead node: the other node takes them
    // from the bucket instead of doing them again.
    for step in ["Script", "Audio"] {
        let states: Vec<&Value> = history[lost..]
            .iter()
            .filter(|e| e["type"] == "step-status" && e["data"]["step"] == step)
            .map(|e| &e["data"]["state"])
            .collect();
        assert_eq!(states, [&json!("Skipped")], "{step} after node-lost; worker-2 log: {}", two.log());
    }
    let left = s3.stage_files_after_cleanup().await;
    assert!(left.is_empty(), "no stage artifact left in the bucket: {left:?}");
    Ok(())
}

/// Pids of processes whose command line names `needle`.
pub(crate) fn processes_naming(needle: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let named = std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle));
        if named {
            pids.insert(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_api_node_kills_ffmpeg_on_the_worker_node_within_three_seconds() -> TestResult {
    let db = database().await?;
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 2.0)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &db, 1, &ffmpeg).await?;
    let id = create(&api.base, "cancel me across nodes", 20).await?;
    let job_dir = worker.dir.join("data").join("jobs").join(&id);
    let needle = job_dir.to_string_lossy().into_owned();
    eventually(BOUND, || async {
        holds(!processes_naming(&needle).is_empty(), || "the worker runs no ffmpeg for the job".into())
    })
    .await
    .map_err(|e| format!("{e}; its log: {}", worker.log()))?;
    let res = reqwest::Client::new().post(format!("{}/api/jobs/{id}/cancel", api.base)).send().await?;
    assert_eq!(res.status(), 202);
    // ffmpeg stops within 3 s of the cancel.
    eventually(Duration::from_secs(3), || async {
        holds(processes_naming(&needle).is_empty(), || "ffmpeg still runs after the cancel".into())
    })
    .await?;
    eventually(Duration::from_secs(20), || async {
        let snapshot = job(&api.base, &id).await?;
        holds(snapshot["status"] == "Cancelled", || format!("the job did not end Cancelled: {snapshot}"))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_the_database_for_ten_seconds_keeps_its_streams_and_finishes_nothing_twice()
-> TestResult {
    let pg = OwnCluster::start()?;
    let db = pg.url.clone();
    let root = tempfile::tempdir()?;
    let ffmpeg = slow_ffmpeg(root.path(), 2.0)?;
    let api = Node::start(root.path(), "api", &db, 0, &ffmpeg).await?;
    let worker = Node::start(root.path(), "worker", &db, 1, &ffmpeg).await?;
    let id = create(&api.base, "outlive the database", 6).await?;
    let jobs: BTreeSet<String> = [id.clone()].into();
    let on_api = tokio::spawn(follow_all(open(&api.base, "/api/events", 0).await?, jobs.clone()));
    let on_worker = tokio::spawn(follow_all(open(&worker.base, "/api/events", 0).await?, jobs.clone()));
    eventually(BOUND, || async {
        let status = job(&api.base, &id).await?["status"].clone();
        holds(status == "Running", || format!("the job is {status}"))
    })
    .await
    .map_err(|e| format!("{e}; worker log: {}", worker.log()))?;
    pg.pause()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    pg.resume()?;
    let api_ids = tokio::time::timeout(Duration::from_secs(300), on_api).await???;
    let worker_ids = tokio::time::timeout(Duration::from_secs(300), on_worker).await???;
    let snapshot = job(&api.base, &id).await?;
    let table = table_ids(&db).await?;
    assert_once_ascending("the API node's stream", &api_ids, &table);
    assert_once_ascending("the worker node's stream", &worker_ids, &table);
    let finished = count_of(&db, &id, "job-completed").await? + count_of(&db, &id, "job-failed").await?;
    assert_eq!(finished, 1, "the job ended once: {snapshot}; worker log: {}", worker.log());
    assert_eq!(snapshot["status"], "Completed", "{snapshot}");
    assert!(snapshot["attempt"].as_u64() >= Some(2), "the lease expired: a new attempt finished the job");
    // After the last attempt began, only that attempt wrote: each stage started at most once,
    // in order (an attempt that outlived its lease and kept writing would start one again).
    let history: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/api/jobs/{id}/history", api.base))
        .send()
        .await?
        .json()
        .await?;
    let began = history
        .iter()
        .rposition(|e| e["type"] == "job-status" && e["data"]["status"] == "Running")
        .ok_or("no Running event")?;
    let started: Vec<&str> = history[began..]
        .iter()
        .filter(|e| e["type"] == "step-status" && e["data"]["state"] == "Started")
        .filter_map(|e| e["data"]["step"].as_str())
        .collect();
    let order = ["Script", "Audio", "Visuals", "Timeline", "Render"];
    let positions: Vec<usize> = started.iter().filter_map(|s| order.iter().position(|o| o == s)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "one attempt's stages after it began: {started:?}");
    Ok(())
}
