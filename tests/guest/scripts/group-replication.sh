# group-replication.sh: the Linux host's side of the replication suite
# (tests/tests/e2e_group_replication.rs): a host with native NVMe multipath,
# round-robin over one path per peer, against a group of three Quire peers and a
# volume with two copies of every page.  Peers a and b listen on the host side of a
# veth pair, c inside a network namespace behind it (the guest reaches both).
#
#  1. `nvme connect-all`: three paths, one namespace head; fio writes region 0
#     with crc32c verify.
#  2. A partition: fio writes and verifies region 1 again and again (a new seed
#     each pass, so that a stale block fails the verify) while the test cuts c off
#     from a, b, etcd and this host, and heals it 12 s later; the loop ends at the
#     first pass that starts after the test says c is back in sync (step 2).
#     Region 0 verifies again; three paths are live again.
#  3. A scrub: 64 KiB of random bytes written at SCRUB_PIECE (in 64 KiB units,
#     a piece of a page a leads); the test corrupts one member's copy in its device
#     file, checks that the corruption shows, and runs `quire scrub` (step 3);
#     then the piece reads back right through every path, round-robin, 6 times.
#  4. A peer killed for good: fio writes region 2 in a loop while the test kills c
#     with SIGKILL and a and b rebuild every copy c held on the peer of each set
#     that did not have it (step 4).  Then regions 0, 1 and 2 and the piece verify.
#
# Env: DISC_ADDR, DISC_PORT (a peer's discovery), NQN, CTRL_PORT (the test's step
#   counter at 10.0.2.2), PEERS (3), REGION_MB, SCRUB_PIECE.
# Console: "MARK phase N ..." lines, "PASS group-replication.sh".
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-120}
. ./lib.sh
need_env DISC_ADDR DISC_PORT NQN CTRL_PORT PEERS REGION_MB SCRUB_PIECE

# ---- 1. one path per peer -----------------------------------------------------
group_phase_one /tmp/rep

# ---- 2. a partition under I/O ---------------------------------------------------
looped_phase 1 2 "the partition"
verify_only 0 1 p2-region0
wait_until 60 "$PEERS live paths again" paths_are "$PEERS"
mark "phase 2 verified: no I/O error, $PEERS paths again"

# ---- 3. a scrub repairs a corrupted copy -------------------------------------------
head -c 65536 /dev/urandom > "$WORK/piece"
want=$(md5sum < "$WORK/piece" | cut -d' ' -f1)
dd if="$WORK/piece" of="$DEV" bs=64k seek="$SCRUB_PIECE" count=1 oflag=direct conv=fsync 2> /dev/null ||
  fail "writing the piece failed"
mark "phase 3 written: $want"
wait_until 120 "the test to corrupt a copy and scrub" step_at_least 3
# read_piece: the piece as read from the device, O_DIRECT (through the next path)
read_piece() { dd if="$DEV" bs=64k skip="$SCRUB_PIECE" count=1 iflag=direct 2> /dev/null | md5sum | cut -d' ' -f1; }
for i in 1 2 3 4 5 6; do
  got=$(read_piece)
  [ "$got" = "$want" ] || fail "read $i of the piece after the scrub: $got, not $want"
done
mark "phase 3 verified: the piece reads back right through every path"

# ---- 4. a peer killed for good under I/O ------------------------------------------
looped_phase 2 4 "the death of a peer"
verify_only 0 1 p4-region0
verify_only 1 "$(cat "$WORK/seed1")" p4-region1
verify_only 2 "$(cat "$WORK/seed2")" p4-region2
[ "$(read_piece)" = "$want" ] || fail "the piece changed"
mark "phase 4 verified: every region and the piece, $(live_paths) paths live"
nvme disconnect-all > /dev/null || fail "nvme disconnect-all failed"
pass
