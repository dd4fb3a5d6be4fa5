//! The configuration's structure: one struct per TOML table, with the defaults of the
//! embedded default file (`config/default.toml`).
//!
//! Every struct refuses unknown keys (`deny_unknown_fields`) so that a typo such as
//! `max_queue_detph` is an error rather than a silently ignored line. Every field of
//! every table has a default, so an empty file is the embedded default; the entries of
//! `[[device]]` and `[[volume]]` have required keys (`kind`, `name`, `size`).
//! Keyword values (`poll`, `kind`, `direct_io`) and addresses deserialize through this
//! file's own code, which reports a bad value with the accepted forms.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::value_error_message;
use crate::size::ByteSize;

/// The whole configuration of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[peer]`: this peer's identity and directories.
    pub peer: Peer,
    /// `[reactors]`: polling threads.
    pub reactors: Reactors,
    /// `[target]`: the NVMe/TCP listener and what it offers hosts.
    pub target: Target,
    /// `[buffers]`: the DMA buffer pool.
    pub buffers: Buffers,
    /// `[log]`: logging.
    pub log: Log,
    /// `[group]`: membership of a group of peers; no `etcd` = a single peer.
    pub group: Group,
    /// `[replication]`: rebuilds and scrubs of replicated pages (a group).
    pub replication: Replication,
    /// `[rebalance]`: the coordinator spreads pages over the peers by weight (a group).
    pub rebalance: Rebalance,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: Metrics,
    /// `[[device]]`: backing devices of the page store.
    #[serde(rename = "device")]
    pub devices: Vec<Device>,
    /// `[[volume]]`: volumes created at start-up when missing.
    #[serde(rename = "volume")]
    pub volumes: Vec<Volume>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            peer: Peer::default(),
            reactors: Reactors::default(),
            target: Target::default(),
            buffers: Buffers::default(),
            log: Log::default(),
            group: Group::default(),
            replication: Replication::default(),
            rebalance: Rebalance::default(),
            metrics: Metrics::default(),
            devices: vec![Device::default_file()],
            volumes: vec![Volume::demo()],
        }
    }
}

/// `[peer]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peer {
    /// Shown in logs and controller serial numbers: `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// Where relative device paths and the default RPC socket live. A relative
    /// `data_dir` is relative to the daemon's working directory.
    pub data_dir: PathBuf,
    /// The JSON-RPC socket; `None` (written `""` or left out) = `<data_dir>/quire.sock`.
    #[serde(deserialize_with = "empty_as_none", serialize_with = "none_as_empty")]
    pub rpc_socket: Option<PathBuf>,
}

impl Default for Peer {
    fn default() -> Peer {
        Peer { name: "quire-0".to_string(), data_dir: PathBuf::from("./quire-data"), rpc_socket: None }
    }
}

/// `[reactors]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reactors {
    /// Number of reactor threads; `None` = `cores.len()`, or 1 when `cores` is empty
    /// too. Use [`Reactors::count`] for the effective number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Cores to pin reactors to, reactor `i` on `cores[i]`; empty = reactor `i` on
    /// core `i`. Use [`Reactors::cores`] for the effective list.
    pub cores: Vec<u32>,
    /// How an idle reactor waits.
    pub poll: PollMode,
    /// Hybrid polling: how long to spin after the last piece of work before sleeping.
    pub spin_us: u32,
    /// Page allocations and frees one reactor may have outstanding at the control
    /// thread at once; more wait in the reactor, in order, for an answer to return a
    /// credit (the rings between threads are sized from it, so no answer is dropped).
    pub control_credits: u32,
}

impl Default for Reactors {
    fn default() -> Reactors {
        Reactors { count: None, cores: Vec::new(), poll: PollMode::Hybrid, spin_us: 200, control_credits: 1024 }
    }
}

impl Reactors {
    /// The number of reactor threads to run.
    pub fn count(&self) -> u32 {
        match (self.count, self.cores.len()) {
            (Some(count), _) => count,
            (None, 0) => 1,
            (None, cores) => u32::try_from(cores).unwrap_or(u32::MAX),
        }
    }

    /// The core each reactor is pinned to, by reactor index (`count()` entries).
    pub fn cores(&self) -> Vec<u32> {
        if self.cores.is_empty() {
            (0..self.count()).collect()
        } else {
            self.cores.clone()
        }
    }
}

/// `[target]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// IP address the NVMe/TCP listener binds.
    #[serde(deserialize_with = "ip_addr")]
    pub listen: IpAddr,
    /// NVMe/TCP port (I/O and admin queues; also discovery).
    pub port: u16,
    /// Separate discovery listener port; 0 = none.
    pub discovery_port: u16,
    /// Submission queue size offered (MQES + 1), 16..=1024.
    pub max_queue_depth: u32,
    /// I/O queues per controller, 1..=256.
    pub max_io_queues: u32,
    /// In-capsule data bytes (IOCCSZ minus the 64-byte SQE), 0..=128K, multiple of 16.
    pub in_capsule_data_size: ByteSize,
    /// Largest transfer (MDTS) in bytes: a power of two, 4K..=4M.
    pub max_transfer_size: ByteSize,
    /// Largest H2CData PDU accepted (MAXH2CDATA): a multiple of 4K, ≤ max_transfer_size.
    pub max_h2c_data: ByteSize,
    /// Cap on a host's keep-alive timeout in ms (100..=3 600 000); `None` = no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout_ms_max: Option<u32>,
    /// Send payloads with MSG_ZEROCOPY where the kernel allows it (off by default:
    /// measured slower than copying on loopback, see perf/bench/RESULTS.md).
    pub zero_copy_send: bool,
    /// The address hosts are told to connect to (the group's discovery and
    /// referrals): `"IP"` or `"IP:PORT"`, for a peer behind NAT or port forwarding;
    /// `None` (`""`) = `listen` and `port`.
    #[serde(deserialize_with = "empty_as_none", serialize_with = "none_as_empty_string")]
    pub advertise: Option<String>,
}

impl Default for Target {
    fn default() -> Target {
        Target {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4420,
            discovery_port: 8009,
            max_queue_depth: 128,
            max_io_queues: 16,
            in_capsule_data_size: ByteSize(8192),
            max_transfer_size: ByteSize::mib(1),
            max_h2c_data: ByteSize::kib(128),
            keep_alive_timeout_ms_max: None,
            zero_copy_send: false,
            advertise: None,
        }
    }
}

/// `[metrics]`: a Prometheus text-format endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `"IP:PORT"` serving `GET /metrics`; `None` (`""`) = off.
    #[serde(deserialize_with = "empty_as_none", serialize_with = "none_as_empty_string")]
    pub listen: Option<String>,
}

/// `[group]`: the peers this one forms a group with, through etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Group {
    /// etcd endpoints (`"http://HOST:PORT"`); empty = a single peer, no etcd.
    pub etcd: Vec<String>,
    /// The peer-link listener (`"IP:PORT"`) other peers connect to.
    pub listen: String,
    /// A file holding the group's shared secret (at least 16 bytes); required in a
    /// group.
    #[serde(deserialize_with = "empty_as_none", serialize_with = "none_as_empty")]
    pub secret_file: Option<PathBuf>,
    /// This peer's share of new pages; `None` = its capacity in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u64>,
    /// The liveness lease in etcd, seconds: a peer that stops is gone from the group
    /// this long after its last keep-alive.
    pub lease_ttl_s: u32,
    /// How long start-up waits for etcd before giving up, ms.
    pub connect_timeout_ms: u32,
    /// How long I/O to a page whose owner cannot be reached is held before it is
    /// answered with a retryable path error, ms.
    pub hold_ms: u32,
    /// A peer stopping (SIGTERM, SIGINT) with hosts connected (and another live peer
    /// for them) first turns its paths ANA inaccessible and goes on serving what is
    /// under way until none of its hosts' commands is (no read or write for 300 ms
    /// either) or this many ms passed; 0 = leave at once.
    pub leave_grace_ms: u32,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            etcd: Vec::new(),
            listen: "127.0.0.1:4520".to_string(),
            secret_file: None,
            weight: None,
            lease_ttl_s: 5,
            connect_timeout_ms: 5000,
            hold_ms: 25_000,
            leave_grace_ms: 3000,
        }
    }
}

impl Group {
    /// True when this peer is part of a group (has etcd endpoints).
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// `[replication]`: how copies of replicated pages are rebuilt and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// A copy whose peer stays out of the group this long is replaced by a new copy
    /// on another peer, seconds.
    pub replace_after_s: u32,
    /// The most a leader copies per second to members being rebuilt, MB (10^6 bytes).
    pub rebuild_mb_s: u32,
    /// The most a leader copies per second to the new peers of pages that move
    /// (`quire page move`, drains, the rebalancer), MB; apart from rebuilds'.
    pub migration_mb_s: u32,
    /// The most a leader reads per second to compare copies in a scrub, MB.
    pub scrub_mb_s: u32,
    /// A scrub of every replicated volume this often, hours; 0 = only on demand
    /// (`quire scrub start`).
    pub scrub_every_h: u32,
}

impl Default for Replication {
    fn default() -> Replication {
        Replication { replace_after_s: 600, rebuild_mb_s: 200, migration_mb_s: 200, scrub_mb_s: 50, scrub_every_h: 168 }
    }
}

/// `[rebalance]`: how the group's coordinator moves pages so that each peer holds a
/// share of every copy in proportion to its weight. Only the coordinator's section
/// counts (it is the one that decides).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rebalance {
    /// Move pages at all (`quire rebalance pause` stops it group-wide too).
    pub enabled: bool,
    /// A peer is out of balance when it holds more than its ideal share by this many
    /// percent, or less by as many (a band against moving pages back and forth).
    pub tolerance_pct: u32,
    /// Moves copying at once in the whole group (the rebalancer starts none while
    /// this many copy, operators' and drains' moves included).
    pub moves_max: u32,
    /// Pages one move of the rebalancer takes at most (pages of one replica set,
    /// copied and cut over together).
    pub batch_pages: u32,
    /// Hot pages: a peer serving more I/O than its share of the group's (by weight) by
    /// this many percent gives one of its hot pages to the least loaded peer, when
    /// that leaves the target less loaded than the source (0: load is not looked at).
    pub load_tolerance_pct: u32,
    /// Below this many operations a second in the whole group, load moves nothing.
    pub load_min_iops: u32,
    /// Seconds between two moves for load (rates are averages that need this long to
    /// show where the moved page's I/O went).
    pub load_interval_s: u32,
    /// Steer hosts by load (`control::steer`): a peer serving more than the others
    /// reports its path non-optimized (ANA) to one of its hosts that has a path to a
    /// less loaded peer, when moving that host's I/O there narrows the gap. Every
    /// peer decides for its own paths, with its own section.
    pub steer_hosts: bool,
    /// Seconds between two changes of a peer's host steering (a host's rate needs
    /// this long to show where its I/O went).
    pub steer_interval_s: u32,
}

impl Default for Rebalance {
    fn default() -> Rebalance {
        Rebalance {
            enabled: true,
            tolerance_pct: 10,
            moves_max: 2,
            batch_pages: 16,
            load_tolerance_pct: 50,
            load_min_iops: 200,
            load_interval_s: 30,
            steer_hosts: true,
            steer_interval_s: 10,
        }
    }
}

/// `[buffers]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Buffers {
    /// Size of one pool chunk: a power of two, 4K..=2M.
    pub chunk_size: ByteSize,
    /// Chunks in the peer's pool, 16..=1 048 576.
    pub count: u32,
    /// Use 2 MiB hugepages where the machine has them.
    pub hugepages: bool,
}

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers { chunk_size: ByteSize::kib(128), count: 2048, hugepages: true }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing_subscriber::EnvFilter` directive string.
    pub level: String,
    /// Plain text lines (colours only on a terminal) or JSON lines.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Log {
        Log { level: "info".to_string(), format: LogFormat::Text }
    }
}

/// One `[[device]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// What backs the device.
    pub kind: DeviceKind,
    /// file, block: the path; a relative path is relative to `peer.data_dir`.
    #[serde(default, deserialize_with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// file: size the file is created with (sparse) when missing; ram: the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// O_DIRECT for file and block devices.
    #[serde(default)]
    pub direct_io: DirectIo,
    /// nvme: the controller's PCI address, `DDDD:BB:DD.F`.
    #[serde(default, deserialize_with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// nvme: hand the controller to `vfio-pci` at start-up (sysfs `driver_override`)
    /// and give it back to its previous driver at exit. Off, the operator binds it
    /// beforehand and the daemon needs no write access to sysfs.
    #[serde(default)]
    pub bind_vfio: bool,
    /// Depth of each reactor's queue pair on this device (requests in flight per
    /// reactor), 1..=65535 (at most 4096 for file and block devices).
    #[serde(default = "Device::queue_depth_default")]
    pub queue_depth: u32,
    /// What `quire serve` does with a device that holds no Quire page store.
    #[serde(default)]
    pub format: Formatting,
    /// ram: allocate all its memory at start (as SPDK's Malloc bdev does) rather than
    /// as it is first written: benchmarks then measure the target, not the kernel's
    /// first-touch page clearing (several ms per 4 MiB slot the page store zeroes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefault: bool,
    /// Slots of the volumes' page size the page store keeps zeroed ahead of demand
    /// (0..=1024; 0: none), so that a host's first write to a page waits for one
    /// metadata write instead of zeroing, a flush and a metadata write. They count as
    /// free space and are given back when the space is needed.
    #[serde(default = "Device::zeroed_spares_default")]
    pub zeroed_spares: u32,
}

impl Device {
    /// The embedded default device: an 8 GiB sparse file `quire.img` in `data_dir`.
    pub fn default_file() -> Device {
        Device {
            kind: DeviceKind::File,
            path: Some(PathBuf::from("quire.img")),
            size: Some(ByteSize::gib(8)),
            direct_io: DirectIo::Auto,
            pci_address: None,
            bind_vfio: false,
            queue_depth: Device::queue_depth_default(),
            format: Formatting::IfBlank,
            prefault: false,
            zeroed_spares: Device::zeroed_spares_default(),
        }
    }

    /// The default `zeroed_spares`.
    pub fn zeroed_spares_default() -> u32 {
        16
    }

    /// The default `queue_depth`.
    pub fn queue_depth_default() -> u32 {
        1024
    }
}

/// One `[[volume]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The NQN suffix: `[a-z0-9._-]{1,64}`.
    pub name: String,
    /// Size in bytes, a multiple of `page_size`.
    pub size: ByteSize,
    /// Page size: a power of two, 64K..=1G.
    #[serde(default = "Volume::page_size_default")]
    pub page_size: ByteSize,
    /// Logical block size: 512 or 4096.
    #[serde(default = "Volume::block_size_default")]
    pub block_size: u32,
    /// Host NQNs allowed to connect; empty = any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Volume {
    /// The embedded default volume: `demo`, 1 GiB.
    pub fn demo() -> Volume {
        Volume {
            name: "demo".to_string(),
            size: ByteSize::gib(1),
            page_size: Volume::page_size_default(),
            block_size: Volume::block_size_default(),
            allowed_hosts: Vec::new(),
        }
    }

    fn page_size_default() -> ByteSize {
        ByteSize::mib(4)
    }

    fn block_size_default() -> u32 {
        4096
    }
}

/// Declares a keyword enum: lowercase names in TOML, a bad name reported with the
/// accepted ones.
macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ } expected $expected:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The keyword as written in TOML.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = String::deserialize(deserializer)?;
                match text.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(serde::de::Error::custom(value_error_message(&format!("{text:?}"), $expected))),
                }
            }
        }
    };
}

keyword_enum! {
    /// How log lines are written.
    LogFormat {
        /// Human-readable lines; ANSI colours only when stderr is a terminal.
        Text = "text",
        /// One JSON object per line (for log collectors).
        Json = "json",
    } expected "\"text\" or \"json\""
}

keyword_enum! {
    /// How an idle reactor waits for work.
    PollMode {
        /// Spin forever: lowest latency, one core at 100 % (a dedicated appliance).
        Busy = "busy",
        /// Spin for `spin_us` after the last work, then sleep until woken.
        Hybrid = "hybrid",
    } expected "\"busy\" or \"hybrid\""
}

keyword_enum! {
    /// What backs a device.
    DeviceKind {
        /// A regular file through io_uring, created sparse at first run.
        File = "file",
        /// A kernel block device through io_uring.
        Block = "block",
        /// Memory (lost at exit; tests and demos).
        Ram = "ram",
        /// An NVMe controller driven from userspace through VFIO.
        Nvme = "nvme",
    } expected "\"file\", \"block\", \"ram\" or \"nvme\""
}

keyword_enum! {
    /// O_DIRECT for file and block devices.
    DirectIo {
        /// On where the file system supports it, off otherwise.
        Auto = "auto",
        /// Always; opening fails where it is not supported.
        On = "on",
        /// Never (through the page cache).
        Off = "off",
    } expected "\"auto\", \"on\" or \"off\""
}

keyword_enum! {
    /// What `quire serve` does with a device that holds no Quire page store. A device
    /// holding anything else (a partition table, a file system, damaged Quire
    /// superblocks, a page store of another format version) is never formatted but by
    /// `quire store format --yes`; a file that `quire serve` has just created is always
    /// formatted.
    Formatting {
        /// Format it when it is blank: all zeroes where the page store's metadata and
        /// the common disk labels would be (a new disk).
        IfBlank = "if-blank",
        /// Never: `quire store format --yes` formats it.
        Never = "never",
    } expected "\"if-blank\" or \"never\""
}

#[allow(clippy::derivable_impls)] // keyword_enum! owns the derive list
impl Default for Formatting {
    fn default() -> Formatting {
        Formatting::IfBlank
    }
}

#[allow(clippy::derivable_impls)] // keyword_enum! owns the derive list
impl Default for DirectIo {
    fn default() -> DirectIo {
        DirectIo::Auto
    }
}

/// What an IP address may look like, for error messages.
const IP_EXPECTED: &str = "an IP address such as \"127.0.0.1\", \"0.0.0.0\" or \"::1\"";

fn ip_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| serde::de::Error::custom(value_error_message(&format!("{text:?}"), IP_EXPECTED)))
}

/// `""` → `None`, so that the schema's `key = ""` means "not set".
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let text = String::deserialize(deserializer)?;
    Ok(if text.is_empty() { None } else { Some(T::from(text)) })
}

fn none_as_empty_string<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_deref().unwrap_or(""))
}

fn none_as_empty<S: Serializer>(value: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(path) => path.serialize(serializer),
        None => serializer.serialize_str(""),
    }
}
