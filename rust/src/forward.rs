//! The primary's forwarder: numbers operations, queues their frames, sends
//! them in order on one connection and tracks the secondary's acks.
//!
//! Callers hold the `order` lock from the local operation (for writes, the
//! `pwrite` itself) to the queueing of its frame, so sequence order is the
//! order of local application. A write's frame carries the file's mtime read
//! (`fstat`) right after the `pwrite`, under the same lock: the secondary
//! sets exactly that time after its own `pwrite`. That is one `fstat` per
//! write call and 8 bytes per frame here, one `futimens` per frame there. The queue is bounded by bytes (queued plus in
//! flight): a full queue blocks the caller, which has released the GIL. A
//! sender thread MACs and writes frames; an ack reader thread raises
//! `acked_seq`/`flushed_seq` and wakes barriers. When the link fails, every
//! later operation still works locally and is handed to `on_unsent`. A
//! secondary that cannot apply an operation says so ([`Reply::Halted`]) and
//! hangs up: the link is down with its message, nothing from that operation on
//! is confirmed.
//!
//! Tracking: with a [`DirtyMap`] attached ([`Forwarder::track`]) every
//! operation is recorded into it at the moment it gets its seq (under
//! `order`, so before any ack can name it), as map seq `base + seq`; each
//! `Flushed` ack confirms `base + flushed`. So the map holds exactly what the
//! secondary does not have on its disk: sent but unflushed while the link is
//! up, everything after the link drops. [`Forwarder::tracker`] is a forwarder
//! with no link at all: the ALONE replicator, which applies writes locally and
//! only records.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::apply::write_at_most;
use crate::auth::{self, ClusterKey, Mode, SessionKeys};
use crate::dirty::DirtyMap;
use crate::error::{MirrorError, Result};
use crate::reply::Replies;
use crate::wire::{self, AckKind, Message, Op, Reply, WRITE_CHUNK};
use dial::dial;

/// Largest frame `submit` sends from the caller's thread when the sender is idle (see `send_inline`).
const INLINE_MAX: usize = 16 << 10;

/// How to reach and authenticate to the secondary.
pub struct Config {
    /// Host name or address of the secondary.
    pub peer: String,
    /// Its replication port.
    pub port: u16,
    /// The cluster key.
    pub key: Vec<u8>,
    /// What a barrier waits for.
    pub mode: Mode,
    /// Bound on queued plus in-flight frame bytes.
    pub queue_bytes: usize,
    /// Longest a send, or a barrier without ack progress, may stall before the link is declared down.
    pub send_timeout: Duration,
    /// Bound on connecting plus the handshake.
    pub connect_timeout: Duration,
    /// Local address to connect from (the replication LAN).
    pub bind_addr: Option<String>,
}

/// An operation performed locally: what the tracking hook records, and what
/// `on_unsent` is handed when it was not sent.
pub enum Unsent<'a> {
    /// A write of `len` bytes at `offset`.
    Write {
        path: &'a [u8],
        offset: u64,
        len: u64,
    },
    /// A namespace or metadata operation.
    Op(&'a Op),
    /// A queued frame dropped when the link failed (decode with [`wire`]).
    Frame(&'a [u8]),
}

/// The primary's end of one replication connection.
pub struct Forwarder {
    shared: Arc<Shared>,
    /// Held from a local operation to the queueing of its frame (see the module docs).
    pub(crate) order: Mutex<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    mode: Mode,
    keys: SessionKeys,
    /// None for a [`Forwarder::tracker`], which never had a link.
    stream: Option<TcpStream>,
    send_timeout: Duration,
    capacity: usize,
    queue: Mutex<Queue>,
    has_work: Condvar,
    has_space: Condvar,
    link: Mutex<Link>,
    link_changed: Condvar,
    connected: AtomicBool,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    unsent: AtomicU64,
    tracking: Mutex<Option<Tracking>>,
    replies: Replies,
    /// The copy id the secondary announced in the handshake.
    peer_copy_id: u64,
}

/// The map the hook records into, and the map seq of this forwarder's seq 0.
struct Tracking {
    map: Arc<Mutex<DirtyMap>>,
    base: u64,
}

struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    last_seq: u64,
    /// Seq of the latest barrier queued (equal to `last_seq` while it is the last operation).
    last_barrier: u64,
    /// Sealed bytes of a frame sent in part by `submit`: the sender sends them before `frames`.
    rest: Vec<u8>,
    /// A thread is writing to the socket (the sender, or `submit` sending inline).
    sending: bool,
    closing: bool,
}

struct Link {
    acked: u64,
    flushed: u64,
    /// The applier's last progress (`flushed` raised, a reply): stalls of `take` count from it.
    answered: Instant,
    error: Option<String>,
}

impl Forwarder {
    /// Connects, authenticates and starts the sender and ack reader threads.
    ///
    /// # Errors
    /// Connection errors as `Io` (refused, timed out), [`MirrorError::Auth`]
    /// when the peer does not know the key.
    pub fn connect(cfg: &Config) -> Result<Forwarder> {
        let key = ClusterKey::new(&cfg.key)?;
        let mut stream = dial(cfg)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(cfg.connect_timeout))?;
        stream.set_write_timeout(Some(cfg.connect_timeout))?;
        let (keys, peer_copy_id) = auth::primary(&mut stream, &key, cfg.mode)?;
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(Some(cfg.send_timeout))?;
        let shared = Arc::new(Shared {
            mode: cfg.mode,
            keys,
            stream: Some(stream.try_clone()?),
            send_timeout: cfg.send_timeout,
            capacity: cfg.queue_bytes.max(1),
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
                last_barrier: 0,
                rest: Vec::new(),
                sending: false,
                closing: false,
            }),
            has_work: Condvar::new(),
            has_space: Condvar::new(),
            link: Mutex::new(Link {
                acked: 0,
                flushed: 0,
                answered: Instant::now(),
                error: None,
            }),
            link_changed: Condvar::new(),
            connected: AtomicBool::new(true),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            tracking: Mutex::new(None),
            replies: Replies::new(None),
            peer_copy_id,
        });
        let (s1, s2, reader) = (shared.clone(), shared.clone(), stream.try_clone()?);
        let sender = std::thread::Builder::new()
            .name("mirror-send".into())
            .spawn(move || s1.send_loop(stream))?;
        let acks = std::thread::Builder::new()
            .name("mirror-acks".into())
            .spawn(move || s2.ack_loop(reader))?;
        Ok(Forwarder {
            shared,
            order: Mutex::new(()),
            threads: Mutex::new(vec![sender, acks]),
        })
    }

    /// A forwarder without a link (the ALONE replicator): `write` performs
    /// the local `pwrite`, every operation is numbered and recorded into
    /// `map` (continuing after its `last_seq`), and barriers return at once.
    pub fn tracker(map: Arc<Mutex<DirtyMap>>) -> Forwarder {
        let base = lock(&map).last_seq();
        let shared = Arc::new(Shared {
            mode: Mode::Second,
            // Never used: a tracker sends nothing.
            keys: SessionKeys {
                frame: [0; 32],
                ack: [0; 32],
            },
            stream: None,
            send_timeout: Duration::ZERO,
            capacity: 1,
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
                last_barrier: 0,
                rest: Vec::new(),
                sending: false,
                closing: true,
            }),
            has_work: Condvar::new(),
            has_space: Condvar::new(),
            link: Mutex::new(Link {
                acked: 0,
                flushed: 0,
                answered: Instant::now(),
                error: Some("tracking only: no link".into()),
            }),
            link_changed: Condvar::new(),
            connected: AtomicBool::new(false),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            tracking: Mutex::new(Some(Tracking { map, base })),
            replies: Replies::new(Some("tracking only: no link".into())),
            peer_copy_id: 0,
        });
        Forwarder {
            shared,
            order: Mutex::new(()),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Attaches `map` (or detaches with `None`): from the next operation on,
    /// every operation is recorded into it as seq `map.last_seq() + seq`, and
    /// `Flushed` acks confirm what they cover. Records the map held before
    /// with seqs up to its `last_seq` are dropped by the first confirm: attach
    /// an empty map (cleared after a full copy). Once this returns, no
    /// operation is recorded into a detached map any more.
    pub fn track(&self, map: Option<Arc<Mutex<DirtyMap>>>) {
        let _order = lock(&self.order);
        let tracking = map.map(|map| {
            let base = lock(&map).last_seq();
            Tracking { map, base }
        });
        *lock(&self.shared.tracking) = tracking;
    }

    /// Whether a map is attached.
    pub fn tracking(&self) -> bool {
        lock(&self.shared.tracking).is_some()
    }

    /// `pwrite`s `data` at `offset` on `fd`, then queues it for `path` with
    /// the file's resulting mtime (nothing is sent for `None`: an unlinked
    /// file). Returns the bytes written: fewer than `data` when the local
    /// disk filled up midway (only those are queued), as `pwrite` itself would.
    ///
    /// # Errors
    /// The local `pwrite` error when nothing was written; [`MirrorError::InvalidPath`]
    /// before writing anything.
    pub fn write(&self, fd: RawFd, path: Option<&[u8]>, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_posting(fd, path, offset, data, false)
    }

    /// [`Forwarder::write`], and with `post` a barrier queued right behind
    /// it, as [`Forwarder::post_barrier`] would (in the same call, so that
    /// both usually travel in one send). Posting is a hint: it never fails the write.
    ///
    /// # Errors
    /// As [`Forwarder::write`].
    pub fn write_posting(
        &self,
        fd: RawFd,
        path: Option<&[u8]>,
        offset: u64,
        data: &[u8],
        post: bool,
    ) -> Result<usize> {
        if let Some(path) = path {
            wire::validate_path(path)?;
        }
        let _order = lock(&self.order);
        // Like a local disk that fills up midway, a short write returns what was written, and
        // exactly that is forwarded: the copies stay equal; the application's next write fails.
        let data = match write_at_most(fd, data, offset) {
            (0, Some(err)) if !data.is_empty() => return Err(err.into()),
            (written, _) => &data[..written],
        };
        let Some(path) = path else {
            return Ok(data.len());
        };
        // Read after the pwrite and before queueing, under `order`: exactly this write's
        // result. Every chunk carries it. Should fstat fail (it cannot once pwrite
        // succeeded), the secondary keeps its own clock rather than failing a done write.
        let mtime_ns = mtime_ns(fd);
        // With `post`, the frames are held and queued together with the barrier, so that
        // a small write and its barrier leave in one send and the secondary gets both in
        // one read (held frames may overrun the queue bound by this one write).
        let post = post && self.shared.stream.is_some();
        let mut held = Vec::new();
        let mut off = offset;
        for chunk in data.chunks(WRITE_CHUNK) {
            let len = wire::HEADER_LEN + wire::write_overhead(path) + chunk.len() + wire::MAC_LEN;
            let (seq, frame) = self.prepare(
                len,
                |seq| wire::write_frame(seq, path, off, mtime_ns, chunk),
                || Unsent::Write {
                    path,
                    offset: off,
                    len: chunk.len() as u64,
                },
            );
            held.extend(frame.map(|f| (seq, f)));
            if !post {
                self.shared.enqueue(std::mem::take(&mut held));
            }
            off += chunk.len() as u64;
        }
        if post {
            let _ = self.post_locked(&mut held); // a hint: a dead link is the barrier's business
            self.shared.enqueue(held);
        }
        Ok(data.len())
    }

    /// Queues a namespace or metadata operation already performed locally; returns its seq.
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`] for a path that is not relative to the root;
    /// [`MirrorError::InvalidArgument`] for an operation the secondary would refuse.
    pub fn forward(&self, op: &Op) -> Result<u64> {
        op.validate()?;
        let frame = op.frame(0);
        if frame.len() - wire::HEADER_LEN > wire::MAX_PAYLOAD {
            return Err(MirrorError::InvalidArgument(format!(
                "{op}: {} bytes is more than one frame holds",
                frame.len()
            )));
        }
        let _order = lock(&self.order);
        let len = frame.len() + wire::MAC_LEN;
        Ok(self.submit(len, |seq| restamp(frame, seq), || Unsent::Op(op)))
    }

    /// Waits until every operation queued before the call is acknowledged as
    /// the mode requires. `None` waits as long as acks keep progressing.
    ///
    /// # Errors
    /// [`MirrorError::Disconnected`] when the link is (or goes) down;
    /// [`MirrorError::Timeout`] after `timeout`, or after `send_timeout`
    /// without ack progress (which also declares the link down).
    pub fn barrier(&self, timeout: Option<Duration>) -> Result<()> {
        match self.post_barrier()? {
            0 => Ok(()),
            target => self.wait_barrier(target, timeout),
        }
    }

    /// Queues a barrier behind everything queued so far and returns at once
    /// with its seq: what [`Forwarder::wait_barrier`] then waits for. Returns
    /// 0 when there is nothing to wait for (a tracker, or everything already
    /// acknowledged as the mode requires). When the last operation queued is
    /// already a barrier, returns that one's seq rather than queueing another.
    ///
    /// Posting early (the FUSE layer posts one after a write it expects an
    /// fsync to follow) lets the secondary apply and flush while the primary
    /// still works on its own side of the durability point.
    ///
    /// # Errors
    /// [`MirrorError::Disconnected`] when something is left to wait for and the link is down.
    pub fn post_barrier(&self) -> Result<u64> {
        if self.shared.stream.is_none() {
            return Ok(0); // a tracker: nothing to wait for
        }
        let _order = lock(&self.order);
        let mut held = Vec::new();
        let posted = self.post_locked(&mut held);
        self.shared.enqueue(held);
        posted
    }

    /// [`Forwarder::post_barrier`] of a caller holding `order`, leaving the
    /// barrier's frame (if any) in `held` for the caller to queue.
    fn post_locked(&self, held: &mut Vec<(u64, Vec<u8>)>) -> Result<u64> {
        let s = &self.shared;
        let (last, posted) = {
            let q = lock(&s.queue);
            (q.last_seq, q.last_barrier)
        };
        if s.covered(&lock(&s.link)) >= last {
            return Ok(0);
        }
        if posted == last {
            return Ok(last);
        }
        self.ensure_connected()?;
        let frame = Op::Barrier.frame(0);
        let len = frame.len() + wire::MAC_LEN;
        let (seq, frame) =
            self.prepare(len, |seq| restamp(frame, seq), || Unsent::Op(&Op::Barrier));
        held.extend(frame.map(|f| (seq, f)));
        // Still under `order`: no other operation got a seq since.
        lock(&s.queue).last_barrier = seq;
        Ok(seq)
    }

    /// Whether everything up to `seq` is acknowledged as the mode requires,
    /// waiting up to `wait` for it. Never an error: false when the link is
    /// down (then [`Forwarder::wait_barrier`] says why); always true for a tracker.
    pub fn is_covered(&self, seq: u64, wait: Duration) -> bool {
        let s = &self.shared;
        if s.stream.is_none() {
            return true; // a tracker: durability is local
        }
        let deadline = Instant::now() + wait;
        let mut link = lock(&s.link);
        loop {
            if s.covered(&link) >= seq {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || !s.connected.load(Ordering::SeqCst) {
                return false;
            }
            link = s
                .link_changed
                .wait_timeout(link, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until everything up to `target` (a seq [`Forwarder::post_barrier`]
    /// returned) is acknowledged as the mode requires; errors as [`Forwarder::barrier`].
    ///
    /// # Errors
    /// As [`Forwarder::barrier`].
    pub fn wait_barrier(&self, target: u64, timeout: Option<Duration>) -> Result<()> {
        let s = &self.shared;
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let mut link = lock(&s.link);
        let (mut seen, mut since) = (s.covered(&link), start);
        loop {
            let now_covered = s.covered(&link);
            if now_covered >= target {
                return Ok(());
            }
            if s.stream.is_none() || !s.connected.load(Ordering::SeqCst) {
                return Err(MirrorError::Disconnected(
                    link.error.clone().unwrap_or_default(),
                ));
            }
            let now = Instant::now();
            if now_covered > seen {
                (seen, since) = (now_covered, now);
            }
            let stall_end = since + s.send_timeout;
            if now >= stall_end {
                drop(link);
                return Err(s.stalled(&format!("waiting for the ack of seq {target}")));
            }
            if deadline.is_some_and(|d| now >= d) {
                return Err(MirrorError::Timeout(format!(
                    "barrier for seq {target}: acked up to {now_covered}"
                )));
            }
            let until = deadline.map_or(stall_end, |d| d.min(stall_end));
            link = s
                .link_changed
                .wait_timeout(link, until - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Whether the link is up.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Why the link went down (the first reason: a halt the secondary sent, a stall, a socket error).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.link).error.clone()
    }

    /// Last seq the secondary has received.
    pub fn acked_seq(&self) -> u64 {
        lock(&self.shared.link).acked
    }

    /// Last seq the secondary has on its disk.
    pub fn flushed_seq(&self) -> u64 {
        lock(&self.shared.link).flushed
    }

    /// The copy id the secondary announced when the link was made (0: none; a tracker: 0).
    pub fn peer_copy_id(&self) -> u64 {
        self.shared.peer_copy_id
    }

    /// Where replies to requests arrive.
    pub(crate) fn replies(&self) -> &Replies {
        &self.shared.replies
    }

    /// Stall protection of a `take` that began at `start`: when to check again, or `None`
    /// when no link is up (a tracker, a link down, or one this call just declared down).
    pub(crate) fn reply_stall(&self, start: Instant, seq: u64) -> Option<Instant> {
        let s = &self.shared;
        if s.stream.is_none() || !s.connected.load(Ordering::SeqCst) {
            return None;
        }
        let stall_end = start.max(lock(&s.link).answered) + s.send_timeout;
        if Instant::now() < stall_end {
            return Some(stall_end);
        }
        s.stalled(&format!("waiting for the reply to seq {seq}"));
        None
    }

    /// Last seq handed out.
    pub fn last_seq(&self) -> u64 {
        lock(&self.shared.queue).last_seq
    }

    /// Counters for `Forwarder.stats()`.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared;
        let (queue_bytes, queue_frames, last_seq) = {
            let q = lock(&s.queue);
            (q.bytes as u64, q.frames.len() as u64, q.last_seq)
        };
        let (acked, flushed) = {
            let l = lock(&s.link);
            (l.acked, l.flushed)
        };
        vec![
            ("frames_sent", s.frames_sent.load(Ordering::Relaxed)),
            ("bytes_sent", s.bytes_sent.load(Ordering::Relaxed)),
            ("queue_bytes", queue_bytes),
            ("queue_frames", queue_frames),
            ("queue_capacity", s.capacity as u64),
            ("last_seq", last_seq),
            ("acked_seq", acked),
            ("flushed_seq", flushed),
            ("unsent", s.unsent.load(Ordering::Relaxed)),
            ("connected", u64::from(s.connected.load(Ordering::SeqCst))),
            ("tracking", u64::from(lock(&s.tracking).is_some())),
        ]
    }

    /// Sends what is queued (bounded by `send_timeout`), closes the
    /// connection and joins the threads. Idempotent.
    pub fn close(&self) {
        let s = &self.shared;
        {
            let mut q = lock(&s.queue);
            q.closing = true;
            s.has_work.notify_all();
        }
        let mut threads = lock(&self.threads);
        let mut handles = threads.drain(..);
        if let Some(sender) = handles.next() {
            let _ = sender.join();
        }
        s.fail("closed");
        for t in handles {
            let _ = t.join();
        }
    }

    fn ensure_connected(&self) -> Result<()> {
        if self.shared.connected.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(MirrorError::Disconnected(
            lock(&self.shared.link).error.clone().unwrap_or_default(),
        ))
    }

    /// Assigns the next seq, records the operation `what` describes into
    /// the attached map, and queues the frame `build` makes for it; the
    /// caller holds `order`. Waits for room first; while the link is down,
    /// only numbers and records the operation and hands it to `on_unsent`.
    pub(crate) fn submit<'a>(
        &self,
        len: usize,
        build: impl FnOnce(u64) -> Vec<u8>,
        what: impl FnOnce() -> Unsent<'a>,
    ) -> u64 {
        let (seq, frame) = self.prepare(len, build, what);
        self.shared
            .enqueue(frame.map(|f| (seq, f)).into_iter().collect());
        seq
    }

    /// [`Forwarder::submit`] up to the queueing: returns the seq and the
    /// frame to queue (`None` when the link is down: recorded, not sent).
    /// The caller holds `order` until it queued the frame.
    fn prepare<'a>(
        &self,
        len: usize,
        build: impl FnOnce(u64) -> Vec<u8>,
        what: impl FnOnce() -> Unsent<'a>,
    ) -> (u64, Option<Vec<u8>>) {
        let s = &self.shared;
        let mut q = lock(&s.queue);
        while s.connected.load(Ordering::SeqCst) && q.bytes > 0 && q.bytes + len > s.capacity {
            q = s
                .has_space
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        q.last_seq += 1;
        let seq = q.last_seq;
        let unsent = !s.connected.load(Ordering::SeqCst) || q.closing;
        drop(q);
        let what = what();
        s.record(seq, &what);
        if unsent {
            s.on_unsent(seq, &what);
            return (seq, None);
        }
        // Build outside the lock: `order` keeps seqs ours, the sender keeps draining.
        (seq, Some(build(seq)))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Hook for operations performed locally but not replicated: counted
    /// (they were already recorded into the map, if any, by `submit`).
    fn on_unsent(&self, seq: u64, what: &Unsent<'_>) {
        let _ = (seq, what);
        self.unsent.fetch_add(1, Ordering::Relaxed);
    }

    /// The tracking hook: records operation `seq` into the attached map. A
    /// record that fails leaves the map incomplete, so it is then distrusted.
    fn record(&self, seq: u64, what: &Unsent<'_>) {
        let tracking = lock(&self.tracking);
        let Some(t) = tracking.as_ref() else {
            return;
        };
        let mut map = lock(&t.map);
        let seq = t.base + seq;
        let recorded = match what {
            Unsent::Write { path, offset, len } => map.mark_write(path, *offset, *len, seq),
            Unsent::Op(op) => map.record(op, seq),
            // `submit` records every operation before framing it: never reached.
            Unsent::Frame(_) => Ok(()),
        };
        if recorded.is_err() {
            map.distrust();
        }
    }

    /// The secondary has flushed everything up to `flushed`: the attached map forgets it.
    fn confirm(&self, flushed: u64) {
        if let Some(t) = lock(&self.tracking).as_ref() {
            lock(&t.map).confirm(t.base + flushed);
        }
    }

    /// What the mode's ack has covered so far.
    fn covered(&self, link: &Link) -> u64 {
        match self.mode {
            Mode::None => link.flushed,
            Mode::Second => link.acked,
        }
    }

    fn send_loop(&self, stream: TcpStream) {
        let mut out = BufWriter::with_capacity(256 << 10, stream);
        loop {
            let (rest, batch): (Vec<u8>, Vec<Vec<u8>>) = {
                let mut q = lock(&self.queue);
                while q.sending || (q.frames.is_empty() && q.rest.is_empty()) {
                    if !q.sending && (q.closing || !self.connected.load(Ordering::SeqCst)) {
                        return;
                    }
                    q = self
                        .has_work
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                q.sending = true;
                (std::mem::take(&mut q.rest), q.frames.drain(..).collect())
            };
            let frames = batch.len() as u64 + u64::from(!rest.is_empty());
            let mut bytes = rest.len();
            let sent = || -> std::io::Result<()> {
                out.write_all(&rest)?;
                for mut frame in batch {
                    wire::seal(&mut frame, &self.keys.frame);
                    out.write_all(&frame)?;
                    bytes += frame.len();
                }
                out.flush()
            };
            let result = sent();
            lock(&self.queue).sending = false;
            if let Err(e) = result {
                let why = if e.kind() == std::io::ErrorKind::WouldBlock {
                    format!("send stalled for {:?}", self.send_timeout)
                } else {
                    format!("send failed: {e}")
                };
                self.fail(&why);
                return;
            }
            self.frames_sent.fetch_add(frames, Ordering::Relaxed);
            self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
            let mut q = lock(&self.queue);
            q.bytes = q.bytes.saturating_sub(bytes);
            self.has_space.notify_all();
        }
    }

    /// Queues prepared frames (seq, unsealed frame) in order. When the sender
    /// is idle and they are small, sends them from the caller's thread instead
    /// (see `send_inline`). While the link is down they go to `on_unsent`.
    fn enqueue(&self, frames: Vec<(u64, Vec<u8>)>) {
        if frames.is_empty() {
            return;
        }
        let mut q = lock(&self.queue);
        if !self.connected.load(Ordering::SeqCst) {
            drop(q);
            for (seq, frame) in &frames {
                self.on_unsent(*seq, &Unsent::Frame(frame));
            }
            return;
        }
        let len: usize = frames.iter().map(|(_, f)| f.len() + wire::MAC_LEN).sum();
        let idle = !q.sending && q.frames.is_empty() && q.rest.is_empty() && !q.closing;
        if idle && len <= INLINE_MAX {
            q.sending = true;
            drop(q);
            self.send_inline(frames);
            return;
        }
        q.bytes += len;
        q.frames.extend(frames.into_iter().map(|(_, f)| f));
        self.has_work.notify_one();
    }

    /// Sends small frames from the caller's thread, which set `sending` on an
    /// idle queue: saves waking the sender for a durability point's write and
    /// barrier, which go in one send. Never blocks: what the socket does not
    /// take at once is left in `rest` for the sender.
    fn send_inline(&self, frames: Vec<(u64, Vec<u8>)>) {
        let count = frames.len();
        let mut bytes = Vec::new();
        for (_, mut frame) in frames {
            wire::seal(&mut frame, &self.keys.frame);
            if bytes.is_empty() {
                bytes = frame;
            } else {
                bytes.extend_from_slice(&frame);
            }
        }
        let sent = self.stream.as_ref().map_or(Ok(0), |stream| {
            // SAFETY: a valid socket and buffer; the result is checked.
            let n = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            match usize::try_from(n) {
                Ok(n) => Ok(n),
                Err(_) => match std::io::Error::last_os_error() {
                    e if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                    e => Err(e),
                },
            }
        });
        let mut q = lock(&self.queue);
        q.sending = false;
        if !q.frames.is_empty() || q.closing {
            self.has_work.notify_one(); // the sender waited for us
        }
        match sent {
            Ok(n) if n == bytes.len() => {
                self.frames_sent.fetch_add(count as u64, Ordering::Relaxed);
                self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(n) => {
                // Counted now but the last, which the sender counts once it sent the rest.
                self.frames_sent
                    .fetch_add(count as u64 - 1, Ordering::Relaxed);
                self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                q.rest = bytes.split_off(n);
                q.bytes += q.rest.len();
                self.has_work.notify_one();
            }
            Err(e) => {
                drop(q);
                self.fail(&format!("send failed: {e}"));
            }
        }
    }

    fn ack_loop(&self, stream: TcpStream) {
        let mut r = BufReader::with_capacity(64 << 10, stream);
        loop {
            let why = match wire::read_message(&mut r, &self.keys.ack) {
                Ok(Message::Reply {
                    seq,
                    reply: Reply::Halted { message, .. },
                }) => format!("the secondary stopped at seq {seq}: {message}"),
                Ok(Message::Reply { seq, reply }) => {
                    lock(&self.link).answered = Instant::now();
                    self.replies.deliver(seq, reply);
                    continue;
                }
                Ok(Message::Ack(ack)) => {
                    let mut link = lock(&self.link);
                    match ack.kind {
                        AckKind::Hello => {}
                        AckKind::Received => link.acked = link.acked.max(ack.seq),
                        AckKind::Flushed => {
                            if ack.seq > link.flushed {
                                link.answered = Instant::now();
                            }
                            link.flushed = link.flushed.max(ack.seq);
                            link.acked = link.acked.max(ack.seq);
                        }
                    }
                    self.link_changed.notify_all();
                    if ack.kind == AckKind::Flushed {
                        let flushed = link.flushed;
                        drop(link);
                        self.confirm(flushed);
                    }
                    continue;
                }
                Err(MirrorError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the secondary closed the connection".into()
                }
                Err(MirrorError::Io(e)) => format!("ack stream: {e}"),
                Err(e) => format!("bad ack: {e}"),
            };
            self.fail(&why);
            return;
        }
    }

    /// Stall protection of `barrier` and `take`: no progress for `send_timeout` while `what`
    /// was awaited. Declares the link down (waking every waiter); the stalled waiter's error.
    fn stalled(&self, what: &str) -> MirrorError {
        let why = format!("{what}: no progress for {:?}", self.send_timeout);
        self.fail(&why);
        MirrorError::Timeout(why)
    }

    /// Declares the link down (first reason wins) and wakes every waiter.
    fn fail(&self, why: &str) {
        if self.connected.swap(false, Ordering::SeqCst) {
            lock(&self.link).error = Some(why.to_owned());
            if let Some(stream) = &self.stream {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        let dropped: Vec<Vec<u8>> = {
            let mut q = lock(&self.queue);
            q.bytes = 0;
            q.rest.clear();
            q.frames.drain(..).collect()
        };
        for frame in &dropped {
            let seq = wire::le_u64(&frame[4..12]);
            self.on_unsent(seq, &Unsent::Frame(frame));
        }
        self.has_space.notify_all();
        self.has_work.notify_all();
        let why = {
            let link = lock(&self.link);
            self.link_changed.notify_all();
            link.error.clone().unwrap_or_else(|| why.to_owned())
        };
        self.replies.fail(&why);
    }
}

/// The modification time of the file open on `fd`, in ns since the epoch (one `fstat`).
fn mtime_ns(fd: RawFd) -> Option<i64> {
    // SAFETY: a zeroed stat is a valid out-buffer; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &raw mut st) } != 0 {
        return None;
    }
    // Beyond the year 2262 there is no ns count: the secondary keeps its own clock.
    st.st_mtime
        .checked_mul(1_000_000_000)?
        .checked_add(st.st_mtime_nsec)
}

/// Rewrites the seq of a frame encoded with seq 0.
fn restamp(mut frame: Vec<u8>, seq: u64) -> Vec<u8> {
    frame[4..12].copy_from_slice(&seq.to_le_bytes());
    frame
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

mod dial;
#[cfg(test)]
mod tests;
