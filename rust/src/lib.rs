//! mirrorcore's native extension: the hot write path of the replicator.
//!
//! Python decides *what* happens (configuration, states, scripts, checkers);
//! this crate moves the bytes. Every call that blocks releases the GIL through
//! [`detached`].
//!
//! # Layout
//!
//! - `error.rs`: the one error enum and its mapping to Python exceptions.
//! - `lib.rs`: the Python module and the few classes Python sees.
//!
//! The replication path (`wire.rs`, `auth.rs`, `forward.rs`, `apply.rs`,
//! `cache.rs`, `dirty.rs`, `extent.rs`) lands with the replication issue.

pub mod error;

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
    Ok(())
}
