//! What ffprobe says about a media file: its duration and streams.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::{Deadline, Job, StageError};

/// How far a stream may stray from its target duration (API: within 5 %).
const DURATION_TOLERANCE: f64 = 0.05;

/// Whether `actual` seconds are within [`DURATION_TOLERANCE`] of `target`.
pub fn within_tolerance(actual: f64, target: f64) -> bool {
    (actual - target).abs() <= target * DURATION_TOLERANCE
}

/// The parts of `ffprobe -of json -show_entries …` the pipeline reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Probe {
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub streams: Vec<Stream>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Format {
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stream {
    pub codec_type: Option<String>,
    pub codec_name: Option<String>,
    pub sample_rate: Option<String>,
}

impl Probe {
    pub fn duration_sec(&self) -> Option<f64> {
        self.format.duration.as_deref().and_then(|d| d.parse().ok())
    }

    pub fn sample_rate(&self) -> Option<u32> {
        self.streams.iter().find_map(|s| s.sample_rate.as_deref().and_then(|r| r.parse().ok()))
    }
}

/// Probes `path` (absolute, or relative to the job's work folder).
pub async fn probe(job: &Job, deadline: Deadline, path: &Path, what: &str) -> Result<Probe, StageError> {
    let out = job
        .ffprobe(deadline)
        .args(["-show_entries", "format=duration:stream=codec_type,codec_name,sample_rate"])
        .arg(path.as_os_str())
        .output()
        .await
        .map_err(|e| StageError::process(what, e))?;
    let probe = serde_json::from_slice(&out.stdout).context("reading ffprobe's answer")?;
    Ok(probe)
}
