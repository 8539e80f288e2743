//! What a stream was asked for ([`StreamRequest`]: its events, its resume point, when it ends,
//! its shape) and what it holds while it is open ([`Slots`], [`OpenGauge`]). The HTTP edge
//! builds both once (`http::extract`), for event streams and WebSockets alike; the plain
//! streams (`stream`), the fan-out (`fanout`) and the streams that follow the hub on their own
//! (`follow`) only read them, so they live below all three.

use std::time::Duration;

use crate::access::limits::{StreamGuard, StreamSlot};
use crate::store::EventFilter;

/// A checked stream request: nothing is sent before one exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// The events the stream carries.
    pub filter: EventFilter,
    /// The resume point: the stream sends events after this id.
    pub after: i64,
    pub end: End,
    pub shape: Shape,
    /// The oldest event kept, when the resume point is older (events between were deleted):
    /// the client is told where its history now starts (`Aura-History-Start`).
    pub history_start: Option<i64>,
}

/// When a stream ends on its own (besides its deadline, shutdown and its client going away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Never: a stream of all the caller's jobs, or of several.
    Never,
    /// After the job's terminal event: one job's stream.
    WithJob,
    /// One job that had ended when the stream opened: after its terminal event, or once the
    /// event with this id (its last) has been sent, whichever comes first. A job that has
    /// ended may still get a `warning` after its terminal event (`output-expired`), and a
    /// client resuming past the terminal event gets those and the end, not a stream that waits
    /// for a terminal event that was already sent.
    After(i64),
}

impl End {
    /// Whether the job's terminal event ends the stream.
    pub fn at_terminal(self) -> bool {
        self != End::Never
    }

    /// Whether a stream that has sent everything up to `last_sent` has sent its last event.
    pub fn reached(self, last_sent: i64) -> bool {
        matches!(self, End::After(last) if last_sent >= last)
    }

    /// The event after which the stream ends, if it is known already.
    pub fn last(self) -> Option<i64> {
        match self {
            End::After(last) => Some(last),
            End::Never | End::WithJob => None,
        }
    }
}

/// What a client asked of its stream beyond the events themselves. The default (no batch
/// window, no compression) is the zero-copy path through the fan-out; anything else is a
/// stream that follows the hub on its own (`follow`), so that it costs nobody else anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// `?batch=`: step-progress events of one job and step within this window collapse.
    pub batch: Duration,
    /// `Content-Encoding: gzip`.
    pub gzip: bool,
}

impl Shape {
    pub fn is_plain(&self) -> bool {
        self.batch.is_zero() && !self.gzip
    }
}

/// The two slots every open stream holds, WebSockets too: one under the global stream cap,
/// one under its owner's (`access::limits`). Both are freed when the stream ends.
pub struct Slots {
    _global: StreamSlot,
    _owner: StreamGuard,
}

impl Slots {
    pub fn new(global: StreamSlot, owner: StreamGuard) -> Self {
        Slots { _global: global, _owner: owner }
    }
}

/// Keeps the open-streams gauge of one kind (`job`, `all`, `ws`) true while a stream lives.
pub struct OpenGauge(&'static str);

impl OpenGauge {
    pub fn new(kind: &'static str) -> Self {
        metrics::gauge!("aura_open_streams", "kind" => kind).increment(1.0);
        OpenGauge(kind)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("aura_open_streams", "kind" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ends_at_the_terminal_event_unless_it_never_ends_and_after_a_known_last_event() {
        assert!(!End::Never.at_terminal());
        assert!(End::WithJob.at_terminal());
        assert!(End::After(7).at_terminal());
        assert!(!End::Never.reached(i64::MAX));
        assert!(!End::WithJob.reached(i64::MAX));
        assert!(!End::After(7).reached(6));
        assert!(End::After(7).reached(7));
        assert!(End::After(7).reached(8));
        assert_eq!(End::After(7).last(), Some(7));
        assert_eq!(End::WithJob.last(), None);
    }
}
