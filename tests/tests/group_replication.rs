//! Replicated pages with real peers: three `quire serve` peers on loopback with a real
//! etcd and a volume with two copies of every page. A peer killed with SIGKILL under
//! verified I/O costs the host no error and loses no acknowledged write (the other
//! member of each of its sets leads it from a new epoch, the dead member is out); a
//! peer killed and restarted within the hold time costs the host no error either; a
//! write acknowledged before the kill reads back through every surviving peer.

use std::time::{Duration, Instant};

use quire_tests::group::{cli_json, pattern, perf, volume_on, wait_for, Client, Peer};
use quire_tests::{serial, tail};
use serde_json::Value;

fn three(test: &str) -> Option<(tempfile::TempDir, quire_tests::etcd::Etcd, Vec<Peer>)> {
    quire_tests::group::three_peers(test, 25_000)
}

fn pages(peer: &Peer, volume: &str) -> Value {
    cli_json(&peer.socket(), &["volume", "pages", volume])
}

/// Every set the volume uses, as (leader, [(member, state)]).
fn sets(peer: &Peer, volume: &str) -> Vec<(String, Vec<(String, String)>)> {
    let p = pages(peer, volume);
    p["sets"]
        .as_array()
        .map(|ss| {
            ss.iter()
                .map(|s| {
                    let members = s["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| (m["peer"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
                        .collect();
                    (s["leader"].as_str().unwrap().to_string(), members)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Creates `name` with two copies through `via`; waits until every peer routes it with
/// every set of two in-sync members on distinct peers, and each peer leading some.
fn create_replicated(peers: &[Peer], via: usize, name: &str) {
    let v = cli_json(
        &peers[via].socket(),
        &["volume", "create", name, "--size", "48M", "--page-size", "4M", "--replicas", "2"],
    );
    assert_eq!(v["name"], name, "create {name}: {v}");
    for p in peers {
        wait_for(p, &format!("{name} with two in-sync copies of every page"), Duration::from_secs(15), |p| {
            let s = sets(p, name);
            let leaders: std::collections::BTreeSet<&str> = s.iter().map(|(l, _)| l.as_str()).collect();
            !s.is_empty()
                && leaders.len() == 3
                && s.iter().all(|(_, ms)| ms.len() == 2 && ms[0].0 != ms[1].0 && ms.iter().all(|(_, st)| st == "sync"))
        });
    }
    assert_eq!(pages(&peers[0], name)["replicas"], 2);
}

/// The first page of a set led by `leader`.
fn first_led_by(peer: &Peer, volume: &str, leader: &str) -> u64 {
    let p = pages(peer, volume);
    let runs = p["runs"].as_array().unwrap();
    runs.iter().find(|r| r["owner"] == leader).unwrap_or_else(|| panic!("no page led by {leader}: {p}"))["first"]
        .as_u64()
        .unwrap()
}

const BLOCKS_PER_PAGE: u64 = 1024;

/// The Prometheus text of `peer` (`stats_metrics` over its management socket).
fn metrics(peer: &Peer) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(peer.socket()).expect("management socket");
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stats_metrics\"}\n").expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("answer");
    let v: Value = serde_json::from_str(&line).expect("json");
    v["result"].as_str().unwrap_or_else(|| panic!("stats_metrics: {v}")).to_string()
}

#[test]
fn a_peer_killed_for_good_costs_the_host_no_error_and_loses_no_acknowledged_write() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three("a_peer_killed_for_good") else { return };
    create_replicated(&peers, 0, "rep");
    // A write acknowledged before the kill, to a page that c leads, of a volume the
    // random I/O does not touch.
    create_replicated(&peers, 1, "keep");
    let on_c = first_led_by(&peers[0], "keep", "c") * BLOCKS_PER_PAGE + 8;
    let mut a = Client::connect(&peers[0], "keep", Duration::from_secs(15));
    let health = volume_on(&peers[0], "keep");
    assert_eq!((health["replicas"].as_u64(), health["health"].as_str()), (Some(2), Some("healthy")), "{health}");
    a.write(on_c, &pattern(on_c, 11, 2)).expect("write to a page c leads");
    let trid = peers[0].trid("rep");
    let io = std::thread::spawn(move || {
        perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "14", "--verify", "-r", &trid])
    });
    wait_for(&peers[0], "replicated writes under way", Duration::from_secs(20), |p| {
        p.reactor_sum("replica_parts") > 500
    });
    peers[2].proc.kill9();
    let killed = Instant::now();
    // c's lease expires (3 s), the coordinator takes c out of every set and names the
    // other member leader; the host sees none of it.
    for p in &peers[..2] {
        wait_for(p, "c out of every set, no set led by c", Duration::from_secs(20), |p| {
            let s = [sets(p, "rep"), sets(p, "keep")].concat();
            !s.is_empty()
                && s.iter().all(|(l, ms)| {
                    l != "c"
                        && ms.iter().all(|(m, st)| (m == "c") == (st == "out"))
                        && ms.iter().any(|(_, st)| st == "sync")
                })
        });
    }
    let switched = killed.elapsed();
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through a across c's death (switched in {switched:.1?}): {}", run.text);
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    for p in &peers[..2] {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}: {}", p.name, tail(&p.proc.log(), 20));
    }
    // The write acknowledged before the kill reads back through a and through b.
    assert_eq!(a.read(on_c, 2).expect("read through a"), pattern(on_c, 11, 2));
    let mut b = Client::connect(&peers[1], "keep", Duration::from_secs(15));
    assert_eq!(b.read(on_c, 2).expect("read through b"), pattern(on_c, 11, 2));
    // And new writes to it go on, at the one copy left, through either peer.
    b.write(on_c, &pattern(on_c, 12, 2)).expect("write after the switch");
    assert_eq!(a.read(on_c, 2).expect("read it through a"), pattern(on_c, 12, 2));
    // The volume says it is short of copies, on every live peer and in the metrics.
    for p in &peers[..2] {
        let v = volume_on(p, "keep");
        assert_eq!(v["health"], "degraded", "{}: {v}", p.name);
        assert!(v["degraded_pages"].as_u64().unwrap() > 0, "{v}");
        let text = metrics(p);
        assert!(text.contains("quire_volume_degraded_pages{volume=\"keep\"} "), "{}", tail(&text, 40));
    }
    // One copy is what the operator now asks for: the dead member is dropped from
    // every set and the volume is healthy again, online.
    let v = cli_json(&peers[1].socket(), &["volume", "set-replicas", "keep", "1"]);
    assert_eq!(v["name"], "keep", "{v}");
    for p in &peers[..2] {
        wait_for(p, "keep healthy with one copy", Duration::from_secs(20), |p| {
            let v = volume_on(p, "keep");
            v["health"] == "healthy" && v["replicas"] == 1 && sets(p, "keep").iter().all(|(_, ms)| ms.len() == 1)
        });
    }
    assert_eq!(b.read(on_c, 2).expect("read after the change"), pattern(on_c, 12, 2));
}

#[test]
fn a_peer_killed_and_restarted_costs_the_host_no_error() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three("a_peer_killed_and_restarted") else { return };
    create_replicated(&peers, 0, "rep");
    let trid = peers[0].trid("rep");
    let io = std::thread::spawn(move || {
        perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "12", "--verify", "-r", &trid])
    });
    wait_for(&peers[0], "replicated writes under way", Duration::from_secs(20), |p| {
        p.reactor_sum("replica_parts") > 500
    });
    peers[2].proc.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    peers[2].restart();
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through a across c's restart: {}", run.text);
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    assert_eq!(peers[0].reactor_sum("path_errors"), 0, "{}", tail(&peers[0].proc.log(), 30));
    // c's previous run left every set it was in (its new run has a new lease, and the
    // sets it led have new leaders); its new run is admitted back into them as a member
    // being rebuilt by delta (only the pieces written while it was away), which takes
    // every write meanwhile. Until the copy is done the volume says so.
    wait_for(&peers[0], "c back in its sets, to be rebuilt by delta", Duration::from_secs(20), |p| {
        let s = sets(p, "rep");
        s.iter().all(|(l, _)| l != "c")
            && s.iter().any(|(_, ms)| ms.iter().any(|(m, st)| m == "c" && st == "rebuild (delta)"))
    });
    assert_eq!(volume_on(&peers[0], "rep")["health"], "rebuilding");
}
