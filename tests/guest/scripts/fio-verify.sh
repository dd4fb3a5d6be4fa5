# fio-verify.sh: write + crc32c-verify with fio at several block sizes and
# queue depths (libaio, O_DIRECT), over a fresh connection.
# Env: PORT, NQN (see lib.sh); FIO_SIZE_MB per run (default 16),
# FIO_BS (default "4k 128k 1m"), FIO_QD (default "1 32").
. ./lib.sh
need_env PORT NQN
FIO_SIZE_MB=${FIO_SIZE_MB:-16}
FIO_BS=${FIO_BS:-4k 128k 1m}
FIO_QD=${FIO_QD:-1 32}

connect
regions=$(( $(dev_bytes) / (FIO_SIZE_MB * 1048576) ))
[ "$regions" -ge 1 ] || fail "namespace ($(dev_bytes) bytes) smaller than FIO_SIZE_MB=$FIO_SIZE_MB"
i=0
for bs in $FIO_BS; do
  for qd in $FIO_QD; do
    # each run on its own region (while the namespace has room), so that a
    # misdirected write shows up as a verify error of a later run
    off=$(( (i % regions) * FIO_SIZE_MB ))M
    i=$(( i + 1 ))
    mark "fio bs=$bs iodepth=$qd offset=$off size=${FIO_SIZE_MB}M"
    fio --name="verify-$bs-$qd" --filename="$DEV" --ioengine=libaio --direct=1 \
        --rw=randwrite --bs="$bs" --iodepth="$qd" --offset="$off" --size="${FIO_SIZE_MB}M" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --exitall_on_error=1 \
        --randrepeat=0 --output=/tmp/fio.out ||
      { cat /tmp/fio.out; fail "fio bs=$bs iodepth=$qd failed"; }
    grep -E 'IOPS=|err=' /tmp/fio.out
    grep -Eq 'err= *0' /tmp/fio.out || { cat /tmp/fio.out; fail "fio reported errors (bs=$bs iodepth=$qd)"; }
  done
done
disconnect
pass
