//! The HTTP side of the benchmark: many EventSource-like subscribers, a paced publisher, and
//! readings of the server's CPU and memory from `/proc`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Barrier;

use super::server::Target;
use super::{Checks, Samples, Scenario};

/// Raises the soft open-file limit toward `want` (each stream is one socket here).
pub fn raise_open_files(want: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = (want as u64).min(hard).max(soft);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Some(ticks / hz)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The events of an Aura stream (`id:`, `event:`, `data:` lines and a blank line each), read
/// without a general parser's per-event allocations: the load client must cost less than the
/// server it measures. Comments and `retry:` are skipped.
struct Frames {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: BytesMut,
}

impl Frames {
    fn new(res: reqwest::Response) -> Self {
        Frames { body: Box::pin(res.bytes_stream()), buf: BytesMut::new() }
    }

    /// The next event's id and `data`, or `None` when the stream ends, fails or `until` passes.
    async fn next(&mut self, until: Instant) -> Option<(i64, Bytes)> {
        loop {
            if let Some(event) = next_event(&mut self.buf) {
                return Some(event);
            }
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(chunk))) = tokio::time::timeout(left, self.body.next()).await else { return None };
            self.buf.extend_from_slice(&chunk);
        }
    }
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(64).build()?)
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    count: usize,
    problems: Vec<String>,
}

/// An event stream read off a bare socket: the request written by hand, the chunked body
/// decoded in place. At 10,000 subscribers the load client shares the cores with the server it
/// measures; a general HTTP client's connection task and body channel cost two task wake-ups per
/// chunk, this one wake-up and one `read`.
struct Bare {
    socket: tokio::net::TcpStream,
    /// Bytes off the socket not yet decoded.
    wire: BytesMut,
    /// Decoded body bytes not yet parsed into events.
    buf: BytesMut,
    chunks: Dechunk,
}

/// HTTP/1.1 chunked decoding, fed whatever the socket gave.
#[derive(Default)]
struct Dechunk {
    /// Body bytes left of the chunk being read, then its CRLF (`None` between chunks).
    left: Option<usize>,
}

impl Dechunk {
    /// Moves every chunk body byte `wire` holds to `out`; `false` at the last chunk or on a
    /// malformed one.
    fn decode(&mut self, wire: &mut BytesMut, out: &mut BytesMut) -> bool {
        loop {
            match self.left {
                Some(0) => {
                    if wire.len() < 2 {
                        return true;
                    }
                    if &wire[..2] != b"\r\n" {
                        return false;
                    }
                    let _ = wire.split_to(2);
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(wire.len());
                    if take == 0 {
                        return true;
                    }
                    out.extend_from_slice(&wire.split_to(take));
                    self.left = Some(n - take);
                }
                None => {
                    let Some(eol) = wire.windows(2).position(|w| w == b"\r\n") else { return true };
                    let size = std::str::from_utf8(&wire[..eol])
                        .ok()
                        .and_then(|h| usize::from_str_radix(h, 16).ok());
                    let _ = wire.split_to(eol + 2);
                    match size {
                        Some(0) | None => return false,
                        Some(n) => self.left = Some(n),
                    }
                }
            }
        }
    }
}

impl Bare {
    /// Opens `GET path` and checks for a `200` chunked answer.
    async fn open(authority: &str, path: &str) -> anyhow::Result<Bare> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(authority).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await?;
        let mut wire = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(end) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            anyhow::ensure!(wire.len() < 16 * 1024, "response head too long");
            if socket.read_buf(&mut wire).await? == 0 {
                anyhow::bail!("closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&wire[..end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        anyhow::ensure!(status == "200", "answered {status}");
        anyhow::ensure!(head.contains("transfer-encoding: chunked"), "the body is not chunked");
        let _ = wire.split_to(end + 4);
        Ok(Bare { socket, wire, buf: BytesMut::new(), chunks: Dechunk::default() })
    }

    /// The next event's id and `data`, or `None` when the stream ends, fails or `until` passes.
    async fn next(&mut self, until: Instant) -> Option<(i64, Bytes)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(event) = next_event(&mut self.buf) {
                return Some(event);
            }
            let left = until.saturating_duration_since(Instant::now());
            self.wire.reserve(8192);
            let Ok(Ok(n)) = tokio::time::timeout(left, self.socket.read_buf(&mut self.wire)).await else {
                return None;
            };
            if n == 0 || !self.chunks.decode(&mut self.wire, &mut self.buf) {
                return None;
            }
        }
    }
}

/// Takes the next whole event (with an `id:`) off `buf`, skipping comments and `retry:`.
fn next_event(buf: &mut BytesMut) -> Option<(i64, Bytes)> {
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let frame = buf.split_to(end + 2).freeze();
        let mut id = None;
        let mut data = Bytes::new();
        for line in frame[..end].split(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(b"id: ") {
                id = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            } else if let Some(v) = line.strip_prefix(b"data: ") {
                data = frame.slice_ref(v);
            }
        }
        if let Some(id) = id {
            return Some((id, data));
        }
    }
    None
}

/// One subscriber on `/api/events`: waits at the barrier once connected, then reads until it
/// has `expect` live events or `until` passes. Latency is receipt time − the event's `at`.
async fn subscriber(authority: String, ready: Arc<Barrier>, expect: usize, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let started = OffsetDateTime::now_utc();
    let opened = tokio::time::timeout(Duration::from_secs(30), Bare::open(&authority, "/api/events")).await;
    let mut events = match opened.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 30 s"))) {
        Ok(events) => events,
        Err(e) => {
            ready.wait().await;
            seen.problems.push(format!("subscriber could not open its stream: {e:#}"));
            return seen;
        }
    };
    ready.wait().await;
    let mut last_id = 0i64;
    while seen.count < expect {
        let Some((id, data)) = events.next(until).await else { break };
        let now = OffsetDateTime::now_utc();
        if id <= last_id {
            seen.problems.push(format!("id {id} after {last_id}"));
        }
        last_id = id;
        let data = std::str::from_utf8(&data).unwrap_or("");
        let at = data.find("\"at\":\"").and_then(|i| data.get(i + 6..i + 33));
        let Some(at) = at.and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok()) else { continue };
        if at < started {
            continue; // history, not live
        }
        seen.count += 1;
        seen.latencies_us.push(u64::try_from((now - at).whole_microseconds()).unwrap_or(0));
    }
    if seen.count < expect {
        seen.problems.push(format!("got {} of {expect} events", seen.count));
    }
    seen
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Where a fan-out run publishes and subscribes, and which scenario its rows belong to.
pub struct Fleet<'a> {
    pub scenario: Scenario,
    /// The node the jobs are created on (each creation is one event).
    pub publisher: &'a Target,
    /// The nodes the subscribers are spread over, round-robin.
    pub api: Vec<&'a Target>,
}

impl<'a> Fleet<'a> {
    /// One server that both publishes and serves the streams.
    pub fn one(target: &'a Target) -> Fleet<'a> {
        Fleet { scenario: Scenario::Fanout, publisher: target, api: vec![target] }
    }

    /// CPU seconds the API nodes have used so far, when every one runs here.
    fn api_cpu_secs(&self) -> Option<f64> {
        self.api.iter().map(|t| t.pid.and_then(cpu_secs)).sum()
    }
}

/// A fan-out run's load: `subscribers` streams while jobs are created at `rate` per second for
/// `secs` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub subscribers: usize,
    pub rate: u32,
    pub secs: f64,
}

/// Runs `load` against `fleet`.
pub async fn fanout(
    fleet: &Fleet<'_>,
    load: Load,
    case: &str,
    samples: &mut Samples,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let Load { subscribers: n, rate, secs } = load;
    let http = http()?;
    let total = ((f64::from(rate) * secs).round() as usize).max(1);
    let until = Instant::now() + Duration::from_secs_f64(secs + 30.0);
    let ready = Arc::new(Barrier::new(n + 1));
    let authorities = fleet
        .api
        .iter()
        .map(|t| t.base.strip_prefix("http://").map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow::anyhow!("fan-out needs http:// servers"))?;
    let subs: Vec<_> = (0..n)
        .map(|i| {
            let authority = authorities[i % authorities.len()].clone();
            tokio::spawn(subscriber(authority, ready.clone(), total, until))
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), ready.wait())
        .await
        .map_err(|_| anyhow::anyhow!("subscribers did not connect within 60 s"))?;
    let cpu_before = fleet.api_cpu_secs();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut posts = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        let http = http.clone();
        let url = format!("{}/api/jobs", fleet.publisher.base);
        posts.push(tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({"brief": {"topic": "bench"}}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for p in posts {
        match p.await {
            Ok(Ok(201)) => {}
            Ok(Ok(status)) => checks.0.push(format!("{case}: a job creation answered {status}")),
            Ok(Err(e)) => checks.0.push(format!("{case}: a job creation failed: {e}")),
            Err(e) => checks.0.push(format!("{case}: {e}")),
        }
    }
    let mut latencies = Vec::with_capacity(n * total);
    let mut delivered = 0usize;
    for s in subs {
        let seen = s.await?;
        delivered += seen.count;
        latencies.extend(seen.latencies_us);
        if let Some(p) = seen.problems.first() {
            checks.0.push(format!("{case}: {p}"));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = fleet.api_cpu_secs();
    latencies.sort_unstable();
    let scenario = fleet.scenario;
    samples.add(scenario, case, "delivery p50", "ms", percentile(&latencies, 50.0) / 1000.0);
    samples.add(scenario, case, "delivery p99", "ms", percentile(&latencies, 99.0) / 1000.0);
    samples.add(scenario, case, "deliveries/s", "1/s", delivered as f64 / wall);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after)
        && delivered > 0
    {
        samples.add(
            scenario,
            case,
            match scenario {
                Scenario::Fanout => "server CPU per delivery",
                _ => "API nodes' CPU per delivery",
            },
            "µs",
            (b - a) * 1e6 / delivered as f64,
        );
    }
    Ok(())
}

/// Memory per idle stream: the server's RSS slope from 0 to `n` open, silent streams.
/// What kind of idle connection [`idle`] opens.
#[derive(Debug, Clone, Copy)]
pub enum IdleKind {
    /// A plain stream: the zero-copy fan-out path.
    Plain,
    /// `?batch=100ms`: a stream that follows the hub on its own.
    Batched,
    /// `Accept-Encoding: gzip` (the bench's server enables compression).
    Gzip,
    /// A WebSocket at `/api/ws`.
    WebSocket,
}

pub async fn idle(
    target: &Target,
    n: usize,
    kind: IdleKind,
    case: &str,
    samples: &mut Samples,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let Some(pid) = target.pid else {
        checks.0.push("idle: needs a server started here (no --server) to read its memory".into());
        return Ok(());
    };
    let http = http()?;
    let before = rss_kib(pid).unwrap_or(f64::NAN);
    let url = match kind {
        IdleKind::Batched => format!("{}/api/events?batch=100ms", target.base),
        _ => format!("{}/api/events", target.base),
    };
    let opened: Vec<Option<Box<dyn Send>>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            async move {
                if let IdleKind::WebSocket = kind {
                    return open_websocket(target).await.map(|s| Box::new(s) as Box<dyn Send>);
                }
                let mut req = http.get(url);
                if let IdleKind::Gzip = kind {
                    req = req.header("accept-encoding", "gzip");
                }
                let res = req.send().await.ok()?;
                let mut body = res.bytes_stream();
                // The `retry:` preamble: the stream is open on both sides.
                body.next().await?.ok()?;
                Some(Box::new(body) as Box<dyn Send>)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open = opened.iter().filter(|b| b.is_some()).count();
    if open < n {
        checks.0.push(format!("{case}: only {open} of {n} streams opened"));
    }
    // Let allocations settle (a measurement pause, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).unwrap_or(f64::NAN);
    samples.add(Scenario::Idle, case, "memory per idle stream", "KiB", (after - before) / open.max(1) as f64);
    samples.add(Scenario::Idle, case, "server RSS at 0 streams", "MiB", before / 1024.0);
    drop(opened);
    Ok(())
}

/// A WebSocket to `/api/ws` whose handshake has been answered `101`; it then sits idle (the
/// bench reads no frames, so a raw handshake is all it needs).
async fn open_websocket(target: &Target) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = target.base.strip_prefix("http://")?;
    let mut socket = tokio::net::TcpStream::connect(authority).await.ok()?;
    let request = format!(
        "GET /api/ws?lastEventId=0 HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut head)).await.ok()?.ok()?;
    head[..n].starts_with(b"HTTP/1.1 101").then_some(socket)
}

/// Time for one subscriber to receive a `backlog`-event history from the start.
pub async fn resume(
    target: &Target,
    backlog: usize,
    case: &str,
    samples: &mut Samples,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let http = http()?;
    let started = Instant::now();
    let res = http.get(format!("{}/api/events", target.base)).header("Last-Event-ID", "0").send().await?;
    let mut events = Frames::new(res);
    let mut got = 0usize;
    let mut last = 0i64;
    let until = Instant::now() + Duration::from_secs(120);
    while got < backlog {
        let Some((id, _)) = events.next(until).await else { break };
        if id != last + 1 {
            checks.0.push(format!("{case}: id {id} after {last}"));
        }
        last = id;
        got += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    if got < backlog {
        checks.0.push(format!("{case}: got {got} of {backlog} events"));
    }
    samples.add(Scenario::Resume, case, "time to whole backlog", "ms", secs * 1000.0);
    samples.add(Scenario::Resume, case, "events/s", "1/s", got as f64 / secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_stream_split_anywhere_decodes_to_the_same_events() {
        let body =
            b"7\r\nretry: \r\n13\r\n1000\n\nid: 1\ndata: a\r\nb\r\n\n\nid: 2\ndat\r\n6\r\na: b\n\n\r\n";
        for cut in 0..body.len() {
            let (mut chunks, mut wire, mut out) = (Dechunk::default(), BytesMut::new(), BytesMut::new());
            for piece in [&body[..cut], &body[cut..]] {
                wire.extend_from_slice(piece);
                assert!(chunks.decode(&mut wire, &mut out), "cut at {cut}");
            }
            assert_eq!(next_event(&mut out), Some((1, Bytes::from_static(b"a"))), "cut at {cut}");
            assert_eq!(next_event(&mut out), Some((2, Bytes::from_static(b"b"))), "cut at {cut}");
            assert_eq!(next_event(&mut out), None);
        }
        let (mut chunks, mut out) = (Dechunk::default(), BytesMut::new());
        assert!(
            !chunks.decode(&mut BytesMut::from(&b"0\r\n\r\n"[..]), &mut out),
            "the last chunk ends the stream"
        );
    }
}
