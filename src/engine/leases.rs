//! Leases on a shared store (PostgreSQL): how a job outlives the node that ran it.
//!
//! One task per node, every third of `AURA_LEASE_SECS`:
//! 1. renews the leases of the jobs this node runs; a job whose lease this node no longer holds
//!    (another node took it over after it expired) has its processes killed here, and its
//!    worker's writes are refused by the attempt's fence (see `lifecycle::JobHandle::fenced`).
//!    A node that could not renew for a whole lease time (it lost the database, or the renewal
//!    timed out: it may take at most a third of the lease, see `Node::guard_timeout`) stops
//!    its jobs itself: by the database's clock they may be another node's already. Losing a
//!    lease is not a cancel: the worker kills the job's processes and appends nothing terminal
//!    (`Engine::lose`), and the job continues as a new attempt after `warning` `node-lost`;
//! 2. turns every expired lease, whichever node held it, into a new attempt of its job (or ends
//!    it, like a restart does on one machine), which waits for any worker node to take it.
//!
//! Every node runs it, API-only nodes too, so a dead worker's jobs continue as long as any node
//! is alive. Times are the database's clock.

use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::engine::lifecycle::{self, Recovered};
use crate::store::ApplyError;

/// Expired leases handled per round.
const SWEEP_LIMIT: u32 = 100;

/// Starts the task on a shared store; `None` with SQLite (one process, no leases).
pub fn spawn(engine: Engine) -> Option<tokio::task::JoinHandle<()>> {
    let node = engine.store().node()?.clone();
    let every = Duration::from_secs_f64((node.lease_secs / 3.0).max(0.2));
    Some(tokio::spawn(async move {
        let shutdown = engine.shutdown_token();
        let lease = Duration::from_secs_f64(node.lease_secs);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let asked = Instant::now();
            if renew(&engine).await {
                renewed = asked;
            } else if renewed.elapsed() >= lease {
                // The leases may have expired by the database's clock: another node may run
                // these jobs already. Stop them here rather than risk two renders of one attempt.
                for (job_id, _) in engine.running_attempts() {
                    engine.lose(job_id);
                }
            }
            sweep(&engine).await;
        }
    }))
}

/// Renews this node's leases; `false` when the database could not be asked.
async fn renew(engine: &Engine) -> bool {
    let mine = engine.running_attempts();
    if mine.is_empty() {
        return true;
    }
    match engine.store().renew_leases(&mine).await {
        Ok(lost) => {
            for job_id in lost {
                engine.lose(job_id);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = mine.len(), "renewing this node's leases failed");
            false
        }
    }
}

async fn sweep(engine: &Engine) {
    let expired = match engine.store().expired_leases(SWEEP_LIMIT).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::warn!(error = %e, "looking for expired leases failed");
            return;
        }
    };
    let max_attempts = engine.settings().max_attempts;
    for job_id in expired {
        match lifecycle::recover_expired(engine.store(), job_id, max_attempts).await {
            Ok(how) => {
                tracing::warn!(%job_id, ?how, "a job's lease expired; it continues as a new attempt");
                if how == Recovered::Resumed {
                    engine.jobs_created().notify_waiters();
                }
            }
            Err(ApplyError::Refused(refusal)) => {
                tracing::debug!(%job_id, %refusal, "an expired lease was dealt with elsewhere")
            }
            Err(e) => tracing::warn!(error = %e, %job_id, "continuing a job whose lease expired failed"),
        }
    }
}
