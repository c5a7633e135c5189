//! What the secondary lacks: the record the next resynchronization consumes.
//!
//! Per file, the zones (`zone_size` bytes, a power of two) that were written
//! or cut by a truncation, as sorted disjoint runs; plus a changelog of
//! namespace and attribute changes in seq order. Memory follows what changed,
//! never file sizes: 10,000 scattered writes into a 1 TiB file cost 10,000
//! runs, not a 1 TiB bitmap.
//!
//! Every record carries the seq of the operation that dirtied it, and
//! [`DirtyMap::confirm`] drops exactly the records the secondary has flushed
//! to its disk. So the same map serves two purposes: while ALONE it collects
//! what was never sent; while PRIM it holds what was sent but not yet on the
//! secondary's disk, and a crash of the secondary leaves exactly the zones it
//! must be sent again. A zone dirtied again carries the later seq and stays
//! until that one is confirmed.
//!
//! The resync reads, per file: [`DirtyMap::truncate_to`] (cut the
//! secondary's copy to that size first: everything beyond it on the primary
//! is in the zones), then the zones, then sets the size to the primary's; and
//! the changelog, replayed in order before the zones.
//!
//! Known limit: zones are kept per *name*. Writes through one hard link and
//! an unlink of that name lose the zones other names of the inode need; the
//! resync should resend whole the files named by the changelog's `link`
//! records (or the FUSE layer mark the surviving names).
//!
//! # Layout
//! - `dirty.rs`: [`DirtyMap`], the per-path bookkeeping, writes, truncations, confirm.
//! - `dirty/names.rs`: namespace changes, renames of subtrees, `record(&Op)`.
//! - `dirty/zones.rs`: one file's runs and the seq index over all of them.
//! - `dirty/log.rs`: the changelog and its record kinds.
//! - `dirty/store.rs`: the durable form (`save`/`load`).
//! - `dirty/py.rs`: the Python class `DirtyMap`.

mod log;
mod names;
mod py;
mod store;
mod zones;

use std::collections::{BTreeMap, HashMap};

pub use log::{Kind, Record};
pub use py::PyDirtyMap;
use zones::{FileId, Ledger, Zones, TRUNC_SLOT};

use crate::error::{MirrorError, Result};
use crate::wire::validate_path;

/// Smallest and largest accepted zone sizes.
const ZONE_SIZES: std::ops::RangeInclusive<u64> = 512..=1 << 30;

/// One tracked file: its dirty zones and the truncations not yet confirmed.
#[derive(Debug, Clone, Default)]
struct File {
    path: Vec<u8>,
    zones: Zones,
    /// `(size, seq)`, seq ascending and sizes strictly ascending: for any
    /// confirmation point, the first survivor is the smallest size the file
    /// was cut to after it.
    truncs: Vec<(u64, u64)>,
}

impl File {
    fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.truncs.is_empty()
    }
}

/// Summary counters of a [`DirtyMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Files with dirty zones or pending truncations.
    pub files: u64,
    /// Dirty zones over all files.
    pub zones: u64,
    /// Runs of zones (the unit of memory).
    pub runs: u64,
    /// `zones * zone_size`.
    pub bytes_tracked: u64,
    /// Changelog records.
    pub changelog_len: u64,
    /// Approximate memory held, in bytes.
    pub memory_bytes: u64,
}

/// Dirty zones per file plus the namespace changelog (see the module docs).
#[derive(Debug, Clone)]
pub struct DirtyMap {
    zone_shift: u32,
    horizon: Option<u64>,
    clean: bool,
    last_seq: u64,
    next_id: FileId,
    by_path: BTreeMap<Vec<u8>, FileId>,
    files: HashMap<FileId, File>,
    led: Ledger,
    log: log::Changelog,
}

impl DirtyMap {
    /// An empty map of `zone_size`-byte zones.
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] unless `zone_size` is a power of two
    /// from 512 B to 1 GiB.
    pub fn new(zone_size: u64) -> Result<DirtyMap> {
        if !zone_size.is_power_of_two() || !ZONE_SIZES.contains(&zone_size) {
            return Err(MirrorError::InvalidArgument(format!(
                "zone_size {zone_size} is not a power of two from 512 B to 1 GiB"
            )));
        }
        Ok(DirtyMap::empty(zone_size.trailing_zeros()))
    }

    fn empty(zone_shift: u32) -> DirtyMap {
        DirtyMap {
            zone_shift,
            horizon: None,
            clean: true,
            last_seq: 0,
            next_id: 0,
            by_path: BTreeMap::new(),
            files: HashMap::new(),
            led: Ledger::default(),
            log: log::Changelog::default(),
        }
    }

    /// Bytes per zone.
    pub fn zone_size(&self) -> u64 {
        1 << self.zone_shift
    }

    /// False when loaded from a file saved without the clean-stop flag: the
    /// writer may have died, so operations may be missing from the map.
    pub fn clean(&self) -> bool {
        self.clean
    }

    /// Marks the map as missing operations (a record failed, or the
    /// secondary dropped before it had the full copy on its disk): it stays
    /// distrusted, across `save`/`load`, until [`Self::clear`].
    pub fn distrust(&mut self) {
        self.clean = false;
    }

    /// The highest seq ever recorded (kept across `save`/`load`).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The last seq the secondary may still confirm one by one, if set.
    pub fn horizon(&self) -> Option<u64> {
        self.horizon
    }

    /// Declares that no seq above `horizon` will be confirmed individually
    /// (the link dropped after sending up to it): from now on neighbouring
    /// zones dirtied after it merge whatever their seqs, so a long ALONE
    /// period costs memory per changed *range*, not per write. `None` lifts it.
    pub fn set_horizon(&mut self, horizon: Option<u64>) {
        self.horizon = horizon;
    }

    /// Records `pwrite(len bytes at offset)` on `path` by operation `seq`.
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`], or [`MirrorError::InvalidArgument`] if
    /// the range ends beyond 2^64.
    pub fn mark_write(&mut self, path: &[u8], offset: u64, len: u64, seq: u64) -> Result<()> {
        validate_path(path)?;
        let end = offset.checked_add(len).ok_or_else(|| {
            MirrorError::InvalidArgument(format!(
                "write of {len} bytes at {offset} ends beyond 2^64"
            ))
        })?;
        self.saw(seq);
        if len == 0 {
            return Ok(());
        }
        let zones = (
            offset >> self.zone_shift,
            ((end - 1) >> self.zone_shift) + 1,
        );
        let horizon = self.horizon;
        let id = self.file_id(path);
        let file = self.files.entry(id).or_default();
        file.zones.mark(&mut self.led, id, zones, seq, horizon);
        Ok(())
    }

    /// Records a truncation of `path` to `size`: zones beyond it are
    /// forgotten (the resync cuts the secondary's copy to [`Self::truncate_to`]).
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`].
    pub fn mark_truncate(&mut self, path: &[u8], size: u64, seq: u64) -> Result<()> {
        validate_path(path)?;
        self.saw(seq);
        let id = self.file_id(path);
        self.truncate(id, size, seq);
        Ok(())
    }

    /// The secondary has flushed every operation up to `flushed` to its
    /// disk: drops every zone run, truncation and changelog record whose seq
    /// is at most `flushed`. Returns how many records went.
    pub fn confirm(&mut self, flushed: u64) -> usize {
        let mut dropped = self.log.confirm(flushed);
        let mut touched = Vec::new();
        while let Some(&(seq, id, slot)) = self.led.index.first() {
            if seq > flushed {
                break;
            }
            self.led.index.pop_first();
            dropped += 1;
            let Some(file) = self.files.get_mut(&id) else {
                continue; // cannot happen: dropped files leave the index
            };
            if slot == TRUNC_SLOT {
                file.truncs.retain(|&(_, s)| s != seq);
            } else {
                file.zones.confirmed(&mut self.led, slot);
            }
            if file.is_empty() {
                touched.push(id);
            }
        }
        for id in touched {
            if let Some(file) = self.files.remove(&id) {
                self.by_path.remove(&file.path);
            }
        }
        dropped
    }

    /// The dirty byte ranges of `path` as `(offset, length)`, zone-aligned,
    /// neighbouring runs joined.
    pub fn zones(&self, path: &[u8]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (start, end, _) in self.file(path).into_iter().flat_map(|f| f.zones.runs()) {
            let (off, len) = (start << self.zone_shift, (end - start) << self.zone_shift);
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => out.push((off, len)),
            }
        }
        out
    }

    /// The runs of `path` as `(offset, length, seq)` in bytes.
    pub fn runs(&self, path: &[u8]) -> Vec<(u64, u64, u64)> {
        let shift = self.zone_shift;
        self.file(path)
            .into_iter()
            .flat_map(|f| f.zones.runs())
            .map(|(s, e, q)| (s << shift, (e - s) << shift, q))
            .collect()
    }

    /// The smallest size `path` was truncated to since its last confirmed
    /// operation, if any: the resync cuts the secondary's copy to it first.
    pub fn truncate_to(&self, path: &[u8]) -> Option<u64> {
        self.file(path)?.truncs.first().map(|&(size, _)| size)
    }

    /// The tracked files (dirty zones or a pending truncation), sorted.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.by_path.keys().map(Vec::as_slice)
    }

    /// The changelog, oldest first.
    pub fn changelog(&self) -> impl Iterator<Item = &Record> {
        self.log.iter()
    }

    /// Whether nothing at all is recorded.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.log.is_empty()
    }

    /// Forgets everything (the secondary is now identical) and trusts the
    /// map again; keeps `last_seq`.
    pub fn clear(&mut self) {
        let fresh = DirtyMap::empty(self.zone_shift);
        *self = DirtyMap {
            last_seq: self.last_seq,
            ..fresh
        };
    }

    /// Counters and an estimate of the memory held.
    pub fn stats(&self) -> Stats {
        // A B-tree entry costs about 1.5x its size (nodes are 2/3 full on average).
        let btree = |entry: usize| entry * 3 / 2;
        let runs: usize = self.files.values().map(|f| f.zones.len()).sum();
        let truncs: usize = self.files.values().map(|f| f.truncs.len()).sum();
        let per_run = btree(std::mem::size_of::<(u64, zones::Run)>())
            + btree(std::mem::size_of::<(u64, FileId, u64)>());
        let per_trunc = 16 + btree(std::mem::size_of::<(u64, FileId, u64)>());
        let per_file = std::mem::size_of::<(FileId, File)>() * 2
            + btree(std::mem::size_of::<(Vec<u8>, FileId)>());
        let paths: usize = self.files.values().map(|f| f.path.len() * 2).sum();
        let memory = std::mem::size_of::<DirtyMap>()
            + runs * per_run
            + truncs * per_trunc
            + self.files.len() * per_file
            + paths
            + self.log.footprint();
        let zones = self.led.zones;
        Stats {
            files: self.files.len() as u64,
            zones,
            runs: runs as u64,
            bytes_tracked: zones << self.zone_shift,
            changelog_len: self.log.len() as u64,
            memory_bytes: memory as u64,
        }
    }

    fn saw(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    fn file(&self, path: &[u8]) -> Option<&File> {
        self.files.get(self.by_path.get(path)?)
    }

    /// The id of `path`'s entry, creating an empty one if needed.
    fn file_id(&mut self, path: &[u8]) -> FileId {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_path.insert(path.to_vec(), id);
        self.files.insert(
            id,
            File {
                path: path.to_vec(),
                ..File::default()
            },
        );
        id
    }

    fn truncate(&mut self, id: FileId, size: u64, seq: u64) {
        let first_gone = size.div_ceil(self.zone_size());
        let file = self.files.entry(id).or_default();
        file.zones.cut(&mut self.led, id, first_gone);
        let truncs = &mut file.truncs;
        if let Some(same) = truncs.iter_mut().find(|t| t.1 == seq) {
            same.0 = same.0.min(size);
        } else {
            truncs.insert(truncs.partition_point(|t| t.1 < seq), (size, seq));
            self.led.index.insert((seq, id, TRUNC_SLOT));
        }
        // Keep only the truncations no later one undercuts.
        let mut floor = u64::MAX;
        let mut keep = vec![false; truncs.len()];
        for (i, &(size, _)) in truncs.iter().enumerate().rev() {
            keep[i] = size < floor;
            floor = floor.min(size);
        }
        let mut keep = keep.into_iter();
        truncs.retain(|&(_, seq)| {
            let kept = keep.next().expect("one flag each");
            if !kept {
                self.led.index.remove(&(seq, id, TRUNC_SLOT));
            }
            kept
        });
    }

    fn drop_file(&mut self, id: FileId) {
        if let Some(mut file) = self.files.remove(&id) {
            file.zones.drop_all(&mut self.led, id);
            for (_, seq) in file.truncs {
                self.led.index.remove(&(seq, id, TRUNC_SLOT));
            }
        }
    }
}

#[cfg(test)]
mod tests;
