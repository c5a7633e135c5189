use std::collections::{BTreeMap, BTreeSet};

use super::names::RENAME_EXCHANGE;
use super::*;
use crate::wire::Op;

const ZS: u64 = 4096;

fn map() -> DirtyMap {
    DirtyMap::new(ZS).unwrap()
}

fn log(m: &DirtyMap) -> Vec<(u64, &'static str, String, Option<String>)> {
    let s = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    m.changelog()
        .map(|r| (r.seq, r.kind.name(), s(&r.path), r.path2.as_deref().map(s)))
        .collect()
}

fn paths(m: &DirtyMap) -> Vec<&str> {
    m.paths().map(|p| std::str::from_utf8(p).unwrap()).collect()
}

/// The seq index holds exactly one entry per run and per truncation, and the
/// path table and the files agree.
fn check_invariants(m: &DirtyMap) {
    let mut expect = BTreeSet::new();
    let mut zones = 0;
    for (id, f) in &m.files {
        assert_eq!(m.by_path.get(&f.path), Some(id));
        assert!(!f.is_empty(), "empty file entries are dropped");
        for (s, e, q) in f.zones.runs() {
            expect.insert((q, *id, s));
            zones += e - s;
        }
        for &(_, q) in &f.truncs {
            expect.insert((q, *id, TRUNC_SLOT));
        }
        assert!(f
            .truncs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    }
    assert_eq!(m.by_path.len(), m.files.len());
    assert_eq!(m.led.index, expect);
    assert_eq!(m.led.zones, zones);
}

#[test]
fn zone_size_must_be_a_sane_power_of_two() {
    for bad in [0, 256, 3000, 4097, 1 << 31] {
        let err = DirtyMap::new(bad).unwrap_err().to_string();
        assert!(err.contains("power of two"), "{err}");
    }
    assert_eq!(DirtyMap::new(1 << 17).unwrap().zone_size(), 131_072);
}

#[test]
fn writes_round_outward_to_whole_zones() {
    let mut m = map();
    m.mark_write(b"f", 0, 1, 1).unwrap();
    assert_eq!(m.zones(b"f"), [(0, ZS)]);
    m.mark_write(b"f", 2 * ZS - 1, 2, 1).unwrap(); // straddles zones 1 and 2
    assert_eq!(m.zones(b"f"), [(0, 3 * ZS)]);
    m.mark_write(b"f", 5 * ZS, ZS, 1).unwrap(); // exactly zone 5
    m.mark_write(b"f", 9 * ZS, 0, 1).unwrap(); // empty: nothing
    assert_eq!(m.zones(b"f"), [(0, 3 * ZS), (5 * ZS, ZS)]);
    // The very end of the offset space, and one byte beyond it.
    m.mark_write(b"g", u64::MAX - 10, 10, 2).unwrap();
    assert_eq!(m.zones(b"g"), [(u64::MAX - ZS + 1, ZS)]);
    assert!(m.mark_write(b"g", u64::MAX - 10, 11, 2).is_err());
    assert!(m.mark_write(b"../g", 0, 1, 2).is_err());
    assert_eq!(m.stats().zones, 5);
    check_invariants(&m);
}

#[test]
fn zones_join_neighbouring_runs_of_different_seqs() {
    let mut m = map();
    m.mark_write(b"f", 0, ZS, 1).unwrap();
    m.mark_write(b"f", ZS, ZS, 2).unwrap();
    assert_eq!(m.zones(b"f"), [(0, 2 * ZS)]);
    assert_eq!(m.runs(b"f"), [(0, ZS, 1), (ZS, ZS, 2)]);
}

#[test]
fn confirm_keeps_a_zone_until_its_latest_write_is_flushed() {
    let mut m = map();
    m.mark_write(b"f", 0, ZS, 1).unwrap();
    m.mark_write(b"f", ZS, ZS, 2).unwrap();
    m.mark_write(b"f", 0, 10, 3).unwrap(); // zone 0 dirtied again
    m.mark_namespace(Kind::Chmod, b"f", None, 4).unwrap();
    assert_eq!(m.confirm(2), 1, "only zone 1's run is fully flushed");
    assert_eq!(m.runs(b"f"), [(0, ZS, 3)]);
    assert_eq!(m.changelog().count(), 1);
    check_invariants(&m);
    assert_eq!(m.confirm(3), 1);
    assert!(m.zones(b"f").is_empty());
    assert!(
        paths(&m).is_empty(),
        "a file with nothing left is forgotten"
    );
    assert!(!m.is_empty(), "the chmod is still unconfirmed");
    assert_eq!(m.confirm(4), 1);
    assert!(m.is_empty());
    check_invariants(&m);
}

#[test]
fn truncation_forgets_zones_beyond_and_remembers_the_smallest_size() {
    let mut m = map();
    m.mark_write(b"f", 0, 10 * ZS, 1).unwrap();
    m.mark_truncate(b"f", ZS + 1, 2).unwrap();
    assert_eq!(
        m.zones(b"f"),
        [(0, 2 * ZS)],
        "the zone holding the new end stays"
    );
    m.mark_write(b"f", 20 * ZS, 1, 3).unwrap();
    m.mark_truncate(b"f", 100 * ZS, 4).unwrap(); // extends: nothing to forget
    assert_eq!(m.zones(b"f"), [(0, 2 * ZS), (20 * ZS, ZS)]);
    assert_eq!(m.truncate_to(b"f"), Some(ZS + 1));
    // Once the cut to ZS + 1 is on the secondary's disk, the one to 100 zones still is not.
    m.confirm(2);
    assert_eq!(m.truncate_to(b"f"), Some(100 * ZS));
    m.mark_truncate(b"f", 7, 5).unwrap(); // undercuts the pending one
    assert_eq!(m.truncate_to(b"f"), Some(7));
    assert_eq!(m.files[&m.by_path[&b"f".to_vec()]].truncs, [(7, 5)]);
    assert!(
        m.zones(b"f").is_empty(),
        "zone 20 is cut, zones 0-1 were confirmed"
    );
    assert_eq!(paths(&m), ["f"], "the pending cut keeps the file listed");
    check_invariants(&m);
    m.confirm(5);
    assert!(m.is_empty());
}

#[test]
fn rename_moves_a_directory_subtree_and_replaces_the_target() {
    let mut m = map();
    for (i, p) in ["d", "d/a", "d/b/c", "d!", "dx/y", "e/old"]
        .iter()
        .enumerate()
    {
        m.mark_write(p.as_bytes(), 0, 1, i as u64 + 1).unwrap();
    }
    m.mark_namespace(Kind::Rename, b"d", Some(b"e"), 10)
        .unwrap();
    assert_eq!(paths(&m), ["d!", "dx/y", "e", "e/a", "e/b/c"]);
    assert_eq!(m.runs(b"e/b/c"), [(0, ZS, 3)], "entries keep their seqs");
    check_invariants(&m);
    m.mark_namespace(Kind::Exchange, b"e/b", Some(b"dx"), 11)
        .unwrap();
    assert_eq!(paths(&m), ["d!", "dx/c", "e", "e/a", "e/b/y"]);
    m.mark_namespace(Kind::Rmdir, b"e/b", None, 12).unwrap();
    m.mark_namespace(Kind::Unlink, b"d!", None, 13).unwrap();
    assert_eq!(paths(&m), ["dx/c", "e", "e/a"]);
    assert_eq!(
        log(&m),
        [
            (10, "rename", "d".into(), Some("e".into())),
            (11, "exchange", "e/b".into(), Some("dx".into())),
            (12, "rmdir", "e/b".into(), None),
            (13, "unlink", "d!".into(), None),
        ]
    );
    check_invariants(&m);
}

#[test]
fn create_starts_a_file_from_nothing() {
    let mut m = map();
    m.mark_write(b"f", 0, 3 * ZS, 1).unwrap();
    m.mark_namespace(Kind::Create, b"f", None, 2).unwrap();
    assert!(m.zones(b"f").is_empty());
    assert_eq!(m.truncate_to(b"f"), Some(0));
    assert_eq!(paths(&m), ["f"]);
}

#[test]
fn namespace_kinds_check_their_paths() {
    let mut m = map();
    assert!(m.mark_namespace(Kind::Rename, b"a", None, 1).is_err());
    assert!(m.mark_namespace(Kind::Unlink, b"a", Some(b"b"), 1).is_err());
    assert!(m
        .mark_namespace(Kind::Link, b"a", Some(b"/abs"), 1)
        .is_err());
    m.mark_namespace(Kind::Symlink, b"l", Some(b"/anywhere/../x"), 1)
        .unwrap();
    assert_eq!(
        log(&m),
        [(1, "symlink", "l".into(), Some("/anywhere/../x".into()))]
    );
}

#[test]
fn record_maps_every_replicated_operation() {
    let mut m = map();
    let v = |s: &str| s.as_bytes().to_vec();
    let ops = [
        Op::Mkdir {
            path: v("d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Op::Create {
            path: v("d/f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: v("d/f"),
            offset: ZS,
            mtime_ns: None,
            data: vec![1; 10],
        },
        Op::Fallocate {
            path: v("d/f"),
            mode: 0,
            offset: 8 * ZS,
            length: ZS,
        },
        Op::Barrier,
        Op::Link {
            existing: v("d/f"),
            new: v("h"),
        },
        Op::Rename {
            old: v("d"),
            new: v("e"),
            flags: 0,
        },
        Op::Rename {
            old: v("e"),
            new: v("h"),
            flags: RENAME_EXCHANGE,
        },
        Op::Chown {
            path: v("h/f"),
            uid: 1,
            gid: 1,
        },
    ];
    for (seq, op) in ops.iter().enumerate() {
        m.record(op, seq as u64 + 1).unwrap();
    }
    assert_eq!(m.zones(b"h/f"), [(ZS, ZS), (8 * ZS, ZS)]);
    assert_eq!(m.truncate_to(b"h/f"), Some(0));
    let kinds: Vec<_> = log(&m).into_iter().map(|r| r.1).collect();
    assert_eq!(
        kinds,
        ["mkdir", "create", "link", "rename", "exchange", "chown"]
    );
    assert_eq!(log(&m)[2], (6, "link", "d/f".into(), Some("h".into())));
    assert_eq!(m.last_seq(), 9);
}

#[test]
fn memory_follows_the_writes_not_the_file_size() {
    // 10,000 random 4 KiB writes into a 1 TiB file: a bitmap of 4 KiB zones would be 32 MiB.
    let mut m = map();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for seq in 1..=10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (1 << 40)) & !0xFFF;
        m.mark_write(b"big", offset + (seq & 1) * 100, 4096, seq)
            .unwrap();
    }
    let s = m.stats();
    assert!(s.runs <= 10_000 && s.zones >= 10_000, "{s:?}");
    assert!(s.memory_bytes < 2 << 20, "{s:?}");
    check_invariants(&m);
    // Above the horizon a sequential stream is one run, whatever its seqs.
    m.set_horizon(Some(10_000));
    for seq in 10_001..=60_000 {
        m.mark_write(b"seq", (seq - 10_001) * 4096, 4096, seq)
            .unwrap();
    }
    assert_eq!(m.runs(b"seq"), [(0, 50_000 * 4096, 60_000)]);
    assert!(m.stats().memory_bytes < 2 << 20);
    m.confirm(10_000);
    assert_eq!(paths(&m), ["seq"]);
}

#[test]
fn random_operations_match_a_naive_model() {
    // Model: per path, zone -> latest seq. Paths move on rename like the map's.
    let names: [&[u8]; 6] = [b"a", b"b", b"d/x", b"d/y", b"e/x", b"d"];
    let mut m = map();
    let mut model: BTreeMap<Vec<u8>, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut x: u64 = 12345;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    for seq in 1..3000 {
        let path = names[usize::try_from(next(6)).unwrap()];
        match next(10) {
            0..=5 => {
                let (off, len) = (next(40 * ZS), next(4 * ZS));
                m.mark_write(path, off, len, seq).unwrap();
                if len > 0 {
                    let zones = model.entry(path.to_vec()).or_default();
                    for z in off / ZS..=(off + len - 1) / ZS {
                        zones.insert(z, seq);
                    }
                }
            }
            6 => {
                let size = next(40 * ZS);
                m.mark_truncate(path, size, seq).unwrap();
                if let Some(z) = model.get_mut(path) {
                    z.retain(|&k, _| k < size.div_ceil(ZS));
                }
            }
            7 => {
                let (from, to): (&[u8], &[u8]) = if next(2) == 0 {
                    (b"d", b"e")
                } else {
                    (b"e", b"d")
                };
                m.mark_namespace(Kind::Rename, from, Some(to), seq).unwrap();
                let under = |p: &[u8], root: &[u8]| {
                    p == root || (p.starts_with(root) && p[root.len()] == b'/')
                };
                model.retain(|p, _| !under(p, to));
                let moved: Vec<_> = model.keys().filter(|p| under(p, from)).cloned().collect();
                for p in moved {
                    let z = model.remove(&p).unwrap();
                    let mut q = to.to_vec();
                    q.extend_from_slice(&p[from.len()..]);
                    model.insert(q, z);
                }
            }
            8 => {
                m.mark_namespace(Kind::Unlink, path, None, seq).unwrap();
                model.remove(path);
            }
            _ => {
                let flushed = seq.saturating_sub(next(200));
                m.confirm(flushed);
                for z in model.values_mut() {
                    z.retain(|_, &mut q| q > flushed);
                }
            }
        }
        model.retain(|_, z| !z.is_empty());
        for p in m.paths() {
            assert!(
                m.runs(p).is_empty() || model.contains_key(p),
                "seq {seq}: stray zones"
            );
        }
        for (p, z) in &model {
            let got: BTreeMap<u64, u64> = m
                .runs(p)
                .into_iter()
                .flat_map(|(off, len, q)| (off / ZS..(off + len) / ZS).map(move |k| (k, q)))
                .collect();
            assert_eq!(&got, z, "seq {seq} path {}", String::from_utf8_lossy(p));
        }
        check_invariants(&m);
    }
}

#[test]
fn save_and_load_round_trip() {
    let dir = tempdir();
    let file = dir.join("dirty");
    let mut m = map();
    m.mark_write(b"a/f", 3, 3 * ZS, 1).unwrap();
    m.mark_write(b"a/f", 10 * ZS, 1, 2).unwrap();
    m.mark_truncate(b"g", 5, 3).unwrap();
    m.mark_namespace(Kind::Rename, b"x", Some(b"y"), 4).unwrap();
    m.mark_namespace(Kind::Symlink, b"l", Some(b"../t"), 5)
        .unwrap();
    m.set_horizon(Some(4));
    m.save(&file, false).unwrap();
    let back = DirtyMap::load(&file).unwrap();
    assert!(!back.clean(), "saved without the clean flag: distrusted");
    assert_eq!(back.runs(b"a/f"), m.runs(b"a/f"));
    assert_eq!(back.truncate_to(b"g"), Some(5));
    assert_eq!(log(&back), log(&m));
    assert_eq!((back.last_seq(), back.horizon()), (5, Some(4)));
    assert_eq!(back.stats(), m.stats());
    check_invariants(&back);
    back.save(&file, true).unwrap();
    assert!(
        !DirtyMap::load(&file).unwrap().clean(),
        "a distrusted map stays distrusted"
    );
    m.save(&file, true).unwrap();
    assert!(DirtyMap::load(&file).unwrap().clean());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["dirty"], "no temporary file left behind");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_corrupt_file_is_refused_naming_it() {
    let dir = tempdir();
    let file = dir.join("dirty");
    let mut m = map();
    m.mark_write(b"f", 0, 1, 1).unwrap();
    m.save(&file, true).unwrap();
    let good = std::fs::read(&file).unwrap();
    let reason = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        let err = DirtyMap::load(&file).unwrap_err();
        assert!(matches!(err, MirrorError::CorruptFile { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: corrupt dirty map: ", file.display())),
            "{msg}"
        );
        msg
    };
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    assert!(reason(&flipped).contains("checksum"));
    assert!(reason(&good[..good.len() - 1]).contains("length"));
    assert!(reason(b"hello").contains("magic"));
    // A future version, with a valid checksum, is refused for its version.
    let mut newer = good[..good.len() - 32].to_vec();
    newer[8] = 2;
    let sum = blake3::hash(&newer);
    newer.extend_from_slice(sum.as_bytes());
    assert!(reason(&newer).contains("version 2"));
    std::fs::remove_file(&file).unwrap();
    assert!(
        matches!(DirtyMap::load(&file), Err(MirrorError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mirrorcore-dirty-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
