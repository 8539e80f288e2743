//! Limits on what callers may hold: the global cap on open streams, and per owner, open event
//! streams and the job-creation token bucket.
//!
//! Both apply only with tokens (an open, single-user server has no one to share with). The
//! global stream cap is [`StreamCounter`], checked first, so when both are
//! exceeded the `503` wins. Each limit answers `429` with `Retry-After` before any byte of a
//! response. Every open stream also holds a [`StreamGuard`], which keeps the
//! `aura_open_streams_by_class` gauge true.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::access::auth::Caller;
use crate::error::AppError;
use crate::sync::lock;

/// Jobs an owner may create at once before the rate applies (API.md: whatever the rate).
pub const JOB_BURST: f64 = 20.0;

/// One owner's job-creation bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limits {
    max_streams_per_owner: usize,
    job_rate: f64,
    streams: Mutex<HashMap<String, usize>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limits {
    pub fn new(max_streams_per_owner: usize, job_rate: f64) -> anyhow::Result<Limits> {
        anyhow::ensure!(job_rate.is_finite() && job_rate > 0.0, "AURA_JOB_RATE must be a positive number");
        Ok(Limits { max_streams_per_owner, job_rate, streams: Mutex::default(), buckets: Mutex::default() })
    }

    /// A slot for one more stream of `caller`, or `429` when the owner has the most open.
    pub fn acquire_stream(self: &Arc<Self>, caller: &Caller) -> Result<StreamGuard, AppError> {
        let owner = if caller.is_limited() {
            let mut streams = lock(&self.streams, "stream limits")?;
            let open = streams.entry(caller.name.clone()).or_insert(0);
            if *open >= self.max_streams_per_owner {
                return Err(AppError::TooManyRequests {
                    reason: "streams-per-owner",
                    detail: format!("at most {} open event streams per owner", self.max_streams_per_owner),
                    retry_after_secs: 5,
                });
            }
            *open += 1;
            Some(caller.name.clone())
        } else {
            None
        };
        let class = caller.class();
        metrics::gauge!("aura_open_streams_by_class", "class" => class).increment(1.0);
        Ok(StreamGuard { limits: self.clone(), owner, class })
    }

    /// Takes one job creation from `caller`'s bucket, or `429` with the seconds until one is back.
    pub fn take_job(&self, caller: &Caller) -> Result<(), AppError> {
        if !caller.is_limited() {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = lock(&self.buckets, "job rate limits")?;
        let bucket = buckets.entry(caller.name.clone()).or_insert(Bucket { tokens: JOB_BURST, at: now });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.job_rate;
        *bucket = Bucket { tokens: refilled.min(JOB_BURST), at: now };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / self.job_rate).ceil().max(1.0);
        Err(AppError::TooManyRequests {
            reason: "job-rate",
            detail: format!("at most {} new jobs per second per owner", self.job_rate),
            retry_after_secs: if wait < 86_400.0 { wait as u64 } else { 86_400 },
        })
    }
}

/// Held by an open stream: frees the owner's slot and keeps the gauge true when dropped.
pub struct StreamGuard {
    limits: Arc<Limits>,
    owner: Option<String>,
    class: &'static str,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("aura_open_streams_by_class", "class" => self.class).decrement(1.0);
        if let Some(owner) = &self.owner
            && let Ok(mut streams) = lock(&self.limits.streams, "stream limits")
            && let Some(open) = streams.get_mut(owner)
        {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(owner);
            }
        }
    }
}

/// Counts open streams and refuses new ones past the global cap.
#[derive(Debug, Default)]
pub struct StreamCounter {
    open: AtomicUsize,
}

impl StreamCounter {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more stream, or `None` when `max` are open.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }
}

/// Held by an open stream; frees its slot when the response body is dropped.
pub struct StreamSlot(Arc<StreamCounter>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
