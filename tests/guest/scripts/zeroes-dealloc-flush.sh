# zeroes-dealloc-flush.sh: Write Zeroes, Dataset Management (deallocate),
# blkdiscard (discard and zero-out through the block layer), Compare, Copy and
# Flush.
# Each check writes random data over three adjacent ranges A|B|C, applies the
# operation to B only, and verifies B reads back as zeroes while A and C keep
# their data (catching off-by-one LBA ranges).  Reads use O_DIRECT so they
# come from the target, not the page cache.
# Env: PORT, NQN (see lib.sh); RANGE_KB (size of each range, default 1024);
# DEALLOC_ZEROES=0 to only warn (not fail) when deallocated blocks do not
# read back as zeroes. Compare and Copy are checked when the controller announces
# them (ONCS bits 0 and 8); COMPARE=1 and COPY=1 fail the run when it does not.
. ./lib.sh
need_env PORT NQN
RANGE_KB=${RANGE_KB:-1024}
DEALLOC_ZEROES=${DEALLOC_ZEROES:-1}

connect
LBS=$(lba_size)
RANGE=$(( RANGE_KB * 1024 ))
[ $(( RANGE % LBS )) -eq 0 ] || fail "RANGE_KB=$RANGE_KB is not a multiple of the LBA size $LBS"
NLB=$(( RANGE / LBS ))          # blocks per range
SLBA_A=$(( 1048576 / LBS ))     # start 1 MiB in
SLBA_B=$(( SLBA_A + NLB ))
SLBA_C=$(( SLBA_B + NLB ))
[ $(( (SLBA_C + NLB) * LBS )) -le "$(dev_bytes)" ] || fail "namespace too small for 3 x ${RANGE_KB} KiB at 1 MiB"

idc=$(nvme id-ctrl "/dev/$CTRL")
idn=$(nvme id-ns "$DEV")
oncs=$(echo "$idc" | awk -F: '$1 ~ /^oncs / { gsub(/ /, "", $2); print $2 }')
dlfeat=$(echo "$idn" | awk -F: '$1 ~ /^dlfeat / { gsub(/ /, "", $2); print $2 }')
mark "lba=$LBS oncs=$oncs dlfeat=$dlfeat discard_max=$(cat "/sys/block/$(basename "$DEV")/queue/discard_max_bytes") write_zeroes_max=$(cat "/sys/block/$(basename "$DEV")/queue/write_zeroes_max_bytes")"

dd if=/dev/zero of=/tmp/zero bs="$RANGE" count=1 2>/dev/null
# read_range SLBA FILE: NLB blocks at SLBA -> FILE, with O_DIRECT
read_range() { dd if="$DEV" of="$2" bs="$LBS" skip="$1" count="$NLB" iflag=direct 2>/dev/null; }
fill() {
  dd if=/dev/urandom of=/tmp/abc bs="$RANGE" count=3 2>/dev/null
  dd if=/tmp/abc of="$DEV" bs="$LBS" seek="$SLBA_A" count=$(( 3 * NLB )) oflag=direct conv=notrunc 2>/dev/null ||
    fail "writing the pattern failed"
  dd if=/tmp/abc of=/tmp/a bs="$RANGE" count=1 2>/dev/null
  dd if=/tmp/abc of=/tmp/b bs="$RANGE" skip=1 count=1 2>/dev/null
  dd if=/tmp/abc of=/tmp/c bs="$RANGE" skip=2 count=1 2>/dev/null
  read_range "$SLBA_B" /tmp/rb
  cmp -s /tmp/rb /tmp/b || fail "pattern did not read back"
}
# check_b_zero WHAT STRICT: B reads zeroes (fail if STRICT=1, else warn); A, C intact
check() {
  read_range "$SLBA_A" /tmp/ra; cmp -s /tmp/ra /tmp/a || fail "$1 changed the range before the target range"
  read_range "$SLBA_C" /tmp/rc; cmp -s /tmp/rc /tmp/c || fail "$1 changed the range after the target range"
  read_range "$SLBA_B" /tmp/rb
  if ! cmp -s /tmp/rb /tmp/zero; then
    [ "$2" = 1 ] && fail "$1: range does not read back as zeroes"
    echo "WARNING: $1: range does not read back as zeroes (dlfeat=$dlfeat)"
  fi
  mark "$1 ok"
}

mark "write-zeroes slba=$SLBA_B nlb=$NLB"
fill
nvme write-zeroes "$DEV" --start-block="$SLBA_B" --block-count=$(( NLB - 1 )) || fail "nvme write-zeroes failed"
check write-zeroes 1

mark "dsm deallocate slba=$SLBA_B nlb=$NLB"
fill
nvme dsm "$DEV" --ad --slbs="$SLBA_B" --blocks="$NLB" || fail "nvme dsm --ad failed"
check dsm-deallocate "$DEALLOC_ZEROES"

# util-linux blkdiscard (busybox's would shadow a plain "blkdiscard")
mark "blkdiscard offset=$(( SLBA_B * LBS )) length=$RANGE"
fill
/usr/sbin/blkdiscard --offset $(( SLBA_B * LBS )) --length "$RANGE" "$DEV" || fail "blkdiscard failed"
check blkdiscard "$DEALLOC_ZEROES"

mark "blkdiscard --zeroout"
fill
/usr/sbin/blkdiscard --zeroout --offset $(( SLBA_B * LBS )) --length "$RANGE" "$DEV" || fail "blkdiscard --zeroout failed"
check blkdiscard-zeroout 1

# Compare, as `nvme compare` sends it (a passthrough command): equal data
# passes, other data fails with a compare failure; one block (in the capsule)
# and 64 KiB (by R2T).
if [ $(( oncs & 1 )) -eq 1 ]; then
  fill
  for n in "$LBS" 65536; do
    mark "compare bytes=$n"
    dd if=/tmp/b of=/tmp/same bs="$n" count=1 2>/dev/null
    dd if=/tmp/c of=/tmp/other bs="$n" count=1 2>/dev/null
    cnt=$(( n / LBS - 1 ))
    nvme compare "$DEV" --start-block="$SLBA_B" --block-count="$cnt" --data-size="$n" --data=/tmp/same ||
      fail "nvme compare of the data in place failed"
    if nvme compare "$DEV" --start-block="$SLBA_B" --block-count="$cnt" --data-size="$n" --data=/tmp/other \
      >/tmp/cmpout 2>&1; then
      fail "nvme compare of other data passed"
    fi
    grep -qi "compare" /tmp/cmpout || fail "nvme compare of other data failed otherwise: $(cat /tmp/cmpout)"
    mark "compare bytes=$n ok ($(tr "\n" " " </tmp/cmpout | head -c 120))"
  done
  read_range "$SLBA_B" /tmp/rb; cmp -s /tmp/rb /tmp/b || fail "a compare changed the data"
elif [ "${COMPARE:-0}" = 1 ]; then
  fail "the controller does not announce Compare (oncs=$oncs)"
else
  mark "compare not announced (oncs=$oncs): skipped"
fi

# Copy, as `nvme copy` sends it: the first 16 blocks of B, its halves swapped,
# over the start of A.
if [ $(( oncs & 256 )) -ne 0 ]; then
  mark "copy"
  fill
  CN=16
  [ "$NLB" -ge "$CN" ] || fail "RANGE_KB too small for the copy check"
  H=$(( CN / 2 ))
  nvme copy "$DEV" --sdlba="$SLBA_A" --slbs="$(( SLBA_B + H )),$SLBA_B" --blocks="$(( H - 1 )),$(( H - 1 ))" ||
    fail "nvme copy failed"
  dd if=/tmp/b of=/tmp/want bs="$LBS" skip="$H" count="$H" 2>/dev/null
  dd if=/tmp/b bs="$LBS" count="$H" 2>/dev/null >>/tmp/want
  dd if=/tmp/a bs="$LBS" skip="$CN" count=$(( NLB - CN )) 2>/dev/null >>/tmp/want
  read_range "$SLBA_A" /tmp/ra; cmp -s /tmp/ra /tmp/want || fail "the copy's destination differs"
  read_range "$SLBA_B" /tmp/rb; cmp -s /tmp/rb /tmp/b || fail "a copy changed its source"
  read_range "$SLBA_C" /tmp/rc; cmp -s /tmp/rc /tmp/c || fail "a copy changed the range after"
  mark "copy ok"
elif [ "${COPY:-0}" = 1 ]; then
  fail "the controller does not announce Copy (oncs=$oncs)"
else
  mark "copy not announced (oncs=$oncs): skipped"
fi

mark "flush"
fill
nvme flush "$DEV" || fail "nvme flush failed"
sync
blockdev --flushbufs "$DEV" || fail "BLKFLSBUF failed"
mark "flush ok"

disconnect
pass
