# group-migration.sh: the Linux host's side of the migration suite
# (tests/tests/e2e_group_migration.rs): a host with native NVMe multipath,
# round-robin over one path per peer, against three Quire peers and a volume with two
# copies of every page, while pages move between the peers.
#
#  1. `nvme connect-all`: three paths, one namespace head; fio writes region 0 with
#     crc32c verify.
#  2. fio writes and verifies region 1 in a loop of new seeds while the test moves
#     pages by hand (`quire page move`), until step 2.
#  3. fio writes and verifies region 2 in a loop while the test drains a peer
#     (`quire peer drain`): every copy it held moves to the two others, until step 3;
#     the drained peer's path turns non-optimized (ANA), the others stay optimized.
#  4. fio writes and verifies region 3 in a loop while a fourth peer joins and the
#     coordinator's rebalancer gives it its share of the copies, until step 4.
#  5. fio writes and verifies region 4 in a loop while the test kills a moving page's
#     source mid-copy and restarts it, until step 5.
#  6. fio writes and verifies region 5 in a loop while the test kills the coordinator
#     mid-move and restarts it, until step 6.
#  7. Regions 0 to 5 verify; every path is live again (a drained peer still serves
#     I/O, forwarding it; a restarted peer's path reconnects; the host has no path to
#     the fourth peer: its I/O to the pages there is forwarded).
#  8. A skewed workload: fio writes and verifies two pages the test chose (both led by
#     one peer: HOT_PORT says which, as A * 1000 + B), and nothing else, in a loop,
#     while the coordinator's rebalancer moves one of them away for load, until step 8.
#
# Env: DISC_ADDR, DISC_PORT (a peer's discovery), NQN, CTRL_PORT (the test's step
#   counter at 10.0.2.2), HOT_PORT (its hot pages), PEERS (3), REGION_MB, PAGE_MB.
# Console: "MARK phase N ..." lines, "PASS group-migration.sh".
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-60}
. ./lib.sh
need_env DISC_ADDR DISC_PORT NQN CTRL_PORT HOT_PORT PEERS REGION_MB PAGE_MB

# hot_pages: the test's two hot pages (HOT_A, HOT_B), once it has chosen them
hot_pages() {
  _h=$(timeout 10 nc "$ADDR" "$HOT_PORT" < /dev/null 2> /dev/null | sed -n 's/^hot \([0-9][0-9]*\)$/\1/p')
  [ -n "$_h" ] && [ "$_h" -gt 0 ] || return 1
  HOT_A=$(( _h / 1000 )); HOT_B=$(( _h % 1000 ))
}
# hot_loop STEP: fio writes and verifies pages HOT_A and HOT_B (one job each), a new
# seed each pass, until a pass starts after the test's step reached STEP
hot_loop() {
  _pass=0
  while :; do
    _seed=$(( 9000 + _pass ))
    _job="--ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 --size=${PAGE_MB}M --verify=crc32c --verify_fatal=1 --do_verify=1 --eta=never --randrepeat=0 --randseed=$_seed"
    # shellcheck disable=SC2086
    fio --filename="$DEV" --output="$WORK/hot$_pass.out" \
      --name=hot-a --offset=$(( HOT_A * PAGE_MB ))M $_job \
      --name=hot-b --offset=$(( HOT_B * PAGE_MB ))M $_job ||
      { cat "$WORK/hot$_pass.out"; fail "fio on the hot pages failed (pass $_pass)"; }
    grep -Eq 'err= *0' "$WORK/hot$_pass.out" || { cat "$WORK/hot$_pass.out"; fail "fio on the hot pages reported errors"; }
    _pass=$(( _pass + 1 ))
    if step_at_least "$1"; then break; fi
  done
  echo "MARK hot pages $HOT_A and $HOT_B: $_pass passes written and verified"
}

group_phase_one /tmp/mig

looped_phase 1 2 "pages moved by hand"
mark "phase 2 verified: no I/O error"

looped_phase 2 3 "a peer drained"
# The drained peer's path is non-optimized (its ANA change event made the host read
# the ANA log again): the host sends its I/O to the two others.
wait_until 30 "the drained peer's path non-optimized" ana_states_are "non-optimized optimized optimized"
mark "phase 3 verified: no I/O error; paths $(ana_states)"

looped_phase 3 4 "a fourth peer joined and rebalanced"
mark "phase 4 verified: no I/O error"

looped_phase 4 5 "a moving page's source killed mid-copy and restarted"
mark "phase 5 verified: no I/O error"

looped_phase 5 6 "the coordinator killed mid-move and restarted"
mark "phase 6 verified: no I/O error"

verify_only 0 1 p7-region0
for r in 1 2 3 4 5; do
  verify_only "$r" "$(cat "$WORK/seed$r")" "p7-region$r"
done
wait_until 90 "$PEERS live paths" paths_are "$PEERS"
mark "phase 7 verified: every region, $PEERS paths live"

wait_until 120 "the test's hot pages" hot_pages
mark "hot pages $HOT_A and $HOT_B"
phase_while 8 "a hot page moved for load" hot_loop 8
mark "phase 8 verified: no I/O error"
nvme disconnect-all > /dev/null || fail "nvme disconnect-all failed"
pass
