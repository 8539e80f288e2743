//! The one place that starts child processes (ffmpeg and ffprobe).
//!
//! Every child runs in its own process group with `kill_on_drop`, under a deadline and a
//! cancellation token: when either fires, the whole group gets SIGTERM and, one second later,
//! SIGKILL, so nothing a stage started outlives it. Errors are typed so the pipeline can tell a
//! missing binary from a failing one; the stderr tail goes to the log, never to a client.
//! A clippy `disallowed-types` entry keeps `tokio::process::Command` out of every other module.
//!
//! **Only its own.** Because children run in their own groups they survive a SIGKILL of the
//! server, and the next start must stop them ([`kill_recorded_orphans`]). It must stop nothing
//! else — an operator's shell in a job folder included — so it never looks at working folders or
//! arguments: a child started for a job records its group (its id, its leader's start time in
//! clock ticks since boot, the boot's id and the attempt) in `<job>/work/processes/<pgid>` while it
//! runs, and only a group whose leader still has that start time in that boot is killed.
#![allow(clippy::disallowed_types)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a group has to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How many stderr lines are kept for the log when a child fails.
const STDERR_TAIL_LINES: usize = 12;

/// Why a child process could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0} was not found or is not executable")]
    NotFound(String),
    #[error("{program} did not finish within {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("{program} failed ({status})")]
    Failed { program: String, status: String, stderr_tail: String },
    #[error("{program} was cancelled")]
    Cancelled { program: String },
    #[error("{program} could not be started")]
    Io { program: String, source: std::io::Error },
}

/// The program's file name only: what may be shown to a client.
pub fn program_name(path: &Path) -> String {
    path.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// A child process to run: program, arguments, working folder, deadline and cancel token.
pub struct Process {
    program: PathBuf,
    args: Vec<OsString>,
    current_dir: Option<PathBuf>,
    timeout: Duration,
    cancel: CancellationToken,
    job_id: Option<Uuid>,
    /// Where the child's group is recorded while it runs, and for which attempt.
    record: Option<(PathBuf, u32)>,
}

/// What a finished child wrote to stdout (when it was not consumed line by line).
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
}

impl Process {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Process {
            program: program.into(),
            args: Vec::new(),
            current_dir: None,
            timeout: Duration::from_secs(60),
            cancel: CancellationToken::new(),
            job_id: None,
            record: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the child in `dir`, so filter arguments can name work files by short, safe names.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    pub fn job(mut self, job_id: Uuid) -> Self {
        self.job_id = Some(job_id);
        self
    }

    /// Records the child's process group in `dir` (a job's `work/processes`) while it runs, so
    /// that the next start can stop it if this server dies first (see [`kill_recorded_orphans`]).
    pub fn recorded_in(mut self, dir: impl Into<PathBuf>, attempt: u32) -> Self {
        self.record = Some((dir.into(), attempt));
        self
    }

    /// Runs to the end and returns its stdout.
    pub async fn output(self) -> Result<Output, ProcessError> {
        let mut stdout = Vec::new();
        self.run_inner(Sink::Collect(&mut stdout)).await?;
        Ok(Output { stdout })
    }

    /// Runs to the end, handing each stdout line to `on_line` as it arrives (ffmpeg's
    /// `-progress pipe:1`).
    pub async fn run_lines(self, on_line: &mut (dyn FnMut(&str) + Send)) -> Result<(), ProcessError> {
        self.run_inner(Sink::Lines(on_line)).await
    }

    #[tracing::instrument(
        name = "process",
        skip_all,
        fields(program = %program_name(&self.program), job_id = tracing::field::Empty)
    )]
    async fn run_inner(self, sink: Sink<'_>) -> Result<(), ProcessError> {
        if let Some(job_id) = self.job_id {
            tracing::Span::current().record("job_id", tracing::field::display(job_id));
        }
        let program = program_name(&self.program);
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        tracing::debug!(args = ?self.args, "starting");
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            // Not there, or there but not executable: either way the binary is missing.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Err(ProcessError::NotFound(program));
            }
            Err(e) => return Err(ProcessError::Io { program, source: e }),
        };
        let _running = RunningGauge::new();
        let _record = match (&self.record, child.id()) {
            (Some((dir, attempt)), Some(pid)) => GroupRecord::write(dir, pid, *attempt),
            _ => None,
        };
        let stderr = child.stderr.take().map(|s| tokio::spawn(stderr_tail(s)));
        let stdout = child.stdout.take();
        let work = async {
            if let Some(stdout) = stdout {
                read_stdout(stdout, sink).await;
            }
            child.wait().await
        };
        let outcome = tokio::select! {
            status = work => Ok(status),
            () = tokio::time::sleep(self.timeout) => Err(ProcessError::Timeout {
                program: program.clone(),
                secs: self.timeout.as_secs(),
            }),
            () = self.cancel.cancelled() => Err(ProcessError::Cancelled { program: program.clone() }),
        };
        let status = match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(ProcessError::Io { program, source: e }),
            Err(stopped) => {
                stop_group(&mut child).await;
                tracing::info!(reason = %stopped, "stopped the process group");
                return Err(stopped);
            }
        };
        let tail = match stderr {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        if status.success() {
            Ok(())
        } else {
            tracing::warn!(%status, stderr_tail = %tail, "child failed");
            Err(ProcessError::Failed { program, status: status.to_string(), stderr_tail: tail })
        }
    }
}

/// Where a child's stdout goes.
enum Sink<'a> {
    Collect(&'a mut Vec<u8>),
    Lines(&'a mut (dyn FnMut(&str) + Send)),
}

async fn read_stdout(stdout: impl AsyncRead + Unpin, sink: Sink<'_>) {
    match sink {
        Sink::Collect(buf) => {
            let mut stdout = stdout;
            if let Err(e) = stdout.read_to_end(buf).await {
                tracing::debug!(error = %e, "reading stdout");
            }
        }
        Sink::Lines(on_line) => {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                on_line(&line);
            }
        }
    }
}

/// Keeps the last lines of stderr (read to the end so the child never blocks on a full pipe).
async fn stderr_tail(stderr: impl AsyncRead + Unpin) -> String {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join("\n")
}

/// SIGTERM to the child's whole group, SIGKILL after [`TERM_GRACE`], then reaps the child.
async fn stop_group(child: &mut Child) {
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return; // Already reaped.
    };
    let group = Pid::from_raw(pid);
    if killpg(group, Signal::SIGTERM).is_err() {
        let _ = child.kill().await;
        return;
    }
    if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    } else {
        // The leader is gone; anything else it started goes with the group.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// The first line of `ffmpeg -version`'s version, e.g. `5.1.6-0+deb12u1`.
pub async fn ffmpeg_version(ffmpeg: &Path) -> Result<String, ProcessError> {
    let out = Process::new(ffmpeg).arg("-version").timeout(Duration::from_secs(10)).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().and_then(|l| l.split_whitespace().nth(2)).unwrap_or("unknown");
    Ok(version.to_owned())
}

/// Keeps `aura_ffmpeg_processes` (children running now) true while a child runs.
struct RunningGauge;

impl RunningGauge {
    fn new() -> Self {
        metrics::gauge!("aura_ffmpeg_processes").increment(1.0);
        RunningGauge
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        metrics::gauge!("aura_ffmpeg_processes").decrement(1.0);
    }
}

/// The record of one running child's process group: `<dir>/<pgid>` holding
/// `<boot id> <leader start ticks> <attempt>`. Removed when the child has ended.
struct GroupRecord {
    path: PathBuf,
}

impl GroupRecord {
    /// Writes the record of the group `pid` leads; `None` (logged) when it cannot.
    fn write(dir: &Path, pid: u32, attempt: u32) -> Option<GroupRecord> {
        let (Some(boot), Some(start)) = (boot_id(), start_ticks(pid)) else {
            tracing::warn!(pid, "cannot tell a child's start time; it is not recorded");
            return None;
        };
        let path = dir.join(pid.to_string());
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, format!("{boot} {start} {attempt}\n")));
        match written {
            Ok(()) => Some(GroupRecord { path }),
            Err(e) => {
                tracing::warn!(pid, error = %e, "recording a child's process group failed");
                None
            }
        }
    }
}

impl Drop for GroupRecord {
    fn drop(&mut self) {
        // The folder stays: another child of the job may be recording itself there right now.
        // It goes with the job's work files.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This boot's id: start times count from the boot, so a record of another boot names nothing.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after its last `)`
    // start with the state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills (SIGKILL, whole process group) the children a previous server started for the jobs
/// under `jobs_dir` and left running when it died: each group recorded in a job's
/// `work/processes` folder whose leader is still the process that was recorded (same pid, same start time, same
/// boot) and still leads its group. Nothing else is touched, whatever its working folder or
/// arguments. Every record is removed. Returns how many groups were killed.
///
/// A group whose leader has exited is left alone: its number may by now belong to someone
/// else. Aura's children are ffmpeg and ffprobe, which lead their groups until they end.
pub fn kill_recorded_orphans(jobs_dir: &Path) -> usize {
    let Ok(jobs) = std::fs::read_dir(jobs_dir) else { return 0 };
    let boot = boot_id();
    let mine = nix::unistd::getpgrp();
    let mut killed = 0;
    for job in jobs.flatten() {
        let dir = job.path().join("work").join("processes");
        let Ok(records) = std::fs::read_dir(&dir) else { continue };
        for record in records.flatten() {
            let path = record.path();
            let target = std::fs::read_to_string(&path).ok().and_then(|text| {
                let pgid: u32 = record.file_name().to_str()?.parse().ok()?;
                let mut fields = text.split_whitespace();
                let (recorded_boot, start) = (fields.next()?, fields.next()?.parse::<u64>().ok()?);
                let same = boot.as_deref() == Some(recorded_boot) && start_ticks(pgid) == Some(start);
                let pid = Pid::from_raw(i32::try_from(pgid).ok()?);
                // Still the leader of its own group, and never the server's group.
                let leads = nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == pid && g != mine);
                (same && leads).then_some(pid)
            });
            if let Some(pgid) = target {
                tracing::warn!(
                    pgid = pgid.as_raw(),
                    "killing a process group a previous run started and left behind"
                );
                if killpg(pgid, Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    killed
}

/// Starts a long-running child (a server for `aura bench`): its own process group, killed
/// when the handle is dropped, standard streams discarded.
pub fn spawn_background(
    program: &Path,
    args: &[OsString],
    env: &[(&str, String)],
) -> Result<Child, ProcessError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    cmd.spawn().map_err(|e| ProcessError::Io { program: program_name(program), source: e })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Processes whose command line contains `needle`.
    fn alive(needle: &str) -> bool {
        std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").contains(needle))
        })
    }

    #[tokio::test]
    async fn cancelling_kills_the_whole_group_including_grandchildren() {
        let marker = format!("{}.{}", 600 + std::process::id() % 100, std::process::id());
        let cancel = CancellationToken::new();
        let run = Process::new("sh")
            .args(["-c", &format!("sleep {marker} & sleep {marker}; wait")])
            .cancel_on(cancel.clone())
            .output();
        let started = Instant::now();
        let (result, ()) = tokio::join!(run, async {
            while !alive(&format!("sleep {marker}")) {
                tokio::task::yield_now().await;
            }
            cancel.cancel();
        });
        assert!(matches!(result, Err(ProcessError::Cancelled { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // SIGKILL is delivered at once, but a loaded machine may take a moment to schedule the
        // exits: the grandchild must be gone within a bound, not at this very instant.
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(&format!("sleep {marker}")) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(&format!("sleep {marker}")), "a grandchild survived the cancel");
    }

    #[tokio::test]
    async fn a_child_past_its_deadline_is_stopped_with_a_timeout() {
        let result = Process::new("sleep").arg("30").timeout(Duration::from_millis(200)).output().await;
        assert!(matches!(result, Err(ProcessError::Timeout { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn failures_keep_the_stderr_tail_and_missing_programs_are_not_found() {
        let result = Process::new("sh").args(["-c", "echo oops >&2; exit 3"]).output().await;
        match result {
            Err(ProcessError::Failed { stderr_tail, status, .. }) => {
                assert_eq!(stderr_tail, "oops");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let missing = Process::new("/nonexistent/aura/ffmpeg").output().await;
        assert!(matches!(missing, Err(ProcessError::NotFound(ref p)) if p == "ffmpeg"), "{missing:?}");
    }
}
