//! The log written out as NDJSON, to keep or to load elsewhere (`aura export`, `aura import`),
//! and what a job's history is written as before retention deletes it.
//!
//! One line per stored event, in ascending id order: the object `GET /api/jobs/{id}/history`
//! gives for it, plus its job, `{"id","jobId","type","data","createdAt"}`. `data` is the stored
//! JSON text as it is, never parsed into values and written again ([`RawValue`]), so an import
//! stores the same bytes and `/history` answers the same bytes after it. An export reads every
//! page in one read transaction (each backend's `export.rs`), so each job comes with all its
//! events as they were when the export began, whatever is appended or deleted meanwhile.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::postgres::export::PgSnapshot;
use super::sqlite::export::SqliteSnapshot;
use super::{Backend, Store, StoreError};
use crate::domain::event::StoredEvent;

/// Events read per page.
const PAGE: u32 = 1000;

/// One line of an export: one stored event and its job.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Line<'a> {
    pub id: i64,
    pub job_id: Uuid,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The stored `data` text, byte for byte.
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(borrow)]
    pub created_at: Cow<'a, str>,
}

/// An event read from an export, to be stored with its id (see [`super::Import`]).
#[derive(Debug, Clone)]
pub struct ImportedEvent {
    pub id: i64,
    pub job_id: Uuid,
    pub kind: String,
    /// The `data` JSON text exactly as the line carried it.
    pub data: String,
    pub created_at: String,
}

impl From<&Line<'_>> for ImportedEvent {
    fn from(line: &Line<'_>) -> Self {
        ImportedEvent {
            id: line.id,
            job_id: line.job_id,
            kind: line.kind.clone().into_owned(),
            data: line.data.get().to_owned(),
            created_at: line.created_at.clone().into_owned(),
        }
    }
}

/// Which jobs an export writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every job.
    All,
    /// These jobs.
    Jobs(Vec<Uuid>),
    /// The jobs created before this time (by their first event's `createdAt`).
    CreatedBefore(OffsetDateTime),
}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub jobs: usize,
    pub events: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed: {0}")]
    Write(#[from] std::io::Error),
    /// A row that `/history` could not serve either (written by another program).
    #[error("event {id} of job {job_id}: {what}")]
    Unexportable { id: i64, job_id: Uuid, what: &'static str },
}

/// Writes `jobs` and their complete histories to `out`, one line per event in id order, and
/// returns how many events it wrote. A job with no events writes nothing.
pub async fn export_jobs(store: &Store, jobs: &[Uuid], out: &mut impl Write) -> Result<usize, ExportError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    Ok(export(store, &Selection::Jobs(jobs.to_vec()), out).await?.events)
}

/// Writes the jobs of `selection` and their complete histories to `out`, one line per event in
/// id order. `out` is written line by line; flushing it is the caller's.
pub async fn export(
    store: &Store,
    selection: &Selection,
    out: &mut impl Write,
) -> Result<Exported, ExportError> {
    let mut snapshot = Snapshot::begin(store).await?;
    // The first read, which fixes what the snapshot sees; no id above it is in it.
    let through = snapshot.max_event_id().await?;
    let (jobs, before) = match selection {
        Selection::All => (None, None),
        Selection::Jobs(ids) => (Some(ids.as_slice()), None),
        Selection::CreatedBefore(before) => (None, Some(*before)),
    };
    // Each job seen, and whether it is written: decided on its first event, the lowest id.
    let mut wanted: HashMap<Uuid, bool> = HashMap::new();
    let mut exported = Exported::default();
    let mut line = Vec::with_capacity(512);
    let mut after = 0;
    'pages: loop {
        let page = snapshot.events_after(jobs, after, PAGE).await?;
        for e in &page {
            if e.id > through {
                break 'pages;
            }
            after = e.id;
            let write = match wanted.get(&e.job_id) {
                Some(&write) => write,
                None => {
                    let write = match before {
                        Some(before) => created_before(e, before)?,
                        None => true,
                    };
                    wanted.insert(e.job_id, write);
                    exported.jobs += usize::from(write);
                    write
                }
            };
            if write {
                encode(e, &mut line)?;
                out.write_all(&line)?;
                exported.events += 1;
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    Ok(exported)
}

/// One read transaction of either backend.
enum Snapshot {
    Sqlite(SqliteSnapshot),
    Postgres(PgSnapshot),
}

impl Snapshot {
    async fn begin(store: &Store) -> Result<Snapshot, StoreError> {
        Ok(match &store.inner.backend {
            Backend::Sqlite(log) => Snapshot::Sqlite(log.snapshot().await?),
            Backend::Postgres { log, .. } => Snapshot::Postgres(log.snapshot().await?),
        })
    }

    async fn max_event_id(&mut self) -> Result<i64, StoreError> {
        match self {
            Snapshot::Sqlite(s) => s.max_event_id().await,
            Snapshot::Postgres(s) => s.max_event_id().await,
        }
    }

    async fn events_after(
        &mut self,
        jobs: Option<&[Uuid]>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self {
            Snapshot::Sqlite(s) => s.events_after(jobs, after, limit).await,
            Snapshot::Postgres(s) => s.events_after(jobs, after, limit).await,
        }
    }
}

/// Whether the job whose first event is `first` was created before `before`.
fn created_before(first: &StoredEvent, before: OffsetDateTime) -> Result<bool, ExportError> {
    let at = OffsetDateTime::parse(&first.created_at, &Rfc3339).map_err(|_| ExportError::Unexportable {
        id: first.id,
        job_id: first.job_id,
        what: "its createdAt is not an RFC 3339 time",
    })?;
    Ok(at < before)
}

/// `e` as one line of an export, newline included, into `line` (cleared first).
fn encode(e: &StoredEvent, line: &mut Vec<u8>) -> Result<(), ExportError> {
    let unexportable = |what| ExportError::Unexportable { id: e.id, job_id: e.job_id, what };
    // Stored data is one line of JSON when read (see `event`); text that is not JSON at all is
    // refused here as `/history` refuses it.
    let data: &RawValue = serde_json::from_str(e.data()).map_err(|_| unexportable("its data is not JSON"))?;
    let row = Line {
        id: e.id,
        job_id: e.job_id,
        kind: Cow::Borrowed(&e.kind),
        data,
        created_at: Cow::Borrowed(&e.created_at),
    };
    line.clear();
    serde_json::to_writer(&mut *line, &row).map_err(|_| unexportable("it could not be encoded"))?;
    line.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_the_data_text_byte_for_byte_both_ways() {
        let job = Uuid::nil();
        let data = r#"{"jobId":"00000000-0000-0000-0000-000000000000","at":"2026-01-01T00:00:00.000000Z","percent":1.50,"é":"\u00e9"}"#;
        let e = StoredEvent::new(
            7,
            job,
            "step-progress".into(),
            data.into(),
            "2026-01-01T00:00:00.000000Z".into(),
        );
        let mut line = Vec::new();
        encode(&e, &mut line).expect("encodes");
        let text = std::str::from_utf8(&line).expect("utf8");
        assert_eq!(
            text,
            format!(
                "{{\"id\":7,\"jobId\":\"{job}\",\"type\":\"step-progress\",\"data\":{data},\"createdAt\":\"2026-01-01T00:00:00.000000Z\"}}\n"
            )
        );
        let back: Line<'_> = serde_json::from_str(text.trim_end()).expect("parses");
        let imported = ImportedEvent::from(&back);
        assert_eq!((imported.id, imported.job_id, imported.data.as_str()), (7, job, data));
        assert_eq!(imported.kind, "step-progress");
    }

    #[test]
    fn a_line_with_an_unknown_field_or_a_missing_one_is_refused() {
        let job = Uuid::nil();
        let ok = format!(r#"{{"id":1,"jobId":"{job}","type":"x","data":{{}},"createdAt":"t"}}"#);
        assert!(serde_json::from_str::<Line<'_>>(&ok).is_ok());
        let extra = format!(r#"{{"id":1,"jobId":"{job}","type":"x","data":{{}},"createdAt":"t","more":1}}"#);
        assert!(serde_json::from_str::<Line<'_>>(&extra).is_err());
        let missing = format!(r#"{{"id":1,"jobId":"{job}","type":"x","createdAt":"t"}}"#);
        assert!(serde_json::from_str::<Line<'_>>(&missing).is_err());
    }
}
