# fs-write.sh: make an ext4 filesystem on the namespace, write files with
# known SHA-256 sums, sync, unmount, check, disconnect.  fs-check.sh verifies
# it later (the e2e tests restart or kill -9 Quire in between).
# The manifest of sums is stored on the filesystem (/MANIFEST.sha256) and
# printed on the console as MANIFEST_SHA256=<sha256 of the manifest>; give
# that to fs-check.sh as EXPECT_MANIFEST_SHA256 so a lost or stale manifest
# cannot pass.
# Env: PORT, NQN (see lib.sh); DATA_MB (size of the largest file, default 8),
# SMALL_FILES (count of 4 KiB files, default 200), MKFS_OPTS (extra mkfs.ext4
# options).
. ./lib.sh
need_env PORT NQN
DATA_MB=${DATA_MB:-8}
SMALL_FILES=${SMALL_FILES:-200}
MKFS_OPTS=${MKFS_OPTS:-}
MNT=/mnt/quire

connect
mark "mkfs.ext4 $DEV"
# shellcheck disable=SC2086
mkfs.ext4 -F -q $MKFS_OPTS "$DEV" || fail "mkfs.ext4 failed"
mkdir -p "$MNT"
mount -t ext4 "$DEV" "$MNT" || fail "mount failed"
mark "mounted"

# one big file, a few odd sizes, and many small files in a directory tree
dd if=/dev/urandom of="$MNT/big" bs=1M count="$DATA_MB" 2>/dev/null
dd if=/dev/urandom of="$MNT/odd-1" bs=1 count=1 2>/dev/null
dd if=/dev/urandom of="$MNT/odd-4097" bs=4097 count=1 2>/dev/null
dd if=/dev/urandom of="$MNT/odd-130000" bs=130000 count=1 2>/dev/null
i=0
while [ "$i" -lt "$SMALL_FILES" ]; do
  d="$MNT/tree/d$(( i % 10 ))"
  mkdir -p "$d"
  dd if=/dev/urandom of="$d/f$i" bs=4096 count=1 2>/dev/null
  i=$(( i + 1 ))
done
(cd "$MNT" && find . -type f ! -name MANIFEST.sha256 | sort | xargs sha256sum) > /tmp/manifest
cp /tmp/manifest "$MNT/MANIFEST.sha256"
mark "wrote $(wc -l < /tmp/manifest) files"
sync
umount "$MNT" || fail "umount failed"
mark "unmounted"
e2fsck -fn "$DEV" || fail "e2fsck found problems right after writing"
echo "MANIFEST_SHA256=$(sha256sum < /tmp/manifest | cut -d' ' -f1)"
disconnect
pass
