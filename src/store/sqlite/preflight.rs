//! Looks at a database file before Aura writes to it, and copies it while Aura runs.
//!
//! Opening a database for writing changes it at once: a journal mode is set, migrations run.
//! A file that is not SQLite, is damaged, or was migrated by a newer Aura must instead be left
//! exactly as it is, with one clear line saying what to do. So [`inspect`] reads it first: its
//! header by hand, then `PRAGMA quick_check` and the applied migrations through a read-only
//! connection, which never writes the file. [`integrity_check`] is the full check for
//! `aura check`, and [`backup`] is `VACUUM INTO` on a read-only connection: one read
//! transaction, so the copy is consistent while the server keeps appending.

use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use super::connect_options;
use crate::store::{StoreError, Unusable};

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The database file a URL or path names.
pub(in crate::store) fn database_file(url_or_path: &str) -> Result<PathBuf, StoreError> {
    Ok(connect_options(url_or_path)?.get_filename().to_path_buf())
}

/// A read-only connection that creates nothing and sets no journal mode.
async fn read_only(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::new().filename(path).read_only(true).create_if_missing(false).connect().await
}

/// Checks the database file before the store opens it: `Ok` when it is absent or empty (the
/// store creates it), or an SQLite database that passes `quick_check` and whose migrations
/// this binary knows. Never writes the file.
pub(in crate::store) async fn inspect(url_or_path: &str) -> Result<(), Unusable> {
    let path = database_file(url_or_path).map_err(|e| Unusable(format!("{url_or_path}: {e}")))?;
    let shown = path.display();
    let untouched = "Aura left it untouched";
    let mut header = [0u8; 16];
    let read = match std::fs::File::open(&path) {
        Ok(mut file) => read_up_to(&mut file, &mut header),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    let read = read.map_err(|e| {
        Unusable(format!(
            "cannot read the database {shown} ({e}): make it readable by this user, or point \
             --database-url at another file. {untouched}"
        ))
    })?;
    if read == 0 {
        return Ok(());
    }
    if read < SQLITE_HEADER.len() || &header != SQLITE_HEADER {
        return Err(Unusable(format!(
            "{shown} is not an SQLite database: move it away, or point --database-url \
             (AURA_DATABASE_URL) at Aura's database. {untouched}"
        )));
    }
    let damaged = |what: String| {
        Unusable(format!(
            "the database {shown} is damaged ({what}): restore a copy made with `aura backup`, \
             or run `aura check` with the server stopped for details. {untouched}"
        ))
    };
    let mut conn = read_only(&path).await.map_err(|e| damaged(e.to_string()))?;
    let verdict: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(5)")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| damaged(e.to_string()))?;
    if verdict.first().map(String::as_str) != Some("ok") {
        return Err(damaged(format!("quick_check: {}", verdict.join("; "))));
    }
    let has_migrations: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| damaged(e.to_string()))?;
    if has_migrations {
        let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| damaged(e.to_string()))?
            .iter()
            .map(|row| row.get::<i64, _>(0))
            .collect();
        let known = sqlx::migrate!();
        if let Some(unknown) = applied.iter().find(|v| !known.iter().any(|m| m.version == **v)) {
            return Err(Unusable(format!(
                "the database {shown} was migrated by a newer Aura (migration {unknown} is unknown to \
                 this version): run that newer version, or restore a copy made before the upgrade. \
                 {untouched}"
            )));
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `PRAGMA integrity_check` in full: `ok`, or the problems SQLite found (at most 100).
pub(in crate::store) async fn integrity_check(url_or_path: &str) -> Result<Vec<String>, StoreError> {
    let mut conn = read_only(&database_file(url_or_path)?).await?;
    let verdict: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check(100)").fetch_all(&mut conn).await?;
    let _ = conn.close().await;
    Ok(verdict)
}

/// Writes a consistent copy of the database to `target` (which must not exist) while the
/// server may be appending: `VACUUM INTO` runs in one read transaction of a read-only
/// connection, so the copy holds exactly the commits before it began.
pub(in crate::store) async fn backup(url_or_path: &str, target: &Path) -> Result<(), StoreError> {
    let mut conn = read_only(&database_file(url_or_path)?).await?;
    let target = target.to_string_lossy().into_owned();
    sqlx::query("VACUUM INTO ?").bind(target).execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Whether the file a path names is absent (a `sqlite:` URL is left to the store to create).
pub(in crate::store) fn missing(location: &str) -> bool {
    !location.starts_with("sqlite:") && !Path::new(location).exists()
}
