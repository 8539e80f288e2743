//! Raw SQLite for `aura bench`: the baseline Aura's own appends are measured against.

use std::path::Path;

use sqlx::{ConnectOptions, Connection};

use super::connect_options;
use crate::store::StoreError;

/// Raw SQLite, for `aura bench`: inserts `rows` event rows into a fresh file with Aura's schema
/// and pragmas (WAL, `synchronous=FULL`), `batch` rows per transaction; returns rows per second.
///
/// With `one_call`, each transaction (`BEGIN IMMEDIATE`, one `INSERT` per row, `COMMIT`) goes to
/// SQLite's worker thread as one multi-statement call, as a program calling SQLite directly on
/// its own thread would run it: this is the fair baseline for Aura's writer, which also sends
/// each group as one call. Without it, every statement is a round trip of its own.
pub(in crate::store) async fn raw_insert_rate(
    path: &Path,
    rows: usize,
    batch: usize,
    one_call: bool,
) -> Result<f64, StoreError> {
    let options = connect_options(&path.to_string_lossy())?;
    let mut conn = options.connect().await?;
    sqlx::migrate!().run(&mut conn).await?;
    let data = r#"{"jobId":"00000000-0000-0000-0000-000000000000","at":"2026-01-01T00:00:00.000000Z","step":"Audio","progressPct":1.0,"percent":15.2,"message":""}"#;
    let job = "00000000-0000-0000-0000-000000000000";
    let at = "2026-01-01T00:00:00.000000Z";
    let insert = "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'step-progress', ?, ?);";
    let started = std::time::Instant::now();
    let mut left = rows;
    while left > 0 {
        let n = batch.max(1).min(left);
        if one_call {
            // The text differs only with `n`, so SQLite prepares it once per batch size.
            let sql = format!("BEGIN IMMEDIATE; {} COMMIT;", insert.repeat(n));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..n {
                query = query.bind(job).bind(data).bind(at);
            }
            query.execute(&mut conn).await?;
        } else {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for _ in 0..n {
                sqlx::query!(
                    "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'step-progress', ?, ?)",
                    job,
                    data,
                    at
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        left -= n;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    Ok(rate)
}
