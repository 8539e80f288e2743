//! The `aura` binary as users run it: against the real server, as a separate process.

use std::process::Stdio;

use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{TestResult, WAIT, eventually, spawn_app};

pub const AURA: &str = env!("CARGO_BIN_EXE_aura");

pub fn aura(server: &str) -> Command {
    let mut cmd = Command::new(AURA);
    cmd.env("AURA_SERVER", server).env_remove("RUST_LOG").kill_on_drop(true).stdin(Stdio::null());
    cmd
}

async fn output(cmd: &mut Command) -> TestResult<(i32, String, String)> {
    let out = tokio::time::timeout(WAIT, cmd.output()).await??;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

#[tokio::test]
async fn jobs_lists_newest_first_and_show_prints_the_snapshot() -> TestResult {
    let app = spawn_app().await?;
    let first = app.create_job("first").await?;
    let second = app.create_job("second").await?;
    let (code, out, _) = output(aura(&app.base).arg("jobs")).await?;
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].starts_with(&second.to_string()) && rows[1].starts_with(&first.to_string()), "{out}");
    let (code, out, _) = output(aura(&app.base).args(["show", &first.to_string()])).await?;
    assert_eq!(code, 0);
    let snap: Value = serde_json::from_str(&out)?;
    assert_eq!(snap["jobId"], first.to_string());
    Ok(())
}

#[tokio::test]
async fn jobs_pages_with_before_and_all_and_every_list_has_json() -> TestResult {
    let app = spawn_app().await?;
    let mut made = Vec::new();
    for n in 0..5 {
        made.push(app.create_job(&format!("job {n}")).await?.to_string());
    }
    made.reverse();
    let ids = |out: &str| -> TestResult<Vec<String>> {
        out.lines()
            .map(|l| Ok(serde_json::from_str::<Value>(l)?["jobId"].as_str().ok_or("no jobId")?.to_owned()))
            .collect()
    };
    let (code, out, err) = output(aura(&app.base).args(["jobs", "--json", "--limit", "2"])).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&out)?, made[..2], "the newest page, one JSON snapshot per line");
    let cursor = err.trim().strip_prefix("more: aura jobs --before ").ok_or(format!("no cursor: {err}"))?;
    let (_, out, _) =
        output(aura(&app.base).args(["jobs", "--json", "--limit", "2", "--before", cursor])).await?;
    assert_eq!(ids(&out)?, made[2..4], "the page after the cursor");
    let (code, out, err) = output(aura(&app.base).args(["jobs", "--json", "--limit", "2", "--all"])).await?;
    assert_eq!(code, 0);
    assert_eq!(ids(&out)?, made, "every page");
    assert!(err.is_empty(), "no cursor once every page is printed: {err}");

    let (code, out, _) = output(aura(&app.base).args(["webhook", "list", "--json"])).await?;
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out)?["webhooks"].is_array(), "{out}");
    let dir = tempfile::tempdir()?;
    let (code, _, _) =
        output(Command::new(AURA).args(["token", "create", "ci", "--data-dir"]).arg(dir.path())).await?;
    assert_eq!(code, 0);
    let (code, out, _) =
        output(Command::new(AURA).args(["token", "list", "--json", "--data-dir"]).arg(dir.path())).await?;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out)?, serde_json::json!([{"name": "ci", "admin": false}]));
    Ok(())
}

#[tokio::test]
async fn completions_and_the_manual_page_come_from_the_same_definitions() -> TestResult {
    let (code, bash, _) = output(Command::new(AURA).args(["completions", "bash"])).await?;
    assert_eq!(code, 0);
    assert!(
        bash.contains("_aura()") && bash.contains("complete") && bash.contains("--job-retention"),
        "bash"
    );
    let (code, zsh, _) = output(Command::new(AURA).args(["completions", "zsh"])).await?;
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef aura"), "zsh");
    let (code, man, _) = output(Command::new(AURA).arg("man")).await?;
    assert_eq!(code, 0);
    assert!(man.contains(".TH aura") && man.contains("serve"), "{man}");
    let (code, _, err) = output(Command::new(AURA).args(["completions", "tcsh"])).await?;
    assert_ne!(code, 0);
    assert!(err.contains("bash") && err.contains("zsh"), "the valid shells are named: {err}");
    Ok(())
}

#[tokio::test]
async fn an_unknown_job_exits_1_with_the_servers_problem_title() -> TestResult {
    let app = spawn_app().await?;
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [vec!["show", &unknown], vec!["watch", &unknown], vec!["cancel", &unknown]] {
        let (code, out, err) = output(aura(&app.base).args(&args)).await?;
        assert_eq!(code, 1, "{args:?}");
        assert!(out.is_empty());
        assert!(err.contains("Not found"), "{args:?}: {err}");
        assert!(!err.contains("Problem {"), "no debug dump: {err}");
    }
    let (code, _, err) = output(aura(&app.base).args(["submit", "--topic", ""])).await?;
    assert_eq!(code, 1);
    assert!(err.contains("Invalid job request") && err.contains("brief.topic"), "{err}");
    let (code, _, err) = output(aura("http://127.0.0.1:9").arg("jobs")).await?;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
    Ok(())
}

/// Starts `aura watch --json` and returns it with a reader of its stdout lines.
fn watch_json(
    server: &str,
    job: uuid::Uuid,
) -> TestResult<(Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>)> {
    let mut child =
        aura(server).args(["watch", &job.to_string(), "--json"]).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    Ok((child, BufReader::new(stdout).lines()))
}

#[tokio::test]
async fn cancel_makes_watch_exit_2_and_watch_json_equals_the_history() -> TestResult {
    let app = spawn_app().await?;
    let id = app.create_job("watched").await?;
    lifecycle::claim(app.state.store(), id).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    job.start_stage(Stage::Script).await?;
    let (mut child, mut lines) = watch_json(&app.base, id)?;
    let mut printed: Vec<Value> = Vec::new();
    while printed.len() < 3 {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await??.ok_or("watch ended early")?;
        printed.push(serde_json::from_str(&line)?);
    }
    job.progress(Stage::Script, 50.0, "half way".into()).await?;
    let (code, _, _) = output(aura(&app.base).args(["cancel", &id.to_string()])).await?;
    assert_eq!(code, 0);
    job.cancelled(Some(Stage::Script)).await?;
    while let Some(line) = tokio::time::timeout(WAIT, lines.next_line()).await?? {
        printed.push(serde_json::from_str(&line)?);
    }
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert_eq!(status.code(), Some(2));
    assert_eq!(printed, app.history(id).await?);
    Ok(())
}

/// A server in its own process, so that a test can SIGKILL it.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

impl ServerProcess {
    pub async fn start(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> TestResult<ServerProcess> {
        Self::start_bin(AURA, data_dir, port, extra).await
    }

    /// The same with another `aura` binary (a release build, for benchmarks).
    pub async fn start_bin(
        bin: &str,
        data_dir: &std::path::Path,
        port: u16,
        extra: &[&str],
    ) -> TestResult<ServerProcess> {
        let addr = format!("127.0.0.1:{port}");
        let mut database = Vec::new();
        if crate::helpers::on_postgres() && !extra.contains(&"--database-url") {
            // Remembered in the data folder: a restart on it finds the same database.
            database =
                vec!["--database-url".to_owned(), crate::helpers::postgres_database_for(data_dir).await?];
        }
        let child = Command::new(bin)
            .args(["serve", "--addr", &addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(&database)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        eventually(WAIT, || async { Ok(client.get(format!("{base}/api/health")).send().await?) }).await?;
        Ok(ServerProcess { child, base })
    }

    pub async fn kill(mut self) -> TestResult {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test]
async fn watch_survives_a_server_sigkill_and_restart_printing_every_event_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server = ServerProcess::start(dir.path(), port, &["--workers", "0"]).await?;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/api/jobs", server.base))
        .json(&serde_json::json!({"brief": {"topic": "survive"}}))
        .send()
        .await?
        .json()
        .await?;
    let id: uuid::Uuid = created["jobId"].as_str().ok_or("no id")?.parse()?;
    let (mut child, mut lines) = watch_json(&server.base, id)?;
    let first = tokio::time::timeout(WAIT, lines.next_line()).await??.ok_or("no first line")?;
    server.kill().await?;

    let server = ServerProcess::start(dir.path(), port, &["--workers", "0"]).await?;
    let res = client.post(format!("{}/api/jobs/{id}/cancel", server.base)).send().await?;
    assert_eq!(res.status(), 202);
    let mut printed: Vec<Value> = vec![serde_json::from_str(&first)?];
    while let Some(line) = tokio::time::timeout(WAIT, lines.next_line()).await?? {
        printed.push(serde_json::from_str(&line)?);
    }
    assert_eq!(tokio::time::timeout(WAIT, child.wait()).await??.code(), Some(2));
    let history: Vec<Value> =
        client.get(format!("{}/api/jobs/{id}/history", server.base)).send().await?.json().await?;
    assert_eq!(printed, history);
    server.kill().await?;
    Ok(())
}

#[tokio::test]
async fn watch_in_a_terminal_draws_a_bar_per_stage_and_finishes_them() -> TestResult {
    if std::process::Command::new("tmux").arg("-V").output().is_err() {
        return Err("tmux is required for this test (.ci/run installs it)".into());
    }
    let app = spawn_app().await?;
    let id = app.create_job("bars").await?;
    let session = format!("aura-watch-{}", id.simple());
    let cmd = format!("AURA_SERVER={} {AURA} watch {id}; echo EXIT=$?; sleep 30", app.base);
    let status = std::process::Command::new("tmux")
        .args(["new-session", "-d", "-x", "120", "-y", "20", "-s", &session, &cmd])
        .status()?;
    assert!(status.success());
    let capture = || -> TestResult<String> {
        let out = std::process::Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let wait_for = |needle: &'static str| {
        let capture = &capture;
        async move {
            eventually(WAIT, || async {
                let screen = capture()?;
                if screen.contains(needle) {
                    Ok(screen)
                } else {
                    Err(format!("no {needle:?} on:\n{screen}").into())
                }
            })
            .await
        }
    };
    let screen = wait_for("Overall").await?;
    for stage in Stage::ALL {
        assert!(screen.contains(stage.name()), "no {} bar:\n{screen}", stage.name());
    }
    crate::log::run_through_stages(&app, id, 2).await?;
    let job = JobHandle::new(app.state.store().clone(), id);
    job.complete(aura::domain::event::JobOutput {
        video_path: format!("jobs/{id}/output.mp4"),
        video_url: format!("/api/jobs/{id}/output"),
        size_bytes: 1,
        duration_sec: 3.0,
    })
    .await?;
    let screen = wait_for("EXIT=0").await?;
    let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &session]).status();
    for stage in Stage::ALL {
        let line =
            screen.lines().find(|l| l.trim_start().starts_with(stage.name())).ok_or("stage line gone")?;
        assert!(line.contains("100%") && line.contains("done"), "{line}\n{screen}");
    }
    assert!(screen.contains("completed"), "{screen}");
    Ok(())
}

#[tokio::test]
async fn submit_watch_renders_a_3_s_job_and_its_json_equals_the_history() -> TestResult {
    let app = crate::helpers::spawn_app_with(|c| c.workers = Some(1)).await?;
    let (code, out, err) = output(aura(&app.base).args([
        "submit",
        "--topic",
        "CLI end to end",
        "--duration",
        "00:00:03",
        "--res",
        "480p",
        "--fps",
        "10",
        "--watch",
        "--json",
    ]))
    .await?;
    assert_eq!(code, 0, "{err}");
    let printed: Vec<Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let id: uuid::Uuid =
        printed.first().and_then(|e| e["data"]["jobId"].as_str()).ok_or("no events")?.parse()?;
    assert_eq!(printed, app.history(id).await?);
    assert_eq!(printed.last().map(|e| e["type"].clone()), Some(serde_json::json!("job-completed")));

    // The render moved the pipeline's metrics.
    let metrics = app.metrics().await?;
    for stage in ["Script", "Audio", "Visuals", "Timeline", "Render"] {
        assert!(metrics.contains(&format!("aura_stage_seconds_count{{stage=\"{stage}\"}}")), "{metrics}");
    }
    assert!(metrics.contains("aura_ffmpeg_processes"), "{metrics}");

    let file = app.dir.path().join("downloaded.mp4");
    let (code, _, err) = output(aura(&app.base).args(["download", &id.to_string(), "-o"]).arg(&file)).await?;
    assert_eq!(code, 0, "{err}");
    let size = printed.last().and_then(|e| e["data"]["output"]["sizeBytes"].as_u64()).ok_or("no size")?;
    assert_eq!(std::fs::metadata(&file)?.len(), size);
    let whole = std::fs::read(&file)?;
    assert!(!app.dir.path().join("downloaded.mp4.part").exists(), "the partial file was renamed");

    // An interrupted download left half the video: the next one continues it with a Range
    // request; one that left all of it (the server answers 416) only renames it.
    for kept in [whole.len() / 2, whole.len()] {
        let again = app.dir.path().join(format!("again-{kept}.mp4"));
        std::fs::write(app.dir.path().join(format!("again-{kept}.mp4.part")), &whole[..kept])?;
        let (code, _, err) =
            output(aura(&app.base).args(["download", &id.to_string(), "-o"]).arg(&again)).await?;
        assert_eq!(code, 0, "{err}");
        assert!(std::fs::read(&again)? == whole, "resumed from {kept} bytes, the same video");
        assert!(!app.dir.path().join(format!("again-{kept}.mp4.part")).exists());
    }
    Ok(())
}

#[tokio::test]
async fn a_log_format_that_is_not_text_or_json_is_refused_naming_both() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cmd = aura("http://127.0.0.1:9");
    cmd.args(["serve", "--log-format", "jsno", "--data-dir"]).arg(dir.path());
    let (code, _, stderr) = output(&mut cmd).await?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("jsno") && stderr.contains("text") && stderr.contains("json"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_escapes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("aura.log");
    let log = std::fs::File::create(&log_path)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut server = aura("http://127.0.0.1:9")
        .args(["serve", "--addr", &addr, "--workers", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let text = eventually(WAIT, || async {
        let text = std::fs::read_to_string(&log_path)?;
        crate::helpers::holds(text.contains("listening"), || format!("no start line yet: {text}"))?;
        Ok(text)
    })
    .await;
    server.kill().await?;
    let text = text?;
    assert!(!text.contains('\u{1b}'), "colour escapes in a log file: {text:?}");
    Ok(())
}
