//! The `aura` command line: `aura serve` runs the server; the other commands talk to a running
//! server over HTTP (`--server`, `AURA_SERVER`).

pub mod check;
mod client;
mod commands;
pub mod export;
mod import;
pub mod watch;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::access::auth::TokenStore;
use crate::config::ServeConfig;
use crate::startup::Application;
use crate::store::Unusable;
use crate::telemetry;
use client::{CliError, Client};

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

#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// The Aura server to talk to.
    #[arg(long, env = "AURA_SERVER", default_value = "http://127.0.0.1:5005", global = true)]
    pub server: String,
    /// The token to send when the server has tokens (`aura token create`).
    #[arg(long, env = "AURA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Where the tokens file is, as `aura serve` finds it.
#[derive(Debug, clap::Args)]
pub struct TokensFileArg {
    #[arg(long, env = "AURA_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// Default `<data-dir>/tokens`.
    #[arg(long, env = "AURA_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,
    /// A `postgres://` URL keeps the tokens in that database (every node's) instead of the file.
    #[arg(long, env = "AURA_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token named NAME (the owner of the jobs it creates) and print it, once.
    Create {
        name: String,
        /// May see and cancel every job and read /metrics.
        #[arg(long)]
        admin: bool,
    },
    /// List the tokens' names and roles.
    List {
        /// A JSON array of `{"name", "admin"}` instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Remove the token named NAME; its browser sessions end with it.
    Revoke { name: String },
}

/// What `aura jobs` does besides listing.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Delete a finished job with its events, video and artifacts (its owner, or an admin).
    Delete { job: String },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, event streams and render workers).
    // Boxed: the settings are far larger than any other command's arguments.
    Serve(Box<ServeConfig>),
    /// Verify the store: SQLite's full integrity check, every jobs row equals the fold of its
    /// events, no job has two terminal events, completed videos exist with their recorded size.
    /// Exit 0 healthy, 1 not.
    Check {
        #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, env = "AURA_DATABASE_URL")]
        database_url: Option<String>,
        /// Rebuild the jobs table from the events (the log is the truth). With an SQLite file the
        /// server must be stopped (the repair takes the data folder); with PostgreSQL it runs beside
        /// the nodes and is refused if the log grew meanwhile.
        #[arg(long)]
        repair: bool,
        /// Give the space of deleted jobs back to the disk (an SQLite file: VACUUM, and from then
        /// on free pages go back after each deletion). Needs the server stopped.
        #[arg(long)]
        compact: bool,
        /// The report as one JSON object (`healthy`, `jobs`, `events`, `through`, `problems`).
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the database to FILE (which must not exist), also while the
    /// server runs; `aura check --database-url FILE` verifies the copy.
    Backup {
        file: PathBuf,
        #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, env = "AURA_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Write jobs and their complete histories to FILE as NDJSON, one stored event per line in id
    /// order (`-`: standard output), also while the server runs. Every job unless --job or
    /// --before says which.
    Export {
        /// Where to write; the file appears whole once done, or not at all.
        file: PathBuf,
        /// Only this job (repeat for more).
        #[arg(long = "job", value_name = "ID", conflicts_with = "before")]
        jobs: Vec<uuid::Uuid>,
        /// Only jobs created before this time: RFC 3339, or YYYY-MM-DD (midnight UTC).
        #[arg(long, value_name = "DATE", value_parser = export::parse_before)]
        before: Option<time::OffsetDateTime>,
        #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, env = "AURA_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Load an export (`aura export`) into a new database, with the same event ids, and rebuild
    /// every jobs row from the events (`-`: standard input). Refuses a database that has ever had
    /// an event, and writes nothing when any line is wrong. Needs the server stopped.
    Import {
        file: PathBuf,
        #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, env = "AURA_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Print a shell completion script to standard output (e.g. `aura completions bash >
    /// /etc/bash_completion.d/aura`).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to standard output (`aura man > aura.1; man ./aura.1`).
    Man,
    /// Measure this machine: fan-out, idle memory, resume, durable appends, render.
    Bench(crate::bench::BenchArgs),
    /// Manage API tokens (the tokens file; changes apply to a running server at once).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        file: TokensFileArg,
    },
    /// Create a job and print its id (or follow it with --watch).
    Submit {
        #[command(flatten)]
        args: commands::SubmitArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Follow a job live: bars on a terminal, lines otherwise. Exit 0 completed, 1 failed,
    /// 2 cancelled, 130 interrupted.
    Watch {
        job: String,
        /// One JSON event per line (the same objects as /history).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List jobs, newest first; `aura jobs delete ID` deletes a finished one.
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        #[arg(long)]
        status: Option<String>,
        /// Jobs per page (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this cursor: the `next` an earlier page printed.
        #[arg(long)]
        before: Option<String>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
        /// One job snapshot per line as JSON (and the next cursor on stderr) instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a job's snapshot as JSON.
    Show {
        job: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a job's stored events as JSON lines; --follow keeps going until the job ends.
    Events {
        job: String,
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Cancel a job.
    Cancel {
        job: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Webhook endpoints: add, list, remove, deliveries, rotate; and verify a saved request.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Save a completed job's video.
    Download {
        job: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Runs the command line; the returned code is the process exit code.
pub async fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => {
            telemetry::init(&config.log_format);
            let app = match Application::build(*config).await {
                Ok(app) => app,
                Err(e) => {
                    if let Some(unusable) = e.downcast_ref::<Unusable>() {
                        eprintln!("aura: {unusable}");
                        return Ok(ExitCode::from(2));
                    }
                    return Err(e);
                }
            };
            app.run_until(telemetry::shutdown_signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Check { data_dir, database_url, repair, compact, json } => {
            return crate::cli::check::run_cli(&data_dir, database_url, repair, compact, json).await;
        }
        Command::Backup { file, data_dir, database_url } => {
            return crate::cli::check::backup_cli(&data_dir, database_url, &file).await;
        }
        Command::Export { file, jobs, before, data_dir, database_url } => {
            return export::run_cli(&data_dir, database_url, jobs, before, &file).await;
        }
        Command::Import { file, data_dir, database_url } => {
            return import::run_cli(&data_dir, database_url, &file).await;
        }
        Command::Bench(args) => return crate::bench::run(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "aura",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Token { command, file } => return Ok(token(command, &file).await),
        Command::Submit { args, server } => commands::submit(&client(&server)?, args).await,
        Command::Watch { job, json, server } => match commands::parse_id(&job) {
            Ok(id) => watch::watch(&client(&server)?, id, 0, watch::Output::choose(json)).await,
            Err(e) => Err(e),
        },
        Command::Jobs { command: Some(JobsCommand::Delete { job }), server, .. } => {
            commands::delete(&client(&server)?, &job).await
        }
        Command::Jobs { command: None, status, limit, before, all, json, server } => {
            let page = commands::JobsPage { status, limit, before, all, json };
            commands::jobs(&client(&server)?, page).await
        }
        Command::Show { job, server } => commands::show(&client(&server)?, &job).await,
        Command::Events { job, after, follow, server } => {
            commands::events(&client(&server)?, &job, after, follow).await
        }
        Command::Cancel { job, server } => commands::cancel(&client(&server)?, &job).await,
        Command::Webhook { command: webhook::WebhookCommand::Verify { secret, file }, .. } => {
            webhook::verify(&secret, file)
        }
        Command::Webhook { command, server } => webhook::run(&client(&server)?, command).await,
        Command::Download { job, output, server } => {
            commands::download(&client(&server)?, &job, output).await
        }
    };
    match result {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("aura: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `aura token …`: only the token itself goes to stdout, so `$(aura token create ci)` works.
/// With a PostgreSQL database URL the tokens are in the database, else in the tokens file.
async fn token(command: TokenCommand, file: &TokensFileArg) -> ExitCode {
    let path = file.tokens_file.clone().unwrap_or_else(|| file.data_dir.join("tokens"));
    let store = match TokenStore::open(file.database_url.as_deref(), path).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("aura: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = match command {
        TokenCommand::Create { name, admin } => store.create(&name, admin).await.map(|token| {
            println!("{token}");
            eprintln!("aura: token {name:?} created; it is shown only this once");
            true
        }),
        TokenCommand::List { json } => store.list().await.map(|tokens| {
            if json {
                let list: Vec<serde_json::Value> = tokens
                    .iter()
                    .map(|(name, admin)| serde_json::json!({"name": name, "admin": admin}))
                    .collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                for (name, admin) in tokens {
                    println!("{name}\t{}", if admin { "admin" } else { "user" });
                }
            }
            true
        }),
        TokenCommand::Revoke { name } => store.revoke(&name).await.inspect(|&found| {
            if found {
                eprintln!("aura: token {name:?} revoked");
            } else {
                eprintln!("aura: no token is named {name:?}");
            }
        }),
    };
    store.close().await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("aura: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn client(server: &ServerArg) -> Result<Client, CliError> {
    Client::new(&server.server, server.token.as_deref())
}
