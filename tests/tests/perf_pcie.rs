//! quire-perf's `trtype:PCIe` target (the userspace VFIO NVMe driver) against QEMU's
//! emulated NVMe controller, in a guest with a vIOMMU.
//!
//! The guest loads the VFIO modules, runs quire-perf once on the device while the
//! kernel still owns it (a clear "not vfio-pci" refusal with exit status 1 is
//! expected), binds it to vfio-pci through sysfs, then runs a `--verify` random
//! read/write mix with latency percentiles and a two-queue-pair random-read run.
//!
//! quire-perf is built statically (`crt-static`) for the guest, which has no Rust
//! runtime libraries, as `vfio_nvme.rs` does for the driver's check program; the
//! harness (`quire_tests`) boots the guest and skips the test outside CI when the
//! guest is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use quire_tests::{guest_dir, require_guest, run_guest_with, serial, target_dir, workspace_dir, GuestOptions};

/// VFIO modules in load order (dependencies first), relative to the kernel's module tree.
const VFIO_MODULES: [&str; 6] = [
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/vfio_virqfd.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
];

const GUEST_SCRIPT: &str = r#"# runs in the guest, in /guest next to the staged files
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  insmod ./$m.ko || { echo "insmod $m failed"; exit 90; }
done
BDF=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/class)" = 0x010802 ] && BDF=${d##*/}
done
[ -n "$BDF" ] || { echo "no NVMe controller"; exit 91; }
echo "NVMe controller: $BDF, driver: $(basename "$(readlink /sys/bus/pci/devices/$BDF/driver 2>/dev/null)" 2>/dev/null)"
TID="trtype:PCIe traddr:$BDF"
echo "=== unbound"
./quire-perf -w randread -t 1 -r "$TID" 2>&1
echo "UNBOUND_RC=$?"
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
[ -e /sys/bus/pci/devices/$BDF/driver ] && echo $BDF > /sys/bus/pci/devices/$BDF/driver/unbind
echo $BDF > /sys/bus/pci/drivers_probe
echo "bound to: $(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")"
echo "=== verify"
./quire-perf -q 8 -o 8k -w randrw -M 50 -t 0 -d 4000 --verify -L -r "$TID" 2>&1
echo "VERIFY_RC=$?"
echo "=== two queue pairs"
./quire-perf -q 32 -o 4096 -w randread -t 2 -P 2 -r "$TID" 2>&1
echo "QPAIRS_RC=$?"
"#;

fn kernel_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(guest_dir().join("root/lib/modules"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    versions.sort();
    versions.pop()
}

/// Builds quire-perf statically for the guest and returns its path.
fn build_perf_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace_dir())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "-p", "quire-perf", "--release", "--bin", "quire-perf", "--target", target])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building quire-perf for the guest failed");
    let bin = target_dir().join(target).join("release/quire-perf");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// The text between `=== name` and the next `===` mark (or the end).
fn section<'a>(log: &'a str, name: &str) -> &'a str {
    let start = log.find(&format!("=== {name}")).unwrap_or_else(|| panic!("no '{name}' section in:\n{log}"));
    let rest = &log[start..];
    let end = rest[4..].find("=== ").map_or(rest.len(), |i| i + 4);
    &rest[..end]
}

/// The IOPS of the `Total` row.
fn total_iops(text: &str) -> f64 {
    let row = text.lines().find(|l| l.trim_start().starts_with("Total")).unwrap_or_else(|| panic!("no Total: {text}"));
    let figures = row.rsplit_once(':').expect("row has a colon").1;
    figures.split_whitespace().next().expect("IOPS").parse().expect("a number")
}

#[test]
fn perf_drives_an_nvme_controller_through_vfio_in_a_guest() {
    if !require_guest("perf_pcie") {
        return;
    }
    let _serial = serial();
    let bin = build_perf_binary();
    let files = tempfile::tempdir().expect("temp dir");
    let staged = files.path().join("quire-perf");
    std::fs::copy(&bin, &staged).expect("copy the binary");
    // Debug info makes the binary larger and the guest's cpio slower to unpack.
    let _ = Command::new("strip").arg("--strip-debug").arg(&staged).status();
    let version = kernel_version().expect("require_guest found a kernel");
    let modules = guest_dir().join("root/lib/modules").join(version);
    for m in VFIO_MODULES {
        let src = modules.join(m);
        let name = src.file_name().expect("module file");
        std::fs::copy(&src, files.path().join(name)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    let work = tempfile::tempdir().expect("temp dir");
    let image = work.path().join("nvme.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("scratch image");
    let opts = GuestOptions {
        timeout: Duration::from_secs(300),
        files: Some(PathBuf::from(files.path())),
        kernel_args: vec!["intel_iommu=on".into(), "hugepages=64".into()],
        qemu_args: vec![
            "-device intel-iommu,intremap=on".into(),
            format!("-drive file={},if=none,id=nvm0,format=raw,cache=unsafe", image.display()),
            "-device nvme,serial=quire-perf,drive=nvm0".into(),
        ],
        label: "perf-pcie".into(),
        ..GuestOptions::default()
    };
    let result = run_guest_with(GUEST_SCRIPT, &[], &opts);
    println!("{}", result.log);
    result.assert_success("quire-perf in the guest");
    let log = result.log.as_str();

    let unbound = section(log, "unbound");
    assert!(unbound.contains("UNBOUND_RC=1"), "a device the kernel owns is refused with exit 1:\n{unbound}");
    assert!(unbound.contains("not vfio-pci; bind it with: echo vfio-pci >"), "{unbound}");
    assert!(unbound.contains("driver_override") && unbound.contains("drivers_probe"), "{unbound}");

    let verify = section(log, "verify");
    assert!(verify.contains("VERIFY_RC=0"), "{verify}");
    assert!(verify.contains("Attached to NVMe Controller at") && verify.contains("PCIE ("), "{verify}");
    assert!(verify.contains("Verify: 0 mismatched blocks"), "{verify}");
    assert!(verify.contains("Summary latency data for PCIE"), "{verify}");
    assert!(total_iops(verify) > 0.0, "{verify}");

    let qpairs = section(log, "two queue pairs");
    assert!(qpairs.contains("QPAIRS_RC=0"), "{qpairs}");
    assert!(total_iops(qpairs) > 0.0, "{qpairs}");
}
