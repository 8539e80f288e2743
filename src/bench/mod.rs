//! `aura bench`: what this machine can do with Aura, measured the way users will feel it.
//!
//! Five scenarios, each repeated `--runs` times and reported as the median with min–max:
//! fan-out (latency from an event's `at` to its receipt, deliveries/s, server CPU per delivery),
//! idle memory per open stream, resume of a backlog, durable appends beside raw SQLite at the
//! same batch size, and a rendered job beside one hand-written ffmpeg command. Servers it starts
//! listen on 127.0.0.1 only; `--server` points the HTTP scenarios at a running one instead.
//! Two more, on the PostgreSQL server `--postgres` names, measure several nodes (issue 16):
//! durable appends with 1, 2, 4… nodes beside a raw batched `INSERT`, and fan-out from a
//! publishing node to subscribers on one or more API-only nodes. Every loop is bounded in count
//! and in time.

mod appends;
mod client;
mod nodes;
mod render;
mod server;

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Database;
use server::Target;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Fanout,
    Idle,
    Resume,
    Appends,
    Render,
    /// Durable appends with several nodes on PostgreSQL, beside a raw batched `INSERT`.
    #[value(name = "pg-appends")]
    #[serde(rename = "pg-appends")]
    NodesAppends,
    /// Fan-out from a publishing node to API-only nodes, all on one PostgreSQL.
    #[value(name = "pg-fanout")]
    #[serde(rename = "pg-fanout")]
    NodesFanout,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["fanout", "idle", "resume", "appends", "render"])]
    pub scenarios: Vec<Scenario>,
    /// Benchmark a running server (fanout, idle, resume) instead of starting one on 127.0.0.1.
    #[arg(long)]
    pub server: Option<String>,
    /// Repetitions of each measurement (the report gives the median and min–max).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Subscriber counts for fan-out.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
    pub subscribers: Vec<usize>,
    /// Job creations per second for fan-out (each is one event).
    #[arg(long, value_delimiter = ',', default_values_t = [10u32, 100])]
    pub rates: Vec<u32>,
    /// Seconds of publishing per fan-out run.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Idle streams for the memory slope.
    #[arg(long, default_value_t = 5000)]
    pub idle_streams: usize,
    /// Backlog sizes for resume.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 100_000])]
    pub backlogs: Vec<usize>,
    /// Concurrent producers for durable appends.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    pub producers: Vec<usize>,
    /// Events appended per appends run.
    #[arg(long, default_value_t = 5000)]
    pub appends: usize,
    /// The PostgreSQL server for pg-appends and pg-fanout (`postgres://…`, a user that may
    /// create databases: every run creates a scratch database on it and drops it). Its settings
    /// decide durability: start one with fsync on (the one-line command is in benches/README.md).
    #[arg(long = "postgres")]
    pub shared_database: Option<String>,
    /// Node counts for pg-appends.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    pub nodes: Vec<usize>,
    /// Concurrent producers on each node for pg-appends.
    #[arg(long, default_value_t = 8)]
    pub producers_per_node: usize,
    /// API-only node counts for pg-fanout (the subscribers are split over them; jobs are created
    /// on one more node).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub api_nodes: Vec<usize>,
    /// The rendered job's duration (hh:mm:ss) and resolution.
    #[arg(long, default_value = "00:01:00")]
    pub render_duration: String,
    #[arg(long, default_value = "1080p")]
    pub render_res: String,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One measured figure over several runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: Scenario,
    pub case: String,
    pub metric: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// Collects samples per (case, metric) and turns them into rows.
#[derive(Default)]
pub struct Samples {
    rows: Vec<(Scenario, String, String, &'static str, Vec<f64>)>,
}

impl Samples {
    pub fn add(&mut self, scenario: Scenario, case: &str, metric: &str, unit: &'static str, value: f64) {
        match self.rows.iter_mut().find(|r| r.0 == scenario && r.1 == case && r.2 == metric) {
            Some(r) => r.4.push(value),
            None => self.rows.push((scenario, case.to_owned(), metric.to_owned(), unit, vec![value])),
        }
    }

    fn into_rows(self) -> Vec<Row> {
        self.rows
            .into_iter()
            .map(|(scenario, case, metric, unit, mut v)| {
                v.sort_by(f64::total_cmp);
                let median = if v.len() % 2 == 1 {
                    v[v.len() / 2]
                } else {
                    (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
                };
                Row {
                    scenario,
                    case,
                    metric,
                    unit,
                    median,
                    min: v.first().copied().unwrap_or(f64::NAN),
                    max: v.last().copied().unwrap_or(f64::NAN),
                    runs: v.len(),
                }
            })
            .collect()
    }
}

/// Problems seen during the runs (lost, repeated or reordered events, refused requests).
#[derive(Debug, Default, Serialize)]
pub struct Checks(pub Vec<String>);

#[derive(Serialize)]
struct Report {
    machine: String,
    /// The PostgreSQL server's version and durability settings, when a scenario used one.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    rows: Vec<Row>,
    checks: Vec<String>,
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs the chosen scenarios and prints the report; returns the exit code.
pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    client::raise_open_files(
        args.idle_streams.max(args.subscribers.iter().copied().max().unwrap_or(0)) + 512,
    );
    let mut samples = Samples::default();
    let mut checks = Checks::default();
    let remote = args.server.clone();
    let runs = args.runs;
    let node_scenarios =
        args.scenarios.iter().any(|s| matches!(s, Scenario::NodesAppends | Scenario::NodesFanout));
    let database = match (&args.shared_database, node_scenarios) {
        (Some(url), true) => crate::store::bench::describe_server(&Database::from(url))
            .await
            .context("reaching the --postgres server")?,
        (None, true) => anyhow::bail!(
            "pg-appends and pg-fanout need --postgres postgres://…, a server with fsync on; \
             benches/README.md has the one-line command that starts a throwaway one"
        ),
        _ => None,
    };
    let shared = args.shared_database.clone().unwrap_or_default();
    for scenario in args.scenarios.clone() {
        match scenario {
            Scenario::Fanout => {
                for &rate in &args.rates {
                    for &n in &args.subscribers {
                        let case = format!("{n} subscribers, {rate} events/s");
                        let bar = bar(u64::from(runs), &format!("fan-out {case}"), args.json);
                        for _ in 0..runs {
                            let target = Target::fresh(remote.as_deref(), 0).await?;
                            let load = client::Load { subscribers: n, rate, secs: args.secs };
                            client::fanout(
                                &client::Fleet::one(&target),
                                load,
                                &case,
                                &mut samples,
                                &mut checks,
                            )
                            .await
                            .with_context(|| format!("fan-out {case}"))?;
                            target.stop().await;
                            bar.inc(1);
                        }
                        bar.finish_and_clear();
                    }
                }
            }
            Scenario::Idle => {
                let n = args.idle_streams;
                let kinds = [
                    (client::IdleKind::Plain, format!("{n} idle streams")),
                    (client::IdleKind::Batched, format!("{n} idle streams, ?batch=100ms")),
                    (client::IdleKind::Gzip, format!("{n} idle streams, gzip")),
                    (client::IdleKind::WebSocket, format!("{n} idle WebSockets")),
                ];
                for (kind, case) in kinds {
                    let bar = bar(u64::from(runs), &format!("idle memory, {case}"), args.json);
                    for _ in 0..runs {
                        let target = Target::fresh(remote.as_deref(), 0).await?;
                        client::idle(&target, n, kind, &case, &mut samples, &mut checks).await?;
                        target.stop().await;
                        bar.inc(1);
                    }
                    bar.finish_and_clear();
                }
            }
            Scenario::Resume => {
                for &backlog in &args.backlogs {
                    let case = format!("{backlog}-event backlog");
                    let bar = bar(u64::from(runs), &format!("resume {case}"), args.json);
                    let target = Target::fresh(remote.as_deref(), backlog).await?;
                    for _ in 0..runs {
                        client::resume(&target, backlog, &case, &mut samples, &mut checks).await?;
                        bar.inc(1);
                    }
                    target.stop().await;
                    bar.finish_and_clear();
                }
            }
            Scenario::Appends => {
                for &producers in &args.producers {
                    let bar = bar(u64::from(runs), &format!("appends, {producers} producers"), args.json);
                    for _ in 0..runs {
                        appends::run(producers, args.appends, &mut samples).await?;
                        bar.inc(1);
                    }
                    bar.finish_and_clear();
                }
            }
            Scenario::NodesAppends => {
                for &nodes in &args.nodes {
                    let what = format!("pg appends, {nodes} nodes");
                    let bar = bar(u64::from(runs), &what, args.json);
                    for _ in 0..runs {
                        nodes::appends(&shared, nodes, args.producers_per_node, args.appends, &mut samples)
                            .await
                            .with_context(|| what.clone())?;
                        bar.inc(1);
                    }
                    bar.finish_and_clear();
                }
            }
            Scenario::NodesFanout => {
                for &rate in &args.rates {
                    for &n in &args.subscribers {
                        for &api in &args.api_nodes {
                            let nodes = if api == 1 { "node" } else { "nodes" };
                            let case = format!("{n} subscribers on {api} API {nodes}, {rate} events/s");
                            let bar = bar(u64::from(runs), &format!("pg fan-out {case}"), args.json);
                            for _ in 0..runs {
                                let load = client::Load { subscribers: n, rate, secs: args.secs };
                                nodes::fanout(&shared, api, load, &case, &mut samples, &mut checks)
                                    .await
                                    .with_context(|| format!("pg fan-out {case}"))?;
                                bar.inc(1);
                            }
                            bar.finish_and_clear();
                        }
                    }
                }
            }
            Scenario::Render => {
                let bar = bar(u64::from(runs), "render", args.json);
                for _ in 0..runs {
                    render::run(&args.render_duration, &args.render_res, &mut samples).await?;
                    bar.inc(1);
                }
                bar.finish_and_clear();
            }
        }
    }
    let report = Report { machine: machine(), database, rows: samples.into_rows(), checks: checks.0 };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.checks.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

fn print_table(report: &Report) {
    println!("machine: {}", report.machine);
    if let Some(database) = &report.database {
        println!("database: {database}");
    }
    println!("{:<10} {:<46} {:<32} {:>12} {:>24}", "scenario", "case", "metric", "median", "min – max");
    for r in &report.rows {
        println!(
            "{:<10} {:<46} {:<32} {:>12} {:>24}",
            serde_json::to_value(r.scenario)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.case,
            format!("{} ({})", r.metric, r.unit),
            fmt(r.median),
            format!("{} – {}", fmt(r.min), fmt(r.max)),
        );
    }
    if report.checks.is_empty() {
        println!("checks: every subscriber got every event once, in order");
    } else {
        println!("checks FAILED:");
        for c in &report.checks {
            println!("  - {c}");
        }
    }
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
