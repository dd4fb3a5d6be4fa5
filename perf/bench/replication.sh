#!/bin/bash
# Benchmark (not a test): what two copies of every page cost, and what losing a peer
# costs. Three peers (A, B, C) with RAM devices and one reactor each, and etcd;
# quire-perf connects to A only (its worker busy-polls on core 1, the three reactors
# share core 0 in hybrid mode: on a 2-core machine the figures are a lower bound of
# what three machines do). Volume "one" keeps one copy of each page, "two" two; both
# spread over the three peers, so the same share of I/O is forwarded.
#   1. 4 KiB random writes at QD1 and QD32 on "one" and "two", alternating, PAIRS
#      pairs of TIME s: IOPS, p50, p99, and the medians of the per-pair ratios.
#   2. Failover: QD1 writes to "two" while C is killed with SIGKILL (not restarted):
#      the longest write (about the time from C's death to the first write completed
#      without it: the lease TTL plus the coordinator's turn) and the run's errors.
#   3. Rebuild: C stays away past replication.replace_after_s (1 s here), its copies
#      are rebuilt on A and B (rebuild_mb_s, default 200) while QD1 writes to "one"
#      run: the bytes and seconds of each member's copy (from the leaders' logs), and
#      the host's p50/p99 during the copy against before it.
#
#   perf/bench/replication.sh                   # 3 pairs, 5 s per run
#   PAIRS=5 TIME=10 RATE=100 perf/bench/replication.sh
BENCH=replication
. "$(dirname "$0")/group-lib.sh"
group_up A B C
q volume create one --size 1G --page-size 4M --replicas 1 > /dev/null
q volume create two --size 1G --page-size 4M --replicas 2 > /dev/null
for _ in $(seq 100); do q volume list | grep -q '^two ' && break; sleep 0.1; done
sleep 1
for v in one two; do "$PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "$(trid $v)" > /dev/null; done

echo "== 1. one copy against two, 4 KiB random writes ($PAIRS pairs of ${TIME} s)"
printf '%-8s %-6s %10s %9s %9s\n' qd volume IOPS p50_us p99_us
declare -A R P50 P99
for pair in $(seq "$PAIRS"); do
  for qd in 1 32; do
    if [ $((pair % 2)) = 1 ]; then a=$(run one $qd); b=$(run two $qd); else b=$(run two $qd); a=$(run one $qd); fi
    set -- $a; printf '%-8s %-6s %10s %9s %9s\n' "qd$qd" one "$1" "$2" "$3"
    set -- $b; printf '%-8s %-6s %10s %9s %9s\n' "qd$qd" two "$1" "$2" "$3"
    set -- $a $b
    R[$qd]+="$(awk -v x="$1" -v y="$5" 'BEGIN{printf "%.3f ", y/x}')"
    P50[$qd]+="$(awk -v x="$2" -v y="$6" 'BEGIN{printf "%.1f ", y-x}')"
    P99[$qd]+="$(awk -v x="$3" -v y="$7" 'BEGIN{printf "%.1f ", y-x}')"
  done
done
for qd in 1 32; do
  printf 'median, two copies against one, qd%s: IOPS x%s, p50 +%s us, p99 +%s us\n' "$qd" \
    "$(echo "${R[$qd]}" | median)" "$(echo "${P50[$qd]}" | median)" "$(echo "${P99[$qd]}" | median)"
done

echo "== 2. failover: QD1 writes to \"two\", C killed (lease TTL ${TTL} s)"
"$PERF" -q 1 -o 4096 -w randwrite -t 20 -c 0x2 -L --json "$WORK/fail.json" -r "$(trid two)" > "$WORK/fail.txt" 2>&1 &
PERFPID=$!
sleep 5
kill -9 "$PID_C"; killed=$(date +%s.%N)
wait "$PERFPID" && ok=yes || ok=no
python3 - "$WORK/fail.json" "$ok" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
print(f'run completed without error: {sys.argv[2]}; IOPS {t["iops"]:.0f}; longest write {t.get("max_us", 0) / 1e6:.2f} s '
      f'(about the time from the death to the first write completed without C)')
PY
grep -E "IOPS:" "$WORK/fail.txt" | awk '{printf "%s ", $4} END {print "(IOPS per second)"}'

echo "== 3. rebuild: C back, \"two\" set to 3 copies: a copy of every page built on C (rebuild_mb_s = $RATE per leader), QD1 writes to \"two\" meanwhile"
start C; wait_port "$PORT_C"
live_are 3
for _ in $(seq 600); do q volume list | awk '$1 == "two" {print $9}' | grep -q healthy && break; sleep 0.1; done
before=$(run two 1 3)
la=$(wc -l < "$WORK/A.log"); lb=$(wc -l < "$WORK/B.log")
t0=$(date +%s.%N)
q volume set-replicas two 3 > /dev/null
"$PERF" -q 1 -o 4096 -w randwrite -t 8 -a 0 -c 0x2 -L --json "$WORK/during.json" -r "$(trid two)" > /dev/null 2>&1 || true
for _ in $(seq 900); do q volume list | awk '$1 == "two" {print $9}' | grep -q healthy && break; sleep 0.1; done
healed=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
during=$(summary "$WORK/during.json")
echo "host QD1 writes to \"two\" (IOPS p50_us p99_us max_us) before: $before; during the first 8 s of the rebuild: $during"
{ tail -n +"$((la + 1))" "$WORK/A.log"; tail -n +"$((lb + 1))" "$WORK/B.log"; } | grep "rebuild copied everything" | \
  sed 's/\x1b\[[0-9;]*m//g' | tr ' ' '\n' | awk -F= '$1 == "bytes" {b += $2} $1 == "seconds" && $2 > s {s = $2} END {printf "rebuilt %.0f MB on C; the longest member copy %.1f s\n", b/1e6, s}'
echo "\"two\" healthy with 3 copies ${healed} s after set-replicas: $(q volume list | awk '$1 == "two" {print $8, $9}')"
