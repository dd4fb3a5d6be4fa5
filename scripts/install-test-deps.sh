#!/bin/bash
# Install everything Quire's tests need: the one script CI and a newcomer run
# (Debian bookworm, as root, with Rust already installed).
#
#   * tests/guest/fetch.sh: host tools from apt (nvme-cli, fio, e2fsprogs,
#     busybox-static, kmod, cpio, ...) and QEMU + the Debian 6.1 kernel
#     extracted under tests/guest/root/ for the end-to-end guest;
#   * tests/guest/build-initramfs.sh: the guest's initramfs in tests/guest/out/;
#   * etcd (Debian's etcd-server) for the group tests (tests/tests/group_etcd.rs,
#     which start their own etcd on free ports; the package's service is not
#     started in a container, and the tests do not use it);
#   * Prometheus (Debian's prometheus) for the metrics test
#     (tests/tests/metrics_prometheus.rs, which starts its own Prometheus on a
#     free port and temporary storage; the package's service is not relied on).
#
# All steps are idempotent (stamp- or presence-checked): when everything is in place
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
# apt_install BINARY PACKAGE: install Debian's PACKAGE unless BINARY is there
# (updating the package lists first if there are none, or if the install fails).
apt_install() {
  [ -x "$1" ] && return 0
  echo "install-test-deps.sh: apt-get install $2" >&2
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  compgen -G "/var/lib/apt/lists/*_Packages*" > /dev/null || "${apt[@]}" update -q >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "$2" >&2 ||
    { "${apt[@]}" update -q >&2 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "$2" >&2; }
}
apt_install /usr/bin/etcd etcd-server
apt_install /usr/bin/prometheus prometheus
echo "install-test-deps.sh: test dependencies ready ($(( $(date +%s) - start ))s)" >&2
