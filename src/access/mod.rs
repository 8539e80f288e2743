//! Who may do what: tokens, browser sessions, the caller of a request and the ownership rule,
//! the per-address budget of unknown credentials, per-owner limits and the global cap on open
//! streams.
//!
//! Below the HTTP edge and the stream machinery, above the store: the edge asks it who is
//! calling and whether they may, the streams hold its slots while they are open.

pub mod auth;
pub mod caller;
mod database;
pub mod limits;
pub mod lookups;
