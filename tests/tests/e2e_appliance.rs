//! End-to-end: the appliance image (`scripts/build-image.sh`) booted in QEMU as an
//! operator boots it.
//!
//! The disk image boots through UEFI (Debian's OVMF) on a machine with a vIOMMU and
//! an emulated NVMe SSD; its QUIRECFG partition names the SSD (`bind_vfio = true`);
//! user networking forwards the NVMe/TCP and metrics ports to this machine. Then:
//! 1. `quire-perf --verify` from this machine through the forwarded port; the metrics
//!    endpoint answers; the Linux host in a second guest connects with `nvme connect`
//!    and writes and verifies with `fio`; a known pattern is written;
//! 2. ACPI power-off (QEMU's `system_powerdown`): quire stops cleanly, the machine
//!    powers itself off;
//! 3. boot again: the pattern reads back (the page store on the SSD survived);
//! 4. the network-boot pair (kernel + initramfs) with a configuration error on the
//!    kernel command line (`quire.reactors.poll=fast`): the console shows quire's
//!    message naming the key, the init says it waits for a fix and tries again, and
//!    the machine neither reboots nor stops.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quire_tests::group::{pattern, perf, perf_bin, Client};
use quire_tests::{
    deadline, free_port, guest_dir, require, require_guest, serial, tail, target_dir, workspace_dir, Guest,
    GuestOptions,
};

const TEST: &str = "the_appliance_image_boots_serves_powers_off_and_keeps_its_data";

fn ovmf() -> Result<(PathBuf, PathBuf), String> {
    let dir = guest_dir().join("root/usr/share/OVMF");
    let (code, vars) = (dir.join("OVMF_CODE_4M.fd"), dir.join("OVMF_VARS_4M.fd"));
    if code.is_file() && vars.is_file() {
        Ok((code, vars))
    } else {
        Err(format!("no UEFI firmware in {}: run scripts/install-test-deps.sh (Debian's ovmf)", dir.display()))
    }
}

/// Builds the image (cheap when up to date) and returns its folder.
fn build_image() -> PathBuf {
    let out = target_dir().join("image");
    let st =
        Command::new(workspace_dir().join("scripts/build-image.sh")).arg(&out).status().expect("run build-image.sh");
    assert!(st.success(), "scripts/build-image.sh failed");
    out
}

/// One boot of the appliance under QEMU.
struct Appliance {
    child: Child,
    console: PathBuf,
    qmp: PathBuf,
}

/// How to boot.
enum Boot<'a> {
    /// The UEFI disk image.
    Disk { disk: &'a Path, vars: &'a Path },
    /// The network-boot pair with this command line.
    Kernel { dir: &'a Path, cmdline: &'a str },
}

impl Appliance {
    fn boot(how: Boot<'_>, nvme: &Path, work: &Path, io_port: u16, metrics_port: u16, n: u32) -> Appliance {
        let root = guest_dir().join("root");
        let (code, _) = ovmf().expect("OVMF");
        let console = work.join(format!("console-{n}.log"));
        let qmp = work.join(format!("qmp-{n}.sock"));
        let mut cmd = Command::new(root.join("usr/bin/qemu-system-x86_64"));
        for d in ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"] {
            cmd.arg("-L").arg(root.join(d));
        }
        cmd.args(["-nodefaults", "-no-user-config", "-M", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-m", "2048", "-smp", "2", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-device", "intel-iommu,intremap=on"])
            .arg("-drive")
            .arg(format!("file={},if=none,id=nvm0,format=raw,cache=unsafe", nvme.display()))
            .args(["-device", "nvme,serial=appliance0,drive=nvm0,addr=0x10"])
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{io_port}-:4420,hostfwd=tcp:127.0.0.1:{metrics_port}-:9442"))
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        match how {
            Boot::Disk { disk, vars } => {
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,readonly=on,file={}", code.display()))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
                    .arg("-drive")
                    .arg(format!("file={},if=none,id=boot,format=raw", disk.display()))
                    .args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
            }
            Boot::Kernel { dir, cmdline } => {
                cmd.arg("-kernel")
                    .arg(dir.join("vmlinuz"))
                    .arg("-initrd")
                    .arg(dir.join("initramfs.img"))
                    .arg("-append")
                    .arg(cmdline);
            }
        }
        let out = std::fs::File::create(work.join(format!("qemu-{n}.out"))).expect("qemu output");
        let child =
            cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("dup")).stderr(out).spawn().expect("start qemu");
        Appliance { child, console, qmp }
    }

    fn console(&self) -> String {
        std::fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Waits until the console shows `pattern` `times` times.
    fn wait_console(&mut self, pattern: &str, times: usize, within: Duration) {
        let end = deadline(within);
        loop {
            let c = self.console();
            if c.matches(pattern).count() >= times {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{TEST}: QEMU exited ({st}) before {pattern:?}; console:\n{}", tail(&c, 40));
            }
            assert!(
                Instant::now() < end,
                "{TEST}: no {pattern:?} ({times}x) on the console; console:\n{}",
                tail(&c, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ACPI power button (QEMU's `system_powerdown`), then waits for QEMU to exit.
    fn power_off(&mut self, within: Duration) {
        let s = UnixStream::connect(&self.qmp).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("dup"));
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP greeting");
        let mut w = s;
        for c in [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"system_powerdown"}"#] {
            writeln!(w, "{c}").expect("QMP command");
            // Events (POWERDOWN) may come before the command's answer.
            loop {
                line.clear();
                r.read_line(&mut line).expect("QMP answer");
                assert!(!line.contains("\"error\""), "{TEST}: QMP {c}: {line}");
                if line.contains("\"return\"") {
                    break;
                }
            }
        }
        let end = deadline(within);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                Instant::now() < end,
                "{TEST}: still running {within:?} after power-off; console:\n{}",
                tail(&self.console(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = r#"# The test's appliance: the emulated NVMe SSD through VFIO.
device = [{ kind = "nvme", pci_address = "0000:00:10.0", bind_vfio = true }]
[peer]
name = "appliance-test"
[target]
listen = "0.0.0.0"
port = 4420
discovery_port = 8009
[buffers]
count = 256
hugepages = true
[metrics]
listen = "0.0.0.0:9442"
[[volume]]
name = "demo"
size = "64M"
"#;

#[test]
fn the_appliance_image_boots_serves_powers_off_and_keeps_its_data() {
    if !require_guest(TEST) || !require(TEST, ovmf().map(|_| ())) || !require(TEST, perf_bin().map(|_| ())) {
        return;
    }
    let _serial = serial();
    let image = build_image();
    let work = tempfile::Builder::new().prefix("quire-appliance-").tempdir_in(target_dir()).expect("work dir");
    let w = work.path();
    // The operator's copy of the image, its configuration written to QUIRECFG (at
    // 97 MiB, see build-image.sh) with mtools, as from any machine.
    let disk = w.join("disk.img");
    std::fs::copy(image.join("quire-appliance.img"), &disk).expect("copy the image");
    std::fs::write(w.join("quire.toml"), CONFIG).expect("config");
    let st = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@97M", disk.display()))
        .arg(w.join("quire.toml"))
        .arg("::quire.toml")
        .status()
        .expect("mcopy");
    assert!(st.success(), "mcopy into QUIRECFG");
    let vars = w.join("vars.fd");
    std::fs::copy(ovmf().expect("OVMF").1, &vars).expect("UEFI variables");
    let nvme = w.join("nvme.img");
    std::fs::File::create(&nvme).and_then(|f| f.set_len(256 << 20)).expect("SSD image");
    let (io_port, metrics_port) = (free_port(), free_port());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], io_port));
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{io_port} subnqn:nqn.2026-11.io.quire:demo");

    // 1. Boot, serve.
    let mut a = Appliance::boot(Boot::Disk { disk: &disk, vars: &vars }, &nvme, w, io_port, metrics_port, 1);
    a.wait_console("serving on 0.0.0.0:4420", 1, Duration::from_secs(240));
    let c = a.console();
    assert!(c.contains("bound to vfio-pci bdf=\"0000:00:10.0\""), "quire took the SSD through VFIO");
    // quire's log lines are plain text (the firmware's own screen codes aside).
    let quire_lines: Vec<&str> = c.lines().filter(|l| l.contains("quire_appliance::")).collect();
    assert!(!quire_lines.is_empty() && quire_lines.iter().all(|l| !l.contains('\u{1b}')), "{quire_lines:?}");
    let run = perf(&["-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "3", "--verify", "-r", &trid]);
    assert!(run.ok && run.text.contains("Verify: 0 mismatched blocks"), "{}", run.text);
    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.contains("quire_volume_write_ops_total{volume=\"demo\"}"), "{}", tail(&metrics, 10));
    // The Linux host, in its own guest, through the forwarded port.
    let env = [
        ("PORT", io_port.to_string()),
        ("NQN", "nqn.2026-11.io.quire:demo".to_string()),
        ("FIO_BS", "4k 128k".to_string()),
        ("FIO_QD", "8".to_string()),
        ("FIO_SIZE_MB", "8".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let opts = GuestOptions { timeout: Duration::from_secs(600), label: "appliance-host".into(), ..Default::default() };
    let host = Guest::spawn_script("fio-verify.sh", &env, &opts).expect("boot the host guest").wait();
    assert!(host.success() && host.log.contains("PASS fio-verify.sh"), "the Linux host:\n{}", tail(&host.log, 40));
    let mut cl = Client::connect_addr(addr, "demo", Duration::from_secs(30));
    let (lba, blocks) = (12_000, 8);
    cl.write(lba, &pattern(lba, 42, blocks)).expect("write the pattern");
    cl.flush().expect("flush");
    drop(cl);

    // 2. ACPI power-off: a clean stop.
    a.power_off(Duration::from_secs(120));
    let c = a.console();
    assert!(c.contains("quire-init: power-off: stopping quire"), "{}", tail(&c, 20));
    assert!(
        c.contains("NVMe controller shut down") && c.contains("given back to its previous driver"),
        "{}",
        tail(&c, 20)
    );
    assert!(c.contains("quire-init: powering off"), "{}", tail(&c, 20));
    drop(a);

    // 3. Boot again: the data is there.
    let mut a = Appliance::boot(Boot::Disk { disk: &disk, vars: &vars }, &nvme, w, io_port, metrics_port, 2);
    a.wait_console("serving on 0.0.0.0:4420", 1, Duration::from_secs(240));
    assert!(a.console().contains("page store opened"), "the store reopened, not formatted again");
    let mut cl = Client::connect_addr(addr, "demo", Duration::from_secs(30));
    assert!(
        cl.read(lba, u32::try_from(blocks).unwrap()).expect("read") == pattern(lba, 42, blocks),
        "the pattern survived"
    );
    drop(cl);
    a.power_off(Duration::from_secs(120));
    drop(a);

    // 4. A configuration error on the command line (network boot pair).
    let cmdline = "console=ttyS0 quiet intel_iommu=on quire.hugepages=64 quire.reactors.poll=fast";
    let mut a = Appliance::boot(Boot::Kernel { dir: &image, cmdline }, &nvme, w, io_port, metrics_port, 3);
    a.wait_console("reactors.poll = \"fast\": expected \"busy\" or \"hybrid\"", 2, Duration::from_secs(240));
    let c = a.console();
    assert!(c.contains("quire-init: quire refused its configuration"), "{}", tail(&c, 20));
    assert_eq!(c.matches("quire-init: Quire appliance").count(), 1, "one boot, no boot loop:\n{}", tail(&c, 30));
    assert!(a.child.try_wait().expect("wait").is_none(), "the appliance stays up for a fix");
}

/// `GET path` on 127.0.0.1:`port`, the body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).expect("response");
    body
}
