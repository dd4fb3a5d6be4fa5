//! The coordinator's rebalancer (`replica::rebalance`) with real peers: three
//! `quire serve` peers on loopback, a real etcd, `quire-perf --verify` as the host.
//! - paused, it moves nothing when a fourth peer joins, and says so;
//! - resumed, it gives the fourth peer its share (within the tolerance of its ideal)
//!   with live page moves while the host writes and verifies: no host error, every
//!   block verifies, one copy of each page at the end, the peers read the same bytes;
//! - a pinned page stays where it is;
//! - the configured volume, made by the first peer up alone, is spread too;
//! - `quire rebalance status` shows the shares, the last word and the moves it made;
//! - the load monitor: a hot page is the hottest on every peer, served by its owner;
//!   the host's load (`quire stats hosts`) shows on every peer, through its one path;
//! - two hot pages on one peer: the rebalancer moves one of them to the least busy peer
//!   under the host's writes, and explains it as a move for load.

use std::time::Duration;

use quire_tests::group::{
    cli_json, rebalance_settled, rebalance_status, same_everywhere, setup, share_of, start_group, verified_io,
    volume_on, wait_all, wait_for, DeviceSpec, Peer, PeerSpec,
};
use quire_tests::{require, serial, tail};
use serde_json::Value;

fn spec(name: &str, etcd: &str, secret: &std::path::Path) -> PeerSpec {
    PeerSpec {
        device: DeviceSpec::FileBuffered,
        lease_ttl_s: 3,
        rebalance: true,
        // Two pages at once at 20 MB/s each: the moves overlap the host's I/O.
        rebuild_mb_s: 20,
        ..PeerSpec::new(name, etcd, secret)
    }
}

#[test]
fn a_fourth_peer_receives_its_share_under_io_and_pins_and_pause_hold() {
    let _serial = serial();
    if !require("a_fourth_peer_receives_its_share", quire_tests::group::perf_bin().map(|_| ())) {
        return;
    }
    let Some((dir, etcd, secret)) = setup("a_fourth_peer_receives_its_share") else { return };
    let ep = etcd.endpoint();
    let specs: Vec<PeerSpec> = ["a", "b", "c"].iter().map(|n| spec(n, &ep, &secret)).collect();
    let mut peers = start_group(dir.path(), &specs);
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "rb", "--size", "64M", "--page-size", "4M", "--replicas", "1"],
    );
    assert_eq!(v["name"], "rb", "{v}");
    for p in &peers {
        wait_for(p, "rb routed everywhere", Duration::from_secs(15), |p| volume_on(p, "rb")["pages"] == 16);
    }
    // The configured volume `demo` was placed by the first peer up, alone: the
    // rebalancer spreads it (and rb) until every peer is within the band.
    wait_for(&peers[0], "the rebalancer idle, every peer within the band", Duration::from_secs(60), |p| {
        rebalance_settled(&rebalance_status(p))
    });

    // Paused, it lets a fourth peer join and moves nothing.
    assert_eq!(cli_json(&peers[1].socket(), &["rebalance", "pause"]), Value::Bool(true));
    let mut d = Peer::spawn(&spec("d", &ep, &secret), &dir.path().join("d"));
    d.wait_serving();
    peers.push(d);
    let all: Vec<&Peer> = peers.iter().collect();
    let d = &peers[3];
    wait_all(&all, "d live", Duration::from_secs(20), quire_tests::group::live_are(&["a", "b", "c", "d"]));
    wait_for(&peers[0], "d takes part, paused, no move under way", Duration::from_secs(20), |p| {
        let s = rebalance_status(p);
        share_of(&s, "d")["eligible"] == true
            && s["paused"] == true
            && s["moves"] == 0
            && s["state"].as_str().unwrap_or("").contains("paused")
    });
    let s = rebalance_status(d);
    assert_eq!((share_of(&s, "d")["held_bytes"].as_u64(), s["moves"].as_u64()), (Some(0), Some(0)), "paused: {s}");
    assert!(share_of(&s, "d")["share_pct"].as_u64() == Some(0), "{s}");

    // Page 0, pinned, stays where it is.
    let pinned = 0u64;
    let owner = quire_tests::group::page_members(&peers[0], "rb")[0].0.clone();
    let pin = cli_json(&peers[2].socket(), &["page", "pin", "rb", &pinned.to_string()]);
    assert_eq!(pin, Value::Bool(true));
    wait_for(&peers[0], "the pin seen", Duration::from_secs(10), |p| rebalance_status(p)["pinned"] == 1);

    let before = rebalance_status(&peers[0])["history"].as_array().map_or(0, |h| h.len());
    // Resumed under verified I/O through b: d receives its share.
    let io = verified_io(&peers[1], "rb", 25);
    wait_for(&peers[1], "host I/O under way", Duration::from_secs(20), |p| p.reactor_sum("forwarded_parts") > 300);
    assert_eq!(cli_json(&d.socket(), &["rebalance", "resume"]), Value::Bool(true));
    for p in &all {
        wait_for(p, "every peer within the band, no move under way", Duration::from_secs(120), |p| {
            rebalance_settled(&rebalance_status(p))
        });
    }
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through b across the rebalance: {}\n{}", run.text, tail(&peers[0].proc.log(), 30));
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    assert_eq!(peers[1].reactor_sum("path_errors"), 0, "{}", tail(&peers[1].proc.log(), 20));
    // (Host writes b was replicating as a page's leader when its move cut over went to
    // the new leader: counted, never failed.)
    eprintln!("host writes sent to a new leader at a cut-over: {}", peers[1].reactor_sum("releads"));

    // What it did, and why: since the resume, moves for capacity to d only, with
    // reasons (a move for load, if the host's I/O made one, is another matter).
    let s = rebalance_status(&peers[2]);
    let history = s["history"].as_array().cloned().unwrap_or_default();
    let since: Vec<&Value> = history.iter().skip(before).filter(|m| m["load"] != true).collect();
    assert!(!since.is_empty(), "{s}");
    assert!(since.iter().all(|m| m["to"] == "d" && m["why"].as_str().is_some_and(|w| w.contains("d holds"))), "{s}");
    // Of rb's 16 pages and the demo volume's copies, d holds its quarter (the band
    // allows 10% either way), and the pinned page never moved.
    let members = quire_tests::group::page_members(&peers[0], "rb");
    assert_eq!(members[0].1, vec![owner.clone()], "the pinned page stays on {owner}");
    let on_d = members.iter().filter(|(_, ms)| ms == &vec!["d".to_string()]).count();
    assert!(on_d >= 1, "d received pages of rb: {members:?}");
    // One copy of each page: each peer's store holds exactly the pages of its sets
    // (every page was written by the --verify prefill; moved-away copies are freed).
    for p in &all {
        let held = members.iter().filter(|(_, ms)| ms.contains(&p.name)).count() as u64;
        wait_for(p, "one copy of each page, on its set's peer", Duration::from_secs(20), |p| {
            volume_on(p, "rb")["allocated_pages"].as_u64() == Some(held)
        });
    }
    // The volume keeps a few sets: moved pages joined d's set.
    let used: std::collections::BTreeSet<String> = members.iter().map(|(l, _)| l.clone()).collect();
    let sets = quire_tests::group::sets(&peers[0], "rb");
    assert!(sets.len() <= used.len() + 2, "moved pages coalesce: {sets:?}");
    same_everywhere(&peers, "rb");
}

/// The load monitor (`volume::load`): a page that takes most of the I/O is the
/// hottest on every peer's `quire stats pages` (from the group's reports), served by
/// the peer that owns it, and that peer serves the most in `quire stats peers`.
#[test]
fn a_hot_page_leads_the_load_monitor_on_every_peer() {
    let _serial = serial();
    let Some((_dir, _etcd, peers)) = quire_tests::group::three_peers("a_hot_page", 25_000) else { return };
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "hot", "--size", "48M", "--page-size", "4M", "--replicas", "1"],
    );
    assert_eq!(v["name"], "hot", "{v}");
    for p in &peers {
        wait_for(p, "hot routed everywhere", Duration::from_secs(15), |p| {
            !quire_tests::group::sets(p, "hot").is_empty()
        });
    }
    let hot = quire_tests::group::first_led_by(&peers[0], "hot", "b");
    let cool = quire_tests::group::first_led_by(&peers[0], "hot", "c");
    // Through a: 2000 writes to the hot page (b serves it), 20 to the cool one (c).
    let bpp = quire_tests::group::BLOCKS_PER_PAGE;
    let mut a = quire_tests::group::Client::connect(&peers[0], "hot", Duration::from_secs(15));
    for i in 0..2000u64 {
        let lba = hot * bpp + (i % 256) * 4;
        a.write(lba, &quire_tests::group::pattern(lba, i, 4)).expect("a write to the hot page");
        if i % 100 == 0 {
            let lba = cool * bpp + i / 100;
            a.write(lba, &quire_tests::group::pattern(lba, i, 1)).expect("a write to the cool page");
        }
    }
    for p in &peers {
        wait_for(p, "the hot page first, served by b; the cool one after it", Duration::from_secs(30), |p| {
            let s = cli_json(&p.socket(), &["stats", "pages", "hot", "--top", "3"]);
            let top = s["top"].as_array().cloned().unwrap_or_default();
            top.len() == 2
                && top[0]["page"] == hot
                && top[0]["peers"] == serde_json::json!(["b"])
                && top[1]["page"] == cool
                && top[1]["peers"] == serde_json::json!(["c"])
                && top[0]["kib_s"].as_f64() > top[0]["ops_s"].as_f64().map(|o| o * 15.0)
        });
    }
    wait_for(&peers[2], "b serves the most", Duration::from_secs(30), |p| {
        let s = cli_json(&p.socket(), &["stats", "peers"]);
        let ops = |n: &str| {
            s.as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == n))
                .and_then(|e| e["ops_s"].as_f64())
                .unwrap_or(0.0)
        };
        ops("b") > 10.0 * ops("c").max(0.1) && ops("a") == 0.0
    });
    // The host's side of it: one host on "hot", through a alone, with its rates and
    // latency, seen from every peer.
    for p in &peers {
        wait_for(p, "the host's load through a", Duration::from_secs(30), |p| {
            let s = cli_json(&p.socket(), &["stats", "hosts"]);
            let on_hot: Vec<&Value> =
                s.as_array().map(|l| l.iter().filter(|h| h["volume"] == "hot").collect()).unwrap_or_default();
            on_hot.len() == 1
                && on_hot[0]["peers"] == serde_json::json!(["a"])
                && on_hot[0]["host"].as_str().is_some_and(|h| h.starts_with("nqn."))
                && on_hot[0]["ops_s"].as_f64().is_some_and(|o| o > 0.0)
                && on_hot[0]["kib_s"].as_f64() > on_hot[0]["ops_s"].as_f64().map(|o| o * 3.0)
                && on_hot[0]["latency_us"].as_f64().is_some_and(|l| l > 0.0)
        });
    }
}

/// Hot pages (`replica::rebalance`, load): two pages that take all of the host's I/O,
/// both on one peer, are split by the rebalancer: one of them moves to the least busy
/// peer, live, while the host keeps writing them (no error; every block reads back
/// what was last written, through another peer), and the move is explained as one for
/// load in `quire rebalance status`. The other stays: moving it too would only move
/// the hot spot.
#[test]
fn two_hot_pages_on_one_peer_are_split_by_the_rebalancer() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("two_hot_pages") else { return };
    let ep = etcd.endpoint();
    let specs: Vec<PeerSpec> = ["a", "b", "c"].iter().map(|n| spec(n, &ep, &secret)).collect();
    let peers = start_group(dir.path(), &specs);
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "hl", "--size", "48M", "--page-size", "4M", "--replicas", "1"],
    );
    assert_eq!(v["name"], "hl", "{v}");
    for p in &peers {
        wait_for(p, "hl routed everywhere", Duration::from_secs(15), |p| volume_on(p, "hl")["pages"] == 12);
    }
    wait_for(&peers[0], "capacity spread, the rebalancer idle", Duration::from_secs(60), |p| {
        rebalance_settled(&rebalance_status(p))
    });
    // Two pages of one peer (b), the hot ones.
    let members = quire_tests::group::page_members(&peers[0], "hl");
    let on_b: Vec<usize> = (0..members.len()).filter(|&p| members[p].1 == ["b"]).collect();
    assert!(on_b.len() >= 2, "b holds two pages of hl: {members:?}");
    let hot = [on_b[0], on_b[1]];

    // The host: QD1 writes through a to the two hot pages, until told to stop; the last
    // round written to each block range is kept to check against.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, target) = (stop.clone(), peers[0].target_addr());
        std::thread::spawn(move || {
            let bpp = quire_tests::group::BLOCKS_PER_PAGE;
            let mut c = quire_tests::group::Client::connect_addr(target, "hl", Duration::from_secs(15));
            let mut last = std::collections::BTreeMap::new();
            let mut i = 0u64;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let page = u64::try_from(hot[usize::from(i % 2 == 1)]).expect("a page index");
                let lba = page * bpp + (i / 2 % 256) * 4;
                // The run outlasts the keep-alive timeout: the admin queue's keep-alive.
                if let Err(e) = c.ctrlr().keep_alive_if_due() {
                    return Err(format!("keep-alive: {e:?}"));
                }
                if let Err(s) = c.write(lba, &quire_tests::group::pattern(lba, i, 4)) {
                    return Err(format!("write {i} at lba {lba}: {s:?}"));
                }
                last.insert(lba, i);
                i += 1;
            }
            Ok(last)
        })
    };
    // The rebalancer moves one hot page off b, and says why.
    let moved = |p: &Peer| {
        let m = quire_tests::group::page_members(p, "hl");
        hot.iter().filter(|&&h| m[h].1 != ["b"]).count()
    };
    wait_for(&peers[1], "a hot page moved off b", Duration::from_secs(90), |p| {
        moved(p) == 1 && !quire_tests::group::page_members(p, "hl").iter().any(|(_, ms)| ms.len() > 1)
    });
    let status = rebalance_status(&peers[2]);
    let history = status["history"].as_array().cloned().unwrap_or_default();
    let for_load: Vec<&Value> = history.iter().filter(|m| m["load"] == true).collect();
    assert_eq!(for_load.len(), 1, "one move for load: {status}");
    assert_eq!(for_load[0]["from"], "b", "{status}");
    assert!(hot.iter().any(|&h| for_load[0]["page"] == h), "{status}");
    assert!(for_load[0]["why"].as_str().is_some_and(|w| w.contains("hot page")), "{status}");
    // The host goes on a little on the new layout, then stops: no error.
    let writes = peers[0].reactor_sum("forwarded_parts");
    wait_for(&peers[0], "writes after the move", Duration::from_secs(20), |p| {
        p.reactor_sum("forwarded_parts") > writes + 200
    });
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().expect("writer thread").unwrap_or_else(|e| panic!("host write failed: {e}"));
    assert_eq!(moved(&peers[0]), 1, "the other hot page stays on b: moving it too would only move the hot spot");
    // Every block written reads back its last round through c.
    let mut c = quire_tests::group::Client::connect(&peers[2], "hl", Duration::from_secs(15));
    for (&lba, &round) in &last {
        assert!(c.read(lba, 4).expect("read through c") == quire_tests::group::pattern(lba, round, 4), "lba {lba}");
    }
    // One copy of each written page (the hot ones), on its set's peer.
    let members = quire_tests::group::page_members(&peers[0], "hl");
    for p in &peers {
        let held = hot.iter().filter(|&&h| members[h].1.contains(&p.name)).count() as u64;
        wait_for(p, "one copy of each written page", Duration::from_secs(30), |p| {
            volume_on(p, "hl")["allocated_pages"].as_u64() == Some(held)
        });
    }
    same_everywhere(&peers, "hl");
}
