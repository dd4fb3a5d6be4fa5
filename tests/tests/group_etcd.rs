//! A group of real `quire serve` peers on loopback with a real etcd (Debian's
//! `etcd-server`): registration under leases, one coordinator, a peer that is
//! killed and one that leaves, clashes refused with their reason, etcd going away
//! without stopping I/O. Without etcd installed the tests fail; only a partial run
//! (`scripts/test.sh --partial`) skips them, and records the skip.

use std::process::Command;
use std::time::{Duration, Instant};

use quire_tests::group::{
    cli_json, live_are, one_coordinator, owners_of, peers_in, perf, perf_bin, setup, volume_on, wait_all, wait_for,
    Peer, PeerSpec,
};
use quire_tests::{require, serial, tail, QuireProcess};
use serde_json::Value;

#[test]
fn three_peers_register_elect_one_coordinator_and_see_peers_die_leave_and_return() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("three_peers_register_elect_one_coordinator") else { return };
    let ep = etcd.endpoint();
    let spec = |name: &str, ttl| PeerSpec { lease_ttl_s: ttl, ..PeerSpec::new(name, &ep, &secret) };
    let mut peers: Vec<Peer> = ["a", "b", "c"].iter().map(|n| Peer::spawn(&spec(n, 3), &dir.path().join(n))).collect();
    for p in &mut peers {
        p.wait_serving();
    }
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "a, b and c live", Duration::from_secs(20), live_are(&["a", "b", "c"]));
    let first = one_coordinator(&all, &["a", "b", "c"]);
    let status = peers[0].status();
    for p in status["peers"].as_array().unwrap() {
        let target = p["target"].as_str().unwrap();
        let peer = peers.iter().find(|q| q.name == p["name"].as_str().unwrap()).unwrap();
        assert_eq!(target, format!("127.0.0.1:{}", peer.port), "{status}");
        assert!(p["capacity_bytes"].as_u64().unwrap() > 0, "{status}");
    }

    // The coordinator dies (SIGKILL): its lease expires, the others see it go and
    // elect one of themselves.
    let k = peers.iter().position(|p| p.name == first).unwrap();
    peers[k].proc.kill9();
    let rest: Vec<&str> = ["a", "b", "c"].into_iter().filter(|n| *n != first).collect();
    let others: Vec<&Peer> = peers.iter().filter(|p| p.name != first).collect();
    wait_all(&others, "the killed coordinator gone", Duration::from_secs(20), |s| {
        peers_in(s, "live") == rest && peers_in(s, "gone") == [first.clone()]
    });
    let second = one_coordinator(&others, &rest);
    assert_ne!(second, first);

    // It comes back on the same page store: registered again, not refused as a clash.
    peers[k].restart();
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "a, b and c live again", Duration::from_secs(20), live_are(&["a", "b", "c"]));
    assert_eq!(one_coordinator(&all, &["a", "b", "c"]), second, "a returning peer does not unseat the coordinator");

    // A peer that leaves (SIGTERM) revokes its lease: with a 30 s TTL the others see it
    // gone well before the lease could have expired.
    let mut d = Peer::spawn(&spec("d", 30), &dir.path().join("d"));
    d.wait_serving();
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "d live", Duration::from_secs(20), live_are(&["a", "b", "c", "d"]));
    let left = Instant::now();
    let code = d.proc.terminate(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", tail(&d.proc.log(), 20));
    wait_all(&all, "d gone", Duration::from_secs(12), |s| peers_in(s, "gone") == ["d"]);
    assert!(left.elapsed() < Duration::from_secs(25), "d's departure was seen only when its lease expired");
}

#[test]
fn clashes_missing_secrets_and_an_unreachable_etcd_are_refused_with_the_reason() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("clashes_are_refused_with_the_reason") else { return };
    let ep = etcd.endpoint();
    let a_spec = PeerSpec::new("a", &ep, &secret);
    let link = a_spec.link_port;
    let mut a = Peer::spawn(&a_spec, &dir.path().join("a"));
    a.wait_serving();
    wait_all(&[&a], "a live", Duration::from_secs(20), live_are(&["a"]));

    let refused = |name: &str, link_port: u16, secret: &std::path::Path, etcd: &str, sub: &str| {
        let spec = PeerSpec { link_port, ..PeerSpec::new(name, etcd, secret) };
        let mut p = Peer::spawn(&spec, &dir.path().join(sub));
        let (code, log) = p.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(1), "{name} in {sub}: {}", tail(&log, 20));
        log
    };
    let free_port = quire_tests::free_port;
    let log = refused("a", free_port(), &secret, &ep, "a-again");
    assert!(log.contains("the group refuses this peer: peer name \"a\" is taken by a live peer"), "{}", tail(&log, 5));
    // On one machine the link port itself is taken (the group would refuse the same
    // address from another machine: `group::view` tests that admission rule).
    let log = refused("e", link, &secret, &ep, "same-link");
    assert!(log.contains(&format!("cannot listen on 127.0.0.1:{link}: Address already in use")), "{}", tail(&log, 5));

    // A copy of a's device under another name: two peers on one page store.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(a.dir.join("quire.img"), copy.join("quire.img")).unwrap();
    let log = refused("f", free_port(), &secret, &ep, "copy");
    assert!(
        log.contains("is already served by peer \"a\" at") && log.contains("two peers on one device"),
        "{}",
        tail(&log, 5)
    );

    let log = refused("g", free_port(), &dir.path().join("no-such-secret"), &ep, "no-secret");
    assert!(log.contains("group.secret_file") && log.contains("cannot read it"), "{}", tail(&log, 5));
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "short").unwrap();
    let log = refused("g", free_port(), &short, &ep, "short-secret");
    assert!(log.contains("the secret is 5 bytes; at least 16 are needed"), "{}", tail(&log, 5));

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let log = refused("h", free_port(), &secret, &nobody, "no-etcd");
    assert!(log.contains(&format!("group: cannot reach etcd at {nobody}")), "{}", tail(&log, 5));

    // None of that disturbed the group.
    wait_all(&[&a], "a alone", Duration::from_secs(5), live_are(&["a"]));
    assert!(a.proc.is_running());
}

#[test]
fn etcd_going_away_freezes_the_group_but_not_the_io() {
    let _serial = serial();
    let Some((dir, mut etcd, secret)) = setup("etcd_going_away_freezes_the_group") else { return };
    if !require("etcd_going_away_freezes_the_group", perf_bin().map(|_| ())) {
        return;
    }
    let ep = etcd.endpoint();
    let spec = |name: &str| PeerSpec::new(name, &ep, &secret);
    // a alone makes the configured volume, so a owns all of its pages; b joins after.
    let mut a = Peer::spawn(&spec("a"), &dir.path().join("a"));
    a.wait_serving();
    wait_for(&a, "demo created by a", Duration::from_secs(20), |p| owners_of(p, "demo") == [("a".to_string(), 16)]);
    let mut b = Peer::spawn(&spec("b"), &dir.path().join("b"));
    b.wait_serving();
    wait_all(&[&a, &b], "a and b live", Duration::from_secs(20), live_are(&["a", "b"]));

    etcd.kill();
    wait_all(&[&a, &b], "etcd unreachable", Duration::from_secs(20), |s| s["etcd_state"] == "unreachable");
    let status = a.status();
    assert!(!status["etcd_error"].as_str().unwrap_or_default().is_empty(), "{status}");
    assert_eq!(peers_in(&status, "live"), ["a", "b"], "the last view stays while frozen: {status}");

    // I/O goes on meanwhile, verified: on a's pages through a, and through b, which
    // forwards every one of them to a over their peer link (etcd is not on that path).
    for p in [&a, &b] {
        let run =
            perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "--verify", "-r", &p.trid("demo")]);
        assert!(run.ok, "through {}: {}", p.name, run.text);
        assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    }
    assert!(b.reactor_sum("forwarded_parts") > 0, "b forwarded a's pages");

    etcd.restart().expect("restart etcd");
    wait_all(&[&a, &b], "a and b live with etcd back", Duration::from_secs(30), live_are(&["a", "b"]));
    one_coordinator(&[&a, &b], &["a", "b"]);
}

#[test]
fn volumes_belong_to_the_group_placed_by_weight_and_changed_from_any_peer() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("volumes_belong_to_the_group") else { return };
    let ep = etcd.endpoint();
    let spec = |name: &str, weight| PeerSpec { weight, ..PeerSpec::new(name, &ep, &secret) };
    let mut peers: Vec<Peer> =
        [("a", 1), ("b", 1), ("c", 2)].iter().map(|&(n, w)| Peer::spawn(&spec(n, w), &dir.path().join(n))).collect();
    for p in &mut peers {
        p.wait_serving();
    }
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "a, b and c live", Duration::from_secs(20), live_are(&["a", "b", "c"]));

    // Created through b: 16 pages of 4 MiB over weights 1:1:2.
    let created = cli_json(&peers[1].socket(), &["volume", "create", "spread", "--size", "64M", "--page-size", "4M"]);
    assert_eq!(created["name"], "spread", "the creating peer answers with the volume as it serves it: {created}");
    let expect = vec![("a".to_string(), 4), ("b".to_string(), 4), ("c".to_string(), 8)];
    for p in &peers {
        wait_for(p, "spread placed 4/4/8", Duration::from_secs(10), |p| owners_of(p, "spread") == expect);
    }
    // One namespace identity and one page map on every peer.
    let ident = |p: &Peer| {
        let v = volume_on(p, "spread");
        (v["id"].clone(), v["uuid"].clone(), v["nguid"].clone(), v["size"].clone())
    };
    let first = ident(&peers[0]);
    assert_eq!(first.3, 64u64 << 20);
    assert!(peers.iter().all(|p| ident(p) == first), "{:?}", peers.iter().map(ident).collect::<Vec<_>>());
    let runs = |p: &Peer| cli_json(&p.socket(), &["volume", "pages", "spread"])["runs"].clone();
    assert!(peers.iter().all(|p| runs(p) == runs(&peers[0])), "every peer routes alike");
    assert!(runs(&peers[0]).as_array().unwrap().len() >= 8, "pages are interleaved, not in blocks");
    // A second create of the name, from another peer, is refused.
    let bin = QuireProcess::bin_path().unwrap();
    let again = Command::new(&bin)
        .arg("--socket")
        .arg(peers[2].socket())
        .args(["volume", "create", "spread", "--size", "64M"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));

    // Grown through c: the old pages keep their owners, the new ones follow the weights.
    let before = runs(&peers[0]);
    let grown = cli_json(&peers[2].socket(), &["volume", "grow", "spread", "--size", "128M"]);
    assert_eq!(grown["size"], 128u64 << 20, "{grown}");
    let expect = vec![("a".to_string(), 8), ("b".to_string(), 8), ("c".to_string(), 16)];
    for p in &peers {
        wait_for(p, "spread grown", Duration::from_secs(10), |p| {
            owners_of(p, "spread") == expect && volume_on(p, "spread")["size"] == 128u64 << 20
        });
    }
    let pages = cli_json(&peers[0].socket(), &["volume", "pages", "spread"]);
    assert_eq!(pages["epoch"], 2, "{pages}");
    let owner_at = |runs: &Value, page: u64| -> String {
        let run = runs.as_array().unwrap().iter().find(|r| {
            let (f, n) = (r["first"].as_u64().unwrap(), r["count"].as_u64().unwrap());
            (f..f + n).contains(&page)
        });
        run.unwrap()["owner"].as_str().unwrap().to_string()
    };
    for page in 0..16 {
        assert_eq!(owner_at(&before, page), owner_at(&pages["runs"], page), "page {page} moved");
    }

    // c stops; the volume is deleted through a meanwhile; c, back, deletes its copy.
    let code = peers[2].proc.terminate(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", tail(&peers[2].proc.log(), 20));
    assert_eq!(cli_json(&peers[0].socket(), &["volume", "delete", "spread"]), true);
    wait_for(&peers[1], "spread deleted", Duration::from_secs(10), |p| volume_on(p, "spread").is_null());
    assert!(volume_on(&peers[0], "spread").is_null(), "the deleting peer answers after its own copy is gone");
    peers[2].restart();
    wait_for(&peers[2], "spread deleted while away", Duration::from_secs(20), |p| {
        volume_on(p, "spread").is_null() && !volume_on(p, "demo").is_null()
    });
    assert!(peers[2].proc.log().contains("the group deleted this volume"), "{}", tail(&peers[2].proc.log(), 20));

    // A fourth peer joins: a new volume gives it its share; the configured volume
    // (made once, by whichever peer came first) is served by d too.
    let mut d = Peer::spawn(&spec("d", 4), &dir.path().join("d"));
    d.wait_serving();
    let all: Vec<&Peer> = peers.iter().chain([&d]).collect();
    wait_all(&all, "d live", Duration::from_secs(20), live_are(&["a", "b", "c", "d"]));
    wait_for(&d, "demo on d", Duration::from_secs(10), |p| {
        volume_on(p, "demo")["uuid"] == volume_on(&peers[0], "demo")["uuid"]
    });
    cli_json(&d.socket(), &["volume", "create", "four", "--size", "32M", "--page-size", "1M"]);
    let expect = vec![("a".to_string(), 4), ("b".to_string(), 4), ("c".to_string(), 8), ("d".to_string(), 16)];
    for p in &all {
        wait_for(p, "four placed by weight", Duration::from_secs(10), |p| owners_of(p, "four") == expect);
    }
    // Each peer has space only for what it owns: a write to page 0 (d's) through a is
    // forwarded to d and takes space there, not on a.
    for p in &all {
        assert_eq!(volume_on(p, "four")["allocated_pages"], 0, "thin: nothing written yet");
    }
    let pages = cli_json(&d.socket(), &["volume", "pages", "four"]);
    assert_eq!(pages["runs"][0]["owner"], "d", "page 0 of four is d's (the heaviest peer first): {pages}");
    for p in [&d, &peers[0]] {
        let run = perf(&["-q", "1", "-o", "4096", "-w", "write", "-d", "1", "-t", "5", "-r", &p.trid("four")]);
        assert!(run.ok, "a write to page 0 through {}: {}", p.name, run.text);
    }
    assert_eq!(volume_on(&d, "four")["allocated_pages"], 1, "the owner holds the page");
    assert_eq!(volume_on(&peers[0], "four")["allocated_pages"], 0, "the forwarding peer holds nothing of it");
    assert_eq!(peers[0].reactor_sum("forwarded_parts"), 1, "a forwarded the one write");
}
