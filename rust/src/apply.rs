//! Applying one operation under the replicated root (the secondary's side).
//!
//! Every call is an `*at()` relative to a directory resolved by
//! [`crate::beneath::Root`]; the last component is never followed when it is
//! a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). Writes reuse open fds
//! from a small LRU, dropped when a rename, unlink or rmdir changes what the
//! path names.
//!
//! Modification times: applying an operation stamps the secondary's clock on
//! what it changes; a write then sets the primary's mtime it carries
//! (`futimens`, atime untouched), and for other operations the primary sends
//! a [`Op::Utimens`] with the times it ended with right after them.
//!
//! Failures: `apply/failure.rs` tells which failures leave the copy as the
//! primary's operation left it ([`tolerated`]) and words the others
//! ([`explain`]); the cache's applier stops the session at those.
//!
//! Resync: `apply/resync.rs` applies `prune`, `ensure` and `ensure_link`
//! (keeping the needs list), `apply/answer.rs` answers requests,
//! `apply/tree.rs` walks and removes directories by fd.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::beneath::{check, cstring, openat, Parent, Root};
use crate::wire::Op;

mod answer;
mod failure;
mod resync;
#[cfg(test)]
mod resync_tests;
mod tree;

pub use failure::{damaged, errno_name, explain, explain_flush, tolerated};

/// How many files the applier keeps open for writing.
const FD_CACHE: usize = 64;
/// Most written files a flush `fsync`s one by one; beyond, one `syncfs` (see [`Applier::sync`]).
const SYNC_FILES: usize = 8;
/// `fchmodat2(2)` (Linux 6.6), the same number on every architecture.
const SYS_FCHMODAT2: libc::c_long = 452;

/// Applies operations in order under one root directory.
pub struct Applier {
    root: Root,
    /// The root as given (for messages).
    dir: PathBuf,
    fds: HashMap<Vec<u8>, (OwnedFd, u64)>,
    tick: u64,
    /// Paths written since the last flush, each with its fd in `fds` (see [`Applier::sync`]).
    written: HashSet<Vec<u8>>,
    /// Something besides those writes changed since the last flush: the next one is a `syncfs`.
    wide: bool,
    /// `(created_now, path)` of the files `ensure` found failing the quick check.
    needs: Vec<(bool, Vec<u8>)>,
}

impl Applier {
    /// Opens the root directory.
    ///
    /// # Errors
    /// When the root cannot be opened as a directory.
    pub fn new(root: &Path) -> io::Result<Applier> {
        Ok(Applier {
            root: Root::open(root)?,
            dir: root.to_path_buf(),
            fds: HashMap::new(),
            tick: 0,
            written: HashSet::new(),
            wide: false,
            needs: Vec::new(),
        })
    }

    /// The root directory, as given to [`Applier::new`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes everything applied so far durable.
    ///
    /// When only file contents changed since the last flush (writes to at
    /// most [`SYNC_FILES`] files, each still open here), `fsync` of those
    /// files: the cost of a durability point then does not depend on what
    /// else is dirty on the file system (another application's writes, the
    /// other node's copy in a lab). After anything else (a namespace or
    /// metadata change, a resync step, a written file's fd closed), `syncfs`
    /// of the root's file system, which covers the directories too.
    ///
    /// # Errors
    /// The `fsync(2)`/`syncfs(2)` error; what was flushed is then unknown
    /// and the next call flushes the whole file system.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.wide || self.written.len() > SYNC_FILES {
            self.wide = true;
            // SAFETY: a valid fd; the result is checked.
            check(unsafe { libc::syncfs(self.root.fd()) })?;
        } else {
            for path in &self.written {
                let Some((fd, _)) = self.fds.get(path) else {
                    self.wide = true; // cannot happen: eviction and `forget` widen
                    return self.sync();
                };
                if let Err(e) = check(unsafe { libc::fsync(fd.as_raw_fd()) }) {
                    self.wide = true;
                    return Err(e);
                }
            }
        }
        self.written.clear();
        self.wide = false;
        Ok(())
    }

    /// Applies one operation.
    ///
    /// # Errors
    /// The failing system call's error (the operation may be half done, as locally).
    pub fn apply(&mut self, op: &Op) -> io::Result<()> {
        if !matches!(op, Op::Write { .. } | Op::Barrier) && !op.is_request() {
            self.wide = true; // see `sync`
        }
        self.perform(op)
    }

    fn perform(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Write {
                path,
                offset,
                mtime_ns,
                data,
            } => self.write(path, *offset, *mtime_ns, data),
            Op::Create {
                path,
                mode,
                uid,
                gid,
            } => self.create(path, *mode, *uid, *gid),
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                let p = self.root.parent(path)?;
                // SAFETY: valid fd and C string; the result is checked.
                check(unsafe { libc::mknodat(p.fd(), p.name.as_ptr(), *mode, *rdev) })?;
                chown_at(&p, *uid, *gid)?;
                chmod_at(&p, *mode)
            }
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => mkdir(&self.root.parent(path)?, *mode, *uid, *gid),
            Op::Symlink {
                target,
                path,
                uid,
                gid,
            } => {
                let p = self.root.parent(path)?;
                let target = cstring(target)?;
                // SAFETY: valid fd and C strings; the result is checked.
                check(unsafe { libc::symlinkat(target.as_ptr(), p.fd(), p.name.as_ptr()) })?;
                chown_at(&p, *uid, *gid)
            }
            Op::Link { existing, new } => {
                let (a, b) = (self.root.parent(existing)?, self.root.parent(new)?);
                // SAFETY: valid fds and C strings; the result is checked.
                check(unsafe { libc::linkat(a.fd(), a.name.as_ptr(), b.fd(), b.name.as_ptr(), 0) })
            }
            Op::Unlink { path } => self.remove(path, 0),
            Op::Rmdir { path } => self.remove(path, libc::AT_REMOVEDIR),
            Op::Rename { old, new, flags } => {
                self.forget(old);
                self.forget(new);
                let (a, b) = (self.root.parent(old)?, self.root.parent(new)?);
                // SAFETY: valid fds and C strings; the result is checked.
                check(unsafe {
                    libc::renameat2(a.fd(), a.name.as_ptr(), b.fd(), b.name.as_ptr(), *flags)
                })
            }
            Op::Truncate { path, size } => {
                let size = libc::off_t::try_from(*size).map_err(|_| einval())?;
                // SAFETY: valid fd; the result is checked.
                check(unsafe { libc::ftruncate(self.writable(path)?, size) })
            }
            Op::Chmod { path, mode } => chmod_at(&self.root.parent(path)?, *mode),
            Op::Chown { path, uid, gid } => chown_at(&self.root.parent(path)?, *uid, *gid),
            Op::Utimens {
                path,
                atime_ns,
                mtime_ns,
            } => {
                let p = self.root.parent(path)?;
                let times = [
                    atime_ns.map_or_else(omit, timespec),
                    mtime_ns.map_or_else(omit, timespec),
                ];
                let flags = libc::AT_SYMLINK_NOFOLLOW;
                // SAFETY: valid fd, C string and a two-element array; the result is checked.
                check(unsafe { libc::utimensat(p.fd(), p.name.as_ptr(), times.as_ptr(), flags) })
            }
            Op::Setxattr {
                path,
                name,
                value,
                flags,
            } => self.setxattr(path, name, value, *flags),
            Op::Removexattr { path, name } => {
                let (proc_path, _fd) = self.by_proc(path)?;
                let name = cstring(name)?;
                // SAFETY: valid C strings; the result is checked.
                check(unsafe { libc::removexattr(proc_path.as_ptr(), name.as_ptr()) })
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => fallocate(self.writable(path)?, *mode, *offset, *length),
            Op::Prune { .. } | Op::Ensure(_) | Op::EnsureLink { .. } => self.apply_resync(op),
            // Requests change nothing: the cache's applier answers them (`answer`).
            Op::Barrier
            | Op::Mark { .. }
            | Op::RequestSums { .. }
            | Op::RequestNeeds
            | Op::RequestList { .. } => Ok(()),
            Op::Reset => self.reset(),
        }
    }

    /// Removes every entry under the root (the root itself stays): a full copy follows.
    fn reset(&mut self) -> io::Result<()> {
        self.fds.clear();
        self.written.clear();
        self.wide = true;
        self.needs.clear();
        // Through /proc/self/fd the walk starts at our root fd; `remove_dir_all` never follows
        // symlinks, so nothing outside the root can be reached.
        let root = PathBuf::from(format!("/proc/self/fd/{}", self.root.fd()));
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// `pwrite`, then the primary's mtime (atime untouched) when the frame carries one.
    fn write(
        &mut self,
        path: &[u8],
        offset: u64,
        mtime_ns: Option<i64>,
        data: &[u8],
    ) -> io::Result<()> {
        let fd = self.writable(path)?;
        if !self.written.contains(path) {
            self.written.insert(path.to_vec());
        }
        write_all_at(fd, data, offset)?;
        let Some(ns) = mtime_ns else {
            return Ok(());
        };
        let times = [omit(), timespec(ns)];
        // SAFETY: valid fd and a two-element array; the result is checked.
        check(unsafe { libc::futimens(fd, times.as_ptr()) })
    }

    fn create(&mut self, path: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        self.forget(path);
        let p = self.root.parent(path)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let fd = openat(p.fd(), &p.name, flags | libc::O_CLOEXEC, 0o600)?;
        set_owner_and_mode(fd.as_raw_fd(), mode, uid, gid)?;
        self.remember(path, fd);
        Ok(())
    }

    fn setxattr(&self, path: &[u8], name: &[u8], value: &[u8], flags: u32) -> io::Result<()> {
        let (proc_path, _fd) = self.by_proc(path)?;
        let name = cstring(name)?;
        let flags = libc::c_int::try_from(flags).map_err(|_| einval())?;
        let (buf, len) = (value.as_ptr().cast(), value.len());
        // SAFETY: valid C strings and buffer; the result is checked.
        check(unsafe { libc::setxattr(proc_path.as_ptr(), name.as_ptr(), buf, len, flags) })
    }

    /// An fd open for writing on `path`, from the LRU or freshly opened.
    fn writable(&mut self, path: &[u8]) -> io::Result<RawFd> {
        self.tick += 1;
        if let Some((fd, used)) = self.fds.get_mut(path) {
            *used = self.tick;
            return Ok(fd.as_raw_fd());
        }
        let fd = self.root.open_at(
            path,
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )?;
        Ok(self.remember(path, fd))
    }

    fn remember(&mut self, path: &[u8], fd: OwnedFd) -> RawFd {
        if self.fds.len() >= FD_CACHE {
            if let Some(oldest) = self
                .fds
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.fds.remove(&oldest);
                self.wide |= self.written.remove(&oldest);
            }
        }
        self.tick += 1;
        let raw = fd.as_raw_fd();
        self.fds.insert(path.to_vec(), (fd, self.tick));
        raw
    }

    /// Drops cached fds for `path` and everything below it.
    fn forget(&mut self, path: &[u8]) {
        let below =
            |k: &Vec<u8>| k.starts_with(path) && (k.len() == path.len() || k[path.len()] == b'/');
        self.fds.retain(|k, _| !below(k));
        let before = self.written.len();
        self.written.retain(|k| !below(k));
        self.wide |= self.written.len() != before;
    }

    fn remove(&mut self, path: &[u8], flags: libc::c_int) -> io::Result<()> {
        self.forget(path);
        let p = self.root.parent(path)?;
        // SAFETY: valid fd and C string; the result is checked.
        check(unsafe { libc::unlinkat(p.fd(), p.name.as_ptr(), flags) })
    }

    /// A `/proc/self/fd/N` path for an `O_PATH` fd on `path` (the symlink
    /// itself when it is one): the xattr calls have no `*at()` variant before
    /// Linux 6.13. The fd must outlive the use of the path.
    fn by_proc(&self, path: &[u8]) -> io::Result<(CString, OwnedFd)> {
        let fd = self
            .root
            .open_at(path, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let proc_path = cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        Ok((proc_path, fd))
    }
}

fn mkdir(p: &Parent, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and C string; the result is checked.
    match check(unsafe { libc::mkdirat(p.fd(), p.name.as_ptr(), 0o700) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = openat(p.fd(), &p.name, flags, 0)?;
    set_owner_and_mode(fd.as_raw_fd(), mode, uid, gid)
}

pub(crate) fn fallocate(fd: RawFd, mode: u32, offset: u64, length: u64) -> io::Result<()> {
    let mode = libc::c_int::try_from(mode).map_err(|_| einval())?;
    let offset = libc::off_t::try_from(offset).map_err(|_| einval())?;
    let length = libc::off_t::try_from(length).map_err(|_| einval())?;
    // SAFETY: valid fd; the result is checked.
    check(unsafe { libc::fallocate(fd, mode, offset, length) })
}

fn set_owner_and_mode(fd: RawFd, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &raw mut st) })?;
    // Only chown when it changes something, so an unprivileged receiver works
    // for its own files; chown before chmod, which chown's setuid-clearing would undo.
    let uid = if uid == u32::MAX || uid == st.st_uid {
        u32::MAX
    } else {
        uid
    };
    let gid = if gid == u32::MAX || gid == st.st_gid {
        u32::MAX
    } else {
        gid
    };
    if uid != u32::MAX || gid != u32::MAX {
        // SAFETY: valid fd; the result is checked.
        check(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    // SAFETY: valid fd; the result is checked.
    check(unsafe { libc::fchmod(fd, mode & 0o7777) })
}

fn chown_at(p: &Parent, uid: u32, gid: u32) -> io::Result<()> {
    if uid == u32::MAX && gid == u32::MAX {
        return Ok(());
    }
    // SAFETY: valid fd and C string; the result is checked.
    let r = unsafe { libc::fchownat(p.fd(), p.name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    match check(r) {
        // An unprivileged receiver cannot give files away; if they are already ours, fine.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && owned_by(p, uid, gid) => Ok(()),
        other => other,
    }
}

fn owned_by(p: &Parent, uid: u32, gid: u32) -> bool {
    // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            p.fd(),
            p.name.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    r == 0 && (uid == u32::MAX || uid == st.st_uid) && (gid == u32::MAX || gid == st.st_gid)
}

/// chmod of the last component without following it.
fn chmod_at(p: &Parent, mode: u32) -> io::Result<()> {
    let mode = mode & 0o7777;
    // SAFETY: valid fd and C string; the result is checked.
    let r = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            p.fd(),
            p.name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Older kernels: refuse symlinks explicitly, then chmod (which would follow one).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe {
        libc::fstatat(
            p.fd(),
            p.name.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    // SAFETY: as above.
    check(unsafe { libc::fchmodat(p.fd(), p.name.as_ptr(), mode, 0) })
}

/// `pwrite(2)` of all of `data` at `offset` (the primary's local write too).
///
/// # Errors
/// The system call's error; a write that makes no progress is reported as `EIO`.
pub fn write_all_at(fd: RawFd, data: &[u8], offset: u64) -> io::Result<()> {
    match write_at_most(fd, data, offset) {
        (_, Some(err)) => Err(err),
        (_, None) => Ok(()),
    }
}

/// `pwrite`s all of `data` at `offset` unless an error stops it: returns how
/// many bytes were written, and the error that stopped it (`None`: all of them).
/// A disk that fills up midway leaves the first bytes written.
pub fn write_at_most(fd: RawFd, data: &[u8], offset: u64) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < data.len() {
        let Ok(off) = libc::off_t::try_from(offset + done as u64) else {
            return (done, Some(einval()));
        };
        let rest = &data[done..];
        // SAFETY: valid fd and buffer; the result is checked.
        let n = unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), off) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (done, Some(err));
        }
        if n == 0 {
            return (done, Some(io::Error::from_raw_os_error(libc::EIO)));
        }
        done += n.unsigned_abs();
    }
    (done, None)
}

fn timespec(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

/// A `timespec` that leaves the time as it is.
fn omit() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn setup(name: &str) -> (std::path::PathBuf, Applier) {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let applier = Applier::new(&dir.join("root")).unwrap();
        (dir, applier)
    }

    fn p(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn a_flush_after_writes_only_fsyncs_the_written_files() {
        let (dir, mut a) = setup("flush");
        let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
        let create = |path: &str| Op::Create {
            path: p(path),
            mode: 0o644,
            uid,
            gid,
        };
        let write = |path: &str| Op::Write {
            path: p(path),
            offset: 0,
            mtime_ns: None,
            data: b"data".to_vec(),
        };
        a.apply(&create("f")).unwrap();
        a.sync().unwrap();
        assert!(!a.wide && a.written.is_empty(), "a flush starts afresh");
        a.apply(&write("f")).unwrap();
        a.apply(&Op::Barrier).unwrap();
        assert!(!a.wide, "only file contents changed: fsync of the file");
        assert_eq!(a.written.len(), 1);
        a.sync().unwrap();
        assert!(a.written.is_empty());
        // A namespace change (and anything else) makes the next flush a syncfs.
        a.apply(&create("g")).unwrap();
        a.apply(&write("g")).unwrap();
        assert!(a.wide);
        a.sync().unwrap();
        assert!(!a.wide && a.written.is_empty());
        // So does closing the fd of a file written since the last flush.
        a.apply(&write("g")).unwrap();
        a.apply(&Op::Unlink { path: p("g") }).unwrap();
        assert!(a.wide && a.written.is_empty());
        a.sync().unwrap();
        for i in 0..=FD_CACHE {
            let name = format!("n{i}");
            a.apply(&create(&name)).unwrap();
        }
        a.sync().unwrap();
        for i in 0..=FD_CACHE {
            a.apply(&write(&format!("n{i}"))).unwrap();
        }
        assert!(a.wide, "a written file's fd was evicted");
        a.sync().unwrap();
        assert_eq!(std::fs::read(dir.join("root/n0")).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn namespace_and_data_operations_take_effect() {
        let (dir, mut a) = setup("ops");
        let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
        let ops = [
            Op::Mkdir {
                path: p("d"),
                mode: 0o750,
                uid,
                gid,
            },
            Op::Create {
                path: p("d/f"),
                mode: 0o640,
                uid,
                gid,
            },
            Op::Write {
                path: p("d/f"),
                offset: 3,
                mtime_ns: Some(1_500_000_000_000_000_007),
                data: p("abc"),
            },
            Op::Symlink {
                target: p("f"),
                path: p("d/s"),
                uid,
                gid,
            },
            Op::Link {
                existing: p("d/f"),
                new: p("g"),
            },
            Op::Rename {
                old: p("g"),
                new: p("h"),
                flags: 0,
            },
            Op::Truncate {
                path: p("h"),
                size: 5,
            },
            Op::Utimens {
                path: p("h"),
                atime_ns: Some(1),
                mtime_ns: Some(1_600_000_000_123_456_789),
            },
            Op::Chmod {
                path: p("h"),
                mode: 0o600,
            },
        ];
        for op in &ops {
            a.apply(op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        let root = dir.join("root");
        assert_eq!(std::fs::read(root.join("d/f")).unwrap(), b"\0\0\0ab");
        let meta = std::fs::metadata(root.join("h")).unwrap();
        assert_eq!(meta.nlink(), 2);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.mtime_nsec(), 123_456_789);
        assert_eq!(
            std::fs::read_link(root.join("d/s")).unwrap().as_os_str(),
            "f"
        );
        assert_eq!(
            std::fs::metadata(root.join("d"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        a.apply(&Op::Unlink { path: p("h") }).unwrap();
        a.apply(&Op::Unlink { path: p("d/f") }).unwrap();
        a.apply(&Op::Unlink { path: p("d/s") }).unwrap();
        a.apply(&Op::Rmdir { path: p("d") }).unwrap();
        a.sync().unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_after_a_rename_go_to_the_new_file() {
        let (dir, mut a) = setup("lru");
        let (uid, gid) = (u32::MAX, u32::MAX);
        a.apply(&Op::Create {
            path: p("a"),
            mode: 0o644,
            uid,
            gid,
        })
        .unwrap();
        a.apply(&Op::Create {
            path: p("b"),
            mode: 0o644,
            uid,
            gid,
        })
        .unwrap();
        a.apply(&Op::Write {
            path: p("a"),
            offset: 0,
            mtime_ns: None,
            data: p("A"),
        })
        .unwrap();
        a.apply(&Op::Rename {
            old: p("b"),
            new: p("a"),
            flags: 0,
        })
        .unwrap();
        a.apply(&Op::Write {
            path: p("a"),
            offset: 0,
            mtime_ns: None,
            data: p("B"),
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("root/a")).unwrap(), b"B");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_are_the_primary_s_and_an_omitted_one_is_kept() {
        let (dir, mut a) = setup("times");
        let (uid, gid) = (u32::MAX, u32::MAX);
        let root = dir.join("root");
        a.apply(&Op::Mkdir {
            path: p("d"),
            mode: 0o755,
            uid,
            gid,
        })
        .unwrap();
        a.apply(&Op::Create {
            path: p("d/f"),
            mode: 0o644,
            uid,
            gid,
        })
        .unwrap();
        a.apply(&Op::Write {
            path: p("d/f"),
            offset: 0,
            mtime_ns: Some(1_000_000_000_000_000_001),
            data: p("x"),
        })
        .unwrap();
        let meta = std::fs::metadata(root.join("d/f")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 1));
        let atime = std::fs::metadata(root.join("d")).unwrap().atime_nsec();
        a.apply(&Op::Utimens {
            path: p("d"),
            atime_ns: None,
            mtime_ns: Some(-1),
        })
        .unwrap();
        let meta = std::fs::metadata(root.join("d")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (-1, 999_999_999));
        assert_eq!(meta.atime_nsec(), atime);
        // A write without a time (a full copy's data) keeps the secondary's clock.
        a.apply(&Op::Write {
            path: p("d/f"),
            offset: 1,
            mtime_ns: None,
            data: p("y"),
        })
        .unwrap();
        assert!(std::fs::metadata(root.join("d/f")).unwrap().mtime() > 1_000_000_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn final_symlinks_are_never_followed() {
        let (dir, mut a) = setup("nofollow");
        std::fs::write(dir.join("outside"), b"keep").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("root/l")).unwrap();
        assert!(a
            .apply(&Op::Write {
                path: p("l"),
                offset: 0,
                mtime_ns: None,
                data: p("x")
            })
            .is_err());
        assert!(a
            .apply(&Op::Truncate {
                path: p("l"),
                size: 0
            })
            .is_err());
        let _ = a.apply(&Op::Chmod {
            path: p("l"),
            mode: 0o777,
        });
        assert_eq!(std::fs::read(dir.join("outside")).unwrap(), b"keep");
        assert_ne!(
            std::fs::metadata(dir.join("outside"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o777
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
