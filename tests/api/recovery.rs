//! Crash recovery against the real binary: SIGKILL in every stage, a crash while cancelling,
//! a job that keeps crashing the server, and SIGTERM mid-render.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{ServerProcess, free_port};
use crate::helpers::{SseStream, TestResult, WAIT, eventually, holds};

/// An ffmpeg that waits `secs` before doing its work, so a test can act mid-stage; with
/// `ignore_term` it also shrugs off SIGTERM (as a stuck encoder would).
fn slow_ffmpeg(dir: &Path, secs: f64, ignore_term: bool) -> TestResult<PathBuf> {
    let path = dir.join(if ignore_term { "stubborn-ffmpeg" } else { "slow-ffmpeg" });
    let trap = if ignore_term { "trap '' TERM\n" } else { "" };
    std::fs::write(&path, format!("#!/bin/sh\n{trap}sleep {secs}\nexec ffmpeg \"$@\"\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

async fn start(data: &Path, port: u16, ffmpeg: &Path, extra: &[&str]) -> TestResult<ServerProcess> {
    let ffmpeg = ffmpeg.to_string_lossy().into_owned();
    let mut args = vec!["--workers", "1", "--ffmpeg", &ffmpeg];
    args.extend_from_slice(extra);
    ServerProcess::start(data, port, &args).await
}

async fn create(base: &str) -> TestResult<String> {
    let body = json!({"brief": {"topic": "crash me"}, "planSpec": {"targetDuration": "00:00:04"},
                      "renderSpec": {"res": "480p", "fps": 10}});
    let created: Value =
        reqwest::Client::new().post(format!("{base}/api/jobs")).json(&body).send().await?.json().await?;
    Ok(created["jobId"].as_str().ok_or("no jobId")?.to_owned())
}

async fn open(base: &str, id: &str, last: i64) -> TestResult<SseStream> {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/jobs/{id}/events"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await?;
    Ok(SseStream::new(res))
}

/// Reads events until `until` says stop; returns them as (id, type, data).
async fn read_until(
    stream: &mut SseStream,
    seen: &mut Vec<(i64, String, Value)>,
    until: impl Fn(&str, &Value) -> bool,
) -> TestResult {
    loop {
        let (id, kind, data) = tokio::time::timeout(Duration::from_secs(60), stream.next_event())
            .await??
            .ok_or("stream ended")?;
        let stop = until(&kind, &data);
        seen.push((id, kind, data));
        if stop {
            return Ok(());
        }
    }
}

/// Pids of processes working for the job (its folder in their cwd or arguments).
fn job_processes(job_dir: &Path) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let cwd = std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(job_dir));
        let cmd = std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&job_dir.to_string_lossy().into_owned()));
        if cwd || cmd {
            pids.insert(pid);
        }
    }
    pids
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

async fn history(base: &str, id: &str) -> TestResult<Vec<Value>> {
    Ok(reqwest::get(format!("{base}/api/jobs/{id}/history?limit=10000")).await?.json().await?)
}

fn stages_with(history: &[Value], state: &str, attempt_range: std::ops::Range<usize>) -> BTreeSet<String> {
    history[attempt_range]
        .iter()
        .filter(|e| e["type"] == "step-status" && e["data"]["state"] == state)
        .filter_map(|e| e["data"]["step"].as_str().map(str::to_owned))
        .collect()
}

async fn kill_during(stage: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ffmpeg = slow_ffmpeg(dir.path(), 0.7, false)?;
    let port = free_port()?;
    let server = start(&data, port, &ffmpeg, &[]).await?;
    let id = create(&server.base).await?;
    let mut seen = Vec::new();
    let mut stream = open(&server.base, &id, 0).await?;
    read_until(&mut stream, &mut seen, |kind, d| {
        kind == "step-status" && d["step"] == stage && d["state"] == "Started"
    })
    .await?;
    let job_dir = std::fs::canonicalize(&data)?.join("jobs").join(&id);
    let first_run = job_processes(&job_dir);
    server.kill().await?;

    let server = start(&data, port, &ffmpeg, &[]).await?;
    let last = seen.last().map_or(0, |e| e.0);
    let mut stream = open(&server.base, &id, last).await?;
    read_until(&mut stream, &mut seen, |kind, _| kind.starts_with("job-") && kind != "job-status").await?;
    assert_eq!(stream.next_event().await?, None, "the stream ends after the terminal event");

    let history = history(&server.base, &id).await?;
    let rows: Vec<i64> = history.iter().filter_map(|e| e["id"].as_i64()).collect();
    let seen_ids: Vec<i64> = seen.iter().map(|e| e.0).collect();
    assert_eq!(seen_ids, rows, "every event once, in order, across the kill");
    let snap: Value = reqwest::get(format!("{}/api/jobs/{id}", server.base)).await?.json().await?;
    assert_eq!((snap["status"].as_str(), snap["attempt"].as_i64()), (Some("Completed"), Some(2)), "{snap}");

    let restart =
        history.iter().position(|e| e["data"]["code"] == "engine-restarted").ok_or("no engine-restarted")?;
    assert!(history[restart]["data"]["step"].is_string());
    let completed_before = stages_with(&history, "Completed", 0..restart);
    let skipped_after = stages_with(&history, "Skipped", restart..history.len());
    assert!(
        completed_before.is_subset(&skipped_after),
        "{completed_before:?} not all skipped: {skipped_after:?}"
    );
    assert!(!skipped_after.contains(stage) || stage == "Script", "{stage} was running, yet skipped");
    let mut last_percent = -1.0;
    for e in &history[restart + 1..] {
        if let Some(p) = e["data"]["percent"].as_f64() {
            assert!(p >= last_percent, "percent went down within attempt 2");
            last_percent = p;
        }
    }
    for pid in first_run {
        assert!(!alive(pid), "process {pid} of the first run survived");
    }
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_sigkill_during_script_is_recovered_with_attempt_2() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    kill_during("Script").await
}

#[tokio::test]
async fn a_sigkill_during_audio_is_recovered_skipping_what_was_done() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    kill_during("Audio").await
}

#[tokio::test]
async fn a_sigkill_during_visuals_is_recovered_skipping_what_was_done() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    kill_during("Visuals").await
}

#[tokio::test]
async fn a_sigkill_during_timeline_is_recovered_skipping_what_was_done() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    kill_during("Timeline").await
}

#[tokio::test]
async fn a_sigkill_during_render_is_recovered_skipping_what_was_done() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    kill_during("Render").await
}

#[tokio::test]
async fn a_sigkill_while_cancelling_ends_cancelled_after_restart() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ffmpeg = slow_ffmpeg(dir.path(), 5.0, true)?;
    let port = free_port()?;
    let server = start(&data, port, &ffmpeg, &[]).await?;
    let id = create(&server.base).await?;
    let mut seen = Vec::new();
    let mut stream = open(&server.base, &id, 0).await?;
    read_until(&mut stream, &mut seen, |kind, d| kind == "step-status" && d["step"] == "Audio").await?;
    let res = reqwest::Client::new().post(format!("{}/api/jobs/{id}/cancel", server.base)).send().await?;
    assert_eq!(res.status(), 202);
    read_until(&mut stream, &mut seen, |_, d| d["status"] == "Cancelling").await?;
    server.kill().await?;

    let server = start(&data, port, &ffmpeg, &[]).await?;
    let snap: Value = reqwest::get(format!("{}/api/jobs/{id}", server.base)).await?.json().await?;
    assert_eq!(snap["status"], "Cancelled", "{snap}");
    let history = history(&server.base, &id).await?;
    assert_eq!(history.last().map(|e| e["type"].clone()), Some(json!("job-cancelled")));
    assert!(!data.join("jobs").join(&id).exists(), "work files of a cancelled job are cleaned");
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_job_that_keeps_killing_the_server_ends_too_many_attempts() -> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ffmpeg = slow_ffmpeg(dir.path(), 3.0, false)?;
    let port = free_port()?;
    let limit = ["--max-attempts", "2"];
    let mut server = start(&data, port, &ffmpeg, &limit).await?;
    let id = create(&server.base).await?;
    for attempt in 1..=2 {
        let mut seen = Vec::new();
        let mut stream = open(&server.base, &id, 0).await?;
        read_until(&mut stream, &mut seen, |kind, d| {
            kind == "step-status" && d["step"] == "Audio" && d["state"] == "Started"
        })
        .await?;
        let snap: Value = reqwest::get(format!("{}/api/jobs/{id}", server.base)).await?.json().await?;
        assert_eq!(snap["attempt"], attempt);
        // Read to the newest Audio start: the first stream replays attempt 1 too.
        server.kill().await?;
        server = start(&data, port, &ffmpeg, &limit).await?;
        if attempt == 1 {
            // Wait for attempt 2's Audio start on the restarted server.
            let mut stream = open(&server.base, &id, 0).await?;
            let mut seen2 = Vec::new();
            read_until(&mut stream, &mut seen2, |kind, d| kind == "job-status" && d["attempt"] == 2).await?;
            read_until(&mut stream, &mut seen2, |kind, d| {
                kind == "step-status" && d["step"] == "Audio" && d["state"] == "Started"
            })
            .await?;
        }
    }
    let snap: Value = reqwest::get(format!("{}/api/jobs/{id}", server.base)).await?.json().await?;
    assert_eq!(snap["status"], "Failed", "{snap}");
    assert_eq!(snap["error"]["code"], "too-many-attempts");
    let history = history(&server.base, &id).await?;
    let restarts = history.iter().filter(|e| e["data"]["code"] == "engine-restarted").count();
    assert_eq!(restarts, 2);
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_mid_render_exits_cleanly_and_the_job_resumes_on_the_next_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ffmpeg = slow_ffmpeg(dir.path(), 2.0, false)?;
    let port = free_port()?;
    let server = start(&data, port, &ffmpeg, &[]).await?;
    let id = create(&server.base).await?;
    let mut seen = Vec::new();
    let mut stream = open(&server.base, &id, 0).await?;
    read_until(&mut stream, &mut seen, |kind, d| kind == "step-status" && d["step"] == "Render").await?;
    let mut child = server.child;
    let pid = i32::try_from(child.id().ok_or("no pid")?)?;
    let started = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // The open stream ended cleanly.
    while tokio::time::timeout(WAIT, stream.next_event()).await??.is_some() {}

    let server = start(&data, port, &ffmpeg, &[]).await?;
    let mut stream = open(&server.base, &id, seen.last().map_or(0, |e| e.0)).await?;
    read_until(&mut stream, &mut seen, |kind, _| kind == "job-completed").await?;
    let snap: Value = reqwest::get(format!("{}/api/jobs/{id}", server.base)).await?.json().await?;
    assert_eq!((snap["status"].as_str(), snap["attempt"].as_i64()), (Some("Completed"), Some(2)));
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_restart_kills_the_ffmpeg_it_left_behind_but_not_an_unrelated_process_in_the_job_folder()
-> TestResult {
    if crate::helpers::sqlite_only("recovery at the start of the one process that holds the data folder") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // Long enough to be still running at the restart, whatever the machine's speed.
    let ffmpeg = slow_ffmpeg(dir.path(), 60.0, true)?;
    let port = free_port()?;
    let server = start(&data, port, &ffmpeg, &[]).await?;
    let id = create(&server.base).await?;
    let mut seen = Vec::new();
    let mut stream = open(&server.base, &id, 0).await?;
    read_until(&mut stream, &mut seen, |kind, d| {
        kind == "step-status" && d["step"] == "Audio" && d["state"] == "Started"
    })
    .await?;
    let job_dir = std::fs::canonicalize(&data)?.join("jobs").join(&id);
    // The server's children for the job: wait (bounded) until its ffmpeg runs.
    let left_behind = eventually(WAIT, || async {
        let found = job_processes(&job_dir);
        holds(!found.is_empty(), || "no ffmpeg started for the job".into())?;
        Ok(found)
    })
    .await?;
    // An operator's process working in the job folder, in a process group of its own.
    let mut unrelated = tokio::process::Command::new("sleep")
        .arg("60")
        .current_dir(&job_dir)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let unrelated_pid = unrelated.id().ok_or("no pid")?;
    server.kill().await?;

    // The restart's recovery runs before it answers its first request.
    let server = start(&data, port, &ffmpeg, &[]).await?;
    assert!(unrelated.try_wait()?.is_none(), "the unrelated process was killed");
    eventually(WAIT, || async {
        holds(!left_behind.iter().any(|pid| alive(*pid)), || {
            "the ffmpeg left behind survived the restart".into()
        })
    })
    .await?;
    assert!(!left_behind.contains(&unrelated_pid));
    unrelated.start_kill()?;
    unrelated.wait().await?;
    // SIGTERM: the server stops the new attempt's children before it exits.
    let mut server = server;
    let pid = server.child.id().and_then(|p| i32::try_from(p).ok()).ok_or("no pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)?;
    tokio::time::timeout(WAIT, server.child.wait()).await??;
    Ok(())
}
