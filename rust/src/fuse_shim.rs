//! The `fallocate` handler pyfuse3 lacks: without one, fallocate(2) through a mount
//! fails with EOPNOTSUPP (pyfuse3 3.5, the latest, builds its libfuse operation
//! table without that slot).
//!
//! How: this library defines `fuse_session_new`. [`enable`] (called before pyfuse3
//! is imported) resolves libfuse's own functions and then makes this library's
//! symbols global, so that pyfuse3's call to `fuse_session_new` binds here. We copy
//! pyfuse3's operation table, fill its empty `fallocate` slot and hand the copy to
//! libfuse's `fuse_session_new` (libfuse copies the table in turn). Every other
//! operation is pyfuse3's, untouched.
//!
//! The handler runs on the FUSE loop's thread, inside pyfuse3's request processing
//! (the GIL held): it calls the Python callable set with [`set_fallocate_handler`]
//! with `(fh, mode, offset, length)`, which returns an errno (0: done), and replies.
//! Without a callable it answers EOPNOTSUPP, what the kernel said before. Should
//! anything not resolve (another libfuse), nothing is interposed and fallocate stays
//! unsupported: the mount itself never depends on this module.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use pyo3::prelude::*;

/// Index of `fallocate` in libfuse 3's `struct fuse_lowlevel_ops`, a table of
/// function pointers only ever extended at its end: init, destroy, lookup, forget,
/// getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink, rename, link,
/// open, read, write, flush, release, fsync, opendir, readdir, releasedir,
/// fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr, access, create,
/// getlk, setlk, bmap, ioctl, poll, `write_buf`, `retrieve_reply`, `forget_multi`,
/// flock, then fallocate.
const FALLOCATE_SLOT: usize = 40;
/// Offset of `fh` in libfuse 3's `struct fuse_file_info`: `int flags`, two
/// 32-bit words of bit fields, then the 64-bit `fh`.
const FH_OFFSET: usize = 16;

type SessionNew =
    unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut c_void) -> *mut c_void;
type ReplyErr = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type FallocateOp = unsafe extern "C" fn(*mut c_void, u64, c_int, i64, i64, *mut c_void);

/// libfuse's `fuse_session_new` and `fuse_reply_err`, once [`enable`] found them.
struct Libfuse {
    session_new: SessionNew,
    reply_err: ReplyErr,
}

static LIBFUSE: OnceLock<Option<Libfuse>> = OnceLock::new();
static HANDLER: Mutex<Option<Py<PyAny>>> = Mutex::new(None);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Resolves libfuse (loading it if need be) and makes this library's symbols global.
/// Returns whether the next `fuse_session_new` of a library loaded after this call
/// will come here. Call before importing pyfuse3; later calls change nothing.
pub fn enable() -> bool {
    let Some(_) = LIBFUSE.get_or_init(resolve_libfuse) else {
        return false;
    };
    // SAFETY: dladdr/dlopen with valid pointers; a null result is checked.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let ours = fuse_session_new as SessionNew as *const c_void;
        if libc::dladdr(ours, &raw mut info) == 0 || info.dli_fname.is_null() {
            return false;
        }
        let flags = libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL;
        !libc::dlopen(info.dli_fname, flags).is_null()
    }
}

/// Whether a FUSE session got the handler (a mount made after [`enable`]).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Sets (or with `None` clears) the Python callable the handler calls.
pub fn set_fallocate_handler(handler: Option<Py<PyAny>>) {
    *HANDLER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = handler;
}

fn resolve_libfuse() -> Option<Libfuse> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; null results are checked, and
    // the symbols have the C signatures of libfuse 3's headers.
    unsafe {
        let lib = libc::dlopen(c"libfuse3.so.3".as_ptr(), libc::RTLD_NOW);
        if lib.is_null() {
            return None;
        }
        let session_new = libc::dlsym(lib, c"fuse_session_new".as_ptr());
        let reply_err = libc::dlsym(lib, c"fuse_reply_err".as_ptr());
        if session_new.is_null() || reply_err.is_null() {
            return None;
        }
        Some(Libfuse {
            session_new: std::mem::transmute::<*mut c_void, SessionNew>(session_new),
            reply_err: std::mem::transmute::<*mut c_void, ReplyErr>(reply_err),
        })
    }
}

/// pyfuse3's call, with the `fallocate` slot filled in a copy of its table.
///
/// # Safety
/// Called by pyfuse3 as libfuse's `fuse_session_new`: `op` points to `op_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn fuse_session_new(
    args: *mut c_void,
    op: *const c_void,
    op_size: usize,
    userdata: *mut c_void,
) -> *mut c_void {
    let Some(Some(libfuse)) = LIBFUSE.get() else {
        // Unreachable: this library is global only once `enable` resolved libfuse.
        return std::ptr::null_mut();
    };
    let word = std::mem::size_of::<usize>();
    if op.is_null() || op_size < (FALLOCATE_SLOT + 1) * word {
        return (libfuse.session_new)(args, op, op_size, userdata);
    }
    let mut table = vec![0usize; op_size.div_ceil(word)];
    std::ptr::copy_nonoverlapping(op.cast::<u8>(), table.as_mut_ptr().cast::<u8>(), op_size);
    if table[FALLOCATE_SLOT] == 0 {
        table[FALLOCATE_SLOT] = fallocate as FallocateOp as usize;
        INSTALLED.store(true, Ordering::SeqCst);
    }
    (libfuse.session_new)(args, table.as_ptr().cast(), op_size, userdata)
}

/// libfuse's `fallocate` operation: asks the Python handler, replies its errno.
unsafe extern "C" fn fallocate(
    req: *mut c_void,
    _ino: u64,
    mode: c_int,
    offset: i64,
    length: i64,
    fi: *mut c_void,
) {
    let fh = if fi.is_null() {
        None
    } else {
        Some(
            fi.cast::<u8>()
                .add(FH_OFFSET)
                .cast::<u64>()
                .read_unaligned(),
        )
    };
    let errno = Python::attach(|py| call_handler(py, fh, mode, offset, length));
    if let Some(Some(libfuse)) = LIBFUSE.get() {
        (libfuse.reply_err)(req, errno);
    }
}

fn call_handler(py: Python<'_>, fh: Option<u64>, mode: c_int, offset: i64, length: i64) -> c_int {
    let handler = HANDLER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(|h| h.clone_ref(py));
    let (Some(handler), Some(fh)) = (handler, fh) else {
        return libc::EOPNOTSUPP;
    };
    match handler
        .call1(py, (fh, mode, offset, length))
        .and_then(|r| r.extract::<c_int>(py))
    {
        Ok(errno) => errno,
        Err(e) => {
            // A bug in the handler: reported like any unraisable exception, the call fails.
            e.write_unraisable(py, None);
            libc::EIO
        }
    }
}

/// Prepares the `fallocate` handler for the FUSE sessions pyfuse3 creates from now
/// on; call before importing pyfuse3. Returns whether it will be installed.
#[pyfunction]
#[pyo3(name = "fuse_shim_enable")]
fn py_enable() -> bool {
    enable()
}

/// Whether a FUSE session of this process got the `fallocate` handler.
#[pyfunction]
#[pyo3(name = "fuse_shim_installed")]
fn py_installed() -> bool {
    installed()
}

/// Sets the callable `(fh, mode, offset, length) -> errno` that serves fallocate(2)
/// on the mount (`None`: answer EOPNOTSUPP).
#[pyfunction]
#[pyo3(name = "set_fallocate_handler")]
fn py_set_fallocate_handler(handler: Option<Py<PyAny>>) {
    set_fallocate_handler(handler);
}

/// fallocate(2) of `fd` (which Python's `os` lacks), the GIL released.
///
/// # Errors
/// The call's error, as `OSError`.
#[pyfunction]
#[pyo3(name = "fallocate")]
fn py_fallocate(
    py: Python<'_>,
    fd: i32,
    mode: u32,
    offset: u64,
    length: u64,
) -> crate::error::Result<()> {
    crate::detached(py, || crate::apply::fallocate(fd, mode, offset, length))?;
    Ok(())
}

/// Adds this module's functions to `mirrorcore._native`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_enable, m)?)?;
    m.add_function(wrap_pyfunction!(py_installed, m)?)?;
    m.add_function(wrap_pyfunction!(py_set_fallocate_handler, m)?)?;
    m.add_function(wrap_pyfunction!(py_fallocate, m)?)?;
    Ok(())
}
