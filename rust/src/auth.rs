//! The handshake: mutual challenge-response with the cluster key.
//!
//! ```text
//! primary   → secondary   MAGIC | nonce_p (32)
//! secondary → primary     MAGIC | nonce_s (32) | proof("secondary")
//! primary   → secondary   status u8 | mode u8 | proof("primary", mode)
//! secondary → primary     Ack::Hello sealed with the session ack key, seq = its copy id
//! ```
//!
//! `proof(role, ..)` is a keyed BLAKE3 under the cluster key over a context
//! string, the role, both nonces (and the mode), so a proof cannot be
//! replayed, reflected or moved to the other role. Each side checks the
//! other's proof before it says anything that depends on the key; a primary
//! that finds the secondary's proof wrong sends `status = 1` (so the
//! secondary can count the failure) and stops. Both sides then derive the
//! session keys from the cluster key and both nonces: one for frames, one for
//! acks, so a frame can never pass for an ack or the reverse.
//!
//! The secondary sends the hello ([`welcome`]) only once it is ready for the
//! new session; it carries the copy id of the copy it holds (0: none), so
//! the primary knows which resync it can build on.

use std::io::{Read, Write};

use crate::error::{MirrorError, Result};
use crate::wire::{Ack, AckKind, ACK_LEN};

const MAGIC: &[u8; 8] = b"MIRRORC1";
const PROOF_CONTEXT: &[u8] = b"mirrorcore 1 handshake proof";

/// How far the secondary's acknowledgement goes before a barrier returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Synchronous: applied and flushed to the secondary's disk.
    None = 0,
    /// Semi-synchronous: received into the secondary's memory.
    Second = 1,
}

impl Mode {
    /// Parses the configuration name of a mode (`"none"` or `"second"`).
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] for any other name.
    pub fn parse(name: &str) -> Result<Mode> {
        match name {
            "none" => Ok(Mode::None),
            "second" => Ok(Mode::Second),
            other => Err(MirrorError::InvalidArgument(format!(
                "unknown mode {other:?}: expected \"none\" or \"second\""
            ))),
        }
    }

    fn from_byte(b: u8) -> Result<Mode> {
        match b {
            0 => Ok(Mode::None),
            1 => Ok(Mode::Second),
            other => Err(MirrorError::Protocol(format!("unknown mode byte {other}"))),
        }
    }
}

/// The cluster key, stretched to a 32-byte BLAKE3 key.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// Derives the handshake key from the configured secret.
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] for an empty key.
    pub fn new(secret: &[u8]) -> Result<ClusterKey> {
        if secret.is_empty() {
            return Err(MirrorError::InvalidArgument(
                "the cluster key is empty".into(),
            ));
        }
        Ok(ClusterKey(blake3::derive_key(
            "mirrorcore 1 cluster key",
            secret,
        )))
    }

    fn proof(&self, role: &[u8], nonce_p: &[u8; 32], nonce_s: &[u8; 32], mode: u8) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(PROOF_CONTEXT)
            .update(role)
            .update(nonce_p)
            .update(nonce_s)
            .update(&[mode]);
        *h.finalize().as_bytes()
    }

    fn session(&self, nonce_p: &[u8; 32], nonce_s: &[u8; 32]) -> SessionKeys {
        let mut material = Vec::with_capacity(96);
        material.extend_from_slice(&self.0);
        material.extend_from_slice(nonce_p);
        material.extend_from_slice(nonce_s);
        SessionKeys {
            frame: blake3::derive_key("mirrorcore 1 frame key", &material),
            ack: blake3::derive_key("mirrorcore 1 ack key", &material),
        }
    }
}

/// The keys of one authenticated connection.
#[derive(Clone)]
pub struct SessionKeys {
    /// MACs frames from the primary.
    pub frame: [u8; 32],
    /// MACs acks from the secondary.
    pub ack: [u8; 32],
}

/// Runs the primary's side on a connected stream (with timeouts already set);
/// returns the session keys and the copy id the secondary announced.
///
/// # Errors
/// [`MirrorError::Auth`] when the secondary proves a different key or refuses
/// ours; I/O errors as they come.
pub fn primary<S: Read + Write>(
    stream: &mut S,
    key: &ClusterKey,
    mode: Mode,
) -> Result<(SessionKeys, u64)> {
    let nonce_p = nonce()?;
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nonce_p);
    stream.write_all(&hello)?;

    let mut reply = [0u8; 8 + 32 + 32];
    stream.read_exact(&mut reply)?;
    if &reply[..8] != MAGIC {
        return Err(MirrorError::Protocol(
            "the peer is not a mirrorcore receiver".into(),
        ));
    }
    let mut nonce_s = [0u8; 32];
    nonce_s.copy_from_slice(&reply[8..40]);
    let expected = key.proof(b"secondary", &nonce_p, &nonce_s, 0);
    if !constant_time_eq(&expected, &reply[40..]) {
        let mut refuse = [0u8; 34];
        refuse[0] = 1;
        // Best effort: tells the secondary to count a failure; we fail either way.
        let _ = stream.write_all(&refuse);
        return Err(MirrorError::Auth(
            "the secondary does not know our cluster key".into(),
        ));
    }
    let mut answer = Vec::with_capacity(34);
    answer.push(0);
    answer.push(mode as u8);
    answer.extend_from_slice(&key.proof(b"primary", &nonce_p, &nonce_s, mode as u8));
    stream.write_all(&answer)?;

    let keys = key.session(&nonce_p, &nonce_s);
    let mut welcome = [0u8; ACK_LEN];
    match stream.read_exact(&mut welcome) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(MirrorError::Auth("the secondary refused our proof".into()));
        }
        Err(e) => return Err(e.into()),
    }
    match Ack::decode(&welcome, &keys.ack)? {
        Ack {
            kind: AckKind::Hello,
            seq: copy_id,
        } => Ok((keys, copy_id)),
        other => Err(MirrorError::Protocol(format!(
            "expected a hello ack, got {other:?}"
        ))),
    }
}

/// Runs the secondary's side on an accepted stream (with timeouts already set),
/// up to the hello, which [`welcome`] sends.
///
/// # Errors
/// [`MirrorError::Auth`] when the primary proves a different key or says
/// ours is wrong; nothing is accepted from such a peer.
pub fn secondary<S: Read + Write>(stream: &mut S, key: &ClusterKey) -> Result<(SessionKeys, Mode)> {
    let mut hello = [0u8; 40];
    stream.read_exact(&mut hello)?;
    if &hello[..8] != MAGIC {
        return Err(MirrorError::Auth(
            "the peer is not a mirrorcore forwarder".into(),
        ));
    }
    let mut nonce_p = [0u8; 32];
    nonce_p.copy_from_slice(&hello[8..]);
    let nonce_s = nonce()?;
    let mut reply = Vec::with_capacity(72);
    reply.extend_from_slice(MAGIC);
    reply.extend_from_slice(&nonce_s);
    reply.extend_from_slice(&key.proof(b"secondary", &nonce_p, &nonce_s, 0));
    stream.write_all(&reply)?;

    let mut answer = [0u8; 34];
    stream.read_exact(&mut answer)?;
    if answer[0] != 0 {
        return Err(MirrorError::Auth(
            "the primary does not know our cluster key".into(),
        ));
    }
    let expected = key.proof(b"primary", &nonce_p, &nonce_s, answer[1]);
    if !constant_time_eq(&expected, &answer[2..]) {
        return Err(MirrorError::Auth(
            "the primary does not know the cluster key".into(),
        ));
    }
    let mode = Mode::from_byte(answer[1])?;
    Ok((key.session(&nonce_p, &nonce_s), mode))
}

/// Ends the secondary's side of the handshake: the session is open, and the
/// secondary holds the copy `copy_id`.
///
/// # Errors
/// The write error.
pub fn welcome<S: Write>(stream: &mut S, keys: &SessionKeys, copy_id: u64) -> Result<()> {
    let hello = Ack {
        kind: AckKind::Hello,
        seq: copy_id,
    };
    stream.write_all(&hello.encode(&keys.ack))?;
    Ok(())
}

fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| MirrorError::Io(std::io::Error::other(e.to_string())))?;
    Ok(n)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    type SecondaryEnd = (SessionKeys, Mode);

    fn handshake(
        primary_key: &[u8],
        secondary_key: &[u8],
    ) -> (Result<(SessionKeys, u64)>, Result<SecondaryEnd>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let sk = ClusterKey::new(secondary_key).unwrap();
        let server = thread::spawn(move || {
            let r = secondary(&mut b, &sk);
            if let Ok((keys, _)) = &r {
                welcome(&mut b, keys, 42).unwrap();
            }
            drop(b);
            r
        });
        let client = primary(&mut a, &ClusterKey::new(primary_key).unwrap(), Mode::None);
        drop(a);
        (client, server.join().unwrap())
    }

    #[test]
    fn same_key_agrees_on_session_keys_and_mode() {
        let (client, server) = handshake(b"secret", b"secret");
        let ((client, copy_id), (server, mode)) = (client.unwrap(), server.unwrap());
        assert_eq!(copy_id, 42);
        assert_eq!(client.frame, server.frame);
        assert_eq!(client.ack, server.ack);
        assert_ne!(client.frame, client.ack);
        assert_eq!(mode, Mode::None);
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        let (client, server) = handshake(b"secret", b"other");
        assert!(matches!(client, Err(MirrorError::Auth(_))));
        assert!(matches!(server, Err(MirrorError::Auth(_))));
    }

    #[test]
    fn sessions_never_share_keys() {
        let (a, _) = handshake(b"k", b"k");
        let (b, _) = handshake(b"k", b"k");
        assert_ne!(a.unwrap().0.frame, b.unwrap().0.frame);
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!(Mode::parse("second").unwrap(), Mode::Second);
        assert_eq!(Mode::parse("none").unwrap(), Mode::None);
        assert!(Mode::parse("async").is_err());
        assert!(ClusterKey::new(b"").is_err());
    }
}
