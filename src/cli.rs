//! The `aura` command line: `aura serve` and the commands beside it.

use clap::{Parser, Subcommand};

use crate::config::ServeConfig;
use crate::startup::Application;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "aura",
    version,
    about = "Aura: briefs in, rendered videos out, every step streamed over lossless SSE"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, event streams and render workers).
    Serve(ServeConfig),
}

/// Runs the command line; the returned code is the process exit code.
pub async fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            telemetry::init(&config.log_format);
            let app = Application::build(config).await?;
            app.run_until(telemetry::shutdown_signal()).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
