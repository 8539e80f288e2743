//! The store's reads on PostgreSQL: the same answers as SQLite's (see `store`), from the shared
//! tables. Every query text differs from its SQLite twin (their offline data share one folder,
//! named by the text's hash).

use time::OffsetDateTime;
use uuid::Uuid;

use super::PgLog;
use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
use crate::store::rows::{EventRow, JobRow};
use crate::store::{EventFilter, FramedPage, JobPage, StoreError};

impl PgLog {
    pub(in crate::store) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1::int4 AS \"one!\"").fetch_one(&self.pool).await?;
        Ok(())
    }

    pub(in crate::store) async fn job(&self, job_id: Uuid) -> Result<Option<JobState>, StoreError> {
        let id = job_id.to_string();
        let row = sqlx::query_as!(JobRow, "SELECT * FROM jobs WHERE job_id = ($1)::text", id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(JobState::try_from).transpose()
    }

    pub(in crate::store) async fn outputs_finished_before(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JobState>, StoreError> {
        let before = crate::domain::time::format_at(before);
        let rows = sqlx::query_as!(
            JobRow,
            "SELECT * FROM jobs
             WHERE status = 'Completed' AND output IS NOT NULL AND finished_at < ($1)::text
             ORDER BY finished_at LIMIT $2",
            before,
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobState::try_from).collect()
    }

    pub(in crate::store) async fn list_jobs(
        &self,
        owner: Option<&str>,
        status: Option<JobStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<JobPage, StoreError> {
        let status = status.map(JobStatus::name);
        let before = before.unwrap_or(i64::MAX);
        let rows = sqlx::query_as!(
            JobRow,
            "SELECT * FROM jobs
             WHERE created_event_id < $1 AND ($2::text IS NULL OR status = $2)
                   AND ($3::text IS NULL OR owner = $3)
             ORDER BY created_event_id DESC LIMIT $4",
            before,
            status,
            owner,
            i64::from(limit) + 1
        )
        .fetch_all(&self.pool)
        .await?;
        JobPage::from_rows(rows, limit)
    }

    pub(in crate::store) async fn filtered_events_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = i64::from(limit);
        let rows = match filter {
            EventFilter::All => return self.events_after(after, limit as u32).await,
            EventFilter::Jobs(ids) if ids.len() == 1 => {
                sqlx::query_as!(
                    EventRow,
                    "SELECT id, job_id, type AS kind, data, created_at
                     FROM events WHERE job_id = ($1)::text AND id > $2 ORDER BY id LIMIT $3",
                    ids[0].to_string(),
                    after,
                    limit
                )
                .fetch_all(&self.pool)
                .await?
            }
            EventFilter::Owner(owner) => {
                sqlx::query_as!(
                    EventRow,
                    "SELECT id, job_id, type AS kind, data, created_at
                     FROM events WHERE id > ($1)::int8 AND job_id IN (SELECT job_id FROM jobs WHERE owner = $2)
                     ORDER BY id LIMIT $3",
                    after,
                    owner,
                    limit
                )
                .fetch_all(&self.pool)
                .await?
            }
            EventFilter::Jobs(ids) => {
                let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                sqlx::query_as!(
                    EventRow,
                    "SELECT id, job_id, type AS kind, data, created_at
                     FROM events WHERE id > $1 AND job_id = ANY($2::text[]) ORDER BY id LIMIT $3",
                    after,
                    &ids,
                    limit
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.into_iter().filter_map(EventRow::into_event).collect())
    }

    pub(in crate::store) async fn next_queued(&self) -> Result<Option<Uuid>, StoreError> {
        let id = sqlx::query_scalar!(
            "SELECT j.job_id FROM jobs AS j WHERE j.status = 'Queued'::text ORDER BY j.created_event_id LIMIT 1"
        )
        .fetch_optional(&self.pool)
        .await?;
        id.map(|id| Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("a jobs.job_id".into()))).transpose()
    }

    /// The counter row: every id up to it is committed and visible.
    pub(in crate::store) async fn max_event_id(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!("SELECT last_id FROM event_counter WHERE only_row")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(in crate::store) async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query!("SELECT j.status, count(*)::int8 AS \"n!\" FROM jobs AS j GROUP BY j.status")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
    }

    pub(in crate::store) async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar!(
            "SELECT j.job_id::text AS \"job_id!\" FROM jobs AS j ORDER BY j.created_event_id"
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Never a framed page: PostgreSQL's pages are read row by row (each event carries its
    /// job's owner, which the fan-out needs on every node).
    pub(in crate::store) async fn framed_after(
        &self,
        _filter: &EventFilter,
        _after: i64,
        _limit: u32,
    ) -> Result<Option<FramedPage>, StoreError> {
        Ok(None)
    }
}
