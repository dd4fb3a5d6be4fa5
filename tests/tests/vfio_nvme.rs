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
//! runtime libraries. It runs on the harness of `quire_tests`: `GuestOptions::qemu_args`
//! (extra QEMU devices), `kernel_args` and `files` (the binary and the VFIO kernel
//! modules, taken from the extracted kernel and loaded by the guest script, so the
//! shared initramfs needs no change); `require_guest` skips the test outside CI when the
//! guest is missing and fails it in CI.

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

const GUEST_SCRIPT: &str = r#"# runs in the guest, in /guest next to the staged files
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  insmod ./$m.ko || { echo "insmod $m failed"; exit 90; }
done
echo "hugepages: $(cat /proc/sys/vm/nr_hugepages), IOMMU groups: $(ls /sys/kernel/iommu_groups | wc -l)"
./nvme_vfio_check auto
"#;

fn kernel_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(guest_dir().join("root/lib/modules"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    versions.sort();
    versions.pop()
}

/// Builds the check program statically for the guest and returns its path.
fn build_check_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace_dir())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "-p", "quire-drivers", "--release", "--example", "nvme_vfio_check", "--target", target])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building nvme_vfio_check failed");
    let bin = target_dir().join(target).join("release/examples/nvme_vfio_check");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn vfio_nvme_driver_passes_its_checks_in_a_guest() {
    if !require_guest("vfio_nvme") {
        return;
    }
    let _serial = serial();
    let bin = build_check_binary();
    let files = tempfile::tempdir().expect("temp dir");
    let staged = files.path().join("nvme_vfio_check");
    std::fs::copy(&bin, &staged).expect("copy the binary");
    // Debug info makes the binary 4x larger and the guest's cpio slower to unpack.
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
    // discard=unmap: QEMU reports deallocated blocks as reading zeroes, which holds
    // only when the backend really punches the holes.
    let opts = GuestOptions {
        timeout: Duration::from_secs(300),
        files: Some(PathBuf::from(files.path())),
        kernel_args: vec!["intel_iommu=on".into(), "hugepages=64".into()],
        qemu_args: vec![
            "-device intel-iommu,intremap=on".into(),
            format!("-drive file={},if=none,id=nvm0,format=raw,cache=unsafe,discard=unmap", image.display()),
            "-device nvme,serial=quire-vfio,drive=nvm0".into(),
        ],
        label: "vfio-nvme".into(),
        ..GuestOptions::default()
    };
    let result = run_guest_with(GUEST_SCRIPT, &[], &opts);
    println!("{}", result.log);
    result.assert_success("nvme_vfio_check in the guest");
    for check in CHECKS {
        assert!(result.log.contains(check), "missing '{check}' in the guest's output");
    }
    assert!(!result.log.contains("FAIL "), "a check failed");
}
