//! The rules a parsed configuration must meet before the daemon starts on it.
//!
//! Types already rule out most nonsense (a port is a `u16`, a keyword is an enum);
//! these are the rules types cannot express: ranges, powers of two, relations between
//! keys (`max_h2c_data ≤ max_transfer_size`), per-kind device keys, unique names.
//! The checks run in file order and the first failure is returned, as
//! `key = value: expected …`, so that the operator fixes one line at a time. Ranges
//! are chosen to be wide enough for any real deployment and narrow enough that a value
//! outside them is a typo (a 4 GiB chunk size, 100 000 reactors).

use std::collections::HashSet;
use std::path::Path;

use crate::error::ConfigError;
use crate::schema::{
    Buffers, Config, Device, DeviceKind, DirectIo, Group, Log, Peer, Reactors, Rebalance, Replication, Target, Volume,
};
use crate::size::ByteSize;

/// Most reactor threads.
pub const REACTORS_MAX: u32 = 128;
/// Highest core number that may be named.
pub const CORE_ID_MAX: u32 = 1023;
/// Longest hybrid spin, in µs (1 s).
pub const SPIN_US_MAX: u32 = 1_000_000;
/// Smallest queue depth offered.
pub const QUEUE_DEPTH_MIN: u32 = 16;
/// Most `[[device]] zeroed_spares`.
pub const ZEROED_SPARES_MAX: u32 = 1024;
/// Largest queue depth offered.
pub const QUEUE_DEPTH_MAX: u32 = 1024;
/// Most I/O queues per controller.
pub const IO_QUEUES_MAX: u32 = 256;
/// Largest in-capsule data.
pub const IN_CAPSULE_DATA_MAX: u64 = 128 << 10;
/// Smallest MDTS.
pub const TRANSFER_SIZE_MIN: u64 = 4 << 10;
/// Largest MDTS.
pub const TRANSFER_SIZE_MAX: u64 = 4 << 20;
/// Keep-alive cap bounds, ms.
pub const KEEP_ALIVE_MS_MIN: u32 = 100;
/// Keep-alive cap bounds, ms (one hour).
pub const KEEP_ALIVE_MS_MAX: u32 = 3_600_000;
/// Smallest buffer chunk.
pub const CHUNK_SIZE_MIN: u64 = 4 << 10;
/// Largest buffer chunk (one hugepage).
pub const CHUNK_SIZE_MAX: u64 = 2 << 20;
/// Fewest buffer chunks.
pub const CHUNK_COUNT_MIN: u32 = 16;
/// Most buffer chunks.
pub const CHUNK_COUNT_MAX: u32 = 1 << 20;
/// Largest buffer pool.
pub const POOL_BYTES_MAX: u64 = 64 << 30;
/// Most devices.
pub const DEVICES_MAX: usize = 64;
/// Smallest file or RAM device.
pub const DEVICE_SIZE_MIN: u64 = 1 << 20;
/// Deepest device queue pair of a reactor.
pub const DEVICE_QUEUE_DEPTH_MAX: u32 = 65535;
/// Deepest io_uring queue pair (file and block devices): the `quire-drivers` limit
/// (`uring::DEPTH_MAX`, which a test of the appliance compares with this).
pub const URING_QUEUE_DEPTH_MAX: u32 = 4096;
/// Most volumes in the config file.
pub const VOLUMES_MAX: usize = 1024;
/// Longest volume or peer name.
pub const NAME_LEN_MAX: usize = 64;
/// Smallest page size.
pub const PAGE_SIZE_MIN: u64 = 64 << 10;
/// Largest page size.
pub const PAGE_SIZE_MAX: u64 = 1 << 30;
/// Longest NQN (NVMe base spec: 223 bytes).
pub const NQN_LEN_MAX: usize = 223;
/// Range of `group.lease_ttl_s`.
pub const LEASE_TTL_S: std::ops::RangeInclusive<u32> = 2..=60;
/// Range of `group.connect_timeout_ms`.
pub const CONNECT_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 100..=600_000;
/// Range of `reactors.control_credits`.
pub const CONTROL_CREDITS: std::ops::RangeInclusive<u32> = 1..=65_536;
/// Range of `group.leave_grace_ms`.
pub const LEAVE_GRACE_MS: std::ops::RangeInclusive<u32> = 0..=60_000;
/// Range of `group.hold_ms`.
pub const HOLD_MS: std::ops::RangeInclusive<u32> = 1000..=600_000;
/// Range of `replication.replace_after_s`.
pub const REPLACE_AFTER_S: std::ops::RangeInclusive<u32> = 1..=30 * 86_400;
/// Range of `replication.rebuild_mb_s`, `migration_mb_s` and `scrub_mb_s`.
pub const COPY_MB_S: std::ops::RangeInclusive<u32> = 1..=100_000;
/// Range of `replication.scrub_every_h`.
pub const SCRUB_EVERY_H: std::ops::RangeInclusive<u32> = 0..=8760;
/// Range of `rebalance.tolerance_pct`.
pub const TOLERANCE_PCT: std::ops::RangeInclusive<u32> = 1..=100;
/// Range of `rebalance.moves_max`.
pub const MOVES_MAX: std::ops::RangeInclusive<u32> = 1..=64;
/// Range of `rebalance.batch_pages`.
pub const BATCH_PAGES: std::ops::RangeInclusive<u32> = 1..=1024;
/// Range of `rebalance.load_tolerance_pct`.
pub const LOAD_TOLERANCE_PCT: std::ops::RangeInclusive<u32> = 0..=1000;
/// Range of `rebalance.load_interval_s`.
pub const LOAD_INTERVAL_S: std::ops::RangeInclusive<u32> = 1..=3600;
/// Range of `rebalance.steer_interval_s`.
pub const STEER_INTERVAL_S: std::ops::RangeInclusive<u32> = 1..=3600;
/// Shortest group secret, bytes.
pub const SECRET_LEN_MIN: usize = 16;
/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
pub const SOCKET_PATH_LEN_MAX: usize = 107;

const _: () = assert!(TRANSFER_SIZE_MIN <= TRANSFER_SIZE_MAX);
const _: () = assert!(IN_CAPSULE_DATA_MAX <= CHUNK_SIZE_MAX);
const _: () = assert!(PAGE_SIZE_MIN.is_power_of_two() && PAGE_SIZE_MAX.is_power_of_two());

type Result<T = ()> = std::result::Result<T, ConfigError>;

/// Checks every rule; the first broken one is the error.
pub fn validate(config: &Config) -> Result {
    peer(&config.peer)?;
    reactors(&config.reactors)?;
    buffers(&config.buffers, &config.target)?;
    target(&config.target, &config.buffers)?;
    log(&config.log)?;
    group(&config.group)?;
    replication(&config.replication)?;
    rebalance(&config.rebalance)?;
    if let Some(listen) = &config.metrics.listen {
        let ok = listen.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_multicast());
        ensure(ok, "metrics.listen", quoted(listen), "\"IP:PORT\" (e.g. \"0.0.0.0:9442\"), or \"\" for off")?;
    }
    devices(&config.devices, !config.volumes.is_empty())?;
    volumes(&config.volumes)
}

fn replication(r: &Replication) -> Result {
    let (lo, hi) = (REPLACE_AFTER_S.start(), REPLACE_AFTER_S.end());
    ensure(
        REPLACE_AFTER_S.contains(&r.replace_after_s),
        "replication.replace_after_s",
        r.replace_after_s,
        format!("{lo}..={hi}"),
    )?;
    let (lo, hi) = (COPY_MB_S.start(), COPY_MB_S.end());
    ensure(COPY_MB_S.contains(&r.rebuild_mb_s), "replication.rebuild_mb_s", r.rebuild_mb_s, format!("{lo}..={hi}"))?;
    ensure(
        COPY_MB_S.contains(&r.migration_mb_s),
        "replication.migration_mb_s",
        r.migration_mb_s,
        format!("{lo}..={hi}"),
    )?;
    ensure(COPY_MB_S.contains(&r.scrub_mb_s), "replication.scrub_mb_s", r.scrub_mb_s, format!("{lo}..={hi}"))?;
    let (lo, hi) = (SCRUB_EVERY_H.start(), SCRUB_EVERY_H.end());
    ensure(
        SCRUB_EVERY_H.contains(&r.scrub_every_h),
        "replication.scrub_every_h",
        r.scrub_every_h,
        format!("{lo}..={hi} (0: on demand only)"),
    )
}

fn rebalance(r: &Rebalance) -> Result {
    let (lo, hi) = (TOLERANCE_PCT.start(), TOLERANCE_PCT.end());
    ensure(
        TOLERANCE_PCT.contains(&r.tolerance_pct),
        "rebalance.tolerance_pct",
        r.tolerance_pct,
        format!("{lo}..={hi}"),
    )?;
    let (lo, hi) = (MOVES_MAX.start(), MOVES_MAX.end());
    ensure(MOVES_MAX.contains(&r.moves_max), "rebalance.moves_max", r.moves_max, format!("{lo}..={hi}"))?;
    let (lo, hi) = (BATCH_PAGES.start(), BATCH_PAGES.end());
    ensure(BATCH_PAGES.contains(&r.batch_pages), "rebalance.batch_pages", r.batch_pages, format!("{lo}..={hi}"))?;
    let (lo, hi) = (LOAD_TOLERANCE_PCT.start(), LOAD_TOLERANCE_PCT.end());
    ensure(
        LOAD_TOLERANCE_PCT.contains(&r.load_tolerance_pct),
        "rebalance.load_tolerance_pct",
        r.load_tolerance_pct,
        format!("{lo}..={hi}"),
    )?;
    let (lo, hi) = (LOAD_INTERVAL_S.start(), LOAD_INTERVAL_S.end());
    ensure(
        LOAD_INTERVAL_S.contains(&r.load_interval_s),
        "rebalance.load_interval_s",
        r.load_interval_s,
        format!("{lo}..={hi}"),
    )?;
    let (lo, hi) = (STEER_INTERVAL_S.start(), STEER_INTERVAL_S.end());
    ensure(
        STEER_INTERVAL_S.contains(&r.steer_interval_s),
        "rebalance.steer_interval_s",
        r.steer_interval_s,
        format!("{lo}..={hi}"),
    )
}

fn group(group: &Group) -> Result {
    let listen = group.listen.parse::<std::net::SocketAddr>().ok();
    let ok = listen.is_some_and(|a| !a.ip().is_multicast());
    ensure(ok, "group.listen", quoted(&group.listen), "\"IP:PORT\", the peer-link listener")?;
    for url in &group.etcd {
        ensure(
            etcd_endpoint(url).is_some(),
            "group.etcd",
            quoted(url),
            "\"http://HOST:PORT\" (TLS to etcd is not supported)",
        )?;
    }
    let ttl = group.lease_ttl_s;
    let (lo, hi) = (LEASE_TTL_S.start(), LEASE_TTL_S.end());
    ensure(LEASE_TTL_S.contains(&ttl), "group.lease_ttl_s", ttl, format!("{lo}..={hi}"))?;
    let t = group.connect_timeout_ms;
    let (lo, hi) = (CONNECT_TIMEOUT_MS.start(), CONNECT_TIMEOUT_MS.end());
    ensure(CONNECT_TIMEOUT_MS.contains(&t), "group.connect_timeout_ms", t, format!("{lo}..={hi}"))?;
    let h = group.hold_ms;
    let (lo, hi) = (HOLD_MS.start(), HOLD_MS.end());
    ensure(HOLD_MS.contains(&h), "group.hold_ms", h, format!("{lo}..={hi}"))?;
    let g = group.leave_grace_ms;
    let (lo, hi) = (LEAVE_GRACE_MS.start(), LEAVE_GRACE_MS.end());
    ensure(LEAVE_GRACE_MS.contains(&g), "group.leave_grace_ms", g, format!("{lo}..={hi}"))?;
    if let Some(weight) = group.weight {
        ensure(weight >= 1, "group.weight", weight, "at least 1")?;
    }
    if group.enabled() && group.secret_file.is_none() {
        let expected = "a file holding the group's shared secret (required when group.etcd is set)";
        return Err(ConfigError::invalid("group.secret_file", "\"\"", expected));
    }
    Ok(())
}

/// `"http://HOST:PORT"` → `(HOST, PORT)`.
pub fn etcd_endpoint(url: &str) -> Option<(&str, u16)> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c));
    ok.then_some((host, port))
}

fn ensure(ok: bool, key: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> Result {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, value, expected))
    }
}

/// A size as an operator would recognise it: `"4M"` or `3000`.
fn size_text(size: ByteSize) -> String {
    let text = size.to_string();
    if text.ends_with(|c: char| c.is_ascii_digit()) {
        text
    } else {
        format!("{text:?}")
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn path_text(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn is_name(text: &str, upper_ok: bool) -> bool {
    let char_ok = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '-')
            || (upper_ok && c.is_ascii_uppercase())
    };
    !text.is_empty() && text.len() <= NAME_LEN_MAX && text.chars().all(char_ok)
}

fn peer(peer: &Peer) -> Result {
    ensure(is_name(&peer.name, true), "peer.name", quoted(&peer.name), "1 to 64 of A-Z a-z 0-9 . _ -")?;
    ensure(!peer.data_dir.as_os_str().is_empty(), "peer.data_dir", "\"\"", "a directory path")?;
    let (key, socket) = match &peer.rpc_socket {
        Some(path) => ("peer.rpc_socket", peer.data_dir.join(path)),
        None => ("peer.data_dir", peer.data_dir.join(crate::RPC_SOCKET_NAME)),
    };
    let expected = format!("a socket path of at most {SOCKET_PATH_LEN_MAX} bytes (was {})", socket.display());
    ensure(socket.as_os_str().len() <= SOCKET_PATH_LEN_MAX, key, path_text(&socket), expected)
}

fn reactors(reactors: &Reactors) -> Result {
    if let Some(count) = reactors.count {
        ensure((1..=REACTORS_MAX).contains(&count), "reactors.count", count, format!("1..={REACTORS_MAX}"))?;
        let cores = reactors.cores.len();
        let expected = format!("{cores} (the number of reactors.cores), or leave count out");
        ensure(cores == 0 || cores == count as usize, "reactors.count", count, expected)?;
    }
    let cores = &reactors.cores;
    let cores_text = format!("{cores:?}");
    ensure(
        cores.len() <= REACTORS_MAX as usize,
        "reactors.cores",
        &cores_text,
        format!("at most {REACTORS_MAX} cores"),
    )?;
    let core_max = cores.iter().copied().max().unwrap_or(0);
    ensure(core_max <= CORE_ID_MAX, "reactors.cores", &cores_text, format!("core numbers 0..={CORE_ID_MAX}"))?;
    let unique: HashSet<u32> = cores.iter().copied().collect();
    ensure(unique.len() == cores.len(), "reactors.cores", &cores_text, "each core at most once")?;
    let credits = reactors.control_credits;
    ensure(
        CONTROL_CREDITS.contains(&credits),
        "reactors.control_credits",
        credits,
        format!("{}..={}", CONTROL_CREDITS.start(), CONTROL_CREDITS.end()),
    )?;
    let spin = reactors.spin_us;
    ensure(spin <= SPIN_US_MAX, "reactors.spin_us", spin, format!("0..={SPIN_US_MAX}"))
}

fn target(target: &Target, buffers: &Buffers) -> Result {
    let listen = target.listen;
    ensure(!listen.is_multicast(), "target.listen", quoted(&listen.to_string()), "a unicast IP address")?;
    if let Some(advertise) = &target.advertise {
        let ip = advertise
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| advertise.parse::<std::net::SocketAddr>().ok().filter(|a| a.port() != 0).map(|a| a.ip()));
        let ok = ip.is_some_and(|ip| !ip.is_unspecified() && !ip.is_multicast());
        ensure(ok, "target.advertise", quoted(advertise), "\"IP\" or \"IP:PORT\", an address hosts can connect to")?;
    }
    // target.port = 0 asks the OS for any free port (tests, several peers on one host);
    // the bound port is printed and reported by `quire serve`.
    let discovery = target.discovery_port;
    let expected = format!("0 (none) or a port other than target.port ({})", target.port);
    ensure(discovery == 0 || discovery != target.port, "target.discovery_port", discovery, expected)?;
    let depth = target.max_queue_depth;
    let range = QUEUE_DEPTH_MIN..=QUEUE_DEPTH_MAX;
    ensure(range.contains(&depth), "target.max_queue_depth", depth, format!("{QUEUE_DEPTH_MIN}..={QUEUE_DEPTH_MAX}"))?;
    let queues = target.max_io_queues;
    ensure((1..=IO_QUEUES_MAX).contains(&queues), "target.max_io_queues", queues, format!("1..={IO_QUEUES_MAX}"))?;
    in_capsule(target.in_capsule_data_size, buffers.chunk_size)?;
    let mdts = target.max_transfer_size;
    let ok = mdts.0.is_power_of_two() && (TRANSFER_SIZE_MIN..=TRANSFER_SIZE_MAX).contains(&mdts.0);
    ensure(ok, "target.max_transfer_size", size_text(mdts), "a power of two from 4K to 4M")?;
    // One command's data is a list of chunks that a device request must be able to name.
    let chunk = buffers.chunk_size;
    if chunk.0.is_power_of_two() && chunk.0 >= 4096 {
        let expected = format!(
            "at least target.max_transfer_size / {CHUNKS_PER_COMMAND_MAX} ({}): one command's data spans at most {CHUNKS_PER_COMMAND_MAX} chunks",
            ByteSize(mdts.0.div_ceil(CHUNKS_PER_COMMAND_MAX))
        );
        ensure(mdts.0.div_ceil(chunk.0) <= CHUNKS_PER_COMMAND_MAX, "buffers.chunk_size", size_text(chunk), expected)?;
    }
    let h2c = target.max_h2c_data;
    let ok = h2c.0 >= 4096 && h2c.0.is_multiple_of(4096) && h2c <= mdts;
    let expected = format!("a multiple of 4K from 4K to target.max_transfer_size ({mdts})");
    ensure(ok, "target.max_h2c_data", size_text(h2c), expected)?;
    if let Some(kato) = target.keep_alive_timeout_ms_max {
        let range = KEEP_ALIVE_MS_MIN..=KEEP_ALIVE_MS_MAX;
        let expected = format!("{KEEP_ALIVE_MS_MIN}..={KEEP_ALIVE_MS_MAX}");
        ensure(range.contains(&kato), "target.keep_alive_timeout_ms_max", kato, expected)?;
    }
    Ok(())
}

fn in_capsule(size: ByteSize, chunk: ByteSize) -> Result {
    let key = "target.in_capsule_data_size";
    let ok = size.0 <= IN_CAPSULE_DATA_MAX && size.0.is_multiple_of(16);
    ensure(ok, key, size_text(size), "a multiple of 16 from 0 to 128K")?;
    // A connection receives into one chunk, and a capsule (header, padding, data,
    // digest) always lands whole in it, behind at most a partial header moved to the
    // chunk's start. Admin capsules carry up to 8K whatever the I/O setting.
    let need = size.0.max(ADMIN_IN_CAPSULE_MAX) + RX_CHUNK_OVERHEAD;
    let expected = format!(
        "at most buffers.chunk_size ({chunk}) - {RX_CHUNK_OVERHEAD} (a whole capsule with its headers lands in one receive chunk); \
         raise buffers.chunk_size to {} or lower this",
        ByteSize(need.next_power_of_two())
    );
    ensure(need <= chunk.0, key, size_text(size), expected)
}

/// In-capsule data an admin command may carry (Connect's 1K, a Set Features
/// payload): the receive path always has room for this much.
pub const ADMIN_IN_CAPSULE_MAX: u64 = 8192;
/// Receive-chunk bytes besides a capsule's data: a moved partial header, the
/// capsule's header and its digest, padding before the data (≤ 255) and the data
/// digest, with room to spare. `appliance/src/nvmf/tcp/rx.rs` asserts that its
/// reserve fits.
pub const RX_CHUNK_OVERHEAD: u64 = 1024;

fn buffers(buffers: &Buffers, target: &Target) -> Result {
    let chunk = buffers.chunk_size;
    let ok = chunk.0.is_power_of_two() && (CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&chunk.0);
    ensure(ok, "buffers.chunk_size", size_text(chunk), "a power of two from 4K to 2M")?;
    let count = buffers.count;
    let range = CHUNK_COUNT_MIN..=CHUNK_COUNT_MAX;
    ensure(range.contains(&count), "buffers.count", count, format!("{CHUNK_COUNT_MIN}..={CHUNK_COUNT_MAX}"))?;
    let bytes = chunk.0 * u64::from(count);
    let expected = format!("at most {} of buffers in all (chunk_size {chunk} × count)", ByteSize(POOL_BYTES_MAX));
    ensure(bytes <= POOL_BYTES_MAX, "buffers.count", count, expected)?;
    let mdts = target.max_transfer_size;
    let expected = format!("enough chunks of {chunk} for one target.max_transfer_size ({mdts})");
    ensure(bytes >= mdts.0, "buffers.count", count, expected)
}

/// Chunks one command's data may span (the drivers' segments per request).
pub const CHUNKS_PER_COMMAND_MAX: u64 = 32;

fn log(log: &Log) -> Result {
    let ok = !log.level.trim().is_empty() && !log.level.contains(char::is_whitespace);
    ensure(ok, "log.level", quoted(&log.level), "a tracing filter such as \"info\" or \"quire=debug,info\"")
}

fn devices(devices: &[Device], have_volumes: bool) -> Result {
    let expected = "at least one [[device]] when [[volume]] entries are given";
    ensure(!devices.is_empty() || !have_volumes, "device", "[]", expected)?;
    ensure(devices.len() <= DEVICES_MAX, "device", devices.len(), format!("at most {DEVICES_MAX} devices"))?;
    let mut paths = HashSet::new();
    let mut pci_addresses = HashSet::new();
    for (index, device) in devices.iter().enumerate() {
        let key = |name: &str| format!("device[{index}].{name}");
        match device.kind {
            DeviceKind::File => device_file(device, &key)?,
            DeviceKind::Block => device_block(device, &key)?,
            DeviceKind::Ram => device_ram(device, &key)?,
            DeviceKind::Nvme => device_nvme(device, &key)?,
        }
        queue_depth(device, &key)?;
        let spares = device.zeroed_spares;
        ensure(spares <= ZEROED_SPARES_MAX, &key("zeroed_spares"), spares, format!("0..={ZEROED_SPARES_MAX}"))?;
        if let Some(path) = &device.path {
            ensure(paths.insert(path.clone()), &key("path"), path_text(path), "a path no other device uses")?;
        }
        if let Some(address) = &device.pci_address {
            let expected = "an address no other device uses";
            ensure(pci_addresses.insert(address.clone()), &key("pci_address"), quoted(address), expected)?;
        }
    }
    Ok(())
}

fn absent<T>(value: &Option<T>, key: String, text: impl Fn(&T) -> String, kind: DeviceKind) -> Result {
    match value {
        None => Ok(()),
        Some(value) => Err(ConfigError::invalid(key, text(value), format!("no value for {} device", a_kind(kind)))),
    }
}

/// "a file", "an nvme": the kind with its article.
fn a_kind(kind: DeviceKind) -> String {
    match kind {
        DeviceKind::File | DeviceKind::Block | DeviceKind::Ram => format!("a {kind}"),
        DeviceKind::Nvme => format!("an {kind}"),
    }
}

fn device_size(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    let Some(size) = device.size else {
        return Err(ConfigError::invalid(
            key("size"),
            "(missing)",
            format!("a size for {} device", a_kind(device.kind)),
        ));
    };
    let ok = size.0 >= DEVICE_SIZE_MIN && size.0.is_multiple_of(4096);
    ensure(ok, &key("size"), size_text(size), "a multiple of 4K of at least 1M")
}

fn device_path(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    let expected = format!("a path for {} device", a_kind(device.kind));
    ensure(device.path.is_some(), &key("path"), "(missing)", expected)
}

fn device_file(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    device_path(device, key)?;
    device_size(device, key)?;
    absent(&device.pci_address, key("pci_address"), |a| quoted(a), device.kind)?;
    no_vfio(device, key)
}

fn device_block(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    device_path(device, key)?;
    absent(&device.size, key("size"), |s| size_text(*s), device.kind)?;
    absent(&device.pci_address, key("pci_address"), |a| quoted(a), device.kind)?;
    no_vfio(device, key)
}

fn device_ram(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    device_size(device, key)?;
    absent(&device.path, key("path"), |p| path_text(p), device.kind)?;
    absent(&device.pci_address, key("pci_address"), |a| quoted(a), device.kind)?;
    no_vfio(device, key)?;
    let direct = device.direct_io;
    ensure(direct == DirectIo::Auto, &key("direct_io"), quoted(direct.as_str()), "\"auto\" for a ram device")
}

/// `bind_vfio` only means something for an nvme device; `prefault` only for a ram one.
fn no_vfio(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    let expected = format!("false for {} device (only nvme devices are bound to vfio-pci)", a_kind(device.kind));
    ensure(!device.bind_vfio, &key("bind_vfio"), "true", expected)?;
    let expected = format!("false for {} device (only a ram device's memory is prefaulted)", a_kind(device.kind));
    ensure(!device.prefault || device.kind == DeviceKind::Ram, &key("prefault"), "true", expected)
}

fn device_nvme(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    let address = device.pci_address.as_deref().unwrap_or("");
    let expected = "a PCI address such as \"0000:01:00.0\" for an nvme device";
    ensure(is_pci_address(address), &key("pci_address"), quoted(address), expected)?;
    absent(&device.path, key("path"), |p| path_text(p), device.kind)?;
    absent(&device.size, key("size"), |s| size_text(*s), device.kind)?;
    let expected = "false for an nvme device (only a ram device's memory is prefaulted)";
    ensure(!device.prefault, &key("prefault"), "true", expected)?;
    let direct = device.direct_io;
    ensure(direct == DirectIo::Auto, &key("direct_io"), quoted(direct.as_str()), "\"auto\" for an nvme device")
}

fn queue_depth(device: &Device, key: &dyn Fn(&str) -> String) -> Result {
    let depth = device.queue_depth;
    let range = 1..=DEVICE_QUEUE_DEPTH_MAX;
    ensure(range.contains(&depth), &key("queue_depth"), depth, format!("1..={DEVICE_QUEUE_DEPTH_MAX}"))?;
    let uring = matches!(device.kind, DeviceKind::File | DeviceKind::Block);
    let expected = format!(
        "1..={URING_QUEUE_DEPTH_MAX} for {} device (an io_uring queue pair holds at most {URING_QUEUE_DEPTH_MAX} requests)",
        a_kind(device.kind)
    );
    ensure(!uring || depth <= URING_QUEUE_DEPTH_MAX, &key("queue_depth"), depth, expected)
}

/// `DDDD:BB:DD.F`: domain, bus, device in hex, function 0..=7.
pub fn is_pci_address(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_hexdigit);
    bytes.len() == 12
        && hex(0..4)
        && bytes[4] == b':'
        && hex(5..7)
        && bytes[7] == b':'
        && hex(8..10)
        && bytes[10] == b'.'
        && (b'0'..=b'7').contains(&bytes[11])
}

fn volumes(volumes: &[Volume]) -> Result {
    ensure(volumes.len() <= VOLUMES_MAX, "volume", volumes.len(), format!("at most {VOLUMES_MAX} volumes"))?;
    let mut names = HashSet::new();
    for (index, volume) in volumes.iter().enumerate() {
        let key = |name: &str| format!("volume[{index}].{name}");
        let name = &volume.name;
        ensure(is_name(name, false), &key("name"), quoted(name), "1 to 64 of a-z 0-9 . _ -")?;
        ensure(names.insert(name.clone()), &key("name"), quoted(name), "a name no other volume uses")?;
        volume_geometry(volume, &key)?;
        let mut hosts = HashSet::new();
        for host in &volume.allowed_hosts {
            let ok = host.starts_with("nqn.") && host.len() <= NQN_LEN_MAX;
            ensure(ok, &key("allowed_hosts"), quoted(host), "host NQNs (\"nqn.…\", at most 223 bytes)")?;
            ensure(hosts.insert(host), &key("allowed_hosts"), quoted(host), "each host NQN at most once")?;
        }
    }
    Ok(())
}

fn volume_geometry(volume: &Volume, key: &dyn Fn(&str) -> String) -> Result {
    let page = volume.page_size;
    let ok = page.0.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page.0);
    ensure(ok, &key("page_size"), size_text(page), "a power of two from 64K to 1G")?;
    let block = volume.block_size;
    ensure(block == 512 || block == 4096, &key("block_size"), block, "512 or 4096")?;
    let size = volume.size;
    let expected = format!("a non-zero multiple of page_size ({page})");
    ensure(size.0 > 0 && size.0.is_multiple_of(page.0), &key("size"), size_text(size), expected)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    use super::*;
    use crate::schema::PollMode;

    /// The error of the default configuration after `edit`.
    fn invalid(edit: impl FnOnce(&mut Config)) -> String {
        let mut config = Config::default();
        edit(&mut config);
        validate(&config).unwrap_err().to_string()
    }

    fn valid(edit: impl FnOnce(&mut Config)) {
        let mut config = Config::default();
        edit(&mut config);
        validate(&config).unwrap();
    }

    fn ram(size: u64) -> Device {
        Device {
            kind: DeviceKind::Ram,
            path: None,
            size: Some(ByteSize(size)),
            direct_io: DirectIo::Auto,
            pci_address: None,
            bind_vfio: false,
            queue_depth: 1024,
            format: crate::schema::Formatting::IfBlank,
            prefault: false,
            zeroed_spares: 8,
        }
    }

    fn nvme(address: &str) -> Device {
        Device { kind: DeviceKind::Nvme, size: None, pci_address: Some(address.to_string()), ..ram(0) }
    }

    #[test]
    fn device_zeroed_spares_range() {
        assert_eq!(invalid(|c| c.devices[0].zeroed_spares = 1025), "device[0].zeroed_spares = 1025: expected 0..=1024");
        valid(|c| c.devices[0].zeroed_spares = 0);
        valid(|c| c.devices[0].zeroed_spares = 1024);
    }

    #[test]
    fn device_queue_depth_range() {
        assert_eq!(invalid(|c| c.devices[0].queue_depth = 0), "device[0].queue_depth = 0: expected 1..=65535");
        assert_eq!(
            invalid(|c| c.devices[0].queue_depth = 4097),
            "device[0].queue_depth = 4097: expected 1..=4096 for a file device (an io_uring queue pair holds at \
             most 4096 requests)"
        );
        let message = invalid(|c| c.devices = vec![Device { queue_depth: 65536, ..ram(1 << 20) }]);
        assert_eq!(message, "device[0].queue_depth = 65536: expected 1..=65535");
        valid(|c| c.devices[0].queue_depth = 1);
        valid(|c| c.devices[0].queue_depth = 4096);
        valid(|c| c.devices = vec![Device { queue_depth: 65535, ..ram(1 << 20) }]);
        valid(|c| c.devices = vec![Device { queue_depth: 65535, ..nvme("0000:01:00.0") }]);
    }

    #[test]
    fn peer_name() {
        assert_eq!(
            invalid(|c| c.peer.name = "a b".into()),
            "peer.name = \"a b\": expected 1 to 64 of A-Z a-z 0-9 . _ -"
        );
        assert!(invalid(|c| c.peer.name = String::new()).starts_with("peer.name = \"\""));
        assert!(invalid(|c| c.peer.name = "x".repeat(65)).starts_with("peer.name"));
        valid(|c| c.peer.name = "Peer_1.a-b".into());
    }

    #[test]
    fn data_dir_and_socket_length() {
        assert_eq!(invalid(|c| c.peer.data_dir = PathBuf::new()), "peer.data_dir = \"\": expected a directory path");
        let long = format!("/{}", "d".repeat(110));
        assert!(invalid(|c| c.peer.data_dir = PathBuf::from(&long)).starts_with("peer.data_dir = "));
        let message = invalid(|c| c.peer.rpc_socket = Some(PathBuf::from(format!("{long}.sock"))));
        assert!(message.starts_with("peer.rpc_socket = "), "{message}");
        assert!(message.contains("at most 107 bytes"), "{message}");
        valid(|c| c.peer.rpc_socket = Some(PathBuf::from("/run/quire.sock")));
    }

    #[test]
    fn reactor_count_range_and_agreement_with_cores() {
        assert_eq!(invalid(|c| c.reactors.count = Some(0)), "reactors.count = 0: expected 1..=128");
        assert_eq!(invalid(|c| c.reactors.count = Some(129)), "reactors.count = 129: expected 1..=128");
        let message = invalid(|c| {
            c.reactors.count = Some(3);
            c.reactors.cores = vec![0, 1];
        });
        assert_eq!(message, "reactors.count = 3: expected 2 (the number of reactors.cores), or leave count out");
        valid(|c| {
            c.reactors.count = Some(2);
            c.reactors.cores = vec![0, 1];
        });
    }

    #[test]
    fn reactor_cores() {
        assert_eq!(
            invalid(|c| c.reactors.cores = vec![0, 0]),
            "reactors.cores = [0, 0]: expected each core at most once"
        );
        assert_eq!(
            invalid(|c| c.reactors.cores = vec![1024]),
            "reactors.cores = [1024]: expected core numbers 0..=1023"
        );
        assert!(invalid(|c| c.reactors.cores = (0..129).collect()).contains("at most 128 cores"));
    }

    #[test]
    fn spin_us() {
        assert_eq!(invalid(|c| c.reactors.spin_us = 1_000_001), "reactors.spin_us = 1000001: expected 0..=1000000");
        valid(|c| {
            c.reactors.poll = PollMode::Busy;
            c.reactors.spin_us = 0;
        });
    }

    #[test]
    fn listen_and_ports() {
        let multicast = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1));
        assert_eq!(
            invalid(|c| c.target.listen = multicast),
            "target.listen = \"224.0.0.1\": expected a unicast IP address"
        );
        valid(|c| {
            c.target.port = 0;
            c.target.discovery_port = 0;
        });
        assert_eq!(
            invalid(|c| c.target.discovery_port = 4420),
            "target.discovery_port = 4420: expected 0 (none) or a port other than target.port (4420)"
        );
        valid(|c| c.target.discovery_port = 0);
        valid(|c| c.target.listen = IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn queue_depth_and_count() {
        assert_eq!(invalid(|c| c.target.max_queue_depth = 15), "target.max_queue_depth = 15: expected 16..=1024");
        assert_eq!(invalid(|c| c.target.max_queue_depth = 1025), "target.max_queue_depth = 1025: expected 16..=1024");
        assert_eq!(invalid(|c| c.target.max_io_queues = 0), "target.max_io_queues = 0: expected 1..=256");
        assert_eq!(invalid(|c| c.target.max_io_queues = 257), "target.max_io_queues = 257: expected 1..=256");
        valid(|c| c.target.max_queue_depth = 1024);
    }

    #[test]
    fn in_capsule_data_size() {
        let expected = "expected a multiple of 16 from 0 to 128K";
        assert_eq!(
            invalid(|c| c.target.in_capsule_data_size = ByteSize(100)),
            format!("target.in_capsule_data_size = 100: {expected}")
        );
        assert_eq!(
            invalid(|c| c.target.in_capsule_data_size = ByteSize::kib(256)),
            format!("target.in_capsule_data_size = \"256K\": {expected}")
        );
        let message = invalid(|c| {
            c.buffers.chunk_size = ByteSize::kib(4);
            c.buffers.count = 1024;
            c.target.max_transfer_size = ByteSize::kib(128);
            c.target.max_h2c_data = ByteSize::kib(128);
            c.target.in_capsule_data_size = ByteSize::kib(8);
        });
        assert!(
            message
                .starts_with("target.in_capsule_data_size = \"8K\": expected at most buffers.chunk_size (4K) - 1024"),
            "{message}"
        );
        assert!(message.ends_with("raise buffers.chunk_size to 16K or lower this"), "{message}");
        // Even without in-capsule data for I/O, an admin capsule (8K) must fit.
        let message = invalid(|c| {
            c.buffers.chunk_size = ByteSize::kib(8);
            c.buffers.count = 1024;
            c.target.max_transfer_size = ByteSize::kib(128);
            c.target.max_h2c_data = ByteSize::kib(128);
            c.target.in_capsule_data_size = ByteSize(0);
        });
        assert!(message.starts_with("target.in_capsule_data_size = 0: expected at most"), "{message}");
        // 64K of in-capsule data needs a 128K chunk, not a 64K one.
        let message = invalid(|c| {
            c.buffers.chunk_size = ByteSize::kib(64);
            c.target.max_transfer_size = ByteSize::kib(1024);
            c.target.in_capsule_data_size = ByteSize::kib(64);
        });
        assert!(message.starts_with("target.in_capsule_data_size = \"64K\""), "{message}");
        valid(|c| {
            c.buffers.chunk_size = ByteSize::kib(16);
            c.buffers.count = 1024;
            c.target.max_transfer_size = ByteSize::kib(128);
            c.target.max_h2c_data = ByteSize::kib(128);
            c.target.in_capsule_data_size = ByteSize::kib(8);
        });
        valid(|c| c.target.in_capsule_data_size = ByteSize(0));
    }

    #[test]
    fn max_transfer_size() {
        let expected = "expected a power of two from 4K to 4M";
        for bad in [ByteSize(3000), ByteSize::kib(2), ByteSize::mib(8), ByteSize::kib(12)] {
            let message = invalid(|c| c.target.max_transfer_size = bad);
            assert!(message.starts_with("target.max_transfer_size = ") && message.ends_with(expected), "{message}");
        }
        valid(|c| {
            c.target.max_transfer_size = ByteSize::mib(4);
            c.target.max_h2c_data = ByteSize::mib(4);
        });
    }

    #[test]
    fn max_h2c_data() {
        let message = invalid(|c| c.target.max_h2c_data = ByteSize::mib(2));
        assert_eq!(
            message,
            "target.max_h2c_data = \"2M\": expected a multiple of 4K from 4K to target.max_transfer_size (1M)"
        );
        assert!(invalid(|c| c.target.max_h2c_data = ByteSize(6000)).starts_with("target.max_h2c_data = 6000"));
        assert!(invalid(|c| c.target.max_h2c_data = ByteSize(0)).starts_with("target.max_h2c_data = 0"));
        valid(|c| c.target.max_h2c_data = ByteSize::kib(12));
    }

    #[test]
    fn keep_alive_cap() {
        let expected = "expected 100..=3600000";
        assert_eq!(
            invalid(|c| c.target.keep_alive_timeout_ms_max = Some(99)),
            format!("target.keep_alive_timeout_ms_max = 99: {expected}")
        );
        assert!(invalid(|c| c.target.keep_alive_timeout_ms_max = Some(3_600_001)).ends_with(expected));
        valid(|c| c.target.keep_alive_timeout_ms_max = Some(100));
    }

    #[test]
    fn chunks_per_command_are_bounded() {
        let message = invalid(|c| {
            c.target.max_transfer_size = ByteSize::mib(4);
            c.buffers.chunk_size = ByteSize::kib(64);
        });
        assert!(
            message.starts_with("buffers.chunk_size = \"64K\": expected at least target.max_transfer_size / 32 (128K)"),
            "{message}"
        );
        valid(|c| {
            c.target.max_transfer_size = ByteSize::mib(4);
            c.buffers.chunk_size = ByteSize::kib(128);
        });
    }

    #[test]
    fn buffer_chunk_size_and_count() {
        let message = invalid(|c| c.buffers.chunk_size = ByteSize::mib(4));
        assert_eq!(message, "buffers.chunk_size = \"4M\": expected a power of two from 4K to 2M");
        assert!(invalid(|c| c.buffers.chunk_size = ByteSize(5000)).starts_with("buffers.chunk_size = 5000"));
        assert_eq!(invalid(|c| c.buffers.count = 15), "buffers.count = 15: expected 16..=1048576");
        let message = invalid(|c| {
            c.buffers.chunk_size = ByteSize::mib(2);
            c.buffers.count = 1 << 20;
        });
        assert!(message.contains("at most 64G of buffers"), "{message}");
        let message = invalid(|c| {
            c.buffers.chunk_size = ByteSize::kib(16);
            c.buffers.count = 16;
        });
        assert_eq!(message, "buffers.count = 16: expected enough chunks of 16K for one target.max_transfer_size (1M)");
    }

    #[test]
    fn rebalance_keys() {
        valid(|c| {
            c.rebalance.enabled = false;
            c.rebalance.tolerance_pct = 100;
            c.rebalance.moves_max = 64;
        });
        assert_eq!(invalid(|c| c.rebalance.tolerance_pct = 0), "rebalance.tolerance_pct = 0: expected 1..=100");
        assert_eq!(invalid(|c| c.rebalance.moves_max = 65), "rebalance.moves_max = 65: expected 1..=64");
        assert_eq!(invalid(|c| c.rebalance.batch_pages = 0), "rebalance.batch_pages = 0: expected 1..=1024");
        assert_eq!(
            invalid(|c| c.rebalance.load_tolerance_pct = 1001),
            "rebalance.load_tolerance_pct = 1001: expected 0..=1000"
        );
        assert_eq!(invalid(|c| c.rebalance.load_interval_s = 0), "rebalance.load_interval_s = 0: expected 1..=3600");
        assert_eq!(invalid(|c| c.rebalance.steer_interval_s = 0), "rebalance.steer_interval_s = 0: expected 1..=3600");
    }

    #[test]
    fn group_keys() {
        valid(|c| {
            c.group.etcd = vec!["http://127.0.0.1:2379".into(), "http://etcd-1.example:2379/".into()];
            c.group.secret_file = Some("/etc/quire/secret".into());
            c.target.advertise = Some("192.0.2.7:14420".into());
        });
        assert_eq!(
            invalid(|c| c.group.etcd = vec!["https://127.0.0.1:2379".into()]),
            "group.etcd = \"https://127.0.0.1:2379\": expected \"http://HOST:PORT\" (TLS to etcd is not supported)"
        );
        assert!(invalid(|c| c.group.etcd = vec!["http://127.0.0.1".into()]).starts_with("group.etcd = "));
        let message = invalid(|c| c.group.etcd = vec!["http://127.0.0.1:2379".into()]);
        assert!(message.starts_with("group.secret_file = \"\": expected a file holding the group's shared secret"));
        assert!(
            invalid(|c| c.group.listen = "4520".into()).starts_with("group.listen = \"4520\": expected \"IP:PORT\"")
        );
        assert_eq!(invalid(|c| c.group.lease_ttl_s = 1), "group.lease_ttl_s = 1: expected 2..=60");
        assert_eq!(invalid(|c| c.group.connect_timeout_ms = 5), "group.connect_timeout_ms = 5: expected 100..=600000");
        assert_eq!(invalid(|c| c.group.hold_ms = 10), "group.hold_ms = 10: expected 1000..=600000");
        assert_eq!(invalid(|c| c.group.leave_grace_ms = 60_001), "group.leave_grace_ms = 60001: expected 0..=60000");
        assert_eq!(invalid(|c| c.group.weight = Some(0)), "group.weight = 0: expected at least 1");
        let message = invalid(|c| c.target.advertise = Some("0.0.0.0".into()));
        assert!(message.starts_with("target.advertise = \"0.0.0.0\": expected \"IP\" or \"IP:PORT\""), "{message}");
        assert!(invalid(|c| c.target.advertise = Some("host.example".into())).starts_with("target.advertise"));
        valid(|c| c.target.advertise = Some("10.1.2.3".into()));
        valid(|c| c.metrics.listen = Some("0.0.0.0:9442".into()));
        let message = invalid(|c| c.metrics.listen = Some("9442".into()));
        assert!(message.starts_with("metrics.listen = \"9442\": expected \"IP:PORT\""), "{message}");
    }

    #[test]
    fn log_level() {
        assert!(invalid(|c| c.log.level = String::new()).starts_with("log.level = \"\": expected a tracing filter"));
        assert!(invalid(|c| c.log.level = "info debug".into()).starts_with("log.level = \"info debug\""));
        valid(|c| c.log.level = "quire=debug,info".into());
    }

    #[test]
    fn volumes_need_a_device_and_devices_are_bounded() {
        let message = invalid(|c| c.devices.clear());
        assert_eq!(message, "device = []: expected at least one [[device]] when [[volume]] entries are given");
        valid(|c| {
            c.devices.clear();
            c.volumes.clear();
        });
        assert!(invalid(|c| c.devices = (0..65).map(|_| ram(1 << 20)).collect()).starts_with("device = 65"));
    }

    #[test]
    fn file_device_keys() {
        assert_eq!(
            invalid(|c| c.devices[0].path = None),
            "device[0].path = (missing): expected a path for a file device"
        );
        assert_eq!(
            invalid(|c| c.devices[0].size = None),
            "device[0].size = (missing): expected a size for a file device"
        );
        assert_eq!(
            invalid(|c| c.devices[0].size = Some(ByteSize(4096))),
            "device[0].size = \"4K\": expected a multiple of 4K of at least 1M"
        );
        let message = invalid(|c| c.devices[0].pci_address = Some("0000:01:00.0".into()));
        assert_eq!(message, "device[0].pci_address = \"0000:01:00.0\": expected no value for a file device");
        valid(|c| c.devices[0].direct_io = DirectIo::Off);
    }

    #[test]
    fn block_device_keys() {
        let block = Device {
            kind: DeviceKind::Block,
            path: Some(PathBuf::from("/dev/sdb")),
            size: None,
            direct_io: DirectIo::On,
            pci_address: None,
            bind_vfio: false,
            queue_depth: 64,
            format: crate::schema::Formatting::Never,
            prefault: false,
            zeroed_spares: 8,
        };
        valid(|c| c.devices = vec![block.clone()]);
        let message = invalid(|c| c.devices = vec![Device { size: Some(ByteSize::gib(1)), ..block.clone() }]);
        assert_eq!(message, "device[0].size = \"1G\": expected no value for a block device");
        let message = invalid(|c| c.devices = vec![Device { prefault: true, ..block.clone() }]);
        assert_eq!(
            message,
            "device[0].prefault = true: expected false for a block device (only a ram device's memory is prefaulted)"
        );
        valid(|c| c.devices = vec![Device { prefault: true, ..ram(64 << 20) }]);
        let message = invalid(|c| c.devices = vec![Device { path: None, ..block }]);
        assert_eq!(message, "device[0].path = (missing): expected a path for a block device");
    }

    #[test]
    fn ram_device_keys() {
        valid(|c| c.devices = vec![ram(1 << 30)]);
        assert!(invalid(|c| c.devices = vec![ram(4096)]).starts_with("device[0].size = \"4K\""));
        let message = invalid(|c| c.devices = vec![Device { path: Some("x".into()), ..ram(1 << 20) }]);
        assert_eq!(message, "device[0].path = \"x\": expected no value for a ram device");
        let message = invalid(|c| c.devices = vec![Device { direct_io: DirectIo::On, ..ram(1 << 20) }]);
        assert_eq!(message, "device[0].direct_io = \"on\": expected \"auto\" for a ram device");
    }

    #[test]
    fn nvme_device_keys() {
        valid(|c| c.devices = vec![nvme("0000:01:00.0"), nvme("0000:af:1f.7")]);
        for bad in ["", "01:00.0", "0000:01:00.8", "0000-01-00.0", "0000:0g:00.0"] {
            let message = invalid(|c| c.devices = vec![nvme(bad)]);
            assert!(
                message.starts_with(&format!("device[0].pci_address = {bad:?}: expected a PCI address")),
                "{message}"
            );
        }
        let message = invalid(|c| c.devices = vec![Device { size: Some(ByteSize::gib(1)), ..nvme("0000:01:00.0") }]);
        assert_eq!(message, "device[0].size = \"1G\": expected no value for an nvme device");
        valid(|c| c.devices = vec![Device { bind_vfio: true, ..nvme("0000:01:00.0") }]);
    }

    #[test]
    fn bind_vfio_only_for_nvme() {
        let message = invalid(|c| c.devices[0].bind_vfio = true);
        assert_eq!(
            message,
            "device[0].bind_vfio = true: expected false for a file device (only nvme devices are bound to vfio-pci)"
        );
        let message = invalid(|c| c.devices = vec![Device { bind_vfio: true, ..ram(1 << 20) }]);
        assert!(message.starts_with("device[0].bind_vfio = true: expected false for a ram device"), "{message}");
        let block = Device { kind: DeviceKind::Block, path: Some("/dev/sdb".into()), size: None, ..ram(1 << 20) };
        let message = invalid(|c| c.devices = vec![Device { bind_vfio: true, ..block }]);
        assert!(message.starts_with("device[0].bind_vfio = true: expected false for a block device"), "{message}");
    }

    #[test]
    fn devices_are_unique() {
        let message = invalid(|c| c.devices.push(Device::default_file()));
        assert_eq!(message, "device[1].path = \"quire.img\": expected a path no other device uses");
        let message = invalid(|c| c.devices = vec![nvme("0000:01:00.0"), nvme("0000:01:00.0")]);
        assert_eq!(message, "device[1].pci_address = \"0000:01:00.0\": expected an address no other device uses");
    }

    #[test]
    fn volume_names() {
        assert_eq!(
            invalid(|c| c.volumes[0].name = "Demo".into()),
            "volume[0].name = \"Demo\": expected 1 to 64 of a-z 0-9 . _ -"
        );
        assert!(invalid(|c| c.volumes[0].name = String::new()).starts_with("volume[0].name = \"\""));
        let message = invalid(|c| c.volumes.push(Volume::demo()));
        assert_eq!(message, "volume[1].name = \"demo\": expected a name no other volume uses");
        assert!(invalid(
            |c| c.volumes = (0..1025).map(|i| Volume { name: format!("v{i}"), ..Volume::demo() }).collect()
        )
        .starts_with("volume = 1025"));
    }

    #[test]
    fn volume_geometry_rules() {
        let message = invalid(|c| c.volumes[0].page_size = ByteSize::kib(32));
        assert_eq!(message, "volume[0].page_size = \"32K\": expected a power of two from 64K to 1G");
        assert!(invalid(|c| c.volumes[0].page_size = ByteSize::gib(2)).starts_with("volume[0].page_size"));
        assert!(invalid(|c| c.volumes[0].page_size = ByteSize::kib(96)).starts_with("volume[0].page_size"));
        assert_eq!(invalid(|c| c.volumes[0].block_size = 1024), "volume[0].block_size = 1024: expected 512 or 4096");
        let message = invalid(|c| c.volumes[0].size = ByteSize::mib(6));
        assert_eq!(message, "volume[0].size = \"6M\": expected a non-zero multiple of page_size (4M)");
        assert!(invalid(|c| c.volumes[0].size = ByteSize(0)).starts_with("volume[0].size = 0"));
        valid(|c| c.volumes[0].block_size = 512);
    }

    #[test]
    fn allowed_hosts() {
        let message = invalid(|c| c.volumes[0].allowed_hosts = vec!["host1".into()]);
        assert!(message.starts_with("volume[0].allowed_hosts = \"host1\": expected host NQNs"), "{message}");
        let long = format!("nqn.{}", "x".repeat(220));
        assert!(invalid(|c| c.volumes[0].allowed_hosts = vec![long]).starts_with("volume[0].allowed_hosts"));
        let host = "nqn.2014-08.org.nvmexpress:uuid:1".to_string();
        let message = invalid(|c| c.volumes[0].allowed_hosts = vec![host.clone(), host.clone()]);
        assert!(message.ends_with("expected each host NQN at most once"), "{message}");
        valid(|c| c.volumes[0].allowed_hosts = vec![host.clone()]);
    }
}
