//! Any peer serves any I/O: three real `quire serve` peers on loopback with a real
//! etcd, a volume whose pages lie on all three, and I/O through each peer, every part
//! on another peer's page forwarded over the peer links and answered on the host's
//! own connection. Checked with `quire-perf --verify` (random reads and writes, I/O
//! that spans pages of different peers), with a client that writes through one peer
//! and reads through the others (flush, write zeroes and deallocate included), with
//! the copy counters (zero on every forwarding and serving path), with a peer killed
//! and restarted under verified I/O (no host error), with a peer that stays away past
//! the hold time (a retryable path error, never a data error, and other pages served
//! meanwhile), and with strangers at the link port (refused; nothing disturbed).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use quire_tests::group::{
    cli_json, owners_of, pattern, perf, perf_bin, setup, start_group, volume_on, wait_all, wait_for, Client,
    DeviceSpec, Peer, PeerSpec, BLOCK,
};
use quire_tests::{require, serial, tail};
use quire_wire::nvme::Status;

fn three(test: &str, hold_ms: u32) -> Option<(tempfile::TempDir, quire_tests::etcd::Etcd, Vec<Peer>)> {
    quire_tests::group::three_peers(test, hold_ms)
}

/// Creates `name` through `via` and waits until every peer routes it, spread evenly.
fn create_spread(peers: &[Peer], via: usize, name: &str, size: &str, page: &str) {
    let v = cli_json(
        &peers[via].socket(),
        &["volume", "create", name, "--size", size, "--page-size", page, "--replicas", "1"],
    );
    assert_eq!(v["name"], name, "create {name}: {v}");
    for p in peers {
        wait_for(p, &format!("{name} spread over a, b and c"), Duration::from_secs(15), |p| {
            let o = owners_of(p, name);
            o.len() == 3 && o.iter().all(|(_, n)| *n == o[0].1)
        });
    }
}

#[test]
fn any_peer_serves_any_io_and_forwards_without_copying() {
    let _serial = serial();
    let Some((_dir, _etcd, peers)) = three("any_peer_serves_any_io", 25_000) else { return };
    // 4 MiB pages: parts are whole 4 KiB I/Os; 64 KiB pages: a 96 KiB I/O spans two or
    // three pages, usually of different peers, split and completed once.
    create_spread(&peers, 2, "spread", "96M", "4M");
    create_spread(&peers, 0, "small", "24M", "64K");

    let verified = |p: &Peer, volume: &str, args: &[&str]| {
        let trid = p.trid(volume);
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-t", "2", "--verify", "-r", &trid]);
        let run = perf(&a);
        assert!(run.ok, "{volume} through {}: {}", p.name, run.text);
        assert!(run.text.contains("Verify: 0 mismatched blocks"), "{volume} through {}: {}", p.name, run.text);
    };
    // 4 KiB reads and writes through every peer, two thirds of them forwarded: not a
    // byte of payload copied anywhere (host receive, link send, link receive, host
    // send). (Without --verify here: its prefill writes 128 KiB at a time, by R2T and
    // H2CData, and the host receive path copies the payload bytes that arrive in one
    // read with their PDU header, as ARCHITECTURE.md says: a host-path matter, not
    // forwarding's.)
    for p in &peers {
        let run = perf(&["-q", "16", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "-r", &p.trid("spread")]);
        assert!(run.ok, "{}", run.text);
    }
    for p in &peers {
        assert!(p.reactor_sum("forwarded_parts") > 1000, "{} forwarded", p.name);
        assert!(p.reactor_sum("link_served") > 1000, "{} served its peers", p.name);
        assert_eq!(p.reactor_sum("rx_copied_bytes"), 0, "{}: payload copied on receive", p.name);
        assert_eq!(p.reactor_sum("tx_copied_bytes"), 0, "{}: payload copied on send", p.name);
    }
    // Verified: 4 KiB I/O, and 96 KiB I/O across pages of different peers.
    for p in &peers {
        verified(p, "spread", &["-q", "16", "-o", "4096", "-w", "randrw", "-M", "50"]);
        verified(p, "small", &["-q", "8", "-o", "96K", "-w", "randrw", "-M", "50"]);
    }

    // Written through one peer, read back through every other, block for block: the
    // owner's copy is the only copy. A write spanning three pages (three owners).
    let mut clients: Vec<Client> = peers.iter().map(|p| Client::connect(p, "small", Duration::from_secs(10))).collect();
    let (lba, blocks) = (14, 36); // 64 KiB pages are 16 blocks: pages 0, 1, 2 and 3
    let data = pattern(lba, 1, blocks);
    clients[0].write(lba, &data).expect("write through a");
    clients[0].flush().expect("flush through a reaches every owner");
    for (i, c) in clients.iter_mut().enumerate() {
        let got = c.read(lba, u32::try_from(blocks).unwrap()).expect("read");
        assert!(got == data, "read through {} differs", peers[i].name);
    }
    // Compare through every peer, over the three owners: equal, and one byte off on
    // the last page fails wherever it is asked.
    let mut off = data.clone();
    off[35 * BLOCK + 5] ^= 0x10; // block 49, page 3
    for (i, c) in clients.iter_mut().enumerate() {
        c.compare(lba, &data).unwrap_or_else(|s| panic!("compare through {}: {s:?}", peers[i].name));
        assert_eq!(c.compare(lba, &off), Err(Status::COMPARE_FAILURE.with_dnr()), "through {}", peers[i].name);
    }
    // Copy through c: two source ranges on pages of different owners to a
    // destination across two more pages; read back through a.
    let dest = 16 * 16 - 3; // pages 15 and 16
    clients[2].copy(dest, &[(lba + 30, 6), (lba, 4)]).expect("copy through c");
    let got = clients[0].read(dest, 10).expect("read the copy through a");
    assert!(got[..6 * BLOCK] == data[30 * BLOCK..] && got[6 * BLOCK..] == data[..4 * BLOCK], "copied data");
    clients[0].write_zeroes(dest, 10, true).expect("zero the copy again");
    // Write Zeroes through b and Deallocate through c, across owners.
    clients[1].write_zeroes(lba, 4, false).expect("write zeroes through b");
    clients[2].deallocate(&[(lba + 20, 12)]).expect("deallocate through c");
    let got = clients[0].read(lba, u32::try_from(blocks).unwrap()).expect("read through a");
    let mut want = data.clone();
    want[..4 * BLOCK].fill(0);
    want[20 * BLOCK..32 * BLOCK].fill(0);
    assert!(got == want, "zeroed ranges read back as zeroes, the rest as written");
    // A whole page deallocated gives its space back on its owner.
    let before: u64 = peers.iter().map(|p| volume_on(p, "small")["allocated_pages"].as_u64().unwrap()).sum();
    clients[1].deallocate(&[(16, 16)]).expect("deallocate page 1 through b");
    let after: u64 = peers.iter().map(|p| volume_on(p, "small")["allocated_pages"].as_u64().unwrap()).sum();
    assert_eq!(after + 1, before, "page 1 freed on its owner");
    assert_eq!(clients[2].read(16, 16).expect("read page 1"), vec![0u8; 16 * BLOCK]);

    // Each reactor's links are up and carried forwards to both other peers.
    for p in &peers {
        let rs = cli_json(&p.socket(), &["stats", "reactors"]);
        let links = rs[0]["links"].as_array().cloned().unwrap_or_default();
        let mut seen: Vec<String> = links
            .iter()
            .filter(|l| {
                l["up"] == true && l["forwarded"].as_u64().unwrap_or(0) > 0 && l["connects"].as_u64() >= Some(1)
            })
            .map(|l| l["peer"].as_str().unwrap().to_string())
            .collect();
        seen.sort();
        let mut others: Vec<String> = peers.iter().filter(|q| q.name != p.name).map(|q| q.name.clone()).collect();
        others.sort();
        assert_eq!(seen, others, "{}: links {links:?}", p.name);
    }
    // No error anywhere.
    for p in &peers {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}", p.name);
        assert_eq!(p.reactor_sum("link_errors"), 0, "{}", p.name);
        let vols = cli_json(&p.socket(), &["stats", "volumes"]);
        for v in vols.as_array().unwrap() {
            assert_eq!(v["errors"], 0, "{}: {v}", p.name);
        }
    }
    // Each peer holds only its own pages' data.
    let spread_alloc: Vec<u64> =
        peers.iter().map(|p| volume_on(p, "spread")["allocated_pages"].as_u64().unwrap()).collect();
    assert!(spread_alloc.iter().all(|&n| n > 0 && n <= 8), "{spread_alloc:?}");
}

#[test]
fn an_owner_short_of_buffers_pushes_back_and_loses_nothing() {
    let _serial = serial();
    let test = "an_owner_short_of_buffers_pushes_back";
    if !require(test, perf_bin().map(|_| ())) {
        return;
    }
    let Some((dir, etcd, secret)) = setup(test) else { return };
    // 128 buffers of 128 KiB: 16 for inbound links, far fewer than 16 forwarded 1 MiB
    // writes (128 parts of 128 KiB) need at once, so every owner's link runs out and
    // stops reading; the hosts' 112 leave room for their admin queues' receives (a
    // host whose I/O takes every buffer starves its own keep-alive).
    let specs: Vec<PeerSpec> = ["a", "b"]
        .iter()
        .map(|n| PeerSpec {
            device: DeviceSpec::FileBuffered,
            buffers: 128,
            ..PeerSpec::new(n, &etcd.endpoint(), &secret)
        })
        .collect();
    let peers = start_group(dir.path(), &specs);
    let v = cli_json(
        &peers[0].socket(),
        &["volume", "create", "big", "--size", "96M", "--page-size", "4M", "--replicas", "1"],
    );
    assert_eq!(v["name"], "big", "{v}");
    for p in &peers {
        wait_for(p, "big on a and b", Duration::from_secs(15), |p| owners_of(p, "big").len() == 2);
    }
    for p in &peers {
        let run =
            perf(&["-q", "16", "-o", "1M", "-w", "randrw", "-M", "30", "-t", "3", "--verify", "-r", &p.trid("big")]);
        assert!(run.ok && run.text.contains("Verify: 0 mismatched blocks"), "through {}: {}", p.name, run.text);
    }
    let stalls: u64 = peers.iter().map(|p| p.reactor_sum("link_stalls")).sum();
    assert!(stalls > 0, "no link ran out of buffers: the test did not test what it says");
    for p in &peers {
        assert_eq!(p.reactor_sum("path_errors"), 0, "{}", p.name);
    }
}

#[test]
fn a_peer_restarted_within_the_hold_time_costs_the_host_no_error() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three("a_peer_restarted_within_the_hold_time", 25_000) else { return };
    create_spread(&peers, 0, "spread", "48M", "4M");
    let trid = peers[0].trid("spread");
    let io = std::thread::spawn(move || {
        perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "12", "--verify", "-r", &trid])
    });
    // Let I/O run, then kill c under it; a and b hold c's parts; c comes back.
    wait_for(&peers[0], "forwarding under way", Duration::from_secs(20), |p| p.reactor_sum("forwarded_parts") > 500);
    let killed = Instant::now();
    peers[2].proc.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    peers[2].restart();
    let back = killed.elapsed();
    let run = io.join().expect("perf thread");
    assert!(run.ok, "I/O through a across c's restart ({back:.1?}): {}", run.text);
    assert!(run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    assert_eq!(peers[0].reactor_sum("path_errors"), 0);
    let log = peers[0].proc.log();
    assert!(log.contains("peer link down"), "a saw its link to c go: {}", tail(&log, 20));
    // And the link came back by itself (up to b, up to c, up to c again).
    wait_for(&peers[0], "the link to c again", Duration::from_secs(10), |p| {
        p.proc.log().matches("peer link up").count() >= 3
    });
}

#[test]
fn past_the_hold_time_only_the_lost_peers_pages_fail_and_with_a_retryable_path_error() {
    let _serial = serial();
    let Some((_dir, _etcd, mut peers)) = three("past_the_hold_time", 2_000) else { return };
    create_spread(&peers, 0, "spread", "48M", "4M");
    let pages = cli_json(&peers[0].socket(), &["volume", "pages", "spread"]);
    let first_of = |owner: &str| -> u64 {
        let runs = pages["runs"].as_array().unwrap();
        runs.iter().find(|r| r["owner"] == owner).unwrap()["first"].as_u64().unwrap()
    };
    let blocks_per_page = 1024;
    let (on_b, on_c) = (first_of("b") * blocks_per_page, first_of("c") * blocks_per_page);
    let mut a = Client::connect(&peers[0], "spread", Duration::from_secs(15));
    a.write(on_c, &pattern(on_c, 7, 1)).expect("write to c's page through a");
    peers[2].proc.kill9();
    wait_all(&[&peers[0]], "c gone", Duration::from_secs(15), |s| quire_tests::group::peers_in(s, "gone") == ["c"]);
    // c's page: held for the hold time, then a path error the host may retry.
    let t0 = Instant::now();
    let err = a.read(on_c, 1).expect_err("c is away");
    let held = t0.elapsed();
    assert_eq!((err.sct, err.sc, err.dnr), (3, 0, false), "Internal Path Error, retryable: {err:?}");
    assert!(held >= Duration::from_millis(1500) && held < Duration::from_secs(10), "held {held:?}");
    // b's page meanwhile: at once.
    let t0 = Instant::now();
    a.write(on_b, &pattern(on_b, 8, 1)).expect("b's page is served");
    assert_eq!(a.read(on_b, 1).expect("read b's page"), pattern(on_b, 8, 1));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(peers[0].reactor_sum("path_errors") >= 1);
    // c back: its page reads what was written before it went.
    peers[2].restart();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match a.read(on_c, 1) {
            Ok(got) => {
                assert_eq!(got, pattern(on_c, 7, 1), "c's data survived its kill");
                break;
            }
            Err(e) => assert!(Instant::now() < end, "c's page still unavailable: {e:?}"),
        }
    }
}

#[test]
fn strangers_at_the_link_port_and_a_wrong_secret_are_refused_and_disturb_nothing() {
    let _serial = serial();
    let Some((dir, etcd, mut peers)) = three("strangers_at_the_link_port", 25_000) else { return };
    create_spread(&peers, 0, "spread", "48M", "4M");
    // Something that is not a peer: an HTTP request, then a Hello-sized blob.
    let mut s = TcpStream::connect(("127.0.0.1", peers[1].link_port)).unwrap();
    s.write_all(&[b'G'; 64]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"QPLV"), "a refusal verdict, then the close: {answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("not a Quire peer link"), "{answer:?}");
    // A peer with another secret: it registers in etcd (etcd holds no secret), but no
    // link between it and the others carries I/O.
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not the group's secret at all\n").unwrap();
    let spec = PeerSpec { device: DeviceSpec::FileBuffered, ..PeerSpec::new("x", &etcd.endpoint(), &wrong) };
    let mut x = Peer::spawn(&spec, &dir.path().join("x"));
    x.wait_serving();
    wait_for(&x, "x refused by the others", Duration::from_secs(20), |x| {
        x.proc.log().contains("does not know the group's secret")
    });
    wait_for(&peers[1], "b refused x", Duration::from_secs(20), |b| {
        b.proc.log().contains("does not know the group's secret") && b.reactor_sum("link_refusals") >= 1
    });
    // The group serves on, forwarding among a, b and c.
    let run = perf(&[
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randrw",
        "-M",
        "50",
        "-t",
        "2",
        "--verify",
        "-r",
        &peers[1].trid("spread"),
    ]);
    assert!(run.ok && run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    for p in &mut peers {
        assert!(p.proc.is_running(), "{} still runs", p.name);
    }
    drop(x);
}
