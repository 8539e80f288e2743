//! `aura import`: an export's events stored with their own ids in a database that has never
//! had any, and every `jobs` row written as the fold of its events, all in one transaction.
//!
//! [`Store::begin_import`] opens the transaction and refuses a database that holds events or
//! jobs, or has ever given out an event id (an id a client may have seen must not name another
//! event). [`Import::insert`] adds events in batches; [`Import::finish`] writes the `jobs` rows
//! (the folds the caller made of the same events, as `aura check --repair` does), leaves the id
//! counter past the highest imported id and commits. An import dropped before `finish` leaves
//! nothing behind. Each backend's SQL is in its own `import.rs`.

use super::export::ImportedEvent;
use super::postgres::import::PgImport;
use super::sqlite::import::SqliteImport;
use super::{Store, StoreError};
use crate::domain::job::JobState;

/// Why an import cannot begin, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "the database is not empty ({0}); aura import loads only into a new database, which has never had an event"
    )]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a database holds, as far as an import cares (each backend's `begin_import` reads it in
/// the import's transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contents {
    has_events: bool,
    has_jobs: bool,
    /// The highest event id it has given out (0 when none).
    last_id: i64,
}

impl Contents {
    /// `Ok` for a database that has never had an event nor a job.
    fn must_be_new(self) -> Result<(), ImportError> {
        let said = if self.has_events {
            format!("it has events, up to id {}", self.last_id)
        } else if self.has_jobs {
            "it has jobs".to_owned()
        } else if self.last_id > 0 {
            format!("it has had events, up to id {}", self.last_id)
        } else {
            return Ok(());
        };
        Err(ImportError::NotEmpty(said))
    }
}

/// An import under way: one open transaction on the database.
pub struct Import {
    tx: Tx,
    /// The highest id inserted so far.
    highest: i64,
    events: usize,
}

enum Tx {
    Sqlite(SqliteImport),
    Postgres(PgImport),
}

impl Store {
    /// Opens the import's transaction, or refuses a database that is not new (see the module).
    pub async fn begin_import(&self) -> Result<Import, ImportError> {
        let (tx, contents) = match &self.inner.backend {
            super::Backend::Sqlite(log) => {
                let tx = log.begin_import().await?;
                let contents = tx.contents;
                (Tx::Sqlite(tx), contents)
            }
            super::Backend::Postgres { log, .. } => {
                let tx = log.begin_import().await?;
                let contents = tx.contents;
                (Tx::Postgres(tx), contents)
            }
        };
        // Dropping the transaction undoes it: nothing was written.
        Contents { has_events: contents.0, has_jobs: contents.1, last_id: contents.2 }.must_be_new()?;
        Ok(Import { tx, highest: 0, events: 0 })
    }
}

impl Import {
    /// Inserts `events` with their ids, which must be above every id inserted before.
    pub async fn insert(&mut self, events: &[ImportedEvent]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(()) };
        if first.id <= self.highest || events.windows(2).any(|w| w[1].id <= w[0].id) {
            return Err(StoreError::Corrupt("imported event ids must ascend".into()));
        }
        match &mut self.tx {
            Tx::Sqlite(tx) => tx.insert(events).await?,
            Tx::Postgres(tx) => tx.insert(events).await?,
        }
        self.highest = last.id;
        self.events += events.len();
        Ok(())
    }

    /// The highest id inserted so far (0 before any).
    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// How many events were inserted so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Writes a `jobs` row for each state (with its first event id), moves the id counter past
    /// every imported id and commits.
    pub async fn finish(self, jobs: &[(i64, JobState)]) -> Result<(), StoreError> {
        match self.tx {
            Tx::Sqlite(tx) => tx.finish(jobs, self.highest).await,
            Tx::Postgres(tx) => tx.finish(jobs, self.highest).await,
        }
    }
}
