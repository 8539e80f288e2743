//! The engine: everything that changes a job. Its decisions (`lifecycle`), the worker pool that
//! claims and runs jobs (`worker`), the five stages (`pipeline`), the only way to start a child
//! process (`process`), startup recovery (`recovery`), the free-space floor (`disk`), the
//! storing of finished videos (`publish`) and the deletion of old videos (`retention`).
//!
//! [`Engine`] owns what is shared between them while the server runs: the registry of running
//! jobs (so a cancel reaches their processes), the queue of recovered jobs and the wake-up of
//! idle workers. The HTTP edge calls it; it never calls the edge.

pub mod deletion;
pub mod disk;
pub mod job_retention;
pub mod leases;
pub mod lifecycle;
pub mod pipeline;
pub mod process;
pub mod publish;
pub mod recovery;
pub mod retention;
pub mod worker;

mod registry;
pub use registry::Engine;
