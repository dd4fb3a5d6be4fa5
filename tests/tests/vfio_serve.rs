//! `quire serve` on an NVMe SSD driven from userspace through VFIO, reached by the
//! Linux kernel's NVMe/TCP host — all inside one QEMU guest.
//!
//! The guest has a vIOMMU (VFIO needs one: Debian kernels have no no-IOMMU mode), 2 MiB
//! hugepages and QEMU's emulated NVMe controller (512-byte LBAs) on a scratch image.
//! The kernel's `nvme` driver owns the controller at first, as on a real machine. The
//! guest script then:
//! 0. checks that `quire` with `bind_vfio = false` refuses the controller (still on
//!    `nvme`) with an error that says what to do, and leaves it where it was;
//! 1. starts the real `quire` binary with `[[device]] kind = "nvme"`, `bind_vfio = true`
//!    (quire takes the controller from `nvme`, binds it to vfio-pci, formats its page
//!    store on it and serves a 32 MiB volume with 4 KiB blocks);
//! 2. connects with `nvme connect -t tcp -a 127.0.0.1`, writes 4 MiB of random data with
//!    `dd` (O_DIRECT) and 8 MiB with fio (crc32c verify headers), reads both back;
//! 3. SIGTERMs quire: it must exit 0 after a clean controller shutdown (CC.SHN) and give
//!    the controller back to `nvme`;
//! 4. starts quire again (it re-binds, opens the existing page store), reconnects, and
//!    checks that the dd data (sha256) and the fio data (`--verify_only`) survived; stops
//!    it again, and the controller is back on `nvme` once more.
//!
//! `quire` is built statically (`crt-static`) for the guest, which has no Rust runtime
//! libraries; the VFIO modules and `nvme.ko` come from the extracted guest kernel (the
//! shared initramfs has neither). Software emulation is slow: the run takes a few
//! minutes, most of it guest boot and TCG-emulated fio.

use std::time::Duration;

use quire_tests::{build_static, require_guest, run_guest_with, serial, stage_vfio_files, vfio_guest_options};

/// `nvme.ko` besides the VFIO modules (it needs `nvme-core`, which the guest's
/// modprobe loads from the initramfs): the SSD starts on the kernel driver.
const NVME_MODULE: &str = "kernel/drivers/nvme/host/nvme.ko";

/// The volume served; its NQN is `nqn.2026-11.io.quire:<VOLUME>`.
const VOLUME: &str = "vfio1";

/// Guest-side script (busybox sh). `lib.sh` comes with the harness's copy of
/// `tests/guest/scripts/`; `PORT`, `NQN`, `ADDR` and `VOL` come from the environment.
const GUEST_SCRIPT: &str = r#"# vfio-serve: quire on a VFIO NVMe SSD, the kernel NVMe/TCP host in front of it
. ./lib.sh
need_env PORT NQN VOL
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  insmod ./$m.ko || fail "insmod $m"
done
modprobe nvme-core || fail "modprobe nvme-core"
insmod ./nvme.ko || fail "insmod nvme"
chmod +x ./quire

BDF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/class")" = 0x010802 ]; then BDF=$(basename "$d"); break; fi
done
[ -n "$BDF" ] || fail "no NVMe PCI function in the guest"
drv() { l=$(readlink "/sys/bus/pci/devices/$BDF/driver" 2>/dev/null) && basename "$l" || echo none; }
drv_is() { [ "$(drv)" = "$1" ]; }
wait_until 30 "the kernel nvme driver to take $BDF" drv_is nvme
mark "ssd $BDF driver=$(drv) hugepages=$(cat /proc/sys/vm/nr_hugepages) iommu_groups=$(ls /sys/kernel/iommu_groups | wc -l)"

cat > quire.toml <<EOF
[peer]
name = "vfio-guest"
data_dir = "/tmp/quire"
[reactors]
count = 1
[target]
listen = "127.0.0.1"
port = $PORT
discovery_port = 0
[buffers]
chunk_size = "128K"
count = 64
hugepages = true
[[device]]
kind = "nvme"
pci_address = "$BDF"
bind_vfio = true
[[volume]]
name = "$VOL"
size = "32M"
page_size = "4M"
block_size = 4096
EOF

QPID=
QLOG=
quire_up() {
  grep -q "serving on" "$QLOG" && return 0
  kill -0 "$QPID" 2>/dev/null || { cat "$QLOG"; fail "quire exited before serving"; }
  return 1
}
start_quire() {
  QLOG=/tmp/quire-$1.log
  ./quire serve -c quire.toml > "$QLOG" 2>&1 &
  QPID=$!
  wait_until 90 "quire to serve ($1)" quire_up
  sed "s/^/quire-$1: /" "$QLOG"
  drv_is vfio-pci || fail "$BDF is on $(drv) while quire serves"
  mark "quire $1 serving, $BDF driver=$(drv)"
}
stop_quire() {
  kill -TERM "$QPID"
  ( sleep 60; kill -9 "$QPID" 2>/dev/null ) &
  watchdog=$!
  rc=0
  wait "$QPID" || rc=$?
  kill "$watchdog" 2>/dev/null || true
  sed "s/^/quire-$1: /" "$QLOG"
  [ "$rc" -eq 0 ] || fail "quire exited with $rc after SIGTERM ($1)"
  grep -q "NVMe controller shut down" "$QLOG" || fail "quire did not shut the controller down (CC.SHN) ($1)"
  grep -q "given back to its previous driver" "$QLOG" || fail "quire did not give $BDF back ($1)"
  if grep -q "ERROR" "$QLOG"; then fail "quire logged errors ($1)"; fi
  wait_until 30 "$BDF back on the kernel nvme driver" drv_is nvme
  mark "quire $1 stopped rc=$rc, $BDF driver=$(drv)"
}
fio_job() {
  fio --name=persist --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=16k \
      --iodepth=8 --offset=8M --size=8M --randseed=4242 --verify=crc32c --verify_fatal=1 \
      --exitall_on_error=1 --output=/tmp/fio.out "$@" || { cat /tmp/fio.out; fail "fio $* failed"; }
  grep -E 'IOPS=|err=' /tmp/fio.out || true
  grep -Eq 'err= *0' /tmp/fio.out || { cat /tmp/fio.out; fail "fio $* reported errors"; }
}

# --- the SSD still on the kernel driver and bind_vfio = false: a clear refusal ---
sed 's/^bind_vfio = true/bind_vfio = false/' quire.toml > unbound.toml
rc=0
./quire serve -c unbound.toml > /tmp/unbound.log 2>&1 || rc=$?
sed 's/^/quire-unbound: /' /tmp/unbound.log
[ "$rc" -ne 0 ] || fail "quire served a controller bound to nvme"
grep -q "not vfio-pci" /tmp/unbound.log && grep -q "bind_vfio = true" /tmp/unbound.log ||
  fail "no clear error for a controller not bound to vfio-pci"
drv_is nvme || fail "the refused start moved $BDF to $(drv)"
mark "unbound controller refused rc=$rc"

# --- first run: format, write, verify ---
start_quire first
grep -q "page store formatted" "$QLOG" || fail "the first start did not format the page store"
connect
mark "namespace $DEV: $(dev_bytes) bytes, lba $(lba_size)"
dd if=/dev/urandom of=/tmp/pattern bs=64k count=64 2>/dev/null
SUM=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
dd if=/tmp/pattern of="$DEV" bs=64k oflag=direct conv=fsync 2>&1 || fail "dd write failed"
GOT=$(dd if="$DEV" bs=64k count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$GOT" = "$SUM" ] || fail "4 MiB read back differs: $GOT != $SUM"
mark "dd 4MiB verified sha256=$SUM"
fio_job --do_verify=1
mark "fio 8MiB written and verified"
disconnect
stop_quire first

# --- second run: the data must have survived the shutdown ---
start_quire second
grep -q "page store opened" "$QLOG" || fail "the second start did not open the existing page store"
grep -q "page store formatted" "$QLOG" && fail "the second start formatted the page store again"
connect
GOT=$(dd if="$DEV" bs=64k count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$GOT" = "$SUM" ] || fail "after restart the 4 MiB differ: $GOT != $SUM"
mark "dd 4MiB intact after restart sha256=$GOT"
fio_job --verify_only
mark "fio 8MiB intact after restart"
disconnect
stop_quire second
pass
"#;

#[test]
fn quire_serves_a_vfio_nvme_ssd_to_the_kernel_host_and_keeps_data_across_restarts() {
    if !require_guest("vfio_serve") {
        return;
    }
    let _serial = serial();
    let quire = build_static(&["-p", "quire", "--bin", "quire"], "quire");
    let files = tempfile::tempdir().expect("temp dir");
    stage_vfio_files(files.path(), &quire, "quire", &[NVME_MODULE]);
    let image_dir = tempfile::tempdir().expect("temp dir");
    let image = image_dir.path().join("ssd.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(128 << 20)).expect("scratch image");
    let opts = vfio_guest_options(&image, "quire-vfio-serve", files.path(), Duration::from_secs(900), "vfio-serve");
    let nqn = format!("nqn.2026-11.io.quire:{VOLUME}");
    let env = [("PORT", "4420"), ("NQN", nqn.as_str()), ("ADDR", "127.0.0.1"), ("VOL", VOLUME)];
    let result = run_guest_with(GUEST_SCRIPT, &env, &opts);
    println!("{}", result.log);
    result.assert_success("vfio_serve guest script");
    let marks = result.marks();
    for expected in [
        "unbound controller refused",
        "quire first serving",
        "dd 4MiB verified",
        "fio 8MiB written and verified",
        "quire first stopped rc=0",
        "quire second serving",
        "dd 4MiB intact after restart",
        "fio 8MiB intact after restart",
        "quire second stopped rc=0",
        "pass",
    ] {
        assert!(marks.iter().any(|m| m.starts_with(expected)), "no MARK {expected:?}; marks: {marks:?}");
    }
    // The namespace quire exported has the volume's geometry, on a device with
    // 512-byte LBAs (QEMU's default): volume blocks are device blocks times 8.
    assert!(
        marks.iter().any(|m| m.contains("33554432 bytes, lba 4096")),
        "the namespace is not the 32 MiB volume with 4 KiB blocks; marks: {marks:?}"
    );
    assert!(result.log.contains("blocks of 512 bytes"), "quire's banner does not show the 512-byte LBA device");
    assert!(result.log.contains("PASS "), "the guest script did not reach its end");
}
