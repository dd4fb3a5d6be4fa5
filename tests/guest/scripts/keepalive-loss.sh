# keepalive-loss.sh: connect with a short keep-alive timeout, then cut the
# guest's network for longer than that timeout so the target must give up
# on the controller (the e2e test checks that on the target side, between
# the "MARK link-down" and "MARK link-up" console lines), then restore the
# network and check that the Linux host reconnects and I/O works again.
# Env: PORT, NQN (see lib.sh); KATO (keep-alive timeout, s, default 2);
# DOWN_SECS (how long the link stays down, default 10); FREEZE_IF (interface
# to take down, default eth0; the self-test uses lo); RECONNECT_WAIT (s,
# default 60).  CTRL_LOSS_TMO defaults to 120 here so that the host keeps
# retrying while the link is down.
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-120}
. ./lib.sh
need_env PORT NQN
KATO=${KATO:-2}
DOWN_SECS=${DOWN_SECS:-10}
FREEZE_IF=${FREEZE_IF:-eth0}
RECONNECT_WAIT=${RECONNECT_WAIT:-60}

connect --keep-alive-tmo="$KATO"
kato_ms=$(cat "/sys/class/nvme/$CTRL/kato" 2>/dev/null || echo "?")
cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
dd if="$DEV" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null || fail "read before link-down failed"
mark "kato=${KATO}s sysfs-kato=$kato_ms cntlid=$cntlid"

mark "link-down $FREEZE_IF for ${DOWN_SECS}s"
ip link set "$FREEZE_IF" down
sleep "$DOWN_SECS"
ip link set "$FREEZE_IF" up
[ "$FREEZE_IF" != eth0 ] || ip route replace default via 10.0.2.2 dev eth0
mark "link-up $FREEZE_IF state=$(ctrl_state)"

# The host notices the dead association through its own keep-alive and
# reconnects (a new association, so normally a new controller ID).
wait_until "$RECONNECT_WAIT" "controller $CTRL to reconnect" ctrl_is live
wait_until "$DEV_WAIT" "the block device after reconnect" find_dev
dd if="$DEV" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null || fail "read after reconnect failed"
mark "reconnected cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid") (was $cntlid)"
dmesg | grep -iE 'nvme|keep-alive' | tail -n 20
disconnect
pass
