//! The stream machinery: the accept loop that lets a stream own its socket (`server`), the tail
//! of committed events and the recent ones kept in memory (`hub`), the registries that write
//! live events into sockets (`fanout`), where a stream's bytes go (`sink`), and a stream's own
//! task (`stream`).
//!
//! It knows nothing of HTTP handlers: the edge checks a request, then hands [`stream::open`] a
//! [`request::StreamRequest`] (filter, resume point, end, shape) and the [`request::Slots`] it
//! holds. The stream paths are named once, in [`paths`], for the router and the accept loop's
//! sniffer alike.

pub mod context;
pub mod fanout;
pub mod follow;
pub mod gzip;
pub mod hub;
pub mod paths;
pub mod request;
pub mod server;
pub mod sink;
pub mod stream;

pub use context::Context;
