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

use std::time::Duration;

use tokio::time::Instant;

use crate::engine::Engine;
use crate::engine::lifecycle::{self, Recovered};
use crate::store::ApplyError;

/// Expired leases handled per round.
const SWEEP_LIMIT: u32 = 100;

/// Starts the task on a shared store; `None` with SQLite (one process, no leases).
pub fn spawn(engine: Engine) -> Option<tokio::task::JoinHandle<()>> {
    let node = engine.store().node()?.clone();
    let lease = Duration::from_secs_f64(node.lease_secs);
    Some(tokio::spawn(async move {
        let shutdown = engine.shutdown_token();
        let mut tick = tokio::time::interval(every(lease));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewals = Renewals::new(lease);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let asked = Instant::now();
            let renewed = renew(&engine).await;
            if renewals.record(asked, renewed) == Held::Lost {
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

/// How often a node renews its leases and looks for expired ones: every third of the lease, so
/// that two renewals may fail before a lease runs out.
fn every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(200))
}

/// Whether this node may still count its leases as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Yes,
    /// No renewal succeeded for a whole lease: by the database's clock they may have expired.
    Lost,
}

/// When this node last renewed its leases.
struct Renewals {
    lease: Duration,
    last: Instant,
}

impl Renewals {
    fn new(lease: Duration) -> Renewals {
        Renewals { lease, last: Instant::now() }
    }

    /// Records a renewal asked at `asked`, which succeeded or not.
    fn record(&mut self, asked: Instant, renewed: bool) -> Held {
        if renewed {
            self.last = asked;
            Held::Yes
        } else if self.last.elapsed() >= self.lease {
            Held::Lost
        } else {
            Held::Yes
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokio's paused clock: a node keeps its leases through failed renewals for less than a
    /// whole lease, counted from the last renewal asked that succeeded.
    #[tokio::test(start_paused = true)]
    async fn leases_count_as_lost_only_after_a_whole_lease_without_a_renewal() {
        let lease = Duration::from_secs(30);
        assert_eq!(every(lease), Duration::from_secs(10));
        assert_eq!(every(Duration::from_millis(300)), Duration::from_millis(200), "never a busy loop");
        let mut renewals = Renewals::new(lease);
        let step = || tokio::time::advance(every(lease));

        step().await;
        // Asked now, answered 5 s later: the lease was renewed as of the asking.
        let asked = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(renewals.record(asked, true), Held::Yes);
        for _ in 0..2 {
            step().await;
            assert_eq!(renewals.record(Instant::now(), false), Held::Yes, "less than a lease without");
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(renewals.record(Instant::now(), false), Held::Yes, "29 s since the asking: still held");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(renewals.record(Instant::now(), false), Held::Lost, "a whole lease since the asking");
        assert_eq!(renewals.record(Instant::now(), true), Held::Yes, "renewed again");
        step().await;
        assert_eq!(renewals.record(Instant::now(), false), Held::Yes);
    }
}
