# group-lib.sh: what the group benchmarks (replication.sh, migration.sh) share,
# sourced by them: etcd on a free port, peers with RAM devices and one reactor each
# on core 0 (hybrid mode), quire-perf on core 1, and helpers.
#   Before sourcing: BENCH (a name), optional TIME, PAIRS, RATE (rebuild_mb_s), TTL,
#   REPLACE_AFTER (replication.replace_after_s), MOVES_MAX, BATCH_PAGES (rebalance.*),
#   ETCD.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TIME=${TIME:-5}
PAIRS=${PAIRS:-3}
RATE=${RATE:-200}
TTL=${TTL:-5}
REPLACE_AFTER=${REPLACE_AFTER:-1}
MOVES_MAX=${MOVES_MAX:-2}
BATCH_PAGES=${BATCH_PAGES:-16}
. "$REPO/perf/bench/bench-env.sh"
etcd_up

# peer NAME: writes NAME's configuration; its I/O port in PORT_NAME
peer() {
  local port; port=$(free_port)
  cat > "$WORK/$1.toml" <<TOML
device = [{ kind = "ram", size = "3G", prefault = true }]
[peer]
name = "$1"
data_dir = "$WORK/$1"
[reactors]
cores = [0]
poll = "hybrid"
spin_us = 0
[target]
port = $port
discovery_port = 0
[buffers]
hugepages = false
[group]
etcd = ["http://127.0.0.1:$EC"]
listen = "127.0.0.1:$(free_port)"
secret_file = "$WORK/secret"
lease_ttl_s = $TTL
[replication]
replace_after_s = $REPLACE_AFTER
rebuild_mb_s = $RATE
migration_mb_s = $RATE
[rebalance]
moves_max = $MOVES_MAX
batch_pages = $BATCH_PAGES
TOML
  eval "PORT_$1=$port"
}
# start NAME: runs it (PID_NAME)
start() { "$QUIRE" serve --config "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 & PIDS+=($!); eval "PID_$1=$!"; }
# q ARGS: the management CLI against A
q() { "$QUIRE" --socket "$WORK/A/quire.sock" "$@"; }
# live_are N: waits until N peers are live
live_are() { for _ in $(seq 100); do [ "$(q --json group status | grep -c '"state": *"live"')" = "$1" ] && return 0; sleep 0.1; done; return 1; }
# group_up NAMES: starts the peers and waits until all are live; the rebalancer is
# paused (a benchmark that wants it runs `q rebalance resume`)
group_up() {
  for p in "$@"; do peer "$p"; start "$p"; done
  for p in "$@"; do eval wait_port "\$PORT_$p"; done
  live_are "$#"
  q rebalance pause > /dev/null
}
trid() { echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT_A subnqn:nqn.2026-11.io.quire:$1"; }
# summary JSON -> "iops p50_us p99_us max_us"
summary() {
  python3 - "$1" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
p = {round(q["pct"], 5): q["us"] for q in t["percentiles"]}
print(f'{t["iops"]:.0f} {p[50.0]:.1f} {p[99.0]:.1f} {t.get("max_us", 0):.0f}')
PY
}
# run VOLUME QD [TIME] [PATTERN] -> "iops p50_us p99_us max_us" (4 KiB, through A)
run() {
  local json="$WORK/$1-$2.json"
  "$PERF" -q "$2" -o 4096 -w "${4:-randwrite}" -t "${3:-$TIME}" -a 1 -c 0x2 -L --json "$json" -r "$(trid "$1")" > "$WORK/$1-$2.txt" || true
  summary "$json"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{printf "%.3f", (NR%2?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2)}'; }
