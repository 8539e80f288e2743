//! The client subcommands: submit, jobs, show, events, cancel, download.

use std::path::PathBuf;

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::client::{CliError, Client};
use super::watch::{self, Output};

/// Flags of `aura submit` that build a request without a file.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The video's topic (required unless --request is given).
    #[arg(long, required_unless_present = "request")]
    pub topic: Option<String>,
    /// Target duration, hh:mm:ss.
    #[arg(long)]
    pub duration: Option<String>,
    /// Widescreen16x9, Vertical9x16 or Square1x1.
    #[arg(long)]
    pub aspect: Option<String>,
    /// 480p, 720p, 1080p, 1440p or 2160p.
    #[arg(long)]
    pub res: Option<String>,
    /// mp4, webm or mkv.
    #[arg(long)]
    pub container: Option<String>,
    /// h264, hevc, vp9 or av1.
    #[arg(long)]
    pub codec: Option<String>,
    /// Frames per second.
    #[arg(long)]
    pub fps: Option<u32>,
    /// A whole job request as JSON (API.md); `-` reads standard input.
    #[arg(long, conflicts_with_all = ["topic", "duration", "aspect", "res", "container", "codec", "fps"])]
    pub request: Option<PathBuf>,
    /// Follow the job until it ends (exit codes as `aura watch`).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: one JSON event per line.
    #[arg(long, requires = "watch")]
    pub json: bool,
}

impl SubmitArgs {
    fn body(&self) -> Result<Value, CliError> {
        if let Some(path) = &self.request {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| CliError::Io(format!("reading stdin: {e}")))?
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::Io(format!("reading {}: {e}", path.display())))?
            };
            return serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("the request is not JSON: {e}")));
        }
        let mut brief = Map::new();
        let mut plan = Map::new();
        let mut render = Map::new();
        let put = |map: &mut Map<String, Value>, key: &str, v: Option<Value>| {
            if let Some(v) = v {
                map.insert(key.to_owned(), v);
            }
        };
        put(&mut brief, "topic", self.topic.clone().map(Value::from));
        put(&mut brief, "aspect", self.aspect.clone().map(Value::from));
        put(&mut plan, "targetDuration", self.duration.clone().map(Value::from));
        put(&mut render, "res", self.res.clone().map(Value::from));
        put(&mut render, "container", self.container.clone().map(Value::from));
        put(&mut render, "codec", self.codec.clone().map(Value::from));
        put(&mut render, "fps", self.fps.map(Value::from));
        Ok(json!({"brief": brief, "planSpec": plan, "renderSpec": render}))
    }
}

pub async fn submit(client: &Client, args: SubmitArgs) -> Result<u8, CliError> {
    let created = client.post_json("/api/jobs", Some(&args.body()?)).await?;
    let id = created["jobId"].as_str().unwrap_or_default().to_owned();
    if !args.watch {
        println!("{id}");
        return Ok(0);
    }
    if !args.json {
        eprintln!("{id}");
    }
    let job_id = parse_id(&id)?;
    watch::watch(client, job_id, 0, Output::choose(args.json)).await
}

pub fn parse_id(s: &str) -> Result<Uuid, CliError> {
    Uuid::parse_str(s).map_err(|_| CliError::Usage(format!("{s:?} is not a job id (a UUID)")))
}

/// What `aura jobs` lists.
pub struct JobsPage {
    pub status: Option<String>,
    pub limit: u32,
    pub before: Option<String>,
    pub all: bool,
    pub json: bool,
}

/// `aura jobs`: a page of jobs, newest first (every page with `--all`), as a table or JSON lines.
/// The cursor of the next page, if any, goes to stderr.
pub async fn jobs(client: &Client, list: JobsPage) -> Result<u8, CliError> {
    let mut before = list.before.clone();
    if !list.json {
        println!("{:<36}  {:<10}  {:<8}  {:>6}  {:<27}  TOPIC", "JOB", "STATUS", "STAGE", "PCT", "CREATED");
    }
    loop {
        let mut url = reqwest::Url::parse(&client.url("/api/jobs"))
            .map_err(|e| CliError::Usage(format!("the server address: {e}")))?;
        url.query_pairs_mut().append_pair("limit", &list.limit.to_string());
        if let Some(status) = &list.status {
            url.query_pairs_mut().append_pair("status", status);
        }
        if let Some(cursor) = &before {
            url.query_pairs_mut().append_pair("before", cursor);
        }
        let res = client.send(client.http().get(url)).await?;
        let page: Value = res.json().await.map_err(|e| CliError::Io(format!("reading the answer: {e}")))?;
        print_jobs(&page, list.json);
        before = page["next"].as_str().map(str::to_owned);
        match &before {
            Some(_) if list.all => continue,
            Some(next) => eprintln!("more: aura jobs --before {next}"),
            None => {}
        }
        return Ok(0);
    }
}

fn print_jobs(page: &Value, json: bool) {
    for job in page["jobs"].as_array().into_iter().flatten() {
        if json {
            println!("{job}");
            continue;
        }
        let topic: String =
            job["request"]["brief"]["topic"].as_str().unwrap_or("").chars().take(40).collect();
        println!(
            "{:<36}  {:<10}  {:<8}  {:>6}  {:<27}  {}",
            job["jobId"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            job["stage"].as_str().unwrap_or("-"),
            job["percent"].as_f64().map_or("-".into(), |p| format!("{p:.1}")),
            job["createdAt"].as_str().unwrap_or(""),
            topic.replace(['\n', '\r', '\t'], " ")
        );
    }
}

pub async fn show(client: &Client, job: &str) -> Result<u8, CliError> {
    let snap = client.get_json(&format!("/api/jobs/{}", parse_id(job)?)).await?;
    println!("{}", serde_json::to_string_pretty(&snap).unwrap_or_default());
    Ok(0)
}

/// Prints stored events as JSON lines; with `follow`, then follows the live stream to its end.
pub async fn events(client: &Client, job: &str, after: i64, follow: bool) -> Result<u8, CliError> {
    let job_id = parse_id(job)?;
    if follow {
        return follow_events(client, job_id, after).await;
    }
    let mut after = after;
    loop {
        let page = client.get_json(&format!("/api/jobs/{job_id}/history?after={after}&limit=1000")).await?;
        let items = page.as_array().cloned().unwrap_or_default();
        for item in &items {
            println!("{item}");
            after = item["id"].as_i64().unwrap_or(after);
        }
        if items.len() < 1000 {
            return Ok(0);
        }
    }
}

async fn follow_events(client: &Client, job_id: Uuid, after: i64) -> Result<u8, CliError> {
    watch::watch(client, job_id, after, Output::Json).await.map(|_| 0)
}

pub async fn cancel(client: &Client, job: &str) -> Result<u8, CliError> {
    let snap = client.post_json(&format!("/api/jobs/{}/cancel", parse_id(job)?), None).await?;
    println!("{}", snap["status"].as_str().unwrap_or(""));
    Ok(0)
}

/// `aura jobs delete ID`: the job is gone once this returns 0.
pub async fn delete(client: &Client, job: &str) -> Result<u8, CliError> {
    let job_id = parse_id(job)?;
    client.send(client.http().delete(client.url(&format!("/api/jobs/{job_id}")))).await?;
    eprintln!("deleted {job_id}");
    Ok(0)
}

/// `aura download`: the job's video, written to `<path>.part` and renamed to the path once whole,
/// so an interrupted transfer never leaves a truncated video under the real name. A `.part` left
/// by an earlier try is continued with a `Range` request (started over if the server answers
/// with the whole file). A progress bar on a terminal.
pub async fn download(client: &Client, job: &str, out: Option<PathBuf>) -> Result<u8, CliError> {
    use tokio::io::AsyncWriteExt;
    let job_id = parse_id(job)?;
    let part = match &out {
        Some(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".part");
            PathBuf::from(name)
        }
        None => PathBuf::from(format!("{job_id}.part")),
    };
    let io = |what: &str, path: &std::path::Path, e: std::io::Error| {
        CliError::Io(format!("{what} {}: {e}", path.display()))
    };
    let have = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    let mut req = client.http().get(client.url(&format!("/api/jobs/{job_id}/output")));
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let res = match client.send(req).await {
        // What was kept is the whole video already.
        Err(CliError::Problem { status: 416, .. }) if have > 0 => None,
        other => Some(other?),
    };
    let ext = res.as_ref().map_or("mp4", |res| {
        match res.headers().get("content-type").and_then(|v| v.to_str().ok()) {
            Some("video/webm") => "webm",
            Some("video/x-matroska") => "mkv",
            _ => "mp4",
        }
    });
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{job_id}.{ext}")));
    if let Some(res) = res {
        let resumed = res.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let start = if resumed { have } else { 0 };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .await
            .map_err(|e| io("creating", &part, e))?;
        let bar = progress(res.content_length().map(|n| n + start), start);
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| client.unreachable(&e))?;
            file.write_all(&chunk).await.map_err(|e| io("writing", &part, e))?;
            bar.inc(chunk.len() as u64);
        }
        file.sync_all().await.map_err(|e| io("writing", &part, e))?;
        bar.finish_and_clear();
    }
    tokio::fs::rename(&part, &path).await.map_err(|e| io("renaming to", &path, e))?;
    let total = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
    eprintln!("saved {} ({total} bytes)", path.display());
    Ok(0)
}

/// A transfer's bar on a terminal (bytes, rate, time left); hidden otherwise.
fn progress(total: Option<u64>, start: u64) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::no_length(),
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar
}
