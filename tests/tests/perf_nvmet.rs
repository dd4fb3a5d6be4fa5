//! quire-perf's NVMe/TCP initiator against an independent target: the Linux
//! kernel's nvmet-tcp in a QEMU guest (a file on ext4 on a RAM disk, exported
//! through `hostfwd` on a free host port). Discovery, each workload, `--verify`
//! with header and data digests, several queue pairs, and a wrong NQN.
//! Without the guest or a built `quire-perf` it fails (a partial run skips it and
//! records the skip: see `quire_tests::require`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use quire_tests::{
    deadline, free_port, require, require_guest, serial, target_dir, wait_for_port, Guest, GuestOptions,
};

const NQN: &str = "nqn.2024-01.io.quire.test:perf";

fn perf_binary() -> Option<PathBuf> {
    ["release", "debug"].iter().map(|p| target_dir().join(p).join("quire-perf")).find(|p| p.is_file())
}

fn perf(bin: &PathBuf, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("quire-perf runs")
}

#[test]
fn perf_against_kernel_nvmet() {
    if !require_guest("perf_against_kernel_nvmet") {
        return;
    }
    let bin = perf_binary().ok_or_else(|| {
        format!(
            "no quire-perf in {}/{{release,debug}}: build it (cargo build --release -p quire-perf)",
            target_dir().display()
        )
    });
    if !require("perf_against_kernel_nvmet", bin.as_ref().map(|_| ()).map_err(Clone::clone)) {
        return;
    }
    let bin = bin.expect("checked by require");
    let _one_guest_at_a_time = serial();
    let port = free_port();
    let script = format!(
        "set -eu\nADDR=0.0.0.0 PORT=4420 NQN={NQN} STANDIN_MB=128\n. ./nvmet-standin.sh\necho \"MARK nvmet up\"\nsleep 600\n"
    );
    let opts = GuestOptions {
        cpus: 1,
        timeout: Duration::from_secs(900),
        netdev_opts: vec![format!("hostfwd=tcp:127.0.0.1:{port}-:4420")],
        label: "perf-nvmet".into(),
        ..Default::default()
    };
    let mut guest = Guest::spawn(&script, &[], &opts).expect("guest boots");
    guest.wait_for_log("MARK nvmet up", deadline(Duration::from_secs(180))).expect("nvmet comes up");
    wait_for_port(port, deadline(Duration::from_secs(30))).expect("hostfwd listens");

    let discover = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port}");
    let named = format!("{discover} subnqn:{NQN}");
    let cases: [(&str, &str, &[&str]); 6] = [
        ("read", &discover, &[]),
        ("write", &named, &["-o", "65536"]),
        ("randread", &named, &["-P", "2"]),
        ("randwrite", &named, &["-H"]),
        ("rw", &named, &["-M", "50"]),
        ("randrw", &discover, &["-M", "70", "-H", "-I", "--verify"]),
    ];
    for (w, tid, extra) in cases {
        let mut args = vec!["-q", "8", "-w", w, "-t", "0", "-d", "300", "-L", "-r", tid];
        args.extend_from_slice(extra);
        let o = perf(&bin, &args);
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{w}: {out}\n{err}\nguest log: {}", guest.log_path().display());
        assert!(out.contains(NQN), "{out}");
        assert!(out.contains("model 'Linux'"), "{out}");
        let total = out.lines().find(|l| l.starts_with("Total")).expect("Total row");
        let iops: f64 = total.rsplit_once(':').unwrap().1.split_whitespace().next().unwrap().parse().unwrap();
        assert!(iops > 0.0, "{total}");
        if extra.contains(&"--verify") {
            assert!(out.contains("Verify: 0 mismatched blocks"), "{out}");
        }
    }

    let wrong = format!("{discover} subnqn:nqn.2024-01.io.quire.test:nope");
    let o = perf(&bin, &["-w", "read", "-t", "1", "-r", &wrong]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Connect rejected") && err.contains("SUBNQN"), "{err}");
    guest.kill();
}
