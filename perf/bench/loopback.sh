#!/bin/bash
# Benchmark (not a test): Quire's NVMe/TCP target over loopback, 4 KiB random reads
# and writes at queue depth 1 and 32, one reactor, RAM backend; prints IOPS, MiB/s
# and p50/p99/p99.9 latency per workload.
#
# Layout on a 2-core machine: the target's one reactor busy-polls on core 0,
# quire-perf's one worker busy-polls on core 1 (as spdk_nvme_perf would).
#
# With SPDK built OUTSIDE the project (SPDK_DIR pointing at its build tree, with
# build/bin/nvmf_tgt and scripts/rpc.py), the script alternates Quire and SPDK's
# nvmf_tgt (Malloc bdev, same core, same initiator) for PAIRS pairs and prints the
# median of the per-pair ratios, because core speed here drifts from moment to
# moment. Without SPDK_DIR it measures Quire alone.
#
# With QUIRE_B (another build of quire, e.g. of the commit before a change) instead,
# it alternates this build and that one the same way: an A/B of a change.
#
#   perf/bench/loopback.sh                      # Quire only, 10 s per run
#   SPDK_DIR=/work/spdk-build/spdk PAIRS=5 TIME=10 perf/bench/loopback.sh
#   QUIRE_B=/tmp/quire-before PAIRS=5 TIME=5 perf/bench/loopback.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-10}
PAIRS=${PAIRS:-3}
SPDK_DIR=${SPDK_DIR:-}
QUIRE_B=${QUIRE_B:-}
PORT=${PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}
SPDK_PORT=${SPDK_PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}
BENCH=loopback
. "$REPO/perf/bench/bench-env.sh"

cat > "$WORK/quire.toml" <<TOML
device = [{ kind = "ram", size = "2G" }]
volume = [{ name = "bench", size = "1G", page_size = "4M", block_size = 4096 }]
[peer]
data_dir = "$WORK/data"
[reactors]
cores = [0]
poll = "busy"
[target]
port = $PORT
discovery_port = 0
[buffers]
hugepages = true
TOML

# start_quire [BINARY]: this build, or another
start_quire() {
  "${1:-$QUIRE}" serve --config "$WORK/quire.toml" > "$WORK/quire.log" 2>&1 &
  QPID=$!; PIDS+=("$QPID"); wait_port "$PORT"
  # Write the whole volume once so reads hit allocated pages, as they would on SPDK's Malloc bdev.
  "$PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2026-11.io.quire:bench" > /dev/null
}
stop_quire() { kill "$QPID"; wait "$QPID" 2>/dev/null || true; }

start_spdk() {
  # SPDK built against Debian's shared DPDK needs its library path; -u keeps DPDK
  # away from the machine's PCI devices (TCP only).
  LD_LIBRARY_PATH="$SPDK_DIR/build/lib" "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 -u -r "$WORK/spdk.sock" > "$WORK/spdk.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  local rpc="python3 $SPDK_DIR/scripts/rpc.py -s $WORK/spdk.sock"
  for _ in $(seq 100); do $rpc spdk_get_version >/dev/null 2>&1 && break; sleep 0.1; done
  $rpc nvmf_create_transport -t TCP >/dev/null
  $rpc bdev_malloc_create -b Malloc0 1024 4096 >/dev/null
  $rpc nvmf_create_subsystem nqn.2016-06.io.spdk:bench -a -s SPDK0001 >/dev/null
  $rpc nvmf_subsystem_add_ns nqn.2016-06.io.spdk:bench Malloc0 >/dev/null
  $rpc nvmf_subsystem_add_listener nqn.2016-06.io.spdk:bench -t tcp -a 127.0.0.1 -s "$SPDK_PORT" >/dev/null
}
stop_spdk() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; }

# run NAME PORT NQN PATTERN QD -> prints "iops mibs p50 p99 p999" (latencies in us)
run() {
  local json="$WORK/$1-$4-$5.json"
  "$PERF" -q "$5" -o 4096 -w "$4" -t "$TIME" -a 2 -c 0x2 -L --json "$json" \
    -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$2 subnqn:$3" > "$WORK/$1-$4-$5.txt"
  python3 - "$json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
p = {round(q["pct"], 5): q["us"] for q in t["percentiles"]}
print(f'{t["iops"]:.0f} {t["mibps"]:.1f} {p[50.0]:.1f} {p[99.0]:.1f} {p[99.9]:.1f}')
PY
}

# Both targets get 2 MiB hugepages when we may set them up (root).
if [ "$(id -u)" = 0 ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 1024 ]; then
  echo 1024 > /proc/sys/vm/nr_hugepages
  mkdir -p /dev/hugepages
  mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
fi

WORKLOADS=("randread 1" "randread 32" "randwrite 1" "randwrite 32")
printf '%-14s %-8s %12s %10s %9s %9s %9s\n' workload target IOPS MiB/s p50_us p99_us p99.9_us
declare -A RATIOS
for pair in $(seq "$PAIRS"); do
  for w in "${WORKLOADS[@]}"; do
    set -- $w
    start_quire; q=$(run quire "$PORT" nqn.2026-11.io.quire:bench "$1" "$2"); stop_quire
    printf '%-14s %-8s %12s %10s %9s %9s %9s\n' "$1 qd$2" quire $q
    if [ -n "$QUIRE_B" ]; then
      start_quire "$QUIRE_B"; s=$(run quire-b "$PORT" nqn.2026-11.io.quire:bench "$1" "$2"); stop_quire
      printf '%-14s %-8s %12s %10s %9s %9s %9s\n' "$1 qd$2" quire-b $s
      RATIOS["$1 qd$2"]+="$(awk -v a="${q%% *}" -v b="${s%% *}" 'BEGIN{printf "%.3f ", a/b}')"
    elif [ -n "$SPDK_DIR" ]; then
      start_spdk; s=$(run spdk "$SPDK_PORT" nqn.2016-06.io.spdk:bench "$1" "$2"); stop_spdk
      printf '%-14s %-8s %12s %10s %9s %9s %9s\n' "$1 qd$2" spdk $s
      RATIOS["$1 qd$2"]+="$(awk -v a="${q%% *}" -v b="${s%% *}" 'BEGIN{printf "%.3f ", a/b}')"
    fi
  done
  [ -n "$SPDK_DIR$QUIRE_B" ] || break
done
if [ -n "$SPDK_DIR$QUIRE_B" ]; then
  other=SPDK; [ -n "$QUIRE_B" ] && other="quire-b ($QUIRE_B)"
  echo; echo "median over $PAIRS pairs of Quire IOPS / $other IOPS:"
  for w in "${WORKLOADS[@]}"; do
    set -- $w
    echo "${RATIOS["$1 qd$2"]}" | tr ' ' '\n' | grep . | sort -g | awk -v n="$1 qd$2" '{a[NR]=$1} END{printf "  %-14s %.3f  (pairs: %d)\n", n, (NR%2?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2), NR}'
  done
fi
