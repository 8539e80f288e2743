//! Aura: a job engine that turns a short brief into a rendered video through five ffmpeg
//! stages, and streams every step of every job over lossless Server-Sent Events.
//!
//! The SQLite `events` table is the one source of truth; see `ARCHITECTURE.md` for the map.

pub mod app;
pub mod auth;
pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod event;
pub mod fanout;
pub mod health;
pub mod hub;
pub mod job;
pub mod jobs;
pub mod lifecycle;
pub mod limits;
pub mod lock;
pub mod openapi;
pub mod pipeline;
pub mod process;
pub mod recovery;
pub mod server;
pub mod sink;
pub mod spec;
pub mod startup;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod ui;
pub mod worker;
