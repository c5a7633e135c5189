//! mirrorcore's native extension: the hot write path of the replicator.
//!
//! Python decides *what* happens (configuration, states, scripts, checkers);
//! this crate moves the bytes. Every call that blocks releases the GIL through
//! [`detached`].
//!
//! # Layout
//!
//! - `lib.rs`: the Python module; [`detached`] releases the GIL.
//! - `pyapi.rs` (+ `pyapi/receiver.rs`): what Python sees, `Forwarder`,
//!   `Receiver` and `local_sums`.
//! - `error.rs`: the one error enum and its mapping to Python exceptions.
//! - `wire/`: the one place that encodes and decodes: `mod.rs` frames, MACs
//!   and acks, `op.rs` the operations and their payloads.
//! - `auth.rs`: the handshake with the cluster key; session keys; modes.
//! - `forward.rs`: primary: local `pwrite`, ordered bounded queue, sender and
//!   ack reader threads, barriers.
//! - `receive.rs`: secondary: listener, handshake, frame verification.
//! - `cache.rs`: secondary: bounded in-memory queue, ordered applier, flushes.
//! - `apply.rs` (+ `apply/`): secondary: one operation under the root, fd LRU
//!   for writes; the resync ops and the answers to requests.
//! - `beneath.rs`: resolving paths without leaving the root (`openat2`).
//! - `extent.rs`: block checksums (`local_sums`) and `copy_range`, the
//!   primary's streaming of file data for resync.
//! - `fuse_shim.rs`: the `fallocate` handler pyfuse3 lacks, added to its FUSE
//!   session by interposing `fuse_session_new`.
//! - `reply.rs`: the primary's table of replies to requests (`take_*`).
//!
//! - `dirty.rs` (+ `dirty/`): per-file zone runs and the namespace changelog of
//!   what the secondary lacks, saved atomically; `DirtyMap` in Python. Fed by
//!   the forwarder's tracking hook (`Forwarder::track`, `Forwarder::tracker`).

pub mod apply;
pub mod auth;
pub mod beneath;
pub mod cache;
pub mod dirty;
pub mod error;
pub mod extent;
pub mod forward;
pub mod fuse_shim;
pub mod pyapi;
pub mod receive;
pub mod reply;
pub mod wire;

use pyo3::prelude::*;

/// Runs `f` with the GIL released: the one place where native code leaves
/// Python free to run other threads while it blocks on disk or network.
pub fn detached<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(f)
}

/// The version of the native extension, which must equal the Python package's.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The `mirrorcore._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(pyapi::local_sums, m)?)?;
    m.add_class::<pyapi::Forwarder>()?;
    m.add_class::<pyapi::Receiver>()?;
    m.add_class::<dirty::PyDirtyMap>()?;
    fuse_shim::register(m)?;
    Ok(())
}
