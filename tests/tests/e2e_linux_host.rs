//! End-to-end: the real Linux NVMe/TCP host (nvme-cli, fio, ext4) in a QEMU guest
//! against the real `quire` binary serving its default file-backed volume.
//!
//! Each test starts its own `quire serve` on free ports with a fresh data directory,
//! so runs never collide with each other or with a `quire serve` someone left
//! running, and boots a guest that runs one of `tests/guest/scripts/`. The guest
//! reaches the host's 127.0.0.1 as 10.0.2.2. Where the guest cannot run the tests fail;
//! only a partial run (`scripts/test.sh --partial`) skips them, and records the skip.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quire_tests::{deadline, free_port, require_guest, run_guest_script, serial, Guest, GuestOptions, QuireProcess};

const NQN: &str = "nqn.2026-11.io.quire:demo";

/// A `quire serve` on its embedded default, moved to free ports and a temp dir.
struct Target {
    proc: QuireProcess,
    dir: tempfile::TempDir,
    port: u16,
    disc_port: u16,
}

impl Target {
    fn start() -> Target {
        let dir = tempfile::Builder::new().prefix("quire-e2e-").tempdir_in(target_tmp()).expect("temp dir");
        let (port, disc_port) = (free_port(), free_port());
        let mut t = Target { proc: spawn(dir.path(), port, disc_port), dir, port, disc_port };
        t.wait_ready();
        t
    }

    fn wait_ready(&mut self) {
        self.proc.wait_for_port(self.disc_port, deadline(Duration::from_secs(60))).expect("quire listens");
        self.proc.wait_for_port(self.port, deadline(Duration::from_secs(10))).expect("quire listens");
    }

    /// kill -9, then start again on the same data directory and ports.
    fn crash_and_restart(&mut self) {
        self.proc.kill9();
        self.proc = spawn(self.dir.path(), self.port, self.disc_port);
        self.wait_ready();
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PORT".into(), self.port.to_string()),
            ("DISC_PORT".into(), self.disc_port.to_string()),
            ("NQN".into(), NQN.into()),
        ]
    }

    /// `quire --json <args>` against this target.
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(self.proc.bin())
            .arg("--socket")
            .arg(self.dir.path().join("quire.sock"))
            .arg("--json")
            .args(args)
            .output()
            .expect("run quire CLI");
        assert!(out.status.success(), "quire {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("CLI prints JSON")
    }
}

/// Where temporary data directories go: on the target dir's disk (not tmpfs), so
/// O_DIRECT is exercised as a user would have it.
fn target_tmp() -> std::path::PathBuf {
    let d = quire_tests::target_dir().join("e2e-tmp");
    std::fs::create_dir_all(&d).expect("create e2e-tmp");
    d
}

fn spawn(dir: &Path, port: u16, disc_port: u16) -> QuireProcess {
    QuireProcess::serve(dir, port, disc_port).expect("start quire")
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn discover_connect_identify_list() {
    if !require_guest("discover_connect_identify_list") {
        return;
    }
    let _one = serial();
    let t = Target::start();
    let mut env = t.env();
    env.push(("EXPECT_MODEL".into(), "Quire".into()));
    env.push(("EXPECT_SIZE".into(), (1u64 << 30).to_string()));
    let r = run_guest_script("discover-connect.sh", &env_refs(&env), Duration::from_secs(240));
    r.assert_success("discover, connect, id-ctrl, id-ns, list");
    assert!(r.marks().iter().any(|m| m.starts_with("size=1073741824")), "marks: {:?}", r.marks());
}

#[test]
fn fio_crc32c_verify_at_three_block_sizes_and_two_depths() {
    if !require_guest("fio_crc32c_verify_at_three_block_sizes_and_two_depths") {
        return;
    }
    let _one = serial();
    let t = Target::start();
    let r = run_guest_script("fio-verify.sh", &env_refs(&t.env()), Duration::from_secs(600));
    r.assert_success("fio --verify=crc32c at 4k/128k/1m, iodepth 1 and 32");
    let runs = r.marks().iter().filter(|m| m.starts_with("fio bs=")).count();
    assert_eq!(runs, 6, "six fio runs expected; marks: {:?}", r.marks());
    // Something was really written: thin pages got allocated.
    let vols = t.cli(&["volume", "list"]);
    assert!(vols[0]["allocated_pages"].as_u64().unwrap() > 0, "{vols}");
}

#[test]
fn write_zeroes_deallocate_flush() {
    if !require_guest("write_zeroes_deallocate_flush") {
        return;
    }
    let _one = serial();
    let t = Target::start();
    let mut env = t.env();
    env.push(("COMPARE".into(), "1".into()));
    env.push(("COPY".into(), "1".into()));
    let r = run_guest_script("zeroes-dealloc-flush.sh", &env_refs(&env), Duration::from_secs(300));
    r.assert_success("write zeroes, deallocate, compare, copy, flush");
    assert!(r.marks().iter().any(|m| m.starts_with("compare bytes=65536 ok")), "compare ran: {:?}", r.marks());
    assert!(r.marks().contains(&"copy ok"), "copy ran: {:?}", r.marks());
    let stats = t.cli(&["stats", "volumes"]);
    assert!(stats[0]["other_ops"].as_u64().unwrap() >= 3, "flush/zeroes/dsm counted: {stats}");
}

#[test]
fn filesystem_survives_kill9_and_restart() {
    if !require_guest("filesystem_survives_kill9_and_restart") {
        return;
    }
    let _one = serial();
    let mut t = Target::start();
    let w = run_guest_script("fs-write.sh", &env_refs(&t.env()), Duration::from_secs(300));
    w.assert_success("mkfs, write files, disconnect");
    let manifest = w.value("MANIFEST_SHA256").expect("fs-write.sh prints MANIFEST_SHA256");
    // A crash at an arbitrary point after the host's writes were acknowledged.
    t.crash_and_restart();
    let mut env = t.env();
    env.push(("EXPECT_MANIFEST_SHA256".into(), manifest));
    let c = run_guest_script("fs-check.sh", &env_refs(&env), Duration::from_secs(300));
    c.assert_success("after kill -9 and restart: e2fsck clean, every file intact");
}

#[test]
fn silent_host_loses_its_controller() {
    if !require_guest("silent_host_loses_its_controller") {
        return;
    }
    let _one = serial();
    let t = Target::start();
    let mut env = t.env();
    env.push(("KATO".into(), "2".into()));
    env.push(("DOWN_SECS".into(), "10".into()));
    let opts = GuestOptions { timeout: Duration::from_secs(300), label: "keepalive".into(), ..Default::default() };
    let mut g = Guest::spawn_script("keepalive-loss.sh", &env_refs(&env), &opts).expect("boot guest");
    let line = g.wait_for_log("MARK kato=", deadline(Duration::from_secs(180))).expect("host connected");
    let cntlid: u64 = line.rsplit("cntlid=").next().and_then(|s| s.trim().parse().ok()).expect("cntlid in mark");
    let has =
        |t: &Target, id: u64| t.cli(&["controller", "list"]).as_array().unwrap().iter().any(|c| c["cntlid"] == id);
    assert!(has(&t, cntlid), "controller {cntlid} is listed while the host is connected");
    g.wait_for_log("MARK link-down", deadline(Duration::from_secs(60))).expect("link down");
    // The host is now silent: within KATO (plus the grace) the target must drop it.
    let until = deadline(Duration::from_secs(9));
    while has(&t, cntlid) {
        assert!(std::time::Instant::now() < until, "controller {cntlid} still there 9 s after the host fell silent");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.proc.log().contains("keep-alive timeout"), "the target logs why it dropped the controller");
    let r = g.wait();
    r.assert_success("host reconnects after the link comes back");
}
