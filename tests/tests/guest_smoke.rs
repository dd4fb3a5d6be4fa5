//! Smoke test of the e2e harness itself: a guest boots, runs a script with
//! the environment it was given, has the tools the e2e scripts need, reports
//! the script's exit code, and streams its console for `wait_for_log`.
//! Fails without the guest (a partial run, `scripts/test.sh --partial`, skips it).

use std::time::{Duration, Instant};

use quire_tests::{deadline, free_port, require_guest, run_guest, serial, Guest, GuestOptions, HOST_FROM_GUEST};

#[test]
fn guest_runs_script_with_env_and_reports_rc() {
    if !require_guest("guest_runs_script_with_env_and_reports_rc") {
        return;
    }
    let _one_guest_at_a_time = serial();
    let script = r#"
set -eu
echo "MARK kernel $(uname -r)"
[ "$GREETING" = "hello, it's me" ] || { echo "bad GREETING: $GREETING"; exit 1; }
[ "$EMPTY" = "" ]
grep -q nvme_core.admin_timeout=5 /proc/cmdline
for tool in nvme fio mkfs.ext4 e2fsck fsck.ext4 mount sha256sum md5sum /usr/sbin/blkdiscard modprobe; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done
modprobe nvme-tcp
[ -e /dev/nvme-fabrics ]
[ -f ./lib.sh ] && [ -f ./discover-connect.sh ]
ip -4 addr show eth0 | grep -q 10.0.2.15/24
echo "MARK tools ok"
exit 7
"#;
    let start = Instant::now();
    let r = run_guest(script, &[("GREETING", "hello, it's me"), ("EMPTY", "")], Duration::from_secs(180));
    eprintln!("guest run took {:.1?} (log {})", start.elapsed(), r.log_path.display());
    assert_eq!(r.rc, 7, "expected the script's rc 7; log:\n{}", r.log);
    assert!(r.marks().contains(&"tools ok"), "log:\n{}", r.log);
    assert!(r.log.contains("GUEST_RC=7"));
}

#[test]
fn guest_streams_console_and_fails_fast_on_closed_port() {
    if !require_guest("guest_streams_console_and_fails_fast_on_closed_port") {
        return;
    }
    let _one_guest_at_a_time = serial();
    // nothing listens on this port: discovery must fail quickly, not hang
    let port = free_port().to_string();
    let script = r#"
set -u
echo "MARK started"
modprobe nvme-tcp
t0=$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)
if nvme discover -t tcp -a "$ADDR" -s "$PORT"; then echo "MARK discover unexpectedly succeeded"; exit 1; fi
t1=$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)
echo "MARK discover failed after $((t1 - t0)) ms"
[ $((t1 - t0)) -lt 10000 ] || exit 2
sleep 1
echo "MARK done"
"#;
    let opts =
        GuestOptions { cpus: 1, label: "smoke-stream".into(), ..GuestOptions::with_timeout(Duration::from_secs(180)) };
    let mut g = Guest::spawn(script, &[("ADDR", HOST_FROM_GUEST), ("PORT", &port)], &opts).expect("spawn guest");
    let line = g.wait_for_log("MARK started", deadline(Duration::from_secs(120))).unwrap();
    assert_eq!(line, "MARK started");
    g.wait_for_log("MARK discover failed", deadline(Duration::from_secs(60))).unwrap();
    let r = g.wait();
    r.assert_success("closed-port discovery");
    assert!(r.marks().contains(&"done"));
    // the shared guest scripts take the same path and fail cleanly
    let g = Guest::spawn_script(
        "discover-connect.sh",
        &[("PORT", &port), ("NQN", "nqn.2024-01.io.quire.test:none")],
        &opts,
    )
    .expect("spawn guest");
    let r = g.wait();
    assert_eq!(r.rc, 1, "log:\n{}", r.log);
    assert!(r.log.contains("FAIL: discover-connect.sh: nvme discover failed"), "log:\n{}", r.log);
    // a pattern that never comes: reported as soon as the guest has exited
    let mut g = Guest::spawn("exit 0", &[], &opts).expect("spawn guest");
    let start = Instant::now();
    let err = g.wait_for_log("NEVER-PRINTED", deadline(Duration::from_secs(150))).unwrap_err();
    assert!(err.contains("exited"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(120));
    assert_eq!(g.wait().rc, 0);
}

/// Processes (pid, command) in process group `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // fields after the ")" that ends the command: state ppid pgrp ...
        let Some((comm, rest)) = stat.rsplit_once(") ") else { continue };
        if rest.split(' ').nth(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            found.push((pid, comm.to_owned()));
        }
    }
    found
}

#[test]
fn guest_is_killed_on_drop_and_on_timeout() {
    if !require_guest("guest_is_killed_on_drop_and_on_timeout") {
        return;
    }
    let _one_guest_at_a_time = serial();
    let opts =
        GuestOptions { cpus: 1, label: "smoke-kill".into(), ..GuestOptions::with_timeout(Duration::from_secs(300)) };
    let mut g = Guest::spawn("echo MARK sleeping; sleep 600", &[], &opts).expect("spawn guest");
    g.wait_for_log("MARK sleeping", deadline(Duration::from_secs(120))).unwrap();
    let pgid = g.pid().expect("running");
    assert!(group_members(pgid).iter().any(|(_, c)| c.contains("qemu")), "QEMU runs in the guest's group");
    let start = Instant::now();
    drop(g);
    assert!(start.elapsed() < Duration::from_secs(15), "drop took {:.1?}", start.elapsed());
    // reaped children vanish at once; give stragglers a moment
    let gone = deadline(Duration::from_secs(10));
    while !group_members(pgid).is_empty() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(group_members(pgid), vec![], "processes left behind by a dropped guest");

    // run-guest.sh's own limit: a script that outlives -t gives rc 124
    let r = run_guest("sleep 600", &[], Duration::from_secs(2));
    assert_eq!(r.rc, 124, "log:\n{}", r.log);
    assert!(r.elapsed < Duration::from_secs(30), "{:.1?}", r.elapsed);
}
