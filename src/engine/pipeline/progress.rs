//! True progress from ffmpeg, coalesced.
//!
//! ffmpeg runs with `-progress pipe:1 -nostats` and prints `out_time_us=…` blocks on stdout;
//! [`run_with_progress`] turns each into a percent within the stage by comparing it with the
//! media duration the run is expected to produce. [`Reporter`] lets at most one `step-progress`
//! per [`MIN_INTERVAL`] through for a job (five a second); the rest are dropped, never queued,
//! because only the newest value matters and each stage's 100 % is always sent by
//! `JobHandle::complete_stage`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::job::Stage;
use crate::engine::lifecycle::JobHandle;
use crate::engine::process::{Process, ProcessError};

/// The shortest gap between two progress events of one job.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Sends a job's progress events, at most one per [`MIN_INTERVAL`].
pub struct Reporter {
    handle: JobHandle,
    last: Mutex<Option<Instant>>,
}

impl Reporter {
    pub fn new(handle: JobHandle) -> Self {
        Reporter { handle, last: Mutex::new(None) }
    }

    /// Whether an event may go out now; if so, the slot is taken.
    fn take_slot(&self) -> bool {
        let Ok(mut last) = self.last.lock() else { return true };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < MIN_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Reports `pct` percent through `step`, unless an event went out less than
    /// [`MIN_INTERVAL`] ago.
    pub async fn report(&self, step: Stage, pct: f64, message: String) {
        if !self.take_slot() {
            return;
        }
        match self.handle.progress(step, pct, message).await {
            Ok(Ok(_)) => {}
            Ok(Err(refusal)) => tracing::debug!(%refusal, "progress refused"),
            Err(e) => tracing::warn!(error = %e, "progress could not be stored"),
        }
    }
}

/// The microseconds of media written so far, from one `-progress` line. `out_time_ms` is, despite
/// its name, also in microseconds.
pub fn parse_out_time_us(line: &str) -> Option<u64> {
    let (key, value) = line.split_once('=')?;
    match key.trim() {
        "out_time_us" | "out_time_ms" => value.trim().parse().ok(),
        _ => None,
    }
}

/// Where a run sits within its stage: percent `from..to` of the stage while it writes
/// `expected_us` of media.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub from: f64,
    pub to: f64,
    pub expected_us: u64,
}

impl Span {
    pub fn pct(&self, out_us: u64) -> f64 {
        let frac = if self.expected_us == 0 { 1.0 } else { out_us as f64 / self.expected_us as f64 };
        self.from + (self.to - self.from) * frac.clamp(0.0, 1.0)
    }
}

/// Runs an ffmpeg that has `-progress pipe:1 -nostats` in its arguments, reporting progress
/// through `reporter` as it goes: `pct_at` turns the media time written so far into percent of
/// the stage (so runs in parallel can report their combined progress).
pub async fn run_with_progress(
    process: Process,
    reporter: &Reporter,
    step: Stage,
    message: &str,
    pct_at: impl Fn(u64) -> f64,
) -> Result<(), ProcessError> {
    let (tx, mut rx) = watch::channel(None::<u64>);
    let mut on_line = move |line: &str| {
        if let Some(us) = parse_out_time_us(line) {
            tx.send_replace(Some(us));
        }
    };
    let run = process.run_lines(&mut on_line);
    let report = async {
        while rx.changed().await.is_ok() {
            let latest = *rx.borrow_and_update();
            if let Some(us) = latest {
                reporter.report(step, pct_at(us), message.to_owned()).await;
            }
        }
        // The sender went away with the child's stdout: wait for the run to finish.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = run => result,
        () = report => Ok(()),
    }
}

/// The media time each of several parallel runs has written, for their combined percent.
pub struct Shares {
    done_us: Vec<AtomicU64>,
    total_us: u64,
}

impl Shares {
    pub fn new(runs: usize, total_us: u64) -> Self {
        Shares { done_us: (0..runs).map(|_| AtomicU64::new(0)).collect(), total_us }
    }

    /// Records that run `i` has written `us`, and returns percent done over all runs.
    pub fn record(&self, i: usize, us: u64) -> f64 {
        if let Some(slot) = self.done_us.get(i) {
            slot.store(us, Ordering::Relaxed);
        }
        let done: u64 = self.done_us.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        if self.total_us == 0 { 100.0 } else { (done as f64 / self.total_us as f64 * 100.0).min(100.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_time_lines_parse_and_others_do_not() {
        assert_eq!(parse_out_time_us("out_time_us=1500000"), Some(1_500_000));
        assert_eq!(parse_out_time_us("out_time_ms=1500000"), Some(1_500_000));
        assert_eq!(parse_out_time_us("out_time_us=N/A"), None);
        assert_eq!(parse_out_time_us("out_time=00:00:01.500000"), None);
        assert_eq!(parse_out_time_us("progress=end"), None);
    }

    #[test]
    fn shares_add_up_parallel_runs() {
        let shares = Shares::new(2, 4_000_000);
        assert_eq!(shares.record(0, 1_000_000), 25.0);
        assert_eq!(shares.record(1, 2_000_000), 75.0);
        assert_eq!(shares.record(0, 9_000_000), 100.0);
    }

    #[test]
    fn spans_map_media_time_into_the_stage() {
        let s = Span { from: 50.0, to: 100.0, expected_us: 2_000_000 };
        assert_eq!(s.pct(0), 50.0);
        assert_eq!(s.pct(1_000_000), 75.0);
        assert_eq!(s.pct(9_000_000), 100.0);
    }
}
