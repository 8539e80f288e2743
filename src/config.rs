//! Typed settings for `aura serve`, read once at start.
//!
//! Every setting is a flag and the same-named `AURA_…` environment variable (API.md), with its
//! default here in code; nothing deeper in the crate reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::Durability;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "AURA_ADDR", default_value = "127.0.0.1:5005")]
    pub addr: SocketAddr,

    /// Folder for the database, each job's work files and rendered videos; created on start.
    #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// SQLite database (`sqlite:path` or a file path); default `<data-dir>/aura.db`.
    #[arg(long, env = "AURA_DATABASE_URL")]
    pub database_url: Option<String>,

    /// `full` (fsync every commit; survives power loss) or `normal` (survives a process crash).
    #[arg(long, env = "AURA_SYNCHRONOUS", value_enum, default_value = "full")]
    pub synchronous: Durability,

    /// Seconds of silence on a stream before a `: keepalive` comment.
    #[arg(long, env = "AURA_HEARTBEAT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Jobs rendered at once; 0 makes an API-only node. Default: half the cores, at least 1.
    #[arg(long, env = "AURA_WORKERS")]
    pub workers: Option<usize>,

    /// Attempts a job gets across server restarts before it fails with `too-many-attempts`.
    #[arg(long, env = "AURA_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Most open event streams in all; past it new streams get 503.
    #[arg(long, env = "AURA_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,

    /// Longest life of one stream in seconds; the client then resumes from its Last-Event-ID.
    #[arg(long, env = "AURA_MAX_STREAM_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_secs: u64,

    /// Events a stream may fall behind the live fan-out before it catches up from the table.
    #[arg(long, env = "AURA_STREAM_BUFFER", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub stream_buffer: u64,

    /// The `retry:` hint sent at the start of every stream, in milliseconds.
    #[arg(long, env = "AURA_RETRY_MS", default_value_t = 3000)]
    pub retry_ms: u64,

    /// The ffmpeg binary.
    #[arg(long, env = "AURA_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,

    /// The ffprobe binary.
    #[arg(long, env = "AURA_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,

    /// Log format: `text` for people, `json` for machines.
    #[arg(long, env = "AURA_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl ServeConfig {
    /// The database location: `--database-url`, else `<data-dir>/aura.db`.
    pub fn database(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("aura.db").to_string_lossy().into_owned())
    }

    /// Worker count with its default applied.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        })
    }

    /// Settings for a test or benchmark: loopback on a free port, everything under `data_dir`.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeConfig,
        }
        // Parsing an empty command line applies exactly the documented defaults.
        let mut cfg = Wrapper::parse_from(["aura"]).serve;
        cfg.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.data_dir = data_dir;
        cfg.database_url = None;
        cfg
    }
}
