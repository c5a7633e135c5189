//! Payloads of the resync operations that do not fit on one line of [`super::Op`]:
//! what `ensure` carries, the kinds of entries, and the checks on names.

use super::op::{Reader, Writer};
use super::{validate_path, Op};
use crate::error::{MirrorError, Result};

/// Encodes the payload of the resync ops (codes 20 to 25).
pub(super) fn encode(op: &Op, w: &mut Writer<'_>) {
    match op {
        Op::Prune { dir, keep } => {
            w.bytes(dir)
                .u32(u32::try_from(keep.len()).unwrap_or(u32::MAX));
            for name in keep {
                w.bytes(name);
            }
        }
        Op::Ensure(e) => e.encode(w),
        Op::RequestSums {
            path,
            offset,
            length,
            block,
        } => {
            w.bytes(path).u64(*offset).u64(*length).u32(*block);
        }
        Op::RequestList { dir } => {
            w.bytes(dir);
        }
        Op::EnsureLink { existing, new } => {
            w.bytes(existing).bytes(new);
        }
        _ => unreachable!("not a resync payload: {op}"),
    }
}

/// Decodes what [`encode`] wrote for op `code` (20 to 25).
pub(super) fn decode(code: u8, r: &mut Reader<'_>) -> Result<Op> {
    Ok(match code {
        20 => {
            let dir = r.bytes()?;
            let n = r.u32()?;
            // Each name takes at least 4 bytes: a count beyond that is a lie, not an allocation.
            let mut keep = Vec::with_capacity((n as usize).min(r.0.len() / 4));
            for _ in 0..n {
                keep.push(r.bytes()?);
            }
            Op::Prune { dir, keep }
        }
        21 => Op::Ensure(Box::new(Ensure::decode(r)?)),
        23 => Op::RequestSums {
            path: r.bytes()?,
            offset: r.u64()?,
            length: r.u64()?,
            block: r.u32()?,
        },
        22 => Op::EnsureLink {
            existing: r.bytes()?,
            new: r.bytes()?,
        },
        24 => Op::RequestNeeds,
        25 => Op::RequestList { dir: r.bytes()? },
        other => return Err(MirrorError::Protocol(format!("unknown op code {other}"))),
    })
}

/// The kind of a directory entry, as `ensure` and the `list` reply name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File = 0,
    /// A directory.
    Dir = 1,
    /// A symbolic link.
    Symlink = 2,
    /// A FIFO, socket or device node (`mknod`; the type is in the mode bits).
    Node = 3,
}

const KIND_NAMES: [&str; 4] = ["file", "dir", "symlink", "node"];

impl EntryKind {
    /// The name used by the Python API.
    pub fn name(self) -> &'static str {
        KIND_NAMES[self as usize]
    }

    /// Parses a name from [`EntryKind::name`].
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] listing the accepted names.
    pub fn parse(name: &str) -> Result<EntryKind> {
        KIND_NAMES
            .iter()
            .position(|&n| n == name)
            .and_then(|i| Self::from_code(u8::try_from(i).ok()?))
            .ok_or_else(|| {
                MirrorError::InvalidArgument(format!(
                    "unknown entry kind {name:?}: expected one of {}",
                    KIND_NAMES.join(", ")
                ))
            })
    }

    /// The kind with this wire code, if any.
    pub fn from_code(code: u8) -> Option<EntryKind> {
        [
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Node,
        ]
        .get(usize::from(code))
        .copied()
    }

    /// The kind of an `st_mode`.
    pub fn of_mode(mode: u32) -> EntryKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Node,
        }
    }
}

/// Make one entry exist as the primary has it (see `Forwarder.ensure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensure {
    /// The entry; empty for the root itself (kind `Dir` only).
    pub path: Vec<u8>,
    /// What it must be.
    pub kind: EntryKind,
    /// `st_mode` (the type bits matter for nodes).
    pub mode: u32,
    /// Owner (`u32::MAX`: leave).
    pub uid: u32,
    /// Group (`u32::MAX`: leave).
    pub gid: u32,
    /// Device number of a node.
    pub rdev: u64,
    /// A symlink's target.
    pub target: Vec<u8>,
    /// A file's size on the primary (quick check).
    pub size: u64,
    /// The primary's mtime: quick check of a file, applied to the others when nonzero.
    pub mtime_ns: i64,
    /// The exact set of `user.*`/`trusted.*` xattrs, or `None` to leave them alone.
    pub xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Ensure {
    pub(super) fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.path);
        w.0.push(self.kind as u8);
        w.u32(self.mode)
            .u32(self.uid)
            .u32(self.gid)
            .u64(self.rdev)
            .bytes(&self.target)
            .u64(self.size);
        w.0.extend_from_slice(&self.mtime_ns.to_le_bytes());
        match &self.xattrs {
            None => {
                w.u32(u32::MAX);
            }
            Some(list) => {
                w.u32(u32::try_from(list.len()).expect("below 4G xattrs"));
                for (name, value) in list {
                    w.bytes(name).bytes(value);
                }
            }
        }
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Ensure> {
        let path = r.bytes()?;
        let [code] = r.take::<1>()?;
        let kind = EntryKind::from_code(code)
            .ok_or_else(|| MirrorError::Protocol(format!("unknown entry kind {code}")))?;
        let (mode, uid, gid, rdev) = (r.u32()?, r.u32()?, r.u32()?, r.u64()?);
        let (target, size) = (r.bytes()?, r.u64()?);
        let mtime_ns = i64::from_le_bytes(r.take::<8>()?);
        let xattrs = match r.u32()? {
            u32::MAX => None,
            n => {
                let mut list = Vec::new();
                for _ in 0..n {
                    list.push((r.bytes()?, r.bytes()?));
                }
                Some(list)
            }
        };
        Ok(Ensure {
            path,
            kind,
            mode,
            uid,
            gid,
            rdev,
            target,
            size,
            mtime_ns,
            xattrs,
        })
    }

    /// Checks the path (empty only for the root directory) and the xattr names.
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`] or [`MirrorError::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        if self.path.is_empty() {
            if self.kind != EntryKind::Dir {
                return Err(MirrorError::InvalidArgument(
                    "the root can only be ensured as a dir".into(),
                ));
            }
        } else {
            validate_path(&self.path)?;
        }
        for (name, _) in self.xattrs.iter().flatten() {
            if !managed_xattr(name) {
                return Err(MirrorError::InvalidArgument(format!(
                    "xattr {:?}: only user.* and trusted.* are replicated",
                    String::from_utf8_lossy(name)
                )));
            }
        }
        Ok(())
    }
}

/// Whether `ensure` manages this xattr (`user.*`, `trusted.*`).
pub fn managed_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"user.") || name.starts_with(b"trusted.")) && !name.contains(&0)
}

/// Accepts a directory path: the root (empty) or a path [`validate_path`] accepts.
///
/// # Errors
/// [`MirrorError::InvalidPath`].
pub fn validate_dir(dir: &[u8]) -> Result<()> {
    if dir.is_empty() {
        Ok(())
    } else {
        validate_path(dir)
    }
}

/// Accepts a single entry name (one path component).
///
/// # Errors
/// [`MirrorError::InvalidPath`].
pub fn validate_name(name: &[u8]) -> Result<()> {
    validate_path(name)?;
    if name.contains(&b'/') {
        return Err(MirrorError::InvalidPath(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

/// `dir/name`, or `name` in the root.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}
