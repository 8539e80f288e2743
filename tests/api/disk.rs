//! A full or nearly full disk (`AURA_MIN_FREE_MB`), and old videos (`AURA_OUTPUT_RETENTION`).
//!
//! The full-disk test mounts a 64 MiB tmpfs as the data folder (CI runs as root); where mounting
//! is not permitted it says so and skips. The floor itself is driven without filling a disk,
//! by a floor far above any disk's size.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Sse, TestResult, WAIT, small_job, spawn_app_in, spawn_app_with};

/// A floor no disk reaches: every disk is "low".
const HUGE_FLOOR_MB: u64 = 1 << 40;

async fn problem_type(res: reqwest::Response) -> TestResult<(u16, String, String)> {
    let status = res.status().as_u16();
    let content_type =
        res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body: Value = res.json().await?;
    Ok((status, content_type, body["type"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test]
async fn below_the_free_space_floor_create_answers_507_and_health_503_with_disk_low() -> TestResult {
    let roomy = spawn_app_with(|_| {}).await?;
    let (status, health) = roomy.get_json("/api/health").await?;
    assert_eq!((status, health["disk"].as_str()), (200, Some("ok")), "{health}");

    let app = spawn_app_with(|cfg| cfg.min_free_mb = HUGE_FLOOR_MB).await?;
    let (status, content_type, kind) =
        problem_type(app.post_job(&json!({"brief": {"topic": "no room"}})).await?).await?;
    assert_eq!(status, 507);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(kind, "urn:aura:problem:insufficient-storage");
    // Bad input is still told apart from a full disk.
    assert_eq!(app.post_job(&json!({"brief": {"topic": ""}})).await?.status(), 422);
    let (status, health) = app.get_json("/api/health").await?;
    assert_eq!(status, 503);
    assert_eq!(health["disk"], "low");
    assert_eq!(health["database"], "ok");
    assert_eq!(app.table_counts().await?, (0, 0), "a refused job leaves no trace");
    Ok(())
}

#[tokio::test]
async fn below_the_free_space_floor_workers_claim_nothing() -> TestResult {
    let app = spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        cfg.min_free_mb = HUGE_FLOOR_MB;
    })
    .await?;
    // Created behind the HTTP edge (which refuses it with 507), as if queued before the disk filled.
    let id = Uuid::now_v7();
    let body = small_job("queued while full").to_string();
    let spec = aura::domain::spec::JobSpec::from_json_bytes(body.as_bytes()).map_err(|e| format!("{e:?}"))?;
    app.state.engine().create(id, spec, "local".into()).await?;
    // Workers look at the disk every second: give them several looks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.job(id).await?["status"], "Queued");
    Ok(())
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `64m`) at `dir`; `None` (with a message) where mounting
    /// is not permitted.
    fn mount(dir: &Path, size: &str, read_only: bool) -> TestResult<Option<Tmpfs>> {
        std::fs::create_dir_all(dir)?;
        let options = if read_only { format!("ro,size={size}") } else { format!("size={size}") };
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir)
            .output()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Tmpfs(dir.to_path_buf())))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that a file still open by a server being torn down does not keep it mounted.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the disk refuses another byte.
fn fill_disk(path: &Path) -> TestResult<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 1 << 12, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match file.write(&zeros) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(written)
}

/// An ffmpeg that waits a moment before each run, so that a test can fill the disk between a
/// stage's start and its first write.
const SLOW_FFMPEG: &str = "#!/bin/sh\nsleep 0.5\nexec ffmpeg \"$@\"\n";

/// The same, but it never says "No space left on device": it reports a full disk in other words,
/// as a program in another language, or a step that reads a truncated file, would.
const SLOW_FFMPEG_OTHER_WORDS: &str = "#!/bin/bash\nsleep 0.5\n\
    ffmpeg \"$@\" 2> >(sed -u 's/No space left on device/Input\\/output error/g' >&2)\n";

fn slow_ffmpeg(dir: &Path, script: &str) -> TestResult<PathBuf> {
    let path = dir.join("slow-ffmpeg");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[tokio::test]
async fn a_full_disk_mid_render_parks_the_job_and_freeing_space_completes_it_exactly_once() -> TestResult {
    // Filled as Audio starts: its first ffmpeg waits half a second, and Aura's own write of the
    // narration text comes first, so `ENOSPC` reaches one of our writes.
    full_disk_parks(SLOW_FFMPEG, |e| {
        e.kind == "step-status" && e.data["step"] == "Audio" && e.data["state"] == "Started"
    })
    .await
}

#[tokio::test]
async fn a_disk_that_fills_under_ffmpeg_parks_the_job_instead_of_failing_it_with_ffmpeg_failed() -> TestResult
{
    // Filled as Render starts: its ffmpeg (after half a second) is the first to write, and
    // says "No space left on device" itself.
    full_disk_parks(SLOW_FFMPEG, |e| {
        e.kind == "step-status" && e.data["step"] == "Render" && e.data["state"] == "Started"
    })
    .await
}

/// The event that starts `step`.
fn started(step: &'static str) -> impl Fn(&Sse) -> bool {
    move |e| e.kind == "step-status" && e.data["step"] == step && e.data["state"] == "Started"
}

#[tokio::test]
async fn a_disk_that_fills_as_script_starts_parks_the_job() -> TestResult {
    full_disk_parks(SLOW_FFMPEG, started("Script")).await
}

#[tokio::test]
async fn a_disk_that_fills_as_visuals_starts_parks_the_job() -> TestResult {
    full_disk_parks(SLOW_FFMPEG, started("Visuals")).await
}

#[tokio::test]
async fn a_disk_that_fills_as_timeline_starts_parks_the_job() -> TestResult {
    full_disk_parks(SLOW_FFMPEG, started("Timeline")).await
}

#[tokio::test]
async fn a_disk_that_fills_where_no_program_says_so_still_parks_the_job() -> TestResult {
    // Filled as Render starts (its ffmpeg is the first to write), under an ffmpeg that reports
    // the full disk in other words: the free space, not the wording, tells a full disk from a
    // failure.
    full_disk_parks(SLOW_FFMPEG_OTHER_WORDS, |e| {
        e.kind == "step-status" && e.data["step"] == "Render" && e.data["state"] == "Started"
    })
    .await
}

/// Fills the data folder's disk when `fill_when` sees an event, checks that the job parks
/// (warning `waiting-for-disk`, still Running, 507 and 503), frees the space, and checks that
/// it completes with every event exactly once.
async fn full_disk_parks(ffmpeg: &str, fill_when: impl Fn(&Sse) -> bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, "64m", false)? else { return Ok(()) };
    let ffmpeg = slow_ffmpeg(dir.path(), ffmpeg)?;
    // The database lives beside the small disk, so that only the job's files run out of room.
    let database = dir.path().join("aura.db").to_string_lossy().into_owned();
    let app = spawn_app_in(tempfile::tempdir()?, |cfg| {
        cfg.data_dir = data.clone();
        cfg.database_url = Some(database.clone());
        cfg.workers = Some(1);
        // Well above what the failed stage's partial files give back.
        cfg.min_free_mb = 16;
        cfg.ffmpeg = ffmpeg.clone();
    })
    .await?;
    let id = app.create(&small_job("fills the disk")).await?;
    let filler = data.join("filler.bin");
    let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
    let mut seen: Vec<Sse> = Vec::new();
    let next = async |stream: &mut crate::helpers::SseStream| -> TestResult<Sse> {
        let (id, kind, data) = tokio::time::timeout(Duration::from_secs(120), stream.next_event())
            .await??
            .ok_or("stream ended")?;
        Ok(Sse { id, kind, data })
    };
    loop {
        let e = next(&mut stream).await?;
        let fill = fill_when(&e);
        assert_ne!(e.kind, "job-completed", "the job ended before the disk was filled");
        seen.push(e);
        if fill {
            fill_disk(&filler)?;
            break;
        }
    }
    let script_done_before_fill = seen
        .iter()
        .any(|e| e.kind == "step-status" && e.data["step"] == "Script" && e.data["state"] == "Completed");

    loop {
        let e = next(&mut stream).await?;
        assert!(!["job-failed", "job-completed"].contains(&e.kind.as_str()), "ended on a full disk: {e:?}");
        let parked = e.kind == "warning" && e.data["code"] == "waiting-for-disk";
        seen.push(e.clone());
        if parked {
            assert!(e.data["step"].is_string(), "the warning names its step: {e:?}");
            break;
        }
    }
    // Script may finish just as the disk fills (its files are tiny): what counts is whether it
    // completed before the job parked.
    let script_verified = seen
        .iter()
        .any(|e| e.kind == "step-status" && e.data["step"] == "Script" && e.data["state"] == "Completed");
    // Parked: still Running, unhealthy (the free space is measured at most once a second), and
    // refusing new work.
    assert_eq!(app.job(id).await?["status"], "Running");
    tokio::time::timeout(WAIT, async {
        while app.get_json("/api/health").await?.0 != 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        TestResult::Ok(())
    })
    .await??;
    let (status, health) = app.get_json("/api/health").await?;
    assert_eq!((status, health["disk"].as_str()), (503, Some("low")));
    assert_eq!(app.post_job(&small_job("no room")).await?.status(), 507);

    std::fs::remove_file(&filler)?;
    loop {
        let e = next(&mut stream).await?;
        let kind = e.kind.clone();
        seen.push(e);
        if kind == "job-completed" {
            break;
        }
        assert_ne!(kind, "job-failed", "{seen:?}");
    }
    assert!(stream.next_event().await?.is_none(), "the stream ends after job-completed");
    let job = app.job(id).await?;
    assert_eq!(job["status"], "Completed");
    assert!(job["attempt"].as_u64() >= Some(2), "the job continued as a new attempt: {job}");
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids, table_ids(Path::new(&database), id).await?, "every event exactly once, in order");
    // The new attempt kept Script, whose artifacts were verified (if it had finished).
    let skipped = seen
        .iter()
        .any(|e| e.kind == "step-status" && e.data["step"] == "Script" && e.data["state"] == "Skipped");
    // Script is reused when it had finished before the disk filled; it may be reused only if it
    // had finished before the job parked (it may finish just as the disk fills: its files are
    // tiny, and whether they were recorded whole decides).
    assert!(!script_done_before_fill || skipped, "Script was reused");
    assert!(!skipped || script_verified, "Script was reused without having finished");
    // Percent never went down within an attempt.
    let mut last = 0.0;
    for e in &seen {
        if e.kind == "job-status" && e.data["status"] == "Running" {
            last = 0.0;
        }
        if let Some(p) = e.data["percent"].as_f64() {
            assert!(p >= last, "percent went down within an attempt: {e:?}");
            last = p;
        }
    }
    assert_eq!(app.output(id, None).await?.status(), 200);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_wait_for_disk_does_not_use_up_one_of_the_jobs_attempts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, "64m", false)? else { return Ok(()) };
    let ffmpeg = slow_ffmpeg(dir.path(), SLOW_FFMPEG)?;
    let database = dir.path().join("aura.db").to_string_lossy().into_owned();
    // Two attempts: one interruption is survived, a second is not.
    let config = |cfg: &mut aura::config::ServeConfig| {
        cfg.data_dir = data.clone();
        cfg.database_url = Some(database.clone());
        cfg.workers = Some(1);
        cfg.min_free_mb = 16;
        cfg.ffmpeg = ffmpeg.clone();
        cfg.max_attempts = 2;
    };
    let app = spawn_app_in(tempfile::tempdir()?, config).await?;
    let id = app.create(&small_job("parks, then restarts")).await?;
    let filler = data.join("filler.bin");
    // The disk fills as Audio starts; once the job waits for it, space comes back.
    let mut parked = false;
    let seen = tokio::time::timeout(
        Duration::from_secs(120),
        app.follow(id, |e| {
            if started("Audio")(e) && !parked {
                parked = fill_disk(&filler).is_ok();
            }
            if e.kind == "warning" && e.data["code"] == "waiting-for-disk" {
                let _ = std::fs::remove_file(&filler);
            }
            // The new attempt after the wait: the server stops there.
            e.kind == "job-status" && e.data["status"] == "Running" && e.data["attempt"] == 2
        }),
    )
    .await??;
    assert!(seen.iter().any(|e| e.kind == "warning" && e.data["code"] == "waiting-for-disk"), "{seen:?}");
    app.stop().await?;

    // The restart interrupts attempt 2: it is the job's first interruption, so it goes on.
    let app = spawn_app_in(tempfile::tempdir()?, config).await?;
    let job = app.finished(id, Duration::from_secs(120)).await?;
    assert_eq!(job["status"], "Completed", "{job}");
    let restarted =
        app.history(id).await?.into_iter().filter(|e| e["data"]["code"] == "engine-restarted").count();
    assert_eq!(restarted, 1);
    assert_eq!(job["attempt"], 3);
    app.stop().await?;
    Ok(())
}

/// The job's event ids as the table holds them.
async fn table_ids(database: &Path, id: Uuid) -> TestResult<Vec<i64>> {
    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(database).read_only(true).connect().await?;
    Ok(sqlx::query_scalar("SELECT id FROM events WHERE job_id = ? ORDER BY id")
        .bind(id.to_string())
        .fetch_all(&mut conn)
        .await?)
}

#[tokio::test]
async fn an_expired_video_answers_410_and_its_history_says_output_expired() -> TestResult {
    let retention = aura::config::parse_retention("1s")?;
    let app = spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        cfg.output_retention = retention;
    })
    .await?;
    let id = app.create(&small_job("short-lived")).await?;
    let job = app.finished(id, Duration::from_secs(180)).await?;
    assert_eq!(job["status"], "Completed");
    let video = app.data_path(job["output"]["videoPath"].as_str().ok_or("no videoPath")?);
    let terminal = job["lastEventId"].as_i64().ok_or("no lastEventId")?;
    let expired = tokio::time::timeout(WAIT, async {
        loop {
            let res = app.output(id, None).await?;
            if res.status() == 410 {
                return TestResult::Ok(res);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    let (status, content_type, kind) = problem_type(expired).await?;
    assert_eq!((status, content_type.as_str()), (410, "application/problem+json"));
    assert_eq!(kind, "urn:aura:problem:output-expired");
    assert!(!video.exists(), "the video is deleted");
    let job = app.job(id).await?;
    assert_eq!(job["status"], "Completed", "the job stays Completed");
    assert!(job["output"].is_null());
    let history = app.history(id).await?;
    let warnings: Vec<&Value> =
        history.iter().filter(|e| e["type"] == "warning" && e["data"]["code"] == "output-expired").collect();
    assert_eq!(warnings.len(), 1, "one output-expired warning");
    let warning_id = warnings[0]["id"].as_i64().ok_or("no id")?;
    assert!(warning_id > terminal);
    // A client resuming at the terminal event gets the warning and the end; after it, 204.
    let mut resumed =
        app.stream(&format!("/api/jobs/{id}/events"), &[("Last-Event-ID", &terminal.to_string())]).await?;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.ids_to_end().await?, vec![warning_id]);
    let after =
        app.stream(&format!("/api/jobs/{id}/events"), &[("Last-Event-ID", &warning_id.to_string())]).await?;
    assert_eq!(after.status, 204);
    Ok(())
}
