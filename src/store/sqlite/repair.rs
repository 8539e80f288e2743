//! `aura check --repair` on SQLite: the `jobs` table rebuilt from the log in one transaction, on
//! a write connection of its own (the repair holds the data folder, so no server is writing);
//! and `aura check --compact`, which gives a file's free pages back to the disk.

use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::SqliteLog;
use crate::domain::job::JobState;
use crate::store::StoreError;

impl SqliteLog {
    /// Rewrites the file without its free pages (`VACUUM`) and makes it give pages back after
    /// each deletion from then on (`auto_vacuum=incremental`, which a file created before
    /// deletions existed lacks). Returns its size before and after, in bytes.
    pub(in crate::store) async fn compact(&self) -> Result<(u64, u64), StoreError> {
        let mut conn = self.write_options.clone().connect().await?;
        let before = file_size(&mut conn).await?;
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(&mut conn).await?;
        sqlx::query("VACUUM").execute(&mut conn).await?;
        let after = file_size(&mut conn).await?;
        conn.close().await?;
        Ok((before, after))
    }

    /// Replaces the whole `jobs` table with the given states, in one transaction (the log is the
    /// truth). Each state comes with its first event id.
    pub(in crate::store) async fn rebuild_jobs(&self, jobs: &[(i64, JobState)]) -> Result<(), StoreError> {
        let mut conn = self.write_options.clone().connect().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!("DELETE FROM jobs").execute(&mut *tx).await?;
        insert_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The database's size in bytes: its pages times their size.
async fn file_size(conn: &mut sqlx::SqliteConnection) -> Result<u64, StoreError> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
    Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
}

/// Writes a `jobs` row for each state, with its first event id (a repair's, an import's).
pub(super) async fn insert_jobs(
    conn: &mut SqliteConnection,
    jobs: &[(i64, JobState)],
) -> Result<(), StoreError> {
    for (created_event_id, state) in jobs {
        super::writer::insert_job_row(conn, *created_event_id, &crate::store::rows::JobColumns::from(state))
            .await?;
    }
    Ok(())
}
