//! The Audio stage: one narration file per scene, spoken by ffmpeg's `flite` filter.
//!
//! The narration is written to a text file in the work folder with a fixed, safe name
//! (`say01.txt`) and read with `flite=textfile=…`, so no user text ever appears on a command line
//! or inside a filter argument. `voiceName` maps to one of flite's voices; an unknown name gets the
//! default voice and a `voice-substituted` warning.
//!
//! **Fitting narration to its scene.** Every scene's audio is exactly as long as the scene, so
//! the video stays at `targetDuration`. The speech is first synthesized as is and measured; then
//! one pass applies the voice's `pitch` (`asetrate` + `aresample`, with `atempo` compensating the
//! speed change) and `rate` (`atempo`), a short lead-in silence from `pause`, and the fit: speech
//! longer than the room left in the scene is sped up by at most [`MAX_SPEEDUP`] (×1.3, still easy
//! to follow); whatever is still too long is cut at the scene's end with a [`FADE_SECS`] fade
//! out. Shorter speech is padded with silence. So narration never shifts the cuts, and the audio
//! track equals the video's length to the sample.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, TryStreamExt, stream};

use super::script::{Scene, Script};
use super::{Deadline, Job, StageError};
use crate::domain::job::Stage;
use crate::domain::spec::Pause;
use crate::store::ApplyError;

/// The most narration is sped up to fit its scene.
pub const MAX_SPEEDUP: f64 = 1.3;
/// The fade applied where too-long narration is cut.
pub const FADE_SECS: f64 = 0.4;
/// Silence left at the end of a scene, so sentences do not run into the cut.
const TAIL_SECS: f64 = 0.2;
/// The voice used when `voiceName` names none of flite's.
pub const DEFAULT_VOICE: &str = "kal16";
const SAMPLE_RATE: u32 = 48_000;

/// Per-scene narration files in the work folder, in scene order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Narration {
    pub files: Vec<String>,
}

/// The flite voice for a `voiceName`, or `None` when Aura has no match for it.
pub fn flite_voice(name: &str) -> Option<&'static str> {
    let name = name.trim().to_lowercase();
    name.split([' ', '-', '_']).find_map(voice_for_word)
}

fn voice_for_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "awb" => "awb",
        "kal" => "kal",
        "kal16" => "kal16",
        "rms" => "rms",
        "slt" => "slt",
        "david" | "male" | "default" => "kal16",
        "mark" | "george" | "alan" => "awb",
        "james" | "richard" => "rms",
        "zira" | "hazel" | "susan" | "female" | "linda" | "eva" | "aria" | "jenny" => "slt",
        _ => return None,
    })
}

/// Lead-in silence before each scene's narration.
fn lead_secs(pause: Pause) -> f64 {
    match pause {
        Pause::Short => 0.1,
        Pause::Natural => 0.3,
        Pause::Long => 0.5,
        Pause::Dramatic => 0.8,
    }
}

/// `atempo` filters whose product is `factor` (each one accepts 0.5 to 2.0 here).
fn atempo_chain(mut factor: f64) -> Vec<String> {
    let mut chain = Vec::new();
    while factor > 2.0 {
        chain.push("atempo=2".to_owned());
        factor /= 2.0;
    }
    while factor < 0.5 {
        chain.push("atempo=0.5".to_owned());
        factor /= 0.5;
    }
    if (factor - 1.0).abs() > 1e-6 {
        chain.push(format!("atempo={}", trim_float(factor)));
    }
    chain
}

/// A number for a filter argument: up to six decimals, no trailing zeros.
fn trim_float(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// How one scene's speech is made to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// The overall speed factor: `rate` times the fitting speed-up.
    pub tempo: f64,
    /// Whether the speech is cut (with a fade) at the scene's end.
    pub trimmed: bool,
}

/// Decides the fit of `speech_secs` of raw speech at `rate` into a scene of `scene_secs`.
pub fn fit(speech_secs: f64, rate: f64, scene_secs: f64, lead: f64) -> Fit {
    let spoken = speech_secs / rate;
    let room = (scene_secs - lead - TAIL_SECS).max(0.5);
    if spoken <= room {
        return Fit { tempo: rate, trimmed: false };
    }
    let speedup = (spoken / room).min(MAX_SPEEDUP);
    Fit { tempo: rate * speedup, trimmed: spoken / speedup > room }
}

/// The filter chain that turns raw flite speech into the scene's narration track.
pub fn filter_chain(source_rate: u32, pitch: f64, fit: &Fit, lead: f64, scene_secs: f64) -> String {
    let mut f = Vec::new();
    if (pitch - 1.0).abs() > 1e-6 {
        f.push(format!("asetrate={}", (f64::from(source_rate) * pitch).round() as u32));
    }
    f.push(format!("aresample={SAMPLE_RATE}"));
    // asetrate made it `pitch` times faster; atempo gives that back, then applies the fit.
    f.extend(atempo_chain(fit.tempo / pitch));
    f.push(format!("adelay=delays={}:all=1", (lead * 1000.0).round() as u32));
    if fit.trimmed {
        f.push(format!("afade=t=out:st={:.3}:d={FADE_SECS}", scene_secs - FADE_SECS));
    }
    f.push(format!("apad=whole_dur={scene_secs}"));
    f.push(format!("atrim=end={scene_secs}"));
    f.join(",")
}

/// Synthesizes every scene's narration into `narrNN.wav` (48 kHz stereo PCM, scene length).
pub async fn narrate(job: &Job, script: &Script, deadline: Deadline) -> Result<Narration, StageError> {
    let voice = &job.spec.voice_spec;
    let flite = match flite_voice(&voice.voice_name) {
        Some(v) => v,
        None => {
            let message = format!(
                "voice {:?} is not available; the default voice {DEFAULT_VOICE} speaks instead",
                voice.voice_name
            );
            match job.handle.warn(Some(Stage::Audio), "voice-substituted", message).await {
                Ok(_) => {}
                Err(ApplyError::Refused(refusal)) => {
                    tracing::warn!(%refusal, "the voice warning was refused")
                }
                Err(e) => tracing::warn!(error = %e, "could not store the voice warning"),
            }
            DEFAULT_VOICE
        }
    };
    let lead = lead_secs(voice.pause);
    let n = script.scenes.len();
    let done = AtomicUsize::new(0);
    let mut runs = Vec::with_capacity(n);
    for (i, scene) in script.scenes.iter().enumerate() {
        runs.push(narrate_scene(job, deadline, flite, lead, (i, n, &done), scene));
    }
    let files = stream::iter(runs).buffered(PARALLEL_NARRATIONS).try_collect().await?;
    Ok(Narration { files })
}

/// Scenes narrated at once: each is three short single-threaded children.
const PARALLEL_NARRATIONS: usize = 2;

/// Narrates scene `i` of `n` into `narrNN.wav`; `done` counts finished scenes for progress.
async fn narrate_scene(
    job: &Job,
    deadline: Deadline,
    flite: &str,
    lead: f64,
    (i, n, done): (usize, usize, &AtomicUsize),
    scene: &Scene,
) -> Result<String, StageError> {
    let voice = &job.spec.voice_spec;
    let k = i + 1;
    job.check_cancelled()?;
    let finished = done.load(Ordering::Relaxed);
    job.reporter
        .report(Stage::Audio, finished as f64 / n as f64 * 100.0, format!("Narrating scene {k} of {n}"))
        .await;
    let text = format!("say{k:02}.txt");
    let raw = format!("say{k:02}.raw.wav");
    let out = format!("narr{k:02}.wav");
    tokio::fs::write(job.work(&text), &scene.narration)
        .await
        .map_err(|e| StageError::internal(anyhow::Error::new(e).context("writing narration text")))?;
    let what = format!("narrating scene {k}");
    job.ffmpeg(deadline)
        .args(["-f", "lavfi", "-i"])
        .arg(format!("flite=textfile={text}:voice={flite}"))
        .args(["-c:a", "pcm_s16le"])
        .arg(job.work(&raw))
        .output()
        .await
        .map_err(|e| StageError::process(&what, e))?;
    // The speech's length and rate come from the WAV header ffmpeg just wrote: no ffprobe.
    let bytes = tokio::fs::read(job.work(&raw))
        .await
        .map_err(|e| StageError::internal(anyhow::Error::new(e).context("reading synthesized speech")))?;
    let (source_rate, speech) = wav_info(&bytes).ok_or_else(|| {
        StageError::internal(anyhow::anyhow!("the synthesized speech of scene {k} is no WAV file"))
    })?;
    let scene_secs = f64::from(scene.duration_sec);
    let fit = fit(speech, voice.rate, scene_secs, lead);
    if fit.trimmed {
        tracing::info!(scene = k, speech, scene_secs, "narration cut to fit its scene");
    }
    job.ffmpeg(deadline)
        .arg("-i")
        .arg(job.work(&raw))
        .arg("-af")
        .arg(filter_chain(source_rate, voice.pitch, &fit, lead, scene_secs))
        .args(["-ar", "48000", "-ac", "2", "-c:a", "pcm_s16le"])
        .arg(job.work(&out))
        .output()
        .await
        .map_err(|e| StageError::process(&what, e))?;
    remove_quietly(&job.work(&raw)).await;
    done.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// The sample rate and length in seconds of a PCM WAV file, from its `fmt ` and `data` chunks.
pub fn wav_info(bytes: &[u8]) -> Option<(u32, f64)> {
    let u32_at = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return None;
    }
    let (mut rate, mut byte_rate) = (None, None);
    let mut at = 12;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(at + 4)) {
        let body = at + 8;
        match id {
            b"fmt " => {
                rate = u32_at(body + 4);
                byte_rate = u32_at(body + 8);
            }
            b"data" => {
                let len = (size as usize).min(bytes.len().saturating_sub(body));
                let byte_rate = byte_rate.filter(|r| *r > 0)?;
                return Some((rate?, len as f64 / f64::from(byte_rate)));
            }
            _ => {}
        }
        at = body + size as usize + (size as usize & 1);
    }
    None
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        tracing::debug!(error = %e, "removing an intermediate file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_header_gives_rate_and_length_and_anything_else_gives_none() {
        let mut wav = b"RIFF\0\0\0\0WAVE".to_vec();
        wav.extend(b"fmt \x10\0\0\0\x01\0\x01\0");
        wav.extend(16_000u32.to_le_bytes());
        wav.extend(32_000u32.to_le_bytes());
        wav.extend(b"\x02\0\x10\0LIST\x03\0\0\0abc\0data");
        wav.extend(64_000u32.to_le_bytes());
        wav.extend(vec![0u8; 64_000]);
        assert_eq!(wav_info(&wav), Some((16_000, 2.0)));
        assert_eq!(wav_info(&wav[..wav.len() - 32_000]), Some((16_000, 1.0)));
        assert_eq!(wav_info(b"RIFF\0\0\0\0AVI "), None);
        assert_eq!(wav_info(b""), None);
    }

    #[test]
    fn voices_map_and_unknown_names_do_not() {
        assert_eq!(flite_voice("David"), Some("kal16"));
        assert_eq!(flite_voice("Microsoft Zira Desktop"), Some("slt"));
        assert_eq!(flite_voice("slt"), Some("slt"));
        assert_eq!(flite_voice("Klingon"), None);
    }

    #[test]
    fn short_speech_keeps_its_rate_and_long_speech_is_sped_up_then_cut() {
        assert_eq!(fit(2.0, 1.0, 5.0, 0.3), Fit { tempo: 1.0, trimmed: false });
        let f = fit(5.0, 1.0, 5.0, 0.3);
        assert!(f.tempo > 1.0 && f.tempo <= MAX_SPEEDUP && !f.trimmed);
        assert_eq!(fit(20.0, 1.0, 5.0, 0.3), Fit { tempo: MAX_SPEEDUP, trimmed: true });
    }

    #[test]
    fn tempo_chains_stay_in_atempo_range() {
        assert_eq!(atempo_chain(1.0), Vec::<String>::new());
        assert_eq!(atempo_chain(4.0), ["atempo=2", "atempo=2"]);
        assert_eq!(atempo_chain(3.0), ["atempo=2", "atempo=1.5"]);
        assert_eq!(atempo_chain(0.25), ["atempo=0.5", "atempo=0.5"]);
        let chain = filter_chain(16_000, 2.0, &Fit { tempo: 0.5, trimmed: true }, 0.3, 5.0);
        assert!(chain.starts_with("asetrate=32000,aresample=48000,atempo=0.5,atempo=0.5,"));
        assert!(chain.ends_with("afade=t=out:st=4.600:d=0.4,apad=whole_dur=5,atrim=end=5"));
    }
}
