//! Replicated pages with real peers: three `quire serve` peers on loopback with a real
//! etcd and a volume with two copies of every page. A peer killed with SIGKILL under
//! verified I/O costs the host no error and loses no acknowledged write (the other
//! member of each of its sets leads it from a new epoch, the dead member is out); a
//! peer killed and restarted within the hold time costs the host no error either, is
//! rebuilt and promoted, and every peer's copy agrees; a write acknowledged before the
//! kill reads back through every surviving peer. A peer that stays away past
//! `replication.replace_after_s` is replaced by a copy built on the third peer under
//! verified I/O; a peer that comes back after a few writes gets exactly the pieces it
//! missed (delta), counted in bytes.

use std::time::{Duration, Instant};

use quire_tests::group::{
    cli_json, corrupt_block, create_replicated, find_block, first_led_by, pages, pattern, perf, same_everywhere,
    scrub_and_wait, sets, verified_io, volume_on, wait_for, Client, Peer, BLOCKS_PER_PAGE, PAGE_BYTES,
};
use quire_tests::{serial, tail};
use serde_json::Value;

fn three(test: &str) -> Option<(tempfile::TempDir, quire_tests::etcd::Etcd, Vec<Peer>)> {
    quire_tests::group::three_peers(test, 25_000)
}

/// The rebuild rate limit of the replacement test, MB/s.
const RATE_MB_S: u32 = 4;
/// 4 MiB pages of 64 pieces.
const PIECE_BYTES: u64 = 64 << 10;

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
    let io = verified_io(&peers[0], "rep", 14);
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
    // The write acknowledged before the kill reads back through a and through b (a new
    // connection: the first one sat idle past its keep-alive timeout).
    drop(a);
    let mut a = Client::connect(&peers[0], "keep", Duration::from_secs(15));
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
    let io = verified_io(&peers[0], "rep", 12);
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
    // sets it led have new leaders); its new run is admitted back, rebuilt (by delta
    // where its leader tracked what it missed) and promoted: every copy in sync again,
    // and all three peers' copies the same.
    for p in &peers {
        wait_for(p, "every member of every set in sync again", Duration::from_secs(60), |p| {
            let s = sets(p, "rep");
            !s.is_empty()
                && s.iter().all(|(l, ms)| l != "c" && ms.len() == 2 && ms.iter().all(|(_, st)| st == "sync"))
                && volume_on(p, "rep")["health"] == "healthy"
        });
    }
    let rebuilt: u64 = peers.iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    assert!(rebuilt > 0, "the leaders copied what c missed");
    same_everywhere(&peers, "rep");
}

#[test]
fn a_peer_away_past_replace_after_is_replaced_by_a_copy_on_the_third_peer_under_io() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) =
        quire_tests::group::three_peers_with("a_peer_away_past_replace_after", 25_000, |s| {
            s.replace_after_s = 2;
            s.rebuild_mb_s = RATE_MB_S;
        })
    else {
        return;
    };
    create_replicated(&peers, 0, "rep");
    let io = verified_io(&peers[0], "rep", 20);
    wait_for(&peers[0], "replicated writes under way", Duration::from_secs(20), |p| {
        p.reactor_sum("replica_parts") > 500
    });
    peers[2].proc.kill9();
    let killed = Instant::now();
    // Out when its lease expires, replaced 2 s later by a new copy on the only other
    // peer, copied in full while the host writes (at most RATE_MB_S), its progress in
    // the volume list, then promoted: a and b hold every page, in sync.
    wait_for(&peers[0], "the volume rebuilding, with its progress", Duration::from_secs(30), |p| {
        let v = volume_on(p, "rep");
        v["health"] == "rebuilding" && v["rebuild_percent"].as_u64().is_some_and(|n| n < 100)
    });
    let rebuilding = Instant::now();
    for p in &peers[..2] {
        wait_for(p, "every set rebuilt on a and b", Duration::from_secs(90), |p| {
            let s = sets(p, "rep");
            !s.is_empty()
                && s.iter().all(|(_, ms)| {
                    ms.len() == 2 && ms.iter().all(|(m, st)| m != "c" && st == "sync") && ms[0].0 != ms[1].0
                })
                && volume_on(p, "rep")["health"] == "healthy"
        });
    }
    let healed = killed.elapsed();
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through a across c's death and the rebuild (healed in {healed:.1?}): {}", run.text);
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    let took = rebuilding.elapsed();
    let rebuilt: u64 = peers[..2].iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    assert!(rebuilt >= PAGE_BYTES, "whole pages copied to the new copies: {rebuilt}");
    // The rate limit held (a lower bound: the copy cannot be faster than the limit,
    // less the tenth of a second it may save up, and what ran before the group heard
    // of its progress).
    let floor = rebuilt as f64 / (f64::from(RATE_MB_S) * 1e6) - 2.0;
    assert!(took.as_secs_f64() >= floor, "{rebuilt} bytes in {took:?} at {RATE_MB_S} MB/s");
    for p in &peers[..2] {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}", p.name);
    }
    same_everywhere(&peers[..2], "rep");
}

#[test]
fn a_peer_back_after_a_few_writes_gets_exactly_the_pieces_it_missed() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three("a_peer_back_after_a_few_writes") else { return };
    create_replicated(&peers, 0, "rep");
    // Every page written (the --verify prefill), so that every page is allocated.
    let trid = peers[0].trid("rep");
    let run = perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "--verify", "-r", &trid]);
    assert!(run.ok, "{}", run.text);
    let before = sets(&peers[0], "rep");
    let runs = pages(&peers[0], "rep");
    let led_by_c =
        runs["owners"].as_array().unwrap().iter().find(|o| o["owner"] == "c").unwrap()["pages"].as_u64().unwrap();
    assert!(led_by_c > 0);
    peers[2].proc.kill9();
    wait_for(&peers[0], "c out of every set", Duration::from_secs(20), |p| {
        let s = sets(p, "rep");
        s.iter().all(|(l, ms)| l != "c" && ms.iter().all(|(m, st)| (m == "c") == (st == "out")))
    });
    // Eight 4 KiB writes while c is away, to eight pieces of pages of sets c is a
    // member of but did not lead (their leaders tracked what c missed there).
    let p = pages(&peers[0], "rep");
    let mut targets = Vec::new();
    for r in p["runs"].as_array().unwrap() {
        let set = usize::try_from(r["set"].as_u64().unwrap()).unwrap();
        let (leader, members) = &before[set_index(&p, set)];
        if leader != "c" && members.iter().any(|(m, _)| m == "c") {
            for k in 0..r["count"].as_u64().unwrap() {
                targets.push(r["first"].as_u64().unwrap() + k);
            }
        }
    }
    assert!(targets.len() >= 4, "pages of sets c was in but did not lead: {targets:?}");
    let mut a = Client::connect(&peers[0], "rep", Duration::from_secs(15));
    // Two pieces of each of four pages (a piece is 16 blocks).
    let written: Vec<u64> =
        targets.iter().take(4).flat_map(|page| [page * BLOCKS_PER_PAGE + 100, page * BLOCKS_PER_PAGE + 612]).collect();
    for &lba in &written {
        a.write(lba, &pattern(lba, 21, 1)).expect("write while c is away");
    }
    let copied_before: u64 = peers[..2].iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    peers[2].restart();
    for p in &peers {
        wait_for(p, "every member of every set in sync again", Duration::from_secs(60), |p| {
            volume_on(p, "rep")["health"] == "healthy"
                && sets(p, "rep").iter().all(|(_, ms)| ms.iter().all(|(_, st)| st == "sync"))
        });
    }
    // The sets c led went to the other member; c, having led them, may hold writes
    // nobody else has: its copies there are rebuilt whole. Elsewhere: the eight pieces.
    let copied: u64 = peers[..2].iter().map(|p| p.reactor_sum("rebuild_bytes")).sum::<u64>() - copied_before;
    assert_eq!(
        copied,
        led_by_c * PAGE_BYTES + 8 * PIECE_BYTES,
        "bytes copied to c: {led_by_c} pages it led in full, and the 8 pieces written while it was away"
    );
    let mut c = Client::connect(&peers[2], "rep", Duration::from_secs(15));
    for &lba in &written {
        assert_eq!(c.read(lba, 1).expect("read through c"), pattern(lba, 21, 1), "lba {lba} on c");
    }
    same_everywhere(&peers, "rep");
}

/// The position in `sets(..)` (sets in use, in index order) of set index `set`.
fn set_index(pages: &Value, set: usize) -> usize {
    let set = u64::try_from(set).unwrap();
    pages["sets"].as_array().unwrap().iter().position(|s| s["set"].as_u64() == Some(set)).expect("a set in use")
}

#[test]
fn a_scrub_finds_and_repairs_a_piece_corrupted_on_one_copy_behind_its_back() {
    let _serial = serial();
    let Some((_dir, _etcd, peers)) = three("a_scrub_repairs") else { return };
    create_replicated(&peers, 0, "rep");
    // A piece (16 blocks) of a page a leads, written through a: on a and on the other
    // member x.
    let p = pages(&peers[0], "rep");
    let run = p["runs"].as_array().unwrap().iter().find(|r| r["owner"] == "a").expect("a page a leads").clone();
    let page = run["first"].as_u64().unwrap();
    let set = usize::try_from(run["set"].as_u64().unwrap()).unwrap();
    let (_, members) = &sets(&peers[0], "rep")[set_index(&p, set)];
    let x_name = members.iter().map(|(m, _)| m.clone()).find(|m| m != "a").expect("another member");
    let x = peers.iter().position(|q| q.name == x_name).unwrap();
    let lba = page * BLOCKS_PER_PAGE + 32;
    let data = pattern(lba, 77, 16);
    let mut a = Client::connect(&peers[0], "rep", Duration::from_secs(15));
    a.write(lba, &data).expect("write a piece");
    a.flush().expect("flush");
    // Behind x's back: one block of its copy overwritten in its device file.
    let img = peers[x].dir.join("quire.img");
    let at = find_block(&img, &data[..4096]).unwrap_or_else(|| panic!("the piece is not in {}", img.display()));
    corrupt_block(&img, at + 4096, 0xEE);
    // x serves reads of the page from its own copy: the corruption shows there.
    let mut via_x = Client::connect(&peers[x], "rep", Duration::from_secs(15));
    assert_ne!(via_x.read(lba, 16).expect("read through x"), data, "x reads its own (corrupted) copy");
    // A Compare reads the way a Read does: x's copy differs, a's does not.
    let failure = Err(quire_wire::nvme::Status::COMPARE_FAILURE.with_dnr());
    assert_eq!(via_x.compare(lba, &data), failure, "compare through x");
    a.compare(lba, &data).expect("compare through a");
    // The scrub, asked through any peer, compares and repairs it from a's copy.
    scrub_and_wait(&peers, &peers[2], "rep", 1, Duration::from_secs(60));
    assert_eq!(peers[0].reactor_sum("scrub_mismatches"), 1);
    // A new connection: the first one may have sat idle past its keep-alive timeout.
    let mut via_x = Client::connect(&peers[x], "rep", Duration::from_secs(15));
    assert_eq!(via_x.read(lba, 16).expect("read through x again"), data, "x's copy repaired");
    via_x.compare(lba, &data).expect("compare through x after the repair");
    // A Copy on the replicated page, asked through b: written to every copy.
    let mut via_b = Client::connect(&peers[1], "rep", Duration::from_secs(15));
    via_b.copy(lba + 64, &[(lba + 8, 8), (lba, 8)]).expect("copy through b");
    let mut want = data[8 * 4096..].to_vec();
    want.extend_from_slice(&data[..8 * 4096]);
    assert_eq!(via_x.read(lba + 64, 16).expect("read the copy through x"), want);
    same_everywhere(&peers, "rep");
}

#[test]
fn with_three_copies_a_scrub_takes_the_majoritys_side_and_repairs_the_leaders_copy() {
    let _serial = serial();
    let Some((_dir, _etcd, peers)) = three("a_scrub_takes_the_majoritys_side") else { return };
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "rep3", "--size", "48M", "--page-size", "4M", "--replicas", "3"],
    );
    assert_eq!(v["name"], "rep3", "{v}");
    for p in &peers {
        wait_for(p, "rep3 with three in-sync copies of every page", Duration::from_secs(15), |p| {
            let s = sets(p, "rep3");
            !s.is_empty() && s.iter().all(|(_, ms)| ms.len() == 3 && ms.iter().all(|(_, st)| st == "sync"))
        });
    }
    // A piece of a page a leads, written through a (on a, b and c); then a's own copy
    // corrupted in its device file behind its back.
    let lba = first_led_by(&peers[0], "rep3", "a") * BLOCKS_PER_PAGE + 48;
    let data = pattern(lba, 91, 16);
    let mut a = Client::connect(&peers[0], "rep3", Duration::from_secs(15));
    a.write(lba, &data).expect("write a piece");
    a.flush().expect("flush");
    let img = peers[0].dir.join("quire.img");
    let at = find_block(&img, &data[..4096]).unwrap_or_else(|| panic!("the piece is not in {}", img.display()));
    corrupt_block(&img, at + 2 * 4096, 0x5A);
    assert_ne!(a.read(lba, 16).expect("read through a"), data, "a reads its own (corrupted) copy");
    // The leader's copy is the odd one out: b and c agree, so the scrub repairs a's
    // copy from theirs (and does not spread a's corruption to them).
    scrub_and_wait(&peers, &peers[1], "rep3", 1, Duration::from_secs(60));
    assert_eq!(peers[0].reactor_sum("scrub_mismatches"), 1);
    let mut a = Client::connect(&peers[0], "rep3", Duration::from_secs(15));
    assert_eq!(a.read(lba, 16).expect("read through a again"), data, "a's copy repaired from the majority");
    for p in &peers[1..] {
        let mut c = Client::connect(p, "rep3", Duration::from_secs(15));
        assert_eq!(c.read(lba, 16).expect("read through a member"), data, "{}'s copy untouched", p.name);
    }
    same_everywhere(&peers, "rep3");
}
