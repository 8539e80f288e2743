//! `aura check --repair` on SQLite: the `jobs` table rebuilt from the log in one transaction, on
//! a write connection of its own (the repair holds the data folder, so no server is writing).

use sqlx::{ConnectOptions, Connection};

use super::SqliteLog;
use crate::domain::job::JobState;
use crate::store::StoreError;

impl SqliteLog {
    /// Replaces the whole `jobs` table with the given states, in one transaction (the log is the
    /// truth). Each state comes with its first event id.
    pub(in crate::store) async fn rebuild_jobs(&self, jobs: &[(i64, JobState)]) -> Result<(), StoreError> {
        let mut conn = self.write_options.clone().connect().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!("DELETE FROM jobs").execute(&mut *tx).await?;
        for (created_event_id, state) in jobs {
            super::writer::insert_job_row(
                &mut tx,
                *created_event_id,
                &crate::store::rows::JobColumns::from(state),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
