//! Per-volume limits (QoS): operations and bytes per second, for the volume as a
//! whole and for each host on it, group-wide.
//!
//! ## Where a command waits
//!
//! The peer a host's command arrives at enforces the limits (the peers it forwards
//! parts to do not count them again). A read, write, Write Zeroes or Compare of an I/O
//! queue asks its volume's [`Limiter`] before it takes pool buffers (or, with data in
//! its capsule, once the data is in): the limiter reserves the command's slot in
//! each bucket that applies and answers when the command may go. A command whose slot
//! lies ahead waits in its reactor's timer list (`ReqState::WaitingQos`); it is never
//! failed for being over a limit, and it holds no pool buffer while it waits (an
//! in-capsule write's data stays in the receive chunk it arrived in). How many can
//! wait is bounded by the hosts' queue depths. A queue of 128 commands of 128 KiB
//! under a 1 MiB/s limit waits up to 16 s: the host's I/O timeout (30 s on Linux)
//! bounds what limit makes sense for a given queue depth, as with SPDK's QoS.
//!
//! ## Buckets
//!
//! A [`Bucket`] is a virtual-scheduling rate limiter (GCRA, as ATM's cell rate
//! control and many rate limiters since): one atomic "theoretical arrival time" per
//! bucket; a command of `n` units costs `n / rate` seconds of it; one compare-and-swap
//! reserves it, from any reactor, with no lock and no refill timer. A bucket idle
//! for a while lends up to [`BURST`] of its rate at once. A volume has one bucket of
//! operations and one of bytes; each host on it ([`Pair`], by host NQN) has its own
//! pair. A limit of 0 is no limit, and a volume without limits costs one relaxed load
//! per command.
//!
//! ## Group-wide
//!
//! A host may reach a volume through several peers. Each peer enforces a share of
//! each limit; the shares add up to the limit ([`split`]). Every peer computes them
//! from the same inputs, the peers' load reports (`/quire/v1/load/<peer>`, every 5 s):
//! which hosts are connected through each peer, what they did on the volume (rates
//! over the last seconds) and whether any of their commands waited for the limit.
//! Only the peers with a host of the volume connected (for a per-host limit: that
//! host) take part, and the peer computing (a host that connects there can start at
//! once). A peer whose commands waited wants more; a peer whose commands did not
//! wait is given what it used plus a quarter, never less than a floor of a quarter of
//! an equal share (a path in use again can start); what is left is shared equally
//! among the peers that want more. So a host that moves its I/O from one path to
//! another gets the limit, but for the idle paths' floors, on the new path within two
//! or three reports, and the group's total stays at the limit. For the few seconds in
//! which peers have seen different reports (a host connected through a new peer, whose
//! report the others have not read yet), a share can be off by what changed in
//! between: at most the new peer's floor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How much of its rate an idle bucket lets through at once.
pub const BURST: Duration = Duration::from_millis(20);

const EPOCH_LEAD_NS: u64 = 1_000_000_000;

/// A volume's limits; 0 is no limit. Stored with the volume (the page store's
/// volume table for a single peer, the volume record in etcd for a group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Reads, writes, Write Zeroes and Compares per second, over every host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iops: u32,
    /// MiB per second read and written, over every host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mib_s: u32,
    /// Operations per second of each host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_iops: u32,
    /// MiB per second of each host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_mib_s: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Limits {
    /// No limit at all.
    pub fn is_none(&self) -> bool {
        *self == Limits::default()
    }

    /// Any per-host limit.
    pub fn per_host(&self) -> bool {
        self.host_iops != 0 || self.host_mib_s != 0
    }

    /// As `quire volume list` shows them.
    pub fn describe(&self) -> String {
        if self.is_none() {
            return "-".into();
        }
        let part = |iops: u32, mib: u32| {
            let mut p = Vec::new();
            if iops != 0 {
                p.push(format!("{iops} IOPS"));
            }
            if mib != 0 {
                p.push(format!("{mib} MiB/s"));
            }
            p.join(", ")
        };
        let mut s = Vec::new();
        if self.iops != 0 || self.mib_s != 0 {
            s.push(part(self.iops, self.mib_s));
        }
        if self.per_host() {
            s.push(format!("each host {}", part(self.host_iops, self.host_mib_s)));
        }
        s.join("; ")
    }

    /// The byte rate of a MiB/s figure.
    pub fn bytes_s(mib_s: u32) -> u64 {
        u64::from(mib_s) << 20
    }
}

/// One rate limit: units (operations or bytes) per second, and the time at which the
/// units reserved so far are used up.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Units per second; 0: no limit.
    rate: AtomicU64,
    /// Theoretical arrival time: ns since the limiter's epoch.
    tat: AtomicU64,
}

impl Bucket {
    /// Sets the rate (0: no limit). Reservations made stand.
    pub fn set_rate(&self, per_s: u64) {
        self.rate.store(per_s, Ordering::Relaxed);
    }

    /// The rate (0: no limit).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Reserves `units` at `now_ns`; returns when they may be used (≥ `now_ns`).
    fn reserve(&self, now_ns: u64, units: u64) -> u64 {
        let rate = self.rate();
        if rate == 0 || units == 0 {
            return now_ns;
        }
        let cost = u64::try_from(u128::from(units) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX);
        let burst = u64::try_from(BURST.as_nanos()).expect("a short burst");
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now_ns.saturating_sub(burst));
            match self.tat.compare_exchange_weak(tat, base.saturating_add(cost), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return base.max(now_ns),
                Err(t) => tat = t,
            }
        }
    }
}

/// An operations bucket and a bytes bucket, and how many commands waited on them.
#[derive(Debug, Default)]
pub struct Pair {
    /// Operations per second.
    pub ops: Bucket,
    /// Bytes per second.
    pub bytes: Bucket,
    /// Commands that waited for this pair.
    pub waited: AtomicU64,
    /// For a host's pair: its commands that waited for the volume's pair.
    pub waited_volume: AtomicU64,
}

impl Pair {
    /// Any limit set.
    pub fn limited(&self) -> bool {
        self.ops.rate() != 0 || self.bytes.rate() != 0
    }

    /// Sets both rates (operations and bytes per second; 0: no limit).
    pub fn set(&self, (ops, bytes): (u64, u64)) {
        self.ops.set_rate(ops);
        self.bytes.set_rate(bytes);
    }

    fn reserve(&self, now_ns: u64, bytes: u64) -> u64 {
        self.ops.reserve(now_ns, 1).max(self.bytes.reserve(now_ns, bytes))
    }
}

/// One volume's limiter on one peer: one for the volume's whole life, shared by every
/// reactor (in its `VolumeView`); the control thread sets its rates.
#[derive(Debug)]
pub struct Limiter {
    epoch: Instant,
    /// Any rate set, on the volume or on a host.
    active: AtomicBool,
    /// The volume's share of its limits on this peer.
    pub volume: Pair,
    /// Each host's pair, by host NQN; taken once per I/O queue.
    hosts: Mutex<HashMap<String, Arc<Pair>>>,
    /// Commands that waited for their host's pair, every host's.
    pub host_waits: AtomicU64,
    /// The rates a host's pair starts with (operations, bytes per second), until the
    /// control thread's next turn gives it its own.
    new_host: (AtomicU64, AtomicU64),
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter {
            epoch: Instant::now(),
            active: AtomicBool::new(false),
            volume: Pair::default(),
            hosts: Mutex::default(),
            host_waits: AtomicU64::new(0),
            new_host: Default::default(),
        }
    }
}

impl Limiter {
    /// Whether commands must ask (one relaxed load).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// A host's pair (made on first use).
    pub fn host(&self, nqn: &str) -> Arc<Pair> {
        let mut h = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.entry(nqn.to_string())
            .or_insert_with(|| {
                let p = Pair::default();
                p.set((self.new_host.0.load(Ordering::Relaxed), self.new_host.1.load(Ordering::Relaxed)));
                Arc::new(p)
            })
            .clone()
    }

    /// Every host's pair.
    pub fn hosts(&self) -> Vec<(String, Arc<Pair>)> {
        let h = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Sets this peer's rates: `on` (the volume has limits: commands ask, and I/O
    /// queues take their host's pair, whose waits tell the group what they want), the
    /// volume's rates, and each host's from `host` (given its NQN; `None`: the rates
    /// of a host not seen yet). Hosts no I/O queue refers to any more are forgotten.
    pub fn set_rates(&self, on: bool, volume: (u64, u64), host: impl Fn(Option<&str>) -> (u64, u64)) {
        self.volume.set(volume);
        let fresh = host(None);
        self.new_host.0.store(fresh.0, Ordering::Relaxed);
        self.new_host.1.store(fresh.1, Ordering::Relaxed);
        let mut h = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.retain(|_, p| Arc::strong_count(p) > 1);
        for (nqn, p) in h.iter() {
            p.set(host(Some(nqn)));
        }
        self.active.store(on, Ordering::Relaxed);
    }

    /// Reserves a command of `bytes` at `now` (for host pair `host`); `None`: go now,
    /// else when.
    pub fn admit(&self, now: Instant, host: Option<&Pair>, bytes: u64) -> Option<Instant> {
        // Counted from a second before the epoch, so that a new bucket has its burst.
        let now_ns = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(EPOCH_LEAD_NS);
        let v = self.volume.reserve(now_ns, bytes);
        let h = host.map_or(now_ns, |p| p.reserve(now_ns, bytes));
        if v > now_ns {
            self.volume.waited.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = host {
                p.waited_volume.fetch_add(1, Ordering::Relaxed);
            }
        }
        if h > now_ns {
            self.host_waits.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = host {
                p.waited.fetch_add(1, Ordering::Relaxed);
            }
        }
        let due = v.max(h);
        (due > now_ns).then(|| self.epoch + Duration::from_nanos(due - EPOCH_LEAD_NS))
    }
}

/// What one peer's hosts did with a volume (or one host through one peer).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Units per second used.
    pub used: f64,
    /// Some of its commands waited for the limit lately.
    pub waited: bool,
}

/// Splits `limit` units per second among peers by what they used and whether they
/// waited (see the module's comment); the shares add up to `limit` (up to rounding
/// down) and each is at least 1.
pub fn split(limit: u64, demands: &[Demand]) -> Vec<u64> {
    let n = demands.len();
    if n == 0 {
        return Vec::new();
    }
    let total = limit as f64;
    let floor = total / (4.0 * n as f64);
    // What each wants: unbounded when it waited.
    let want: Vec<f64> =
        demands.iter().map(|d| if d.waited { f64::INFINITY } else { (d.used * 1.25).max(floor) }).collect();
    // Water-filling: the level at which the shares min(want, level) add up to the
    // limit.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| want[a].total_cmp(&want[b]));
    let mut left = total;
    let mut share = vec![0.0; n];
    for (k, &i) in order.iter().enumerate() {
        let level = left / (n - k) as f64;
        share[i] = want[i].min(level);
        left -= share[i];
    }
    // Nobody wanted it all: the rest goes equally to everyone.
    let extra = left.max(0.0) / n as f64;
    share
        .iter()
        .map(|s| {
            let s = (s + extra).floor().clamp(1.0, total.max(1.0));
            // Between 1 and the limit, a u64: the conversion is exact below 2^53 and
            // limits are far below it.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let s = s as u64;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(v: &[u64]) -> u64 {
        v.iter().sum()
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_spaces_commands_at_its_rate() {
        let b = Bucket::default();
        b.set_rate(1000); // 1 ms per unit; 20 ms of burst: 20 units now.
        let t0 = 10_000_000_000u64;
        let now: Vec<u64> = (0..20).map(|_| b.reserve(t0, 1)).collect();
        assert!(now.iter().all(|&t| t == t0), "{now:?}");
        let next: Vec<u64> = (0..5).map(|_| b.reserve(t0, 1)).collect();
        assert_eq!(next, vec![t0, t0 + 1_000_000, t0 + 2_000_000, t0 + 3_000_000, t0 + 4_000_000]);
        // Idle for a second: the burst again, not a second's worth.
        let t1 = t0 + 1_000_000_000;
        let burst = (0..100).filter(|_| b.reserve(t1, 1) == t1).count();
        assert_eq!(burst, 21, "20 ms of credit plus the unit at the edge");
        // No limit: always now.
        b.set_rate(0);
        assert_eq!(b.reserve(t1, 1_000_000), t1);
    }

    #[test]
    fn a_large_command_under_a_byte_rate_pushes_the_next_one_back() {
        let b = Bucket::default();
        b.set_rate(1 << 20); // 1 MiB/s
        let t0 = 5_000_000_000u64;
        assert_eq!(b.reserve(t0, 1 << 20), t0);
        let second = b.reserve(t0, 4096);
        assert!(second >= t0 + 980_000_000, "{second}");
    }

    #[test]
    fn the_limiter_waits_for_the_stricter_of_volume_and_host_and_counts_who_waited() {
        let l = Limiter::default();
        let h = l.host("nqn.host-a");
        l.set_rates(true, (0, 0), |h| if h.is_some() { (100, 0) } else { (7, 0) });
        assert_eq!(l.host("nqn.host-new").ops.rate(), 7, "a new host starts with the rates for one");
        assert!(l.active());
        let now = Instant::now();
        let waits: Vec<Option<Instant>> = (0..10).map(|_| l.admit(now, Some(&h), 4096)).collect();
        assert!(waits[..3].iter().all(Option::is_none), "2 ms of 100/s is a burst of about 3: {waits:?}");
        let last = waits[9].expect("over the burst");
        assert!(last >= now + Duration::from_millis(60), "{:?}", last - now);
        assert!(h.waited.load(Ordering::Relaxed) >= 6);
        assert_eq!(l.volume.waited.load(Ordering::Relaxed), 0);
        // Another host has no limit; the volume none either.
        l.set_rates(true, (0, 0), |h| if h == Some("nqn.host-a") { (100, 0) } else { (0, 0) });
        let other = l.host("nqn.host-b");
        assert_eq!(l.admit(now, Some(&other), 4096), None);
        // Limits off: everyone goes, hosts no queue holds are forgotten.
        drop(other);
        l.set_rates(false, (0, 0), |_| (0, 0));
        assert!(!l.active());
        assert_eq!(l.hosts().len(), 1, "host a's pair is still held, the others are forgotten");
    }

    #[test]
    fn split_gives_idle_peers_a_floor_and_waiting_peers_the_rest() {
        let d = |used: f64, waited: bool| Demand { used, waited };
        // One peer does all the I/O and waits: it gets all but the others' floors.
        let s = split(1000, &[d(900.0, true), d(0.0, false), d(0.0, false)]);
        assert_eq!(s[1], s[2]);
        assert!(s[1] >= 83 && s[0] >= 830, "{s:?}");
        assert!((998..=1000).contains(&sum(&s)), "{s:?}");
        // Two wait, one uses a little: the little one keeps what it uses and a quarter.
        let s = split(1000, &[d(450.0, true), d(100.0, false), d(450.0, true)]);
        assert_eq!(s[1], 125);
        assert_eq!(s[0], s[2]);
        assert!((998..=1000).contains(&sum(&s)), "{s:?}");
        // Nobody waits and they use little: every share grows by the rest equally.
        let s = split(1000, &[d(100.0, false), d(100.0, false)]);
        assert_eq!(s, vec![500, 500]);
        // Everybody waits: equal shares.
        let s = split(900, &[d(1.0, true), d(800.0, true), d(5.0, true)]);
        assert_eq!(s, vec![300, 300, 300]);
        assert!(split(10, &[]).is_empty());
        // A tiny limit over many peers: never a share of 0 (that would mean no limit).
        assert!(split(1, &[d(0.0, false); 4]).iter().all(|&s| s == 1));
    }

    #[test]
    fn limits_describe_themselves_and_leave_zeroes_out_of_json() {
        let l = Limits { iops: 5000, mib_s: 0, host_iops: 0, host_mib_s: 20 };
        assert_eq!(l.describe(), "5000 IOPS; each host 20 MiB/s");
        assert_eq!(Limits::default().describe(), "-");
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"iops":5000,"host_mib_s":20}"#);
        let back: Limits = serde_json::from_str("{}").unwrap();
        assert!(back.is_none());
        assert!(serde_json::from_str::<Limits>(r#"{"iopz":1}"#).is_err());
    }
}
