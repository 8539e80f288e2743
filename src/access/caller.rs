//! Who a caller is, once its credential has been checked ([`Caller`], [`Role`], the one
//! ownership rule), and what both places that check credentials share: the token files
//! (`auth`) and the database (`database`) hash secrets and make session ids the same way.
//! It sits below both, so that they import it and not each other.

use sha2::{Digest, Sha256};

use crate::domain::job::{JobState, LOCAL_OWNER};
use crate::error::AppError;

/// The session cookie's name (API.md).
pub const SESSION_COOKIE: &str = "aura_session";
/// How long a browser session lasts.
pub const SESSION_SECS: u64 = 30 * 24 * 3600;

/// A credential a request presents: a bearer token or a session cookie's id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Credential<'a> {
    Token(&'a str),
    Session(&'a str),
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No tokens are configured: the single local user, who may do everything.
    Open,
    /// A token's owner: sees and acts on its own jobs.
    User,
    /// An admin token: sees and may cancel every job, reads `/metrics`.
    Admin,
}

/// The authenticated caller of an `/api` request, put in the request's extensions by the
/// credentials middleware (`http::router`).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The owner name jobs created by this caller get.
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub(crate) fn open() -> Self {
        Caller { name: LOCAL_OWNER.to_owned(), role: Role::Open }
    }

    /// Whether this caller sees every job (admin, or open mode).
    pub fn sees_all(&self) -> bool {
        matches!(self.role, Role::Open | Role::Admin)
    }

    /// Whether per-owner limits apply (only with tokens).
    pub fn is_limited(&self) -> bool {
        self.role != Role::Open
    }

    /// The label of the open-streams gauge: `open`, `user` or `admin`.
    pub fn class(&self) -> &'static str {
        match self.role {
            Role::Open => "open",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// `403` unless this caller may see and act on `job`. Callers check this right after
    /// loading the job, before answering anything else about it.
    pub fn check_owns(&self, job: &JobState) -> Result<(), AppError> {
        if self.sees_all() || job.owner == self.name {
            Ok(())
        } else {
            Err(AppError::Forbidden("this job belongs to another owner".into()))
        }
    }
}

/// The SHA-256 of a secret (a token or a session id).
pub(crate) fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Bytes as lower-case hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits from the operating system's CSPRNG, as hex.
pub(crate) fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading the system random source: {e}"))?;
    Ok(to_hex(&bytes))
}
