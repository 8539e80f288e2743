//! The object store under faults (API.md "Disk": a video that cannot be stored waits with a
//! `warning` `waiting-for-storage` and is retried with backoff; the local render is deleted only
//! once the stored copy is verified). A real `s3s-fs` behind the fault proxy of `faults.rs`, a
//! real render.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::faults::{FaultProxy, Mode};
use crate::helpers::small_job;
use crate::helpers::{TestApp, TestResult, spawn_app_with};
use crate::objects::{BUCKET, PREFIX, S3, output_files, restart_in, states_after};
use crate::pipeline::{completed, shaped};

/// The longest the job may take to reach the store's fault.
const BOUND: Duration = Duration::from_secs(180);

/// One render worker whose videos go to `s3` through `proxy`.
async fn spawn_through(s3: &S3, proxy: &FaultProxy) -> TestResult<TestApp> {
    let mut options = s3.options();
    for (key, value) in &mut options.0 {
        if key == "aws_endpoint" {
            *value = format!("http://127.0.0.1:{}", proxy.port);
        }
    }
    spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        cfg.storage_url = Some(format!("s3://{BUCKET}/{PREFIX}"));
        cfg.storage_options = options;
    })
    .await
}

/// The job's `warning` events with `code`.
async fn warnings(app: &TestApp, id: Uuid, code: &str) -> TestResult<Vec<Value>> {
    Ok(app
        .history(id)
        .await?
        .into_iter()
        .filter(|e| e["type"] == "warning" && e["data"]["code"] == code)
        .collect())
}

/// Waits (bounded) for the job's `waiting-for-storage` warning; the job must not end meanwhile.
async fn waiting_for_storage(app: &TestApp, id: Uuid) -> TestResult {
    let deadline = Instant::now() + BOUND;
    while warnings(app, id, "waiting-for-storage").await?.is_empty() {
        let job = app.job(id).await?;
        let ended = matches!(job["status"].as_str(), Some("Completed" | "Failed" | "Cancelled"));
        assert!(!ended, "job ended: {job}");
        assert!(Instant::now() < deadline, "no waiting-for-storage warning: {:?}", app.history(id).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_video_the_store_cannot_take_waits_with_a_warning_and_is_stored_once_the_store_is_back()
-> TestResult {
    let s3 = S3::start().await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], s3.port()))).await?;
    let app = spawn_through(&s3, &proxy).await?;
    let id =
        app.create(&shaped(small_job("Stored once the store is back"), "Square1x1", "mp4", "h264")).await?;
    // The store goes away while the job renders (after every earlier stage stored its artifacts).
    let render = |e: &crate::helpers::Sse| {
        e.kind == "step-status" && e.data["step"] == "Render" && e.data["state"] == "Started"
    };
    tokio::time::timeout(BOUND, app.follow(id, render)).await??;
    proxy.set(Mode::Refuse);
    proxy.cut_all();

    waiting_for_storage(&app, id).await?;
    assert_eq!(app.job(id).await?["status"], "Running", "the job waits, it does not fail");
    let kept = output_files(&app.data_path(""));
    assert_eq!(kept.len(), 1, "the render is kept while the store is away: {kept:?}");
    assert!(s3.videos().is_empty(), "nothing reached the store");

    // The store comes back: the next retry stores the video, and only then is the render removed.
    proxy.set(Mode::Pass);
    let job = completed(&app, id).await?;
    assert_eq!(s3.videos().len(), 1, "the bucket holds the video");
    let left = output_files(&app.data_path(""));
    assert!(left.is_empty(), "the local render is deleted once stored: {left:?}");
    let whole = app.output(id, None).await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(Some(whole.bytes().await?.len() as u64), job["output"]["sizeBytes"].as_u64());
    assert_eq!(warnings(&app, id, "waiting-for-storage").await?.len(), 1, "one warning for one outage");
    app.stop().await
}

#[tokio::test]
async fn a_stage_whose_artifacts_the_store_cannot_take_waits_with_a_warning_before_the_next_stage()
-> TestResult {
    let s3 = S3::start().await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], s3.port()))).await?;
    let app = spawn_through(&s3, &proxy).await?;
    // The store is away before the first stage ends.
    proxy.set(Mode::Refuse);
    let id =
        app.create(&shaped(small_job("Artifacts wait for the store"), "Square1x1", "mp4", "h264")).await?;

    waiting_for_storage(&app, id).await?;
    let warning = warnings(&app, id, "waiting-for-storage").await?.remove(0);
    assert_eq!(warning["data"]["step"], "Script", "the first stage's artifacts wait: {warning}");
    // While they wait, the job is Running and no later stage has started.
    let job = app.job(id).await?;
    assert_eq!((job["status"].as_str(), job["stage"].as_str()), (Some("Running"), Some("Script")), "{job}");
    let history = app.history(id).await?;
    assert!(states_after(&history, "Audio").is_empty(), "Audio started before Script was stored");

    proxy.set(Mode::Pass);
    completed(&app, id).await?;
    assert_eq!(s3.videos().len(), 1, "the bucket holds the video");
    assert_eq!(warnings(&app, id, "waiting-for-storage").await?.len(), 1, "one warning for one outage");
    app.stop().await
}

/// A new attempt, on a node without the job's local files, cannot reach the store that holds
/// its verified stage artifacts: it does not wait on them nor fail, it does those stages again;
/// its finished video waits for the store (`waiting-for-storage`) until it is back.
#[tokio::test]
async fn a_new_attempt_that_cannot_reach_the_stored_stages_redoes_them_and_completes() -> TestResult {
    let s3 = S3::start().await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], s3.port()))).await?;
    let tools = tempfile::tempdir()?;
    let slow = tools.path().join("slow-ffmpeg");
    std::fs::write(&slow, "#!/bin/sh\nsleep 0.5\nexec ffmpeg \"$@\"\n")?;
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut options = s3.options();
    for (key, value) in &mut options.0 {
        if key == "aws_endpoint" {
            *value = format!("http://127.0.0.1:{}", proxy.port);
        }
    }
    let settings = |cfg: &mut aura::config::ServeConfig| {
        cfg.workers = Some(1);
        cfg.storage_url = Some(format!("s3://{BUCKET}/{PREFIX}"));
        cfg.storage_options = options.clone();
        cfg.ffmpeg = slow.clone();
    };
    let mut app = crate::helpers::spawn_app_in(tempfile::tempdir()?, settings).await?;
    let id = app.create(&shaped(small_job("Stages out of reach"), "Square1x1", "mp4", "h264")).await?;
    let visuals = |e: &crate::helpers::Sse| {
        e.kind == "step-status" && e.data["step"] == "Visuals" && e.data["state"] == "Started"
    };
    tokio::time::timeout(BOUND, app.follow(id, visuals)).await??;
    let dir = app.keep_dir()?;
    app.stop().await?;
    assert!(!s3.stage_files().is_empty(), "Script and Audio stored their artifacts");

    // The next attempt finds no local files, as on another node, and the store is away.
    std::fs::remove_dir_all(dir.path().join("data/jobs").join(id.to_string()))?;
    proxy.set(Mode::Refuse);
    let app = crate::helpers::spawn_app_in(dir, settings).await?;
    waiting_for_storage(&app, id).await?;
    proxy.set(Mode::Pass);
    let job = completed(&app, id).await?;
    assert_eq!(job["attempt"], 2, "{job}");
    let history = app.history(id).await?;
    let script = states_after(&history[restart_in(&history)?..], "Script");
    assert_eq!(script, ["Started", "Completed"], "Script was done again, not waited for");
    assert_eq!(s3.videos().len(), 1, "the bucket holds the video");
    app.stop().await
}
