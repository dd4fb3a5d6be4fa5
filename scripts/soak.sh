#!/bin/bash
# The long kill -9 soak: the end-to-end test tests/tests/e2e_kill_under_load.rs with
# many more cycles than scripts/test.sh runs (20).  The real Linux NVMe/TCP host in a
# guest writes with fio while `quire serve` is killed with SIGKILL and restarted,
# cycle after cycle; after every restart each acknowledged write must verify and the
# store must reopen cleanly.  Needs the guest (scripts/install-test-deps.sh); a
# missing guest fails the soak.
#
#   scripts/soak.sh                          200 cycles, a fresh seed
#   KILL_CYCLES=1000 scripts/soak.sh         more
#   KILL_SEED=123456 KILL_CYCLES=200 scripts/soak.sh   replay a failure (the seed
#                                            is printed at the start and in every
#                                            failure message)
#   KILL_REGION_MB=64 scripts/soak.sh        bigger regions per cycle (default 32)
#   SIM_SEEDS=20000 scripts/soak.sh          seeds of the replication simulator
#                                            (appliance/tests/replica_sim.rs; default
#                                            5000, about 1 ms each; CI runs 60)
#
# About 5 s per cycle on a 2-core machine without KVM.  Logs: <target>/e2e-logs/.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
case ${1:-} in -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;; esac

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
export KILL_CYCLES=${KILL_CYCLES:-200}
# Not partial, whatever the environment says: a soak that skips is no soak.
export QUIRE_TEST_PARTIAL=0

printf '==> build quire (release)\n'
cargo build --release -p quire
export QUIRE_BIN="$TARGET/release/quire"

printf '==> kill -9 under load: %s cycles%s\n' "$KILL_CYCLES" "${KILL_SEED:+, seed $KILL_SEED}"
start=$(date +%s)
rc=0
cargo test -p quire-tests --test e2e_kill_under_load -- --nocapture --test-threads=1 || rc=$?
printf '==> replication simulator: %s seeds\n' "${SIM_SEEDS:-5000}"
QUIRE_SIM_SEEDS=${SIM_SEEDS:-5000} cargo test --release -p quire --test replica_sim -- --nocapture || rc=$?
echo "==> soak $([ "$rc" = 0 ] && echo PASSED || echo FAILED): $KILL_CYCLES cycles in $(( $(date +%s) - start ))s (logs in $TARGET/e2e-logs/)"
exit "$rc"
