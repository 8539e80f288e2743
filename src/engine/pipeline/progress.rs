//! True progress from ffmpeg, coalesced.
//!
//! ffmpeg runs with `-progress pipe:1 -nostats` and prints `out_time_us=…` blocks on stdout;
//! [`run_with_progress`] turns each into a percent within the stage by comparing it with the
//! media duration the run is expected to produce. [`Reporter`] lets at most one `step-progress`
//! per [`MIN_INTERVAL`] through for a job (five a second); the rest are dropped, never queued,
//! because only the newest value matters and each stage's 100 % is always sent by
//! `JobHandle::complete_stage`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::job::Stage;
use crate::engine::lifecycle::JobHandle;
use crate::engine::process::{Process, ProcessError};
use crate::store::ApplyError;
use crate::sync::lock;

/// The shortest gap between two progress events of one job.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Sends a job's progress events, at most one per [`MIN_INTERVAL`], and only for the stage that
/// is running: work that starts ahead of its stage (Visuals' clips while Audio narrates) stays
/// quiet until its stage has been `Started`, so the events read in stage order.
pub struct Reporter {
    handle: JobHandle,
    last: Mutex<Option<Instant>>,
    /// The running stage's position in [`Stage::ALL`] plus one; 0 before the first.
    current: AtomicU8,
}

impl Reporter {
    pub fn new(handle: JobHandle) -> Self {
        Reporter { handle, last: Mutex::new(None), current: AtomicU8::new(0) }
    }

    fn slot_of(step: Stage) -> u8 {
        Stage::ALL.iter().position(|s| *s == step).map_or(0, |i| i as u8 + 1)
    }

    /// Marks `step` as the running stage: its progress goes out from now on, any other's not.
    pub fn enter(&self, step: Stage) {
        self.current.store(Self::slot_of(step), Ordering::Relaxed);
    }

    /// Whether an event may go out now; if so, the slot is taken.
    fn take_slot(&self) -> bool {
        // Progress is advisory: without the limiter every event goes out, as before it had one.
        let Ok(mut last) = lock(&self.last, "progress limiter") else { return true };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < MIN_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Reports `pct` percent through `step`, unless `step` is not the running stage or an event
    /// went out less than [`MIN_INTERVAL`] ago.
    pub async fn report(&self, step: Stage, pct: f64, message: String) {
        if self.current.load(Ordering::Relaxed) != Self::slot_of(step) || !self.take_slot() {
            return;
        }
        match self.handle.progress(step, pct, message).await {
            Ok(_) => {}
            Err(ApplyError::Refused(refusal)) => tracing::debug!(%refusal, "progress refused"),
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
    run_with_progress_say(process, reporter, step, |us| (pct_at(us), message.to_owned())).await
}

/// [`run_with_progress`] whose message is worked out with each report, for runs in parallel
/// whose message says what all of them are doing ([`Shares::message`]).
pub async fn run_with_progress_say(
    process: Process,
    reporter: &Reporter,
    step: Stage,
    report_at: impl Fn(u64) -> (f64, String),
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
                let (pct, message) = report_at(us);
                reporter.report(step, pct, message).await;
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

/// The media time each of several parallel runs has written, for their combined percent, and
/// which runs are in flight, so that one message can say what all of them are doing.
pub struct Shares {
    done_us: Vec<AtomicU64>,
    /// Per run: 0 not started, 1 running, 2 finished.
    state: Vec<AtomicU8>,
    total_us: u64,
}

const RUNNING: u8 = 1;
const FINISHED: u8 = 2;

impl Shares {
    pub fn new(runs: usize, total_us: u64) -> Self {
        Shares {
            done_us: (0..runs).map(|_| AtomicU64::new(0)).collect(),
            state: (0..runs).map(|_| AtomicU8::new(0)).collect(),
            total_us,
        }
    }

    /// Records that run `i` has written `us`, and returns percent done over all runs. A run's
    /// media time only grows, so the combined percent never goes down.
    pub fn record(&self, i: usize, us: u64) -> f64 {
        if let Some(slot) = self.done_us.get(i) {
            slot.fetch_max(us, Ordering::Relaxed);
        }
        self.percent()
    }

    /// Percent done over all runs.
    pub fn percent(&self) -> f64 {
        let done: u64 = self.done_us.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        if self.total_us == 0 { 100.0 } else { (done as f64 / self.total_us as f64 * 100.0).min(100.0) }
    }

    /// Marks run `i` as started.
    pub fn start(&self, i: usize) {
        if let Some(s) = self.state.get(i) {
            s.store(RUNNING, Ordering::Relaxed);
        }
    }

    /// Marks run `i` as finished, with all of its `us` written.
    pub fn finish(&self, i: usize, us: u64) {
        self.record(i, us);
        if let Some(s) = self.state.get(i) {
            s.store(FINISHED, Ordering::Relaxed);
        }
    }

    /// What the runs are doing, as the drawer's log shows it: "Rendering scenes 1–2 of 5",
    /// "Rendering scene 5 of 5 (4 done)", "5 of 5 scenes done". Runs are numbered from 1;
    /// `noun` is singular.
    pub fn message(&self, verb: &str, noun: &str) -> String {
        let n = self.state.len();
        let running: Vec<usize> =
            (0..n).filter(|&i| self.state[i].load(Ordering::Relaxed) == RUNNING).map(|i| i + 1).collect();
        let finished = self.state.iter().filter(|s| s.load(Ordering::Relaxed) == FINISHED).count();
        let which = match running.as_slice() {
            [] => return format!("{finished} of {n} {noun}s done"),
            [one] => format!("{noun} {one}"),
            [first, .., last] if last - first + 1 == running.len() => format!("{noun}s {first}–{last}"),
            [init @ .., last] => {
                let init: Vec<String> = init.iter().map(usize::to_string).collect();
                format!("{noun}s {} and {last}", init.join(", "))
            }
        };
        let done = if finished > 0 { format!(" ({finished} done)") } else { String::new() };
        format!("{verb} {which} of {n}{done}")
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

    #[test]
    fn shares_never_go_back_when_a_run_reports_an_older_time() {
        let shares = Shares::new(2, 4_000_000);
        assert_eq!(shares.record(0, 2_000_000), 50.0);
        assert_eq!(shares.record(0, 1_000_000), 50.0);
    }

    #[test]
    fn the_message_names_every_scene_in_flight_at_once() {
        let shares = Shares::new(5, 5_000_000);
        shares.start(0);
        assert_eq!(shares.message("Rendering", "scene"), "Rendering scene 1 of 5");
        shares.start(1);
        assert_eq!(shares.message("Rendering", "scene"), "Rendering scenes 1–2 of 5");
        shares.finish(0, 1_000_000);
        shares.start(2);
        assert_eq!(shares.message("Rendering", "scene"), "Rendering scenes 2–3 of 5 (1 done)");
        shares.finish(2, 1_000_000);
        shares.start(3);
        assert_eq!(shares.message("Rendering", "scene"), "Rendering scenes 2 and 4 of 5 (2 done)");
        for i in 0..5 {
            shares.finish(i, 1_000_000);
        }
        assert_eq!(shares.message("Rendering", "scene"), "5 of 5 scenes done");
        assert_eq!(shares.percent(), 100.0);
    }
}
