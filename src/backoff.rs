//! Waits that double after each failed try, up to a ceiling: how every retry loop in Aura paces
//! itself (the accept loop out of file descriptors, a job waiting for its database or its store,
//! `aura watch` reconnecting), so that none spins and none waits longer than its ceiling.

use std::future::Future;
use std::time::Duration;

/// The next wait of a retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits of `first`, twice that, … up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The wait before the next try; the one after it is twice as long, up to the ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a try that succeeded: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next wait (tokio's clock); `false`, at once, if `stop` resolves first.
    pub async fn wait(&mut self, stop: impl Future<Output = ()>) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            () = stop => false,
            () = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Tokio's paused clock: each wait is measured on the clock, none by sleeping.
    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_ceiling_start_over_after_a_success_and_end_at_a_stop() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut waited = Vec::new();
        for _ in 0..6 {
            let start = Instant::now();
            assert!(backoff.wait(std::future::pending()).await);
            waited.push(start.elapsed().as_millis());
        }
        assert_eq!(waited, [500, 1000, 2000, 4000, 5000, 5000]);

        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(500));

        let stop = tokio_util::sync::CancellationToken::new();
        let start = Instant::now();
        let waiting = backoff.wait(stop.cancelled());
        stop.cancel();
        assert!(!waiting.await, "a stop ends the wait");
        assert_eq!(start.elapsed(), Duration::ZERO, "at once");
    }
}
