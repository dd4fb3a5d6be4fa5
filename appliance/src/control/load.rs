//! The load monitor's control side (`volume::load`): the rates (pages' and hosts'),
//! this peer's report to the group, and `stats_pages` / `stats_peers` /
//! `stats_hosts` over the whole group's reports.

use std::collections::BTreeMap;
use std::time::Instant;

use super::Control;
use crate::group::keys::{milli, HostLoad, LoadReport, VolumeLoad};
use crate::rpc::methods as m;
use crate::rpc::RpcError;
use crate::volume::load::TOP_PUBLISHED;

impl Control {
    /// Takes the reactors' counts into the rates and hands the agent this peer's
    /// report, once a second (the control loop turns far more often).
    pub(super) fn load_turn(&mut self) {
        let now = Instant::now();
        if !self.load.tick(now) {
            return;
        }
        let controllers: Vec<crate::volume::load::ControllerIo> = {
            let r = self.registry.lock();
            r.controllers
                .values()
                .filter(|c| !c.discovery)
                .filter_map(|c| {
                    let v = self.store.volume(c.volume?)?;
                    Some((c.cntlid, c.hostnqn.clone(), v.info.name.clone(), c.io_totals()))
                })
                .collect()
        };
        self.hosts.tick(now, controllers);
        self.qos_turn();
        if let Some(g) = self.group.clone() {
            let snap = g.snapshot();
            let reports = self.reports_in(&snap);
            self.steer_turn(&snap, &reports);
            let paths = snap
                .live
                .iter()
                .filter(|(&id, _)| crate::volume::routing::PeerId(id) != self.me)
                .filter_map(|(_, p)| p.target.parse().ok())
                .collect();
            self.order_paths(&snap, &reports, paths);
        }
        if let Some(g) = &self.group {
            g.set_load_report(self.load_report());
        }
    }

    /// This peer's report: its totals and, per volume, its hottest pages.
    fn load_report(&self) -> LoadReport {
        let mut r = LoadReport::default();
        for v in self.store.volumes() {
            let (ops_s, kib_s) = self.load.total(v.info.id);
            let (ops_milli, kib_milli) = (milli(ops_s), milli(kib_s));
            r.ops_milli += ops_milli;
            r.kib_milli += kib_milli;
            if ops_milli > 0 {
                let top = self
                    .load
                    .top(v.info.id, TOP_PUBLISHED)
                    .into_iter()
                    .map(|p| (p.page, milli(p.ops_s), milli(p.kib_s)))
                    .collect();
                r.volumes.insert(v.info.name.clone(), VolumeLoad { ops_milli, kib_milli, top });
            }
        }
        r.hosts = self
            .hosts
            .rates
            .iter()
            // Hosts with I/O lately, and hosts connected here (a path they may use:
            // the split of a volume's limits counts it).
            .filter(|(k, h)| milli(h.ops_s) > 0 || self.hosts.connected.contains(*k))
            .map(|((host, volume), h)| {
                let (waited, host_waited) = self
                    .qos_waits
                    .get(&(host.clone(), volume.clone()))
                    .map_or((false, false), |w| w.lately(Instant::now()));
                HostLoad {
                    host: host.clone(),
                    volume: volume.clone(),
                    ops_milli: milli(h.ops_s),
                    kib_milli: milli(h.kib_s),
                    latency_ns: milli(h.latency_us),
                    connected: self.hosts.connected.contains(&(host.clone(), volume.clone())),
                    ops_now_milli: milli(h.fast_ops_s),
                    kib_now_milli: milli(h.fast_kib_s),
                    waited,
                    host_waited,
                    steered: self.steering.steered.contains_key(&(host.clone(), volume.clone())),
                }
            })
            .collect();
        r
    }

    /// `stats_hosts`: every host's load on each volume over the group's reports.
    pub(super) fn stats_hosts(&self) -> Vec<m::HostLoadEntry> {
        // (host, volume) → operations and KiB per 1000 s, latency ns × operations, peers.
        let mut all: BTreeMap<(String, String), HostSummed> = BTreeMap::new();
        for (peer, r) in self.reports() {
            for h in &r.hosts {
                let e = all.entry((h.host.clone(), h.volume.clone())).or_default();
                e.0 += h.ops_milli;
                e.1 += h.kib_milli;
                e.2 += u128::from(h.latency_ns) * u128::from(h.ops_milli);
                e.3.push(peer.clone());
                if h.steered {
                    e.4.push(peer.clone());
                }
            }
        }
        all.into_iter()
            .map(|((host, volume), (ops, kib, lat, peers, steered_from))| m::HostLoadEntry {
                host,
                volume,
                ops_s: per_s(ops),
                kib_s: per_s(kib),
                latency_us: if ops == 0 { 0.0 } else { (lat / u128::from(ops)) as f64 / 1000.0 },
                peers,
                steered_from,
            })
            .collect()
    }

    /// Hands the registry the other live peers' I/O addresses (`paths`, any order) in
    /// the discovery log's order: least loaded first, and this peer among them
    /// ([`discovery_steps`]).
    pub(super) fn order_paths(
        &mut self,
        snap: &crate::group::GroupSnapshot,
        reports: &BTreeMap<String, LoadReport>,
        paths: Vec<std::net::SocketAddr>,
    ) {
        let mut peers: Vec<(String, Option<std::net::SocketAddr>, u64, u64)> = snap
            .live
            .iter()
            .filter_map(|(&id, p)| {
                let addr = if crate::volume::routing::PeerId(id) == self.me {
                    None
                } else {
                    Some(p.target.parse().ok().filter(|a| paths.contains(a))?)
                };
                let ops =
                    reports.get(&p.name).map_or(0, |r| r.ops_milli + r.hosts.iter().map(|h| h.ops_milli).sum::<u64>());
                let weight = snap.shares.iter().find(|(n, _)| *n == p.name).map_or(1, |(_, s)| s.weight.max(1));
                Some((p.name.clone(), addr, ops, weight))
            })
            .collect();
        if !peers.iter().any(|p| p.1.is_none()) {
            // Not registered yet: this peer last.
            peers.push((self.peer_name.clone(), None, u64::MAX, 1));
        }
        let loads: Vec<(String, u64, u64)> = peers.iter().map(|(n, _, o, w)| (n.clone(), *o, *w)).collect();
        let steps = discovery_steps(&loads, &self.discovery_steps);
        let mut order: Vec<usize> = (0..peers.len()).collect();
        order.sort_by(|&a, &b| (steps[a], &peers[a].0).cmp(&(steps[b], &peers[b].0)));
        self.discovery_steps = loads.iter().zip(&steps).map(|((n, _, _), &s)| (n.clone(), s)).collect();
        let before = order.iter().position(|&i| peers[i].1.is_none()).unwrap_or(0);
        let ordered = order.iter().filter_map(|&i| peers[i].1).collect();
        self.registry.set_group_paths(ordered, before);
    }

    /// Every peer's report, by name: this peer's own as it is now, the others' as they
    /// last published them.
    pub(super) fn reports(&self) -> BTreeMap<String, LoadReport> {
        match &self.group {
            Some(g) => self.reports_in(&g.snapshot()),
            None => BTreeMap::from([(self.peer_name.clone(), self.load_report())]),
        }
    }

    /// [`Control::reports`] from a snapshot already taken.
    pub(super) fn reports_in(&self, snap: &crate::group::GroupSnapshot) -> BTreeMap<String, LoadReport> {
        let mut all = BTreeMap::new();
        for (name, r) in &snap.loads {
            if snap.live.values().any(|p| p.name == *name) {
                all.insert(name.clone(), r.clone());
            }
        }
        all.insert(self.peer_name.clone(), self.load_report());
        all
    }

    /// `stats_pages`: the hottest pages of a volume over the group (each page's rate
    /// summed over the peers that serve it: its leader's writes, every copy's reads).
    pub(super) fn stats_pages(&self, p: m::StatsPagesParams) -> Result<m::StatsPages, RpcError> {
        let v = self
            .store
            .volume_by_name(&p.name)
            .ok_or_else(|| RpcError::not_found(format!("no volume named {:?}", p.name)))?;
        // Page → (operations, KiB per 1000 s, summed; the peers that served it).
        let mut pages: BTreeMap<u64, Summed> = BTreeMap::new();
        let (mut ops, mut kib) = (0u64, 0u64);
        for (peer, r) in self.reports() {
            let Some(vl) = r.volumes.get(&p.name) else { continue };
            ops += vl.ops_milli;
            kib += vl.kib_milli;
            for &(page, o, k) in &vl.top {
                let e = pages.entry(page).or_default();
                e.0 += o;
                e.1 += k;
                e.2.push(peer.clone());
            }
        }
        let mut top: Vec<(u64, Summed)> = pages.into_iter().collect();
        top.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        top.truncate(p.top.unwrap_or(10));
        Ok(m::StatsPages {
            name: p.name,
            pages: v.info.num_pages,
            ops_s: per_s(ops),
            kib_s: per_s(kib),
            top: top
                .into_iter()
                .map(|(page, (o, k, peers))| m::PageLoadEntry { page, ops_s: per_s(o), kib_s: per_s(k), peers })
                .collect(),
        })
    }

    /// `stats_peers`: every peer's load.
    pub(super) fn stats_peers(&self) -> Vec<m::PeerLoadEntry> {
        self.reports()
            .into_iter()
            .map(|(name, r)| m::PeerLoadEntry {
                name,
                ops_s: per_s(r.ops_milli),
                kib_s: per_s(r.kib_milli),
                volumes: r.volumes.len() as u64,
            })
            .collect()
    }
}

/// A host's operations and KiB per 1000 s on a volume over the peers, its latency (ns)
/// times its operations, the peers, and those that steer it away.
type HostSummed = (u64, u64, u128, Vec<String>, Vec<String>);

/// A page's operations and KiB per 1000 s over the peers, and the peers.
type Summed = (u64, u64, Vec<String>);

/// Thousandths per second as a rate to one decimal (what a person reads).
fn per_s(milli: u64) -> f64 {
    (milli / 100) as f64 / 10.0
}

/// Each peer's step of load in the discovery log's order: its operations per second
/// (pages served and hosts' commands taken) per unit of weight, against the group's,
/// in powers of two (below half the group's: 0; half to once: 1; once to twice: 2;
/// …). A peer keeps its last step (`last`) until its load leaves that step's range by
/// a fifth more: loads that hover at an edge do not reorder the log, and every
/// reorder is a discovery change event to the hosts.
pub(super) fn discovery_steps(peers: &[(String, u64, u64)], last: &std::collections::HashMap<String, i32>) -> Vec<i32> {
    let total_ops: u64 = peers.iter().map(|p| p.1.min(u64::MAX / 2)).sum();
    let total_weight: u64 = peers.iter().map(|p| p.2.max(1)).sum();
    if total_ops < 100_000 {
        // Under 100 operations a second in all: no order by load.
        return vec![0; peers.len()];
    }
    let mean = total_ops as f64 / total_weight as f64;
    peers
        .iter()
        .map(|(name, ops, weight)| {
            let rel = (*ops).min(u64::MAX / 2) as f64 / (*weight).max(1) as f64 / mean;
            let x = (rel * 2.0).max(f64::MIN_POSITIVE).log2() + 1.0;
            match last.get(name) {
                Some(&p) if x >= f64::from(p) - 0.25 && x < f64::from(p) + 1.25 => p,
                // Steps are small: the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                _ => (x.floor() as i32).max(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_steps_order_by_load_per_weight_and_hold_at_edges() {
        let p = |n: &str, ops: u64, w: u64| (n.to_string(), ops * 1000, w);
        let none = std::collections::HashMap::new();
        // Idle group: no order by load.
        assert_eq!(discovery_steps(&[p("a", 10, 1), p("b", 50, 1)], &none), vec![0, 0]);
        // a at 0.25 of the mean, b at 1.0, c at 1.75: steps 0, 2, 2.
        let loads = [p("a", 250, 1), p("b", 1000, 1), p("c", 1750, 1)];
        assert_eq!(discovery_steps(&loads, &none), vec![0, 2, 2]);
        // Weight counts: c twice as big carries twice as much at the same step.
        assert_eq!(discovery_steps(&[p("a", 1000, 1), p("c", 2000, 2)], &none), vec![2, 2]);
        // At an edge: b just under the mean keeps step 2 it had; far under, it moves.
        let last: std::collections::HashMap<String, i32> = [("b".to_string(), 2)].into();
        let loads = [p("a", 1050, 1), p("b", 950, 1)];
        assert_eq!(discovery_steps(&loads, &none), vec![2, 1]);
        assert_eq!(discovery_steps(&loads, &last)[1], 2, "a wobble keeps the step");
        let loads = [p("a", 1600, 1), p("b", 400, 1)];
        assert_eq!(discovery_steps(&loads, &last)[1], 0, "b at 0.4 of the mean moves down");
    }
}
