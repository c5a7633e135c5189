//! Block checksums for resync and verify.
//!
//! A file range is cut into blocks starting at the range's offset (callers
//! keep it a multiple of the block size); each block's checksum is the first
//! [`SUM_LEN`] bytes of its BLAKE3 hash. A hole reads as zeros and the last
//! block of a file may be short. Both sides compute the same sums, the
//! primary with [`local_sums`] on its own tree, the secondary in answer to a
//! `RequestSums` once every earlier operation is applied; blocks whose sums
//! match need not be sent.
//!
//! [`Forwarder::copy_range`] streams the blocks that differ: each chunk is
//! read and queued under the forwarder's `order` lock, so it is the file's
//! content at its place in the stream and never overwrites a later write.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::beneath::Root;
use crate::error::{MirrorError, Result};
use crate::forward::{Forwarder, Unsent};
use crate::wire::{self, WRITE_CHUNK};

/// The default block size.
pub const BLOCK: u32 = 64 << 10;
/// The largest block size accepted (one block is read at once).
pub const MAX_BLOCK: u32 = 16 << 20;
/// Bytes of one block checksum.
pub const SUM_LEN: usize = 16;

impl Forwarder {
    /// Reads `[offset, offset + length)` of the regular file `path` beneath
    /// `root` (clipped at its end) and queues it as writes without a time;
    /// returns the bytes queued. Holes are sent as zeros: the secondary may
    /// hold data there.
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`]; the open or read error (`EINVAL` when
    /// `path` is not a regular file).
    pub fn copy_range(&self, root: &Root, path: &[u8], offset: u64, length: u64) -> Result<u64> {
        wire::validate_path(path)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = root.open_at(path, flags, 0)?;
        if regular_size(fd.as_raw_fd())?.is_none() {
            return Err(MirrorError::Io(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let end = offset.saturating_add(length);
        let mut buf = vec![
            0u8;
            usize::try_from(length)
                .unwrap_or(WRITE_CHUNK)
                .min(WRITE_CHUNK)
        ];
        let (mut at, mut queued) = (offset, 0u64);
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(WRITE_CHUNK)
                .min(WRITE_CHUNK);
            let order = self
                .order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let got = read_at(fd.as_raw_fd(), &mut buf[..want], at)?;
            if got == 0 {
                break;
            }
            let chunk = &buf[..got];
            let len = wire::HEADER_LEN + wire::write_overhead(path) + got + wire::MAC_LEN;
            self.submit(
                len,
                |seq| wire::write_frame(seq, path, at, None, chunk),
                || Unsent::Write {
                    path,
                    offset: at,
                    len: got as u64,
                },
            );
            drop(order);
            at += got as u64;
            queued += got as u64;
            if got < want {
                break;
            }
        }
        Ok(queued)
    }
}

/// `(size, sums)` of `[offset, min(offset + length, size))` of the regular file
/// `path` beneath `root`; size -1 and no sums when it is missing, not a
/// regular file, or reached only through a symlink (none is followed).
///
/// # Errors
/// `EINVAL` for a block size of 0 or above [`MAX_BLOCK`]; read errors.
pub fn local_sums(
    root: &Root,
    path: &[u8],
    offset: u64,
    length: u64,
    block: u32,
) -> io::Result<(i64, Vec<u8>)> {
    if block == 0 || block > MAX_BLOCK {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let fd = match root.open_at(path, flags, 0) {
        Ok(fd) => fd,
        Err(e) if is_absent(&e) => return Ok((-1, Vec::new())),
        Err(e) => return Err(e),
    };
    let Some(size) = regular_size(fd.as_raw_fd())? else {
        return Ok((-1, Vec::new()));
    };
    let sums = sums_of(
        fd.as_raw_fd(),
        offset,
        offset.saturating_add(length).min(size),
        block,
    )?;
    Ok((i64::try_from(size).unwrap_or(i64::MAX), sums))
}

/// The checksums of the blocks of `[start, end)` of the file open on `fd`.
///
/// # Errors
/// The `pread(2)` error.
pub fn sums_of(fd: RawFd, start: u64, end: u64, block: u32) -> io::Result<Vec<u8>> {
    let mut sums = Vec::new();
    let mut buf = vec![0u8; block as usize];
    let mut at = start;
    while at < end {
        let want = usize::try_from((end - at).min(u64::from(block))).unwrap_or(buf.len());
        let got = read_at(fd, &mut buf[..want], at)?;
        sums.extend_from_slice(&block_sum(&buf[..got]));
        if got < want {
            break; // shrunk under us: the short block differs anyway
        }
        at += want as u64;
    }
    Ok(sums)
}

/// The checksum of one block.
pub fn block_sum(data: &[u8]) -> [u8; SUM_LEN] {
    let mut out = [0u8; SUM_LEN];
    out.copy_from_slice(&blake3::hash(data).as_bytes()[..SUM_LEN]);
    out
}

/// `pread(2)` until `buf` is full or end of file; returns the bytes read.
///
/// # Errors
/// The system call's error.
pub fn read_at(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let off = libc::off_t::try_from(offset + got as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let rest = &mut buf[got..];
        // SAFETY: valid fd and buffer; the result is checked.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), off) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        got += n.unsigned_abs();
    }
    Ok(got)
}

/// The size of the file open on `fd` if it is a regular file.
///
/// # Errors
/// The `fstat(2)` error.
pub fn regular_size(fd: RawFd) -> io::Result<Option<u64>> {
    // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    crate::beneath::check(unsafe { libc::fstat(fd, &raw mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(None);
    }
    Ok(Some(u64::try_from(st.st_size).unwrap_or(0)))
}

/// Errors that mean "there is no such file beneath the root".
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn setup(name: &str) -> (PathBuf, Root) {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-extent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let root = Root::open(&dir.join("root")).unwrap();
        (dir, root)
    }

    #[test]
    fn a_hole_sums_as_zeros_and_the_last_block_is_short() {
        let (dir, root) = setup("hole");
        let f = std::fs::File::create(dir.join("root/f")).unwrap();
        f.set_len(10_000).unwrap(); // all hole
        crate::apply::write_all_at(f.as_raw_fd(), b"xyz", 9_000).unwrap();
        let (size, sums) = local_sums(&root, b"f", 0, 1 << 20, 4096).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(sums.len(), 3 * SUM_LEN);
        assert_eq!(sums[..SUM_LEN], block_sum(&[0; 4096]));
        assert_eq!(sums[SUM_LEN..2 * SUM_LEN], block_sum(&[0; 4096]));
        let mut last = vec![0u8; 10_000 - 8192];
        last[9_000 - 8192..9_000 - 8192 + 3].copy_from_slice(b"xyz");
        assert_eq!(sums[2 * SUM_LEN..], block_sum(&last));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blocks_start_at_the_offset_and_stop_at_the_length_or_the_end() {
        let (dir, root) = setup("align");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("root/f"), &data).unwrap();
        let (_, sums) = local_sums(&root, b"f", 8192, 8192, 4096).unwrap();
        assert_eq!(sums[..SUM_LEN], block_sum(&data[8192..12_288]));
        assert_eq!(sums[SUM_LEN..], block_sum(&data[12_288..16_384]));
        let (_, sums) = local_sums(&root, b"f", 16_384, 1 << 30, 4096).unwrap();
        assert_eq!(sums, block_sum(&data[16_384..]));
        let (size, sums) = local_sums(&root, b"f", 20_000, 4096, 4096).unwrap();
        assert_eq!((size, sums.len()), (20_000, 0));
        assert!(local_sums(&root, b"f", 0, 1, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_dirs_and_symlinks_have_no_size() {
        let (dir, root) = setup("absent");
        std::fs::create_dir(dir.join("root/d")).unwrap();
        std::fs::write(dir.join("outside"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("root/l")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("root/up")).unwrap();
        for path in [&b"missing"[..], b"d", b"l", b"up/outside", b"d/x/y"] {
            assert_eq!(
                local_sums(&root, path, 0, 100, 4096).unwrap(),
                (-1, Vec::new()),
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
