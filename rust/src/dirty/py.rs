//! The Python class `DirtyMap`: a [`super::DirtyMap`] behind a mutex, shared
//! with native code through [`PyDirtyMap::shared`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyType;

use super::{DirtyMap, Kind};
use crate::detached;
use crate::error::Result;

/// A changelog record as Python sees it: `(seq, kind, path, path2)`.
type PyRecord = (u64, &'static str, Vec<u8>, Option<Vec<u8>>);

/// What the secondary lacks: dirty zones per file and a namespace changelog.
#[pyclass(frozen, module = "mirrorcore._native", name = "DirtyMap")]
pub struct PyDirtyMap {
    inner: Arc<Mutex<DirtyMap>>,
}

impl PyDirtyMap {
    /// The map itself, for native code (the forwarder's hook) to share.
    pub fn shared(&self) -> Arc<Mutex<DirtyMap>> {
        Arc::clone(&self.inner)
    }

    fn map(&self) -> MutexGuard<'_, DirtyMap> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[pymethods]
impl PyDirtyMap {
    #[new]
    fn new(zone_size: u64) -> Result<Self> {
        Ok(PyDirtyMap {
            inner: Arc::new(Mutex::new(DirtyMap::new(zone_size)?)),
        })
    }

    /// Reads a map written by `save`; refuses a corrupt file with `ValueError`.
    #[classmethod]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts `file` by value
    fn load(_cls: &Bound<'_, PyType>, py: Python<'_>, file: PathBuf) -> Result<Self> {
        let map = detached(py, || DirtyMap::load(&file))?;
        Ok(PyDirtyMap {
            inner: Arc::new(Mutex::new(map)),
        })
    }

    /// Writes the map atomically; `clean=True` marks a clean stop.
    #[pyo3(signature = (file, *, clean = false))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts `file` by value
    fn save(&self, py: Python<'_>, file: PathBuf, clean: bool) -> Result<()> {
        detached(py, || self.map().save(&file, clean))
    }

    #[getter]
    fn zone_size(&self) -> u64 {
        self.map().zone_size()
    }

    #[getter]
    fn clean(&self) -> bool {
        self.map().clean()
    }

    fn distrust(&self) {
        self.map().distrust();
    }

    #[getter]
    fn last_seq(&self) -> u64 {
        self.map().last_seq()
    }

    #[getter]
    fn horizon(&self) -> Option<u64> {
        self.map().horizon()
    }

    fn set_horizon(&self, seq: Option<u64>) {
        self.map().set_horizon(seq);
    }

    fn mark_write(&self, path: &[u8], offset: u64, length: u64, seq: u64) -> Result<()> {
        self.map().mark_write(path, offset, length, seq)
    }

    fn mark_truncate(&self, path: &[u8], size: u64, seq: u64) -> Result<()> {
        self.map().mark_truncate(path, size, seq)
    }

    fn mark_namespace(
        &self,
        kind: &str,
        path: &[u8],
        path2: Option<&[u8]>,
        seq: u64,
    ) -> Result<()> {
        let kind = Kind::parse(kind)?;
        self.map().mark_namespace(kind, path, path2, seq)
    }

    fn confirm(&self, flushed_seq: u64) -> usize {
        self.map().confirm(flushed_seq)
    }

    fn zones(&self, path: &[u8]) -> Vec<(u64, u64)> {
        self.map().zones(path)
    }

    fn runs(&self, path: &[u8]) -> Vec<(u64, u64, u64)> {
        self.map().runs(path)
    }

    fn truncate_to(&self, path: &[u8]) -> Option<u64> {
        self.map().truncate_to(path)
    }

    fn paths(&self) -> Vec<Vec<u8>> {
        self.map().paths().map(<[u8]>::to_vec).collect()
    }

    fn changelog(&self) -> Vec<PyRecord> {
        self.map()
            .changelog()
            .map(|r| (r.seq, r.kind.name(), r.path.clone(), r.path2.clone()))
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn clear(&self) {
        self.map().clear();
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        let s = self.map().stats();
        HashMap::from([
            ("files", s.files),
            ("zones", s.zones),
            ("runs", s.runs),
            ("bytes_tracked", s.bytes_tracked),
            ("changelog_len", s.changelog_len),
            ("memory_bytes", s.memory_bytes),
        ])
    }

    fn __repr__(&self) -> String {
        let m = self.map();
        let s = m.stats();
        format!(
            "DirtyMap(zone_size={}, files={}, zones={}, changelog={}, clean={})",
            m.zone_size(),
            s.files,
            s.zones,
            s.changelog_len,
            if m.clean() { "True" } else { "False" }
        )
    }
}
