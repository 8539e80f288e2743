//! What `aura bench` needs from a PostgreSQL server besides Aura's own store: a scratch
//! database per run (so every run starts from an empty log and leaves nothing behind), the
//! server settings that decide whether a commit is durable, and the raw baseline the appends
//! are judged against — batched `INSERT`s into a plain table, with no Aura code in the way.

use std::time::Instant;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use uuid::Uuid;

use crate::store::StoreError;

/// A database created for one benchmark run on the server `url` names; dropped by
/// [`Scratch::drop_database`]. Needs the right to create databases (a throwaway cluster's
/// `postgres` user has it).
pub struct Scratch {
    admin_url: String,
    name: String,
    /// The scratch database's URL: `url` with its database name replaced.
    pub url: String,
}

impl Scratch {
    pub async fn create(url: &str) -> Result<Scratch, StoreError> {
        let name = format!("aura_bench_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        admin.close().await?;
        Ok(Scratch { admin_url: url.to_owned(), url: with_database(url, &name), name })
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_database(self) -> Result<(), StoreError> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
        admin.close().await?;
        Ok(())
    }
}

/// `url` naming database `name` instead of its own (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let end = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    match query {
        Some(q) => format!("{}/{name}?{q}", &base[..end]),
        None => format!("{}/{name}", &base[..end]),
    }
}

/// The server's version and the settings that make a commit durable, in one line, e.g.
/// `PostgreSQL 15.8, fsync=on, synchronous_commit=on, full_page_writes=on`.
pub async fn describe_server(url: &str) -> Result<String, StoreError> {
    let mut conn = PgConnection::connect(url).await?;
    let mut parts = Vec::new();
    for setting in ["server_version", "fsync", "synchronous_commit", "full_page_writes"] {
        let value: String =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}"))).fetch_one(&mut conn).await?;
        parts.push(match setting {
            "server_version" => format!("PostgreSQL {value}"),
            _ => format!("{setting}={value}"),
        });
    }
    conn.close().await?;
    Ok(parts.join(", "))
}

/// Raw PostgreSQL, for `aura bench`: `rows` rows into a plain table with the columns of Aura's
/// `events` (and a `BIGSERIAL` id), `batch` rows per transaction, each batch one `INSERT` of
/// the same `unnest` shape as Aura's writer, on a connection of its own with
/// `synchronous_commit=on`; returns rows per second. The table is dropped afterwards.
pub async fn raw_insert_rate(url: &str, rows: usize, batch: usize) -> Result<f64, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("synchronous_commit", "on")]).application_name("aura-bench-raw"))
        .await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_raw_events;
         CREATE TABLE bench_raw_events (
             id BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL, type TEXT NOT NULL,
             data TEXT NOT NULL, created_at TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let job = "00000000-0000-0000-0000-000000000000";
    let at = "2026-01-01T00:00:00.000000Z";
    let data = format!(
        r#"{{"jobId":"{job}","at":"{at}","step":"Audio","progressPct":1.0,"percent":15.2,"message":""}}"#
    );
    let started = Instant::now();
    let mut left = rows;
    while left > 0 {
        let n = batch.max(1).min(left);
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_raw_events (job_id, type, data, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
        )
        .bind(vec![job; n])
        .bind(vec!["step-progress"; n])
        .bind(vec![data.as_str(); n])
        .bind(vec![at; n])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        left -= n;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP TABLE bench_raw_events").execute(&pool).await?;
    pool.close().await;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_scratch_url_keeps_everything_but_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }
}
