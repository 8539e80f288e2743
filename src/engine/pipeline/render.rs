//! The Timeline and Render stages: the scene clips and narration become one file.
//!
//! Timeline writes the concat list of the clips, has the narration encoded once, to the final
//! audio codec (AAC for MP4 and Matroska, Opus for WebM; usually already done beside Visuals, see
//! [`encode_narration`]), and checks that audio and clips have the target's length. Render joins the clips with the concat demuxer and `-c copy`, muxes the
//! audio into the requested container (`+faststart` for MP4), probes the result and moves it to
//! `<job>/output.<ext>`, where `GET /api/jobs/{id}/output` serves it.

use anyhow::Context;

use super::audio::Narration;
use super::probe::{probe, within_tolerance};
use super::progress::{Span, run_with_progress};
use super::script::Script;
use super::visuals::Clip;
use super::{Deadline, Job, StageError};
use crate::domain::event::JobOutput;
use crate::domain::job::Stage;
use crate::domain::spec::{Codec, Container};

/// What Timeline hands Render.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Timeline {
    pub clip_list: String,
    pub audio: String,
    pub duration_sec: u32,
}

/// The audio encoder for a container.
fn audio_codec_args(container: Container, bitrate_k: u32) -> (Vec<String>, &'static str) {
    let codec = match container {
        Container::Webm => "libopus",
        Container::Mp4 | Container::Mkv => "aac",
    };
    (
        vec!["-c:a".into(), codec.into(), "-b:a".into(), format!("{bitrate_k}k")],
        narration_extension(container),
    )
}

/// The encoded narration's file extension for a container: `m4a` (AAC) or `mka` (Opus).
pub fn narration_extension(container: Container) -> &'static str {
    match container {
        Container::Webm => "mka",
        Container::Mp4 | Container::Mkv => "m4a",
    }
}

async fn write_work(job: &Job, name: &str, text: String) -> Result<(), StageError> {
    tokio::fs::write(job.work(name), text)
        .await
        .with_context(|| format!("writing {name}"))
        .map_err(Into::into)
}

/// The narration encoded once, to the final audio codec, and its measured length.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub audio: String,
    pub secs: f64,
}

/// Encodes the narration files to `narration.<ext>` and measures the result. It runs as soon as
/// Audio is done, beside the scene encodes (its progress, Timeline's, goes out only if Timeline
/// is already running by then; see [`super::progress::Reporter`]).
pub async fn encode_narration(
    job: &Job,
    target_sec: u32,
    narration: &Narration,
    deadline: Deadline,
) -> Result<Encoded, StageError> {
    let mut list = String::from("ffconcat version 1.0\n");
    for file in &narration.files {
        list.push_str(&format!("file {file}\n"));
    }
    write_work(job, "narration.txt", list).await?;
    let r = &job.spec.render_spec;
    let (codec_args, ext) = audio_codec_args(r.container, r.audio_bitrate_k);
    let audio = format!("narration.{ext}");
    let process = job
        .ffmpeg(deadline)
        .args(["-f", "concat", "-i"])
        .arg(job.work("narration.txt"))
        .args(codec_args)
        .args(["-ar", "48000", "-ac", "2", "-progress", "pipe:1", "-nostats"])
        .arg(job.work(&audio));
    let span = Span { from: 0.0, to: 80.0, expected_us: u64::from(target_sec) * 1_000_000 };
    run_with_progress(process, &job.reporter, Stage::Timeline, "Encoding the narration", |us| span.pct(us))
        .await
        .map_err(|e| StageError::process("encoding the narration", e))?;
    job.reporter.report(Stage::Timeline, 90.0, "Checking the narration".into()).await;
    let secs =
        probe(job, deadline, &job.work(&audio), "checking durations").await?.duration_sec().unwrap_or(0.0);
    Ok(Encoded { audio, secs })
}

/// The Timeline stage: the clip list, the encoded narration (encoded here unless it already
/// was, in `encoded`), and the check that audio and video both have the target's length. Each
/// clip's length was checked by Visuals when it was written.
pub async fn assemble(
    job: &Job,
    script: &Script,
    clips: &[Clip],
    narration: &Narration,
    encoded: Option<Result<Encoded, StageError>>,
    deadline: Deadline,
) -> Result<Timeline, StageError> {
    let target = script.duration_sec();
    let mut list = String::from("ffconcat version 1.0\n");
    for clip in clips {
        // Names are Aura's own (`clip01.mp4`): nothing to escape.
        list.push_str(&format!("file {}\nduration {}\n", clip.file, clip.duration_sec));
    }
    write_work(job, "clips.txt", list).await?;
    let encoded = match encoded {
        Some(done) => done?,
        None => encode_narration(job, target, narration, deadline).await?,
    };
    let audio_secs = encoded.secs;
    let video_secs: f64 = clips.iter().map(|c| f64::from(c.duration_sec)).sum();
    let target_f = f64::from(target);
    if !within_tolerance(audio_secs, target_f) || !within_tolerance(video_secs, target_f) {
        return Err(anyhow::anyhow!(
            "timeline lengths differ: audio {audio_secs} s, video {video_secs} s, target {target} s"
        )
        .into());
    }
    Ok(Timeline { clip_list: "clips.txt".into(), audio: encoded.audio, duration_sec: target })
}

/// The Render stage: joins, muxes, probes and moves the output into place.
pub async fn render(job: &Job, timeline: &Timeline, deadline: Deadline) -> Result<JobOutput, StageError> {
    let r = &job.spec.render_spec;
    let ext = r.container.extension();
    let partial = job.work(&format!("output.partial.{ext}"));
    let mut process = job
        .ffmpeg(deadline)
        .args(["-f", "concat", "-i"])
        .arg(job.work(&timeline.clip_list))
        .arg("-i")
        .arg(job.work(&timeline.audio))
        .args(["-map", "0:v:0", "-map", "1:a:0", "-c", "copy"]);
    if r.container == Container::Mp4 {
        process = process.args(["-movflags", "+faststart"]);
        if r.codec == Codec::Hevc {
            process = process.args(["-tag:v", "hvc1"]);
        }
    }
    let process = process.args(["-progress", "pipe:1", "-nostats"]).arg(&partial);
    let span = Span { from: 0.0, to: 90.0, expected_us: u64::from(timeline.duration_sec) * 1_000_000 };
    run_with_progress(process, &job.reporter, Stage::Render, "Writing the video", |us| span.pct(us))
        .await
        .map_err(|e| StageError::process("writing the video", e))?;

    let duration = probe(job, deadline, &partial, "checking the video").await?.duration_sec().unwrap_or(0.0);
    if !within_tolerance(duration, f64::from(timeline.duration_sec)) {
        return Err(anyhow::anyhow!("the video lasts {duration} s, not {} s", timeline.duration_sec).into());
    }
    let final_path = job.job_dir.join(format!("output.{ext}"));
    tokio::fs::rename(&partial, &final_path).await.context("moving the output into place")?;
    let size_bytes = tokio::fs::metadata(&final_path).await.context("reading the output's size")?.len();
    Ok(JobOutput {
        video_path: job.relative_output.clone(),
        video_url: format!("/api/jobs/{}/output", job.id),
        size_bytes,
        duration_sec: (duration * 1000.0).round() / 1000.0,
    })
}
