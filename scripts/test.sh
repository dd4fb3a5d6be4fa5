#!/bin/bash
# The whole test suite, as a newcomer and CI run it: installs what the tests need
# (Debian packages: QEMU, a guest kernel, nvme-cli, fio, e2fsprogs), builds the
# binaries the end-to-end tests drive, checks formatting and lints, and runs every
# test, the real-host end-to-end suites (Linux NVMe/TCP host and QEMU's NVMe
# controller in a guest) included.
#
#   scripts/test.sh              everything
#   scripts/test.sh -- ARGS      extra arguments for `cargo test` (e.g. a filter)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

if [ "$(id -u)" = 0 ]; then
  scripts/install-test-deps.sh
elif command -v sudo >/dev/null; then
  sudo scripts/install-test-deps.sh
else
  echo "test.sh: run scripts/install-test-deps.sh as root first (not root, no sudo)" >&2
fi

extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the end-to-end tests drive (release)"
cargo build --release -p quire -p quire-perf
export QUIRE_BIN="$REPO/target/release/quire"

step "cargo test (unit, property, protocol, bad-input, fuzz, end-to-end)"
# Property-based fuzzing runs briefly here; raise PROPTEST_CASES for a longer run.
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
cargo test --workspace "${extra[@]}"
