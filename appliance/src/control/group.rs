//! The control thread's side of a group: volume changes go to the group agent, and
//! what the group says is reconciled into the page store and the reactors.
//!
//! In a group the volumes are the group's: `volume create/grow/delete` on any peer
//! becomes a [`GroupOp`] for the agent (an etcd transaction), and its answer comes
//! back after the agent has read the change back. Every peer then reconciles the
//! [`GroupSnapshot`] it publishes:
//! - a group volume missing here is created in the page store with the group's id,
//!   UUID and NGUID (so that every peer reports the same namespace; it takes no
//!   space until this peer writes pages it owns);
//! - a grown one is grown, and its controllers get a namespace-attribute event;
//! - its routing table (owner per page, with the group's epoch) goes to every reactor;
//! - a local volume whose identity derives from the group's uuid but that the group
//!   no longer has was deleted while this peer was away: it is deleted here too (not
//!   when the group still has a record of its name that does not read: that one is
//!   left as it is, and `quire group status` lists the record as ignored);
//! - a volume of this store's own (made before the peer joined a group) keeps being
//!   served by this peer alone; a clash with a group volume (same name or id) is
//!   logged once and the group volume is not served here.
//!
//! A group peer publishes no volume to its reactors before the first snapshot: a
//! reactor must never serve a page with a routing table the group did not make.

use std::sync::Arc;

use serde_json::json;

use super::{volume_entry, Control, LOCAL_PEER};
use std::collections::BTreeMap;

use crate::group::keys::{parse_hex16, VolumeRecord};
use crate::group::{GroupOp, GroupOpKind, GroupSnapshot};
use crate::peer::auth::Secret;
use crate::peer::{PeerDirectory, PeerEntry};
use crate::reactor::ReactorMsg;
use crate::rpc::methods as m;
use crate::rpc::{RpcCall, RpcError};
use crate::volume::meta::derive_ids;
use crate::volume::routing::{Epoch, PeerId, RoutingTable};
use crate::volume::store::{volume_geometry, VolumeIdentity};
use crate::volume::{check_name, VolumeId, VolumeView, PAGE_SIZE_DEFAULT};

/// Who waits for a group change.
pub enum Waiter {
    /// A management call.
    Call(RpcCall),
    /// A volume of the configuration, created at start-up unless the group has it.
    Startup(String),
    /// The promotion of a member this peer rebuilt.
    Promote(crate::replica::rebuild::TaskKey),
}

impl Control {
    /// True for the management calls a group peer hands to the group.
    pub(super) fn is_group_call(&self, call: &RpcCall) -> bool {
        self.group.is_some()
            && matches!(
                call.method.as_str(),
                m::VOLUME_CREATE
                    | m::VOLUME_GROW
                    | m::VOLUME_DELETE
                    | m::VOLUME_SET_REPLICAS
                    | m::VOLUME_SET_LIMITS
                    | m::SCRUB_START
                    | m::PAGE_MOVE
                    | m::MIGRATION_CANCEL
                    | m::PEER_DRAIN
                    | m::PAGE_PIN
                    | m::PEER_REMOVE
                    | m::REBALANCE_PAUSE
                    | m::GROUP_SET_LIMITS
            )
    }

    /// Hands a volume change to the group agent; answered once the group has it.
    pub(super) fn group_call(&mut self, call: RpcCall) {
        match self.group_op(&call) {
            Ok(kind) => self.submit_group(kind, Waiter::Call(call)),
            Err(e) => call.respond(Err(e)),
        }
    }

    fn group_op(&self, call: &RpcCall) -> Result<GroupOpKind, RpcError> {
        match call.method.as_str() {
            m::VOLUME_CREATE => {
                let p: m::VolumeCreateParams = call.params()?;
                check_name(&p.name).map_err(RpcError::invalid_params)?;
                let page_size = p.page_size.unwrap_or(PAGE_SIZE_DEFAULT);
                let block_size = p.block_size.unwrap_or(4096);
                let num_pages = volume_geometry(p.size, page_size, block_size)
                    .map_err(|e| RpcError::invalid_params(e.to_string()))?;
                Ok(GroupOpKind::Create { name: p.name, num_pages, page_size, block_size, replicas: p.replicas })
            }
            m::VOLUME_GROW => {
                let p: m::VolumeGrowParams = call.params()?;
                let snap = self.group.as_ref().expect("a group call").snapshot();
                let r = snap
                    .volumes
                    .get(&p.name)
                    .ok_or_else(|| RpcError::not_found(format!("no volume named {:?}", p.name)))?;
                let num_pages = volume_geometry(p.size, r.page_size, r.block_size)
                    .map_err(|e| RpcError::invalid_params(e.to_string()))?;
                if num_pages <= r.num_pages {
                    return Err(RpcError::invalid_params(format!(
                        "size {} must exceed the current size {}",
                        p.size,
                        r.num_pages * r.page_size
                    )));
                }
                Ok(GroupOpKind::Grow { name: p.name, num_pages })
            }
            m::VOLUME_DELETE => {
                let p: m::VolumeNameParams = call.params()?;
                Ok(GroupOpKind::Delete { name: p.name })
            }
            m::VOLUME_SET_REPLICAS => {
                let p: m::VolumeSetReplicasParams = call.params()?;
                Ok(GroupOpKind::SetReplicas { name: p.name, replicas: p.replicas })
            }
            m::VOLUME_SET_LIMITS => {
                let p: m::VolumeSetLimitsParams = call.params()?;
                Ok(GroupOpKind::SetLimits { name: p.name.clone(), set: p })
            }
            m::SCRUB_START => {
                let p: m::VolumeNameParams = call.params()?;
                Ok(GroupOpKind::Scrub { name: p.name })
            }
            m::PAGE_MOVE => {
                let p: m::PageMoveParams = call.params()?;
                Ok(GroupOpKind::MovePage { name: p.volume, page: p.page, from: p.from, to: p.to })
            }
            m::MIGRATION_CANCEL => {
                let p: m::MigrationCancelParams = call.params()?;
                Ok(GroupOpKind::CancelMove { name: p.volume, id: p.id })
            }
            m::PEER_DRAIN => {
                let p: m::PeerDrainParams = call.params()?;
                Ok(GroupOpKind::Drain { peer: p.name, on: !p.undo })
            }
            m::PAGE_PIN => {
                let p: m::PagePinParams = call.params()?;
                Ok(GroupOpKind::Pin { name: p.volume, page: p.page, on: !p.undo })
            }
            m::PEER_REMOVE => {
                let p: m::PeerDrainParams = call.params()?;
                if p.undo {
                    return Err(RpcError::invalid_params("peer_remove takes no undo: a removed peer joins anew"));
                }
                Ok(GroupOpKind::RemovePeer { peer: p.name })
            }
            m::GROUP_SET_LIMITS => {
                let p: m::GroupSetLimitsParams = call.params()?;
                if p == m::GroupSetLimitsParams::default() {
                    return Err(RpcError::invalid_params(
                        "give at least one of rebuild_mb_s, migration_mb_s, scrub_mb_s",
                    ));
                }
                Ok(GroupOpKind::SetCopyRates {
                    rebuild: p.rebuild_mb_s,
                    migration: p.migration_mb_s,
                    scrub: p.scrub_mb_s,
                })
            }
            m::REBALANCE_PAUSE => {
                let p: m::RebalancePauseParams = call.params()?;
                Ok(GroupOpKind::PauseRebalance { paused: p.paused })
            }
            other => unreachable!("not a group call: {other}"),
        }
    }

    /// Creates a configured volume in the group unless the group has it.
    pub(super) fn ensure_group_volume(&mut self, name: &str, size: u64, page_size: u64, block_size: u32) {
        match volume_geometry(size, page_size, block_size) {
            Ok(num_pages) => self.submit_group(
                GroupOpKind::Create { name: name.to_string(), num_pages, page_size, block_size, replicas: None },
                Waiter::Startup(name.to_string()),
            ),
            Err(e) => tracing::error!(volume = name, "configured volume: {e}"),
        }
    }

    fn submit_group(&mut self, kind: GroupOpKind, waiter: Waiter) {
        let g = self.group.clone().expect("a group peer");
        self.group_ticket += 1;
        let ticket = self.group_ticket;
        if g.submit(GroupOp { ticket, kind }) {
            self.group_waiters.insert(ticket, waiter);
        } else {
            let busy = RpcError::server_busy(format!(
                "{} volume changes are waiting for the group already; try again",
                crate::group::GROUP_OPS_MAX
            ));
            match waiter {
                Waiter::Call(call) => call.respond(Err(busy)),
                Waiter::Startup(name) => tracing::error!(volume = %name, "configured volume: {}", busy.message),
                Waiter::Promote(key) => self.rebuilds.promotion_failed(&key),
            }
        }
    }

    /// Takes the agent's answers, reconciles with the group, then answers the
    /// waiting calls (so that a call's answer reflects its change on this peer).
    pub(super) fn group_turn(&mut self) {
        let Some(g) = self.group.clone() else { return };
        // Answers first: the agent publishes a change before it answers, so every
        // answer taken here is covered by the reconcile that follows.
        let answers = g.take_answers();
        if g.generation() != self.group_applied {
            self.reconcile();
        }
        for (ticket, result) in answers {
            let Some(waiter) = self.group_waiters.remove(&ticket) else { continue };
            match waiter {
                Waiter::Call(call) => {
                    let reply = result.and_then(|name| self.group_reply(&call.method, &name));
                    call.respond(reply);
                }
                Waiter::Startup(name) => match result {
                    Ok(_) => tracing::info!(volume = %name, "configured volume created in the group"),
                    Err(e) if e.code == crate::rpc::code::ALREADY_EXISTS => {}
                    Err(e) => tracing::error!(volume = %name, "configured volume: {}", e.message),
                },
                Waiter::Promote(key) => match result {
                    Ok(_) => tracing::info!(volume = ?key.0, set = key.1, member = key.2, "member promoted to in sync"),
                    Err(e) => {
                        tracing::warn!(volume = ?key.0, set = key.1, member = key.2, "promotion refused: {}", e.message);
                        self.rebuilds.promotion_failed(&key);
                    }
                },
            }
        }
    }

    fn group_reply(&self, method: &str, name: &str) -> Result<serde_json::Value, RpcError> {
        if matches!(
            method,
            m::VOLUME_DELETE
                | m::VOLUME_SET_LIMITS
                | m::SCRUB_START
                | m::MIGRATION_CANCEL
                | m::PEER_DRAIN
                | m::PEER_REMOVE
                | m::PAGE_PIN
                | m::REBALANCE_PAUSE
                | m::GROUP_SET_LIMITS
        ) {
            return Ok(json!(true));
        }
        if method == m::PAGE_MOVE {
            return Ok(json!(self.migrations().into_iter().filter(|e| e.volume == name).collect::<Vec<_>>()));
        }
        match self.store.volume_by_name(name) {
            Some(v) => Ok(json!(volume_entry(&v))),
            None => Err(RpcError::invalid_state(format!(
                "volume {name:?} changed in the group, but this peer cannot serve it (its log says why)"
            ))),
        }
    }

    /// Makes the page store and the reactors agree with the group's last snapshot.
    fn reconcile(&mut self) {
        let g = self.group.clone().expect("a group peer");
        let snap = g.snapshot();
        self.group_applied = snap.generation;
        let (Some(me), Some(group_uuid)) = (snap.me, snap.group_uuid) else { return };
        self.me = PeerId(me);
        if snap.me_lease.is_some() {
            self.me_lease = snap.me_lease;
        }
        self.peer_names = snap.peer_ids.clone();
        // Peers before volumes: a routing table naming a peer finds its link known.
        self.tell_peers(&snap, group_uuid);
        // Local volumes first: one the group deleted goes before a new one of its name
        // comes.
        for v in self.store.volumes() {
            let info = &v.info;
            let ours = snap.volumes.get(&info.name).and_then(|r| identity(r).ok());
            if ours.is_some_and(|i| i.id == info.id.0 && i.uuid == info.uuid) {
                continue;
            }
            if snap.unreadable.contains(&info.name) {
                // Not deleted: its record does not read. Served as it was, or not at all.
                self.warn_once(
                    &info.name,
                    format!("the group's record of volume {:?} does not read: left as it is", info.name),
                );
                continue;
            }
            if derive_ids(&group_uuid, info.id.0).0 == info.uuid {
                tracing::info!(volume = %info.name, id = info.id.0, "the group deleted this volume: deleting it here");
                if let Err(e) = self.delete_volume(info.id) {
                    tracing::error!(volume = %info.name, "deleting it: {}", e.message);
                }
            } else if !self.routing.contains_key(&info.id) {
                self.warn_once(
                    &info.name,
                    format!(
                        "volume {:?} belongs to this peer's store, not to the group: this peer alone serves it",
                        info.name
                    ),
                );
                let routing = Arc::new(RoutingTable::local_only(self.me, info.num_pages, Epoch(1)));
                self.publish(v.clone(), Some(routing));
            }
        }
        for r in snap.volumes.values() {
            if let Err(why) = self.apply(r) {
                self.warn_once(&r.name, format!("group volume {:?} is not served here: {why}", r.name));
            }
        }
        // Limits as soon as the records say them (a peer that starts enforces them
        // before its first command).
        self.qos_turn();
    }

    /// Creates or grows group volume `r` here and installs its routing table.
    fn apply(&mut self, r: &VolumeRecord) -> Result<(), String> {
        let ident = identity(r)?;
        let id = VolumeId(r.id);
        let size = r.num_pages * r.page_size;
        let view = match self.store.volume(id) {
            Some(v) if v.info.uuid == ident.uuid && v.info.name == r.name => {
                if v.info.num_pages > r.num_pages {
                    return Err(format!("it has {} pages here, {} in the group", v.info.num_pages, r.num_pages));
                }
                if v.info.num_pages < r.num_pages {
                    let grown = self.store.grow_volume(id, size).map_err(|e| e.to_string())?;
                    for c in self.registry.controllers_of(id) {
                        c.namespace_changed(1);
                    }
                    tracing::info!(volume = %r.name, size, "group volume grown");
                    grown
                } else {
                    v
                }
            }
            Some(v) => return Err(format!("id {} is volume {:?} of this peer's store", r.id, v.info.name)),
            None => {
                if let Some(v) = self.store.volume_by_name(&r.name) {
                    return Err(format!("this peer's store has a volume of that name (id {})", v.info.id.0));
                }
                let v = self
                    .store
                    .create_group_volume(&r.name, size, r.page_size, r.block_size, ident)
                    .map_err(|e| e.to_string())?;
                tracing::info!(volume = %r.name, id = r.id, size, "group volume created here");
                v
            }
        };
        let installed = self.routing.get(&id).map(|t| (t.epoch, t.len()));
        if let Some((epoch, _)) = installed.filter(|&(e, _)| e > Epoch(r.epoch)) {
            // etcd's revisions only grow: an older record is a stale read, never
            // installed over a newer table.
            return Err(format!("routing epoch {} is older than the installed {}", r.epoch, epoch.0));
        }
        let current = installed == Some((Epoch(r.epoch), r.num_pages))
            && self.records.get(&id).is_some_and(|(_, lease)| *lease == self.me_lease);
        if !current {
            self.install(view, r)?;
        } else if let Some((kept, _)) = self.records.get_mut(&id) {
            // Limits change no epoch (the QoS turn at the end of `reconcile` applies them).
            kept.limits = r.limits;
        }
        Ok(())
    }

    /// Builds volume `r`'s routing table for this peer and hands it to the reactors.
    ///
    /// A set this peer has just come to lead (its leader was evicted) is not ordered
    /// here at once: the table says so (`Route::Hold`) until every reactor has installed
    /// it and finished the replica writes of the old leader it had accepted (a barrier,
    /// then [`Control::activate`]); otherwise a write ordered here could reach this
    /// peer's device before an older write of the old leader still in flight here.
    pub(super) fn install(&mut self, view: Arc<VolumeView>, r: &VolumeRecord) -> Result<(), String> {
        let id = VolumeId(r.id);
        let page_sets = r.page_sets()?;
        let first = !self.records.contains_key(&id);
        for (i, s) in r.sets.iter().enumerate() {
            let mine = s.member(self.me.0).is_some_and(|m| s.members.len() == 1 || Some(m.inc) == self.me_lease);
            let leads = s.leader == self.me.0 && mine;
            let key = (id, i);
            if !leads {
                self.leading.remove(&key);
            } else if first {
                self.leading.insert(key);
            } else if !self.leading.contains(&key) && !self.activation_wanted.contains(&key) {
                tracing::info!(volume = %r.name, set = i, "this peer leads the set now: ordering its writes after a barrier");
                self.activation_wanted.push(key);
            }
        }
        if r.sets.iter().any(|s| s.members.len() > 1) {
            // Piece locks and missed pieces, before any reactor routes a replicated page.
            view.pieces.grow(r.num_pages);
        }
        // Copies this peer no longer holds (it left the page's set): freed once every
        // reactor has the table that routes the page elsewhere and has finished its
        // I/O on it (a barrier).
        for (page, &si) in page_sets.iter().enumerate() {
            let page = page as u64;
            let held = r.sets.get(usize::from(si)).is_some_and(|s| s.member(self.me.0).is_some());
            if !held && view.pages.get(page).is_some() {
                self.unheld_wanted.insert((id, page));
            }
        }
        let leading = &self.leading;
        let routing =
            Arc::new(RoutingTable::from_sets((self.me, self.me_lease), &r.sets, page_sets, Epoch(r.epoch), &|i| {
                leading.contains(&(id, i))
            }));
        self.records.insert(id, (r.clone(), self.me_lease));
        self.publish(view, Some(routing));
        Ok(())
    }

    /// The barrier after the tables that took `pages` from this peer is over: those
    /// still not held here (the group may have changed again) are freed, their slots
    /// quarantined until the next barrier.
    pub(super) fn free_unheld(&mut self, pages: &[(VolumeId, u64)]) {
        let mut page_sets: BTreeMap<VolumeId, Vec<u16>> = BTreeMap::new();
        let mut gone: Vec<(VolumeId, u64)> = Vec::new();
        for &(id, page) in pages {
            let Some((r, _)) = self.records.get(&id) else { continue };
            let sets = page_sets.entry(id).or_insert_with(|| r.page_sets().unwrap_or_default());
            let si = usize::try_from(page).ok().and_then(|p| sets.get(p).copied());
            if si.and_then(|si| r.sets.get(usize::from(si))).is_some_and(|s| s.member(self.me.0).is_none()) {
                gone.push((id, page));
            }
        }
        if gone.is_empty() {
            return;
        }
        match self.store.free_pages(&gone) {
            Ok(generation) => {
                tracing::info!(pages = gone.len(), "freed the copies of pages this peer no longer holds");
                self.quarantine_upto = Some(generation);
            }
            Err(e) => tracing::error!("freeing the copies of pages this peer no longer holds: {e}"),
        }
    }

    /// The barrier after this peer came to lead `sets` is over: their writes may be
    /// ordered here now.
    pub(super) fn activate(&mut self, sets: Vec<(VolumeId, usize)>) {
        let mut volumes: Vec<VolumeId> = Vec::new();
        for key in sets {
            let still = self.records.get(&key.0).is_some_and(|(r, _)| {
                r.sets.get(key.1).is_some_and(|s| {
                    s.leader == self.me.0 && s.member(self.me.0).is_some_and(|m| Some(m.inc) == self.me_lease)
                })
            });
            if still {
                self.leading.insert(key);
                if !volumes.contains(&key.0) {
                    volumes.push(key.0);
                }
            }
        }
        for id in volumes {
            let (Some((r, _)), Some(view)) = (self.records.get(&id).cloned(), self.store.volume(id)) else { continue };
            tracing::info!(volume = %r.name, "sets led here are ordered here now");
            if let Err(e) = self.install(view, &r) {
                tracing::error!(volume = %r.name, "{e}");
            }
        }
    }

    /// Gives the reactors a new peer directory when the group's peers changed, and the
    /// registry this peer's controller-ID range, ANA group and the other peers' paths.
    fn tell_peers(&mut self, snap: &GroupSnapshot, group_uuid: [u8; 16]) {
        let g = self.group.clone().expect("a group peer");
        let mut paths = Vec::new();
        for (&id, p) in &snap.live {
            match p.link.parse::<std::net::SocketAddr>() {
                Ok(a) => {
                    self.known_links.insert(id, a);
                }
                Err(e) => self.warn_once(&p.name, format!("peer {:?}: link address {:?}: {e}", p.name, p.link)),
            }
            if PeerId(id) != self.me {
                match p.target.parse::<std::net::SocketAddr>() {
                    Ok(a) => paths.push(a),
                    Err(e) => self.warn_once(&p.name, format!("peer {:?}: I/O address {:?}: {e}", p.name, p.target)),
                }
            }
        }
        self.registry.set_group_peer(self.me.0);
        let reports = self.reports_in(snap);
        self.order_paths(snap, &reports, paths);
        // A drained peer steers hosts away: its paths are non-optimized (a host with
        // native multipath sends I/O to the optimized paths while it has one).
        let drained = snap.peer_ids.get(&self.me.0).is_some_and(|me| snap.draining.contains(me));
        self.registry.set_ana_state(if drained {
            quire_wire::nvme::log::AnaState::NonOptimized
        } else {
            quire_wire::nvme::log::AnaState::Optimized
        });
        let peers: BTreeMap<u16, PeerEntry> = snap
            .peer_ids
            .iter()
            .map(|(&id, name)| {
                let e = PeerEntry {
                    name: name.clone(),
                    link: self.known_links.get(&id).copied(),
                    alive: snap.live.contains_key(&id),
                };
                (id, e)
            })
            .collect();
        let told = Some((self.me.0, peers.clone()));
        if self.told_peers == told {
            return;
        }
        self.told_peers = told;
        let dir = Arc::new(PeerDirectory {
            me: self.me,
            group: group_uuid,
            secret: Secret::new(g.secret()),
            peers,
            hold: self.hold,
        });
        for r in 0..self.reactors.len() {
            self.send(r, ReactorMsg::PeersUpdated(dir.clone()));
        }
    }

    fn warn_once(&mut self, key: &str, message: String) {
        if self.group_warned.insert(format!("{key}\u{0}{message}")) {
            tracing::warn!("{message}");
        }
    }

    /// Drives the rebuilds this peer leads: finds them in the installed records,
    /// hands copy jobs to the reactors within the byte budget, asks for promotions.
    pub(super) fn rebuild_turn(&mut self) {
        if self.group.is_none() {
            return;
        }
        let now = std::time::Instant::now();
        // The records' rebuilds, scrubs and the report: when the group's records
        // changed, else every 200 ms while something runs and every second when nothing
        // does (the control loop turns far more often; a turn only feeds jobs).
        let idle = self.rebuilds.tasks.is_empty() && self.rebuilds.scrubs.is_empty();
        let every = std::time::Duration::from_millis(if idle { 1000 } else { 200 });
        let due =
            self.rebuild_synced.is_none_or(|(t, gen)| now.duration_since(t) >= every || gen != self.group_applied);
        if due {
            self.rebuild_synced = Some((now, self.group_applied));
            // The group's copy rates where set at runtime, this peer's configuration
            // elsewhere.
            let r = &self.replication;
            let set = self.group.as_ref().map(|g| g.snapshot().rebalance.copy_mb_s).unwrap_or_default();
            self.copy_rates = set.or((r.rebuild_mb_s, r.migration_mb_s, r.scrub_mb_s));
            let copied = self.group.as_ref().map(|g| g.group_copied()).unwrap_or_default();
            for (vid, (rec, _)) in &self.records {
                let progress = |set: usize, member: u16| copied.get(&(rec.name.clone(), set, member)).copied();
                self.rebuilds.sync(*vid, rec, (self.me.0, self.me_lease), now, progress);
            }
            let records = &self.records;
            self.rebuilds.tasks.retain(|k, _| records.contains_key(&k.0));
            self.rebuilds.scrubs.retain(|k, _| records.contains_key(&k.0));
            self.rebuilds.scrub_results.retain(|k, _| records.contains_key(k));
            // Scrubs: asked for by an operator (a new request id in the group), or due
            // (`replication.scrub_every_h` since this peer last scrubbed the volume).
            if let (Some(g), Some(lease)) = (&self.group, self.me_lease) {
                let requests = g.snapshot().scrubs;
                let every = std::time::Duration::from_secs(u64::from(self.replication.scrub_every_h) * 3600);
                for (vid, (rec, _)) in &self.records {
                    let asked =
                        requests.get(&rec.name).copied().filter(|&id| self.scrubs_started.get(&rec.name) != Some(&id));
                    let last = *self.last_scrub.entry(*vid).or_insert(now);
                    let due = self.replication.scrub_every_h > 0 && now.duration_since(last) >= every;
                    if asked.is_none() && !due {
                        continue;
                    }
                    if let Some(id) = asked {
                        self.scrubs_started.insert(rec.name.clone(), id);
                    }
                    self.last_scrub.insert(*vid, now);
                    self.rebuilds.start_scrub(*vid, rec, (self.me.0, lease), asked.unwrap_or(0), now);
                }
            }
        }
        if !due && self.rebuilds.tasks.is_empty() && self.rebuilds.scrubs.is_empty() {
            return;
        }
        let store = &self.store;
        let rates = self.copy_rates;
        let actions = self.rebuilds.turn(self.reactors.len(), rates, now, |vid| store.volume(vid));
        if let Some(g) = self.group.as_ref().filter(|_| due) {
            let report = self.rebuilds.report(|vid| self.store.volume(vid).map(|v| v.info.name.clone()));
            g.set_rebuild_report(report);
            let copied = self
                .rebuilds
                .progress(self.me.0)
                .into_iter()
                .filter_map(|((vid, set, member), p)| {
                    self.store.volume(vid).map(|v| ((v.info.name.clone(), set, member), p))
                })
                .collect();
            g.set_copied(copied);
        }
        for a in actions {
            match a {
                crate::replica::rebuild::Action::Copy(r, job) => self.send(r, ReactorMsg::Copy(job)),
                crate::replica::rebuild::Action::Promote { name, set, peer, inc } => {
                    let key = self
                        .store
                        .volume_by_name(&name)
                        .map(|v| (v.info.id, set, peer, inc))
                        .expect("a rebuilt volume is served here");
                    self.submit_group(GroupOpKind::Promote { name, set, peer, inc }, Waiter::Promote(key));
                }
            }
        }
    }

    /// The moves under way in the group, as this peer last read it.
    pub(super) fn migrations(&self) -> Vec<m::MigrationEntry> {
        let Some(g) = self.group.as_ref() else { return Vec::new() };
        let snap = g.snapshot();
        let name = |id: u16| snap.peer_ids.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        let mut out = Vec::new();
        for r in snap.volumes.values() {
            for mv in crate::replica::migration::moves(r) {
                out.push(m::MigrationEntry {
                    id: mv.id,
                    volume: r.name.clone(),
                    first_page: mv.first_page,
                    pages: mv.pages,
                    from: name(mv.from),
                    to: name(mv.to),
                    phase: mv.phase.to_string(),
                    pieces_done: snap.copied.get(&(r.name.clone(), mv.set, mv.to)).map_or(0, |p| p.done),
                    pieces: snap.copied.get(&(r.name.clone(), mv.set, mv.to)).map_or(0, |p| p.items),
                });
            }
        }
        out
    }

    /// `rebalance_status`: the rebalancer as this peer last read the group.
    pub(super) fn rebalance_status(&self) -> Result<m::RebalanceStatus, RpcError> {
        let Some(g) = self.group.as_ref() else {
            return Err(RpcError::invalid_state(
                "a single peer holds every page itself: rebalancing needs a group of peers",
            ));
        };
        let snap = g.snapshot();
        let r = &snap.rebalance;
        let moves = snap.volumes.values().map(|v| crate::replica::migration::moves(v).len() as u64).sum();
        let pinned = snap.volumes.values().map(|v| v.pinned.len() as u64).sum();
        let mut shares: Vec<&(String, crate::replica::rebalance::Share)> = snap.shares.iter().collect();
        shares.sort_by(|a, b| a.0.cmp(&b.0));
        let peers = shares
            .into_iter()
            .map(|(name, s)| m::RebalancePeer {
                name: name.clone(),
                weight: s.weight,
                held_bytes: s.held_bytes,
                ideal_bytes: s.ideal_bytes,
                share_pct: if s.ideal_bytes == 0 {
                    0
                } else {
                    u64::try_from(u128::from(s.held_bytes) * 100 / u128::from(s.ideal_bytes)).unwrap_or(u64::MAX)
                },
                eligible: s.eligible,
            })
            .collect();
        Ok(m::RebalanceStatus {
            enabled: r.enabled,
            paused: r.paused,
            state: if r.state.is_empty() { "no word from the coordinator yet".into() } else { r.state.clone() },
            tolerance_pct: r.tolerance_pct,
            moves_max: r.moves_max,
            moves,
            pinned,
            peers,
            history: r.history.clone(),
            copy_mb_s: r.copy_mb_s,
        })
    }

    /// `scrub_status`: every volume's last scrub, summed over the leaders' reports.
    pub(super) fn scrub_status(&self) -> Vec<m::ScrubEntry> {
        let reports = self.group.as_ref().map(|g| g.snapshot().rebuilds).unwrap_or_default();
        let mut out = Vec::new();
        for v in self.store.volumes() {
            let name = &v.info.name;
            let mut e =
                m::ScrubEntry { volume: name.clone(), state: "never".into(), pages: 0, compared: 0, repaired: 0 };
            let mut any = false;
            let mut running = false;
            for p in reports.values().filter_map(|r| r.volumes.get(name)) {
                if p.scrub_pages == 0 && !p.scrub_running && p.scrub_id == 0 && p.scrub_done == 0 {
                    continue;
                }
                any = true;
                running |= p.scrub_running;
                e.pages += p.scrub_pages;
                e.compared += p.scrub_done;
                e.repaired += p.scrub_mismatches;
            }
            if any {
                e.state = if running { "running" } else { "done" }.into();
            }
            out.push(e);
        }
        out
    }

    /// `volume_pages`.
    pub(super) fn volume_pages(&self, name: &str) -> Result<m::VolumePages, RpcError> {
        let v =
            self.store.volume_by_name(name).ok_or_else(|| RpcError::not_found(format!("no volume named {name:?}")))?;
        let t = self
            .routing
            .get(&v.info.id)
            .ok_or_else(|| RpcError::invalid_state(format!("volume {name:?} is not served by this peer")))?;
        let peer_name = |p: u16| -> String {
            if self.group.is_none() && PeerId(p) == LOCAL_PEER {
                return self.peer_name.clone();
            }
            self.peer_names.get(&p).cloned().unwrap_or_else(|| format!("#{p}"))
        };
        // The sets as the group records them (a single peer's table: one set of one).
        let record = self.records.get(&v.info.id).map(|(r, _)| r);
        let sets: Vec<crate::replica::set::SetRecord> = match record {
            Some(r) => r.sets.clone(),
            None => vec![crate::replica::set::SetRecord::fresh(&[(t.local.0, 0)])],
        };
        let mut runs: Vec<m::PageRun> = Vec::new();
        let mut led: BTreeMap<String, u64> = BTreeMap::new();
        let mut copies: BTreeMap<String, u64> = BTreeMap::new();
        let mut per_set = vec![0u64; sets.len()];
        for (page, &set) in t.page_sets().iter().enumerate() {
            let page = page as u64;
            let s = &sets[usize::from(set)];
            per_set[usize::from(set)] += 1;
            let leader = peer_name(s.leader);
            *led.entry(leader.clone()).or_default() += 1;
            for mem in &s.members {
                *copies.entry(peer_name(mem.peer)).or_default() += 1;
            }
            match runs.last_mut() {
                Some(run) if run.set == u32::from(set) => run.count += 1,
                _ => runs.push(m::PageRun { first: page, count: 1, owner: leader, set: u32::from(set) }),
            }
        }
        let owners = copies
            .iter()
            .map(|(owner, &n)| m::OwnerPages {
                owner: owner.clone(),
                pages: led.get(owner).copied().unwrap_or(0),
                copies: n,
            })
            .collect();
        let sets = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| per_set[*i] > 0)
            .map(|(i, s)| m::SetEntry {
                set: u32::try_from(i).expect("at most 65536 sets"),
                leader: peer_name(s.leader),
                pages: per_set[i],
                members: s
                    .members
                    .iter()
                    .map(|mem| m::MemberEntry {
                        peer: peer_name(mem.peer),
                        state: state_name(&mem.state),
                        inc: mem.inc,
                    })
                    .collect(),
            })
            .collect();
        Ok(m::VolumePages {
            name: name.to_string(),
            epoch: t.epoch.0,
            page_size: v.info.page_size,
            pages: t.len(),
            replicas: record.map_or(1, |r| r.replicas),
            runs,
            owners,
            sets,
        })
    }
}

/// A member's state in words.
pub fn state_name(s: &crate::replica::set::MemberState) -> String {
    use crate::replica::set::MemberState;
    match s {
        MemberState::Sync => "sync".into(),
        MemberState::Reconcile => "reconcile".into(),
        MemberState::Rebuild { mode } => format!("rebuild ({})", format!("{mode:?}").to_lowercase()),
        MemberState::Leaving { .. } => "leaving".into(),
        MemberState::Out { .. } => "out".into(),
    }
}

/// The identity a volume record gives.
fn identity(r: &VolumeRecord) -> Result<VolumeIdentity, String> {
    let uuid = parse_hex16(&r.uuid).ok_or("bad uuid")?;
    let nguid = parse_hex16(&r.nguid).ok_or("bad nguid")?;
    Ok(VolumeIdentity { id: r.id, uuid, nguid })
}
