//! End-to-end page moves: the real Linux NVMe/TCP host (native multipath,
//! round-robin, one path per peer) running `fio --verify` in loops of new seeds
//! against three `quire serve` peers, a real etcd and a volume with two copies of
//! every page, while pages move between the peers.
//!
//! The guest runs `tests/guest/scripts/group-migration.sh`; this side acts when the
//! guest says so (`MARK phase N ...`):
//! 1. three paths, fio writes and verifies region 0;
//! 2. under fio, pages are moved by hand (`quire page move`, through different
//!    peers): pages fio has written, one it is writing, one nobody wrote; each ends
//!    with its copy on the new peer and none left on the old one;
//! 3. under fio, peer c is drained (`quire peer drain`): every copy it held moves to a
//!    or b, and c frees them; c still serves the host's I/O (forwarding it).
//! 4. under fio, a fourth peer d joins and the coordinator's rebalancer (paused
//!    until then, so that it leaves the moves by hand alone) gives it its share:
//!    every peer that takes part (a, b, d) within 10% of its ideal;
//! 5. (the rebalancer paused again) under fio, a page moves and its source (the set's leader, which drives the
//!    copy) is killed with SIGKILL mid-copy, then restarted: the other copy takes the
//!    lead and resumes the copy from the progress persisted in the group (the pieces
//!    copied before are compared, not copied again; shown in its log);
//! 6. under fio, a page moves and the coordinator (a member of the page's set) is
//!    killed mid-copy, then restarted: the move completes;
//! 7. Every region verifies;
//! 8. a skewed workload: the host writes and verifies two pages led by one peer, and
//!    nothing else; the rebalancer, resumed, moves one of them to a less busy peer
//!    for load (its status says so) under the host's I/O.
//!
//! No command failed at the host's side, each peer holds exactly one copy of each
//! page of its sets (and c none), every peer reads the same bytes.
//!
//! Copies run at 1 MB/s (`replication.rebuild_mb_s` and `migration_mb_s`), so that a page's copy lasts
//! about four seconds: long enough to kill a peer in the middle of one.

use std::time::Duration;

use quire_tests::group::{
    cli_json, create_replicated_sized, guest_mark, guest_peer, page_members, rebalance_settled, rebalance_status,
    same_everywhere, sets, setup, share_of, start_group, volume_on, wait_for, writes_flow, Peer, PeerSpec,
};
use quire_tests::{require_guest, serial, tail, Counter, Guest, GuestOptions, HOST_FROM_GUEST};
use serde_json::Value;

const TEST: &str = "a_multipath_host_sees_no_error_while_pages_move_and_a_peer_is_drained";
/// The guest's fio regions, MiB (pages 0-7, 8-15, 16-23 of 4 MiB).
const REGION_MB: u64 = 32;
/// Pages the six regions cover (the whole volume).
const WRITTEN_PAGES: usize = 48;

/// The moves under way, as `quire migration list` gives them on `peer`.
fn migrations(peer: &Peer) -> Vec<Value> {
    cli_json(&peer.socket(), &["migration", "list"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_multipath_host_sees_no_error_while_pages_move_and_a_peer_is_drained() {
    if !require_guest(TEST) {
        return;
    }
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup(TEST) else { return };
    let ep = etcd.endpoint();
    // A guest without KVM writes a few hundred commands a second: a hot page's peer
    // serves less than the default least for a move for load.
    let spec =
        |name: &str| PeerSpec { rebalance: true, rebuild_mb_s: 1, load_min_iops: 20, ..guest_peer(name, &ep, &secret) };
    let mut peers = start_group(dir.path(), &[spec("a"), spec("b"), spec("c")]);
    // The configured volume, made by the first peer up alone, spread; then the
    // rebalancer paused until phase 4.
    for p in &peers {
        wait_for(p, "the rebalancer settled", Duration::from_secs(90), |p| rebalance_settled(&rebalance_status(p)));
    }
    assert_eq!(cli_json(&peers[0].socket(), &["rebalance", "pause"]), Value::Bool(true));
    wait_for(&peers[0], "the rebalancer paused", Duration::from_secs(20), |p| {
        let s = rebalance_status(p);
        s["paused"] == true && s["moves"] == 0 && s["state"].as_str().is_some_and(|w| w.contains("paused"))
    });
    create_replicated_sized(&peers, 0, "mg", "192M");
    let logs = |peers: &[Peer]| -> String {
        peers.iter().map(|p| format!("--- {}:\n{}\n", p.name, tail(&p.proc.log(), 20))).collect()
    };
    let step = Counter::start("step");
    let hot = Counter::start("hot");
    let env = [
        ("DISC_ADDR", HOST_FROM_GUEST.to_string()),
        ("DISC_PORT", peers[0].port.to_string()),
        ("NQN", "nqn.2026-11.io.quire:mg".to_string()),
        ("CTRL_PORT", step.port().to_string()),
        ("HOT_PORT", hot.port().to_string()),
        ("PAGE_MB", "4".to_string()),
        ("PEERS", "3".to_string()),
        ("REGION_MB", REGION_MB.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let opts =
        GuestOptions { timeout: Duration::from_secs(900), label: "group-migration".into(), ..Default::default() };
    let mut guest = Guest::spawn_script("group-migration.sh", &env, &opts).expect("boot the guest");
    let wait = |guest: &mut Guest, pattern: &str, secs: u64, peers: &[Peer]| -> String {
        guest_mark(guest, pattern, secs, &|| logs(peers))
    };
    let line = wait(&mut guest, "MARK phase 1 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 2. pages moved by hand under fio ------------------------------------------
    wait(&mut guest, "MARK phase 2 writing", 60, &peers);
    writes_flow(&peers, "mg");
    let before = page_members(&peers[0], "mg");
    // Written by phase 1, being written, to be written by phase 3, never written.
    let mut moved = Vec::new();
    for (k, page) in [3usize, 12, 20, 40].into_iter().enumerate() {
        let (leader, members) = &before[page];
        let to = ["a", "b", "c"].into_iter().find(|n| !members.iter().any(|m| m == n)).expect("a peer without it");
        let via = &peers[k % 3];
        let answer = cli_json(&via.socket(), &["page", "move", "mg", &page.to_string(), to]);
        assert!(
            answer.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == page as u64 && m["to"] == to)),
            "page move {page} to {to} through {}: {answer}",
            via.name
        );
        moved.push((page, leader.clone(), to.to_string()));
    }
    for p in &peers {
        wait_for(p, "every move done", Duration::from_secs(90), |p| {
            let now = page_members(p, "mg");
            migrations(p).is_empty()
                && moved.iter().all(|(page, from, to)| {
                    let ms = &now[*page].1;
                    ms.len() == 2 && ms.contains(to) && !ms.contains(from)
                })
        });
    }
    eprintln!("moved {moved:?}");
    step.set(2);
    let line = wait(&mut guest, "MARK phase 2 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 3. c drained under fio ---------------------------------------------------------
    wait(&mut guest, "MARK phase 3 writing", 60, &peers);
    writes_flow(&peers, "mg");
    assert_eq!(cli_json(&peers[1].socket(), &["peer", "drain", "c"]), Value::Bool(true));
    for p in &peers {
        wait_for(p, "no copy on c, every set in sync", Duration::from_secs(120), |p| {
            let s = sets(p, "mg");
            !s.is_empty()
                && s.iter().all(|(l, ms)| l != "c" && ms.iter().all(|(m, st)| m != "c" && st == "sync"))
                && migrations(p).is_empty()
        });
    }
    wait_for(&peers[2], "c's copies freed", Duration::from_secs(30), |p| {
        volume_on(p, "mg")["allocated_pages"].as_u64() == Some(0)
    });
    step.set(3);
    let line = wait(&mut guest, "MARK phase 3 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 4. a fourth peer joins, the rebalancer gives it its share under fio ------------
    wait(&mut guest, "MARK phase 4 writing", 60, &peers);
    writes_flow(&peers, "mg");
    let mut d = Peer::spawn(&spec("d"), &dir.path().join("d"));
    d.wait_serving();
    peers.push(d);
    {
        let all: Vec<&Peer> = peers.iter().collect();
        quire_tests::group::wait_all(
            &all,
            "d live",
            Duration::from_secs(30),
            quire_tests::group::live_are(&["a", "b", "c", "d"]),
        );
    }
    let history_before = rebalance_status(&peers[0])["history"].as_array().map_or(0, Vec::len);
    assert_eq!(cli_json(&peers[3].socket(), &["rebalance", "resume"]), Value::Bool(true));
    for p in &peers {
        wait_for(p, "a, b and d within the band, no move under way", Duration::from_secs(240), |p| {
            let s = rebalance_status(p);
            rebalance_settled(&s) && share_of(&s, "d")["held_bytes"].as_u64().unwrap_or(0) > 0
        });
    }
    let s = rebalance_status(&peers[0]);
    // Its moves for capacity go to d (fio's region of the phase is a hot spot: a move
    // for load, if it made one, goes where the load is least).
    let made: Vec<&Value> =
        s["history"].as_array().unwrap().iter().skip(history_before).filter(|m| m["load"] != true).collect();
    assert!(!made.is_empty() && made.iter().all(|m| m["to"] == "d"), "the rebalancer's moves go to d: {s}");
    eprintln!("rebalanced: {} moves to d; {}", made.len(), s["peers"]);
    step.set(4);
    let line = wait(&mut guest, "MARK phase 4 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 5. a move's source killed mid-copy and restarted, under fio -------------------
    // The rebalancer paused again: the moves of phases 5 and 6 are the test's alone.
    assert_eq!(cli_json(&peers[0].socket(), &["rebalance", "pause"]), Value::Bool(true));
    wait_for(&peers[0], "the rebalancer paused, no move under way", Duration::from_secs(120), |p| {
        let s = rebalance_status(p);
        s["paused"] == true && s["moves"] == 0 && migrations(p).is_empty()
    });
    wait(&mut guest, "MARK phase 5 writing", 60, &peers);
    writes_flow(&peers, "mg");
    let all: Vec<&Peer> = peers.iter().collect();
    let coordinator = quire_tests::group::one_coordinator(&all, &["a", "b", "c", "d"]);
    let members = page_members(&peers[0], "mg");
    // A written page led by a peer that does not coordinate; its copy moves to the
    // third peer that takes copies (c is drained).
    let page = (0..40).find(|&p| members[p].0 != coordinator).expect("a page led by another peer");
    let (source, set) = members[page].clone();
    let to = ["a", "b", "d"].into_iter().find(|n| !set.iter().any(|m| m == n)).expect("a peer without it");
    let answer = cli_json(&peers[0].socket(), &["page", "move", "mg", &page.to_string(), to]);
    assert!(answer.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == page as u64)), "{answer}");
    let progress = |p: &Peer| -> Option<(u64, u64)> {
        migrations(p)
            .iter()
            .find(|m| m["first_page"] == page as u64)
            .map(|m| (m["pieces_done"].as_u64().unwrap_or(0), m["pieces"].as_u64().unwrap_or(0)))
    };
    wait_for(&peers[0], "part of the page copied, as persisted", Duration::from_secs(60), |p| {
        progress(p).is_some_and(|(done, all)| all > 0 && done >= 4)
    });
    let k = peers.iter().position(|p| p.name == source).expect("the source is a peer");
    peers[k].proc.kill9();
    let (done, all) = progress(&peers[(k + 1) % peers.len()]).expect("the move is under way");
    assert!(done < all, "killed mid-copy: {done}/{all}");
    eprintln!("page {page}: its source {source} killed at {done}/{all} pieces persisted");
    peers[k].restart();
    for p in &peers {
        wait_for(p, "the move done, the page on its new peer", Duration::from_secs(120), |p| {
            migrations(p).is_empty() && page_members(p, "mg")[page].1.iter().any(|m| m == to)
        });
    }
    let resumed: Vec<String> = peers
        .iter()
        .filter(|p| p.proc.log().contains("rebuild resumes from an earlier run's progress"))
        .map(|p| p.name.clone())
        .collect();
    assert!(!resumed.is_empty(), "the copy resumed from the persisted progress\n{}", logs(&peers));
    eprintln!("resumed by {resumed:?}");
    step.set(5);
    let line = wait(&mut guest, "MARK phase 5 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 6. the coordinator killed mid-move and restarted, under fio --------------------
    wait(&mut guest, "MARK phase 6 writing", 60, &peers);
    writes_flow(&peers, "mg");
    let all: Vec<&Peer> = peers.iter().collect();
    let coordinator = quire_tests::group::one_coordinator(&all, &["a", "b", "c", "d"]);
    let members = page_members(&peers[0], "mg");
    // A written page (regions 0 to 4) the coordinator holds a copy of, led by another
    // peer if there is one (the coordinator may be c, drained: then page 0): the
    // leader's copy moves to the third peer, which takes about four seconds.
    let holds = |p: &usize| members[*p].1.contains(&coordinator);
    let page = (0..40).find(|p| holds(p) && members[*p].0 != coordinator).or_else(|| (0..40).find(holds)).unwrap_or(0);
    let set = members[page].1.clone();
    let to = ["a", "b", "d"].into_iter().find(|n| !set.iter().any(|m| m == n)).expect("a peer without it");
    let answer = cli_json(&peers[0].socket(), &["page", "move", "mg", &page.to_string(), to]);
    assert!(answer.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == page as u64)), "{answer}");
    let k = peers.iter().position(|p| p.name == coordinator).expect("the coordinator is a peer");
    // Killed while the move copies (it is in the record: the coordinator's plan takes
    // it to its cut-over).
    let other = &peers[(k + 1) % peers.len()];
    assert!(
        migrations(other).iter().any(|m| m["first_page"] == page as u64 && m["phase"] == "copying"),
        "{:?}",
        migrations(other)
    );
    peers[k].proc.kill9();
    eprintln!("page {page} ({set:?}) moving to {to}: the coordinator {coordinator} killed");
    peers[k].restart();
    for p in &peers {
        wait_for(p, "the move done, the page on its new peer", Duration::from_secs(120), |p| {
            migrations(p).is_empty() && page_members(p, "mg")[page].1.iter().any(|m| m == to)
        });
    }
    step.set(6);
    let line = wait(&mut guest, "MARK phase 6 verified", 300, &peers);
    eprintln!("{}", line.trim());
    let line = wait(&mut guest, "MARK phase 7 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 8. a skewed workload: two hot pages on one peer, one moved away for load -------
    // Two written pages led by one peer (not c, drained): the host writes them alone;
    // the rebalancer, resumed, moves one of them to a less busy peer under the host's
    // I/O, and says it moved it for load.
    let members = page_members(&peers[0], "mg");
    let (hot_a, hot_b) = (0..WRITTEN_PAGES)
        .flat_map(|a| (a + 1..WRITTEN_PAGES).map(move |b| (a, b)))
        .find(|&(a, b)| members[a].0 == members[b].0 && members[a].0 != "c")
        .expect("two pages led by one peer");
    let busy = members[hot_a].0.clone();
    let history_before = rebalance_status(&peers[0])["history"].as_array().map_or(0, Vec::len);
    assert_eq!(cli_json(&peers[1].socket(), &["rebalance", "resume"]), Value::Bool(true));
    hot.set(hot_a as u64 * 1000 + hot_b as u64);
    wait(&mut guest, "MARK phase 8 writing", 120, &peers);
    let moved_for_load = |p: &Peer| -> Option<Value> {
        let s = rebalance_status(p);
        let history = s["history"].as_array().cloned().unwrap_or_default();
        history.into_iter().skip(history_before).find(|m| {
            m["load"] == true && m["from"] == busy.as_str() && [hot_a, hot_b].iter().any(|&h| m["page"] == h as u64)
        })
    };
    wait_for(&peers[0], "a hot page moved away for load, the move done", Duration::from_secs(240), |p| {
        moved_for_load(p).is_some() && migrations(p).is_empty()
    });
    let mv = moved_for_load(&peers[0]).expect("found above");
    eprintln!("moved for load: {mv}");
    let page = usize::try_from(mv["page"].as_u64().expect("a page")).expect("a page index");
    let now = page_members(&peers[0], "mg");
    assert!(!now[page].1.contains(&busy), "page {page} left {busy}: {:?}", now[page]);
    step.set(8);
    let line = wait(&mut guest, "MARK phase 8 verified", 300, &peers);
    eprintln!("{}", line.trim());
    let result = guest.wait();
    assert!(result.success(), "{TEST}: the guest script failed (rc={}):\n{}", result.rc, tail(&result.log, 60));
    assert!(result.log.contains("PASS group-migration.sh"), "{TEST}: no PASS line");
    for l in result.log.lines().filter(|l| l.contains("MARK region")) {
        eprintln!("{}", l.trim());
    }

    // One copy of each written page on each peer of its set, none elsewhere.
    let members = page_members(&peers[0], "mg");
    for p in &peers {
        let held = members[..WRITTEN_PAGES].iter().filter(|(_, ms)| ms.contains(&p.name)).count() as u64;
        wait_for(p, "one copy of each written page of its sets", Duration::from_secs(30), |p| {
            volume_on(p, "mg")["allocated_pages"].as_u64() == Some(held)
        });
    }
    // The host saw no error through a and b (c's path forwarded what it got).
    for p in &peers {
        let vols = cli_json(&p.socket(), &["stats", "volumes"]);
        for v in vols.as_array().unwrap() {
            assert_eq!(v["errors"], 0, "{}: {v}", p.name);
        }
    }
    same_everywhere(&peers, "mg");
}
