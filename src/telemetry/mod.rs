//! Logging set-up, the metrics Aura exports ([`catalog`]) and the process's shutdown signal.
//!
//! Logs go through `tracing`; each job's pipeline runs in a span carrying its `job_id`
//! (`engine::pipeline::run`), so every line about a job names it.

pub mod catalog;

use tracing_subscriber::EnvFilter;

/// Human-readable logs by default, JSON with `AURA_LOG_FORMAT=json`; `RUST_LOG` filters. Colours
/// only when stderr is a terminal and `NO_COLOR` is not set (no-color.org): a log file or a
/// collector gets plain text.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let colours = colours(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Whether to colour: on a terminal, unless `NO_COLOR` holds anything (an empty value does not
/// count, as no-color.org says).
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "listening for Ctrl-C failed");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for SIGTERM failed");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
