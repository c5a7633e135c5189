//! The resync operations on the secondary: `prune`, `ensure`, `ensure_link`.
//!
//! They make the namespace equal to the primary's without moving file data:
//! `ensure` notes every file whose quick check (size, mtime) fails, or that it
//! had to create, in the needs list that a `RequestNeeds` hands back.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::tree::{lstat_at, names, open_dir, read_link_at, remove_entry};
use super::{chmod_at, chown_at, omit, set_owner_and_mode, timespec, Applier};
use crate::beneath::{check, cstring, openat, Parent};
use crate::wire::{join, managed_xattr, Ensure, EntryKind, Op};

impl Applier {
    /// Applies `prune`, `ensure` or `ensure_link` (nothing else).
    pub(super) fn apply_resync(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Prune { dir, keep } => self.prune(dir, keep),
            Op::Ensure(e) => self.ensure(e),
            Op::EnsureLink { existing, new } => self.ensure_link(existing, new),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Removes every entry of `dir` not named in `keep`; a missing `dir` is fine.
    pub(super) fn prune(&mut self, dir: &[u8], keep: &[Vec<u8>]) -> io::Result<()> {
        let Some(fd) = open_dir(&self.root, dir)? else {
            return Ok(());
        };
        let keep: HashSet<&[u8]> = keep.iter().map(Vec::as_slice).collect();
        for name in names(fd.as_raw_fd())? {
            if !keep.contains(name.as_slice()) {
                self.forget(&join(dir, &name));
                remove_entry(fd.as_raw_fd(), &cstring(&name)?)?;
            }
        }
        Ok(())
    }

    /// Makes `e.path` exist as `e` describes (see `Forwarder.ensure`).
    pub(super) fn ensure(&mut self, e: &Ensure) -> io::Result<()> {
        if e.path.is_empty() {
            return self.ensure_root(e);
        }
        let p = self.root.parent(&e.path)?;
        let found = lstat_at(p.fd(), &p.name)?;
        let fits = match &found {
            Some(st) => fits(&p, st, e)?,
            None => false,
        };
        if found.is_some() && !fits {
            self.forget(&e.path);
            remove_entry(p.fd(), &p.name)?;
        }
        if !fits {
            create(&p, e)?;
        } else if e.kind == EntryKind::File && found.is_some_and(|st| st.st_nlink > 1) {
            // Hard-linked here: writes to it would reach its other names. A private copy
            // keeps the data (and the quick check); `ensure_link` relinks true links.
            self.forget(&e.path);
            break_link(&p)?;
        }
        chown_at(&p, e.uid, e.gid)?;
        if e.kind != EntryKind::Symlink {
            chmod_at(&p, e.mode)?; // after chown, which clears setuid bits
        }
        if let Some(xattrs) = &e.xattrs {
            let (proc_path, _fd) = self.by_proc(&e.path)?;
            set_xattrs(&proc_path, xattrs)?;
        }
        match e.kind {
            EntryKind::File => {
                let st = lstat_at(p.fd(), &p.name)?.ok_or_else(enoent)?;
                let size = u64::try_from(st.st_size).unwrap_or(0);
                if !fits || size != e.size || mtime_ns(&st) != e.mtime_ns {
                    self.needs.push((!fits, e.path.clone()));
                }
                Ok(())
            }
            _ if e.mtime_ns != 0 => {
                let times = [omit(), timespec(e.mtime_ns)];
                let flags = libc::AT_SYMLINK_NOFOLLOW;
                // SAFETY: valid fd, C string and a two-element array; the result is checked.
                check(unsafe { libc::utimensat(p.fd(), p.name.as_ptr(), times.as_ptr(), flags) })
            }
            _ => Ok(()),
        }
    }

    /// `ensure` of the root itself: attributes only.
    fn ensure_root(&mut self, e: &Ensure) -> io::Result<()> {
        let fd = self.root.fd();
        set_owner_and_mode(fd, e.mode, e.uid, e.gid)?;
        if let Some(xattrs) = &e.xattrs {
            set_xattrs(&cstring(format!("/proc/self/fd/{fd}").as_bytes())?, xattrs)?;
        }
        if e.mtime_ns != 0 {
            let times = [omit(), timespec(e.mtime_ns)];
            // SAFETY: valid fd and a two-element array; the result is checked.
            check(unsafe { libc::futimens(fd, times.as_ptr()) })?;
        }
        Ok(())
    }

    /// Makes `new` a hard link to `existing`, replacing whatever `new` is.
    pub(super) fn ensure_link(&mut self, existing: &[u8], new: &[u8]) -> io::Result<()> {
        let (a, b) = (self.root.parent(existing)?, self.root.parent(new)?);
        let target = lstat_at(a.fd(), &a.name)?.ok_or_else(enoent)?;
        if let Some(st) = lstat_at(b.fd(), &b.name)? {
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) {
                return Ok(());
            }
            self.forget(new);
            remove_entry(b.fd(), &b.name)?;
        }
        // SAFETY: valid fds and C strings; the result is checked.
        check(unsafe { libc::linkat(a.fd(), a.name.as_ptr(), b.fd(), b.name.as_ptr(), 0) })
    }
}

/// Whether the existing entry `st` already is what `e` asks for.
fn fits(p: &Parent, st: &libc::stat, e: &Ensure) -> io::Result<bool> {
    if EntryKind::of_mode(st.st_mode) != e.kind {
        return Ok(false);
    }
    Ok(match e.kind {
        EntryKind::File | EntryKind::Dir => true,
        EntryKind::Symlink => read_link_at(p.fd(), &p.name)? == e.target,
        EntryKind::Node => {
            let same_type = st.st_mode & libc::S_IFMT == e.mode & libc::S_IFMT;
            let device = matches!(e.mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK);
            same_type && (!device || st.st_rdev == e.rdev)
        }
    })
}

fn create(p: &Parent, e: &Ensure) -> io::Result<()> {
    match e.kind {
        EntryKind::File => {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            openat(p.fd(), &p.name, flags | libc::O_CLOEXEC, 0o600).map(drop)
        }
        // SAFETY (all three): valid fd and C strings; the result is checked.
        EntryKind::Dir => check(unsafe { libc::mkdirat(p.fd(), p.name.as_ptr(), 0o700) }),
        EntryKind::Symlink => {
            let target = cstring(&e.target)?;
            check(unsafe { libc::symlinkat(target.as_ptr(), p.fd(), p.name.as_ptr()) })
        }
        EntryKind::Node => check(unsafe {
            libc::mknodat(p.fd(), p.name.as_ptr(), e.mode & !0o7777 | 0o600, e.rdev)
        }),
    }
}

/// Replaces the hard-linked file `p` by a private copy with the same data,
/// owner, mode and times.
fn break_link(p: &Parent) -> io::Result<()> {
    let src = openat(
        p.fd(),
        &p.name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )?;
    let mut tmp_name = p.name.as_bytes().to_vec();
    tmp_name.extend_from_slice(format!(".mirrorcore-unlink-{}", std::process::id()).as_bytes());
    let tmp_name = cstring(&tmp_name)?;
    let _ = remove_entry(p.fd(), &tmp_name);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let dst = openat(p.fd(), &tmp_name, flags, 0o600)?;
    let copied = copy_all(src.as_raw_fd(), dst.as_raw_fd()).and_then(|()| {
        // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(src.as_raw_fd(), &raw mut st) })?;
        set_owner_and_mode(dst.as_raw_fd(), st.st_mode, st.st_uid, st.st_gid)?;
        let times = [omit(), timespec(mtime_ns(&st))];
        // SAFETY: valid fd and a two-element array; the result is checked.
        check(unsafe { libc::futimens(dst.as_raw_fd(), times.as_ptr()) })?;
        // SAFETY: valid fds and C strings; the result is checked.
        check(unsafe { libc::renameat(p.fd(), tmp_name.as_ptr(), p.fd(), p.name.as_ptr()) })
    });
    if copied.is_err() {
        let _ = remove_entry(p.fd(), &tmp_name);
    }
    copied
}

/// Copies all of `src` to `dst` in the kernel (`copy_file_range`).
fn copy_all(src: RawFd, dst: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: valid fds; null offsets use and advance the file positions.
        let n = unsafe {
            libc::copy_file_range(
                src,
                std::ptr::null_mut(),
                dst,
                std::ptr::null_mut(),
                1 << 30,
                0,
            )
        };
        match n {
            0 => return Ok(()),
            n if n > 0 => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// Sets exactly `want` among the `user.*`/`trusted.*` xattrs of the file
/// `/proc/self/fd/N` names; other namespaces are left alone.
fn set_xattrs(proc_path: &CString, want: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    for name in list_xattrs(proc_path)? {
        if managed_xattr(&name) && !want.iter().any(|(n, _)| *n == name) {
            let name = cstring(&name)?;
            // SAFETY: valid C strings; the result is checked.
            match check(unsafe { libc::removexattr(proc_path.as_ptr(), name.as_ptr()) }) {
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                other => other?,
            }
        }
    }
    for (name, value) in want {
        if get_xattr(proc_path, name)?.as_deref() == Some(value.as_slice()) {
            continue;
        }
        let name = cstring(name)?;
        let (buf, len) = (value.as_ptr().cast(), value.len());
        // SAFETY: valid C strings and buffer; the result is checked.
        check(unsafe { libc::setxattr(proc_path.as_ptr(), name.as_ptr(), buf, len, 0) })?;
    }
    Ok(())
}

pub(super) fn list_xattrs(path: &CString) -> io::Result<Vec<Vec<u8>>> {
    let raw = sized(|buf, len| unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) })?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

fn get_xattr(path: &CString, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = cstring(name)?;
    match sized(|buf, len| unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len) }) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs a size-query-then-fill xattr call until the buffer is big enough.
fn sized(call: impl Fn(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let want = call(std::ptr::null_mut(), 0);
        if want < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; want.unsigned_abs()];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got.unsigned_abs());
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// `st_mtime` in ns.
pub(super) fn mtime_ns(st: &libc::stat) -> i64 {
    st.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec)
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}
