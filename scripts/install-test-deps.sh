#!/bin/bash
# Install everything Quire's tests need: the one script CI and a newcomer run
# (Debian bookworm, as root, with Rust already installed).
#
#   * tests/guest/fetch.sh: host tools from apt (nvme-cli, fio, e2fsprogs,
#     busybox-static, kmod, cpio, ...) and QEMU + the Debian 6.1 kernel
#     extracted under tests/guest/root/ for the end-to-end guest;
#   * tests/guest/build-initramfs.sh: the guest's initramfs in tests/guest/out/.
#
# Both steps are idempotent and stamp-checked: when everything is in place
# this takes well under a second.  Only Debian's package mirrors are used.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps.sh: must run as root (installs Debian packages)" >&2
  exit 1
fi
start=$(date +%s)
"$REPO/tests/guest/fetch.sh"
"$REPO/tests/guest/build-initramfs.sh"
echo "install-test-deps.sh: test dependencies ready ($(( $(date +%s) - start ))s)" >&2
