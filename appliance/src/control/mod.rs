//! The control thread: owner of the page store's metadata and of group decisions.
//!
//! Reactors never touch the page store. They send [`ControlMsg`]s (allocate a page,
//! free a page, a barrier finished) and get [`ReactorMsg`]s back; management calls
//! arrive as [`RpcCall`]s. The thread batches what arrives together: all allocations
//! of one batch cost one flush and one metadata write per touched block (group commit).
//!
//! Grace periods: a freed slot (whole-page deallocate, deleted volume) sits in the page
//! store's quarantine until every reactor has answered a barrier sent after the free,
//! i.e. until no device I/O that could still address the old mapping is in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use quire_wire::nvme::Status;
use serde_json::{json, Value};

mod group;
mod load;
mod metrics;
pub mod outbox;
mod qos;
pub mod steer;

use crate::cast::sat_u32;
use crate::nvmf::subsystem::Registry;
use crate::reactor::stats::{get, VolumeCounters};
use crate::reactor::{ControlMsg, ReactorHandle, ReactorMsg};
use crate::rpc::methods as m;
use crate::rpc::{RpcCall, RpcError};
use crate::volume::routing::{Epoch, PeerId, RoutingTable};
use crate::volume::store::{PageStore, StoreError};
use crate::volume::{VolumeId, VolumeView, PAGE_SIZE_DEFAULT};
use outbox::Outboxes;

/// Messages handled per batch at most.
const BATCH_MAX: usize = 4096;
/// Most spare slots zeroed in one idle turn ([`Control::spares_turn`]).
const SPARES_PER_TURN: usize = 16;
/// No page allocated for this long: the spares are topped up whatever they lack.
const SPARES_IDLE: Duration = Duration::from_secs(1);
/// How long the control thread waits before zeroing spares again when a turn added
/// none.
const SPARES_RETRY: Duration = Duration::from_secs(1);
/// The routing id of a peer outside a group.
pub const LOCAL_PEER: PeerId = PeerId(0);

/// A barrier in flight.
struct PendingBarrier {
    generation: u64,
    acks: usize,
    /// Quarantine generation to release when it completes.
    release_upto: Option<u64>,
    /// Sets this peer came to lead, to order here once it completes.
    activate: Vec<(VolumeId, usize)>,
    /// Pages this peer no longer holds a copy of, to free once it completes.
    unheld: Vec<(VolumeId, u64)>,
}

/// What the control thread is built from.
pub struct ControlParts {
    /// The page store.
    pub store: PageStore,
    /// The target's registry.
    pub registry: Arc<Registry>,
    /// Every reactor.
    pub reactors: Vec<ReactorHandle>,
    /// Inbound messages.
    pub rx: Receiver<ControlMsg>,
    /// Allowed hosts per volume name, from the configuration.
    pub allowed_hosts: HashMap<String, Vec<String>>,
    /// Description of the backing device (management).
    pub device: String,
    /// This peer's name.
    pub peer_name: String,
    /// What the group agent shares, in a group.
    pub group: Option<Arc<crate::group::Shared>>,
    /// How long I/O for an unreachable page owner is held (`group.hold_ms`).
    pub hold: Duration,
    /// `[replication]`: rebuild and scrub rates, scrub period.
    pub replication: quire_config::schema::Replication,
    /// `[rebalance]`: host steering by load (`steer`) and its floor.
    pub rebalance: quire_config::schema::Rebalance,
    /// `group.leave_grace_ms`.
    pub leave_grace: Duration,
}

/// The control thread's state.
pub struct Control {
    store: PageStore,
    /// When to try zeroing spare slots again after a turn that could add none (no
    /// room, or the device refused): `None` while they are worth trying.
    spares_retry: Option<std::time::Instant>,
    /// When a page was last allocated.
    last_alloc: std::time::Instant,
    registry: Arc<Registry>,
    reactors: Vec<ReactorHandle>,
    rx: Receiver<ControlMsg>,
    allowed_hosts: HashMap<String, Vec<String>>,
    device: String,
    peer_name: String,
    group: Option<Arc<crate::group::Shared>>,
    started: std::time::Instant,
    routing: HashMap<VolumeId, Arc<RoutingTable>>,
    counters: HashMap<VolumeId, Arc<[Arc<VolumeCounters>]>>,
    barrier_next: u64,
    barrier: Option<PendingBarrier>,
    quarantine_upto: Option<u64>,
    /// Per reactor: messages its ring could not take yet, in order.
    outboxes: Outboxes,
    /// This peer's routing id (from the group, else [`LOCAL_PEER`]).
    me: PeerId,
    /// Routing ids → peer names (group).
    peer_names: BTreeMap<u16, String>,
    /// The group snapshot generation reconciled last.
    group_applied: u64,
    /// The last ticket handed to the group agent.
    group_ticket: u64,
    /// Who waits for which group change.
    group_waiters: HashMap<u64, group::Waiter>,
    /// Warnings already logged (a clash is logged once, not on every snapshot).
    group_warned: BTreeSet<String>,
    /// How long I/O for an unreachable page owner is held.
    hold: Duration,
    /// The last link address of every peer seen alive (a peer that stops keeps its
    /// entry: its links try it again when it comes back).
    known_links: BTreeMap<u16, std::net::SocketAddr>,
    /// The peers the reactors were last told of.
    told_peers: Option<(u16, BTreeMap<u16, crate::peer::PeerEntry>)>,
    /// This peer's lease (incarnation) in the group.
    me_lease: Option<i64>,
    /// The group record of each volume last installed, and the lease it was installed
    /// under.
    records: HashMap<VolumeId, (crate::group::keys::VolumeRecord, Option<i64>)>,
    /// Sets (volume, index) whose writes this peer orders.
    leading: std::collections::HashSet<(VolumeId, usize)>,
    /// Sets this peer came to lead, waiting for the next barrier.
    activation_wanted: Vec<(VolumeId, usize)>,
    /// Pages allocated here whose set no longer has this peer (a move's source, a
    /// dropped or replaced copy): freed after a barrier (no reactor still reads them).
    unheld_wanted: std::collections::BTreeSet<(VolumeId, u64)>,
    /// Members this peer brings up to date (it leads their sets).
    rebuilds: crate::replica::rebuild::Rebuilds,
    /// Per-page load of every volume (`volume::load`).
    load: crate::volume::load::LoadTracker,
    /// Each host's rates on each volume served here.
    hosts: crate::volume::load::HostRates,
    /// Each host's waits for each volume's limits (`qos`).
    qos_waits: std::collections::HashMap<(String, String), qos::HostWaits>,
    /// Each peer's step of load in the discovery log's order (`load::discovery_steps`).
    discovery_steps: std::collections::HashMap<String, i32>,
    replication: quire_config::schema::Replication,
    /// The scrub requests started, by volume name, and when each volume led here was
    /// last scrubbed (the periodic scrub).
    scrubs_started: HashMap<String, u64>,
    last_scrub: HashMap<VolumeId, std::time::Instant>,
    /// When `rebuild_turn` last went through the records, and at which snapshot.
    rebuild_synced: Option<(std::time::Instant, u64)>,
    /// The copy rates in force (rebuild, migration, scrub MB/s).
    copy_rates: (u32, u32, u32),
    /// The hosts this peer steers away (`steer`).
    steering: steer::Steering,
    /// `rebalance.steer_hosts` and `steer_interval_s`.
    steer_cfg: (bool, std::time::Duration),
    /// `rebalance.load_min_iops`, per 1000 s.
    steer_min_milli: u64,
    /// `group.leave_grace_ms`.
    leave_grace: Duration,
}

impl Control {
    /// Builds the control thread and hands every existing volume to the reactors.
    pub fn new(parts: ControlParts) -> Control {
        let mut c = Control {
            store: parts.store,
            spares_retry: None,
            last_alloc: std::time::Instant::now(),
            registry: parts.registry,
            reactors: parts.reactors,
            rx: parts.rx,
            allowed_hosts: parts.allowed_hosts,
            device: parts.device,
            peer_name: parts.peer_name,
            group: parts.group,
            started: std::time::Instant::now(),
            routing: HashMap::new(),
            counters: HashMap::new(),
            barrier_next: 0,
            barrier: None,
            quarantine_upto: None,
            outboxes: Outboxes::new(0),
            me: LOCAL_PEER,
            peer_names: BTreeMap::new(),
            group_applied: 0,
            group_ticket: 0,
            group_waiters: HashMap::new(),
            group_warned: BTreeSet::new(),
            hold: parts.hold,
            known_links: BTreeMap::new(),
            told_peers: None,
            me_lease: None,
            records: HashMap::new(),
            leading: std::collections::HashSet::new(),
            activation_wanted: Vec::new(),
            unheld_wanted: std::collections::BTreeSet::new(),
            rebuilds: Default::default(),
            load: Default::default(),
            hosts: Default::default(),
            qos_waits: Default::default(),
            discovery_steps: Default::default(),
            replication: parts.replication,
            scrubs_started: HashMap::new(),
            last_scrub: HashMap::new(),
            rebuild_synced: None,
            copy_rates: (0, 0, 0),
            steering: Default::default(),
            steer_cfg: (parts.rebalance.steer_hosts, steer::interval(&parts.rebalance)),
            steer_min_milli: u64::from(parts.rebalance.load_min_iops) * 1000,
            leave_grace: parts.leave_grace,
        };
        c.outboxes = Outboxes::new(c.reactors.len());
        if let Some(g) = &c.group {
            let cap = c.store.capacity();
            g.set_capacity(cap.total_bytes, cap.used_bytes);
        }
        // In a group, volumes are served once the group's snapshot says how
        // (`group::reconcile`), never with a routing table of this peer's guess.
        if c.group.is_none() {
            for v in c.store.volumes() {
                c.publish(v, None);
            }
        }
        c
    }

    /// Creates `name` unless it exists (start-up volumes from the configuration); in
    /// a group, in the group, once this peer has registered (errors are logged).
    pub fn ensure_volume(&mut self, name: &str, size: u64, page_size: u64, block_size: u32) -> Result<(), StoreError> {
        if self.group.is_some() {
            self.ensure_group_volume(name, size, page_size, block_size);
            return Ok(());
        }
        if self.store.volume_by_name(name).is_some() {
            return Ok(());
        }
        let v = self.store.create_volume(name, size, page_size, block_size)?;
        tracing::info!(volume = name, size = v.info.size_bytes(), "volume created");
        self.publish(v, None);
        Ok(())
    }

    /// Gives a new or changed volume to the registry and to every reactor, with
    /// `routing` (the group's), else a table where this peer owns every page.
    fn publish(&mut self, view: Arc<VolumeView>, routing: Option<Arc<RoutingTable>>) {
        let id = view.info.id;
        let routing = match (routing, self.routing.get(&id)) {
            (Some(r), _) => r,
            (None, Some(r)) if r.len() == view.info.num_pages => r.clone(),
            (None, Some(r)) => Arc::new(r.grown(view.info.num_pages)),
            (None, None) => Arc::new(RoutingTable::local_only(self.me, view.info.num_pages, Epoch(1))),
        };
        assert_eq!(routing.len(), view.info.num_pages, "a routing table covers its volume");
        self.routing.insert(id, routing.clone());
        let counters = self
            .counters
            .entry(id)
            .or_insert_with(|| self.reactors.iter().map(|_| Arc::new(VolumeCounters::default())).collect())
            .clone();
        let load = self.load.counters(id, view.info.num_pages, self.reactors.len());
        let hosts = self.allowed_hosts.get(&view.info.name).cloned();
        self.registry.upsert_volume(&view.info, hosts);
        for i in 0..self.reactors.len() {
            self.send(
                i,
                ReactorMsg::VolumeUpdated {
                    view: view.clone(),
                    routing: routing.clone(),
                    counters: counters[i].clone(),
                    all_counters: counters.clone(),
                    load: load[i].clone(),
                },
            );
        }
    }

    /// Sends reactor `r` a message, now or as soon as its ring has room.
    fn send(&mut self, r: usize, msg: ReactorMsg) {
        self.outboxes.send(&self.reactors, r, msg);
    }

    /// Runs until a Shutdown message.
    pub fn run(mut self) {
        // The stored limits of a single peer's volumes, before the first command.
        self.qos_turn();
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut backlog = false;
        let mut leaving: Option<Leaving> = None;
        loop {
            // A full reactor ring is drained by its reactor within a loop or so: come
            // back for the outbox soon.
            let wait =
                if backlog || self.spares_wanted() { Duration::from_millis(1) } else { Duration::from_millis(50) };
            match self.rx.recv_timeout(wait) {
                Ok(m) => batch.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH_MAX {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if !self.handle_batch(&mut batch) && leaving.is_none() {
                match self.start_leaving() {
                    Some(l) => leaving = Some(l),
                    None => break,
                }
            }
            if leaving.as_mut().is_some_and(|l| l.done(&self.registry)) {
                break;
            }
            self.group_turn();
            self.rebuild_turn();
            self.load_turn();
            if let Some(g) = &self.group {
                let cap = self.store.capacity();
                g.set_capacity(cap.total_bytes, cap.used_bytes);
            }
            self.maybe_start_barrier();
            backlog = self.outboxes.flush(&self.reactors);
            if !backlog && self.rx.is_empty() {
                self.spares_turn();
            }
        }
        for r in 0..self.reactors.len() {
            self.send(r, ReactorMsg::Shutdown);
        }
        // The reactors keep draining their rings until they see Shutdown.
        while self.outboxes.flush(&self.reactors) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Handles one batch; false on Shutdown.
    fn handle_batch(&mut self, batch: &mut Vec<ControlMsg>) -> bool {
        let mut allocs: Vec<(usize, VolumeId, u64)> = Vec::new();
        let mut frees: Vec<(usize, VolumeId, u64, u64)> = Vec::new();
        let mut rpcs = Vec::new();
        let mut stop = false;
        for msg in batch.drain(..) {
            match msg {
                ControlMsg::Alloc { reactor, volume, page } => allocs.push((reactor, volume, page)),
                ControlMsg::Free { reactor, volume, page, cookie } => frees.push((reactor, volume, page, cookie)),
                ControlMsg::BarrierDone { reactor: _, generation } => self.on_barrier_done(generation),
                ControlMsg::CopyDone(r) => self.rebuilds.on_report(&r),
                // The turn after this batch looks at the group.
                ControlMsg::GroupWake => {}
                ControlMsg::Rpc(call) => rpcs.push(call),
                ControlMsg::Shutdown => stop = true,
            }
        }
        if !allocs.is_empty() {
            self.allocate(&allocs);
        }
        if !frees.is_empty() {
            self.free(&frees);
        }
        for call in rpcs {
            if self.is_group_call(&call) {
                self.group_call(call);
                continue;
            }
            let result = self.rpc(&call);
            call.respond(result);
        }
        !stop
    }

    /// Asked to stop: a group peer with hosts connected and another live peer for
    /// them to go to turns its paths inaccessible first and goes on serving
    /// ([`Leaving`]); `None`: stop now (a host with nowhere else to go reconnects
    /// rather than meets path errors).
    fn start_leaving(&mut self) -> Option<Leaving> {
        let others = self.group.as_ref().is_some_and(|g| g.snapshot().live.keys().any(|&id| PeerId(id) != self.me));
        if !others || self.leave_grace.is_zero() || !self.registry.has_hosts() {
            return None;
        }
        tracing::info!(
            grace = ?self.leave_grace,
            "leaving: this peer's paths are ANA inaccessible; serving what is under way until hosts stop sending"
        );
        self.registry.set_leaving();
        let now = std::time::Instant::now();
        Some(Leaving { started: now, grace: self.leave_grace, commands: self.registry.host_commands().0, last: now })
    }

    /// Idle: tops up the page store's zeroed spare slots. While pages are being
    /// allocated, only once half of them are gone, and then all that are missing in
    /// one batch: zeroing costs a flush and the spares' records a metadata write, so a
    /// batch of n costs each of its spares 1/n of them (topping up one spare after each
    /// allocation would cost each allocation more than zeroing its own slot). A
    /// message arriving meanwhile waits for one batch at most.
    fn spares_turn(&mut self) {
        if !self.spares_wanted() {
            return;
        }
        self.spares_retry = None;
        let added = self.store.refill_spares(SPARES_PER_TURN).unwrap_or_else(|e| {
            tracing::warn!("zeroing spare slots failed (tried again in {SPARES_RETRY:?}): {e}");
            0
        });
        if added == 0 {
            self.spares_retry = Some(std::time::Instant::now() + SPARES_RETRY);
        }
    }

    /// Whether the page store is short of spares and they are worth trying now.
    fn spares_wanted(&self) -> bool {
        let idle = self.last_alloc.elapsed() >= SPARES_IDLE;
        self.store.spares_due(idle) > 0 && self.spares_retry.is_none_or(|t| std::time::Instant::now() >= t)
    }

    fn allocate(&mut self, allocs: &[(usize, VolumeId, u64)]) {
        let pages: Vec<(VolumeId, u64)> = allocs.iter().map(|&(_, v, p)| (v, p)).collect();
        let results = self.store.allocate_pages(&pages);
        self.last_alloc = std::time::Instant::now();
        let mut asked: BTreeMap<(usize, VolumeId, u64), ()> = BTreeMap::new();
        for (&(reactor, volume, page), result) in allocs.iter().zip(results) {
            // A reactor asks once per page until answered (its waiters share the answer),
            // and every message gets its answer: each carries a credit back.
            let fresh = asked.insert((reactor, volume, page), ()).is_none();
            assert!(fresh, "reactor {reactor} asked twice for page {page} of volume {}", volume.0);
            let result = result.map_err(|e| {
                tracing::warn!(volume = volume.0, page, "page allocation failed: {e}");
                store_status(&e)
            });
            self.send(reactor, ReactorMsg::AllocDone { volume, page, result });
        }
    }

    fn free(&mut self, frees: &[(usize, VolumeId, u64, u64)]) {
        let pages: Vec<(VolumeId, u64)> = frees.iter().map(|&(_, v, p, _)| (v, p)).collect();
        let result = self.store.free_pages(&pages);
        let reply = match result {
            Ok(generation) => {
                self.quarantine_upto = Some(generation);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("freeing pages failed: {e}");
                Err(store_status(&e))
            }
        };
        for &(reactor, _, _, cookie) in frees {
            self.send(reactor, ReactorMsg::FreeDone { cookie, result: reply });
        }
    }

    fn maybe_start_barrier(&mut self) {
        if self.barrier.is_some()
            || self.quarantine_upto.is_none() && self.activation_wanted.is_empty() && self.unheld_wanted.is_empty()
        {
            return;
        }
        let release_upto = self.quarantine_upto.take();
        let activate = std::mem::take(&mut self.activation_wanted);
        let unheld: Vec<(VolumeId, u64)> = std::mem::take(&mut self.unheld_wanted).into_iter().collect();
        self.barrier_next += 1;
        let generation = self.barrier_next;
        self.barrier = Some(PendingBarrier { generation, acks: 0, release_upto, activate, unheld });
        for r in 0..self.reactors.len() {
            self.send(r, ReactorMsg::Barrier(generation));
        }
    }

    fn on_barrier_done(&mut self, generation: u64) {
        let Some(b) = self.barrier.as_mut() else { return };
        assert_eq!(b.generation, generation, "reactors answer barriers in order");
        b.acks += 1;
        if b.acks == self.reactors.len() {
            let b = self.barrier.take().expect("checked above");
            if let Some(upto) = b.release_upto {
                let released = self.store.release_quarantine(upto);
                tracing::debug!(released, "quarantined slots released");
            }
            if !b.activate.is_empty() {
                self.activate(b.activate);
            }
            if !b.unheld.is_empty() {
                self.free_unheld(&b.unheld);
            }
        }
    }

    // ----- management -----------------------------------------------------------------

    fn rpc(&mut self, call: &RpcCall) -> Result<Value, RpcError> {
        match call.method.as_str() {
            m::VOLUME_CREATE => {
                let p: m::VolumeCreateParams = call.params()?;
                if p.replicas.is_some_and(|r| r != 1) {
                    return Err(RpcError::invalid_params(
                        "replicas: a single peer keeps one copy of each page (replicas need a group of peers)",
                    ));
                }
                let v = self
                    .store
                    .create_volume(
                        &p.name,
                        p.size,
                        p.page_size.unwrap_or(PAGE_SIZE_DEFAULT),
                        p.block_size.unwrap_or(4096),
                    )
                    .map_err(store_rpc_error)?;
                tracing::info!(volume = %p.name, size = v.info.size_bytes(), "volume created");
                self.publish(v.clone(), None);
                Ok(json!(volume_entry(&v)))
            }
            m::SCRUB_START => Err(RpcError::invalid_state(
                "a single peer keeps one copy of each page: there is nothing to compare (scrubs need a group with replicas)",
            )),
            m::SCRUB_STATUS => Ok(json!(self.scrub_status())),
            m::MIGRATION_LIST => Ok(json!(self.migrations())),
            m::REBALANCE_STATUS => self.rebalance_status().map(|s| json!(s)),
            m::PAGE_MOVE
            | m::MIGRATION_CANCEL
            | m::PEER_DRAIN
            | m::PEER_REMOVE
            | m::PAGE_PIN
            | m::REBALANCE_PAUSE
            | m::GROUP_SET_LIMITS => Err(RpcError::invalid_state(
                "a single peer holds every page itself: moving pages needs a group of peers",
            )),
            m::VOLUME_SET_LIMITS => {
                let p: m::VolumeSetLimitsParams = call.params()?;
                let id = self.volume_id(&p.name)?;
                let limits = p.apply(self.store.limits(id).map_err(store_rpc_error)?);
                self.store.set_limits(id, limits).map_err(store_rpc_error)?;
                self.qos_turn();
                tracing::info!(volume = %p.name, limits = %limits.describe(), "volume limits set");
                Ok(json!(true))
            }
            m::VOLUME_SET_REPLICAS => {
                let p: m::VolumeSetReplicasParams = call.params()?;
                self.volume_id(&p.name)?;
                if p.replicas != 1 {
                    return Err(RpcError::invalid_params(
                        "replicas: a single peer keeps one copy of each page (replicas need a group of peers)",
                    ));
                }
                let v = self.store.volume(self.volume_id(&p.name)?).expect("found by name");
                Ok(json!(volume_entry(&v)))
            }
            m::VOLUME_LIST => {
                let rebuilds = self.group.as_ref().map(|g| g.snapshot().rebuilds);
                let list: Vec<m::VolumeEntry> = self
                    .store
                    .volumes()
                    .iter()
                    .map(|v| {
                        let mut e = volume_entry(v);
                        e.limits = self.limits_of(v.info.id);
                        if let Some((r, _)) = self.records.get(&v.info.id) {
                            (e.replicas, e.health, e.degraded_pages) = health_of(r);
                            if e.health == "rebuilding" {
                                e.rebuild_percent = rebuilds.as_ref().and_then(|rs| {
                                    let (pages, done) = rs
                                        .values()
                                        .filter_map(|report| report.volumes.get(&v.info.name))
                                        .fold((0u64, 0u64), |(p, d), x| (p + x.pages, d + x.done));
                                    (pages > 0).then(|| u8::try_from(done.min(pages) * 100 / pages).expect("≤ 100"))
                                });
                            }
                        }
                        e
                    })
                    .collect();
                Ok(json!(list))
            }
            m::VOLUME_GROW => {
                let p: m::VolumeGrowParams = call.params()?;
                let id = self.volume_id(&p.name)?;
                let old = self.store.volume(id).expect("found by name").info.size_bytes();
                if p.size <= old {
                    return Err(RpcError::invalid_params(format!(
                        "size {} must exceed the current size {old}",
                        p.size
                    )));
                }
                let v = self.store.grow_volume(id, p.size).map_err(store_rpc_error)?;
                self.publish(v.clone(), None);
                for c in self.registry.controllers_of(id) {
                    c.namespace_changed(1);
                }
                tracing::info!(volume = %p.name, size = v.info.size_bytes(), "volume grown");
                Ok(json!(volume_entry(&v)))
            }
            m::VOLUME_DELETE => {
                let p: m::VolumeNameParams = call.params()?;
                let id = self.volume_id(&p.name)?;
                self.delete_volume(id)?;
                tracing::info!(volume = %p.name, "volume deleted");
                Ok(json!(true))
            }
            m::VOLUME_PAGES => {
                let p: m::VolumeNameParams = call.params()?;
                Ok(json!(self.volume_pages(&p.name)?))
            }
            m::SUBSYSTEM_LIST => Ok(self.subsystem_list()),
            m::SUBSYSTEM_ALLOW_HOST | m::SUBSYSTEM_DISALLOW_HOST => {
                let p: m::SubsystemHostParams = call.params()?;
                let allow = call.method == m::SUBSYSTEM_ALLOW_HOST;
                let mut r = self.registry.lock();
                let s = r
                    .subsystems
                    .get_mut(&p.nqn)
                    .ok_or_else(|| RpcError::not_found(format!("no subsystem {}", p.nqn)))?;
                if s.volume().is_none() {
                    return Err(RpcError::invalid_params("the discovery subsystem admits every host"));
                }
                s.allowed_hosts.retain(|h| h != &p.host);
                if allow {
                    s.allowed_hosts.push(p.host.clone());
                }
                let hosts = s.allowed_hosts.clone();
                let name = s.volume().map(|v| v.name.clone()).unwrap_or_default();
                r.discovery_genctr += 1;
                drop(r);
                self.allowed_hosts.insert(name, hosts);
                Ok(json!(true))
            }
            m::CONTROLLER_LIST => Ok(self.controller_list()),
            m::STATS_VOLUMES => Ok(self.stats_volumes()),
            m::STATS_REACTORS => Ok(self.stats_reactors()),
            m::STATS_REQUESTS => Ok(self.stats_requests()),
            m::STATS_PAGES => {
                let p: m::StatsPagesParams = call.params()?;
                self.stats_pages(p).map(|s| json!(s))
            }
            m::STATS_PEERS => Ok(json!(self.stats_peers())),
            m::STATS_HOSTS => Ok(json!(self.stats_hosts())),
            m::METRICS => Ok(Value::String(self.metrics_text())),
            m::GROUP_STATUS => Ok(json!(match &self.group {
                Some(g) => g.status(),
                None => crate::group::single_status(&self.peer_name),
            })),
            m::STORE_INFO => {
                let cap = self.store.capacity();
                Ok(json!(m::StoreInfo {
                    device: self.device.clone(),
                    size: cap.total_bytes,
                    used: cap.used_bytes,
                    free: cap.free_bytes,
                    volumes: sat_u32(self.store.volumes().len()),
                    zeroed_spares: sat_u32(self.store.spares()),
                }))
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn volume_id(&self, name: &str) -> Result<VolumeId, RpcError> {
        self.store
            .volume_by_name(name)
            .map(|v| v.info.id)
            .ok_or_else(|| RpcError::not_found(format!("no volume named {name:?}")))
    }

    /// Deletes a volume while hosts may be connected: new I/O to it fails with Invalid
    /// Namespace from the moment the reactors drop it; its slots are reused only after
    /// the reactors have drained what was in flight.
    fn delete_volume(&mut self, id: VolumeId) -> Result<(), RpcError> {
        for c in self.registry.remove_volume(id) {
            c.namespace_changed(1);
        }
        for r in 0..self.reactors.len() {
            self.send(r, ReactorMsg::VolumeRemoved(id));
        }
        self.routing.remove(&id);
        self.counters.remove(&id);
        self.load.forget(id);
        let generation = self.store.delete_volume(id).map_err(store_rpc_error)?;
        self.quarantine_upto = Some(generation);
        Ok(())
    }

    fn subsystem_list(&self) -> Value {
        let r = self.registry.lock();
        let list: Vec<m::SubsystemEntry> = r
            .subsystems
            .values()
            .filter_map(|s| {
                let v = s.volume()?;
                Some(m::SubsystemEntry {
                    nqn: s.nqn.clone(),
                    volume: v.name.clone(),
                    allowed_hosts: s.allowed_hosts.clone(),
                    controllers: sat_u32(r.controllers.values().filter(|c| c.subnqn == s.nqn).count()),
                })
            })
            .collect();
        json!(list)
    }

    fn controller_list(&self) -> Value {
        let r = self.registry.lock();
        let list: Vec<m::ControllerEntry> = r
            .controllers
            .values()
            .map(|c| {
                let st = c.state();
                let mut queues =
                    vec![m::QueueEntry { qid: 0, reactor: sat_u32(c.admin_reactor), depth: 0, peer: String::new() }];
                queues.extend(st.connected_qids.iter().map(|&qid| m::QueueEntry {
                    qid,
                    reactor: 0,
                    depth: 0,
                    peer: String::new(),
                }));
                m::ControllerEntry {
                    cntlid: c.cntlid,
                    subnqn: c.subnqn.clone(),
                    hostnqn: c.hostnqn.clone(),
                    hostid: uuid_string(&c.hostid),
                    kato_ms: c.kato_ms(),
                    queues,
                }
            })
            .collect();
        json!(list)
    }

    fn stats_volumes(&self) -> Value {
        let list: Vec<m::VolumeStatsEntry> = self
            .store
            .volumes()
            .iter()
            .map(|v| {
                let cs = self.counters.get(&v.info.id);
                let sum = |f: fn(&VolumeCounters) -> &std::sync::atomic::AtomicU64| {
                    cs.map_or(0, |cs| cs.iter().map(|c| get(f(c))).sum())
                };
                m::VolumeStatsEntry {
                    name: v.info.name.clone(),
                    read_ops: sum(|c| &c.read_ops),
                    write_ops: sum(|c| &c.write_ops),
                    read_bytes: sum(|c| &c.read_bytes),
                    write_bytes: sum(|c| &c.write_bytes),
                    other_ops: sum(|c| &c.other_ops),
                    errors: sum(|c| &c.errors),
                    qos_waits: get(&v.qos.volume.waited),
                    qos_host_waits: get(&v.qos.host_waits),
                }
            })
            .collect();
        json!(list)
    }

    fn stats_requests(&self) -> Value {
        use crate::nvmf::tcp::req::{ReqState, REQ_STATES};
        let mut list = Vec::new();
        for (i, from) in ReqState::ALL.iter().enumerate() {
            for (j, to) in ReqState::ALL.iter().enumerate() {
                let count: u64 = self.reactors.iter().map(|r| get(&r.stats.transitions.0[i * REQ_STATES + j])).sum();
                if count > 0 {
                    list.push(m::TransitionEntry { from: format!("{from:?}"), to: format!("{to:?}"), count });
                }
            }
        }
        json!(list)
    }

    fn stats_reactors(&self) -> Value {
        let list: Vec<m::ReactorStatsEntry> = self
            .reactors
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let s = &r.stats;
                m::ReactorStatsEntry {
                    reactor: sat_u32(i),
                    core: r.core.map(sat_u32),
                    connections: sat_u32(get(&s.connections)),
                    polls: get(&s.polls),
                    busy_polls: get(&s.busy_polls),
                    sleeps: get(&s.sleeps),
                    io_ops: get(&s.commands),
                    rx_bytes: get(&s.rx_bytes),
                    tx_bytes: get(&s.tx_bytes),
                    rx_copied_bytes: get(&s.rx_copied_bytes),
                    tx_copied_bytes: get(&s.tx_copied_bytes),
                    zero_copy_sends: get(&s.zero_copy_sends),
                    buffers_free: get(&s.buffers_free),
                    buffers_total: get(&s.buffers_total),
                    requests_active: get(&s.requests_active),
                    connections_closing: get(&s.connections_closing),
                    retired_buffers: get(&s.retired_buffers),
                    credit_waits: get(&s.credit_waits),
                    forwarded_parts: get(&s.forwarded_parts),
                    forwarded_bytes: get(&s.forwarded_bytes),
                    forwards_outstanding: get(&s.forwards_outstanding),
                    path_errors: get(&s.path_errors),
                    releads: get(&s.releads),
                    replica_parts: get(&s.replica_parts),
                    replica_bytes: get(&s.replica_bytes),
                    order_waits: get(&s.order_waits),
                    fenced: get(&s.fenced),
                    replica_skipped: get(&s.replica_skipped),
                    rebuild_bytes: get(&s.rebuild_bytes),
                    scrub_mismatches: get(&s.scrub_mismatches),
                    link_served: get(&s.link_served),
                    link_errors: get(&s.link_errors),
                    link_refusals: get(&s.link_refusals),
                    link_stalls: get(&s.link_stalls),
                    link_rx_bytes: get(&s.link_rx_bytes),
                    link_tx_bytes: get(&s.link_tx_bytes),
                    links: self
                        .peer_names
                        .iter()
                        .filter(|&(&id, _)| id != self.me.0)
                        .filter_map(|(&id, name)| {
                            let c = s.links.0.get(usize::from(id))?;
                            Some(m::LinkEntry {
                                peer: name.clone(),
                                up: get(&c.up) == 1,
                                forwarded: get(&c.forwarded),
                                outstanding: get(&c.outstanding),
                                held_out: get(&c.held_out),
                                connects: get(&c.connects),
                                tx_bytes: get(&c.tx_bytes),
                                rx_bytes: get(&c.rx_bytes),
                            })
                        })
                        .collect(),
                }
            })
            .collect();
        json!(list)
    }
}

fn volume_entry(v: &VolumeView) -> m::VolumeEntry {
    let i = &v.info;
    m::VolumeEntry {
        name: i.name.clone(),
        id: i.id.0,
        size: i.size_bytes(),
        page_size: i.page_size,
        block_size: i.block_size,
        pages: i.num_pages,
        allocated_pages: v.pages.allocated(),
        nqn: i.nqn(),
        uuid: uuid_string(&i.uuid),
        nguid: i.nguid.iter().map(|b| format!("{b:02x}")).collect(),
        replicas: 1,
        health: "healthy".into(),
        degraded_pages: 0,
        rebuild_percent: None,
        limits: Default::default(),
    }
}

/// A group volume's replication factor, health and pages short of in-sync copies.
pub fn health_of(r: &crate::group::keys::VolumeRecord) -> (u8, String, u64) {
    use crate::replica::set::MemberState;
    let Ok(page_sets) = r.page_sets() else { return (r.replicas, "unknown".into(), 0) };
    let mut per_set = vec![0u64; r.sets.len()];
    for &s in &page_sets {
        if let Some(n) = per_set.get_mut(usize::from(s)) {
            *n += 1;
        }
    }
    let (mut degraded, mut rebuilding) = (0u64, false);
    for (s, &pages) in r.sets.iter().zip(&per_set) {
        if pages == 0 {
            continue;
        }
        let in_sync = s.members.iter().filter(|m| m.state == MemberState::Sync).count();
        if in_sync < usize::from(r.replicas) {
            degraded += pages;
            rebuilding |= s.members.iter().any(|m| matches!(m.state, MemberState::Rebuild { .. }));
        }
    }
    let health = match (degraded, rebuilding) {
        (0, _) => "healthy",
        (_, true) => "rebuilding",
        (_, false) => "degraded",
    };
    (r.replicas, health.into(), degraded)
}

/// A 16-byte identifier in the 8-4-4-4-12 form.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NoSpace { .. } => Status::CAPACITY_EXCEEDED.with_dnr(),
        StoreError::NoSuchVolume(_) | StoreError::PageOutOfRange { .. } => Status::INVALID_NAMESPACE.with_dnr(),
        _ => Status::INTERNAL_ERROR,
    }
}

fn store_rpc_error(e: StoreError) -> RpcError {
    match e {
        StoreError::NameTaken(_) => RpcError::already_exists(e.to_string()),
        StoreError::NoSuchVolume(_) => RpcError::not_found(e.to_string()),
        StoreError::NoSpace { .. } | StoreError::TooManyVolumes => RpcError::no_space(e.to_string()),
        StoreError::Invalid { .. } => RpcError::invalid_params(e.to_string()),
        _ => RpcError::internal(e.to_string()),
    }
}

/// A group peer leaving (`group.leave_grace_ms`): its paths are inaccessible, and it
/// serves on until no host read or write completed here for [`Leaving::QUIET`] and
/// none of its hosts' commands is under way, or the grace is over.
struct Leaving {
    started: std::time::Instant,
    grace: Duration,
    /// Host commands completed here when last looked at, and when that count moved.
    commands: u64,
    last: std::time::Instant,
}

impl Leaving {
    /// No host command for this long: the hosts have moved.
    const QUIET: Duration = Duration::from_millis(300);

    fn done(&mut self, registry: &crate::nvmf::subsystem::Registry) -> bool {
        let now = std::time::Instant::now();
        let (n, active) = registry.host_commands();
        if n != self.commands {
            self.commands = n;
            self.last = now;
        }
        let over = now.duration_since(self.started) >= self.grace;
        let quiet = now.duration_since(self.last) >= Self::QUIET && active == 0;
        if over || quiet {
            tracing::info!(
                after = ?now.duration_since(self.started),
                "left: {}",
                if quiet { "no host command lately" } else { "the grace is over" }
            );
        }
        over || quiet
    }
}
