//! Lease upkeep on PostgreSQL: renewing this node's leases, finding expired ones, taking a new
//! attempt that waits for a worker node, and letting go at shutdown. Leases are written with the
//! decisions that start and end attempts (see [`super::writer`]); these are the rest. Times are
//! the database's clock, never a node's.

use uuid::Uuid;

use super::PgLog;
use super::writer::{CLIENT_GRACE, Node, timed_out};
use crate::store::StoreError;

impl PgLog {
    /// Renews this node's leases on `jobs` (job id and attempt); returns the jobs whose lease
    /// this node no longer holds for that attempt (another node took over, or the job ended).
    ///
    /// A renewal that cannot finish within [`Node::guard_timeout`] (a third of the lease) is an
    /// error, never a wait: the server ends the statement itself (`statement_timeout`, so a
    /// lock it waits on is let go on the server too), and should the server not answer at all (a
    /// half-open connection) the connection is dropped a second later. Either way the caller
    /// sees a failed renewal in time to stop its jobs before the lease expires for good.
    pub(in crate::store) async fn renew_leases(
        &self,
        node: &Node,
        jobs: &[(Uuid, u32)],
    ) -> Result<Vec<Uuid>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = jobs.iter().map(|(id, _)| id.to_string()).collect();
        let attempts: Vec<i64> = jobs.iter().map(|(_, a)| i64::from(*a)).collect();
        let bound = node.guard_timeout();
        let mut conn = tokio::time::timeout(bound, self.pool.acquire())
            .await
            .map_err(|_| timed_out("a connection"))??;
        let renewal = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let millis = bound.as_millis().to_string();
            sqlx::query_scalar!("SELECT set_config('statement_timeout', $1, true)", millis)
                .fetch_one(&mut *tx)
                .await?;
            let renewed = sqlx::query_scalar!(
                "UPDATE leases AS l SET expires_at = now() + make_interval(secs => $4)
                 FROM unnest($1::text[], $2::int8[]) AS m(job_id, attempt)
                 WHERE l.job_id = m.job_id AND l.attempt = m.attempt AND l.node = $3
                 RETURNING l.job_id",
                &ids,
                &attempts,
                node.name.as_ref(),
                node.lease_secs
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(renewed)
        };
        let renewed = match tokio::time::timeout(bound + CLIENT_GRACE, renewal).await {
            Ok(renewed) => renewed?,
            Err(_) => {
                // The server did not answer: this connection cannot be trusted again.
                conn.close_on_drop();
                return Err(timed_out("the renewal"));
            }
        };
        Ok(jobs.iter().map(|(id, _)| *id).filter(|id| !renewed.contains(&id.to_string())).collect())
    }

    /// Leases held by a node that has not renewed them in time, oldest first.
    pub(in crate::store) async fn expired_leases(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let ids = sqlx::query_scalar!(
            "SELECT job_id FROM leases WHERE node IS NOT NULL AND expires_at < now()
             ORDER BY expires_at LIMIT $1",
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect())
    }

    /// Takes one attempt that waits for a worker node (its lease has no node), skipping those
    /// another node is taking at this moment.
    pub(in crate::store) async fn take_waiting(&self, node: &Node) -> Result<Option<Uuid>, StoreError> {
        let id = sqlx::query_scalar!(
            "UPDATE leases SET node = $1, expires_at = now() + make_interval(secs => $2)
             WHERE job_id = (SELECT job_id FROM leases WHERE node IS NULL ORDER BY job_id
                             LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING job_id",
            node.name.as_ref(),
            node.lease_secs
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    /// Lets this node's leases expire now (a clean shutdown): other nodes continue its jobs at
    /// once instead of after the lease time.
    pub(in crate::store) async fn release_leases(&self, node: &Node) -> Result<(), StoreError> {
        sqlx::query!("UPDATE leases SET expires_at = now() WHERE node = $1", node.name.as_ref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
