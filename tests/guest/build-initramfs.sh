#!/bin/bash
# Build the initramfs of Quire's e2e test guest: out/initramfs-KVER.cpio
# (tests/guest/out/ is gitignored).  Needs tests/guest/fetch.sh first.
#
# The guest has no disk: everything it runs comes from this initramfs.
#   * static busybox (busybox-static) as the shell and basic userland
#     (mount, ip, dd, cmp, sha256sum, md5sum, losetup, blockdev, ...);
#   * tests/guest/init.sh as /init (PID 1);
#   * host binaries with every shared library ldd lists: nvme-cli, fio,
#     mke2fs (mkfs.ext4), e2fsck (fsck.ext4), util-linux's blkdiscard;
#   * the kernel modules below with their dependencies (modprobe resolves them
#     against the kernel extracted under root/): the NVMe/TCP host stack, ext4,
#     crc32c (NVMe/TCP digests), virtio networking, and the kernel's own
#     nvmet-tcp target + null_blk/brd/loop, which let the guest scripts be
#     tested against a second, independent target implementation.
#
# The cpio stays uncompressed (~95 MB, mostly fio's libraries): run-guest.sh
# appends a small per-run cpio to it, and the kernel would ignore a cpio
# appended after a compressed one; an uncompressed one also unpacks faster
# under software emulation.
#
# Rebuilt only when an input changed: out/.stamp-KVER holds a hash of this
# script, init.sh, the kernel version and the versions of the Debian packages
# the binaries come from.  A lock makes concurrent callers (parallel tests
# calling run-guest.sh) wait for one build instead of racing.
#
# usage: build-initramfs.sh [KVER]   (default: the newest kernel under root/)
# Environment: ROOT, OUT, FORCE=1 (rebuild regardless of the stamp).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-$HERE/root}
OUT=${OUT:-$HERE/out}
die() { echo "build-initramfs.sh: ERROR: $*" >&2; exit 1; }

[ -d "$ROOT/lib/modules" ] || die "$ROOT/lib/modules missing: run scripts/install-test-deps.sh (or tests/guest/fetch.sh) as root"
KVER=${1:-$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)}
[ -d "$ROOT/lib/modules/$KVER" ] || die "no kernel $KVER under $ROOT"
TARGET=$OUT/initramfs-$KVER.cpio
STAMP=$OUT/.stamp-$KVER

MODS="virtio_pci virtio_net
      nvme-core nvme-fabrics nvme-tcp
      nvmet nvmet-tcp null_blk brd loop
      ext4 crc32c_generic crc32c-intel libcrc32c"
# Host binaries (symlinks such as mkfs.ext4 -> mke2fs are recreated below).
BINS="/usr/sbin/nvme /usr/bin/fio /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/blkdiscard"
PKGS="busybox-static nvme-cli fio e2fsprogs util-linux libc6"

for b in /bin/busybox $BINS; do
  [ -x "$b" ] || die "$b missing: run scripts/install-test-deps.sh as root"
done

inputs_hash() {
  {
    cat "$HERE/build-initramfs.sh" "$HERE/init.sh"
    echo "$KVER $MODS $BINS"
    # shellcheck disable=SC2086  # a word list
    dpkg-query -W -f '${Package} ${Version}\n' $PKGS 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

mkdir -p "$OUT"
exec 9> "$OUT/.lock"
flock 9
HASH=$(inputs_hash)
if [ "${FORCE:-0}" != 1 ] && [ -f "$TARGET" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0    # up to date
fi
echo "build-initramfs.sh: building $TARGET" >&2

STAGE=$(mktemp -d "$OUT/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
cd "$STAGE"
mkdir -p bin sbin usr/bin usr/sbin etc/nvme proc sys dev tmp run mnt lib64 \
         "lib/modules/$KVER" root var/tmp guest
cp /bin/busybox bin/busybox          # busybox-static: needs no libraries

# --- kernel modules with their dependencies ---------------------------------
# (depmod on the extracted tree: dpkg-deb -x does not run the package's
# postinst, so root/ has no modules.dep until we make one)
depmod -b "$ROOT" "$KVER"
for m in $MODS; do
  modprobe -d "$ROOT" -S "$KVER" --show-depends "$m" || die "kernel module $m not found in $KVER"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
  rel=${ko#"$ROOT/lib/modules/$KVER/"}
  mkdir -p "lib/modules/$KVER/$(dirname "$rel")"
  cp "$ko" "lib/modules/$KVER/$rel"
done
cp "$ROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "lib/modules/$KVER/"
depmod -b "$STAGE" "$KVER"

# --- host binaries and their shared libraries ---------------------------------
for b in $BINS; do
  install -D -m755 "$b" ".$b"
  ldd "$b" | grep -oE '/[^ ]+' | while read -r lib; do
    [ -e ".$lib" ] || install -D -m755 "$(readlink -f "$lib")" ".$lib"
  done
done
ln -s mke2fs usr/sbin/mkfs.ext4
ln -s e2fsck usr/sbin/fsck.ext4
# ld.so's default search path covers /lib and /usr/lib but not the multiarch
# folders Debian's libraries live in; ceph's libraries (fio's rbd engine) have
# a folder of their own.
cat > etc/ld.so.conf <<'EOF'
/lib/x86_64-linux-gnu
/usr/lib/x86_64-linux-gnu
/usr/lib/x86_64-linux-gnu/ceph
EOF
ldconfig -r "$STAGE"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf etc/
ln -s /proc/mounts etc/mtab          # e2fsck/mount look here for mounted filesystems
echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd
echo "root:x:0:" > etc/group

install -m755 "$HERE/init.sh" init

find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 > "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
echo "$HASH" > "$STAMP"
ls -l "$TARGET" >&2
