//! `aura import` on PostgreSQL: one transaction that first takes the counter row `FOR UPDATE`
//! (every node's writer needs it to commit, so none appends meanwhile), inserts the events with
//! their ids, writes the `jobs` rows and moves `event_counter.last_id` past the highest imported
//! id, so the next group's ids start above it. A job that was running when it was exported runs
//! on no node now: it gets a lease that has already expired, so that any node continues it as a
//! new attempt (`node-lost`) as it would after the node that ran it died.

use sqlx::postgres::Postgres;
use sqlx::{QueryBuilder, Transaction};

use super::PgLog;
use crate::domain::job::JobState;
use crate::store::StoreError;
use crate::store::export::ImportedEvent;

/// An import's open transaction.
pub(in crate::store) struct PgImport {
    tx: Transaction<'static, Postgres>,
    /// What the database held when the transaction began: (has events, has jobs, the highest id
    /// it has given out).
    pub(in crate::store) contents: (bool, bool, i64),
}

impl PgLog {
    /// Opens the import's transaction, holding the counter row, and reads what the database holds.
    pub(in crate::store) async fn begin_import(&self) -> Result<PgImport, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (has_events, has_jobs, last_id): (bool, bool, i64) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM events), EXISTS (SELECT 1 FROM jobs),
                    (SELECT c.last_id FROM event_counter AS c WHERE c.only_row FOR UPDATE)",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(PgImport { tx, contents: (has_events, has_jobs, last_id) })
    }
}

impl PgImport {
    /// Inserts `events` with their ids in one statement.
    pub(in crate::store) async fn insert(&mut self, events: &[ImportedEvent]) -> Result<(), StoreError> {
        let mut insert =
            QueryBuilder::<Postgres>::new("INSERT INTO events (id, job_id, type, data, created_at) ");
        insert.push_values(events, |mut row, e| {
            row.push_bind(e.id)
                .push_bind(e.job_id.to_string())
                .push_bind(e.kind.as_str())
                .push_bind(e.data.as_str())
                .push_bind(e.created_at.as_str());
        });
        insert.build().execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Writes the `jobs` rows (and the expired leases of running jobs), moves the counter to
    /// `highest` and commits.
    pub(in crate::store) async fn finish(
        mut self,
        jobs: &[(i64, JobState)],
        highest: i64,
    ) -> Result<(), StoreError> {
        super::repair::insert_jobs(&mut self.tx, jobs).await?;
        sqlx::query(
            "INSERT INTO leases (job_id, attempt, node, expires_at)
             SELECT j.job_id, j.attempt, 'aura import', now() - interval '1 second'
             FROM jobs AS j WHERE j.status IN ('Running', 'Cancelling')",
        )
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("UPDATE event_counter SET last_id = greatest(last_id, $1) WHERE only_row")
            .bind(highest)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
