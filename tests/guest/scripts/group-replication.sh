# group-replication.sh: the Linux host's side of the replication suite
# (tests/tests/e2e_group_replication.rs): a host with native NVMe multipath,
# round-robin over one path per peer, against a group of three Quire peers and a
# volume with two copies of every page.  Peers a and b listen on the host side of a
# veth pair, c inside a network namespace behind it (the guest reaches both).
#
#  1. `nvme connect-all`: three paths, one namespace head; fio writes region 0
#     with crc32c verify.
#  2. A partition: fio writes and verifies region 1 again and again (a new seed
#     each pass, so that a stale block fails the verify) while the test cuts c off
#     from a, b, etcd and this host, and heals it 12 s later; the loop ends at the
#     first pass that starts after the test says c is back in sync (step 2).
#     Region 0 verifies again; three paths are live again.
#  3. A scrub: 64 KiB of random bytes written at SCRUB_PIECE (in 64 KiB units,
#     a piece of a page a leads); the test corrupts one member's copy in its device
#     file, checks that the corruption shows, and runs `quire scrub` (step 3);
#     then the piece reads back right through every path, round-robin, 6 times.
#  4. A peer killed for good: fio writes region 2 in a loop while the test kills c
#     with SIGKILL and a and b rebuild every copy c held on the peer of each set
#     that did not have it (step 4).  Then regions 0, 1 and 2 and the piece verify.
#
# Env: DISC_ADDR, DISC_PORT (a peer's discovery), NQN, CTRL_PORT (the test's step
#   counter at 10.0.2.2), PEERS (3), REGION_MB, SCRUB_PIECE.
# Console: "MARK phase N ..." lines, "PASS group-replication.sh".
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-120}
. ./lib.sh
need_env DISC_ADDR DISC_PORT NQN CTRL_PORT PEERS REGION_MB SCRUB_PIECE
WORK=/tmp/rep
mkdir -p "$WORK"
echo 4 > /proc/sys/kernel/printk
modprobe nvme-tcp

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

# looped_phase REGION STEP WHAT: phase STEP, fio_loop over REGION while the test
# makes WHAT happen; fails on any fio error
looped_phase() {
  fio_loop "$1" "$2" > "$WORK/loop$1.log" 2>&1 &
  _loop=$!
  mark "phase $2 writing"
  _rc=0
  wait "$_loop" || _rc=$?
  cat "$WORK/loop$1.log"
  [ "$_rc" -eq 0 ] || fail "fio failed across $3 (rc=$_rc)"
}

# ---- 1. one path per peer -----------------------------------------------------
mark "phase 1: connect-all through $DISC_ADDR:$DISC_PORT"
nvme connect-all -t tcp -a "$DISC_ADDR" -s "$DISC_PORT" --reconnect-delay=1 --ctrl-loss-tmo="$CTRL_LOSS_TMO" ||
  fail "nvme connect-all failed"
wait_until 30 "$PEERS live paths to $NQN" paths_are "$PEERS"
wait_until "$DEV_WAIT" "the namespace head of $NQN" find_dev
# Round-robin over the paths: every peer serves reads and takes writes from the host.
for s in /sys/class/nvme-subsystem/nvme-subsys*; do
  [ "$(cat "$s/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
  echo round-robin > "$s/iopolicy" || fail "cannot set the round-robin I/O policy"
  mark "iopolicy $(cat "$s/iopolicy")"
done
run_fio 0 1 p1
mark "phase 1 verified: $PEERS paths"

# ---- 2. a partition under I/O ---------------------------------------------------
looped_phase 1 2 "the partition"
verify_only 0 1 p2-region0
wait_until 60 "$PEERS live paths again" paths_are "$PEERS"
mark "phase 2 verified: no I/O error, $PEERS paths again"

# ---- 3. a scrub repairs a corrupted copy -------------------------------------------
head -c 65536 /dev/urandom > "$WORK/piece"
want=$(md5sum < "$WORK/piece" | cut -d' ' -f1)
dd if="$WORK/piece" of="$DEV" bs=64k seek="$SCRUB_PIECE" count=1 oflag=direct conv=fsync 2> /dev/null ||
  fail "writing the piece failed"
mark "phase 3 written: $want"
wait_until 120 "the test to corrupt a copy and scrub" step_at_least 3
# read_piece: the piece as read from the device, O_DIRECT (through the next path)
read_piece() { dd if="$DEV" bs=64k skip="$SCRUB_PIECE" count=1 iflag=direct 2> /dev/null | md5sum | cut -d' ' -f1; }
for i in 1 2 3 4 5 6; do
  got=$(read_piece)
  [ "$got" = "$want" ] || fail "read $i of the piece after the scrub: $got, not $want"
done
mark "phase 3 verified: the piece reads back right through every path"

# ---- 4. a peer killed for good under I/O ------------------------------------------
looped_phase 2 4 "the death of a peer"
verify_only 0 1 p4-region0
verify_only 1 "$(cat "$WORK/seed1")" p4-region1
verify_only 2 "$(cat "$WORK/seed2")" p4-region2
[ "$(read_piece)" = "$want" ] || fail "the piece changed"
mark "phase 4 verified: every region and the piece, $(live_paths) paths live"
nvme disconnect-all > /dev/null || fail "nvme disconnect-all failed"
pass
