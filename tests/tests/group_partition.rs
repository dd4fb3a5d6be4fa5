//! Replicated pages across a network partition: three `quire serve` peers and a real
//! etcd, peer c in a network namespace of its own joined to the test's by a veth pair
//! (a, b and etcd listen on the pair's host-side address, c on its inside address).
//! Under verified I/O through a, the pair is cut: c loses etcd and its links to a and
//! b, but runs on. Then:
//! - c stops serving replicated pages before its lease can have expired (fenced): a
//!   write (and a read) sent to c from inside its namespace, to a page c led, is
//!   refused with a path error, never acknowledged, and c counts it as fenced;
//! - a and b evict c from every set (state `out`), the sets c led get a new leader,
//!   the host's I/O through a sees no error and verifies, and a write through a to a
//!   page c led succeeds;
//! - the partition lasts 12 s (past the peer links' stall timeout); once the pair is
//!   up again, c registers again, is admitted back and rebuilt under the host's I/O,
//!   every member of every set is in sync and the volumes healthy; the write c
//!   refused is nowhere, the one a took is everywhere, and every peer reads the same
//!   bytes;
//! - the host's I/O through a saw no error at all (checked last, after the data).
//!
//! Needs root and iproute2's `ip` (network namespaces, veth), etcd and `quire-perf`.

use std::time::{Duration, Instant};

use quire_tests::etcd::etcd_available;
use quire_tests::group::{
    c_refuses, client_in, create_replicated, cut_c_off, first_led_by, group_logs, heal_and_resync, pattern, perf,
    perf_bin, same_everywhere, split_group, volume_on, wait_for, Client, BLOCKS_PER_PAGE,
};
use quire_tests::netns::netns_available;
use quire_tests::{require, serial, tail};

const TEST: &str = "a_peer_cut_off_by_a_partition";

/// How long c stays cut off: past the peer links' 10 s stall timeout (the links to c
/// are given up and tried again), within the 25 s hold time of the host's parts.
const PARTITION: Duration = Duration::from_secs(12);
/// The host's verified I/O through a: from before the cut to after the heal.
const IO_SECONDS: &str = "25";

#[test]
fn a_peer_cut_off_by_a_partition_stops_serving_and_comes_back_in_sync() {
    let _serial = serial();
    if !require(TEST, netns_available()) || !require(TEST, perf_bin().map(|_| ())) || !require(TEST, etcd_available()) {
        return;
    }
    let (ns, _dir, etcd, peers) = split_group("part", |_| {});
    let logs = || group_logs(&peers, &etcd);
    create_replicated(&peers, 0, "rep");
    create_replicated(&peers, 0, "probe");

    // A page of `probe` that c leads: written through c from inside its namespace
    // (round 1) before the partition, through c again during it (round 2, refused),
    // and through a during it (round 3, taken by the new leader).
    let on_c = first_led_by(&peers[0], "probe", "c") * BLOCKS_PER_PAGE + 8;
    let mut inside = client_in(&ns, &peers[2], "probe", Duration::from_secs(15));
    inside.write(on_c, &pattern(on_c, 1, 2)).expect("a write through c before the partition");
    assert_eq!(inside.read(on_c, 2).expect("read it back through c"), pattern(on_c, 1, 2));
    drop(inside);

    let trid = peers[0].trid("rep");
    let io = std::thread::spawn(move || {
        perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", IO_SECONDS, "--verify", "-r", &trid])
    });
    wait_for(&peers[0], "replicated writes under way", Duration::from_secs(20), |p| {
        p.reactor_sum("replica_parts") > 500
    });

    let fenced_before = peers[2].reactor_sum("fenced");
    // The partition.
    let cut = Instant::now();
    let switched = cut_c_off(&ns, &peers, &["rep", "probe"]);
    println!("c out of every set {switched:.1?} after the cut");

    // c, its lease gone from etcd, serves nothing replicated: a write to the page it
    // led, sent to c from inside its namespace, is refused with a path error, and so is
    // a read (c's copy may be stale by now).
    c_refuses(&ns, &peers[2], "probe", on_c, 2, &logs);
    let fenced = peers[2].reactor_sum("fenced");

    // The page's new leader takes a write through a.
    let mut a = Client::connect(&peers[0], "probe", Duration::from_secs(15));
    a.write(on_c, &pattern(on_c, 3, 2)).expect("a write through a during the partition");
    assert_eq!(a.read(on_c, 2).expect("read it back through a"), pattern(on_c, 3, 2));
    let mut b = Client::connect(&peers[1], "probe", Duration::from_secs(15));
    assert_eq!(b.read(on_c, 2).expect("read it through b"), pattern(on_c, 3, 2));
    drop((a, b));
    // The volumes are short of a copy, as a and b see them.
    for p in &peers[..2] {
        for v in ["rep", "probe"] {
            assert_eq!(volume_on(p, v)["health"], "degraded", "{} on {}", v, p.name);
        }
    }

    // The partition lasts PARTITION (the scenario's length, not a wait for a
    // condition: every condition above was waited for), then ends while the host's
    // I/O still runs.
    if let Some(left) = PARTITION.checked_sub(cut.elapsed()) {
        std::thread::sleep(left);
    }
    println!("healing {:.1?} after the cut", cut.elapsed());
    let resynced = heal_and_resync(&ns, &peers, &["rep", "probe"]);
    println!("every copy in sync {resynced:.1?} after the heal");
    let run = io.join().expect("perf thread");
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}\n{}", run.text, logs());
    let rebuilt: u64 = peers.iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    assert!(rebuilt > 0, "the leaders copied to c what it missed");

    // The write c refused is nowhere; the one a took is everywhere, c's copy included.
    for p in &peers {
        let mut cl = Client::connect(p, "probe", Duration::from_secs(15));
        assert_eq!(cl.read(on_c, 2).expect("read after the heal"), pattern(on_c, 3, 2), "on {}", p.name);
    }
    same_everywhere(&peers, "probe");
    same_everywhere(&peers, "rep");
    // The host saw no error through a: no part of its I/O failed for the partition.
    let fenced_after = peers[2].reactor_sum("fenced");
    assert!(
        run.ok,
        "I/O through a across the partition (c out after {switched:.1?}; c fenced {fenced_before} before the cut, \
         {fenced} after its eviction, {fenced_after} at the end): {}\n{}",
        run.text,
        logs()
    );
    for p in &peers[..2] {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}: {}", p.name, tail(&p.proc.log(), 20));
    }
}
