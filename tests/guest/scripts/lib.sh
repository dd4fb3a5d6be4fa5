# lib.sh: helpers shared by the guest-side test scripts (sourced, busybox ash).
#
# The scripts run inside the e2e guest (run-guest.sh) as the real Linux
# NVMe/TCP host against a target on the host machine.  They take their
# parameters from environment variables:
#   PORT        the target's NVMe/TCP I/O port                    (required)
#   NQN         the subsystem NQN to connect to                   (required)
#   DISC_PORT   the discovery port                          (default: $PORT)
#   ADDR        the target's address                    (default: 10.0.2.2)
#               10.0.2.2 is the host's 127.0.0.1 under QEMU user networking
#               and the only address tests may use; the scripts' self-test
#               points ADDR at a kernel nvmet target inside the guest.
#   NSID        namespace to use                               (default: 1)
#   CTRL_LOSS_TMO, RECONNECT_DELAY   nvme connect options  (default: 5, 1)
#   CONNECT_OPTS  extra "nvme connect" options
#   DEV_WAIT    seconds to wait for the namespace's block device (default 30)
#   HOSTNQN, HOSTID  the host identity to connect with (default: the random
#               one init.sh made at boot, printed on its GUEST_UP line)
# Output: "MARK <what>" progress lines, "FAIL: <why>" and diagnostics on
# error (exit code non-zero), "PASS <script>" on success.
set -eu
set -o pipefail

ADDR=${ADDR:-10.0.2.2}
DISC_PORT=${DISC_PORT:-${PORT:-}}
NSID=${NSID:-1}
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-5}
RECONNECT_DELAY=${RECONNECT_DELAY:-1}
CONNECT_OPTS=${CONNECT_OPTS:-}
DEV_WAIT=${DEV_WAIT:-30}
SCRIPT_NAME=${SCRIPT_NAME:-$(basename "$0")}
CTRL=
DEV=
if [ -n "${HOSTNQN:-}" ]; then echo "$HOSTNQN" > /etc/nvme/hostnqn; fi
if [ -n "${HOSTID:-}" ]; then echo "$HOSTID" > /etc/nvme/hostid; fi

mark() { echo "MARK $*"; }
fail() { echo "FAIL: $SCRIPT_NAME: $*"; exit 1; }
need_env() {
  for v in "$@"; do
    eval "[ -n \"\${$v:-}\" ]" || fail "environment variable $v is not set"
  done
}

# centiseconds since boot (deadline arithmetic without floating point)
now_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }

# wait_until SECS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds;
# fail after SECS seconds.
wait_until() {
  _secs=$1 _what=$2
  shift 2
  _end=$(( $(now_cs) + _secs * 100 ))
  until "$@"; do
    [ "$(now_cs)" -lt "$_end" ] || fail "timed out after ${_secs}s waiting for $_what"
    sleep 0.2
  done
}

# On any failure: show what the host side saw (kernel log, controllers).
on_exit() {
  _rc=$?
  if [ "$_rc" -ne 0 ]; then
    echo "=== $SCRIPT_NAME failed (rc=$_rc): diagnostics"
    for c in /sys/class/nvme/nvme*; do
      [ -e "$c" ] || continue
      echo "$(basename "$c"): state=$(cat "$c/state" 2>/dev/null) nqn=$(cat "$c/subsysnqn" 2>/dev/null) addr=$(cat "$c/address" 2>/dev/null)"
    done
    dmesg | tail -n 40
    # leave no controller behind for a next script in the same guest
    [ -z "$CTRL" ] || nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  fi
}
trap on_exit EXIT

# find_ctrl: set CTRL (e.g. nvme0) to the TCP controller for $NQN at $ADDR:$PORT
find_ctrl() {
  CTRL=
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "$NQN" ] || continue
    [ "$(cat "$c/transport")" = tcp ] || continue
    a=",$(cat "$c/address"),"
    case $a in *",traddr=$ADDR,"*) ;; *) continue ;; esac
    case $a in *",trsvcid=$PORT,"*) ;; *) continue ;; esac
    CTRL=$(basename "$c")
    return 0
  done
  return 1
}

# find_dev: set DEV (e.g. /dev/nvme0n1) to the block device of namespace
# $NSID of $NQN.  With native multipath (Debian's default) that is the
# subsystem's head device; hidden per-path devices (nvmeXcYnZ) are skipped.
find_dev() {
  DEV=
  for b in /sys/block/nvme*n*; do
    [ -e "$b" ] || continue
    case $(basename "$b") in nvme*c*n*) continue ;; esac
    parent=$(dirname "$(readlink -f "$b")")
    [ "$(cat "$parent/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    [ "$(cat "$b/nsid" 2>/dev/null || echo 1)" = "$NSID" ] || continue
    [ -b "/dev/$(basename "$b")" ] || continue
    DEV=/dev/$(basename "$b")
    return 0
  done
  return 1
}

ctrl_state() { cat "/sys/class/nvme/$CTRL/state" 2>/dev/null || echo gone; }

# shellcheck disable=SC2120  # options are optional
# connect [extra nvme-connect options]: connect to $NQN at $ADDR:$PORT and
# wait (bounded) for the controller and the namespace's block device.
connect() {
  modprobe nvme-tcp
  mark "connect $ADDR:$PORT $NQN"
  # shellcheck disable=SC2086
  nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" \
    --ctrl-loss-tmo="$CTRL_LOSS_TMO" --reconnect-delay="$RECONNECT_DELAY" $CONNECT_OPTS "$@" ||
    fail "nvme connect to $ADDR:$PORT $NQN failed"
  wait_until "$DEV_WAIT" "the controller of $NQN" find_ctrl
  wait_until "$DEV_WAIT" "controller $CTRL to be live" ctrl_is live
  wait_until "$DEV_WAIT" "the block device of $NQN namespace $NSID" find_dev
  mark "connected ctrl=$CTRL dev=$DEV cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")"
}
ctrl_is() { [ "$(ctrl_state)" = "$1" ]; }
no_ctrl() { ! find_ctrl; }

# disconnect: disconnect every controller of $NQN and wait until it is gone.
disconnect() {
  out=$(nvme disconnect -n "$NQN") || fail "nvme disconnect -n $NQN failed"
  echo "$out"
  case $out in *"disconnected 0 "*) fail "nvme disconnect found no controller for $NQN" ;; esac
  wait_until 15 "the controllers of $NQN to go away" no_ctrl
  mark "disconnected"
}

# lba_size: the namespace's logical block size in bytes
lba_size() { cat "/sys/block/$(basename "$DEV")/queue/logical_block_size"; }
# dev_bytes: the namespace's size in bytes
dev_bytes() { echo $(( $(cat "/sys/block/$(basename "$DEV")/size") * 512 )); }

# step: the count of the test's step counter (CTRL_PORT at $ADDR, "step N");
# step_at_least N: it has reached N
step() { timeout 10 nc "$ADDR" "$CTRL_PORT" < /dev/null 2> /dev/null | sed -n 's/^step \([0-9][0-9]*\)$/\1/p'; }
step_at_least() { _n=$(step || true); [ -n "$_n" ] && [ "$_n" -ge "$1" ]; }

# live_paths: the live TCP controllers of $NQN (multipath: one per path)
live_paths() {
  _n=0
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
    [ "$(cat "$c/state" 2> /dev/null)" = live ] || continue
    _n=$(( _n + 1 ))
  done
  echo "$_n"
}
paths_are() { [ "$(live_paths)" -eq "$1" ]; }

# ana_states: the ANA state of every path to NQN's namespace as the host sees it
# (optimized, non-optimized, ...), sorted, on one line
ana_states() {
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
    for ns in "$c"/nvme*c*n*; do
      [ -e "$ns/ana_state" ] && cat "$ns/ana_state"
    done
  done | sort | tr '\n' ' '
}
# ana_states_are STATES: ana_states is exactly STATES (space-separated, sorted)
ana_states_are() { [ "$(ana_states)" = "$1 " ]; }

# ---- fio over regions of REGION_MB (in WORK), for the group scripts ----------------
# fio_job REGION SEED NAME: a write+verify job over region REGION with seed SEED
fio_job() {
  echo "--name=$3 --filename=$DEV --ioengine=libaio --direct=1 --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset=$(( $1 * REGION_MB ))M --size=${REGION_MB}M --verify=crc32c --verify_fatal=1 --eta=never --randrepeat=0 --randseed=$2"
}
# run_fio REGION SEED NAME: write and verify region REGION; fails on any error
run_fio() {
  # shellcheck disable=SC2046
  fio $(fio_job "$1" "$2" "$3") --do_verify=1 --output="$WORK/$3.out" ||
    { cat "$WORK/$3.out"; fail "fio $3 failed"; }
  grep -Eq 'err= *0' "$WORK/$3.out" || { cat "$WORK/$3.out"; fail "fio $3 reported errors"; }
}
# verify_only REGION SEED NAME: what run_fio REGION SEED wrote is still there
verify_only() {
  # shellcheck disable=SC2046
  fio $(fio_job "$1" "$2" "$3") --verify_only --output="$WORK/$3.out" ||
    { cat "$WORK/$3.out"; fail "region $1 (seed $2) does not verify: $3"; }
}
# fio_loop REGION STEP: run_fio over REGION, a new seed each pass, until a pass
# starts after the test's step reached STEP; the last seed goes to $WORK/seedREGION
fio_loop() {
  _pass=0
  while :; do
    _seed=$(( 1000 * ($1 + 1) + _pass ))
    run_fio "$1" "$_seed" "r$1-$_pass"
    echo "$_seed" > "$WORK/seed$1"
    _pass=$(( _pass + 1 ))
    if step_at_least "$2"; then break; fi
  done
  echo "MARK region $1: $_pass passes written and verified"
}

# phase_while STEP WHAT CMD...: phase STEP, CMD (a loop of fio runs) in the
# background while the test makes WHAT happen, its output shown after; fails on any
# error of it
phase_while() {
  _step=$1 _what=$2
  shift 2
  "$@" > "$WORK/phase$_step.log" 2>&1 &
  _loop=$!
  mark "phase $_step writing"
  _rc=0
  wait "$_loop" || _rc=$?
  cat "$WORK/phase$_step.log"
  [ "$_rc" -eq 0 ] || fail "fio failed across $_what (rc=$_rc)"
}
# looped_phase REGION STEP WHAT: phase STEP, fio_loop over REGION while the test
# makes WHAT happen
looped_phase() { phase_while "$2" "$3" fio_loop "$1" "$2"; }

# group_phase_one WORK: the group scripts' start: WORK made, the kernel quiet, paths
# to every peer (connect_all_round_robin), region 0 written and verified
group_phase_one() {
  WORK=$1
  mkdir -p "$WORK"
  echo 4 > /proc/sys/kernel/printk
  modprobe nvme-tcp
  connect_all_round_robin
  run_fio 0 1 p1
  mark "phase 1 verified: $PEERS paths"
}

# connect_all_round_robin: `nvme connect-all` through DISC_ADDR:DISC_PORT, one live
# path per peer (PEERS), the namespace head in DEV, and the round-robin I/O policy
# (every peer serves reads and takes writes from the host)
connect_all_round_robin() {
  mark "phase 1: connect-all through $DISC_ADDR:$DISC_PORT"
  nvme connect-all -t tcp -a "$DISC_ADDR" -s "$DISC_PORT" --reconnect-delay=1 --ctrl-loss-tmo="$CTRL_LOSS_TMO" ||
    fail "nvme connect-all failed"
  wait_until 30 "$PEERS live paths to $NQN" paths_are "$PEERS"
  wait_until "$DEV_WAIT" "the namespace head of $NQN" find_dev
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$s/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
    echo round-robin > "$s/iopolicy" || fail "cannot set the round-robin I/O policy"
    mark "iopolicy $(cat "$s/iopolicy")"
  done
}

pass() { mark "pass"; echo "PASS $SCRIPT_NAME"; }
