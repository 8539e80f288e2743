//! Tokens and browser sessions in PostgreSQL, so that every node sharing the database knows the
//! same ones (API.md "Several nodes on PostgreSQL").
//!
//! With SQLite, tokens live in a file beside the data (see `sqlite::credentials`); with
//! PostgreSQL the `tokens` and `sessions` tables replace that file. Only SHA-256 digests are stored, never a
//! token or a session id. A session row names the token that opened it by the token's digest,
//! not its name, and is deleted with it (`ON DELETE CASCADE`): revoking a token ends its sessions
//! on every node in the same transaction, and a new token of the same name (another digest)
//! never answers for them. Expiry is judged on
//! the database's clock, the one clock every node shares.
//!
//! This is SQL only: caching, and deciding who a caller is, stay in `access`, which reaches it
//! through the store's [`Credentials`](crate::store::Credentials).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::store::{StoreError, TokenRow};

/// Longest wait for a connection: past it a lookup fails (and the caller is refused) rather than
/// hang while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A handle on the tokens and sessions tables; cheap to clone.
#[derive(Clone)]
pub(in crate::store) struct PgCredentials {
    pool: PgPool,
}

impl PgCredentials {
    /// On a pool already connected and migrated (the store's own).
    pub(in crate::store) fn on(pool: PgPool) -> PgCredentials {
        PgCredentials { pool }
    }

    /// Connects to `url` (`postgres://…`) with a pool of `connections` and applies the PostgreSQL
    /// migrations (PostgreSQL serializes concurrent migrators with an advisory lock).
    pub(in crate::store) async fn open(url: &str, connections: u32) -> Result<PgCredentials, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.application_name("aura-access"))
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgCredentials { pool })
    }

    /// Stores a new token's digest under `name`; `false` when a token of that name exists.
    pub(in crate::store) async fn create_token(
        &self,
        name: &str,
        admin: bool,
        digest: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let role = if admin { "admin" } else { "user" };
        let done = sqlx::query!(
            "INSERT INTO tokens (name, role, digest) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            name,
            role,
            &digest[..]
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every token's name and role, oldest first (as the tokens file lists them).
    pub(in crate::store) async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows =
            sqlx::query!(r#"SELECT name, role = 'admin' AS "admin!" FROM tokens ORDER BY created_at, name"#)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| TokenRow { name: r.name, admin: r.admin }).collect())
    }

    /// Deletes the token `name` and, by the cascade, its sessions; `false` when there was none.
    pub(in crate::store) async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query!("DELETE FROM tokens WHERE name = $1", name).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether the tokens table holds any row: with none, the server runs open.
    pub(in crate::store) async fn any_token(&self) -> Result<bool, StoreError> {
        let any = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM tokens) AS "any!""#)
            .fetch_one(&self.pool)
            .await?;
        Ok(any)
    }

    /// The token whose digest is `digest`, if there is one.
    pub(in crate::store) async fn token_by_digest(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT name, role = 'admin' AS "admin!" FROM tokens WHERE digest = $1"#,
            &digest[..]
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TokenRow { name: r.name, admin: r.admin }))
    }

    /// The token that opened the unexpired session whose id has the digest `digest`, if both
    /// are there.
    pub(in crate::store) async fn session_token(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT t.name, t.role = 'admin' AS "admin!"
               FROM sessions s JOIN tokens t ON t.digest = s.token_digest
               WHERE s.digest = $1 AND s.expires_at > now()"#,
            &digest[..]
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TokenRow { name: r.name, admin: r.admin }))
    }

    /// Starts a session (its id's digest `digest`) of the token whose digest is `token`, lasting
    /// `secs` on the database's clock, and sweeps sessions that have expired. The token's name,
    /// or `None` when there is no such token (revoked in the meantime).
    pub(in crate::store) async fn start_session(
        &self,
        digest: &[u8; 32],
        token: &[u8; 32],
        secs: u64,
    ) -> Result<Option<String>, StoreError> {
        // Seconds as a float: `make_interval` takes them so, and a session lasts days, not ages.
        let secs = secs as f64;
        let mut tx = self.pool.begin().await?;
        sqlx::query!("DELETE FROM sessions WHERE expires_at <= now()").execute(&mut *tx).await?;
        let name = sqlx::query_scalar!(
            r#"INSERT INTO sessions (digest, token_name, token_digest, expires_at)
               SELECT $1, name, digest, now() + make_interval(secs => $3::float8) FROM tokens WHERE digest = $2
               RETURNING token_name"#,
            &digest[..],
            &token[..],
            secs
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(name)
    }

    /// Ends the session whose id has the digest `digest` (nothing if there is none).
    pub(in crate::store) async fn end_session(&self, digest: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query!("DELETE FROM sessions WHERE digest = $1", &digest[..]).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool's connections.
    pub(in crate::store) async fn close(&self) {
        self.pool.close().await;
    }
}
