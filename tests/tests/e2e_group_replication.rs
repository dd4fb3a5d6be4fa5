//! End-to-end replication: the real Linux NVMe/TCP host (native multipath,
//! round-robin, one path per peer) running `fio --verify` against three `quire serve`
//! peers, a real etcd and a volume with two copies of every page. Peers a and b (and
//! etcd) listen on the host side of a veth pair, c inside a network namespace behind
//! it; the guest reaches all three through QEMU's user network.
//!
//! The guest runs `tests/guest/scripts/group-replication.sh`; this side drives the
//! faults when the guest says so (`MARK phase N ...`):
//! 1. three paths, fio writes and verifies region 0;
//! 2. **partition**: under fio, c is cut off from a, b, etcd and the host for 12 s.
//!    c stops serving replicated pages (a write and a read sent to it from inside
//!    its namespace are refused with a path error, never acknowledged); a and b take
//!    c out of every set and go on; a write through a to a page c led is taken. After
//!    the heal c is admitted back and rebuilt: the write c refused is nowhere, the one
//!    a took is everywhere. fio saw no error, its last pass and region 0 verify;
//! 3. **scrub**: the host writes a piece; one member's copy is corrupted in its device
//!    file behind its back (a read through that member shows it); `quire scrub`
//!    repairs exactly that piece, and the host reads it back right through every path;
//! 4. **a peer killed for good**: under fio, c is killed with SIGKILL and not
//!    restarted; past `replication.replace_after_s` each set c was in gets a new
//!    member on the one peer that did not hold the page, copied in full and promoted.
//!    fio saw no error; every region and the piece verify.
//!
//! Afterwards a and b hold the same bytes, no command failed on them and nothing was
//! held out. Needs root (namespaces), the guest, etcd.

use std::time::{Duration, Instant};

use quire_tests::etcd::etcd_available;
use quire_tests::group::{
    c_refuses, cli_json, client_in, corrupt_block, create_replicated, create_replicated_sized, cut_c_off, find_block,
    first_led_by, group_logs, guest_mark, heal_and_resync, host_writes, page_members, pattern, same_everywhere,
    scrub_and_wait, sets, split_group, volume_on, wait_for, writes_flow, Client, Peer, BLOCKS_PER_PAGE, PAGE_BYTES,
};
use quire_tests::netns::netns_available;
use quire_tests::{require, require_guest, serial, tail, Counter, Guest, GuestOptions};

const TEST: &str = "a_multipath_host_sees_no_error_through_a_partition_a_scrub_and_a_peer_killed_for_good";

/// How long c stays cut off at least (longer if the host takes longer to fail over):
/// past the peer links' 10 s stall timeout, within the 25 s hold time and short of
/// `REPLACE_AFTER_S` after c's eviction.
const PARTITION: Duration = Duration::from_secs(12);
/// `replication.replace_after_s`: longer than the partition lasts after c's lease
/// expires, so that c comes back to its own sets; what phase 4 waits for.
const REPLACE_AFTER_S: u32 = 40;
/// The guest's fio regions, MiB (pages 0-7, 8-15 and 16-23 of 4 MiB).
const REGION_MB: u64 = 32;
/// Blocks of 4 KiB in a 64 KiB piece.
const PIECE_BLOCKS: u32 = 16;

#[test]
fn a_multipath_host_sees_no_error_through_a_partition_a_scrub_and_a_peer_killed_for_good() {
    if !require_guest(TEST) || !require(TEST, netns_available()) || !require(TEST, etcd_available()) {
        return;
    }
    let _serial = serial();
    let (ns, _dir, etcd, mut peers) = split_group("rep", |s| s.replace_after_s = REPLACE_AFTER_S);
    let logs = |peers: &[Peer]| group_logs(peers, &etcd);
    // The host's volume (48 pages) and a probe volume for the fencing checks.
    create_replicated_sized(&peers, 0, "rv", "192M");
    create_replicated(&peers, 0, "probe");
    // The scrub's piece: in a page a leads, outside fio's three regions.
    let members = page_members(&peers[0], "rv");
    let probe_members = page_members(&peers[0], "probe");
    let fio_pages = usize::try_from(3 * REGION_MB / (PAGE_BYTES >> 20)).unwrap();
    let scrub_page = (fio_pages..members.len())
        .find(|&p| members[p].0 == "a")
        .unwrap_or_else(|| panic!("no page past fio's regions led by a: {members:?}"));
    let scrub_piece = scrub_page as u64 * BLOCKS_PER_PAGE / u64::from(PIECE_BLOCKS) + 2;
    let x_name = members[scrub_page].1.iter().find(|m| *m != "a").expect("another member").clone();
    let x = peers.iter().position(|q| q.name == x_name).unwrap();

    // A page of `probe` that c leads, written through c from inside its namespace.
    let on_c = first_led_by(&peers[0], "probe", "c") * BLOCKS_PER_PAGE + 8;
    let mut inside = client_in(&ns, &peers[2], "probe", Duration::from_secs(15));
    inside.write(on_c, &pattern(on_c, 1, 2)).expect("a write through c before the partition");
    drop(inside);

    let step = Counter::start("step");
    let env = [
        ("DISC_ADDR", ns.host_ip().to_string()),
        ("DISC_PORT", peers[0].port.to_string()),
        ("NQN", "nqn.2026-11.io.quire:rv".to_string()),
        ("CTRL_PORT", step.port().to_string()),
        ("PEERS", "3".to_string()),
        ("REGION_MB", REGION_MB.to_string()),
        ("SCRUB_PIECE", scrub_piece.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let opts =
        GuestOptions { timeout: Duration::from_secs(900), label: "group-replication".into(), ..Default::default() };
    let mut guest = Guest::spawn_script("group-replication.sh", &env, &opts).expect("boot the guest");
    let wait = |guest: &mut Guest, pattern: &str, secs: u64, peers: &[Peer]| -> String {
        guest_mark(guest, pattern, secs, &|| logs(peers))
    };
    let line = wait(&mut guest, "MARK phase 1 verified", 300, &peers);
    eprintln!("{}", line.trim());

    // ---- 2. the partition --------------------------------------------------------
    wait(&mut guest, "MARK phase 2 writing", 60, &peers);
    writes_flow(&peers, "rv");
    let cut = Instant::now();
    let switched = cut_c_off(&ns, &peers, &["rv", "probe"]);
    eprintln!("c out of every set {switched:.1?} after the cut");
    c_refuses(&ns, &peers[2], "probe", on_c, 2, &|| logs(&peers));
    // The page's new leader takes a write through a; the host's fio goes on through
    // a and b (its path to c is cut too).
    let mut a = Client::connect(&peers[0], "probe", Duration::from_secs(15));
    a.write(on_c, &pattern(on_c, 3, 2)).expect("a write through a during the partition");
    drop(a);
    for p in &peers[..2] {
        assert_eq!(volume_on(p, "rv")["health"], "degraded", "rv on {}", p.name);
    }
    // The host's I/O queued on its path to c fails over to a and b once the host's
    // keep-alive to c times out: its writes go on through them while c is cut off.
    let during = host_writes(&peers[..2], "rv");
    let end = quire_tests::deadline(Duration::from_secs(60));
    while host_writes(&peers[..2], "rv") < during + 100 {
        assert!(Instant::now() < end, "{TEST}: the host writes nothing through a and b during the partition");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the host writes through a and b {:.1?} after the cut", cut.elapsed());
    if let Some(left) = PARTITION.checked_sub(cut.elapsed()) {
        std::thread::sleep(left);
    }
    let resynced = heal_and_resync(&ns, &peers, &["rv", "probe"]);
    eprintln!("every copy in sync {resynced:.1?} after the heal");
    // Back to c's own sets: nothing was replaced during the partition.
    for (page, (_, ms)) in page_members(&peers[0], "rv").iter().enumerate() {
        let (mut now, mut then) = (ms.clone(), members[page].1.clone());
        now.sort();
        then.sort();
        assert_eq!(now, then, "page {page}: the same members as before the partition");
    }
    step.set(2);
    let line = wait(&mut guest, "MARK phase 2 verified", 300, &peers);
    eprintln!("{}", line.trim());
    for p in &peers {
        let mut cl = Client::connect(p, "probe", Duration::from_secs(15));
        assert_eq!(cl.read(on_c, 2).expect("read after the heal"), pattern(on_c, 3, 2), "on {}", p.name);
    }
    same_everywhere(&peers, "probe");
    same_everywhere(&peers, "rv");

    // ---- 3. the scrub --------------------------------------------------------------
    let line = wait(&mut guest, "MARK phase 3 written", 60, &peers);
    eprintln!("{}", line.trim());
    let lba = scrub_piece * u64::from(PIECE_BLOCKS);
    let piece = Client::connect(&peers[0], "rv", Duration::from_secs(15))
        .read(lba, PIECE_BLOCKS)
        .expect("read the host's piece through a");
    // Behind x's back: the piece's second block overwritten in x's device file.
    let img = peers[x].dir.join("quire.img");
    let at = find_block(&img, &piece[..4096]).unwrap_or_else(|| panic!("the piece is not in {}", img.display()));
    corrupt_block(&img, at + 4096, 0xEE);
    let mut via_x = Client::connect(&peers[x], "rv", Duration::from_secs(15));
    assert_ne!(via_x.read(lba, PIECE_BLOCKS).expect("read through x"), piece, "x reads its corrupted copy");
    let repaired_before: u64 = peers.iter().map(|p| p.reactor_sum("scrub_mismatches")).sum();
    scrub_and_wait(&peers, &peers[1], "rv", 1, Duration::from_secs(90));
    let repaired: u64 = peers.iter().map(|p| p.reactor_sum("scrub_mismatches")).sum();
    assert_eq!(repaired, repaired_before + 1, "one mismatch found and repaired");
    // A new connection: the first one may have sat idle past its keep-alive timeout.
    let mut via_x = Client::connect(&peers[x], "rv", Duration::from_secs(15));
    assert_eq!(via_x.read(lba, PIECE_BLOCKS).expect("read through x again"), piece, "x's copy repaired");
    drop(via_x);
    step.set(3);
    let line = wait(&mut guest, "MARK phase 3 verified", 120, &peers);
    eprintln!("{}", line.trim());

    // ---- 4. c killed for good --------------------------------------------------------
    wait(&mut guest, "MARK phase 4 writing", 60, &peers);
    writes_flow(&peers, "rv");
    let copied_before: u64 = peers[..2].iter().map(|p| p.reactor_sum("rebuild_bytes")).sum();
    peers[2].proc.kill9();
    let killed = Instant::now();
    for p in &peers[..2] {
        wait_for(p, "every set rebuilt on a and b, healthy", Duration::from_secs(120), |p| {
            ["rv", "probe"].iter().all(|v| {
                let s = sets(p, v);
                !s.is_empty()
                    && s.iter().all(|(_, ms)| {
                        ms.len() == 2 && ms[0].0 != ms[1].0 && ms.iter().all(|(m, st)| m != "c" && st == "sync")
                    })
                    && volume_on(p, v)["health"] == "healthy"
            })
        });
    }
    eprintln!("every copy c held rebuilt on a and b {:.1?} after the kill", killed.elapsed());
    step.set(4);
    let line = wait(&mut guest, "MARK phase 4 verified", 300, &peers);
    eprintln!("{}", line.trim());
    let result = guest.wait();
    assert!(result.success(), "{TEST}: the guest script failed (rc={}):\n{}", result.rc, tail(&result.log, 60));
    assert!(result.log.contains("PASS group-replication.sh"), "{TEST}: no PASS line");

    for l in result.log.lines().filter(|l| l.contains("MARK region")) {
        eprintln!("{}", l.trim());
    }
    // What c held is copied whole to the new members: of rv, every page the host
    // wrote (a page nobody wrote is not allocated, and not copied); of probe, at most
    // every page.
    let copied = peers[..2].iter().map(|p| p.reactor_sum("rebuild_bytes")).sum::<u64>() - copied_before;
    let written = |page: usize| page < fio_pages || page == scrub_page;
    let held_written = members.iter().enumerate().filter(|(i, (_, ms))| written(*i) && ms.iter().any(|m| m == "c"));
    let held_written = held_written.count() as u64;
    let probe_held = probe_members.iter().filter(|(_, ms)| ms.iter().any(|m| m == "c")).count() as u64;
    assert!(
        copied >= held_written * PAGE_BYTES && copied <= (held_written + probe_held) * PAGE_BYTES,
        "c held {held_written} written pages of rv: {copied} bytes copied to their new members"
    );
    for p in &peers[..2] {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}: no part held out\n{}", p.name, tail(&p.proc.log(), 20));
        let vols = cli_json(&p.socket(), &["stats", "volumes"]);
        for v in vols.as_array().unwrap() {
            assert_eq!(v["errors"], 0, "{}: {v}", p.name);
        }
    }
    same_everywhere(&peers[..2], "rv");
    same_everywhere(&peers[..2], "probe");
}
