//! End-to-end tests of the render pipeline: the real app on a free port, a fresh SQLite file,
//! real ffmpeg and ffprobe, real HTTP. No mocks and no sleeps: tests follow the job's SSE
//! stream (which ends after the terminal event) under `tokio::time::timeout`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Sse, TestApp, TestResult, small_job, spawn_app_in, spawn_app_with};

/// A rendering job at test size should be done well within this, even on a busy 2-core box.
const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// `anyhow::ensure!` for functions that return [`TestResult`].
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($msg)+).into());
        }
    };
}

/// The app with one render worker and settings of the test's own.
async fn spawn_renderer(tweak: impl FnOnce(&mut aura::config::ServeConfig)) -> TestResult<TestApp> {
    spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        tweak(cfg);
    })
    .await
}

/// Waits for the job to end; fails unless it completed.
pub async fn completed(app: &TestApp, id: Uuid) -> TestResult<Value> {
    let job = app.finished(id, JOB_TIMEOUT).await?;
    ensure!(job["status"] == "Completed", "job ended {}: {}", job["status"], job["error"]);
    Ok(job)
}

/// [`small_job`] in another shape and format.
pub fn shaped(mut job: Value, aspect: &str, container: &str, codec: &str) -> Value {
    job["brief"]["aspect"] = json!(aspect);
    job["renderSpec"]["container"] = json!(container);
    job["renderSpec"]["codec"] = json!(codec);
    job
}

/// What ffprobe says about a file.
fn ffprobe(path: &Path) -> TestResult<Value> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-of", "json", "-show_format", "-show_streams"])
        .arg(path)
        .output()?;
    ensure!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

struct Expect {
    codec: &'static str,
    /// The codec tag players look for, where it matters (HEVC in MP4 must be `hvc1` for Apple).
    tag: Option<&'static str>,
    audio: &'static str,
    size: (u64, u64),
    ext: &'static str,
}

const STAGES: [&str; 5] = ["Script", "Audio", "Visuals", "Timeline", "Render"];

fn band(stage: &str) -> (f64, f64) {
    match stage {
        "Script" => (0.0, 15.0),
        "Audio" => (15.0, 35.0),
        "Visuals" => (35.0, 65.0),
        "Timeline" => (65.0, 85.0),
        _ => (85.0, 100.0),
    }
}

/// The history tells the whole story in order: every stage started then completed, percent
/// never down and inside each stage's band, progress in Audio, Visuals and Render, and each
/// stage's progress only while it runs (work started ahead of its stage stays quiet).
fn check_history(history: &[Value]) -> TestResult {
    let steps: Vec<(String, String)> = history
        .iter()
        .filter(|e| e["type"] == "step-status")
        .map(|e| {
            (
                e["data"]["step"].as_str().unwrap_or("").to_owned(),
                e["data"]["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = STAGES
        .iter()
        .flat_map(|s| [(s.to_string(), "Started".to_owned()), (s.to_string(), "Completed".to_owned())])
        .collect();
    ensure!(steps == expected, "step-status order: {steps:?}");
    let mut last = 0.0;
    let mut running = String::new();
    for e in history {
        if e["type"] == "step-status" {
            let step = e["data"]["step"].as_str().unwrap_or("").to_owned();
            running = if e["data"]["state"] == "Started" { step } else { String::new() };
        }
        if e["type"] == "step-progress" {
            ensure!(
                e["data"]["step"] == running.as_str(),
                "progress of {} while {running:?} runs",
                e["data"]["step"]
            );
        }
        if let Some(p) = e["data"]["percent"].as_f64() {
            ensure!(p >= last, "percent went down from {last} to {p}");
            last = p;
        }
        if e["type"] == "step-progress" {
            let step = e["data"]["step"].as_str().unwrap_or("");
            let (lo, hi) = band(step);
            let p = e["data"]["percent"].as_f64().unwrap_or(-1.0);
            ensure!((lo..=hi).contains(&p), "{step} progress at {p} % overall, outside {lo}..{hi}");
            let pct = e["data"]["progressPct"].as_f64().unwrap_or(-1.0);
            ensure!((0.0..=100.0).contains(&pct), "progressPct {pct}");
        }
    }
    ensure!(last == 100.0, "the job ended at {last} %");
    for stage in ["Audio", "Visuals", "Render"] {
        ensure!(
            history.iter().any(|e| e["type"] == "step-progress" && e["data"]["step"] == stage),
            "no step-progress in {stage}"
        );
    }
    let last = history.last().context("empty history")?;
    ensure!(last["type"] == "job-completed", "last event {}", last["type"]);
    Ok(())
}

async fn renders(body: Value, expect: Expect) -> TestResult {
    let app = spawn_renderer(|_| {}).await?;
    let id = app.create(&body).await?;
    let job = completed(&app, id).await?;
    let output = &job["output"];
    let video_path = output["videoPath"].as_str().context("videoPath")?;
    assert_eq!(video_path, format!("jobs/{id}/output.{}", expect.ext));
    assert_eq!(output["videoUrl"], format!("/api/jobs/{id}/output"));
    let file = app.data_path(video_path);
    assert_eq!(output["sizeBytes"].as_u64(), Some(std::fs::metadata(&file)?.len()));

    let probe = ffprobe(&file)?;
    let streams = probe["streams"].as_array().context("streams")?;
    let video = streams.iter().find(|s| s["codec_type"] == "video").context("no video stream")?;
    assert_eq!(video["codec_name"], expect.codec);
    if let Some(tag) = expect.tag {
        assert_eq!(video["codec_tag_string"], tag);
    }
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(expect.size.0), Some(expect.size.1))
    );
    assert_eq!(video["r_frame_rate"], "10/1");
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").context("no audio stream")?;
    assert_eq!(audio["codec_name"], expect.audio);
    let duration: f64 = probe["format"]["duration"].as_str().context("duration")?.parse()?;
    assert!((duration - 3.0).abs() <= 0.15, "duration {duration} s is not within 5 % of 3 s");
    let reported = output["durationSec"].as_f64().context("durationSec")?;
    assert!((reported - duration).abs() < 0.01, "durationSec {reported} vs ffprobe {duration}");

    check_history(&app.history(id).await?)?;
    // Intermediate files are gone; the output stays.
    assert!(!app.data_path(&format!("jobs/{id}/work")).exists(), "work files left behind");
    app.stop().await
}

#[tokio::test]
async fn a_widescreen_mp4_h264_job_renders_with_the_requested_format() -> TestResult {
    let body = shaped(small_job("Widescreen test"), "Widescreen16x9", "mp4", "h264");
    renders(body, Expect { codec: "h264", tag: None, audio: "aac", size: (854, 480), ext: "mp4" }).await
}

#[tokio::test]
async fn a_vertical_mp4_h264_job_renders_with_the_requested_format() -> TestResult {
    let body = shaped(small_job("Vertical test"), "Vertical9x16", "mp4", "h264");
    renders(body, Expect { codec: "h264", tag: None, audio: "aac", size: (480, 854), ext: "mp4" }).await
}

#[tokio::test]
async fn a_square_mkv_hevc_job_renders_with_the_requested_format() -> TestResult {
    let body = shaped(small_job("Square test"), "Square1x1", "mkv", "hevc");
    renders(body, Expect { codec: "hevc", tag: None, audio: "aac", size: (480, 480), ext: "mkv" }).await
}

#[tokio::test]
async fn a_webm_vp9_job_renders_with_the_requested_format() -> TestResult {
    let body = shaped(small_job("WebM test"), "Widescreen16x9", "webm", "vp9");
    renders(body, Expect { codec: "vp9", tag: None, audio: "opus", size: (854, 480), ext: "webm" }).await
}

#[tokio::test]
async fn an_mp4_hevc_job_renders_tagged_hvc1() -> TestResult {
    let body = shaped(small_job("HEVC test"), "Widescreen16x9", "mp4", "hevc");
    renders(body, Expect { codec: "hevc", tag: Some("hvc1"), audio: "aac", size: (854, 480), ext: "mp4" })
        .await
}

#[tokio::test]
async fn a_webm_av1_job_renders_with_the_requested_format() -> TestResult {
    let body = shaped(small_job("AV1 test"), "Vertical9x16", "webm", "av1");
    renders(body, Expect { codec: "av1", tag: None, audio: "opus", size: (480, 854), ext: "webm" }).await
}

#[tokio::test]
async fn a_topic_full_of_quotes_percent_backslashes_shell_and_emoji_renders() -> TestResult {
    let app = spawn_renderer(|_| {}).await?;
    let mut body =
        shaped(small_job("It's 100% \"quoted\": a\\b; $(rm -rf ~) 👋 שלום"), "Widescreen16x9", "mp4", "h264");
    // Two scenes, and a voice flite does not have.
    body["planSpec"]["targetDuration"] = json!("00:00:08");
    body["voiceSpec"]["voiceName"] = json!("Klingon Commander");
    let id = app.create(&body).await?;
    let job = completed(&app, id).await?;
    let duration = job["output"]["durationSec"].as_f64().context("durationSec")?;
    assert!((duration - 8.0).abs() <= 0.4, "duration {duration}");
    let history = app.history(id).await?;
    check_history(&history)?;
    let warning = history.iter().find(|e| e["type"] == "warning").context("no voice warning")?;
    assert_eq!(warning["data"]["code"], "voice-substituted");
    assert_eq!(warning["data"]["step"], "Audio");
    app.stop().await
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{}: {cmdline}", name.to_string_lossy()));
            }
        }
    }
    found
}

/// Starts a job long and large enough that Visuals is still running minutes later, and waits
/// until its Visuals stage has started and one of its ffmpeg processes is visible. Returns the
/// job id and the job folder's path, which every ffmpeg of the job has on its command line.
async fn start_a_long_job_and_wait_for_visuals(app: &TestApp) -> TestResult<(Uuid, String)> {
    let mut body = shaped(small_job("A long job"), "Widescreen16x9", "mp4", "h264");
    body["planSpec"]["targetDuration"] = json!("00:01:00");
    body["renderSpec"]["res"] = json!("1080p");
    body["renderSpec"]["fps"] = json!(30);
    body["renderSpec"]["qualityLevel"] = json!("Maximum");
    let id = app.create(&body).await?;
    let visuals_started =
        |e: &Sse| e.kind == "step-status" && e.data["step"] == "Visuals" && e.data["state"] == "Started";
    let seen = tokio::time::timeout(JOB_TIMEOUT, app.follow(id, visuals_started)).await??;
    ensure!(seen.last().is_some_and(visuals_started), "the job ended before Visuals");
    let needle = app.data_path(&format!("jobs/{id}")).to_string_lossy().into_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        while processes_mentioning(&needle).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .map_err(|_| anyhow!("no ffmpeg of the job ever showed up"))?;
    Ok((id, needle))
}

#[tokio::test]
async fn shutting_down_kills_the_running_ffmpeg_and_leaves_the_job_running() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    let app = spawn_renderer(|_| {}).await?;
    let (id, needle) = start_a_long_job_and_wait_for_visuals(&app).await?;
    let mut app = app;
    let data_dir = app.keep_dir()?;
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .map_err(|_| anyhow!("shutdown took over 10 s"))??;
    let survivors = processes_mentioning(&needle);
    assert!(survivors.is_empty(), "processes survived the shutdown: {survivors:?}");

    // A restart (API only) finds the job orphaned in Visuals, with nothing appended for the stop:
    // recovery gives it a second attempt and says where the first one stopped.
    let again = spawn_app_in(data_dir, |cfg| cfg.workers = Some(0)).await?;
    let job = again.job(id).await?;
    assert_eq!(job["status"], "Running");
    assert_eq!(job["attempt"], 2);
    let history = again.history(id).await?;
    let restarted = history.iter().find(|e| e["data"]["code"] == "engine-restarted");
    assert_eq!(restarted.map(|e| e["data"]["step"].clone()), Some(json!("Visuals")));
    let odd: Vec<&Value> = history
        .iter()
        .filter(|e| {
            matches!(e["type"].as_str(), Some("job-failed" | "job-cancelled" | "error" | "job-completed"))
        })
        .collect();
    assert!(odd.is_empty(), "the shutdown appended {odd:?}");
    again.stop().await
}

#[tokio::test]
async fn cancelling_during_visuals_kills_ffmpeg_removes_files_and_ends_within_three_seconds() -> TestResult {
    let app = spawn_renderer(|_| {}).await?;
    // Long and large enough that Visuals is still running when the cancel arrives.
    let mut body = shaped(small_job("Cancel me"), "Widescreen16x9", "mp4", "h264");
    body["planSpec"]["targetDuration"] = json!("00:01:00");
    body["renderSpec"]["res"] = json!("1080p");
    body["renderSpec"]["fps"] = json!(30);
    body["renderSpec"]["qualityLevel"] = json!("Maximum");
    let id = app.create(&body).await?;
    let visuals_started =
        |e: &Sse| e.kind == "step-status" && e.data["step"] == "Visuals" && e.data["state"] == "Started";
    let seen = tokio::time::timeout(JOB_TIMEOUT, app.follow(id, visuals_started)).await??;
    ensure!(seen.last().is_some_and(visuals_started), "the job ended before Visuals");

    // The scene's ffmpeg is running with the job's folder on its command line.
    let job_dir = app.data_path(&format!("jobs/{id}"));
    let needle = job_dir.to_string_lossy().into_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        while processes_mentioning(&needle).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .map_err(|_| anyhow!("no ffmpeg of the job ever showed up"))?;

    let asked = Instant::now();
    assert_eq!(app.cancel(id).await?, 202);
    let events = tokio::time::timeout(Duration::from_secs(3), app.follow(id, |_| false))
        .await
        .map_err(|_| anyhow!("no job-cancelled within 3 s"))??;
    let elapsed = asked.elapsed();
    let last = events.last().context("no events")?;
    assert_eq!(last.kind, "job-cancelled");
    assert_eq!(last.data["step"], "Visuals");
    assert!(elapsed <= Duration::from_secs(3), "cancel took {elapsed:?}");

    let survivors = processes_mentioning(&needle);
    assert!(survivors.is_empty(), "processes survived the cancel: {survivors:?}");
    assert!(!job_dir.exists(), "the job's files were not removed");
    assert_eq!(app.job(id).await?["status"], "Cancelled");
    assert_eq!(app.cancel(id).await?, 409);
    assert_eq!(app.output(id, None).await?.status(), 404);
    app.stop().await
}

#[tokio::test]
async fn a_failing_ffmpeg_fails_the_job_without_leaking_paths() -> TestResult {
    let scripts = tempfile::tempdir()?;
    let fake = scripts.path().join("ffmpeg-broken");
    std::fs::write(&fake, "#!/bin/sh\necho \"cannot open /very/secret/path\" >&2\nexit 1\n")?;
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let fake_for_cfg = fake.clone();
    let app = spawn_renderer(move |cfg| cfg.ffmpeg = fake_for_cfg).await?;
    let id = app.create(&shaped(small_job("Broken"), "Widescreen16x9", "mp4", "h264")).await?;
    let job = app.finished(id, JOB_TIMEOUT).await?;
    assert_eq!(job["status"], "Failed");
    let history = app.history(id).await?;
    let failed = history.iter().find(|e| e["type"] == "job-failed").context("no job-failed")?;
    assert_eq!(failed["data"]["error"]["code"], "ffmpeg-failed");
    assert_eq!(failed["data"]["step"], "Audio");
    let text = failed["data"].to_string();
    for leak in [
        "/very/secret",
        "flite",
        "-i ",
        &scripts.path().to_string_lossy(),
        &app.data_path("").to_string_lossy(),
    ] {
        assert!(!text.contains(leak), "job-failed leaks {leak:?}: {text}");
    }
    assert!(!app.data_path(&format!("jobs/{id}")).exists(), "the failed job's files were not removed");
    app.stop().await
}

#[tokio::test]
async fn a_missing_ffmpeg_makes_health_503_and_jobs_fail_ffmpeg_missing() -> TestResult {
    let app = spawn_renderer(|cfg| cfg.ffmpeg = PathBuf::from("/nonexistent/aura-test/ffmpeg")).await?;
    let health = app.client.get(app.url("/api/health")).send().await?;
    assert_eq!(health.status(), 503);
    let id = app.create(&shaped(small_job("No ffmpeg"), "Widescreen16x9", "mp4", "h264")).await?;
    let job = app.finished(id, JOB_TIMEOUT).await?;
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["error"]["code"], "ffmpeg-missing");
    let message = job["error"]["message"].as_str().context("message")?;
    assert!(!message.contains("/nonexistent"), "message leaks the path: {message}");
    app.stop().await
}

#[tokio::test]
async fn the_output_is_served_whole_and_by_range() -> TestResult {
    let app = spawn_renderer(|_| {}).await?;
    let bad = app.client.get(app.url("/api/jobs/not-a-uuid/output")).send().await?;
    assert_eq!(bad.status(), 400);
    let unknown = app.output(Uuid::new_v4(), None).await?;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["content-type"], "application/problem+json");

    let id = app.create(&shaped(small_job("Range test"), "Square1x1", "mp4", "h264")).await?;
    let early = app.output(id, None).await?;
    assert_eq!(early.status(), 404, "served before completion");
    assert_eq!(early.headers()["content-type"], "application/problem+json");
    let job = completed(&app, id).await?;
    let size = job["output"]["sizeBytes"].as_u64().context("sizeBytes")?;
    let file = std::fs::read(app.data_path(job["output"]["videoPath"].as_str().context("videoPath")?))?;

    let whole = app.output(id, None).await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    let body = whole.bytes().await?;
    assert_eq!(body.len() as u64, size);
    assert_eq!(&body[..], &file[..]);

    let part = app.output(id, Some("bytes=0-99")).await?;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 0-99/{size}").as_str());
    let body = part.bytes().await?;
    assert_eq!(&body[..], &file[..100]);

    let beyond = app.output(id, Some(&format!("bytes={}-", size + 10))).await?;
    assert_eq!(beyond.status(), 416);
    app.stop().await
}
