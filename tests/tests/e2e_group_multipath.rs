//! End-to-end: the real Linux NVMe/TCP host with native multipath against a group of
//! `quire serve` peers (loopback, a real etcd), one path per peer to one namespace.
//!
//! The guest runs `tests/guest/scripts/group-multipath.sh`; this side starts the
//! peers, makes a volume whose pages lie on all of them, and acts when the guest
//! says so (`MARK phase N ...`):
//! 1. `nvme connect-all --persistent`: three paths (distinct controller IDs and ANA
//!    groups, all optimized), one namespace head, `fio --verify` over it;
//! 2. under `fio`, one peer is killed with SIGKILL and started again: no I/O error;
//! 3. under `fio`, a fourth peer joins: the persistent discovery controller's event
//!    makes the host connect a fourth path;
//! 4. one path only: what was written through all paths verifies through one peer
//!    (every other page forwarded), and a new region is written and verified.
//!
//! Afterwards every peer forwarded or served parts, no command failed, nothing was
//! held out (no path error).

use std::time::Duration;

use quire_tests::group::{
    cli_json, owners_of, setup, start_group, volume_on, wait_all, wait_for, DeviceSpec, Peer, PeerSpec,
};
use quire_tests::{require_guest, serial, tail, Counter, Guest, GuestOptions, HOST_FROM_GUEST};

const TEST: &str = "a_multipath_host_sees_one_path_per_peer_and_no_error_when_a_peer_restarts_or_joins";

#[test]
fn a_multipath_host_sees_one_path_per_peer_and_no_error_when_a_peer_restarts_or_joins() {
    if !require_guest(TEST) {
        return;
    }
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup(TEST) else { return };
    let ep = etcd.endpoint();
    let spec = |name: &str| PeerSpec {
        device: DeviceSpec::File,
        lease_ttl_s: 3,
        advertise: Some(HOST_FROM_GUEST.to_string()),
        demo_size: "16M",
        ..PeerSpec::new(name, &ep, &secret)
    };
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
    let before = host_writes(&peers);
    let end = quire_tests::deadline(Duration::from_secs(30));
    while host_writes(&peers) < before + 50 {
        assert!(std::time::Instant::now() < end, "{TEST}: fio's writes do not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    peers[2].proc.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    peers[2].restart();
    step.set(2);
    let line = wait(&mut guest, "MARK phase 2 verified", 300, &peers);
    eprintln!("{}", line.trim());

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

    // 4. one path (b).
    let line = wait(&mut guest, "MARK phase 4 verified", 300, &peers);
    eprintln!("{}", line.trim());
    let result = guest.wait();
    assert!(result.success(), "{TEST}: the guest script failed (rc={}):\n{}", result.rc, tail(&result.log, 60));
    assert!(result.log.contains("PASS group-multipath.sh"), "{TEST}: no PASS line");

    let mut all: Vec<&Peer> = peers.iter().collect();
    all.push(&d);
    for p in &all {
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

/// Write commands the hosts sent for `mp`, summed over `peers`.
fn host_writes(peers: &[Peer]) -> u64 {
    peers
        .iter()
        .map(|p| {
            let vols = cli_json(&p.socket(), &["stats", "volumes"]);
            vols.as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == "mp"))
                .and_then(|v| v["write_ops"].as_u64())
                .unwrap_or(0)
        })
        .sum()
}
