//! Leases with SQLite: none. One process holds the data folder and runs every job it has, so no
//! job can outlive the node that ran it elsewhere; the answers here are the empty ones the
//! engine's lease task and recovery expect from a store that is not shared.

use uuid::Uuid;

use super::SqliteLog;
use crate::store::StoreError;

impl SqliteLog {
    /// Nothing to renew: no lease is ever lost.
    pub(in crate::store) async fn renew_leases(
        &self,
        _jobs: &[(Uuid, u32)],
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(Vec::new())
    }

    /// No lease expires.
    pub(in crate::store) async fn expired_leases(&self, _limit: u32) -> Result<Vec<Uuid>, StoreError> {
        Ok(Vec::new())
    }

    /// No attempt waits for another node.
    pub(in crate::store) async fn take_waiting(&self) -> Result<Option<Uuid>, StoreError> {
        Ok(None)
    }

    /// Nothing to let go at shutdown.
    pub(in crate::store) async fn release_leases(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
