//! `aura export`: jobs and their complete histories written to a file as NDJSON (the format is
//! `store::export`'s), to keep them after retention or to load them elsewhere with
//! `aura import`. It only reads, so it may run beside a server.
//!
//! The file appears whole or not at all: the lines go to a temporary file beside it, which is
//! synced and then renamed over the name given, so a crash never leaves half a file there.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, Time};
use uuid::Uuid;

use crate::store::export::{Exported, Selection, export};
use crate::store::{Durability, Store};

/// `--before`: an RFC 3339 time, or a date (`YYYY-MM-DD`, its midnight UTC).
pub fn parse_before(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match Date::parse(text, &format) {
        Ok(date) => Ok(date.with_time(Time::MIDNIGHT).assume_utc()),
        Err(_) => Err(format!("{text:?} is neither an RFC 3339 time nor a date YYYY-MM-DD")),
    }
}

/// `aura export [--job ID]… [--before DATE] FILE`; `FILE` `-` is standard output.
pub async fn run_cli(
    data_dir: &Path,
    database_url: Option<String>,
    jobs: Vec<Uuid>,
    before: Option<OffsetDateTime>,
    file: &Path,
) -> anyhow::Result<ExitCode> {
    let database = super::check::database_of(data_dir, database_url)?;
    let shown = database.shown();
    if crate::store::is_missing(&database) {
        anyhow::bail!("there is no database at {shown}");
    }
    if let Err(unusable) = crate::store::inspect(&database).await {
        anyhow::bail!("{unusable}");
    }
    let (store, _feed) =
        Store::open(&database, Durability::Full).await.with_context(|| format!("opening {shown}"))?;
    let written = write(&store, jobs, before, file).await;
    store.close().await;
    let exported = written?;
    let to = if file == Path::new("-") { "standard output".to_owned() } else { file.display().to_string() };
    eprintln!("aura: exported {} jobs ({} events) to {to}", exported.jobs, exported.events);
    Ok(ExitCode::SUCCESS)
}

async fn write(
    store: &Store,
    jobs: Vec<Uuid>,
    before: Option<OffsetDateTime>,
    file: &Path,
) -> anyhow::Result<Exported> {
    let selection = match (jobs.is_empty(), before) {
        (true, None) => Selection::All,
        (true, Some(before)) => Selection::CreatedBefore(before),
        (false, _) => {
            for &job in &jobs {
                if store.job(job).await.context("reading the jobs")?.is_none() {
                    anyhow::bail!("there is no job {job}");
                }
            }
            Selection::Jobs(jobs)
        }
    };
    if file == Path::new("-") {
        let mut out = BufWriter::new(std::io::stdout().lock());
        let exported = export(store, &selection, &mut out).await?;
        out.flush().context("writing to standard output")?;
        return Ok(exported);
    }
    let partial = Partial::create(file)?;
    let mut out = BufWriter::new(&partial.file);
    let exported = export(store, &selection, &mut out).await?;
    out.flush().with_context(|| format!("writing {}", partial.path.display()))?;
    drop(out);
    partial.keep_as(file)?;
    Ok(exported)
}

/// The temporary file beside the export's name; removed unless kept.
struct Partial {
    file: File,
    path: PathBuf,
    kept: bool,
}

impl Partial {
    fn create(target: &Path) -> anyhow::Result<Partial> {
        let name = target
            .file_name()
            .with_context(|| format!("{} does not name a file", target.display()))?
            .to_string_lossy();
        let path = target.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Partial { file, path, kept: false })
    }

    /// Syncs the file and renames it to `target`, then syncs the folder so the name lasts too.
    fn keep_as(mut self, target: &Path) -> anyhow::Result<()> {
        self.file.sync_all().with_context(|| format!("syncing {}", self.path.display()))?;
        std::fs::rename(&self.path, target)
            .with_context(|| format!("renaming {} to {}", self.path.display(), target.display()))?;
        self.kept = true;
        let folder = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Best effort: some file systems cannot sync a folder; the file itself is synced.
        if let Ok(dir) = File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_before;

    #[test]
    fn before_takes_an_rfc_3339_time_or_a_date_at_midnight_utc() {
        let at = parse_before("2026-12-01T10:30:00+01:00").expect("a time");
        assert_eq!(at.unix_timestamp(), 1_796_117_400);
        let day = parse_before("2026-12-01").expect("a date");
        assert_eq!(day.unix_timestamp(), 1_796_083_200);
        for bad in ["", "yesterday", "2026-13-01", "2026-12-01 10:30"] {
            assert!(parse_before(bad).is_err(), "{bad}");
        }
    }
}
