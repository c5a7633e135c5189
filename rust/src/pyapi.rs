//! The Python classes `Forwarder` and `Receiver` (`pyapi/receiver.rs`) and
//! `local_sums`: thin, frozen wrappers that convert arguments and release the
//! GIL around every call that can block.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};

use crate::auth::Mode;
use crate::beneath::Root;
use crate::detached;
use crate::dirty::PyDirtyMap;
use crate::error::{MirrorError, Result};
use crate::extent;
use crate::forward::{self, Config};
use crate::wire::{Ensure, EntryKind, Op, Reply, OMIT_TIME};

mod receiver;

pub use receiver::Receiver;

/// One `take_list` entry: name, kind, mode, uid, gid, size, `mtime_ns`, symlink target.
type PyListEntry<'py> = (
    Bound<'py, PyBytes>,
    &'static str,
    u32,
    u32,
    u32,
    u64,
    i64,
    Bound<'py, PyBytes>,
);

/// `(size, checksums)` of a range of the file `path` beneath the directory open on
/// `root_fd`, in blocks of `block` bytes (16 bytes each); size -1 when it is not a regular file.
///
/// # Errors
/// A bad path or block size; the read error.
#[pyfunction]
pub fn local_sums<'py>(
    py: Python<'py>,
    root_fd: RawFd,
    path: &[u8],
    offset: u64,
    length: u64,
    block: u32,
) -> Result<(i64, Bound<'py, PyBytes>)> {
    crate::wire::validate_path(path)?;
    let (size, sums) = detached(py, || -> Result<(i64, Vec<u8>)> {
        let root = Root::dup(root_fd)?;
        Ok(extent::local_sums(&root, path, offset, length, block)?)
    })?;
    Ok((size, PyBytes::new(py, &sums)))
}

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
    #[pyo3(signature = (fd, path, offset, data, *, post = false))]
    fn write(
        &self,
        py: Python<'_>,
        fd: RawFd,
        path: Option<&[u8]>,
        offset: u64,
        data: &[u8],
        post: bool,
    ) -> Result<usize> {
        detached(py, || {
            self.inner.write_posting(fd, path, offset, data, post)
        })
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

    /// Queue a barrier without waiting; the seq to wait for, 0 when nothing is left to wait for.
    fn post_barrier(&self, py: Python<'_>) -> Result<u64> {
        detached(py, || self.inner.post_barrier())
    }

    /// Whether everything up to `seq` is acknowledged as the mode requires, waiting up to `wait` seconds.
    #[pyo3(signature = (seq, wait = 0.0))]
    fn is_covered(&self, py: Python<'_>, seq: u64, wait: f64) -> Result<bool> {
        let wait = seconds(wait, "wait")?;
        Ok(if wait.is_zero() {
            self.inner.is_covered(seq, wait)
        } else {
            detached(py, || self.inner.is_covered(seq, wait))
        })
    }

    /// Wait until everything up to `seq` (from `post_barrier`) is acknowledged.
    #[pyo3(signature = (seq, timeout = None))]
    fn wait_barrier(&self, py: Python<'_>, seq: u64, timeout: Option<f64>) -> Result<()> {
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        detached(py, || self.inner.wait_barrier(seq, timeout))
    }

    #[getter]
    fn connected(&self) -> bool {
        self.inner.connected()
    }

    #[getter]
    fn last_error(&self) -> Option<String> {
        self.inner.last_error()
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

    /// The copy id the secondary announced when the link was made (0: none).
    #[getter]
    fn peer_copy_id(&self) -> u64 {
        self.inner.peer_copy_id()
    }

    /// Secondary: remove (recursively) every entry of `dir` (b"": the root) not named in `keep`.
    fn prune(&self, py: Python<'_>, dir: Vec<u8>, keep: Vec<Vec<u8>>) -> Result<u64> {
        self.forward(py, &Op::Prune { dir, keep })
    }

    /// Secondary: make `path` exist as `kind` with these attributes; files failing the quick
    /// check (size, `mtime_ns`) join the needs list.
    #[pyo3(signature = (path, kind, mode, uid, gid, *, rdev = 0, target = Vec::new(), size = 0,
                        mtime_ns = 0, xattrs = None),
           text_signature = "(self, path, kind, mode, uid, gid, *, rdev=0, target=b'', size=0, mtime_ns=0, xattrs=None)")]
    #[allow(clippy::too_many_arguments)]
    fn ensure(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        kind: &str,
        mode: u32,
        uid: i64,
        gid: i64,
        rdev: u64,
        target: Vec<u8>,
        size: u64,
        mtime_ns: i64,
        xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<u64> {
        let ensure = Ensure {
            path,
            kind: EntryKind::parse(kind)?,
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
            rdev,
            target,
            size,
            mtime_ns,
            xattrs,
        };
        self.forward(py, &Op::Ensure(Box::new(ensure)))
    }

    /// Secondary: make `new` a hard link to `existing` (nothing when it already is one).
    fn ensure_link(&self, py: Python<'_>, existing: Vec<u8>, new: Vec<u8>) -> Result<u64> {
        self.forward(py, &Op::EnsureLink { existing, new })
    }

    /// Read `[offset, offset+length)` of `path` beneath `root_fd` (clipped at its end) and queue
    /// it as data; returns the bytes queued. The data never passes through Python.
    fn copy_range(
        &self,
        py: Python<'_>,
        root_fd: RawFd,
        path: &[u8],
        offset: u64,
        length: u64,
    ) -> Result<u64> {
        detached(py, || {
            let root = Root::dup(root_fd)?;
            self.inner.copy_range(&root, path, offset, length)
        })
    }

    /// Ask for the secondary's block sums of a range, taken where the stream is now.
    fn request_sums(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        offset: u64,
        length: u64,
        block: u32,
    ) -> Result<u64> {
        let op = Op::RequestSums {
            path,
            offset,
            length,
            block,
        };
        detached(py, || self.inner.request(&op))
    }

    /// Ask for the needs list (files the `ensure`s since the previous request found differing).
    fn request_needs(&self, py: Python<'_>) -> Result<u64> {
        detached(py, || self.inner.request(&Op::RequestNeeds))
    }

    /// Ask for the secondary's entries of `dir` (b"": the root).
    fn request_list(&self, py: Python<'_>, dir: Vec<u8>) -> Result<u64> {
        detached(py, || self.inner.request(&Op::RequestList { dir }))
    }

    /// Wait for the reply to `request_sums` `seq`: `(size, checksums)` as `local_sums`.
    #[pyo3(signature = (seq, timeout = None))]
    fn take_sums<'py>(
        &self,
        py: Python<'py>,
        seq: u64,
        timeout: Option<f64>,
    ) -> Result<(i64, Bound<'py, PyBytes>)> {
        match self.take(py, seq, timeout)? {
            Reply::Sums { size, sums } => Ok((size, PyBytes::new(py, &sums))),
            other => Err(unexpected(seq, &other)),
        }
    }

    /// Wait for the reply to `request_needs` `seq`: `(created_now, path)` per file.
    #[pyo3(signature = (seq, timeout = None))]
    fn take_needs<'py>(
        &self,
        py: Python<'py>,
        seq: u64,
        timeout: Option<f64>,
    ) -> Result<Vec<(bool, Bound<'py, PyBytes>)>> {
        match self.take(py, seq, timeout)? {
            Reply::Needs(paths) => Ok(paths
                .iter()
                .map(|(created, path)| (*created, PyBytes::new(py, path)))
                .collect()),
            other => Err(unexpected(seq, &other)),
        }
    }

    /// Wait for the reply to `request_list` `seq`: the directory's entries sorted by name.
    #[pyo3(signature = (seq, timeout = None))]
    fn take_list<'py>(
        &self,
        py: Python<'py>,
        seq: u64,
        timeout: Option<f64>,
    ) -> Result<Vec<PyListEntry<'py>>> {
        match self.take(py, seq, timeout)? {
            Reply::List(entries) => Ok(entries
                .iter()
                .map(|e| {
                    (
                        PyBytes::new(py, &e.name),
                        e.kind.name(),
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.mtime_ns,
                        PyBytes::new(py, &e.target),
                    )
                })
                .collect()),
            other => Err(unexpected(seq, &other)),
        }
    }
}

impl Forwarder {
    fn forward(&self, py: Python<'_>, op: &Op) -> Result<u64> {
        detached(py, || self.inner.forward(op))
    }

    fn take(&self, py: Python<'_>, seq: u64, timeout: Option<f64>) -> Result<Reply> {
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        detached(py, || self.inner.take(seq, timeout))
    }
}

/// A reply of another kind than the request `seq` asked for.
fn unexpected(seq: u64, reply: &Reply) -> MirrorError {
    let kind = match reply {
        Reply::Failed { .. } => "failure",
        Reply::Halted { .. } => "a halt",
        Reply::Sums { .. } => "sums",
        Reply::Needs(_) => "needs",
        Reply::List(_) => "list",
    };
    MirrorError::InvalidArgument(format!("seq {seq} was answered with {kind}"))
}

/// A uid/gid from Python, where -1 means "unchanged".
pub(crate) fn id(v: i64) -> Result<u32> {
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

pub(crate) fn seconds(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| MirrorError::InvalidArgument(format!("{what} must be >= 0, got {v}")))
}
