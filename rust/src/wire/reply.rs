//! Replies to requests (secondary → primary), on the ack channel beside the acks.
//!
//! ```text
//! kind u8 = 3 | seq u64 | len u32 | payload | mac 16     keyed BLAKE3 (session ack key)
//! payload     tag u8 | fields                            over everything before it
//! ```
//!
//! Acks keep their fixed size ([`super::ACK_LEN`]); a reader tells the two
//! apart by the first byte ([`read_message`]). `seq` is the request's; for a
//! [`Reply::Halted`], that of the operation the secondary could not apply.

use std::io::Read;

use super::op::{Reader, Writer};
use super::resync::EntryKind;
use super::{le_u64, mac, verify, Ack, ACK_LEN, MAC_LEN};
use crate::error::{MirrorError, Result};

/// The first byte of a reply on the ack channel (acks use 0–2).
pub const REPLY_KIND: u8 = 3;
/// The largest reply payload a primary accepts (a huge directory's listing).
pub const MAX_REPLY: usize = 256 << 20;

/// What the secondary answers to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The request could not be answered (an I/O error on the secondary).
    Failed { errno: i32, message: String },
    /// A file's size (-1: missing or not a regular file) and its block checksums.
    Sums { size: i64, sums: Vec<u8> },
    /// `(created_now, path)` of each file that failed the quick check.
    Needs(Vec<(bool, Vec<u8>)>),
    /// A directory's entries, sorted by name (empty for a missing directory).
    List(Vec<ListEntry>),
    /// Not an answer: the secondary could not apply operation `seq` (or flush
    /// it), applies nothing from it on and ends the session right after.
    Halted { errno: i32, message: String },
}

/// One entry of a [`Reply::List`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The entry's name in its directory.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// `st_mode`, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in ns.
    pub mtime_ns: i64,
    /// A symlink's target, else empty.
    pub target: Vec<u8>,
}

/// A message on the ack channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A fixed-size ack.
    Ack(Ack),
    /// The reply to request `seq`.
    Reply { seq: u64, reply: Reply },
}

impl Reply {
    /// Encodes and MACs the reply to request `seq`.
    ///
    /// # Panics
    /// For a reply of 4 GiB or more (far above [`MAX_REPLY`]).
    pub fn encode(&self, seq: u64, key: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(REPLY_KIND);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let mut w = Writer(&mut out);
        match self {
            Reply::Failed { errno, message } | Reply::Halted { errno, message } => {
                w.0.push(if matches!(self, Reply::Failed { .. }) {
                    0
                } else {
                    4
                });
                w.0.extend_from_slice(&errno.to_le_bytes());
                w.bytes(message.as_bytes());
            }
            Reply::Sums { size, sums } => {
                w.0.push(1);
                w.0.extend_from_slice(&size.to_le_bytes());
                w.bytes(sums);
            }
            Reply::Needs(paths) => {
                w.0.push(2);
                w.u32(count(paths.len()));
                for (created, path) in paths {
                    w.0.push(u8::from(*created));
                    w.bytes(path);
                }
            }
            Reply::List(entries) => {
                w.0.push(3);
                w.u32(count(entries.len()));
                for e in entries {
                    w.bytes(&e.name);
                    w.0.push(e.kind as u8);
                    w.u32(e.mode).u32(e.uid).u32(e.gid).u64(e.size);
                    w.0.extend_from_slice(&e.mtime_ns.to_le_bytes());
                    w.bytes(&e.target);
                }
            }
        }
        let len = u32::try_from(out.len() - 13).expect("reply below 4 GiB");
        out[9..13].copy_from_slice(&len.to_le_bytes());
        let tag = mac(key, &[&out]);
        out.extend_from_slice(&tag);
        out
    }

    /// Decodes a verified payload.
    ///
    /// # Errors
    /// [`MirrorError::Protocol`] for an unknown tag, a short or an overlong payload.
    pub fn decode(payload: &[u8]) -> Result<Reply> {
        let mut r = Reader(payload);
        let [tag] = r.take::<1>()?;
        let reply = match tag {
            0 => Reply::Failed {
                errno: i32::from_le_bytes(r.take::<4>()?),
                message: String::from_utf8_lossy(&r.bytes()?).into_owned(),
            },
            4 => Reply::Halted {
                errno: i32::from_le_bytes(r.take::<4>()?),
                message: String::from_utf8_lossy(&r.bytes()?).into_owned(),
            },
            1 => Reply::Sums {
                size: i64::from_le_bytes(r.take::<8>()?),
                sums: r.bytes()?,
            },
            2 => {
                let n = r.u32()?;
                let mut paths = Vec::with_capacity((n as usize).min(r.0.len() / 5));
                for _ in 0..n {
                    let [created] = r.take::<1>()?;
                    paths.push((created != 0, r.bytes()?));
                }
                Reply::Needs(paths)
            }
            3 => {
                let n = r.u32()?;
                let mut entries = Vec::with_capacity((n as usize).min(r.0.len() / 41));
                for _ in 0..n {
                    let name = r.bytes()?;
                    let [code] = r.take::<1>()?;
                    let kind = EntryKind::from_code(code).ok_or_else(|| {
                        MirrorError::Protocol(format!("unknown entry kind {code}"))
                    })?;
                    entries.push(ListEntry {
                        name,
                        kind,
                        mode: r.u32()?,
                        uid: r.u32()?,
                        gid: r.u32()?,
                        size: r.u64()?,
                        mtime_ns: i64::from_le_bytes(r.take::<8>()?),
                        target: r.bytes()?,
                    });
                }
                Reply::List(entries)
            }
            other => return Err(MirrorError::Protocol(format!("unknown reply tag {other}"))),
        };
        if !r.0.is_empty() {
            return Err(MirrorError::Protocol(format!(
                "{} stray bytes after a reply",
                r.0.len()
            )));
        }
        Ok(reply)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("below 4G items")
}

/// Reads one ack or reply and checks its MAC.
///
/// # Errors
/// I/O errors as [`MirrorError::Io`] (`UnexpectedEof` when the peer closed);
/// [`MirrorError::Protocol`] for a bad MAC, kind or length.
pub fn read_message<R: Read>(r: &mut R, key: &[u8; 32]) -> Result<Message> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    if head[0] != REPLY_KIND {
        let mut raw = [0u8; ACK_LEN];
        raw[..9].copy_from_slice(&head);
        r.read_exact(&mut raw[9..])?;
        return Ack::decode(&raw, key).map(Message::Ack);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_REPLY {
        return Err(MirrorError::Protocol(format!(
            "reply of {n} bytes is too large"
        )));
    }
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload)?;
    let mut tag = [0u8; MAC_LEN];
    r.read_exact(&mut tag)?;
    verify(key, &[&head, &len, &payload], &tag)?;
    Ok(Message::Reply {
        seq: le_u64(&head[1..9]),
        reply: Reply::decode(&payload)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::AckKind;

    const KEY: [u8; 32] = [3; 32];

    fn every_reply() -> Vec<Reply> {
        vec![
            Reply::Failed {
                errno: libc::EIO,
                message: "disk on fire".into(),
            },
            Reply::Halted {
                errno: libc::ENOSPC,
                message: "disk full".into(),
            },
            Reply::Sums {
                size: -1,
                sums: Vec::new(),
            },
            Reply::Sums {
                size: 1 << 40,
                sums: vec![7; 32],
            },
            Reply::Needs(vec![(true, b"a/b".to_vec()), (false, b"c".to_vec())]),
            Reply::Needs(Vec::new()),
            Reply::List(vec![ListEntry {
                name: b"s".to_vec(),
                kind: EntryKind::Symlink,
                mode: 0o120_777,
                uid: 1,
                gid: u32::MAX,
                size: 3,
                mtime_ns: -5,
                target: b"../x".to_vec(),
            }]),
        ]
    }

    #[test]
    fn replies_and_acks_share_the_channel_and_round_trip() {
        let mut stream = Vec::new();
        let ack = Ack {
            kind: AckKind::Flushed,
            seq: 9,
        };
        for (i, reply) in every_reply().iter().enumerate() {
            stream.extend_from_slice(&ack.encode(&KEY));
            stream.extend_from_slice(&reply.encode(100 + i as u64, &KEY));
        }
        let mut r = stream.as_slice();
        for (i, reply) in every_reply().into_iter().enumerate() {
            assert_eq!(read_message(&mut r, &KEY).unwrap(), Message::Ack(ack));
            let seq = 100 + i as u64;
            assert_eq!(
                read_message(&mut r, &KEY).unwrap(),
                Message::Reply { seq, reply }
            );
        }
        assert!(r.is_empty());
    }

    #[test]
    fn any_corrupted_byte_of_a_reply_is_rejected() {
        let raw = every_reply()[6].encode(1, &KEY);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            assert!(
                read_message(&mut bad.as_slice(), &KEY).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(read_message(&mut raw.as_slice(), &[4; 32]).is_err());
    }
}
