#!/bin/bash
# Benchmark (not a test): forwarded I/O against local I/O on the peer that receives
# it. Two peers (A, B) with RAM devices and one reactor each, and etcd; quire-perf
# connects to A only. Volume "local" has every page on A; volume "fwd" has every
# page on B, so each of its I/Os is forwarded A -> B over their peer link and
# answered by A. 4 KiB random reads and writes at QD1 and QD32; the same runs
# alternate local / forwarded for PAIRS pairs (core speed here drifts from moment to
# moment) and the script prints the median of the per-pair ratios, and the loopback
# floor's round trip at QD1 (perf/examples/floor.rs) beside the latency added.
#
# What "per receiving core" means here: a 2-core machine has no core for each of
# quire-perf, A and B, so the script measures the CPU time A's reactor thread spends
# (/proc/.../schedstat) and reports IOPS per second of it, beside the plain IOPS.
# Default layout: quire-perf's worker busy-polls on core 1; A's and B's reactors
# share core 0 in hybrid mode with no spin (they sleep as soon as they are idle, so
# each runs when the other waits): A's CPU time is A's work alone, and plain
# forwarded IOPS are bounded by A and B sharing one core. QD1 latencies include the
# switches between A and B on that core. Other layouts: A_CORE, B_CORE, A_POLL,
# B_POLL (busy|hybrid), SPIN_US.
#
#   perf/bench/forward.sh                       # 3 pairs, 5 s per run
#   PAIRS=5 TIME=10 perf/bench/forward.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-5}
PAIRS=${PAIRS:-3}
# Where the peers' reactors run and how they poll (see the layout note above).
A_CORE=${A_CORE:-0}; A_POLL=${A_POLL:-hybrid}
B_CORE=${B_CORE:-0}; B_POLL=${B_POLL:-hybrid}
SPIN_US=${SPIN_US:-0}
BENCH=fwd
. "$REPO/perf/bench/bench-env.sh"
cargo build --release -q -p quire-perf --example floor --manifest-path "$REPO/Cargo.toml"
FLOOR=$REPO/target/release/examples/floor
etcd_up

# peer NAME CORE POLL WEIGHT VOLUMES -> writes $WORK/NAME.toml, sets PORT_<NAME>
peer() {
  local port; port=$(free_port)
  cat > "$WORK/$1.toml" <<TOML
device = [{ kind = "ram", size = "2G" }]
volume = [$5]
[peer]
name = "$1"
data_dir = "$WORK/$1"
[reactors]
cores = [$2]
poll = "$3"
spin_us = $SPIN_US
[target]
port = $port
discovery_port = 0
[buffers]
hugepages = true
[group]
etcd = ["http://127.0.0.1:$EC"]
listen = "127.0.0.1:$(free_port)"
secret_file = "$WORK/secret"
weight = $4
TOML
  eval "PORT_$1=$port"
}
start() { "$QUIRE" serve --config "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 & PIDS+=($!); eval "PID_$1=$!"; }
# reactor_tid PID: the thread id of a peer's reactor 0
reactor_tid() { for t in /proc/"$1"/task/*; do if [ "$(cat "$t/comm")" = quire-reactor-0 ]; then basename "$t"; fi; done; }
# cpu_ns TID: time the thread has run on a CPU (schedstat), ns
cpu_ns() { cut -d' ' -f1 "/proc/$PID_A/task/$1/schedstat"; }

# A alone makes "local" (every page on A); B, a million times A's weight, then gets
# every page of "fwd".
peer A "$A_CORE" "$A_POLL" 1 '{ name = "local", size = "1G", page_size = "4M", block_size = 4096 }'
peer B "$B_CORE" "$B_POLL" 1000000 ''
start A; wait_port "$PORT_A"
for _ in $(seq 100); do "$QUIRE" --socket "$WORK/A/quire.sock" volume list 2>/dev/null | grep -q '^local ' && break; sleep 0.1; done
start B; wait_port "$PORT_B"
for _ in $(seq 100); do [ "$("$QUIRE" --socket "$WORK/A/quire.sock" --json group status | grep -c '"state": *"live"')" = 2 ] && break; sleep 0.1; done
"$QUIRE" --socket "$WORK/A/quire.sock" volume create fwd --size 1G --page-size 4M > /dev/null
sleep 1
echo "pages of local: $("$QUIRE" --socket "$WORK/A/quire.sock" volume pages local | awk '/^ +[0-9]/ {c[$3] += $2} END {for (o in c) printf "%s=%d ", o, c[o]}')"
echo "pages of fwd:   $("$QUIRE" --socket "$WORK/A/quire.sock" volume pages fwd | awk '/^ +[0-9]/ {c[$3] += $2} END {for (o in c) printf "%s=%d ", o, c[o]}')"

TID_A=$(reactor_tid "$PID_A")
trid() { echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT_A subnqn:nqn.2026-11.io.quire:$1"; }
# Every page written once, so reads hit allocated pages on both.
for v in local fwd; do "$PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "$(trid $v)" > /dev/null; done

# run VOLUME PATTERN QD -> "iops p50_us p99_us iops_per_A_core_second"
# (A's reactor's CPU time over the whole run, warm-up included, from schedstat)
run() {
  local json="$WORK/$1-$2-$3.json" c0 c1
  c0=$(cpu_ns "$TID_A")
  "$PERF" -q "$3" -o 4096 -w "$2" -t "$TIME" -a 1 -c 0x2 -L --json "$json" -r "$(trid "$1")" > "$WORK/$1-$2-$3.txt"
  c1=$(cpu_ns "$TID_A")
  python3 - "$json" "$((c1 - c0))" "$TIME" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
cpu_s = int(sys.argv[2]) / 1e9
p = {round(q["pct"], 5): q["us"] for q in t["percentiles"]}
ios = t["iops"] * (int(sys.argv[3]) + 1)  # the warm-up second's I/O too (A's CPU counts it)
print(f'{t["iops"]:.0f} {p[50.0]:.1f} {p[99.0]:.1f} {ios / cpu_s:.0f}')
PY
}

WORKLOADS=("randread 1" "randread 32" "randwrite 1" "randwrite 32")
printf '%-14s %-10s %10s %9s %9s %12s\n' workload volume IOPS p50_us p99_us IOPS/A-core
declare -A RATIO ADDED PERCORE
for pair in $(seq "$PAIRS"); do
  for w in "${WORKLOADS[@]}"; do
    set -- $w
    if [ $((pair % 2)) = 1 ]; then
      l=$(run local "$1" "$2"); f=$(run fwd "$1" "$2")
    else
      f=$(run fwd "$1" "$2"); l=$(run local "$1" "$2")
    fi
    printf '%-14s %-10s %10s %9s %9s %12s\n' "$1 qd$2" local $l
    printf '%-14s %-10s %10s %9s %9s %12s\n' "$1 qd$2" forwarded $f
    set -- $w $l $f
    RATIO["$1 qd$2"]+="$(awk -v a="$3" -v b="$7" 'BEGIN{printf "%.3f ", b/a}')"
    ADDED["$1 qd$2"]+="$(awk -v a="$4" -v b="$8" 'BEGIN{printf "%.1f ", b-a}')"
    PERCORE["$1 qd$2"]+="$(awk -v a="$6" -v b="${10}" 'BEGIN{printf "%.3f ", b/a}')"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{printf "%.3f", (NR%2?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "loopback floor (perf/examples/floor.rs, same cores): $("$FLOOR" --qd 1 --time 3 --server-core 0 --client-core 1)"
echo "medians over $PAIRS pairs, forwarded against local: IOPS ratio, IOPS per second of A's reactor CPU ratio, p50 added (us):"
for w in "${WORKLOADS[@]}"; do
  set -- $w
  printf '  %-14s IOPS %s   per A-core %s   p50 +%s us\n' "$1 qd$2" "$(echo "${RATIO["$1 qd$2"]}" | median)" \
    "$(echo "${PERCORE["$1 qd$2"]}" | median)" "$(echo "${ADDED["$1 qd$2"]}" | median)"
done
echo "link counters of A: $("$QUIRE" --socket "$WORK/A/quire.sock" --json stats reactors | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print({k: r[k] for k in ("forwarded_parts","forwarded_bytes","rx_copied_bytes","tx_copied_bytes","path_errors")})')"
