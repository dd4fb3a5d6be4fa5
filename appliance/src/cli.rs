//! The management CLI: `quire volume …`, `quire subsystem …`, … as JSON-RPC calls.
//!
//! Each subcommand maps to exactly one RPC method (see [`crate::rpc`] for the
//! reference), so the CLI is three small steps that are tested apart: arguments →
//! `(method, params)` ([`ClientCommand::request`]), the call ([`crate::rpc::call`]),
//! and the result → text ([`render`]): a table whose columns are a list of keys
//! ([`Column`]), a key/value record, or a one-line confirmation. `--json` prints the
//! result as the daemon sent it, for scripts.
//!
//! Exit codes: 0 success; 1 the daemon answered with an error (no such volume, …);
//! 2 the daemon could not be reached or answered nonsense.
//!
//! One command runs offline, without a daemon: `quire store format`, which erases the
//! device of a configuration (the same `--config` and flags as `quire serve`) and
//! formats it as an empty page store. It refuses without `--yes`, and while a peer
//! serves that configuration or holds that device. Exit codes: 0 formatted; 1 refused
//! or failed; 2 a bad configuration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use crate::rpc::methods::{
    self, MigrationCancelParams, PageMoveParams, PagePinParams, PeerDrainParams, RebalancePauseParams,
    StatsPagesParams, SubsystemHostParams, VolumeCreateParams, VolumeGrowParams, VolumeNameParams,
    VolumeSetReplicasParams,
};
use crate::rpc::{self, ClientError};

/// Management commands, run against a serving daemon.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// Create, list, grow and delete volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// NVMe subsystems (one per volume) and the hosts allowed on them.
    #[command(subcommand)]
    Subsystem(SubsystemCommand),
    /// Connected NVMe controllers.
    #[command(subcommand)]
    Controller(ControllerCommand),
    /// I/O and reactor counters.
    #[command(subcommand)]
    Stats(StatsCommand),
    /// The page store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The group of peers this one belongs to.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Compare the copies of replicated pages and repair those that differ.
    #[command(subcommand)]
    Scrub(ScrubCommand),
    /// Move pages between peers while hosts use them.
    #[command(subcommand)]
    Page(PageCommand),
    /// Moves of pages under way.
    #[command(subcommand)]
    Migration(MigrationCommand),
    /// Peers of the group.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// The coordinator's rebalancer: spreads pages over the peers by weight.
    #[command(subcommand)]
    Rebalance(RebalanceCommand),
    /// The daemon's log, as the appliance image keeps it (`quire.log` beside the
    /// management socket).
    Logs(LogsArgs),
}

/// `quire logs`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct LogsArgs {
    /// The last N lines (0: all).
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    /// The log file (default: `quire.log` in the management socket's folder).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// `quire scrub …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum ScrubCommand {
    /// Scrub a volume now: every leader of its page sets compares each in-sync
    /// member's checksums with its own copy, piece by piece, and repairs what differs.
    Start {
        /// The volume.
        name: String,
    },
    /// Each volume's last scrub: pages compared, units repaired.
    Status,
}

/// `quire page …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum PageCommand {
    /// Move a page's copy to another peer, live: both copies take every write while
    /// the page is copied, then the new one takes over and the old one is freed.
    Move {
        /// The volume.
        volume: String,
        /// The page (`quire volume pages` lists them).
        page: u64,
        /// The peer it moves to.
        to: String,
        /// The peer whose copy moves (default: the page's leader).
        #[arg(long)]
        from: Option<String>,
    },
    /// Keep a page where it is: the rebalancer does not move it (moves by hand and
    /// drains still do).
    Pin {
        /// The volume.
        volume: String,
        /// The page.
        page: u64,
        /// Unpin it.
        #[arg(long)]
        undo: bool,
    },
}

/// `quire rebalance …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum RebalanceCommand {
    /// Each peer's share against its ideal, what the rebalancer is doing and why,
    /// the moves it made last (`--json` lists them).
    Status,
    /// Stop starting moves, group-wide (moves under way finish).
    Pause,
    /// Start moving again.
    Resume,
}

/// `quire migration …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum MigrationCommand {
    /// Moves under way: pages, from, to, phase.
    List,
    /// Cancel a move before its cut-over (the new copy is dropped).
    Cancel {
        /// The volume.
        volume: String,
        /// The move's id (`quire migration list`).
        id: u64,
    },
}

/// `quire peer …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum PeerCommand {
    /// Move every copy a peer holds to other peers (before it leaves); it takes no
    /// new copies while drained.
    Drain {
        /// The peer.
        name: String,
        /// Stop draining it.
        #[arg(long)]
        undo: bool,
    },
    /// Forget a peer for good: refused while it runs or holds copies (drain it, stop
    /// it, then remove it).
    Remove {
        /// The peer.
        name: String,
    },
}

/// `quire group …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum GroupCommand {
    /// Peers (live and gone), their addresses, lease age and capacity; the
    /// coordinator; whether etcd is reachable.
    Status,
    /// The most each leader copies per second, group-wide and at once (no restart):
    /// rebuilds, page moves, scrubs; those given change; 0 goes back to each peer's
    /// `replication` configuration. `quire rebalance status` shows them.
    #[command(group(clap::ArgGroup::new("rate").required(true).multiple(true)))]
    SetLimits {
        /// Rebuilds, MB/s.
        #[arg(long = "rebuild-mb-s", value_name = "MB_S", group = "rate")]
        rebuild_mb_s: Option<u32>,
        /// Page moves (by hand, drains, the rebalancer), MB/s.
        #[arg(long = "migration-mb-s", value_name = "MB_S", group = "rate")]
        migration_mb_s: Option<u32>,
        /// Scrubs, MB/s.
        #[arg(long = "scrub-mb-s", value_name = "MB_S", group = "rate")]
        scrub_mb_s: Option<u32>,
    },
}

/// `quire volume …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum VolumeCommand {
    /// Create a volume (thin: it takes space as it is written).
    Create {
        /// Name: a-z 0-9 . _ - (becomes the subsystem NQN's suffix).
        name: String,
        /// Size, e.g. 10G (a multiple of the page size).
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// Page size, e.g. 4M (a power of two, 64K..1G).
        #[arg(long, value_parser = size_arg)]
        page_size: Option<u64>,
        /// Logical block size: 512 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// Copies of each page, on distinct peers (a group; default 2 when the group
        /// has two live peers, else 1; at most 3).
        #[arg(long)]
        replicas: Option<u8>,
    },
    /// List volumes.
    List,
    /// Grow a volume to a new, larger size.
    Grow {
        /// The volume.
        name: String,
        /// New total size, e.g. 20G.
        #[arg(long, value_parser = size_arg)]
        size: u64,
    },
    /// Delete a volume and free its pages.
    Delete {
        /// The volume.
        name: String,
    },
    /// Change the copies kept of each page (a group): new copies are built in the
    /// background, surplus ones dropped.
    SetReplicas {
        /// The volume.
        name: String,
        /// Copies of each page, 1 ..= 3 (at most the group's live peers).
        replicas: u8,
    },
    /// Limit a volume's I/O, group-wide whichever peers the hosts go through: the
    /// limits given change, the others stay; 0 removes one. Commands over a limit
    /// wait (they are never failed for it).
    #[command(group(clap::ArgGroup::new("limit").required(true).multiple(true)))]
    SetLimits {
        /// The volume.
        name: String,
        /// Reads, writes and Write Zeroes per second, over every host.
        #[arg(long, group = "limit")]
        iops: Option<u32>,
        /// MiB per second read and written, over every host.
        #[arg(long = "mib-s", value_name = "MIB_S", group = "limit")]
        mib_s: Option<u32>,
        /// Operations per second of each host.
        #[arg(long = "host-iops", value_name = "IOPS", group = "limit")]
        host_iops: Option<u32>,
        /// MiB per second of each host.
        #[arg(long = "host-mib-s", value_name = "MIB_S", group = "limit")]
        host_mib_s: Option<u32>,
    },
    /// Which peer owns which pages of a volume (ranges of pages and their owners).
    Pages {
        /// The volume.
        name: String,
    },
}

/// `quire subsystem …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum SubsystemCommand {
    /// List subsystems.
    List,
    /// Allow a host NQN to connect (the first one closes the subsystem to others).
    AllowHost {
        /// Subsystem NQN.
        nqn: String,
        /// Host NQN.
        host: String,
    },
    /// Remove a host NQN from the allowed list.
    DisallowHost {
        /// Subsystem NQN.
        nqn: String,
        /// Host NQN.
        host: String,
    },
}

/// `quire controller …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum ControllerCommand {
    /// List connected controllers and their queues.
    List,
}

/// `quire stats …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum StatsCommand {
    /// Per-volume I/O counters.
    Volumes,
    /// Per-reactor poll and traffic counters.
    Reactors,
    /// Request state transitions taken since start (every reactor), with counts.
    Requests,
    /// A volume's hottest pages over the group: operations and KiB per second
    /// (decaying, half-life 10 s), and the peers that serve them.
    Pages {
        /// The volume.
        name: String,
        /// How many pages.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Every peer's load: operations and KiB per second it serves.
    Peers,
    /// Every host's I/O on each volume over the group: operations and KiB per second
    /// (decaying, half-life 10 s), mean latency, the peers it goes through.
    Hosts,
}

/// `quire store …`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum StoreCommand {
    /// Capacity and use of the page store.
    Info,
    /// Erase the device and format it as an empty page store, offline (with
    /// `quire serve` stopped). Every volume and all data on the device are lost.
    Format(StoreFormatArgs),
}

/// `quire store format`: which device (the configuration of `quire serve`), and the
/// operator's confirmation.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct StoreFormatArgs {
    /// The configuration `quire serve` runs with (see config/default.toml); without
    /// it, the embedded default (./quire-data/quire.img).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Confirms that everything on the device may be erased.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub overrides: crate::serve::Overrides,
}

/// Parses a `--size`-style argument; clap adds the flag name to the message.
fn size_arg(text: &str) -> Result<u64, String> {
    quire_config::parse_size("size", text).map_err(|_| format!("expected {}", quire_config::size::SIZE_EXPECTED))
}

/// How a cell is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// As is (strings unquoted), left-aligned.
    Text,
    /// A count, right-aligned.
    Number,
    /// Bytes with a binary unit (`10G`, `1.5M`), right-aligned.
    Bytes,
    /// A list joined with commas; `empty` when the list is empty.
    List {
        /// Shown for an empty list.
        empty: &'static str,
    },
    /// The number of elements of a list, right-aligned.
    Len,
    /// A volume's limits (`volume::qos::Limits`), in words; `-` for none.
    Limits,
    /// The group's copy rates (`group::keys::CopyRates`), in words.
    CopyRates,
}

/// One column of a table: which key of each row object, under which header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// Key in the row object.
    pub key: &'static str,
    /// Header text.
    pub header: &'static str,
    /// How to show the value.
    pub format: Format,
}

const fn column(key: &'static str, header: &'static str, format: Format) -> Column {
    Column { key, header, format }
}

const VOLUME_COLUMNS: &[Column] = &[
    column("name", "NAME", Format::Text),
    column("id", "ID", Format::Number),
    column("size", "SIZE", Format::Bytes),
    column("page_size", "PAGE", Format::Bytes),
    column("block_size", "BLOCK", Format::Number),
    column("pages", "PAGES", Format::Number),
    column("allocated_pages", "ALLOCATED", Format::Number),
    column("replicas", "COPIES", Format::Number),
    column("health", "HEALTH", Format::Text),
    column("rebuild_percent", "REBUILT%", Format::Number),
    column("limits", "LIMITS", Format::Limits),
    column("nqn", "NQN", Format::Text),
    column("uuid", "UUID", Format::Text),
];

const SCRUB_COLUMNS: &[Column] = &[
    column("volume", "VOLUME", Format::Text),
    column("state", "STATE", Format::Text),
    column("pages", "PAGES", Format::Number),
    column("compared", "COMPARED", Format::Number),
    column("repaired", "REPAIRED", Format::Number),
];

const MIGRATION_COLUMNS: &[Column] = &[
    column("id", "ID", Format::Number),
    column("volume", "VOLUME", Format::Text),
    column("first_page", "PAGE", Format::Number),
    column("pages", "PAGES", Format::Number),
    column("from", "FROM", Format::Text),
    column("to", "TO", Format::Text),
    column("phase", "PHASE", Format::Text),
    column("pieces_done", "COPIED", Format::Number),
    column("pieces", "PIECES", Format::Number),
];

const PAGE_LOAD_FIELDS: &[Column] = &[
    column("name", "volume", Format::Text),
    column("pages", "pages", Format::Number),
    column("ops_s", "ops/s", Format::Number),
    column("kib_s", "KiB/s", Format::Number),
];

const PAGE_LOAD_COLUMNS: &[Column] = &[
    column("page", "PAGE", Format::Number),
    column("ops_s", "OPS/S", Format::Number),
    column("kib_s", "KIB/S", Format::Number),
    column("peers", "PEERS", Format::List { empty: "-" }),
];

const PEER_LOAD_COLUMNS: &[Column] = &[
    column("name", "NAME", Format::Text),
    column("ops_s", "OPS/S", Format::Number),
    column("kib_s", "KIB/S", Format::Number),
    column("volumes", "VOLUMES", Format::Number),
];

const HOST_LOAD_COLUMNS: &[Column] = &[
    column("host", "HOST", Format::Text),
    column("volume", "VOLUME", Format::Text),
    column("ops_s", "OPS/S", Format::Number),
    column("kib_s", "KIB/S", Format::Number),
    column("latency_us", "LAT_US", Format::Number),
    column("peers", "PEERS", Format::Text),
    column("steered_from", "STEERED AWAY FROM", Format::List { empty: "-" }),
];

const REBALANCE_FIELDS: &[Column] = &[
    column("enabled", "enabled", Format::Text),
    column("paused", "paused", Format::Text),
    column("state", "state", Format::Text),
    column("tolerance_pct", "tolerance %", Format::Number),
    column("moves", "moves", Format::Number),
    column("moves_max", "moves max", Format::Number),
    column("pinned", "pinned pages", Format::Number),
    column("copy_mb_s", "copy rates", Format::CopyRates),
];

const REBALANCE_PEER_COLUMNS: &[Column] = &[
    column("name", "NAME", Format::Text),
    column("weight", "WEIGHT", Format::Number),
    column("held_bytes", "HELD", Format::Bytes),
    column("ideal_bytes", "IDEAL", Format::Bytes),
    column("share_pct", "SHARE%", Format::Number),
    column("eligible", "TAKES PART", Format::Text),
];

const SUBSYSTEM_COLUMNS: &[Column] = &[
    column("nqn", "NQN", Format::Text),
    column("volume", "VOLUME", Format::Text),
    column("controllers", "CONTROLLERS", Format::Number),
    column("allowed_hosts", "ALLOWED HOSTS", Format::List { empty: "(any)" }),
];

const CONTROLLER_COLUMNS: &[Column] = &[
    column("cntlid", "CNTLID", Format::Number),
    column("subnqn", "SUBSYSTEM", Format::Text),
    column("hostnqn", "HOST", Format::Text),
    column("hostid", "HOSTID", Format::Text),
    column("kato_ms", "KATO MS", Format::Number),
    column("queues", "QUEUES", Format::Len),
];

const VOLUME_STATS_COLUMNS: &[Column] = &[
    column("name", "VOLUME", Format::Text),
    column("read_ops", "READS", Format::Number),
    column("write_ops", "WRITES", Format::Number),
    column("read_bytes", "READ", Format::Bytes),
    column("write_bytes", "WRITTEN", Format::Bytes),
    column("other_ops", "OTHER", Format::Number),
    column("errors", "ERRORS", Format::Number),
    column("qos_waits", "LIMITED", Format::Number),
    column("qos_host_waits", "HOST-LIMITED", Format::Number),
];

const TRANSITION_COLUMNS: &[Column] =
    &[column("from", "FROM", Format::Text), column("to", "TO", Format::Text), column("count", "COUNT", Format::Number)];

const REACTOR_STATS_COLUMNS: &[Column] = &[
    column("reactor", "REACTOR", Format::Number),
    column("core", "CORE", Format::Number),
    column("connections", "CONNS", Format::Number),
    column("polls", "POLLS", Format::Number),
    column("busy_polls", "BUSY", Format::Number),
    column("sleeps", "SLEEPS", Format::Number),
    column("io_ops", "IO OPS", Format::Number),
    column("rx_bytes", "RX", Format::Bytes),
    column("tx_bytes", "TX", Format::Bytes),
    column("rx_copied_bytes", "RX COPIED", Format::Bytes),
    column("tx_copied_bytes", "TX COPIED", Format::Bytes),
    column("forwarded_parts", "FORWARDED", Format::Number),
    column("link_served", "SERVED FOR PEERS", Format::Number),
    column("path_errors", "PATH ERRORS", Format::Number),
];

const GROUP_FIELDS: &[Column] = &[
    column("mode", "mode", Format::Text),
    column("peer", "peer", Format::Text),
    column("coordinator", "coordinator", Format::Text),
    column("etcd", "etcd", Format::List { empty: "-" }),
    column("etcd_state", "etcd state", Format::Text),
    column("etcd_error", "etcd error", Format::Text),
    column("revision", "revision", Format::Number),
];

const GROUP_PEER_COLUMNS: &[Column] = &[
    column("name", "NAME", Format::Text),
    column("state", "STATE", Format::Text),
    column("coordinator", "COORD", Format::Text),
    column("target", "TARGET", Format::Text),
    column("link", "LINK", Format::Text),
    column("lease_age_s", "LEASE AGE(S)", Format::Number),
    column("weight", "WEIGHT", Format::Number),
    column("used_bytes", "USED", Format::Bytes),
    column("capacity_bytes", "CAPACITY", Format::Bytes),
    column("version", "VERSION", Format::Text),
];

const PAGES_FIELDS: &[Column] = &[
    column("name", "volume", Format::Text),
    column("pages", "pages", Format::Number),
    column("page_size", "page size", Format::Bytes),
    column("epoch", "routing epoch", Format::Number),
];

const PAGE_RUN_COLUMNS: &[Column] = &[
    column("first", "FIRST", Format::Number),
    column("count", "PAGES", Format::Number),
    column("owner", "OWNER", Format::Text),
];

const STORE_FIELDS: &[Column] = &[
    column("device", "device", Format::Text),
    column("size", "size", Format::Bytes),
    column("used", "used", Format::Bytes),
    column("free", "free", Format::Bytes),
    column("volumes", "volumes", Format::Number),
    column("zeroed_spares", "zeroed spares", Format::Number),
];

/// How a command's result is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// A table; an object result is one row.
    Table(&'static [Column]),
    /// One `key: value` line per column.
    Record(&'static [Column]),
    /// A fixed confirmation line.
    Done(String),
    /// A record, then a table of the list under `key` (when not empty).
    RecordThenTable(&'static [Column], &'static str, &'static [Column]),
}

impl ClientCommand {
    /// The RPC method and params this command calls.
    pub fn request(&self) -> (&'static str, Value) {
        match self {
            ClientCommand::Volume(VolumeCommand::Create { name, size, page_size, block_size, replicas }) => {
                let params = VolumeCreateParams {
                    name: name.clone(),
                    size: *size,
                    page_size: *page_size,
                    block_size: *block_size,
                    replicas: *replicas,
                };
                (methods::VOLUME_CREATE, to_value(&params))
            }
            ClientCommand::Volume(VolumeCommand::List) => (methods::VOLUME_LIST, Value::Null),
            ClientCommand::Volume(VolumeCommand::Grow { name, size }) => {
                (methods::VOLUME_GROW, to_value(&VolumeGrowParams { name: name.clone(), size: *size }))
            }
            ClientCommand::Volume(VolumeCommand::Delete { name }) => {
                (methods::VOLUME_DELETE, to_value(&VolumeNameParams { name: name.clone() }))
            }
            ClientCommand::Volume(VolumeCommand::SetReplicas { name, replicas }) => {
                let params = VolumeSetReplicasParams { name: name.clone(), replicas: *replicas };
                (methods::VOLUME_SET_REPLICAS, to_value(&params))
            }
            ClientCommand::Volume(VolumeCommand::SetLimits { name, iops, mib_s, host_iops, host_mib_s }) => {
                let params = crate::rpc::methods::VolumeSetLimitsParams {
                    name: name.clone(),
                    iops: *iops,
                    mib_s: *mib_s,
                    host_iops: *host_iops,
                    host_mib_s: *host_mib_s,
                };
                (methods::VOLUME_SET_LIMITS, to_value(&params))
            }
            ClientCommand::Volume(VolumeCommand::Pages { name }) => {
                (methods::VOLUME_PAGES, to_value(&VolumeNameParams { name: name.clone() }))
            }
            ClientCommand::Subsystem(SubsystemCommand::List) => (methods::SUBSYSTEM_LIST, Value::Null),
            ClientCommand::Subsystem(SubsystemCommand::AllowHost { nqn, host }) => {
                let params = SubsystemHostParams { nqn: nqn.clone(), host: host.clone() };
                (methods::SUBSYSTEM_ALLOW_HOST, to_value(&params))
            }
            ClientCommand::Subsystem(SubsystemCommand::DisallowHost { nqn, host }) => {
                let params = SubsystemHostParams { nqn: nqn.clone(), host: host.clone() };
                (methods::SUBSYSTEM_DISALLOW_HOST, to_value(&params))
            }
            ClientCommand::Controller(ControllerCommand::List) => (methods::CONTROLLER_LIST, Value::Null),
            ClientCommand::Stats(StatsCommand::Volumes) => (methods::STATS_VOLUMES, Value::Null),
            ClientCommand::Stats(StatsCommand::Reactors) => (methods::STATS_REACTORS, Value::Null),
            ClientCommand::Stats(StatsCommand::Requests) => (methods::STATS_REQUESTS, Value::Null),
            ClientCommand::Stats(StatsCommand::Pages { name, top }) => {
                (methods::STATS_PAGES, to_value(&StatsPagesParams { name: name.clone(), top: Some(*top) }))
            }
            ClientCommand::Stats(StatsCommand::Peers) => (methods::STATS_PEERS, Value::Null),
            ClientCommand::Stats(StatsCommand::Hosts) => (methods::STATS_HOSTS, Value::Null),
            ClientCommand::Store(StoreCommand::Info) => (methods::STORE_INFO, Value::Null),
            ClientCommand::Group(GroupCommand::Status) => (methods::GROUP_STATUS, Value::Null),
            ClientCommand::Group(GroupCommand::SetLimits { rebuild_mb_s, migration_mb_s, scrub_mb_s }) => {
                let params = crate::rpc::methods::GroupSetLimitsParams {
                    rebuild_mb_s: *rebuild_mb_s,
                    migration_mb_s: *migration_mb_s,
                    scrub_mb_s: *scrub_mb_s,
                };
                (methods::GROUP_SET_LIMITS, to_value(&params))
            }
            ClientCommand::Scrub(ScrubCommand::Start { name }) => {
                (methods::SCRUB_START, to_value(&VolumeNameParams { name: name.clone() }))
            }
            ClientCommand::Scrub(ScrubCommand::Status) => (methods::SCRUB_STATUS, Value::Null),
            ClientCommand::Page(PageCommand::Move { volume, page, to, from }) => {
                let params = PageMoveParams { volume: volume.clone(), page: *page, to: to.clone(), from: from.clone() };
                (methods::PAGE_MOVE, to_value(&params))
            }
            ClientCommand::Page(PageCommand::Pin { volume, page, undo }) => {
                (methods::PAGE_PIN, to_value(&PagePinParams { volume: volume.clone(), page: *page, undo: *undo }))
            }
            ClientCommand::Rebalance(RebalanceCommand::Status) => (methods::REBALANCE_STATUS, Value::Null),
            ClientCommand::Rebalance(RebalanceCommand::Pause) => {
                (methods::REBALANCE_PAUSE, to_value(&RebalancePauseParams { paused: true }))
            }
            ClientCommand::Rebalance(RebalanceCommand::Resume) => {
                (methods::REBALANCE_PAUSE, to_value(&RebalancePauseParams { paused: false }))
            }
            ClientCommand::Migration(MigrationCommand::List) => (methods::MIGRATION_LIST, Value::Null),
            ClientCommand::Migration(MigrationCommand::Cancel { volume, id }) => {
                (methods::MIGRATION_CANCEL, to_value(&MigrationCancelParams { volume: volume.clone(), id: *id }))
            }
            ClientCommand::Peer(PeerCommand::Drain { name, undo }) => {
                (methods::PEER_DRAIN, to_value(&PeerDrainParams { name: name.clone(), undo: *undo }))
            }
            ClientCommand::Peer(PeerCommand::Remove { name }) => {
                (methods::PEER_REMOVE, to_value(&PeerDrainParams { name: name.clone(), undo: false }))
            }
            ClientCommand::Logs(_) => unreachable!("quire logs reads a file, not the socket"),
            ClientCommand::Store(StoreCommand::Format(_)) => {
                unreachable!("`quire store format` runs offline (run_with), never over RPC")
            }
        }
    }

    /// How this command's result is shown.
    pub fn view(&self) -> View {
        match self {
            ClientCommand::Volume(
                VolumeCommand::Create { .. }
                | VolumeCommand::Grow { .. }
                | VolumeCommand::List
                | VolumeCommand::SetReplicas { .. },
            ) => View::Table(VOLUME_COLUMNS),
            ClientCommand::Volume(VolumeCommand::Delete { name }) => View::Done(format!("deleted volume {name}")),
            ClientCommand::Volume(VolumeCommand::SetLimits { name, .. }) => {
                View::Done(format!("limits of volume {name} set (quire volume list shows them)"))
            }
            ClientCommand::Volume(VolumeCommand::Pages { .. }) => {
                View::RecordThenTable(PAGES_FIELDS, "runs", PAGE_RUN_COLUMNS)
            }
            ClientCommand::Subsystem(SubsystemCommand::List) => View::Table(SUBSYSTEM_COLUMNS),
            ClientCommand::Subsystem(SubsystemCommand::AllowHost { nqn, host }) => {
                View::Done(format!("host {host} may connect to {nqn}"))
            }
            ClientCommand::Subsystem(SubsystemCommand::DisallowHost { nqn, host }) => {
                View::Done(format!("host {host} may no longer connect to {nqn}"))
            }
            ClientCommand::Controller(ControllerCommand::List) => View::Table(CONTROLLER_COLUMNS),
            ClientCommand::Stats(StatsCommand::Volumes) => View::Table(VOLUME_STATS_COLUMNS),
            ClientCommand::Stats(StatsCommand::Reactors) => View::Table(REACTOR_STATS_COLUMNS),
            ClientCommand::Stats(StatsCommand::Requests) => View::Table(TRANSITION_COLUMNS),
            ClientCommand::Stats(StatsCommand::Pages { .. }) => {
                View::RecordThenTable(PAGE_LOAD_FIELDS, "top", PAGE_LOAD_COLUMNS)
            }
            ClientCommand::Stats(StatsCommand::Peers) => View::Table(PEER_LOAD_COLUMNS),
            ClientCommand::Stats(StatsCommand::Hosts) => View::Table(HOST_LOAD_COLUMNS),
            ClientCommand::Store(StoreCommand::Info) => View::Record(STORE_FIELDS),
            ClientCommand::Store(StoreCommand::Format(_)) | ClientCommand::Logs(_) => View::Done(String::new()),
            ClientCommand::Scrub(ScrubCommand::Start { name }) => View::Done(format!("scrub of {name} started")),
            ClientCommand::Scrub(ScrubCommand::Status) => View::Table(SCRUB_COLUMNS),
            ClientCommand::Page(PageCommand::Move { .. }) | ClientCommand::Migration(MigrationCommand::List) => {
                View::Table(MIGRATION_COLUMNS)
            }
            ClientCommand::Page(PageCommand::Pin { volume, page, undo: false }) => {
                View::Done(format!("page {page} of {volume} pinned: the rebalancer leaves it where it is"))
            }
            ClientCommand::Page(PageCommand::Pin { volume, page, undo: true }) => {
                View::Done(format!("page {page} of {volume} unpinned"))
            }
            ClientCommand::Rebalance(RebalanceCommand::Status) => {
                View::RecordThenTable(REBALANCE_FIELDS, "peers", REBALANCE_PEER_COLUMNS)
            }
            ClientCommand::Rebalance(RebalanceCommand::Pause) => {
                View::Done("rebalancer paused (moves under way finish)".into())
            }
            ClientCommand::Rebalance(RebalanceCommand::Resume) => View::Done("rebalancer resumed".into()),
            ClientCommand::Migration(MigrationCommand::Cancel { volume, id }) => {
                View::Done(format!("move {id} of {volume} cancelled"))
            }
            ClientCommand::Peer(PeerCommand::Drain { name, undo: false }) => {
                View::Done(format!("peer {name} is being drained (quire migration list shows the moves)"))
            }
            ClientCommand::Peer(PeerCommand::Drain { name, undo: true }) => {
                View::Done(format!("peer {name} is no longer drained"))
            }
            ClientCommand::Peer(PeerCommand::Remove { name }) => {
                View::Done(format!("peer {name} removed from the group"))
            }
            ClientCommand::Group(GroupCommand::Status) => {
                View::RecordThenTable(GROUP_FIELDS, "peers", GROUP_PEER_COLUMNS)
            }
            ClientCommand::Group(GroupCommand::SetLimits { .. }) => {
                View::Done("copy rates set for the group (quire rebalance status shows them)".into())
            }
        }
    }
}

/// A params struct as JSON.
fn to_value<T: serde::Serialize>(params: &T) -> Value {
    serde_json::to_value(params).expect("params structs always serialize")
}

/// Runs `cmd` against the daemon at `socket`, printing to stdout (errors to stderr).
pub fn run(cmd: ClientCommand, socket: &Path, json: bool) -> ExitCode {
    run_with(&cmd, socket, json, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

/// [`run`] with the output streams given (for tests).
pub fn run_with(cmd: &ClientCommand, socket: &Path, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    if let ClientCommand::Store(StoreCommand::Format(args)) = cmd {
        return store_format(args, json, out, err);
    }
    if let ClientCommand::Logs(args) = cmd {
        return logs(args, socket, out, err);
    }
    let (method, params) = cmd.request();
    let result = match rpc::call(socket, method, params) {
        Ok(result) => result,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return match error {
                ClientError::Rpc(_) => ExitCode::from(1),
                ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Protocol(_) => ExitCode::from(2),
            };
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&result).expect("a Value always serializes") + "\n"
    } else {
        render(&cmd.view(), &result)
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "error: cannot write the output: {error}");
            ExitCode::from(2)
        }
    }
}

/// `quire logs`: the tail of the log file the appliance's init writes.
fn logs(args: &LogsArgs, socket: &Path, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let path = args.file.clone().unwrap_or_else(|| socket.with_file_name("quire.log"));
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            let _ = writeln!(
                err,
                "error: cannot read {}: {e} (the appliance image writes it; elsewhere redirect `quire serve`'s output there, or name the file with --file)",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let from = if args.lines == 0 { 0 } else { lines.len().saturating_sub(args.lines) };
    for l in &lines[from..] {
        if writeln!(out, "{l}").is_err() {
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// `quire store format`: the configuration as `quire serve` would run it, then
/// [`crate::serve::format_store`].
fn store_format(args: &StoreFormatArgs, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let mut cfg = match &args.config {
        Some(path) => match quire_config::Config::from_file(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return ExitCode::from(2);
            }
        },
        None => quire_config::Config::default(),
    };
    crate::serve::apply_overrides(&mut cfg, &args.overrides);
    if let Err(e) = cfg.validate() {
        let _ = writeln!(err, "error: {e}");
        return ExitCode::from(2);
    }
    if !args.yes {
        let _ = writeln!(
            err,
            "error: `quire store format` erases {} and every volume on it; add --yes to go ahead",
            device_text(&cfg)
        );
        return ExitCode::from(1);
    }
    let done = match crate::serve::format_store(&cfg) {
        Ok(done) => done,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return ExitCode::from(1);
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&done).expect("a report always serializes") + "\n"
    } else {
        format!(
            "formatted {}: an empty page store with {} of data space; before: {}\n",
            done.device,
            format_bytes(done.data_bytes),
            done.previous
        )
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "error: cannot write the output: {error}");
            ExitCode::from(2)
        }
    }
}

/// The configured device, for messages: `file ./quire-data/quire.img`.
fn device_text(cfg: &quire_config::Config) -> String {
    match cfg.devices.first() {
        None => "no device (none is configured)".to_string(),
        Some(d) => match (&d.path, &d.pci_address) {
            (Some(path), _) => format!("{} {}", d.kind, cfg.resolve(path).display()),
            (None, Some(bdf)) => format!("{} {bdf}", d.kind),
            (None, None) => d.kind.to_string(),
        },
    }
}

/// The text for `result` shown as `view`.
pub fn render(view: &View, result: &Value) -> String {
    match view {
        View::Table(columns) => match result {
            Value::Array(rows) => render_table(rows, columns),
            Value::Object(_) => render_table(std::slice::from_ref(result), columns),
            other => format!("{other}\n"),
        },
        View::Record(fields) => render_record(result, fields),
        View::Done(line) => format!("{line}\n"),
        View::RecordThenTable(fields, key, columns) => {
            let mut text = render_record(result, fields);
            if let Some(Value::Array(rows)) = result.get(*key) {
                if !rows.is_empty() {
                    text.push('\n');
                    text.push_str(&render_table(rows, columns));
                }
            }
            text
        }
    }
}

/// A table: a header line, then a line per row; columns two spaces apart, numbers
/// right-aligned, no trailing spaces.
pub fn render_table(rows: &[Value], columns: &[Column]) -> String {
    assert!(!columns.is_empty());
    let cells: Vec<Vec<String>> = rows.iter().map(|row| columns.iter().map(|c| cell(row, c)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|row| row[i].chars().count()).chain([c.header.len()]).max().unwrap_or(0))
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    let mut text = String::new();
    for line in std::iter::once(&headers).chain(cells.iter()) {
        let mut parts = Vec::with_capacity(columns.len());
        for ((value, column), width) in line.iter().zip(columns).zip(&widths) {
            let right = matches!(column.format, Format::Number | Format::Bytes | Format::Len);
            parts.push(if right { format!("{value:>width$}") } else { format!("{value:<width$}") });
        }
        text.push_str(parts.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `key: value` lines, keys padded to one width.
pub fn render_record(record: &Value, fields: &[Column]) -> String {
    let width = fields.iter().map(|f| f.header.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for field in fields {
        let label = format!("{}:", field.header);
        text.push_str(format!("{label:<width$} {}", cell(record, field)).trim_end());
        text.push('\n');
    }
    text
}

/// One cell: `row[column.key]` formatted; a missing or null value is `-`.
fn cell(row: &Value, column: &Column) -> String {
    let value = row.get(column.key).unwrap_or(&Value::Null);
    match (column.format, value) {
        (_, Value::Null) => "-".to_string(),
        (Format::Bytes, Value::Number(n)) => n.as_u64().map_or_else(|| n.to_string(), format_bytes),
        (Format::Len, Value::Array(items)) => items.len().to_string(),
        (Format::Limits, v) => {
            serde_json::from_value::<crate::volume::qos::Limits>(v.clone()).map_or_else(|_| plain(v), |l| l.describe())
        }
        (Format::CopyRates, v) => serde_json::from_value::<crate::group::keys::CopyRates>(v.clone()).map_or_else(
            |_| plain(v),
            |r| {
                let one = |n: u32| if n == 0 { "configured".to_string() } else { format!("{n} MB/s") };
                format!("rebuild {}, migration {}, scrub {}", one(r.rebuild), one(r.migration), one(r.scrub))
            },
        ),
        (Format::List { empty }, Value::Array(items)) if items.is_empty() => empty.to_string(),
        (Format::List { .. }, Value::Array(items)) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        (_, value) => plain(value),
    }
}

/// A JSON value as text, strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        other => other.to_string(),
    }
}

/// Bytes with the largest binary unit that keeps the value ≥ 1: `512B`, `4K`, `1.5G`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{}{}", bytes / scale, UNITS[unit])
    } else {
        // Display only; the precision lost here is one decimal of a human-sized number.
        #[allow(clippy::cast_precision_loss)]
        let value = bytes as f64 / scale as f64;
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::rpc::{RpcCall, RpcError};

    #[derive(clap::Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    /// What `volume_list` returns for one volume.
    fn sample_volume(name: &str, id: u32) -> Value {
        json!({
            "name": name, "id": id, "size": 10u64 << 30, "page_size": 4u64 << 20, "block_size": 4096,
            "pages": 2560, "allocated_pages": 3, "replicas": 2, "health": "degraded",
            "nqn": format!("nqn.2024-01.io.quire:{name}"),
            "uuid": "8f1c2d3e-0000-4000-8000-000000000001", "nguid": "8f1c2d3e000040008000000000000001",
        })
    }

    fn parse(args: &[&str]) -> ClientCommand {
        TestCli::try_parse_from(std::iter::once("quire").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn logs_prints_the_tail_of_the_log_beside_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("quire.log"), "one\ntwo\nthree\nfour\n").unwrap();
        let cmd = parse(&["logs", "-n", "2"]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&cmd, &dir.path().join("quire.sock"), false, &mut out, &mut err);
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(String::from_utf8(out).unwrap(), "three\nfour\n");
        let cmd = parse(&["logs", "--file", "/nonexistent/q.log"]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_with(&cmd, &dir.path().join("quire.sock"), false, &mut out, &mut err), ExitCode::from(2));
        assert!(String::from_utf8(err).unwrap().contains("cannot read /nonexistent/q.log"));
    }

    fn request(args: &[&str]) -> (&'static str, Value) {
        parse(args).request()
    }

    #[test]
    fn volume_create_sends_sizes_as_bytes() {
        let (method, params) = request(&["volume", "create", "db", "--size", "10G"]);
        assert_eq!(method, "volume_create");
        assert_eq!(params, json!({"name": "db", "size": 10u64 << 30}));
        let (_, params) =
            request(&["volume", "create", "db", "--size", "1GiB", "--page-size", "64K", "--block-size", "512"]);
        assert_eq!(params, json!({"name": "db", "size": 1u64 << 30, "page_size": 65536, "block_size": 512}));
    }

    #[test]
    fn bad_size_is_a_usage_error_naming_the_flag() {
        let error = TestCli::try_parse_from(["quire", "volume", "create", "db", "--size", "10X"]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--size") && message.contains("expected a size such as"), "{message}");
        assert!(TestCli::try_parse_from(["quire", "volume", "create", "db"]).is_err(), "--size is required");
    }

    #[test]
    fn every_command_maps_to_its_method() {
        let cases: [(&[&str], &str, Value); 17] = [
            (&["volume", "list"], "volume_list", Value::Null),
            (&["volume", "grow", "db", "--size", "20G"], "volume_grow", json!({"name": "db", "size": 20u64 << 30})),
            (&["volume", "delete", "db"], "volume_delete", json!({"name": "db"})),
            (&["volume", "pages", "db"], "volume_pages", json!({"name": "db"})),
            (&["subsystem", "list"], "subsystem_list", Value::Null),
            (
                &["subsystem", "allow-host", "nqn.s", "nqn.h"],
                "subsystem_allow_host",
                json!({"nqn": "nqn.s", "host": "nqn.h"}),
            ),
            (
                &["subsystem", "disallow-host", "nqn.s", "nqn.h"],
                "subsystem_disallow_host",
                json!({"nqn": "nqn.s", "host": "nqn.h"}),
            ),
            (&["controller", "list"], "controller_list", Value::Null),
            (&["stats", "volumes"], "stats_volumes", Value::Null),
            (&["stats", "reactors"], "stats_reactors", Value::Null),
            (&["store", "info"], "store_info", Value::Null),
            (&["page", "move", "db", "7", "c"], "page_move", json!({"volume": "db", "page": 7, "to": "c"})),
            (
                &["page", "move", "db", "7", "c", "--from", "b"],
                "page_move",
                json!({"volume": "db", "page": 7, "to": "c", "from": "b"}),
            ),
            (&["migration", "list"], "migration_list", Value::Null),
            (&["migration", "cancel", "db", "42"], "migration_cancel", json!({"volume": "db", "id": 42})),
            (&["peer", "drain", "c"], "peer_drain", json!({"name": "c", "undo": false})),
            (&["peer", "drain", "c", "--undo"], "peer_drain", json!({"name": "c", "undo": true})),
        ];
        for (args, method, params) in cases {
            assert_eq!(request(args), (method, params), "{args:?}");
            assert!(methods::ALL.contains(&method));
        }
    }

    #[test]
    fn table_aligns_columns_and_formats_cells() {
        let columns = [
            column("name", "NAME", Format::Text),
            column("size", "SIZE", Format::Bytes),
            column("n", "N", Format::Number),
            column("hosts", "HOSTS", Format::List { empty: "(any)" }),
            column("queues", "QUEUES", Format::Len),
        ];
        let rows = [
            json!({"name": "a", "size": 1u64 << 30, "n": 5, "hosts": [], "queues": [1, 2, 3]}),
            json!({"name": "longer", "size": 1536, "n": 12345, "hosts": ["nqn.x", "nqn.y"], "queues": []}),
            json!({"name": "c"}),
        ];
        let expected = "\
NAME    SIZE      N  HOSTS        QUEUES
a         1G      5  (any)             3
longer  1.5K  12345  nqn.x,nqn.y       0
c          -      -  -                 -
";
        assert_eq!(render_table(&rows, &columns), expected);
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(
            render_table(&[], VOLUME_STATS_COLUMNS),
            "VOLUME  READS  WRITES  READ  WRITTEN  OTHER  ERRORS  LIMITED  HOST-LIMITED\n"
        );
    }

    #[test]
    fn object_result_is_one_row_and_record_lines_up() {
        let text = render(&View::Table(VOLUME_COLUMNS), &sample_volume("db", 2));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]
                .starts_with("NAME  ID  SIZE  PAGE  BLOCK  PAGES  ALLOCATED  COPIES  HEALTH    REBUILT%  LIMITS  NQN"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "db     2   10G    4M   4096   2560          3       2  degraded         -  -       nqn.2024-01.io.quire:db"
            ),
            "{text}"
        );
        let store = json!({"device": "file:quire.img", "size": 8u64 << 30, "used": 12u64 << 20, "free": (8u64 << 30) - (12 << 20), "volumes": 1, "zeroed_spares": 8});
        let expected = "device:        file:quire.img\nsize:          8G\nused:          12M\nfree:          8.0G\nvolumes:       1\nzeroed spares: 8\n";
        assert_eq!(render(&View::Record(STORE_FIELDS), &store), expected);
        assert_eq!(render(&View::Done("deleted volume db".into()), &json!(true)), "deleted volume db\n");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(1023), "1023B");
        assert_eq!(format_bytes(4096), "4K");
        assert_eq!(format_bytes(1536), "1.5K");
        assert_eq!(format_bytes(10 << 30), "10G");
        assert_eq!(format_bytes(3 << 40), "3T");
    }

    /// A control thread that serves `volume_list` from a fixed list and fails
    /// `volume_delete` of anything.
    fn fake_control() -> crossbeam_channel::Sender<RpcCall> {
        let (calls, inbox) = crossbeam_channel::bounded::<RpcCall>(4);
        std::thread::spawn(move || {
            for call in inbox {
                let result = match call.method.as_str() {
                    methods::VOLUME_LIST => Ok(json!([sample_volume("db", 1), sample_volume("logs", 2)])),
                    methods::VOLUME_DELETE => call
                        .params::<VolumeNameParams>()
                        .and_then(|p| Err(RpcError::not_found(format!("no volume named {:?}", p.name)))),
                    other => Err(RpcError::method_not_found(other)),
                };
                call.respond(result);
            }
        });
        calls
    }

    #[test]
    fn group_status_shows_the_group_then_its_peers() {
        let view = parse(&["group", "status"]).view();
        let single = serde_json::to_value(crate::group::single_status("quire-0")).unwrap();
        let text = render(&view, &single);
        assert!(text.starts_with("mode:        single\npeer:        quire-0\ncoordinator: -\n"), "{text}");
        assert!(!text.contains("NAME"), "no peer table for a single peer: {text}");
        let mut group = single.clone();
        group["mode"] = json!("group");
        group["coordinator"] = json!("a");
        group["peers"] = json!([
            {"name": "a", "state": "live", "coordinator": true, "target": "127.0.0.1:4420", "link": "127.0.0.1:4520",
             "lease_age_s": 1, "weight": 8, "used_bytes": 4194304, "capacity_bytes": 8589934592u64, "version": "0.1.0"},
            {"name": "b", "state": "gone", "coordinator": false, "target": "127.0.0.1:4421", "link": "127.0.0.1:4521",
             "lease_age_s": null, "weight": 8, "used_bytes": 0, "capacity_bytes": 8589934592u64, "version": "0.1.0"}
        ]);
        let text = render(&view, &group);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("NAME  STATE  COORD")), "{text}");
        let a = lines.iter().find(|l| l.starts_with("a ")).unwrap();
        assert!(a.contains("live") && a.contains("yes") && a.contains("4M") && a.contains("8G"), "{text}");
        let b = lines.iter().find(|l| l.starts_with("b ")).unwrap();
        assert!(b.contains("gone") && b.contains(" - "), "{text}");
    }

    #[test]
    fn run_against_the_rpc_server() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("quire.sock");
        let _server = rpc::spawn(&socket, fake_control()).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let list = parse(&["volume", "list"]);
        assert_eq!(run_with(&list, &socket, false, &mut out, &mut err), ExitCode::SUCCESS);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].starts_with("db ") && lines[2].starts_with("logs "), "{text}");

        let mut out = Vec::new();
        assert_eq!(run_with(&list, &socket, true, &mut out, &mut err), ExitCode::SUCCESS);
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed[1]["name"], "logs");
        assert!(err.is_empty());

        let delete = parse(&["volume", "delete", "ghost"]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_with(&delete, &socket, false, &mut out, &mut err), ExitCode::from(1));
        assert!(out.is_empty());
        assert_eq!(String::from_utf8(err).unwrap(), "error: no volume named \"ghost\" (code 1000)\n");
    }

    #[test]
    fn store_format_parses_the_flags_of_serve() {
        let cmd = parse(&["store", "format", "--yes", "-c", "q.toml", "--data-dir", "/srv/q", "--port", "14420"]);
        let ClientCommand::Store(StoreCommand::Format(args)) = cmd else { panic!("{cmd:?}") };
        assert!(args.yes);
        assert_eq!(args.config.as_deref(), Some(Path::new("q.toml")));
        assert_eq!(args.overrides.data_dir.as_deref(), Some(Path::new("/srv/q")));
        assert_eq!(args.overrides.port, Some(14420));
        let ClientCommand::Store(StoreCommand::Format(args)) = parse(&["store", "format"]) else { panic!() };
        assert!(!args.yes && args.config.is_none());
    }

    #[test]
    fn store_format_runs_offline_and_only_with_yes() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("quire.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "[peer]\ndata_dir = {:?}\n[[device]]\nkind = \"file\"\npath = \"dev.img\"\nsize = \"64M\"\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        let image = data.join("dev.img");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&image, vec![0x42u8; 64 << 20]).unwrap();
        let config_arg = config.display().to_string();
        let nowhere = dir.path().join("no.sock");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cmd = parse(&["store", "format", "--config", &config_arg]);
        assert_eq!(run_with(&cmd, &nowhere, false, &mut out, &mut err), ExitCode::from(1));
        let message = String::from_utf8(err).unwrap();
        assert_eq!(
            message,
            format!(
                "error: `quire store format` erases file {} and every volume on it; add --yes to go ahead\n",
                image.display()
            )
        );
        assert!(std::fs::read(&image).unwrap().iter().all(|&b| b == 0x42), "nothing was written");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cmd = parse(&["store", "format", "--yes", "--config", &config_arg]);
        assert_eq!(run_with(&cmd, &nowhere, false, &mut out, &mut err), ExitCode::SUCCESS, "{err:?}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("formatted file {} (", image.display())), "{text}");
        assert!(text.ends_with("(starts with \"BBBBBBBBBBBBBBBB\" at byte 0)\n"), "{text}");
        assert!(text.contains("an empty page store with 62M of data space; before: block 0 (byte 0) holds non-zero data (starts with \"BBBBBBBBBBBBBBBB\" at byte 0)\n"), "{text}");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_with(&cmd, &nowhere, true, &mut out, &mut err), ExitCode::SUCCESS, "{err:?}");
        let report: Value = serde_json::from_slice(&out).unwrap();
        assert!(report["previous"].as_str().unwrap().starts_with("a Quire page store (peer uuid "), "{report}");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let bad = parse(&["store", "format", "--yes", "--config", "/nonexistent/quire.toml"]);
        assert_eq!(run_with(&bad, &nowhere, false, &mut out, &mut err), ExitCode::from(2));
    }

    #[test]
    fn run_without_a_daemon_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&parse(&["store", "info"]), &socket, false, &mut out, &mut err);
        assert_eq!(code, ExitCode::from(2));
        let message = String::from_utf8(err).unwrap();
        assert!(message.contains("is `quire serve` running?"), "{message}");
    }
}
