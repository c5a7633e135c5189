//! The namespace changelog: creations, removals, renames, links and
//! attribute changes, in seq order, for the resync to replay.

use std::collections::VecDeque;

use crate::error::{MirrorError, Result};

/// What a changelog record did. Writes, truncations and fallocate are not
/// here: they are zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A regular file created (or truncated to zero by `O_TRUNC`).
    Create,
    /// A device node, FIFO or socket created.
    Mknod,
    /// A directory created.
    Mkdir,
    /// `path` made a symbolic link to `path2`.
    Symlink,
    /// `path2` made a hard link to `path`.
    Link,
    /// A non-directory removed.
    Unlink,
    /// A directory removed.
    Rmdir,
    /// `path` renamed to `path2`, replacing it.
    Rename,
    /// `path` and `path2` swapped (`RENAME_EXCHANGE`).
    Exchange,
    /// Permission bits changed.
    Chmod,
    /// Owner or group changed.
    Chown,
    /// Timestamps changed.
    Utimens,
    /// An extended attribute set.
    Setxattr,
    /// An extended attribute removed.
    Removexattr,
    /// Entries of a directory pruned by a resync (only what the primary lacks).
    Prune,
    /// An entry made to match the primary's by a resync (kind, attributes).
    Ensure,
}

/// Every kind with its name, in discriminant order: a kind's code indexes it.
const KINDS: [(Kind, &str); 16] = [
    (Kind::Create, "create"),
    (Kind::Mknod, "mknod"),
    (Kind::Mkdir, "mkdir"),
    (Kind::Symlink, "symlink"),
    (Kind::Link, "link"),
    (Kind::Unlink, "unlink"),
    (Kind::Rmdir, "rmdir"),
    (Kind::Rename, "rename"),
    (Kind::Exchange, "exchange"),
    (Kind::Chmod, "chmod"),
    (Kind::Chown, "chown"),
    (Kind::Utimens, "utimens"),
    (Kind::Setxattr, "setxattr"),
    (Kind::Removexattr, "removexattr"),
    (Kind::Prune, "prune"),
    (Kind::Ensure, "ensure"),
];

/// How far back a metadata record looks for an older one to replace.
const COALESCE_WINDOW: usize = 16;

impl Kind {
    /// The name used by the Python API and messages (the operation's name).
    pub fn name(self) -> &'static str {
        KINDS[usize::from(self.code())].1
    }

    /// A stable number for the saved form.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind with this saved number, if any.
    pub fn from_code(code: u8) -> Option<Kind> {
        KINDS.get(usize::from(code)).map(|&(k, _)| k)
    }

    /// Parses a name from [`Kind::name`].
    ///
    /// # Errors
    /// [`MirrorError::InvalidArgument`] listing the accepted names.
    pub fn parse(name: &str) -> Result<Kind> {
        KINDS
            .iter()
            .find(|&&(_, n)| n == name)
            .map(|&(k, _)| k)
            .ok_or_else(|| {
                let names: Vec<&str> = KINDS.iter().map(|&(_, n)| n).collect();
                MirrorError::InvalidArgument(format!(
                    "unknown namespace operation {name:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Whether the record names two paths (`path2` is required).
    pub fn has_two_paths(self) -> bool {
        matches!(
            self,
            Kind::Symlink | Kind::Link | Kind::Rename | Kind::Exchange
        )
    }

    /// An attribute change: the resync copies the current attributes, so only
    /// the latest of a run of them matters.
    pub fn is_metadata(self) -> bool {
        matches!(
            self,
            Kind::Chmod
                | Kind::Chown
                | Kind::Utimens
                | Kind::Setxattr
                | Kind::Removexattr
                | Kind::Ensure
        )
    }
}

/// One changelog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The seq of the operation.
    pub seq: u64,
    /// What it did.
    pub kind: Kind,
    /// The path it acted on (relative to the replicated root).
    pub path: Vec<u8>,
    /// The second path: rename/exchange/link destination, symlink target.
    pub path2: Option<Vec<u8>>,
}

impl Record {
    /// Approximate heap and inline bytes this record holds.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Record>() + self.path.len() + self.path2.as_ref().map_or(0, Vec::len)
    }
}

/// The records in seq order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changelog {
    records: VecDeque<Record>,
    bytes: usize,
}

impl Changelog {
    /// Appends `rec` in seq order. An attribute change replaces an older
    /// record of the same kind and path among the last few, provided only
    /// attribute changes came between: a `chmod` loop costs one record.
    pub fn push(&mut self, rec: Record) {
        if rec.kind.is_metadata() {
            let tail = self.records.iter().enumerate().rev().take(COALESCE_WINDOW);
            for (i, old) in tail {
                if !old.kind.is_metadata() {
                    break;
                }
                if old.kind == rec.kind && old.path == rec.path && old.seq <= rec.seq {
                    let old = self.records.remove(i).expect("in range");
                    self.bytes -= old.footprint();
                    break;
                }
            }
        }
        self.bytes += rec.footprint();
        let at = self.records.partition_point(|r| r.seq <= rec.seq);
        self.records.insert(at, rec);
    }

    /// Drops every record with `seq <= flushed`; returns how many.
    pub fn confirm(&mut self, flushed: u64) -> usize {
        let n = self.records.partition_point(|r| r.seq <= flushed);
        for old in self.records.drain(..n) {
            self.bytes -= old.footprint();
        }
        n
    }

    /// The records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Approximate memory held by the records.
    pub fn footprint(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: Kind, path: &[u8]) -> Record {
        Record {
            seq,
            kind,
            path: path.to_vec(),
            path2: None,
        }
    }

    fn summary(log: &Changelog) -> Vec<(u64, &'static str)> {
        log.iter().map(|r| (r.seq, r.kind.name())).collect()
    }

    #[test]
    fn kinds_round_trip_through_names_and_codes() {
        for &(kind, name) in &KINDS {
            assert_eq!(Kind::parse(name).unwrap(), kind);
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
        }
        let err = Kind::parse("write").unwrap_err().to_string();
        assert!(err.contains("\"write\"") && err.contains("rename"), "{err}");
        assert_eq!(Kind::from_code(200), None);
    }

    #[test]
    fn a_loop_of_attribute_changes_keeps_only_the_latest_of_each() {
        let mut log = Changelog::default();
        log.push(rec(1, Kind::Create, b"f"));
        for seq in 2..100 {
            let kind = if seq % 2 == 0 {
                Kind::Chmod
            } else {
                Kind::Utimens
            };
            log.push(rec(seq, kind, b"f"));
        }
        assert_eq!(
            summary(&log),
            [(1, "create"), (98, "chmod"), (99, "utimens")]
        );
    }

    #[test]
    fn a_namespace_change_between_attribute_changes_keeps_both() {
        let mut log = Changelog::default();
        log.push(rec(1, Kind::Chmod, b"f"));
        log.push(rec(2, Kind::Unlink, b"f"));
        log.push(rec(3, Kind::Chmod, b"f"));
        assert_eq!(summary(&log), [(1, "chmod"), (2, "unlink"), (3, "chmod")]);
    }

    #[test]
    fn confirm_drops_the_prefix_up_to_the_flushed_seq() {
        let mut log = Changelog::default();
        for seq in [1, 2, 5, 4] {
            log.push(rec(seq, Kind::Mkdir, b"d"));
        }
        assert_eq!(log.confirm(4), 3);
        assert_eq!(summary(&log), [(5, "mkdir")]);
        assert_eq!(
            log.footprint(),
            log.iter().map(Record::footprint).sum::<usize>()
        );
    }
}
