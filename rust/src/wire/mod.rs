//! The wire format: the one place that encodes and decodes every message.
//!
//! A **frame** (primary → secondary) is
//!
//! ```text
//! header   len u32 | seq u64 | op u8        13 bytes, little endian; len = payload length
//! payload  the operation's fields            integers LE, byte strings as u32 length + bytes,
//!                                            times as i64 ns (i64::MIN = none);
//!                                            a write's data is the rest of the payload
//! mac      16 bytes                          keyed BLAKE3 (session frame key) over header + payload
//! ```
//!
//! The MAC is both the checksum and the authentication of a frame: a frame
//! that fails it is never applied. Sequence numbers are consecutive within a
//! session, so a replayed or dropped frame is caught as well.
//!
//! An **ack** (secondary → primary) is `kind u8 | seq u64 | mac 16` with the
//! session ack key: [`AckKind::Received`] says the operations up to `seq` are
//! applied in the secondary's memory (its page cache; sent for barriers in
//! mode `second`), [`AckKind::Flushed`] that they are on its disk.

use crate::error::{MirrorError, Result};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 13;
/// Bytes in a MAC (frames and acks).
pub const MAC_LEN: usize = 16;
/// Bytes in an ack, MAC included.
pub const ACK_LEN: usize = 9 + MAC_LEN;
/// Writes larger than this are split into several frames.
pub const WRITE_CHUNK: usize = 1 << 20;
/// The largest payload a receiver accepts: a write chunk plus a long path, or a
/// prune's list of the names a directory keeps.
pub const MAX_PAYLOAD: usize = 16 << 20;

mod op;
mod reply;
mod resync;

pub use op::{validate_path, write_frame, write_overhead, Op, OMIT_TIME};
pub use reply::{read_message, ListEntry, Message, Reply, MAX_REPLY, REPLY_KIND};
pub use resync::{join, managed_xattr, validate_dir, validate_name, Ensure, EntryKind};

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes.
    pub len: u32,
    /// Sequence number of the operation.
    pub seq: u64,
    /// Op code (see [`Op::code`]).
    pub code: u8,
}

impl Header {
    /// Parses the fixed-size header; the caller checks `len` against [`MAX_PAYLOAD`].
    pub fn parse(raw: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            seq: le_u64(&raw[4..12]),
            code: raw[12],
        }
    }
}

/// Appends the MAC of `frame` (header + payload) under `key`.
pub fn seal(frame: &mut Vec<u8>, key: &[u8; 32]) {
    let tag = mac(key, &[frame]);
    frame.extend_from_slice(&tag);
}

/// Checks the MAC of a received frame in constant time.
///
/// # Errors
/// [`MirrorError::Protocol`] when it does not match.
pub fn verify(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> Result<()> {
    let expected = mac(key, parts);
    let diff = expected
        .iter()
        .zip(tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 || tag.len() != MAC_LEN {
        return Err(MirrorError::Protocol("MAC mismatch".into()));
    }
    Ok(())
}

/// Keyed BLAKE3 over `parts`, truncated to [`MAC_LEN`].
pub fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    for part in parts {
        h.update(part);
    }
    let mut out = [0u8; MAC_LEN];
    h.finalize_xof().fill(&mut out);
    out
}

/// What an ack from the secondary says about `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Sent once after the handshake: the session is open.
    Hello = 0,
    /// Operations up to `seq` are applied in the secondary's memory (page cache).
    Received = 1,
    /// Operations up to `seq` are applied and on the secondary's disk.
    Flushed = 2,
}

/// One acknowledgement from the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// What is acknowledged.
    pub kind: AckKind,
    /// Up to which sequence number.
    pub seq: u64,
}

impl Ack {
    /// Encodes and MACs the ack.
    pub fn encode(self, key: &[u8; 32]) -> [u8; ACK_LEN] {
        let mut out = [0u8; ACK_LEN];
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.seq.to_le_bytes());
        let tag = mac(key, &[&out[..9]]);
        out[9..].copy_from_slice(&tag);
        out
    }

    /// Verifies and decodes an ack.
    ///
    /// # Errors
    /// [`MirrorError::Protocol`] for a bad MAC or an unknown kind.
    pub fn decode(raw: &[u8; ACK_LEN], key: &[u8; 32]) -> Result<Ack> {
        verify(key, &[&raw[..9]], &raw[9..])?;
        let kind = match raw[0] {
            0 => AckKind::Hello,
            1 => AckKind::Received,
            2 => AckKind::Flushed,
            k => return Err(MirrorError::Protocol(format!("unknown ack kind {k}"))),
        };
        Ok(Ack {
            kind,
            seq: le_u64(&raw[1..9]),
        })
    }
}

/// Reads a little-endian u64 from exactly 8 bytes (the seq field of a frame or ack).
pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

fn header(seq: u64, code: u8, payload_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload_hint + MAC_LEN);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(code);
    out
}

fn finish_header(out: &mut [u8]) {
    let len = u32::try_from(out.len() - HEADER_LEN).expect("frame payload below 4 GiB");
    out[0..4].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[allow(clippy::too_many_lines)] // one literal per kind of operation
    fn every_op() -> Vec<Op> {
        let p = |s: &str| s.as_bytes().to_vec();
        vec![
            Op::Write {
                path: p("a/b"),
                offset: 1 << 40,
                mtime_ns: Some(1_700_000_000_123_456_789),
                data: vec![1, 2, 3],
            },
            Op::Write {
                path: p("empty"),
                offset: 0,
                mtime_ns: None,
                data: Vec::new(),
            },
            Op::Create {
                path: p("f"),
                mode: 0o100_644,
                uid: 1,
                gid: u32::MAX,
            },
            Op::Mknod {
                path: p("fifo"),
                mode: 0o010_600,
                rdev: 0x0801,
                uid: 0,
                gid: 0,
            },
            Op::Mkdir {
                path: p("d"),
                mode: 0o40_755,
                uid: 2,
                gid: 3,
            },
            Op::Symlink {
                target: p("/etc/passwd"),
                path: p("s"),
                uid: 0,
                gid: 0,
            },
            Op::Link {
                existing: p("f"),
                new: p("d/g"),
            },
            Op::Unlink { path: p("f") },
            Op::Rmdir { path: p("d") },
            Op::Rename {
                old: p("x"),
                new: p("y"),
                flags: 2,
            },
            Op::Truncate {
                path: p("f"),
                size: 12345,
            },
            Op::Chmod {
                path: p("f"),
                mode: 0o4755,
            },
            Op::Chown {
                path: p("f"),
                uid: u32::MAX,
                gid: 5,
            },
            Op::Utimens {
                path: p("f"),
                atime_ns: Some(-1_500_000_001),
                mtime_ns: Some(1_700_000_000_123_456_789),
            },
            Op::Utimens {
                path: p("d"),
                atime_ns: None,
                mtime_ns: Some(-1),
            },
            Op::Setxattr {
                path: p("f"),
                name: p("user.k"),
                value: vec![0, 255],
                flags: 1,
            },
            Op::Removexattr {
                path: p("f"),
                name: p("user.k"),
            },
            Op::Fallocate {
                path: p("f"),
                mode: 3,
                offset: 4096,
                length: 8192,
            },
            Op::Barrier,
            Op::Reset,
            Op::Mark { tag: u64::MAX },
            Op::Prune {
                dir: Vec::new(),
                keep: vec![p("a"), p(".hidden")],
            },
            Op::Prune {
                dir: p("d/e"),
                keep: Vec::new(),
            },
            Op::Ensure(Box::new(Ensure {
                path: p("d/s"),
                kind: EntryKind::Symlink,
                mode: 0o120_777,
                uid: 1,
                gid: u32::MAX,
                rdev: 0,
                target: p("/abs/target"),
                size: 0,
                mtime_ns: -7,
                xattrs: None,
            })),
            Op::Ensure(Box::new(Ensure {
                path: Vec::new(),
                kind: EntryKind::Dir,
                mode: 0o40_755,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: Vec::new(),
                size: 0,
                mtime_ns: 0,
                xattrs: Some(vec![
                    (p("user.a"), vec![0, 1]),
                    (p("trusted.b"), Vec::new()),
                ]),
            })),
            Op::Ensure(Box::new(Ensure {
                path: p("f"),
                kind: EntryKind::File,
                mode: 0o100_600,
                uid: 3,
                gid: 4,
                rdev: 0,
                target: Vec::new(),
                size: 1 << 33,
                mtime_ns: 1_700_000_000_000_000_001,
                xattrs: Some(Vec::new()),
            })),
            Op::EnsureLink {
                existing: p("f"),
                new: p("d/g"),
            },
            Op::RequestSums {
                path: p("f"),
                offset: 1 << 23,
                length: 8 << 20,
                block: 65_536,
            },
            Op::RequestNeeds,
            Op::RequestList { dir: Vec::new() },
            Op::RequestList { dir: p("d") },
        ]
    }

    /// Splits a sealed frame the way the receiver reads it and decodes it.
    fn receive(frame: &[u8]) -> Result<(u64, Op)> {
        let raw: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let h = Header::parse(&raw);
        let end = HEADER_LEN + h.len as usize;
        if end + MAC_LEN != frame.len() {
            // On a stream a wrong length shifts the MAC onto other bytes; here, refuse.
            return Err(MirrorError::Protocol("length mismatch".into()));
        }
        verify(
            &KEY,
            &[&frame[..HEADER_LEN], &frame[HEADER_LEN..end]],
            &frame[end..],
        )?;
        Ok((h.seq, Op::decode(h.code, &frame[HEADER_LEN..end])?))
    }

    #[test]
    fn every_op_kind_round_trips() {
        for (i, op) in every_op().into_iter().enumerate() {
            let seq = 1000 + i as u64;
            let mut frame = op.frame(seq);
            seal(&mut frame, &KEY);
            assert_eq!(receive(&frame).unwrap(), (seq, op));
        }
    }

    #[test]
    fn any_corrupted_byte_is_rejected() {
        let op = Op::Setxattr {
            path: b"f".to_vec(),
            name: b"user.k".to_vec(),
            value: vec![9; 5],
            flags: 0,
        };
        let mut frame = op.frame(42);
        seal(&mut frame, &KEY);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x10;
            assert!(receive(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_frame_sealed_with_another_key_is_rejected() {
        let mut frame = Op::Unlink {
            path: b"f".to_vec(),
        }
        .frame(1);
        seal(&mut frame, &[8; 32]);
        assert!(receive(&frame).is_err());
    }

    #[test]
    fn escaping_paths_are_refused_even_with_a_valid_mac() {
        for path in ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", "", "a/"] {
            let mut frame = Op::Unlink {
                path: path.as_bytes().to_vec(),
            }
            .frame(1);
            seal(&mut frame, &KEY);
            assert!(
                matches!(receive(&frame), Err(MirrorError::InvalidPath(_))),
                "{path:?}"
            );
        }
        assert!(validate_path(b"a/b..c/.d").is_ok());
        let bad = [
            Op::Prune {
                dir: b"../x".to_vec(),
                keep: Vec::new(),
            },
            Op::Prune {
                dir: Vec::new(),
                keep: vec![b"a/b".to_vec()],
            },
            Op::Prune {
                dir: Vec::new(),
                keep: vec![b"..".to_vec()],
            },
            Op::EnsureLink {
                existing: b"/etc/shadow".to_vec(),
                new: b"x".to_vec(),
            },
            Op::RequestList {
                dir: b"a/../..".to_vec(),
            },
            Op::RequestSums {
                path: Vec::new(),
                offset: 0,
                length: 1,
                block: 1,
            },
        ];
        for op in bad {
            let mut frame = op.frame(1);
            seal(&mut frame, &KEY);
            assert!(receive(&frame).is_err(), "{op:?}");
        }
    }

    #[test]
    fn acks_round_trip_and_reject_corruption() {
        let ack = Ack {
            kind: AckKind::Flushed,
            seq: 77,
        };
        let raw = ack.encode(&KEY);
        assert_eq!(Ack::decode(&raw, &KEY).unwrap(), ack);
        for i in 0..ACK_LEN {
            let mut bad = raw;
            bad[i] ^= 1;
            assert!(Ack::decode(&bad, &KEY).is_err());
        }
    }
}
