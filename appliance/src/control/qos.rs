//! Volume limits' control side (`volume::qos`): which hosts' commands waited, and
//! each limiter's rates on this peer (its share of the group-wide limits), once a
//! second and whenever limits change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Control;
use crate::group::keys::LoadReport;
use crate::volume::qos::{split, Demand, Limits};
use crate::volume::VolumeId;

/// A wait counts as "lately" for this long: a report (every 5 s) sees every wait.
const WAITED_LATELY: Duration = Duration::from_secs(6);

/// What the control thread remembers of one host's pair on one volume.
#[derive(Debug, Default)]
pub struct HostWaits {
    /// The pair's counts at the last turn: waits for the volume's limit, for the host's.
    seen: (u64, u64),
    /// When either count last grew.
    volume_at: Option<Instant>,
    host_at: Option<Instant>,
}

impl HostWaits {
    /// Whether the host's commands waited lately for the volume's limit and for the
    /// per-host limit.
    pub fn lately(&self, now: Instant) -> (bool, bool) {
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < WAITED_LATELY);
        (recent(self.volume_at), recent(self.host_at))
    }
}

impl Control {
    /// A volume's limits: the group's record for a group volume, the page store's
    /// volume table for a single peer's.
    pub(super) fn limits_of(&self, id: VolumeId) -> Limits {
        match self.records.get(&id) {
            Some((r, _)) => r.limits,
            None => self.store.limits(id).unwrap_or_default(),
        }
    }

    /// Notes which hosts' commands waited, then sets every volume's rates here.
    pub(super) fn qos_turn(&mut self) {
        let now = Instant::now();
        let mut alive = std::collections::HashSet::new();
        for v in self.store.volumes() {
            for (nqn, p) in v.qos.hosts() {
                use std::sync::atomic::Ordering::Relaxed;
                let counts = (p.waited_volume.load(Relaxed), p.waited.load(Relaxed));
                let key = (nqn, v.info.name.clone());
                let w = self.qos_waits.entry(key.clone()).or_default();
                if counts.0 != w.seen.0 {
                    w.volume_at = Some(now);
                }
                if counts.1 != w.seen.1 {
                    w.host_at = Some(now);
                }
                w.seen = counts;
                alive.insert(key);
            }
        }
        self.qos_waits.retain(|k, _| alive.contains(k));
        // A group splits each limit among its live peers by their reports.
        let group = self.group.as_ref().map(|g| {
            let snap = g.snapshot();
            let mut names: Vec<String> = snap.live.values().map(|p| p.name.clone()).collect();
            if !names.contains(&self.peer_name) {
                names.push(self.peer_name.clone());
            }
            names.sort();
            let me = names.iter().position(|n| *n == self.peer_name).expect("pushed above");
            (names, me, self.reports())
        });
        for v in self.store.volumes() {
            let limits = self.limits_of(v.info.id);
            let name = &v.info.name;
            if limits.is_none() {
                v.qos.set_rates(false, (0, 0), |_| (0, 0));
                continue;
            }
            let bytes = Limits::bytes_s;
            match &group {
                None => v.qos.set_rates(true, (u64::from(limits.iops), bytes(limits.mib_s)), |_| {
                    (u64::from(limits.host_iops), bytes(limits.host_mib_s))
                }),
                Some((names, me, reports)) => {
                    // The volume's demand through each peer: every host's, and whether
                    // any waited for the volume's limit.
                    let volume = share(names, *me, reports, (limits.iops, limits.mib_s), |r| {
                        r.hosts.iter().filter(|h| h.volume == *name && h.connected).fold(None, |d, h| {
                            let (o, k, w) = d.unwrap_or((0, 0, false));
                            Some((o + h.ops_now_milli, k + h.kib_now_milli, w || h.waited))
                        })
                    });
                    // Each host's through each peer; a host not seen yet has done
                    // nothing anywhere.
                    v.qos.set_rates(true, volume, |nqn| {
                        share(names, *me, reports, (limits.host_iops, limits.host_mib_s), |r| {
                            r.hosts
                                .iter()
                                .find(|h| h.volume == *name && h.connected && Some(h.host.as_str()) == nqn)
                                .map(|h| (h.ops_now_milli, h.kib_now_milli, h.host_waited))
                        })
                    });
                }
            }
        }
    }
}

/// This peer's (`names[me]`) share of `(iops, mib_s)`, from each peer's demand in its
/// report: (operations and KiB per 1000 s, waited), or `None` when no host of the
/// volume (or not the host) is connected there. Only the peers with hosts connected
/// share the limit, and this one (a host that connects here gets a share at once; the
/// others count this peer once its report says so).
fn share(
    names: &[String],
    me: usize,
    reports: &BTreeMap<String, LoadReport>,
    (iops, mib_s): (u32, u32),
    demand: impl Fn(&LoadReport) -> Option<(u64, u64, bool)>,
) -> (u64, u64) {
    let mut d: Vec<(u64, u64, bool)> = Vec::new();
    let mut mine = 0;
    for (i, n) in names.iter().enumerate() {
        let x = reports.get(n).and_then(&demand);
        if i == me {
            mine = d.len();
            d.push(x.unwrap_or_default());
        } else if let Some(x) = x {
            d.push(x);
        }
    }
    let of = |limit: u64, used: &dyn Fn(&(u64, u64, bool)) -> f64| {
        if limit == 0 {
            return 0;
        }
        let demands: Vec<Demand> = d.iter().map(|x| Demand { used: used(x), waited: x.2 }).collect();
        split(limit, &demands)[mine]
    };
    (of(u64::from(iops), &|x| x.0 as f64 / 1000.0), of(Limits::bytes_s(mib_s), &|x| x.1 as f64 / 1000.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::keys::HostLoad;

    fn report(hosts: &[(&str, u64, bool)]) -> LoadReport {
        LoadReport {
            hosts: hosts
                .iter()
                .map(|&(h, ops, waited)| HostLoad {
                    host: h.into(),
                    volume: "v".into(),
                    ops_now_milli: ops * 1000,
                    connected: true,
                    waited,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_peers_with_hosts_connected_share_a_limit_and_this_one_always_does() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // Hosts on a (waiting) and b (waiting); none on c.
        let reports: BTreeMap<String, LoadReport> = [
            ("a".to_string(), report(&[("h1", 300, true)])),
            ("b".to_string(), report(&[("h2", 300, true)])),
            ("c".to_string(), report(&[])),
        ]
        .into();
        let vol = |r: &LoadReport| {
            r.hosts.iter().fold(None, |d: Option<(u64, u64, bool)>, h| {
                let (o, k, w) = d.unwrap_or_default();
                Some((o + h.ops_now_milli, k + h.kib_now_milli, w || h.waited))
            })
        };
        let a = share(&names, 0, &reports, (600, 0), vol);
        let b = share(&names, 1, &reports, (600, 0), vol);
        assert_eq!((a.0, b.0), (300, 300), "c takes no part: a and b share the whole limit");
        assert_eq!(a.1, 0, "no MiB/s limit");
        // c, with no host yet, still computes a share for itself (a host that connects
        // there gets to start at once).
        let c = share(&names, 2, &reports, (600, 0), vol);
        assert!(c.0 >= 50, "{c:?}");
        // A host connected to b but idle there: b keeps a floor, a the rest.
        let reports: BTreeMap<String, LoadReport> =
            [("a".to_string(), report(&[("h1", 500, true)])), ("b".to_string(), report(&[("h1", 0, false)]))].into();
        let a = share(&names, 0, &reports, (600, 0), vol);
        let b = share(&names, 1, &reports, (600, 0), vol);
        assert_eq!(b.0, 75, "a quarter of an equal share of two");
        assert_eq!(a.0 + b.0, 600);
    }
}
