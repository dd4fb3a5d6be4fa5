#!/bin/bash
# Boot a throw-away Linux guest (Debian 6.1 kernel + the busybox initramfs of
# build-initramfs.sh) under the QEMU that fetch.sh extracted, run SCRIPT in it
# as root, stream the serial console to stdout, power off, and exit with
# SCRIPT's exit code.  This is how Quire's e2e tests drive the real Linux
# NVMe/TCP host (nvme-tcp, nvme-cli, fio, ext4) against a Quire on the host.
#
# usage: run-guest.sh [options] SCRIPT
#   -c N        guest vCPUs (default 2; use 1 beside a busy-polling target)
#   -m MIB      guest memory in MiB (default 1024)
#   -t SECS     wall-clock limit for the whole run (default 300)
#   -f DIR      copy DIR's contents into the guest's /guest (SCRIPT runs there)
#   -A ARGS     extra kernel command-line words; KEY=VALUE words the kernel does
#               not know reach SCRIPT as environment variables (repeatable)
#   -n OPTS     extra options for QEMU's "-netdev user" (repeatable, e.g.
#               hostfwd=tcp:127.0.0.1:14420-:4420)
#   -l FILE     also write the console log to FILE
#   -a ACCEL    auto (default) | kvm | tcg  (auto: kvm only if usable)
#   -Q ARGS     extra QEMU arguments (word-split)
#
# Guest network: QEMU user networking (slirp); the guest is 10.0.2.15/24 and
# 10.0.2.2 is the host's 127.0.0.1 -- the only address the tests connect to.
#
# Exit code: SCRIPT's rc (from the "GUEST_RC=<rc>" line init.sh prints),
# 124 on timeout, 125 if the guest died without reporting one, 2 on bad usage.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-$HERE/root}
OUT=${OUT:-$HERE/out}
usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$HERE/run-guest.sh" >&2; exit 2; }

CPUS=2 MEM=1024 TIMEOUT=300 FILES='' KARGS='' NETOPTS='' LOG='' ACCEL=auto QARGS=''
while getopts "c:m:t:f:A:n:l:a:Q:h" o; do
  case $o in
    c) CPUS=$OPTARG ;; m) MEM=$OPTARG ;; t) TIMEOUT=$OPTARG ;; f) FILES=$OPTARG ;;
    A) KARGS="$KARGS $OPTARG" ;; n) NETOPTS="$NETOPTS,$OPTARG" ;; l) LOG=$OPTARG ;;
    a) ACCEL=$OPTARG ;; Q) QARGS="$QARGS $OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
SCRIPT=$1
[ -f "$SCRIPT" ] || { echo "run-guest: no such script: $SCRIPT" >&2; exit 2; }
[ -z "$FILES" ] || [ -d "$FILES" ] || { echo "run-guest: -f $FILES is not a folder" >&2; exit 2; }

QEMU=$ROOT/usr/bin/qemu-system-x86_64
[ -x "$QEMU" ] || { echo "run-guest: $QEMU missing: run scripts/install-test-deps.sh as root" >&2; exit 125; }
KVER=$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
# The unpacked ELF vmlinux boots through PVH and skips the kernel's own
# decompression (seconds under TCG); the bzImage is the fallback.
KERNEL=$ROOT/boot/vmlinux-$KVER
[ -f "$KERNEL" ] || KERNEL=$ROOT/boot/vmlinuz-$KVER
# Cheap when up to date (a stamp check); rebuilds after init.sh etc. changed.
"$HERE/build-initramfs.sh" "$KVER" >&2

if [ "$ACCEL" = auto ]; then
  # /dev/kvm may exist on a CPU without virtualisation extensions: then QEMU
  # fails, so also look for vmx/svm.
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi
# shellcheck disable=SC2054  # commas inside QEMU option values
if [ "$ACCEL" = kvm ]; then ACC=(-accel kvm -cpu host)
else ACC=(-accel tcg,thread=multi -cpu max); fi
# firmware (SeaBIOS, option ROMs) from the extracted packages, not the host
FW=()
for d in "$ROOT/usr/share/qemu" "$ROOT/usr/share/seabios" "$ROOT/usr/lib/ipxe/qemu"; do
  [ -d "$d" ] && FW+=(-L "$d")
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-guest.XXXXXX")
QPID=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP    # run the EXIT trap (kill QEMU, remove WORK) on signals

# Per-run files: a small cpio appended to the (uncompressed) base initramfs;
# the kernel unpacks both, so the guest sees /guest/run.sh (+ the -f files).
mkdir -p "$WORK/x/guest"
[ -n "$FILES" ] && cp -a "$FILES"/. "$WORK/x/guest/"
cp "$SCRIPT" "$WORK/x/guest/run.sh"
(cd "$WORK/x" && find . | cpio -o -H newc --quiet -R 0:0) > "$WORK/extra.cpio"
cat "$OUT/initramfs-$KVER.cpio" "$WORK/extra.cpio" > "$WORK/initrd"

# shellcheck disable=SC2054  # commas inside QEMU option values
ARGS=(-nodefaults -no-user-config -M q35 "${ACC[@]}" -m "$MEM" -smp "$CPUS"
      -display none -monitor none -serial stdio -no-reboot
      -kernel "$KERNEL" -initrd "$WORK/initrd"
      -netdev "user,id=n0$NETOPTS" -device virtio-net-pci,netdev=n0,romfile=)
# shellcheck disable=SC2206
[ -n "$QARGS" ] && ARGS+=($QARGS)
# panic=-1: reboot at once on a kernel panic (oops=panic: also on an oops, so
# that a kernel BUG does not leave a hung guest), and -no-reboot turns that into
# QEMU exiting, so a crashed guest ends the run instead of hanging it.
ARGS+=(-append "console=ttyS0 quiet panic=-1 oops=panic $KARGS")

echo "run-guest: accel=$ACCEL kernel=$KVER cpus=$CPUS mem=${MEM}M timeout=${TIMEOUT}s" >&2
START=$(date +%s.%N)
mkfifo "$WORK/con"
# --foreground keeps QEMU in our process group, so whoever kills the group
# (the Rust harness does, on timeout or drop) kills QEMU too; -k: SIGKILL if
# QEMU ignores the TERM.
timeout --foreground -k 5 "$TIMEOUT" "$QEMU" "${FW[@]}" "${ARGS[@]}" < /dev/null > "$WORK/con" 2>&1 &
QPID=$!
sed -u 's/\r$//' < "$WORK/con" | tee "$WORK/log" ${LOG:+"$LOG"}
QRC=0
wait "$QPID" || QRC=$?
QPID=
END=$(date +%s.%N)
printf 'run-guest: qemu exited %s after %.1fs\n' "$QRC" "$(awk -v a="$START" -v b="$END" 'BEGIN {print b - a}')" >&2
RC=$(sed -n 's/^GUEST_RC=\([0-9]*\).*/\1/p' "$WORK/log" | tail -1)
if [ -n "$RC" ]; then exit "$RC"; fi
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then echo "run-guest: timeout after ${TIMEOUT}s" >&2; exit 124; fi
echo "run-guest: the guest died without reporting an exit code" >&2
exit 125
