//! The userspace NVMe driver against QEMU's emulated NVMe controller, through VFIO.
//!
//! Boots a guest with a vIOMMU (VFIO needs one: Debian kernels have no no-IOMMU mode),
//! 2 MiB hugepages and an emulated NVMe controller backed by a scratch image, loads the
//! VFIO modules, and runs `drivers/examples/nvme_vfio_check.rs` in it: bind to vfio-pci,
//! bring-up, Identify, write/read/verify at every PRP shape and above MDTS, four queue
//! pairs on four threads, flush, write zeroes, deallocate, a controller reset in the
//! middle of I/O (nothing lost or hung), shutdown and re-open with data intact.
//!
//! The example is built statically (`crt-static`) for the guest, which has no Rust
//! runtime libraries. The guest harness pieces used: `tests/guest/run-guest.sh` with
//! `-Q` (extra QEMU devices), `-A` (kernel arguments) and `-f` (files); the VFIO kernel
//! modules come from the extracted kernel and are loaded by the guest script, so the
//! shared initramfs needs no change.
//!
//! `guest_available` and `run_guest` below have the shape of the harness helpers being
//! written in `quire_tests` and can be swapped for them when they land.

use std::path::{Path, PathBuf};
use std::process::Command;

/// VFIO modules in load order (dependencies first), relative to the kernel's module tree.
const VFIO_MODULES: [&str; 6] = [
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/vfio_virqfd.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
];

/// The checks the example must report as passed.
const CHECKS: [&str; 17] = [
    "PASS bind",
    "PASS identify",
    "PASS rw 4KiB (PRP1)",
    "PASS rw 8KiB (PRP2 data pointer)",
    "PASS rw 12KiB (PRP list)",
    "PASS rw 64KiB (PRP list)",
    "PASS rw 8KiB at page offset 512",
    "PASS rw above MDTS (split)",
    "PASS rw 3 segments",
    "PASS flush",
    "PASS write zeroes",
    "PASS deallocate",
    "PASS out of range",
    "PASS parallel queue pairs",
    "PASS reset during I/O",
    "PASS shutdown and re-open",
    "RESULT: 0 failed",
];

const GUEST_SCRIPT: &str = r#"# runs in the guest, next to the files of -f
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  insmod ./$m.ko || { echo "insmod $m failed"; exit 90; }
done
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages), IOMMU groups: $(ls /sys/kernel/iommu_groups | wc -l)"
./nvme_vfio_check auto
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn guest_dir() -> PathBuf {
    workspace().join("tests/guest")
}

/// True when the guest can boot here (QEMU and the kernel extracted by fetch.sh).
fn guest_available() -> bool {
    cfg!(all(target_os = "linux", target_arch = "x86_64"))
        && guest_dir().join("root/usr/bin/qemu-system-x86_64").exists()
        && kernel_version().is_some()
}

fn kernel_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(guest_dir().join("root/lib/modules"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs `script` in a guest with `args` for run-guest.sh; returns (exit code, output).
fn run_guest(script: &Path, args: &[&str]) -> (i32, String) {
    let out =
        Command::new(guest_dir().join("run-guest.sh")).args(args).arg(script).output().expect("run-guest.sh runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Builds the check program statically for the guest and returns its path.
fn build_check_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "-p", "quire-drivers", "--release", "--example", "nvme_vfio_check", "--target", target])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building nvme_vfio_check failed");
    let target_dir =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target"));
    let bin = target_dir.join(target).join("release/examples/nvme_vfio_check");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn vfio_nvme_driver_passes_its_checks_in_a_guest() {
    if !guest_available() {
        println!("SKIP: no guest (run tests/guest/fetch.sh as root)");
        return;
    }
    let bin = build_check_binary();
    let files = tempfile::tempdir().expect("temp dir");
    let staged = files.path().join("nvme_vfio_check");
    std::fs::copy(&bin, &staged).expect("copy the binary");
    // Debug info makes the binary 4x larger and the guest's cpio slower to unpack.
    let _ = Command::new("strip").arg("--strip-debug").arg(&staged).status();
    let modules = guest_dir().join("root/lib/modules").join(kernel_version().expect("checked"));
    for m in VFIO_MODULES {
        let src = modules.join(m);
        let name = src.file_name().expect("module file");
        std::fs::copy(&src, files.path().join(name)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    let work = tempfile::tempdir().expect("temp dir");
    let script = work.path().join("vfio-nvme.sh");
    std::fs::write(&script, GUEST_SCRIPT).expect("write script");
    let image = work.path().join("nvme.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("scratch image");
    // discard=unmap: QEMU reports deallocated blocks as reading zeroes, which holds
    // only when the backend really punches the holes.
    let qemu = format!(
        "-device intel-iommu,intremap=on \
         -drive file={},if=none,id=nvm0,format=raw,cache=unsafe,discard=unmap \
         -device nvme,serial=quire-vfio,drive=nvm0",
        image.display()
    );
    let files_arg = files.path().display().to_string();
    let (rc, log) =
        run_guest(&script, &["-t", "300", "-f", &files_arg, "-A", "intel_iommu=on hugepages=64", "-Q", &qemu]);
    println!("{log}");
    assert_eq!(rc, 0, "guest run failed (exit {rc})");
    for check in CHECKS {
        assert!(log.contains(check), "missing '{check}' in the guest's output");
    }
    assert!(!log.contains("FAIL "), "a check failed");
}
