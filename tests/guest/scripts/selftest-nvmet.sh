# selftest-nvmet.sh: run the guest scripts against the kernel's nvmet-tcp
# target inside this same guest (over its loopback), to test the scripts
# themselves without Quire.  Env: TESTS (default: all of them, in order).
set -eu
set -o pipefail
export ADDR=127.0.0.1 PORT=4420 DISC_PORT=4420 NQN=nqn.2024-01.io.quire.test:standin
. ./nvmet-standin.sh
TESTS=${TESTS:-discover-connect fio-verify zeroes-dealloc-flush fs-write fs-check keepalive-loss}
export EXPECT_SERIAL=QUIRE-STANDIN-1 EXPECT_SIZE=$(( STANDIN_MB * 1048576 ))
# the guest's own loopback carries this traffic: freeze lo, not eth0
export FREEZE_IF=lo DOWN_SECS="${DOWN_SECS:-8}"
failed=
for t in $TESTS; do
  echo "=== selftest: $t"
  if [ "$t" = fs-check ] && [ -f /tmp/fs-write.log ]; then
    EXPECT_MANIFEST_SHA256=$(sed -n 's/^MANIFEST_SHA256=//p' /tmp/fs-write.log)
    export EXPECT_MANIFEST_SHA256
  fi
  if sh "./$t.sh" 2>&1 | tee "/tmp/$t.log"; then
    echo "=== selftest: $t passed"
  else
    echo "=== selftest: $t FAILED"
    failed="$failed $t"
  fi
done
if [ "$TESTS" != "${TESTS#*keepalive-loss}" ]; then
  # the target side of keepalive-loss: nvmet must have timed the controller out
  dmesg | grep -q 'keep-alive timer.*expired' || { echo "=== selftest: nvmet never expired a keep-alive timer"; failed="$failed keepalive-target"; }
fi
[ -z "$failed" ] || { echo "SELFTEST FAILED:$failed"; exit 1; }
echo "SELFTEST PASSED"
