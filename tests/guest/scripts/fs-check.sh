# fs-check.sh: connect, check the ext4 filesystem fs-write.sh made (e2fsck -fn
# must find it clean), mount it read-only, verify every file's SHA-256.
# Env: PORT, NQN (see lib.sh); EXPECT_MANIFEST_SHA256 (recommended: the
# MANIFEST_SHA256 fs-write.sh printed).
. ./lib.sh
need_env PORT NQN
MNT=/mnt/quire

connect
mark "e2fsck $DEV"
e2fsck -fn "$DEV" || fail "e2fsck -fn: the filesystem is not clean"
mkdir -p "$MNT"
mount -t ext4 -o ro "$DEV" "$MNT" || fail "mount failed"
mark "mounted"
[ -f "$MNT/MANIFEST.sha256" ] || fail "no MANIFEST.sha256 on the filesystem"
got=$(sha256sum < "$MNT/MANIFEST.sha256" | cut -d' ' -f1)
echo "MANIFEST_SHA256=$got"
if [ -n "${EXPECT_MANIFEST_SHA256:-}" ] && [ "$got" != "$EXPECT_MANIFEST_SHA256" ]; then
  fail "manifest sha256 $got != expected $EXPECT_MANIFEST_SHA256"
fi
n=$(wc -l < "$MNT/MANIFEST.sha256")
[ "$n" -gt 0 ] || fail "empty manifest"
(cd "$MNT" && sha256sum -c -s MANIFEST.sha256) || {
  (cd "$MNT" && sha256sum -c MANIFEST.sha256 | grep -v ': OK$') || true
  fail "checksum mismatch"
}
mark "verified $n files"
umount "$MNT" || fail "umount failed"
disconnect
pass
