#!/bin/bash
# Benchmark (not a test): what moving pages costs (issue 12). Three peers (A, B, C)
# with RAM devices, one reactor each, all on core 0 (hybrid mode), quire-perf on
# core 1 through A, and etcd: on a 2-core machine, a lower bound of three machines.
#   1. The peer link: 128 KiB reads at QD32 through A of volume "far", whose every
#      page is on B (A and C were drained while it was made): what one link carries.
#   2. A drain: peer C gives every copy it holds of volume "one" (1 GiB written, one
#      copy per page, spread over A, B, C) to A and B, at replication.migration_mb_s
#      (RATE, default 100000: no limit): bytes moved over the time until every move is
#      cut over (its share of the link's rate), and until C holds none (a lease TTL
#      more: the old copies serve no read, then leave).
#   2b. One page moved: three written pages of "one", one after the other, from B to
#      A, with no other move: each copy's rate (from B's log).
#   3. The host during a drain: QD1 4 KiB random writes to "one" through A, TIME s
#      while nothing moves and TIME s while B is drained: p50/p99 of each and their
#      ratio (at RATE; run again with RATE=200 for the default limit).
#   4. A fourth peer joins: volume "big" (BIG_GB, default 64 GiB, of 4 MiB pages,
#      WRITE_GB, default 2 GiB, written) on A, B, C; D starts and the rebalancer
#      (paused until then) gives it its share: the time until the spread is as even
#      as it goes, the moves, the bytes D received.
#
#   perf/bench/migration.sh
#   RATE=200 TIME=8 perf/bench/migration.sh
#   JOIN_ONLY=1 BIG_GB=64 perf/bench/migration.sh     # section 4 alone
BENCH=migration
RATE=${RATE:-100000}
BIG_GB=${BIG_GB:-64}
WRITE_GB=${WRITE_GB:-2}
. "$(dirname "$0")/group-lib.sh"
group_up A B C
qc() { "$QUIRE" --socket "$WORK/$1/quire.sock" --json "${@:2}"; }
# allocated NAME VOLUME: pages of VOLUME that peer NAME holds
allocated() { qc "$1" volume list | python3 -c "import json,sys; print(sum(v['allocated_pages'] for v in json.load(sys.stdin) if v['name'] == '$2'))"; }
# drained NAME VOLUME: waits until NAME holds no page of VOLUME and no move is left
drained() {
  for _ in $(seq 3000); do
    [ "$(allocated "$1" "$2")" = 0 ] && [ "$(qc A migration list)" = "[]" ] && return 0
    sleep 0.05
  done
  echo "$1 was not drained of $2" >&2; return 1
}

if [ -z "${JOIN_ONLY:-}" ]; then
# "far": every page on B.
q peer drain A > /dev/null; q peer drain C > /dev/null
q volume create far --size 256M --page-size 4M --replicas 1 > /dev/null
for _ in $(seq 100); do q volume list | grep -q '^far ' && break; sleep 0.1; done
"$PERF" -q 32 -o 1M -w write -t 600 -d 256 -c 0x2 -r "$(trid far)" > /dev/null
q peer drain A --undo > /dev/null; q peer drain C --undo > /dev/null
[ "$(allocated B far)" = 64 ] || { echo "far is not all on B" >&2; exit 1; }

echo "== 1. the peer link: 128 KiB reads at QD32 through A, every page on B"
"$PERF" -q 32 -o 131072 -w randread -t "$TIME" -c 0x2 --json "$WORK/link.json" -r "$(trid far)" > /dev/null
link=$(python3 -c "import json; t=json.load(open('$WORK/link.json'))['total']; print(f\"{t['iops']*131072/1e6:.0f}\")")
echo "link: $link MB/s from B to A"

q volume create one --size 1G --page-size 4M --replicas 1 > /dev/null
for _ in $(seq 100); do q volume list | grep -q '^one ' && break; sleep 0.1; done
"$PERF" -q 32 -o 1M -w write -t 600 -d 1024 -c 0x2 -r "$(trid one)" > /dev/null

echo "== 2. C drained of \"one\" (rebuild_mb_s = $RATE)"
pages=$(allocated C one)
t0=$(date +%s.%N)
q peer drain C > /dev/null
# Copied: every move cut over (none "copying" any more).
for _ in $(seq 3000); do
  list=$(qc A migration list)
  [ "$list" != "[]" ] && ! echo "$list" | grep -q '"copying"' && break
  sleep 0.02
done
copied=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
drained C one
secs=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
# The copies alone, from C's log (C leads the sets it held): the first copy's start
# to the last copy's end of volume "one", and the bytes (C may have copied pages of
# the configured volume while the group formed: those are not counted).
sed 's/\x1b\[[0-9;]*m//g' "$WORK/C.log" | python3 -c "
import sys, re, datetime
starts, ends, total = [], [], 0
for line in sys.stdin:
    t = line.split(' ', 1)[0]
    if 'volume=one ' not in line:
        continue
    if 'rebuild of a member starts' in line or 'rebuild copied everything' in line:
        ts = datetime.datetime.fromisoformat(t.replace('Z', '+00:00')).timestamp()
        if 'starts' in line:
            starts.append(ts)
        else:
            ends.append(ts)
            total += int(re.search(r'bytes=(\d+)', line).group(1))
span = max(ends) - min(starts)
print(f'the copies alone (C\'s log): {total/1e6:.0f} MB in {span:.2f} s: {total/1e6/span:.0f} MB/s, {total/1e6/span/$link:.2f} of the link')
"
python3 -c "
b = $pages * 4 * 1024 * 1024
print(f'{$pages} pages ({b/1e6:.0f} MB): copied and cut over in $copied s ({b/1e6/$copied:.0f} MB/s, {b/1e6/$copied/$link:.2f} of the link), '
      f'C freed of them in $secs s (the old copies leave a lease TTL, $TTL s, after the cut-over)')"
q peer drain C --undo > /dev/null

echo "== 2b. three written pages of \"one\", one at a time, moved from B to A"
pages=$(qc A volume pages one | python3 -c "
import json, sys
p = json.load(sys.stdin)
on_b = [x for r in p['runs'] if r['owner'] == 'B' for x in range(r['first'], r['first'] + r['count'])]
print(' '.join(str(x) for x in on_b[:3]))")
for page in $pages; do
  q page move one "$page" A > /dev/null
  for _ in $(seq 1000); do [ "$(qc A migration list)" = "[]" ] && break; sleep 0.02; done
done
# Each copy's bytes and time, from B's log (B leads the pages it holds).
sed 's/\x1b\[[0-9;]*m//g' "$WORK/B.log" | python3 -c "
import sys, re, statistics
rates = []
for line in sys.stdin:
    if 'volume=one ' in line and 'rebuild copied everything' in line:
        b, s = int(re.search(r'bytes=(\d+)', line).group(1)), float(re.search(r'seconds=([0-9.]+)', line).group(1))
        rates.append(b / 1e6 / s)
print('one page moved: ' + ', '.join(f'{r:.0f}' for r in rates) + f' MB/s; median {statistics.median(rates):.0f} MB/s, {statistics.median(rates)/$link:.2f} of the link')
"

echo "== 3. QD1 4 KiB random writes to \"one\" through A: nothing moving, then B drained"
quiet=$(run one 1)
q peer drain B > /dev/null
moving=$(run one 1)
drained B one || true
echo "nothing moving: $quiet (IOPS p50_us p99_us max_us)"
echo "B drained:      $moving"
set -- $quiet $moving
python3 -c "print(f'p50 x{$6/$2:.2f}, p99 x{$7/$3:.2f} while B is drained')"
q peer drain B --undo > /dev/null
q volume delete far > /dev/null; q volume delete one > /dev/null
fi

echo "== 4. a fourth peer joins: time to the ideal spread (\"big\": $BIG_GB GiB of 4 MiB pages, $WRITE_GB GiB written)"
q volume create big --size "${BIG_GB}G" --page-size 4M --replicas 1 > /dev/null
for _ in $(seq 100); do q volume list | grep -q '^big ' && break; sleep 0.1; done
"$PERF" -q 32 -o 1M -w write -t 600 -d $((WRITE_GB * 1024)) -c 0x2 -r "$(trid big)" > /dev/null
peer D; start D; wait_port "$PORT_D"; live_are 4
t0=$(date +%s.%N)
q rebalance resume > /dev/null
settled() {
  qc A rebalance status | python3 -c "
import json, sys
s = json.load(sys.stdin)
ok = s['moves'] == 0 and ('within' in s['state'] or 'whole pages' in s['state'])
d = [p for p in s['peers'] if p['name'] == 'D']
sys.exit(0 if ok and d and d[0]['held_bytes'] > 0 else 1)"
}
for _ in $(seq 12000); do settled && break; sleep 0.05; done
secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
moves=$(cat "$WORK"/*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'rebalancer: moving' || true)
qc A rebalance status | python3 -c "
import json, sys
s = json.load(sys.stdin)
for p in s['peers']:
    print(f\"  {p['name']}: {p['held_bytes'] >> 20} MiB of copies, ideal {p['ideal_bytes'] >> 20} MiB ({p['share_pct']}%)\")
print('  ' + s['state'])"
echo "D received its share in $secs s: $moves moves of up to $BATCH_PAGES pages, $(allocated D big) written pages copied to D (moves_max $MOVES_MAX, rebuild_mb_s $RATE)"
