//! `aura check --repair` on PostgreSQL: the `jobs` table rebuilt from the log in one
//! transaction. Nodes may be running, so the transaction first takes the counter row (every
//! writer needs it to commit) and refuses if the log has grown since it was checked.

use serde_json::json;
use sqlx::PgConnection;

use super::PgLog;
use crate::domain::job::JobState;
use crate::store::StoreError;
use crate::store::rows::{JobChanges, JobColumns};

impl PgLog {
    /// `aura check --compact`: nothing to do; PostgreSQL's autovacuum reuses deleted rows' space.
    pub(in crate::store) async fn compact(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(None)
    }

    pub(in crate::store) async fn rebuild_jobs(
        &self,
        jobs: &[(i64, JobState)],
        through: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let last = sqlx::query_scalar!("SELECT last_id FROM event_counter WHERE only_row FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        if last != through {
            return Err(StoreError::Corrupt(format!(
                "the log grew from {through} to {last} events while it was checked; check again"
            )));
        }
        sqlx::query!("DELETE FROM jobs WHERE (job_id)::text IS NOT NULL").execute(&mut *tx).await?;
        insert_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Writes a `jobs` row for each state, with its first event id, in one statement (a repair's,
/// an import's).
pub(super) async fn insert_jobs(conn: &mut PgConnection, jobs: &[(i64, JobState)]) -> Result<(), StoreError> {
    let rows: Vec<serde_json::Value> = jobs
        .iter()
        .map(|(created, state)| {
            let c = JobChanges::from(state);
            let cols = JobColumns::from(state);
            json!({
                "job_id": c.job_id, "created_event_id": created, "owner": cols.owner,
                "status": c.status, "stage": c.stage, "percent": c.percent, "attempt": c.attempt,
                "created_at": cols.created_at, "started_at": c.started_at,
                "finished_at": c.finished_at, "error": c.error, "output": c.output,
                "last_event_id": c.last_event_id, "request": cols.request,
            })
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    sqlx::query!(
        "INSERT INTO jobs (job_id, created_event_id, owner, status, stage, percent, attempt, created_at,
                               started_at, finished_at, error, output, last_event_id, request)
             SELECT u.job_id, u.created_event_id, u.owner, u.status, u.stage, u.percent, u.attempt,
                    u.created_at, u.started_at, u.finished_at, u.error, u.output, u.last_event_id, u.request
             FROM jsonb_to_recordset(($1)::text::jsonb) AS u(job_id text, created_event_id int8, owner text,
                  status text, stage text, percent float8, attempt int8, created_at text, started_at text,
                  finished_at text, error text, output text, last_event_id int8, request text)",
        rows
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
