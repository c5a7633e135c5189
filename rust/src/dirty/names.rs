//! Namespace changes: the changelog entry, and what each one does to the
//! zones of the paths it touches (renames move whole subtrees).

use super::zones::FileId;
use super::{DirtyMap, Kind, Record};
use crate::error::{MirrorError, Result};
use crate::wire::{validate_path, Op};

/// `renameat2`'s `RENAME_EXCHANGE`.
pub(super) const RENAME_EXCHANGE: u32 = 2;

impl DirtyMap {
    /// Records a namespace or attribute change in the changelog and applies
    /// it to the zones: `create` truncates to zero, `unlink` drops the path,
    /// `rmdir` the path and anything below it, `rename` moves the path and everything
    /// below it over `path2`, `exchange` swaps the two.
    ///
    /// # Errors
    /// [`MirrorError::InvalidPath`]; [`MirrorError::InvalidArgument`] when
    /// `path2` is missing for a two-path kind or given for a one-path kind.
    pub fn mark_namespace(
        &mut self,
        kind: Kind,
        path: &[u8],
        path2: Option<&[u8]>,
        seq: u64,
    ) -> Result<()> {
        validate_path(path)?;
        match (kind.has_two_paths(), path2) {
            (true, None) => {
                return Err(MirrorError::InvalidArgument(format!(
                    "{} needs a second path",
                    kind.name()
                )))
            }
            (false, Some(_)) => {
                return Err(MirrorError::InvalidArgument(format!(
                    "{} takes one path",
                    kind.name()
                )))
            }
            (true, Some(p2)) if kind != Kind::Symlink => validate_path(p2)?,
            _ => {}
        }
        self.saw(seq);
        match (kind, path2) {
            (Kind::Create, _) => {
                let id = self.file_id(path);
                self.truncate(id, 0, seq);
            }
            (Kind::Unlink, _) => {
                if let Some(id) = self.by_path.remove(path) {
                    self.drop_file(id);
                }
            }
            (Kind::Rmdir, _) => {
                for (_, id) in self.take_subtree(path) {
                    self.drop_file(id);
                }
            }
            (Kind::Rename, Some(new)) if new != path => {
                let moved = self.take_subtree(path);
                for (_, id) in self.take_subtree(new) {
                    self.drop_file(id);
                }
                self.put_subtree(path, new, moved);
            }
            (Kind::Exchange, Some(other)) if other != path => {
                let a = self.take_subtree(path);
                let b = self.take_subtree(other);
                self.put_subtree(path, other, a);
                self.put_subtree(other, path, b);
            }
            _ => {}
        }
        self.log.push(Record {
            seq,
            kind,
            path: path.to_vec(),
            path2: path2.map(<[u8]>::to_vec),
        });
        Ok(())
    }

    /// Records any replicated operation (the forwarder's hook); barriers,
    /// resets, marks and requests leave nothing to resend and are ignored, as
    /// are a resync's `prune`/`ensure` of the root itself. `ensure_link` is a
    /// `link`; `prune` and `ensure` change no zone.
    ///
    /// # Errors
    /// As the `mark_*` methods.
    pub fn record(&mut self, op: &Op, seq: u64) -> Result<()> {
        let one = |kind| -> (Kind, Option<&[u8]>) { (kind, None) };
        let (kind, path2): (Kind, Option<&[u8]>) = match op {
            Op::Write {
                path, offset, data, ..
            } => {
                return self.mark_write(path, *offset, data.len() as u64, seq);
            }
            Op::Fallocate {
                path,
                offset,
                length,
                ..
            } => return self.mark_write(path, *offset, *length, seq),
            Op::Truncate { path, size } => return self.mark_truncate(path, *size, seq),
            Op::Barrier
            | Op::Reset
            | Op::Mark { .. }
            | Op::RequestSums { .. }
            | Op::RequestNeeds
            | Op::RequestList { .. } => {
                self.saw(seq);
                return Ok(());
            }
            _ if op.paths().is_empty() => {
                self.saw(seq); // the root's own prune or ensure
                return Ok(());
            }
            Op::Prune { .. } => one(Kind::Prune),
            Op::Ensure(_) => one(Kind::Ensure),
            Op::Create { .. } => one(Kind::Create),
            Op::Mknod { .. } => one(Kind::Mknod),
            Op::Mkdir { .. } => one(Kind::Mkdir),
            Op::Symlink { target, .. } => (Kind::Symlink, Some(target.as_slice())),
            Op::Link { new, .. } | Op::EnsureLink { new, .. } => (Kind::Link, Some(new.as_slice())),
            Op::Unlink { .. } => one(Kind::Unlink),
            Op::Rmdir { .. } => one(Kind::Rmdir),
            Op::Rename { new, flags, .. } if flags & RENAME_EXCHANGE != 0 => {
                (Kind::Exchange, Some(new.as_slice()))
            }
            Op::Rename { new, .. } => (Kind::Rename, Some(new.as_slice())),
            Op::Chmod { .. } => one(Kind::Chmod),
            Op::Chown { .. } => one(Kind::Chown),
            Op::Utimens { .. } => one(Kind::Utimens),
            Op::Setxattr { .. } => one(Kind::Setxattr),
            Op::Removexattr { .. } => one(Kind::Removexattr),
        };
        let path = match op {
            Op::Link { existing, .. } | Op::EnsureLink { existing, .. } => existing,
            Op::Rename { old, .. } => old,
            _ => op.paths()[0],
        };
        self.mark_namespace(kind, path, path2, seq)
    }

    /// Removes `root` and everything below it from the path table, returning
    /// `(path, id)` pairs (the files themselves stay).
    fn take_subtree(&mut self, root: &[u8]) -> Vec<(Vec<u8>, FileId)> {
        let mut below = root.to_vec();
        below.push(b'/');
        let mut keys: Vec<Vec<u8>> = self
            .by_path
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .map(|(k, _)| k.clone())
            .collect();
        if self.by_path.contains_key(root) {
            keys.push(root.to_vec());
        }
        keys.into_iter()
            .map(|k| {
                let id = self.by_path.remove(&k).expect("listed");
                (k, id)
            })
            .collect()
    }

    /// Re-enters entries taken from under `from` at the same place under `to`.
    fn put_subtree(&mut self, from: &[u8], to: &[u8], entries: Vec<(Vec<u8>, FileId)>) {
        for (old, id) in entries {
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            self.files
                .get_mut(&id)
                .expect("taken, not dropped")
                .path
                .clone_from(&new);
            self.by_path.insert(new, id);
        }
    }
}
