//! Before PostgreSQL is written to: nothing to look at. There is no file to leave untouched (the
//! server owns its pages and checks them itself), migrations are serialized by the server, and a
//! copy is `pg_dump`'s job, not `aura backup`'s.

use crate::store::{StoreError, Unusable};

/// Always fine: the server refuses what it cannot serve when the store connects.
pub(in crate::store) async fn inspect(_url: &str) -> Result<(), Unusable> {
    Ok(())
}

/// `["ok"]`: PostgreSQL checks its own pages; `aura check` still checks the log against `jobs`.
pub(in crate::store) async fn integrity_check(_url: &str) -> Result<Vec<String>, StoreError> {
    Ok(vec!["ok".to_owned()])
}

/// Refused: a shared database is copied with the server's own tools.
pub(in crate::store) async fn backup(_url: &str, _target: &std::path::Path) -> Result<(), StoreError> {
    Err(StoreError::Unsupported("aura backup copies an SQLite file; copy PostgreSQL with pg_dump"))
}

/// Never: the server is asked when the store connects.
pub(in crate::store) fn missing(_url: &str) -> bool {
    false
}
