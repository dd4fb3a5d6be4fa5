//! A deterministic simulation of the replication protocol, driven by one seed.
//!
//! The coordinator's decisions are the real ones ([`super::plan::plan_volume`] on real
//! [`VolumeRecord`]s); the data path follows the rules of `volume/io.rs`,
//! `peer/server.rs` and [`super::copier`] / [`super::rebuild`] in a model small enough
//! to explore: a few peers, a few pages of a few blocks (a piece per block), one etcd
//! with leases, and a network that delays, reorders and partitions messages, with
//! peers that crash and restart. Simulated time, no threads: a failing seed replays
//! exactly.
//!
//! What is modelled:
//! - etcd: the volume record (compare-and-swap by revision), one lease per peer run
//!   (renewed every TTL/3 by a peer that reaches etcd, expired TTL after its last
//!   renewal), revocation records of a restarted peer's previous run;
//! - a peer: the record it installed last (watch delay; nothing while cut off from
//!   etcd), its fence (a renewal *sent* at t keeps it until t + 0.9·TTL), per block a
//!   lock and the pieces each member position missed, its copy of every block
//!   (durable: a crash keeps it), writes it leads in flight, rebuild copies;
//! - the coordinator: the first live peer that reaches etcd, planning every 100 ms;
//! - operators: a page moved to a peer that does not hold it (`quire page move`), a
//!   peer drained and undrained (`quire peer drain`), at random moments;
//! - the rebalancer ([`super::rebalance::decide_with`] and
//!   [`super::rebalance::confirm_load`], the real ones) on every plan that changes
//!   nothing, with peers of weights 1 and 2: it moves pages back towards their ideal
//!   share after every operator's move and drain, and hot pages off a busy peer from
//!   the load each peer served (reported every 5 s);
//! - a host: one write at a time per block (numbered versions), reads, each sent to
//!   a random peer, retried on any error until it succeeds; half of its I/O goes to
//!   page 0.
//!
//! Checked: every read returns at least the last version acknowledged before it was
//! sent (no stale read, no lost write visible); at the end, with every peer back and
//! connected and every set in sync, every copy of every block holds the last
//! acknowledged version (no lost write, no divergence).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::plan::{plan_volume, PeerInfo, PlanInput};
use super::set::{MemberState, Role, SetRecord};
use crate::group::keys::VolumeRecord;

/// The shape of one simulation.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Peers.
    pub peers: u16,
    /// Copies of each page.
    pub replicas: u8,
    /// Pages, and blocks per page.
    pub pages: u16,
    /// Blocks per page.
    pub blocks: u16,
    /// Simulated ms of faults and load, before the healing phase.
    pub run_ms: u64,
    /// Lease TTL, ms.
    pub ttl_ms: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig { peers: 3, replicas: 2, pages: 3, blocks: 4, run_ms: 30_000, ttl_ms: 3_000 }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Writes acknowledged to the host.
    pub acked_writes: u64,
    /// Reads answered.
    pub reads: u64,
    /// Host retries (errors, timeouts).
    pub retries: u64,
    /// Crashes, partitions.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Records the coordinator wrote.
    pub plans: u64,
    /// Promotions.
    pub promotions: u64,
    /// Moves of a page started by the operator (or a drain).
    pub moves: u64,
    /// Moves the rebalancer started.
    pub rebalanced: u64,
    /// Of those, moves for load (a hot page).
    pub load_moves: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

type Block = (u16, u16);

#[derive(Clone, Debug)]
enum Msg {
    /// Host → entry peer, or entry peer → leader: write `v` to `b`, sent by the host
    /// at `born` (a write still waiting for its piece after the hold time fails).
    Write { id: u64, b: Block, v: u64, hops: u8, born: u64 },
    /// Host → entry peer, or entry → leader: read `b`.
    Read { id: u64, b: Block, hops: u8 },
    /// Answer to a host write/read (to the host, or back through the entry peer).
    Done { id: u64, ok: bool, v: u64, by: u16 },
    /// Leader → member: apply `v` to `b` (a replica write or a rebuild copy).
    Rep { wid: u64, b: Block, v: u64, epoch: u64 },
    /// Member → leader.
    RepDone { wid: u64, outcome: RepOutcome },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepOutcome {
    Ok,
    NotOwner,
    Behind,
}

#[derive(Debug)]
enum Ev {
    Deliver { from: Option<u16>, to: Option<u16>, msg: Msg },
    Renew(u16, i64),
    RenewAck(u16, u64, i64),
    Install(u16),
    Coordinate,
    Tick,
    Chaos,
    RepRetry(u16, u64),
    HostRetry(u64),
}

/// A write this peer leads, waiting for its members.
#[derive(Clone, Debug)]
struct Lead {
    b: Block,
    v: u64,
    /// Who asked (peer, or host) and its id.
    reply: (Option<u16>, u64),
    /// Member peer → waiting (true) or done.
    waiting: BTreeMap<u16, bool>,
    /// A rebuild copy to this member, not a host write.
    copy: Option<u16>,
}

#[derive(Default)]
struct Peer {
    alive: bool,
    lease: Option<i64>,
    boot: u64,
    view: Option<VolumeRecord>,
    fence_until: u64,
    fence_lease: i64,
    data: BTreeMap<Block, u64>,
    locks: BTreeMap<Block, u64>,
    /// Block → member positions that missed it.
    missed: BTreeMap<Block, u8>,
    leads: BTreeMap<u64, Lead>,
    /// Host requests this (entry) peer forwarded: forwarded id → original sender.
    relays: BTreeMap<u64, (Option<u16>, u64)>,
    /// Copies started, by set, page, member (peer, incarnation) and the member's
    /// position (a member that moves up a position is copied to afresh: what it
    /// missed is kept by position); true once the member's promotion was asked for
    /// (nothing starts again until the record says what became of it). An entry goes
    /// when the member is no longer being rebuilt in this peer's view, so that the
    /// same member added again later is copied to afresh.
    copying: BTreeMap<(u16, u16, u16, i64, usize), bool>,
    /// Writes waiting for a lock.
    queued: Vec<(Option<u16>, u64, Block, u64, u64)>,
    /// Led writes with a resend scheduled (one at a time per write).
    retrying: std::collections::BTreeSet<u64>,
}

struct Host {
    /// Block → the last version acknowledged, and the write in flight.
    acked: BTreeMap<Block, u64>,
    inflight: BTreeMap<Block, (u64, u64)>,
    /// Request id → (block, version for writes or None for reads, acked version
    /// when the read was sent, the id of the send the host waits for). The host never
    /// has two sends of one request out (like Linux, it retries a command only once
    /// it failed, or after a timeout longer than any peer holds it).
    reqs: BTreeMap<u64, (Block, Option<u64>, u64, u64)>,
    /// Send id → request id.
    sends: BTreeMap<u64, u64>,
    next_version: u64,
}

/// A simulation.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    peers: Vec<Peer>,
    /// etcd: the record and its revision, leases (peer → lease, last renewal),
    /// revocations first seen by the coordinator.
    record: VolumeRecord,
    revision: u64,
    leases: BTreeMap<u16, (i64, u64)>,
    revoked: BTreeMap<(u16, i64), u64>,
    next_lease: i64,
    /// Cut: peer-to-peer links (unordered pairs) and peers cut from etcd.
    cut_links: Vec<(u16, u16)>,
    cut_etcd: Vec<u16>,
    host: Host,
    next_id: u64,
    healing: bool,
    /// The peer being drained, if one is.
    drained: Option<u16>,
    /// The load monitor: operations each peer served per page since the last report
    /// (every 5 s), the reports' sum as the coordinator reads it, the rebalancer's
    /// candidate move for load, and its last such move.
    served: BTreeMap<(u16, u16), u64>,
    loads: super::rebalance::LoadInput,
    reported_at: u64,
    load_candidate: Option<super::rebalance::LoadCandidate>,
    last_load_move: Option<u64>,
    stats: SimStats,
    log: Vec<String>,
}

const HOST: Option<u16> = None;
/// How long a peer holds a write waiting for its piece before failing it.
const HOLD: u64 = 2_000;
/// How long the host waits for an answer before sending again.
const HOST_TIMEOUT: u64 = 4_000;

impl Sim {
    /// A simulation of `cfg` from `seed`.
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let n = usize::from(cfg.peers);
        let mut sim = Sim {
            cfg,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            peers: (0..n).map(|_| Peer::default()).collect(),
            record: VolumeRecord {
                id: 1,
                name: "sim".into(),
                uuid: String::new(),
                nguid: String::new(),
                page_size: 4 << 20,
                block_size: 4096,
                num_pages: 0,
                epoch: 1,
                replicas: cfg.replicas,
                sets: Vec::new(),
                pages: String::new(),
                limits: Default::default(),
                pinned: Vec::new(),
                owners: String::new(),
            },
            revision: 1,
            leases: BTreeMap::new(),
            revoked: BTreeMap::new(),
            next_lease: 100,
            cut_links: Vec::new(),
            cut_etcd: Vec::new(),
            host: Host {
                acked: BTreeMap::new(),
                inflight: BTreeMap::new(),
                reqs: BTreeMap::new(),
                sends: BTreeMap::new(),
                next_version: 1,
            },
            next_id: 1,
            healing: false,
            drained: None,
            served: BTreeMap::new(),
            loads: super::rebalance::LoadInput::default(),
            reported_at: 0,
            load_candidate: None,
            last_load_move: None,
            stats: SimStats::default(),
            log: Vec::new(),
        };
        for p in 0..cfg.peers {
            sim.start_peer(p);
        }
        // One set per page, spread round-robin, every member in sync.
        let mut page_sets = Vec::new();
        for page in 0..cfg.pages {
            let members: Vec<(u16, i64)> = (0..u16::from(cfg.replicas))
                .map(|k| {
                    let peer = (page + k) % cfg.peers;
                    (peer, sim.peers[usize::from(peer)].lease.expect("started"))
                })
                .collect();
            sim.record.sets.push(SetRecord::fresh(&members));
            page_sets.push(page);
        }
        sim.record.set_page_sets(&page_sets);
        for p in 0..cfg.peers {
            sim.peers[usize::from(p)].view = Some(sim.record.clone());
        }
        sim.at(0, Ev::Coordinate);
        sim.at(0, Ev::Tick);
        sim.at(500, Ev::Chaos);
        sim
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue.push(Reverse((self.now + delay, self.seq, self.events.len() - 1)));
    }

    fn note(&mut self, s: String) {
        if self.log.len() > 400 {
            self.log.remove(0);
        }
        self.log.push(format!("{:>7} {s}", self.now));
    }

    fn start_peer(&mut self, p: u16) {
        let lease = self.next_lease;
        self.next_lease += 1;
        let pi = usize::from(p);
        if let Some(old) = self.peers[pi].lease {
            // The next run revokes the previous run's lease, saying so first.
            self.revoked.entry((p, old)).or_insert(self.now);
            self.leases.remove(&p);
        }
        let peer = &mut self.peers[pi];
        peer.alive = true;
        peer.lease = Some(lease);
        peer.fence_until = self.now + self.cfg.ttl_ms * 9 / 10;
        peer.fence_lease = lease;
        peer.locks.clear();
        peer.missed.clear();
        peer.leads.clear();
        peer.relays.clear();
        peer.copying.clear();
        peer.queued.clear();
        peer.retrying.clear();
        peer.view = Some(self.record.clone());
        self.leases.insert(p, (lease, self.now));
        let ttl = self.cfg.ttl_ms;
        self.at(ttl / 3, Ev::Renew(p, lease));
    }

    fn reaches_etcd(&self, p: u16) -> bool {
        self.peers[usize::from(p)].alive && !self.cut_etcd.contains(&p)
    }

    fn linked(&self, a: u16, b: u16) -> bool {
        a == b || !self.cut_links.iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    fn send(&mut self, from: Option<u16>, to: Option<u16>, msg: Msg) {
        let d = 1 + self.rng.below(15);
        self.at(d, Ev::Deliver { from, to, msg });
    }

    /// Runs to the end; Err with the reason and the last events on a violation.
    pub fn run(mut self) -> Result<SimStats, String> {
        let end = self.cfg.run_ms;
        let limit = end + 120_000;
        let (mut same, mut last) = (0u64, u64::MAX);
        while let Some(Reverse((t, _, i))) = self.queue.pop() {
            if t == last {
                same += 1;
                if same > 100_000 {
                    return Err(self.fail(format!("more than 100000 events at {t} ms: a loop")));
                }
            } else {
                (same, last) = (0, t);
            }
            if t > limit {
                return Err(self.fail(format!("not healed {} ms after the faults stopped", limit - end)));
            }
            self.now = t;
            if !self.healing && t >= end {
                self.heal();
            }
            let ev = self.events[i].take().expect("an event runs once");
            if same > 99_980 {
                self.note(format!("{ev:?}"));
            }
            if let Err(e) = self.step(ev) {
                return Err(self.fail(e));
            }
            if self.healing && self.quiet() {
                return self.final_check().map_err(|e| self.fail(e));
            }
        }
        Err(self.fail("the simulation ran out of events".into()))
    }

    fn fail(&self, why: String) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "peer {i}: alive {} lease {:?} etcd lease {:?} view epoch {:?} fence {} leads {:?} locks {:?}",
                    p.alive,
                    p.lease,
                    self.leases.get(&u16::try_from(i).expect("few")),
                    p.view.as_ref().map(|v| v.epoch),
                    self.fence_holds(u16::try_from(i).expect("few")),
                    p.leads.values().map(|l| (l.b, l.copy, l.waiting.clone())).collect::<Vec<_>>(),
                    p.locks,
                )
            })
            .collect();
        format!(
            "{why}\nrecord (epoch {}): {:?}\n{}\nlast events:\n{}",
            self.record.epoch,
            self.record.sets,
            peers.join("\n"),
            self.log.join("\n")
        )
    }

    fn heal(&mut self) {
        self.healing = true;
        self.cut_links.clear();
        self.cut_etcd.clear();
        for p in 0..self.cfg.peers {
            if !self.peers[usize::from(p)].alive {
                self.start_peer(p);
            }
            self.at(1, Ev::Install(p));
        }
        self.note("heal: every peer up and connected".into());
    }

    /// Healed, every set in sync on every peer's view, nothing in flight.
    /// The sets that hold pages (a page that moved left its old set empty).
    fn sets_in_use(&self) -> Vec<&SetRecord> {
        let page_sets = self.record.page_sets().unwrap_or_default();
        let mut used: Vec<usize> = page_sets.iter().map(|&s| usize::from(s)).collect();
        used.sort_unstable();
        used.dedup();
        used.into_iter().filter_map(|i| self.record.sets.get(i)).collect()
    }

    fn quiet(&self) -> bool {
        let sets = self.sets_in_use();
        self.host.inflight.is_empty()
            && sets.iter().all(|s| s.mv.is_none() && s.members.iter().all(|m| m.state == MemberState::Sync))
            && sets.iter().all(|s| {
                s.members.iter().all(|m| self.peers[usize::from(m.peer)].lease == Some(m.inc))
                    && s.members.len() == usize::from(self.cfg.replicas)
            })
            && self
                .peers
                .iter()
                .all(|p| p.leads.is_empty() && p.view.as_ref().map(|v| v.epoch) == Some(self.record.epoch))
    }

    fn final_check(&self) -> Result<SimStats, String> {
        let page_sets = self.record.page_sets().map_err(|e| e.to_string())?;
        for (page, &si) in page_sets.iter().enumerate() {
            let page = u16::try_from(page).expect("few pages");
            let s = &self.record.sets[usize::from(si)];
            for block in 0..self.cfg.blocks {
                let b = (page, block);
                let want = self.host.acked.get(&b).copied().unwrap_or(0);
                for m in &s.members {
                    let got = self.peers[usize::from(m.peer)].data.get(&b).copied().unwrap_or(0);
                    if got != want {
                        return Err(format!(
                            "block {b:?}: member {} holds version {got}, the last acknowledged is {want}",
                            m.peer
                        ));
                    }
                }
            }
        }
        Ok(self.stats.clone())
    }

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Tick => {
                self.host_turn();
                for p in 0..self.cfg.peers {
                    self.rebuild_turn(p);
                    self.retry_queued(p);
                }
                self.at(5, Ev::Tick);
            }
            Ev::Chaos => {
                if !self.healing {
                    self.chaos();
                    let d = 200 + self.rng.below(1500);
                    self.at(d, Ev::Chaos);
                }
            }
            Ev::Coordinate => {
                self.expire_leases();
                self.coordinate();
                self.at(100, Ev::Coordinate);
            }
            Ev::Renew(p, lease) => {
                let peer = &self.peers[usize::from(p)];
                if peer.alive && peer.lease == Some(lease) {
                    if self.reaches_etcd(p) && self.leases.get(&p).is_none_or(|&(l, _)| l != lease) {
                        // Its lease expired while etcd was out of reach: it registers
                        // again, under a new lease (a new incarnation to the sets).
                        let new = self.next_lease;
                        self.next_lease += 1;
                        self.leases.insert(p, (new, self.now));
                        let peer = &mut self.peers[usize::from(p)];
                        peer.lease = Some(new);
                        peer.fence_until = self.now + self.cfg.ttl_ms * 9 / 10;
                        peer.fence_lease = new;
                        self.note(format!("{p} registers again (lease {new})"));
                        self.at(self.cfg.ttl_ms / 3, Ev::Renew(p, new));
                        self.at(1, Ev::Install(p));
                        return Ok(());
                    }
                    if self.reaches_etcd(p) {
                        let sent = self.now;
                        // Reaches etcd after a delay: renewed there if not expired yet.
                        let d = 1 + self.rng.below(10);
                        if let Some(&(l, last)) = self.leases.get(&p) {
                            if l == lease && self.now + d < last + self.cfg.ttl_ms {
                                self.leases.insert(p, (l, self.now + d));
                                let back = d + 1 + self.rng.below(10);
                                self.at(back, Ev::RenewAck(p, sent, l));
                            }
                        }
                    }
                    self.at(self.cfg.ttl_ms / 3, Ev::Renew(p, lease));
                }
            }
            Ev::RenewAck(p, sent, lease) => {
                let peer = &mut self.peers[usize::from(p)];
                if peer.alive && peer.lease == Some(lease) {
                    peer.fence_until = sent + self.cfg.ttl_ms * 9 / 10;
                    peer.fence_lease = lease;
                }
            }
            Ev::Install(p) => {
                if self.reaches_etcd(p) {
                    let r = self.record.clone();
                    self.install(p, r);
                }
            }
            Ev::Deliver { from, to, msg } => self.deliver(from, to, msg)?,
            Ev::RepRetry(p, wid) => self.rep_retry(p, wid),
            Ev::HostRetry(id) => self.host_retry(id),
        }
        Ok(())
    }

    fn chaos(&mut self) {
        let n = self.cfg.peers;
        match self.rng.below(10) {
            0..=2 => {
                // A crash, or a restart of a dead peer.
                let p = u16::try_from(self.rng.below(u64::from(n))).expect("few peers");
                let dead = self.peers.iter().filter(|x| !x.alive).count();
                if self.peers[usize::from(p)].alive && dead == 0 {
                    self.peers[usize::from(p)].alive = false;
                    self.stats.crashes += 1;
                    self.note(format!("crash {p}"));
                } else if !self.peers[usize::from(p)].alive {
                    if self.rng.chance(300) {
                        self.peers[usize::from(p)].boot += 1;
                    }
                    self.start_peer(p);
                    self.at(1, Ev::Install(p));
                    self.note(format!("restart {p}"));
                }
            }
            // A peer cut from etcd, from its peers, or both.
            3..=4 if self.cut_links.is_empty() && self.cut_etcd.is_empty() => {
                let p = u16::try_from(self.rng.below(u64::from(n))).expect("few peers");
                match self.rng.below(3) {
                    0 => self.cut_etcd.push(p),
                    1 => (0..n).filter(|&q| q != p).for_each(|q| self.cut_links.push((p, q))),
                    _ => {
                        self.cut_etcd.push(p);
                        (0..n).filter(|&q| q != p).for_each(|q| self.cut_links.push((p, q)));
                    }
                }
                self.stats.partitions += 1;
                self.note(format!("partition {p}: etcd {:?} links {:?}", self.cut_etcd, self.cut_links));
            }
            // A page moves to a peer that does not hold it (`quire page move`).
            7 => {
                let page = self.rng.below(u64::from(self.cfg.pages));
                let to = u16::try_from(self.rng.below(u64::from(n))).expect("few peers");
                let Some(&(lease, _)) = self.leases.get(&to) else { return };
                if let Ok(next) = super::migration::start_page(&self.record, page, None, (to, lease), self.now) {
                    self.stats.moves += 1;
                    self.note(format!("move page {page} to {to}"));
                    self.put_record(next);
                }
            }
            // A peer drained (its copies move away), or drained no more.
            8 => {
                self.drained = match self.drained {
                    Some(_) => None,
                    None => Some(u16::try_from(self.rng.below(u64::from(n))).expect("few peers")),
                };
                self.note(format!("drained: {:?}", self.drained));
            }
            5..=6 if !self.cut_links.is_empty() || !self.cut_etcd.is_empty() => {
                self.cut_links.clear();
                let back = std::mem::take(&mut self.cut_etcd);
                for p in back {
                    self.at(1, Ev::Install(p));
                }
                self.note("partition healed".into());
            }
            _ => {}
        }
    }

    fn expire_leases(&mut self) {
        let ttl = self.cfg.ttl_ms;
        let now = self.now;
        let gone: Vec<u16> = self.leases.iter().filter(|(_, &(_, last))| now >= last + ttl).map(|(&p, _)| p).collect();
        for p in gone {
            self.leases.remove(&p);
            self.note(format!("lease of {p} expired"));
        }
    }

    fn coordinate(&mut self) {
        let Some(c) = (0..self.cfg.peers).find(|&p| self.reaches_etcd(p) && self.leases.contains_key(&p)) else {
            return;
        };
        if self.now >= self.reported_at + 5_000 {
            self.report_load();
        }
        self.loads.last_move_ms = self.last_load_move;
        let peers: BTreeMap<u16, PeerInfo> = (0..self.cfg.peers)
            .map(|p| {
                let info = PeerInfo {
                    lease: self.leases.get(&p).map(|&(l, _)| l),
                    weight: 1 + u64::from(p % 2),
                    boot: format!("boot-{}", self.peers[usize::from(p)].boot),
                    draining: self.drained == Some(p),
                };
                (p, info)
            })
            .collect();
        let input = PlanInput {
            now_ms: self.now,
            ttl_ms: self.cfg.ttl_ms,
            replace_after_ms: 8_000,
            peers: &peers,
            revoked: &self.revoked,
        };
        if let Some((next, why)) = plan_volume(&self.record, &input) {
            self.stats.plans += 1;
            self.note(format!("coordinator {c}: {}", why.join("; ")));
            self.put_record(next);
            return;
        }
        // The rebalancer, on a record the plan leaves as it is (peers weigh 1 or 2),
        // for capacity and then for load, from the peers' reports of every 5 s.
        let vols = BTreeMap::from([(self.record.name.clone(), self.record.clone())]);
        let policy =
            super::rebalance::Policy { enabled: true, paused: false, tolerance_pct: 10, moves_max: 2, batch_max: 2 };
        let decision = super::rebalance::decide_with(&vols, &input, &policy, &self.loads);
        let (decision, candidate) =
            super::rebalance::confirm_load(decision, self.load_candidate.as_ref(), self.now, |id| format!("peer {id}"));
        self.load_candidate = candidate;
        if let super::rebalance::Decision::Move { pages, from, to, load, .. } = decision {
            if let Ok(next) =
                super::migration::start_pages(&self.record, &pages, Some(from.peer), (to.0.peer, to.1), self.now)
            {
                self.stats.rebalanced += 1;
                if load.is_some() {
                    self.stats.load_moves += 1;
                    self.last_load_move = Some(self.now);
                }
                let why = if load.is_some() { "for load" } else { "for capacity" };
                self.note(format!(
                    "coordinator {c}: rebalance pages {pages:?} from {} to {} {why}",
                    from.peer, to.0.peer
                ));
                self.put_record(next);
            }
        }
    }

    /// The peers' load reports as the coordinator reads them: each peer's operations
    /// per 1000 s over the last 5 s, and its pages hottest first.
    fn report_load(&mut self) {
        let secs = (self.now - self.reported_at).max(1);
        self.reported_at = self.now;
        let per_milli = |ops: u64| ops * 1_000_000 / secs;
        let mut loads = super::rebalance::LoadInput {
            tolerance_pct: 50,
            min_milli: 1_000,
            every_ms: 10_000,
            ..super::rebalance::LoadInput::default()
        };
        for p in 0..self.cfg.peers {
            loads.ops_milli.insert(p, 0);
        }
        for (&(peer, page), &ops) in &self.served {
            *loads.ops_milli.entry(peer).or_default() += per_milli(ops);
            loads.hot.entry(peer).or_default().push((self.record.name.clone(), u64::from(page), per_milli(ops)));
        }
        for hot in loads.hot.values_mut() {
            hot.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        }
        self.served.clear();
        self.loads = loads;
    }

    fn put_record(&mut self, next: VolumeRecord) {
        self.record = next;
        self.revision += 1;
        for p in 0..self.cfg.peers {
            let d = 1 + self.rng.below(30);
            self.at(d, Ev::Install(p));
        }
    }

    fn install(&mut self, p: u16, r: VolumeRecord) {
        let pi = usize::from(p);
        if !self.peers[pi].alive {
            return;
        }
        if self.peers[pi].view.as_ref().is_some_and(|v| v.epoch >= r.epoch) {
            return;
        }
        self.peers[pi].view = Some(r);
        // Writes this peer leads whose member was evicted meanwhile complete without
        // it, their blocks marked as missed by its position.
        // (Members still taking writes are not sent to again: their copy is on the way,
        // as on a live link.)
        let wids: Vec<u64> = self.peers[pi].leads.keys().copied().collect();
        for wid in wids {
            self.rep_check(p, wid, false);
        }
    }

    fn view_set(&self, p: u16, page: u16) -> Option<&SetRecord> {
        let v = self.peers[usize::from(p)].view.as_ref()?;
        let s = v.page_sets().ok()?[usize::from(page)];
        v.sets.get(usize::from(s))
    }

    fn my_member(&self, p: u16, s: &SetRecord) -> Option<(usize, Role)> {
        let lease = self.peers[usize::from(p)].lease?;
        s.members.iter().position(|m| m.peer == p && m.inc == lease).map(|k| (k, s.members[k].state.role()))
    }

    fn fence_holds(&self, p: u16) -> bool {
        let peer = &self.peers[usize::from(p)];
        peer.lease == Some(peer.fence_lease) && self.now < peer.fence_until
    }

    // ----- host -----------------------------------------------------------------

    fn host_turn(&mut self) {
        if self.healing && self.host.inflight.is_empty() {
            return;
        }
        for _ in 0..2 {
            // Skewed: half of the I/O goes to page 0 (a hot page for the rebalancer).
            let page = if self.rng.chance(500) { 0 } else { self.rng.below(u64::from(self.cfg.pages)) };
            let b = (
                u16::try_from(page).expect("few"),
                u16::try_from(self.rng.below(u64::from(self.cfg.blocks))).expect("few"),
            );
            if self.healing {
                break;
            }
            if self.rng.chance(400) {
                let id = self.next_id;
                self.next_id += 1;
                let acked = self.host.acked.get(&b).copied().unwrap_or(0);
                self.host.reqs.insert(id, (b, None, acked, 0));
                self.host_send(id);
            } else if !self.host.inflight.contains_key(&b) {
                let v = self.host.next_version;
                self.host.next_version += 1;
                let id = self.next_id;
                self.next_id += 1;
                self.host.inflight.insert(b, (id, v));
                self.host.reqs.insert(id, (b, Some(v), 0, 0));
                self.host_send(id);
            }
        }
    }

    fn host_send(&mut self, id: u64) {
        let Some(&(b, v, _, _)) = self.host.reqs.get(&id) else { return };
        let send = self.next_id;
        self.next_id += 1;
        self.host.sends.insert(send, id);
        self.host.reqs.get_mut(&id).expect("present").3 = send;
        let to = u16::try_from(self.rng.below(u64::from(self.cfg.peers))).expect("few");
        let msg = match v {
            Some(v) => Msg::Write { id: send, b, v, hops: 0, born: self.now },
            None => Msg::Read { id: send, b, hops: 0 },
        };
        self.send(HOST, Some(to), msg);
        // A send that gets no answer (its peer died, its link was cut) is sent again
        // after longer than any peer holds a request.
        self.at(HOST_TIMEOUT, Ev::HostRetry(send));
    }

    /// Sends request of send `send` again if that send is still the one waited for.
    fn host_retry(&mut self, send: u64) {
        let Some(id) = self.host.sends.remove(&send) else { return };
        if self.host.reqs.get(&id).is_some_and(|r| r.3 == send) {
            self.stats.retries += 1;
            self.host_send(id);
        }
    }

    fn host_done(&mut self, send: u64, ok: bool, v: u64, by: u16) -> Result<(), String> {
        let Some(&id) = self.host.sends.get(&send) else { return Ok(()) };
        let Some(&(b, wv, acked_then, current)) = self.host.reqs.get(&id) else { return Ok(()) };
        if current != send {
            return Ok(());
        }
        if !ok {
            // Retried shortly (the host's multipath retry).
            let d = 5 + self.rng.below(20);
            self.at(d, Ev::HostRetry(send));
            return Ok(());
        }
        self.host.sends.remove(&send);
        self.host.reqs.remove(&id);
        *self.served.entry((by, b.0)).or_default() += 1;
        match wv {
            Some(wv) => {
                let last = self.host.acked.entry(b).or_insert(0);
                *last = (*last).max(wv);
                self.host.inflight.remove(&b);
                self.stats.acked_writes += 1;
            }
            None => {
                self.stats.reads += 1;
                if v < acked_then {
                    let held: Vec<u64> = self.peers.iter().map(|p| p.data.get(&b).copied().unwrap_or(0)).collect();
                    return Err(format!(
                        "read of {b:?} served by peer {by} returned version {v}, older than {acked_then} \
                         acknowledged before it was sent (copies: {held:?})"
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- peers ----------------------------------------------------------------

    fn deliver(&mut self, from: Option<u16>, to: Option<u16>, msg: Msg) -> Result<(), String> {
        let Some(p) = to else {
            if let Msg::Done { id, ok, v, by } = msg {
                return self.host_done(id, ok, v, by);
            }
            return Ok(());
        };
        if !self.peers[usize::from(p)].alive {
            // The connection to a dead peer breaks: the leader holds its replica
            // write and sends it again (to the peer's next run, if the sets take it).
            if let (Some(f), Msg::Rep { wid, .. }) = (from, &msg) {
                self.retry_later(f, *wid, 50);
            }
            return Ok(());
        }
        if let (Some(f), Some(t)) = (from, to) {
            if !self.linked(f, t) {
                // A cut link: the connection is down, what was on it is lost. The
                // leader holds its replica write and sends it again (until the member
                // is evicted); host requests are retried by the host.
                match msg {
                    Msg::Rep { wid, .. } => self.retry_later(f, wid, 50),
                    Msg::RepDone { wid, .. } => self.retry_later(t, wid, 50),
                    _ => {}
                }
                return Ok(());
            }
        }
        match msg {
            Msg::Write { id, b, v, hops, born } => self.on_write(p, from, id, b, (v, born), hops),
            Msg::Read { id, b, hops } => self.on_read(p, from, id, b, hops),
            Msg::Done { id, ok, v, by } => {
                // An answer to a request this peer relayed.
                if let Some((orig, oid)) = self.peers[usize::from(p)].relays.remove(&id) {
                    self.send(Some(p), orig, Msg::Done { id: oid, ok, v, by });
                }
            }
            Msg::Rep { wid, b, v, epoch } => {
                let outcome = self.on_rep(p, from.expect("a peer sends replica writes"), b, v, epoch);
                self.send(Some(p), from, Msg::RepDone { wid, outcome });
            }
            Msg::RepDone { wid, outcome } => self.on_rep_done(p, from.expect("a member answers"), wid, outcome),
        }
        Ok(())
    }

    fn reply(&mut self, p: u16, to: Option<u16>, id: u64, ok: bool, v: u64) {
        self.send(Some(p), to, Msg::Done { id, ok, v, by: p });
    }

    fn on_write(&mut self, p: u16, from: Option<u16>, id: u64, b: Block, (v, born): (u64, u64), hops: u8) {
        let Some(s) = self.view_set(p, b.0).cloned() else { return self.reply(p, from, id, false, 0) };
        if s.leader != p {
            if hops > 0 {
                // Forwarded parts are never forwarded again: "not the owner".
                return self.reply(p, from, id, false, 0);
            }
            let fid = self.next_id;
            self.next_id += 1;
            self.peers[usize::from(p)].relays.insert(fid, (from, id));
            self.send(Some(p), Some(s.leader), Msg::Write { id: fid, b, v, hops: 1, born });
            return;
        }
        self.lead_write(p, from, id, b, (v, born));
    }

    fn lead_write(&mut self, p: u16, from: Option<u16>, id: u64, b: Block, (v, born): (u64, u64)) {
        let Some(s) = self.view_set(p, b.0).cloned() else { return self.reply(p, from, id, false, 0) };
        let mine = self.my_member(p, &s);
        if s.leader != p || mine.map(|m| m.1) != Some(Role::Sync) || !self.fence_holds(p) {
            return self.reply(p, from, id, false, 0);
        }
        if self.peers[usize::from(p)].locks.contains_key(&b) {
            if self.now >= born + HOLD {
                // Held past the hold time: a path error (never started later, after
                // the host may have moved on).
                return self.reply(p, from, id, false, 0);
            }
            self.peers[usize::from(p)].queued.push((from, id, b, v, born));
            return;
        }
        let wid = self.next_id;
        self.next_id += 1;
        let peer = &mut self.peers[usize::from(p)];
        peer.locks.insert(b, wid);
        peer.data.insert(b, v);
        let mut waiting = BTreeMap::new();
        let mut out_slots = 0u8;
        for (k, m) in s.members.iter().enumerate() {
            if m.peer == p {
                continue;
            }
            if matches!(m.state, MemberState::Out { .. }) {
                out_slots |= 1 << k;
            } else {
                waiting.insert(m.peer, true);
            }
        }
        if out_slots != 0 {
            *peer.missed.entry(b).or_insert(0) |= out_slots;
        }
        peer.leads.insert(wid, Lead { b, v, reply: (from, id), waiting: waiting.clone(), copy: None });
        let epoch = s_epoch(&self.peers[usize::from(p)]);
        for m in waiting.keys() {
            self.send(Some(p), Some(*m), Msg::Rep { wid, b, v, epoch });
        }
        self.maybe_complete(p, wid);
    }

    fn retry_queued(&mut self, p: u16) {
        if !self.peers[usize::from(p)].alive {
            return;
        }
        let q = std::mem::take(&mut self.peers[usize::from(p)].queued);
        for (from, id, b, v, born) in q {
            self.lead_write(p, from, id, b, (v, born));
        }
    }

    fn on_rep(&mut self, p: u16, from: u16, b: Block, v: u64, epoch: u64) -> RepOutcome {
        let my_epoch = self.peers[usize::from(p)].view.as_ref().map_or(0, |r| r.epoch);
        if epoch > my_epoch {
            return RepOutcome::Behind;
        }
        let Some(s) = self.view_set(p, b.0).cloned() else { return RepOutcome::NotOwner };
        match self.my_member(p, &s) {
            Some((_, role)) if s.leader == from && role != Role::Out => {
                self.peers[usize::from(p)].data.insert(b, v);
                RepOutcome::Ok
            }
            _ => RepOutcome::NotOwner,
        }
    }

    fn on_rep_done(&mut self, p: u16, from: u16, wid: u64, outcome: RepOutcome) {
        let Some(l) = self.peers[usize::from(p)].leads.get_mut(&wid) else { return };
        if outcome == RepOutcome::Ok {
            if let Some(w) = l.waiting.get_mut(&from) {
                *w = false;
            }
            self.maybe_complete(p, wid);
        } else {
            self.retry_later(p, wid, 20);
        }
    }

    fn retry_later(&mut self, p: u16, wid: u64, delay: u64) {
        if self.peers[usize::from(p)].retrying.insert(wid) {
            self.at(delay, Ev::RepRetry(p, wid));
        }
    }

    /// A replica write not answered "done": sent again while the member takes writes,
    /// completed without it once evicted (marked missed); failed if this peer no
    /// longer leads.
    fn rep_retry(&mut self, p: u16, wid: u64) {
        self.peers[usize::from(p)].retrying.remove(&wid);
        self.rep_check(p, wid, true);
    }

    /// [`Sim::rep_retry`]; `resend` false: only evictions and a lost lead count.
    fn rep_check(&mut self, p: u16, wid: u64, resend: bool) {
        if !self.peers[usize::from(p)].alive {
            return;
        }
        let Some(l) = self.peers[usize::from(p)].leads.get(&wid).cloned() else { return };
        let Some(s) = self.view_set(p, l.b.0).cloned() else { return };
        if s.leader != p {
            let peer = &mut self.peers[usize::from(p)];
            peer.leads.remove(&wid);
            peer.locks.remove(&l.b);
            if l.copy.is_none() {
                self.reply(p, l.reply.0, l.reply.1, false, 0);
            }
            return;
        }
        let epoch = s_epoch(&self.peers[usize::from(p)]);
        for (&m, &waiting) in &l.waiting {
            if !waiting {
                continue;
            }
            match s.members.iter().position(|x| x.peer == m) {
                Some(k) if !matches!(s.members[k].state, MemberState::Out { .. }) => {
                    if resend {
                        self.send(Some(p), Some(m), Msg::Rep { wid, b: l.b, v: l.v, epoch });
                    }
                }
                other => {
                    let peer = &mut self.peers[usize::from(p)];
                    if let Some(k) = other {
                        *peer.missed.entry(l.b).or_insert(0) |= 1 << k;
                    }
                    if let Some(x) = peer.leads.get_mut(&wid) {
                        x.waiting.insert(m, false);
                    }
                }
            }
        }
        self.maybe_complete(p, wid);
    }

    fn maybe_complete(&mut self, p: u16, wid: u64) {
        let peer = &mut self.peers[usize::from(p)];
        let Some(l) = peer.leads.get(&wid) else { return };
        if l.waiting.values().any(|&w| w) {
            return;
        }
        let l = peer.leads.remove(&wid).expect("present");
        peer.locks.remove(&l.b);
        if l.copy.is_none() {
            self.reply(p, l.reply.0, l.reply.1, true, l.v);
        }
    }

    fn on_read(&mut self, p: u16, from: Option<u16>, id: u64, b: Block, hops: u8) {
        let Some(s) = self.view_set(p, b.0).cloned() else { return self.reply(p, from, id, false, 0) };
        let readable = self.my_member(p, &s).map(|m| m.1) == Some(Role::Sync) && self.fence_holds(p);
        if readable {
            let v = self.peers[usize::from(p)].data.get(&b).copied().unwrap_or(0);
            return self.reply(p, from, id, true, v);
        }
        if hops > 0 || s.leader == p {
            return self.reply(p, from, id, false, 0);
        }
        let fid = self.next_id;
        self.next_id += 1;
        self.peers[usize::from(p)].relays.insert(fid, (from, id));
        self.send(Some(p), Some(s.leader), Msg::Read { id: fid, b, hops: 1 });
    }

    // ----- rebuild --------------------------------------------------------------

    /// The leader copies to each member being rebuilt what it lacks, a block at a
    /// time under the block's lock, and asks for its promotion when nothing is
    /// missing.
    fn rebuild_turn(&mut self, p: u16) {
        if !self.peers[usize::from(p)].alive || !self.fence_holds(p) {
            return;
        }
        let Some(view) = self.peers[usize::from(p)].view.clone() else { return };
        let Ok(page_sets) = view.page_sets() else { return };
        let rebuilding: Vec<(u16, u16, u16, i64, usize)> = page_sets
            .iter()
            .enumerate()
            .flat_map(|(page, &si)| {
                let page = u16::try_from(page).expect("few");
                view.sets[usize::from(si)]
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| matches!(m.state, MemberState::Rebuild { .. } | MemberState::Reconcile))
                    .map(move |(k, m)| (si, page, m.peer, m.inc, k))
            })
            .collect();
        self.peers[usize::from(p)].copying.retain(|key, _| rebuilding.contains(key));
        for (page, &si) in page_sets.iter().enumerate() {
            let page = u16::try_from(page).expect("few");
            let s = &view.sets[usize::from(si)];
            if s.leader != p || self.my_member(p, s).map(|m| m.1) != Some(Role::Sync) {
                continue;
            }
            for (k, m) in s.members.iter().enumerate() {
                let full = match m.state {
                    MemberState::Rebuild { mode } => mode != super::set::RebuildMode::Delta,
                    MemberState::Reconcile => true,
                    _ => continue,
                };
                let key = (si, page, m.peer, m.inc, k);
                match self.peers[usize::from(p)].copying.get(&key) {
                    Some(true) => continue,
                    Some(false) => {}
                    None => {
                        // Start: every block (full) or the missed ones (delta) are marked.
                        let blocks: Vec<Block> = (0..self.cfg.blocks).map(|b| (page, b)).collect();
                        let peer = &mut self.peers[usize::from(p)];
                        if full {
                            for &b in &blocks {
                                *peer.missed.entry(b).or_insert(0) |= 1 << k;
                            }
                        }
                        peer.copying.insert(key, false);
                    }
                }
                // One block copy at a time per member.
                let busy = self.peers[usize::from(p)].leads.values().any(|l| l.copy == Some(m.peer));
                if busy {
                    continue;
                }
                let next = (0..self.cfg.blocks)
                    .map(|b| (page, b))
                    .find(|b| self.peers[usize::from(p)].missed.get(b).is_some_and(|&x| x & (1 << k) != 0));
                match next {
                    Some(b) => {
                        let peer = &mut self.peers[usize::from(p)];
                        if peer.locks.contains_key(&b) {
                            continue;
                        }
                        let wid = self.next_id;
                        self.next_id += 1;
                        peer.locks.insert(b, wid);
                        if let Some(x) = peer.missed.get_mut(&b) {
                            *x &= !(1 << k);
                        }
                        let v = peer.data.get(&b).copied().unwrap_or(0);
                        let mut waiting = BTreeMap::new();
                        waiting.insert(m.peer, true);
                        peer.leads.insert(wid, Lead { b, v, reply: (None, 0), waiting, copy: Some(m.peer) });
                        let epoch = view.epoch;
                        self.send(Some(p), Some(m.peer), Msg::Rep { wid, b, v, epoch });
                    }
                    None => {
                        // Nothing missing in this page. The member is promoted (a
                        // compare-and-swap in etcd, checked as the agent does) once no
                        // page of the set lacks anything: every page's copy started
                        // (its blocks marked) and none marked any more.
                        let peer = &self.peers[usize::from(p)];
                        let set_done = page_sets.iter().enumerate().filter(|(_, &x)| x == si).all(|(pg, _)| {
                            let pg = u16::try_from(pg).expect("few");
                            peer.copying.contains_key(&(si, pg, m.peer, m.inc, k))
                                && (0..self.cfg.blocks)
                                    .all(|b| peer.missed.get(&(pg, b)).is_none_or(|&x| x & (1 << k) == 0))
                        });
                        if !set_done || !self.reaches_etcd(p) {
                            continue;
                        }
                        let my_lease = self.peers[usize::from(p)].lease;
                        let ok = self.record.sets.get(usize::from(si)).is_some_and(|r| {
                            r.leader == p
                                && r.member(p).is_some_and(|l| Some(l.inc) == my_lease)
                                && r.member(m.peer).is_some_and(|x| {
                                    x.inc == m.inc
                                        && matches!(x.state, MemberState::Rebuild { .. } | MemberState::Reconcile)
                                })
                        });
                        if ok && self.record.epoch == view.epoch {
                            let mut next = self.record.clone();
                            let set = &mut next.sets[usize::from(si)];
                            let pos = set.members.iter().position(|x| x.peer == m.peer).expect("checked");
                            set.members[pos].state = MemberState::Sync;
                            next.epoch += 1;
                            self.stats.promotions += 1;
                            self.note(format!("{p} promotes {} in set {si}", m.peer));
                            self.peers[usize::from(p)].copying.insert(key, true);
                            self.put_record(next);
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn s_epoch(p: &Peer) -> u64 {
    p.view.as_ref().map_or(0, |v| v.epoch)
}

/// Runs one seed with the default shape.
pub fn run_seed(seed: u64) -> Result<SimStats, String> {
    let mut cfg = SimConfig::default();
    let mut r = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    cfg.peers = 3 + u16::try_from(r.below(2)).expect("small");
    cfg.replicas = 2 + u8::try_from(r.below(2)).expect("small");
    Sim::new(seed, cfg).run()
}
