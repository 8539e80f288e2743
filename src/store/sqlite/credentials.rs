//! Credentials with SQLite: none in the database. One process serves the file, so tokens and
//! browser sessions live in the tokens file and its sessions file beside it, which `access`
//! reads and writes itself (see `access::auth`); the store only says so.

use crate::store::{Credentials, StoreError};

/// Always `None`: this database keeps no credentials.
pub(in crate::store) fn open() -> Result<Option<Credentials>, StoreError> {
    Ok(None)
}
