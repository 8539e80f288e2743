//! Tokens and sessions kept in PostgreSQL, as every node sharing the database sees them, with a
//! cache short enough that no node lags the others by more than about a second.
//!
//! Every authenticated request asks who is calling, so answers are remembered for
//! [`FRESH`]: a revoked token or an ended session keeps working on another node for at most
//! that long, and a token or session created on one node works on every other at once (a
//! credential this node has never seen is looked up, never assumed bad). Unknown credentials are
//! remembered as unknown for as long, and looking up ones this node has not seen is rate-limited
//! ([`MISSES_PER_SEC`]), so a flood of made-up tokens cannot become a flood of queries; past the
//! limit the caller gets a `503` with `Retry-After`, and callers this node already knows are not
//! held back by it. Whether any token exists (open mode) is cached the same way.
//!
//! When the database cannot answer, the caller is refused with a `503`: never let in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::access::auth::{Caller, Credential, Role, SESSION_SECS, digest, random_hex};
use crate::error::AppError;
use crate::store::StoreError;
use crate::store::postgres::access::{PgAccess, TokenRow};
use crate::sync::lock;

/// How long an answer from the database is trusted.
const FRESH: Duration = Duration::from_secs(1);

/// Lookups per second of credentials this node has no answer for (and their burst).
const MISSES_PER_SEC: f64 = 50.0;

/// Most answers remembered; past it the stale ones are dropped, then all if need be.
const MAX_KNOWN: usize = 10_000;

/// Connections of the pool that serves tokens and sessions.
const CONNECTIONS: u32 = 2;

/// What this node last learned about one credential: the caller it proves, or none.
struct Known {
    caller: Option<Caller>,
    at: Instant,
}

/// The miss budget: a token bucket of lookups.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Tokens and sessions in PostgreSQL, with the cache in front.
pub(crate) struct PgAuth {
    db: PgAccess,
    /// Whether the tokens table had a row, and when that was learned.
    any: Mutex<Option<(bool, Instant)>>,
    /// Answers by (is a session, digest of the credential).
    known: Mutex<HashMap<(bool, [u8; 32]), Known>>,
    misses: Mutex<Bucket>,
}

/// Logs why the database could not answer and refuses the caller with a `503`.
fn unavailable(e: StoreError) -> AppError {
    tracing::warn!(error = %e, "the tokens and sessions cannot be read from the database");
    AppError::Unavailable {
        reason: "credentials-unavailable",
        detail: "credentials cannot be checked right now; retry shortly".into(),
        retry_after_secs: 1,
    }
}

fn caller_of(row: TokenRow) -> Caller {
    Caller { name: row.name, role: if row.admin { Role::Admin } else { Role::User } }
}

impl PgAuth {
    /// Connects to the database at `url`, applies its migrations and reads it once, so that an
    /// unreachable database stops the start.
    pub(crate) async fn open(url: &str) -> anyhow::Result<PgAuth> {
        let db = PgAccess::open(url, CONNECTIONS)
            .await
            .context("connecting to the database for tokens and sessions")?;
        let auth = PgAuth {
            db,
            any: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            misses: Mutex::new(Bucket { tokens: MISSES_PER_SEC, at: Instant::now() }),
        };
        auth.any_token().await.map_err(|e| anyhow::anyhow!("reading the tokens table: {e}"))?;
        Ok(auth)
    }

    /// Whether any token exists, as learned at most [`FRESH`] ago.
    pub(crate) async fn any_token(&self) -> Result<bool, AppError> {
        if let Some((any, at)) = *lock(&self.any, "tokens")?
            && at.elapsed() < FRESH
        {
            return Ok(any);
        }
        let any = self.db.any_token().await.map_err(unavailable)?;
        *lock(&self.any, "tokens")? = Some((any, Instant::now()));
        Ok(any)
    }

    /// The caller `credential` proves, if any.
    pub(crate) async fn caller(&self, credential: Credential<'_>) -> Result<Option<Caller>, AppError> {
        let (session, secret) = match credential {
            Credential::Token(token) => (false, token),
            Credential::Session(id) => (true, id),
        };
        let key = (session, digest(secret));
        let known_caller = {
            let known = lock(&self.known, "credentials")?;
            match known.get(&key) {
                Some(k) if k.at.elapsed() < FRESH => return Ok(k.caller.clone()),
                Some(k) => k.caller.is_some(),
                None => false,
            }
        };
        // Re-checking a caller this node knew is not a miss: a flood cannot lock them out.
        if !known_caller && !self.take_miss()? {
            return Err(AppError::Unavailable {
                reason: "credential-lookups",
                detail: "too many unknown credentials at once; retry shortly".into(),
                retry_after_secs: 1,
            });
        }
        let row =
            if session { self.db.session_token(&key.1).await } else { self.db.token_by_digest(&key.1).await };
        let caller = row.map_err(unavailable)?.map(caller_of);
        self.remember(key, caller.clone())?;
        Ok(caller)
    }

    /// Takes one lookup from the miss budget; `false` when it is spent.
    fn take_miss(&self) -> Result<bool, AppError> {
        let mut bucket = lock(&self.misses, "credential lookups")?;
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * MISSES_PER_SEC;
        bucket.tokens = (bucket.tokens + refill).min(MISSES_PER_SEC);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Ok(false);
        }
        bucket.tokens -= 1.0;
        Ok(true)
    }

    fn remember(&self, key: (bool, [u8; 32]), caller: Option<Caller>) -> Result<(), AppError> {
        let mut known = lock(&self.known, "credentials")?;
        if known.len() >= MAX_KNOWN {
            known.retain(|_, k| k.at.elapsed() < FRESH);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(key, Known { caller, at: Instant::now() });
        Ok(())
    }

    /// Starts a session of the token `token`; its id and the token's name, or `401` when
    /// `token` is no token (or was revoked in the meantime).
    pub(crate) async fn start_session(&self, token: &str) -> Result<(String, String), AppError> {
        self.caller(Credential::Token(token)).await?.ok_or(AppError::Unauthorized)?;
        let id = random_hex()?;
        let started =
            self.db.start_session(&digest(&id), &digest(token), SESSION_SECS).await.map_err(unavailable)?;
        let name = started.ok_or(AppError::Unauthorized)?;
        Ok((id, name))
    }

    /// Ends the session `id` in the database (so on every node within [`FRESH`]) and at once on
    /// this node.
    pub(crate) async fn end_session(&self, id: &str) -> Result<(), AppError> {
        let key = (true, digest(id));
        self.db.end_session(&key.1).await.map_err(unavailable)?;
        lock(&self.known, "credentials")?.remove(&key);
        Ok(())
    }
}
