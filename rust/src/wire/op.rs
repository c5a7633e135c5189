//! Replicated operations and their payload encoding (see [`super`] for the frame around them).

use super::resync::{validate_dir, validate_name, Ensure};

use super::{finish_header, header};
use crate::error::{MirrorError, Result};

/// One replicated operation, as sent from the primary to the secondary.
///
/// Paths are relative to the replicated root; [`validate_path`] says which
/// are acceptable. `uid`/`gid` of `u32::MAX` mean "unchanged" (chown's -1).
///
/// Modification times: the secondary ends every operation with the primary's
/// `st_mtime_ns` on every entry it touched. A write carries the file's mtime
/// read right after the primary's `pwrite` (the hot path: no extra frame);
/// for every other operation the primary follows the frame with a
/// [`Op::Utimens`] that leaves the atime alone (`atime_ns: None`) for the
/// entry and its parent directory(ies). Times are `Option`s on the wire as
/// an `i64` where [`OMIT_TIME`] means "leave it" (`UTIME_OMIT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `pwrite(data, offset)` on an existing regular file, then set its mtime
    /// to `mtime_ns` (the primary's, after its own `pwrite`) unless `None`
    /// (a full copy's data, whose times follow at the end).
    Write {
        path: Vec<u8>,
        offset: u64,
        mtime_ns: Option<i64>,
        data: Vec<u8>,
    },
    /// Create (or truncate) a regular file and set its mode and owner.
    Create {
        path: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Create a device node, FIFO or socket.
    Mknod {
        path: Vec<u8>,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    /// Create a directory.
    Mkdir {
        path: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Create a symbolic link at `path` pointing to `target`.
    Symlink {
        target: Vec<u8>,
        path: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    /// Create a hard link `new` to `existing`.
    Link { existing: Vec<u8>, new: Vec<u8> },
    /// Remove a non-directory.
    Unlink { path: Vec<u8> },
    /// Remove an empty directory.
    Rmdir { path: Vec<u8> },
    /// `renameat2(old, new, flags)`.
    Rename {
        old: Vec<u8>,
        new: Vec<u8>,
        flags: u32,
    },
    /// Set a regular file's size.
    Truncate { path: Vec<u8>, size: u64 },
    /// Set permission bits (never follows a final symlink).
    Chmod { path: Vec<u8>, mode: u32 },
    /// Set owner and group (never follows a final symlink).
    Chown { path: Vec<u8>, uid: u32, gid: u32 },
    /// Set access and modification times, exact to the nanosecond; `None`
    /// leaves that time as it is (`UTIME_OMIT`).
    Utimens {
        path: Vec<u8>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
    },
    /// Set an extended attribute.
    Setxattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    /// Remove an extended attribute.
    Removexattr { path: Vec<u8>, name: Vec<u8> },
    /// `fallocate(mode, offset, length)`, hole punching included.
    Fallocate {
        path: Vec<u8>,
        mode: u32,
        offset: u64,
        length: u64,
    },
    /// A durability point: the primary waits for its ack.
    Barrier,
    /// Empty the secondary's copy: the start of a full copy streamed after it.
    Reset,
    /// A milestone of the stream (e.g. "full copy complete"); the secondary reports the
    /// latest one it applied.
    Mark { tag: u64 },
    /// Remove, recursively, every entry of `dir` (empty: the root) whose name
    /// is not in `keep`; a missing `dir` is left missing.
    Prune { dir: Vec<u8>, keep: Vec<Vec<u8>> },
    /// Make one entry exist as the primary has it (see [`Ensure`]).
    Ensure(Box<Ensure>),
    /// Make `new` a hard link to `existing` (nothing when it already is one).
    EnsureLink { existing: Vec<u8>, new: Vec<u8> },
    /// Reply with the block checksums of `[offset, offset+length)` of a file.
    RequestSums {
        path: Vec<u8>,
        offset: u64,
        length: u64,
        block: u32,
    },
    /// Reply with the files `ensure` found failing the quick check (then forget them).
    RequestNeeds,
    /// Reply with the entries of `dir` (empty: the root).
    RequestList { dir: Vec<u8> },
}

impl Op {
    /// The op code carried in the frame header.
    pub fn code(&self) -> u8 {
        match self {
            Op::Write { .. } => 1,
            Op::Create { .. } => 2,
            Op::Mknod { .. } => 3,
            Op::Mkdir { .. } => 4,
            Op::Symlink { .. } => 5,
            Op::Link { .. } => 6,
            Op::Unlink { .. } => 7,
            Op::Rmdir { .. } => 8,
            Op::Rename { .. } => 9,
            Op::Truncate { .. } => 10,
            Op::Chmod { .. } => 11,
            Op::Chown { .. } => 12,
            Op::Utimens { .. } => 13,
            Op::Setxattr { .. } => 14,
            Op::Removexattr { .. } => 15,
            Op::Fallocate { .. } => 16,
            Op::Barrier => 17,
            Op::Reset => 18,
            Op::Mark { .. } => 19,
            Op::Prune { .. } => 20,
            Op::Ensure(_) => 21,
            Op::EnsureLink { .. } => 22,
            Op::RequestSums { .. } => 23,
            Op::RequestNeeds => 24,
            Op::RequestList { .. } => 25,
        }
    }

    /// The operation's name, as in the Python API.
    pub fn name(&self) -> &'static str {
        const NAMES: [&str; 25] = [
            "write",
            "create",
            "mknod",
            "mkdir",
            "symlink",
            "link",
            "unlink",
            "rmdir",
            "rename",
            "truncate",
            "chmod",
            "chown",
            "utimens",
            "setxattr",
            "removexattr",
            "fallocate",
            "barrier",
            "reset",
            "mark",
            "prune",
            "ensure",
            "ensure_link",
            "request_sums",
            "request_needs",
            "request_list",
        ];
        NAMES[usize::from(self.code() - 1)]
    }

    /// The paths under the root that this operation touches (not a symlink's target).
    pub fn paths(&self) -> Vec<&[u8]> {
        match self {
            Op::Write { path, .. }
            | Op::Create { path, .. }
            | Op::Mknod { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::Setxattr { path, .. }
            | Op::Removexattr { path, .. }
            | Op::Fallocate { path, .. }
            | Op::RequestSums { path, .. } => vec![path],
            Op::Link { existing, new } | Op::EnsureLink { existing, new } => vec![existing, new],
            Op::Rename { old, new, .. } => vec![old, new],
            // Directories that may be the root (empty): named unless they are.
            Op::Prune { dir, .. } | Op::RequestList { dir } => [dir.as_slice()]
                .into_iter()
                .filter(|d| !d.is_empty())
                .collect(),
            Op::Ensure(e) => [e.path.as_slice()]
                .into_iter()
                .filter(|d| !d.is_empty())
                .collect(),
            Op::Barrier | Op::Reset | Op::Mark { .. } | Op::RequestNeeds => Vec::new(),
        }
    }

    /// Whether the secondary answers this operation with a reply.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Op::RequestSums { .. } | Op::RequestNeeds | Op::RequestList { .. }
        )
    }

    /// Checks every path and name the operation carries (the root is empty,
    /// accepted where an operation allows it).
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`], or [`MirrorError::InvalidArgument`] for
    /// a bad `ensure`.
    pub fn validate(&self) -> Result<()> {
        for path in self.paths() {
            validate_path(path)?;
        }
        match self {
            Op::Prune { dir, keep } => {
                validate_dir(dir)?;
                keep.iter().try_for_each(|name| validate_name(name))
            }
            Op::Ensure(e) => e.validate(),
            Op::RequestSums { block, .. } if *block == 0 => Err(MirrorError::InvalidArgument(
                "the block size must be positive".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Encodes the whole frame except its MAC (see [`seal`]).
    pub fn frame(&self, seq: u64) -> Vec<u8> {
        if let Op::Write {
            path,
            offset,
            mtime_ns,
            data,
        } = self
        {
            return write_frame(seq, path, *offset, *mtime_ns, data);
        }
        let mut out = header(seq, self.code(), 64);
        let mut w = Writer(&mut out);
        match self {
            Op::Write { .. } | Op::Barrier | Op::Reset | Op::RequestNeeds => {}
            Op::Mark { tag } => {
                w.u64(*tag);
            }
            Op::Prune { .. }
            | Op::Ensure(_)
            | Op::EnsureLink { .. }
            | Op::RequestSums { .. }
            | Op::RequestList { .. } => super::resync::encode(self, &mut w),
            Op::Create {
                path,
                mode,
                uid,
                gid,
            }
            | Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => {
                w.bytes(path).u32(*mode).u32(*uid).u32(*gid);
            }
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                w.bytes(path).u32(*mode).u64(*rdev).u32(*uid).u32(*gid);
            }
            Op::Symlink {
                target,
                path,
                uid,
                gid,
            } => {
                w.bytes(target).bytes(path).u32(*uid).u32(*gid);
            }
            Op::Link {
                existing: a,
                new: b,
            }
            | Op::Removexattr { path: a, name: b } => {
                w.bytes(a).bytes(b);
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                w.bytes(path);
            }
            Op::Rename { old, new, flags } => {
                w.bytes(old).bytes(new).u32(*flags);
            }
            Op::Truncate { path, size } => {
                w.bytes(path).u64(*size);
            }
            Op::Chmod { path, mode } => {
                w.bytes(path).u32(*mode);
            }
            Op::Chown { path, uid, gid } => {
                w.bytes(path).u32(*uid).u32(*gid);
            }
            Op::Utimens {
                path,
                atime_ns,
                mtime_ns,
            } => {
                w.bytes(path).time(*atime_ns).time(*mtime_ns);
            }
            Op::Setxattr {
                path,
                name,
                value,
                flags,
            } => {
                w.bytes(path).bytes(name).bytes(value).u32(*flags);
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => {
                w.bytes(path).u32(*mode).u64(*offset).u64(*length);
            }
        }
        finish_header(&mut out);
        out
    }

    /// Decodes a verified payload; checks it with [`Op::validate`].
    ///
    /// # Errors
    /// [`MirrorError::Protocol`] for an unknown op, a short or overlong payload;
    /// as [`Op::validate`] for bad paths or arguments.
    pub fn decode(code: u8, payload: &[u8]) -> Result<Op> {
        let mut r = Reader(payload);
        let op = match code {
            1 => {
                let path = r.bytes()?;
                let offset = r.u64()?;
                let mtime_ns = r.time()?;
                let data = std::mem::take(&mut r.0).to_vec();
                Op::Write {
                    path,
                    offset,
                    mtime_ns,
                    data,
                }
            }
            2 => Op::Create {
                path: r.bytes()?,
                mode: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            3 => Op::Mknod {
                path: r.bytes()?,
                mode: r.u32()?,
                rdev: r.u64()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            4 => Op::Mkdir {
                path: r.bytes()?,
                mode: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            5 => Op::Symlink {
                target: r.bytes()?,
                path: r.bytes()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            6 => Op::Link {
                existing: r.bytes()?,
                new: r.bytes()?,
            },
            7 => Op::Unlink { path: r.bytes()? },
            8 => Op::Rmdir { path: r.bytes()? },
            9 => Op::Rename {
                old: r.bytes()?,
                new: r.bytes()?,
                flags: r.u32()?,
            },
            10 => Op::Truncate {
                path: r.bytes()?,
                size: r.u64()?,
            },
            11 => Op::Chmod {
                path: r.bytes()?,
                mode: r.u32()?,
            },
            12 => Op::Chown {
                path: r.bytes()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            13 => Op::Utimens {
                path: r.bytes()?,
                atime_ns: r.time()?,
                mtime_ns: r.time()?,
            },
            14 => Op::Setxattr {
                path: r.bytes()?,
                name: r.bytes()?,
                value: r.bytes()?,
                flags: r.u32()?,
            },
            15 => Op::Removexattr {
                path: r.bytes()?,
                name: r.bytes()?,
            },
            16 => Op::Fallocate {
                path: r.bytes()?,
                mode: r.u32()?,
                offset: r.u64()?,
                length: r.u64()?,
            },
            17 => Op::Barrier,
            18 => Op::Reset,
            19 => Op::Mark { tag: r.u64()? },
            20..=25 => super::resync::decode(code, &mut r)?,
            other => return Err(MirrorError::Protocol(format!("unknown op code {other}"))),
        };
        if !r.0.is_empty() {
            return Err(MirrorError::Protocol(format!(
                "{} stray bytes after op {code}",
                r.0.len()
            )));
        }
        op.validate()?;
        Ok(op)
    }
}

/// `name path [-> path]`, plus offset and length for writes: for messages.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        for (i, path) in self.paths().into_iter().enumerate() {
            let sep = if i == 0 { " " } else { " -> " };
            write!(f, "{sep}{}", String::from_utf8_lossy(path))?;
        }
        if let Op::Write { offset, data, .. } = self {
            write!(f, " @{offset}+{}", data.len())?;
        }
        Ok(())
    }
}

/// A time field's "no time" (`None`): `i64::MIN` ns, a day in 1677 no file
/// carries (such a time given to [`Op::Utimens`] reads as "leave it").
pub const OMIT_TIME: i64 = i64::MIN;

/// Bytes of a write frame's payload before its data.
pub fn write_overhead(path: &[u8]) -> usize {
    4 + path.len() + 8 + 8
}

/// Encodes a write frame straight from borrowed data (the hot path: one copy).
pub fn write_frame(
    seq: u64,
    path: &[u8],
    offset: u64,
    mtime_ns: Option<i64>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = header(seq, 1, write_overhead(path) + data.len());
    Writer(&mut out).bytes(path).u64(offset).time(mtime_ns);
    out.extend_from_slice(data);
    finish_header(&mut out);
    out
}

/// Accepts a path relative to the root: not empty, not absolute, no empty,
/// `.` or `..` component, no NUL byte.
///
/// # Errors
/// [`MirrorError::InvalidPath`] naming the path.
pub fn validate_path(path: &[u8]) -> Result<()> {
    let bad = path.is_empty()
        || path.len() > 4096
        || path[0] == b'/'
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(MirrorError::InvalidPath(
            String::from_utf8_lossy(path).into_owned(),
        ));
    }
    Ok(())
}

pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn time(&mut self, v: Option<i64>) -> &mut Self {
        self.0
            .extend_from_slice(&v.unwrap_or(OMIT_TIME).to_le_bytes());
        self
    }
    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(u32::try_from(b.len()).expect("field below 4 GiB"));
        self.0.extend_from_slice(b);
        self
    }
}

pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl Reader<'_> {
    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.0.len() < N {
            return Err(MirrorError::Protocol("truncated payload".into()));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    pub(super) fn time(&mut self) -> Result<Option<i64>> {
        let v = self.take::<8>().map(i64::from_le_bytes)?;
        Ok((v != OMIT_TIME).then_some(v))
    }
    pub(super) fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return Err(MirrorError::Protocol("truncated byte string".into()));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HEADER_LEN;

    #[test]
    fn ops_describe_themselves_without_their_data() {
        let op = Op::Write {
            path: b"a/b".to_vec(),
            offset: 5,
            mtime_ns: Some(1),
            data: vec![0; 3],
        };
        assert_eq!(op.to_string(), "write a/b @5+3");
        let op = Op::Rename {
            old: b"x".to_vec(),
            new: b"y".to_vec(),
            flags: 0,
        };
        assert_eq!(op.to_string(), "rename x -> y");
        assert_eq!(Op::Barrier.to_string(), "barrier");
    }

    #[test]
    fn truncated_and_overlong_payloads_are_refused() {
        let frame = Op::Chmod {
            path: b"f".to_vec(),
            mode: 1,
        }
        .frame(1);
        let payload = &frame[HEADER_LEN..];
        assert!(Op::decode(11, &payload[..payload.len() - 1]).is_err());
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(Op::decode(11, &longer).is_err());
        assert!(Op::decode(99, payload).is_err());
    }
}
