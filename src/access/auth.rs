//! Who is calling: bearer tokens, browser sessions and the credentials middleware.
//!
//! Tokens are optional. With none configured Aura stays the open, single-user loopback tool and
//! every caller is the owner `local`. Once the tokens file (`AURA_TOKENS_FILE`, default
//! `<data-dir>/tokens`) holds a token, every `/api` route but health and the session routes
//! needs `Authorization: Bearer <token>` or the `aura_session` cookie, and `/metrics` needs an
//! admin token. Credentials are only ever read from headers, never from the query string.
//!
//! The tokens file holds one line per token, `NAME ROLE SHA256-HEX` (`ROLE` is `user` or
//! `admin`; `#` starts a comment): only a hash, never the token. It is re-read whenever its size,
//! modification time or inode changes (one `stat` per authenticated request), so `aura token
//! create`/`revoke` take effect without a restart.
//!
//! A browser signs in with `POST /api/session`: the cookie holds a random session id, and the
//! server keeps only the id's SHA-256 and the SHA-256 of the token that opened it in
//! `<tokens-file>.sessions`, so sessions survive a restart and `DELETE /api/session` really ends
//! one. A session belongs to that token, not to its name: revoking the token ends its sessions,
//! and a new token made later under the same name has another digest, so it does not bring them
//! back.
//!
//! When the database keeps credentials (one that several nodes share), tokens and sessions live
//! there instead of those files (see [`crate::access::database`]), so every node sharing it
//! knows the same ones. The store says whether it does, and hands them over on its own
//! connections ([`crate::store::Store::credentials`]): `access` opens no pool of its own.
//!
//! A credential that proves no caller is charged to its client address's budget
//! ([`crate::access::lookups`]): past it, `429` rather than `401`. One that proves a caller is
//! never charged nor held back.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::http::{HeaderMap, HeaderValue, header};

pub use crate::access::caller::{Caller, Role, SESSION_COOKIE, SESSION_SECS};
use crate::access::caller::{Credential, digest, random_hex, to_hex};
use crate::access::database::DatabaseAuth;
use crate::access::lookups::Lookups;
use crate::config::Database;
use crate::error::AppError;
use crate::store::Credentials;
use crate::sync::{Poisoned, lock};

/// One line of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub admin: bool,
    hash: [u8; 32],
}

/// What identifies one version of the tokens file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The tokens file and its parsed contents, re-read when the file changes.
struct Tokens {
    path: PathBuf,
    /// `None` until the file has been read once: there is no "last good set" to fall back on.
    cache: Mutex<Option<Loaded>>,
}

/// A version of the tokens file and what it held.
type Loaded = (Option<Stamp>, Arc<Vec<TokenEntry>>);

/// The tokens file has never been read successfully: nobody can be told apart, so every
/// request is refused (a 500) rather than let in as the open-mode caller.
#[derive(Debug, thiserror::Error)]
#[error("the tokens file {path} cannot be read: {cause}")]
pub struct TokensUnreadable {
    path: String,
    cause: String,
}

/// Why the current tokens are not known.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    #[error(transparent)]
    Unreadable(#[from] TokensUnreadable),
}

impl From<TokensError> for AppError {
    fn from(e: TokensError) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}

impl Tokens {
    fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Stamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The current tokens; re-reads the file when it changed since the last call. A file that
    /// cannot be read keeps the last good set (logged), so a bad edit never opens the server;
    /// with no good set yet, it is an error.
    ///
    /// A poisoned lock or an unreadable file is an error, never an empty set: no tokens would
    /// mean "let everyone in".
    fn current(&self) -> Result<Arc<Vec<TokenEntry>>, TokensError> {
        let mut cache = lock(&self.cache, "tokens")?;
        let unreadable = |e: std::io::Error| TokensUnreadable {
            path: self.path.display().to_string(),
            cause: e.to_string(),
        };
        let stamp = match (Self::stamp(&self.path), cache.as_ref()) {
            (Ok(stamp), _) => stamp,
            (Err(e), Some((_, last))) => {
                tracing::warn!(error = %e, "cannot stat the tokens file; keeping the tokens already loaded");
                return Ok(last.clone());
            }
            (Err(e), None) => return Err(unreadable(e).into()),
        };
        if cache.as_ref().is_none_or(|(last, _)| *last != stamp) {
            match (read_tokens(&self.path), cache.as_ref()) {
                (Ok(entries), _) => {
                    tracing::info!(tokens = entries.len(), "tokens file loaded");
                    *cache = Some((stamp, Arc::new(entries)));
                }
                (Err(e), Some(_)) => {
                    tracing::warn!(error = %e, "cannot read the tokens file; keeping the tokens already loaded")
                }
                (Err(e), None) => return Err(unreadable(e).into()),
            }
        }
        cache.as_ref().map(|(_, tokens)| tokens.clone()).ok_or_else(|| {
            TokensUnreadable { path: self.path.display().to_string(), cause: "not loaded".into() }.into()
        })
    }
}

/// Compares two digests in constant time.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Token names are what jobs record as their owner: short, plain, unambiguous.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses the tokens file; a line that does not parse is skipped with a warning.
fn parse_tokens(text: &str) -> Vec<TokenEntry> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = match fields.as_slice() {
            [name, role @ ("user" | "admin"), hash] if valid_name(name) => from_hex(hash)
                .map(|hash| TokenEntry { name: (*name).to_owned(), admin: *role == "admin", hash }),
            _ => None,
        };
        match entry {
            Some(e) => entries.push(e),
            None => tracing::warn!(line = n + 1, "skipping a malformed line of the tokens file"),
        }
    }
    entries
}

fn read_tokens(path: &Path) -> std::io::Result<Vec<TokenEntry>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_tokens(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes `text` to `path` readable by its owner only, atomically (temporary file, rename).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// `aura token create`: stores the hash of a new token and returns the token.
pub fn create_token(path: &Path, name: &str, admin: bool) -> anyhow::Result<String> {
    anyhow::ensure!(valid_name(name), "a token name is 1 to 64 letters, digits, '-', '_' or '.'");
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Aura tokens: NAME ROLE SHA256(token). Managed with `aura token`.\n".to_owned()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    anyhow::ensure!(
        !parse_tokens(&text).iter().any(|e| e.name == name),
        "a token named {name:?} exists already; revoke it first"
    );
    let token = format!("aura_{}", random_hex()?);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let role = if admin { "admin" } else { "user" };
    text.push_str(&format!("{name} {role} {}\n", to_hex(&digest(&token))));
    write_private(path, &text)?;
    Ok(token)
}

/// `aura token list`: every token's name and role.
pub fn list_tokens(path: &Path) -> anyhow::Result<Vec<TokenEntry>> {
    read_tokens(path).with_context(|| format!("reading {}", path.display()))
}

/// `aura token revoke`: removes the named token; `false` when there was none.
pub fn revoke_token(path: &Path, name: &str) -> anyhow::Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut found = false;
    let kept: String = text
        .lines()
        .filter(|line| {
            let hit = line.split_whitespace().next() == Some(name) && !line.trim_start().starts_with('#');
            found |= hit;
            !hit
        })
        .map(|line| format!("{line}\n"))
        .collect();
    if found {
        write_private(path, &kept)?;
    }
    Ok(found)
}

/// Where `aura token` keeps tokens: the tokens file, or the database every node reads when the
/// database keeps credentials (no running server needed either way).
pub enum TokenStore {
    File(PathBuf),
    Database(Credentials),
}

impl TokenStore {
    /// The database's credentials when `database_url` names a database that keeps them, else
    /// the tokens file `tokens_file`.
    pub async fn open(database_url: Option<&str>, tokens_file: PathBuf) -> anyhow::Result<TokenStore> {
        let kept = match database_url.map(Database::from) {
            Some(database) => Credentials::open(&database).await.context("connecting to the database")?,
            None => None,
        };
        Ok(kept.map_or(TokenStore::File(tokens_file), TokenStore::Database))
    }

    /// Stores the hash of a new token named `name` and returns the token.
    pub async fn create(&self, name: &str, admin: bool) -> anyhow::Result<String> {
        let db = match self {
            TokenStore::File(path) => return create_token(path, name, admin),
            TokenStore::Database(db) => db,
        };
        anyhow::ensure!(valid_name(name), "a token name is 1 to 64 letters, digits, '-', '_' or '.'");
        let token = format!("aura_{}", random_hex()?);
        let created = db.create_token(name, admin, &digest(&token)).await.context("storing the token")?;
        anyhow::ensure!(created, "a token named {name:?} exists already; revoke it first");
        Ok(token)
    }

    /// Every token's name and whether it is an admin's, oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<(String, bool)>> {
        match self {
            TokenStore::File(path) => Ok(list_tokens(path)?.into_iter().map(|t| (t.name, t.admin)).collect()),
            TokenStore::Database(db) => Ok(db
                .list_tokens()
                .await
                .context("reading the tokens")?
                .into_iter()
                .map(|t| (t.name, t.admin))
                .collect()),
        }
    }

    /// Removes the token `name` and its sessions; `false` when there was none.
    pub async fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            TokenStore::File(path) => revoke_token(path, name),
            TokenStore::Database(db) => Ok(db.revoke_token(name).await.context("revoking the token")?),
        }
    }

    /// Closes the database connection, if any.
    pub async fn close(&self) {
        if let TokenStore::Database(db) = self {
            db.close().await;
        }
    }
}

/// One browser session: the token that opened it, by its digest, and its expiry.
#[derive(Debug, Clone, Copy)]
struct Session {
    token: [u8; 32],
    /// Unix seconds.
    expires: u64,
}

/// Browser sessions by the SHA-256 of their id, kept in memory and in a file beside the tokens
/// file, one `SESSION-SHA256 TOKEN-SHA256 EXPIRES` line each.
struct Sessions {
    path: PathBuf,
    map: Mutex<HashMap<[u8; 32], Session>>,
    /// Serializes file writes, so the file always ends with the newest snapshot.
    write: tokio::sync::Mutex<()>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Sessions {
    fn load(path: PathBuf) -> anyhow::Result<Sessions> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let now = now_secs();
        let mut skipped = 0;
        let mut map = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut f = line.split_whitespace();
            // A line from before sessions recorded their token (`HASH NAME EXPIRES`) says only a
            // name, which a later token may have taken: that session is not kept.
            let parsed =
                (|| Some((from_hex(f.next()?)?, from_hex(f.next()?)?, f.next()?.parse::<u64>().ok()?)))();
            match parsed {
                Some((hash, token, expires)) if expires > now => {
                    map.insert(hash, Session { token, expires });
                }
                Some(_) => {}
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "sessions that do not name the token that opened them were dropped; their browsers sign in again"
            );
        }
        Ok(Sessions { path, map: Mutex::new(map), write: tokio::sync::Mutex::new(()) })
    }

    /// The digest of the token that opened the unexpired session `id`.
    fn lookup(&self, id: &str) -> Result<Option<[u8; 32]>, Poisoned> {
        let key = digest(id);
        let map = lock(&self.map, "sessions")?;
        Ok(map.get(&key).filter(|s| s.expires > now_secs()).map(|s| s.token))
    }

    /// Forgets the session `id` in memory (its token is gone); the file follows at the next write.
    fn forget(&self, id: &str) -> Result<(), Poisoned> {
        lock(&self.map, "sessions")?.remove(&digest(id));
        Ok(())
    }

    async fn persist(&self) -> Result<(), AppError> {
        let _guard = self.write.lock().await;
        let now = now_secs();
        let text: String = {
            let mut map = lock(&self.map, "sessions")?;
            map.retain(|_, s| s.expires > now);
            map.iter()
                .map(|(hash, s)| format!("{} {} {}\n", to_hex(hash), to_hex(&s.token), s.expires))
                .collect()
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_private(&path, &text))
            .await
            .map_err(|e| anyhow::anyhow!("writing the sessions file: {e}"))??;
        Ok(())
    }

    /// Starts a session of the token whose digest is `token`; returns its id.
    async fn start(&self, token: [u8; 32]) -> Result<String, AppError> {
        let id = random_hex()?;
        lock(&self.map, "sessions")?
            .insert(digest(&id), Session { token, expires: now_secs() + SESSION_SECS });
        self.persist().await?;
        Ok(id)
    }

    async fn end(&self, id: &str) -> Result<(), AppError> {
        let removed = lock(&self.map, "sessions")?.remove(&digest(id)).is_some();
        if removed {
            self.persist().await?;
        }
        Ok(())
    }
}

/// Where tokens and sessions live: the tokens file and its sessions file beside it (one node),
/// or the database every node shares, when the store says it keeps them.
enum Keeper {
    File { tokens: Tokens, sessions: Sessions },
    Database(DatabaseAuth),
}

/// Tokens, sessions and whether the server may run open; part of the HTTP state.
pub struct Auth {
    keeper: Keeper,
    /// Every client address's budget of unknown credentials.
    lookups: Lookups,
    /// Loopback, or `--insecure-open`: with no tokens, requests are let in as `local`.
    open_allowed: bool,
    /// `Secure` on the session cookie: everywhere but plain HTTP on loopback.
    secure_cookie: bool,
}

impl Auth {
    /// The tokens file and its sessions, or `kept`: the credentials the store's database keeps,
    /// on the store's own connections ([`crate::store::Store::credentials`]), read once so that
    /// an unreadable tokens file or an unreachable database stops the start.
    pub async fn load(
        settings: &crate::config::ServeConfig,
        kept: Option<Credentials>,
    ) -> anyhow::Result<Auth> {
        let keeper = match kept {
            Some(credentials) => Keeper::Database(DatabaseAuth::open(credentials).await?),
            None => {
                let path = settings.tokens_path();
                let mut sessions_path = path.clone().into_os_string();
                sessions_path.push(".sessions");
                let tokens = Tokens { path, cache: Mutex::new(None) };
                // Read now, so that a tokens file that exists but cannot be read stops the start.
                tokens.current()?;
                Keeper::File { tokens, sessions: Sessions::load(PathBuf::from(sessions_path))? }
            }
        };
        Ok(Auth {
            keeper,
            lookups: Lookups::default(),
            open_allowed: settings.is_loopback() || settings.insecure_open,
            secure_cookie: !settings.is_loopback(),
        })
    }

    /// Whether any token is configured right now; not knowing (a poisoned lock, an unreachable
    /// database) counts as "yes" (closed).
    pub async fn has_tokens(&self) -> bool {
        match &self.keeper {
            Keeper::File { tokens, .. } => tokens.current().map_or(true, |t| !t.is_empty()),
            Keeper::Database(db) => db.any_token().await.unwrap_or(true),
        }
    }

    /// The caller a request's headers prove, or 401 (429 once the client address `from` has
    /// presented too many unknown credentials); not knowing the tokens (a poisoned lock, an
    /// unreadable file, an unreachable database) is a 500 or a 503, never open.
    pub async fn authenticate(&self, headers: &HeaderMap, from: Option<IpAddr>) -> Result<Caller, AppError> {
        match &self.keeper {
            Keeper::File { tokens, sessions } => {
                let tokens = tokens.current()?;
                if tokens.is_empty() {
                    return self.open_caller();
                }
                let caller = match presented(headers)? {
                    Credential::Token(token) => find_token(&tokens, token).map(TokenEntry::caller),
                    Credential::Session(id) => match sessions.lookup(id)? {
                        // The token that opened it, by its digest: not whichever token has its
                        // name now.
                        Some(token) => match tokens.iter().find(|e| same_digest(&e.hash, &token)) {
                            Some(entry) => Some(entry.caller()),
                            None => {
                                sessions.forget(id)?;
                                None
                            }
                        },
                        None => None,
                    },
                };
                caller.map_or_else(|| self.unknown(from), Ok)
            }
            Keeper::Database(db) => {
                if !db.any_token().await? {
                    return self.open_caller();
                }
                let caller = db.caller(presented(headers)?, &self.lookups, from).await?;
                caller.ok_or(AppError::Unauthorized)
            }
        }
    }

    /// A credential that proves no caller: `401`, or `429` once `from` has presented too many.
    fn unknown<T>(&self, from: Option<IpAddr>) -> Result<T, AppError> {
        self.lookups.take(from)?;
        Err(AppError::Unauthorized)
    }

    /// With no tokens at all: the open-mode caller where open mode is allowed.
    fn open_caller(&self) -> Result<Caller, AppError> {
        // Fail closed: a non-loopback server whose tokens were all revoked does not open up.
        if self.open_allowed { Ok(Caller::open()) } else { Err(AppError::Unauthorized) }
    }

    /// Starts a browser session of the token `token`, which it belongs to from then on; returns
    /// its id (the cookie's value) and the token's name. `401` when `token` is no token (`429`
    /// once the client address `from` has presented too many unknown credentials).
    pub async fn start_session(
        &self,
        token: &str,
        from: Option<IpAddr>,
    ) -> Result<(String, String), AppError> {
        match &self.keeper {
            Keeper::File { tokens, sessions } => {
                let tokens = tokens.current()?;
                match find_token(&tokens, token) {
                    Some(entry) => Ok((sessions.start(entry.hash).await?, entry.name.clone())),
                    None => self.unknown(from),
                }
            }
            Keeper::Database(db) => db.start_session(token, &self.lookups, from).await,
        }
    }

    /// Ends the session `id` on the server (on every node, when the database keeps sessions).
    pub async fn end_session(&self, id: &str) -> Result<(), AppError> {
        match &self.keeper {
            Keeper::File { sessions, .. } => sessions.end(id).await,
            Keeper::Database(db) => db.end_session(id).await,
        }
    }

    /// Whether the session cookie carries `Secure` (everywhere but plain HTTP on loopback).
    pub fn secure_cookie(&self) -> bool {
        self.secure_cookie
    }
}

impl TokenEntry {
    fn caller(&self) -> Caller {
        Caller { name: self.name.clone(), role: if self.admin { Role::Admin } else { Role::User } }
    }
}

/// The entry whose hash is `token`'s. Every entry is compared, so the time taken does not say
/// which one matched.
fn find_token<'a>(tokens: &'a [TokenEntry], token: &str) -> Option<&'a TokenEntry> {
    let presented = digest(token);
    tokens.iter().fold(None, |found, e| if same_digest(&e.hash, &presented) { Some(e) } else { found })
}

/// The credential a request presents: its bearer token, else its session cookie; `401` with
/// neither (or a malformed `Authorization` header).
fn presented(headers: &HeaderMap) -> Result<Credential<'_>, AppError> {
    match headers.get(header::AUTHORIZATION) {
        Some(value) => Ok(Credential::Token(bearer(value).ok_or(AppError::Unauthorized)?)),
        None => Ok(Credential::Session(session_cookie(headers).ok_or(AppError::Unauthorized)?)),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `aura_session` cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokens_file_keeps_only_hashes_and_skips_bad_lines() {
        let hash = to_hex(&digest("secret"));
        let text = format!("# comment\nalice user {hash}\nroot admin {hash}\nbad line\nbob owner {hash}\n");
        let entries = parse_tokens(&text);
        assert_eq!(
            entries.iter().map(|e| (e.name.as_str(), e.admin)).collect::<Vec<_>>(),
            [("alice", false), ("root", true)]
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn a_sessions_file_keeps_sessions_that_name_their_token_and_drops_those_that_name_a_name()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.sessions");
        let (kept, old, token) = (digest("kept"), digest("old"), digest("aura_token"));
        let later = now_secs() + 3600;
        let text = format!("{} {} {later}\n{} alice {later}\n", to_hex(&kept), to_hex(&token), to_hex(&old));
        std::fs::write(&path, text)?;
        let sessions = Sessions::load(path)?;
        assert_eq!(sessions.lookup("kept")?, Some(token));
        assert_eq!(sessions.lookup("old")?, None, "a session tied to a name only is not kept");
        Ok(())
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        assert_eq!(bearer(&HeaderValue::from_static("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&HeaderValue::from_static("bearer abc")), Some("abc"));
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer ")), None);
    }
}
