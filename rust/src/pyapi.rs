//! The Python classes `Forwarder` and `Receiver`: thin, frozen wrappers that
//! convert arguments and release the GIL around every call that can block.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::auth::Mode;
use crate::detached;
use crate::dirty::PyDirtyMap;
use crate::error::{MirrorError, Result};
use crate::forward::{self, Config};
use crate::receive;
use crate::wire::{Op, OMIT_TIME};

/// The primary's replication link (implements the `Replicator` protocol).
#[pyclass(frozen, module = "mirrorcore._native")]
pub struct Forwarder {
    inner: forward::Forwarder,
}

#[pymethods]
impl Forwarder {
    #[new]
    #[pyo3(signature = (peer_addr, port, key, *, mode = "second", queue_bytes = 64 << 20,
                        send_timeout = 30.0, connect_timeout = 5.0, bind_addr = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        peer_addr: String,
        port: u16,
        key: Vec<u8>,
        mode: &str,
        queue_bytes: usize,
        send_timeout: f64,
        connect_timeout: f64,
        bind_addr: Option<String>,
    ) -> Result<Self> {
        let cfg = Config {
            peer: peer_addr,
            port,
            key,
            mode: Mode::parse(mode)?,
            queue_bytes,
            send_timeout: seconds(send_timeout, "send_timeout")?,
            connect_timeout: seconds(connect_timeout, "connect_timeout")?,
            bind_addr,
        };
        let inner = detached(py, || forward::Forwarder::connect(&cfg))?;
        Ok(Forwarder { inner })
    }

    /// A forwarder with no link, for ALONE: applies writes locally and records every operation into `dirty`.
    #[classmethod]
    fn tracker(_cls: &Bound<'_, PyType>, dirty: &Bound<'_, PyDirtyMap>) -> Self {
        Forwarder {
            inner: forward::Forwarder::tracker(dirty.get().shared()),
        }
    }

    /// Records every later operation into `dirty` (None: stop recording); flushed acks confirm them.
    #[pyo3(signature = (dirty))]
    fn track(&self, py: Python<'_>, dirty: Option<PyRef<'_, PyDirtyMap>>) {
        let map = dirty.map(|d| d.shared());
        detached(py, || self.inner.track(map));
    }

    #[getter]
    fn tracking(&self) -> bool {
        self.inner.tracking()
    }

    /// `pwrite` locally, then queue the frame (with the file's new mtime) unless `path` is None;
    /// returns bytes written.
    fn write(
        &self,
        py: Python<'_>,
        fd: RawFd,
        path: Option<&[u8]>,
        offset: u64,
        data: &[u8],
    ) -> Result<usize> {
        detached(py, || self.inner.write(fd, path, offset, data))
    }

    fn create(&self, py: Python<'_>, path: Vec<u8>, mode: u32, uid: i64, gid: i64) -> Result<u64> {
        let op = Op::Create {
            path,
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
        };
        self.forward(py, &op)
    }

    fn mknod(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        mode: u32,
        rdev: u64,
        uid: i64,
        gid: i64,
    ) -> Result<u64> {
        let op = Op::Mknod {
            path,
            mode,
            rdev,
            uid: id(uid)?,
            gid: id(gid)?,
        };
        self.forward(py, &op)
    }

    fn mkdir(&self, py: Python<'_>, path: Vec<u8>, mode: u32, uid: i64, gid: i64) -> Result<u64> {
        let op = Op::Mkdir {
            path,
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
        };
        self.forward(py, &op)
    }

    fn symlink(
        &self,
        py: Python<'_>,
        target: Vec<u8>,
        path: Vec<u8>,
        uid: i64,
        gid: i64,
    ) -> Result<u64> {
        let op = Op::Symlink {
            target,
            path,
            uid: id(uid)?,
            gid: id(gid)?,
        };
        self.forward(py, &op)
    }

    fn link(&self, py: Python<'_>, existing: Vec<u8>, new: Vec<u8>) -> Result<u64> {
        self.forward(py, &Op::Link { existing, new })
    }

    /// Sends file data the primary already holds (a full copy): no local write, and no mtime
    /// (the secondary's clock stands until the copy's `utimens` of the file).
    fn put(&self, py: Python<'_>, path: Vec<u8>, offset: u64, data: Vec<u8>) -> Result<u64> {
        let op = Op::Write {
            path,
            offset,
            mtime_ns: None,
            data,
        };
        self.forward(py, &op)
    }

    /// Tells the secondary to empty its copy before a full copy.
    fn reset(&self, py: Python<'_>) -> Result<u64> {
        self.forward(py, &Op::Reset)
    }

    /// Sends a milestone the secondary reports in `Receiver.stats()["mark"]` once applied.
    fn mark(&self, py: Python<'_>, tag: u64) -> Result<u64> {
        self.forward(py, &Op::Mark { tag })
    }

    fn unlink(&self, py: Python<'_>, path: Vec<u8>) -> Result<u64> {
        self.forward(py, &Op::Unlink { path })
    }

    fn rmdir(&self, py: Python<'_>, path: Vec<u8>) -> Result<u64> {
        self.forward(py, &Op::Rmdir { path })
    }

    fn rename(&self, py: Python<'_>, old: Vec<u8>, new: Vec<u8>, flags: u32) -> Result<u64> {
        self.forward(py, &Op::Rename { old, new, flags })
    }

    fn truncate(&self, py: Python<'_>, path: Vec<u8>, size: u64) -> Result<u64> {
        self.forward(py, &Op::Truncate { path, size })
    }

    fn chmod(&self, py: Python<'_>, path: Vec<u8>, mode: u32) -> Result<u64> {
        self.forward(py, &Op::Chmod { path, mode })
    }

    fn chown(&self, py: Python<'_>, path: Vec<u8>, uid: i64, gid: i64) -> Result<u64> {
        let op = Op::Chown {
            path,
            uid: id(uid)?,
            gid: id(gid)?,
        };
        self.forward(py, &op)
    }

    /// Exact times in ns; None leaves that time as it is on the secondary (`UTIME_OMIT`).
    fn utimens(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
    ) -> Result<u64> {
        let op = Op::Utimens {
            path,
            atime_ns: time(atime_ns)?,
            mtime_ns: time(mtime_ns)?,
        };
        self.forward(py, &op)
    }

    fn setxattr(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    ) -> Result<u64> {
        self.forward(
            py,
            &Op::Setxattr {
                path,
                name,
                value,
                flags,
            },
        )
    }

    fn removexattr(&self, py: Python<'_>, path: Vec<u8>, name: Vec<u8>) -> Result<u64> {
        self.forward(py, &Op::Removexattr { path, name })
    }

    fn fallocate(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> Result<u64> {
        self.forward(
            py,
            &Op::Fallocate {
                path,
                mode,
                offset,
                length,
            },
        )
    }

    /// Wait until everything queued so far is acknowledged as the mode requires.
    #[pyo3(signature = (timeout = None))]
    fn barrier(&self, py: Python<'_>, timeout: Option<f64>) -> Result<()> {
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        detached(py, || self.inner.barrier(timeout))
    }

    #[getter]
    fn connected(&self) -> bool {
        self.inner.connected()
    }

    #[getter]
    fn acked_seq(&self) -> u64 {
        self.inner.acked_seq()
    }

    #[getter]
    fn flushed_seq(&self) -> u64 {
        self.inner.flushed_seq()
    }

    #[getter]
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        self.inner.stats().into_iter().collect()
    }

    /// Send what is queued, then close the connection.
    fn close(&self, py: Python<'_>) {
        detached(py, || self.inner.close());
    }
}

impl Forwarder {
    fn forward(&self, py: Python<'_>, op: &Op) -> Result<u64> {
        detached(py, || self.inner.forward(op))
    }
}

/// The secondary's replication endpoint.
#[pyclass(frozen, module = "mirrorcore._native")]
pub struct Receiver {
    inner: receive::Receiver,
}

#[pymethods]
impl Receiver {
    #[new]
    #[pyo3(signature = (root, listen_addr, port, key, *, cache_bytes = 256 << 20))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        listen_addr: String,
        port: u16,
        key: Vec<u8>,
        cache_bytes: usize,
    ) -> Result<Self> {
        let inner = detached(py, move || {
            receive::Receiver::start(&root, &listen_addr, port, &key, cache_bytes)
        })?;
        Ok(Receiver { inner })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    #[getter]
    fn last_error(&self) -> Option<String> {
        self.inner.last_error()
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

/// A uid/gid from Python, where -1 means "unchanged".
fn id(v: i64) -> Result<u32> {
    if v == -1 {
        return Ok(u32::MAX);
    }
    u32::try_from(v).map_err(|_| MirrorError::InvalidArgument(format!("uid/gid {v} out of range")))
}

/// A time in ns from Python: the wire's "none" value cannot be a time.
fn time(ns: Option<i64>) -> Result<Option<i64>> {
    match ns {
        Some(OMIT_TIME) => Err(MirrorError::InvalidArgument(format!(
            "time {OMIT_TIME} ns is out of range"
        ))),
        other => Ok(other),
    }
}

fn seconds(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| MirrorError::InvalidArgument(format!("{what} must be >= 0, got {v}")))
}
