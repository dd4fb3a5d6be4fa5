#!/bin/bash
# Builds the Quire appliance image from Debian packages and this repository only:
#
#   OUT/vmlinuz, OUT/initramfs.img   the pair for network boot (PXE, iPXE, QEMU -kernel)
#   OUT/quire.efi                    a unified kernel image (systemd's EFI stub with the
#                                    kernel, the initramfs and the default command line)
#   OUT/quire-appliance.img          a UEFI-bootable disk image: GPT, an EFI system
#                                    partition with quire.efi as EFI/BOOT/BOOTX64.EFI,
#                                    and a small FAT partition labelled QUIRECFG that
#                                    holds quire.toml (edit it with mtools, or from any
#                                    machine that mounts FAT)
#
# The initramfs holds a static `quire`, busybox (static), the kernel modules Quire
# needs (NVMe, VFIO, virtio, common NICs, the ACPI button, FAT for the config
# partition) and appliance/image/init.sh as /init: see that file for what boot does
# and docs/appliance.md for the kernel command-line keys.
#
#   scripts/build-image.sh [OUT]          (default: target/image)
#
# Needs the Debian packages' index (apt-get update), and as tools cpio, kmod (depmod),
# binutils (objcopy), dosfstools (mkfs.vfat), mtools (mcopy) and fdisk (sfdisk): as
# root the script installs what is missing. The kernel, busybox and the EFI stub come
# as .deb files (apt-get download, checked against the archive's hashes) and are
# extracted, never installed. Rebuilds only what changed (a stamp of the inputs).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${CARGO_TARGET_DIR:-$REPO/target}/image}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
DEBS=${DEBS:-/var/cache/quire-image/debs}
TRIPLE=x86_64-unknown-linux-gnu
CMDLINE=${CMDLINE:-console=tty0 console=ttyS0,115200 quiet intel_iommu=on iommu=pt}
log() { echo "build-image.sh: $*" >&2; }
die() { echo "build-image.sh: ERROR: $*" >&2; exit 1; }

# Kernel modules the appliance loads (with their dependencies).
MODULES="button evdev virtio_pci virtio_net virtio_blk nvme vfio vfio_iommu_type1 vfio-pci
         e1000 e1000e igb ixgbe i40e ice mlx5_core vfat nls_cp437 nls_utf8 nls_ascii"

# ---- tools --------------------------------------------------------------------------
need_tool() { # need_tool BINARY PACKAGE
  command -v "$1" > /dev/null && return 0
  [ "$(id -u)" = 0 ] || die "$1 missing: apt-get install $2 (or run this script as root)"
  log "apt-get install $2"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$2" >&2
}
need_tool cpio cpio
need_tool depmod kmod
need_tool objcopy binutils
need_tool mkfs.vfat dosfstools
need_tool mcopy mtools
need_tool sfdisk fdisk
need_tool cargo cargo

# ---- Debian packages ------------------------------------------------------------------
mkdir -p "$DEBS" "$OUT"
# deb PACKAGE: the path of PACKAGE's .deb in the cache, downloaded when missing.
deb() {
  local v f
  v=$(apt-cache policy "$1" 2> /dev/null | sed -n 's/^ *Candidate: //p')
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no Debian package $1 (apt-get update?)"
  f=$(ls "$DEBS/$1"_"${v//:/%3a}"_*.deb 2> /dev/null | head -n 1 || true)
  if [ -z "$f" ]; then
    log "apt-get download $1=$v"
    (cd "$DEBS" && apt-get -o APT::Sandbox::User=root download -q "$1=$v" >&2) || die "download of $1 failed"
    f=$(ls "$DEBS/$1"_"${v//:/%3a}"_*.deb | head -n 1)
  fi
  echo "$f"
}
# The kernel: the package linux-image-amd64 depends on.
KPKG=$(apt-cache depends linux-image-amd64 2> /dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
[ -n "$KPKG" ] || die "cannot tell which kernel linux-image-amd64 stands for (apt-get update?)"
KDEB=$(deb "$KPKG")
BBDEB=$(deb busybox-static)
STUBDEB=$(deb systemd-boot-efi)

# ---- quire, static --------------------------------------------------------------------
log "building quire (static)"
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target "$TRIPLE" -p quire --bin quire)
QUIRE=${CARGO_TARGET_DIR:-$REPO/target}/$TRIPLE/release/quire
case $QUIRE in /*) ;; *) QUIRE=$REPO/$QUIRE ;; esac
[ -x "$QUIRE" ] || die "no $QUIRE after the build"

# ---- up to date? ------------------------------------------------------------------------
STAMP=$OUT/.stamp
HASH=$( {
  sha256sum "$0" "$REPO"/appliance/image/* "$QUIRE" "$KDEB" "$BBDEB" "$STUBDEB"
  echo "$CMDLINE $MODULES"
} | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -f "$OUT/quire-appliance.img" ]; then
  log "up to date: $OUT"
  exit 0
fi

WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"
dpkg-deb -x "$STUBDEB" "$WORK/stub"
KVER=$(ls "$WORK/kernel/lib/modules" | head -n 1)
VMLINUZ=$WORK/kernel/boot/vmlinuz-$KVER
STUB=$(find "$WORK/stub" -name 'linuxx64.efi.stub' | head -n 1)
[ -f "$VMLINUZ" ] && [ -n "$STUB" ] || die "kernel or EFI stub missing from the packages"

# ---- the initramfs ------------------------------------------------------------------------
R=$WORK/root
mkdir -p "$R"/{bin,sbin,etc/quire,proc,sys,dev,run,tmp,config,root,lib/modules/"$KVER"}
cp "$WORK/busybox/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
ln -sf ../bin/busybox "$R/sbin/modprobe"
cp "$REPO/appliance/image/init.sh" "$R/init"
cp "$REPO/appliance/image/quire-poweroff" "$R/sbin/quire-poweroff"
cp "$REPO/appliance/image/udhcpc.script" "$R/etc/udhcpc.script"
cp "$REPO/appliance/image/quire.toml" "$R/etc/quire/quire.toml"
chmod +x "$R/init" "$R/sbin/quire-poweroff" "$R/etc/udhcpc.script"
cp "$QUIRE" "$R/sbin/quire"
strip --strip-debug "$R/sbin/quire" 2> /dev/null || true
"$R/sbin/quire" --version | awk '{print $2}' > "$R/etc/quire/version"
# Modules with their dependencies, resolved against the package's own tree.
depmod -b "$WORK/kernel" "$KVER"
for m in $MODULES; do
  modprobe -d "$WORK/kernel" -S "$KVER" --show-depends "$m" 2> /dev/null | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r ko; do
  rel=${ko#"$WORK/kernel/"}
  mkdir -p "$R/$(dirname "$rel")"
  cp "$ko" "$R/$rel"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [ -f "$WORK/kernel/lib/modules/$KVER/$f" ] && cp "$WORK/kernel/lib/modules/$KVER/$f" "$R/lib/modules/$KVER/"
done
depmod -b "$R" "$KVER"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -9 > "$WORK/initramfs.img"

# ---- the unified kernel image -------------------------------------------------------------
echo -n "$CMDLINE" > "$WORK/cmdline.txt"
printf 'NAME="Quire appliance"\nID=quire\nVERSION_ID=%s\n' "$(cat "$R/etc/quire/version")" > "$WORK/os-release"
objcopy \
  --add-section .osrel="$WORK/os-release" --change-section-vma .osrel=0x20000 \
  --add-section .cmdline="$WORK/cmdline.txt" --change-section-vma .cmdline=0x30000 \
  --add-section .linux="$VMLINUZ" --change-section-vma .linux=0x2000000 \
  --add-section .initrd="$WORK/initramfs.img" --change-section-vma .initrd=0x3000000 \
  "$STUB" "$WORK/quire.efi"

# ---- the disk image ------------------------------------------------------------------------
ESP_MIB=96
CFG_MIB=16
rm -f "$WORK/esp.img" "$WORK/cfg.img"
mkfs.vfat -n QUIREEFI -C "$WORK/esp.img" $((ESP_MIB * 1024)) > /dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/quire.efi" ::/EFI/BOOT/BOOTX64.EFI
mkfs.vfat -n QUIRECFG -C "$WORK/cfg.img" $((CFG_MIB * 1024)) > /dev/null
mcopy -i "$WORK/cfg.img" "$REPO/appliance/image/quire.toml" ::/quire.toml
DISK=$WORK/quire-appliance.img
truncate -s $((1 + ESP_MIB + CFG_MIB + 1))M "$DISK"
sfdisk -q "$DISK" << EOF
label: gpt
start=1MiB, size=${ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
size=${CFG_MIB}MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="QUIRECFG"
EOF
dd if="$WORK/esp.img" of="$DISK" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/cfg.img" of="$DISK" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc status=none

cp "$VMLINUZ" "$OUT/vmlinuz"
cp "$WORK/initramfs.img" "$WORK/quire.efi" "$DISK" "$OUT/"
echo "$CMDLINE" > "$OUT/cmdline.txt"
echo "$HASH" > "$STAMP"
log "built in $OUT: quire-appliance.img (UEFI disk; config partition QUIRECFG at $((1 + ESP_MIB)) MiB), quire.efi, vmlinuz + initramfs.img (kernel $KVER)"
