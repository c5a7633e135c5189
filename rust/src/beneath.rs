//! Resolving paths strictly beneath the replicated root.
//!
//! Every path the secondary touches goes through [`Root`]: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` where the kernel has it (5.6+),
//! otherwise a component-by-component walk that follows no symlink at all.
//! Paths are also checked by [`crate::wire::validate_path`] (no `..`, not
//! absolute) before they get here, so either way nothing outside the root
//! can be reached, not even through a symlink planted inside it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The replicated root directory, held open.
pub struct Root {
    fd: OwnedFd,
    have_openat2: AtomicBool,
}

/// The directory holding a path's last component, and that component.
pub struct Parent {
    dir: Option<OwnedFd>,
    root: RawFd,
    /// The last component: a single name, never `.` or `..`.
    pub name: CString,
}

impl Parent {
    /// The directory fd to pass to an `*at()` call with [`Parent::name`].
    pub fn fd(&self) -> RawFd {
        self.dir.as_ref().map_or(self.root, AsRawFd::as_raw_fd)
    }
}

impl Root {
    /// Opens the root directory.
    ///
    /// # Errors
    /// The `open(2)` error, e.g. `ENOENT` or `ENOTDIR`.
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is a valid C string; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        Ok(Root {
            fd: owned(fd)?,
            have_openat2: AtomicBool::new(true),
        })
    }

    /// A root on a duplicate of `fd`, a directory the caller holds open (the
    /// primary's fd of its replicated directory).
    ///
    /// # Errors
    /// The `fcntl(F_DUPFD_CLOEXEC)` error, e.g. `EBADF`.
    pub fn dup(fd: RawFd) -> io::Result<Root> {
        // SAFETY: duplicating an fd has no memory effects; the result is checked.
        let fd = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        Ok(Root {
            fd: owned(fd)?,
            have_openat2: AtomicBool::new(true),
        })
    }

    /// The root's own fd (for `syncfs`).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens `path` beneath the root with `flags` (and `mode` with `O_CREAT`).
    /// Callers add `O_NOFOLLOW` when the last component must not be a symlink.
    ///
    /// # Errors
    /// `EXDEV`/`ELOOP` for a path that would leave the root, else the open error.
    pub fn open_at(&self, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        if self.have_openat2.load(Ordering::Relaxed) {
            match self.openat2(self.fd(), path, flags | libc::O_CLOEXEC, mode) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.have_openat2.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let parent = self.parent(path)?;
        openat(
            parent.fd(),
            &parent.name,
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    }

    /// Opens the directory that holds `path`'s last component.
    ///
    /// # Errors
    /// As [`Root::open_at`].
    pub fn parent(&self, path: &[u8]) -> io::Result<Parent> {
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (Some(&path[..i]), &path[i + 1..]),
            None => (None, path),
        };
        if name.is_empty() || name == b"." || name == b".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let dir = match dir {
            None => None,
            Some(dir) => Some(self.open_dir(dir)?),
        };
        Ok(Parent {
            dir,
            root: self.fd(),
            name: cstring(name)?,
        })
    }

    fn open_dir(&self, dir: &[u8]) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        if self.have_openat2.load(Ordering::Relaxed) {
            match self.openat2(self.fd(), dir, flags, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.have_openat2.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        // The fallback walk follows no symlink in any component.
        let mut cur: Option<OwnedFd> = None;
        for comp in dir.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." || comp == b".." {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let at = cur.as_ref().map_or(self.fd(), AsRawFd::as_raw_fd);
            cur = Some(openat(at, &cstring(comp)?, flags | libc::O_NOFOLLOW, 0)?);
        }
        cur.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    #[allow(clippy::unused_self)]
    fn openat2(&self, at: RawFd, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let c = cstring(path)?;
        let how = OpenHow {
            flags: u64::try_from(flags).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            mode: if flags & libc::O_CREAT != 0 {
                u64::from(mode)
            } else {
                0
            },
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        loop {
            // SAFETY: `how` and `c` outlive the call; the size matches `OpenHow`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    at,
                    c.as_ptr(),
                    &raw const how,
                    size_of::<OpenHow>(),
                )
            };
            if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                continue; // a concurrent rename elsewhere in the tree: retry
            }
            return owned(i32::try_from(r).unwrap_or(-1));
        }
    }
}

/// `openat(2)` into an owned fd.
///
/// # Errors
/// The system call's error.
pub fn openat(at: RawFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the result is checked.
    owned(unsafe { libc::openat(at, name.as_ptr(), flags, mode) })
}

/// A C string from bytes that may not contain NUL.
///
/// # Errors
/// `EINVAL` when they do.
pub fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a `-1`-or-fd result into an [`OwnedFd`].
fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Maps a libc `-1` return to the thread's errno.
///
/// # Errors
/// `errno` when `r` is negative.
pub fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-beneath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        dir
    }

    #[test]
    fn symlinks_cannot_lead_out_of_the_root() {
        let dir = tmp("escape");
        std::fs::write(dir.join("outside"), b"secret").unwrap();
        symlink(dir.join("outside"), dir.join("root/abs")).unwrap();
        symlink("../outside", dir.join("root/rel")).unwrap();
        symlink(&dir, dir.join("root/sub/up")).unwrap();
        let root = Root::open(&dir.join("root")).unwrap();
        for fallback in [false, true] {
            root.have_openat2.store(!fallback, Ordering::Relaxed);
            assert!(root.open_at(b"abs", libc::O_RDONLY, 0).is_err());
            assert!(root.open_at(b"rel", libc::O_RDONLY, 0).is_err());
            assert!(root.open_at(b"sub/up/outside", libc::O_RDONLY, 0).is_err());
            assert!(root.parent(b"sub/up/outside").is_err());
            assert!(root
                .open_at(b"sub", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .is_ok());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parent_splits_the_last_component() {
        let dir = tmp("parent");
        let root = Root::open(&dir.join("root")).unwrap();
        let p = root.parent(b"sub/file").unwrap();
        assert_eq!(p.name.as_bytes(), b"file");
        assert_ne!(p.fd(), root.fd());
        assert_eq!(root.parent(b"top").unwrap().fd(), root.fd());
        assert!(root.parent(b"sub/..").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
