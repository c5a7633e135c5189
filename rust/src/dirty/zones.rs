//! One file's dirty zones: sorted, disjoint runs of zone numbers, each
//! carrying the seq of the latest operation that dirtied it, and the
//! [`Ledger`] that indexes every run of every file by seq.

use std::collections::{BTreeMap, BTreeSet};

/// A file's identity inside a [`super::DirtyMap`]; stable across renames.
pub type FileId = u64;

/// The `start` of the index key that stands for a file's truncation records
/// (no zone number can reach it: zones are at least 512 bytes).
pub const TRUNC_SLOT: u64 = u64::MAX;

/// Every record of every file, ordered by seq so that `confirm` visits only
/// the records it drops: `(seq, file, zone start or TRUNC_SLOT)`.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// The seq index itself.
    pub index: BTreeSet<(u64, FileId, u64)>,
    /// Zones covered by all runs of all files.
    pub zones: u64,
}

/// A run of zones `[start, end)` dirtied last by operation `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// One past the last zone of the run.
    pub end: u64,
    /// The seq of the latest operation that dirtied these zones.
    pub seq: u64,
}

/// One file's runs, keyed by their first zone. Adjacent runs are merged when
/// their seqs are equal, or when both lie above the horizon (the seqs no
/// confirmation will ever split), keeping the larger seq.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Zones {
    runs: BTreeMap<u64, Run>,
}

impl Zones {
    /// The runs in zone order: `(start, end, seq)`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.runs.iter().map(|(&s, r)| (s, r.end, r.seq))
    }

    /// How many runs the file has.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether no zone is dirty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Marks zones `[lo, hi)` dirtied by `seq`. A zone already carrying a
    /// later seq keeps it (marks normally arrive in seq order).
    pub fn mark(
        &mut self,
        led: &mut Ledger,
        id: FileId,
        (lo, hi): (u64, u64),
        seq: u64,
        horizon: Option<u64>,
    ) {
        debug_assert!(lo < hi && hi < TRUNC_SLOT);
        let mut over: Vec<(u64, Run)> = Vec::new();
        if let Some((&s, &r)) = self.runs.range(..lo).next_back() {
            if r.end > lo {
                over.push((s, r));
            }
        }
        over.extend(self.runs.range(lo..hi).map(|(&s, &r)| (s, r)));
        let mut pieces: Vec<(u64, u64, u64)> = Vec::with_capacity(over.len() + 3);
        let mut cursor = lo;
        for &(s, r) in &over {
            self.remove(led, id, s);
            if s < lo {
                pieces.push((s, lo, r.seq));
            }
            if r.end > hi {
                pieces.push((hi, r.end, r.seq));
            }
            if r.seq > seq {
                let (a, b) = (s.max(lo), r.end.min(hi));
                if a > cursor {
                    pieces.push((cursor, a, seq));
                }
                pieces.push((a, b, r.seq));
                cursor = b;
            }
        }
        if cursor < hi {
            pieces.push((cursor, hi, seq));
        }
        for (s, e, q) in pieces {
            self.insert(led, id, s, Run { end: e, seq: q });
        }
        self.coalesce(led, id, lo, hi, horizon);
    }

    /// Forgets every zone from `first` on (the file was truncated there).
    pub fn cut(&mut self, led: &mut Ledger, id: FileId, first: u64) {
        if let Some((&s, &r)) = self.runs.range(..first).next_back() {
            if r.end > first {
                self.remove(led, id, s);
                self.insert(led, id, s, Run { end: first, ..r });
            }
        }
        let doomed: Vec<u64> = self.runs.range(first..).map(|(&s, _)| s).collect();
        for s in doomed {
            self.remove(led, id, s);
        }
    }

    /// Forgets every run, keeping the ledger in step (the file is gone).
    pub fn drop_all(&mut self, led: &mut Ledger, id: FileId) {
        for (s, r) in std::mem::take(&mut self.runs) {
            led.index.remove(&(r.seq, id, s));
            led.zones -= r.end - s;
        }
    }

    /// Removes the run at `start` whose index entry `confirm` already took.
    pub fn confirmed(&mut self, led: &mut Ledger, start: u64) {
        if let Some(r) = self.runs.remove(&start) {
            led.zones -= r.end - start;
        }
    }

    /// Merges mergeable neighbours among the runs touching `[lo, hi]`.
    fn coalesce(&mut self, led: &mut Ledger, id: FileId, lo: u64, hi: u64, horizon: Option<u64>) {
        let first = self.runs.range(..lo).next_back().map(|(&s, _)| s);
        let Some(mut at) = first.or_else(|| self.runs.range(lo..).next().map(|(&s, _)| s)) else {
            return;
        };
        while at <= hi {
            let run = self.runs[&at];
            let Some(&next) = self.runs.get(&run.end) else {
                match self.runs.range(run.end..).next() {
                    Some((&s, _)) => {
                        at = s;
                        continue;
                    }
                    None => return,
                }
            };
            let joinable =
                run.seq == next.seq || horizon.is_some_and(|h| run.seq > h && next.seq > h);
            if joinable {
                self.remove(led, id, at);
                self.remove(led, id, run.end);
                let seq = run.seq.max(next.seq);
                self.insert(led, id, at, Run { end: next.end, seq });
            } else {
                at = run.end;
            }
        }
    }

    fn insert(&mut self, led: &mut Ledger, id: FileId, start: u64, run: Run) {
        led.index.insert((run.seq, id, start));
        led.zones += run.end - start;
        self.runs.insert(start, run);
    }

    fn remove(&mut self, led: &mut Ledger, id: FileId, start: u64) {
        if let Some(r) = self.runs.remove(&start) {
            led.index.remove(&(r.seq, id, start));
            led.zones -= r.end - start;
        }
    }

    /// Rebuilds a file's zones from stored runs (already validated).
    pub fn from_runs(led: &mut Ledger, id: FileId, runs: &[(u64, u64, u64)]) -> Zones {
        let mut z = Zones::default();
        for &(s, e, seq) in runs {
            z.insert(led, id, s, Run { end: e, seq });
        }
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(ops: &[(u64, u64, u64)], horizon: Option<u64>) -> (Zones, Ledger) {
        let mut led = Ledger::default();
        let mut z = Zones::default();
        for &(lo, hi, seq) in ops {
            z.mark(&mut led, 7, (lo, hi), seq, horizon);
        }
        (z, led)
    }

    fn runs(z: &Zones) -> Vec<(u64, u64, u64)> {
        z.runs().collect()
    }

    fn assert_ledger_matches(z: &Zones, led: &Ledger) {
        let expect: BTreeSet<_> = z.runs().map(|(s, _, q)| (q, 7, s)).collect();
        assert_eq!(led.index, expect);
        assert_eq!(led.zones, z.runs().map(|(s, e, _)| e - s).sum::<u64>());
    }

    #[test]
    fn adjacent_and_overlapping_marks_of_one_seq_make_one_run() {
        let (z, led) = marked(&[(0, 2, 1), (2, 4, 1), (3, 9, 1), (20, 21, 1)], None);
        assert_eq!(runs(&z), [(0, 9, 1), (20, 21, 1)]);
        assert_ledger_matches(&z, &led);
    }

    #[test]
    fn a_later_mark_splits_older_runs_and_keeps_its_own_seq() {
        let (z, led) = marked(&[(0, 10, 1), (4, 6, 2)], None);
        assert_eq!(runs(&z), [(0, 4, 1), (4, 6, 2), (6, 10, 1)]);
        assert_ledger_matches(&z, &led);
        let (z, led) = marked(&[(0, 3, 1), (5, 8, 2), (2, 6, 3)], None);
        assert_eq!(runs(&z), [(0, 2, 1), (2, 6, 3), (6, 8, 2)]);
        assert_ledger_matches(&z, &led);
    }

    #[test]
    fn an_older_mark_never_lowers_a_zones_seq() {
        let (z, led) = marked(&[(2, 4, 5), (0, 8, 3)], None);
        assert_eq!(runs(&z), [(0, 2, 3), (2, 4, 5), (4, 8, 3)]);
        assert_ledger_matches(&z, &led);
    }

    #[test]
    fn above_the_horizon_neighbours_merge_whatever_their_seqs() {
        let (z, led) = marked(
            &[(0, 1, 1), (1, 2, 2), (2, 3, 11), (3, 4, 12), (6, 7, 13)],
            Some(10),
        );
        assert_eq!(runs(&z), [(0, 1, 1), (1, 2, 2), (2, 4, 12), (6, 7, 13)]);
        assert_ledger_matches(&z, &led);
    }

    #[test]
    fn cut_splits_the_run_across_the_new_end() {
        let (mut z, mut led) = marked(&[(0, 4, 1), (6, 9, 2), (12, 13, 3)], None);
        z.cut(&mut led, 7, 7);
        assert_eq!(runs(&z), [(0, 4, 1), (6, 7, 2)]);
        assert_ledger_matches(&z, &led);
        z.cut(&mut led, 7, 0);
        assert!(z.is_empty());
        assert_ledger_matches(&z, &led);
    }
}
