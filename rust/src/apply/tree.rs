//! Directory helpers for the resync operations, all relative to directory fds:
//! no path is resolved through a symlink, so nothing outside the root is reached.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::beneath::{check, cstring, openat, Root};
use crate::extent::is_absent;

const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Opens directory `dir` beneath `root` (empty: the root itself); `None` when
/// there is no such directory (missing, not a directory, a symlink).
///
/// # Errors
/// Other open errors (e.g. `EACCES`).
pub fn open_dir(root: &Root, dir: &[u8]) -> io::Result<Option<OwnedFd>> {
    let opened = if dir.is_empty() {
        openat(root.fd(), &cstring(b".")?, DIR_FLAGS, 0)
    } else {
        root.open_at(dir, DIR_FLAGS, 0)
    };
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names in the directory open on `fd` (without `.` and `..`), unsorted.
///
/// # Errors
/// The `getdents` error.
pub fn names(fd: RawFd) -> io::Result<Vec<Vec<u8>>> {
    // fdopendir takes the fd over: give it a duplicate, positioned at the start.
    // SAFETY: duplicating an fd has no memory effects; the result is checked.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    check(dup)?;
    // SAFETY: `dup` is ours; on failure we close it, on success closedir does.
    let dirp = unsafe { libc::fdopendir(dup) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        drop(unsafe { OwnedFd::from_raw_fd(dup) });
        return Err(err);
    }
    // SAFETY: a valid DIR*.
    unsafe { libc::rewinddir(dirp) };
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir's entry lives until the next call.
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir(dirp) };
        if entry.is_null() {
            let errno = io::Error::last_os_error();
            break if errno.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(errno)
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    };
    // SAFETY: a valid DIR*, closed once.
    unsafe { libc::closedir(dirp) };
    result.map(|()| out)
}

/// `fstatat(dir, name)` without following a symlink; `None` when it does not exist.
///
/// # Errors
/// Other `fstatat` errors.
pub fn lstat_at(dir: RawFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) };
    match check(r) {
        Ok(()) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `readlinkat(dir, name)`.
///
/// # Errors
/// The system call's error.
pub fn read_link_at(dir: RawFd, name: &CString) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, C string and buffer; the result is checked.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n.unsigned_abs());
    Ok(buf)
}

/// Removes `name` from the directory open on `dir`, recursively when it is a
/// directory (entered by fd, never through a symlink). A missing entry is fine.
///
/// # Errors
/// The first failing `unlinkat`/`openat`.
pub fn remove_entry(dir: RawFd, name: &CString) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = openat(dir, name, DIR_FLAGS, 0)?;
        for child in names(sub.as_raw_fd())? {
            remove_entry(sub.as_raw_fd(), &cstring(&child)?)?;
        }
        // SAFETY: valid fd and C string; the result is checked.
        return check(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) });
    }
    // SAFETY: as above.
    match check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
