//! What each finished stage left on disk, recorded so a later attempt can trust it.
//!
//! When a stage completes, its output (the small struct the next stage reads) and the size and
//! SHA-256 of every file it produced are written to `work/<stage>.done.json`, atomically
//! (a temporary file, fsynced, then renamed). After a crash the next attempt skips a stage only
//! if that manifest exists and every file still has its recorded size and checksum: a
//! half-written file never passes. The first stage that fails the check, and every stage after
//! it, runs again.
//!
//! **In the object store.** When finished videos live elsewhere than the data folder
//! (`AURA_STORAGE_URL`, see `objects`), the next attempt may run on another node, which finds
//! no local artifacts. So `record` also puts the stage's files, then its manifest, under the
//! attempt's keys (`<prefix>/jobs/<id>/<attempt>/stages/<stage>/<path>` and
//! `…/stages/<stage>.done.json`): a manifest in the store means its files are there. When the
//! local manifest is missing or fails, `verified` looks for the stage in the store, newest earlier
//! attempt first, downloads its files into the job folder, checks size and SHA-256 against that
//! manifest, and writes the local manifest. The Render stage's one file is the video, which
//! `publish` stores moments later, so it is not uploaded twice. A store that cannot take a
//! stage's artifacts makes the job wait (`warning` `waiting-for-storage`, retried with backoff,
//! as for the video) before the next stage starts. A store that cannot give them back only
//! means "not verified": the stage runs again, the job does not fail.
//!
//! **Names are checked like files.** A manifest is only as trustworthy as the folder or bucket
//! it came from, and a stage's output names the files later stages hand to ffmpeg (the clips,
//! the narration, the clip list, the encoded audio). So before anything uses an output, every
//! name it supplies ([`Supplies`]) must be a plain file name (no separator, no `..`, no leading
//! dot) with the extension this job gives such a file, and one of the files the same manifest
//! recorded under `work/` (so inside the job folder and verified by size and SHA-256); the
//! Render output must name this job's video. An output that fails is not used: the stage runs
//! again, after a `warning` event `artifact-rejected`, and the manifest's files are not even
//! downloaded. What the clip list says inside is read by ffmpeg's concat demuxer in its safe
//! mode (Aura never passes `-safe 0`), which refuses absolute paths and `..`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::audio::Narration;
use super::render::{Timeline, narration_extension};
use super::script::Script;
use super::visuals::{Clip, clip_extension};
use super::{Job, StageError};
use crate::domain::event::JobOutput;
use crate::domain::job::Stage;
use crate::engine::publish::StoreWait;
use crate::store::ApplyError;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    stage: Stage,
    output: serde_json::Value,
    files: Vec<FileRecord>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FileRecord {
    /// Relative to the job's folder, e.g. `work/clip01.mp4` or `output.mp4`.
    path: String,
    size: u64,
    sha256: String,
}

fn manifest_path(job: &Job, stage: Stage) -> PathBuf {
    job.work_dir.join(format!("{}.done.json", stage.name().to_lowercase()))
}

/// Size and SHA-256 of a file, read off the async runtime's threads.
async fn fingerprint(path: PathBuf) -> anyhow::Result<(u64, String)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, String)> {
        let mut file = std::fs::File::open(&path).context("opening an artifact")?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = match std::io::Read::read(&mut file, &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => read.context("reading an artifact")?,
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = hasher.finalize();
        Ok((size, digest.iter().map(|b| format!("{b:02x}")).collect()))
    })
    .await
    .context("hashing an artifact")?
}

/// Records `stage` as done with `output`; `files` are relative to the job's folder.
pub async fn record<T: Serialize>(
    job: &Job,
    stage: Stage,
    output: &T,
    files: &[String],
) -> Result<(), StageError> {
    let mut records = Vec::with_capacity(files.len());
    for path in files {
        let (size, sha256) = fingerprint(job.job_dir.join(path)).await?;
        records.push(FileRecord { path: path.clone(), size, sha256 });
    }
    let manifest = Manifest {
        stage,
        output: serde_json::to_value(output).context("encoding a stage's output")?,
        files: records,
    };
    let target = manifest_path(job, stage);
    let tmp = target.with_extension("json.tmp");
    let bytes = serde_json::to_vec(&manifest).context("encoding a manifest")?;
    let mut file = tokio::fs::File::create(&tmp).await.context("creating a manifest")?;
    file.write_all(&bytes).await.context("writing a manifest")?;
    file.sync_all().await.context("syncing a manifest")?;
    drop(file);
    tokio::fs::rename(&tmp, &target).await.context("putting a manifest in place")?;
    if !job.objects.in_place() && stage != Stage::Render {
        store(job, stage, &manifest.files, bytes).await?;
    }
    Ok(())
}

/// Uploads the stage's artifacts, waiting while the store cannot take them (API.md: a stage
/// artifact that cannot be stored waits with `waiting-for-storage`, retried with backoff): the
/// next stage starts only once they are stored, so a later attempt on any node can reuse them.
async fn store(job: &Job, stage: Stage, files: &[FileRecord], manifest: Vec<u8>) -> Result<(), StageError> {
    let mut wait = StoreWait::default();
    loop {
        let Err(e) = upload(job, stage, files, manifest.clone()).await else { return Ok(()) };
        tracing::warn!(
            stage = stage.name(),
            error = format!("{e:#}"),
            "storing a stage's artifacts failed; retrying"
        );
        let message = format!(
            "the object store could not take {}'s artifacts: the job waits and storing is retried",
            stage.name()
        );
        let Some(backoff) = wait.failed(&job.handle, stage, &message).await else {
            return Err(StageError::Cancelled);
        };
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = job.cancel.cancelled() => return Err(StageError::Cancelled),
        }
    }
}

/// The stage's name as it appears in keys.
fn key_name(stage: Stage) -> String {
    stage.name().to_lowercase()
}

/// Puts the stage's files, then its manifest, under this attempt's keys.
async fn upload(job: &Job, stage: Stage, files: &[FileRecord], manifest: Vec<u8>) -> anyhow::Result<()> {
    let attempt = job.handle.attempt();
    let name = key_name(stage);
    for f in files {
        let key = job.objects.stage_key(job.id, attempt, &name, Some(&f.path));
        let stored = job.objects.put_file(&key, &job.job_dir.join(&f.path)).await?;
        anyhow::ensure!(stored == f.size, "{key} holds {stored} bytes, not {}", f.size);
    }
    let key = job.objects.stage_key(job.id, attempt, &name, None);
    job.objects.put_bytes(&key, manifest).await?;
    Ok(())
}

/// What a stage's output hands to later stages, checked before a recorded output is used.
pub trait Supplies {
    /// Every work-folder file name the output supplies, with the extension this job gives it.
    fn names(&self, job: &Job) -> Vec<(&str, &'static str)>;

    /// Whether the rest of the output is what this job would have produced.
    fn consistent(&self, _job: &Job) -> bool {
        true
    }
}

impl Supplies for Script {
    fn names(&self, _job: &Job) -> Vec<(&str, &'static str)> {
        Vec::new()
    }
}

impl Supplies for Narration {
    fn names(&self, _job: &Job) -> Vec<(&str, &'static str)> {
        self.files.iter().map(|f| (f.as_str(), "wav")).collect()
    }
}

impl Supplies for Vec<Clip> {
    fn names(&self, job: &Job) -> Vec<(&str, &'static str)> {
        let ext = clip_extension(job.spec.render_spec.codec);
        self.iter().map(|c| (c.file.as_str(), ext)).collect()
    }
}

impl Supplies for Timeline {
    fn names(&self, job: &Job) -> Vec<(&str, &'static str)> {
        vec![
            (self.clip_list.as_str(), "txt"),
            (self.audio.as_str(), narration_extension(job.spec.render_spec.container)),
        ]
    }
}

impl Supplies for JobOutput {
    fn names(&self, _job: &Job) -> Vec<(&str, &'static str)> {
        Vec::new()
    }

    fn consistent(&self, job: &Job) -> bool {
        self.video_path == job.relative_output && self.video_url == format!("/api/jobs/{}/output", job.id)
    }
}

/// Whether `name` is a plain file name with extension `ext`: no separator, no `..`, no
/// leading dot, nothing but one normal path component.
fn plain_name(name: &str, ext: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && path.components().count() == 1
        && matches!(path.components().next(), Some(std::path::Component::Normal(_)))
        && path.extension().is_some_and(|e| e == ext)
}

/// The manifest's output, if every name it supplies is a plain file name with the expected
/// extension and one of the files the manifest recorded under `work/`; else why not.
fn accepted<T: DeserializeOwned + Supplies>(job: &Job, manifest: &Manifest) -> Result<T, &'static str> {
    let output: T =
        serde_json::from_value(manifest.output.clone()).map_err(|_| "its output does not read")?;
    if !output.consistent(job) {
        return Err("its output does not name this job's video");
    }
    for (name, ext) in output.names(job) {
        if !plain_name(name, ext) {
            return Err("it names a file that is not a plain work file name of the expected type");
        }
        let recorded = format!("work/{name}");
        if !manifest.files.iter().any(|f| f.path == recorded) {
            return Err("it names a file it did not record");
        }
    }
    Ok(output)
}

/// Says, in a `warning` event, that a recorded stage was not used.
async fn rejected(job: &Job, stage: Stage, source: &str, why: &str) {
    tracing::warn!(
        stage = stage.name(),
        source,
        why,
        "a recorded stage output was rejected; redoing the stage"
    );
    let message =
        format!("the {} stage recorded in {source} was not used: {why}; it runs again", stage.name());
    match job.handle.warn(Some(stage), ARTIFACT_REJECTED, message).await {
        Ok(_) => {}
        Err(ApplyError::Refused(refusal)) => tracing::warn!(%refusal, "the artifact warning was refused"),
        Err(e) => tracing::warn!(error = %e, "could not store the artifact warning"),
    }
}

/// The `warning` code of a recorded stage whose output names what it may not.
pub const ARTIFACT_REJECTED: &str = "artifact-rejected";

/// The recorded output of `stage`, if its manifest exists and every file it names is intact and
/// every name its output supplies is one of those files: in the job's folder, else (a store
/// that is not in place) in the store from an earlier attempt.
pub async fn verified<T: DeserializeOwned + Supplies>(job: &Job, stage: Stage) -> Option<T> {
    if let Some(manifest) = verified_locally(job, stage).await {
        return match accepted(job, &manifest) {
            Ok(output) => Some(output),
            Err(why) => {
                // Not used again: the stage's new run records a new one.
                let _ = tokio::fs::remove_file(manifest_path(job, stage)).await;
                rejected(job, stage, "the job folder", why).await;
                None
            }
        };
    }
    if job.objects.in_place() || stage == Stage::Render {
        return None;
    }
    for attempt in (1..job.handle.attempt()).rev() {
        match fetch::<T>(job, stage, attempt).await {
            Ok(Fetched::Verified(output)) => {
                tracing::info!(stage = stage.name(), attempt, "a stage's artifacts came from the store");
                return Some(output);
            }
            Ok(Fetched::Absent) => {}
            Ok(Fetched::Rejected(why)) => {
                rejected(job, stage, "the object store", why).await;
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    stage = stage.name(),
                    attempt,
                    error = format!("{e:#}"),
                    "fetching a stage's artifacts failed; redoing the stage"
                );
                return None;
            }
        }
    }
    None
}

/// The local manifest of `stage`, if it exists and every file it names is intact.
async fn verified_locally(job: &Job, stage: Stage) -> Option<Manifest> {
    let bytes = tokio::fs::read(manifest_path(job, stage)).await.ok()?;
    let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
    if manifest.stage != stage {
        return None;
    }
    for f in &manifest.files {
        let path = job.job_dir.join(&f.path);
        if !is_inside(&job.job_dir, &path) {
            return None;
        }
        match fingerprint(path).await {
            Ok((size, sha)) if size == f.size && sha == f.sha256 => {}
            _ => {
                tracing::info!(stage = stage.name(), file = %f.path, "an artifact changed or is gone; redoing the stage");
                return None;
            }
        }
    }
    Some(manifest)
}

/// What an earlier attempt stored for a stage.
enum Fetched<T> {
    /// Downloaded, every file verified, the local manifest written.
    Verified(T),
    /// No manifest, or one whose files do not check out.
    Absent,
    /// A manifest whose output names what it may not (see [`accepted`]); nothing was downloaded.
    Rejected(&'static str),
}

/// Downloads `stage` as `attempt` stored it into the job's folder and verifies every file
/// against the stored manifest; then writes the local manifest. The output's names are checked
/// before anything is downloaded.
async fn fetch<T: DeserializeOwned + Supplies>(
    job: &Job,
    stage: Stage,
    attempt: u32,
) -> anyhow::Result<Fetched<T>> {
    let name = key_name(stage);
    let key = job.objects.stage_key(job.id, attempt, &name, None);
    let bytes = match job.objects.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(crate::objects::ObjectError::NotFound) => return Ok(Fetched::Absent),
        Err(e) => return Err(e.into()),
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else { return Ok(Fetched::Absent) };
    if manifest.stage != stage {
        return Ok(Fetched::Absent);
    }
    let output = match accepted::<T>(job, &manifest) {
        Ok(output) => output,
        Err(why) => return Ok(Fetched::Rejected(why)),
    };
    for f in &manifest.files {
        let path = job.job_dir.join(&f.path);
        if !is_inside(&job.job_dir, &path) {
            return Ok(Fetched::Absent);
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.context("creating an artifact's folder")?;
        }
        let key = job.objects.stage_key(job.id, attempt, &name, Some(&f.path));
        job.objects.get_file(&key, &path).await?;
        match fingerprint(path).await {
            Ok((size, sha)) if size == f.size && sha == f.sha256 => {}
            _ => {
                tracing::info!(stage = stage.name(), file = %f.path, attempt, "a stored artifact does not match its manifest");
                return Ok(Fetched::Absent);
            }
        }
    }
    let target = manifest_path(job, stage);
    let tmp = target.with_extension("json.tmp");
    tokio::fs::write(&tmp, &bytes).await.context("writing a fetched manifest")?;
    tokio::fs::rename(&tmp, &target).await.context("putting a fetched manifest in place")?;
    Ok(Fetched::Verified(output))
}

/// Recorded paths are Aura's own, but a manifest is a file: never follow it out of the job folder.
fn is_inside(dir: &Path, path: &Path) -> bool {
    path.components().all(|c| !matches!(c, std::path::Component::ParentDir)) && path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::plain_name;

    #[test]
    fn only_plain_file_names_with_the_expected_extension_pass() {
        for ok in ["clip01.mp4", "narr03.wav", "clips.txt", "narration.m4a", "a b.mp4"] {
            let ext = ok.rsplit('.').next().unwrap_or_default();
            assert!(plain_name(ok, ext), "{ok}");
        }
        for (bad, ext) in [
            ("../../etc/passwd", "mp4"),
            ("/etc/passwd", "mp4"),
            ("/tmp/x.mp4", "mp4"),
            ("../clip01.mp4", "mp4"),
            ("sub/clip01.mp4", "mp4"),
            ("sub\\clip01.mp4", "mp4"),
            ("..", "mp4"),
            (".", "mp4"),
            ("", "mp4"),
            (".hidden.mp4", "mp4"),
            ("clip01.mkv", "mp4"),
            ("clip01", "mp4"),
            ("clip01.mp4\0.txt", "txt"),
        ] {
            assert!(!plain_name(bad, ext), "{bad:?}");
        }
    }
}
