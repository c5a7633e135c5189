//! The Python class `Receiver`: the secondary's endpoint.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;

use super::seconds;
use crate::detached;
use crate::error::Result;
use crate::receive;

/// The secondary's replication endpoint.
#[pyclass(frozen, module = "mirrorcore._native")]
pub struct Receiver {
    inner: receive::Receiver,
}

#[pymethods]
impl Receiver {
    #[new]
    #[pyo3(signature = (root, listen_addr, port, key, *, cache_bytes = 256 << 20, copy_id = 0))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        listen_addr: String,
        port: u16,
        key: Vec<u8>,
        cache_bytes: usize,
        copy_id: u64,
    ) -> Result<Self> {
        let inner = detached(py, move || {
            receive::Receiver::start(&root, &listen_addr, port, &key, cache_bytes, copy_id)
        })?;
        Ok(Receiver { inner })
    }

    /// The copy id announced to primaries: as set, or the tag of the latest mark applied.
    #[getter]
    fn copy_id(&self) -> u64 {
        self.inner.copy_id()
    }

    #[setter]
    fn set_copy_id(&self, id: u64) {
        self.inner.set_copy_id(id);
    }

    /// Add files this node changed itself (relative paths) to the needs list the next
    /// `request_needs` hands back, as changed (`created_now` False); kept until handed out.
    fn seed_needs(&self, py: Python<'_>, paths: Vec<Vec<u8>>) -> Result<()> {
        detached(py, || self.inner.seed_needs(paths))
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    #[getter]
    fn last_error(&self) -> Option<String> {
        self.inner.last_error()
    }

    /// Why the copy is inconsistent: the failure to apply that halted a session, until a
    /// later resync's mark repaired it; None when the copy is consistent.
    #[getter]
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        self.inner.stats().into_iter().collect()
    }

    /// Apply and flush everything received; returns the last applied seq.
    fn drain(&self, py: Python<'_>, timeout: f64) -> Result<u64> {
        let timeout = seconds(timeout, "timeout")?;
        detached(py, || self.inner.drain(timeout))
    }

    /// Stop listening, apply what was received, join the threads.
    fn close(&self, py: Python<'_>) {
        detached(py, || self.inner.close());
    }
}
