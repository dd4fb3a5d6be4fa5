# discover-connect.sh: discovery, connect, identify, list, disconnect.
# Env: PORT, DISC_PORT, NQN (see lib.sh); optional checks: EXPECT_MODEL,
# EXPECT_SERIAL (exact, after trimming), EXPECT_SIZE (namespace bytes).
. ./lib.sh
need_env PORT NQN DISC_PORT
modprobe nvme-tcp

mark "discover $ADDR:$DISC_PORT"
disc=$(nvme discover -t tcp -a "$ADDR" -s "$DISC_PORT") || fail "nvme discover failed"
echo "$disc"
echo "$disc" | grep -Eq "^subnqn: +$NQN\$" || fail "discovery log does not list $NQN"
# The entry for our subsystem must name the I/O port the host should use.
entry=$(echo "$disc" | awk -v nqn="$NQN" '
  /^=====Discovery Log Entry/ { if (hit) exit; e = "" }
  { e = e $0 "\n" }
  /^subnqn:/ && $2 == nqn { hit = 1 }
  END { if (hit) printf "%s", e }')
echo "$entry" | grep -Eq "^trtype: +tcp\$" || fail "discovery entry for $NQN is not trtype tcp"
echo "$entry" | grep -Eq "^trsvcid: +$PORT\$" || fail "discovery entry for $NQN does not give trsvcid $PORT"
mark "discovered"

connect

mark "id-ctrl"
idc=$(nvme id-ctrl "/dev/$CTRL") || fail "nvme id-ctrl failed"
echo "$idc"
field() { echo "$1" | awk -F: -v k="$2" '{ f = $1; gsub(/ /, "", f) } f == k { sub(/^[^:]*: ?/, ""); sub(/ +$/, ""); print; exit }'; }
mn=$(field "$idc" mn); sn=$(field "$idc" sn); subnqn=$(field "$idc" subnqn)
[ -n "$mn" ] || fail "id-ctrl: empty model number"
[ -n "$sn" ] || fail "id-ctrl: empty serial number"
[ "$subnqn" = "$NQN" ] || fail "id-ctrl: subnqn '$subnqn' != '$NQN'"
[ -z "${EXPECT_MODEL:-}" ] || [ "$mn" = "$EXPECT_MODEL" ] || fail "id-ctrl: model '$mn' != '$EXPECT_MODEL'"
[ -z "${EXPECT_SERIAL:-}" ] || [ "$sn" = "$EXPECT_SERIAL" ] || fail "id-ctrl: serial '$sn' != '$EXPECT_SERIAL'"
[ "$(tr -d ' ' < "/sys/class/nvme/$CTRL/model")" = "$(echo "$mn" | tr -d ' ')" ] || fail "sysfs model differs from id-ctrl"
mark "model='$mn' serial='$sn'"

mark "id-ns"
idn=$(nvme id-ns "$DEV") || fail "nvme id-ns failed"
echo "$idn"
nsze=$(field "$idn" nsze); ncap=$(field "$idn" ncap)
flbas=$(field "$idn" flbas)
fmt=$(( flbas & 0xf ))
lbads=$(echo "$idn" | awk -v f="lbaf +$fmt " '$0 ~ "^" f ":" { for (i = 1; i <= NF; i++) if ($i ~ /^lbads:/) { split($i, a, ":"); print a[2] } }')
[ -n "$lbads" ] || fail "id-ns: no lbads for format $fmt"
size=$(( nsze * (1 << lbads) ))
[ "$size" -gt 0 ] || fail "id-ns: namespace size is 0"
[ "$(( ncap ))" -le "$(( nsze ))" ] || fail "id-ns: ncap $ncap > nsze $nsze"
[ "$size" = "$(dev_bytes)" ] || fail "id-ns size $size != block device size $(dev_bytes)"
[ "$(( 1 << lbads ))" = "$(lba_size)" ] || fail "id-ns LBA size $(( 1 << lbads )) != block device's $(lba_size)"
[ -z "${EXPECT_SIZE:-}" ] || [ "$size" = "$EXPECT_SIZE" ] || fail "namespace size $size != expected $EXPECT_SIZE"
mark "size=$size lba=$(( 1 << lbads ))"

mark "list"
lst=$(nvme list) || fail "nvme list failed"
echo "$lst"
echo "$lst" | grep -q "^$DEV " || fail "nvme list does not show $DEV"

# a read through the block layer, to prove the I/O queues work
dd if="$DEV" of=/dev/null bs=4096 count=16 iflag=direct 2>/dev/null || fail "read of $DEV failed"

disconnect
pass
