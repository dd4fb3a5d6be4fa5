#!/bin/bash
# One-time setup for Quire's end-to-end tests (Debian bookworm, as root).
#
# The e2e tests boot a throw-away Linux guest under QEMU so that the *real*
# Linux NVMe/TCP host driver (nvme-tcp + nvme-cli + fio + ext4) talks to Quire.
# This script provides everything that needs, from Debian packages only:
#
#   * host tools, installed with apt: busybox-static, nvme-cli, fio, e2fsprogs,
#     kmod, cpio, xz-utils, lz4, util-linux, and the shared libraries that the
#     extracted qemu-system-x86_64 links against;
#   * QEMU 7.2 (qemu-system-x86 + its data/firmware: seabios, ipxe-qemu) and
#     the Debian generic amd64 6.1 kernel, *extracted* under tests/guest/root/
#     (gitignored), not installed: installing bookworm's qemu-system-x86 would
#     make apt remove a newer (backports) qemu-utils that the machine may have,
#     and installing a linux-image package runs initramfs/bootloader hooks;
#   * root/boot/vmlinux-KVER: the kernel's vmlinuz unpacked to an ELF image,
#     which QEMU boots directly (PVH entry point).  That skips the kernel's
#     self-decompression, which takes ~3.5 s under software emulation (TCG).
#
# Idempotent and quick when already done: a stamp file (root/.fetch-stamp)
# records a hash of this script; with the stamp current and every artefact
# present, the script exits in well under a second without touching apt.
#
# Downloaded .debs are kept in a machine-wide cache (DEBS, default
# /var/cache/quire-guest/debs; not apt's /var/cache/apt/archives, which the
# Debian container images empty after every dpkg run) and checked against the
# SHA256 apt publishes, so a fresh clone of the repository on the same machine
# (e.g. CI) only re-extracts them.
#
# Environment: ROOT (extraction folder, default tests/guest/root),
#              DEBS (download cache), FORCE=1 (ignore the stamp).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-$HERE/root}
DEBS=${DEBS:-/var/cache/quire-guest/debs}
STAMP=$ROOT/.fetch-stamp
QEMU_BIN=$ROOT/usr/bin/qemu-system-x86_64
export DEBIAN_FRONTEND=noninteractive
# Other processes (unattended upgrades, a parallel setup) may hold dpkg's lock.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

# Debian packages installed on the host.  e2fsprogs/util-linux/busybox-static
# provide the binaries copied into the guest's initramfs (mkfs.ext4, e2fsck,
# blkdiscard, busybox); kmod, cpio, xz-utils and lz4 are used to build it.
# dosfstools, mtools, fdisk and binutils build the appliance image (scripts/build-image.sh).
HOST_PKGS="busybox-static nvme-cli fio e2fsprogs util-linux kmod cpio xz-utils lz4 coreutils dosfstools mtools fdisk binutils"
# Packages extracted (never installed) under $ROOT.
# ovmf: UEFI firmware, to boot the appliance image (tests/tests/e2e_appliance.rs).
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu ovmf"

log() { echo "fetch.sh: $*" >&2; }
die() { echo "fetch.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages with apt)"
command -v apt-get >/dev/null || die "needs Debian's apt-get (Debian bookworm)"

self_hash() { sha256sum "$HERE/fetch.sh" | cut -d' ' -f1; }

# True when everything this script provides is present and the stamp is current.
all_done() {
  [ "${FORCE:-0}" = 1 ] && return 1
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(self_hash)" ] || return 1
  [ -x "$QEMU_BIN" ] || return 1
  compgen -G "$ROOT/boot/vmlinux-*" >/dev/null || return 1
  local p
  for p in $HOST_PKGS; do
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || return 1
  done
  # the extracted QEMU must find all of its shared libraries on the host
  ! ldd "$QEMU_BIN" | grep -q 'not found'
}

if all_done; then
  log "already set up ($ROOT)"
  exit 0
fi

# --- apt package lists ---------------------------------------------------------
apt_update() { log "apt-get update"; "${APT[@]}" update -q >&2; }
compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || apt_update

# The versioned kernel package the linux-image-amd64 metapackage points at.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !n {print $2; n=1}'; }
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then apt_update; KPKG=$(kernel_pkg); fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 with apt"

# --- download (or reuse) the .debs to extract ----------------------------------
# apt-get download names files pkg_version_arch.deb with ':' as '%3a', like
# apt's own cache.  A cached file is reused only if its SHA256 matches.
mkdir -p "$DEBS"
# apt downloads as its sandbox user _apt, which must be able to write here
id _apt >/dev/null 2>&1 && chown _apt "$DEBS"
deb_path() { # pkg -> expected cache path, or nothing
  local ver arch
  ver=$(apt-cache policy "$1" | awk '/Candidate:/ {print $2}')
  arch=$(apt-cache show "$1=$ver" 2>/dev/null | awk '/^Architecture:/ {print $2; exit}')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] && [ -n "$arch" ] || return 1
  echo "$DEBS/${1}_${ver//:/%3a}_${arch}.deb"
}
deb_ok() { # pkg path -> is the file the one apt publishes?
  local want ver
  ver=$(apt-cache policy "$1" | awk '/Candidate:/ {print $2}')
  want=$(apt-cache show "$1=$ver" | awk '/^SHA256:/ {print $2; exit}')
  [ -f "$2" ] && [ "$(sha256sum "$2" | cut -d' ' -f1)" = "$want" ]
}
fetch_debs() {
  local p f missing=()
  FILES=()
  for p in $QEMU_PKGS $KPKG; do
    f=$(deb_path "$p") || die "apt does not know package $p"
    FILES+=("$f")
    deb_ok "$p" "$f" || { rm -f "$f"; missing+=("$p"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "downloading ${missing[*]}"
  (cd "$DEBS" && "${APT[@]}" download "${missing[@]}" >&2) || return 1
  for p in "${missing[@]}"; do deb_ok "$p" "$(deb_path "$p")" || return 1; done
}
# Stale package lists (a mirror dropped the old version) -> update once, retry.
fetch_debs || { apt_update; KPKG=$(kernel_pkg); fetch_debs; } || die "could not download $QEMU_PKGS $KPKG"

# --- host packages ----------------------------------------------------------------
# The extracted QEMU's shared libraries: the Depends of qemu-system-x86 and
# qemu-system-common minus the QEMU/firmware packages that we extract ourselves.
QEMU_LIBS=$(for f in "${FILES[@]}"; do
              case $(dpkg-deb -f "$f" Package) in qemu-system-x86|qemu-system-common) dpkg-deb -f "$f" Depends ;; esac
            done | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' |
            grep -v -E '^(qemu-|seabios|ipxe-qemu|$)' | sort -u)
# shellcheck disable=SC2206  # word lists -> array
INSTALL=($HOST_PKGS $QEMU_LIBS)
# Refuse anything that would make apt *remove* packages (e.g. a backports
# qemu-utils, or a dynamic busybox that busybox-static replaces): this is a
# shared developer/CI machine; say so loudly and let a human decide.
REMOVALS=$("${APT[@]}" install -s -y --no-install-recommends "${INSTALL[@]}" 2>/dev/null | awk '/^Remv/ {print $2}' || true)
[ -z "$REMOVALS" ] || die "installing the test tools would remove: $REMOVALS -- not doing that"
log "apt-get install (host tools + QEMU libraries)"
"${APT[@]}" install -y -q --no-install-recommends "${INSTALL[@]}" >&2

# --- extract QEMU + firmware + kernel under $ROOT ---------------------------------
# Extract into a fresh folder and swap it in, so an interrupted run never
# leaves a half-extracted root behind a stale stamp.
rm -rf "$ROOT.new"
mkdir -p "$ROOT.new"
for f in "${FILES[@]}"; do
  log "extracting $(basename "$f")"
  dpkg-deb -x "$f" "$ROOT.new"
done

# vmlinuz -> vmlinux.  A bzImage is a small decompressor followed by the
# compressed ELF kernel (XZ for Debian's generic amd64 kernel, LZ4 for cloud):
# find the stream's magic and decompress from there.  The decompressor stops
# at the end of the stream, so tail may get SIGPIPE: no pipefail here.
set +o pipefail
for z in "$ROOT.new"/boot/vmlinuz-*; do
  v=${z/vmlinuz/vmlinux}
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$z" | awk -F: 'NR==1 {print $1}' || true)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$z" | xz -dc --single-stream > "$v" 2>/dev/null || true
  else
    off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$z" | awk -F: 'NR==1 {print $1}' || true)
    [ -n "$off" ] && { tail -c +$((off + 1)) "$z" | lz4 -dc > "$v" 2>/dev/null || true; }
  fi
  head -c 4 "$v" 2>/dev/null | grep -q ELF || { rm -f "$v"; die "could not unpack $z to an ELF vmlinux"; }
done
set -o pipefail

rm -rf "$ROOT.old"
[ -e "$ROOT" ] && mv "$ROOT" "$ROOT.old"
mv "$ROOT.new" "$ROOT"
rm -rf "$ROOT.old"

if ldd "$QEMU_BIN" | grep 'not found' >&2; then die "extracted QEMU is missing shared libraries"; fi
"$QEMU_BIN" --version | head -1 >&2
ls "$ROOT"/boot >&2
self_hash > "$STAMP"
log "done: $ROOT"
