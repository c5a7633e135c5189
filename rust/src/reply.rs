//! The primary's side of requests with a reply (`request_sums`, `request_needs`,
//! `request_list`): the table of replies awaited and received, and the waits.
//!
//! A request is an ordinary operation of the stream, numbered and queued in
//! order; the secondary answers it on the ack channel once every earlier
//! operation is applied. The ack reader [`Replies::deliver`]s each reply into
//! the table, where [`Forwarder::take`] finds it by seq. When the link goes
//! down every waiter wakes and gets [`MirrorError::Disconnected`] (a reply
//! that arrived before still counts); a tracker has no link and fails at once.
//! A waiter also watches the secondary's applier: no flush and no reply for
//! the forwarder's `send_timeout` declares the link down, as a barrier does.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{MirrorError, Result};
use crate::forward::Forwarder;
use crate::wire::{Op, Reply};

/// Replies awaited and received, by request seq.
pub struct Replies {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    ready: HashMap<u64, Reply>,
    waiting: HashSet<u64>,
    down: Option<String>,
}

impl Replies {
    /// An empty table; `down` is why no reply can ever come (a tracker), if so.
    pub fn new(down: Option<String>) -> Replies {
        Replies {
            state: Mutex::new(State {
                ready: HashMap::new(),
                waiting: HashSet::new(),
                down,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Request `seq` was queued: its reply is awaited.
    pub fn expect(&self, seq: u64) {
        self.lock().waiting.insert(seq);
    }

    /// The ack reader received the reply to `seq`.
    pub fn deliver(&self, seq: u64, reply: Reply) {
        let mut s = self.lock();
        // A reply may beat `expect` (called once `submit` returned): keep it either way.
        s.ready.insert(seq, reply);
        self.changed.notify_all();
    }

    /// The link is down: no further reply will come.
    pub fn fail(&self, why: &str) {
        let mut s = self.lock();
        s.down.get_or_insert_with(|| why.to_owned());
        self.changed.notify_all();
    }

    /// Waits for the reply to request `seq` (the reply is taken: once only).
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] for a seq that is not an awaited request;
    /// [`MirrorError::Disconnected`] when the link is down and the reply did not
    /// come; [`MirrorError::Timeout`] after `timeout` (the request stays awaited).
    pub fn take(&self, seq: u64, timeout: Option<Duration>) -> Result<Reply> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        loop {
            if let Some(reply) = s.ready.remove(&seq) {
                s.waiting.remove(&seq);
                return Ok(reply);
            }
            if !s.waiting.contains(&seq) {
                return Err(MirrorError::InvalidArgument(format!(
                    "seq {seq} is not a request awaiting its reply"
                )));
            }
            if let Some(why) = &s.down {
                let err = MirrorError::Disconnected(why.clone());
                s.waiting.remove(&seq);
                return Err(err);
            }
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => d.checked_duration_since(Instant::now()).ok_or_else(|| {
                    MirrorError::Timeout(format!("no reply to request {seq} yet"))
                })?,
            };
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Forwarder {
    /// Queues a request (an op that [`Op::is_request`]) and returns its seq,
    /// to [`Forwarder::take`] the reply with.
    ///
    /// # Errors
    /// As [`Forwarder::forward`].
    pub fn request(&self, op: &Op) -> Result<u64> {
        if !op.is_request() {
            return Err(MirrorError::InvalidArgument(format!(
                "{op} is not a request"
            )));
        }
        let seq = self.forward(op)?;
        self.replies().expect(seq);
        Ok(seq)
    }

    /// Waits for the reply to request `seq` (see [`Replies::take`]), with a
    /// barrier's stall protection: when the secondary's applier shows no
    /// progress (no flush, no reply) for `send_timeout`, the link is declared
    /// down and every waiter gets [`MirrorError::Disconnected`].
    ///
    /// # Errors
    /// As [`Replies::take`]; a [`Reply::Failed`] becomes the secondary's I/O
    /// error, errno kept (its message is in the secondary's `last_error`).
    pub fn take(&self, seq: u64, timeout: Option<Duration>) -> Result<Reply> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let reply = loop {
            let until = match (self.reply_stall(start, seq), deadline) {
                (Some(stall), Some(d)) => Some(stall.min(d)),
                (stall, d) => stall.or(d),
            };
            let wait = until.map(|u| u.saturating_duration_since(Instant::now()));
            match self.replies().take(seq, wait) {
                // Only the stall check is due: check, then wait on.
                Err(MirrorError::Timeout(_)) if deadline.is_none_or(|d| Instant::now() < d) => {}
                reply => break reply?,
            }
        };
        match reply {
            Reply::Failed { errno, .. } => {
                Err(MirrorError::Io(std::io::Error::from_raw_os_error(errno)))
            }
            reply => Ok(reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sums() -> Reply {
        Reply::Sums {
            size: 3,
            sums: vec![1; 16],
        }
    }

    #[test]
    fn a_reply_is_taken_once_even_when_it_beats_the_expect() {
        let r = Replies::new(None);
        r.deliver(5, sums());
        r.expect(5);
        assert_eq!(r.take(5, None).unwrap(), sums());
        assert!(matches!(
            r.take(5, Some(Duration::ZERO)),
            Err(MirrorError::InvalidArgument(_))
        ));
    }

    #[test]
    fn waiters_time_out_and_wake_when_the_link_drops() {
        let r = Arc::new(Replies::new(None));
        r.expect(1);
        r.expect(2);
        assert!(matches!(
            r.take(1, Some(Duration::from_millis(10))),
            Err(MirrorError::Timeout(_))
        ));
        let r2 = r.clone();
        let waiter = std::thread::spawn(move || r2.take(1, None));
        r.deliver(2, sums());
        std::thread::sleep(Duration::from_millis(20));
        r.fail("cut");
        assert!(matches!(
            waiter.join().unwrap(),
            Err(MirrorError::Disconnected(why)) if why == "cut"
        ));
        // What arrived before the drop is still there.
        assert_eq!(r.take(2, None).unwrap(), sums());
    }
}
