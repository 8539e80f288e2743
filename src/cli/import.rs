//! `aura import FILE`: loads an export (`aura export`) into a new database with the same event
//! ids, and writes every `jobs` row as the fold of its events, as `aura check --repair` does.
//!
//! Offline like a repair: with the database of one process it takes the data folder's lock. The
//! store refuses a database that is not new, and everything happens in one transaction, so a
//! line that is not an event, ids that do not ascend or a history that does not fold (anything
//! `aura check` would report of the events) fails the import, naming the line, and leaves the
//! database as it was.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::check::Folds;
use crate::domain::event::StoredEvent;
use crate::store::export::{ImportedEvent, Line};
use crate::store::import::Import;
use crate::store::{Durability, Store};

/// Events inserted per statement.
const BATCH: usize = 500;

/// `aura import FILE`; `FILE` `-` is standard input.
pub async fn run_cli(data_dir: &Path, database_url: Option<String>, file: &Path) -> anyhow::Result<ExitCode> {
    let database = super::check::database_of(data_dir, database_url)?;
    let shown = database.shown();
    let input: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    if let Err(unusable) = crate::store::inspect(&database).await {
        anyhow::bail!("{unusable}");
    }
    let (store, _feed) =
        Store::open(&database, Durability::Full).await.with_context(|| format!("opening {shown}"))?;
    // With the database of one process, no server may run on it meanwhile.
    let lock = if store.node().is_none() {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        match crate::lock::DataDirLock::acquire(data_dir) {
            Ok(lock) => Some(lock),
            Err(e) => {
                store.close().await;
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let done = import(&store, BufReader::new(input)).await;
    store.close().await;
    drop(lock);
    let (jobs, events, highest) = done?;
    let from = if file == Path::new("-") { "standard input".to_owned() } else { file.display().to_string() };
    eprintln!(
        "aura: imported {jobs} jobs ({events} events, ids up to {highest}) from {from} into {shown}; \
         new events get higher ids"
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads every line, folds and inserts it, then writes the jobs and commits; returns the jobs,
/// the events and the highest id imported.
async fn import(store: &Store, input: impl BufRead) -> anyhow::Result<(usize, usize, i64)> {
    let mut import = store.begin_import().await?;
    let mut folds = Folds::default();
    let mut batch: Vec<ImportedEvent> = Vec::with_capacity(BATCH);
    for (n, line) in input.lines().enumerate() {
        let n = n + 1;
        let line = line.with_context(|| format!("line {n}: cannot be read"))?;
        let event = event_of(&line, n, last_id(&import, &batch), &mut folds)?;
        batch.push(event);
        if batch.len() == BATCH {
            insert(&mut import, &mut batch).await?;
        }
    }
    insert(&mut import, &mut batch).await?;
    let (jobs, events, highest) = (folds.jobs(), import.events(), import.highest());
    import.finish(&folds.folded()).await.context("writing the jobs rows")?;
    Ok((jobs, events, highest))
}

/// The highest id read so far: the last of the batch, else the last inserted.
fn last_id(import: &Import, batch: &[ImportedEvent]) -> i64 {
    batch.last().map_or(import.highest(), |e| e.id)
}

async fn insert(import: &mut Import, batch: &mut Vec<ImportedEvent>) -> anyhow::Result<()> {
    import.insert(batch).await.context("inserting the events")?;
    batch.clear();
    Ok(())
}

/// Line `n` as an event to insert, after checking that it is one, that its id is above `last`
/// and that it folds onto its job's events before it.
fn event_of(line: &str, n: usize, last: i64, folds: &mut Folds) -> anyhow::Result<ImportedEvent> {
    let parsed: Line<'_> = serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("line {n}: not an exported event: {}", without_position(&e)))?;
    if parsed.id <= last {
        anyhow::bail!("line {n}: event id {} is not above the one before ({last})", parsed.id);
    }
    let event = ImportedEvent::from(&parsed);
    let known = folds.problems.len();
    folds.push(&StoredEvent::new(
        event.id,
        event.job_id,
        event.kind.clone(),
        event.data.clone(),
        event.created_at.clone(),
    ));
    if let Some(problem) = folds.problems.get(known) {
        anyhow::bail!("line {n}: {problem}");
    }
    Ok(event)
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &text[..i], e.column()),
        None => text,
    }
}
