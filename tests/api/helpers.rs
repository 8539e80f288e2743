//! Starts the real application on 127.0.0.1:0 with its own SQLite file, and talks to it.
//!
//! With `AURA_TEST_BACKEND=postgres` every app and server process these tests start gets a fresh
//! PostgreSQL database instead (one per data folder, so a restart finds its own again): `.ci/run`
//! runs the whole suite once per backend. Tests of what only SQLite has (its file, its pragmas,
//! a restart's recovery on one machine) say so and return early there.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use aura::config::ServeConfig;
use aura::http::state::AppState;
use aura::startup::Application;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Upper bound for any wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits for a condition, not a time: runs `check` until it returns `Ok`, and returns that
/// value; a check that fails (with [`holds`] or any error, `?` included) is tried again, soon
/// at first and then every 100 ms. A check that began before `bound` passed may finish (the
/// answer that makes the condition true can be a slow one, as a lookup against a database that
/// is away), but one that hangs is cut off after [`WAIT`]. Once `bound` has passed, fails with
/// the caller's file and line and the last failure, so a test that times out says what it last
/// saw.
#[track_caller]
pub fn eventually<T, F, Fut>(bound: Duration, mut check: F) -> impl Future<Output = TestResult<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = TestResult<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + bound;
        let mut pause = Duration::from_millis(5);
        let mut last = String::from("no check ended");
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left.max(WAIT), check()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("a check did not answer; the one before saw: {last}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{caller}: still not so after {bound:?}: {last}").into());
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// In a check of [`eventually`]: `Ok` when `condition` holds, else a failure saying what the
/// check saw.
pub fn holds(condition: bool, saw: impl FnOnce() -> String) -> TestResult {
    if condition { Ok(()) } else { Err(saw().into()) }
}

/// A small, fast job: 480p at 10 fps, 3 s, the fastest encoder settings, MP4/H.264.
pub fn small_job(topic: &str) -> Value {
    serde_json::json!({
        "brief": {"topic": topic, "audience": "Testers", "aspect": "Widescreen16x9"},
        "planSpec": {"targetDuration": "00:00:03", "pacing": "Fast"},
        "voiceSpec": {"voiceName": "David"},
        "renderSpec": {"res": "480p", "container": "mp4", "codec": "h264", "fps": 10,
                       "videoBitrateK": 400, "audioBitrateK": 64, "qualityLevel": "Draft"}
    })
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts an API-only node (no render workers) with default settings.
pub async fn spawn_app() -> TestResult<TestApp> {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut ServeConfig)) -> TestResult<TestApp> {
    spawn_app_in(tempfile::tempdir()?, tweak).await
}

/// Starts the app on a folder an earlier app used (see [`TestApp::keep_dir`]), to see what a
/// restart finds.
pub async fn spawn_app_in(
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut ServeConfig),
) -> TestResult<TestApp> {
    init_logs();
    let home = dir.path().join("data");
    let mut cfg = ServeConfig::for_data_dir(home.clone());
    cfg.workers = Some(0);
    // Set before the tweak, so that a tweak which stores tokens finds the database.
    if on_postgres() {
        cfg.database_url = Some(postgres_database_for(dir.path()).await?);
    }
    let assigned = cfg.database_url.clone();
    tweak(&mut cfg);
    if on_postgres() && cfg.data_dir != home && cfg.database_url == assigned {
        // An app started on an earlier app's data folder finds that app's database.
        if let Some(parent) = cfg.data_dir.parent() {
            cfg.database_url = Some(postgres_database_for(parent).await?);
        }
    }
    let app = Application::build(cfg).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    Ok(TestApp { base, client, state, dir, stop: Some(stop), server: Some(server) })
}

/// Whether this run puts every app on PostgreSQL (`AURA_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("AURA_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// For a test of what only the SQLite store has (its file, its pragmas, another process
/// writing to it, recovery at the start of the one process that holds the data folder): `true`
/// on a PostgreSQL run, which then skips it and says so. The PostgreSQL counterparts are in
/// `postgres` and `cluster`.
pub fn sqlite_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL (SQLite only: {what})");
    }
    on_postgres()
}

/// Where an app keeps its tokens: the tokens file in its data folder on SQLite, its database on
/// PostgreSQL (as `aura token` does). Usable before the app starts, from a config tweak.
#[derive(Clone)]
pub struct Tokens {
    database_url: Option<String>,
    file: PathBuf,
}

impl Tokens {
    /// The tokens of the app configured by `cfg` (its default tokens file).
    pub fn of(cfg: &ServeConfig) -> Tokens {
        Tokens { database_url: cfg.database_url.clone(), file: cfg.data_dir.join("tokens") }
    }

    /// Stores a new token and returns it.
    pub fn create(&self, name: &str, admin: bool) -> anyhow::Result<String> {
        let name = name.to_owned();
        self.with_store(move |store| Box::pin(async move { store.create(&name, admin).await }))
    }

    /// Removes a token; `false` when there was none.
    pub fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        let name = name.to_owned();
        self.with_store(move |store| Box::pin(async move { store.revoke(&name).await }))
    }

    /// Runs `op` on the token store from a thread of its own, so that it works in a sync config
    /// tweak and inside a test's runtime alike.
    fn with_store<T: Send + 'static>(
        &self,
        op: impl for<'a> FnOnce(
            &'a aura::access::auth::TokenStore,
        )
            -> Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send + 'a>>
        + Send
        + 'static,
    ) -> anyhow::Result<T> {
        let place = self.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let store =
                    aura::access::auth::TokenStore::open(place.database_url.as_deref(), place.file).await?;
                let done = op(&store).await;
                store.close().await;
                done
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the token store's thread panicked"))?
    }
}

/// The PostgreSQL database of a data folder's parent: created on first use, and remembered in
/// the folder, so that an app restarted on the same folder finds the same database.
pub async fn postgres_database_for(dir: &std::path::Path) -> TestResult<String> {
    let remembered = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return Ok(url);
    }
    let url = crate::postgres::database().await?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(&remembered, &url)?;
    Ok(url)
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        aura::telemetry::init("text");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_path("aura.db")
    }

    /// A path inside the data folder.
    pub fn data_path(&self, relative: &str) -> PathBuf {
        self.dir.path().join("data").join(relative)
    }

    /// Moves the data folder's ownership out, so it outlives `stop`.
    pub fn keep_dir(&mut self) -> TestResult<tempfile::TempDir> {
        Ok(std::mem::replace(&mut self.dir, tempfile::tempdir()?))
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server).await???;
        }
        Ok(())
    }

    pub async fn post_job(&self, body: &Value) -> TestResult<reqwest::Response> {
        Ok(self.client.post(self.url("/api/jobs")).json(body).send().await?)
    }

    /// Creates a job with only a topic and returns its id.
    pub async fn create_job(&self, topic: &str) -> TestResult<Uuid> {
        let res = self.post_job(&serde_json::json!({"brief": {"topic": topic}})).await?;
        assert_eq!(res.status(), 201, "creating a job");
        let body: Value = res.json().await?;
        Ok(body["jobId"].as_str().ok_or("no jobId")?.parse()?)
    }

    /// Creates a job from a full request body and returns its id.
    pub async fn create(&self, body: &Value) -> TestResult<Uuid> {
        let res = self.post_job(body).await?;
        if res.status() != 201 {
            return Err(format!("create answered {}", res.status()).into());
        }
        let body: Value = res.json().await?;
        Ok(body["jobId"].as_str().ok_or("no jobId")?.parse()?)
    }

    /// The job's snapshot.
    pub async fn job(&self, job_id: Uuid) -> TestResult<Value> {
        Ok(self.get_json(&format!("/api/jobs/{job_id}")).await?.1)
    }

    /// Asks for a cancel; returns the status code.
    pub async fn cancel(&self, job_id: Uuid) -> TestResult<u16> {
        Ok(self.client.post(self.url(&format!("/api/jobs/{job_id}/cancel"))).send().await?.status().as_u16())
    }

    /// The job's output, whole or the `Range` given.
    pub async fn output(&self, job_id: Uuid, range: Option<&str>) -> TestResult<reqwest::Response> {
        let mut req = self.client.get(self.url(&format!("/api/jobs/{job_id}/output")));
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        Ok(req.send().await?)
    }

    /// Follows the job's event stream until `stop` says so or the stream ends (after the
    /// terminal event); returns the events seen. Callers bound it with a timeout.
    pub async fn follow(&self, job_id: Uuid, mut stop: impl FnMut(&Sse) -> bool) -> TestResult<Vec<Sse>> {
        let mut stream = self.stream(&format!("/api/jobs/{job_id}/events"), &[]).await?;
        if stream.status != 200 {
            return Err(format!("events answered {}", stream.status).into());
        }
        let mut seen = Vec::new();
        while let Some((id, kind, data)) = stream.next_event().await? {
            if let Some(last) = seen.last().map(|e: &Sse| e.id)
                && id <= last
            {
                return Err(format!("event id {id} came after {last}").into());
            }
            let event = Sse { id, kind, data };
            let done = stop(&event);
            seen.push(event);
            if done {
                break;
            }
        }
        Ok(seen)
    }

    /// Waits up to `bound` for the job to end and returns its snapshot.
    pub async fn finished(&self, job_id: Uuid, bound: Duration) -> TestResult<Value> {
        tokio::time::timeout(bound, self.follow(job_id, |_| false))
            .await
            .map_err(|_| format!("job {job_id} did not end within {bound:?}"))??;
        self.job(job_id).await
    }

    pub async fn get_json(&self, path: &str) -> TestResult<(u16, Value)> {
        let res = self.client.get(self.url(path)).send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await?))
    }

    pub async fn history(&self, job_id: Uuid) -> TestResult<Vec<Value>> {
        let (status, body) = self.get_json(&format!("/api/jobs/{job_id}/history?limit=10000")).await?;
        assert_eq!(status, 200);
        Ok(body.as_array().ok_or("history is not an array")?.clone())
    }

    /// Opens an event stream with optional extra headers.
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> TestResult<SseStream> {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await?;
        Ok(SseStream::new(res))
    }

    /// Opens an event stream on a connection that has already served a request, so that hyper
    /// serves the stream (the server only takes over a connection whose first request is one).
    pub async fn stream_on_reused_connection(&self, path: &str) -> TestResult<SseStream> {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
        client.get(self.url("/api/health")).send().await?.bytes().await?;
        Ok(SseStream::new(client.get(self.url(path)).send().await?))
    }

    /// `/metrics` as exposed, without the `node` label every series carries (see
    /// [`without_node`]).
    pub async fn metrics(&self) -> TestResult<String> {
        Ok(without_node(&self.client.get(self.url("/metrics")).send().await?.text().await?))
    }

    /// The value of one Prometheus sample (`name{labels}` as exposed, leaving out `node`), 0
    /// when absent.
    pub async fn metric(&self, sample: &str) -> TestResult<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .map_or(Ok(0.0), |v| v.trim().parse())?)
    }

    /// `(events rows, jobs rows)` counted with plain SQL.
    pub async fn table_counts(&self) -> TestResult<(i64, i64)> {
        if let Some(mut conn) = self.pg().await? {
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
            let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&mut conn).await?;
            return Ok((events, jobs));
        }
        let mut conn = self.sql().await?;
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&mut conn).await?;
        Ok((events, jobs))
    }

    /// A separate SQLite connection to the same file, as another process would open it.
    pub async fn sql(&self) -> TestResult<sqlx::SqliteConnection> {
        use sqlx::ConnectOptions;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.db_path())
            .busy_timeout(Duration::from_secs(10));
        Ok(opts.connect().await?)
    }

    /// A connection to the app's PostgreSQL database, when it has one.
    pub async fn pg(&self) -> TestResult<Option<sqlx::PgConnection>> {
        use sqlx::Connection;
        match self.state.settings().database_url.as_deref() {
            Some(url) if matches!(aura::config::Database::from(url), aura::config::Database::Postgres(_)) => {
                Ok(Some(sqlx::PgConnection::connect(url).await?))
            }
            _ => Ok(None),
        }
    }

    /// Event ids of one job read with plain SQL.
    pub async fn sql_event_ids(&self, job_id: Uuid) -> TestResult<Vec<i64>> {
        if let Some(mut conn) = self.pg().await? {
            return Ok(sqlx::query_scalar("SELECT id FROM events WHERE job_id = $1 ORDER BY id")
                .bind(job_id.to_string())
                .fetch_all(&mut conn)
                .await?);
        }
        let mut conn = self.sql().await?;
        Ok(sqlx::query_scalar("SELECT id FROM events WHERE job_id = ? ORDER BY id")
            .bind(job_id.to_string())
            .fetch_all(&mut conn)
            .await?)
    }
}

/// Prometheus text without the `node="…"` label of each series, so that a test names a sample
/// by its own labels (`aura_jobs{status="Queued"}`) whatever the node is called.
pub fn without_node(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let Some(start) = line.find("node=\"") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let value_end = line[start + 6..].find('"').map_or(line.len(), |e| start + 6 + e + 1);
        let (mut before, mut after) = (line[..start].to_owned(), line[value_end..].to_owned());
        if let Some(rest) = after.strip_prefix(',') {
            after = rest.to_owned();
        } else if before.ends_with(',') {
            before.pop();
        }
        let joined = format!("{before}{after}");
        out.push_str(&joined.replace("{}", ""));
        out.push('\n');
    }
    out
}

/// One event of a stream, its data parsed.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

/// One item of an SSE response, parsed as the WHATWG EventSource algorithm does.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Event { id: Option<String>, event: String, data: String },
    Comment(String),
    Retry(u64),
}

pub struct SseStream {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseStream {
    pub fn new(res: reqwest::Response) -> Self {
        SseStream {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            id: None,
            event: None,
            data: None,
        }
    }

    /// The next item, `None` when the server ended the response.
    pub async fn next(&mut self) -> TestResult<Option<SseItem>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8(line[..line.len() - 1].to_vec())?;
                if let Some(item) = self.line(&line) {
                    return Ok(Some(item));
                }
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(SseItem::Event {
                id: self.id.take(),
                event: self.event.take().unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseItem::Comment(comment.trim_start().to_owned()));
        }
        let (field, value) =
            line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                let d = self.data.get_or_insert_with(String::new);
                if !d.is_empty() {
                    d.push('\n');
                }
                d.push_str(value);
            }
            "retry" => return value.parse().ok().map(SseItem::Retry),
            _ => {}
        }
        None
    }

    /// The next event (skipping comments and retry), `None` at the end of the response.
    pub async fn next_event(&mut self) -> TestResult<Option<(i64, String, Value)>> {
        while let Some(item) = self.next().await? {
            if let SseItem::Event { id, event, data } = item {
                let id: i64 = id.ok_or("event without id")?.parse()?;
                return Ok(Some((id, event, serde_json::from_str(&data)?)));
            }
        }
        Ok(None)
    }

    /// Reads events until the response ends; returns their ids.
    pub async fn ids_to_end(&mut self) -> TestResult<Vec<i64>> {
        let mut ids = Vec::new();
        while let Some((id, _, _)) = tokio::time::timeout(WAIT, self.next_event()).await?? {
            ids.push(id);
        }
        Ok(ids)
    }

    /// Reads events until one with id `last` arrives; returns every id read.
    pub async fn ids_until(&mut self, last: i64) -> TestResult<Vec<i64>> {
        let mut ids = Vec::new();
        loop {
            let (id, _, _) =
                tokio::time::timeout(WAIT, self.next_event()).await??.ok_or("stream ended early")?;
            ids.push(id);
            if id >= last {
                return Ok(ids);
            }
        }
    }
}
