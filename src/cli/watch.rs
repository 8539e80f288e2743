//! `aura watch`: follows one job's event stream in the terminal until it ends.
//!
//! On a terminal it draws one bar per stage and an overall bar (indicatif); otherwise, or with
//! `--json`, it prints one line per event. When the connection drops or the server restarts it
//! reconnects with `Last-Event-ID` after a bounded backoff, so every event is printed once.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{CliError, Client, problem};
use crate::backoff::Backoff;
use crate::domain::job::Stage;

/// Exit codes of `aura watch` (and `aura submit --watch`).
pub const EXIT_COMPLETED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CANCELLED: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

/// How long to keep trying to reconnect without success before giving up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Bars,
    Lines,
    Json,
}

impl Output {
    pub fn choose(json: bool) -> Output {
        use std::io::IsTerminal;
        if json {
            Output::Json
        } else if std::io::stdout().is_terminal() {
            Output::Bars
        } else {
            Output::Lines
        }
    }
}

/// Follows `job_id` from `after` until its terminal event; returns the exit code.
pub async fn watch(client: &Client, job_id: Uuid, after: i64, output: Output) -> Result<u8, CliError> {
    let mut view = View::new(output);
    tokio::select! {
        code = follow(client, job_id, after, &mut view) => {
            view.finish();
            code
        }
        _ = tokio::signal::ctrl_c() => {
            view.finish();
            eprintln!("interrupted");
            Ok(EXIT_INTERRUPTED)
        }
    }
}

async fn follow(client: &Client, job_id: Uuid, after: i64, view: &mut View) -> Result<u8, CliError> {
    let url = client.url(&format!("/api/jobs/{job_id}/events"));
    let mut last = after;
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let res = client.http().get(&url).header("Last-Event-ID", last.to_string()).send().await;
        let res = match res {
            Ok(res) if res.status() == reqwest::StatusCode::NO_CONTENT => {
                // The job ended while we were away and we have seen all of it.
                return final_code(client, job_id).await;
            }
            Ok(res) if res.status().is_success() => {
                failing_since = None;
                backoff.reset();
                view.connection(true);
                Some(res)
            }
            Ok(res) if res.status().is_client_error() && res.status().as_u16() != 429 => {
                return Err(problem(res).await);
            }
            Ok(_) | Err(_) => None,
        };
        if let Some(res) = res {
            let mut events = res.bytes_stream().eventsource();
            while let Some(item) = events.next().await {
                let Ok(event) = item else { break };
                let Ok(id) = event.id.parse::<i64>() else { continue };
                if id <= last {
                    continue;
                }
                last = id;
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if let Some(code) = view.event(id, &event.event, &data) {
                    return Ok(code);
                }
            }
        }
        view.connection(false);
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > GIVE_UP_AFTER {
            return Err(CliError::Unreachable {
                server: client.server().to_owned(),
                reason: format!("no answer for {} s", GIVE_UP_AFTER.as_secs()),
            });
        }
        backoff.wait(std::future::pending()).await;
    }
}

/// The exit code for a job that has already ended.
async fn final_code(client: &Client, job_id: Uuid) -> Result<u8, CliError> {
    let snap = client.get_json(&format!("/api/jobs/{job_id}")).await?;
    Ok(match snap["status"].as_str() {
        Some("Completed") => EXIT_COMPLETED,
        Some("Cancelled") => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    })
}

/// What the terminal shows.
struct View {
    output: Output,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    stages: Vec<ProgressBar>,
    overall: ProgressBar,
}

impl View {
    fn new(output: Output) -> View {
        let bars = (output == Output::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{prefix:>9} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let stages = Stage::ALL
                .iter()
                .map(|s| {
                    let bar =
                        multi.add(ProgressBar::new(100).with_style(style.clone()).with_prefix(s.name()));
                    bar.set_message("pending");
                    bar
                })
                .collect();
            let overall = multi.add(ProgressBar::new(100).with_style(style).with_prefix("Overall"));
            Bars { multi, stages, overall }
        });
        View { output, bars }
    }

    fn println(&self, line: String) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    fn connection(&self, live: bool) {
        if !live && self.output != Output::Json {
            eprintln!("connection lost; reconnecting…");
        }
    }

    /// Shows one event; returns the exit code when it ends the job.
    fn event(&mut self, id: i64, kind: &str, data: &Value) -> Option<u8> {
        match self.output {
            Output::Json => {
                let line = json!({"id": id, "type": kind, "data": data, "createdAt": data["at"]});
                println!("{line}");
            }
            Output::Lines => println!("{id} {kind} {}", summary(kind, data)),
            Output::Bars => self.draw(kind, data),
        }
        match kind {
            "job-completed" => Some(EXIT_COMPLETED),
            "job-failed" => Some(EXIT_FAILED),
            "job-cancelled" => Some(EXIT_CANCELLED),
            _ => None,
        }
    }

    fn draw(&mut self, kind: &str, data: &Value) {
        let Some(bars) = &self.bars else { return };
        let stage_bar = |d: &Value| {
            d["step"].as_str().and_then(Stage::parse).and_then(|s| Stage::ALL.iter().position(|x| *x == s))
        };
        if let Some(p) = data["percent"].as_f64() {
            bars.overall.set_position(p as u64);
        }
        match kind {
            "step-status" => {
                if let Some(i) = stage_bar(data) {
                    let bar = &bars.stages[i];
                    match data["state"].as_str() {
                        Some("Started") => bar.set_message("running"),
                        Some("Completed") => {
                            bar.set_position(100);
                            bar.finish_with_message("done");
                        }
                        Some("Skipped") => {
                            bar.set_position(100);
                            bar.finish_with_message("skipped");
                        }
                        _ => {}
                    }
                }
            }
            "step-progress" => {
                if let Some(i) = stage_bar(data) {
                    bars.stages[i].set_position(data["progressPct"].as_f64().unwrap_or(0.0) as u64);
                    bars.stages[i].set_message(data["message"].as_str().unwrap_or("").to_owned());
                }
            }
            "job-completed" => {
                bars.overall.set_position(100);
                bars.overall.finish_with_message("completed");
                self.println(format!("completed: {}", summary(kind, data)));
            }
            "job-failed" | "job-cancelled" | "warning" | "error" => {
                self.println(format!("{kind}: {}", summary(kind, data)));
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            for bar in bars.stages.iter().chain(std::iter::once(&bars.overall)) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

/// One human line for an event.
pub fn summary(kind: &str, d: &Value) -> String {
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    match kind {
        "job-status" => format!("{} {} {}%", s("status"), d["stage"].as_str().unwrap_or("-"), d["percent"]),
        "step-status" => format!("{} {}", s("step"), s("state")),
        "step-progress" => {
            format!("{} {}% ({}% overall) {}", s("step"), d["progressPct"], d["percent"], s("message"))
        }
        "job-completed" => format!(
            "{} ({} bytes, {} s)",
            d["output"]["videoUrl"].as_str().unwrap_or(""),
            d["output"]["sizeBytes"],
            d["output"]["durationSec"]
        ),
        "job-failed" => format!(
            "{} in {}: {}",
            d["error"]["code"].as_str().unwrap_or(""),
            d["step"].as_str().unwrap_or("-"),
            d["error"]["message"].as_str().unwrap_or("")
        ),
        "job-cancelled" => format!("at {}", d["step"].as_str().unwrap_or("-")),
        _ => format!("{} {}", s("code"), s("message")),
    }
}
