#!/bin/bash
# Benchmark (not a test): a host's first writes to the pages of a fresh volume
# (appliance/src/volume/store.rs, "Spare slots"). The embedded default (a sparse file
# under a fresh data directory, the 1 GiB volume "demo" of 4 MiB pages, one reactor,
# hybrid polling), quire-perf on core 1:
#  1. sporadic:  SPORADIC single 4 KiB writes, each by its own quire-perf run (-d 1,
#                a new seed each: a new random page), SPORADIC_GAP s apart, to a second
#                new 1 GiB volume: first writes now and then, the common case on a peer
#                in service. Its columns: count, p50, p90, max and mean latency (µs);
#  2. fresh:     4 KiB random writes at QD1 for TIME s to the new volume: most of them
#                land on a page nobody wrote yet, which the page store allocates first
#                (a burst of allocations: the spares run out and are made in batches);
#  3. allocated: every page written once (1 MiB sequential writes over the volume),
#                then the same random writes again: no allocation left.
# Each pair runs the peer with `[[device]] zeroed_spares = 0` (every allocation zeroes
# its slot, flushes, then writes the slot's record) and with the default 16 (a slot
# zeroed ahead of demand: the allocation is the record write), alternating which goes
# first. Prints per run: IOPS, p50, p99, p99.9 and max latency (µs); then medians.
#
#   perf/bench/first-write.sh             # 5 pairs, 1 s per run
#   PAIRS=7 TIME=2 perf/bench/first-write.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-1}
PAIRS=${PAIRS:-5}
SPARES=${SPARES:-16}
SPORADIC=${SPORADIC:-20}
SPORADIC_GAP=${SPORADIC_GAP:-0.2}
BENCH=first-write
. "$REPO/perf/bench/bench-env.sh"

# run_peer SPARES: a fresh peer on the embedded default; prints "PORT PID DIR".
run_peer() {
  local port dir
  port=$(free_port)
  dir=$(mktemp -d "$WORK/peer.XXXX")
  "$QUIRE" serve --data-dir "$dir" --port "$port" --discovery-port 0 --poll hybrid --reactors 1 \
    --set "device.0.zeroed_spares=$1" > "$dir/log" 2>&1 &
  local pid=$!
  wait_port "$port"
  # Wait for the spares (zeroed right after start, before any host connects) so
  # that the fresh run measures what a host meets on a peer that has been up a moment.
  for _ in $(seq 200); do
    n=$("$QUIRE" --socket "$dir/quire.sock" --json store info 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("zeroed_spares", 0))' 2>/dev/null || echo 0)
    [ "$n" -ge "$1" ] && break
    sleep 0.05
  done
  echo "$port $pid $dir"
}

# perf PORT VOLUME ARGS...: one quire-perf run; prints "iops p50 p99 p99.9 max".
perf() {
  local port=$1 volume=$2; shift 2
  "$PERF" -c 0x2 -L -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:nqn.2026-11.io.quire:$volume" \
    --json "$WORK/r.json" "$@" > /dev/null
  python3 - "$WORK/r.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
d = t["devices"][0]
pct = {p["pct"]: p["us"] for p in d["percentiles"]}
print(f'{d["iops"]:.0f} {pct[50.0]:.0f} {pct[99.0]:.0f} {pct[99.9]:.0f} {d["max_us"]:.0f}')
PY
}

one() {  # one SPARES: prints "spares sporadic(5) fresh(5) allocated(5)"
  local port pid dir sporadic fresh allocated
  read -r port pid dir < <(run_peer "$1")
  "$QUIRE" --socket "$dir/quire.sock" volume create sp --size 1G > /dev/null
  : > "$WORK/sporadic"
  for k in $(seq "$SPORADIC"); do
    sleep "$SPORADIC_GAP"
    perf "$port" sp -q 1 -o 4096 -w randwrite -d 1 --seed "$((k * 7919))" | awk '{print $5}' >> "$WORK/sporadic"
  done
  sporadic=$(python3 -c 'import statistics as s,sys; v=sorted(float(l) for l in open(sys.argv[1]));
print(len(v), v[len(v)//2], v[int(len(v)*0.9)], v[-1], round(s.mean(v)))' "$WORK/sporadic")
  fresh=$(perf "$port" demo -q 1 -o 4096 -w randwrite -t "$TIME")
  perf "$port" demo -q 8 -o 1M -w write -d 1024 > /dev/null
  allocated=$(perf "$port" demo -q 1 -o 4096 -w randwrite -t "$TIME")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1 $sporadic $fresh $allocated"
}

echo "# first-write: $PAIRS pairs, $TIME s per run; columns: spares | sporadic: n p50 p90 max mean | fresh, allocated: IOPS p50 p99 p99.9 max (us)"
: > "$WORK/rows"
for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) -eq 1 ]; then order="0 $SPARES"; else order="$SPARES 0"; fi
  for s in $order; do one "$s" | tee -a "$WORK/rows"; done
done
python3 - "$WORK/rows" "$SPARES" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
for spares in (0, int(sys.argv[2])):
    rs = [r for r in rows if r[0] == spares]
    for phase, off in (("sporadic", 1), ("fresh", 6), ("allocated", 11)):
        names = ["n", "p50", "p90", "max", "mean"] if phase == "sporadic" else ["IOPS", "p50", "p99", "p99.9", "max"]
        med = [statistics.median(r[off + k] for r in rs) for k in range(5)]
        print(f"median zeroed_spares={spares:<2} {phase:<9} " + "  ".join(f"{n} {v:.0f}" for n, v in zip(names, med)))
PY
