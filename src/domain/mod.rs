//! What Aura is about, with no I/O: a job's status and stages, the request parsed at the edge,
//! the eight event types, and the fold of events into a job's state.
//!
//! The bottom layer: nothing here imports anything else of the crate, so the store, the engine,
//! the streams and the HTTP edge all speak these types and none of them owns them.

pub mod command;
pub mod event;
pub mod job;
pub mod spec;
pub mod status;
pub mod time;
