# group-multipath.sh: the Linux host's side of the group suite
# (tests/tests/e2e_group_multipath.rs): a host with native NVMe multipath against a
# group of Quire peers, each a path to one namespace.
#
#  1. `nvme connect-all --persistent` through one peer's discovery: one path per
#     live peer (distinct controller IDs and ANA groups, all optimized), one
#     namespace head; fio writes with crc32c verify over it.
#  2. fio under way, the test kills one peer with SIGKILL and starts it again: the
#     host's I/O on the lost path fails over to the others, which forward the lost
#     peer's pages and hold them until it is back: fio sees no error and verifies.
#  3. fio under way, the test starts a fourth peer: the persistent discovery
#     controller gets a discovery-log-changed event; like nvme-cli's udev rule, the
#     event handler runs `nvme connect-all` and a fourth path appears.
#  3b. Round-robin over the four paths, fio under way, the test stops the fourth
#     peer with SIGTERM: its path turns ANA inaccessible, the host moves its I/O to
#     the others (the peer leaves once no command came for a moment, which the test
#     checks): fio sees no error and verifies.
#  4. Everything disconnected, then one peer only (PORT_ONE): every page another
#     peer owns is forwarded. What phase 1 wrote (through every path) reads back and
#     verifies through that one peer; a new region is written and verified.
#
# Env: DISC_PORT (a peer's discovery port), NQN, PORT_ONE (one peer's I/O port),
#   CTRL_PORT (the test's step counter: "step N" on each connection), PEERS (the
#   group's size at the start), REGION_MB (default 32).
# Console: "MARK phase N ..." lines, "PASS group-multipath.sh".
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-60}
. ./lib.sh
need_env DISC_PORT NQN PORT_ONE CTRL_PORT PEERS
REGION_MB=${REGION_MB:-32}
WORK=/tmp/mp
mkdir -p "$WORK"
echo 4 > /proc/sys/kernel/printk
modprobe nvme-tcp


# fio_job REGION NAME [extra]: the options of a write+verify job over region REGION
fio_job() {
  echo "--name=$2 --filename=$DEV --ioengine=libaio --direct=1 --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset=$(( $1 * REGION_MB ))M --size=${REGION_MB}M --verify=crc32c --verify_fatal=1 --eta=never --randrepeat=0 --randseed=$(( 1000 + $1 ))"
}
# run_fio REGION NAME: write and verify region REGION; fails on any error
run_fio() {
  # shellcheck disable=SC2046
  fio $(fio_job "$1" "$2") --do_verify=1 --output="$WORK/$2.out" ||
    { cat "$WORK/$2.out"; fail "fio $2 failed"; }
  grep -Eq 'err= *0' "$WORK/$2.out" || { cat "$WORK/$2.out"; fail "fio $2 reported errors"; }
}

# A discovery-log-changed event (NVME_AEN=0x70f002) on a persistent discovery
# controller makes nvme-cli's udev rule run `nvme connect-all` against it; there is
# no udev here, busybox's `uevent` runs the same thing.
cat > "$WORK/on-uevent.sh" << 'EOF'
#!/bin/sh
[ "${NVME_AEN:-}" = 0x70f002 ] || exit 0
echo "MARK discovery log changed: event from $NVME_TRADDR:$NVME_TRSVCID"
nvme connect-all -t tcp -a "$NVME_TRADDR" -s "$NVME_TRSVCID" --reconnect-delay=1 --ctrl-loss-tmo=60 > /dev/null 2>&1
EOF
chmod +x "$WORK/on-uevent.sh"
busybox uevent "$WORK/on-uevent.sh" &
UEVENT_PID=$!

# ---- 1. one path per peer -----------------------------------------------------
mark "phase 1: connect-all through $ADDR:$DISC_PORT"
disc=$(nvme discover -t tcp -a "$ADDR" -s "$DISC_PORT") || fail "nvme discover failed"
echo "$disc" | grep -E '^(subnqn|trsvcid|traddr):'
entries=$(echo "$disc" | grep -Ec "^subnqn: +$NQN\$")
[ "$entries" -eq "$PEERS" ] || fail "the discovery log lists $NQN $entries times, not once per peer ($PEERS)"
nvme connect-all -t tcp -a "$ADDR" -s "$DISC_PORT" --persistent --reconnect-delay=1 --ctrl-loss-tmo=60 ||
  fail "nvme connect-all failed"
wait_until 30 "$PEERS live paths to $NQN" paths_are "$PEERS"
wait_until "$DEV_WAIT" "the namespace head of $NQN" find_dev
heads=0
for b in /sys/block/nvme*n*; do
  case $(basename "$b") in nvme*c*n*) continue ;; esac
  [ "$(cat "$(dirname "$(readlink -f "$b")")/subsysnqn" 2> /dev/null)" = "$NQN" ] && heads=$(( heads + 1 ))
done
[ "$heads" -eq 1 ] || fail "$heads namespace devices of $NQN, not one head for every path"
nvme list-subsys "$DEV" || true
cntlids=""
groups=""
for c in /sys/class/nvme/nvme*; do
  [ "$(cat "$c/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
  cntlids="$cntlids $(cat "$c/cntlid")"
done
for p in /sys/block/nvme*c*n*; do
  [ "$(cat "$(dirname "$(readlink -f "$p")")/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
  [ -e "$p/ana_state" ] || fail "path $p has no ANA state"
  [ "$(cat "$p/ana_state")" = optimized ] || fail "path $p is $(cat "$p/ana_state"), not optimized"
  groups="$groups $(cat "$p/ana_grpid")"
done
mark "controller IDs:$cntlids ANA groups:$groups"
[ "$(echo "$cntlids" | tr ' ' '\n' | grep -c .)" -eq "$PEERS" ] || fail "not one controller per peer"
[ "$(echo "$cntlids" | tr ' ' '\n' | grep . | sort -u | wc -l)" -eq "$PEERS" ] || fail "controller IDs repeat:$cntlids"
[ "$(echo "$groups" | tr ' ' '\n' | grep . | sort -u | wc -l)" -eq "$PEERS" ] || fail "ANA groups repeat:$groups"
run_fio 0 p1
mark "phase 1 verified: $PEERS paths"

# fio_across REGION PHASE STEP WHAT [FIO OPTIONS]: fio writes and verifies REGION
# in the background, "MARK phase PHASE writing"; once the test's step reaches STEP
# (it did WHAT meanwhile), fio must end without an error.
fio_across() {
  # shellcheck disable=SC2046
  fio $(fio_job "$1" "p$2") --do_verify=1 ${5:-} --output="$WORK/p$2.out" > /dev/null 2>&1 &
  FIO=$!
  mark "phase $2 writing"
  wait_until 120 "the test to $4" step_at_least "$3"
  rc=0
  wait "$FIO" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$WORK/p$2.out"; fail "fio failed while the test did $4 (rc=$rc)"; }
  grep -Eq 'err= *0' "$WORK/p$2.out" || { cat "$WORK/p$2.out"; fail "fio reported errors while the test did $4"; }
}

# ---- 2. a peer killed and restarted under I/O ----------------------------------
fio_across 1 2 2 "kill and restart a peer"
wait_until 60 "$PEERS live paths again" paths_are "$PEERS"
mark "phase 2 verified: no I/O error, $PEERS paths again"

# ---- 3. a peer joins under I/O ---------------------------------------------------
# shellcheck disable=SC2046
fio $(fio_job 2 p3) --do_verify=1 --output="$WORK/p3.out" > /dev/null 2>&1 &
FIO=$!
mark "phase 3 writing"
wait_until 90 "a new path after the discovery event" paths_are $(( PEERS + 1 ))
rc=0
wait "$FIO" || rc=$?
[ "$rc" -eq 0 ] || { cat "$WORK/p3.out"; fail "fio failed while a peer joined (rc=$rc)"; }
mark "phase 3 verified: $(( PEERS + 1 )) paths"

# ---- 3b. a peer leaves gently under I/O ------------------------------------------
for s in /sys/class/nvme-subsystem/nvme-subsys*; do
  [ "$(cat "$s/subsysnqn" 2> /dev/null)" = "$NQN" ] && echo round-robin > "$s/iopolicy"
done
# Four passes: still writing when the test stops the peer, however fast the machine.
fio_across 4 3b 3 "stop a peer" --loops=4
mark "phase 3b verified: no I/O error while a peer left"

# ---- 4. one path: everything forwarded ------------------------------------------
kill "$UEVENT_PID" 2> /dev/null || true
nvme disconnect-all > /dev/null || fail "nvme disconnect-all failed"
none_left() { ! ls /sys/class/nvme/nvme* > /dev/null 2>&1; }
wait_until 15 "every controller gone" none_left
PORT=$PORT_ONE
connect
# shellcheck disable=SC2046
fio $(fio_job 0 p1) --verify_only --output="$WORK/p4a.out" ||
  { cat "$WORK/p4a.out"; fail "what phase 1 wrote does not verify through one peer"; }
run_fio 3 p4
mark "phase 4 verified: one path, $(live_paths) live"
disconnect
pass
