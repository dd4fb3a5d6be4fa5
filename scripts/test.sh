#!/bin/bash
# The whole test suite, as a newcomer and CI run it: installs what the tests need
# (Debian packages: QEMU, a guest kernel, nvme-cli, fio, e2fsprogs), builds the
# binaries the end-to-end tests drive, checks formatting and lints, and runs every
# test, the real-host end-to-end suites (Linux NVMe/TCP host and QEMU's NVMe
# controller in a guest) included.
#
#   scripts/test.sh                  everything; a suite that cannot run here
#                                    (no guest, no QEMU, ...) FAILS
#   scripts/test.sh --partial        a suite whose prerequisites are missing is
#                                    skipped instead, and listed at the end
#   scripts/test.sh [--partial] -- ARGS   extra arguments for `cargo test`
#                                    (e.g. `-- -p quire-tests --test e2e_linux_host`)
#
# Ends with a summary: each step, each test binary (passed / failed), and in a
# partial run every skipped test with its reason.  Exit code 0 only if every step
# and every test passed.  Honours CARGO_TARGET_DIR.  The kill -9 soak is separate:
# scripts/soak.sh.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2

usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0" >&2; exit 2; }
partial=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --partial) partial=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "test.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
OUT=$TARGET/test-sh
mkdir -p "$OUT"
SKIPS=$OUT/skipped.txt
TESTLOG=$OUT/cargo-test.log
: > "$SKIPS"
: > "$TESTLOG"
# The tests' own switch (tests/src/lib.rs, quire_tests::require): only an explicit
# --partial may turn a missing prerequisite into a skip, whatever the caller's
# environment says; every skip is appended to $SKIPS.
export QUIRE_TEST_SKIP_FILE=$SKIPS
if [ "$partial" = 1 ]; then export QUIRE_TEST_PARTIAL=1; else export QUIRE_TEST_PARTIAL=0; fi

steps=()      # "name: ok|FAILED|..." lines for the summary
failed=0
notes=()

summary() {
  printf '\n==> summary%s\n' "$([ "$partial" = 1 ] && echo ' (PARTIAL RUN: suites whose prerequisites are missing were skipped)')"
  for s in "${steps[@]}"; do printf '  step   %s\n' "$s"; done
  if [ -s "$TESTLOG" ]; then
    # One line per test binary: cargo prints "Running <src> (<binary>)" or
    # "Doc-tests <crate>" before it and "test result: ..." after it.
    awk '
      function flush() {
        if (suite != "" && !done) { printf "  FAILED %s: no test result (the binary crashed or was killed)\n", suite; bad++ }
      }
      /^ *Running / {
        flush(); src = $2; bin = $0; sub(/.*\(/, "", bin); sub(/\).*/, "", bin)
        n = split(bin, parts, "/"); bin = parts[n]; sub(/-[0-9a-f]+$/, "", bin)
        suite = bin " (" src ")"; done = 0; next
      }
      /^ *Doc-tests / { flush(); suite = "doc-tests " $2; done = 0; next }
      /^test result: / {
        if (suite == "") next
        p = $0; sub(/.* ok\. |.* FAILED\. /, "", p)
        status = ($3 == "ok.") ? "passed" : "FAILED"
        if (status == "FAILED") bad++; else good++
        printf "  %-6s %s: %s\n", status, suite, p; done = 1
      }
      END { flush(); printf "  test binaries: %d passed, %d failed\n", good, bad }
    ' "$TESTLOG"
  fi
  if [ -s "$SKIPS" ]; then
    echo "  skipped tests ($(wc -l < "$SKIPS")):"
    sed 's/^/    SKIPPED /' "$SKIPS"
    if [ "$partial" != 1 ]; then
      echo "  skips in a run that was not partial: a test skipped without being allowed to"
      failed=1
    fi
  elif [ "$partial" = 1 ]; then
    echo "  skipped tests: none"
  fi
  for n in "${notes[@]}"; do printf '  note   %s\n' "$n"; done
  if [ "$failed" = 0 ]; then
    echo "==> PASSED$([ "$partial" = 1 ] && [ -s "$SKIPS" ] && echo ' (partial: see the skipped tests above)')"
  else
    echo "==> FAILED"
  fi
}
finish() { summary; [ "$failed" = 0 ]; exit $?; }
trap 'failed=1; notes+=("interrupted"); finish' INT TERM

step() { printf '\n==> %s\n' "$*"; }
# run_step NAME CMD...: run a step; a failure ends the run (with the summary),
# except that in a partial run an optional step (NAME starting with "?") only
# records the failure.
run_step() {
  local name=$1
  shift
  step "$name"
  if "$@"; then
    steps+=("${name#\?}: ok")
    return 0
  fi
  if [ "$partial" = 1 ] && [ "${name#\?}" != "$name" ]; then
    steps+=("${name#\?}: FAILED (partial run: going on; the suites that need it skip)")
    return 0
  fi
  steps+=("${name#\?}: FAILED")
  failed=1
  finish
}

if [ "$(id -u)" = 0 ]; then
  run_step "?install test dependencies (scripts/install-test-deps.sh)" scripts/install-test-deps.sh
elif command -v sudo > /dev/null; then
  run_step "?install test dependencies (sudo scripts/install-test-deps.sh)" sudo scripts/install-test-deps.sh
else
  steps+=("install test dependencies: not run (not root, no sudo)")
  notes+=("not root and no sudo: scripts/install-test-deps.sh was not run; the guest suites fail if the guest is missing (--partial skips them)")
fi

run_step "cargo fmt --check" cargo fmt --all -- --check
run_step "cargo clippy --all-targets -- -D warnings" cargo clippy --workspace --all-targets -- -D warnings
run_step "build the binaries the end-to-end tests drive (release)" cargo build --release -p quire -p quire-perf
export QUIRE_BIN="$TARGET/release/quire"

step "cargo test (unit, property, protocol, bad-input, fuzz, end-to-end)"
# Property-based fuzzing runs briefly here; raise PROPTEST_CASES for a longer run.
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
# --no-fail-fast: every test binary runs, so the summary lists every failure.
cargo test --workspace --no-fail-fast "${extra[@]}" 2>&1 | tee "$TESTLOG"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ]; then steps+=("cargo test: ok"); else steps+=("cargo test: FAILED (exit $rc; log $TESTLOG)"); failed=1; fi
finish
