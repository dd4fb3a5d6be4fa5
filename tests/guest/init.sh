#!/bin/busybox sh
# PID 1 of Quire's e2e test guest (installed as /init by build-initramfs.sh).
#
# Sets up a minimal system (proc/sys/dev, modprobe, loopback + QEMU user
# networking), gives the guest a random NVMe host identity, runs
# /guest/run.sh (the per-run cpio that run-guest.sh appends), prints
# "GUEST_RC=<rc>" on the serial console -- the line run-guest.sh turns into its
# exit code -- and powers the machine off.
#
# Deliberately *not* "set -e": whatever fails here, the guest must still report
# an exit code and power off, or the host would only see a timeout.
#
# Kernel command-line words of the form KEY=VALUE that the kernel does not
# know (run-guest.sh -A) arrive here as environment variables and are
# inherited by the script.  Use upper-case names: lower-case ones may collide
# with kernel parameters.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
# request_module() (e.g. nvme-fabrics loading nvme-tcp on demand) calls this
ln -sf /bin/busybox /sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
# configfs: the control interface of the kernel's nvmet target (a module here)
modprobe -q configfs && mount -t configfs configfs /sys/kernel/config

for m in virtio_pci virtio_net; do modprobe -q "$m"; done

# QEMU user networking (slirp) without DHCP: the guest is 10.0.2.15/24 and
# 10.0.2.2 is the host's loopback (127.0.0.1), the only address tests use.
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
else
  echo "init: no eth0 (virtio-net missing?)"
fi

# QEMU provides no DMI product UUID, so "nvme gen-hostnqn" would give every
# guest the same all-zero UUID; a random identity per boot keeps the target
# from mistaking a new guest for an old host.
HOSTID=$(cat /proc/sys/kernel/random/uuid)
echo "$HOSTID" > /etc/nvme/hostid
echo "nqn.2014-08.org.nvmexpress:uuid:$HOSTID" > /etc/nvme/hostnqn
echo 7 > /proc/sys/kernel/printk       # kernel messages (nvme, ext4) on the console

echo "GUEST_UP uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) hostnqn=$(cat /etc/nvme/hostnqn)"
if grep -qw guest.shell /proc/cmdline; then
  # interactive debugging: run-guest.sh -A guest.shell
  setsid cttyhack sh
  rc=$?
elif [ -f /guest/run.sh ]; then
  cd /guest || true   # (never exit: PID 1 exiting panics the kernel)
  sh /guest/run.sh < /dev/null
  rc=$?
else
  echo "init: /guest/run.sh not found"
  rc=127
fi
echo "GUEST_RC=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
