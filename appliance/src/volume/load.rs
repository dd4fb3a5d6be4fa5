//! The load monitor: how much I/O each page of each volume takes on this peer.
//!
//! Every reactor counts, per page, the parts of commands it serves from this peer's
//! copy (reads, and writes it orders as the page's leader; not the replica writes it
//! applies for another leader, nor what it forwards): operations and KiB, in
//! [`PageCounters`] of its own (single writer: a relaxed load and store, no
//! read-modify-write on the I/O path). The control thread reads every reactor's
//! counters once a second ([`LoadTracker::tick`]) and keeps, per page, a rate that
//! decays with a half-life of [`HALF_LIFE`]: a page that stops taking I/O is cold
//! again within a minute.
//!
//! Memory per page per peer: 8 bytes per reactor (two `u32` counters, which wrap; the
//! tick takes differences) and 16 bytes in the tracker (the last sums and two `f32`
//! rates): 32 bytes with two reactors, 512 KiB for a 64 GiB volume of 4 MiB pages.
//!
//! Each peer publishes a summary (its totals and its hottest pages per volume) to the
//! group (`/quire/v1/load/<peer>`, under its lease); `quire stats peers` and `quire
//! stats pages VOLUME --top N` read the group's summaries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::VolumeId;

/// Rates halve in this long without I/O.
pub const HALF_LIFE: Duration = Duration::from_secs(10);

/// The hottest pages per volume a peer publishes.
pub const TOP_PUBLISHED: usize = 16;

/// One reactor's counters of one volume: operations and KiB per page.
#[derive(Debug)]
pub struct PageCounters {
    ops: Box<[AtomicU32]>,
    kib: Box<[AtomicU32]>,
}

impl PageCounters {
    /// Counters for `pages` pages, at zero.
    pub fn new(pages: u64) -> PageCounters {
        let n = usize::try_from(pages).expect("a volume's pages fit in memory");
        PageCounters {
            ops: (0..n).map(|_| AtomicU32::new(0)).collect(),
            kib: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Counts one part of `bytes` on `page` (by its reactor only).
    pub fn record(&self, page: u64, bytes: u64) {
        let Some(i) = usize::try_from(page).ok().filter(|&i| i < self.ops.len()) else { return };
        // Single writer: a load and a store, no locked instruction. Wraps.
        let ops = &self.ops[i];
        ops.store(ops.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        let kib = &self.kib[i];
        let add = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        kib.store(kib.load(Ordering::Relaxed).wrapping_add(add), Ordering::Relaxed);
    }

    /// Pages counted.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True for a volume of no page.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn read(&self, i: usize) -> (u32, u32) {
        (self.ops[i].load(Ordering::Relaxed), self.kib[i].load(Ordering::Relaxed))
    }
}

/// The rate of one page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PageRate {
    /// The page.
    pub page: u64,
    /// Operations per second.
    pub ops_s: f32,
    /// KiB per second.
    pub kib_s: f32,
}

struct Tracked {
    counters: Arc<[Arc<PageCounters>]>,
    /// Per page: the sums over the reactors at the last tick.
    last: Vec<(u32, u32)>,
    /// Per page: operations and KiB per second, decaying.
    rate: Vec<(f32, f32)>,
}

/// The control thread's view of every volume's page load.
#[derive(Default)]
pub struct LoadTracker {
    volumes: HashMap<VolumeId, Tracked>,
    last_tick: Option<Instant>,
}

impl LoadTracker {
    /// Every reactor's counters of volume `id` of `pages` pages (made anew when the
    /// volume has grown: the rates start over).
    pub fn counters(&mut self, id: VolumeId, pages: u64, reactors: usize) -> Arc<[Arc<PageCounters>]> {
        let n = usize::try_from(pages).expect("a volume's pages fit in memory");
        let t = self.volumes.entry(id).or_insert_with(|| Tracked {
            counters: Arc::from(Vec::new()),
            last: Vec::new(),
            rate: Vec::new(),
        });
        if t.counters.len() != reactors || t.counters.first().map_or(usize::MAX, |c| c.len()) != n {
            t.counters = (0..reactors).map(|_| Arc::new(PageCounters::new(pages))).collect();
            t.last = vec![(0, 0); n];
            t.rate = vec![(0.0, 0.0); n];
        }
        t.counters.clone()
    }

    /// Forgets a deleted volume.
    pub fn forget(&mut self, id: VolumeId) {
        self.volumes.remove(&id);
    }

    /// Takes the counts since the last tick into the rates (at most once a second);
    /// true when it did.
    pub fn tick(&mut self, now: Instant) -> bool {
        let Some(last) = self.last_tick else {
            self.last_tick = Some(now);
            return false;
        };
        let dt = now.duration_since(last);
        if dt < Duration::from_secs(1) {
            return false;
        }
        self.last_tick = Some(now);
        let secs = dt.as_secs_f32();
        // The weight of the new sample: a rate decays by half over HALF_LIFE.
        let keep = 0.5f32.powf(secs / HALF_LIFE.as_secs_f32());
        for t in self.volumes.values_mut() {
            for i in 0..t.last.len() {
                let (mut ops, mut kib) = (0u32, 0u32);
                for c in t.counters.iter() {
                    let (o, k) = c.read(i);
                    ops = ops.wrapping_add(o);
                    kib = kib.wrapping_add(k);
                }
                let (lo, lk) = t.last[i];
                t.last[i] = (ops, kib);
                let d_ops = ops.wrapping_sub(lo) as f32 / secs;
                let d_kib = kib.wrapping_sub(lk) as f32 / secs;
                let r = &mut t.rate[i];
                *r = (keep * r.0 + (1.0 - keep) * d_ops, keep * r.1 + (1.0 - keep) * d_kib);
            }
        }
        true
    }

    /// The `n` pages of volume `id` with the most operations per second (ties: more
    /// KiB, then the lowest page), idle pages left out.
    pub fn top(&self, id: VolumeId, n: usize) -> Vec<PageRate> {
        let Some(t) = self.volumes.get(&id) else { return Vec::new() };
        let mut all: Vec<PageRate> = t
            .rate
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 >= 0.01)
            .map(|(p, &(ops_s, kib_s))| PageRate { page: p as u64, ops_s, kib_s })
            .collect();
        all.sort_by(|a, b| b.ops_s.total_cmp(&a.ops_s).then(b.kib_s.total_cmp(&a.kib_s)).then(a.page.cmp(&b.page)));
        all.truncate(n);
        all
    }

    /// Volume `id`'s operations and KiB per second on this peer.
    pub fn total(&self, id: VolumeId) -> (f32, f32) {
        self.volumes.get(&id).map_or((0.0, 0.0), |t| t.rate.iter().fold((0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1)))
    }
}

/// The rates of each host on each volume served here (`quire stats hosts`), from the
/// controllers' I/O queue counts (`nvmf::ctrlr::HostIo`), decaying like the pages'.
#[derive(Debug, Default)]
pub struct HostRates {
    /// Each controller's totals at the last tick (operations, bytes, latency ns).
    last: HashMap<u16, (u64, u64, u64)>,
    /// (host NQN, volume name) → rates.
    pub rates: std::collections::BTreeMap<(String, String), HostRate>,
    /// The (host NQN, volume name) pairs with a controller here at the last tick.
    pub connected: std::collections::BTreeSet<(String, String)>,
    last_tick: Option<Instant>,
}

/// A controller's I/O totals: its id, host NQN, volume name, and its reads and writes
/// completed, their bytes and latencies summed (ns).
pub type ControllerIo = (u16, String, String, (u64, u64, u64));

/// One host's rates on one volume.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostRate {
    /// Reads and writes per second.
    pub ops_s: f32,
    /// KiB per second.
    pub kib_s: f32,
    /// Mean latency of its reads and writes, µs.
    pub latency_us: f32,
    /// Reads and writes per second over the last seconds ([`FAST_HALF_LIFE`]): what
    /// the split of a volume's limits among peers follows (`volume::qos`).
    pub fast_ops_s: f32,
    /// KiB per second over the last seconds.
    pub fast_kib_s: f32,
}

/// The half-life of [`HostRate::fast_ops_s`]: a host that stops gives up its share of
/// a limit within seconds.
pub const FAST_HALF_LIFE: Duration = Duration::from_secs(2);

impl HostRates {
    /// Takes the controllers' totals (cntlid, host, volume, totals) into the rates, at
    /// most once a second; hosts whose rates have decayed to nothing and that have no
    /// controller here any more are forgotten.
    pub fn tick(&mut self, now: Instant, controllers: impl IntoIterator<Item = ControllerIo>) {
        let secs = match self.last_tick {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => return,
            Some(t) => now.duration_since(t).as_secs_f32(),
            None => 0.0,
        };
        self.last_tick = Some(now);
        let mut delta: std::collections::BTreeMap<(String, String), (u64, u64, u64)> = Default::default();
        let mut seen = HashMap::new();
        self.connected.clear();
        for (cntlid, host, volume, t) in controllers {
            self.connected.insert((host.clone(), volume.clone()));
            let before = self.last.get(&cntlid).copied().unwrap_or((0, 0, 0));
            let d = delta.entry((host, volume)).or_default();
            d.0 += t.0.saturating_sub(before.0);
            d.1 += t.1.saturating_sub(before.1);
            d.2 += t.2.saturating_sub(before.2);
            seen.insert(cntlid, t);
        }
        self.last = seen;
        if secs == 0.0 {
            return;
        }
        let keep = 0.5f32.powf(secs / HALF_LIFE.as_secs_f32());
        let keep_fast = 0.5f32.powf(secs / FAST_HALF_LIFE.as_secs_f32());
        for r in self.rates.values_mut() {
            r.ops_s *= keep;
            r.kib_s *= keep;
            r.fast_ops_s *= keep_fast;
            r.fast_kib_s *= keep_fast;
        }
        for (key, (ops, bytes, ns)) in &delta {
            let r = self.rates.entry(key.clone()).or_default();
            r.ops_s += (1.0 - keep) * (*ops as f32 / secs);
            r.kib_s += (1.0 - keep) * (*bytes as f32 / 1024.0 / secs);
            r.fast_ops_s += (1.0 - keep_fast) * (*ops as f32 / secs);
            r.fast_kib_s += (1.0 - keep_fast) * (*bytes as f32 / 1024.0 / secs);
            if *ops > 0 {
                let mean = *ns as f32 / *ops as f32 / 1000.0;
                r.latency_us = if r.latency_us == 0.0 { mean } else { keep * r.latency_us + (1.0 - keep) * mean };
            }
        }
        self.rates.retain(|k, r| r.ops_s >= 0.001 || delta.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_rates_that_decay_and_the_top_pages_come_first() {
        let mut t = LoadTracker::default();
        let id = VolumeId(1);
        let c = t.counters(id, 8, 2);
        let start = Instant::now();
        t.tick(start);
        // Page 3 takes 100 ops of 4 KiB a second on reactor 0 and 100 on reactor 1,
        // page 5 ten, for 30 s.
        for s in 1..=30u64 {
            for _ in 0..100 {
                c[0].record(3, 4096);
                c[1].record(3, 4096);
            }
            for _ in 0..10 {
                c[1].record(5, 512);
            }
            t.tick(start + Duration::from_secs(s));
        }
        let top = t.top(id, 4);
        assert_eq!(top.iter().map(|r| r.page).collect::<Vec<_>>(), vec![3, 5], "idle pages left out");
        assert!((top[0].ops_s - 200.0).abs() < 30.0 && (top[0].kib_s - 800.0).abs() < 120.0, "{top:?}");
        assert!((top[1].ops_s - 10.0).abs() < 2.0, "{top:?}");
        // Idle for a half-life: about half.
        t.tick(start + Duration::from_secs(40));
        let r = t.top(id, 1)[0];
        assert!((r.ops_s - top[0].ops_s / 2.0).abs() < 10.0, "{r:?} against {:?}", top[0]);
        // Grown: new counters, rates start over; the old counters' counts are gone.
        let c2 = t.counters(id, 16, 2);
        assert_eq!(c2[0].len(), 16);
        assert!(t.top(id, 4).is_empty());
        assert_eq!(t.total(VolumeId(9)), (0.0, 0.0));
    }

    #[test]
    fn counters_wrap_without_harm() {
        let mut t = LoadTracker::default();
        let id = VolumeId(2);
        let c = t.counters(id, 1, 1);
        c[0].ops[0].store(u32::MAX - 5, Ordering::Relaxed);
        t.volumes.get_mut(&id).unwrap().last[0] = (u32::MAX - 5, 0);
        let start = Instant::now();
        assert!(!t.tick(start), "the first tick only starts the clock");
        assert!(!t.tick(start + Duration::from_millis(500)), "at most once a second");
        assert!(t.tick(start + Duration::from_secs(1)));
        assert!(t.top(id, 1).is_empty(), "nothing since");
        for _ in 0..10 {
            c[0].record(0, 1024);
        }
        t.tick(start + Duration::from_secs(2));
        let r = t.top(id, 1)[0];
        assert!(r.ops_s > 0.0 && r.ops_s < 10.0, "{r:?}");
    }

    #[test]
    fn host_rates_follow_each_host_on_each_volume_and_forget_idle_ones() {
        let mut h = HostRates::default();
        let t0 = Instant::now();
        let ctl = |cntlid, host: &str, ops, bytes, ns| (cntlid, host.to_string(), "v".to_string(), (ops, bytes, ns));
        h.tick(t0, [ctl(1, "h1", 0, 0, 0)]);
        assert!(h.rates.is_empty());
        // 1000 ops of 4 KiB in a second at 50 µs each, on two controllers of h1.
        let t1 = t0 + Duration::from_secs(1);
        h.tick(t1, [ctl(1, "h1", 600, 600 * 4096, 600 * 50_000), ctl(2, "h1", 400, 400 * 4096, 400 * 50_000)]);
        let r = h.rates[&("h1".to_string(), "v".to_string())];
        let weight = 1.0 - 0.5f32.powf(0.1);
        assert!((r.ops_s - 1000.0 * weight).abs() < 1.0, "{r:?}");
        assert!((r.kib_s - 4000.0 * weight).abs() < 4.0, "{r:?}");
        assert!((r.latency_us - 50.0).abs() < 0.01, "{r:?}");
        // Too soon: nothing changes.
        h.tick(t1 + Duration::from_millis(10), [ctl(1, "h1", 10_000, 0, 0)]);
        assert_eq!(h.rates[&("h1".to_string(), "v".to_string())], r);
        // Controllers gone, minutes without I/O: forgotten.
        h.tick(t1 + Duration::from_secs(300), []);
        assert!(h.rates.is_empty(), "{:?}", h.rates);
    }
}
