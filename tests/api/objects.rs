//! Finished videos in an S3-compatible store (`AURA_STORAGE_URL=s3://…`): a real `s3s-fs`
//! server on a free loopback port with a temporary root (`.ci/run` installs it), the real app
//! rendering with real ffmpeg, and the output route answering from the bucket (on a node that
//! did not render the video too, two nodes sharing a PostgreSQL database). A new attempt that
//! finds no local files takes the verified stages from the bucket and redoes one whose stored
//! copy does not match its manifest.
//!
//! The S3 client's settings reach the app through `ServeConfig::storage_options`, never through
//! the process environment, which every test in this binary shares.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use aura::objects::S3Options;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::cli::AURA;
use crate::helpers::small_job;
use crate::helpers::{TestApp, TestResult, WAIT, eventually, holds, spawn_app_in, spawn_app_with};
use crate::pipeline::{completed, shaped};

const ACCESS_KEY: &str = "aura-test-access";
const SECRET_KEY: &str = "aura-test-secret-key";
pub(crate) const BUCKET: &str = "videos";
pub(crate) const PREFIX: &str = "aura/test";

/// A running `s3s-fs`, killed when dropped.
pub(crate) struct S3 {
    _child: Child,
    root: tempfile::TempDir,
    port: u16,
}

/// The `s3s-fs` binary: on `PATH`, else where `cargo install` puts it.
fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .unwrap_or_default();
        home.join("bin").join("s3s-fs")
    })
}

impl S3 {
    /// Starts `s3s-fs` with one empty bucket and waits (bounded) until it accepts connections.
    pub(crate) async fn start() -> TestResult<S3> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked)")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("s3s-fs exited before accepting connections: {status}").into());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("s3s-fs did not accept connections in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(S3 { _child: child, root, port })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The client settings that reach this server.
    pub(crate) fn options(&self) -> S3Options {
        S3Options(
            [
                ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
                ("aws_access_key_id", ACCESS_KEY.to_owned()),
                ("aws_secret_access_key", SECRET_KEY.to_owned()),
                ("aws_region", "us-east-1".to_owned()),
                ("aws_allow_http", "true".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .to_vec(),
        )
    }

    /// What an `aura serve` process needs to store its videos here: its `--storage-url`, and
    /// the client settings as the `AWS_*` environment it reads.
    pub(crate) fn for_process(&self) -> (String, Vec<(String, String)>) {
        let env = self.options().0.into_iter().map(|(k, v)| (k.to_uppercase(), v)).collect();
        (format!("s3://{BUCKET}/{PREFIX}"), env)
    }

    /// Every video the bucket holds.
    pub(crate) fn videos(&self) -> Vec<PathBuf> {
        output_files(self.root.path())
    }

    /// Every file the bucket holds under a job's `<attempt>/stages/` (a stage's artifacts).
    pub(crate) fn stage_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.root.path().to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.components().any(|c| c.as_os_str() == "stages") {
                    found.push(path);
                }
            }
        }
        found
    }

    /// Waits (bounded) until the bucket holds no stage artifact: a worker deletes them just
    /// after it records the job's end. Returns those still there at the deadline.
    pub(crate) async fn stage_files_after_cleanup(&self) -> Vec<PathBuf> {
        let gone = eventually(WAIT, || async {
            let left = self.stage_files();
            holds(left.is_empty(), || format!("{left:?} are still there"))
        });
        if gone.await.is_ok() { Vec::new() } else { self.stage_files() }
    }

    /// Where `s3s-fs` keeps a job's video for `attempt`.
    fn video(&self, job_id: Uuid, attempt: u64, ext: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX).join(format!("jobs/{job_id}/{attempt}/output.{ext}"))
    }
}

/// One render worker whose videos go to `s3`.
async fn spawn_on(s3: &S3, tweak: impl FnOnce(&mut aura::config::ServeConfig)) -> TestResult<TestApp> {
    let options = s3.options();
    spawn_app_with(|cfg| {
        cfg.workers = Some(1);
        cfg.storage_url = Some(format!("s3://{BUCKET}/{PREFIX}"));
        cfg.storage_options = options;
        tweak(cfg);
    })
    .await
}

/// Where a job's history says it was interrupted: `engine-restarted` with SQLite; with
/// PostgreSQL the stopped node's lease ran out, and the new attempt says `node-lost`.
pub(crate) fn restart_in(history: &[serde_json::Value]) -> TestResult<usize> {
    Ok(history
        .iter()
        .position(|e| e["data"]["code"] == "engine-restarted" || e["data"]["code"] == "node-lost")
        .context("no warning of the interruption")?)
}

/// The states `step` went through in `history`, in order.
pub(crate) fn states_after(history: &[serde_json::Value], step: &str) -> Vec<String> {
    history
        .iter()
        .filter(|e| e["type"] == "step-status" && e["data"]["step"] == step)
        .filter_map(|e| e["data"]["state"].as_str().map(str::to_owned))
        .collect()
}

/// Every file under `dir` whose name starts with `output.`.
pub(crate) fn output_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().starts_with("output.") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_video_stored_in_s3_is_kept_per_attempt_leaves_no_local_copy_and_is_served_by_range() -> TestResult
{
    let s3 = S3::start().await?;
    let app = spawn_on(&s3, |_| {}).await?;
    let id = app.create(&shaped(small_job("Stored in a bucket"), "Square1x1", "mp4", "h264")).await?;
    let job = completed(&app, id).await?;
    let size = job["output"]["sizeBytes"].as_u64().context("sizeBytes")?;
    assert_eq!(job["output"]["videoPath"], format!("jobs/{id}/output.mp4"), "videoPath as API.md has it");
    let attempt = job["attempt"].as_u64().context("attempt")?;

    let stored =
        std::fs::read(s3.video(id, attempt, "mp4")).context("the object under its per-attempt key")?;
    assert_eq!(stored.len() as u64, size);
    let left = output_files(&app.data_path(""));
    assert!(left.is_empty(), "the data folder still holds {left:?}");

    let whole = app.output(id, None).await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(&whole.bytes().await?[..], &stored[..]);

    let part = app.output(id, Some("bytes=100-199")).await?;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 100-199/{size}").as_str());
    assert_eq!(&part.bytes().await?[..], &stored[100..200]);

    let tail = app.output(id, Some("bytes=-10")).await?;
    assert_eq!(tail.status(), 206);
    assert_eq!(&tail.bytes().await?[..], &stored[stored.len() - 10..]);

    let beyond = app.output(id, Some(&format!("bytes={}-", size + 10))).await?;
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], format!("bytes */{size}").as_str());

    let head = app.client.head(app.url(&format!("/api/jobs/{id}/output"))).send().await?;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], size.to_string().as_str());

    // A store that lost the video answers like a data folder that lost it, naming nothing inside.
    std::fs::remove_file(s3.video(id, attempt, "mp4"))?;
    let gone = app.output(id, None).await?;
    assert_eq!(gone.status(), 404);
    let text = gone.text().await?;
    assert!(!text.contains(PREFIX) && !text.contains("127.0.0.1"), "leaks the store: {text}");
    app.stop().await
}

#[tokio::test]
async fn a_video_in_s3_downloads_by_range_from_a_node_that_did_not_render_it() -> TestResult {
    let s3 = S3::start().await?;
    let db = crate::postgres::database().await?;
    let worker = spawn_on(&s3, |cfg| {
        cfg.database_url = Some(db.clone());
        cfg.node_name = Some("objects-worker".into());
    })
    .await?;
    let api = spawn_on(&s3, |cfg| {
        cfg.database_url = Some(db.clone());
        cfg.node_name = Some("objects-api".into());
        cfg.workers = Some(0);
    })
    .await?;
    let id = api.create(&shaped(small_job("Rendered elsewhere"), "Square1x1", "mp4", "h264")).await?;
    let job = completed(&api, id).await?;
    let stored = std::fs::read(s3.video(id, job["attempt"].as_u64().context("attempt")?, "mp4"))?;
    for node in [&api, &worker] {
        let whole = node.output(id, None).await?;
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.headers()["content-type"], "video/mp4");
        assert_eq!(&whole.bytes().await?[..], &stored[..]);
        let part = node.output(id, Some("bytes=10-")).await?;
        assert_eq!(part.status(), 206);
        assert_eq!(&part.bytes().await?[..], &stored[10..]);
    }
    assert!(output_files(&api.data_path("")).is_empty() && output_files(&worker.data_path("")).is_empty());
    api.stop().await?;
    worker.stop().await
}

#[tokio::test]
async fn output_retention_deletes_a_video_from_the_bucket() -> TestResult {
    let s3 = S3::start().await?;
    let app =
        spawn_on(&s3, |cfg| cfg.output_retention = aura::config::Retention(Some(Duration::from_secs(1))))
            .await?;
    let id = app.create(&shaped(small_job("Kept a second"), "Square1x1", "mp4", "h264")).await?;
    let job = completed(&app, id).await?;
    let video = s3.video(id, job["attempt"].as_u64().context("attempt")?, "mp4");
    eventually(WAIT, || async {
        let status = app.output(id, None).await?.status();
        holds(status == 410, || format!("still served ({status}) after the retention"))
    })
    .await?;
    assert!(!video.exists(), "the object outlived its retention");
    app.stop().await
}

#[tokio::test]
async fn deleting_a_job_deletes_its_video_and_artifacts_from_the_bucket() -> TestResult {
    let s3 = S3::start().await?;
    let app = spawn_on(&s3, |_| {}).await?;
    let id = app.create(&shaped(small_job("Deleted from the bucket"), "Square1x1", "mp4", "h264")).await?;
    let job = completed(&app, id).await?;
    let video = s3.video(id, job["attempt"].as_u64().context("attempt")?, "mp4");
    assert!(video.exists(), "the video is in the bucket");
    let res = app.client.delete(app.url(&format!("/api/jobs/{id}"))).send().await?;
    assert_eq!(res.status(), 204);
    let left: Vec<PathBuf> = files_under(&s3.root.path().join(BUCKET))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&id.to_string()))
        .collect();
    assert!(left.is_empty(), "the job's objects are gone: {left:?}");
    assert_eq!(app.output(id, None).await?.status(), 404);
    app.stop().await
}

#[tokio::test]
async fn a_storage_url_aura_cannot_use_stops_the_start_with_one_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    for (url, says) in [
        ("gs://bucket/prefix", "unknown scheme \"gs\""),
        ("file://relative/path", "absolute path"),
        ("videos", "not a URL"),
    ] {
        let out = tokio::time::timeout(
            WAIT,
            Command::new(AURA)
                .args(["serve", "--addr", "127.0.0.1:0", "--workers", "0", "--data-dir"])
                .arg(dir.path().join("data"))
                .env("AURA_STORAGE_URL", url)
                .env("RUST_LOG", "off")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        let stderr = String::from_utf8(out.stderr)?;
        assert!(!out.status.success(), "{url} was accepted");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{url}: one line: {stderr}");
        assert!(
            lines[0].starts_with("aura: AURA_STORAGE_URL: ") && lines[0].contains(says),
            "{url}: {stderr}"
        );
    }
    Ok(())
}

/// Every file under `dir`, depth first.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { pending.push(path) } else { found.push(path) }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn a_new_attempt_without_local_files_takes_verified_stages_from_the_bucket_and_redoes_a_tampered_one()
-> TestResult {
    let s3 = S3::start().await?;
    let tools = tempfile::tempdir()?;
    let slow = tools.path().join("slow-ffmpeg");
    std::fs::write(&slow, "#!/bin/sh\nsleep 0.5\nexec ffmpeg \"$@\"\n")?;
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let options = s3.options();
    let settings = |cfg: &mut aura::config::ServeConfig| {
        cfg.workers = Some(1);
        cfg.storage_url = Some(format!("s3://{BUCKET}/{PREFIX}"));
        cfg.storage_options = options.clone();
        cfg.ffmpeg = slow.clone();
    };
    let mut app = spawn_app_in(tempfile::tempdir()?, settings).await?;
    let id = app.create(&shaped(small_job("Continued elsewhere"), "Square1x1", "mp4", "h264")).await?;
    let visuals = |e: &crate::helpers::Sse| {
        e.kind == "step-status" && e.data["step"] == "Visuals" && e.data["state"] == "Started"
    };
    tokio::time::timeout(WAIT, app.follow(id, visuals)).await??;
    let dir = app.keep_dir()?;
    app.stop().await?;

    // The next attempt finds no local files, as on another node; Audio's stored copy is altered.
    std::fs::remove_dir_all(dir.path().join("data/jobs").join(id.to_string()))?;
    let stages = s3.root.path().join(BUCKET).join(PREFIX).join(format!("jobs/{id}/1/stages"));
    let audio = files_under(&stages.join("audio"));
    let first = audio.first().context("Audio stored no file")?;
    std::fs::write(first, b"not what was recorded")?;

    let app = spawn_app_in(dir, settings).await?;
    let job = completed(&app, id).await?;
    assert_eq!(job["attempt"], 2, "{job}");
    let history = app.history(id).await?;
    let restart = restart_in(&history)?;
    let states = |step: &str| states_after(&history[restart..], step);
    assert_eq!(states("Script"), ["Skipped"], "Script came from the bucket");
    assert_eq!(states("Audio"), ["Started", "Completed"], "the altered Audio was done again");
    let left = s3.stage_files_after_cleanup().await;
    assert!(left.is_empty(), "the ended job's stage artifacts are gone from the bucket: {left:?}");
    app.stop().await
}

/// A FIFO outside every job folder that tells whether anything opened it: a reader blocks in
/// `open` until a writer comes, so a thread holding the write end open-pending learns of any
/// reader the moment it opens. [`Tripwire::tripped`] releases the thread and answers.
struct Tripwire {
    path: PathBuf,
    opened: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn new(path: PathBuf) -> TestResult<Tripwire> {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)?;
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o, d, p) = (opened.clone(), done.clone(), path.clone());
        let watcher = std::thread::spawn(move || {
            let writer = std::fs::OpenOptions::new().write(true).open(&p);
            if !d.load(std::sync::atomic::Ordering::SeqCst) {
                o.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            // Closing the write end gives the reader an end of file, never data.
            drop(writer);
        });
        Ok(Tripwire { path, opened, done, watcher: Some(watcher) })
    }

    /// Whether anything opened the FIFO before now.
    fn tripped(mut self) -> TestResult<bool> {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        // Our own reader lets the watcher's `open` return (non-blocking: it may have returned).
        let _reader = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().read(true),
            nix::fcntl::OFlag::O_NONBLOCK.bits(),
        )
        .open(&self.path)?;
        if let Some(watcher) = self.watcher.take() {
            watcher.join().map_err(|_| "the tripwire's thread panicked")?;
        }
        Ok(self.opened.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[tokio::test]
async fn a_stored_manifest_whose_output_names_a_file_outside_the_job_folder_is_redone_with_a_warning()
-> TestResult {
    let store = tempfile::tempdir()?;
    let tools = tempfile::tempdir()?;
    let slow = tools.path().join("slow-ffmpeg");
    std::fs::write(&slow, "#!/bin/sh\nsleep 0.5\nexec ffmpeg \"$@\"\n")?;
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // A folder store that is not the data folder keeps each attempt's stages, as a bucket does.
    let storage_url = format!("file://{}", store.path().display());
    let settings = |cfg: &mut aura::config::ServeConfig| {
        cfg.workers = Some(1);
        cfg.storage_url = Some(storage_url.clone());
        cfg.ffmpeg = slow.clone();
    };
    let mut app = spawn_app_in(tempfile::tempdir()?, settings).await?;
    let id = app.create(&shaped(small_job("Tampered timeline"), "Square1x1", "mp4", "h264")).await?;
    let render = |e: &crate::helpers::Sse| {
        e.kind == "step-status" && e.data["step"] == "Render" && e.data["state"] == "Started"
    };
    tokio::time::timeout(WAIT, app.follow(id, render)).await??;
    let dir = app.keep_dir()?;
    app.stop().await?;

    // The next attempt finds no local files. Timeline's stored manifest now names, as its
    // encoded audio, a file outside the job folder: a FIFO that tells whether anything opens it.
    std::fs::remove_dir_all(dir.path().join("data/jobs").join(id.to_string()))?;
    let outside = tools.path().join("secret.m4a");
    let tripwire = Tripwire::new(outside.clone())?;
    let manifest = store.path().join(format!("jobs/{id}/1/stages/timeline.done.json"));
    let mut recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
    recorded["output"]["audio"] = outside.to_string_lossy().into_owned().into();
    std::fs::write(&manifest, serde_json::to_vec(&recorded)?)?;

    let app = spawn_app_in(dir, settings).await?;
    let job = app.finished(id, Duration::from_secs(120)).await;
    let read_outside = tripwire.tripped()?;
    assert!(!read_outside, "a file outside the job folder was opened");
    let job = job?;
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(job["attempt"], 2, "{job}");
    let history = app.history(id).await?;
    let restart = restart_in(&history)?;
    let states = |step: &str| states_after(&history[restart..], step);
    assert_eq!(states("Visuals"), ["Skipped"], "Visuals came from the store");
    assert_eq!(states("Timeline"), ["Started", "Completed"], "the tampered Timeline was done again");
    let warning = history[restart..]
        .iter()
        .find(|e| e["type"] == "warning" && e["data"]["code"] == "artifact-rejected")
        .context("no artifact-rejected warning")?;
    assert_eq!(warning["data"]["step"], "Timeline", "{warning}");
    assert!(
        !warning.to_string().contains(&*outside.to_string_lossy()),
        "the warning names no path: {warning}"
    );
    app.stop().await
}
