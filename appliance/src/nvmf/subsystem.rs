//! Subsystems, host allow-lists and the controllers that live in them.
//!
//! One NVM subsystem per volume, NQN `nqn.2026-11.io.quire:<volume>`, namespace 1;
//! plus the discovery subsystem. The registry is consulted when a host connects, by
//! admin commands and by management calls; the I/O path never touches it, so a mutex
//! is the right tool here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use quire_wire::nvme::DISCOVERY_NQN;

use crate::nvmf::ctrlr::NvmfController;
use crate::nvmf::TargetParams;
use crate::volume::{VolumeId, VolumeInfo};

/// What kind of subsystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    /// The discovery subsystem.
    Discovery,
    /// An NVM subsystem serving one volume as namespace 1.
    Volume(VolumeInfo),
}

/// One subsystem.
#[derive(Clone, Debug)]
pub struct Subsystem {
    /// Its NQN.
    pub nqn: String,
    /// Discovery or volume.
    pub kind: SubsystemKind,
    /// Host NQNs allowed to connect; empty = any host.
    pub allowed_hosts: Vec<String>,
    /// Serial number reported in Identify Controller.
    pub serial: String,
}

impl Subsystem {
    /// True when `hostnqn` may connect.
    pub fn allows(&self, hostnqn: &str) -> bool {
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|h| h == hostnqn)
    }

    /// The volume this subsystem serves, if any.
    pub fn volume(&self) -> Option<&VolumeInfo> {
        match &self.kind {
            SubsystemKind::Discovery => None,
            SubsystemKind::Volume(v) => Some(v),
        }
    }
}

/// A listening address and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Address (after binding: the real port).
    pub addr: SocketAddr,
    /// True for the discovery port.
    pub discovery: bool,
}

/// Registry contents.
#[derive(Default)]
pub struct RegistryInner {
    /// Subsystems by NQN.
    pub subsystems: BTreeMap<String, Subsystem>,
    /// Live controllers by controller ID.
    pub controllers: BTreeMap<u16, Arc<NvmfController>>,
    /// Listening addresses.
    pub listeners: Vec<Listener>,
    next_cntlid: u16,
    /// Controller IDs this peer hands out (a group peer has its own range: controller
    /// IDs are unique in a subsystem, which spans the group).
    cntlid_range: (u16, u16),
    /// This peer's ANA group (a group peer has one of its own: hosts see one path per
    /// peer, each in its own group).
    pub ana_group: u32,
    /// The state this peer reports for its ANA group: optimized, or non-optimized
    /// while it is drained (hosts prefer the other peers' paths).
    pub ana_state: Option<quire_wire::nvme::log::AnaState>,
    /// The ANA log's change count (bumped with every change of the state).
    pub ana_chgcnt: u64,
    /// The peer is leaving: its ANA group stays inaccessible whatever else is set.
    pub leaving: bool,
    /// (host NQN, volume) pairs this peer steers away by load (`control::steer`): its
    /// ANA group is non-optimized to those hosts' controllers of that volume only.
    pub steered: std::collections::BTreeSet<(String, VolumeId)>,
    /// The I/O listeners of the group's other live peers, as hosts reach them
    /// (advertised addresses), least loaded first: the discovery log lists them as
    /// paths too, the first `paths_before` of them before this peer's own.
    pub group_paths: Vec<SocketAddr>,
    /// How many of `group_paths` are less loaded than this peer.
    pub paths_before: usize,
    /// Discovery log generation counter (bumped whenever the log changes).
    pub discovery_genctr: u64,
}

/// Controller IDs each group peer has: peer `p` hands out `1 + (p mod 63) · 1024` and
/// the 1023 after it (the specification keeps 0xFFF0 and up).
pub const CNTLIDS_PER_PEER: u16 = 1024;

/// The highest ANA group ID a group peer may have (its routing id + 1).
pub const ANA_GROUP_MAX: u32 = 1024;

impl RegistryInner {
    /// The state of this peer's ANA group as the controller of `host` for `volume`
    /// sees it: the peer's state, non-optimized where that host is steered away.
    fn ana_of(&self, host: &str, volume: Option<VolumeId>) -> quire_wire::nvme::log::AnaState {
        use quire_wire::nvme::log::AnaState;
        let steered = volume.is_some_and(|v| self.steered.contains(&(host.to_string(), v)));
        match self.ana_state.unwrap_or(AnaState::Optimized) {
            AnaState::Optimized if steered => AnaState::NonOptimized,
            s => s,
        }
    }

    /// Every I/O controller's ANA state, by controller ID.
    fn states(&self) -> BTreeMap<u16, quire_wire::nvme::log::AnaState> {
        let io = self.controllers.values().filter(|c| !c.discovery);
        io.map(|c| (c.cntlid, self.ana_of(&c.hostnqn, c.volume))).collect()
    }

    /// After a change of states: a new change count if any controller's state is not
    /// what it was (`before`), and an ANA change event on each such controller.
    fn changed_since(&mut self, before: &BTreeMap<u16, quire_wire::nvme::log::AnaState>) {
        let now = self.states();
        let changed: Vec<u16> = now.iter().filter(|(id, s)| before.get(id) != Some(s)).map(|(&id, _)| id).collect();
        if changed.is_empty() {
            return;
        }
        self.ana_chgcnt = self.ana_chgcnt.max(1) + 1;
        for id in changed {
            self.controllers[&id].post_event(crate::nvmf::ctrlr::AEN_ANA_CHANGED);
        }
    }

    /// The discovery log changed: a new generation, and an event for every discovery
    /// controller that asked for them (a host with a persistent discovery connection
    /// learns new paths without polling).
    pub fn discovery_changed(&mut self) {
        self.discovery_genctr += 1;
        for c in self.controllers.values().filter(|c| c.discovery) {
            c.post_event(crate::nvmf::ctrlr::AEN_DISCOVERY_CHANGED);
        }
    }
}

/// The target's registry of subsystems and controllers.
pub struct Registry {
    inner: Mutex<RegistryInner>,
    /// The target's limits.
    pub params: TargetParams,
}

/// Controller IDs 0xFFF0..=0xFFFF are reserved by the specification.
const CNTLID_MAX: u16 = 0xffef;

impl Registry {
    /// A registry with only the discovery subsystem.
    pub fn new(params: TargetParams) -> Registry {
        let mut inner =
            RegistryInner { next_cntlid: 1, cntlid_range: (1, CNTLID_MAX), ana_group: 1, ..Default::default() };
        inner.subsystems.insert(
            DISCOVERY_NQN.to_string(),
            Subsystem {
                nqn: DISCOVERY_NQN.to_string(),
                kind: SubsystemKind::Discovery,
                allowed_hosts: Vec::new(),
                serial: serial_for(&params.peer_name, 0),
            },
        );
        Registry { inner: Mutex::new(inner), params }
    }

    /// Locks the registry. Never held across I/O.
    pub fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces the facts of) the subsystem serving `volume`.
    pub fn upsert_volume(&self, volume: &VolumeInfo, allowed_hosts: Option<Vec<String>>) {
        let mut r = self.lock();
        let nqn = volume.nqn();
        let serial = serial_for(&self.params.peer_name, volume.id.0);
        let entry = r.subsystems.entry(nqn.clone()).or_insert_with(|| Subsystem {
            nqn: nqn.clone(),
            kind: SubsystemKind::Volume(volume.clone()),
            allowed_hosts: Vec::new(),
            serial,
        });
        entry.kind = SubsystemKind::Volume(volume.clone());
        if let Some(hosts) = allowed_hosts {
            entry.allowed_hosts = hosts;
        }
        r.discovery_changed();
    }

    /// Removes the subsystem of `volume`; returns the controllers that were in it.
    pub fn remove_volume(&self, volume: VolumeId) -> Vec<Arc<NvmfController>> {
        let mut r = self.lock();
        let nqn = r.subsystems.values().find(|s| s.volume().map(|v| v.id) == Some(volume)).map(|s| s.nqn.clone());
        if let Some(nqn) = nqn {
            r.subsystems.remove(&nqn);
            r.discovery_changed();
        }
        r.controllers.values().filter(|c| c.volume == Some(volume)).cloned().collect()
    }

    /// Picks a free controller ID of this peer's range.
    pub fn next_cntlid(inner: &mut RegistryInner) -> Option<u16> {
        let (lo, hi) = inner.cntlid_range;
        if !(lo..=hi).contains(&inner.next_cntlid) {
            inner.next_cntlid = lo;
        }
        for _ in lo..=hi {
            let id = inner.next_cntlid;
            inner.next_cntlid = if id >= hi { lo } else { id + 1 };
            if !inner.controllers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// This peer is routing id `me` of a group: its own controller ID range and ANA
    /// group.
    pub fn set_group_peer(&self, me: u16) {
        let mut r = self.lock();
        let lo = 1 + (me % 63) * CNTLIDS_PER_PEER;
        r.cntlid_range = (lo, lo + CNTLIDS_PER_PEER - 1);
        let group = u32::from(me) + 1;
        if r.ana_group != group {
            r.ana_group = group.min(ANA_GROUP_MAX);
            if u32::from(me) + 1 > ANA_GROUP_MAX {
                tracing::warn!(me, "routing id beyond {ANA_GROUP_MAX}: this peer shares the last ANA group");
            }
        }
    }

    /// The group's other live peers' I/O addresses, least loaded first, and how many
    /// of them are less loaded than this peer (the discovery log's order).
    pub fn set_group_paths(&self, mut paths: Vec<SocketAddr>, before: usize) {
        let mut seen = std::collections::HashSet::new();
        paths.retain(|p| seen.insert(*p));
        let before = before.min(paths.len());
        let mut r = self.lock();
        if r.group_paths != paths || r.paths_before != before {
            r.group_paths = paths;
            r.paths_before = before;
            r.discovery_changed();
        }
    }

    /// This peer's ANA group.
    pub fn ana_group(&self) -> u32 {
        self.lock().ana_group
    }

    /// This peer's ANA group's state as the controller of `host` for `volume` sees it,
    /// and the log's change count: non-optimized while the peer is drained or steers
    /// that host away from it, else optimized.
    pub fn ana_for(&self, host: &str, volume: Option<VolumeId>) -> (quire_wire::nvme::log::AnaState, u64) {
        let r = self.lock();
        (r.ana_of(host, volume), r.ana_chgcnt.max(1))
    }

    /// The (host, volume) pairs this peer steers away; the controllers whose state
    /// changed get an ANA change event (none while the whole peer is non-optimized or
    /// inaccessible: steering changes nothing then).
    pub fn set_steered(&self, steered: std::collections::BTreeSet<(String, VolumeId)>) {
        let mut r = self.lock();
        if r.steered == steered {
            return;
        }
        let before = r.states();
        r.steered = steered;
        r.changed_since(&before);
    }

    /// Sets the state of this peer's ANA group; on a change, every I/O controller gets
    /// an ANA change event (the host reads the ANA log again and picks its paths).
    pub fn set_ana_state(&self, state: quire_wire::nvme::log::AnaState) {
        let mut r = self.lock();
        if r.leaving {
            return;
        }
        if r.ana_state.unwrap_or(quire_wire::nvme::log::AnaState::Optimized) == state {
            return;
        }
        let before = r.states();
        r.ana_state = Some(state);
        tracing::info!(?state, "this peer's ANA state changed");
        for c in r.controllers.values().filter(|c| !c.discovery) {
            c.set_inaccessible(state == quire_wire::nvme::log::AnaState::Inaccessible);
        }
        r.changed_since(&before);
    }

    /// The peer is leaving: its ANA group turns inaccessible to every host for good
    /// (the ANA change event on every I/O controller; their I/O commands get the
    /// ANA-inaccessible status from now on).
    pub fn set_leaving(&self) {
        self.set_ana_state(quire_wire::nvme::log::AnaState::Inaccessible);
        self.lock().leaving = true;
    }

    /// The reads and writes this peer's I/O controllers completed so far, and the
    /// commands of their I/O queues under way.
    pub fn host_commands(&self) -> (u64, u64) {
        let r = self.lock();
        let io = r.controllers.values().filter(|c| !c.discovery);
        io.fold((0, 0), |(done, active), c| (done + c.io_totals().0, active + c.io_active()))
    }

    /// Whether a host has an I/O controller here.
    pub fn has_hosts(&self) -> bool {
        self.lock().controllers.values().any(|c| !c.discovery)
    }

    /// Forgets a controller (its admin queue went away or it timed out).
    pub fn remove_controller(&self, cntlid: u16) {
        self.lock().controllers.remove(&cntlid);
    }

    /// The controllers of the subsystem serving `volume`.
    pub fn controllers_of(&self, volume: VolumeId) -> Vec<Arc<NvmfController>> {
        self.lock().controllers.values().filter(|c| c.volume == Some(volume)).cloned().collect()
    }
}

/// A serial number: peer name and subsystem number, at most 20 characters.
pub fn serial_for(peer: &str, n: u32) -> String {
    let mut s = format!("{}-{n:04}", peer.chars().take(14).collect::<String>());
    s.truncate(20);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::nvme::log::AnaState;

    #[test]
    fn a_steered_host_alone_sees_the_path_non_optimized_and_alone_gets_the_event() {
        let reg = Registry::new(TargetParams::default());
        let v = VolumeId(7);
        let ctrlr = |cntlid: u16, host: &str| {
            let c =
                Arc::new(NvmfController::new(cntlid, "nqn.x:v".into(), host.into(), [0; 16], Some(v), false, 0, 4, 0));
            c.state().async_event_config = quire_wire::nvme::features::AEC_ANA_CHANGE;
            reg.lock().controllers.insert(cntlid, c.clone());
            c
        };
        let (h1, h2) = (ctrlr(1, "h1"), ctrlr(2, "h2"));
        let (s, cnt) = reg.ana_for("h1", Some(v));
        assert_eq!(s, AnaState::Optimized);
        reg.set_steered([("h1".to_string(), v)].into());
        let (s, cnt2) = reg.ana_for("h1", Some(v));
        assert_eq!(s, AnaState::NonOptimized);
        assert!(cnt2 > cnt, "the change count moves with a change");
        assert_eq!(reg.ana_for("h2", Some(v)).0, AnaState::Optimized, "another host keeps its optimized path");
        assert_eq!(reg.ana_for("h1", Some(VolumeId(8))).0, AnaState::Optimized, "the host's other volumes too");
        assert_eq!(h1.state().events.iter().copied().collect::<Vec<_>>(), [crate::nvmf::ctrlr::AEN_ANA_CHANGED]);
        assert!(h2.state().events.is_empty(), "a host whose state did not change gets no event");
        // Drained: non-optimized to every host; steered back: optimized again.
        reg.set_ana_state(AnaState::NonOptimized);
        assert_eq!(reg.ana_for("h2", Some(v)).0, AnaState::NonOptimized);
        reg.set_ana_state(AnaState::Optimized);
        reg.set_steered(Default::default());
        assert_eq!(reg.ana_for("h1", Some(v)).0, AnaState::Optimized);
    }
}
