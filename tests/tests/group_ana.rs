//! Host steering by load (`control::steer`) with real peers: two `quire serve` peers
//! on loopback, a real etcd, and two hosts of our own initiator, each with a
//! controller on both peers (a host identity per host, as a multipath host has) and
//! a pace of reads through the path it uses. Each host acts as Linux native
//! multipath does: it reads the ANA log of its path and moves its I/O to its other
//! path when its own turns non-optimized.
//! 1. Both hosts read through a: a serves both, b neither. a steers one host away
//!    (its path non-optimized to that host's controller only) and that host moves to
//!    b; the other keeps an optimized path to a.
//! 2. Balanced, nothing moves any more: over several steering intervals the states
//!    stay as they are (no flapping), and `quire stats hosts` names a as the peer
//!    that steers the host away.
//! 3. The steered host stops its I/O: a steers it back (optimized again).
//!
//! No command fails at any point, and every read comes back with the data written.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quire_perf::initiator::{read, write, Connection, Controller, ControllerOptions, DataDir};
use quire_tests::group::{cli_json, setup, start_group, wait_for, Peer, PeerSpec};
use quire_tests::serial;
use quire_wire::nvme::log::{parse_ana_log, AnaState, LID_ANA};
use quire_wire::nvme::status::SCT_PATH;

const TEST: &str = "a_busy_peer_steers_one_host_away_and_back_and_nothing_flaps";
const LEAVE_TEST: &str = "a_leaving_peer_turns_its_paths_inaccessible_and_its_host_moves_without_error";
/// Blocks of the volume the hosts read: all of it (its pages lie half on each peer, so
/// the pages' share of the load is even).
const BLOCKS: usize = 64 * 256;
/// The pause between two reads of a host (a steady few hundred reads a second).
const PACE: Duration = Duration::from_millis(2);
/// A read's deadline.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The ANA state of a path whose controller does not answer.
const DEAD: u8 = 0;

/// One host: a controller and an I/O queue on each peer, and the path it uses.
struct Host {
    name: String,
    paths: Vec<(Controller, Connection)>,
}

/// What a host's thread shares with the test.
#[derive(Default)]
struct HostState {
    /// The path (peer index) it sends its reads through.
    path: AtomicUsize,
    /// Each path's ANA state as the host last read it (`AnaState as u8`).
    ana: [std::sync::atomic::AtomicU8; 2],
    /// Reads completed.
    reads: AtomicU64,
    /// Reads that failed with a path status and went down the other path.
    path_errors: AtomicU64,
    /// Reads that failed on a broken connection and went down the other path.
    transport_errors: AtomicU64,
    /// It read an ANA log with its path inaccessible.
    saw_inaccessible: AtomicBool,
    /// Keep going (keep-alives and ANA logs).
    run: AtomicBool,
    /// Keep reading.
    reading: AtomicBool,
    /// A command failed or a read came back wrong: what.
    error: std::sync::Mutex<Option<String>>,
}

fn connect(name: &str, peers: &[Peer], hostid: [u8; 16]) -> Host {
    let paths = peers
        .iter()
        .map(|p| {
            let mut opts = ControllerOptions::new(p.target_addr(), Some("nqn.2026-11.io.quire:s".into()));
            opts.hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:host-{name}");
            opts.hostid = hostid;
            let c = Controller::connect(&opts).expect("connect the admin queue");
            let mut io = c.connect_io_queue(1, 4, 4096).expect("connect an I/O queue");
            io.set_polled().expect("polled");
            (c, io)
        })
        .collect();
    Host { name: name.to_string(), paths }
}

/// The ANA state of the path's one group, as its controller reports it; `None`: the
/// controller does not answer (its peer went away).
fn ana(c: &mut Controller) -> Option<AnaState> {
    let page = c.get_log_page(LID_ANA, 64, 0).ok()?;
    let (_, groups) = parse_ana_log(&page).expect("an ANA log");
    assert_eq!(groups.len(), 1, "one ANA group per peer");
    Some(groups[0].state)
}

/// The host's loop: a read through its path every PACE, its paths' ANA states every
/// 200 ms; on a non-optimized path with an optimized other, it moves (as multipath).
/// A read that fails with a path status (ANA inaccessible) or on a broken connection
/// is retried on the other path, as multipath does; a path whose controller does not
/// answer is dead (state 0).
fn drive(mut h: Host, st: Arc<HostState>, expect: Arc<Vec<u8>>) {
    let fail = |what: String| {
        *st.error.lock().unwrap() = Some(what);
    };
    let mut next_look = Instant::now();
    let mut dead = [false; 2];
    let mut lba = 0usize;
    while st.run.load(Ordering::Relaxed) {
        if Instant::now() >= next_look {
            next_look = Instant::now() + Duration::from_millis(200);
            for (i, (c, _)) in h.paths.iter_mut().enumerate() {
                if dead[i] {
                    continue;
                }
                let state = match c.keep_alive_if_due() {
                    Ok(_) => ana(c).map_or(DEAD, |a| a as u8),
                    Err(_) => DEAD,
                };
                dead[i] = state == DEAD;
                if state == AnaState::Inaccessible as u8 {
                    st.saw_inaccessible.store(true, Ordering::Relaxed);
                }
                st.ana[i].store(state, Ordering::Relaxed);
            }
            let cur = st.path.load(Ordering::Relaxed);
            let opt = |i: usize| st.ana[i].load(Ordering::Relaxed) == AnaState::Optimized as u8;
            if !opt(cur) && opt(1 - cur) {
                st.path.store(1 - cur, Ordering::Relaxed);
            }
        }
        if !st.reading.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let cur = st.path.load(Ordering::Relaxed);
        lba = (lba + 2053) % BLOCKS;
        let mut result =
            h.paths[cur].1.execute(read(1, lba as u64, 1), DataDir::FromController, &[], 4096, "Read", IO_TIMEOUT);
        if let Err(e) = &result {
            // Multipath: a path error or a broken path sends the command down the other.
            let path_status =
                matches!(e, quire_perf::initiator::Error::Status { status, .. } if status.sct == SCT_PATH);
            let counter = if path_status { &st.path_errors } else { &st.transport_errors };
            counter.fetch_add(1, Ordering::Relaxed);
            st.path.store(1 - cur, Ordering::Relaxed);
            result = h.paths[1 - cur].1.execute(
                read(1, lba as u64, 1),
                DataDir::FromController,
                &[],
                4096,
                "Read",
                IO_TIMEOUT,
            );
        }
        let cur = st.path.load(Ordering::Relaxed);
        match result {
            Ok((_, data)) => {
                let at = lba * 4096;
                if data[..] != expect[at..at + 4096] {
                    return fail(format!(
                        "{}: block {lba} read through path {cur} differs from what was written",
                        h.name
                    ));
                }
            }
            Err(e) => return fail(format!("{}: read of block {lba} through path {cur}: {e}", h.name)),
        }
        st.reads.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(PACE);
    }
}

/// Writes the hosts' region through `peer` with a pattern and returns it.
fn fill(peer: &Peer) -> Vec<u8> {
    let mut data = vec![0u8; BLOCKS * 4096];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / 4096 * 31 + i % 4096 * 7).to_le_bytes()[0];
    }
    let mut opts = ControllerOptions::new(peer.target_addr(), Some("nqn.2026-11.io.quire:s".into()));
    opts.kato_ms = 0;
    let c = Controller::connect(&opts).expect("connect");
    let mut io = c.connect_io_queue(1, 4, 128 * 1024).expect("I/O queue");
    for (n, chunk) in data.chunks(128 * 1024).enumerate() {
        let slba = (n * 32) as u64;
        io.execute(write(1, slba, 32), DataDir::ToController, chunk, 0, "Write", Duration::from_secs(10))
            .expect("write the region");
    }
    io.close();
    c.shutdown().expect("shutdown");
    data
}

fn states(sts: &[Arc<HostState>]) -> Vec<(usize, [u8; 2])> {
    sts.iter().map(|s| (s.path.load(Ordering::Relaxed), [0, 1].map(|i| s.ana[i].load(Ordering::Relaxed)))).collect()
}

fn check_errors(sts: &[Arc<HostState>]) {
    for s in sts {
        if let Some(e) = s.error.lock().unwrap().clone() {
            panic!("{e}");
        }
    }
}

/// Waits until `ok` holds of the hosts' states, failing on a host's error.
fn wait_states(sts: &[Arc<HostState>], what: &str, within: Duration, ok: impl Fn(&[(usize, [u8; 2])]) -> bool) {
    let end = Instant::now() + within;
    loop {
        check_errors(sts);
        let now = states(sts);
        if ok(&now) {
            return;
        }
        assert!(Instant::now() < end, "{what}: not within {within:?}; hosts (path, ANA of a and b): {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The peers' log lines about steering.
fn steer_lines(peers: &[Peer]) -> String {
    let mut out = String::new();
    for p in peers {
        for l in p.proc.log().lines().filter(|l| l.contains("steered")) {
            out.push_str(&format!("{}: {l}\n", p.name));
        }
    }
    out
}

const OPT: u8 = AnaState::Optimized as u8;
const NON: u8 = AnaState::NonOptimized as u8;

#[test]
fn a_busy_peer_steers_one_host_away_and_back_and_nothing_flaps() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup(TEST) else { return };
    let ep = etcd.endpoint();
    let spec = |name: &str| PeerSpec {
        steer_hosts: true,
        steer_interval_s: 3,
        load_min_iops: 20,
        ..PeerSpec::new(name, &ep, &secret)
    };
    let peers = start_group(dir.path(), &[spec("a"), spec("b")]);
    let expect = volume_s(&peers, "1");

    // 1. Two hosts, both reading through a.
    let mut sts = Vec::new();
    let mut threads = Vec::new();
    for (id, name) in [(1u8, "h1"), (2, "h2")] {
        let host = connect(name, &peers, [id; 16]);
        let st = Arc::new(HostState::default());
        st.run.store(true, Ordering::Relaxed);
        st.reading.store(true, Ordering::Relaxed);
        sts.push(st.clone());
        let expect = expect.clone();
        threads.push(std::thread::spawn(move || drive(host, st, expect)));
    }
    wait_states(&sts, "one host steered from a to b", Duration::from_secs(60), |s| {
        let moved: Vec<_> = s.iter().filter(|(p, ana)| *p == 1 && ana[0] == NON).collect();
        moved.len() == 1
    });
    let moved = states(&sts).iter().position(|(p, _)| *p == 1).unwrap();
    let stayed = 1 - moved;
    eprintln!("host h{} steered to b; states {:?}", moved + 1, states(&sts));

    // 2. Balanced: the steered host stays at b, the other at a with an optimized path,
    //    over four steering intervals.
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        check_errors(&sts);
        let s = states(&sts);
        let why = steer_lines(&peers);
        assert_eq!(s[moved], (1, [NON, OPT]), "the steered host stays steered (host h{}): {s:?}\n{why}", moved + 1);
        assert_eq!(s[stayed], (0, [OPT, OPT]), "the other host is never steered (host h{}): {s:?}\n{why}", stayed + 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let hosts = cli_json(&peers[1].socket(), &["stats", "hosts"]);
    let entry = |n: usize| {
        let host = format!("nqn.2014-08.org.nvmexpress:uuid:host-h{}", n + 1);
        hosts.as_array().and_then(|l| l.iter().find(|h| h["host"] == host.as_str() && h["volume"] == "s").cloned())
    };
    assert_eq!(entry(moved).map(|e| e["steered_from"].clone()), Some(serde_json::json!(["a"])), "{hosts}");
    assert_eq!(entry(stayed).map(|e| e["steered_from"].clone()), Some(serde_json::json!([])), "{hosts}");
    for p in &peers {
        let log = p.proc.log();
        assert_eq!(log.matches("host steered away").count(), usize::from(p.name == "a"), "peer {}:\n{log}", p.name);
    }

    // 3. The steered host goes quiet (still connected, as an idle host is): a steers
    //    it back, the other host's path never changes.
    sts[moved].reading.store(false, Ordering::Relaxed);
    wait_states(&sts, "the quiet host's path to a optimized again", Duration::from_secs(60), |s| {
        s[moved].1 == [OPT, OPT] && s[stayed] == (0, [OPT, OPT])
    });
    assert!(peers[0].proc.log().contains("host steered back"), "a's log says why it steered back");
    for s in &sts {
        s.run.store(false, Ordering::Relaxed);
    }
    for t in threads {
        t.join().unwrap();
    }
    check_errors(&sts);
    assert!(sts.iter().all(|s| s.reads.load(Ordering::Relaxed) > 100), "both hosts read");
    for s in &sts {
        let errors = (s.path_errors.load(Ordering::Relaxed), s.transport_errors.load(Ordering::Relaxed));
        assert_eq!(errors, (0, 0), "no read failed on either path (path status, broken connection)");
    }
}

/// Makes volume "s" (64 MiB, `replicas` copies of each page) and writes a pattern all
/// over it; returns the pattern.
fn volume_s(peers: &[Peer], replicas: &str) -> Arc<Vec<u8>> {
    let v = cli_json(&peers[0].socket(), &["volume", "create", "s", "--size", "64M", "--replicas", replicas]);
    assert_eq!(v["name"], "s", "{v}");
    for p in peers {
        wait_for(p, "s routed on both peers", Duration::from_secs(15), |p| {
            !quire_tests::group::sets(p, "s").is_empty()
        });
    }
    Arc::new(fill(&peers[0]))
}

/// Starts a host's thread reading through its first path.
fn start_host(
    name: &str,
    id: u8,
    peers: &[Peer],
    expect: &Arc<Vec<u8>>,
) -> (Arc<HostState>, std::thread::JoinHandle<()>) {
    let host = connect(name, peers, [id; 16]);
    let st = Arc::new(HostState::default());
    st.run.store(true, Ordering::Relaxed);
    st.reading.store(true, Ordering::Relaxed);
    let (s, expect) = (st.clone(), expect.clone());
    (st, std::thread::spawn(move || drive(host, s, expect)))
}

/// Waits until the host completed `n` more reads than now.
fn wait_reads(st: &Arc<HostState>, n: u64, what: &str) {
    let want = st.reads.load(Ordering::Relaxed) + n;
    let end = Instant::now() + Duration::from_secs(30);
    while st.reads.load(Ordering::Relaxed) < want {
        check_errors(std::slice::from_ref(st));
        assert!(Instant::now() < end, "{what}: the host's reads stalled at {}", st.reads.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer stopping with a host connected: its path turns inaccessible (the host gets
/// the ANA-inaccessible status, a path error it retries on its other path, or reads it
/// in the ANA log), the peer serves on until the host stopped sending, then exits; the
/// host never sees a broken connection under a command, and reads on through the
/// other peer.
#[test]
fn a_leaving_peer_turns_its_paths_inaccessible_and_its_host_moves_without_error() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup(LEAVE_TEST) else { return };
    let ep = etcd.endpoint();
    let mut peers = start_group(dir.path(), &[PeerSpec::new("a", &ep, &secret), PeerSpec::new("b", &ep, &secret)]);
    let expect = volume_s(&peers, "2");
    let (st, thread) = start_host("h", 1, &peers, &expect);
    wait_reads(&st, 200, "through a");
    assert_eq!(st.path.load(Ordering::Relaxed), 0, "the host reads through a");

    let t = Instant::now();
    let status = peers[0].proc.terminate(Duration::from_secs(20));
    let took = t.elapsed();
    let log = peers[0].proc.log();
    assert!(status.is_some_and(|s| s.success()), "a exits cleanly on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("leaving: this peer's paths are ANA inaccessible"), "a says it leaves:\n{log}");
    assert!(log.contains("left: no host command lately"), "a left once its host stopped sending:\n{log}");
    assert!(took < Duration::from_secs(10), "a took {took:?} to leave");
    eprintln!("a left in {took:?}");

    wait_reads(&st, 200, "through b after a left");
    st.run.store(false, Ordering::Relaxed);
    thread.join().unwrap();
    check_errors(std::slice::from_ref(&st));
    let (path_errors, transport_errors) =
        (st.path_errors.load(Ordering::Relaxed), st.transport_errors.load(Ordering::Relaxed));
    eprintln!(
        "path errors retried on b: {path_errors}; ANA log read inaccessible: {}",
        st.saw_inaccessible.load(Ordering::Relaxed)
    );
    assert_eq!(st.path.load(Ordering::Relaxed), 1, "the host reads through b");
    assert!(
        path_errors > 0 || st.saw_inaccessible.load(Ordering::Relaxed),
        "the host learnt a's path was inaccessible before a went"
    );
    assert_eq!(transport_errors, 0, "no command of the host was under way when a closed its connections");
}
