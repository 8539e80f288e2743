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
//! `publish` stores moments later, so it is not uploaded twice. A store error is logged and only
//! means "not verified": the stage runs again, the job does not fail.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Job, StageError};
use crate::domain::job::Stage;

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
    if !job.objects.in_place()
        && stage != Stage::Render
        && let Err(e) = upload(job, stage, &manifest.files, bytes).await
    {
        // Only a later attempt on another node misses it: it redoes the stage.
        tracing::warn!(stage = stage.name(), error = format!("{e:#}"), "storing a stage's artifacts failed");
    }
    Ok(())
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

/// The recorded output of `stage`, if its manifest exists and every file it names is intact:
/// in the job's folder, else (a store that is not in place) in the store from an earlier attempt.
pub async fn verified<T: DeserializeOwned>(job: &Job, stage: Stage) -> Option<T> {
    if let Some(manifest) = verified_locally(job, stage).await {
        return serde_json::from_value(manifest.output).ok();
    }
    if job.objects.in_place() || stage == Stage::Render {
        return None;
    }
    for attempt in (1..job.handle.attempt()).rev() {
        match fetch(job, stage, attempt).await {
            Ok(Some(output)) => {
                tracing::info!(stage = stage.name(), attempt, "a stage's artifacts came from the store");
                return serde_json::from_value(output).ok();
            }
            Ok(None) => {}
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

/// Downloads `stage` as `attempt` stored it into the job's folder and verifies every file
/// against the stored manifest; then writes the local manifest. `Ok(None)` when that attempt
/// stored no manifest for the stage, or what it stored does not check out.
async fn fetch(job: &Job, stage: Stage, attempt: u32) -> anyhow::Result<Option<serde_json::Value>> {
    let name = key_name(stage);
    let key = job.objects.stage_key(job.id, attempt, &name, None);
    let bytes = match job.objects.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(crate::objects::ObjectError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else { return Ok(None) };
    if manifest.stage != stage {
        return Ok(None);
    }
    for f in &manifest.files {
        let path = job.job_dir.join(&f.path);
        if !is_inside(&job.job_dir, &path) {
            return Ok(None);
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
                return Ok(None);
            }
        }
    }
    let target = manifest_path(job, stage);
    let tmp = target.with_extension("json.tmp");
    tokio::fs::write(&tmp, &bytes).await.context("writing a fetched manifest")?;
    tokio::fs::rename(&tmp, &target).await.context("putting a fetched manifest in place")?;
    Ok(Some(manifest.output))
}

/// Recorded paths are Aura's own, but a manifest is a file: never follow it out of the job folder.
fn is_inside(dir: &Path, path: &Path) -> bool {
    path.components().all(|c| !matches!(c, std::path::Component::ParentDir)) && path.starts_with(dir)
}
