//! Streams that own their socket (a connection whose first request is the stream): a client
//! that stops reading is caught up from the table without a gap, and the bytes on the wire are
//! plain HTTP/1.1 chunked framing any client can read. The same holds for a stream hyper
//! serves (a reused connection, or `AURA_STREAM_TAKEOVER=false`).

use std::net::SocketAddr;
use std::time::Duration;

use aura::config::Synchronous;
use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{TestApp, TestResult, WAIT, spawn_app_with};

/// An HTTP/1.1 response read by hand: the head, then the chunked body's SSE ids.
struct RawResponse {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl RawResponse {
    async fn fill(&mut self) -> TestResult<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.conn.read(&mut chunk)).await??;
        if n == 0 {
            return Err("the server closed the connection mid-response".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads up to `needle` (inclusive) and returns it.
    async fn until(&mut self, needle: &[u8]) -> TestResult<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.windows(needle.len()).position(|w| w == needle) {
                return Ok(self.buf.drain(..pos + needle.len()).collect());
            }
            self.fill().await?;
        }
    }

    async fn head(&mut self) -> TestResult<String> {
        Ok(String::from_utf8(self.until(b"\r\n\r\n").await?)?)
    }

    /// The next chunk's data; `None` for the last (zero-length) chunk.
    async fn chunk(&mut self) -> TestResult<Option<Vec<u8>>> {
        let size = self.until(b"\r\n").await?;
        let size = usize::from_str_radix(std::str::from_utf8(&size[..size.len() - 2])?, 16)?;
        while self.buf.len() < size + 2 {
            self.fill().await?;
        }
        let data: Vec<u8> = self.buf.drain(..size).collect();
        assert_eq!(self.buf.drain(..2).collect::<Vec<u8>>(), b"\r\n", "a chunk ends with CRLF");
        Ok((size > 0).then_some(data))
    }

    /// Every `id:` of the body, in order, until the response ends.
    async fn ids_until_end(&mut self) -> TestResult<Vec<i64>> {
        let mut body = Vec::new();
        while let Some(data) = self.chunk().await? {
            body.extend_from_slice(&data);
        }
        let text = String::from_utf8(body)?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|id| id.parse())
            .collect::<Result<_, _>>()?)
    }
}

/// Opens a job's stream on a socket with a 4 KiB receive buffer and reads its head and `retry:`;
/// `reuse` sends a health request first, so that hyper serves the stream.
async fn open_small_window_stream(app: &TestApp, job: uuid::Uuid, reuse: bool) -> TestResult<RawResponse> {
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let conn = socket.connect(addr).await?;
    let mut res = RawResponse { conn, buf: Vec::new() };
    if reuse {
        res.conn.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await?;
        let head = res.head().await?.to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .ok_or("no content-length")?
            .trim()
            .parse()?;
        while res.buf.len() < length {
            res.fill().await?;
        }
        res.buf.drain(..length);
    }
    res.conn
        .write_all(format!("GET /api/jobs/{job}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let head = res.head().await?.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("connection: keep-alive\r\n"), "{head}");
    assert_eq!(res.chunk().await?.as_deref(), Some(&b"retry: 3000\n\n"[..]));
    Ok(res)
}

/// About 6.5 MB of events: more than the largest send buffer the kernel grants a socket
/// (tcp_wmem max, 4 MiB by default), so a stream whose client does not read must fall behind.
pub async fn append_a_lot(app: &TestApp, job: uuid::Uuid) -> TestResult {
    lifecycle::claim(app.state.store(), job).await?;
    let handle = JobHandle::new(app.state.store().clone(), job);
    for i in 0..4000 {
        let message = format!("step {i} {}", "x".repeat(1600));
        handle.progress(Stage::ALL[i / 800], (i % 800) as f64 / 8.0, message).await?;
    }
    handle.cancelled(Some(Stage::Render)).await?;
    Ok(())
}

/// A small memory of recent events, so that catching up reads SQLite too; no fsync per commit,
/// so that thousands of events append in a moment.
async fn app_for_slow_readers(takeover: bool) -> TestResult<TestApp> {
    spawn_app_with(|c| {
        c.stream_buffer = 16;
        c.synchronous = Synchronous::Normal;
        c.stream_takeover = takeover;
        // Appending takes longer than the write timeout on a loaded machine (and on PostgreSQL,
        // a round trip per statement): the stall must outlast the appends, not the stream.
        c.write_timeout_secs = 300;
    })
    .await
}

/// Both ways a stream is served: on its own socket, or by hyper (`reuse` the connection with
/// the takeover on, or every connection with it off).
const WAYS: [(bool, bool); 3] = [(true, false), (true, true), (false, false)];

const CATCH_UPS: &str = "aura_stream_catch_ups_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_caught_up_from_the_table_missing_nothing() -> TestResult {
    for (takeover, reuse) in WAYS {
        let app = app_for_slow_readers(takeover).await?;
        let job = app.create_job("a reader that stalls").await?;
        let mut res = open_small_window_stream(&app, job, reuse).await?;
        let catch_ups = app.metric(CATCH_UPS).await?;
        append_a_lot(&app, job).await?;

        let ids = res.ids_until_end().await?;
        assert_eq!(ids, app.sql_event_ids(job).await?, "every event once, in order ({takeover}, {reuse})");
        assert!(
            app.metric(CATCH_UPS).await? > catch_ups,
            "the stream fell behind and caught up (otherwise this test proves nothing)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_up_shutdown() -> TestResult {
    for (takeover, reuse) in WAYS {
        let app = app_for_slow_readers(takeover).await?;
        let job = app.create_job("a reader that never reads again").await?;
        let _res = open_small_window_stream(&app, job, reuse).await?;
        append_a_lot(&app, job).await?;
        let started = std::time::Instant::now();
        app.stop().await?;
        // Before the 5 s shutdown grace runs out: the stalled stream ends on its own.
        assert!(started.elapsed() < Duration::from_secs(4), "stopped in {:?}", started.elapsed());
    }
    Ok(())
}
