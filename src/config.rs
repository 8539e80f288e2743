//! Typed settings for `aura serve`, read once at start.
//!
//! Every setting is a flag and the same-named `AURA_…` environment variable (API.md), with its
//! default here in code; nothing deeper in the crate reads the environment. The database, SQLite
//! or PostgreSQL, is told apart here once ([`Database`]); only the store looks at which it is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::objects::{Location, S3Options};

/// `AURA_SYNC`: how durable a commit is (the store's `Durability`, as a setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// Every commit is on disk before any reader sees its ids: a seen id is never lost. The default.
    Full,
    /// SQLite `synchronous=NORMAL` (WAL), PostgreSQL `synchronous_commit=off`: survives any crash
    /// of the process; a power cut or a kernel crash may lose the last moments.
    Normal,
}

impl Synchronous {
    /// The default when `AURA_SYNC` is not set: `AURA_SYNCHRONOUS`, its former name, if it holds a
    /// valid value, else `full`.
    fn from_former_name() -> Synchronous {
        std::env::var("AURA_SYNCHRONOUS")
            .ok()
            .and_then(|v| <Synchronous as clap::ValueEnum>::from_str(&v, true).ok())
            .unwrap_or(Synchronous::Full)
    }
}

impl std::fmt::Display for Synchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        })
    }
}

/// Where the log lives, told apart once from `AURA_DATABASE_URL` (or the data folder's default):
/// the store opens the one it is given, and nothing else in the crate asks which it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// One SQLite file, named by a path or a `sqlite:` URL: the embedded default, one process.
    Sqlite(String),
    /// A PostgreSQL database several nodes share, named by its `postgres://` URL.
    Postgres(String),
}

impl Database {
    /// A database URL or path, or one line saying why this build cannot serve it (see
    /// [`check_database_url`]).
    pub fn parse(value: &str) -> anyhow::Result<Database> {
        check_database_url(value)?;
        Ok(Database::from(value))
    }

    /// The default: the file `aura.db` in the data folder `data_dir`.
    pub fn in_folder(data_dir: &std::path::Path) -> Database {
        Database::Sqlite(data_dir.join("aura.db").to_string_lossy().into_owned())
    }

    /// The URL or path as given.
    pub fn location(&self) -> &str {
        match self {
            Database::Sqlite(location) | Database::Postgres(location) => location,
        }
    }

    /// [`Database::location`] fit for a log line or an error message: a URL's password is
    /// replaced by `***`.
    pub fn shown(&self) -> String {
        let db = self.location();
        match reqwest::Url::parse(db) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => db.to_owned(),
        }
    }
}

/// Tells the two apart without judging the value: a `postgres://` or `postgresql://` URL is
/// PostgreSQL, anything else names an SQLite file ([`Database::parse`] also refuses unknown
/// schemes).
impl From<&str> for Database {
    fn from(value: &str) -> Database {
        let lower = value.get(..13).unwrap_or(value).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Database::Postgres(value.to_owned())
        } else {
            Database::Sqlite(value.to_owned())
        }
    }
}

impl From<&String> for Database {
    fn from(value: &String) -> Database {
        Database::from(value.as_str())
    }
}

impl From<&Database> for Database {
    fn from(value: &Database) -> Database {
        value.clone()
    }
}

/// `AURA_STREAM_COMPRESSION`: whether event streams may be compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamCompression {
    /// Streams are never compressed. The default.
    Off,
    /// A stream whose request accepts gzip is answered `Content-Encoding: gzip`.
    Gzip,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "AURA_ADDR", default_value = "127.0.0.1:5005")]
    pub addr: SocketAddr,

    /// Folder for the database, each job's work files and rendered videos; created on start.
    #[arg(long, env = "AURA_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// The database: an SQLite file (`sqlite:path` or a file path; default `<data-dir>/aura.db`),
    /// or a `postgres://` URL that several nodes share.
    #[arg(long, env = "AURA_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where finished videos live: `file:///path` or `s3://bucket/prefix` (credentials and
    /// endpoint from the `AWS_*` variables); default `file://<data-dir>`.
    #[arg(long, env = "AURA_STORAGE_URL")]
    pub storage_url: Option<String>,

    /// S3 client settings given in code, over the `AWS_*` environment (tests; no flag).
    #[arg(skip)]
    pub storage_options: S3Options,

    /// `full` (every commit on disk before its ids are seen; survives power loss) or `normal`
    /// (survives a crash of the process). `--synchronous`/`AURA_SYNCHRONOUS` are former names.
    #[arg(long = "sync", alias = "synchronous", env = "AURA_SYNC", value_enum,
          default_value_t = Synchronous::from_former_name())]
    pub synchronous: Synchronous,

    /// Seconds of silence on a stream before a `: keepalive` comment.
    #[arg(long, env = "AURA_HEARTBEAT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Jobs rendered at once; 0 makes an API-only node. Default: half the cores, at least 1.
    #[arg(long, env = "AURA_WORKERS")]
    pub workers: Option<usize>,

    /// Attempts a job gets across interruptions (a restart, a lost node) before it fails with
    /// `too-many-attempts`. The new attempts that follow a wait for disk, store or database do not
    /// count.
    #[arg(long, env = "AURA_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Names this node in leases, logs and metrics (with PostgreSQL). Default: host name and
    /// process id.
    #[arg(long, env = "AURA_NODE_NAME")]
    pub node_name: Option<String>,

    /// With PostgreSQL: a worker node renews its jobs' leases every third of this; a job whose
    /// lease expired continues on another node as a new attempt.
    #[arg(long, env = "AURA_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,

    /// Most open event streams in all; past it new streams get 503.
    #[arg(long, env = "AURA_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,

    /// Longest life of one stream in seconds; the client then resumes from its Last-Event-ID.
    #[arg(long, env = "AURA_MAX_STREAM_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_secs: u64,

    /// Recent events kept in memory, so that a stream resuming among them (or catching up on
    /// them) does not read SQLite; also the chunks a stream served through hyper may queue.
    #[arg(long, env = "AURA_STREAM_BUFFER", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub stream_buffer: u64,

    /// `gzip`: a stream whose request accepts gzip is compressed, flushed after every event or
    /// batch; `off` (the default): never.
    #[arg(long, env = "AURA_STREAM_COMPRESSION", value_enum, default_value = "off")]
    pub stream_compression: StreamCompression,

    /// The `retry:` hint sent at the start of every stream, in milliseconds.
    #[arg(long, env = "AURA_RETRY_MS", default_value_t = 3000)]
    pub retry_ms: u64,

    /// Seconds a connection may take to send a complete request head; then it is closed.
    #[arg(long, env = "AURA_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,

    /// Seconds a keep-alive connection may wait with no request in flight; then it is closed.
    /// An open event stream is never idle.
    #[arg(long, env = "AURA_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,

    /// Seconds a client may take no byte of a response; then the connection is closed (a
    /// stream's client resumes from its Last-Event-ID).
    #[arg(long, env = "AURA_WRITE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub write_timeout_secs: u64,

    /// Most open connections; past it a new connection is closed at once. Default: 90 % of the
    /// open-file limit (raised to its hard limit at start), less a reserve for the database,
    /// files and ffmpeg.
    #[arg(long, env = "AURA_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Seconds a WebSocket may leave a ping unanswered; then it is closed. The server pings
    /// every open socket (a third of this after the last pong).
    #[arg(long, env = "AURA_WS_PONG_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ws_pong_secs: u64,

    /// `true`: a stream asked for as a connection's first request writes straight onto its
    /// socket (the accept loop hands it over). `false`: every stream is served through hyper.
    #[arg(long, env = "AURA_STREAM_TAKEOVER", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub stream_takeover: bool,

    /// The ffmpeg binary.
    #[arg(long, env = "AURA_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,

    /// The ffprobe binary.
    #[arg(long, env = "AURA_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,

    /// The tokens file (`aura token create`); default `<data-dir>/tokens`. While it holds a
    /// token, every `/api` route but health and the session routes needs credentials.
    #[arg(long, env = "AURA_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Most open event streams per owner (tokens only); past it new streams get 429.
    #[arg(long, env = "AURA_MAX_STREAMS_PER_OWNER", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_owner: u64,

    /// Jobs each owner may create per second (tokens only; token bucket, burst 20).
    #[arg(long, env = "AURA_JOB_RATE", default_value_t = 5.0)]
    pub job_rate: f64,

    /// Origins allowed to call the API from a browser (comma-separated, exact); none by default.
    #[arg(long, env = "AURA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Host names this server answers to besides the loopback ones (comma-separated, `name` or
    /// `name:port`): on a loopback address any other `Host` is refused (DNS rebinding).
    #[arg(long, env = "AURA_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Serve without tokens on a non-loopback address (only on a network you trust).
    #[arg(long, env = "AURA_INSECURE_OPEN", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub insecure_open: bool,

    /// Let webhook endpoints be on loopback, private or link-local addresses (refused by default:
    /// a webhook must not reach what only this server can reach).
    #[arg(long, env = "AURA_WEBHOOK_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub webhook_allow_private: bool,

    /// The longest one webhook delivery attempt may take, answer included, in seconds.
    #[arg(long, env = "AURA_WEBHOOK_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_secs: u64,

    /// The wait after a webhook's first failed attempt, in milliseconds; it doubles with each
    /// further failure (with jitter), up to an hour, for 24 hours.
    #[arg(long, env = "AURA_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_base_ms: u64,

    /// Log format: `text` for people, `json` for machines; anything else is refused.
    #[arg(long, env = "AURA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Free space (MiB) the data folder's disk keeps: below it no job is claimed, job creation
    /// answers 507 and health 503, and a job that ran out of space waits for it.
    #[arg(long, env = "AURA_MIN_FREE_MB", default_value_t = 1024)]
    pub min_free_mb: u64,

    /// How long a finished job's video is kept after its terminal event (`7d`, `12h`, `30m`,
    /// `90s`), or `off` (the default) to keep videos for ever.
    #[arg(long, env = "AURA_OUTPUT_RETENTION", default_value = "off", value_parser = parse_retention)]
    pub output_retention: Retention,

    /// How long a finished job is kept after its terminal event, with its events, video and
    /// artifacts (`30d`, `12h`, `90s`), or `off` (the default) to keep every job for ever.
    #[arg(long, env = "AURA_JOB_RETENTION", default_value = "off", value_parser = parse_retention)]
    pub job_retention: Retention,

    /// A folder where job retention first writes each job it deletes, as NDJSON (`aura
    /// export`'s format, one file per job); unset (the default): nothing is written.
    #[arg(long, env = "AURA_RETENTION_EXPORT")]
    pub retention_export: Option<PathBuf>,
}

/// `AURA_OUTPUT_RETENTION`: how long a finished job's video is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// Parses `off`, or a positive whole number with one unit: `d`, `h`, `m` or `s`.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Retention(None));
    }
    let unit_secs = match text.chars().last() {
        Some('d') => 86_400,
        Some('h') => 3_600,
        Some('m') => 60,
        Some('s') => 1,
        _ => return Err("expected `off` or a number with a unit: d, h, m or s (e.g. 7d)".into()),
    };
    let number: u64 = text[..text.len() - 1]
        .parse()
        .map_err(|_| "expected `off` or a whole number with a unit: d, h, m or s (e.g. 7d)".to_owned())?;
    match number.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(Retention(Some(Duration::from_secs(secs)))),
        Some(_) => Err("a retention must be longer than zero; use `off` to keep videos".into()),
        None => Err("that retention is too long".into()),
    }
}

impl ServeConfig {
    /// The database: `--database-url`, else `<data-dir>/aura.db`. Call
    /// [`ServeConfig::check_database_url`] first: this does not judge the value.
    pub fn database(&self) -> Database {
        match &self.database_url {
            Some(url) => Database::from(url),
            None => Database::in_folder(&self.data_dir),
        }
    }

    /// Refuses a database URL this build cannot serve, with one line that says what to do.
    pub fn check_database_url(&self) -> anyhow::Result<()> {
        match &self.database_url {
            Some(url) => check_database_url(url),
            None => Ok(()),
        }
    }

    /// [`ServeConfig::database`] fit for a log line or an error message: a URL's password is
    /// replaced by `***`.
    pub fn database_shown(&self) -> String {
        self.database().shown()
    }

    /// Where finished videos live: `--storage-url`, else the data folder. Call
    /// [`ServeConfig::check_storage_url`] first: an unparsable URL falls back to the data folder.
    pub fn storage(&self) -> Location {
        match self.storage_url.as_deref().map(Location::parse) {
            Some(Ok(location)) => location,
            _ => Location::Folder(self.data_dir.clone()),
        }
    }

    /// Refuses a storage URL this build cannot use, with one line that says what to write.
    pub fn check_storage_url(&self) -> anyhow::Result<()> {
        match self.storage_url.as_deref().map(Location::parse) {
            Some(Err(line)) => Err(anyhow::anyhow!(line)),
            _ => Ok(()),
        }
    }

    /// The tokens file: `--tokens-file`, else `<data-dir>/tokens`.
    pub fn tokens_path(&self) -> PathBuf {
        self.tokens_file.clone().unwrap_or_else(|| self.data_dir.join("tokens"))
    }

    /// Whether the server listens on loopback only (127.0.0.0/8 or ::1).
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }

    /// Worker count with its default applied.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        })
    }

    /// The free-space floor in bytes (`AURA_MIN_FREE_MB`).
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_mb.saturating_mul(1024 * 1024)
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
        cfg.storage_url = None;
        cfg
    }
}

/// A SQLite file path, a `sqlite:` URL or a `postgres://` URL passes; a URL of any other scheme
/// is refused rather
/// than taken for a relative file path (`postgres://user@host/db` would otherwise become the
/// folder `./postgres:` and several "nodes" would share one local file without noticing).
pub fn check_database_url(value: &str) -> anyhow::Result<()> {
    let scheme = value
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| s.len() > 1 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)));
    match scheme.map(str::to_ascii_lowercase).as_deref() {
        None | Some("sqlite") => Ok(()),
        Some("postgres" | "postgresql") if value.contains("://") => Ok(()),
        // A path that merely contains a colon (`data:2026/aura.db`) is still a path.
        Some(_) if !value.contains("://") => Ok(()),
        Some(other) => anyhow::bail!(
            "AURA_DATABASE_URL: unknown scheme {other:?}; use a SQLite file path, a sqlite: URL or \
             a postgres:// URL"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_of_unknown_schemes_are_refused_not_taken_for_paths() {
        for ok in [
            "data/aura.db",
            "/var/lib/aura/aura.db",
            "sqlite:data/aura.db",
            "sqlite:///tmp/a.db",
            "a:b/c.db",
            "postgres://user@host/db",
            "postgresql://h/db",
        ] {
            assert!(check_database_url(ok).is_ok(), "{ok}");
        }
        for bad in ["mysql://h/db", "redis://h", "s3://b/p"] {
            let e = check_database_url(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("AURA_DATABASE_URL:"), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_takes_off_or_a_number_with_a_unit() {
        assert_eq!(parse_retention("off"), Ok(Retention(None)));
        assert_eq!(parse_retention("7d"), Ok(Retention(Some(Duration::from_secs(7 * 86_400)))));
        assert_eq!(parse_retention("12h"), Ok(Retention(Some(Duration::from_secs(12 * 3_600)))));
        assert_eq!(parse_retention("30m"), Ok(Retention(Some(Duration::from_secs(1_800)))));
        assert_eq!(parse_retention("1s"), Ok(Retention(Some(Duration::from_secs(1)))));
        for bad in ["", "7", "d", "0s", "-1h", "1.5h", "7w"] {
            assert!(parse_retention(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
