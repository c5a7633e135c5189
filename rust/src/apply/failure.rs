//! What an operation that fails to apply means for the copy, and how to say so.
//!
//! The primary forwards only operations that succeeded locally, so a failure
//! here means the secondary's copy is no longer the primary's — with a few
//! exceptions whose result is exactly what the primary's operation left
//! ([`tolerated`]). Every other failure stops the session (see `cache.rs`);
//! [`explain`] names the operation, the path, the errno and the fix.

use std::io;
use std::path::Path;

use crate::wire::{managed_xattr, Op};

/// Whether the failure `err` of `op` leaves the path as the primary's operation
/// left it, so that applying may go on:
///
/// - `unlink`/`rmdir` of something already gone (`ENOENT`);
/// - `removexattr` of an attribute already absent (`ENODATA`);
/// - an xattr outside the replicated namespaces (`user.*`, `trusted.*`; e.g.
///   `security.*`, `system.posix_acl_*`) that the secondary's file system does
///   not support (`EOPNOTSUPP`): no resync would carry it either.
pub fn tolerated(op: &Op, err: &io::Error) -> bool {
    match (op, err.raw_os_error()) {
        (Op::Unlink { .. } | Op::Rmdir { .. }, Some(libc::ENOENT))
        | (Op::Removexattr { .. }, Some(libc::ENODATA)) => true,
        (Op::Setxattr { name, .. } | Op::Removexattr { name, .. }, Some(libc::EOPNOTSUPP)) => {
            !managed_xattr(name)
        }
        _ => false,
    }
}

/// The paths whose state a failed `op` may have left different from the
/// primary's: seeded as needs, so that the next resync compares them whole.
/// `None`: the whole copy is in doubt (a `reset` half done), a full copy follows.
pub fn damaged(op: &Op) -> Option<Vec<Vec<u8>>> {
    match op {
        Op::Reset => None,
        _ => Some(op.paths().into_iter().map(<[u8]>::to_vec).collect()),
    }
}

/// The message of a failure to apply operation `seq`: what failed, where, and
/// what the operator must do. `dir` is the replicated directory on this node.
pub fn explain(seq: u64, op: &Op, err: &io::Error, dir: &Path) -> String {
    let node = hostname();
    let dir = dir.display();
    let errno = err.raw_os_error().unwrap_or(0);
    let path = op.paths().first().map_or_else(
        || dir.to_string(),
        |p| String::from_utf8_lossy(p).into_owned(),
    );
    let fix = fix(errno, &node, &dir.to_string(), &path);
    let then = match damaged(op) {
        None => "its next resync is a full copy".to_owned(),
        Some(paths) if paths.is_empty() => "its next resync repairs the copy".to_owned(),
        Some(paths) => format!(
            "its next resync repairs {}",
            paths
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    };
    format!(
        "applying seq {seq} ({op}) failed on {node} under {dir}: {}: {fix}; \
         then let the primary reconnect (it keeps trying): {then}. \
         Until that resync completes this copy is inconsistent",
        describe(err)
    )
}

/// The message of a failed flush (`syncfs`) of `dir`: what was applied since
/// the last good flush may not be on disk, so the next resync is full.
pub fn explain_flush(err: &io::Error, dir: &Path) -> String {
    let node = hostname();
    let dir = dir.display();
    let errno = err.raw_os_error().unwrap_or(0);
    let fix = fix(errno, &node, &dir.to_string(), &dir.to_string());
    format!(
        "flushing to disk (syncfs) failed on {node} under {dir}: {}: {fix}; \
         then let the primary reconnect (it keeps trying): its next resync is a full copy. \
         Until that resync completes this copy is inconsistent",
        describe(err)
    )
}

fn fix(errno: i32, node: &str, dir: &str, path: &str) -> String {
    match errno {
        libc::ENOSPC => format!("the secondary's disk is full: free space on {node} under {dir}"),
        libc::EDQUOT => format!(
            "a disk quota is exhausted on the secondary: raise it or free space on {node} under {dir}"
        ),
        libc::EROFS => format!(
            "the secondary's file system is read-only: on {node}, find in the kernel log why \
             {dir} went read-only, repair it (fsck) and remount it read-write"
        ),
        libc::EIO => format!(
            "the secondary's disk failed: check the disk holding {dir} and the kernel log on \
             {node}; repair or replace it"
        ),
        libc::EACCES | libc::EPERM => format!(
            "the receiver may not change {path}: on {node}, run it as root and look for \
             immutable attributes (lsattr) or a read-only mount under {dir}"
        ),
        libc::EMFILE | libc::ENFILE | libc::ENOMEM => {
            format!("the secondary ran out of resources: check the limits on {node}")
        }
        libc::ENOENT
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ELOOP
        | libc::EXDEV => format!(
            "the secondary's copy differs from the primary's at {path}: something changed it \
             outside replication on {node} under {dir}; find what and stop it"
        ),
        _ => format!("fix the cause on {node} under {dir}"),
    }
}

/// `No space left on device (ENOSPC, errno 28)`.
fn describe(err: &io::Error) -> String {
    let Some(errno) = err.raw_os_error() else {
        return err.to_string();
    };
    let text = err.to_string();
    let text = text
        .strip_suffix(&format!(" (os error {errno})"))
        .unwrap_or(&text);
    format!("{text} ({})", errno_name(errno))
}

/// The symbolic name of `errno` (the common ones), else `errno N`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::E2BIG => "E2BIG",
        libc::ERANGE => "ERANGE",
        _ => return format!("errno {errno}"),
    };
    format!("{name}, errno {errno}")
}

/// This node's host name (as the operator knows it), or `this node`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of the given length; the result is checked.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if r != 0 || len == 0 {
        return "this node".into();
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn only_results_equal_to_the_primary_s_are_tolerated() {
        let unlink = Op::Unlink { path: b"a".into() };
        assert!(tolerated(&unlink, &err(libc::ENOENT)));
        assert!(!tolerated(&unlink, &err(libc::EROFS)));
        let write = Op::Write {
            path: b"a".into(),
            offset: 0,
            mtime_ns: None,
            data: vec![1],
        };
        assert!(!tolerated(&write, &err(libc::ENOENT)));
        assert!(!tolerated(&write, &err(libc::ENOSPC)));
        let xattr = |name: &[u8]| Op::Setxattr {
            path: b"a".into(),
            name: name.into(),
            value: vec![],
            flags: 0,
        };
        assert!(tolerated(
            &xattr(b"security.selinux"),
            &err(libc::EOPNOTSUPP)
        ));
        assert!(!tolerated(&xattr(b"user.x"), &err(libc::EOPNOTSUPP)));
        let remove = Op::Removexattr {
            path: b"a".into(),
            name: b"user.x".into(),
        };
        assert!(tolerated(&remove, &err(libc::ENODATA)));
    }

    #[test]
    fn the_message_names_the_op_the_path_the_errno_and_the_fix() {
        let op = Op::Write {
            path: b"d/f".into(),
            offset: 4096,
            mtime_ns: None,
            data: vec![0; 10],
        };
        let msg = explain(7, &op, &err(libc::ENOSPC), Path::new("/srv/data"));
        for part in [
            "applying seq 7 (write d/f @4096+10)",
            "under /srv/data",
            "No space left on device (ENOSPC, errno 28): ",
            "the secondary's disk is full: free space on ",
            "its next resync repairs d/f",
            "inconsistent",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
        let msg = explain(3, &Op::Reset, &err(libc::EIO), Path::new("/srv/data"));
        assert!(msg.contains("full copy") && msg.contains("EIO"), "{msg}");
        let rename = Op::Rename {
            old: b"a".into(),
            new: b"b".into(),
            flags: 0,
        };
        let msg = explain(9, &rename, &err(libc::ENOTDIR), Path::new("/srv/data"));
        assert!(
            msg.contains("repairs a and b") && msg.contains("differs"),
            "{msg}"
        );
    }
}
