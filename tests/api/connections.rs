//! What a slow, idle or hostile client may hold (API.md "Connections"): late heads are closed
//! whoever reads them, idle keep-alive connections are closed, long heads get 431, the
//! connection cap refuses the excess at once, and a client that stops reading loses its stream
//! (not its events) after the write timeout. Each test runs with the socket takeover and
//! through hyper only (`AURA_STREAM_TAKEOVER=false`), since those are two different readers.

use std::net::SocketAddr;
use std::time::Duration;

use aura::config::Synchronous;
use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::cli::{ServerProcess, free_port};
use crate::helpers::{TestApp, TestResult, WAIT, eventually, holds, spawn_app_with};
use crate::sockets::append_a_lot;

/// Both ways a stream can be served.
const TAKEOVER: [bool; 2] = [true, false];

/// Held by the tests that load the machine (thousands of sockets, megabytes of stalled
/// writes), so that they do not run at the same time and time each other instead of the server.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The start of a request that never ends: what a slowloris client sends.
const STREAM_HEAD: &[u8] = b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n";
const OTHER_HEAD: &[u8] = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n";

/// This process opens thousands of sockets: its soft open-file limit goes up to the hard one.
fn raise_fd_limit() -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

fn addr_of(base: &str) -> TestResult<SocketAddr> {
    Ok(base.trim_start_matches("http://").parse()?)
}

/// Whether the server closed the connection (end of file or reset) before `deadline`.
async fn closed_by(conn: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Opens `n` connections that each send an unfinished head (half of them a stream's), 100
/// every 50 ms, and returns, for each, the moment it was sent and the connection.
async fn flood(addr: SocketAddr, n: usize) -> TestResult<Vec<(Instant, TcpStream)>> {
    let mut conns = Vec::with_capacity(n);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for i in 0..n {
        if i % 100 == 0 {
            pace.tick().await;
        }
        let mut conn = TcpStream::connect(addr).await?;
        let head = if i % 2 == 0 { STREAM_HEAD } else { OTHER_HEAD };
        // A connection the server already closed (past the cap) may refuse the write.
        let _ = conn.write_all(head).await;
        conns.push((Instant::now(), conn));
    }
    Ok(conns)
}

/// One `GET /api/health` on a fresh connection: how long it took, `None` if it failed.
async fn health_latency(client: &reqwest::Client, base: &str) -> Option<Duration> {
    let started = Instant::now();
    let res = client.get(format!("{base}/api/health")).timeout(WAIT).send().await.ok()?;
    res.bytes().await.ok()?;
    Some(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_unfinished_heads_are_closed_after_the_header_timeout_while_health_answers() -> TestResult
{
    let _heavy = HEAVY.lock().await;
    raise_fd_limit()?;
    for takeover in TAKEOVER {
        let dir = tempfile::tempdir()?;
        let takeover_arg = takeover.to_string();
        let server = ServerProcess::start(
            dir.path(),
            free_port()?,
            &["--workers", "0", "--header-timeout-secs", "2", "--stream-takeover", &takeover_arg],
        )
        .await?;
        let addr = addr_of(&server.base)?;
        let base = server.base.clone();
        // Health asks ffmpeg its version at most every 10 s; on a machine busy with other work
        // that one check may still be slow. The bound is 1 s, or four times what health takes
        // here unflooded (in practice 1 s: unflooded, it answers in milliseconds).
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let mut unflooded = Vec::new();
        for _ in 0..5 {
            unflooded.extend(health_latency(&client, &base).await);
        }
        unflooded.sort();
        if unflooded.len() < 3 {
            return Err(format!("takeover {takeover}: no health before the flood ({unflooded:?})").into());
        }
        let bound = Duration::from_secs(1).max(unflooded[unflooded.len() / 2] * 4);
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
        // Health, every 100 ms on a new connection, for as long as the flood lasts; on a thread
        // of its own, so that it times the server rather than this test's other tasks.
        let prober = std::thread::spawn(move || -> TestResult<(Duration, u32)> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
                let mut worst = Duration::ZERO;
                let mut probes = 0;
                while !*done_rx.borrow_and_update() {
                    let took = health_latency(&client, &base).await.unwrap_or(Duration::MAX);
                    worst = worst.max(took);
                    probes += 1;
                    let _ = tokio::time::timeout(Duration::from_millis(100), done_rx.changed()).await;
                }
                Ok((worst, probes))
            })
        });
        let conns = flood(addr, 2000).await?;
        let mut waits = JoinSet::new();
        for (sent, mut conn) in conns {
            waits.spawn(async move { closed_by(&mut conn, sent + Duration::from_secs(5)).await });
        }
        let closed = waits.join_all().await.into_iter().filter(|&c| c).count();
        done_tx.send(true)?;
        let (worst, probes) = prober.join().map_err(|_| "the prober panicked")??;
        assert!(closed >= 1980, "takeover {takeover}: only {closed} of 2000 closed within 5 s");
        assert!(probes >= 3, "takeover {takeover}: {probes} health probes, worst {worst:?}");
        assert!(worst < bound, "takeover {takeover}: health took {worst:?} (unflooded {unflooded:?})");
        server.kill().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_close_at_once_and_an_open_stream_misses_nothing()
-> TestResult {
    let _heavy = HEAVY.lock().await;
    raise_fd_limit()?;
    for takeover in TAKEOVER {
        let app = spawn_app_with(|c| {
            c.max_connections = Some(500);
            c.header_timeout_secs = 2;
            c.stream_takeover = takeover;
            c.synchronous = Synchronous::Normal;
        })
        .await?;
        let id = app.create_job("through the flood").await?;
        let mut stream = app.stream(&format!("/api/jobs/{id}/events"), &[]).await?;
        let (first, _, _) = stream.next_event().await?.ok_or("no first event")?;
        lifecycle::claim(app.state.store(), id).await?;
        let job = JobHandle::new(app.state.store().clone(), id);

        let conns = flood(addr_of(&app.base)?, 1500).await?;
        let flooded = Instant::now();
        // Events while every slot is taken: the stream opened before the flood gets each one.
        for i in 0..40 {
            job.progress(Stage::Script, f64::from(i), format!("during the flood {i}")).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut waits = JoinSet::new();
        for (sent, mut conn) in conns {
            // Refused ones close at once, well before the header timeout.
            waits
                .spawn(async move { (closed_by(&mut conn, sent + Duration::from_millis(1500)).await, conn) });
        }
        // The connections stay open on this side: only the server may free their slots.
        let (closed, _flood): (Vec<bool>, Vec<TcpStream>) = waits.join_all().await.into_iter().unzip();
        let refused = closed.into_iter().filter(|&c| c).count();
        assert!(refused >= 900, "takeover {takeover}: only {refused} of 1500 closed at once past the cap");

        // The heads time out 2 s after they were sent; health answers within 5 s of that.
        let timed_out = flooded + Duration::from_secs(2);
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        eventually(
            (timed_out + Duration::from_secs(5)).saturating_duration_since(Instant::now()),
            || async {
                holds(health_latency(&client, &app.base).await.is_some(), || {
                    format!("takeover {takeover}: no health")
                })
            },
        )
        .await?;
        assert!(Instant::now() < timed_out + Duration::from_secs(5), "takeover {takeover}: health too late");
        job.cancelled(Some(Stage::Script)).await?;
        let rest = tokio::time::timeout(WAIT, stream.ids_to_end()).await??;
        assert_eq!([vec![first], rest].concat(), app.sql_event_ids(id).await?, "takeover {takeover}");
    }
    Ok(())
}

/// Sends one request on `conn` and reads its whole (`content-length`) response.
async fn request(conn: &mut TcpStream, raw: &[u8]) -> TestResult<String> {
    conn.write_all(raw).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, conn.read(&mut chunk)).await??;
        if n == 0 {
            return Err("closed before the response ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .map_or(Ok(0), |v| v.trim().parse::<usize>())?;
            if buf.len() >= end + 4 + length {
                return Ok(text);
            }
        }
    }
}

/// How long until the server closes `conn`, which the client leaves silent.
async fn time_to_close(mut conn: TcpStream) -> TestResult<Duration> {
    let started = Instant::now();
    if !closed_by(&mut conn, started + WAIT).await {
        return Err("never closed".into());
    }
    Ok(started.elapsed())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_but_a_stream_never_is() -> TestResult
{
    for takeover in TAKEOVER {
        let app = spawn_app_with(|c| {
            c.header_timeout_secs = 1;
            c.idle_timeout_secs = 3;
            c.heartbeat_secs = 1;
            c.stream_takeover = takeover;
        })
        .await?;
        let addr = addr_of(&app.base)?;
        let health = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n";

        // Idle after a response: closed after the idle timeout, not the (shorter) header one.
        let mut idle = TcpStream::connect(addr).await?;
        assert!(request(&mut idle, health).await?.starts_with("HTTP/1.1 200"));
        let took = time_to_close(idle).await?;
        assert!(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
            "idle closed after {took:?}"
        );

        // A later head that stops half way: closed after the header timeout.
        let mut late = TcpStream::connect(addr).await?;
        assert!(request(&mut late, health).await?.starts_with("HTTP/1.1 200"));
        late.write_all(b"GET /api/health HTTP/1.1\r\n").await?;
        let took = time_to_close(late).await?;
        assert!(took < Duration::from_millis(2500), "a late second head closed after {took:?}");

        // Streams, on a connection of their own and on a reused one, outlive the idle timeout.
        let mut own = app.stream("/api/events", &[]).await?;
        let mut reused = app.stream_on_reused_connection("/api/events").await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let id = app.create_job("still there").await?;
        let first = *app.sql_event_ids(id).await?.first().ok_or("no event")?;
        for stream in [&mut own, &mut reused] {
            let ids = tokio::time::timeout(WAIT, stream.ids_until(first)).await??;
            assert_eq!(ids.last(), Some(&first), "takeover {takeover}");
        }
    }
    Ok(())
}

/// Sends `raw` (without waiting for the write to finish: the server may close first) and
/// returns the status line of the answer.
async fn status_of(addr: SocketAddr, raw: Vec<u8>) -> TestResult<String> {
    let conn = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(WAIT, rd.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    drop(writer.await?);
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_request_head_over_16_kib_is_answered_431() -> TestResult {
    for takeover in TAKEOVER {
        let app = spawn_app_with(|c| c.stream_takeover = takeover).await?;
        let addr = addr_of(&app.base)?;
        for path in ["/api/events", "/api/health"] {
            for size in [64 * 1024, 200 * 1000] {
                let raw =
                    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(size));
                let status = status_of(addr, raw.into_bytes()).await?;
                assert!(
                    status.starts_with("HTTP/1.1 431"),
                    "takeover {takeover}, {path}, {size}: {status:?}"
                );
            }
        }
        // A large head that stays under the limit is served.
        let raw = format!(
            "GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(12 * 1024)
        );
        let status = status_of(addr, raw.into_bytes()).await?;
        assert!(status.starts_with("HTTP/1.1 200"), "takeover {takeover}: {status:?}");
    }
    Ok(())
}

/// Opens a stream on a socket with a 4 KiB receive buffer that the caller then leaves unread;
/// `reuse` sends a health request first, so that hyper serves the stream.
async fn stalled_stream(addr: SocketAddr, path: &str, reuse: bool) -> TestResult<TcpStream> {
    stalled_request(addr, path, "", reuse).await
}

/// [`stalled_stream`] with more header lines (`extra`, each ending in CRLF).
async fn stalled_request(addr: SocketAddr, path: &str, extra: &str, reuse: bool) -> TestResult<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut conn = socket.connect(addr).await?;
    if reuse {
        assert!(
            request(&mut conn, b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?
                .starts_with("HTTP/1.1 200")
        );
    }
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").as_bytes()).await?;
    Ok(conn)
}

/// The ids of the whole events in what a stream's response delivered before it was cut: the
/// chunked body is read as far as it goes, and an event counts only if its blank line came.
fn whole_event_ids(raw: &[u8]) -> TestResult<Vec<i64>> {
    whole_ids_of(&chunked_body(raw)?)
}

/// The body of a chunked response, as far as it goes.
fn chunked_body(raw: &[u8]) -> TestResult<Vec<u8>> {
    let start = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no response head")? + 4;
    let mut rest = &raw[start..];
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol])?, 16)?;
        let data = &rest[eol + 2..];
        body.extend_from_slice(&data[..size.min(data.len())]);
        if data.len() < size + 2 || size == 0 {
            break;
        }
        rest = &data[size + 2..];
    }
    Ok(body)
}

/// The ids of the whole events (their blank line came) in an SSE body cut anywhere.
fn whole_ids_of(body: &[u8]) -> TestResult<Vec<i64>> {
    let text = String::from_utf8_lossy(body).into_owned();
    let whole = text.rfind("\n\n").map_or("", |end| &text[..end]);
    Ok(whole.lines().filter_map(|l| l.strip_prefix("id: ")).map(str::parse).collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_loses_its_stream_after_the_write_timeout_and_resumes_missing_nothing() -> TestResult
{
    let _heavy = HEAVY.lock().await;
    for takeover in TAKEOVER {
        let app = spawn_app_with(|c| {
            c.write_timeout_secs = 2;
            c.stream_buffer = 16;
            c.synchronous = Synchronous::Normal;
            c.stream_takeover = takeover;
        })
        .await?;
        let id = app.create_job("a reader that stalls").await?;
        let path = format!("/api/jobs/{id}/events");
        let mut conn = stalled_stream(addr_of(&app.base)?, &path, !takeover).await?;
        eventually(WAIT, || async {
            holds(app.state.streams().open() > 0, || format!("takeover {takeover}: the stream is not open"))
        })
        .await?;
        append_a_lot(&app, id).await?;
        // The stalled stream is closed within 4 s.
        streams_closed_by(&app, Instant::now() + Duration::from_secs(4), &format!("takeover {takeover}"))
            .await?;

        // The client reads again: what reached it, then the rest from its last whole event.
        // (On a reused connection the health response before it was read already.)
        let raw = read_rest(&mut conn, &format!("takeover {takeover}")).await?;
        let mut seen = whole_event_ids(&raw)?;
        let all = app.sql_event_ids(id).await?;
        assert!(seen.len() < all.len(), "takeover {takeover}: the stream was cut");
        let resume = seen.last().copied().unwrap_or(0).to_string();
        let mut rest = app.stream(&path, &[("Last-Event-ID", &resume)]).await?;
        seen.extend(
            // Megabytes replayed from the table by a debug build on a busy machine: a wide bound.
            tokio::time::timeout(WAIT * 3, rest.ids_to_end())
                .await
                .map_err(|_| format!("takeover {takeover}: the resumed stream did not end"))??,
        );
        assert_eq!(seen, all, "takeover {takeover}: every event once, in order");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_twenty_stalled_readers_exits_within_ten_seconds() -> TestResult {
    if crate::helpers::sqlite_only("reads the SQLite file") {
        return Ok(());
    }
    let _heavy = HEAVY.lock().await;
    for takeover in TAKEOVER {
        let dir = tempfile::tempdir()?;
        let takeover_arg = takeover.to_string();
        let server = ServerProcess::start(
            dir.path(),
            free_port()?,
            &["--workers", "0", "--synchronous", "normal", "--stream-takeover", &takeover_arg],
        )
        .await?;
        let created: Value = reqwest::Client::new()
            .post(format!("{}/api/jobs", server.base))
            .json(&serde_json::json!({"brief": {"topic": "stalled"}}))
            .send()
            .await?
            .json()
            .await?;
        let id = created["jobId"].as_str().ok_or("no id")?.to_owned();
        let addr = addr_of(&server.base)?;
        let mut readers = Vec::new();
        for _ in 0..20 {
            readers.push(stalled_stream(addr, &format!("/api/jobs/{id}/events"), !takeover).await?);
        }
        // About 3 MB of events from another connection to the same file (the tail picks them
        // up): every reader's buffers fill and the server's writes block.
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("aura.db"))
            .busy_timeout(Duration::from_secs(10));
        let mut sql = sqlx::ConnectOptions::connect(&opts).await?;
        let message = "x".repeat(1600);
        let mut tx = sqlx::Connection::begin(&mut sql).await?;
        for i in 0..2000 {
            let data = serde_json::json!({"jobId": id, "at": "2026-01-01T00:00:00.000000Z",
                                          "code": "filler", "message": format!("{i} {message}"), "step": null});
            sqlx::query("INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'warning', ?, ?)")
                .bind(&id)
                .bind(data.to_string())
                .bind("2026-01-01T00:00:00.000000Z")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // Every reader's receive buffer holds data, and the server has megabytes more for each.
        tokio::time::timeout(WAIT, async {
            for reader in &readers {
                let mut peek = [0u8; 2048];
                while reader.peek(&mut peek).await.unwrap_or(0) < peek.len() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await
        .map_err(|_| format!("takeover {takeover}: the readers' buffers did not fill"))?;

        let mut child = server.child;
        let pid = child.id().ok_or("no pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| format!("takeover {takeover}: still running 10 s after SIGTERM"))??;
        // Within 10 s (API.md), and before the 5 s shutdown grace runs out: stalled readers end
        // on their own, they are not merely abandoned.
        assert!(started.elapsed() < Duration::from_secs(4), "takeover {takeover}: {:?}", started.elapsed());
        assert_eq!(status.code(), Some(0), "takeover {takeover}");
    }
    Ok(())
}

/// Both ways a stream is served: on its own socket, or by hyper (`reuse` the connection with
/// the takeover on, or every connection with it off).
const WAYS: [(bool, bool); 3] = [(true, false), (true, true), (false, false)];

/// The write timeout of the stall tests below, and how late after it a stream may still close.
const STALL_TIMEOUT: u64 = 3;
const STALL_BOUND: Duration = Duration::from_secs(3);

/// An app whose stalled streams end after [`STALL_TIMEOUT`], with a small memory of recent
/// events, so that a catch-up reads the table.
async fn app_for_stalls(
    takeover: bool,
    tweak: impl FnOnce(&mut aura::config::ServeConfig),
) -> TestResult<TestApp> {
    spawn_app_with(|c| {
        c.write_timeout_secs = STALL_TIMEOUT;
        c.stream_buffer = 16;
        c.synchronous = Synchronous::Normal;
        c.stream_takeover = takeover;
        tweak(c);
    })
    .await
}

/// `n` warnings of about 1.6 KB each on `job`, then its end: megabytes of log in a few seconds
/// (16 appends in flight, so that they commit in groups). Their text is random letters, so
/// that gzip cannot shrink it to nothing, and a batch window collapses none of them.
async fn append_filler(app: &TestApp, job: Uuid, n: usize) -> TestResult {
    const LETTERS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    lifecycle::claim(app.state.store(), job).await?;
    let handle = JobHandle::new(app.state.store().clone(), job);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let mut text = format!("filler {i} ");
        for _ in 0..1600 {
            // xorshift64: cheap, and incompressible enough.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push(char::from(LETTERS[(state & 63) as usize]));
        }
        messages.push(text);
    }
    let appended: Vec<_> = futures_util::stream::iter(messages)
        .map(|message| {
            let handle = handle.clone();
            async move { handle.warn(None, "filler", message).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for outcome in appended {
        outcome?;
    }
    handle.cancelled(None).await?;
    Ok(())
}

/// Waits until `app` has `n` streams open.
async fn streams_open(app: &TestApp, n: usize, what: &str) -> TestResult {
    eventually(WAIT, || async {
        let open = app.state.streams().open();
        holds(open == n, || format!("{what}: {open} streams open, not {n}"))
    })
    .await
}

/// Waits until no stream of `app` is open (its own count, and `aura_open_streams_total` on
/// `/metrics`), failing once `deadline` has passed.
async fn streams_closed_by(app: &TestApp, deadline: Instant, what: &str) -> TestResult {
    eventually(deadline.saturating_duration_since(Instant::now()), || async {
        let open = app.state.streams().open();
        let gauge = app.metric("aura_open_streams_total").await?;
        holds(open == 0 && gauge == 0.0, || {
            format!("{what}: {open} streams still open ({gauge} on /metrics)")
        })
    })
    .await
}

/// Reads what a stalled client was sent, once the server has dropped its connection: to the
/// end, or to the reset that a connection the kernel gave up on ends with.
async fn read_rest(conn: &mut TcpStream, what: &str) -> TestResult<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT * 3;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return Ok(raw),
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(format!("{what}: the cut stream never ended ({} bytes)", raw.len()).into()),
        }
    }
}

/// `seen`, the ids a cut stream delivered whole, followed by what a plain stream resumed from
/// its last one sends up to the newest of `all`: every event once, in order, is `all`.
async fn resume_after(app: &TestApp, mut seen: Vec<i64>, all: &[i64], what: &str) -> TestResult {
    let last = *all.last().ok_or("no events")?;
    assert!(seen.len() < all.len(), "{what}: the stream was cut ({} of {} events)", seen.len(), all.len());
    let resume = seen.last().copied().unwrap_or(0).to_string();
    let mut rest = app.stream("/api/events", &[("Last-Event-ID", &resume)]).await?;
    // Megabytes replayed from the table by a debug build on a busy machine: a wide bound.
    seen.extend(
        tokio::time::timeout(WAIT * 3, rest.ids_until(last))
            .await
            .map_err(|_| format!("{what}: the resumed stream did not reach {last}"))??,
    );
    assert_eq!(seen, all, "{what}: every event once, in order");
    Ok(())
}

/// The events appended while a live stream stalls: about 6.5 MB, 5 MB once compressed, more
/// than the kernel holds between the server and a client that stopped reading (2,000 events,
/// 2.5 MB compressed, were not), so that a write of the server's waits, not only bytes in the
/// kernel.
const LIVE_FILLER: usize = 4000;

/// How long before the write timeout a stalled stream may seem to close: timers and the
/// kernel's clock are not finer than this.
const STALL_SLACK: Duration = Duration::from_millis(100);

/// A stream whose client, caught up (the stream is live), stops reading now, while `job` gets
/// [`LIVE_FILLER`] events ([`append_filler`]). The server must close the stream (its count,
/// `aura_open_streams_total`, and its end of `conn`) within the write timeout and
/// [`STALL_BOUND`] of the moment its bytes began to wait on the client (its end's send queue
/// stayed non-empty: the client's buffer is full), and start closing it no sooner than the write
/// timeout after the client stopped reading. Watched from the start, while the events are
/// appended.
async fn stall_while_live(app: &TestApp, job: Uuid, conn: &TcpStream, what: &str) -> TestResult {
    let stalled = Instant::now();
    let appended = std::sync::OnceLock::new();
    let append = async {
        append_filler(app, job, LIVE_FILLER).await?;
        let _ = appended.set(Instant::now());
        TestResult::Ok(())
    };
    let bound = Duration::from_secs(STALL_TIMEOUT) + STALL_BOUND;
    let closed = async {
        let mut waiting_since: Option<Instant> = None;
        // When the stream or the connection was first seen closed.
        let mut first_closed: Option<Instant> = None;
        loop {
            let (open, queued) = (app.state.streams().open(), server_end_queue(conn)?);
            let now = Instant::now();
            if open == 0 || queued.is_none() {
                first_closed.get_or_insert(now);
            }
            if open == 0 && queued.is_none() {
                return TestResult::Ok((first_closed.unwrap_or(now), now));
            }
            match queued {
                Some(0) => waiting_since = None,
                Some(_) => {
                    waiting_since.get_or_insert(now);
                }
                None => {}
            }
            if let Some(since) = waiting_since
                && now >= since + bound
            {
                let held = if queued.is_some() { "held" } else { "closed" };
                return Err(format!(
                    "{what}: {open} streams open, the connection {held}, {:?} after the server's bytes began to wait",
                    now - since
                )
                .into());
            }
            if waiting_since.is_none() && appended.get().is_some_and(|at| now >= *at + WAIT) {
                return Err(format!("{what}: the server never wrote the filler to the stalled client").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((), (first_closed, closed)) = tokio::try_join!(append, closed)?;
    streams_closed_by(app, closed + STALL_BOUND, what).await?;
    let took = first_closed - stalled;
    assert!(
        took + STALL_SLACK >= Duration::from_secs(STALL_TIMEOUT),
        "{what}: closed {took:?} after its client stopped reading, before the write timeout"
    );
    Ok(())
}

/// The bytes the server's end of `conn` holds for the client (sent and not acknowledged, or not
/// sent yet), while the server holds that end open (`ESTABLISHED` in `/proc/net/tcp`); `None`
/// once it has let go (the end is gone, closing or aborted). A stalled client sees neither
/// without reading, which would end the stall.
fn server_end_queue(conn: &TcpStream) -> TestResult<Option<u64>> {
    const ESTABLISHED: &str = "01";
    let (server, client) = (conn.peer_addr()?, conn.local_addr()?);
    for line in std::fs::read_to_string("/proc/net/tcp")?.lines().skip(1) {
        if let [_, local, remote, state, queues, ..] = line.split_whitespace().collect::<Vec<_>>()[..]
            && state == ESTABLISHED
            && proc_addr(local)? == server
            && proc_addr(remote)? == client
        {
            let (tx, _rx) = queues.split_once(':').ok_or("no queues")?;
            return Ok(Some(u64::from_str_radix(tx, 16)?));
        }
    }
    Ok(None)
}

/// An address of `/proc/net/tcp`: the IPv4 address as the kernel holds it (network order),
/// printed as a native integer, then the port.
fn proc_addr(hex: &str) -> TestResult<SocketAddr> {
    let (ip, port) = hex.split_once(':').ok_or("not an address")?;
    let ip = std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16)?.to_ne_bytes());
    Ok(SocketAddr::from((ip, u16::from_str_radix(port, 16)?)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stall_during_a_catch_up_lose_their_streams_after_the_write_timeout_and_resume_missing_nothing()
-> TestResult {
    let _heavy = HEAVY.lock().await;
    for (takeover, reuse) in WAYS {
        let what = format!("takeover {takeover}, reuse {reuse}");
        let app = app_for_stalls(takeover, |_| {}).await?;
        let job = app.create_job("a log to catch up on").await?;
        // About 2.5 MB, read back from the table: more than the client's socket buffer holds, not
        // more than the kernel may hold for it on the server's side once the replay is written.
        append_filler(&app, job, 1500).await?;
        let all = app.sql_event_ids(job).await?;
        let addr = addr_of(&app.base)?;
        let mut readers = Vec::new();
        for _ in 0..3 {
            readers.push(stalled_request(addr, "/api/events", "Last-Event-ID: 0\r\n", reuse).await?);
        }
        let opened = Instant::now();
        streams_open(&app, 3, &what).await?;
        streams_closed_by(&app, opened + Duration::from_secs(STALL_TIMEOUT) + STALL_BOUND, &what).await?;
        for mut conn in readers {
            let raw = read_rest(&mut conn, &what).await?;
            resume_after(&app, whole_event_ids(&raw)?, &all, &what).await?;
        }
    }
    Ok(())
}

/// Decodes as much of a gzip stream cut anywhere as there is.
fn gunzip_cut(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = decoder.read(&mut buf)
        && n > 0
    {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_compressed_readers_that_stall_lose_their_streams_after_the_write_timeout_and_resume_missing_nothing()
-> TestResult {
    let _heavy = HEAVY.lock().await;
    for (takeover, reuse) in WAYS {
        let what = format!("takeover {takeover}, reuse {reuse}");
        let app = app_for_stalls(takeover, |c| c.stream_compression = aura::config::StreamCompression::Gzip)
            .await?;
        let job = app.create_job("a log to follow").await?;
        // About 500 kB, 400 kB once compressed: far more than the client's socket buffer holds,
        // and little enough that a debug build encodes it well within the write timeout.
        append_filler(&app, job, 300).await?;
        let all = app.sql_event_ids(job).await?;
        let addr = addr_of(&app.base)?;
        let mut batched =
            stalled_request(addr, "/api/events?batch=1000ms", "Last-Event-ID: 0\r\n", reuse).await?;
        let mut gzipped =
            stalled_request(addr, "/api/events", "Last-Event-ID: 0\r\nAccept-Encoding: gzip\r\n", reuse)
                .await?;
        let opened = Instant::now();
        streams_open(&app, 2, &what).await?;
        streams_closed_by(&app, opened + Duration::from_secs(STALL_TIMEOUT) + STALL_BOUND, &what).await?;
        let raw = read_rest(&mut batched, &what).await?;
        resume_after(&app, whole_event_ids(&raw)?, &all, &format!("{what}, batched")).await?;
        let raw = read_rest(&mut gzipped, &what).await?;
        resume_after(&app, whole_gzip_event_ids(&raw)?, &all, &format!("{what}, gzip")).await?;
    }
    Ok(())
}

/// [`whole_event_ids`] of a gzip-compressed response.
fn whole_gzip_event_ids(raw: &[u8]) -> TestResult<Vec<i64>> {
    whole_ids_of(&gunzip_cut(&chunked_body(raw)?))
}

/// Reads `conn` into `raw` until `decode` finds the event `newest` in it, whole: the stream has
/// caught up and is live.
async fn read_until_caught_up(
    conn: &mut TcpStream,
    raw: &mut Vec<u8>,
    decode: fn(&[u8]) -> TestResult<Vec<i64>>,
    newest: i64,
    what: &str,
) -> TestResult {
    let mut chunk = vec![0u8; 64 * 1024];
    let caught_up = async {
        // Until the response head has come whole, `decode` fails: read on.
        while !decode(raw).is_ok_and(|ids| ids.last() >= Some(&newest)) {
            match conn.read(&mut chunk).await? {
                0 => return Err(format!("{what}: the stream ended before it caught up").into()),
                n => raw.extend_from_slice(&chunk[..n]),
            }
        }
        TestResult::Ok(())
    };
    tokio::time::timeout(WAIT, caught_up).await.map_err(|_| format!("{what}: never caught up to {newest}"))?
}

/// One SSE stream each way it is served ([`WAYS`]), `path` with `extra` header lines on an app
/// `tweak`ed: read until it is live, then stalled ([`stall_while_live`]);
/// `decode` reads the events it delivered whole, and a resume from the last one misses none.
async fn sse_stalls_while_live(
    path: &str,
    extra: &str,
    tweak: fn(&mut aura::config::ServeConfig),
    decode: fn(&[u8]) -> TestResult<Vec<i64>>,
) -> TestResult {
    let _heavy = HEAVY.lock().await;
    for (takeover, reuse) in WAYS {
        let what = format!("{path} {}, takeover {takeover}, reuse {reuse}", extra.trim_end());
        let app = app_for_stalls(takeover, tweak).await?;
        let job = app.create_job("a log followed live").await?;
        let newest = *app.sql_event_ids(job).await?.last().ok_or("no event")?;
        let mut conn = stalled_request(addr_of(&app.base)?, path, extra, reuse).await?;
        streams_open(&app, 1, &what).await?;
        let mut raw = Vec::new();
        read_until_caught_up(&mut conn, &mut raw, decode, newest, &what).await?;
        stall_while_live(&app, job, &conn, &what).await?;
        raw.extend(read_rest(&mut conn, &what).await?);
        resume_after(&app, decode(&raw)?, &app.sql_event_ids(job).await?, &what).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_stream_that_stalls_during_live_delivery_loses_its_stream_after_the_write_timeout_and_resumes_missing_nothing()
-> TestResult {
    sse_stalls_while_live("/api/events?batch=100ms", "", |_| {}, whole_event_ids).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_stream_that_stalls_during_live_delivery_loses_its_stream_after_the_write_timeout_and_resumes_missing_nothing()
-> TestResult {
    sse_stalls_while_live(
        "/api/events",
        "Accept-Encoding: gzip\r\n",
        |c| c.stream_compression = aura::config::StreamCompression::Gzip,
        whole_gzip_event_ids,
    )
    .await
}

/// The handshake headers of a WebSocket client.
const WS_HANDSHAKE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Opens a WebSocket by hand and reads the `101` answer: nothing on this side answers the
/// server's pings, whether the caller then reads the raw frames or not.
async fn raw_websocket(addr: SocketAddr, path: &str) -> TestResult<TcpStream> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{WS_HANDSHAKE}\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tokio::time::timeout(WAIT, conn.read(&mut byte)).await?? == 0 {
            return Err("closed during the handshake".into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {head}").into());
    }
    Ok(conn)
}

/// The ids of the events a WebSocket client reads until the socket closes or fails.
async fn ws_ids_to_close<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> TestResult<Vec<i64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws_ids_until(ws, i64::MAX).await
}

/// The ids of the events a WebSocket client reads until one at or past `last` arrives, or the
/// socket closes or fails.
async fn ws_ids_until<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, last: i64) -> TestResult<Vec<i64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ids = Vec::new();
    loop {
        match tokio::time::timeout(WAIT * 3, ws.next()).await? {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text)?;
                ids.extend(value["id"].as_i64());
                if ids.last() >= Some(&last) {
                    return Ok(ids);
                }
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(ids),
            Some(Ok(_)) => {}
        }
    }
}

/// A WebSocket client (tokio-tungstenite) on `path` with a small receive buffer, so that a
/// stall fills it at once.
async fn stalled_websocket(
    addr: SocketAddr,
    path: &str,
) -> TestResult<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let conn = socket.connect(addr).await?;
    Ok(tokio_tungstenite::client_async(format!("ws://{addr}{path}"), conn).await?.0)
}

/// The client reads again: what reached a stalled socket (`seen` and the rest), then a socket
/// resumed with `?lastEventId=` from the last of them (API.md, WebSocket) up to the job's end:
/// every event of `job` once, in order.
async fn ws_resume_after(
    app: &TestApp,
    stalled: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    mut seen: Vec<i64>,
    job: Uuid,
    what: &str,
) -> TestResult {
    seen.extend(ws_ids_to_close(stalled).await?);
    let all = app.sql_event_ids(job).await?;
    assert!(seen.len() < all.len(), "{what}: the socket was cut ({} of {} events)", seen.len(), all.len());
    let addr = addr_of(&app.base)?;
    // Resumed as a client does: from the last id it saw, again if a loaded machine makes the
    // reader itself slow enough for the write timeout (a few times at most).
    for _ in 0..5 {
        if seen.last() >= all.last() {
            break;
        }
        let resume = seen.last().copied().unwrap_or(0);
        let (mut rest, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?jobId={job}&lastEventId={resume}"))
                .await?;
        seen.extend(ws_ids_to_close(&mut rest).await?);
    }
    assert_eq!(seen, all, "{what}: every event once, in order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_during_a_catch_up_is_closed_after_the_write_timeout_and_resumes_missing_nothing()
-> TestResult {
    let _heavy = HEAVY.lock().await;
    let app = app_for_stalls(true, |_| {}).await?;
    let job = app.create_job("a log a socket stops reading").await?;
    append_filler(&app, job, 1500).await?;
    let mut stalled = stalled_websocket(addr_of(&app.base)?, "/api/ws?lastEventId=0").await?;
    let opened = Instant::now();
    streams_open(&app, 1, "websocket").await?;
    streams_closed_by(&app, opened + Duration::from_secs(STALL_TIMEOUT) + STALL_BOUND, "websocket").await?;
    ws_resume_after(&app, &mut stalled, Vec::new(), job, "websocket").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_during_live_delivery_is_closed_after_the_write_timeout_and_resumes_missing_nothing()
-> TestResult {
    let _heavy = HEAVY.lock().await;
    let what = "live websocket";
    let app = app_for_stalls(true, |_| {}).await?;
    let job = app.create_job("a log a socket follows live").await?;
    let newest = *app.sql_event_ids(job).await?.last().ok_or("no event")?;
    let mut ws = stalled_websocket(addr_of(&app.base)?, "/api/ws?lastEventId=0").await?;
    streams_open(&app, 1, what).await?;
    let seen = ws_ids_until(&mut ws, newest).await?;
    assert_eq!(seen.last(), Some(&newest), "{what}: never caught up");
    stall_while_live(&app, job, ws.get_ref(), what).await?;
    ws_resume_after(&app, &mut ws, seen, job, what).await
}

#[tokio::test]
async fn open_websockets_hold_their_connection_slots_until_they_close() -> TestResult {
    let app = spawn_app_with(|c| c.max_connections = Some(3)).await?;
    let addr = addr_of(&app.base)?;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(raw_websocket(addr, "/api/ws").await?);
    }
    streams_open(&app, 3, "three sockets").await?;
    // Every slot is a socket's: a further connection is closed at once, as often as it comes.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).await?;
        let _ = extra.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(
            closed_by(&mut extra, Instant::now() + Duration::from_secs(1)).await,
            "a connection past the cap was kept while three WebSockets were open"
        );
    }
    // One socket closes: its slot serves the next connection.
    drop(sockets.pop());
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    eventually(WAIT, || async {
        holds(health_latency(&client, &app.base).await.is_some(), || {
            "no connection served after a socket closed".into()
        })
    })
    .await?;
    assert_eq!(app.state.streams().open(), 2);
    Ok(())
}

#[tokio::test]
async fn a_websocket_that_never_answers_a_ping_is_closed_after_the_pong_timeout_and_frees_its_slot()
-> TestResult {
    const PONG: Duration = Duration::from_secs(2);
    let app = spawn_app_with(|c| {
        c.ws_pong_secs = PONG.as_secs();
        c.max_connections = Some(2);
    })
    .await?;
    let addr = addr_of(&app.base)?;
    // tokio-tungstenite answers every ping while it reads: this one reads all along, on a task
    // of its own, and hands on the text it gets.
    let (mut answering, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws")).await?;
    let (texts, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let mut reader = tokio::spawn(async move {
        while let Some(message) = answering.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let _ = texts.send(text.to_string());
                }
                Ok(Message::Close(frame)) => return format!("closed: {frame:?}"),
                Err(e) => return format!("failed: {e}"),
                Ok(_) => {}
            }
        }
        "ended".to_owned()
    });
    let mut silent = raw_websocket(addr, "/api/ws").await?;
    let opened = Instant::now();
    streams_open(&app, 2, "two sockets").await?;

    // The silent one reads (the pings among what it reads) but never answers.
    let bound = opened + PONG + Duration::from_secs(3);
    assert!(closed_by(&mut silent, bound).await, "a socket that never answered a ping is still open");
    // Its connection slot is free: a request is served beside the answering socket.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    eventually(WAIT, || async {
        holds(health_latency(&client, &app.base).await.is_some(), || {
            "the silent socket's slot is not free".into()
        })
    })
    .await?;
    streams_open(&app, 1, "the answering socket").await?;

    // The answering one outlives three pong timeouts and still gets events.
    if let Ok(end) = tokio::time::timeout(PONG * 3, &mut reader).await {
        return Err(format!("the answering socket ended: {:?}", end?).into());
    }
    let job = app.create_job("heard by the answering socket").await?;
    let first = *app.sql_event_ids(job).await?.first().ok_or("no event")?;
    loop {
        let text = tokio::time::timeout(WAIT, heard.recv()).await?.ok_or("the answering socket ended")?;
        let value: Value = serde_json::from_str(&text)?;
        if value["id"].as_i64() == Some(first) {
            break;
        }
    }
    reader.abort();
    Ok(())
}
