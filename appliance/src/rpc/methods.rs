//! Method names and the typed shape of their params and results.
//!
//! The module doc of [`crate::rpc`] is the reference; these types are the same
//! reference in a form the compiler checks. The CLI builds its params from them and
//! the control thread reads them with [`crate::rpc::RpcCall::params`], so the two ends
//! cannot drift apart. Params refuse unknown fields, so a misspelt parameter is
//! `INVALID_PARAMS` rather than silently ignored; results are plain data.

use serde::{Deserialize, Serialize};

/// `volume_create`.
pub const VOLUME_CREATE: &str = "volume_create";
/// `volume_list`.
pub const VOLUME_LIST: &str = "volume_list";
/// `volume_grow`.
pub const VOLUME_GROW: &str = "volume_grow";
/// `volume_delete`.
pub const VOLUME_DELETE: &str = "volume_delete";
/// `subsystem_list`.
pub const SUBSYSTEM_LIST: &str = "subsystem_list";
/// `subsystem_allow_host`.
pub const SUBSYSTEM_ALLOW_HOST: &str = "subsystem_allow_host";
/// `subsystem_disallow_host`.
pub const SUBSYSTEM_DISALLOW_HOST: &str = "subsystem_disallow_host";
/// `controller_list`.
pub const CONTROLLER_LIST: &str = "controller_list";
/// `stats_volumes`.
pub const STATS_VOLUMES: &str = "stats_volumes";
/// `stats_reactors`.
pub const STATS_REACTORS: &str = "stats_reactors";
/// `stats_requests`.
pub const STATS_REQUESTS: &str = "stats_requests";
/// `store_info`.
pub const STORE_INFO: &str = "store_info";
/// `group_status`.
pub const GROUP_STATUS: &str = "group_status";
/// `stats_metrics`.
pub const METRICS: &str = "stats_metrics";
/// `volume_pages`.
pub const VOLUME_PAGES: &str = "volume_pages";
/// `volume_set_replicas`.
pub const VOLUME_SET_REPLICAS: &str = "volume_set_replicas";
/// `volume_set_limits`.
pub const VOLUME_SET_LIMITS: &str = "volume_set_limits";
/// `scrub_start`.
pub const SCRUB_START: &str = "scrub_start";
/// `scrub_status`.
pub const SCRUB_STATUS: &str = "scrub_status";
/// `page_move`.
pub const PAGE_MOVE: &str = "page_move";
/// `migration_list`.
pub const MIGRATION_LIST: &str = "migration_list";
/// `migration_cancel`.
pub const MIGRATION_CANCEL: &str = "migration_cancel";
/// `peer_drain`.
pub const PEER_DRAIN: &str = "peer_drain";
/// `page_pin`.
pub const PAGE_PIN: &str = "page_pin";
/// `stats_pages`.
pub const STATS_PAGES: &str = "stats_pages";
/// `stats_peers`.
pub const STATS_PEERS: &str = "stats_peers";
/// `stats_hosts`.
pub const STATS_HOSTS: &str = "stats_hosts";
/// `peer_remove`.
pub const PEER_REMOVE: &str = "peer_remove";
/// `rebalance_status`.
pub const REBALANCE_STATUS: &str = "rebalance_status";
/// `rebalance_pause`.
pub const REBALANCE_PAUSE: &str = "rebalance_pause";
/// `group_set_limits`.
pub const GROUP_SET_LIMITS: &str = "group_set_limits";

/// Every method, in the reference's order.
pub const ALL: [&str; 31] = [
    VOLUME_CREATE,
    VOLUME_LIST,
    VOLUME_GROW,
    VOLUME_DELETE,
    SUBSYSTEM_LIST,
    SUBSYSTEM_ALLOW_HOST,
    SUBSYSTEM_DISALLOW_HOST,
    CONTROLLER_LIST,
    STATS_VOLUMES,
    STATS_REACTORS,
    STATS_REQUESTS,
    STATS_PAGES,
    STATS_PEERS,
    STATS_HOSTS,
    STORE_INFO,
    GROUP_STATUS,
    METRICS,
    VOLUME_PAGES,
    VOLUME_SET_REPLICAS,
    VOLUME_SET_LIMITS,
    SCRUB_START,
    SCRUB_STATUS,
    PAGE_MOVE,
    MIGRATION_LIST,
    MIGRATION_CANCEL,
    PEER_DRAIN,
    PAGE_PIN,
    PEER_REMOVE,
    REBALANCE_STATUS,
    REBALANCE_PAUSE,
    GROUP_SET_LIMITS,
];

/// One entry of `stats_requests`: how often requests went from one state to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionEntry {
    /// State left.
    pub from: String,
    /// State entered.
    pub to: String,
    /// Times, summed over the reactors.
    pub count: u64,
}

/// Params of `volume_create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateParams {
    /// `[a-z0-9._-]{1,64}`.
    pub name: String,
    /// Bytes, a multiple of the page size.
    pub size: u64,
    /// Bytes; default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// 512 or 4096; default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Copies of each page (a group; default 2 when the group has two live peers,
    /// else 1). A single peer keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
}

/// Params of `volume_set_replicas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSetReplicasParams {
    /// The volume.
    pub name: String,
    /// Copies of each page from now on (1 ..= 3, at most the live peers).
    pub replicas: u8,
}

/// Params of `volume_set_limits`: the limits given change, the others stay; 0 removes
/// one (`volume::qos`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSetLimitsParams {
    /// The volume.
    pub name: String,
    /// Operations per second over every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// MiB per second over every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mib_s: Option<u32>,
    /// Operations per second of each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_iops: Option<u32>,
    /// MiB per second of each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mib_s: Option<u32>,
}

impl VolumeSetLimitsParams {
    /// `old` with the limits given here changed.
    pub fn apply(&self, old: crate::volume::qos::Limits) -> crate::volume::qos::Limits {
        crate::volume::qos::Limits {
            iops: self.iops.unwrap_or(old.iops),
            mib_s: self.mib_s.unwrap_or(old.mib_s),
            host_iops: self.host_iops.unwrap_or(old.host_iops),
            host_mib_s: self.host_mib_s.unwrap_or(old.host_mib_s),
        }
    }
}

/// Params of `page_move`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageMoveParams {
    /// The volume.
    pub volume: String,
    /// The page (0-based; `volume_pages` lists them).
    pub page: u64,
    /// The peer it moves to.
    pub to: String,
    /// The peer whose copy moves (default: the page's leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Params of `migration_cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationCancelParams {
    /// The volume.
    pub volume: String,
    /// The move's id (`migration_list`).
    pub id: u64,
}

/// Params of `peer_drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDrainParams {
    /// The peer.
    pub name: String,
    /// Stop draining it instead.
    #[serde(default)]
    pub undo: bool,
}

/// Params of `stats_pages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsPagesParams {
    /// The volume.
    pub name: String,
    /// How many pages (default 10).
    #[serde(default)]
    pub top: Option<usize>,
}

/// The answer of `stats_pages`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsPages {
    /// The volume.
    pub name: String,
    /// Its pages.
    pub pages: u64,
    /// Operations per second over the group.
    pub ops_s: f64,
    /// KiB per second over the group.
    pub kib_s: f64,
    /// The hottest pages, hottest first.
    pub top: Vec<PageLoadEntry>,
}

/// One page in `stats_pages`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageLoadEntry {
    /// The page.
    pub page: u64,
    /// Operations per second (decaying, half-life 10 s), summed over the peers.
    pub ops_s: f64,
    /// KiB per second.
    pub kib_s: f64,
    /// The peers that served it.
    pub peers: Vec<String>,
}

/// One peer in `stats_peers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerLoadEntry {
    /// Its name.
    pub name: String,
    /// Operations per second it serves from its copies.
    pub ops_s: f64,
    /// KiB per second.
    pub kib_s: f64,
    /// Volumes it serves I/O of.
    pub volumes: u64,
}

/// One entry of `stats_hosts`: a host's I/O on a volume, over the group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostLoadEntry {
    /// Host NQN.
    pub host: String,
    /// Volume.
    pub volume: String,
    /// Reads and writes per second, over every peer it reaches the volume through.
    pub ops_s: f64,
    /// KiB per second.
    pub kib_s: f64,
    /// Mean latency of its reads and writes as the peers measure them (capsule in to
    /// completion out), µs, weighted by each peer's operations.
    pub latency_us: f64,
    /// The peers it reaches the volume through (its paths).
    pub peers: Vec<String>,
    /// The peers that steer it away by load (their paths are non-optimized to it:
    /// `control::steer`).
    #[serde(default)]
    pub steered_from: Vec<String>,
}

/// Params of `page_pin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagePinParams {
    /// The volume.
    pub volume: String,
    /// The page.
    pub page: u64,
    /// Unpin it instead.
    #[serde(default)]
    pub undo: bool,
}

/// Params of `rebalance_pause`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalancePauseParams {
    /// Pause (true) or resume (false).
    pub paused: bool,
}

/// Params of `group_set_limits`: the rates given change, the others stay; 0 goes back
/// to each peer's `replication` configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSetLimitsParams {
    /// Rebuilds, MB/s per leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_mb_s: Option<u32>,
    /// Page moves, MB/s per leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_mb_s: Option<u32>,
    /// Scrubs, MB/s per leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub_mb_s: Option<u32>,
}

/// The answer of `rebalance_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// The coordinator's `rebalance.enabled`.
    pub enabled: bool,
    /// Paused by an operator.
    pub paused: bool,
    /// The coordinator's last word: why nothing moves, or what it is moving and why.
    pub state: String,
    /// The coordinator's `rebalance.tolerance_pct`.
    pub tolerance_pct: u32,
    /// The coordinator's `rebalance.moves_max`.
    pub moves_max: u32,
    /// Moves under way (every kind).
    pub moves: u64,
    /// Pinned pages, over every volume.
    pub pinned: u64,
    /// Every peer's share.
    pub peers: Vec<RebalancePeer>,
    /// The moves it started last, oldest first.
    pub history: Vec<crate::group::keys::RebalanceMove>,
    /// The group's copy rates set at runtime (`group_set_limits`; 0: configuration).
    #[serde(default)]
    pub copy_mb_s: crate::group::keys::CopyRates,
}

/// A peer's share in `rebalance_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePeer {
    /// Its name.
    pub name: String,
    /// Its weight.
    pub weight: u64,
    /// Bytes of page copies it holds once the moves under way are done.
    pub held_bytes: u64,
    /// Its ideal share (0: takes no part).
    pub ideal_bytes: u64,
    /// held / ideal, percent (0 when it takes no part).
    pub share_pct: u64,
    /// Takes part (live, weighted, not drained).
    pub eligible: bool,
}

/// One entry of `migration_list`: a move of pages between peers under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationEntry {
    /// Its id (for `migration_cancel`).
    pub id: u64,
    /// The volume.
    pub volume: String,
    /// The first page that moves, and how many (a page moved by hand: one; a drain
    /// moves every page of a replica set).
    pub first_page: u64,
    /// Pages.
    pub pages: u64,
    /// The peer whose copy moves.
    pub from: String,
    /// The peer it moves to.
    pub to: String,
    /// `copying` (both copies take every write, the leader copies the pages) or
    /// `cut over` (the new copy in charge, the old one leaves a lease TTL later).
    pub phase: String,
    /// The copy's progress as persisted in the group (what a restarted copy resumes
    /// from): pieces (up to 64 a page) from the first all copied, and in all; 0 and 0
    /// before the first is persisted.
    #[serde(default)]
    pub pieces_done: u64,
    /// Pieces in all.
    #[serde(default)]
    pub pieces: u64,
}

/// One entry of `scrub_status`: the last scrub of a volume, over every leader of its
/// sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubEntry {
    /// The volume.
    pub volume: String,
    /// `running`, `done` or `never`.
    pub state: String,
    /// Pages to compare (one per in-sync member that is not the leader).
    pub pages: u64,
    /// Pages compared.
    pub compared: u64,
    /// Units found different on a member, each repaired from the leader's copy.
    pub repaired: u64,
}

/// Params of `volume_grow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeGrowParams {
    /// The volume.
    pub name: String,
    /// The new total size in bytes.
    pub size: u64,
}

/// Params of `volume_delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeNameParams {
    /// The volume.
    pub name: String,
}

/// Params of `subsystem_allow_host` and `subsystem_disallow_host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemHostParams {
    /// The subsystem NQN.
    pub nqn: String,
    /// The host NQN.
    pub host: String,
}

/// One entry of `volume_list` (and the result of `volume_create`, `volume_grow`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// Name.
    pub name: String,
    /// Group-wide id.
    pub id: u32,
    /// Bytes.
    pub size: u64,
    /// Bytes.
    pub page_size: u64,
    /// Bytes.
    pub block_size: u32,
    /// size / page_size.
    pub pages: u64,
    /// Pages written at least once.
    pub allocated_pages: u64,
    /// The subsystem NQN.
    pub nqn: String,
    /// Namespace UUID, 8-4-4-4-12.
    pub uuid: String,
    /// Namespace NGUID, 32 hex digits.
    pub nguid: String,
    /// Copies of each page the group keeps (1 on a single peer).
    #[serde(default = "one_u8")]
    pub replicas: u8,
    /// `healthy` (every page has its copies in sync), `rebuilding` (some page has
    /// fewer, and a copy is being built for it) or `degraded` (some page has fewer).
    #[serde(default = "healthy")]
    pub health: String,
    /// Pages with fewer in-sync copies than `replicas`.
    #[serde(default)]
    pub degraded_pages: u64,
    /// While `rebuilding`: how far the leaders are, in percent of the pages they go
    /// through (as they last reported to the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_percent: Option<u8>,
    /// Its limits (`volume_set_limits`); left out when it has none.
    #[serde(default, skip_serializing_if = "crate::volume::qos::Limits::is_none")]
    pub limits: crate::volume::qos::Limits,
}

fn healthy() -> String {
    "healthy".into()
}

/// `volume_pages`: which peers hold which pages of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePages {
    /// The volume.
    pub name: String,
    /// Its routing epoch (grows with every change of the sets or of a page's set).
    pub epoch: u64,
    /// Bytes per page.
    pub page_size: u64,
    /// Number of pages.
    pub pages: u64,
    /// Copies of each page the group keeps.
    #[serde(default = "one_u8")]
    pub replicas: u8,
    /// Consecutive pages of one replica set, in page order.
    pub runs: Vec<PageRun>,
    /// Per peer: the pages it leads (orders the writes of; a volume without replicas:
    /// owns) and the copies it holds.
    pub owners: Vec<OwnerPages>,
    /// The replica sets the pages use.
    #[serde(default)]
    pub sets: Vec<SetEntry>,
}

fn one_u8() -> u8 {
    1
}

/// Pages `first .. first + count`, all of set `set`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// First page.
    pub first: u64,
    /// Pages.
    pub count: u64,
    /// The leading peer's name (the owner, without replicas).
    pub owner: String,
    /// The set's index.
    #[serde(default)]
    pub set: u32,
}

/// One peer's share of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerPages {
    /// The peer's name.
    pub owner: String,
    /// Pages it leads.
    pub pages: u64,
    /// Copies it holds (pages it is a member for, in any state).
    #[serde(default)]
    pub copies: u64,
}

/// A replica set of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEntry {
    /// Its index.
    pub set: u32,
    /// The leader's name.
    pub leader: String,
    /// Pages in it.
    pub pages: u64,
    /// Its members.
    pub members: Vec<MemberEntry>,
}

/// A member of a replica set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The peer's name.
    pub peer: String,
    /// sync, reconcile, rebuild (with its mode) or out.
    pub state: String,
    /// The incarnation (lease) it was admitted with.
    pub inc: i64,
}

/// One entry of `subsystem_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemEntry {
    /// Subsystem NQN.
    pub nqn: String,
    /// The volume it serves.
    pub volume: String,
    /// Host NQNs allowed; empty = any.
    pub allowed_hosts: Vec<String>,
    /// Controllers connected now.
    pub controllers: u32,
}

/// One queue of a controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue id (0 = admin).
    pub qid: u16,
    /// Reactor index serving it.
    pub reactor: u32,
    /// SQ size.
    pub depth: u32,
    /// The host's socket address.
    pub peer: String,
}

/// One entry of `controller_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerEntry {
    /// Controller id, unique in the group.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier (UUID form).
    pub hostid: String,
    /// Keep-alive timeout, ms; 0 = none.
    pub kato_ms: u32,
    /// Admin and I/O queues.
    pub queues: Vec<QueueEntry>,
}

/// One entry of `stats_volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatsEntry {
    /// Volume name.
    pub name: String,
    /// Reads completed.
    pub read_ops: u64,
    /// Writes completed.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flush, write zeroes, deallocate.
    pub other_ops: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// Commands that waited for the volume's limits on this peer (`volume_set_limits`).
    #[serde(default)]
    pub qos_waits: u64,
    /// Commands that waited for the per-host limit on this peer.
    #[serde(default)]
    pub qos_host_waits: u64,
}

/// One entry of `stats_reactors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactorStatsEntry {
    /// Reactor index.
    pub reactor: u32,
    /// Pinned core, if pinned.
    pub core: Option<u32>,
    /// Host connections owned.
    pub connections: u32,
    /// Poll-loop iterations.
    pub polls: u64,
    /// Iterations that found work.
    pub busy_polls: u64,
    /// Hybrid-mode sleeps.
    pub sleeps: u64,
    /// I/O commands completed.
    pub io_ops: u64,
    /// Bytes received from sockets.
    pub rx_bytes: u64,
    /// Bytes sent on sockets.
    pub tx_bytes: u64,
    /// Received payload bytes copied in userspace.
    pub rx_copied_bytes: u64,
    /// Sent payload bytes copied in userspace.
    pub tx_copied_bytes: u64,
    /// Sends made zero-copy (MSG_ZEROCOPY).
    #[serde(default)]
    pub zero_copy_sends: u64,
    /// Pool buffers of the reactor free at its last tick.
    #[serde(default)]
    pub buffers_free: u64,
    /// Pool buffers the reactor owns.
    #[serde(default)]
    pub buffers_total: u64,
    /// Requests of its connections not free at its last tick.
    #[serde(default)]
    pub requests_active: u64,
    /// Connections closing (draining their requests) at its last tick.
    #[serde(default)]
    pub connections_closing: u64,
    /// Buffers given up for good (zero-copy sends never completed).
    #[serde(default)]
    pub retired_buffers: u64,
    /// Allocations and frees that waited for a control credit.
    #[serde(default)]
    pub credit_waits: u64,
    /// Parts of host commands forwarded to the peers that own their pages.
    #[serde(default)]
    pub forwarded_parts: u64,
    /// Read and write bytes of those parts (never copied in userspace).
    #[serde(default)]
    pub forwarded_bytes: u64,
    /// Forwarded parts waiting for their answer at the last tick.
    #[serde(default)]
    pub forwards_outstanding: u64,
    /// Forwarded parts answered with a path error (owner unreachable past the hold).
    #[serde(default)]
    pub path_errors: u64,
    /// Host writes sent to their page's new leader after a move's cut-over.
    #[serde(default)]
    pub releads: u64,
    /// Replica writes sent as a page set's leader (one per member).
    #[serde(default)]
    pub replica_parts: u64,
    /// Data bytes of those.
    #[serde(default)]
    pub replica_bytes: u64,
    /// Writes that waited for their pieces or for a leader.
    #[serde(default)]
    pub order_waits: u64,
    /// Commands refused while this peer's lease might have expired.
    #[serde(default)]
    pub fenced: u64,
    /// Replica writes completed without a member evicted meanwhile.
    #[serde(default)]
    pub replica_skipped: u64,
    /// Data bytes copied to members being rebuilt.
    #[serde(default)]
    pub rebuild_bytes: u64,
    /// Units a scrub found different on a member, and repaired.
    #[serde(default)]
    pub scrub_mismatches: u64,
    /// Requests of other peers served on inbound links.
    #[serde(default)]
    pub link_served: u64,
    /// Of those, answered with an error status.
    #[serde(default)]
    pub link_errors: u64,
    /// Inbound links refused at the handshake.
    #[serde(default)]
    pub link_refusals: u64,
    /// Times an inbound link stopped reading for want of buffers.
    #[serde(default)]
    pub link_stalls: u64,
    /// Bytes received on inbound peer links.
    #[serde(default)]
    pub link_rx_bytes: u64,
    /// Bytes sent on inbound peer links.
    #[serde(default)]
    pub link_tx_bytes: u64,
    /// The reactor's outbound link to each other peer of the group.
    #[serde(default)]
    pub links: Vec<LinkEntry>,
}

/// One reactor's outbound link to one peer, in `stats_reactors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEntry {
    /// The peer's name.
    pub peer: String,
    /// The link is up.
    pub up: bool,
    /// Forwards the peer answered on it.
    pub forwarded: u64,
    /// Forwards waiting or in flight on it.
    pub outstanding: u64,
    /// Forwards failed with a path error after the hold time.
    pub held_out: u64,
    /// Connections made.
    pub connects: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

/// The result of `store_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// The backing device(s).
    pub device: String,
    /// Bytes.
    pub size: u64,
    /// Bytes in use.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
    /// Number of volumes.
    pub volumes: u32,
    /// Slots zeroed ahead of first writes (`[[device]] zeroed_spares`), counted in
    /// `free`.
    #[serde(default)]
    pub zeroed_spares: u32,
}

/// The result of `group_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `"single"` (no `group.etcd`) or `"group"`.
    pub mode: String,
    /// This peer's name.
    pub peer: String,
    /// The elected coordinator, if any.
    pub coordinator: Option<String>,
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// `"connected"`, `"unreachable"` (group changes frozen; I/O to single-copy pages
    /// goes on, replicated pages only while the lease is certainly alive) or `"none"`.
    pub etcd_state: String,
    /// The last etcd error while unreachable.
    pub etcd_error: String,
    /// Since when `etcd_state` holds (ms since the Unix epoch).
    pub etcd_since_ms: u64,
    /// The etcd revision of the installed view.
    pub revision: i64,
    /// Keys under the group's prefix that hold no valid record.
    pub ignored: Vec<String>,
    /// Live peers, then peers seen leaving.
    pub peers: Vec<GroupPeer>,
}

/// One peer of `group_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPeer {
    /// Its name.
    pub name: String,
    /// `"live"` (its lease holds) or `"gone"`.
    pub state: String,
    /// I/O address hosts use.
    pub target: String,
    /// Discovery address.
    pub discovery: String,
    /// Peer-link address.
    pub link: String,
    /// Seconds since its last keep-alive reached etcd.
    pub lease_age_s: Option<u64>,
    /// True for the coordinator.
    pub coordinator: bool,
    /// Share of new pages.
    pub weight: u64,
    /// Page store data bytes.
    pub capacity_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// The `quire` version it runs.
    pub version: String,
    /// When this peer saw it leave (ms since the Unix epoch).
    pub gone_since_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_snake_case_noun_verb_and_unique() {
        let mut names = ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for name in ALL {
            assert!(name.contains('_') && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
        }
    }

    #[test]
    fn optional_params_are_left_out() {
        let params = VolumeCreateParams {
            name: "a".into(),
            size: 1 << 30,
            page_size: None,
            block_size: Some(512),
            replicas: None,
        };
        assert_eq!(serde_json::to_value(&params).unwrap(), json!({"name": "a", "size": 1u64 << 30, "block_size": 512}));
    }

    #[test]
    fn params_refuse_unknown_fields() {
        let error = serde_json::from_value::<VolumeGrowParams>(json!({"name": "a", "size": 1, "force": true}));
        assert!(error.unwrap_err().to_string().contains("unknown field `force`"));
    }
}
