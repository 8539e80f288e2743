//! A rendered job beside one hand-written ffmpeg command that makes the same video: scenes of
//! 10 s at the requested size and 30 fps with two lines of text, flite narration per scene,
//! H.264 at 5000 kb/s with the preset Aura's default quality uses, AAC, hard cuts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::server::Target;
use super::{Samples, Scenario};
use crate::domain::spec::{Aspect, JobSpec};
use crate::engine::process::Process;

pub async fn run(duration: &str, res: &str, samples: &mut Samples) -> anyhow::Result<()> {
    let request = json!({
        "brief": {"topic": "Benchmark", "aspect": "Widescreen16x9"},
        "planSpec": {"targetDuration": duration, "pacing": "Conversational"},
        "renderSpec": {"res": res, "fps": 30, "container": "mp4", "codec": "h264", "qualityLevel": "High"}
    });
    let spec = JobSpec::from_value(&request).map_err(|e| anyhow::anyhow!("bad render settings: {e}"))?;
    let case = format!("{} s {res}30 h264", spec.plan_spec.target_duration);
    let aura = aura_job(&request).await?;
    let reference = one_command(&spec).await?;
    samples.add(Scenario::Render, &case, "Aura job, claim to completed", "s", aura);
    samples.add(Scenario::Render, &case, "one ffmpeg command", "s", reference);
    samples.add(Scenario::Render, &case, "Aura / one command", "ratio", aura / reference);
    Ok(())
}

/// Seconds from the job's start to its end, by its own `startedAt`/`finishedAt`.
async fn aura_job(request: &Value) -> anyhow::Result<f64> {
    let target = Target::local(0, 1).await?;
    let result = async {
        let http = reqwest::Client::new();
        let created: Value =
            http.post(format!("{}/api/jobs", target.base)).json(request).send().await?.json().await?;
        let id = created["jobId"].as_str().context("no job id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let job: Value = http.get(format!("{}/api/jobs/{id}", target.base)).send().await?.json().await?;
            match job["status"].as_str() {
                Some("Completed") => {
                    let t = |k: &str| job[k].as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
                    let (Some(a), Some(b)) = (t("startedAt"), t("finishedAt")) else { bail!("no times") };
                    return Ok((b - a).as_seconds_f64());
                }
                Some("Failed" | "Cancelled") => bail!("the benchmark job ended {}", job["status"]),
                _ if Instant::now() > deadline => bail!("the benchmark job took over 30 minutes"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    .await;
    target.stop().await;
    result
}

/// Seconds for the single ffmpeg command.
async fn one_command(spec: &JobSpec) -> anyhow::Result<f64> {
    let (w, h) = spec.render_spec.frame_size(Aspect::Widescreen);
    let total = spec.plan_spec.target_duration;
    let scenes = total.div_ceil(10).max(1);
    let font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let dir = std::env::temp_dir().join(format!("aura-bench-ffmpeg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut p = Process::new("ffmpeg").args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]);
    let colors = ["0x1d3557", "0x457b9d", "0x2a9d8f", "0xb5651d", "0x6d597a", "0x264653"];
    let mut graph = String::new();
    for i in 0..scenes {
        let d = (total - i * 10).min(10);
        p = p
            .args(["-f", "lavfi", "-i"])
            .arg(format!("color=c={}:s={w}x{h}:r=30:d={d}", colors[i as usize % 6]));
    }
    for i in 0..scenes {
        p = p
            .args(["-f", "lavfi", "-i"])
            .arg(format!("flite=text='Scene {} of the benchmark video':voice=slt", i + 1));
    }
    for i in 0..scenes {
        graph.push_str(&format!(
            "[{i}:v]drawtext=fontfile={font}:text='Scene {}':fontsize={}:fontcolor=white:x=(w-text_w)/2:y=h/2-text_h-20,\
             drawtext=fontfile={font}:text='A line of caption text':fontsize={}:fontcolor=white:x=(w-text_w)/2:y=h/2+20[s{i}];",
            i + 1,
            h / 11,
            h / 22
        ));
    }
    for i in 0..scenes {
        graph.push_str(&format!("[s{i}]"));
    }
    graph.push_str(&format!("concat=n={scenes}:v=1:a=0,format=yuv420p[v];"));
    for i in 0..scenes {
        let d = (total - i * 10).min(10);
        graph.push_str(&format!("[{}:a]aresample=48000,apad=whole_dur={d},atrim=0:{d}[a{i}];", scenes + i));
    }
    for i in 0..scenes {
        graph.push_str(&format!("[a{i}]"));
    }
    graph
        .push_str(&format!("concat=n={scenes}:v=0:a=1,aformat=sample_rates=48000:channel_layouts=stereo[a]"));
    let out = dir.join("reference.mp4");
    let p = p
        .arg("-filter_complex")
        .arg(graph)
        .args(["-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "faster", "-b:v", "5000k"])
        .args(["-maxrate", "5000k", "-bufsize", "10000k", "-pix_fmt", "yuv420p", "-r", "30", "-g", "60"])
        .args(["-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-t", &total.to_string()])
        .arg(&out)
        .timeout(Duration::from_secs(1800));
    let started = Instant::now();
    let result = p.output().await;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| anyhow::anyhow!("the reference ffmpeg command failed: {e}"))?;
    Ok(secs)
}
