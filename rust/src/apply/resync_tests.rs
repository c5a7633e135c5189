//! Tests of the resync operations on the secondary (`resync.rs`, `answer.rs`).

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use super::Applier;
use crate::wire::{Ensure, EntryKind, Op, Reply};

fn setup(name: &str) -> (PathBuf, PathBuf, Applier) {
    let dir = std::env::temp_dir().join(format!("mirrorcore-resync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("outside/secret"), b"keep").unwrap();
    let applier = Applier::new(&dir.join("root")).unwrap();
    (dir.join("root"), dir, applier)
}

fn ensure(path: &str, kind: EntryKind, mode: u32) -> Ensure {
    Ensure {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: u32::MAX,
        gid: u32::MAX,
        rdev: 0,
        target: Vec::new(),
        size: 0,
        mtime_ns: 0,
        xattrs: None,
    }
}

fn apply(a: &mut Applier, e: Ensure) -> std::io::Result<()> {
    a.apply(&Op::Ensure(Box::new(e)))
}

fn needs(a: &mut Applier) -> Vec<(bool, Vec<u8>)> {
    match a.answer(&Op::RequestNeeds) {
        Reply::Needs(mut n) => {
            n.sort();
            n
        }
        other => panic!("{other:?}"),
    }
}

fn mtime_ns(path: &std::path::Path) -> i64 {
    let m = std::fs::symlink_metadata(path).unwrap();
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

#[test]
fn ensure_replaces_other_kinds_keeps_contents_and_fills_the_needs_list() {
    let (root, dir, mut a) = setup("kinds");
    std::fs::write(root.join("same"), b"0123456789").unwrap();
    std::fs::write(root.join("short"), b"01").unwrap();
    std::fs::create_dir_all(root.join("was_dir/sub")).unwrap();
    symlink("old", root.join("link")).unwrap();
    std::fs::write(root.join("was_file"), b"x").unwrap();
    let same = Ensure {
        size: 10,
        mtime_ns: mtime_ns(&root.join("same")),
        ..ensure("same", EntryKind::File, 0o100_600)
    };
    apply(&mut a, same).unwrap();
    let short = Ensure {
        size: 10,
        ..ensure("short", EntryKind::File, 0o100_644)
    };
    apply(&mut a, short).unwrap();
    apply(&mut a, ensure("was_dir", EntryKind::File, 0o100_644)).unwrap();
    apply(&mut a, ensure("new", EntryKind::File, 0o100_644)).unwrap();
    let link = Ensure {
        target: b"new".to_vec(),
        mtime_ns: 1_234_567_890_123,
        ..ensure("link", EntryKind::Symlink, 0o120_777)
    };
    apply(&mut a, link).unwrap();
    let d = Ensure {
        mtime_ns: 42,
        ..ensure("was_file", EntryKind::Dir, 0o40_750)
    };
    apply(&mut a, d).unwrap();
    apply(
        &mut a,
        ensure("fifo", EntryKind::Node, libc::S_IFIFO | 0o640),
    )
    .unwrap();

    assert_eq!(
        needs(&mut a),
        [
            (false, b"short".to_vec()),
            (true, b"new".to_vec()),
            (true, b"was_dir".to_vec())
        ]
    );
    assert!(needs(&mut a).is_empty(), "handed back once");
    assert_eq!(std::fs::read(root.join("same")).unwrap(), b"0123456789");
    let meta = std::fs::metadata(root.join("same")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read(root.join("short")).unwrap(), b"01");
    assert!(root.join("was_dir").is_file());
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap().as_os_str(),
        "new"
    );
    assert_eq!(mtime_ns(&root.join("link")), 1_234_567_890_123);
    let meta = std::fs::metadata(root.join("was_file")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(mtime_ns(&root.join("was_file")), 42);
    let fifo = std::fs::symlink_metadata(root.join("fifo")).unwrap();
    assert_eq!(fifo.mode(), libc::S_IFIFO | 0o640);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ensure_sets_exactly_the_managed_xattrs() {
    let (root, dir, mut a) = setup("xattrs");
    let f = root.join("f");
    std::fs::write(&f, b"").unwrap();
    let set = |name: &str, value: &[u8]| {
        let path = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and buffer.
        unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    };
    if set("user.stale", b"1") != 0 {
        eprintln!("no user xattrs on this file system: skipped");
        return;
    }
    set("user.keep", b"old");
    let e = Ensure {
        xattrs: Some(vec![
            (b"user.keep".to_vec(), b"new".to_vec()),
            (b"user.added".to_vec(), Vec::new()),
        ]),
        ..ensure("f", EntryKind::File, 0o100_644)
    };
    apply(&mut a, e).unwrap();
    let (proc_path, _fd) = a.by_proc(b"f").unwrap();
    let mut names = super::resync::list_xattrs(&proc_path).unwrap();
    names.sort();
    assert_eq!(names, [b"user.added".to_vec(), b"user.keep".to_vec()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hard_linked_file_becomes_a_private_copy_that_passes_the_quick_check() {
    let (root, dir, mut a) = setup("links");
    std::fs::write(root.join("a"), b"shared").unwrap();
    std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
    let e = Ensure {
        size: 6,
        mtime_ns: mtime_ns(&root.join("a")),
        ..ensure("a", EntryKind::File, 0o100_644)
    };
    apply(&mut a, e).unwrap();
    let (ma, mb) = (
        std::fs::metadata(root.join("a")).unwrap(),
        std::fs::metadata(root.join("b")).unwrap(),
    );
    assert_ne!(ma.ino(), mb.ino());
    assert_eq!((ma.nlink(), mb.nlink()), (1, 1));
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"shared");
    assert!(needs(&mut a).is_empty());
    let link = Op::EnsureLink {
        existing: b"a".to_vec(),
        new: b"b".to_vec(),
    };
    a.apply(&link).unwrap();
    a.apply(&link).unwrap(); // already one: nothing
    assert_eq!(
        std::fs::metadata(root.join("b")).unwrap().ino(),
        std::fs::metadata(root.join("a")).unwrap().ino()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_reaches_outside_the_root_through_a_symlink() {
    let (root, dir, mut a) = setup("escape");
    symlink(dir.join("outside"), root.join("up")).unwrap();
    let p = |s: &str| s.as_bytes().to_vec();
    assert!(apply(&mut a, ensure("up/secret", EntryKind::File, 0o100_666)).is_err());
    assert!(apply(&mut a, ensure("up/new", EntryKind::Dir, 0o40_777)).is_err());
    assert!(a
        .apply(&Op::EnsureLink {
            existing: p("up/secret"),
            new: p("stolen"),
        })
        .is_err());
    a.apply(&Op::Prune {
        dir: p("up"),
        keep: Vec::new(),
    })
    .unwrap();
    assert!(matches!(
        a.answer(&Op::RequestList { dir: p("up") }),
        Reply::List(l) if l.is_empty()
    ));
    assert_eq!(
        a.answer(&Op::RequestSums {
            path: p("up/secret"),
            offset: 0,
            length: 4,
            block: 4
        }),
        Reply::Sums {
            size: -1,
            sums: Vec::new()
        }
    );
    // Pruned from the root, the symlink goes, never what it points to.
    std::fs::create_dir(root.join("d")).unwrap();
    symlink(dir.join("outside"), root.join("d/inner")).unwrap();
    a.apply(&Op::Prune {
        dir: Vec::new(),
        keep: Vec::new(),
    })
    .unwrap();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert_eq!(std::fs::read(dir.join("outside/secret")).unwrap(), b"keep");
    let meta = std::fs::metadata(dir.join("outside/secret")).unwrap();
    assert_ne!(meta.permissions().mode() & 0o777, 0o666);
    assert!(!dir.join("outside/new").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prune_keeps_the_named_entries_and_ignores_a_missing_directory() {
    let (root, dir, mut a) = setup("prune");
    std::fs::create_dir_all(root.join("d/deep/er")).unwrap();
    std::fs::write(root.join("d/deep/er/f"), b"x").unwrap();
    std::fs::write(root.join("d/keep"), b"k").unwrap();
    std::fs::write(root.join("d/drop"), b"d").unwrap();
    a.apply(&Op::Prune {
        dir: b"d".to_vec(),
        keep: vec![b"keep".to_vec()],
    })
    .unwrap();
    a.apply(&Op::Prune {
        dir: b"nowhere".to_vec(),
        keep: Vec::new(),
    })
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seeded_needs_join_the_list_once_each_and_a_created_file_stays_created() {
    let (root, dir, mut a) = setup("seeds");
    std::fs::write(root.join("short"), b"01").unwrap();
    a.seed_needs(vec![b"new".to_vec(), b"mine".to_vec()]);
    let short = Ensure {
        size: 10,
        ..ensure("short", EntryKind::File, 0o100_644)
    };
    apply(&mut a, short).unwrap();
    apply(&mut a, ensure("new", EntryKind::File, 0o100_644)).unwrap();
    a.seed_needs(vec![
        b"short".to_vec(),
        b"mine".to_vec(),
        b"d/gone".to_vec(),
    ]);
    let answered = match a.answer(&Op::RequestNeeds) {
        Reply::Needs(n) => n,
        other => panic!("{other:?}"),
    };
    // In the order first seen; "new" was seeded, then created by the ensure.
    assert_eq!(
        answered,
        [
            (true, b"new".to_vec()),
            (false, b"mine".to_vec()),
            (false, b"short".to_vec()),
            (false, b"d/gone".to_vec())
        ]
    );
    assert!(needs(&mut a).is_empty(), "handed back once");
    a.seed_needs(vec![b"later".to_vec()]);
    a.clear_needs(); // a new session: the applier's own list goes, seeds too once moved here
    assert!(needs(&mut a).is_empty());
    let _ = std::fs::remove_dir_all(dir);
}
