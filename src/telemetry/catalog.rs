//! Every metric Aura exports, described once: its name (with its unit), kind, labels, the help
//! text `/metrics` prints on its `# HELP` line, and the histogram buckets that fit what it
//! measures. docs/API.md has the same table for readers; `tests/api/docs.rs` fails when a name
//! used in the code is missing from either.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// How a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Its labels besides `node`, comma-separated.
    pub labels: &'static str,
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, labels: &'static str, help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric, in the order docs/API.md lists them.
pub const METRICS: &[Metric] = &[
    metric("aura_jobs", Gauge, "status", "Jobs in each status, as the jobs table holds them"),
    metric("aura_events_appended_total", Counter, "", "Events this node's writer committed"),
    metric(
        "aura_sqlite_commit_seconds",
        Histogram,
        "",
        "Time from a group's first request to its commit (either database; the name is historic)",
    ),
    metric("aura_stage_seconds", Histogram, "stage", "Wall time of each pipeline stage that ended"),
    metric("aura_ffmpeg_processes", Gauge, "", "ffmpeg and ffprobe children running now"),
    metric("aura_events_delivered_total", Counter, "", "Events written to live streams"),
    metric("aura_events_replayed_total", Counter, "", "Stored events sent by catch-ups from the table"),
    metric("aura_events_collapsed_total", Counter, "", "step-progress events a batch window left out"),
    metric("aura_delivery_lag_seconds", Histogram, "", "Time from an event's commit to its fan-out"),
    metric("aura_streams_opened_total", Counter, "kind", "Streams opened (kind: job, all, ws)"),
    metric("aura_streams_served_total", Counter, "via", "Streams served (via: socket, the takeover; hyper)"),
    metric("aura_open_streams", Gauge, "kind", "Streams open now"),
    metric("aura_open_streams_by_class", Gauge, "class", "Streams open now, by class of their caller"),
    metric("aura_open_streams_total", Gauge, "", "Streams open now, all kinds together"),
    metric(
        "aura_stream_catch_ups_total",
        Counter,
        "",
        "Times a reader too slow for the fan-out caught up again",
    ),
    metric(
        "aura_streams_stalled_total",
        Counter,
        "",
        "Streams ended because their client took nothing for the write timeout",
    ),
    metric("aura_ws_pong_timeouts_total", Counter, "", "WebSockets closed for not answering a ping"),
    metric(
        "aura_connections_refused_total",
        Counter,
        "",
        "Connections closed at once past the connection cap",
    ),
    metric(
        "aura_header_timeouts_total",
        Counter,
        "",
        "Connections closed for not sending a request head in time",
    ),
    metric("aura_rejections_total", Counter, "reason", "Requests refused, by problem kind"),
    metric(
        "aura_webhook_deliveries_total",
        Counter,
        "outcome",
        "Webhook attempts (delivered, retrying, failed)",
    ),
    metric("aura_webhook_lag_events", Gauge, "endpoint", "Newest event id minus the endpoint's position"),
    metric("aura_webhook_delivering", Gauge, "", "1 on the node that delivers webhooks now"),
];

/// Where a metric's values fall, in seconds: a stage may take up to an hour, a commit or a
/// fan-out a few milliseconds.
fn buckets(name: &str) -> Option<&'static [f64]> {
    match name {
        "aura_stage_seconds" => {
            Some(&[0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0])
        }
        "aura_sqlite_commit_seconds" => Some(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]),
        "aura_delivery_lag_seconds" => {
            Some(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        }
        _ => None,
    }
}

/// The exporter set up for every metric above: buckets per histogram, and `node` on every
/// series (several nodes may share one Prometheus).
pub fn exporter(node: &str) -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new().add_global_label("node", node);
    for m in METRICS.iter().filter(|m| m.kind == Histogram) {
        if let Some(buckets) = buckets(m.name) {
            builder = builder.set_buckets_for_metric(Matcher::Full(m.name.to_owned()), buckets)?;
        }
    }
    Ok(builder)
}

/// Gives every metric its `# HELP` text (once a recorder is installed).
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_has_buckets_and_every_name_says_its_unit_or_what_it_counts() {
        for m in METRICS {
            match m.kind {
                Histogram => {
                    assert!(buckets(m.name).is_some(), "{} has no buckets", m.name);
                    assert!(m.name.ends_with("_seconds"), "{} names no unit", m.name);
                }
                Counter => assert!(m.name.ends_with("_total"), "a counter ends in _total: {}", m.name),
                Gauge => {}
            }
            assert!(!m.help.is_empty());
        }
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "each metric once");
    }
}
