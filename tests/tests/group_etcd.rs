//! A group of real `quire serve` peers on loopback with a real etcd (Debian's
//! `etcd-server`): registration under leases, one coordinator, a peer that is
//! killed and one that leaves, clashes refused with their reason, etcd going away
//! without stopping I/O. Without etcd installed the tests fail; only a partial run
//! (`scripts/test.sh --partial`) skips them, and records the skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quire_tests::etcd::{etcd_available, Etcd};
use quire_tests::{deadline, free_port, require, serial, tail, QuireProcess};
use serde_json::Value;

/// One peer: its directory, configuration and process.
struct Peer {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    proc: QuireProcess,
    port: u16,
}

/// What a peer's configuration says.
struct PeerSpec<'a> {
    name: &'a str,
    etcd: &'a str,
    link_port: u16,
    lease_ttl_s: u32,
    secret: &'a Path,
    weight: u64,
}

fn config(spec: &PeerSpec<'_>, dir: &Path, port: u16) -> String {
    format!(
        r#"[peer]
name = "{name}"
data_dir = "{dir}"
[target]
port = {port}
discovery_port = 0
[buffers]
count = 256
hugepages = false
[group]
etcd = ["{etcd}"]
listen = "127.0.0.1:{link}"
secret_file = "{secret}"
lease_ttl_s = {ttl}
connect_timeout_ms = 3000
weight = {weight}
[[device]]
kind = "file"
path = "quire.img"
size = "256M"
[[volume]]
name = "demo"
size = "64M"
"#,
        name = spec.name,
        dir = dir.display(),
        etcd = spec.etcd,
        link = spec.link_port,
        secret = spec.secret.display(),
        ttl = spec.lease_ttl_s,
        weight = spec.weight,
    )
}

impl Peer {
    /// Writes the configuration into `dir` and starts the peer (it may fail to start:
    /// see [`Peer::wait_serving`]).
    fn spawn(spec: &PeerSpec<'_>, dir: &Path) -> Peer {
        std::fs::create_dir_all(dir).expect("peer dir");
        let port = free_port();
        let config_path = dir.join("quire.toml");
        std::fs::write(&config_path, config(spec, dir, port)).expect("write config");
        let args = ["serve".to_string(), "--config".into(), config_path.display().to_string()];
        let proc = QuireProcess::spawn(&args).expect("start quire");
        Peer { name: spec.name.to_string(), dir: dir.to_path_buf(), config: config_path, proc, port }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("quire.sock")
    }

    /// Waits until the peer serves I/O and answers management calls.
    fn wait_serving(&mut self) {
        self.proc.wait_for_port(self.port, deadline(Duration::from_secs(60))).unwrap();
        self.proc.wait_for_log("serving on", deadline(Duration::from_secs(30))).unwrap();
    }

    /// Starts the same peer again (same directory, configuration and port).
    fn restart(&mut self) {
        let args = ["serve".to_string(), "--config".into(), self.config.display().to_string()];
        self.proc = QuireProcess::spawn(&args).expect("restart quire");
        self.wait_serving();
    }

    /// `quire group status --json` on this peer.
    fn status(&self) -> Value {
        cli_json(&self.socket(), &["group", "status"])
    }

    /// Waits until the peer exits and returns its exit code and log.
    fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let end = deadline(within);
        loop {
            if let Some(status) = self.proc.exit_status() {
                return (status.code(), self.proc.log());
            }
            assert!(Instant::now() < end, "peer {} still runs; log:\n{}", self.name, tail(&self.proc.log(), 30));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn cli_json(socket: &Path, args: &[&str]) -> Value {
    let bin = QuireProcess::bin_path().expect("quire binary");
    let out = Command::new(bin).arg("--socket").arg(socket).arg("--json").args(args).output().expect("run quire");
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The names of the peers a status lists in `state`.
fn peers_in(status: &Value, state: &str) -> Vec<String> {
    let mut names: Vec<String> = status["peers"]
        .as_array()
        .map(|ps| {
            ps.iter().filter(|p| p["state"] == state).filter_map(|p| p["name"].as_str().map(str::to_string)).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `ok(status)` holds on every one of `peers`; the last statuses on
/// failure.
fn wait_all(peers: &[&Peer], what: &str, within: Duration, ok: impl Fn(&Value) -> bool) {
    let end = deadline(within);
    loop {
        let statuses: Vec<Value> = peers.iter().map(|p| p.status()).collect();
        if statuses.iter().all(&ok) {
            return;
        }
        if Instant::now() >= end {
            let shown: Vec<String> = peers.iter().zip(&statuses).map(|(p, s)| format!("{}: {s}", p.name)).collect();
            panic!("not every peer saw {what} by the deadline:\n{}", shown.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live_are<'a>(names: &'a [&'a str]) -> impl Fn(&Value) -> bool + 'a {
    move |s: &Value| peers_in(s, "live") == names && s["etcd_state"] == "connected"
}

/// Every status names the same coordinator, one of `among`; returns it.
fn one_coordinator(peers: &[&Peer], among: &[&str]) -> String {
    let coordinators: Vec<Value> = peers.iter().map(|p| p.status()["coordinator"].clone()).collect();
    let first = coordinators[0].as_str().unwrap_or_else(|| panic!("no coordinator: {coordinators:?}")).to_string();
    assert!(coordinators.iter().all(|c| c.as_str() == Some(first.as_str())), "{coordinators:?}");
    assert!(among.contains(&first.as_str()), "coordinator {first} not among {among:?}");
    let status = peers[0].status();
    let flagged: Vec<&Value> =
        status["peers"].as_array().unwrap().iter().filter(|p| p["coordinator"] == true).collect();
    assert_eq!(flagged.len(), 1, "exactly one peer is flagged coordinator: {status}");
    first
}

/// `quire volume pages NAME`'s pages per owner on `peer` (empty when it has no such
/// volume).
fn owners_of(peer: &Peer, volume: &str) -> Vec<(String, u64)> {
    let pages = cli_json(&peer.socket(), &["volume", "pages", volume]);
    pages["owners"]
        .as_array()
        .map(|os| os.iter().map(|o| (o["owner"].as_str().unwrap().to_string(), o["pages"].as_u64().unwrap())).collect())
        .unwrap_or_default()
}

/// Waits until `ok(peer)` holds.
fn wait_for(peer: &Peer, what: &str, within: Duration, ok: impl Fn(&Peer) -> bool) {
    let end = deadline(within);
    while !ok(peer) {
        assert!(Instant::now() < end, "peer {} did not see {what}; log:\n{}", peer.name, tail(&peer.proc.log(), 30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `quire volume list`'s entry for `volume` on `peer`, or Null.
fn volume_on(peer: &Peer, volume: &str) -> Value {
    let list = cli_json(&peer.socket(), &["volume", "list"]);
    list.as_array().and_then(|vs| vs.iter().find(|v| v["name"] == volume).cloned()).unwrap_or(Value::Null)
}

fn secret_in(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, "a shared secret of the test group\n").unwrap();
    path
}

fn setup(test: &str) -> Option<(tempfile::TempDir, Etcd, PathBuf)> {
    if !require(test, etcd_available()) {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("quire-group-").tempdir().unwrap();
    let etcd = Etcd::start().expect("start etcd");
    let secret = secret_in(dir.path());
    Some((dir, etcd, secret))
}

#[test]
fn three_peers_register_elect_one_coordinator_and_see_peers_die_leave_and_return() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("three_peers_register_elect_one_coordinator") else { return };
    let ep = etcd.endpoint();
    let spec = |name: &'static str, ttl| PeerSpec {
        name,
        etcd: &ep,
        link_port: free_port(),
        lease_ttl_s: ttl,
        secret: &secret,
        weight: 1,
    };
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
    let link = free_port();
    let mut a = Peer::spawn(
        &PeerSpec { name: "a", etcd: &ep, link_port: link, lease_ttl_s: 5, secret: &secret, weight: 1 },
        &dir.path().join("a"),
    );
    a.wait_serving();
    wait_all(&[&a], "a live", Duration::from_secs(20), live_are(&["a"]));

    let refused = |name: &str, link_port: u16, secret: &Path, etcd: &str, sub: &str| {
        let spec = PeerSpec { name, etcd, link_port, lease_ttl_s: 5, secret, weight: 1 };
        let mut p = Peer::spawn(&spec, &dir.path().join(sub));
        let (code, log) = p.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(1), "{name} in {sub}: {}", tail(&log, 20));
        log
    };
    let log = refused("a", free_port(), &secret, &ep, "a-again");
    assert!(log.contains("the group refuses this peer: peer name \"a\" is taken by a live peer"), "{}", tail(&log, 5));
    let log = refused("e", link, &secret, &ep, "same-link");
    assert!(
        log.contains(&format!("peer-link address 127.0.0.1:{link} is already used by peer \"a\"")),
        "{}",
        tail(&log, 5)
    );

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
    let perf = QuireProcess::bin_path().expect("quire binary").with_file_name("quire-perf");
    if !require(
        "etcd_going_away_freezes_the_group",
        perf.is_file().then_some(()).ok_or(format!("no {}", perf.display())),
    ) {
        return;
    }
    let ep = etcd.endpoint();
    let spec = |name: &'static str| PeerSpec {
        name,
        etcd: &ep,
        link_port: free_port(),
        lease_ttl_s: 5,
        secret: &secret,
        weight: 1,
    };
    // a alone makes the configured volume, so a owns all of its pages: the I/O below
    // stays on a (forwarding to other owners is not built yet).
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

    // I/O goes on meanwhile, verified.
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:nqn.2026-11.io.quire:demo", a.port);
    let out = Command::new(&perf)
        .args(["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "2", "--verify", "-r", &trid])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Verify: 0 mismatched blocks"), "{text}");

    etcd.restart().expect("restart etcd");
    wait_all(&[&a, &b], "a and b live with etcd back", Duration::from_secs(30), live_are(&["a", "b"]));
    one_coordinator(&[&a, &b], &["a", "b"]);
}

#[test]
fn volumes_belong_to_the_group_placed_by_weight_and_changed_from_any_peer() {
    let _serial = serial();
    let Some((dir, etcd, secret)) = setup("volumes_belong_to_the_group") else { return };
    let ep = etcd.endpoint();
    let spec = |name: &'static str, weight| PeerSpec {
        name,
        etcd: &ep,
        link_port: free_port(),
        lease_ttl_s: 5,
        secret: &secret,
        weight,
    };
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
    // No data for pages of other peers: I/O to them is refused (Namespace Not Ready,
    // retryable) until forwarding lands; each peer has space only for what it owns.
    for p in &all {
        assert_eq!(volume_on(p, "four")["allocated_pages"], 0, "thin: nothing written yet");
    }
    // Page 0 of "four" is d's (the heaviest peer is furthest below its share first).
    let pages = cli_json(&d.socket(), &["volume", "pages", "four"]);
    assert_eq!(pages["runs"][0]["owner"], "d", "{pages}");
    let perf = QuireProcess::bin_path().expect("quire binary").with_file_name("quire-perf");
    let write_page0 = |p: &Peer| {
        let trid =
            format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:nqn.2026-11.io.quire:four", p.port);
        let out = Command::new(&perf)
            .args(["-q", "1", "-o", "4096", "-w", "write", "-d", "1", "-t", "5", "-r", &trid])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = write_page0(&d);
    assert!(ok, "the owner serves its page: {text}");
    assert_eq!(volume_on(&d, "four")["allocated_pages"], 1);
    let (ok, text) = write_page0(&peers[0]);
    assert!(!ok && text.contains("failed"), "a peer that does not own the page refuses it: {text}");
    assert_eq!(volume_on(&peers[0], "four")["allocated_pages"], 0, "and writes nothing of it");
}
