//! quire-perf against Quire's own NVMe/TCP target (`quire serve`), when the
//! workspace has built it (`target/{release,debug}/quire`): discovery, every
//! workload with `--verify`, digests, several queue pairs, and the target dying
//! in the middle of a run. Without the binary the tests say so and pass.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `quire` these tests drive: `$QUIRE_BIN` (scripts/test.sh sets it to the release
/// build it just made), else the newer of `target/{release,debug}/quire` (a stale
/// release build must not stand in for the code under test). No binary is a failure,
/// not a skip: `cargo test --workspace` builds it.
fn quire_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("QUIRE_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "QUIRE_BIN={} is not a file", bin.display());
        return bin;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("quire"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("no target/{release,debug}/quire: build it (`cargo build -p quire`) or set QUIRE_BIN")
}

/// The tests of this file run one at a time: each picks a free port by binding port 0
/// and letting it go, and two tests picking at once may be handed the same one (seen:
/// one test's quire-perf reached the other's target, which that test then killed).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A `quire serve` on a temporary data directory and a free port, killed on drop.
struct Quire {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Quire {
    fn start(bin: &PathBuf) -> Quire {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--discovery-port", "0", "--reactors", "1", "--poll", "hybrid"])
            .arg("--rpc-socket")
            .arg(dir.path().join("rpc.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("quire serve starts");
        let q = Quire { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "quire serve did not listen on {port}");
            std::thread::yield_now();
        }
        q
    }

    fn tid(&self, subnqn: bool) -> String {
        let nqn = if subnqn { " subnqn:nqn.2026-11.io.quire:demo" } else { "" };
        format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{}{nqn}", self.port)
    }
}

impl Drop for Quire {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quire-perf")).args(args).output().expect("quire-perf runs")
}

#[test]
fn every_workload_with_verify_against_quire() {
    let _one = one_at_a_time();
    let bin = quire_binary();
    let q = Quire::start(&bin);
    let cases: [(&str, &[&str]); 6] = [
        ("read", &[]),
        ("write", &["-H"]),
        ("randread", &["-I"]),
        ("randwrite", &["-o", "65536"]),
        ("rw", &["-M", "50", "-P", "2"]),
        ("randrw", &["-M", "70", "-H", "-I"]),
    ];
    for (i, (w, extra)) in cases.iter().enumerate() {
        // Half the runs discover the NQN, half name it.
        let tid = q.tid(i % 2 == 0);
        let mut args = vec!["-q", "8", "-w", w, "-t", "0", "-d", "1500", "--verify", "-L", "-r", &tid];
        args.extend_from_slice(extra);
        let o = perf(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{w}: {out}\n{err}");
        assert!(out.contains("nqn.2026-11.io.quire:demo"), "{out}");
        assert!(out.contains("Verify: 0 mismatched blocks"), "{w}: {out}");
        assert!(out.contains("Summary latency data for TCP"), "{out}");
    }
}

#[test]
fn wrong_nqn_and_a_target_that_dies_mid_run() {
    let _one = one_at_a_time();
    let bin = quire_binary();
    let mut q = Quire::start(&bin);
    let bad = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:nqn.2026-11.io.quire:nope", q.port);
    let o = perf(&["-w", "read", "-t", "1", "-r", &bad]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Connect rejected"), "{err}");

    // Quire announces MDTS 1 MiB: a larger -o is refused at connect, before any I/O.
    let o = perf(&["-w", "read", "-o", "2M", "-t", "1", "-r", &q.tid(true)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("exceeds the largest transfer") && err.contains("NVMe: MDTS"), "{err}");

    let tid = q.tid(true);
    let mut run = Command::new(env!("CARGO_BIN_EXE_quire-perf"))
        .args(["-q", "4", "-w", "randread", "-t", "30", "-r", &tid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    // The first progress line says I/O is flowing; then the target goes away.
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let progress = l.starts_with('[') && l.contains("IOPS:");
        seen.push(l);
        if progress {
            break;
        }
    }
    q.child.kill().unwrap();
    q.child.wait().unwrap();
    seen.extend(lines.map(|l| l.unwrap()));
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
    let out = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("Partial results"), "{out}");
    assert!(out.contains("Device Information") && out.contains("Total"), "{out}");
    assert!(err.contains("worker on core") || err.contains("admin queue"), "{err}");
}
