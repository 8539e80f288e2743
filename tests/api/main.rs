//! The one integration-test binary: every test starts the real application on a loopback port
//! with its own SQLite file (see `helpers`).

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
mod fanout;
mod fault_storage;
mod fault_streams;
mod faults;
mod faults_engine;
mod helpers;
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
