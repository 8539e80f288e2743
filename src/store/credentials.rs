//! Tokens and browser sessions as the database keeps them, when it keeps them: the one way
//! `access` reaches them, so that it opens no connection and asks no question about which
//! database runs.
//!
//! A database several nodes share keeps them, so every node knows the same ones (see
//! `postgres::credentials`); with one process owning the file there are none here
//! (`sqlite::credentials`), and `access` keeps them in its tokens file. Only SHA-256 digests are
//! stored, never a token or a session id.

use crate::config::Database;

use super::postgres::credentials::PgCredentials;
use super::{StoreError, sqlite};

/// One stored token, without its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub admin: bool,
}

/// Connections of a pool opened for credentials alone, by `aura token` (a server's `access`
/// uses the store's own, [`super::Store::credentials`]).
const CONNECTIONS: u32 = 2;

/// The tokens and sessions a database keeps; cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    kept: PgCredentials,
}

impl From<PgCredentials> for Credentials {
    fn from(kept: PgCredentials) -> Credentials {
        Credentials { kept }
    }
}

impl Credentials {
    /// Connects to `database` for its credentials alone (applying its migrations); `None` when
    /// it keeps none.
    pub async fn open(database: &Database) -> Result<Option<Credentials>, StoreError> {
        match database {
            Database::Sqlite(_) => sqlite::credentials::open(),
            Database::Postgres(url) => {
                Ok(Some(Credentials::from(PgCredentials::open(url, CONNECTIONS).await?)))
            }
        }
    }

    /// Stores a new token's digest under `name`; `false` when a token of that name exists.
    pub async fn create_token(&self, name: &str, admin: bool, digest: &[u8; 32]) -> Result<bool, StoreError> {
        self.kept.create_token(name, admin, digest).await
    }

    /// Every token's name and role, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.kept.list_tokens().await
    }

    /// Deletes the token `name` and its sessions; `false` when there was none.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.kept.revoke_token(name).await
    }

    /// Whether any token is stored: with none, the server runs open.
    pub async fn any_token(&self) -> Result<bool, StoreError> {
        self.kept.any_token().await
    }

    /// The token whose digest is `digest`, if there is one.
    pub async fn token_by_digest(&self, digest: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        self.kept.token_by_digest(digest).await
    }

    /// The token that opened the unexpired session whose id has the digest `digest`.
    pub async fn session_token(&self, digest: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        self.kept.session_token(digest).await
    }

    /// Starts a session (its id's digest `digest`) of the token whose digest is `token`, lasting
    /// `secs` on the database's clock; the token's name, or `None` when there is no such token.
    pub async fn start_session(
        &self,
        digest: &[u8; 32],
        token: &[u8; 32],
        secs: u64,
    ) -> Result<Option<String>, StoreError> {
        self.kept.start_session(digest, token, secs).await
    }

    /// Ends the session whose id has the digest `digest` (nothing if there is none).
    pub async fn end_session(&self, digest: &[u8; 32]) -> Result<(), StoreError> {
        self.kept.end_session(digest).await
    }

    /// Closes the connections (those of a pool opened by [`Credentials::open`]; the store's own
    /// close with the store).
    pub async fn close(&self) {
        self.kept.close().await;
    }
}
