//! Answering requests on the secondary: block sums, the needs list, a
//! directory's listing. The cache's applier calls [`Applier::answer`] when it
//! reaches the request, so the answer reflects every earlier operation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;

use super::resync::mtime_ns;
use super::tree::{lstat_at, names, open_dir, read_link_at};
use super::Applier;
use crate::beneath::cstring;
use crate::extent::local_sums;
use crate::wire::{EntryKind, ListEntry, Op, Reply};

impl Applier {
    /// The reply to a request; an error becomes [`Reply::Failed`] (the primary's caller sees it).
    pub fn answer(&mut self, op: &Op) -> Reply {
        let answered = match op {
            Op::RequestSums {
                path,
                offset,
                length,
                block,
            } => local_sums(&self.root, path, *offset, *length, *block)
                .map(|(size, sums)| Reply::Sums { size, sums }),
            Op::RequestNeeds => Ok(Reply::Needs(dedup(std::mem::take(&mut self.needs)))),
            Op::RequestList { dir } => self.list(dir).map(Reply::List),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        answered.unwrap_or_else(|e| Reply::Failed {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: format!("{op}: {e}"),
        })
    }

    /// Forgets the needs list (a new primary starts its own).
    pub fn clear_needs(&mut self) {
        self.needs.clear();
    }

    /// Adds `paths` to the needs list as changed (not created now): files this
    /// node changed itself, which the primary must resync too.
    pub fn seed_needs(&mut self, paths: Vec<Vec<u8>>) {
        self.needs
            .extend(paths.into_iter().map(|path| (false, path)));
    }

    /// The entries of `dir` sorted by name; none for a missing directory.
    fn list(&self, dir: &[u8]) -> io::Result<Vec<ListEntry>> {
        let Some(fd) = open_dir(&self.root, dir)? else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for name in names(fd.as_raw_fd())? {
            let c = cstring(&name)?;
            let Some(st) = lstat_at(fd.as_raw_fd(), &c)? else {
                continue;
            };
            let kind = EntryKind::of_mode(st.st_mode);
            let target = if kind == EntryKind::Symlink {
                read_link_at(fd.as_raw_fd(), &c)?
            } else {
                Vec::new()
            };
            entries.push(ListEntry {
                name,
                kind,
                mode: st.st_mode,
                uid: st.st_uid,
                gid: st.st_gid,
                size: u64::try_from(st.st_size).unwrap_or(0),
                mtime_ns: mtime_ns(&st),
                target,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// Each path once, in the order first seen; created now if any entry says so
/// (the file is new here: its whole contents are needed, no sums).
fn dedup(needs: Vec<(bool, Vec<u8>)>) -> Vec<(bool, Vec<u8>)> {
    let mut at: HashMap<Vec<u8>, usize> = HashMap::with_capacity(needs.len());
    let mut out: Vec<(bool, Vec<u8>)> = Vec::with_capacity(needs.len());
    for (created, path) in needs {
        match at.entry(path) {
            Entry::Occupied(e) => out[*e.get()].0 |= created,
            Entry::Vacant(e) => {
                out.push((created, e.key().clone()));
                e.insert(out.len() - 1);
            }
        }
    }
    out
}
