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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The bounded, ordered queue between the session reader and the applier.
pub struct Cache {
    state: Mutex<State>,
    work: Condvar,
    space: Condvar,
    progress: Condvar,
    capacity: usize,
    copy_id: AtomicU64,
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
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            progress: Condvar::new(),
            capacity,
            copy_id: AtomicU64::new(copy_id),
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
    /// Returns `false` when the cache is closing (the operation is dropped).
    pub fn push(&self, seq: u64, op: Op, size: usize) -> bool {
        let mut s = self.lock();
        while s.stats.bytes > 0 && s.stats.bytes + size as u64 > self.capacity as u64 && !s.closing
        {
            s = self
                .space
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if s.closing {
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

    /// Waits until everything received is applied and flushed; returns the
    /// last applied sequence number. `None` waits as long as it takes.
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
            if s.ops.is_empty() && st.applied >= st.received && st.flushed >= st.applied {
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
    /// applies what is left, flushes and returns.
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
            let mut size = 0;
            let mut last = None;
            for entry in batch {
                size += entry.size;
                last = Some(entry.seq);
                if entry.op == Op::Barrier && self.lock().mode == Mode::None {
                    self.mark_applied(entry.seq, 0);
                    self.flush(&applier, entry.seq);
                    dirty_since = None;
                    continue;
                }
                if entry.op.is_request() {
                    if entry.op == Op::RequestNeeds {
                        applier.seed_needs(self.hand_seeds());
                    }
                    let reply = applier.answer(&entry.op);
                    let mut s = self.lock();
                    if let Reply::Failed { message, .. } = &reply {
                        s.stats.last_error =
                            Some(format!("answering seq {}: {message}", entry.seq));
                    }
                    if let Some(sink) = s.sink.clone() {
                        drop(s);
                        sink.reply(entry.seq, &reply);
                    }
                    continue;
                }
                if let Err(e) = applier.apply(&entry.op) {
                    let mut s = self.lock();
                    s.stats.apply_errors += 1;
                    s.stats.last_error =
                        Some(format!("applying seq {} ({}): {e}", entry.seq, entry.op));
                } else if let Op::Mark { tag } = entry.op {
                    let mut s = self.lock();
                    s.stats.mark = tag;
                    s.handed.clear(); // the resync that got them completed
                    drop(s);
                    self.set_copy_id(tag);
                } else if entry.op == Op::Reset {
                    let mut s = self.lock();
                    s.seeds.clear();
                    s.handed.clear();
                    drop(s);
                    self.set_copy_id(0);
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            if let Some(seq) = last {
                self.mark_applied(seq, size);
            }
            let due = dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
            if flush_now || due || stop {
                let upto = self.lock().stats.applied;
                self.flush(&applier, upto);
                dirty_since = None;
            }
            if stop {
                return;
            }
        }
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

    fn flush(&self, applier: &Applier, upto: u64) {
        let result = applier.sync();
        let mut s = self.lock();
        match result {
            Ok(()) => {
                s.stats.flushed = s.stats.flushed.max(upto);
                if let Some(sink) = &s.sink {
                    sink.send(Ack {
                        kind: AckKind::Flushed,
                        seq: s.stats.flushed,
                    });
                }
            }
            Err(e) => s.stats.last_error = Some(format!("syncfs: {e}")),
        }
        self.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Recorder(AtomicU64);

    impl AckSink for Recorder {
        fn send(&self, ack: Ack) {
            assert_eq!(ack.kind, AckKind::Flushed);
            self.0.fetch_max(ack.seq, Ordering::SeqCst);
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
}
