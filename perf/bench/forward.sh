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
# Layout on a 2-core machine: A's reactor busy-polls on core 0 (the receiving core
# measured); B's reactor (hybrid polling) and quire-perf's worker share core 1. The
# forwarded runs therefore also pay for B on the client's core: a pessimistic
# layout for forwarding. etcd is idle during the runs.
#
#   perf/bench/forward.sh                       # 3 pairs, 5 s per run
#   PAIRS=5 TIME=10 perf/bench/forward.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-5}
PAIRS=${PAIRS:-3}
ETCD=${ETCD:-/usr/bin/etcd}
[ -x "$ETCD" ] || { echo "forward.sh: needs etcd ($ETCD; Debian's etcd-server)" >&2; exit 2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/quire-fwd-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p quire -p quire-perf --manifest-path "$REPO/Cargo.toml"
cargo build --release -q -p quire-perf --example floor --manifest-path "$REPO/Cargo.toml"
QUIRE=$REPO/target/release/quire
PERF=$REPO/target/release/quire-perf
FLOOR=$REPO/target/release/examples/floor

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

EC=$(free_port); EP=$(free_port)
"$ETCD" --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "default=http://127.0.0.1:$EP" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!); wait_port "$EC"
head -c 32 /dev/urandom | base64 > "$WORK/secret"

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
start() { "$QUIRE" serve --config "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 & PIDS+=($!); }

# A alone makes "local" (every page on A); B, a million times A's weight, then gets
# every page of "fwd".
peer A 0 busy 1 '{ name = "local", size = "1G", page_size = "4M", block_size = 4096 }'
peer B 1 hybrid 1000000 ''
start A; wait_port "$PORT_A"
for _ in $(seq 100); do "$QUIRE" --socket "$WORK/A/quire.sock" volume list 2>/dev/null | grep -q '^local ' && break; sleep 0.1; done
start B; wait_port "$PORT_B"
for _ in $(seq 100); do [ "$("$QUIRE" --socket "$WORK/A/quire.sock" --json group status | grep -c '"state": *"live"')" = 2 ] && break; sleep 0.1; done
"$QUIRE" --socket "$WORK/A/quire.sock" volume create fwd --size 1G --page-size 4M > /dev/null
sleep 1
echo "pages of local: $("$QUIRE" --socket "$WORK/A/quire.sock" volume pages local | awk '/^ +[0-9]/ {c[$3] += $2} END {for (o in c) printf "%s=%d ", o, c[o]}')"
echo "pages of fwd:   $("$QUIRE" --socket "$WORK/A/quire.sock" volume pages fwd | awk '/^ +[0-9]/ {c[$3] += $2} END {for (o in c) printf "%s=%d ", o, c[o]}')"

trid() { echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT_A subnqn:nqn.2026-11.io.quire:$1"; }
# Every page written once, so reads hit allocated pages on both.
for v in local fwd; do "$PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "$(trid $v)" > /dev/null; done

# run VOLUME PATTERN QD -> "iops p50_us p99_us"
run() {
  local json="$WORK/$1-$2-$3.json"
  "$PERF" -q "$3" -o 4096 -w "$2" -t "$TIME" -a 1 -c 0x2 -L --json "$json" -r "$(trid "$1")" > "$WORK/$1-$2-$3.txt"
  python3 - "$json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
p = {round(q["pct"], 5): q["us"] for q in t["percentiles"]}
print(f'{t["iops"]:.0f} {p[50.0]:.1f} {p[99.0]:.1f}')
PY
}

WORKLOADS=("randread 1" "randread 32" "randwrite 1" "randwrite 32")
printf '%-14s %-10s %10s %9s %9s\n' workload volume IOPS p50_us p99_us
declare -A RATIO ADDED
for pair in $(seq "$PAIRS"); do
  for w in "${WORKLOADS[@]}"; do
    set -- $w
    if [ $((pair % 2)) = 1 ]; then
      l=$(run local "$1" "$2"); f=$(run fwd "$1" "$2")
    else
      f=$(run fwd "$1" "$2"); l=$(run local "$1" "$2")
    fi
    printf '%-14s %-10s %10s %9s %9s\n' "$1 qd$2" local $l
    printf '%-14s %-10s %10s %9s %9s\n' "$1 qd$2" forwarded $f
    set -- $w $l $f
    RATIO["$1 qd$2"]+="$(awk -v a="$3" -v b="$6" 'BEGIN{printf "%.3f ", b/a}')"
    ADDED["$1 qd$2"]+="$(awk -v a="$4" -v b="$7" 'BEGIN{printf "%.1f ", b-a}')"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{printf "%.3f", (NR%2?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "loopback floor (perf/examples/floor.rs, same cores): $("$FLOOR" --qd 1 --time 3 --server-core 0 --client-core 1)"
echo "median over $PAIRS pairs: forwarded IOPS / local IOPS, and p50 added by forwarding (us):"
for w in "${WORKLOADS[@]}"; do
  set -- $w
  printf '  %-14s %s   +%s us\n' "$1 qd$2" "$(echo "${RATIO["$1 qd$2"]}" | median)" "$(echo "${ADDED["$1 qd$2"]}" | median)"
done
echo "link counters of A: $("$QUIRE" --socket "$WORK/A/quire.sock" --json stats reactors | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print({k: r[k] for k in ("forwarded_parts","forwarded_bytes","rx_copied_bytes","tx_copied_bytes","path_errors")})')"
