//! Tests the guest-side e2e scripts (tests/guest/scripts/) themselves, against
//! the Linux kernel's own NVMe/TCP target (nvmet-tcp) inside the guest, over
//! the guest's loopback: discover-connect, fio-verify, zeroes-dealloc-flush,
//! fs-write + fs-check, keepalive-loss. A failure here is a bug in the
//! scripts (or the guest image), not in Quire.

use std::time::Duration;

use quire_tests::{require_guest, run_guest_with, serial, GuestOptions};

#[test]
fn guest_scripts_pass_against_kernel_nvmet() {
    if !require_guest("guest_scripts_pass_against_kernel_nvmet") {
        return;
    }
    let _one_guest_at_a_time = serial();
    let opts = GuestOptions {
        mem_mib: 1536,
        label: "selftest-nvmet".into(),
        // hardened_usercopy=off: nvmet-tcp of this 6.1 kernel trips a usercopy
        // BUG receiving large writes over the loopback (seen at bs=1m, qd=32)
        kernel_args: vec!["nvme_core.admin_timeout=5".into(), "hardened_usercopy=off".into()],
        ..GuestOptions::with_timeout(Duration::from_secs(600))
    };
    let r = run_guest_with("exec sh ./selftest-nvmet.sh", &[], &opts);
    eprintln!("selftest took {:.1?} (log {})", r.elapsed, r.log_path.display());
    r.assert_success("guest scripts against nvmet-tcp");
    assert!(r.log.contains("SELFTEST PASSED"));
    for script in [
        "discover-connect.sh",
        "fio-verify.sh",
        "zeroes-dealloc-flush.sh",
        "fs-write.sh",
        "fs-check.sh",
        "keepalive-loss.sh",
    ] {
        assert!(r.log.contains(&format!("PASS {script}")), "{script} did not pass");
    }
}
