#!/bin/bash
# Benchmark (not a test): volume limits (quire volume set-limits, appliance/src/volume/qos.rs).
# One peer, a RAM device, one reactor on core 0 (busy polling); quire-perf on core 1.
#  1. What a limiter costs when it holds nothing back: 4 KiB random reads at QD32
#     with no limit against a volume and per-host limit far above what the peer does
#     (every command then asks two pairs of buckets: four compare-and-swaps), PAIRS
#     alternating pairs; the median of the per-pair ratios.
#  2. How close the rate comes to a limit: IOPS limits of LIMITS (4 KiB reads, QD32)
#     and a 64 KiB write bandwidth limit, each run for TIME s; measured / limit.
#
#   perf/bench/qos.sh                 # 5 pairs, 5 s per run
#   PAIRS=7 TIME=10 perf/bench/qos.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-5}
PAIRS=${PAIRS:-5}
LIMITS=${LIMITS:-"1000 10000 50000"}
BENCH=qos
. "$REPO/perf/bench/bench-env.sh"

PORT=$(free_port)
cat > "$WORK/q.toml" <<TOML
device = [{ kind = "ram", size = "2G" }]
volume = [{ name = "q", size = "1G", page_size = "4M", block_size = 4096 }]
[peer]
data_dir = "$WORK/q"
[reactors]
cores = [0]
poll = "busy"
[target]
port = $PORT
discovery_port = 0
TOML
"$QUIRE" serve --config "$WORK/q.toml" > "$WORK/q.log" 2>&1 & PIDS+=($!)
wait_port "$PORT"
Q() { "$QUIRE" --socket "$WORK/q/quire.sock" "$@"; }
for _ in $(seq 100); do Q volume list 2>/dev/null | grep -q '^q ' && break; sleep 0.1; done
TRID="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2026-11.io.quire:q"
# Every page written once (1024 writes of 1 MiB), so that reads read data and no
# write waits for a page's first allocation.
"$PERF" -q 32 -o 1M -w write -d 1024 -t 120 -c 0x2 -r "$TRID" > /dev/null
run() { "$PERF" -q 32 -o "$1" -w "$2" -t "$TIME" -c 0x2 -r "$TRID" --json "$WORK/r.json" > /dev/null
        python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["total"]; print(t["iops"], t["mibps"])' "$WORK/r.json"; }

echo "== 1. cost of a limiter that holds nothing back (4 KiB randread QD32, $PAIRS pairs of $TIME s)"
ratios=()
for i in $(seq "$PAIRS"); do
  Q volume set-limits q --iops 0 --host-iops 0 > /dev/null
  off=$(run 4096 randread | cut -d' ' -f1)
  Q volume set-limits q --iops 100000000 --host-iops 100000000 > /dev/null
  on=$(run 4096 randread | cut -d' ' -f1)
  r=$(python3 -c "print(f'{$on / $off:.3f}')")
  ratios+=("$r")
  printf '  pair %d: no limit %.0f IOPS, limits far above %.0f IOPS, ratio %s\n' "$i" "$off" "$on" "$r"
done
printf '  median ratio (with / without): %s\n' "$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"

echo "== 2. the rate against the limit ($TIME s each)"
Q volume set-limits q --iops 0 --host-iops 0 > /dev/null
for l in $LIMITS; do
  Q volume set-limits q --iops "$l" > /dev/null
  got=$(run 4096 randread | cut -d' ' -f1)
  printf '  %6d IOPS limit: %8.0f IOPS (%.3f of it)\n' "$l" "$got" "$(python3 -c "print($got / $l)")"
done
Q volume set-limits q --iops 0 --mib-s 20 > /dev/null
got=$(run 65536 randwrite | cut -d' ' -f2)
printf '  20 MiB/s limit, 64 KiB writes: %.2f MiB/s (%.3f of it)\n' "$got" "$(python3 -c "print($got / 20)")"
Q volume set-limits q --mib-s 0 --host-iops 5000 > /dev/null
got=$(run 4096 randread | cut -d' ' -f1)
printf '  5000 IOPS per host: %.0f IOPS (%.3f of it)\n' "$got" "$(python3 -c "print($got / 5000)")"
Q stats volumes
