//! The HTTP edge: the router, the shared state, the extractors that parse and check every
//! request in one place, and one module per resource.
//!
//! Handlers parse at the edge, ask `access` who is calling, and then only call the engine, the
//! store's reads and the stream machinery; nothing below imports anything from here.

pub mod events;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod openapi;
pub mod router;
pub mod session;
pub mod sites;
pub mod state;
pub mod stored;
pub mod ui;
pub mod webhooks;
pub mod ws;

pub use router::router;
pub use state::AppState;
