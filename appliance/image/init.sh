#!/bin/busybox sh
# PID 1 of the Quire appliance image (scripts/build-image.sh puts it in the
# initramfs as /init). It brings a bare machine to a running `quire serve` and
# keeps it there:
#
#  1. mounts what Linux needs, loads the drivers (NVMe, VFIO, virtio, common NICs,
#     the ACPI power button);
#  2. brings the network up from the kernel command line: `ip=dhcp` (the default),
#     `ip=off`, or `ip=ADDR::GATEWAY:NETMASK:HOST:IFACE:off` (the kernel's own form;
#     this kernel leaves it to userspace);
#  3. reserves 2 MiB hugepages (`quire.hugepages=N`, default 512 = 1 GiB) for the
#     buffer pool;
#  4. finds its configuration: the file `quire.config=NAME` (default quire.toml) on
#     the partition labelled QUIRECFG, else the built-in /etc/quire/quire.toml (a RAM
#     volume: a demonstration only). Every other `quire.SECTION.KEY=VALUE` word of the
#     command line overrides one key (`quire serve --set SECTION.KEY=VALUE`);
#  5. binds the NVMe controllers named by `quire.vfio=BDF[,BDF...]` to vfio-pci
#     (devices with `bind_vfio = true` in the configuration quire binds itself);
#  6. runs `quire serve`, its output on the console and in /run/quire/quire.log
#     (`quire logs` reads it), and starts it again if it dies (1 s, doubling to 30 s).
#     A configuration error is shown on the console every 10 s and the machine stays
#     up, reachable on the console, until the configuration is fixed (the config
#     partition is read again each time) — no boot loop;
#  7. on ACPI power-off (the power button, `virsh shutdown`, QEMU's
#     `system_powerdown`) stops quire with SIGTERM (it shuts its devices down and
#     hands VFIO devices back), syncs, unmounts and powers off.
#
# Deliberately not `set -e`: PID 1 must never exit (the kernel would panic).
/bin/busybox --install -s /bin 2> /dev/null
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
# The console shell's `quire` commands reach the daemon's socket without --socket.
export QUIRE_SOCKET=/run/quire/quire.sock
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2> /dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /config /var/log
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo /sbin/modprobe > /proc/sys/kernel/modprobe

log() { echo "quire-init: $*"; }
VERSION=$(cat /etc/quire/version 2> /dev/null || echo unknown)
log "Quire appliance $VERSION booting (kernel $(uname -r))"

# ---- command line -----------------------------------------------------------------
CFG_NAME=quire.toml
HUGEPAGES=512
VFIO=
IP_ARG=dhcp
SETS=
for w in $(cat /proc/cmdline); do
  case $w in
    quire.config=*) CFG_NAME=${w#quire.config=} ;;
    quire.hugepages=*) HUGEPAGES=${w#quire.hugepages=} ;;
    quire.vfio=*) VFIO=$(echo "${w#quire.vfio=}" | tr ',' ' ') ;;
    quire.*=*) SETS="$SETS --set ${w#quire.}" ;;
    ip=*) IP_ARG=${w#ip=} ;;
  esac
done

# ---- drivers ----------------------------------------------------------------------
for m in button evdev virtio_pci virtio_net virtio_blk nvme vfio vfio_iommu_type1 vfio-pci \
  e1000 e1000e igb ixgbe i40e ice mlx5_core vfat nls_cp437 nls_utf8 nls_ascii; do
  modprobe -q "$m" 2> /dev/null
done

# ---- network ----------------------------------------------------------------------
ip link set lo up
ifaces() { for i in /sys/class/net/*; do n=$(basename "$i"); [ "$n" = lo ] || echo "$n"; done; }
case $IP_ARG in
  off | none) log "network: off (ip=$IP_ARG)" ;;
  dhcp | on | any | "")
    for i in $(ifaces); do
      ip link set "$i" up
      if udhcpc -i "$i" -n -q -t 4 -T 2 -s /etc/udhcpc.script > /dev/null 2>&1; then
        log "network: $i $(ip -4 -o addr show dev "$i" | awk '{print $4}') (DHCP)"
      else
        log "network: no DHCP answer on $i"
      fi
    done
    ;;
  *)
    # ADDR:SERVER:GATEWAY:NETMASK:HOSTNAME:IFACE:AUTOCONF
    old_ifs=$IFS; IFS=:; set -- $IP_ARG; IFS=$old_ifs
    addr=$1 gw=${3:-} mask=${4:-255.255.255.0} host=${5:-} dev=${6:-}
    [ -n "$dev" ] || dev=$(ifaces | head -n 1)
    [ -n "$host" ] && hostname "$host"
    ip link set "$dev" up
    ip addr add "$addr/$mask" dev "$dev" && log "network: $dev $addr/$mask (ip=)"
    [ -n "$gw" ] && ip route add default via "$gw"
    ;;
esac

# ---- hugepages --------------------------------------------------------------------
echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages 2> /dev/null
log "hugepages: $(cat /proc/sys/vm/nr_hugepages) of 2 MiB"

# ---- VFIO -------------------------------------------------------------------------
for bdf in $VFIO; do
  d=/sys/bus/pci/devices/$bdf
  if [ ! -d "$d" ]; then
    log "quire.vfio: no PCI device $bdf"
    continue
  fi
  echo vfio-pci > "$d/driver_override"
  [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
  echo "$bdf" > /sys/bus/pci/drivers_probe
  log "quire.vfio: $bdf on $(basename "$(readlink "$d/driver" 2> /dev/null)")"
done

# ---- configuration ----------------------------------------------------------------
# config_file: mounts the QUIRECFG partition (again: a fix may have been written to it)
# and prints the configuration to run.
config_file() {
  umount /config 2> /dev/null
  dev=$(findfs LABEL=QUIRECFG 2> /dev/null)
  if [ -n "$dev" ] && mount -t vfat -o ro "$dev" /config 2> /dev/null && [ -f "/config/$CFG_NAME" ]; then
    echo "/config/$CFG_NAME"
  else
    echo /etc/quire/quire.toml
  fi
}
# The config partition may take a moment to appear (a slow disk controller).
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ -n "$(findfs LABEL=QUIRECFG 2> /dev/null)" ] && break
  sleep 0.5
done

# ---- power-off --------------------------------------------------------------------
mkdir -p /etc/acpi/PWRF
cat > /etc/acpi/PWRF/00000080 << 'EOF'
#!/bin/sh
exec /sbin/quire-poweroff
EOF
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /run/acpid.log
trap '/sbin/quire-poweroff' TERM USR2

# A shell on the console for the operator (and for fixing a configuration), after
# Enter: until then the console shows the logs undisturbed.
if [ -c /dev/ttyS0 ]; then
  log "press Enter on this console for a shell"
  setsid sh -c 'exec < /dev/ttyS0 > /dev/ttyS0 2>&1; while true; do read -r _ || sleep 5; sh; done' &
fi

# ---- quire --------------------------------------------------------------------------
mkdir -p /run/quire
delay=1
while [ ! -e /run/quire-stopping ]; do
  cfg=$(config_file)
  log "starting quire serve --config $cfg$SETS"
  started=$(cut -d. -f1 /proc/uptime)
  rm -f /run/quire.rc
  # Its output goes to the console and to the file `quire logs` reads.
  # shellcheck disable=SC2086  # SETS is a list of words
  (quire serve --config "$cfg" --set peer.data_dir=/run/quire $SETS 2>&1; echo $? > /run/quire.rc) |
    tee -a /run/quire/quire.log &
  wait $!
  rc=$(cat /run/quire.rc 2> /dev/null || echo 1)
  [ -e /run/quire-stopping ] && break
  if [ "$rc" = 2 ]; then
    log "quire refused its configuration ($cfg, the command line): see the message above."
    log "fix quire.toml on the QUIRECFG partition or the kernel command line; trying again in 10 s (console shell: Enter)"
    sleep 10
    continue
  fi
  ran=$(( $(cut -d. -f1 /proc/uptime) - started ))
  [ "$ran" -ge 60 ] && delay=1
  log "quire exited (status $rc) after ${ran} s; starting it again in ${delay} s"
  sleep "$delay"
  delay=$(( delay * 2 )); [ "$delay" -le 30 ] || delay=30
done
# quire-poweroff finishes the job; PID 1 waits for the end.
while true; do sleep 60; done
