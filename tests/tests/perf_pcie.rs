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
//! harness (`quire_tests`) boots the guest and fails the test when the guest is
//! missing (a partial run skips it and records the skip).

use std::time::Duration;

use quire_tests::{build_static, require_guest, run_guest_with, serial, stage_vfio_files, vfio_guest_options};

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
    let bin = build_static(&["-p", "quire-perf", "--bin", "quire-perf"], "quire-perf");
    let files = tempfile::tempdir().expect("temp dir");
    stage_vfio_files(files.path(), &bin, "quire-perf", &[]);
    let work = tempfile::tempdir().expect("temp dir");
    let image = work.path().join("nvme.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("scratch image");
    let opts = vfio_guest_options(&image, "quire-perf", files.path(), Duration::from_secs(300), "perf-pcie");
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
