//! The secondary's semi-sync cache: received operations wait in memory,
//! an applier thread applies them in order and flushes them to disk.
//!
//! The cache is bounded by bytes: when it is full, [`Cache::push`] blocks, so
//! the session stops reading its socket and TCP pushes back on the primary.
//! The applier flushes (`syncfs` of the root) at least every
//! [`FLUSH_EVERY`] when it applied something, at every barrier in mode
//! `none`, and when [`Cache::drain`] asks; each flush is reported to the
//! primary as an [`AckKind::Flushed`] ack.
//!
//! Every ack comes from the applier, never ahead of it: in mode `second` a
//! barrier is acknowledged ([`AckKind::Received`]) once the applier reached it,
//! every operation before it applied (in the page cache: a crash of the
//! receiver process loses none of them), in mode `none` once flushed.
//!
//! Requests (`RequestSums`, …) are answered by the applier when it reaches
//! them, so a reply reflects every earlier operation and no later one, in
//! either mode. The applier also keeps the copy id: an applied
//! [`Op::Mark`] makes its tag the copy id, an [`Op::Reset`] makes it 0.
//!
//! Seeded needs ([`Cache::seed_needs`]): paths this node changed itself while
//! it was primary. The applier hands them, merged into its needs list, to the
//! next `RequestNeeds`. Handed-out seeds are kept aside until a `Mark` is
//! applied in the same session (the primary's resync completed); should the
//! session end first, they are seeded again for the next primary, whose
//! resync must cover them too. An applied `Reset` forgets them (a full copy
//! follows).
//!
//! Failures: the primary forwards only what succeeded locally, so an
//! operation that fails here (ENOSPC, EIO, EROFS, a copy changed behind our
//! back…) leaves the copy no longer the primary's, except for the few results
//! [`crate::apply::tolerated`] accepts (counted, then applying goes on). At any
//! other failure the session **halts**: nothing from the failed operation on is
//! applied (the queue is dropped, requests go unanswered), the operations
//! before it are flushed and acknowledged as flushed, no ack ever covers the
//! failed one, the primary is told ([`Reply::Halted`], with the message) and
//! the session is hung up. The primary's tracking keeps every unconfirmed
//! operation, so its next resync covers them; in addition the failed
//! operation's paths are seeded as needs, so any resync mode compares them
//! whole. The copy id is kept (the copy is that copy plus a prefix of later
//! operations, one of them half applied, which those seeds name) — except when
//! a `Reset` failed or a flush (`syncfs`) failed (what is on disk is unknown):
//! then it becomes 0 and the next resync is full. [`Cache::failure`] keeps the
//! message until a `Mark` is applied once every seed was handed out (a later
//! resync completed: the copy is consistent again).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::apply::Applier;
use crate::auth::Mode;
use crate::error::{MirrorError, Result};
use crate::wire::{Ack, AckKind, Op, Reply};

/// The longest the applier keeps applied operations unflushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Operations the applier takes from the queue at once.
const BATCH: usize = 256;

/// Where the applier sends its acks (the current session's socket).
pub trait AckSink: Send + Sync {
    /// Sends one ack; failures are the session reader's business, not ours.
    fn send(&self, ack: Ack);
    /// Sends the reply to request `seq`, likewise.
    fn reply(&self, seq: u64, reply: &Reply);
    /// The session halted at operation `seq`: sends `reply` (a
    /// [`Reply::Halted`]) and ends the session.
    fn hang_up(&self, seq: u64, reply: &Reply) {
        self.reply(seq, reply);
    }
}

/// Counters of the cache, for `Receiver.stats()`.
#[derive(Debug, Clone, Default)]
pub struct CacheStats {
    /// Last sequence number received into the cache.
    pub received: u64,
    /// Last sequence number applied.
    pub applied: u64,
    /// Last sequence number flushed to disk.
    pub flushed: u64,
    /// Bytes waiting in the cache.
    pub bytes: u64,
    /// Operations that failed to apply.
    pub apply_errors: u64,
    /// The tag of the latest [`Op::Mark`] applied.
    pub mark: u64,
    /// The latest apply or flush failure.
    pub last_error: Option<String>,
}

/// What the applier does after an operation.
enum Outcome {
    /// Applied (or a tolerated failure): go on.
    Done,
    /// The session halts (see the module docs).
    Halt,
}

/// The bounded, ordered queue between the session reader and the applier.
pub struct Cache {
    state: Mutex<State>,
    work: Condvar,
    space: Condvar,
    progress: Condvar,
    capacity: usize,
    copy_id: AtomicU64,
    /// This session halted: the session reader sends no more acks.
    halted: AtomicBool,
}

struct Entry {
    seq: u64,
    op: Op,
    size: usize,
}

struct State {
    ops: VecDeque<Entry>,
    stats: CacheStats,
    mode: Mode,
    sink: Option<Arc<dyn AckSink>>,
    flush_wanted: bool,
    closing: bool,
    /// Counts sessions: the applier forgets its needs list when it changes.
    session: u64,
    /// Seeded needs not handed out yet.
    seeds: Vec<Vec<u8>>,
    /// Seeded needs handed out in this session, until a mark says they were resynced.
    handed: Vec<Vec<u8>>,
    /// The applier is done with this halted session: queue dropped, peer told.
    settled: bool,
    /// The failure that left the copy inconsistent, until a resync's mark.
    failure: Option<String>,
    /// What to tell the primary when the applier settles a halted session.
    halt_reply: Option<(u64, Reply)>,
}

impl Cache {
    /// A cache holding at most `capacity` bytes of operations (one larger
    /// operation is always let in when the cache is empty).
    pub fn new(capacity: usize, copy_id: u64) -> Arc<Cache> {
        Arc::new(Cache {
            state: Mutex::new(State {
                ops: VecDeque::new(),
                stats: CacheStats::default(),
                mode: Mode::Second,
                sink: None,
                flush_wanted: false,
                closing: false,
                session: 0,
                seeds: Vec::new(),
                handed: Vec::new(),
                settled: false,
                failure: None,
                halt_reply: None,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            progress: Condvar::new(),
            capacity,
            copy_id: AtomicU64::new(copy_id),
            halted: AtomicBool::new(false),
        })
    }

    /// The copy id of the copy held (see the module docs).
    pub fn copy_id(&self) -> u64 {
        self.copy_id.load(Ordering::SeqCst)
    }

    /// Sets the copy id (the secondary's daemon, from its durable state).
    pub fn set_copy_id(&self, id: u64) {
        self.copy_id.store(id, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a new session: sequence numbers restart, acks go to `sink`.
    /// Call only once everything of the previous session is drained.
    pub fn start_session(&self, mode: Mode, sink: Arc<dyn AckSink>) {
        let mut s = self.lock();
        s.mode = mode;
        s.sink = Some(sink);
        s.stats.received = 0;
        s.stats.applied = 0;
        s.stats.flushed = 0;
        // Marks are per session: a new primary's copy is complete only once it says so.
        s.stats.mark = 0;
        s.session += 1;
        // Handed to a primary whose resync did not complete: the next one must cover them.
        let handed = std::mem::take(&mut s.handed);
        s.seeds.extend(handed);
        s.settled = false;
        s.halt_reply = None;
        self.halted.store(false, Ordering::SeqCst);
    }

    /// Whether this session halted at a failure (see the module docs).
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// The failure that left the copy inconsistent, until a later resync's mark.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Adds paths to the needs list the next `RequestNeeds` hands back, as
    /// changed (not created); kept across sessions until handed out (see the
    /// module docs). The caller validates them.
    pub fn seed_needs(&self, paths: Vec<Vec<u8>>) {
        self.lock().seeds.extend(paths);
    }

    /// Seeded needs not handed out yet, and handed out but not yet resynced.
    pub fn seeded(&self) -> (usize, usize) {
        let s = self.lock();
        (s.seeds.len(), s.handed.len())
    }

    /// The seeds for the `RequestNeeds` being answered (kept aside until a mark).
    fn hand_seeds(&self) -> Vec<Vec<u8>> {
        let mut s = self.lock();
        let seeds = std::mem::take(&mut s.seeds);
        s.handed.extend(seeds.iter().cloned());
        seeds
    }

    /// Queues a verified operation; blocks while the cache is full.
    /// Returns `false` when the cache is closing or the session halted (the
    /// operation is dropped: the session must end).
    pub fn push(&self, seq: u64, op: Op, size: usize) -> bool {
        let mut s = self.lock();
        while s.stats.bytes > 0
            && s.stats.bytes + size as u64 > self.capacity as u64
            && !s.closing
            && !self.halted()
        {
            s = self
                .space
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if s.closing || self.halted() {
            return false;
        }
        s.stats.received = seq;
        s.stats.bytes += size as u64;
        s.ops.push_back(Entry { seq, op, size });
        self.work.notify_one();
        true
    }

    /// The current counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats.clone()
    }

    /// Waits until everything received is applied and flushed (or, in a
    /// halted session, until the applier is done with it); returns the last
    /// applied sequence number. `None` waits as long as it takes.
    ///
    /// # Errors
    /// [`MirrorError::Timeout`] when `timeout` passes first.
    pub fn drain(&self, timeout: Option<Duration>) -> Result<u64> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        s.flush_wanted = true;
        self.work.notify_one();
        loop {
            let st = &s.stats;
            let done = s.ops.is_empty() && st.applied >= st.received && st.flushed >= st.applied;
            if done || s.settled {
                return Ok(st.applied);
            }
            let wait = match deadline {
                None => Duration::from_secs(1),
                Some(d) => d.checked_duration_since(Instant::now()).ok_or_else(|| {
                    MirrorError::Timeout(format!(
                        "drain: applied {} and flushed {} of {} received",
                        st.applied, st.flushed, st.received
                    ))
                })?,
            };
            s = self
                .progress
                .wait_timeout(s, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            if !s.flush_wanted && s.stats.flushed < s.stats.applied {
                s.flush_wanted = true;
                self.work.notify_one();
            }
        }
    }

    /// Makes the applier finish what is queued, flush and stop; unblocks pushers.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        self.work.notify_all();
        self.space.notify_all();
    }

    /// The applier thread: applies in order until [`Cache::close`], then
    /// applies what is left, flushes and returns. Halts a session at a
    /// failure (see the module docs).
    pub fn run_applier(&self, mut applier: Applier) {
        let mut dirty_since: Option<Instant> = None;
        let mut session = 0;
        loop {
            let (batch, flush_now, stop) = self.next_batch(dirty_since);
            let now = self.lock().session;
            if now != session {
                // What a previous primary's `ensure`s found is not this one's business.
                applier.clear_needs();
                session = now;
            }
            let size = batch.iter().map(|e| e.size).sum();
            // One flush for all the barriers of a batch: the last one's covers the others.
            let last_barrier = batch.iter().rposition(|e| e.op == Op::Barrier);
            let mut good = None;
            let mut halt = None;
            for (i, entry) in batch.into_iter().enumerate() {
                if halt.is_some() {
                    continue; // dropped: nothing after a failure is applied
                }
                if entry.op == Op::Barrier && Some(i) != last_barrier {
                    good = Some(entry.seq);
                    continue;
                }
                match self.apply_one(&mut applier, &entry, &mut dirty_since) {
                    Outcome::Done => good = Some(entry.seq),
                    Outcome::Halt => halt = Some(entry.seq),
                }
            }
            self.mark_applied(good.unwrap_or(0), size);
            if let Some(seq) = halt {
                self.settle(&mut applier, seq);
                dirty_since = None;
                continue;
            }
            let due = dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
            if flush_now || due || stop {
                let upto = self.lock().stats.applied;
                if !self.flush(&mut applier, upto) {
                    self.settle(&mut applier, upto + 1);
                }
                dirty_since = None;
            }
            if stop {
                return;
            }
        }
    }

    /// Applies (or answers) one operation.
    fn apply_one(
        &self,
        applier: &mut Applier,
        entry: &Entry,
        dirty_since: &mut Option<Instant>,
    ) -> Outcome {
        if entry.op == Op::Barrier {
            let s = self.lock();
            if s.mode == Mode::Second {
                if let Some(sink) = s.sink.clone() {
                    drop(s);
                    sink.send(Ack {
                        kind: AckKind::Received,
                        seq: entry.seq,
                    });
                }
                return Outcome::Done;
            }
            drop(s);
            self.mark_applied(entry.seq, 0);
            *dirty_since = None;
            return if self.flush(applier, entry.seq) {
                Outcome::Done
            } else {
                Outcome::Halt
            };
        }
        if entry.op.is_request() {
            if entry.op == Op::RequestNeeds {
                applier.seed_needs(self.hand_seeds());
            }
            let reply = applier.answer(&entry.op);
            let mut s = self.lock();
            if let Reply::Failed { message, .. } = &reply {
                s.stats.last_error = Some(format!("answering seq {}: {message}", entry.seq));
            }
            if let Some(sink) = s.sink.clone() {
                drop(s);
                sink.reply(entry.seq, &reply);
            }
            return Outcome::Done;
        }
        dirty_since.get_or_insert_with(Instant::now);
        match applier.apply(&entry.op) {
            Err(e) if crate::apply::tolerated(&entry.op, &e) => {
                let mut s = self.lock();
                s.stats.apply_errors += 1;
                s.stats.last_error = Some(format!(
                    "applying seq {} ({}): {e} (tolerated: the result is the primary's)",
                    entry.seq, entry.op
                ));
                Outcome::Done
            }
            Err(e) => {
                let message = crate::apply::explain(entry.seq, &entry.op, &e, applier.dir());
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.halt(entry.seq, errno, message, crate::apply::damaged(&entry.op));
                Outcome::Halt
            }
            Ok(()) => {
                if let Op::Mark { tag } = entry.op {
                    let mut s = self.lock();
                    s.stats.mark = tag;
                    s.handed.clear(); // the resync that got them completed
                    if s.seeds.is_empty() {
                        s.failure = None; // and repaired what a failure left
                    }
                    drop(s);
                    self.set_copy_id(tag);
                } else if entry.op == Op::Reset {
                    let mut s = self.lock();
                    s.seeds.clear();
                    s.handed.clear();
                    drop(s);
                    self.set_copy_id(0);
                }
                Outcome::Done
            }
        }
    }

    /// Halts the session at operation `seq`: records the failure, drops the
    /// queue, seeds `damaged` (`None`: the copy id becomes 0). The first
    /// failure of a session is the one reported; a later one (a flush) can
    /// only make the copy id 0.
    fn halt(&self, seq: u64, errno: i32, message: String, damaged: Option<Vec<Vec<u8>>>) {
        let mut s = self.lock();
        if damaged.is_none() {
            s.seeds.clear();
            s.handed.clear();
            self.set_copy_id(0);
        }
        if self.halted.swap(true, Ordering::SeqCst) {
            return;
        }
        s.stats.apply_errors += 1;
        s.stats.last_error = Some(message.clone());
        s.failure = Some(message.clone());
        if let Some(paths) = damaged {
            s.seeds.extend(paths);
        }
        let dropped: usize = s.ops.drain(..).map(|e| e.size).sum();
        s.stats.bytes -= dropped as u64;
        s.halt_reply = Some((seq, Reply::Halted { errno, message }));
        self.space.notify_all();
        self.progress.notify_all();
    }

    /// Ends a halted session: flushes what was applied before the failure
    /// (acked as flushed), tells the primary and hangs up.
    fn settle(&self, applier: &mut Applier, seq: u64) {
        if !self.halted() {
            // A flush failed outside any operation: that is a halt too.
            self.halt(seq, libc::EIO, "flush failed".into(), None);
        }
        let upto = self.lock().stats.applied;
        self.flush(applier, upto);
        let mut s = self.lock();
        if let (Some((seq, reply)), Some(sink)) = (s.halt_reply.take(), s.sink.clone()) {
            drop(s);
            sink.hang_up(seq, &reply);
            s = self.lock();
        }
        s.settled = true;
        self.progress.notify_all();
    }

    /// Waits for work; returns the next batch, whether to flush after it,
    /// and whether the applier should stop after it.
    fn next_batch(&self, dirty_since: Option<Instant>) -> (Vec<Entry>, bool, bool) {
        let mut s = self.lock();
        loop {
            if !s.ops.is_empty() {
                let n = s.ops.len().min(BATCH);
                return (s.ops.drain(..n).collect(), false, false);
            }
            if s.closing {
                return (Vec::new(), true, true);
            }
            let unflushed = s.stats.flushed < s.stats.applied;
            if s.flush_wanted {
                s.flush_wanted = false;
                if unflushed {
                    return (Vec::new(), true, false);
                }
                self.progress.notify_all();
            }
            let wait = match dirty_since {
                Some(t) if unflushed => match FLUSH_EVERY.checked_sub(t.elapsed()) {
                    Some(left) => left,
                    None => return (Vec::new(), true, false),
                },
                _ => Duration::from_secs(1),
            };
            s = self
                .work
                .wait_timeout(s, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn mark_applied(&self, seq: u64, size: usize) {
        let mut s = self.lock();
        s.stats.applied = s.stats.applied.max(seq);
        s.stats.bytes -= size as u64;
        self.space.notify_all();
        self.progress.notify_all();
    }

    /// Flushes to disk and acks up to `upto`; `false` when the flush failed
    /// (the session is then halted, the copy id 0: what is on disk is unknown).
    fn flush(&self, applier: &mut Applier, upto: u64) -> bool {
        let result = applier.sync();
        let mut s = self.lock();
        let ok = match result {
            Ok(()) => {
                s.stats.flushed = s.stats.flushed.max(upto);
                if let Some(sink) = &s.sink {
                    sink.send(Ack {
                        kind: AckKind::Flushed,
                        seq: s.stats.flushed,
                    });
                }
                true
            }
            Err(e) => {
                let message = crate::apply::explain_flush(&e, applier.dir());
                let (seq, errno) = (s.stats.flushed + 1, e.raw_os_error().unwrap_or(libc::EIO));
                drop(s);
                self.halt(seq, errno, message, None);
                s = self.lock();
                false
            }
        };
        self.progress.notify_all();
        drop(s);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Recorder(AtomicU64);

    impl AckSink for Recorder {
        fn send(&self, ack: Ack) {
            if ack.kind == AckKind::Flushed {
                self.0.fetch_max(ack.seq, Ordering::SeqCst);
            }
        }
        fn reply(&self, _seq: u64, _reply: &Reply) {}
    }

    fn start(
        name: &str,
        capacity: usize,
        mode: Mode,
    ) -> (std::path::PathBuf, Arc<Cache>, Arc<Recorder>) {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Cache::new(capacity, 0);
        let recorder = Arc::new(Recorder(AtomicU64::new(0)));
        cache.start_session(mode, recorder.clone());
        let applier = Applier::new(&dir).unwrap();
        let c = cache.clone();
        std::thread::spawn(move || c.run_applier(applier));
        (dir, cache, recorder)
    }

    fn create(path: &str) -> Op {
        Op::Create {
            path: path.into(),
            mode: 0o644,
            uid: u32::MAX,
            gid: u32::MAX,
        }
    }

    #[test]
    fn applies_in_order_and_flushes_on_drain() {
        let (dir, cache, acks) = start("order", 1 << 20, Mode::Second);
        assert!(cache.push(1, create("f"), 10));
        for i in 0..100u64 {
            let op = Op::Write {
                path: b"f".to_vec(),
                offset: i,
                mtime_ns: None,
                data: vec![b'a' + (i % 26) as u8],
            };
            assert!(cache.push(i + 2, op, 100));
        }
        assert_eq!(cache.drain(Some(Duration::from_secs(10))).unwrap(), 101);
        assert_eq!(acks.0.load(Ordering::SeqCst), 101);
        let expected: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), expected);
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_barrier_in_mode_none_is_flushed_and_acked() {
        let (dir, cache, acks) = start("barrier", 1 << 20, Mode::None);
        assert!(cache.push(1, create("g"), 10));
        assert!(cache.push(2, Op::Barrier, 10));
        let deadline = Instant::now() + Duration::from_secs(10);
        while acks.0.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "no flushed ack for the barrier");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(dir.join("g").exists());
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Keeps the replies the applier sends.
    #[derive(Default)]
    struct Answers(Mutex<Vec<(u64, Reply)>>);

    impl AckSink for Answers {
        fn send(&self, _ack: Ack) {}
        fn reply(&self, seq: u64, reply: &Reply) {
            self.0.lock().unwrap().push((seq, reply.clone()));
        }
    }

    fn needs_of(cache: &Cache, answers: &Answers, seq: u64) -> Vec<(bool, Vec<u8>)> {
        assert!(cache.push(seq, Op::RequestNeeds, 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        match answers.0.lock().unwrap().pop() {
            Some((s, Reply::Needs(n))) if s == seq => n,
            other => panic!("{other:?}"),
        }
    }

    fn changed(paths: &[&str]) -> Vec<(bool, Vec<u8>)> {
        paths
            .iter()
            .map(|p| (false, p.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn seeds_wait_for_a_request_and_come_back_until_a_mark_says_they_were_resynced() {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-cache-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Cache::new(1 << 20, 0);
        // Before any session, kept through a session that asks nothing.
        cache.seed_needs(vec![b"a".to_vec(), b"b".to_vec()]);
        let applier = Applier::new(&dir).unwrap();
        let c = cache.clone();
        std::thread::spawn(move || c.run_applier(applier));
        let answers = Arc::new(Answers::default());
        cache.start_session(Mode::Second, answers.clone());
        assert!(cache.push(1, create("f"), 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        cache.start_session(Mode::None, answers.clone());
        assert_eq!(cache.seeded(), (2, 0));
        // During a session too.
        cache.seed_needs(vec![b"c".to_vec(), b"a".to_vec()]);
        assert_eq!(needs_of(&cache, &answers, 1), changed(&["a", "b", "c"]));
        assert_eq!(cache.seeded(), (0, 4));
        assert_eq!(needs_of(&cache, &answers, 2), []);
        // That session ends before its mark: the next primary gets them.
        cache.start_session(Mode::Second, answers.clone());
        assert_eq!(needs_of(&cache, &answers, 1), changed(&["a", "b", "c"]));
        assert!(cache.push(2, Op::Mark { tag: 5 }, 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(cache.seeded(), (0, 0));
        cache.start_session(Mode::Second, answers.clone());
        assert_eq!(needs_of(&cache, &answers, 1), []);
        // A reset forgets them: a full copy follows.
        cache.seed_needs(vec![b"d".to_vec()]);
        assert!(cache.push(2, Op::Reset, 10));
        assert_eq!(needs_of(&cache, &answers, 3), []);
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_cache_blocks_the_pusher_until_applied() {
        let (dir, cache, _) = start("full", 100, Mode::Second);
        assert!(cache.push(1, create("h"), 60));
        // Does not fit beside the first, but the applier makes room.
        assert!(cache.push(2, create("i"), 60));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        assert!(dir.join("i").exists());
        cache.close();
        assert!(!cache.push(3, create("j"), 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Keeps the flushed acks, the replies and the hang-up of a session.
    #[derive(Default)]
    struct Tap {
        flushed: AtomicU64,
        received: AtomicU64,
        replies: Mutex<Vec<(u64, Reply)>>,
        hung_up: Mutex<Option<(u64, Reply)>>,
    }

    impl AckSink for Tap {
        fn send(&self, ack: Ack) {
            if ack.kind == AckKind::Flushed {
                self.flushed.fetch_max(ack.seq, Ordering::SeqCst);
            } else {
                self.received.fetch_max(ack.seq, Ordering::SeqCst);
            }
        }
        fn reply(&self, seq: u64, reply: &Reply) {
            self.replies.lock().unwrap().push((seq, reply.clone()));
        }
        fn hang_up(&self, seq: u64, reply: &Reply) {
            *self.hung_up.lock().unwrap() = Some((seq, reply.clone()));
        }
    }

    fn tapped(name: &str, mode: Mode, copy_id: u64) -> (std::path::PathBuf, Arc<Cache>, Arc<Tap>) {
        let dir =
            std::env::temp_dir().join(format!("mirrorcore-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Cache::new(1 << 20, copy_id);
        let tap = Arc::new(Tap::default());
        cache.start_session(mode, tap.clone());
        let applier = Applier::new(&dir).unwrap();
        let c = cache.clone();
        std::thread::spawn(move || c.run_applier(applier));
        (dir, cache, tap)
    }

    /// A file where a directory is expected: creating beneath it fails (ENOTDIR).
    fn doomed() -> Op {
        create("plain/x")
    }

    #[test]
    fn a_failure_halts_the_session_before_the_failed_op_in_both_modes() {
        for (name, mode) in [("halt-second", Mode::Second), ("halt-none", Mode::None)] {
            let (dir, cache, tap) = tapped(name, mode, 42);
            assert!(cache.push(1, create("plain"), 10));
            assert!(cache.push(2, create("before"), 10));
            assert!(cache.push(3, doomed(), 10));
            assert!(cache.push(4, create("after"), 10));
            assert!(cache.push(5, Op::RequestNeeds, 10));
            assert!(cache.push(6, Op::Mark { tag: 7 }, 10));
            assert!(cache.push(7, Op::Barrier, 10));
            assert_eq!(cache.drain(Some(Duration::from_secs(10))).unwrap(), 2);
            // Everything before is on disk and acked as such; nothing from the failure on.
            assert_eq!(tap.flushed.load(Ordering::SeqCst), 2);
            assert_eq!(
                tap.received.load(Ordering::SeqCst),
                0,
                "the barrier was acked"
            );
            assert!(dir.join("before").exists() && !dir.join("after").exists());
            assert!(
                tap.replies.lock().unwrap().is_empty(),
                "a request was answered"
            );
            let (seq, reply) = tap.hung_up.lock().unwrap().clone().expect("no hang-up");
            assert_eq!(seq, 3);
            let Reply::Halted { errno, message } = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(errno, libc::ENOTDIR);
            for part in ["seq 3", "create plain/x", "ENOTDIR", "repairs plain/x"] {
                assert!(message.contains(part), "{part:?} not in {message:?}");
            }
            assert!(cache.halted());
            assert_eq!(cache.failure(), Some(message));
            assert_eq!(cache.stats().apply_errors, 1);
            // The copy id stays (no mark applied after the failure); the path is seeded.
            assert_eq!(cache.copy_id(), 42);
            assert_eq!(cache.seeded(), (1, 0));
            // A halted session takes nothing more.
            assert!(!cache.push(8, create("later"), 10));
            cache.close();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn the_next_session_gets_the_failed_path_and_its_mark_ends_the_failure() {
        let (dir, cache, _) = tapped("halt-next", Mode::Second, 42);
        assert!(cache.push(1, create("plain"), 10));
        assert!(cache.push(2, doomed(), 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        assert!(cache.failure().is_some());
        let tap = Arc::new(Tap::default());
        cache.start_session(Mode::Second, tap.clone());
        assert!(!cache.halted());
        assert!(cache.push(1, Op::RequestNeeds, 10));
        assert!(cache.push(2, create("fine"), 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        let needs = tap.replies.lock().unwrap().pop();
        assert!(
            matches!(&needs, Some((1, Reply::Needs(n))) if *n == changed(&["plain/x"])),
            "{needs:?}"
        );
        assert!(cache.failure().is_some(), "no mark yet");
        assert!(cache.push(3, Op::Mark { tag: 9 }, 10));
        cache.drain(Some(Duration::from_secs(10))).unwrap();
        assert_eq!((cache.failure(), cache.copy_id()), (None, 9));
        assert_eq!(tap.flushed.load(Ordering::SeqCst), 3);
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tolerated_failure_does_not_halt() {
        let (dir, cache, tap) = tapped("tolerated", Mode::Second, 5);
        assert!(cache.push(
            1,
            Op::Unlink {
                path: b"gone".to_vec()
            },
            10
        ));
        assert!(cache.push(2, create("f"), 10));
        assert_eq!(cache.drain(Some(Duration::from_secs(10))).unwrap(), 2);
        assert_eq!(tap.flushed.load(Ordering::SeqCst), 2);
        assert!(!cache.halted() && cache.failure().is_none());
        assert_eq!(cache.stats().apply_errors, 1);
        assert!(cache.stats().last_error.unwrap().contains("tolerated"));
        assert!(tap.hung_up.lock().unwrap().is_none());
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_that_leaves_the_whole_copy_in_doubt_asks_for_a_full_copy() {
        let (dir, cache, _) = tapped("doubt", Mode::Second, 5);
        cache.seed_needs(vec![b"x".to_vec()]);
        cache.halt(1, libc::EIO, "syncfs failed".into(), None);
        assert_eq!((cache.copy_id(), cache.seeded()), (0, (0, 0)));
        assert!(cache.halted());
        cache.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
