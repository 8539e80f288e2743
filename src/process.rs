//! The one place that starts child processes (ffmpeg and ffprobe).
//!
//! A clippy `disallowed-types` entry keeps `tokio::process::Command` out of every other module.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// Why a child process could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{program} did not finish within {secs} s")]
    Timeout { program: String, secs: u64 },
    #[error("{program} failed ({status})")]
    Failed { program: String, status: String, stderr_tail: String },
    #[error("{program} could not be started")]
    Io { program: String, source: std::io::Error },
}

/// The program's file name only: what may be shown to a client.
pub fn program_name(path: &Path) -> String {
    path.file_name().map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The first line of `ffmpeg -version`'s version, e.g. `5.1.6-0+deb12u1`.
pub async fn ffmpeg_version(ffmpeg: &Path) -> Result<String, ProcessError> {
    let program = program_name(ffmpeg);
    let mut cmd = Command::new(ffmpeg);
    cmd.arg("-version").kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
        Err(_) => return Err(ProcessError::Timeout { program, secs: 10 }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProcessError::NotFound(program));
        }
        Ok(Err(e)) => return Err(ProcessError::Io { program, source: e }),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr_tail = stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n");
        return Err(ProcessError::Failed { program, status: out.status.to_string(), stderr_tail });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().and_then(|l| l.split_whitespace().nth(2)).unwrap_or("unknown");
    Ok(version.to_owned())
}
