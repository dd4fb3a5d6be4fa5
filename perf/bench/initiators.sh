#!/bin/bash
# Benchmark (not a test): quire-perf against SPDK's spdk_nvme_perf as NVMe/TCP
# initiators, one core each (core 1), against the same target on core 0: SPDK's
# nvmf_tgt with a Malloc bdev, then Quire (`quire serve`, RAM device, one busy
# reactor). Per target and metric, PAIRS pairs alternate the two tools (A B, then
# B A, ...), because core speed here drifts from moment to moment; the summary gives
# the median of the per-pair ratios quire-perf / spdk_nvme_perf.
#
# Metrics: IOPS at QD32 4 KiB randread and randwrite; average and p50 latency at QD1
# 4 KiB randread and randwrite.
#
# SPDK is built OUTSIDE the project; SPDK_DIR points at its tree (build/bin/nvmf_tgt,
# build/bin/spdk_nvme_perf, scripts/rpc.py; built against Debian's shared DPDK, so the
# binaries need build/lib on LD_LIBRARY_PATH). Needs root (hugepages, DPDK).
#
#   SPDK_DIR=/work/spdk-build/spdk PAIRS=5 TIME=5 perf/bench/initiators.sh
#   QUIRE_PERF=/tmp/x/quire-perf QUIRE=/tmp/x/quire ...   # binaries to use (default: target/release)
#   TARGETS="spdk" METRICS="randread:32 randread:1" ...   # a subset
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SPDK_DIR=${SPDK_DIR:?set SPDK_DIR to an SPDK tree built outside the project}
PAIRS=${PAIRS:-5}
TIME=${TIME:-5}
WARMUP=${WARMUP:-1}
SPDK_PORT=${SPDK_PORT:-15420}
QUIRE_PORT=${QUIRE_PORT:-15421}
TARGETS=${TARGETS:-"spdk quire"}
METRICS=${METRICS:-"randread:32 randwrite:32 randread:1 randwrite:1"}
QUIRE=${QUIRE:-$REPO/target/release/quire}
QUIRE_PERF=${QUIRE_PERF:-$REPO/target/release/quire-perf}
OUT=${OUT:-$(mktemp -d /tmp/quire-initiators.XXXXXX)}
SPDK_NQN=nqn.2016-06.io.spdk:bench
QUIRE_NQN=nqn.2026-11.io.quire:bench
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$OUT"
echo "raw outputs in $OUT"

wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

start_spdk() {
  "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 -u -r "$OUT/spdk.sock" > "$OUT/nvmf_tgt.log" 2>&1 &
  TPID=$!; PIDS+=("$TPID")
  local rpc="python3 $SPDK_DIR/scripts/rpc.py -s $OUT/spdk.sock"
  for _ in $(seq 100); do $rpc spdk_get_version >/dev/null 2>&1 && break; sleep 0.1; done
  $rpc nvmf_create_transport -t TCP >/dev/null
  $rpc bdev_malloc_create -b Malloc0 1024 4096 >/dev/null
  $rpc nvmf_create_subsystem "$SPDK_NQN" -a -s SPDK0001 >/dev/null
  $rpc nvmf_subsystem_add_ns "$SPDK_NQN" Malloc0 >/dev/null
  $rpc nvmf_subsystem_add_listener "$SPDK_NQN" -t tcp -a 127.0.0.1 -s "$SPDK_PORT" >/dev/null
  PORT=$SPDK_PORT; NQN=$SPDK_NQN
}

start_quire() {
  cat > "$OUT/quire.toml" <<TOML
device = [{ kind = "ram", size = "2G" }]
volume = [{ name = "bench", size = "1G", page_size = "4M", block_size = 4096 }]
[peer]
data_dir = "$OUT/quire-data"
[reactors]
cores = [0]
poll = "busy"
[target]
port = $QUIRE_PORT
discovery_port = 0
[buffers]
hugepages = true
TOML
  rm -rf "$OUT/quire-data"
  "$QUIRE" serve --config "$OUT/quire.toml" > "$OUT/quire.log" 2>&1 &
  TPID=$!; PIDS+=("$TPID"); wait_port "$QUIRE_PORT"
  PORT=$QUIRE_PORT; NQN=$QUIRE_NQN
  # Write the whole volume once so that reads hit allocated pages, as on a Malloc bdev.
  "$QUIRE_PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "$(tid)" > /dev/null
}

stop_target() { kill -INT "$TPID"; wait "$TPID" 2>/dev/null || true; }

tid() { echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"; }

# run_quire_perf FILE PATTERN QD -> "iops avg_us p50_us"
run_quire_perf() {
  "$QUIRE_PERF" -c 0x2 -q "$3" -o 4096 -w "$2" -t "$TIME" -a "$WARMUP" -L --json "$1.json" -r "$(tid)" > "$1.txt"
  python3 - "$1.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
p = {round(q["pct"], 5): q["us"] for q in t["percentiles"]}
print(f'{t["iops"]:.2f} {t["avg_us"]:.2f} {p[50.0]:.2f}')
PY
}

# run_spdk_perf FILE PATTERN QD -> "iops avg_us p50_us"
run_spdk_perf() {
  "$SPDK_DIR/build/bin/spdk_nvme_perf" -c 0x2 -q "$3" -o 4096 -w "$2" -t "$TIME" -a "$WARMUP" -L -r "$(tid)" > "$1.txt" 2>&1
  python3 - "$1.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
total = [l for l in text.splitlines() if l.startswith("Total")][0]
iops, _, avg, _, _ = (float(x) for x in total.split(":", 1)[1].split())
p50 = float(re.search(r"^\s*50\.00000%\s*:\s*([0-9.]+)us", text, re.M).group(1))
print(f"{iops:.2f} {avg:.2f} {p50:.2f}")
PY
}

RESULTS=$OUT/results.txt
: > "$RESULTS"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"
for target in $TARGETS; do
  "start_$target"
  for m in $METRICS; do
    pattern=${m%%:*}; qd=${m##*:}
    for pair in $(seq "$PAIRS"); do
      order="quire spdk"; [ $((pair % 2)) = 0 ] && order="spdk quire"
      for tool in $order; do
        f="$OUT/$target-$pattern-qd$qd-$pair-$tool"
        r=$("run_${tool}_perf" "$f" "$pattern" "$qd")
        echo "$target $pattern $qd $pair $tool $r $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS"
      done
    done
  done
  stop_target
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS"

python3 - "$RESULTS" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("load")]
by = {}
for target, pattern, qd, pair, tool, iops, avg, p50, load in rows:
    by.setdefault((target, pattern, int(qd)), {}).setdefault(int(pair), {})[tool] = (float(iops), float(avg), float(p50))
print()
print("median over pairs; ratio = quire-perf / spdk_nvme_perf; delta = quire-perf - spdk_nvme_perf (us)")
print(f"{'target':7} {'workload':14} {'pairs':>5} {'IOPS q':>10} {'IOPS s':>10} {'ratio':>6} "
      f"{'avg q':>7} {'avg s':>7} {'d avg':>6} {'p50 q':>7} {'p50 s':>7} {'d p50':>6}")
for (target, pattern, qd), pairs in sorted(by.items(), key=lambda k: (k[0][0], -k[0][2], k[0][1])):
    full = [v for v in pairs.values() if "quire" in v and "spdk" in v]
    med = lambda f: statistics.median(f(v) for v in full)
    print(f"{target:7} {pattern + ' qd' + str(qd):14} {len(full):5} "
          f"{med(lambda v: v['quire'][0]):10.0f} {med(lambda v: v['spdk'][0]):10.0f} "
          f"{med(lambda v: v['quire'][0] / v['spdk'][0]):6.3f} "
          f"{med(lambda v: v['quire'][1]):7.2f} {med(lambda v: v['spdk'][1]):7.2f} "
          f"{med(lambda v: v['quire'][1] - v['spdk'][1]):+6.2f} "
          f"{med(lambda v: v['quire'][2]):7.2f} {med(lambda v: v['spdk'][2]):7.2f} "
          f"{med(lambda v: v['quire'][2] - v['spdk'][2]):+6.2f}")
PY
