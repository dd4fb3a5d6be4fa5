//! Moving pages between peers while hosts use them (`replica::migration`), with real
//! peers: three `quire serve` peers on loopback and a real etcd, `quire-perf --verify`
//! as the host.
//! - `quire page move` of a page of a volume with one copy, under verified I/O: the
//!   page is copied to the new peer while both copies take every write, cut over,
//!   and the old copy is freed: one copy at the end, on the new peer, the host saw no
//!   error and every block verifies;
//! - `quire migration cancel` before the cut-over leaves the page where it was;
//! - `quire peer drain` under verified I/O moves every copy the peer holds of a
//!   volume with two copies to the other peers, and frees them on the drained peer;
//!   `quire peer remove` is refused while it runs, and once it is stopped forgets it;
//! - a move whose source (the page's only copy, which drives the copy) is killed
//!   mid-copy and restarted resumes from the progress persisted in the group: the
//!   pieces copied before are compared, only the rest is copied again;
//! - a move whose coordinator is killed mid-copy and restarted completes.

use std::time::Duration;

/// The copy rate of the page-move test, MB/s.
const RATE_MB_S: u32 = 2;

use quire_tests::group::{
    cli_error, cli_json, create_replicated, first_led_by, pattern, peers_in, same_everywhere, sets, three_peers,
    three_peers_with, verified_io, volume_on, wait_all, wait_for, Client, Peer, BLOCKS_PER_PAGE, PAGE_BYTES,
};
use quire_tests::{serial, tail};
use serde_json::Value;

/// The members (peer names) of the set of page `page` of `volume` on `peer`, with the
/// move under way in it (from, to), if any; nothing from a peer that does not serve
/// the volume (yet: one just restarted learns it from the group first).
fn page_set(peer: &Peer, volume: &str, page: u64) -> (String, Vec<String>) {
    if !quire_tests::group::pages(peer, volume)["runs"].is_array() {
        return (String::new(), Vec::new());
    }
    let members = quire_tests::group::page_members(peer, volume);
    members[usize::try_from(page).unwrap()].clone()
}

/// Creates `name` (48 MiB of 4 MiB pages, one copy each) through the first peer and
/// waits until every peer routes it.
fn create_single(peers: &[Peer], name: &str) {
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", name, "--size", "48M", "--page-size", "4M", "--replicas", "1"],
    );
    assert_eq!(v["name"], name, "{v}");
    for p in peers {
        wait_for(p, "the volume routed everywhere", Duration::from_secs(15), |p| !sets(p, name).is_empty());
    }
}

/// Every page of `volume` (all written) has one copy, on its set's peer, and every peer
/// reads the same bytes.
fn one_copy_each(peers: &[Peer], volume: &str) {
    let members = quire_tests::group::page_members(&peers[0], volume);
    for p in peers {
        let held = members.iter().filter(|(_, ms)| ms.contains(&p.name)).count() as u64;
        wait_for(p, "one copy of each page, on its set's peer", Duration::from_secs(30), |p| {
            volume_on(p, volume)["allocated_pages"].as_u64() == Some(held)
        });
    }
    same_everywhere(peers, volume);
}

/// The moves under way, as `quire migration list` gives them on `peer`.
fn migrations(peer: &Peer) -> Vec<Value> {
    cli_json(&peer.socket(), &["migration", "list"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_page_moved_by_hand_under_io_ends_with_one_copy_on_the_new_peer() {
    let _serial = serial();
    // Copies at 2 MB/s: a page takes two seconds, long enough to cancel a move.
    let Some((_dir, _etcd, peers)) = three_peers_with("a_page_moved_by_hand", 25_000, |s| s.rebuild_mb_s = RATE_MB_S)
    else {
        return;
    };
    create_single(&peers, "mv");
    let page = first_led_by(&peers[0], "mv", "a");
    let allocated = |p: &Peer| volume_on(p, "mv")["allocated_pages"].as_u64().unwrap();

    // Verified random I/O through b over the whole volume while the page moves.
    let io = verified_io(&peers[1], "mv", 12);
    wait_for(&peers[1], "host I/O under way", Duration::from_secs(20), |p| p.reactor_sum("forwarded_parts") > 300);
    let started = cli_json(&peers[2].socket(), &["page", "move", "mv", &page.to_string(), "c"]);
    let list = started.as_array().unwrap_or_else(|| panic!("page move: {started}"));
    assert!(
        list.iter().any(|m| m["first_page"] == page && m["from"] == "a" && m["to"] == "c"),
        "the move is listed: {started}"
    );
    // Copied, cut over, handed over: the page's set is c alone, on every peer.
    for p in &peers {
        wait_for(p, "the page on c alone, the move done", Duration::from_secs(60), |p| {
            page_set(p, "mv", page) == ("c".to_string(), vec!["c".to_string()]) && migrations(p).is_empty()
        });
    }
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through b across the move: {}\n{}", run.text, tail(&peers[0].proc.log(), 30));
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    // No path error anywhere (a part the old leader was ordering at the cut-over goes
    // back to its sender, which takes it to the new leader: not an error).
    for p in &peers {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}: {}", p.name, tail(&p.proc.log(), 20));
    }
    // One copy of each page: every page was written (the --verify prefill), and each
    // peer's store holds exactly the pages whose set it is in; a's copy of the moved
    // page is freed (after a barrier), c's allocated.
    let members = quire_tests::group::page_members(&peers[0], "mv");
    for p in &peers {
        let held = members.iter().filter(|(_, ms)| ms.contains(&p.name)).count() as u64;
        wait_for(p, "one copy of each page, on its set's peer", Duration::from_secs(20), |p| allocated(p) == held);
    }
    assert!(peers[0].reactor_sum("rebuild_bytes") > 0, "a copied the page to c");
    // Every peer reads the same bytes; a write through a after the move lands on c.
    let lba = page * BLOCKS_PER_PAGE + 40;
    let mut a = Client::connect(&peers[0], "mv", Duration::from_secs(15));
    a.write(lba, &pattern(lba, 5, 4)).expect("write through a after the move");
    let mut c = Client::connect(&peers[2], "mv", Duration::from_secs(15));
    assert!(c.read(lba, 4).expect("read through c") == pattern(lba, 5, 4), "the write reads back through c");
    same_everywhere(&peers, "mv");

    // A move cancelled before its cut-over (the copy takes two seconds) leaves the
    // page where it was.
    let other = first_led_by(&peers[0], "mv", "b");
    let started = cli_json(&peers[0].socket(), &["page", "move", "mv", &other.to_string(), "a"]);
    let id = started.as_array().and_then(|l| l.iter().find(|m| m["first_page"] == other)).map(|m| m["id"].clone());
    let id = id.unwrap_or_else(|| panic!("page move: {started}"));
    let cancelled = cli_json(&peers[1].socket(), &["migration", "cancel", "mv", &id.to_string()]);
    assert_eq!(cancelled, Value::Bool(true), "cancel move {id}");
    for p in &peers {
        wait_for(p, "the page back on b alone", Duration::from_secs(20), |p| {
            page_set(p, "mv", other) == ("b".to_string(), vec!["b".to_string()]) && migrations(p).is_empty()
        });
    }
    // Its partial copy on a is freed: a holds only the pages of its sets.
    let members = quire_tests::group::page_members(&peers[0], "mv");
    let held = members.iter().filter(|(_, ms)| ms.contains(&"a".to_string())).count() as u64;
    wait_for(&peers[0], "a's partial copy freed", Duration::from_secs(20), |p| allocated(p) == held);
    same_everywhere(&peers, "mv");
}

/// The copy rate of the resume test, MB/s: a page takes about four seconds.
const RESUME_MB_S: u32 = 1;

#[test]
fn a_move_whose_source_restarts_mid_copy_resumes_from_its_persisted_progress() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three_peers_with("a_move_resumes", 25_000, |s| s.rebuild_mb_s = RESUME_MB_S)
    else {
        return;
    };
    create_single(&peers, "rs");
    let page = first_led_by(&peers[0], "rs", "a");
    // Verified random I/O through b over the whole volume (every page written first)
    // across the move, the kill of its source and its restart (b holds the parts for
    // a's pages while a is away).
    let io = verified_io(&peers[1], "rs", 30);
    wait_for(&peers[1], "host I/O under way", Duration::from_secs(20), |p| p.reactor_sum("forwarded_parts") > 300);
    let started = cli_json(&peers[1].socket(), &["page", "move", "rs", &page.to_string(), "c"]);
    assert!(started.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == page)), "{started}");
    // The copy's progress, persisted in the group: pieces from the first all copied.
    let progress = |p: &Peer| {
        migrations(p)
            .iter()
            .find(|m| m["first_page"] == page)
            .map(|m| (m["pieces_done"].as_u64().unwrap_or(0), m["pieces"].as_u64().unwrap_or(0)))
    };
    wait_for(&peers[1], "a quarter of the page copied, as persisted", Duration::from_secs(30), |p| {
        progress(p).is_some_and(|(done, all)| all == 64 && done >= 16)
    });
    // a, the page's only copy in sync and the copy's driver, dies mid-copy and comes back.
    peers[0].proc.kill9();
    let (done, all) = progress(&peers[1]).expect("the move is under way");
    assert!(done < all, "killed mid-copy: {done}/{all}");
    peers[0].restart();
    for p in &peers {
        wait_for(p, "the page on c alone, the move done", Duration::from_secs(90), |p| {
            page_set(p, "rs", page) == ("c".to_string(), vec!["c".to_string()]) && migrations(p).is_empty()
        });
    }
    // The restarted a took up the copy where the persisted progress said: it compared
    // the pieces before it (equal: nothing written meanwhile) and copied only the rest.
    let log = peers[0].proc.log();
    assert!(log.contains("rebuild resumes from an earlier run's progress"), "{}", tail(&log, 30));
    let copied = peers[0].reactor_sum("rebuild_bytes");
    let piece = PAGE_BYTES / 64;
    eprintln!("a killed at {done}/{all} pieces persisted; it copied {copied} bytes after its restart");
    assert!(copied > 0, "the rest of the page was copied");
    assert!(
        copied <= (all - done) * piece,
        "a copied {copied} bytes after its restart: more than the {} pieces left after the {done} persisted",
        all - done
    );
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through b across the move and a's restart: {}\n{}", run.text, tail(&log, 30));
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    // One copy of each page, on its set's peer; every peer reads the same bytes.
    one_copy_each(&peers, "rs");
}

#[test]
fn a_move_survives_the_coordinator_killed_mid_copy() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) =
        three_peers_with("a_move_coordinator_killed", 25_000, |s| s.rebuild_mb_s = RESUME_MB_S)
    else {
        return;
    };
    create_single(&peers, "ck");
    // The page moves between the two peers that do not coordinate; the host uses the
    // source.
    let all: Vec<&Peer> = peers.iter().collect();
    let coordinator = quire_tests::group::one_coordinator(&all, &["a", "b", "c"]);
    let k = peers.iter().position(|p| p.name == coordinator).expect("a peer coordinates");
    let (x, y) = ((k + 1) % 3, (k + 2) % 3);
    let (from, to) = (peers[x].name.clone(), peers[y].name.clone());
    let page = first_led_by(&peers[x], "ck", &from);
    let io = verified_io(&peers[x], "ck", 25);
    wait_for(&peers[x], "host I/O under way", Duration::from_secs(20), |p| p.reactor_sum("forwarded_parts") > 300);
    let started = cli_json(&peers[x].socket(), &["page", "move", "ck", &page.to_string(), &to]);
    assert!(started.as_array().is_some_and(|l| l.iter().any(|m| m["first_page"] == page)), "{started}");
    wait_for(&peers[x], "part of the page copied", Duration::from_secs(30), |p| {
        migrations(p).iter().any(|m| m["first_page"] == page && m["pieces_done"].as_u64().unwrap_or(0) >= 8)
    });
    // The coordinator dies mid-copy and comes back: the copy goes on (its source drives
    // it), and the cut-over and hand-over are planned by whichever peer coordinates.
    peers[k].proc.kill9();
    assert!(migrations(&peers[x]).iter().any(|m| m["first_page"] == page && m["phase"] == "copying"));
    peers[k].restart();
    for p in &peers {
        wait_for(p, "the page on its new peer alone, the move done", Duration::from_secs(90), |p| {
            page_set(p, "ck", page) == (to.clone(), vec![to.clone()]) && migrations(p).is_empty()
        });
    }
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through {from} across the coordinator's restart: {}", run.text);
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    one_copy_each(&peers, "ck");
}

#[test]
fn a_drained_peer_gives_every_copy_away_under_io() {
    let _serial = serial();
    let Some((_dir, _etcd, peers)) = three_peers("a_drained_peer", 25_000) else { return };
    create_replicated(&peers, 0, "dr");
    let io = verified_io(&peers[0], "dr", 12);
    wait_for(&peers[0], "replicated writes under way", Duration::from_secs(20), |p| {
        p.reactor_sum("replica_parts") > 300
    });
    assert_eq!(cli_json(&peers[1].socket(), &["peer", "drain", "c"]), Value::Bool(true));
    // Every set c was in moves its copy to a or b; then c holds nothing of the volume.
    for p in &peers[..2] {
        wait_for(p, "no copy on c, every set in sync", Duration::from_secs(90), |p| {
            let s = sets(p, "dr");
            !s.is_empty()
                && s.iter()
                    .all(|(l, ms)| l != "c" && ms.len() == 2 && ms.iter().all(|(m, st)| m != "c" && st == "sync"))
                && migrations(p).is_empty()
        });
    }
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through a across the drain: {}\n{}", run.text, tail(&peers[2].proc.log(), 30));
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    assert_eq!(peers[0].reactor_sum("path_errors"), 0, "{}", tail(&peers[0].proc.log(), 20));
    wait_for(&peers[2], "c's copies freed", Duration::from_secs(20), |p| {
        volume_on(p, "dr")["allocated_pages"].as_u64() == Some(0)
    });
    same_everywhere(&peers, "dr");
    // c takes no new copies while drained: a new volume's sets leave it out.
    create_drained_volume(&peers);

    // Removed for good: refused while it runs; once stopped (and holding no copy of
    // any volume, the configured one included), its routing id goes and no peer lists
    // it any more, not even as gone.
    let err = cli_error(&peers[0].socket(), &["peer", "remove", "c"]).expect("refused while c runs");
    assert!(err.contains("is live"), "{err}");
    for v in ["demo", "dr", "after"] {
        wait_for(&peers[0], "no set names c", Duration::from_secs(60), |p| {
            sets(p, v).iter().all(|(l, ms)| l != "c" && ms.iter().all(|(m, _)| m != "c"))
        });
    }
    let mut peers = peers;
    let code = peers[2].proc.terminate(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", tail(&peers[2].proc.log(), 20));
    let (ab, _) = peers.split_at(2);
    let ab: Vec<&Peer> = ab.iter().collect();
    wait_all(&ab, "c not live", Duration::from_secs(20), |s| !peers_in(s, "live").contains(&"c".to_string()));
    assert_eq!(cli_json(&peers[1].socket(), &["peer", "remove", "c"]), Value::Bool(true));
    wait_all(&ab, "c listed nowhere", Duration::from_secs(20), |s| {
        s["peers"].as_array().is_some_and(|ps| ps.iter().all(|p| p["name"] != "c"))
    });
    let err = cli_error(&peers[0].socket(), &["peer", "remove", "c"]).expect("c is no peer any more");
    assert!(err.contains("no peer named"), "{err}");
}

/// A volume made while c is drained has no copy on c.
fn create_drained_volume(peers: &[Peer]) {
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "after", "--size", "48M", "--page-size", "4M", "--replicas", "2"],
    );
    assert_eq!(v["name"], "after", "{v}");
    wait_for(&peers[0], "after routed", Duration::from_secs(15), |p| !sets(p, "after").is_empty());
    let s = sets(&peers[0], "after");
    assert!(s.iter().all(|(_, ms)| ms.iter().all(|(m, _)| m != "c")), "a drained peer takes no copy: {s:?}");
}
