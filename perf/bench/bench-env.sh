# bench-env.sh: what every benchmark script starts with, sourced by them: a work
# folder removed at exit (kept with KEEP=1, for the peers' logs) with every process it
# started (PIDS), the release binaries
# built (QUIRE, PERF), free_port, wait_port, and etcd_up (a throwaway etcd on free
# ports, its client port in EC, and a group secret in $WORK/secret).
#   Before sourcing: BENCH (a name), REPO; optional ETCD (for etcd_up).
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
WORK=$(mktemp -d "/tmp/quire-$BENCH-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "$BENCH: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

cargo build --release -q -p quire -p quire-perf --manifest-path "$REPO/Cargo.toml"
QUIRE=$REPO/target/release/quire
PERF=$REPO/target/release/quire-perf
wait_port() { for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# etcd_up: starts etcd (EC: its client port) and writes the group secret
etcd_up() {
  ETCD=${ETCD:-/usr/bin/etcd}
  [ -x "$ETCD" ] || { echo "$BENCH: needs etcd ($ETCD; Debian's etcd-server)" >&2; exit 2; }
  EC=$(free_port)
  local ep; ep=$(free_port)
  "$ETCD" --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "default=http://127.0.0.1:$ep" > "$WORK/etcd.log" 2>&1 &
  PIDS+=($!); wait_port "$EC"
  head -c 32 /dev/urandom | base64 > "$WORK/secret"
}
