//! Aura: a job engine that turns a short brief into a rendered video through five ffmpeg
//! stages, and streams every step of every job over lossless Server-Sent Events.
//!
//! The `events` table, in SQLite or PostgreSQL, is the one source of truth; see `ARCHITECTURE.md`
//! for the map.
//! The folders are the layers, and imports point one way (a test in `tests/api/layers.rs`
//! keeps it so): `domain` ← `store` ← `access` ← `engine`, `streaming`, `webhooks` ← `http`
//! ← `startup` ← `cli`, `bench`.

pub mod access;
pub mod backoff;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod http;
pub mod lock;
pub mod objects;
pub mod startup;
pub mod store;
pub mod streaming;
pub mod sync;
pub mod telemetry;
pub mod webhooks;
