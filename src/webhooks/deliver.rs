//! One endpoint's delivery task: the events of its types after its stored position, one at a
//! time, in id order, each until it gets a 2xx or has been retried for 24 hours.
//!
//! The stored position moves in the same write that records the successful (or abandoned)
//! attempt, so a restart resumes exactly after the last event that was acknowledged: one
//! acknowledged before a crash is never sent again, one not yet acknowledged is sent after it.
//! Events of other types are passed over in memory and the position is stored for them at
//! most once a second, when the task has nothing else to do.
//!
//! An acknowledgement that could not be recorded (the database went away, or the delivery lock
//! was lost, between the 2xx and its write) is kept in this node's memory ([`Acknowledged`]):
//! when this node delivers again it starts after it, and stores it with its next position. Only
//! a node that dies in that moment, or another node that takes over before the database answers
//! again, sends such an event twice; receivers tell a repeat by its `webhook-id`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Settings, sign, target, unix_now};
use crate::domain::event::{StoredEvent, format_at, now_micros};
use crate::store::webhooks::{Attempt, DeliveryLock, Endpoint, Write, Written};
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// Events read per query.
const PAGE: u32 = 100;
/// The longest wait between two attempts, whatever the base.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often at most the position is stored for events passed over.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// How much of an answer's body is read (and dropped) so the connection can be reused.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// The wait before reading the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The newest event each endpoint answered 2xx for on this node, whether or not the database
/// took the record: positions only grow, so this node never sends an event again below it.
#[derive(Default)]
pub struct Acknowledged(Mutex<HashMap<Uuid, i64>>);

impl Acknowledged {
    fn note(&self, endpoint: Uuid, id: i64) {
        if let Ok(mut acked) = lock(&self.0, "acknowledged events") {
            let newest = acked.entry(endpoint).or_insert(id);
            *newest = (*newest).max(id);
        }
    }

    fn of(&self, endpoint: Uuid) -> Option<i64> {
        lock(&self.0, "acknowledged events").ok().and_then(|acked| acked.get(&endpoint).copied())
    }

    /// Forgets a deleted endpoint.
    pub fn forget(&self, endpoint: Uuid) {
        if let Ok(mut acked) = lock(&self.0, "acknowledged events") {
            acked.remove(&endpoint);
        }
    }
}

/// What one endpoint's task needs.
pub struct Task {
    pub store: Store,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub endpoint: Uuid,
    /// The highest published event id.
    pub head: watch::Receiver<i64>,
    /// This node's right to deliver: confirmed before every attempt, and the way attempts and
    /// positions are written.
    pub lock: Arc<DeliveryLock>,
    /// Cancelled when the endpoint is deleted: an attempt in flight is abandoned.
    pub stop: CancellationToken,
    /// Cancelled when the server shuts down or this node loses the delivery lock: the attempt
    /// in flight ends and is recorded (through the lock's last write, see `DeliveryLock`), so
    /// that the node that delivers next does not send it again; nothing more is sent.
    pub finish: CancellationToken,
    /// What this node delivered, recorded or not.
    pub acked: Arc<Acknowledged>,
}

/// Why a task ends.
enum Stop {
    /// Deleted, or the server is shutting down.
    Done,
}

/// Runs until the endpoint is deleted or the server shuts down.
#[tracing::instrument(skip_all, fields(webhook_id = %task.endpoint))]
pub async fn run(mut task: Task) {
    let Some(endpoint) = load(&task).await else { return };
    let stored_position = endpoint.position;
    // Past what this node delivered before, even if the database never heard of it; stored with
    // the next position this task writes.
    let mut position = stored_position.max(task.acked.of(task.endpoint).unwrap_or(0));
    let mut stored = stored_position;
    let mut last_store = Instant::now();
    let lag = metrics::gauge!("aura_webhook_lag_events", "endpoint" => task.endpoint.to_string());
    loop {
        if task.stop.is_cancelled() || task.finish.is_cancelled() {
            return;
        }
        let head = *task.head.borrow_and_update();
        lag.set((head - position).max(0) as f64);
        if head > position {
            let Some(endpoint) = load(&task).await else { return };
            let page = match task.store.events_of_types(&endpoint.events, position, head, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reading events for a webhook failed; retrying");
                    if pause(&task, STORE_RETRY).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let complete = page.len() < PAGE as usize;
            for event in page {
                if deliver(&task, &event).await.is_err() {
                    return;
                }
                position = event.id;
                stored = position;
                lag.set((*task.head.borrow() - position).max(0) as f64);
            }
            if complete {
                // Nothing else of its types up to `head`: the rest is passed over.
                position = position.max(head);
            }
            continue;
        }
        if position > stored {
            let wait = PERSIST_EVERY.saturating_sub(last_store.elapsed());
            if wait.is_zero() {
                let advance = Write::Advance { endpoint: task.endpoint, position };
                match task.lock.write(&task.store, advance).await {
                    Ok(_) => stored = position,
                    Err(StoreError::Closed | StoreError::LockLost) => return,
                    Err(e) => tracing::warn!(error = %e, "storing a webhook's position failed"),
                }
                last_store = Instant::now();
                continue;
            }
            tokio::select! {
                changed = task.head.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
                () = task.stop.cancelled() => return,
                () = task.finish.cancelled() => return,
            }
            continue;
        }
        tokio::select! {
            changed = task.head.changed() => if changed.is_err() { return },
            () = task.stop.cancelled() => return,
            () = task.finish.cancelled() => return,
        }
    }
}

/// The endpoint as stored now (its secrets may have been rotated); `None` once it is deleted
/// or the task is stopped.
async fn load(task: &Task) -> Option<Endpoint> {
    loop {
        match task.store.webhook(task.endpoint).await {
            Ok(endpoint) => return endpoint,
            Err(e) => {
                tracing::warn!(error = %e, "reading a webhook endpoint failed; retrying");
                pause(task, STORE_RETRY).await.ok()?;
            }
        }
    }
}

/// Waits, unless the task is stopped or told to finish first.
async fn pause(task: &Task, wait: Duration) -> Result<(), Stop> {
    tokio::select! {
        () = tokio::time::sleep(wait) => Ok(()),
        () = ending(task) => Err(Stop::Done),
    }
}

/// Ready once the task is stopped or told to finish.
async fn ending(task: &Task) {
    tokio::select! {
        () = task.stop.cancelled() => {}
        () = task.finish.cancelled() => {}
    }
}

/// Delivers one event: attempts until a 2xx, or until it has been tried for
/// `give_up_after`, recording every attempt. `Err` when the task must stop.
async fn deliver(task: &Task, event: &StoredEvent) -> Result<(), Stop> {
    let body = payload(event);
    let (mut tries, first) = task.store.webhook_tries(task.endpoint, event.id).await.unwrap_or((0, None));
    let first = first
        .and_then(|at| time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(now_micros);
    loop {
        if task.stop.is_cancelled() || task.finish.is_cancelled() {
            return Err(Stop::Done);
        }
        let endpoint = load(task).await.ok_or(Stop::Done)?;
        // Nothing is sent unless this node still holds the right to send it.
        if let Err(e) = task.lock.confirm().await {
            tracing::warn!(error = %e, "not delivering: the delivery lock is lost");
            return Err(Stop::Done);
        }
        // Deleted with its job since it was read: the deletion counted it as missed, and it
        // stays missed (a store that cannot say is taken as "still there").
        if !task.store.event_exists(event.id).await.unwrap_or(true) {
            tracing::info!(event_id = event.id, "not delivering: the event was deleted with its job");
            return Ok(());
        }
        tries += 1;
        let at = now_micros();
        let started = Instant::now();
        // A delete or a lost lock does not wait for an attempt to time out; a shutdown does,
        // and records it.
        let answer = tokio::select! {
            answer = post(task, &endpoint, event, body.clone()) => answer,
            () = task.stop.cancelled() => return Err(Stop::Done),
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let ok = matches!(answer, Ok(code) if (200..300).contains(&code));
        let tried_for = time::OffsetDateTime::now_utc() - first;
        let give_up = !ok && tried_for >= task.settings.give_up_after;
        let outcome = if ok {
            "delivered"
        } else if give_up {
            "failed"
        } else {
            "retrying"
        };
        metrics::counter!("aura_webhook_deliveries_total", "outcome" => outcome).increment(1);
        let (status_code, error) = match answer {
            Ok(code) => (Some(i64::from(code)), None),
            Err(reason) => (None, Some(reason.to_owned())),
        };
        if !ok {
            tracing::info!(
                event_id = event.id,
                attempt = tries,
                ?status_code,
                error,
                outcome,
                "webhook attempt failed"
            );
        }
        let attempt = Attempt {
            event_id: event.id,
            event_type: event.kind.clone(),
            attempt: tries,
            status_code,
            outcome: outcome.to_owned(),
            error,
            duration_ms,
            at: format_at(at),
            missed: None,
        };
        if ok {
            task.acked.note(task.endpoint, event.id);
        }
        let advance_to = (ok || give_up).then_some(event.id);
        let record = Write::Record { endpoint: task.endpoint, attempt, advance_to };
        match task.lock.write(&task.store, record).await {
            Ok(Written::NotFound) | Err(StoreError::Closed | StoreError::LockLost) => return Err(Stop::Done),
            Ok(_) => {}
            // Not stored: after a restart this event is offered again, which is the safe side.
            Err(e) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
        }
        if ok || give_up {
            return Ok(());
        }
        pause(task, backoff(task.settings.retry_base, tries)).await?;
    }
}

/// `{"type", "id", "jobId", "data"}`, with `data` exactly as stored and streamed.
fn payload(event: &StoredEvent) -> Bytes {
    // A row another program wrote may hold anything; it still goes out as valid JSON.
    let data = match serde_json::from_str::<&serde_json::value::RawValue>(event.data()) {
        Ok(_) => event.data().to_owned(),
        Err(_) => serde_json::Value::String(event.data().to_owned()).to_string(),
    };
    let kind = serde_json::Value::String(event.kind.clone()).to_string();
    Bytes::from(format!(r#"{{"type":{kind},"id":{},"jobId":"{}","data":{data}}}"#, event.id, event.job_id))
}

/// One attempt: the status code of the answer, or why there was none.
async fn post(
    task: &Task,
    endpoint: &Endpoint,
    event: &StoredEvent,
    body: Bytes,
) -> Result<u16, &'static str> {
    let url = target::parse_url(&endpoint.url).map_err(|_| "bad-url")?;
    // Names are checked by the client's resolver as it connects; an address in the URL itself
    // never goes through a resolver, so it is checked here.
    let literal = url
        .host_str()
        .and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok());
    if literal.is_some_and(|ip| target::is_forbidden(ip, task.settings.allow_private)) {
        return Err("blocked-address");
    }
    let timestamp = unix_now();
    let mut keys = Vec::with_capacity(2);
    keys.extend(sign::key_of(&endpoint.secret));
    if let Some((previous, until)) = &endpoint.previous
        && *until > timestamp
    {
        keys.extend(sign::key_of(previous));
    }
    let id = event.id.to_string();
    let signature = sign::header(&keys, &id, timestamp, &body);
    let sent = task
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(e) => return Err(classify(&e)),
    };
    let status = answer.status().as_u16();
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) => break,
            // The status arrived; a body cut short does not change what it said.
            Err(_) => break,
        }
    }
    Ok(status)
}

/// Why a request got no answer, in a word for the delivery log.
fn classify(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<target::Blocked>().is_some() {
            return "blocked-address";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

/// The wait after the `tries`-th failed attempt: `base · 2^(tries-1)`, at most an hour, of which
/// a random half ("equal jitter"), so endpoints that failed together do not retry together.
pub fn backoff(base: Duration, tries: i64) -> Duration {
    let doublings = u32::try_from(tries.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = base.saturating_mul(2u32.saturating_pow(doublings)).min(MAX_BACKOFF);
    let fraction = getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64);
    full / 2 + (full / 2).mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_stops_growing_at_an_hour() {
        let base = Duration::from_secs(5);
        for tries in 1..=40 {
            let full = base.saturating_mul(2u32.saturating_pow((tries - 1).min(30) as u32)).min(MAX_BACKOFF);
            let wait = backoff(base, i64::from(tries));
            assert!(wait >= full / 2 && wait <= full, "{tries}: {wait:?} of {full:?}");
        }
    }

    #[test]
    fn the_payload_carries_data_exactly_as_stored() {
        let data = r#"{"jobId":"00000000-0000-0000-0000-000000000001","at":"2026-01-01T00:00:00.000000Z","step":null}"#;
        let event = StoredEvent::new(
            7,
            Uuid::from_u128(1),
            "job-cancelled".into(),
            data.into(),
            "2026-01-01T00:00:00.000000Z".into(),
        );
        let body = payload(&event);
        let text = std::str::from_utf8(&body).expect("utf-8");
        assert!(text.ends_with(&format!(r#""data":{data}}}"#)), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["type"], "job-cancelled");
        assert_eq!(v["id"], 7);
        assert_eq!(v["jobId"], "00000000-0000-0000-0000-000000000001");
    }
}
