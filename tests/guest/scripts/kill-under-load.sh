# kill-under-load.sh: the Linux host's side of the kill -9 under load test
# (tests/tests/e2e_kill_under_load.rs).  One connection for all cycles.  In each
# cycle fio writes one region of the namespace with crc32c verify headers,
# logging every write that completes successfully (the completion-latency log,
# with offsets) and saving its verify state; meanwhile the test kills Quire with
# SIGKILL (after a random number of writes) and starts it again on the same data
# directory and ports.  Once the test says Quire is back and the host has
# reconnected, fio verifies the job's blocks and every write that fio saw
# acknowledged must be among those that verify.
#
# Why not `fio --verify_only --verify_state_load=1` alone: the saved state holds
# the number of writes issued and the last QD completions, and fio assumes that
# only the last QD writes issued can be missing.  Completions do not come in
# order, though: a write to a never-written page waits for the page's allocation
# while later writes to mapped pages complete, so an unacknowledged write can be
# older than the last QD (seen: qd=16, a write 17 from the end in flight at the
# kill), and fio then reports a write lost that it was never told was written.
# So the state only gives the count of writes issued; the completion log says
# exactly which were acknowledged.
#
# Env: PORT, NQN (see lib.sh);
#   PLAN       one word per cycle, MODE,RW,BS,QD,FSYNC,SEED,SIZE_MB:
#              MODE  ff: fast_io_fail_tmo=0, the I/O in flight at the kill fails
#                        and fio stops with an error (EIO); every write it saw
#                        complete must verify, the failed ones may or may not;
#                    rq: fast_io_fail_tmo off, the host requeues the I/O in flight
#                        and retries it after the reconnect: fio must finish its
#                        job without an error and every block must verify;
#              RW write|randwrite, BS fio --bsrange (4k-128k), QD --iodepth,
#              FSYNC --fsync (0: none), SEED --randseed, SIZE_MB how much of the
#              cycle's region the job writes (at most REGION_MB);
#   CTRL_PORT  TCP port on $ADDR that answers "restarts N" (N = times the test
#              has restarted Quire) and closes: the test's signal that the kill
#              of cycle I is over (N > I);
#   REGION_MB  region size (default 32; a multiple of the 4 MiB page): cycle I
#              writes region I mod (namespace / REGION_MB).  A region written
#              before is first verified again (its data has survived every kill
#              since), then deallocated, so that every cycle writes never-written
#              (unmapped) pages;
#   RESTART_WAIT  seconds to wait for the test's restart signal (default 120).
# CTRL_LOSS_TMO defaults to 60 here: the host keeps reconnecting while Quire is down.
# Console: "MARK cycle I writing ...", "MARK cycle I write-ended rc=R ...",
# "MARK cycle I verified ...", "MARK reverified cycle J ...", "MARK sweep verified N
# regions", "PASS kill-under-load.sh".
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-60}
. ./lib.sh
need_env PORT NQN PLAN CTRL_PORT
REGION_MB=${REGION_MB:-32}
RESTART_WAIT=${RESTART_WAIT:-120}
WORK=/tmp/kill
mkdir -p "$WORK"
# Kernel messages only from error level up on the console (a kill floods it with
# requeue/failover warnings that could split MARK lines); each cycle prints its
# own share of the kernel log instead (dmesg -c), which also keeps the ring
# buffer from wrapping in a long soak.
echo 4 > /proc/sys/kernel/printk

connect
regions=$(( $(dev_bytes) / (REGION_MB * 1048576) ))
[ "$regions" -ge 1 ] || fail "namespace ($(dev_bytes) bytes) smaller than REGION_MB=$REGION_MB"
ncycles=$(echo "$PLAN" | wc -w)
mark "kill-under-load: $ncycles cycles, $regions regions of $REGION_MB MiB"
dmesg -c > /dev/null

# restarts: the test's restart count, or nothing if the control port does not answer
restarts() { timeout 10 nc "$ADDR" "$CTRL_PORT" < /dev/null 2> /dev/null | sed -n 's/^restarts \([0-9][0-9]*\)$/\1/p'; }
restarted_more_than() { _n=$(restarts || true); [ -n "$_n" ] && [ "$_n" -gt "$1" ]; }
# json_nth FILE KEY N: the Nth integer value of KEY in fio's JSON output
# (io_bytes and total_ios come as read, write, trim[, sync])
json_nth() { sed -n "s/^ *\"$2\" : \([0-9][0-9]*\),*\$/\1/p" "$1" | sed -n "${3}p"; }
# state_issued DIR JOB: writes issued by the job, from its saved verify state
# (struct thread_io_list: numberio is the u64 at byte 40 of the file)
state_issued() { od -An -tu8 -j40 -N8 "$1/local-$2-0-verify.state" | tr -d ' '; }
kernel_log() { dmesg -c | { grep -v -e 'path - requeuing I/O' -e 'path - failing I/O' || true; } | sed 's/^/  kernel: /'; }

# verify_cycle I WHY: fio --verify_only over all of cycle I's job (the same job
# options: fio replays the offsets, sizes and seeds), going on past blocks that do
# not verify (--continue_on_error=verify), and checks the outcome:
#  - no acknowledged write (in DIR/acked, from the completion log) is among the
#    blocks that do not verify (DIR/bad);
#  - rq: no block at all fails, and the job issued all of its writes;
#  - a cycle verified before (a region's re-check, the final sweep) fails exactly
#    the blocks it failed the first time: what the restart left must not change.
# Sets VERIFIED (blocks that verified), BAD (blocks that did not).
verify_cycle() {
  _d=$WORK/c$1
  read -r _mode _qd _issued _acked_bytes _wrc _nacked < "$_d/result"
  # shellcheck disable=SC2046  # the job's options, one word each
  (cd "$_d" && fio $(cat args) --iodepth=1 --verify_only --verify_state_save=0 --verify_fatal=0 \
    --continue_on_error=verify --eta=never --output-format=json --output=verify.json 2> verify.err) || true
  _reads=$(json_nth "$_d/verify.json" total_ios 1)
  [ -n "$_reads" ] || { cat "$_d/verify.err" "$_d/verify.json"; fail "cycle $1: fio verify ($2) gave no statistics"; }
  if grep -v -e '^verify: ' -e '^crc32c: ' -e 'requested block' -e '^ *$' -e '^fio: pid=' -e 'CRC' "$_d/verify.err" |
    grep -q .; then
    cat "$_d/verify.err"
    fail "cycle $1: fio verify ($2) failed otherwise than on bad blocks (an I/O error?)"
  fi
  sed -n 's/.*requested block: offset=\([0-9][0-9]*\).*/\1/p' "$_d/verify.err" | sort -un > "$_d/bad.new"
  BAD=$(wc -l < "$_d/bad.new")
  VERIFIED=$(( _reads - BAD ))
  _what="cycle $1 ($2): $VERIFIED blocks verify, $BAD do not, of $_reads; $_nacked of $_issued writes issued were acknowledged (mode=$_mode qd=$_qd write-rc=$_wrc)"
  # acknowledged writes whose blocks do not verify: lost or corrupted data
  awk 'NR == FNR { bad[$1] = 1; next } ($1 in bad)' "$_d/bad.new" "$_d/acked" > "$_d/lost"
  if [ -s "$_d/lost" ]; then
    echo "acknowledged writes that do not read back (offset within the namespace, bytes):"
    awk 'NR == FNR { lost[$1] = 1; next } ($1 in lost) { print "  offset=" $1 " length=" $2 }' "$_d/lost" "$_d/acked-len" | head -n 20
    grep -F -f "$_d/lost" "$_d/verify.err" | head -n 20
    fail "$_what: $(wc -l < "$_d/lost") acknowledged write(s) lost or corrupted (job: $(cat "$_d/args"))"
  fi
  [ "$_reads" -ge "$_issued" ] || fail "$_what: the verify read fewer blocks than the job issued"
  if [ "$_mode" = rq ]; then
    [ "$BAD" -eq 0 ] || { head -n 20 "$_d/verify.err"; fail "$_what: every block must verify"; }
    { [ "$_nacked" -eq "$_issued" ] && [ "$_reads" -eq "$_issued" ]; } || fail "$_what: all writes issued and acknowledged"
  fi
  if [ -f "$_d/bad" ]; then
    cmp -s "$_d/bad" "$_d/bad.new" ||
      fail "$_what: the blocks that do not verify changed since the first check ($(wc -l < "$_d/bad") then)"
  else
    mv "$_d/bad.new" "$_d/bad"
  fi
}

i=0
for c in $PLAN; do
  # shellcheck disable=SC2046
  set -- $(echo "$c" | tr , ' ')
  [ "$#" -eq 7 ] || fail "cycle $i: bad PLAN word '$c'"
  mode=$1 rw=$2 bs=$3 qd=$4 fsync=$5 seed=$6 size=$7
  [ "$size" -le "$REGION_MB" ] || fail "cycle $i: SIZE_MB $size > REGION_MB $REGION_MB"
  case $mode in ff) fail_tmo=0 ;; rq) fail_tmo=-1 ;; *) fail "cycle $i: bad mode '$mode' in PLAN" ;; esac
  wait_until 60 "controller $CTRL to be live before cycle $i" ctrl_is live
  wait_until "$DEV_WAIT" "the block device before cycle $i" find_dev
  r=$(( i % regions ))
  off=$(( r * REGION_MB ))
  if [ -f "$WORK/region-$r" ]; then
    prev=$(cat "$WORK/region-$r")
    verify_cycle "$prev" "again, before cycle $i reuses region $r"
    mark "reverified cycle $prev: $VERIFIED blocks verify, $BAD do not (as before)"
    /usr/sbin/blkdiscard --offset $(( off * 1048576 )) --length $(( REGION_MB * 1048576 )) "$DEV" ||
      fail "cycle $i: deallocating region $r failed"
  fi
  d=$WORK/c$i
  mkdir -p "$d"
  args="--name=c$i --filename=$DEV --ioengine=libaio --direct=1 --rw=$rw --bsrange=$bs --offset=${off}M --size=${size}M --randseed=$seed --verify=crc32c"
  [ "$fsync" = 0 ] || args="$args --fsync=$fsync"
  echo "$args" > "$d/args"
  echo "$fail_tmo" > "/sys/class/nvme/$CTRL/fast_io_fail_tmo" || fail "cannot set fast_io_fail_tmo"
  mark "cycle $i writing mode=$mode rw=$rw bs=$bs iodepth=$qd fsync=$fsync seed=$seed region=$r offset=${off}M size=${size}M"
  wrc=0
  # --write_lat_log with --log_offset: c$i_clat.1.log has one line per write that
  # completed successfully: "msec, clat, ddir, bytes, offset, prio"
  # shellcheck disable=SC2086
  (cd "$d" && fio $args --iodepth="$qd" --do_verify=0 --verify_state_save=1 \
    --write_lat_log="c$i" --log_offset=1 --eta=never --output-format=json --output=write.json 2> write.err) || wrc=$?
  if [ ! -f "$d/local-c$i-0-verify.state" ] && [ "$wrc" -ge 128 ] && [ "$mode" = ff ]; then
    # fio itself died of a signal on its error path (seen: bookworm's fio 3.33,
    # "free(): double free detected" after EIO, rc=134), before saving its state or
    # its completion log: nothing says which writes it saw acknowledged. Not a
    # target failure, but not a verified cycle either: the kill and restart still
    # happen, the region is discarded, and more than FIO_CRASHES_MAX such cycles
    # fail the run.
    fio_crashes=$(( ${fio_crashes:-0} + 1 ))
    sed 's/^/  fio: /' "$d/write.err" | tail -n 5
    [ "$fio_crashes" -le "${FIO_CRASHES_MAX:-2}" ] || fail "cycle $i: fio crashed (rc=$wrc) in $fio_crashes cycles"
    wait_until "$RESTART_WAIT" "the test to restart Quire in cycle $i" restarted_more_than "$i"
    wait_until 60 "controller $CTRL to reconnect after the restart of cycle $i" ctrl_is live
    wait_until "$DEV_WAIT" "the block device after the restart of cycle $i" find_dev
    kernel_log
    rm -f "$WORK/region-$r"
    /usr/sbin/blkdiscard --offset $(( off * 1048576 )) --length $(( REGION_MB * 1048576 )) "$DEV" ||
      fail "cycle $i: deallocating region $r failed"
    mark "cycle $i verified: NOT CHECKED, fio crashed (rc=$wrc, its bug: stderr above) and left no record of its acknowledged writes; Quire restarted and the host reconnected"
    i=$(( i + 1 ))
    continue
  fi
  [ -f "$d/local-c$i-0-verify.state" ] || { cat "$d/write.err"; fail "cycle $i: fio saved no verify state (rc=$wrc)"; }
  [ -f "$d/c${i}_clat.1.log" ] || { cat "$d/write.err"; fail "cycle $i: fio wrote no completion log (rc=$wrc)"; }
  issued=$(state_issued "$d" "c$i")
  acked_bytes=$(json_nth "$d/write.json" io_bytes 2)
  [ -n "$acked_bytes" ] || { cat "$d/write.err" "$d/write.json"; fail "cycle $i: no write statistics from fio (rc=$wrc)"; }
  # the acknowledged writes: offsets relative to the namespace, as fio's verify
  # messages give them; the log must account for every acknowledged byte
  awk -F', *' '$3 == 1 { print $5 " " $4 }' "$d/c${i}_clat.1.log" | sort -n > "$d/acked-len"
  cut -d' ' -f1 "$d/acked-len" > "$d/acked"
  nacked=$(wc -l < "$d/acked")
  logged=$(awk '{ s += $2 } END { printf "%d\n", s }' "$d/acked-len")
  [ "$logged" = "$acked_bytes" ] || fail "cycle $i: the completion log has $logged bytes, fio's statistics $acked_bytes"
  [ "$(sort -u "$d/acked" | wc -l)" = "$nacked" ] || fail "cycle $i: a block was written twice (the job must write each once)"
  echo "$mode $qd $issued $acked_bytes $wrc $nacked" > "$d/result"
  echo "$i" > "$WORK/region-$r"
  mark "cycle $i write-ended rc=$wrc issued=$issued acknowledged=$nacked acked_bytes=$acked_bytes"
  # the test kills Quire during these writes and starts it again
  wait_until "$RESTART_WAIT" "the test to restart Quire in cycle $i" restarted_more_than "$i"
  wait_until 60 "controller $CTRL to reconnect after the restart of cycle $i" ctrl_is live
  wait_until "$DEV_WAIT" "the block device after the restart of cycle $i" find_dev
  kernel_log
  case $mode in
    ff)
      [ "$wrc" -ne 0 ] || fail "cycle $i: fio's writes all succeeded although Quire was killed during them with fast_io_fail_tmo=0"
      grep -q 'Input/output error' "$d/write.err" || { cat "$d/write.err"; fail "cycle $i: fio failed, but not with EIO"; }
      head -n 3 "$d/write.err" | sed 's/^/  /'
      ;;
    rq)
      [ "$wrc" -eq 0 ] || { cat "$d/write.err"; fail "cycle $i: a write failed although the host requeues I/O across the restart (rc=$wrc)"; }
      ;;
  esac
  verify_cycle "$i" "after the restart"
  mark "cycle $i verified: all $nacked acknowledged writes read back; $VERIFIED blocks verify, $BAD do not (issued $issued)"
  i=$(( i + 1 ))
done

# Every region's last cycle once more: its data has survived every later kill.
n=0
r=0
while [ "$r" -lt "$regions" ]; do
  if [ -f "$WORK/region-$r" ]; then
    verify_cycle "$(cat "$WORK/region-$r")" "final sweep"
    n=$(( n + 1 ))
  fi
  r=$(( r + 1 ))
done
mark "sweep verified $n regions"
kernel_log
disconnect
pass
