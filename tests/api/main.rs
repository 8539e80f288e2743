//! The one integration-test binary: every test starts the real application on a loopback port
//! with its own SQLite file (see `helpers`), or the real `aura` binary as a separate process
//! where a test kills it. Waits are bounded conditions (`helpers::eventually`), never sleeps
//! that hope; `TEST_LOG=1` shows the logs.
//!
//! - `helpers`: `spawn_app`, `spawn_app_in` (a restart on the same folder), one method per
//!   endpoint, a WHATWG-style SSE parser;
//! - `layers`: the layering, the database named only in the store, every std lock through `sync`;
//!   `docs`: `docs/API.md` equal to the code (routes, event and problem types, `AURA_*` settings);
//! - `objects` renders into a real `s3s-fs` bucket; `pipeline` renders real videos;
//! - `cluster` and `faults_engine` run several real `aura serve` nodes on one PostgreSQL;
//! - `faults` is the fault harness (a TCP proxy that cuts, refuses, black-holes or delays a
//!   node's connections to PostgreSQL or S3; an EventSource-like subscriber; the checker of what
//!   clients saw against the table), used by `fault_streams`, `fault_storage` and `chaos` (every
//!   fault at random, run by `benches/chaos.sh`); RELIABILITY.md lists each fault and its test;
//! - `sites` plays a hostile web page; `connections` holds a test for each connection protection.
//!
//! The browser tests are apart, in `ui-tests/` (playwright-core on Debian's Chromium).

// Tests start the real binaries (aura, tmux) themselves; the product goes through `process`.
#![allow(clippy::disallowed_types)]
// Tests lock their own bookkeeping freely: a panic there fails the test anyway. The product's
// locks go through `sync` (see `layers::every_std_lock_goes_through_sync`).
#![allow(clippy::disallowed_methods)]

mod bench;
mod chaos;
mod cli;
mod cluster;
mod connections;
mod damaged;
mod disk;
mod docs;
mod export;
mod fanout;
mod fault_storage;
mod fault_streams;
mod faults;
mod faults_engine;
mod helpers;
mod history;
mod jobs_api;
mod layers;
mod log;
mod objects;
mod openapi;
mod pipeline;
mod postgres;
mod properties;
mod recovery;
mod restart;
mod security;
mod shared_access;
mod sites;
mod sockets;
mod streams;
mod transports;
mod webhooks;
