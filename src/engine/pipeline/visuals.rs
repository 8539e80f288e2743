//! The Visuals stage: one clip per scene, drawn by ffmpeg and encoded in the final video codec.
//!
//! Each clip is a `color` background padded with a darker band below it (`pad` fills with a
//! memset; a large `drawbox` costs ten times the text drawing at 1080p, so there is none),
//! the scene's heading sliding and fading in, and its caption fading in after it. All text comes
//! from files in the work folder (`drawtext=textfile=…:expansion=none`), so quotes, `%`, `:`,
//! `\`, emoji or right-to-left text in a topic can never break the filter graph; lines are wrapped
//! here because drawtext does not wrap.
//!
//! Clips are encoded with the final codec, size, fps, pixel format and bitrate and start with a
//! keyframe, so Render can join them with `-c copy` (see the `pipeline` module).

use futures_util::{StreamExt, TryStreamExt, stream};

use super::probe::{probe, within_tolerance};
use super::progress::{Shares, run_with_progress_say};
use super::script::{Scene, Script};
use super::{Deadline, Job, StageError};
use crate::domain::job::Stage;
use crate::domain::spec::{Codec, Quality, RenderSpec};

const FONT_BOLD: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Backgrounds, one per scene in turn.
const PALETTE: [u32; 6] = [0x1d3557, 0x457b9d, 0x2a9d8f, 0x6d597a, 0x264653, 0xb5651d];
/// The share of the frame's height above the band.
const BAND_TOP: f64 = 0.62;

/// `rgb` three quarters as bright, as ffmpeg's `0xRRGGBB`.
fn darker(rgb: u32) -> String {
    let dim = |shift: u32| ((rgb >> shift & 0xff) * 3 / 4) << shift;
    format!("0x{:06x}", dim(16) | dim(8) | dim(0))
}

/// One rendered scene clip in the work folder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Clip {
    pub file: String,
    pub duration_sec: u32,
}

/// The clips' container: MP4 keeps H.264/HEVC timestamps exact at any fps; Matroska for VP9/AV1.
pub fn clip_extension(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 | Codec::Hevc => "mp4",
        Codec::Vp9 | Codec::Av1 => "mkv",
    }
}

/// Encoder arguments for the final video codec (shared by every clip so they can be joined).
pub fn video_codec_args(r: &RenderSpec) -> Vec<String> {
    let v = r.video_bitrate_k;
    let x26x_preset = match r.quality_level {
        Quality::Draft => "ultrafast",
        Quality::Standard => "superfast",
        Quality::Good => "veryfast",
        Quality::High => "faster",
        Quality::Maximum => "medium",
    };
    let mut a: Vec<String> = match r.codec {
        Codec::H264 => vec!["-c:v".into(), "libx264".into(), "-preset".into(), x26x_preset.into()],
        Codec::Hevc => vec![
            "-c:v".into(),
            "libx265".into(),
            "-preset".into(),
            x26x_preset.into(),
            "-x265-params".into(),
            "log-level=error".into(),
        ],
        Codec::Vp9 => {
            let cpu = match r.quality_level {
                Quality::Draft | Quality::Standard => "8",
                Quality::Good | Quality::High => "6",
                Quality::Maximum => "4",
            };
            ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", cpu, "-row-mt", "1"]
                .map(String::from)
                .to_vec()
        }
        Codec::Av1 => {
            let preset = match r.quality_level {
                Quality::Draft => "12",
                Quality::Standard => "11",
                Quality::Good => "10",
                Quality::High => "9",
                Quality::Maximum => "8",
            };
            ["-c:v", "libsvtav1", "-preset", preset].map(String::from).to_vec()
        }
    };
    a.extend(["-b:v".into(), format!("{v}k")]);
    if matches!(r.codec, Codec::H264 | Codec::Hevc) {
        a.extend(["-maxrate".into(), format!("{v}k"), "-bufsize".into(), format!("{}k", v * 2)]);
    }
    a.extend(["-pix_fmt".into(), "yuv420p".into(), "-g".into(), (r.fps * 2).to_string()]);
    a
}

/// Wraps `text` into at most `max_lines` lines of at most `width` characters; words longer
/// than a line are split, and text beyond the last line ends in an ellipsis.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> String {
    let width = width.max(4);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let room = if used == 0 { width } else { width.saturating_sub(used + 1) };
            if word.len() <= room {
                if used > 0 {
                    line.push(' ');
                }
                line.extend(word.iter());
                break;
            }
            if used == 0 {
                let rest = word.split_off(width);
                lines.push(word.iter().collect());
                word = rest;
            } else {
                lines.push(std::mem::take(&mut line));
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let mut chars: Vec<char> = last.chars().collect();
            chars.truncate(width.saturating_sub(1));
            *last = chars.into_iter().collect::<String>() + "…";
        }
    }
    lines.join("\n")
}

/// The filter chain drawing one scene on its background: `band` pads the `color` source to the
/// full frame `w`x`h`.
fn scene_filter(
    (w, h, band_color): (u32, u32, &str),
    head_file: &str,
    caption_file: &str,
    head_size: u32,
    caption_size: u32,
) -> String {
    let band = format!("pad={w}:{h}:0:0:color={band_color}");
    let accent = "drawbox=x=iw*0.44:y=ih*0.5:w=iw*0.12:h=ih/120:color=white@0.8:t=fill";
    let head = format!(
        "drawtext=fontfile={FONT_BOLD}:textfile={head_file}:expansion=none:fontsize={head_size}:\
         fontcolor=white:line_spacing=8:x='(w-text_w)/2-w*0.04*max(0,1-t/0.6)':y='h*0.46-text_h':\
         alpha='min(1,t/0.6)'"
    );
    let caption = format!(
        "drawtext=fontfile={FONT}:textfile={caption_file}:expansion=none:fontsize={caption_size}:\
         fontcolor=white@0.9:line_spacing=6:x='(w-text_w)/2':y='h*0.68':alpha='min(1,max(0,(t-0.3)/0.6))'"
    );
    [&band, accent, &head, &caption].join(",")
}

/// How many scene clips are encoded at once: one ffmpeg (filters, then x264's frame threads)
/// keeps about 1.1 of 2 cores busy, two keep both.
pub const PARALLEL_SCENES: usize = 2;

/// Renders every scene to `clipNN.<ext>` in the final codec, [`PARALLEL_SCENES`] at a time,
/// reporting their combined true progress, and checks each clip's length. It may start before
/// the Visuals stage does (while Audio narrates); its progress goes out once the stage has
/// started (see [`super::progress::Reporter`]).
pub async fn render_scenes(job: &Job, script: &Script, deadline: Deadline) -> Result<Vec<Clip>, StageError> {
    let n = script.scenes.len();
    let shares = Shares::new(n, u64::from(script.duration_sec()) * 1_000_000);
    // Collected first: a lazy `map` closure here trips the compiler's `Send` proof for the task.
    let mut runs = Vec::with_capacity(n);
    for (i, scene) in script.scenes.iter().enumerate() {
        runs.push(render_scene(job, deadline, &shares, i, scene));
    }
    stream::iter(runs).buffered(PARALLEL_SCENES).try_collect().await
}

async fn render_scene(
    job: &Job,
    deadline: Deadline,
    shares: &Shares,
    i: usize,
    scene: &Scene,
) -> Result<Clip, StageError> {
    let r = &job.spec.render_spec;
    let (w, h) = r.frame_size(job.spec.brief.aspect);
    let short = w.min(h);
    let head_size = (short / 13).max(12);
    let caption_size = (short / 26).max(10);
    // DejaVu's average advance is about 0.6 em; keep a margin on both sides.
    let chars = |size: u32| (f64::from(w) * 0.86 / (f64::from(size) * 0.6)).floor() as usize;
    let k = i + 1;
    job.check_cancelled()?;
    let head_file = format!("head{k:02}.txt");
    let caption_file = format!("caption{k:02}.txt");
    let write = |name: String, text: String| async move {
        tokio::fs::write(job.work(&name), text)
            .await
            .map_err(|e| StageError::internal(anyhow::Error::new(e).context("writing scene text")))
    };
    write(head_file.clone(), wrap(&scene.heading, chars(head_size), 3)).await?;
    write(caption_file.clone(), wrap(&scene.caption, chars(caption_size), 4)).await?;
    let file = format!("clip{k:02}.{}", clip_extension(r.codec));
    let d = scene.duration_sec;
    let color = PALETTE[i % PALETTE.len()];
    let top = ((f64::from(h) * BAND_TOP / 2.0).round() as u32 * 2).max(2);
    let process = job
        .ffmpeg(deadline)
        .args(["-f", "lavfi", "-i"])
        .arg(format!("color=c=0x{color:06x}:s={w}x{top}:r={}:d={d}", r.fps))
        .arg("-vf")
        .arg(scene_filter((w, h, &darker(color)), &head_file, &caption_file, head_size, caption_size))
        .args(["-frames:v", &(d * r.fps).to_string(), "-an"])
        .args(video_codec_args(r))
        .args(["-progress", "pipe:1", "-nostats"])
        .arg(job.work(&file));
    // Two scenes encode at once: each report says which are in flight, so the log reads
    // "Rendering scenes 1–2 of 5", not "scene 1", "scene 2", "scene 1" in turn.
    shares.start(i);
    run_with_progress_say(process, &job.reporter, Stage::Visuals, |us| {
        (shares.record(i, us), shares.message("Rendering", "scene"))
    })
    .await
    .map_err(|e| StageError::process(&format!("rendering scene {k}"), e))?;
    // Checked here, while the other scene still encodes, rather than in Timeline, where a
    // probe would be the only thing running.
    let secs = probe(job, deadline, &job.work(&file), &format!("checking scene {k}")).await?.duration_sec();
    let secs = secs.unwrap_or(0.0);
    if !within_tolerance(secs, f64::from(d)) {
        return Err(anyhow::anyhow!("clip {file} lasts {secs} s, not {d} s").into());
    }
    shares.finish(i, u64::from(d) * 1_000_000);
    Ok(Clip { file, duration_sec: d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_is_the_background_darkened() {
        assert_eq!(darker(0x1d3557), "0x152741");
        assert_eq!(darker(0xffffff), "0xbfbfbf");
    }

    #[test]
    fn wrapping_keeps_words_and_splits_only_long_ones() {
        assert_eq!(wrap("one two three four", 9, 5), "one two\nthree\nfour");
        assert_eq!(wrap("abcdefghij", 4, 5), "abcd\nefgh\nij");
        assert_eq!(wrap("a b c d e f", 4, 2), "a b\nc d…");
        assert_eq!(wrap("It's 100% \"quoted\": a\\b 👋 שלום", 40, 3), "It's 100% \"quoted\": a\\b 👋 שלום");
    }
}
