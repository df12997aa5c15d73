//! # pglite-harness
//!
//! A real PostgreSQL 18.6 for every Rust test, in-process: [PGlite] (PostgreSQL compiled to
//! WebAssembly, the official build of `@electric-sql/pglite` 0.5.16) runs on wasmtime inside
//! your process. No Docker, no system Postgres, no Node.
//!
//! The layers, bottom up:
//! * [`runtime`]: the Emscripten host for wasmtime — one engine and compiled module per process,
//!   cached on disk so later processes load it in milliseconds.
//! * `vfs`: the virtual filesystem behind the module's syscalls (in memory, or a host directory).
//! * [`Backend`]: one PostgreSQL session, driven with wire-protocol bytes.
//! * [`Server`]: the wire protocol on a local TCP port, many clients sharing one backend.
//!
//! ```no_run
//! use pglite_harness::Backend;
//!
//! let mut backend = Backend::builder().open()?;
//! let mut msg = bytes::BytesMut::new();
//! postgres_protocol::message::frontend::query("SELECT 42", &mut msg)?;
//! let reply = backend.exec(&msg)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [PGlite]: https://pglite.dev

#![warn(missing_docs)]

mod assets;
mod backend;
mod fixture;
mod instances;
pub mod runtime;
mod server;
pub(crate) mod vfs;

pub use assets::extension_bundle_names;
pub use backend::{
    Backend, BackendBuilder, BackendError, CancelHandle, DataDir, LOCK_FILE, Notification, ProtocolError,
    ServerMessage, SimpleQueryOutput, Snapshot, StatementResult,
};
pub use fixture::{FixtureError, KEEP_TEMP_DIR_ENV, PREWARM_ENV, PgliteDb, PgliteDbBuilder};
/// Turns `async fn name(db: PgliteDb)` (or a sync fn) into a test with its own fresh database;
/// see the [`pglite_harness_macros`] crate docs for the options.
pub use pglite_harness_macros::pglite_test;

/// The rstest fixture: `#[rstest] #[tokio::test] async fn t(#[future] db: PgliteDb)` gets a
/// fresh in-memory database per test and per case (feature `rstest`).
#[cfg(feature = "rstest")]
pub use fixture::db;

/// What `#[pglite_test]` expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::fixture::{run_async_test, run_sync_test};
}
pub use instances::{
    AdminServer, Config, ConfigError, ConfigProblem, ConnectionInfo, DEFAULT_CONFIG_FILE, Health,
    InstanceConfig, InstanceError, InstanceInfo, InstanceMetrics, InstanceState, Instances, data_dir_display,
    prometheus_text,
};
pub use server::{Server, ServerBuilder, ServerError, ServerMetrics};
pub use vfs::Durability;
