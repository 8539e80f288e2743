//! `aura check`: verifies the store against its own log, and `--repair` rebuilds `jobs` from it.
//!
//! The events are the truth. The check folds every job's events with the same
//! [`JobState::apply`] the writer uses and compares the result with the stored row; it also
//! looks for what the fold alone cannot see: events that do not decode, time going backwards,
//! two terminal events, rows without events, and videos that are missing or of the wrong size.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Database;
use crate::domain::event::{EventBody, StoredEvent};
use crate::domain::job::{JobState, JobStatus};
use crate::store::{EventFilter, Store, StoreError};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    pub jobs: usize,
    pub events: usize,
    /// The last event id read.
    pub through: i64,
    pub problems: Vec<String>,
    /// Each job's fold with its first event id: what `--repair` writes.
    pub folded: Vec<(i64, JobState)>,
}

impl Report {
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default)]
struct Fold {
    state: Option<JobState>,
    last_at: Option<OffsetDateTime>,
    terminal_id: Option<i64>,
    broken: bool,
}

/// Every job's fold, fed the log event by event in id order: what [`check`] compares with the
/// rows, and what `--repair` and `aura import` write as the `jobs` table.
#[derive(Default)]
pub struct Folds {
    /// Keyed by each job's first event id: the order of the job list.
    folds: BTreeMap<i64, (Uuid, Fold)>,
    by_job: HashMap<Uuid, i64>,
    /// What the events alone show is wrong, in the order found.
    pub problems: Vec<String>,
}

impl Folds {
    /// Folds one more event, whose id is above every one before. Whatever it shows is wrong is
    /// added to [`Folds::problems`]; a job with an event that does not fold gets no state.
    pub fn push(&mut self, e: &StoredEvent) {
        let key = *self.by_job.entry(e.job_id).or_insert(e.id);
        let (_, fold) = self.folds.entry(key).or_insert_with(|| (e.job_id, Fold::default()));
        let problems = &mut self.problems;
        let Some(decoded) = EventBody::decode(&e.kind, e.data()) else {
            problems
                .push(format!("event {} of job {}: unknown type or payload ({})", e.id, e.job_id, e.kind));
            fold.broken = true;
            return;
        };
        if decoded.job_id != e.job_id {
            problems.push(format!("event {}: data.jobId differs from its job_id column", e.id));
        }
        if fold.last_at.is_some_and(|t| decoded.at < t) {
            problems.push(format!(
                "event {} of job {}: its time is earlier than the event before",
                e.id, e.job_id
            ));
        }
        fold.last_at = Some(decoded.at);
        // Only a warning may follow a terminal event (`output-expired`, after retention).
        if let Some(first) = fold.terminal_id
            && !matches!(decoded.body, EventBody::Warning(_))
        {
            problems.push(format!("job {}: event {} comes after its terminal event {first}", e.job_id, e.id));
        }
        if decoded.body.is_terminal() && fold.terminal_id.is_none() {
            fold.terminal_id = Some(e.id);
        }
        match JobState::apply(fold.state.take(), e.job_id, e.id, decoded.at, &decoded.body) {
            Ok(s) => fold.state = Some(s),
            Err(err) => {
                problems.push(format!("event {} of job {}: {err}", e.id, e.job_id));
                fold.broken = true;
            }
        }
    }

    /// How many jobs have events so far.
    pub fn jobs(&self) -> usize {
        self.folds.len()
    }

    /// The state of every job whose every event folded, with its first event id, in that order.
    pub fn folded(self) -> Vec<(i64, JobState)> {
        self.folds
            .into_iter()
            .filter(|(_, (_, fold))| !fold.broken)
            .filter_map(|(first_id, (_, fold))| Some((first_id, fold.state?)))
            .collect()
    }
}

pub async fn check(store: &Store, data_dir: &Path) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let mut folds = Folds::default();
    let mut after = 0;
    loop {
        let page = store.events_after(&EventFilter::All, after, 1000).await?;
        for e in &page {
            report.events += 1;
            after = e.id;
            report.through = e.id;
            folds.push(e);
        }
        if page.len() < 1000 {
            break;
        }
    }

    let Folds { folds, by_job, problems } = folds;
    report.problems = problems;
    for (first_id, (job_id, fold)) in folds {
        report.jobs += 1;
        let Some(state) = fold.state else { continue };
        match store.job(job_id).await {
            Ok(Some(row)) if row == state => {}
            Ok(Some(row)) => report.problems.push(format!(
                "job {job_id}: the jobs row differs from its events in {}",
                differing_fields(&row, &state).join(", ")
            )),
            Ok(None) => report.problems.push(format!("job {job_id}: has events but no jobs row")),
            Err(StoreError::Corrupt(what)) => {
                report.problems.push(format!("job {job_id}: unreadable row ({what})"))
            }
            Err(e) => return Err(e),
        }
        // With PostgreSQL the videos are wherever the nodes that rendered them keep them.
        if let (JobStatus::Completed, Some(out), false) =
            (state.status, &state.output, store.node().is_some())
        {
            match std::fs::metadata(data_dir.join(&out.video_path)) {
                Ok(m) if m.len() == out.size_bytes => {}
                Ok(m) => report.problems.push(format!(
                    "job {job_id}: {} has {} bytes, the job-completed event says {}",
                    out.video_path,
                    m.len(),
                    out.size_bytes
                )),
                Err(_) => {
                    report.problems.push(format!("job {job_id}: the video {} is missing", out.video_path))
                }
            }
        }
        if !fold.broken {
            report.folded.push((first_id, state));
        }
    }
    let known: std::collections::HashSet<String> = by_job.keys().map(Uuid::to_string).collect();
    for id in store.job_ids().await? {
        if !known.contains(&id) {
            report.problems.push(format!("job {id}: has a jobs row but no events"));
        }
    }
    Ok(report)
}

/// Names the snapshot fields where two states differ.
fn differing_fields(a: &JobState, b: &JobState) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unreadable)".into()];
    };
    a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

/// `aura check [--repair] [--compact]`: prints a readable report; exit 0 when healthy.
pub async fn run_cli(
    data_dir: &Path,
    database_url: Option<String>,
    repair: bool,
    compact: bool,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    use std::process::ExitCode;

    let database = database_of(data_dir, database_url)?;
    let shown = database.shown();
    if crate::store::is_missing(&database) {
        anyhow::bail!("there is no database at {shown}");
    }
    // The database's own check first, read-only: a damaged file is reported, never opened for
    // writing (a database server checks its own pages).
    let unhealthy =
        |problems: Vec<String>| println!("{}", serde_json::json!({"healthy": false, "problems": problems}));
    if let Err(unusable) = crate::store::inspect(&database).await {
        if json {
            unhealthy(vec![unusable.to_string()]);
        } else {
            println!("{unusable}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let integrity = crate::store::integrity_check(&database).await.context("running integrity_check")?;
    if integrity.first().map(String::as_str) != Some("ok") {
        if json {
            unhealthy(integrity);
        } else {
            println!("integrity_check found {} problem(s) in {shown}:", integrity.len());
            for p in &integrity {
                println!("  - {p}");
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    let (store, _feed) = Store::open(&database, crate::store::Durability::Full)
        .await
        .with_context(|| format!("opening {shown}"))?;
    // A repair rewrites `jobs`: with one process owning the database, only with no server
    // writing to the same folder; a shared one refuses it if the log grew meanwhile.
    let _lock = if (repair || compact) && store.node().is_none() {
        Some(crate::lock::DataDirLock::acquire(data_dir)?)
    } else {
        None
    };
    let report = check(&store, data_dir).await.context("reading the store")?;
    print_report(&report, json);
    let code = if !repair || report.is_healthy() {
        if report.is_healthy() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    } else {
        repair_and_check_again(&store, &report, data_dir, json).await?
    };
    if compact && code == ExitCode::SUCCESS {
        match store.compact().await.context("compacting the database")? {
            Some((before, after)) => {
                say(json, &format!("compacted: {before} bytes before, {after} bytes after"))
            }
            None => {
                say(json, "compacted: nothing to do, the database reuses the space of deleted rows itself")
            }
        }
    }
    store.close().await;
    Ok(code)
}

async fn repair_and_check_again(
    store: &Store,
    report: &Report,
    data_dir: &Path,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    store.rebuild_jobs(&report.folded, report.through).await.context("rebuilding the jobs table")?;
    say(json, &format!("repaired: rebuilt {} jobs rows from the events", report.folded.len()));
    let after = check(store, data_dir).await.context("reading the store again")?;
    print_report(&after, json);
    Ok(if after.is_healthy() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// `--database-url`, else `<data-dir>/aura.db`; a URL of an unknown scheme is refused.
pub(super) fn database_of(data_dir: &Path, database_url: Option<String>) -> anyhow::Result<Database> {
    match database_url {
        Some(url) => Database::parse(&url),
        None => Ok(Database::in_folder(data_dir)),
    }
}

/// `aura backup FILE`: a consistent copy of the database, taken while the server may run.
pub async fn backup_cli(
    data_dir: &Path,
    database_url: Option<String>,
    file: &Path,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let database = database_of(data_dir, database_url)?;
    let shown = database.shown();
    if file.exists() {
        anyhow::bail!("{} exists already; choose a new file for the backup", file.display());
    }
    if crate::store::is_missing(&database) {
        anyhow::bail!("there is no database at {shown}");
    }
    crate::store::backup(&database, file).await.with_context(|| format!("copying {shown}"))?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup written to {} ({size} bytes); check it with `aura check --database-url {}`",
        file.display(),
        file.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// A line about what was done: on stdout, or on stderr when stdout carries JSON.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The report as lines, or as one JSON object (`healthy`, `jobs`, `events`, `through`,
/// `problems`).
fn print_report(report: &Report, json: bool) {
    if json {
        let value = serde_json::json!({
            "healthy": report.is_healthy(),
            "jobs": report.jobs,
            "events": report.events,
            "through": report.through,
            "problems": report.problems,
        });
        println!("{value}");
        return;
    }
    if report.is_healthy() {
        println!(
            "ok: {} jobs, {} events; every jobs row equals the fold of its events",
            report.jobs, report.events
        );
    } else {
        println!("{} problem(s) in {} jobs, {} events:", report.problems.len(), report.jobs, report.events);
        for p in &report.problems {
            println!("  - {p}");
        }
    }
}
