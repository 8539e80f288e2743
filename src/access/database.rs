//! Tokens and sessions kept in the database, as every node sharing it sees them, with a cache
//! short enough that no node lags the others by more than about a second.
//!
//! Every authenticated request asks who is calling, so answers are remembered for
//! [`FRESH`]: a revoked token or an ended session keeps working on another node for at most
//! that long, and a token or session created on one node works on every other at once (a
//! credential this node has never seen is looked up, never assumed bad). Unknown credentials are
//! remembered as unknown for as long. A credential that proves no caller, and every lookup of
//! one this node has not verified, is charged to the client address's budget
//! ([`crate::access::lookups`]), so a flood of made-up tokens cannot become a flood of queries:
//! past it that address gets a `429` with `Retry-After` and no query. Re-checking a caller this
//! node has verified is never charged nor held back. Whether any token exists (open mode) is
//! cached the same way.
//!
//! The answers are two LRU caches of [`MAX_ANSWERS`] each, one for callers and one for
//! credentials that proved none: a flood only ever pushes out its own oldest answers, never a
//! verified caller's, and nothing is dropped wholesale.
//!
//! When the database cannot answer, the caller is refused with a `503`: never let in.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::access::caller::{Caller, Credential, Role, SESSION_SECS, digest, random_hex};
use crate::access::lookups::Lookups;
use crate::error::AppError;
use crate::store::StoreError;
use crate::store::{Credentials, TokenRow};
use crate::sync::lock;

/// How long an answer from the database is trusted.
const FRESH: Duration = Duration::from_secs(1);

/// Answers remembered of each kind (callers, and credentials that proved none); past it the
/// least recently used answer of that kind is forgotten.
const MAX_ANSWERS: usize = 10_000;

/// A credential: whether it is a session's id, and its digest.
type Key = (bool, [u8; 32]);

/// What this node last learned about credentials, and when.
struct Answers {
    /// Credentials that proved a caller.
    callers: LruCache<Key, (Caller, Instant)>,
    /// Credentials that proved none.
    unknown: LruCache<Key, Instant>,
}

/// What [`Answers::seen`] knows about one credential.
enum Seen {
    /// A fresh answer: the caller, or none.
    Fresh(Option<Caller>),
    /// A caller this node verified more than [`FRESH`] ago: re-checked, never charged.
    Stale,
    /// Nothing fresh: a lookup, charged to the client address.
    Unseen,
}

impl Answers {
    fn new() -> Answers {
        Answers { callers: LruCache::new(MAX_ANSWERS), unknown: LruCache::new(MAX_ANSWERS) }
    }

    fn seen(&mut self, key: &Key) -> Seen {
        if let Some((caller, at)) = self.callers.get(key) {
            return if at.elapsed() < FRESH { Seen::Fresh(Some(caller.clone())) } else { Seen::Stale };
        }
        match self.unknown.get(key) {
            Some(at) if at.elapsed() < FRESH => Seen::Fresh(None),
            _ => Seen::Unseen,
        }
    }

    fn remember(&mut self, key: Key, caller: Option<Caller>) {
        let now = Instant::now();
        match caller {
            Some(caller) => {
                self.unknown.remove(&key);
                self.callers.insert(key, (caller, now));
            }
            None => {
                self.callers.remove(&key);
                self.unknown.insert(key, now);
            }
        }
    }
}

/// Tokens and sessions in the database, with the cache in front.
pub(crate) struct DatabaseAuth {
    db: Credentials,
    /// Whether the tokens table had a row, and when that was learned.
    any: Mutex<Option<(bool, Instant)>>,
    answers: Mutex<Answers>,
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

impl DatabaseAuth {
    /// On the database's credentials, read once, so that an unreachable database stops the
    /// start.
    pub(crate) async fn open(db: Credentials) -> anyhow::Result<DatabaseAuth> {
        let auth = DatabaseAuth { db, any: Mutex::new(None), answers: Mutex::new(Answers::new()) };
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

    /// The caller `credential` proves, if any. A credential that proves none, and a lookup of
    /// one this node has not verified, is charged to `from` in `lookups` (`429` past its budget;
    /// a lookup that finds a caller is given back).
    pub(crate) async fn caller(
        &self,
        credential: Credential<'_>,
        lookups: &Lookups,
        from: Option<IpAddr>,
    ) -> Result<Option<Caller>, AppError> {
        let (session, secret) = match credential {
            Credential::Token(token) => (false, token),
            Credential::Session(id) => (true, id),
        };
        let key = (session, digest(secret));
        let seen = lock(&self.answers, "credentials")?.seen(&key);
        let charged = match seen {
            Seen::Fresh(Some(caller)) => return Ok(Some(caller)),
            Seen::Fresh(None) => {
                lookups.take(from)?;
                return Ok(None);
            }
            Seen::Stale => false,
            Seen::Unseen => {
                lookups.take(from)?;
                true
            }
        };
        let row =
            if session { self.db.session_token(&key.1).await } else { self.db.token_by_digest(&key.1).await };
        let caller = row.map_err(unavailable)?.map(caller_of);
        if charged && caller.is_some() {
            lookups.refund(from)?;
        }
        lock(&self.answers, "credentials")?.remember(key, caller.clone());
        Ok(caller)
    }

    /// Starts a session of the token `token`; its id and the token's name, or `401` when
    /// `token` is no token (or was revoked in the meantime).
    pub(crate) async fn start_session(
        &self,
        token: &str,
        lookups: &Lookups,
        from: Option<IpAddr>,
    ) -> Result<(String, String), AppError> {
        self.caller(Credential::Token(token), lookups, from).await?.ok_or(AppError::Unauthorized)?;
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
        lock(&self.answers, "credentials")?.callers.remove(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_unknown_credentials_never_pushes_out_a_verified_caller() {
        let mut answers = Answers::new();
        let alice = (false, digest("alice's token"));
        answers.remember(alice, Some(Caller { name: "alice".into(), role: Role::User }));
        for n in 0..3 * MAX_ANSWERS {
            answers.remember((false, digest(&format!("made up {n}"))), None);
        }
        assert!(matches!(answers.seen(&alice), Seen::Fresh(Some(c)) if c.name == "alice"));
        assert_eq!(answers.unknown.len(), MAX_ANSWERS, "the oldest unknown ones were forgotten");
        let newest = (false, digest(&format!("made up {}", 3 * MAX_ANSWERS - 1)));
        assert!(matches!(answers.seen(&newest), Seen::Fresh(None)));
        assert!(matches!(answers.seen(&(false, digest("made up 0"))), Seen::Unseen));
    }
}
