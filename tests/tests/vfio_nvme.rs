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
//! shared initramfs needs no change); `require_guest` fails the test when the guest is
//! missing (a partial run skips it and records the skip).

use std::time::Duration;

use quire_tests::{build_static, require_guest, run_guest_with, serial, stage_vfio_files, vfio_guest_options};

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

#[test]
fn vfio_nvme_driver_passes_its_checks_in_a_guest() {
    if !require_guest("vfio_nvme") {
        return;
    }
    let _serial = serial();
    let bin = build_static(&["-p", "quire-drivers", "--example", "nvme_vfio_check"], "examples/nvme_vfio_check");
    let files = tempfile::tempdir().expect("temp dir");
    stage_vfio_files(files.path(), &bin, "nvme_vfio_check", &[]);
    let work = tempfile::tempdir().expect("temp dir");
    let image = work.path().join("nvme.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("scratch image");
    let opts = vfio_guest_options(&image, "quire-vfio", files.path(), Duration::from_secs(300), "vfio-nvme");
    let result = run_guest_with(GUEST_SCRIPT, &[], &opts);
    println!("{}", result.log);
    result.assert_success("nvme_vfio_check in the guest");
    for check in CHECKS {
        assert!(result.log.contains(check), "missing '{check}' in the guest's output");
    }
    assert!(!result.log.contains("FAIL "), "a check failed");
}
