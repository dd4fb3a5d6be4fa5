//! Groups of real `quire serve` peers on loopback for the group suites: each peer in
//! its own data directory with its own configuration file, on free ports, with a
//! real etcd ([`crate::etcd`]); helpers that read the peers' state through the
//! `quire` CLI (`--json`) and wait for conditions with deadlines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcd::{etcd_available, Etcd};
use crate::{deadline, free_port, require, tail, QuireProcess};

/// What a peer's configuration says.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// `peer.name`.
    pub name: String,
    /// etcd endpoint.
    pub etcd: String,
    /// The peer-link port.
    pub link_port: u16,
    /// `group.lease_ttl_s`.
    pub lease_ttl_s: u32,
    /// `group.secret_file`.
    pub secret: PathBuf,
    /// `group.weight`.
    pub weight: u64,
    /// `group.hold_ms`.
    pub hold_ms: u32,
    /// The device: a file (`"auto"`/`"off"` O_DIRECT) of this size, or `"ram"`.
    pub device: DeviceSpec,
    /// Size of the configured volume `demo`.
    pub demo_size: &'static str,
    /// Pool buffers.
    pub buffers: u32,
    /// `target.advertise` (what the discovery logs tell hosts), e.g. the address a
    /// guest reaches the host at.
    pub advertise: Option<String>,
    /// `replication.replace_after_s`.
    pub replace_after_s: u32,
    /// `replication.rebuild_mb_s`.
    pub rebuild_mb_s: u32,
    /// `replication.migration_mb_s` (`None`: the same as `rebuild_mb_s`).
    pub migration_mb_s: Option<u32>,
    /// `rebalance.load_min_iops`: the least a peer serves before a move for load.
    pub load_min_iops: u32,
    /// `rebalance.enabled`: off unless a test asks for it (the suites that count
    /// where pages are placed, or move them by hand, would race it).
    pub rebalance: bool,
    /// `rebalance.steer_hosts`: off unless a test asks for it (the suites that check
    /// every path's ANA state would race it).
    pub steer_hosts: bool,
    /// `rebalance.steer_interval_s`.
    pub steer_interval_s: u32,
    /// The IP address its NVMe/TCP listener (`target.listen`) and its peer-link
    /// listener (`group.listen`) bind; `None`: 127.0.0.1.
    pub listen_ip: Option<String>,
    /// The network namespace it runs in (`ip netns exec`); `None`: the test's own.
    pub netns: Option<String>,
}

/// The device a test peer serves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `quire.img` in the data directory, O_DIRECT where the file system allows it.
    File,
    /// `quire.img` without O_DIRECT: no alignment needs (no copies for in-capsule
    /// writes), and data survives SIGKILL in the page cache.
    FileBuffered,
    /// A RAM device (lost at exit).
    Ram,
}

impl PeerSpec {
    /// A peer named `name` of the group at `etcd` with `secret`; 5 s leases, weight 1.
    pub fn new(name: &str, etcd: &str, secret: &Path) -> PeerSpec {
        PeerSpec {
            name: name.to_string(),
            etcd: etcd.to_string(),
            link_port: free_port(),
            lease_ttl_s: 5,
            secret: secret.to_path_buf(),
            weight: 1,
            hold_ms: 25_000,
            device: DeviceSpec::File,
            demo_size: "64M",
            buffers: 256,
            advertise: None,
            replace_after_s: 600,
            rebuild_mb_s: 200,
            migration_mb_s: None,
            load_min_iops: 200,
            rebalance: false,
            steer_hosts: false,
            steer_interval_s: 10,
            listen_ip: None,
            netns: None,
        }
    }

    /// The address its listeners bind.
    pub fn ip(&self) -> &str {
        self.listen_ip.as_deref().unwrap_or("127.0.0.1")
    }

    fn config(&self, dir: &Path, port: u16) -> String {
        let device = match self.device {
            DeviceSpec::File => "kind = \"file\"\npath = \"quire.img\"\nsize = \"256M\"".to_string(),
            DeviceSpec::FileBuffered => {
                "kind = \"file\"\npath = \"quire.img\"\nsize = \"256M\"\ndirect_io = \"off\"".to_string()
            }
            DeviceSpec::Ram => "kind = \"ram\"\nsize = \"256M\"".to_string(),
        };
        format!(
            r#"[peer]
name = "{name}"
data_dir = "{dir}"
[target]
listen = "{ip}"
port = {port}
discovery_port = 0
advertise = "{advertise}"
[buffers]
count = {buffers}
hugepages = false
[group]
etcd = ["{etcd}"]
listen = "{ip}:{link}"
secret_file = "{secret}"
lease_ttl_s = {ttl}
connect_timeout_ms = 3000
weight = {weight}
hold_ms = {hold}
[replication]
replace_after_s = {replace}
rebuild_mb_s = {rebuild}
migration_mb_s = {migration}
[rebalance]
enabled = {rebalance}
load_min_iops = {load_min}
steer_hosts = {steer}
steer_interval_s = {steer_s}
[[device]]
{device}
[[volume]]
name = "demo"
size = "{demo}"
"#,
            name = self.name,
            ip = self.ip(),
            dir = dir.display(),
            etcd = self.etcd,
            link = self.link_port,
            secret = self.secret.display(),
            ttl = self.lease_ttl_s,
            weight = self.weight,
            hold = self.hold_ms,
            replace = self.replace_after_s,
            rebuild = self.rebuild_mb_s,
            migration = self.migration_mb_s.unwrap_or(self.rebuild_mb_s),
            load_min = self.load_min_iops,
            rebalance = self.rebalance,
            steer = self.steer_hosts,
            steer_s = self.steer_interval_s,
            buffers = self.buffers,
            demo = self.demo_size,
            advertise = self.advertise.as_deref().unwrap_or(""),
        )
    }
}

/// One peer: its directory, configuration and process.
pub struct Peer {
    /// `peer.name`.
    pub name: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// The process.
    pub proc: QuireProcess,
    /// Its NVMe/TCP port.
    pub port: u16,
    /// Its peer-link port.
    pub link_port: u16,
    /// The address its listeners bind (NVMe/TCP and peer link).
    pub ip: std::net::IpAddr,
    /// The network namespace it runs in, if not the test's own.
    pub netns: Option<String>,
}

impl Peer {
    /// Writes the configuration into `dir` and starts the peer (it may fail to start:
    /// see [`Peer::wait_serving`]).
    pub fn spawn(spec: &PeerSpec, dir: &Path) -> Peer {
        std::fs::create_dir_all(dir).expect("peer dir");
        let port = free_port();
        let config_path = dir.join("quire.toml");
        std::fs::write(&config_path, spec.config(dir, port)).expect("write config");
        let proc = serve(&config_path, spec.netns.as_deref()).expect("start quire");
        Peer {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            config: config_path,
            proc,
            port,
            link_port: spec.link_port,
            ip: spec.ip().parse().expect("listen_ip is an IP address"),
            netns: spec.netns.clone(),
        }
    }

    /// The address of its NVMe/TCP listener.
    pub fn target_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }

    /// Its management socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("quire.sock")
    }

    /// Waits until the peer serves I/O and answers management calls.
    pub fn wait_serving(&mut self) {
        self.proc.wait_for_addr(self.target_addr(), deadline(Duration::from_secs(60))).unwrap();
        self.proc.wait_for_log("serving on", deadline(Duration::from_secs(30))).unwrap();
    }

    /// Starts the same peer again (same directory, configuration and port).
    pub fn restart(&mut self) {
        self.proc = serve(&self.config, self.netns.as_deref()).expect("restart quire");
        self.wait_serving();
    }

    /// `quire group status --json` on this peer.
    pub fn status(&self) -> Value {
        cli_json(&self.socket(), &["group", "status"])
    }

    /// `quire stats reactors --json`, summed over the reactors: `field`.
    pub fn reactor_sum(&self, field: &str) -> u64 {
        let v = cli_json(&self.socket(), &["stats", "reactors"]);
        v.as_array().map(|rs| rs.iter().filter_map(|r| r[field].as_u64()).sum()).unwrap_or(0)
    }

    /// Waits until the peer exits and returns its exit code and log.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let end = deadline(within);
        loop {
            if let Some(status) = self.proc.exit_status() {
                return (status.code(), self.proc.log());
            }
            assert!(Instant::now() < end, "peer {} still runs; log:\n{}", self.name, tail(&self.proc.log(), 30));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The transport ID of volume `volume` on this peer, for `quire-perf -r`.
    pub fn trid(&self, volume: &str) -> String {
        format!("trtype:TCP adrfam:IPv4 traddr:{} trsvcid:{} subnqn:nqn.2026-11.io.quire:{volume}", self.ip, self.port)
    }
}

/// `quire serve --config CONFIG`, in the network namespace `netns` if given.
fn serve(config: &Path, netns: Option<&str>) -> std::io::Result<QuireProcess> {
    let args = ["serve".to_string(), "--config".into(), config.display().to_string()];
    match netns {
        Some(ns) => QuireProcess::spawn_in_netns(ns, &args),
        None => QuireProcess::spawn(&args),
    }
}

/// `quire --json ARGS` against `socket`; Null when the command fails.
pub fn cli_json(socket: &Path, args: &[&str]) -> Value {
    let bin = QuireProcess::bin_path().expect("quire binary");
    let out = Command::new(bin).arg("--socket").arg(socket).arg("--json").args(args).output().expect("run quire");
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `quire --json ARGS` on `socket` expected to fail: its error message, or `None`
/// when it succeeded.
pub fn cli_error(socket: &Path, args: &[&str]) -> Option<String> {
    let bin = QuireProcess::bin_path().expect("quire binary");
    let out = Command::new(bin).arg("--socket").arg(socket).arg("--json").args(args).output().expect("run quire");
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `quire rebalance status` on `peer`.
pub fn rebalance_status(peer: &Peer) -> Value {
    cli_json(&peer.socket(), &["rebalance", "status"])
}

/// `name`'s share in a rebalance status.
pub fn share_of(status: &Value, name: &str) -> Value {
    status["peers"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == name)).cloned().unwrap_or(Value::Null)
}

/// The coordinator's last word in a rebalance status is that the spread is as even as
/// it goes (every peer that takes part within 10% of its ideal, or as close as whole
/// pages allow), no move is under way, and no peer is off its ideal by more than 10%
/// and a 4 MiB page.
pub fn rebalance_settled(status: &Value) -> bool {
    let close = status["peers"].as_array().is_some_and(|ps| {
        ps.iter().all(|e| {
            let (held, ideal) = (e["held_bytes"].as_u64().unwrap_or(0), e["ideal_bytes"].as_u64().unwrap_or(0));
            e["eligible"] == false || held.abs_diff(ideal) <= ideal / 10 + (4 << 20)
        })
    });
    let word = status["state"].as_str().unwrap_or("");
    close && status["moves"] == 0 && (word.contains("within") || word.contains("whole pages"))
}

/// The names of the peers a status lists in `state`.
pub fn peers_in(status: &Value, state: &str) -> Vec<String> {
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
pub fn wait_all(peers: &[&Peer], what: &str, within: Duration, ok: impl Fn(&Value) -> bool) {
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

/// A condition for [`wait_all`]: exactly `names` live, etcd connected.
pub fn live_are<'a>(names: &'a [&'a str]) -> impl Fn(&Value) -> bool + 'a {
    move |s: &Value| peers_in(s, "live") == names && s["etcd_state"] == "connected"
}

/// Every status names the same coordinator, one of `among`; returns it.
pub fn one_coordinator(peers: &[&Peer], among: &[&str]) -> String {
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
pub fn owners_of(peer: &Peer, volume: &str) -> Vec<(String, u64)> {
    let pages = cli_json(&peer.socket(), &["volume", "pages", volume]);
    pages["owners"]
        .as_array()
        .map(|os| os.iter().map(|o| (o["owner"].as_str().unwrap().to_string(), o["pages"].as_u64().unwrap())).collect())
        .unwrap_or_default()
}

/// Waits until `ok(peer)` holds.
pub fn wait_for(peer: &Peer, what: &str, within: Duration, ok: impl Fn(&Peer) -> bool) {
    let end = deadline(within);
    while !ok(peer) {
        assert!(Instant::now() < end, "peer {} did not see {what}; log:\n{}", peer.name, tail(&peer.proc.log(), 30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `quire volume list`'s entry for `volume` on `peer`, or Null.
pub fn volume_on(peer: &Peer, volume: &str) -> Value {
    let list = cli_json(&peer.socket(), &["volume", "list"]);
    list.as_array().and_then(|vs| vs.iter().find(|v| v["name"] == volume).cloned()).unwrap_or(Value::Null)
}

/// Writes a group secret file into `dir`.
pub fn secret_in(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, "a shared secret of the test group\n").unwrap();
    path
}

/// A temporary directory, a running etcd and a secret file; `None` (the test is
/// skipped) only in a partial run without etcd (otherwise a missing etcd fails).
pub fn setup(test: &str) -> Option<(tempfile::TempDir, Etcd, PathBuf)> {
    if !require(test, etcd_available()) {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("quire-group-").tempdir().unwrap();
    let etcd = Etcd::start().expect("start etcd");
    let secret = secret_in(dir.path());
    Some((dir, etcd, secret))
}

/// Starts peers of `specs` in subdirectories of `dir` named after them, waits until
/// each serves and all see each other live.
pub fn start_group(dir: &Path, specs: &[PeerSpec]) -> Vec<Peer> {
    let mut peers: Vec<Peer> = specs.iter().map(|s| Peer::spawn(s, &dir.join(&s.name))).collect();
    for p in &mut peers {
        p.wait_serving();
    }
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "every peer live", Duration::from_secs(30), live_are(&sorted));
    peers
}

/// The `quire-perf` binary beside `quire`, if built.
pub fn perf_bin() -> Result<PathBuf, String> {
    let perf = QuireProcess::bin_path()?.with_file_name("quire-perf");
    if perf.is_file() {
        Ok(perf)
    } else {
        Err(format!("no {}: build it (cargo build --release -p quire-perf)", perf.display()))
    }
}

/// What a `quire-perf` run reported.
pub struct PerfRun {
    /// Exit status success.
    pub ok: bool,
    /// stdout and stderr.
    pub text: String,
    /// `--json` output (Null without it).
    pub json: Value,
}

/// Runs `quire-perf ARGS --json FILE` and reads its figures.
pub fn perf(args: &[&str]) -> PerfRun {
    let bin = perf_bin().expect("quire-perf");
    let json_path = tempfile::Builder::new().suffix(".json").tempfile().unwrap().into_temp_path();
    let out = Command::new(bin).args(args).arg("--json").arg(&*json_path).output().expect("run quire-perf");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read(&*json_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
    PerfRun { ok: out.status.success(), text, json }
}

/// A small synchronous NVMe/TCP client for checks across peers: one controller, one
/// I/O queue, one command at a time (built on `quire-perf`'s initiator).
pub struct Client {
    ctrlr: quire_perf::initiator::Controller,
    io: quire_perf::initiator::Connection,
    timeout: Duration,
}

/// Logical block size of the test volumes.
pub const BLOCK: usize = 4096;

impl Client {
    /// Connects to `volume` on `peer`; `timeout` bounds each command.
    pub fn connect(peer: &Peer, volume: &str, timeout: Duration) -> Client {
        Client::connect_addr(peer.target_addr(), volume, timeout)
    }

    /// Connects to `volume` at the NVMe/TCP address `addr`.
    pub fn connect_addr(addr: std::net::SocketAddr, volume: &str, timeout: Duration) -> Client {
        use quire_perf::initiator::{Controller, ControllerOptions};
        let peer = addr;
        let mut opts = ControllerOptions::new(addr, Some(format!("nqn.2026-11.io.quire:{volume}")));
        opts.timeout = timeout;
        let mut ctrlr = Controller::connect(&opts).unwrap_or_else(|e| panic!("connect to {peer}: {e}"));
        ctrlr.set_num_queues(1).expect("Set Features (queues)");
        let io = ctrlr.connect_io_queue(1, 8, 1 << 20).expect("I/O queue");
        Client { ctrlr, io, timeout }
    }

    /// The controller ID this client got.
    pub fn cntlid(&self) -> u16 {
        self.ctrlr.cntlid()
    }

    /// The controller (admin commands).
    pub fn ctrlr(&mut self) -> &mut quire_perf::initiator::Controller {
        &mut self.ctrlr
    }

    fn run(
        &mut self,
        cmd: quire_wire::nvme::Command,
        dir: quire_perf::initiator::DataDir,
        data: &[u8],
        read_len: u32,
    ) -> Result<Vec<u8>, quire_wire::nvme::Status> {
        match self.io.execute(cmd, dir, data, read_len, "I/O", self.timeout) {
            Ok((_, bytes)) => Ok(bytes),
            Err(quire_perf::initiator::Error::Status { status, .. }) => Err(status),
            Err(e) => panic!("I/O failed otherwise than with a status: {e}"),
        }
    }

    /// Writes `data` (whole blocks) at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), quire_wire::nvme::Status> {
        assert!(data.len().is_multiple_of(BLOCK) && !data.is_empty());
        let nlb = u32::try_from(data.len() / BLOCK).unwrap();
        let cmd = quire_perf::initiator::write(1, lba, nlb);
        self.run(cmd, quire_perf::initiator::DataDir::ToController, data, 0).map(|_| ())
    }

    /// Reads `nlb` blocks at `lba`.
    pub fn read(&mut self, lba: u64, nlb: u32) -> Result<Vec<u8>, quire_wire::nvme::Status> {
        let cmd = quire_perf::initiator::read(1, lba, nlb);
        let len = nlb * u32::try_from(BLOCK).unwrap();
        self.run(cmd, quire_perf::initiator::DataDir::FromController, &[], len)
    }

    /// Compares the blocks at `lba` with `data` (whole blocks): `Ok` when they match,
    /// the status (Compare Failure, or another error) when not.
    pub fn compare(&mut self, lba: u64, data: &[u8]) -> Result<(), quire_wire::nvme::Status> {
        assert!(data.len().is_multiple_of(BLOCK) && !data.is_empty());
        let nlb = u32::try_from(data.len() / BLOCK).unwrap();
        let cmd = quire_perf::initiator::compare(1, lba, nlb);
        self.run(cmd, quire_perf::initiator::DataDir::ToController, data, 0).map(|_| ())
    }

    /// Copies `ranges` (first block, blocks), in order, to `dest` with a Copy.
    pub fn copy(&mut self, dest: u64, ranges: &[(u64, u32)]) -> Result<(), quire_wire::nvme::Status> {
        use quire_wire::nvme::copy::{write_ranges, CopyCommand, CopyRange};
        let list: Vec<CopyRange> = ranges.iter().map(|&(slba, nlb)| CopyRange { slba, nlb }).collect();
        let cmd = CopyCommand { sdlba: dest, ranges: list.len(), format: 0, fua: false }.to_command(1);
        self.run(cmd, quire_perf::initiator::DataDir::ToController, &write_ranges(&list), 0).map(|_| ())
    }

    /// Flush.
    pub fn flush(&mut self) -> Result<(), quire_wire::nvme::Status> {
        self.run(quire_perf::initiator::flush(1), quire_perf::initiator::DataDir::None, &[], 0).map(|_| ())
    }

    /// Write Zeroes of `nlb` blocks at `lba` (with Deallocate when `deac`).
    pub fn write_zeroes(&mut self, lba: u64, nlb: u32, deac: bool) -> Result<(), quire_wire::nvme::Status> {
        let mut cmd = quire_perf::initiator::write_zeroes(1, lba, nlb);
        if deac {
            cmd.cdw12 |= 1 << 25;
        }
        self.run(cmd, quire_perf::initiator::DataDir::None, &[], 0).map(|_| ())
    }

    /// Dataset Management / Deallocate of `ranges` (first block, blocks).
    pub fn deallocate(&mut self, ranges: &[(u64, u32)]) -> Result<(), quire_wire::nvme::Status> {
        let r: Vec<quire_perf::initiator::DsmRange> =
            ranges.iter().map(|&(slba, nlb)| quire_perf::initiator::DsmRange { slba, nlb }).collect();
        let (cmd, data) = quire_perf::initiator::dsm_deallocate(1, &r);
        self.run(cmd, quire_perf::initiator::DataDir::ToController, &data, 0).map(|_| ())
    }
}

/// A block's worth of bytes that says which block and which round wrote it.
pub fn pattern(lba: u64, round: u64, blocks: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BLOCK];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let block = lba + (i * 8 / BLOCK) as u64;
        let word = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round.rotate_left(17) ^ (i as u64);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    v
}

/// Three peers a, b, c on buffered file devices (no O_DIRECT alignment to meet, so a
/// local in-capsule write copies nothing either; data survives SIGKILL) with a 3 s
/// lease and the given hold time, and etcd; None (a skip) only in a partial run whose
/// `quire-perf` or etcd is missing.
pub fn three_peers(test: &str, hold_ms: u32) -> Option<(tempfile::TempDir, crate::etcd::Etcd, Vec<Peer>)> {
    three_peers_with(test, hold_ms, |_| {})
}

/// [`three_peers`], each spec changed by `tweak` first.
pub fn three_peers_with(
    test: &str,
    hold_ms: u32,
    tweak: impl Fn(&mut PeerSpec),
) -> Option<(tempfile::TempDir, crate::etcd::Etcd, Vec<Peer>)> {
    if !crate::require(test, perf_bin().map(|_| ())) {
        return None;
    }
    let (dir, etcd, secret) = setup(test)?;
    let ep = etcd.endpoint();
    let specs: Vec<PeerSpec> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let mut s = PeerSpec {
                device: DeviceSpec::FileBuffered,
                lease_ttl_s: 3,
                hold_ms,
                ..PeerSpec::new(n, &ep, &secret)
            };
            tweak(&mut s);
            s
        })
        .collect();
    let peers = start_group(dir.path(), &specs);
    Some((dir, etcd, peers))
}

// ----- replicated volumes (the replication suites) ------------------------------------

/// `quire volume pages VOLUME` on `peer` (Null when it has no such volume).
pub fn pages(peer: &Peer, volume: &str) -> Value {
    cli_json(&peer.socket(), &["volume", "pages", volume])
}

/// Every set the volume uses, as (leader, [(member, state)]).
pub fn sets(peer: &Peer, volume: &str) -> Vec<(String, Vec<(String, String)>)> {
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

/// Every page of `volume` in order, as (leader, members) of its set.
pub fn page_members(peer: &Peer, volume: &str) -> Vec<(String, Vec<String>)> {
    let p = pages(peer, volume);
    let mut out = Vec::new();
    for r in p["runs"].as_array().unwrap_or_else(|| panic!("no runs: {p}")) {
        let set = &r["set"];
        let s = p["sets"].as_array().unwrap().iter().find(|s| s["set"] == *set).unwrap_or_else(|| panic!("{p}"));
        let members: Vec<String> =
            s["members"].as_array().unwrap().iter().map(|m| m["peer"].as_str().unwrap().to_string()).collect();
        let first = usize::try_from(r["first"].as_u64().unwrap()).unwrap();
        assert_eq!(first, out.len(), "runs in page order: {p}");
        for _ in 0..r["count"].as_u64().unwrap() {
            out.push((s["leader"].as_str().unwrap().to_string(), members.clone()));
        }
    }
    out
}

/// Creates `name` (48 MiB of 4 MiB pages) with two copies through `peers[via]`; waits
/// until every peer routes it with every set of two in-sync members on distinct
/// peers, and each of three peers leading some.
pub fn create_replicated(peers: &[Peer], via: usize, name: &str) {
    create_replicated_sized(peers, via, name, "48M");
}

/// [`create_replicated`] of `size` (4 MiB pages).
pub fn create_replicated_sized(peers: &[Peer], via: usize, name: &str, size: &str) {
    let v = cli_json(
        &peers[via].socket(),
        &["volume", "create", name, "--size", size, "--page-size", "4M", "--replicas", "2"],
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

/// A client connected to `volume` on `peer` from inside `ns` (the connection belongs
/// to the namespace; the client may then be used from any thread).
pub fn client_in(ns: &crate::netns::Netns, peer: &Peer, volume: &str, timeout: Duration) -> Client {
    let addr = peer.target_addr();
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_this_thread().expect("enter the namespace");
            Client::connect_addr(addr, volume, timeout)
        })
        .join()
        .expect("connect from inside the namespace")
    })
}

/// Every set of every one of `volumes`: `gone` out, not leading, another member in sync.
pub fn out_everywhere(p: &Peer, volumes: &[&str], gone: &str) -> bool {
    let s: Vec<_> = volumes.iter().flat_map(|v| sets(p, v)).collect();
    !s.is_empty()
        && s.iter().all(|(l, ms)| {
            l != gone && ms.iter().all(|(m, st)| (m == gone) == (st == "out")) && ms.iter().any(|(_, st)| st == "sync")
        })
}

/// Every member of every set of every one of `volumes` in sync, the volumes healthy.
pub fn all_in_sync(p: &Peer, volumes: &[&str]) -> bool {
    volumes.iter().all(|v| {
        let s = sets(p, v);
        !s.is_empty()
            && s.iter().all(|(_, ms)| ms.len() == 2 && ms.iter().all(|(_, st)| st == "sync"))
            && volume_on(p, v)["health"] == "healthy"
    })
}

/// Write commands hosts sent for `volume`, summed over `peers`.
pub fn host_writes(peers: &[Peer], volume: &str) -> u64 {
    peers
        .iter()
        .map(|p| {
            let vols = cli_json(&p.socket(), &["stats", "volumes"]);
            vols.as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == volume))
                .and_then(|v| v["write_ops"].as_u64())
                .unwrap_or(0)
        })
        .sum()
}

/// The offset of the first 4 KiB block of `file` equal to `block`.
pub fn find_block(file: &std::path::Path, block: &[u8]) -> Option<u64> {
    use std::io::Read;
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file).expect("device file"));
    let mut buf = vec![0u8; block.len()];
    let mut off = 0u64;
    while f.read_exact(&mut buf).is_ok() {
        if buf == block {
            return Some(off);
        }
        off += block.len() as u64;
    }
    None
}

/// Cuts `ns` off (peer c, `peers[2]`, inside it) and returns once a and b have taken
/// c out of every set of `volumes` and see only each other live: how long after the
/// cut c was out everywhere.
pub fn cut_c_off(ns: &crate::netns::Netns, peers: &[Peer], volumes: &[&str]) -> Duration {
    ns.cut();
    let cut = std::time::Instant::now();
    // c's lease expires: the coordinator takes c out of every set and names the other
    // member leader of the sets c led.
    for p in &peers[..2] {
        wait_for(p, "c out of every set, no set led by c", Duration::from_secs(20), |p| {
            out_everywhere(p, volumes, "c")
        });
    }
    let switched = cut.elapsed();
    wait_all(&[&peers[0], &peers[1]], "a and b live, c gone", Duration::from_secs(10), live_are(&["a", "b"]));
    switched
}

/// c (`peers[2]`, cut off inside `ns`, its lease gone) serves nothing replicated: a
/// write (data of round `round`) and a read of `lba` of `volume`, sent to it from
/// inside the namespace, are refused with a path error and counted as fenced.
pub fn c_refuses(ns: &crate::netns::Netns, c: &Peer, volume: &str, lba: u64, round: u64, logs: &dyn Fn() -> String) {
    let is_path_error = |s: &quire_wire::nvme::Status| s.sct == 3 && s.sc == 0;
    let fenced_before = c.reactor_sum("fenced");
    let mut inside = client_in(ns, c, volume, Duration::from_secs(15));
    match inside.write(lba, &pattern(lba, round, 2)) {
        Ok(()) => panic!("c acknowledged a write during the partition, after its eviction\n{}", logs()),
        Err(status) => assert!(is_path_error(&status), "c refused the write, but not with a path error: {status:?}"),
    }
    match inside.read(lba, 2) {
        Ok(_) => panic!("c served a read of a replicated page during the partition\n{}", logs()),
        Err(status) => assert!(is_path_error(&status), "c refused the read, but not with a path error: {status:?}"),
    }
    let fenced = c.reactor_sum("fenced");
    assert!(fenced >= fenced_before + 2, "c counted the refused commands as fenced: {fenced_before} -> {fenced}");
}

/// Overwrites 4 KiB at byte `at` of `img` (a peer's device file) with `byte`, behind
/// the peer's back, and syncs it.
pub fn corrupt_block(img: &Path, at: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    f.write_all_at(&[byte; 4096], at).unwrap();
    f.sync_all().unwrap();
}

/// `quire scrub start VOLUME` through `via`; waits until every peer of `peers` says
/// the scrub of `volume` is done, every page compared, `repaired` units repaired.
pub fn scrub_and_wait(peers: &[Peer], via: &Peer, volume: &str, repaired: u64, within: Duration) {
    assert_eq!(cli_json(&via.socket(), &["scrub", "start", volume]), Value::Bool(true));
    for q in peers {
        wait_for(q, &format!("the scrub of {volume} done, {repaired} unit(s) repaired"), within, |q| {
            let st = cli_json(&q.socket(), &["scrub", "status"]);
            let e = st.as_array().unwrap().iter().find(|e| e["volume"] == volume).cloned().unwrap_or(Value::Null);
            e["state"] == "done" && e["repaired"] == repaired && e["compared"].as_u64() == e["pages"].as_u64()
        });
    }
}

/// Peers a, b and c (buffered file devices, 3 s leases, each spec changed by `tweak`)
/// and etcd, c in network namespace `quire-TAG-…` of its own (see
/// [`crate::netns::Netns`]): a, b and etcd listen on the veth pair's host side, c on
/// its inside. Returned as (namespace, directory, etcd, peers): declared in that
/// order by the caller, the peers drop first and the namespace last.
pub fn split_group(
    tag: &str,
    tweak: impl Fn(&mut PeerSpec),
) -> (crate::netns::Netns, tempfile::TempDir, Etcd, Vec<Peer>) {
    let ns = crate::netns::Netns::create(tag).unwrap_or_else(|e| panic!("a namespace with a veth pair: {e}"));
    let dir = tempfile::Builder::new().prefix("quire-group-").tempdir().unwrap();
    let etcd = Etcd::start_on(ns.host_ip()).expect("start etcd");
    let secret = secret_in(dir.path());
    let ep = etcd.endpoint();
    let specs: Vec<PeerSpec> = ["a", "b", "c"]
        .iter()
        .map(|&n| {
            let inside = n == "c";
            let mut s = PeerSpec {
                device: DeviceSpec::FileBuffered,
                lease_ttl_s: 3,
                listen_ip: Some(if inside { ns.inner_ip() } else { ns.host_ip() }.to_string()),
                netns: inside.then(|| ns.name().to_string()),
                ..PeerSpec::new(n, &ep, &secret)
            };
            tweak(&mut s);
            s
        })
        .collect();
    let peers = start_group(dir.path(), &specs);
    (ns, dir, etcd, peers)
}

/// The last lines of every peer's log, and where etcd's log is (for a panic message).
pub fn group_logs(peers: &[Peer], etcd: &Etcd) -> String {
    let mut text: String = peers
        .iter()
        .map(|p| format!("--- {} ({}):\n{}\n", p.name, p.proc.log_path().display(), tail(&p.proc.log(), 25)))
        .collect();
    text.push_str(&format!("--- etcd: {}\n", etcd.log_path().display()));
    text
}

/// Heals `ns` (c back in reach) and waits until a, b and c are live and every copy of
/// `volumes` is in sync again: how long after the heal.
pub fn heal_and_resync(ns: &crate::netns::Netns, peers: &[Peer], volumes: &[&str]) -> Duration {
    ns.heal();
    let healed = std::time::Instant::now();
    let all: Vec<&Peer> = peers.iter().collect();
    wait_all(&all, "a, b and c live again", Duration::from_secs(30), live_are(&["a", "b", "c"]));
    for p in peers {
        wait_for(p, "every member of every set in sync again", Duration::from_secs(60), |p| all_in_sync(p, volumes));
    }
    healed.elapsed()
}

/// `quire-perf --verify` (4 KiB random reads and writes, queue depth 8) through `peer`
/// over `volume` for `seconds`, on a thread of its own.
pub fn verified_io(peer: &Peer, volume: &str, seconds: u32) -> std::thread::JoinHandle<PerfRun> {
    let trid = peer.trid(volume);
    let t = seconds.to_string();
    std::thread::spawn(move || {
        perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", &t, "--verify", "-r", &trid])
    })
}

/// A peer of the Linux-host suites: a file device, 3 s leases, and the address the
/// guest reaches this machine at in its discovery log entries.
pub fn guest_peer(name: &str, etcd: &str, secret: &Path) -> PeerSpec {
    PeerSpec {
        device: DeviceSpec::File,
        lease_ttl_s: 3,
        advertise: Some(crate::HOST_FROM_GUEST.to_string()),
        ..PeerSpec::new(name, etcd, secret)
    }
}

/// Waits until the guest's console has `pattern` (a `MARK` line), at most `secs`;
/// panics with `why` (the peers' log tails) otherwise. The line found.
pub fn guest_mark(guest: &mut crate::Guest, pattern: &str, secs: u64, why: &dyn Fn() -> String) -> String {
    guest
        .wait_for_log(pattern, deadline(Duration::from_secs(secs)))
        .unwrap_or_else(|e| panic!("waiting for {pattern:?} in the guest: {e}\n{}", why()))
}

/// Waits until hosts have sent `peers` 100 more writes for `volume` (at most 60 s).
pub fn writes_flow(peers: &[Peer], volume: &str) {
    let before = host_writes(peers, volume);
    let end = deadline(Duration::from_secs(60));
    while host_writes(peers, volume) < before + 100 {
        assert!(Instant::now() < end, "the host's writes to {volume} do not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first page of a set led by `leader`.
pub fn first_led_by(peer: &Peer, volume: &str, leader: &str) -> u64 {
    let p = pages(peer, volume);
    let runs = p["runs"].as_array().unwrap();
    runs.iter().find(|r| r["owner"] == leader).unwrap_or_else(|| panic!("no page led by {leader}: {p}"))["first"]
        .as_u64()
        .unwrap()
}

/// Blocks in a page of [`create_replicated`]'s volumes.
pub const BLOCKS_PER_PAGE: u64 = 1024;
/// Bytes in a page of [`create_replicated`]'s volumes.
pub const PAGE_BYTES: u64 = 4 << 20;

/// The whole volume (of [`create_replicated`]: 4 KiB blocks) as read through `peer`
/// (each page from the peer's own copy where it holds one in sync, else from the
/// page's leader).
pub fn volume_bytes(peer: &Peer, volume: &str) -> Vec<u8> {
    let p = pages(peer, volume);
    let bytes = p["pages"].as_u64().unwrap() * p["page_size"].as_u64().unwrap();
    let mut c = Client::connect(peer, volume, Duration::from_secs(15));
    let mut out = Vec::with_capacity(usize::try_from(bytes).unwrap());
    let step = 32u32;
    let blocks = bytes / BLOCK as u64;
    let mut lba = 0;
    while lba < blocks {
        out.extend(c.read(lba, step).unwrap_or_else(|e| panic!("read {lba} through {}: {e:?}", peer.name)));
        lba += u64::from(step);
    }
    out
}

/// Every peer reads the same volume (every copy agrees with its leader's).
pub fn same_everywhere(peers: &[Peer], volume: &str) {
    let first = volume_bytes(&peers[0], volume);
    for p in &peers[1..] {
        let other = volume_bytes(p, volume);
        if let Some(at) = first.iter().zip(&other).position(|(x, y)| x != y) {
            panic!(
                "{volume}: byte {at} (page {}) differs between {} and {}",
                at as u64 / PAGE_BYTES,
                peers[0].name,
                p.name
            );
        }
    }
}
