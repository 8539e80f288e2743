//! Publisher mode: POSTs `count` JSON messages at a fixed rate, each stamped
//! with `seq` and `ts_us` (unix microseconds taken just before it is sent), for
//! pub/sub hubs such as Nchan whose subscribers then measure delivery latency.
//! With `--body`/`--body-file` it sends that JSON body instead, for servers
//! that are not pub/sub hubs (Aura: each `POST /api/jobs` appends one event).
//! Every `{ts_us}` in such a body becomes the same unix-microsecond stamp, taken
//! just before the send, so a subscriber can measure latency from the same
//! clock point as for a stamped body (see `stamp`).

use crate::http::{Target, parse_headers};
use crate::{stamp, stats};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

#[derive(Args, Debug)]
pub struct PubArgs {
    /// Publish URL (POST).
    #[arg(long)]
    url: String,
    /// Number of messages.
    #[arg(short = 'm', long, default_value_t = 100)]
    count: u64,
    /// Messages per second.
    #[arg(short = 'r', long, default_value_t = 10.0)]
    rate: f64,
    /// Approximate body size in bytes (padded with a "pad" field).
    #[arg(long, default_value_t = 150)]
    size: usize,
    /// First `seq` value.
    #[arg(long, default_value_t = 1)]
    first_seq: u64,
    /// Send this fixed JSON body with every POST instead of the stamped `{"seq","ts_us","pad"}` one
    /// (--size and --first-seq are then unused), e.g. '{"brief":{"topic":"bench"}}'.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Like --body, read from this file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Keep-alive connections used in parallel (a slow answer does not hold back the schedule).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Wait for this file to exist before publishing (see `sub --ready-file`).
    #[arg(long)]
    wait_file: Option<PathBuf>,
    /// Seconds to wait for --wait-file.
    #[arg(long, default_value_t = 120.0)]
    wait_timeout: f64,
    /// Seconds to sleep after --wait-file appears (or before starting).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct WorkerOut {
    post_us: Vec<u64>,
    lag_us: Vec<u64>,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// What each POST carries.
/// Replaced by the send time (unix microseconds) in a `--body` template.
const TS_PLACEHOLDER: &str = "{ts_us}";

#[derive(Debug, Clone)]
enum BodySpec {
    /// `{"seq":k,"ts_us":…,"pad":"…"}` padded to about this many bytes.
    Stamped(usize),
    /// The same bytes every time.
    Fixed(Bytes),
    /// These bytes with every `{ts_us}` replaced by the send time.
    Template(String),
}

impl BodySpec {
    fn from_args(a: &PubArgs) -> Result<Self> {
        let raw = match (&a.body, &a.body_file) {
            (Some(b), _) => b.clone().into_bytes(),
            (None, Some(f)) => std::fs::read(f).with_context(|| format!("read {}", f.display()))?,
            (None, None) => return Ok(Self::Stamped(a.size)),
        };
        serde_json::from_slice::<serde_json::Value>(&raw).context("--body / --body-file is not valid JSON")?;
        match String::from_utf8(raw) {
            Ok(text) if text.contains(TS_PLACEHOLDER) => Ok(Self::Template(text)),
            Ok(text) => Ok(Self::Fixed(Bytes::from(text))),
            Err(e) => Ok(Self::Fixed(Bytes::from(e.into_bytes()))),
        }
    }

    fn make(&self, seq: u64) -> Bytes {
        match self {
            Self::Stamped(size) => body(seq, stamp::now_us(), *size),
            Self::Fixed(b) => b.clone(),
            Self::Template(t) => Bytes::from(t.replace(TS_PLACEHOLDER, &stamp::now_us().to_string())),
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Self::Stamped(size) => json!({"kind": "stamped", "size": size}),
            Self::Fixed(b) => json!({"kind": "fixed", "bytes": b.len()}),
            Self::Template(t) => json!({"kind": "stamped template", "bytes": t.len()}),
        }
    }
}

fn body(seq: u64, ts_us: i64, size: usize) -> Bytes {
    let base = format!(r#"{{"seq":{seq},"ts_us":{ts_us},"pad":""}}"#);
    let pad = size.saturating_sub(base.len());
    Bytes::from(format!(
        r#"{{"seq":{seq},"ts_us":{ts_us},"pad":"{}"}}"#,
        "x".repeat(pad)
    ))
}

async fn worker(
    target: Arc<Target>,
    headers: Arc<Vec<(String, String)>>,
    rx: Arc<Mutex<mpsc::Receiver<(u64, Instant)>>>,
    spec: Arc<BodySpec>,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut conn = None;
    loop {
        let Some((seq, due)) = rx.lock().await.recv().await else {
            break;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            if conn.is_none() {
                match target.connect().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        *out.errors.entry(format!("{e:#}")).or_default() += 1;
                        if attempt < 3 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        break;
                    }
                }
            }
            let send = conn.as_mut().expect("connected above");
            let now = Instant::now();
            let req = match target.request("POST", &headers, spec.make(seq)) {
                Ok(r) => r,
                Err(e) => {
                    *out.errors.entry(format!("{e:#}")).or_default() += 1;
                    break;
                }
            };
            let res = async {
                send.ready().await?;
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                anyhow::Ok(status)
            }
            .await;
            match res {
                Ok(status) => {
                    out.first_send.get_or_insert(now);
                    out.last_send = Some(now);
                    out.lag_us.push(now.saturating_duration_since(due).as_micros() as u64);
                    out.post_us.push(now.elapsed().as_micros() as u64);
                    *out.statuses.entry(status).or_default() += 1;
                    break;
                }
                Err(e) => {
                    conn = None;
                    *out.errors.entry(format!("{e:#}")).or_default() += 1;
                    if attempt >= 3 {
                        break;
                    }
                }
            }
        }
    }
    out
}

pub async fn run(a: PubArgs) -> Result<()> {
    if !a.rate.is_finite() || a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let target = Arc::new(Target::parse(&a.url)?);
    let spec = Arc::new(BodySpec::from_args(&a)?);
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(parse_headers(&a.headers)?);
    let headers = Arc::new(headers);
    if let Some(f) = &a.wait_file {
        let until = Instant::now() + Duration::from_secs_f64(a.wait_timeout);
        while !f.exists() {
            if Instant::now() > until {
                bail!("{} did not appear within {}s", f.display(), a.wait_timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(a.delay)).await;

    let (tx, rx) = mpsc::channel(a.count.clamp(1, 1 << 20) as usize);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..a.conns.max(1))
        .map(|_| tokio::spawn(worker(target.clone(), headers.clone(), rx.clone(), spec.clone())))
        .collect();
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / a.rate);
    for k in 0..a.count {
        let due = start + period.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        tx.send((a.first_seq + k, due.into_std()))
            .await
            .context("workers gone")?;
    }
    drop(tx);
    let mut all = WorkerOut::default();
    for w in workers {
        let o = w.await.context("publisher worker panicked")?;
        all.post_us.extend(o.post_us);
        all.lag_us.extend(o.lag_us);
        all.first_send = match (all.first_send, o.first_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.last_send = all.last_send.max(o.last_send);
        for (k, v) in o.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let sent = all.post_us.len() as u64;
    let span = match (all.first_send, all.last_send) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let achieved = if span > 0.0 {
        (sent.saturating_sub(1)) as f64 / span
    } else {
        0.0
    };
    let post = stats::summarize(&mut all.post_us);
    let lag = stats::summarize(&mut all.lag_us);
    let out = json!({
        "requested": a.count, "sent": sent, "rate_requested": a.rate, "rate_achieved": achieved,
        "post_us": post, "schedule_lag_us": lag, "statuses": all.statuses, "errors": all.errors,
        "body": spec.describe(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "published {sent}/{} at {achieved:.1} msg/s (asked {}); statuses {:?}",
            a.count, a.rate, all.statuses
        );
        println!("{}", stats::line("POST round trip", &post));
        println!("{}", stats::line("schedule lag", &lag));
        for (e, n) in &all.errors {
            println!("error x{n}: {e}");
        }
    }
    if sent < a.count {
        bail!("{} of {} messages were not published", a.count - sent, a.count);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn body_is_padded_json() {
        let b = super::body(7, 1_700_000_000_000_000, 150);
        assert_eq!(b.len(), 150);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(
            crate::stamp::read(std::str::from_utf8(&b).unwrap()).ts_us,
            Some(1_700_000_000_000_000)
        );
    }

    #[test]
    fn fixed_body_is_sent_as_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: super::PubArgs,
        }
        let parse = |extra: &[&str]| {
            let mut args = vec!["pub", "--url", "http://127.0.0.1:1/x"];
            args.extend_from_slice(extra);
            super::BodySpec::from_args(&Cli::try_parse_from(args).unwrap().a)
        };
        let fixed = parse(&["--body", r#"{"brief":{"topic":"bench"}}"#]).unwrap();
        assert_eq!(&fixed.make(1)[..], br#"{"brief":{"topic":"bench"}}"#);
        assert_eq!(fixed.make(1), fixed.make(2));
        assert!(matches!(parse(&[]).unwrap(), super::BodySpec::Stamped(150)));
        assert!(parse(&["--body", "{not json"]).is_err());
        assert!(Cli::try_parse_from(["pub", "--url", "u", "--body", "{}", "--body-file", "f"]).is_err());
        let template = parse(&["--body", r#"{"brief":{"topic":"bench ts_us={ts_us}"}}"#]).unwrap();
        let before = crate::stamp::now_us();
        let sent = template.make(1);
        let stamped = crate::stamp::read(&format!(r#"{{"request":{}}}"#, std::str::from_utf8(&sent).unwrap()));
        assert!(stamped.ts_us.is_some_and(|t| t >= before && t <= crate::stamp::now_us()), "{stamped:?}");
    }
}
