//! A group of peers: membership through etcd.
//!
//! A peer with `group.etcd` set joins a group at start: it registers under an etcd
//! lease (its liveness), takes part in electing one coordinator, and watches the
//! group's keys ([`keys`]). The etcd client is async and lives on the group agent's
//! own thread ([`etcd`]); the control thread reads what the agent knows through
//! [`Shared`] (a mutex off the I/O path), and the reactors never see any of it.
//! What the agent decides is plain state in [`view`], tested without etcd.
//!
//! Start-up: [`connect`] checks the secret file and that etcd answers (a peer that
//! cannot reach etcd exits non-zero); once the listeners are bound, [`Joining::join`]
//! registers (a clashing name, page store or address is refused with the reason) and
//! starts the agent. At shutdown [`Group::leave`] revokes the lease.
//!
//! Volumes: the group's volumes, their identity and their page owners live in etcd
//! ([`keys::VolumeRecord`]). Volume changes (create, grow, delete, from any peer's
//! management socket) go from the control thread to the agent as [`GroupOp`]s (a
//! bounded queue: full, the call is refused as busy); the agent turns each into an
//! etcd transaction that compares the revision it read, then re-reads the group. What
//! it reads, it publishes as a [`GroupSnapshot`]; the control thread reconciles the
//! page store and the reactors' routing tables with it (`control::group`).
//!
//! The snapshot also lists the live peers (routing id, link and host addresses): the
//! control thread turns it into the reactors' peer directory (`crate::peer`) and the
//! discovery log's paths.

pub mod etcd;
pub mod keys;
pub mod view;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_config::Config;

use crate::rpc::methods as m;
use etcd::{Agent, AgentConfig, AgentError};
use keys::{PeerRecord, VolumeRecord};
use view::Membership;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A live peer's lease as last read: its id and the seconds since its last
/// keep-alive (`None` when etcd did not say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLease {
    /// The peer.
    pub name: String,
    /// Its lease.
    pub lease: i64,
    /// Seconds since its last keep-alive.
    pub age_s: Option<u64>,
}

/// What the group says about volumes, as last read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// Bumped whenever the rest changes.
    pub generation: u64,
    /// This peer's routing id, once registered.
    pub me: Option<u16>,
    /// This peer's lease (its incarnation), as the group shows it.
    pub me_lease: Option<i64>,
    /// The group's uuid.
    pub group_uuid: Option<[u8; 16]>,
    /// Routing ids → peer names.
    pub peer_ids: BTreeMap<u16, String>,
    /// The group's volumes by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Volumes whose record does not read (kept as they are, never deleted for it).
    pub unreadable: std::collections::BTreeSet<String>,
    /// The peers registered under a live lease, by routing id.
    pub live: BTreeMap<u16, LivePeer>,
    /// What each live peer reports of the rebuilds it leads, by peer name.
    pub rebuilds: BTreeMap<String, keys::RebuildReport>,
    /// Scrub requests (their ids) by volume name.
    pub scrubs: BTreeMap<String, u64>,
    /// The rebalancer's record.
    pub rebalance: keys::RebalanceRecord,
    /// Every peer's share of the copies, by name (`quire rebalance status`).
    pub shares: Vec<(String, crate::replica::rebalance::Share)>,
    /// Peers being drained, by name.
    pub draining: std::collections::BTreeSet<String>,
    /// Each live peer's load report, by name.
    pub loads: BTreeMap<String, keys::LoadReport>,
    /// How far full rebuilds got, by (volume, set, member).
    pub copied: CopiedMap,
}

/// A live peer as the snapshot gives it: what links and hosts need to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePeer {
    /// Its name.
    pub name: String,
    /// Its peer-link listener.
    pub link: String,
    /// Where hosts connect for I/O.
    pub target: String,
    /// Its lease (incarnation).
    pub lease: i64,
}

/// A volume change the control thread asks the agent for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupOpKind {
    /// Create a volume of `num_pages` pages (geometry checked).
    Create {
        /// Name.
        name: String,
        /// Pages.
        num_pages: u64,
        /// Page size.
        page_size: u64,
        /// Block size.
        block_size: u32,
        /// Copies of each page (`None`: 2 when the group has two peers, else 1).
        replicas: Option<u8>,
    },
    /// Grow a volume to `num_pages` pages.
    Grow {
        /// Name.
        name: String,
        /// New page count.
        num_pages: u64,
    },
    /// Delete a volume.
    Delete {
        /// Name.
        name: String,
    },
    /// Set a volume's replication factor (the coordinator then adds or drops copies).
    SetReplicas {
        /// Name.
        name: String,
        /// Copies of each page.
        replicas: u8,
    },
    /// Change a volume's limits (`volume::qos`): those `set` gives.
    SetLimits {
        /// Name.
        name: String,
        /// The limits to change.
        set: crate::rpc::methods::VolumeSetLimitsParams,
    },
    /// The leader of set `set` of volume `name` (this peer) has copied to member
    /// `peer` (incarnation `inc`) everything it lacked: it is in sync now.
    Promote {
        /// Name.
        name: String,
        /// The set's index.
        set: usize,
        /// The member's routing id.
        peer: u16,
        /// Its incarnation.
        inc: i64,
    },
    /// Ask every leader of the volume's sets to scrub them.
    Scrub {
        /// Name.
        name: String,
    },
    /// Move page `page` of volume `name` from peer `from` (`None`: its leader) to
    /// peer `to` (`replica::migration`).
    MovePage {
        /// Name.
        name: String,
        /// The page.
        page: u64,
        /// The peer whose copy moves.
        from: Option<String>,
        /// The peer it moves to.
        to: String,
    },
    /// Cancel move `id` of volume `name` (before its cut-over).
    CancelMove {
        /// Name.
        name: String,
        /// The move.
        id: u64,
    },
    /// Drain peer `peer` (its copies move to other peers), or stop draining it.
    Drain {
        /// The peer's name.
        peer: String,
        /// Drain (true) or stop (false).
        on: bool,
    },
    /// Remove peer `peer` from the group for good (refused while it is live or any
    /// set of any volume names it).
    RemovePeer {
        /// The peer's name.
        peer: String,
    },
    /// Set the group's copy rates (`keys::CopyRates`): those given change; 0 goes
    /// back to each peer's configuration.
    SetCopyRates {
        /// Rebuilds, MB/s.
        rebuild: Option<u32>,
        /// Page moves, MB/s.
        migration: Option<u32>,
        /// Scrubs, MB/s.
        scrub: Option<u32>,
    },
    /// Pause the rebalancer (true) or let it go on (false).
    PauseRebalance {
        /// Pause.
        paused: bool,
    },
    /// Pin page `page` of volume `name` where it is (the rebalancer leaves it), or
    /// unpin it.
    Pin {
        /// Name.
        name: String,
        /// The page.
        page: u64,
        /// Pin (true) or unpin (false).
        on: bool,
    },
}

impl GroupOpKind {
    /// The volume it changes.
    pub fn volume(&self) -> &str {
        match self {
            GroupOpKind::Create { name, .. }
            | GroupOpKind::Grow { name, .. }
            | GroupOpKind::Delete { name }
            | GroupOpKind::SetReplicas { name, .. }
            | GroupOpKind::SetLimits { name, .. }
            | GroupOpKind::Promote { name, .. }
            | GroupOpKind::Scrub { name }
            | GroupOpKind::MovePage { name, .. }
            | GroupOpKind::CancelMove { name, .. }
            | GroupOpKind::Pin { name, .. } => name,
            // A change of a peer, or of the group, not of a volume.
            GroupOpKind::Drain { .. }
            | GroupOpKind::PauseRebalance { .. }
            | GroupOpKind::SetCopyRates { .. }
            | GroupOpKind::RemovePeer { .. } => "",
        }
    }
}

/// A queued volume change and the ticket its answer comes back under.
#[derive(Clone, Debug)]
pub struct GroupOp {
    /// Chosen by the control thread.
    pub ticket: u64,
    /// What to do.
    pub kind: GroupOpKind,
}

/// Volume changes queued at most (more are refused as busy).
pub const GROUP_OPS_MAX: usize = 64;

#[derive(Default)]
struct State {
    etcd_error: Option<String>,
    /// Since when etcd is reachable / unreachable (ms since the epoch).
    etcd_since_ms: u64,
    membership: Membership,
    leases: Vec<PeerLease>,
    snapshot: GroupSnapshot,
    ops: VecDeque<GroupOp>,
    /// Answers: ticket → the volume's name, or the error.
    done: Vec<(u64, Result<String, crate::rpc::RpcError>)>,
}

/// What the group agent and the control thread share.
pub struct Shared {
    me: String,
    /// The group's secret (from `group.secret_file`), for the peer links' handshake.
    secret: Vec<u8>,
    endpoints: Vec<String>,
    state: Mutex<State>,
    used: AtomicU64,
    capacity: AtomicU64,
    stop: AtomicBool,
    generation: AtomicU64,
    ops_ready: tokio::sync::Notify,
    control: Mutex<Option<crossbeam_channel::Sender<crate::reactor::ControlMsg>>>,
    /// This peer's right to serve replicated pages, renewed with its lease.
    fence: Arc<crate::replica::fence::Fence>,
    /// The rebuilds this peer leads, for the group (the control thread sets it, the
    /// agent publishes it).
    rebuild: Mutex<keys::RebuildReport>,
    /// This peer's load report (the control thread sets it, the agent publishes it).
    load: Mutex<keys::LoadReport>,
    /// How far the full rebuilds this peer drives got (the control thread sets it, the
    /// agent publishes it).
    copied: Mutex<CopiedMap>,
}

/// Full rebuilds' progress by (volume, set, member).
pub type CopiedMap = BTreeMap<(String, usize, u16), crate::replica::rebuild::CopyProgress>;

impl Shared {
    /// Shared state of peer `me` in the group at `endpoints`, whose secret is `secret`.
    pub fn new(me: &str, endpoints: &[String], secret: &[u8]) -> Arc<Shared> {
        Arc::new(Shared {
            me: me.to_string(),
            secret: secret.to_vec(),
            endpoints: endpoints.to_vec(),
            state: Mutex::new(State { etcd_since_ms: now_ms(), ..State::default() }),
            used: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            ops_ready: tokio::sync::Notify::new(),
            control: Mutex::new(None),
            fence: Arc::default(),
            rebuild: Mutex::default(),
            load: Mutex::default(),
            copied: Mutex::default(),
        })
    }

    /// This peer's right to serve replicated pages (the reactors read it).
    pub fn fence(&self) -> Arc<crate::replica::fence::Fence> {
        self.fence.clone()
    }

    /// The control thread's report of the rebuilds this peer leads.
    pub fn set_rebuild_report(&self, r: keys::RebuildReport) {
        *self.rebuild.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = r;
    }

    /// The control thread's report of the load this peer serves.
    pub fn set_load_report(&self, r: keys::LoadReport) {
        *self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = r;
    }

    /// The control thread's account of how far the full rebuilds it drives got.
    pub fn set_copied(&self, c: CopiedMap) {
        *self.copied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = c;
    }

    fn my_copied(&self) -> CopiedMap {
        self.copied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn load_report(&self) -> keys::LoadReport {
        self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn rebuild_report(&self) -> keys::RebuildReport {
        self.rebuild.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The group's secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Where the agent wakes the control thread when answers are ready.
    pub fn set_control(&self, tx: crossbeam_channel::Sender<crate::reactor::ControlMsg>) {
        *self.control.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    }

    fn wake_control(&self) {
        let tx = self.control.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(tx) = tx {
            // A full channel: the control thread looks at the answers on its next
            // turn anyway (every 50 ms at most); the wake-up only saves the wait.
            let _ = tx.try_send(crate::reactor::ControlMsg::GroupWake);
        }
    }

    /// The generation of the last published snapshot (cheap; no lock).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last published snapshot.
    pub fn snapshot(&self) -> GroupSnapshot {
        self.state().snapshot.clone()
    }

    /// The progress of full rebuilds, as last read (without copying the whole snapshot).
    pub fn group_copied(&self) -> CopiedMap {
        self.state().snapshot.copied.clone()
    }

    /// Publishes what the agent read about volumes; a new generation only if it changed.
    fn publish_snapshot(&self, mut snap: GroupSnapshot) {
        let mut st = self.state();
        snap.generation = st.snapshot.generation;
        if snap != st.snapshot {
            snap.generation += 1;
            self.generation.store(snap.generation, Ordering::Release);
            st.snapshot = snap;
        }
    }

    /// Queues a volume change for the agent; false when the queue is full.
    pub fn submit(&self, op: GroupOp) -> bool {
        {
            let mut st = self.state();
            if st.ops.len() >= GROUP_OPS_MAX {
                return false;
            }
            st.ops.push_back(op);
        }
        self.ops_ready.notify_one();
        true
    }

    fn next_op(&self) -> Option<GroupOp> {
        self.state().ops.pop_front()
    }

    fn answer(&self, ticket: u64, result: Result<String, crate::rpc::RpcError>) {
        self.state().done.push((ticket, result));
        self.wake_control();
    }

    /// The answers ready for the control thread.
    pub fn take_answers(&self) -> Vec<(u64, Result<String, crate::rpc::RpcError>)> {
        std::mem::take(&mut self.state().done)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: still readable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The page store's capacity and use (the control thread sets it).
    pub fn set_capacity(&self, capacity_bytes: u64, used_bytes: u64) {
        self.capacity.store(capacity_bytes, Ordering::Relaxed);
        self.used.store(used_bytes, Ordering::Relaxed);
    }

    fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn publish(&self, membership: &Membership, leases: Vec<PeerLease>) {
        let mut st = self.state();
        st.membership = membership.clone();
        st.leases = leases;
    }

    fn set_etcd_ok(&self) {
        let mut st = self.state();
        if st.etcd_error.take().is_some() {
            st.etcd_since_ms = now_ms();
        }
    }

    fn set_etcd_error(&self, error: String) {
        let mut st = self.state();
        if st.etcd_error.is_none() {
            st.etcd_since_ms = now_ms();
        }
        st.etcd_error = Some(error);
    }

    /// `group_status`.
    pub fn status(&self) -> m::GroupStatus {
        let st = self.state();
        let view = st.membership.view();
        let lease_of = |name: &str| st.leases.iter().find(|l| l.name == name);
        let mut peers: Vec<m::GroupPeer> = view
            .peers
            .values()
            .map(|e| {
                let r = &e.record;
                m::GroupPeer {
                    name: r.name.clone(),
                    state: "live".into(),
                    target: r.target.clone(),
                    discovery: r.discovery.clone(),
                    link: r.link.clone(),
                    lease_age_s: lease_of(&r.name).and_then(|l| l.age_s),
                    coordinator: view.coordinator.as_deref() == Some(r.name.as_str()),
                    weight: r.weight,
                    capacity_bytes: r.capacity_bytes,
                    used_bytes: r.used_bytes,
                    version: r.version.clone(),
                    gone_since_ms: None,
                }
            })
            .collect();
        peers.extend(st.membership.gone().values().map(|g| {
            let r = &g.record;
            m::GroupPeer {
                name: r.name.clone(),
                state: "gone".into(),
                target: r.target.clone(),
                discovery: r.discovery.clone(),
                link: r.link.clone(),
                lease_age_s: None,
                coordinator: false,
                weight: r.weight,
                capacity_bytes: r.capacity_bytes,
                used_bytes: r.used_bytes,
                version: r.version.clone(),
                gone_since_ms: Some(g.since_ms),
            }
        }));
        m::GroupStatus {
            mode: "group".into(),
            peer: self.me.clone(),
            coordinator: view.coordinator.clone(),
            etcd: self.endpoints.clone(),
            etcd_state: if st.etcd_error.is_some() { "unreachable".into() } else { "connected".into() },
            etcd_error: st.etcd_error.clone().unwrap_or_default(),
            etcd_since_ms: st.etcd_since_ms,
            revision: view.revision,
            ignored: view.ignored.clone(),
            peers,
        }
    }
}

/// `group_status` of a peer that is not in a group.
pub fn single_status(me: &str) -> m::GroupStatus {
    m::GroupStatus {
        mode: "single".into(),
        peer: me.to_string(),
        coordinator: None,
        etcd: Vec::new(),
        etcd_state: "none".into(),
        etcd_error: String::new(),
        etcd_since_ms: 0,
        revision: 0,
        ignored: Vec::new(),
        peers: Vec::new(),
    }
}

/// A peer on its way into the group: etcd answered, the listeners are not up yet.
pub struct Joining {
    runtime: tokio::runtime::Runtime,
    client: etcdv3client::EtcdClient,
    cfg: AgentConfig,
    secret: Vec<u8>,
}

/// Checks the group configuration that only the machine can check (the secret file)
/// and that etcd answers.
pub fn connect(cfg: &Config) -> Result<Joining, String> {
    let g = &cfg.group;
    let secret_path = g.secret_file.as_ref().expect("validated: a group has a secret_file");
    let secret_path = cfg.peer.data_dir.join(secret_path);
    let secret = std::fs::read(&secret_path)
        .map_err(|e| format!("group.secret_file {}: cannot read it: {e}", secret_path.display()))?;
    let len = secret.trim_ascii().len();
    if len < quire_config::validate::SECRET_LEN_MIN {
        return Err(format!(
            "group.secret_file {}: the secret is {len} bytes; at least {} are needed",
            secret_path.display(),
            quire_config::validate::SECRET_LEN_MIN
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("group agent runtime: {e}"))?;
    let agent_cfg = AgentConfig {
        endpoints: g.etcd.clone(),
        lease_ttl_s: g.lease_ttl_s,
        connect_timeout: Duration::from_millis(u64::from(g.connect_timeout_ms)),
        replace_after: Duration::from_secs(u64::from(cfg.replication.replace_after_s)),
        rebalance: cfg.rebalance.clone(),
    };
    let client = runtime
        .block_on(etcd::connect(&agent_cfg))
        .map_err(|e| format!("cannot reach etcd at {}: {e}", g.etcd.join(", ")))?;
    Ok(Joining { runtime, client, cfg: agent_cfg, secret: secret.trim_ascii().to_vec() })
}

impl Joining {
    /// The group's secret as read from `group.secret_file` (trimmed).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Registers `me` and starts the agent; refused (clash) or etcd failing: why.
    pub fn join(self, me: PeerRecord, shared: Arc<Shared>) -> Result<Group, String> {
        let Joining { runtime, client, cfg, secret: _ } = self;
        let mut agent = Agent::new(client, cfg, shared.clone(), me);
        let registered = runtime.block_on(async {
            match tokio::time::timeout(REGISTER_TIMEOUT, agent.register()).await {
                Ok(r) => r,
                Err(_) => Err(AgentError::Etcd(format!("registration took more than {REGISTER_TIMEOUT:?}"))),
            }
        });
        match registered {
            Ok(()) => {}
            Err(AgentError::Refused(why)) => return Err(format!("the group refuses this peer: {why}")),
            Err(AgentError::Etcd(e)) => return Err(format!("cannot register in the group: etcd: {e}")),
        }
        let thread = std::thread::Builder::new()
            .name("quire-group".into())
            .spawn(move || runtime.block_on(agent.run()))
            .map_err(|e| format!("group agent thread: {e}"))?;
        Ok(Group { shared, thread: Some(thread) })
    }
}

/// The longest registration at start (a few etcd round trips normally).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer in a group: its running agent.
pub struct Group {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Group {
    /// What the agent shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Leaves the group (revokes the lease) and stops the agent.
    pub fn leave(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}
