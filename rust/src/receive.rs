//! The secondary's receiver: listens, authenticates one primary at a time,
//! verifies every frame and hands operations to the [`Cache`] in order.
//!
//! Threads: an accept thread (handshakes; a newly authenticated primary
//! replaces the current one once its operations are applied), one session
//! reader, and the applier owned by the cache. A frame that fails its MAC,
//! breaks the sequence or names a path outside the root is never applied:
//! the session is dropped and the failure recorded.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::apply::Applier;
use crate::auth::{self, ClusterKey, Mode, SessionKeys};
use crate::cache::{AckSink, Cache};
use crate::error::{MirrorError, Result};
use crate::wire::{self, Ack, Header, Op, Reply, HEADER_LEN, MAC_LEN, MAX_PAYLOAD};

/// How long a connecting peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new primary's hello may wait for the previous session's
/// operations to be applied, so that the copy id it announces includes their
/// marks (the primary's connect timeout bounds the whole handshake).
const HELLO_DRAIN: Duration = Duration::from_secs(2);
/// How long a halted session waits for the primary to hang up.
const HALT_LINGER: Duration = Duration::from_secs(5);

/// A listening secondary (see the module docs).
pub struct Receiver {
    shared: Arc<Shared>,
    port: u16,
    accept: Mutex<Option<JoinHandle<()>>>,
    applier: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    key: ClusterKey,
    cache: Arc<Cache>,
    listener: TcpListener,
    stopping: AtomicBool,
    session: Mutex<Option<(TcpStream, JoinHandle<()>)>>,
    connected: AtomicBool,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_rejected: AtomicU64,
    auth_failures: AtomicU64,
    sessions: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Sends acks on the session socket, MAC'd with the session ack key.
struct AckWriter {
    stream: Mutex<TcpStream>,
    key: [u8; 32],
}

impl AckSink for AckWriter {
    fn send(&self, ack: Ack) {
        let raw = ack.encode(&self.key);
        // A dead socket is noticed (and reported) by the session reader.
        let _ = lock(&self.stream).write_all(&raw);
    }

    fn reply(&self, seq: u64, reply: &Reply) {
        let raw = reply.encode(seq, &self.key);
        let _ = lock(&self.stream).write_all(&raw);
    }

    fn hang_up(&self, seq: u64, reply: &Reply) {
        let raw = reply.encode(seq, &self.key);
        let stream = lock(&self.stream);
        let _ = (&*stream).write_all(&raw);
        // Half-close: the session reader drains what is in flight until the primary
        // hangs up (closing with unread data would reset the connection, and the
        // primary could lose the reply).
        let _ = stream.shutdown(Shutdown::Write);
    }
}

impl Receiver {
    /// Opens `root`, binds `listen_addr:port` (0 = any free port) and starts
    /// serving, announcing `copy_id` to primaries until a mark changes it.
    ///
    /// # Errors
    /// When the root cannot be opened, the key is empty or the address cannot be bound.
    pub fn start(
        root: &Path,
        listen_addr: &str,
        port: u16,
        key: &[u8],
        cache_bytes: usize,
        copy_id: u64,
    ) -> Result<Receiver> {
        let key = ClusterKey::new(key)?;
        let applier = Applier::new(root)?;
        let addr = (listen_addr, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                MirrorError::InvalidArgument(format!("no address for {listen_addr:?}"))
            })?;
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let cache = Cache::new(cache_bytes, copy_id);
        let shared = Arc::new(Shared {
            key,
            cache: cache.clone(),
            listener,
            stopping: AtomicBool::new(false),
            session: Mutex::new(None),
            connected: AtomicBool::new(false),
            frames_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let applier = std::thread::Builder::new()
            .name("mirror-apply".into())
            .spawn(move || cache.run_applier(applier))?;
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("mirror-accept".into())
            .spawn(move || s.accept_loop())?;
        Ok(Receiver {
            shared,
            port,
            accept: Mutex::new(Some(accept)),
            applier: Mutex::new(Some(applier)),
        })
    }

    /// The port actually listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The copy id announced to the next primary (the latest mark applied, or as set).
    pub fn copy_id(&self) -> u64 {
        self.shared.cache.copy_id()
    }

    /// Sets the copy id to announce (0 asks for a full copy).
    pub fn set_copy_id(&self, id: u64) {
        self.shared.cache.set_copy_id(id);
    }

    /// Adds `paths` to the needs list, as changed, for the next `RequestNeeds`
    /// (this session's or a later one's; see [`Cache::seed_needs`]).
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`] for a path that is not relative to the
    /// root (nothing is seeded then).
    pub fn seed_needs(&self, paths: Vec<Vec<u8>>) -> Result<()> {
        for path in &paths {
            crate::wire::validate_path(path)?;
        }
        self.shared.cache.seed_needs(paths);
        Ok(())
    }

    /// Counters: `received_seq`, `applied_seq`, `flushed_seq`, `frames_rejected`, ….
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let c = self.shared.cache.stats();
        let s = &self.shared;
        let (seeds, handed) = self.shared.cache.seeded();
        vec![
            ("seeds_pending", seeds as u64),
            ("seeds_handed", handed as u64),
            ("received_seq", c.received),
            ("applied_seq", c.applied),
            ("flushed_seq", c.flushed),
            ("cache_bytes", c.bytes),
            ("apply_errors", c.apply_errors),
            ("mark", c.mark),
            ("frames_received", s.frames_received.load(Ordering::Relaxed)),
            ("bytes_received", s.bytes_received.load(Ordering::Relaxed)),
            ("frames_rejected", s.frames_rejected.load(Ordering::Relaxed)),
            ("auth_failures", s.auth_failures.load(Ordering::Relaxed)),
            ("sessions", s.sessions.load(Ordering::Relaxed)),
            // A halted session is over, though it may linger until the primary hangs up.
            (
                "connected",
                u64::from(s.connected.load(Ordering::Relaxed) && !s.cache.halted()),
            ),
            ("failed", u64::from(self.shared.cache.failure().is_some())),
        ]
    }

    /// The failure that left the copy inconsistent ([`Cache::failure`]), else
    /// the latest protocol, authentication, apply or flush failure.
    pub fn last_error(&self) -> Option<String> {
        if let Some(failure) = self.shared.cache.failure() {
            return Some(failure);
        }
        let own = lock(&self.shared.last_error).clone();
        own.or_else(|| self.shared.cache.stats().last_error)
    }

    /// The failure to apply that halted a session and left the copy
    /// inconsistent; `None` once a later resync's mark repaired it (see
    /// [`Cache::failure`]).
    pub fn failure(&self) -> Option<String> {
        self.shared.cache.failure()
    }

    /// Applies and flushes everything received; returns the last applied seq.
    ///
    /// # Errors
    /// [`MirrorError::Timeout`] when that takes longer than `timeout`.
    pub fn drain(&self, timeout: Duration) -> Result<u64> {
        self.shared.cache.drain(Some(timeout))
    }

    /// Stops listening, ends the session, applies and flushes what was
    /// received and joins every thread. Idempotent.
    pub fn close(&self) {
        let s = &self.shared;
        if s.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wakes the accept thread (Linux: accept() fails on a shut-down listener).
        // SAFETY: the fd is valid as long as `shared` is; the result does not matter.
        unsafe { libc::shutdown(s.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = lock(&self.accept).take() {
            let _ = t.join();
        }
        s.end_session();
        s.cache.close();
        if let Some(t) = lock(&self.applier).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn accept_loop(self: &Arc<Self>) {
        loop {
            let conn = self.listener.accept();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok((mut stream, _)) = conn else {
                std::thread::sleep(Duration::from_millis(50)); // e.g. EMFILE: don't spin
                continue;
            };
            match handshake(&mut stream, &self.key) {
                Ok((keys, mode)) => {
                    self.end_session();
                    // Best effort within HELLO_DRAIN; `start_session` drains fully anyway.
                    let _ = self.cache.drain(Some(HELLO_DRAIN));
                    if let Err(e) = auth::welcome(&mut stream, &keys, self.cache.copy_id()) {
                        self.record(format!("handshake: {e}"));
                        continue;
                    }
                    if let Err(e) = self.start_session(stream, &keys, mode) {
                        self.record(format!("starting a session: {e}"));
                    }
                }
                Err(e) => {
                    if matches!(e, MirrorError::Auth(_)) {
                        self.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    self.record(format!("handshake: {e}"));
                }
            }
        }
    }

    fn start_session(
        self: &Arc<Self>,
        stream: TcpStream,
        keys: &SessionKeys,
        mode: Mode,
    ) -> Result<()> {
        // The previous primary's operations are applied before seqs restart.
        self.cache.drain(None)?;
        let sink = Arc::new(AckWriter {
            stream: Mutex::new(stream.try_clone()?),
            key: keys.ack,
        });
        self.cache.start_session(mode, sink.clone());
        let reader_stream = stream.try_clone()?;
        let (me, frame_key) = (self.clone(), keys.frame);
        self.connected.store(true, Ordering::SeqCst);
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let reader = std::thread::Builder::new()
            .name("mirror-recv".into())
            .spawn(move || {
                if let Err(e) = me.read_frames(reader_stream, &frame_key) {
                    if !me.stopping.load(Ordering::SeqCst) && !me.cache.halted() {
                        me.record(e.to_string());
                    }
                }
                // Hang up for good: the ack writer's clone would keep the socket open.
                let _ = lock(&sink.stream).shutdown(Shutdown::Both);
                me.connected.store(false, Ordering::SeqCst);
            })?;
        *lock(&self.session) = Some((stream, reader));
        Ok(())
    }

    fn end_session(&self) {
        if let Some((stream, reader)) = lock(&self.session).take() {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = reader.join();
        }
    }

    /// The session reader: verify, check the sequence, queue. It sends no
    /// acks: every ack comes from the applier, so none ever covers an operation
    /// that failed to apply (see `cache.rs`).
    fn read_frames(&self, stream: TcpStream, key: &[u8; 32]) -> Result<()> {
        let mut r = BufReader::with_capacity(256 << 10, stream);
        let mut expected = 1u64;
        loop {
            let mut raw = [0u8; HEADER_LEN];
            match r.read_exact(&mut raw) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let h = Header::parse(&raw);
            let op = Self::read_op(&mut r, &raw, h, key, expected).inspect_err(|e| {
                self.frames_rejected.fetch_add(1, Ordering::Relaxed);
                self.record(format!("frame seq {} rejected: {e}", h.seq));
            })?;
            expected += 1;
            let size = h.len as usize + 64;
            self.frames_received.fetch_add(1, Ordering::Relaxed);
            self.bytes_received.fetch_add(
                (HEADER_LEN + MAC_LEN) as u64 + u64::from(h.len),
                Ordering::Relaxed,
            );
            if !self.cache.push(h.seq, op, size) {
                if self.cache.halted() {
                    discard(&mut r);
                }
                return Ok(());
            }
        }
    }

    fn read_op<R: Read>(
        r: &mut R,
        raw: &[u8],
        h: Header,
        key: &[u8; 32],
        expected: u64,
    ) -> Result<Op> {
        if h.len as usize > MAX_PAYLOAD {
            return Err(MirrorError::Protocol(format!(
                "payload of {} bytes is too large",
                h.len
            )));
        }
        let mut payload = vec![0u8; h.len as usize];
        r.read_exact(&mut payload)?;
        let mut mac = [0u8; MAC_LEN];
        r.read_exact(&mut mac)?;
        wire::verify(key, &[raw, &payload], &mac)?;
        if h.seq != expected {
            return Err(MirrorError::Protocol(format!("expected seq {expected}")));
        }
        Op::decode(h.code, &payload)
    }

    fn record(&self, msg: String) {
        *lock(&self.last_error) = Some(msg);
    }
}

/// A halted session: reads and drops what the primary still sends until it
/// hangs up (it does once it reads the halt), for at most [`HALT_LINGER`].
fn discard(r: &mut BufReader<TcpStream>) {
    let deadline = Instant::now() + HALT_LINGER;
    let _ = r.get_ref().set_read_timeout(Some(HALT_LINGER));
    let mut buf = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn handshake(stream: &mut TcpStream, key: &ClusterKey) -> Result<(SessionKeys, Mode)> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let result = auth::secondary(stream, key)?;
    stream.set_read_timeout(None)?;
    Ok(result)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{seal, AckKind};

    const KEY: &[u8] = b"receiver test key";

    fn start(name: &str) -> (std::path::PathBuf, Receiver) {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-recv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rx = Receiver::start(&dir, "127.0.0.1", 0, KEY, 1 << 20, 0).unwrap();
        (dir, rx)
    }

    fn session(rx: &Receiver) -> (TcpStream, SessionKeys) {
        let mut s = TcpStream::connect(("127.0.0.1", rx.port())).unwrap();
        let (keys, _) =
            auth::primary(&mut s, &ClusterKey::new(KEY).unwrap(), Mode::Second).unwrap();
        (s, keys)
    }

    fn create(name: &str, seq: u64, key: &[u8; 32]) -> Vec<u8> {
        let op = Op::Create {
            path: name.into(),
            mode: 0o644,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let mut frame = op.frame(seq);
        seal(&mut frame, key);
        frame
    }

    fn stat(rx: &Receiver, name: &str) -> u64 {
        rx.stats().into_iter().find(|(k, _)| *k == name).unwrap().1
    }

    /// Sends `frames`, then waits until the receiver hangs up.
    fn send_until_dropped(mut s: TcpStream, frames: &[Vec<u8>]) {
        for f in frames {
            s.write_all(f).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink); // ends when the receiver drops us
    }

    #[test]
    fn a_corrupted_frame_is_rejected_and_nothing_after_it_applied() {
        let (dir, rx) = start("corrupt");
        let (s, keys) = session(&rx);
        let mut bad = create("b", 2, &keys.frame);
        bad[HEADER_LEN + 5] ^= 1;
        let after = create("c", 3, &keys.frame);
        send_until_dropped(s, &[create("a", 1, &keys.frame), bad, after]);
        rx.drain(Duration::from_secs(10)).unwrap();
        assert!(dir.join("a").exists());
        assert!(!dir.join("b").exists() && !dir.join("c").exists());
        assert_eq!(stat(&rx, "frames_rejected"), 1);
        assert!(rx.last_error().unwrap().contains("MAC mismatch"));
        rx.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replayed_frame_is_rejected() {
        let (dir, rx) = start("replay");
        let (s, keys) = session(&rx);
        let first = create("a", 1, &keys.frame);
        send_until_dropped(s, &[first.clone(), first]);
        assert_eq!(stat(&rx, "frames_rejected"), 1);
        assert!(rx.last_error().unwrap().contains("expected seq 2"));
        // A frame from an earlier session does not pass in a new one either.
        let (s, _) = session(&rx);
        send_until_dropped(s, &[create("old", 1, &keys.frame)]);
        rx.drain(Duration::from_secs(10)).unwrap();
        assert!(!dir.join("old").exists());
        assert_eq!(stat(&rx, "frames_rejected"), 2);
        rx.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_operation_ends_the_session_and_no_ack_covers_it() {
        let (dir, rx) = start("halt");
        rx.set_copy_id(77);
        let (mut s, keys) = session(&rx);
        for f in [
            create("plain", 1, &keys.frame),
            create("plain/x", 2, &keys.frame),
            create("after", 3, &keys.frame),
        ] {
            s.write_all(&f).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s);
        let mut halted = None;
        loop {
            match wire::read_message(&mut r, &keys.ack) {
                Ok(wire::Message::Ack(ack)) => {
                    assert!(ack.seq < 2 || ack.kind == AckKind::Hello, "{ack:?}");
                }
                Ok(wire::Message::Reply { seq, reply }) => halted = Some((seq, reply)),
                Err(_) => break, // the receiver hung up
            }
        }
        let Some((2, Reply::Halted { errno, message })) = halted else {
            panic!("{halted:?}")
        };
        assert_eq!(errno, libc::ENOTDIR);
        assert!(message.contains("create plain/x"), "{message}");
        rx.drain(Duration::from_secs(10)).unwrap();
        assert!(!dir.join("after").exists());
        assert_eq!(rx.last_error(), Some(message.clone()));
        assert_eq!(rx.failure(), Some(message));
        assert_eq!(stat(&rx, "failed"), 1);
        assert_eq!(stat(&rx, "connected"), 0);
        drop(r);
        // The next primary is told the same copy id, and gets the path among the needs.
        let mut s = TcpStream::connect(("127.0.0.1", rx.port())).unwrap();
        let (_, copy_id) =
            auth::primary(&mut s, &ClusterKey::new(KEY).unwrap(), Mode::Second).unwrap();
        assert_eq!(copy_id, 77);
        assert_eq!(stat(&rx, "seeds_pending"), 1);
        drop(s);
        rx.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
