//! Tests of the forwarder's tracking hook over a real link.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::*;
use crate::receive::Receiver;
use crate::wire::Reply;

const KEY: &[u8] = b"forwarder tracking test key";
const ZS: u64 = 4096;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorcore-fwd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn map() -> Arc<Mutex<DirtyMap>> {
    Arc::new(Mutex::new(DirtyMap::new(ZS).unwrap()))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(port: u16, mode: Mode) -> Forwarder {
    connect_with(port, mode, Duration::from_secs(5))
}

fn connect_with(port: u16, mode: Mode, send_timeout: Duration) -> Forwarder {
    Forwarder::connect(&Config {
        peer: "127.0.0.1".into(),
        port,
        key: KEY.to_vec(),
        mode,
        queue_bytes: 1 << 20,
        send_timeout,
        connect_timeout: Duration::from_secs(5),
        bind_addr: None,
    })
    .unwrap()
}

#[test]
fn a_tracker_writes_locally_and_records_everything_after_the_maps_last_seq() {
    let dir = scratch("tracker");
    let file = std::fs::File::create(dir.join("f")).unwrap();
    let m = map();
    lock(&m).mark_write(b"old", 0, 1, 41).unwrap();
    let t = Forwarder::tracker(m.clone());
    assert!(!t.connected() && t.tracking());
    assert_eq!(
        t.write(file.as_raw_fd(), Some(b"f"), 3 * ZS, b"abc")
            .unwrap(),
        3
    );
    assert_eq!(
        std::fs::read(dir.join("f")).unwrap().len() as u64,
        3 * ZS + 3
    );
    t.forward(&Op::Unlink {
        path: b"old".to_vec(),
    })
    .unwrap();
    t.barrier(Some(Duration::ZERO)).unwrap(); // nothing to wait for
    t.write(file.as_raw_fd(), None, 0, b"x").unwrap(); // nameless: not recorded
    let m = lock(&m);
    assert_eq!(m.zones(b"f"), [(3 * ZS, ZS)]);
    assert_eq!(m.runs(b"f"), [(3 * ZS, ZS, 42)]);
    let log: Vec<_> = m.changelog().map(|r| (r.seq, r.kind.name())).collect();
    assert_eq!(log, [(43, "unlink")]);
    assert!(m.zones(b"old").is_empty() && m.clean());
    assert_eq!(m.last_seq(), 43); // barriers and nameless writes take no seq here
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flushed_acks_confirm_and_a_lost_link_leaves_what_was_not_flushed() {
    let (src, dst) = (scratch("link-src"), scratch("link-dst"));
    let rx = Receiver::start(&dst, "127.0.0.1", 0, KEY, 1 << 20, 0).unwrap();
    let fwd = connect(rx.port(), Mode::Second);
    let file = std::fs::File::create(src.join("f")).unwrap();
    fwd.forward(&Op::Create {
        path: b"f".to_vec(),
        mode: 0o644,
        uid: u32::MAX,
        gid: u32::MAX,
    })
    .unwrap();
    // Before attaching: not recorded.
    fwd.write(file.as_raw_fd(), Some(b"f"), 0, b"before")
        .unwrap();
    let m = map();
    lock(&m).mark_write(b"seen", 0, 1, 7).unwrap();
    lock(&m).clear();
    fwd.track(Some(m.clone()));
    fwd.write(file.as_raw_fd(), Some(b"f"), ZS, b"tracked")
        .unwrap();
    assert_eq!(lock(&m).runs(b"f"), [(ZS, ZS, 7 + 3)]);
    fwd.barrier(None).unwrap();
    rx.drain(Duration::from_secs(5)).unwrap();
    wait_for("the flushed ack empties the map", || lock(&m).is_empty());
    assert!(fwd.flushed_seq() >= 3);

    rx.close();
    wait_for("the link drops", || !fwd.connected());
    fwd.write(file.as_raw_fd(), Some(b"f"), 5 * ZS, b"lost")
        .unwrap();
    fwd.forward(&Op::Mkdir {
        path: b"d".to_vec(),
        mode: 0o755,
        uid: u32::MAX,
        gid: u32::MAX,
    })
    .unwrap();
    {
        let m = lock(&m);
        assert_eq!(m.zones(b"f"), [(5 * ZS, ZS)]);
        let log: Vec<_> = m.changelog().map(|r| r.kind.name()).collect();
        assert_eq!(log, ["mkdir"]);
    }
    // Detached: later operations are not recorded.
    fwd.track(None);
    assert!(!fwd.tracking());
    fwd.write(file.as_raw_fd(), Some(b"g"), 0, b"x").unwrap();
    assert!(lock(&m).zones(b"g").is_empty());
    assert!(fwd.stats().contains(&("unsent", 3)));
    fwd.close();
    let _ = (std::fs::remove_dir_all(src), std::fs::remove_dir_all(dst));
}

#[test]
fn many_writes_to_the_same_zones_keep_the_map_small() {
    let dir = scratch("small");
    let file = std::fs::File::create(dir.join("f")).unwrap();
    let m = map();
    let t = Forwarder::tracker(m.clone());
    lock(&m).set_horizon(Some(0));
    for i in 0..10_000u64 {
        t.write(file.as_raw_fd(), Some(b"f"), (i % 64) * 512, &[1; 512])
            .unwrap();
    }
    let s = lock(&m).stats();
    assert_eq!((s.files, s.zones, s.runs), (1, 8, 1));
    assert!(s.memory_bytes < 4096, "{s:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A relay to `port` (one connection) whose primary-to-secondary direction is held while
/// `open` is false: what the primary sends then reaches the secondary late, or never.
fn gated_relay(port: u16, open: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (down, _) = listener.accept().unwrap();
        let up = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let pipe = |mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<AtomicBool>>| {
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    while gate.as_ref().is_some_and(|g| !g.load(Ordering::SeqCst)) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        };
        pipe(
            down.try_clone().unwrap(),
            up.try_clone().unwrap(),
            Some(open),
        );
        pipe(up, down, None);
    });
    me
}

#[test]
fn a_reply_that_never_comes_fails_the_link_after_send_timeout() {
    let dst = scratch("stall");
    let rx = Receiver::start(&dst, "127.0.0.1", 0, KEY, 1 << 20, 0).unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let stall = Duration::from_millis(300);
    let fwd = connect_with(gated_relay(rx.port(), open.clone()), Mode::Second, stall);
    let seq = fwd.request(&Op::RequestNeeds).unwrap();
    assert_eq!(fwd.take(seq, None).unwrap(), Reply::Needs(Vec::new()));
    // An idle link is no stall: a wait counts from its own start.
    std::thread::sleep(2 * stall);
    let seq = fwd.request(&Op::RequestList { dir: Vec::new() }).unwrap();
    assert_eq!(fwd.take(seq, None).unwrap(), Reply::List(Vec::new()));

    open.store(false, Ordering::SeqCst); // the requests never reach the secondary
    let needs = fwd.request(&Op::RequestNeeds).unwrap();
    let list = fwd.request(&Op::RequestList { dir: Vec::new() }).unwrap();
    let start = Instant::now();
    let (a, b) = std::thread::scope(|sc| {
        let other = sc.spawn(|| fwd.take(list, Some(Duration::from_secs(60))));
        (fwd.take(needs, None), other.join().unwrap())
    });
    let waited = start.elapsed();
    assert!(
        matches!(a, Err(MirrorError::Disconnected(ref why)) if why.contains("no progress")),
        "{a:?}"
    );
    assert!(matches!(b, Err(MirrorError::Disconnected(_))), "{b:?}");
    assert!(
        waited >= stall && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(!fwd.connected());
    open.store(true, Ordering::SeqCst);
    fwd.close();
    rx.close();
    let _ = std::fs::remove_dir_all(dst);
}
