//! What `aura bench` needs from the database besides the store: the raw baseline Aura's appends
//! are judged against, and on a database server, a scratch database per run and the settings
//! that decide whether a commit is durable.

use std::path::Path;

use crate::config::Database;

use super::{StoreError, postgres, sqlite};

pub use postgres::bench::Scratch;

/// Raw inserts into `database` with Aura's schema and durability, `batch` rows per
/// transaction; rows per second. With `one_call`, an SQLite file gets each transaction as one
/// call, as a program calling SQLite on its own thread would run it (the fair baseline for
/// Aura's writer); a server always gets one statement per batch.
pub async fn raw_insert_rate(
    database: &Database,
    rows: usize,
    batch: usize,
    one_call: bool,
) -> Result<f64, StoreError> {
    match database {
        Database::Sqlite(location) => {
            sqlite::bench::raw_insert_rate(Path::new(location), rows, batch, one_call).await
        }
        Database::Postgres(url) => postgres::bench::raw_insert_rate(url, rows, batch).await,
    }
}

/// The server's version and the settings that make a commit durable, in one line; `None` for
/// a file, which has no server.
pub async fn describe_server(database: &Database) -> Result<Option<String>, StoreError> {
    match database {
        Database::Sqlite(_) => Ok(None),
        Database::Postgres(url) => postgres::bench::describe_server(url).await.map(Some),
    }
}
