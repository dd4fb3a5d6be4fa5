//! Host steering by load (ANA): a peer that serves more than another tells one of its
//! hosts, through that host's controller only, that its path here is non-optimized;
//! the host's native multipath sends its I/O over its optimized paths instead (the
//! ANA change event makes it read the ANA log again). A drained peer is non-optimized
//! to every host (`group::tell_peers`); this steers chosen hosts, so that a busy peer
//! sheds a part of its load, not all of it.
//!
//! Every peer decides for its own paths, once a second, from the group's load reports
//! ([`decide`], a pure function): a peer's load is the operations it serves (pages'
//! reads and writes) plus the commands hosts send it, per unit of weight. Rules:
//! - **steer** a host away when this peer and the host each carry at least
//!   `rebalance.load_min_iops`, the host has other paths (connected there, not
//!   steered there, to peers not drained), and moving its I/O narrows the gap by a
//!   quarter or more whichever of those paths its multipath sends it to (the busiest
//!   decides; moving a host that carries the whole difference, or more, would only
//!   swap two peers: it stays);
//! - **return** it (optimized again) when it sends less than half that floor, when it
//!   has no other path any more, or when moving its I/O back from the peer that takes
//!   most of it narrows the gap by a quarter or leaves this peer no busier than that
//!   one. A move and its return cannot both narrow the same gap by a quarter, and the
//!   floors differ by half, so loads that stay put do not make a host flap;
//! - one change per `rebalance.steer_interval_s`, and after a host is steered away no
//!   other change until the reports show its I/O arrived elsewhere (half its rate at
//!   least: the peers publish their reports every few seconds, and rates take a few
//!   seconds to move) or three intervals passed (a host that does not follow ANA):
//!   each decision sees the effect of the last one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::Control;
use crate::group::keys::LoadReport;
use crate::group::GroupSnapshot;

/// A live peer's load as [`decide`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerLoad {
    /// Its name.
    pub name: String,
    /// Operations per 1000 s it serves: pages' plus hosts' commands taken.
    pub load_milli: u64,
    /// Its weight (≥ 1).
    pub weight: u64,
    /// Being drained (no host is steered to it).
    pub drained: bool,
}

/// One host's path to a volume through one peer, as that peer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPath {
    /// Host NQN.
    pub host: String,
    /// Volume name.
    pub volume: String,
    /// The peer.
    pub peer: String,
    /// The host's commands taken there, per 1000 s (the fast rate).
    pub ops_milli: u64,
    /// The host has a controller there.
    pub connected: bool,
    /// That peer steers the host away from itself.
    pub steered: bool,
}

/// What [`decide`] changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Host NQN.
    pub host: String,
    /// Volume name.
    pub volume: String,
    /// Steer the host away (true) or return it (false).
    pub steer: bool,
    /// Why, for the log and `quire stats hosts`.
    pub why: String,
}

/// A move must narrow the gap between the two peers to at most this share of it.
const NARROW: f64 = 0.75;

/// The next change of `me`'s steering, if any. `steered`: the (host, volume) pairs
/// `me` steers away now; `min_milli`: the least load (per 1000 s) that steers.
pub fn decide(
    me: &str,
    peers: &[PeerLoad],
    paths: &[HostPath],
    steered: &BTreeSet<(String, String)>,
    min_milli: u64,
) -> Option<Change> {
    let mine = peers.iter().find(|p| p.name == me)?;
    let per_w = |p: &PeerLoad, extra: f64| (p.load_milli as f64 + extra) / p.weight.max(1) as f64;
    // Hosts connected here, and their rates here.
    let here: BTreeMap<(&str, &str), u64> = paths
        .iter()
        .filter(|h| h.peer == me && h.connected)
        .map(|h| ((h.host.as_str(), h.volume.as_str()), h.ops_milli))
        .collect();
    // Where else each (host, volume) may go: live, undrained peers it is connected to
    // that do not steer it away themselves.
    let elsewhere = |host: &str, volume: &str| -> Vec<(&PeerLoad, u64)> {
        paths
            .iter()
            .filter(|h| h.host == host && h.volume == volume && h.peer != me && h.connected && !h.steered)
            .filter_map(|h| peers.iter().find(|p| p.name == h.peer && !p.drained).map(|p| (p, h.ops_milli)))
            .collect()
    };

    // Returns first: a steered host that should come back.
    for (host, volume) in steered {
        let others = elsewhere(host, volume);
        let key = (host.clone(), volume.clone());
        let back = |why: String| Some(Change { host: key.0.clone(), volume: key.1.clone(), steer: false, why });
        // Its I/O now: what the other peers take of it.
        let l: u64 = others.iter().map(|(_, o)| o).sum::<u64>()
            + here.get(&(host.as_str(), volume.as_str())).copied().unwrap_or(0);
        if others.is_empty() {
            return back("it has no other optimized path".into());
        }
        if l < min_milli / 2 {
            return back(format!("it sends {} op/s, under half rebalance.load_min_iops", l / 1000));
        }
        // The peer that takes most of it.
        let Some(&(q, lq)) = others.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.name.cmp(&a.0.name))) else {
            continue;
        };
        let lq = lq as f64;
        let before = per_w(mine, 0.0) - per_w(q, 0.0);
        let after = per_w(mine, lq) - per_w(q, -lq);
        if after <= 0.0 || after.abs() <= NARROW * before.abs() {
            return back(format!(
                "its {:.0} op/s back here leave {me} at {:.0} op/s per weight against {} at {:.0}",
                lq / 1000.0,
                per_w(mine, lq) / 1000.0,
                q.name,
                per_w(q, -lq) / 1000.0
            ));
        }
    }

    // Then at most one host to steer away.
    if mine.drained || mine.load_milli < min_milli {
        return None;
    }
    let mut best: Option<(f64, Change)> = None;
    for (&(host, volume), &l) in &here {
        // A host under the floor is not steered (it would be returned as idle).
        if l < min_milli || steered.contains(&(host.to_string(), volume.to_string())) {
            continue;
        }
        let others = elsewhere(host, volume);
        if others.is_empty() {
            continue;
        }
        // Its multipath may send its I/O to any of its other optimized paths: the move
        // must narrow the gap whichever it lands on (the busiest of them decides).
        let l = l as f64;
        let narrows = |q: &PeerLoad| {
            let before = per_w(mine, 0.0) - per_w(q, 0.0);
            let after = per_w(mine, -l) - per_w(q, l);
            (before > 0.0 && after.abs() <= NARROW * before).then_some(after.abs())
        };
        let Some(after) = others.iter().map(|(q, _)| narrows(q)).collect::<Option<Vec<f64>>>() else { continue };
        let after = after.into_iter().fold(0.0, f64::max);
        let Some(&(q, _)) =
            others.iter().max_by(|a, b| per_w(a.0, 0.0).total_cmp(&per_w(b.0, 0.0)).then(b.0.name.cmp(&a.0.name)))
        else {
            continue;
        };
        let why = format!(
            "{me} serves {:.0} op/s per weight against {:.0} at {}: the host's {:.0} op/s there leave {:.0} against {:.0}",
            per_w(mine, 0.0) / 1000.0,
            per_w(q, 0.0) / 1000.0,
            q.name,
            l / 1000.0,
            per_w(mine, -l) / 1000.0,
            per_w(q, l) / 1000.0
        );
        let c = Change { host: host.to_string(), volume: volume.to_string(), steer: true, why };
        if best.as_ref().is_none_or(|(score, _)| after < *score) {
            best = Some((after, c));
        }
    }
    best.map(|(_, c)| c)
}

/// This peer's steering: the pairs it steers away, and when it last changed.
#[derive(Default)]
pub struct Steering {
    /// (host, volume) pairs steered away from this peer, and since when.
    pub steered: BTreeMap<(String, String), Instant>,
    /// The last change.
    pub changed: Option<Instant>,
    /// The host last steered away, its rate here then and its rate elsewhere then
    /// (per 1000 s), until the reports show half its rate here arrived elsewhere.
    pub moving: Option<((String, String), u64, u64)>,
}

/// The rate of `key` at peers other than `me` in the reports (`paths`).
fn elsewhere_rate(me: &str, paths: &[HostPath], key: &(String, String)) -> u64 {
    paths.iter().filter(|h| h.peer != me && h.host == key.0 && h.volume == key.1).map(|h| h.ops_milli).sum()
}

/// Whether the reports show at least half of `rate` more of `key` at the other peers
/// than `base`: the steered host's I/O arrived elsewhere.
fn arrived(me: &str, paths: &[HostPath], key: &(String, String), rate: u64, base: u64) -> bool {
    elsewhere_rate(me, paths, key).saturating_sub(base) >= rate / 2
}

impl Control {
    /// Once a second, with the group's reports: the next change of this peer's
    /// steering ([`decide`]), handed to the registry (the hosts' ANA logs).
    pub(super) fn steer_turn(&mut self, snap: &GroupSnapshot, reports: &BTreeMap<String, LoadReport>) {
        let (enabled, interval) = self.steer_cfg;
        let me = self.peer_name.clone();
        let drained = snap.draining.contains(&me);
        let connected = &self.hosts.connected;
        let before = self.steering.steered.len();
        // A host gone from here, or a drained peer (every host steered), or steering
        // switched off: nothing to steer.
        self.steering.steered.retain(|k, _| enabled && !drained && connected.contains(k));
        let mut changed = self.steering.steered.len() != before;
        let since = self.steering.changed.map(|t| t.elapsed());
        let due = since.is_none_or(|t| t >= interval);
        if enabled && !drained && due {
            let peers: Vec<PeerLoad> = snap
                .live
                .values()
                .map(|p| {
                    let r = reports.get(&p.name);
                    PeerLoad {
                        name: p.name.clone(),
                        load_milli: r.map_or(0, |r| r.ops_milli + r.hosts.iter().map(|h| h.ops_now_milli).sum::<u64>()),
                        weight: snap.shares.iter().find(|(n, _)| *n == p.name).map_or(1, |(_, s)| s.weight.max(1)),
                        drained: snap.draining.contains(&p.name),
                    }
                })
                .collect();
            let paths: Vec<HostPath> = reports
                .iter()
                .flat_map(|(peer, r)| {
                    r.hosts.iter().map(move |h| HostPath {
                        host: h.host.clone(),
                        volume: h.volume.clone(),
                        peer: peer.clone(),
                        ops_milli: h.ops_now_milli,
                        connected: h.connected,
                        steered: h.steered,
                    })
                })
                .collect();
            if let Some((key, rate, base)) = &self.steering.moving {
                let gone = !self.steering.steered.contains_key(key);
                if gone || arrived(&me, &paths, key, *rate, *base) || since.is_some_and(|t| t >= 3 * interval) {
                    self.steering.moving = None;
                }
            }
            let now: BTreeSet<(String, String)> = self.steering.steered.keys().cloned().collect();
            let settled = self.steering.moving.is_none();
            if let Some(c) = decide(&me, &peers, &paths, &now, self.steer_min_milli).filter(|_| settled) {
                tracing::info!(host = %c.host, volume = %c.volume, steer = c.steer, why = %c.why,
                    "{}", if c.steer { "host steered away (ANA non-optimized to it)" } else { "host steered back (ANA optimized)" });
                if c.steer {
                    let key = (c.host, c.volume);
                    let rate = paths.iter().find(|h| h.peer == me && h.host == key.0 && h.volume == key.1);
                    let base = elsewhere_rate(&me, &paths, &key);
                    self.steering.moving = Some((key.clone(), rate.map_or(0, |h| h.ops_milli), base));
                    self.steering.steered.insert(key, Instant::now());
                } else {
                    self.steering.steered.remove(&(c.host, c.volume));
                }
                self.steering.changed = Some(Instant::now());
                changed = true;
            }
        }
        if changed {
            let set = self
                .steering
                .steered
                .keys()
                .filter_map(|(h, v)| Some((h.clone(), self.store.volume_by_name(v)?.info.id)))
                .collect();
            self.registry.set_steered(set);
        }
    }
}

/// The steering interval in force (`rebalance.steer_interval_s`).
pub fn interval(cfg: &quire_config::schema::Rebalance) -> Duration {
    Duration::from_secs(u64::from(cfg.steer_interval_s.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, load: u64) -> PeerLoad {
        PeerLoad { name: name.into(), load_milli: load * 1000, weight: 1, drained: false }
    }

    fn path(host: &str, peer: &str, ops: u64) -> HostPath {
        HostPath {
            host: host.into(),
            volume: "v".into(),
            peer: peer.into(),
            ops_milli: ops * 1000,
            connected: true,
            steered: false,
        }
    }

    fn set(pairs: &[&str]) -> BTreeSet<(String, String)> {
        pairs.iter().map(|h| (h.to_string(), "v".to_string())).collect()
    }

    #[test]
    fn a_busy_peer_steers_one_of_two_hosts_to_the_idle_one_and_not_the_second() {
        // a takes 300 + 300 from h1 and h2 (plus 200 of pages), b 200 of pages.
        let peers = [peer("a", 800), peer("b", 200)];
        let paths = [path("h1", "a", 300), path("h2", "a", 300), path("h1", "b", 0), path("h2", "b", 0)];
        let c = decide("a", &peers, &paths, &set(&[]), 20_000).expect("a steers a host");
        assert!(c.steer);
        assert_eq!(c.host, "h1", "the tie goes to the first by name");
        // h1 went to b: a 500, b 500. Neither h2 nor h1's return narrows anything.
        let peers = [peer("a", 500), peer("b", 500)];
        let paths = [path("h1", "a", 0), path("h2", "a", 300), path("h1", "b", 300), path("h2", "b", 0)];
        assert_eq!(decide("a", &peers, &paths, &set(&["h1"]), 20_000), None);
        assert_eq!(decide("b", &peers, &paths, &set(&[]), 20_000), None);
    }

    #[test]
    fn a_host_carrying_the_whole_gap_or_more_stays_where_it_is() {
        // One host, all of a's extra load: moving it would swap a and b.
        let peers = [peer("a", 600), peer("b", 100)];
        let paths = [path("h", "a", 500), path("h", "b", 0)];
        assert_eq!(decide("a", &peers, &paths, &set(&[]), 20_000), None);
    }

    #[test]
    fn no_steering_below_the_floor_without_another_path_or_towards_a_drained_peer() {
        let paths = [path("h1", "a", 10), path("h2", "a", 10), path("h1", "b", 0), path("h2", "b", 0)];
        assert_eq!(decide("a", &[peer("a", 20), peer("b", 0)], &paths, &set(&[]), 200_000), None, "floor");
        let only_a = [path("h1", "a", 300), path("h2", "a", 300)];
        assert_eq!(decide("a", &[peer("a", 600), peer("b", 0)], &only_a, &set(&[]), 20_000), None, "one path");
        let drained = PeerLoad { drained: true, ..peer("b", 0) };
        let paths = [path("h1", "a", 300), path("h2", "a", 300), path("h1", "b", 0), path("h2", "b", 0)];
        assert_eq!(decide("a", &[peer("a", 600), drained], &paths, &set(&[]), 20_000), None, "drained");
        let steering = HostPath { steered: true, ..path("h1", "b", 0) };
        let paths = [path("h1", "a", 300), path("h2", "a", 300), steering];
        assert_eq!(decide("a", &[peer("a", 600), peer("b", 0)], &paths, &set(&[]), 20_000), None, "b steers h1 too");
    }

    #[test]
    fn a_steered_host_returns_when_idle_or_when_its_return_narrows_the_gap() {
        // Idle.
        let peers = [peer("a", 300), peer("b", 0)];
        let paths = [path("h1", "a", 0), path("h1", "b", 5), path("h2", "a", 300)];
        let c = decide("a", &peers, &paths, &set(&["h1"]), 20_000).expect("idle host returns");
        assert!(!c.steer && c.host == "h1", "{c:?}");
        // a went quiet: h1's 300 at b come back (a 0 + 300 against b 400 − 300).
        let peers = [peer("a", 0), peer("b", 400)];
        let paths = [path("h1", "a", 0), path("h1", "b", 300)];
        let c = decide("a", &peers, &paths, &set(&["h1"]), 20_000).expect("return narrows");
        assert!(!c.steer, "{c:?}");
        // Its other path went away.
        let paths = [path("h1", "a", 0)];
        assert!(decide("a", &[peer("a", 600)], &paths, &set(&["h1"]), 20_000).is_some_and(|c| !c.steer));
    }

    #[test]
    fn a_steered_host_has_arrived_once_half_its_rate_shows_elsewhere() {
        let key = ("h1".to_string(), "v".to_string());
        let paths = [path("h1", "a", 300), path("h1", "b", 100), path("h2", "b", 400)];
        assert!(!arrived("a", &paths, &key, 300_000, 0));
        let paths = [path("h1", "a", 100), path("h1", "b", 150)];
        assert!(arrived("a", &paths, &key, 300_000, 0));
        // What it already sent elsewhere (round-robin) does not count as arrived.
        let paths = [path("h1", "a", 150), path("h1", "b", 200)];
        assert!(!arrived("a", &paths, &key, 300_000, 150_000));
    }

    #[test]
    fn a_host_under_the_floor_is_neither_steered_nor_made_to_flap() {
        // a 400 (250 of pages, h 150), b 100, floor 200: h would narrow the gap but is
        // under the floor, so it is not steered (it would be returned as idle).
        let paths = [path("h", "a", 150), path("h", "b", 0)];
        assert_eq!(decide("a", &[peer("a", 400), peer("b", 100)], &paths, &set(&[]), 200_000), None);
        // Steered at 150 with a floor of 250: kept until under half the floor.
        let paths = [path("h", "a", 0), path("h", "b", 150)];
        assert_eq!(decide("a", &[peer("a", 250), peer("b", 250)], &paths, &set(&["h"]), 250_000), None);
    }

    #[test]
    fn with_three_peers_the_busiest_other_path_decides() {
        // a 1000 (h 400), b 900, c 0: multipath may send h to b, which would then be
        // the busier of the two; h stays.
        let paths = [path("h", "a", 400), path("h", "b", 0), path("h", "c", 0)];
        let peers = [peer("a", 1000), peer("b", 900), peer("c", 0)];
        assert_eq!(decide("a", &peers, &paths, &set(&[]), 20_000), None);
        // a 1000, b 500, c 0: b ends at 900 against a's 600 (narrower), c at 400.
        let peers = [peer("a", 1000), peer("b", 500), peer("c", 0)];
        assert!(decide("a", &peers, &paths, &set(&[]), 20_000).is_some_and(|c| c.steer));
    }

    #[test]
    fn weights_count_a_heavier_peer_takes_more() {
        // b weighs 3: a at 400 per weight, b at 900/3 = 300; h's 200 would leave
        // a 200 against b 367: the gap turns round and grows; h stays.
        let b = PeerLoad { weight: 3, ..peer("b", 900) };
        let paths = [path("h", "a", 200), path("h2", "a", 200), path("h", "b", 0)];
        assert_eq!(decide("a", &[peer("a", 400), b.clone()], &paths, &set(&[]), 20_000), None);
        // With a at 1000 (h 500): 1000 against 300; after, 500 against 467.
        let paths = [path("h", "a", 500), path("h2", "a", 500), path("h", "b", 0)];
        assert!(decide("a", &[peer("a", 1000), b], &paths, &set(&[]), 20_000).is_some_and(|c| c.steer));
    }
}
