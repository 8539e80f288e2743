//! Damaged or foreign files: `aura serve` refuses them with one line and exit code 2, leaving
//! them byte-identical; `aura backup` copies a database that is being written, and `aura check`
//! accepts the copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::cli::AURA;
use crate::helpers::{TestResult, WAIT, spawn_app, spawn_app_in};

fn sha256(path: &Path) -> TestResult<Vec<u8>> {
    Ok(Sha256::digest(std::fs::read(path)?).to_vec())
}

/// Runs `aura serve` on `data` (with `extra` flags); returns its exit code and stderr.
async fn serve(data: &Path, extra: &[&str]) -> TestResult<(i32, String)> {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(AURA)
            .args(["serve", "--addr", "127.0.0.1:0", "--workers", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stderr)?))
}

/// Serving `db` in `data` exits 2 with one `aura:` line containing `says`, and leaves the file
/// as it was.
async fn refused(data: &Path, db: &Path, says: &str) -> TestResult {
    let before = sha256(db)?;
    let (code, stderr) = serve(data, &[]).await?;
    assert_eq!(code, 2, "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("aura:")).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(says), "{stderr}");
    assert!(lines[0].contains(&db.display().to_string()), "names the file: {stderr}");
    assert_eq!(sha256(db)?, before, "the file is byte-identical");
    Ok(())
}

/// A data folder holding a database that Aura created and then stopped using.
async fn used_folder() -> TestResult<(tempfile::TempDir, PathBuf, PathBuf)> {
    let mut app = spawn_app().await?;
    for n in 0..50 {
        app.create_job(&format!("job {n}")).await?;
    }
    let dir = app.keep_dir()?;
    app.stop().await?;
    let data = dir.path().join("data");
    let db = data.join("aura.db");
    Ok((dir, data, db))
}

#[tokio::test]
async fn a_database_that_is_not_sqlite_exits_2_and_is_left_untouched() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let db = data.join("aura.db");
    std::fs::write(&db, "name,topic\nthis is a spreadsheet, not a database\n".repeat(100))?;
    refused(&data, &db, "is not an SQLite database").await
}

#[tokio::test]
async fn a_database_that_fails_quick_check_exits_2_and_is_left_untouched() -> TestResult {
    if crate::helpers::sqlite_only("a damaged or foreign SQLite file") {
        return Ok(());
    }
    let (_dir, data, db) = used_folder().await?;
    // Keep the header and the schema page; scribble over every page after them.
    let mut bytes = std::fs::read(&db)?;
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() > 3 * page, "the database has pages to damage");
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&db, &bytes)?;
    refused(&data, &db, "is damaged").await
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_aura_exits_2_and_is_left_untouched() -> TestResult {
    if crate::helpers::sqlite_only("a damaged or foreign SQLite file") {
        return Ok(());
    }
    let (_dir, data, db) = used_folder().await?;
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
             VALUES (99990101000001, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0)",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    }
    refused(&data, &db, "migrated by a newer Aura").await
}

#[tokio::test]
async fn a_data_folder_that_is_not_writable_exits_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    // Root may write anywhere permissions say it may not: a read-only mount stops it too.
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .output()?;
    if !out.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a read-only tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Ok(());
    }
    let result = serve(&data, &[]).await;
    let _ = std::process::Command::new("umount").arg("-l").arg(&data).status();
    let (code, stderr) = result?;
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("aura:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("is not writable") && lines[0].contains(&data.display().to_string()),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backup_taken_during_100_appends_a_second_passes_check_and_holds_a_prefix_of_the_log() -> TestResult
{
    if crate::helpers::sqlite_only("`aura backup` copies the SQLite file") {
        return Ok(());
    }
    let (dir, data, db) = used_folder().await?;
    let mut app = spawn_app_in(dir, |_| {}).await?;
    let backup = tempfile::tempdir()?;
    let copy = backup.path().join("copy.db");
    // About 100 appends a second for 3 s, with the backup taken in the middle.
    let appender = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..300 {
                tick.tick().await;
                let res = client
                    .post(format!("{base}/api/jobs"))
                    .json(&serde_json::json!({"brief": {"topic": format!("append {n}")}}))
                    .send()
                    .await?;
                if res.status() != 201 {
                    return Err(format!("create answered {}", res.status()).into());
                }
            }
            TestResult::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = Command::new(AURA)
        .arg("backup")
        .arg(&copy)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .output()
        .await?;
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    appender.await??;
    let _dir = app.keep_dir()?;
    app.stop().await?;

    let check = Command::new(AURA)
        .args(["check", "--data-dir"])
        .arg(backup.path())
        .arg("--database-url")
        .arg(&copy)
        .env("RUST_LOG", "off")
        .output()
        .await?;
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "aura check on the copy: {report}");

    let rows = |path: PathBuf| async move {
        use sqlx::ConnectOptions;
        let mut conn =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true).connect().await?;
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, data FROM events ORDER BY id").fetch_all(&mut conn).await?;
        TestResult::Ok(rows)
    };
    let original = rows(db).await?;
    let copied = rows(copy).await?;
    assert!(copied.len() > 50, "the copy has what was there before the appends");
    assert!(copied.len() < original.len(), "the copy was taken while appends went on");
    assert_eq!(copied[..], original[..copied.len()], "the copy holds a prefix of the log");
    Ok(())
}

#[tokio::test]
async fn a_tokens_file_that_cannot_be_read_stops_the_start_instead_of_opening_the_server() -> TestResult {
    if crate::helpers::sqlite_only("the tokens file; with PostgreSQL the tokens are in the database") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // A folder where the tokens file should be: it exists, and reading it fails (even for root).
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let started = crate::helpers::spawn_app_with(|cfg| cfg.tokens_file = Some(tokens.clone())).await;
    let error = match started {
        Ok(_) => return Err("the server started open with an unreadable tokens file".into()),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("tokens"), "{error}");
    Ok(())
}
