//! Surviving restarts: one server per data folder, clean shutdown, and `aura check`.

use std::time::Duration;

use serde_json::Value;

use crate::cli::{AURA, ServerProcess, free_port};
use crate::helpers::{TestResult, WAIT, spawn_app};

async fn run_aura(args: &[&str], data_dir: &std::path::Path) -> TestResult<(i32, String, String)> {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(AURA)
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

#[tokio::test]
async fn a_second_server_on_the_same_data_folder_exits_non_zero_naming_the_folder() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = ServerProcess::start(dir.path(), free_port()?, &["--workers", "0"]).await?;
    let second = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(AURA)
            .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port()?), "--data-dir"])
            .arg(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(!second.status.success());
    let err = String::from_utf8(second.stderr)?;
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("already using the data folder"), "{err}");
    // The first one is unharmed; once it is gone, the folder is free again.
    let health = reqwest::get(format!("{}/api/health", first.base)).await?;
    assert_eq!(health.status().as_u16() / 100, if health.status() == 503 { 5 } else { 2 });
    first.kill().await?;
    let again = ServerProcess::start(dir.path(), free_port()?, &["--workers", "0"]).await?;
    again.kill().await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_open_streams_cleanly_and_exits_zero_within_ten_seconds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(dir.path(), free_port()?, &["--workers", "0"]).await?;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/api/jobs", server.base))
        .json(&serde_json::json!({"brief": {"topic": "term"}}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["jobId"].as_str().ok_or("no id")?;
    let res = client.get(format!("{}/api/jobs/{id}/events", server.base)).send().await?;
    let mut body = Box::pin(res.bytes_stream());
    use futures_util::StreamExt;
    assert!(body.next().await.is_some(), "the stream started");
    let mut child = server.child;
    let pid = child.id().ok_or("no pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // The response ended with a clean end of the chunked body, not a reset.
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next()).await? {
        chunk?;
    }
    Ok(())
}

#[tokio::test]
async fn aura_check_passes_on_a_healthy_store_and_repair_fixes_a_hand_corrupted_row() -> TestResult {
    if crate::helpers::sqlite_only("corrupts a row of the SQLite file by hand") {
        return Ok(());
    }
    let mut app = spawn_app().await?;
    let a = app.create_job("healthy").await?;
    let b = app.create_job("to corrupt").await?;
    crate::log::run_through_stages(&app, a, 2).await?;
    crate::log::run_through_stages(&app, b, 1).await?;
    let data_dir = app.dir.path().join("data");
    let db = app.db_path();
    let expected = app.state.store().job(b).await?.ok_or("no job")?;
    let (code, out, _) = run_aura(&["check"], &data_dir).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 2 jobs"), "{out}");

    let mut conn = app.sql().await?;
    sqlx::query("UPDATE jobs SET status = 'Completed', percent = 12 WHERE job_id = ?")
        .bind(b.to_string())
        .execute(&mut conn)
        .await?;
    drop(conn);
    let (code, out, _) = run_aura(&["check"], &data_dir).await?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&b.to_string()) && out.contains("status") && out.contains("percent"), "{out}");
    // The same report as JSON, for scripts.
    let (code, out, _) = run_aura(&["check", "--json"], &data_dir).await?;
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!((report["healthy"].clone(), report["jobs"].clone()), (false.into(), 2.into()), "{out}");
    let problems = report["problems"].as_array().ok_or("no problems array")?;
    assert!(problems.iter().any(|p| p.as_str().is_some_and(|p| p.contains(&b.to_string()))), "{out}");

    // Repair refuses while a server holds the folder.
    let (code, _, err) = run_aura(&["check", "--repair"], &data_dir).await?;
    assert_eq!(code, 1);
    assert!(err.contains("already using the data folder"), "{err}");
    let keep = app.keep_dir()?;
    app.stop().await?;

    let (code, out, _) = run_aura(&["check", "--repair"], &data_dir).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired"), "{out}");
    let (code, _, _) = run_aura(&["check"], &data_dir).await?;
    assert_eq!(code, 0);
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
    let (status, percent): (String, f64) =
        sqlx::query_as("SELECT status, percent FROM jobs WHERE job_id = ?")
            .bind(b.to_string())
            .fetch_one(&mut conn)
            .await?;
    assert_eq!((status.as_str(), percent), (expected.status.name(), expected.percent));
    drop(keep);
    Ok(())
}

#[tokio::test]
async fn aura_check_on_postgres_finds_a_hand_corrupted_row_and_repair_fixes_it_while_the_node_runs()
-> TestResult {
    let db = crate::postgres::database().await?;
    let url = db.clone();
    let app = crate::helpers::spawn_app_with(move |c| c.database_url = Some(url)).await?;
    let a = app.create_job("healthy").await?;
    let b = app.create_job("to corrupt").await?;
    crate::log::run_through_stages(&app, a, 2).await?;
    crate::log::run_through_stages(&app, b, 1).await?;
    let data_dir = app.dir.path().join("data");
    let expected = app.state.store().job(b).await?.ok_or("no job")?;
    let (code, out, _) = run_aura(&["check", "--database-url", &db], &data_dir).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 2 jobs"), "{out}");

    let mut conn = app.pg().await?.ok_or("not on PostgreSQL")?;
    sqlx::query("UPDATE jobs SET status = 'Completed', percent = 12 WHERE job_id = $1")
        .bind(b.to_string())
        .execute(&mut conn)
        .await?;
    let (code, out, _) = run_aura(&["check", "--database-url", &db], &data_dir).await?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&b.to_string()) && out.contains("status") && out.contains("percent"), "{out}");

    // Nodes may keep running: the repair takes the counter row, so no commit slips in between.
    let (code, out, err) = run_aura(&["check", "--repair", "--database-url", &db], &data_dir).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("repaired"), "{out}");
    let (status, percent): (String, f64) =
        sqlx::query_as("SELECT status, percent FROM jobs WHERE job_id = $1")
            .bind(b.to_string())
            .fetch_one(&mut conn)
            .await?;
    assert_eq!((status.as_str(), percent), (expected.status.name(), expected.percent));
    Ok(())
}
