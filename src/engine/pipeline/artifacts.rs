//! What each finished stage left on disk, recorded so a later attempt can trust it.
//!
//! When a stage completes, its output (the small struct the next stage reads) and the size and
//! SHA-256 of every file it produced are written to `work/<stage>.done.json`, atomically
//! (a temporary file, fsynced, then renamed). After a crash the next attempt skips a stage only
//! if that manifest exists and every file still has its recorded size and checksum: a
//! half-written file never passes. The first stage that fails the check, and every stage after
//! it, runs again.

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
        let size = std::io::copy(&mut file, &mut hasher).context("reading an artifact")?;
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
    Ok(())
}

/// The recorded output of `stage`, if its manifest exists and every file it names is intact.
pub async fn verified<T: DeserializeOwned>(job: &Job, stage: Stage) -> Option<T> {
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
    serde_json::from_value(manifest.output).ok()
}

/// Recorded paths are Aura's own, but a manifest is a file: never follow it out of the job folder.
fn is_inside(dir: &Path, path: &Path) -> bool {
    path.components().all(|c| !matches!(c, std::path::Component::ParentDir)) && path.starts_with(dir)
}
