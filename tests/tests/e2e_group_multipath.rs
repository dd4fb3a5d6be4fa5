//! End-to-end: the real Linux NVMe/TCP host with native multipath against a group of
//! `quire serve` peers (loopback, a real etcd), one path per peer to one namespace.
//!
//! The guest runs `tests/guest/scripts/group-multipath.sh`; this side starts the
//! peers, makes a volume whose pages lie on all of them, and acts when the guest
//! says so (`MARK phase N ...`):
//! 1. `nvme connect-all --persistent`: three paths (distinct controller IDs and ANA
//!    groups, all optimized), one namespace head, `fio --verify` over it;
//! 2. under `fio`, one peer is killed with SIGKILL and started again: no I/O error;
//!    the volume keeps two copies of each page, and the counters show a delta
//!    rebuild: of the copies the restarted peer holds, those of sets it led are
//!    copied whole (it may hold writes nobody else has), those of pages `fio` wrote
//!    while it was away get the pieces it missed, and the others nothing at all;
//! 3. under `fio`, a fourth peer joins: the persistent discovery controller's event
//!    makes the host connect a fourth path;
//!    Then, round-robin over the four paths under `fio`, d is stopped (SIGTERM): its
//!    path turns ANA inaccessible, the host's multipath stops sending there, d leaves
//!    once no command came for 300 ms (its log says so; a host that kept sending
//!    would hold it for the whole grace), and `fio` sees no error;
//! 4. one path only: what was written through all paths verifies through one peer
//!    (every other page forwarded), and a new region is written and verified.
//!
//! Afterwards every peer forwarded or served parts, no command failed, nothing was
//! held out (no path error).

use std::time::Duration;

use quire_tests::group::{
    all_in_sync, cli_json, guest_peer, host_writes, owners_of, page_members, setup, start_group, volume_on, wait_all,
    wait_for, Peer, PeerSpec,
};
use quire_tests::{require_guest, serial, tail, Counter, Guest, GuestOptions};

/// The guest's fio regions, MiB (phase N writes region N-1).
const REGION_MB: u64 = 32;
/// The volume's page size, MiB.
const PAGE_MB: u64 = 4;

const TEST: &str = "a_multipath_host_sees_one_path_per_peer_and_no_error_when_a_peer_restarts_or_joins";

#[test]
fn a_multipath_host_sees_one_path_per_peer_and_no_error_when_a_peer_restarts_or_joins() {
    if !require_guest(TEST) {
        return;
    }
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup(TEST) else { return };
    let ep = etcd.endpoint();
    let spec = |name: &str| PeerSpec { demo_size: "16M", ..guest_peer(name, &ep, &secret) };
    let mut peers = start_group(dir.path(), &[spec("a"), spec("b"), spec("c")]);
    let v = cli_json(&peers[0].socket(), &["volume", "create", "mp", "--size", "192M", "--page-size", "4M"]);
    assert_eq!(v["name"], "mp", "{v}");
    for p in &peers {
        wait_for(p, "mp spread over a, b and c", Duration::from_secs(15), |p| {
            owners_of(p, "mp").iter().map(|(_, n)| *n).collect::<Vec<_>>() == [16, 16, 16]
        });
    }
    let step = Counter::start("step");
    let env = [
        ("DISC_PORT", peers[0].port.to_string()),
        ("PORT_ONE", peers[1].port.to_string()),
        ("NQN", "nqn.2026-11.io.quire:mp".to_string()),
        ("CTRL_PORT", step.port().to_string()),
        ("PEERS", "3".to_string()),
        ("REGION_MB", REGION_MB.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let opts =
        GuestOptions { timeout: Duration::from_secs(600), label: "group-multipath".into(), ..Default::default() };
    let mut guest = Guest::spawn_script("group-multipath.sh", &env, &opts).expect("boot the guest");
    let wait = |guest: &mut Guest, pattern: &str, secs: u64, peers: &[Peer]| -> String {
        guest.wait_for_log(pattern, quire_tests::deadline(Duration::from_secs(secs))).unwrap_or_else(|e| {
            let logs: Vec<String> = peers
                .iter()
                .map(|p| format!("-- {} ({}):\n{}", p.name, p.proc.log_path().display(), tail(&p.proc.log(), 15)))
                .collect();
            panic!("{TEST}: waiting for {pattern:?}: {e}\n{}", logs.join("\n"))
        })
    };

    let line = wait(&mut guest, "MARK phase 1 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // 2. c killed and restarted while fio writes through every path.
    wait(&mut guest, "MARK phase 2 writing", 60, &peers);
    let before = host_writes(&peers, "mp");
    let end = quire_tests::deadline(Duration::from_secs(30));
    while host_writes(&peers, "mp") < before + 50 {
        assert!(std::time::Instant::now() < end, "{TEST}: fio's writes do not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_kill = page_members(&peers[0], "mp");
    let copied_before: u64 = peers.iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    peers[2].proc.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    peers[2].restart();
    step.set(2);
    let line = wait(&mut guest, "MARK phase 2 verified", 300, &peers);
    eprintln!("{}", line.trim());
    // c back in every set, rebuilt by delta.
    for p in &peers {
        wait_for(p, "every member of every set in sync again", Duration::from_secs(60), |p| all_in_sync(p, &["mp"]));
    }
    let copied: u64 = peers.iter().map(|p| p.reactor_sum("rebuild_bytes")).sum::<u64>() - copied_before;
    let page_bytes = PAGE_MB << 20;
    let region = (REGION_MB / PAGE_MB)..(2 * REGION_MB / PAGE_MB);
    // Written so far: region 0 (phase 1) and region 1 (phase 2); a page nobody wrote
    // is allocated nowhere and copied as zeroes (no bytes).
    let written = 0..(2 * REGION_MB / PAGE_MB);
    let has_c = |ms: &Vec<String>| ms.iter().any(|m| m == "c");
    let held = before_kill.iter().filter(|(_, ms)| has_c(ms)).count() as u64;
    let led_written = before_kill.iter().enumerate().filter(|(i, (l, _))| written.contains(&(*i as u64)) && l == "c");
    let led_written = led_written.count() as u64;
    let written_not_led = before_kill
        .iter()
        .enumerate()
        .filter(|(i, (l, ms))| region.contains(&(*i as u64)) && l != "c" && has_c(ms))
        .count() as u64;
    eprintln!(
        "c held {held} pages, led {led_written} written ones, and {written_not_led} others were written while it \
         was away; {copied} bytes copied"
    );
    let held_written =
        before_kill.iter().enumerate().filter(|(i, (_, ms))| written.contains(&(*i as u64)) && has_c(ms)).count()
            as u64;
    assert!(
        held_written > led_written + written_not_led,
        "c holds written pages that fio left alone while it was away"
    );
    assert!(
        copied >= led_written * page_bytes && copied <= (led_written + written_not_led) * page_bytes,
        "delta rebuild: {copied} bytes copied to c, expected the {led_written} written pages it led in full and at \
         most the {written_not_led} others fio wrote while it was away ({} bytes would be a full rebuild of the \
         written pages)",
        held_written * page_bytes
    );

    // 3. d joins while fio writes.
    wait(&mut guest, "MARK phase 3 writing", 60, &peers);
    let mut d = Peer::spawn(&spec("d"), &dir.path().join("d"));
    d.wait_serving();
    let all: Vec<&Peer> = peers.iter().chain([&d]).collect();
    wait_all(&all, "d live", Duration::from_secs(30), |s| quire_tests::group::peers_in(s, "live").len() == 4);
    wait(&mut guest, "MARK discovery log changed", 60, &peers);
    let line = wait(&mut guest, "MARK phase 3 verified", 300, &peers);
    eprintln!("{}", line.trim());
    wait_for(&d, "mp on d", Duration::from_secs(10), |d| !volume_on(d, "mp").is_null());

    // 3b. d leaves gently while fio writes round-robin over the four paths.
    wait(&mut guest, "MARK phase 3b writing", 60, &peers);
    let d_writes = host_writes(std::slice::from_ref(&d), "mp");
    let end = quire_tests::deadline(Duration::from_secs(30));
    while host_writes(std::slice::from_ref(&d), "mp") < d_writes + 50 {
        assert!(std::time::Instant::now() < end, "{TEST}: fio's writes do not arrive at d");
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = d.proc.terminate(Duration::from_secs(20)).and_then(|s| s.code());
    let log = d.proc.log();
    assert_eq!(code, Some(0), "{TEST}: d exits cleanly on SIGTERM:\n{}", tail(&log, 20));
    assert!(log.contains("leaving: this peer's paths are ANA inaccessible"), "{TEST}: d leaves:\n{}", tail(&log, 20));
    assert!(
        log.contains("left: no host command lately"),
        "{TEST}: the host stopped sending to d once its path was inaccessible:\n{}",
        tail(&log, 20)
    );
    step.set(3);
    let line = wait(&mut guest, "MARK phase 3b verified", 300, &peers);
    eprintln!("{}", line.trim());

    // 4. one path (b).
    let line = wait(&mut guest, "MARK phase 4 verified", 300, &peers);
    eprintln!("{}", line.trim());
    let result = guest.wait();
    assert!(result.success(), "{TEST}: the guest script failed (rc={}):\n{}", result.rc, tail(&result.log, 60));
    assert!(result.log.contains("PASS group-multipath.sh"), "{TEST}: no PASS line");

    // d has left (what it answered a leaving peer's way is not counted here).
    for p in &peers {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}: no forward held out", p.name);
        let vols = cli_json(&p.socket(), &["stats", "volumes"]);
        for v in vols.as_array().unwrap() {
            assert_eq!(v["errors"], 0, "{}: {v}", p.name);
        }
    }
    assert!(peers[1].reactor_sum("forwarded_parts") > 0, "b forwarded in phase 4");
    for p in &peers {
        assert!(p.reactor_sum("link_served") > 0, "{} served parts for its peers", p.name);
    }
}
