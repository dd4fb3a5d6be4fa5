//! Volume limits (`quire volume set-limits`, `volume::qos`) with real peers: three
//! `quire serve` peers on loopback, a real etcd, `quire-perf` as the hosts (each run
//! is a host of its own: a fresh host NQN).
//! - a volume limit set through one peer shows on every peer, and holds group-wide
//!   while two hosts read through two different peers at once: their IOPS together
//!   stay within the limit (the peers split it by their load reports), no command
//!   fails, and both peers counted commands that waited;
//! - lifted, nothing waits any more;
//! - a per-host limit holds for each host, not for the two together;
//! - a bandwidth limit holds for large writes through a third peer;
//! - the limits are in the volume's record: a restarted peer still enforces them;
//! - the group's copy rate for page moves, set at runtime (`quire group set-limits`):
//!   a written page's copy takes as long as that rate says (the copier cannot go
//!   faster), and the rate shows in every peer's `quire rebalance status`.
//!
//! Rates are upper bounds (a limiter cannot let more through, however fast the
//! machine) and loose lower bounds (a fraction of a few hundred IOPS, which any
//! machine that runs the suite reaches many times over).

use std::time::Duration;

use quire_tests::group::{cli_json, page_members, perf, rebalance_status, volume_on, wait_for, Peer, PerfRun};
use quire_tests::serial;
use serde_json::Value;

/// `quire-perf` through `peer`: `pattern` of `size` bytes at queue depth 16, `warmup`
/// seconds not counted, then `secs` counted.
fn load(peer: &Peer, pattern: &str, size: &str, warmup: u32, secs: u32) -> std::thread::JoinHandle<PerfRun> {
    let trid = peer.trid("q");
    let (a, t) = (warmup.to_string(), secs.to_string());
    let (pattern, size) = (pattern.to_string(), size.to_string());
    std::thread::spawn(move || perf(&["-q", "16", "-o", &size, "-w", &pattern, "-a", &a, "-t", &t, "-r", &trid]))
}

/// A run's total: (IOPS, MiB/s), after checking it ran clean.
fn figures(run: &PerfRun, what: &str) -> (f64, f64) {
    assert!(run.ok, "{what}: quire-perf failed:\n{}", run.text);
    let t = &run.json["total"];
    assert_eq!(t["errors"], 0, "{what}: no command may fail for a limit:\n{}", run.text);
    (t["iops"].as_f64().expect("iops"), t["mibps"].as_f64().expect("mibps"))
}

/// The I/O ports of the NVMe entries of `peer`'s discovery log (read through its I/O
/// port), in order.
fn discovery_ports(peer: &Peer) -> Vec<u16> {
    let opts = quire_perf::initiator::ControllerOptions::new(peer.target_addr(), None);
    let Ok(entries) = quire_perf::initiator::discover(&opts) else { return Vec::new() };
    let mut ports: Vec<u16> = Vec::new();
    for e in entries.iter().filter(|e| e.subtype == quire_wire::nvme::log::SUBTYPE_NVME && e.subnqn.ends_with(":q")) {
        let port = e.trsvcid.trim().parse().unwrap_or(0);
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

fn peers_port(peers: &[Peer], i: usize) -> u16 {
    peers[i].port
}

fn stat(peer: &Peer, key: &str) -> u64 {
    let s = cli_json(&peer.socket(), &["stats", "volumes"]);
    s.as_array().and_then(|l| l.iter().find(|v| v["name"] == "q")).and_then(|v| v[key].as_u64()).unwrap_or(0)
}

fn set_limits(peer: &Peer, args: &[&str]) {
    let mut all = vec!["volume", "set-limits", "q"];
    all.extend_from_slice(args);
    assert_eq!(cli_json(&peer.socket(), &all), Value::Bool(true), "quire {all:?}");
}

fn wait_limits(peers: &[Peer], want: Value) {
    for p in peers {
        wait_for(p, &format!("limits {want} on every peer"), Duration::from_secs(15), |p| {
            volume_on(p, "q")["limits"] == want
        });
    }
}

#[test]
fn volume_and_host_limits_hold_group_wide_across_peers() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = quire_tests::group::three_peers("group_qos", 25_000) else { return };
    let v = cli_json(&peers[0].socket(), &["volume", "create", "q", "--size", "64M", "--replicas", "1"]);
    assert_eq!(v["name"], "q", "{v}");
    for p in &peers {
        wait_for(p, "q routed everywhere", Duration::from_secs(15), |p| !quire_tests::group::sets(p, "q").is_empty());
    }

    // 1. 600 IOPS for the volume, set through b; two hosts read through a and b.
    const IOPS: f64 = 600.0;
    set_limits(&peers[1], &["--iops", "600"]);
    wait_limits(&peers, serde_json::json!({"iops": 600}));
    let (ra, rb) = (load(&peers[0], "randread", "4096", 8, 10), load(&peers[1], "randread", "4096", 8, 10));
    let (a, b) = (figures(&ra.join().unwrap(), "host via a"), figures(&rb.join().unwrap(), "host via b"));
    let sum = a.0 + b.0;
    eprintln!("volume limit {IOPS}: via a {:.0} + via b {:.0} = {sum:.0} IOPS", a.0, b.0);
    assert!(sum <= IOPS * 1.1 + 10.0, "the two hosts together exceed the limit: {sum:.0} IOPS");
    assert!(sum >= IOPS * 0.6, "the hosts together reach well under the limit: {sum:.0} IOPS");
    assert!(a.0 >= IOPS * 0.2 && b.0 >= IOPS * 0.2, "each path keeps a share: {a:?} {b:?}");
    let waits = [stat(&peers[0], "qos_waits"), stat(&peers[1], "qos_waits")];
    assert!(waits.iter().all(|&w| w > 0), "commands waited on both paths: {waits:?}");
    assert_eq!(stat(&peers[2], "qos_waits"), 0, "c served no host");
    // Discovery lists the least loaded peers first: c, which took no host's commands,
    // before a itself in a's discovery log (and before b).
    wait_for(&peers[0], "c's path first in a's discovery log", Duration::from_secs(30), |a| {
        let ports = discovery_ports(a);
        let at = |p: u16| ports.iter().position(|&x| x == p);
        match (at(peers_port(&peers, 2)), at(a.port), at(peers_port(&peers, 1))) {
            (Some(c), Some(a), Some(b)) => c < a && c < b,
            _ => false,
        }
    });

    // 2. Lifted: nothing waits any more.
    set_limits(&peers[2], &["--iops", "0"]);
    wait_limits(&peers, Value::Null);
    let before = stat(&peers[0], "qos_waits");
    let free = figures(&load(&peers[0], "randread", "4096", 0, 3).join().unwrap(), "no limit");
    assert_eq!(stat(&peers[0], "qos_waits"), before, "a command waited with no limit set ({free:?})");

    // 3. 150 IOPS for each host: each of two hosts gets about that, together more.
    const HOST_IOPS: f64 = 150.0;
    set_limits(&peers[0], &["--host-iops", "150"]);
    wait_limits(&peers, serde_json::json!({"host_iops": 150}));
    let host_waits = stat(&peers[0], "qos_host_waits");
    let (ra, rb) = (load(&peers[0], "randread", "4096", 6, 8), load(&peers[1], "randread", "4096", 6, 8));
    let (a, b) = (figures(&ra.join().unwrap(), "host 1 via a"), figures(&rb.join().unwrap(), "host 2 via b"));
    eprintln!("host limit {HOST_IOPS}: host 1 {:.0}, host 2 {:.0} IOPS", a.0, b.0);
    for (x, who) in [(a.0, "host 1"), (b.0, "host 2")] {
        assert!(x <= HOST_IOPS * 1.1 + 5.0, "{who} exceeds its limit: {x:.0} IOPS");
        assert!(x >= HOST_IOPS * 0.5, "{who} reaches well under its limit: {x:.0} IOPS");
    }
    assert!(a.0 + b.0 > HOST_IOPS * 1.3, "the limit is each host's, not the two together: {a:?} {b:?}");
    assert!(stat(&peers[0], "qos_host_waits") > host_waits, "host 1's commands waited for its own limit");

    // 4. 2 MiB/s for the volume; 64 KiB writes through c.
    const MIB_S: f64 = 2.0;
    set_limits(&peers[1], &["--host-iops", "0", "--mib-s", "2"]);
    wait_limits(&peers, serde_json::json!({"mib_s": 2}));
    let w = figures(&load(&peers[2], "randwrite", "65536", 6, 8).join().unwrap(), "writes via c");
    eprintln!("bandwidth limit {MIB_S} MiB/s: {:.2} MiB/s", w.1);
    assert!(w.1 <= MIB_S * 1.1 + 0.1, "the writes exceed the limit: {:.2} MiB/s", w.1);
    assert!(w.1 >= MIB_S * 0.5, "the writes reach well under the limit: {:.2} MiB/s", w.1);

    // 5. The limits live in the volume's record: a restarted peer enforces them at once.
    peers[2].proc.kill9();
    peers[2].restart();
    wait_for(&peers[2], "q served again by c", Duration::from_secs(30), |p| volume_on(p, "q")["limits"]["mib_s"] == 2);
    let before = stat(&peers[2], "qos_waits");
    let w = figures(&load(&peers[2], "randwrite", "65536", 0, 4).join().unwrap(), "writes via restarted c");
    assert!(w.1 <= MIB_S * 1.1 + 0.3, "the restarted peer lets more through: {:.2} MiB/s", w.1);
    assert!(stat(&peers[2], "qos_waits") > before, "the restarted peer's commands waited for the limit");

    // 6. Page moves copy at the group's runtime rate: 2 MB/s for a written 4 MiB page.
    let set_rate = |mb_s: &str| {
        let answer = cli_json(&peers[0].socket(), &["group", "set-limits", "--migration-mb-s", mb_s]);
        assert_eq!(answer, Value::Bool(true), "group set-limits --migration-mb-s {mb_s}");
        for p in &peers {
            wait_for(p, "the copy rate in every peer's status", Duration::from_secs(15), |p| {
                rebalance_status(p)["copy_mb_s"]["migration"].as_u64().map(|m| m.to_string()) == Some(mb_s.to_string())
            });
        }
    };
    set_rate("2");
    let members = page_members(&peers[0], "q");
    let from = members[0].0.clone();
    let to = ["a", "b", "c"].into_iter().find(|n| *n != from).expect("another peer");
    let answer = cli_json(&peers[1].socket(), &["page", "move", "q", "0", to]);
    assert!(answer.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == 0)), "{answer}");
    for p in &peers {
        wait_for(p, "page 0 moved", Duration::from_secs(60), |p| {
            cli_json(&p.socket(), &["migration", "list"]).as_array().is_some_and(Vec::is_empty)
                && page_members(p, "q")[0].1 == [to.to_string()]
        });
    }
    let source = peers.iter().find(|p| p.name == from).expect("the source is a peer");
    let log = source.proc.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("rebuild copied everything") && l.contains("volume=q"))
        .unwrap_or_else(|| panic!("{from} copied page 0: {}", quire_tests::tail(&log, 20)));
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    let (bytes, seconds) = (field("bytes"), field("seconds"));
    eprintln!("page 0 copied {from} -> {to} at the 2 MB/s set at runtime: {bytes} bytes in {seconds:.2} s");
    assert!(bytes >= 4.0 * 1024.0 * 1024.0, "a written page copies whole: {line}");
    assert!(seconds >= 1.5, "4 MiB at 2 MB/s take two seconds: {line}");
    set_rate("0");
}
