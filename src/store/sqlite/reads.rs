//! SQLite's reads: the jobs table, pages of the log (framed by SQLite itself when it can), and
//! the counts `aura check` and the metrics ask for, on the read pool that WAL lets run beside the
//! writer.

use uuid::Uuid;

use super::SqliteLog;
use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
use crate::store::{EventFilter, FramedPage, JobPage, StoreError, rows};

impl SqliteLog {
    /// Checks that the database answers a query.
    pub(in crate::store) async fn ping(&self) -> Result<(), StoreError> {
        let pool = &self.pool;
        sqlx::query_scalar!("SELECT 1 AS \"one!: i64\"").fetch_one(pool).await?;
        Ok(())
    }

    pub(in crate::store) async fn job(&self, job_id: Uuid) -> Result<Option<JobState>, StoreError> {
        let pool = &self.pool;
        let id = job_id.to_string();
        let row = sqlx::query_as!(rows::JobRow, "SELECT * FROM jobs WHERE job_id = ?", id)
            .fetch_optional(pool)
            .await?;
        row.map(JobState::try_from).transpose()
    }

    /// Completed jobs that still have their output and finished before `before`, oldest first:
    /// the videos `AURA_OUTPUT_RETENTION` deletes.
    pub(in crate::store) async fn outputs_finished_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JobState>, StoreError> {
        let pool = &self.pool;
        // `finished_at` is fixed-width RFC 3339 UTC text, so text order is time order.
        let before = crate::domain::time::format_at(before);
        let limit = i64::from(limit);
        let rows = sqlx::query_as!(
            rows::JobRow,
            "SELECT * FROM jobs
             WHERE status = 'Completed' AND output IS NOT NULL AND finished_at < ?1
             ORDER BY finished_at LIMIT ?2",
            before,
            limit
        )
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(JobState::try_from).collect()
    }

    /// Jobs newest first, optionally of one status and owner, older than the cursor `before`.
    pub(in crate::store) async fn list_jobs(
        &self,
        owner: Option<&str>,
        status: Option<JobStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<JobPage, StoreError> {
        let pool = &self.pool;
        let status = status.map(JobStatus::name);
        let before = before.unwrap_or(i64::MAX);
        let fetch = i64::from(limit) + 1;
        let rows = sqlx::query_as!(
            rows::JobRow,
            "SELECT * FROM jobs
             WHERE created_event_id < ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR owner = ?3)
             ORDER BY created_event_id DESC LIMIT ?4",
            before,
            status,
            owner,
            fetch
        )
        .fetch_all(pool)
        .await?;
        JobPage::from_rows(rows, limit)
    }

    /// Up to `limit` events with id greater than `after`, in id order.
    pub(in crate::store) async fn events_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let pool = &self.pool;
        let limit = i64::from(limit);
        let rows = match filter {
            EventFilter::All => {
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Jobs(ids) if ids.len() == 1 => {
                let job = ids[0].to_string();
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                    job,
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Owner(owner) => {
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? AND job_id IN (SELECT job_id FROM jobs WHERE owner = ?)
                     ORDER BY id LIMIT ?",
                    after,
                    owner,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Jobs(ids) => {
                let list = serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? AND job_id IN (SELECT value FROM json_each(?))
                     ORDER BY id LIMIT ?",
                    after,
                    list,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows.into_iter().filter_map(rows::EventRow::into_event).collect())
    }

    /// The oldest Queued job (by creation order), the next one a worker should claim.
    pub(in crate::store) async fn next_queued(&self) -> Result<Option<Uuid>, StoreError> {
        let pool = &self.pool;
        let id = sqlx::query_scalar!(
            "SELECT job_id FROM jobs WHERE status = 'Queued' ORDER BY created_event_id LIMIT 1"
        )
        .fetch_optional(pool)
        .await?;
        id.map(|id| Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("a jobs.job_id".into()))).transpose()
    }

    /// Up to `limit` events after `after`, already framed for SSE by SQLite in one row: a
    /// replay costs one round trip to the database thread per page instead of one per event.
    /// `None` when the page holds a row that must go through [`StoredEvent`]'s normalization
    /// (a line break in `data` or `type`, a foreign job id, something after a terminal event),
    /// or for filters this path does not cover; the caller then reads rows. Line breaks are
    /// found by counting them in the page (exactly four per frame), which is much cheaper than
    /// asking SQLite to search every `data`. The subquery reads in id order and the aggregate
    /// keeps it (an `ORDER BY` inside `string_agg` would sort every page again in a temporary
    /// b-tree); the ids are checked to ascend all the same, and a page that does not is read
    /// row by row.
    pub(in crate::store) async fn framed_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Option<FramedPage>, StoreError> {
        let pool = &self.pool;
        let limit = i64::from(limit);
        let row = match filter {
            EventFilter::All => {
                sqlx::query_as!(
                    rows::FramedRow,
                    r#"SELECT count(*) AS "count!: i64", max(id) AS "last_id: i64",
                              max(CASE WHEN type IN ('job-completed', 'job-failed', 'job-cancelled') THEN id END)
                                  AS "terminal_id: i64",
                              sum(instr(type, ' ') > 0 OR type = '' OR length(job_id) != 36) AS "dirty: i64",
                              string_agg('id: ' || id || char(10) || 'event: ' || type || char(10) || 'data: ' || data
                                         || char(10) || char(10), '') AS "frames: String"
                       FROM (SELECT id, job_id, type, data FROM events WHERE id > ? ORDER BY id LIMIT ?)"#,
                    after,
                    limit
                )
                .fetch_one(pool)
                .await?
            }
            EventFilter::Jobs(ids) if ids.len() == 1 => {
                let job = ids[0].to_string();
                sqlx::query_as!(
                    rows::FramedRow,
                    r#"SELECT count(*) AS "count!: i64", max(id) AS "last_id: i64",
                              max(CASE WHEN type IN ('job-completed', 'job-failed', 'job-cancelled') THEN id END)
                                  AS "terminal_id: i64",
                              sum(instr(type, ' ') > 0 OR type = '' OR length(job_id) != 36) AS "dirty: i64",
                              string_agg('id: ' || id || char(10) || 'event: ' || type || char(10) || 'data: ' || data
                                         || char(10) || char(10), '') AS "frames: String"
                       FROM (SELECT id, job_id, type, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?)"#,
                    job,
                    after,
                    limit
                )
                .fetch_one(pool)
                .await?
            }
            EventFilter::Jobs(_) | EventFilter::Owner(_) => return Ok(None),
        };
        Ok(row.into_page())
    }

    /// The highest event id committed so far (0 for an empty log).
    pub(in crate::store) async fn max_event_id(&self) -> Result<i64, StoreError> {
        let pool = &self.pool;
        let id = sqlx::query_scalar!("SELECT coalesce(max(id), 0) AS \"id!: i64\" FROM events")
            .fetch_one(pool)
            .await?;
        Ok(id)
    }

    /// How many jobs there are in each status.
    pub(in crate::store) async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let pool = &self.pool;
        let rows = sqlx::query!("SELECT status, count(*) AS \"n!: i64\" FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
    }

    /// Every job id that has a `jobs` row.
    pub(in crate::store) async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        let pool = &self.pool;
        Ok(sqlx::query_scalar!("SELECT job_id FROM jobs ORDER BY created_event_id").fetch_all(pool).await?)
    }
}
