//! The fault harness (Toxiproxy's idea, Jepsen's checker): a TCP proxy the tests put between a
//! node and its database or object store, which cuts connections (all of them, or those whose
//! first bytes a predicate picks, such as every PostgreSQL connection but the writer's), refuses
//! or black-holes new ones, or delays every chunk; a subscriber that follows `/api/events` the
//! way EventSource does (resuming with `Last-Event-ID` after every drop, hopping between nodes)
//! and records every id it saw; and the checker that compares what it saw with the table.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::{SseItem, SseStream, TestResult};

/// How much of what a client sends first the proxy keeps, to tell connections apart.
const HELLO: usize = 1024;

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close each new connection at once (the service is down).
    Refuse,
    /// Accept and hold each new connection, forward nothing (a partition: no reset, no answer).
    BlackHole,
    /// Forward both ways, each chunk after this delay.
    Delay(Duration),
}

struct Conn {
    id: u64,
    hello: Arc<Mutex<Vec<u8>>>,
    kill: CancellationToken,
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    conns: Mutex<Vec<Conn>>,
    next: AtomicU64,
    cuts: AtomicU64,
}

/// A TCP proxy on a loopback port in front of `target`. Dropping it closes every connection.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> TestResult<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy { port, shared, accept })
    }

    /// A proxy in front of the PostgreSQL server of `url`, and `url` pointed at the proxy.
    pub async fn for_postgres(url: &str) -> TestResult<(FaultProxy, String)> {
        let (scheme_user, rest) = url.split_once('@').ok_or("a postgres URL with user@host:port")?;
        let (authority, path) = rest.split_once('/').ok_or("a postgres URL with a database")?;
        let target: SocketAddr = authority.parse()?;
        let proxy = FaultProxy::start(target).await?;
        let proxied = format!("{scheme_user}@127.0.0.1:{}/{path}", proxy.port);
        Ok((proxy, proxied))
    }

    pub fn set(&self, mode: Mode) {
        if let Ok(mut m) = self.shared.mode.lock() {
            *m = mode;
        }
    }

    /// Closes every open connection whose first bytes `pick` chooses; returns how many.
    pub fn cut_where(&self, pick: impl Fn(&[u8]) -> bool) -> usize {
        let Ok(mut conns) = self.shared.conns.lock() else { return 0 };
        let mut cut = 0;
        conns.retain(|c| {
            let hello = c.hello.lock().map(|h| h.clone()).unwrap_or_default();
            if pick(&hello) {
                c.kill.cancel();
                cut += 1;
                false
            } else {
                true
            }
        });
        self.shared.cuts.fetch_add(cut as u64, Ordering::Relaxed);
        cut
    }

    /// Closes every open connection.
    pub fn cut_all(&self) -> usize {
        self.cut_where(|_| true)
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    /// Cuts the connections `pick` chooses every `every`, for `lasting` (bounded).
    pub fn cut_repeatedly(
        self: &Arc<Self>,
        every: Duration,
        lasting: Duration,
        pick: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> JoinHandle<()> {
        let proxy = self.clone();
        tokio::spawn(async move {
            let end = Instant::now() + lasting;
            while Instant::now() < end {
                tokio::time::sleep(every).await;
                proxy.cut_where(&pick);
            }
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

/// Whether a PostgreSQL connection is one of a node's writer connections (its startup message
/// names the application `aura-writer`).
pub fn is_pg_writer(hello: &[u8]) -> bool {
    hello.windows(b"aura-writer".len()).any(|w| w == b"aura-writer")
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let mode = shared.mode.lock().map(|m| *m).unwrap_or(Mode::Refuse);
        if mode == Mode::Refuse {
            drop(client);
            continue;
        }
        let conn = Conn {
            id: shared.next.fetch_add(1, Ordering::Relaxed),
            hello: Arc::default(),
            kill: CancellationToken::new(),
        };
        let (hello, kill, id) = (conn.hello.clone(), conn.kill.clone(), conn.id);
        if let Ok(mut conns) = shared.conns.lock() {
            conns.push(conn);
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            if mode == Mode::BlackHole {
                kill.cancelled().await;
            } else if let Ok(upstream) = TcpStream::connect(shared.target).await {
                let delay = match mode {
                    Mode::Delay(d) => d,
                    _ => Duration::ZERO,
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::select! {
                    () = pump(cr, uw, Some(hello), delay) => {}
                    () = pump(ur, cw, None, delay) => {}
                    () = kill.cancelled() => {}
                }
            }
            if let Ok(mut conns) = shared.conns.lock() {
                conns.retain(|c| c.id != id);
            }
        });
    }
}

/// Copies `from` to `to` until either ends, keeping the first bytes in `hello`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hello: Option<Arc<Mutex<Vec<u8>>>>,
    delay: Duration,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(hello) = &hello
            && let Ok(mut h) = hello.lock()
            && h.len() < HELLO
        {
            let take = n.min(HELLO - h.len());
            h.extend_from_slice(&buf[..take]);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// What one EventSource-like client saw: every `(id, type)` in the order it arrived, across
/// every reconnect.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<(i64, String)>,
    pub reconnects: u32,
}

/// Follows `/api/events` on `bases` (a new connection to the next base after every drop, as a
/// client behind a load balancer would), resuming from the last id it saw, until `stop` is
/// cancelled and it has seen `through()` or more, or `bound` has passed.
pub fn follow_all(
    bases: Vec<String>,
    stop: CancellationToken,
    through: Arc<AtomicU64>,
    bound: Duration,
) -> JoinHandle<TestResult<Seen>> {
    follow_hopping(bases, stop, through, bound, None)
}

/// [`follow_all`], which also drops its connection on purpose every `hop` (and so moves to the
/// next base), as a client on a flaky network would.
pub fn follow_hopping(
    bases: Vec<String>,
    stop: CancellationToken,
    through: Arc<AtomicU64>,
    bound: Duration,
    hop: Option<Duration>,
) -> JoinHandle<TestResult<Seen>> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let deadline = Instant::now() + bound;
        let mut seen = Seen::default();
        let mut last = 0i64;
        let mut turn = 0usize;
        loop {
            let done = |last: i64| stop.is_cancelled() && last >= through.load(Ordering::Relaxed) as i64;
            if done(last) {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the subscriber reached id {last} of {}",
                    through.load(Ordering::Relaxed)
                )
                .into());
            }
            let base = &bases[turn % bases.len()];
            turn += 1;
            let res = client
                .get(format!("{base}/api/events"))
                .header("last-event-id", last.to_string())
                .send()
                .await;
            let Ok(res) = res else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if res.status() != 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            seen.reconnects += 1;
            let mut stream = SseStream::new(res);
            let hop_at = hop.map(|h| Instant::now() + h);
            // Read until the stream drops, it is time to hop, or (once asked to stop) it has
            // caught up.
            loop {
                if hop_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
                match next {
                    Ok(Ok(Some(SseItem::Event { id: Some(id), event, .. }))) => {
                        let id: i64 = id.parse()?;
                        last = id;
                        seen.events.push((id, event));
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None) | Err(_)) => break,
                    Err(_) if done(last) || Instant::now() > deadline => break,
                    Err(_) => {}
                }
            }
        }
    })
}

/// The checker: `seen` must be exactly `table` (every stored id), once each, in ascending order.
pub fn check_exactly_once(seen: &Seen, table: &[(i64, String)]) {
    if let Err(e) = verify_exactly_once(seen, table) {
        panic!("{e}");
    }
}

/// [`check_exactly_once`] as a verdict: what was lost, repeated, out of order or never stored.
pub fn verify_exactly_once(seen: &Seen, table: &[(i64, String)]) -> Result<(), String> {
    let ids: Vec<i64> = seen.events.iter().map(|(id, _)| *id).collect();
    let mut repeated = Vec::new();
    let mut out_of_order = Vec::new();
    for pair in ids.windows(2) {
        if pair[1] == pair[0] {
            repeated.push(pair[1]);
        } else if pair[1] < pair[0] {
            out_of_order.push((pair[0], pair[1]));
        }
    }
    let saw: BTreeSet<i64> = ids.iter().copied().collect();
    let lost: Vec<&(i64, String)> = table.iter().filter(|(id, _)| !saw.contains(id)).collect();
    let stored: BTreeSet<i64> = table.iter().map(|(id, _)| *id).collect();
    let invented: Vec<i64> = saw.difference(&stored).copied().collect();
    if lost.is_empty() && repeated.is_empty() && out_of_order.is_empty() && invented.is_empty() {
        return Ok(());
    }
    Err(format!(
        "lost {lost:?}, repeated {repeated:?}, out of order {out_of_order:?}, never stored {invented:?} \
         ({} seen over {} connections, {} stored)",
        ids.len(),
        seen.reconnects,
        table.len()
    ))
}

/// The harness itself: each mode does what it says on a real TCP echo server, and a cut closes
/// only the connections it picks.
#[tokio::test]
async fn the_fault_proxy_passes_delays_black_holes_refuses_and_cuts_what_it_picks() -> TestResult {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(target).await?;
    let addr = ("127.0.0.1", proxy.port);
    let round_trip = |mut conn: TcpStream, msg: &'static [u8]| async move {
        conn.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut back)).await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((conn, back))
    };

    let (keep, back) = round_trip(TcpStream::connect(addr).await?, b"keep me").await?;
    assert_eq!(back, b"keep me");
    let (cut, _) = round_trip(TcpStream::connect(addr).await?, b"cut me").await?;
    assert_eq!(proxy.cut_where(|hello| hello.starts_with(b"cut")), 1);
    let mut byte = [0u8; 1];
    let mut cut = cut;
    let read = tokio::time::timeout(Duration::from_secs(2), cut.read(&mut byte)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "a cut connection is closed");
    let (_keep, back) = round_trip(keep, b"still here").await?;
    assert_eq!(back, b"still here", "a connection not picked stays open");

    proxy.set(Mode::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    round_trip(TcpStream::connect(addr).await?, b"slow").await?;
    assert!(started.elapsed() >= Duration::from_millis(300), "both directions are delayed");

    proxy.set(Mode::BlackHole);
    let held = round_trip(TcpStream::connect(addr).await?, b"anyone?").await;
    assert!(held.is_err(), "a black hole answers nothing");

    proxy.set(Mode::Refuse);
    let mut refused = TcpStream::connect(addr).await?;
    let read = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut byte)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "a refused connection is closed at once");
    Ok(())
}
