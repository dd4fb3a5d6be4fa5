# nvmet-standin.sh (sourced): start the Linux kernel's own NVMe/TCP target
# (nvmet-tcp) inside the guest, as a stand-in for Quire when testing the
# guest scripts themselves.  It listens on $ADDR:$PORT (default
# 127.0.0.1:4420; nvmet answers discovery on the same port) and exports
# subsystem $NQN with one namespace: a file on an ext4 filesystem on a RAM
# disk (brd), so Write Zeroes (fallocate zero-range) and Deallocate (punch
# hole) really produce zeroes.
# Env: ADDR, PORT, NQN, STANDIN_MB (namespace size, default 256).
ADDR=${ADDR:-127.0.0.1}
PORT=${PORT:-4420}
NQN=${NQN:-nqn.2024-01.io.quire.test:standin}
STANDIN_MB=${STANDIN_MB:-256}
modprobe brd rd_nr=1 rd_size=$(( (STANDIN_MB + 64) * 1024 ))
mkfs.ext4 -q -F -b 4096 /dev/ram0   # 4 KiB blocks: nvmet gives the namespace this LBA size
mkdir -p /mnt/standin
mount -t ext4 /dev/ram0 /mnt/standin
truncate -s "${STANDIN_MB}M" /mnt/standin/ns1.img
modprobe nvmet-tcp
C=/sys/kernel/config/nvmet
mkdir "$C/subsystems/$NQN"
echo 1 > "$C/subsystems/$NQN/attr_allow_any_host"
echo QUIRE-STANDIN-1 > "$C/subsystems/$NQN/attr_serial"
mkdir "$C/subsystems/$NQN/namespaces/1"
printf %s /mnt/standin/ns1.img > "$C/subsystems/$NQN/namespaces/1/device_path"
echo 1 > "$C/subsystems/$NQN/namespaces/1/enable"
mkdir "$C/ports/1"
echo tcp > "$C/ports/1/addr_trtype"
echo ipv4 > "$C/ports/1/addr_adrfam"
echo "$ADDR" > "$C/ports/1/addr_traddr"
echo "$PORT" > "$C/ports/1/addr_trsvcid"
ln -s "$C/subsystems/$NQN" "$C/ports/1/subsystems/$NQN"
echo "nvmet stand-in target up: $NQN on $ADDR:$PORT"
