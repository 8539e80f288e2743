//! `aura export` on PostgreSQL: every page read in one `REPEATABLE READ` read-only transaction,
//! which sees the database as it was at its first statement, so a job deleted or appended to
//! by any node meanwhile is exported as it was then, whole.

use sqlx::Transaction;
use sqlx::postgres::Postgres;
use uuid::Uuid;

use super::PgLog;
use crate::domain::event::StoredEvent;
use crate::store::StoreError;
use crate::store::rows::EventRow;

/// An export's read transaction.
pub(in crate::store) struct PgSnapshot {
    tx: Transaction<'static, Postgres>,
}

type Row = (i64, String, String, String, String);

impl PgLog {
    /// Begins the read transaction (its view is fixed by its first statement).
    pub(in crate::store) async fn snapshot(&self) -> Result<PgSnapshot, StoreError> {
        Ok(PgSnapshot { tx: self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await? })
    }
}

impl PgSnapshot {
    /// The counter row in the snapshot: every id up to it is there.
    pub(in crate::store) async fn max_event_id(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT c.last_id FROM event_counter AS c WHERE c.only_row")
            .fetch_one(&mut *self.tx)
            .await?)
    }

    /// Up to `limit` events after `after` in id order: every job's, or those of `jobs`.
    pub(in crate::store) async fn events_after(
        &mut self,
        jobs: Option<&[Uuid]>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<Row> = match jobs {
            None => {
                sqlx::query_as(
                    "SELECT e.id, e.job_id, e.type, e.data, e.created_at FROM events AS e
                     WHERE e.id > $1 ORDER BY e.id LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await?
            }
            Some(jobs) => {
                let jobs: Vec<String> = jobs.iter().map(Uuid::to_string).collect();
                sqlx::query_as(
                    "SELECT e.id, e.job_id, e.type, e.data, e.created_at FROM events AS e
                     WHERE e.id > $1 AND e.job_id = ANY($2::text[]) ORDER BY e.id LIMIT $3",
                )
                .bind(after)
                .bind(jobs)
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(id, job_id, kind, data, created_at)| {
                EventRow { id, job_id, kind, data, created_at }.into_event()
            })
            .collect())
    }
}
