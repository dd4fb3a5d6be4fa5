//! The rebuild driver (control thread of a set's leader): brings each member being
//! rebuilt (`Rebuild`) or reconciled (`Reconcile`) up to date, page by page, through
//! the reactors' copiers ([`super::copier`]), at most `replication.rebuild_mb_s`, then
//! asks the group to promote it to `Sync`.
//!
//! ```text
//!   found (record: this peer leads, member rebuilding)
//!     ─► Copying: every page of the set, the pieces it needs
//!          delta: the pieces marked missed by the member's position
//!          full / compare / reconcile: every piece (zeroes where this peer has none)
//!     ─► Checking: pages whose pieces were marked missed meanwhile (a reactor with an
//!        older table, a copy that failed) are copied again, until none is
//!     ─► Promoting: GroupOp::Promote (the agent checks that this peer still leads
//!        with the same lease and the member is the same run) ─► the record says Sync
//!   the record changes (member gone, another leader): the task is dropped
//! ```
//!
//! Writes go on meanwhile: the member takes every write while it is rebuilt, and each
//! piece is copied under the same piece lock as a write ([`super::locks`]), so what
//! the copy sends is never older than what the member has.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::copier::{CopyJob, CopyReport, JOBS_MAX};
use super::locks::{PieceTable, Pieces};
use super::set::{MemberState, RebuildMode};
use crate::group::keys::VolumeRecord;
use crate::volume::routing::PeerId;
use crate::volume::VolumeId;

/// A failed page is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

/// Identifies a rebuild: volume, set index, member peer, member's lease.
pub type TaskKey = (VolumeId, usize, u16, i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Copying,
    Checking,
    Promoting,
}

/// One member being brought up to date.
#[derive(Debug)]
pub struct Task {
    /// The volume's name (for the promotion).
    pub name: String,
    /// Copy every piece (else only those marked missed).
    pub full: bool,
    /// The member's position in the set (its missed marks).
    slot: u8,
    /// Tells this task from an earlier one under the same key (its jobs' reports).
    serial: u64,
    /// Every page of the set; the pages of the current pass.
    all: Vec<u64>,
    pages: Vec<u64>,
    next: usize,
    inflight: usize,
    failed: Vec<u64>,
    retry_at: Option<Instant>,
    phase: Phase,
    /// Pages of the set, and pages done.
    pub total: u64,
    /// Pages copied (or found with nothing to copy) in the first pass.
    pub done: u64,
    /// Data bytes copied.
    pub bytes: u64,
    /// When it started.
    pub started: Instant,
}

/// What the driver asks of the control thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this job to reactor `.0`.
    Copy(usize, CopyJob),
    /// Ask the group to promote the member.
    Promote {
        /// Volume name.
        name: String,
        /// Set index.
        set: usize,
        /// Member peer.
        peer: u16,
        /// Member's lease.
        inc: i64,
    },
}

/// Every rebuild this peer drives.
#[derive(Debug, Default)]
pub struct Rebuilds {
    /// The tasks, by key.
    pub tasks: BTreeMap<TaskKey, Task>,
    /// Job id → task (its key and serial), page, reactor, and whether it is a scrub's.
    jobs: HashMap<u64, (TaskKey, u64, u64, usize, bool)>,
    next_job: u64,
    /// Serials of tasks (a task made anew under the same key has a new one).
    next_serial: u64,
    /// Jobs out per reactor.
    load: Vec<usize>,
    /// Byte budget (token bucket) and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
    /// Scrubs of in-sync members (the same machinery, comparing instead of copying),
    /// their budget, and the last result per volume.
    pub scrubs: BTreeMap<TaskKey, Task>,
    scrub_tokens: f64,
    scrub_filled: Option<Instant>,
    /// The last scrub of each volume on this peer.
    pub scrub_results: BTreeMap<VolumeId, ScrubResult>,
}

/// How the last scrub of a volume's sets led here went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubResult {
    /// The request it ran for (0: periodic).
    pub id: u64,
    /// Pages to compare (one per member) and compared.
    pub pages: u64,
    /// Pages compared.
    pub done: u64,
    /// Units that differed (each repaired: the member from this peer's copy, or this
    /// copy from the majority's).
    pub mismatches: u64,
    /// Still running.
    pub running: bool,
}

impl Rebuilds {
    /// Finds the members this peer must bring up to date in `record` (this peer is
    /// `me` with lease `lease`); drops tasks the record no longer calls for.
    pub fn sync(&mut self, vid: VolumeId, record: &VolumeRecord, (me, lease): (u16, Option<i64>), now: Instant) {
        let mut wanted: BTreeMap<TaskKey, (bool, u8)> = BTreeMap::new();
        if let Some(lease) = lease {
            for (si, s) in record.sets.iter().enumerate() {
                if s.leader != me || s.member(me).is_none_or(|m| m.inc != lease || m.state != MemberState::Sync) {
                    continue;
                }
                for (slot, m) in s.members.iter().enumerate() {
                    let full = match m.state {
                        MemberState::Rebuild { mode } => mode != RebuildMode::Delta,
                        MemberState::Reconcile => true,
                        _ => continue,
                    };
                    wanted.insert((vid, si, m.peer, m.inc), (full, u8::try_from(slot).expect("at most 4 members")));
                }
            }
        }
        // A member that moved up a position (one before it left the set) is copied to
        // afresh: what it missed is kept by position, and the plan made it a full
        // (compare) rebuild.
        self.tasks.retain(|k, t| k.0 != vid || wanted.get(k).is_some_and(|&(_, slot)| slot == t.slot));
        self.scrubs.retain(|k, _| {
            k.0 != vid
                || lease.is_some_and(|lease| {
                    record.sets.get(k.1).is_some_and(|s| {
                        s.leader == me
                            && s.member(me).is_some_and(|m| m.inc == lease && m.state == MemberState::Sync)
                            && s.member(k.2).is_some_and(|m| m.inc == k.3 && m.state == MemberState::Sync)
                    })
                })
        });
        let page_sets = record.page_sets().unwrap_or_default();
        for (key, (full, slot)) in wanted {
            let pages: Vec<u64> =
                page_sets.iter().enumerate().filter(|(_, &s)| usize::from(s) == key.1).map(|(p, _)| p as u64).collect();
            // The set's pages changed under a task this peer kept (it did not see the
            // records in between, e.g. pages of a settled set joined this one): its
            // progress counts pages that are not the set's any more.
            if self.tasks.get(&key).is_some_and(|t| t.all != pages) {
                self.tasks.remove(&key);
            }
            let serial = &mut self.next_serial;
            self.tasks.entry(key).or_insert_with(|| {
                *serial += 1;
                tracing::info!(
                    volume = %record.name, set = key.1, member = key.2, full, pages = pages.len(),
                    "rebuild of a member starts"
                );
                Task::new(&record.name, full, (slot, *serial), pages, now)
            });
        }
    }

    /// What this peer tells the group: per volume name, pages to go through, done,
    /// bytes copied.
    pub fn report(&self, name_of: impl Fn(VolumeId) -> Option<String>) -> crate::group::keys::RebuildReport {
        let mut r = crate::group::keys::RebuildReport::default();
        for (key, t) in &self.tasks {
            let Some(name) = name_of(key.0) else { continue };
            let p = r.volumes.entry(name).or_default();
            p.pages += t.total;
            p.done += t.done;
            p.bytes += t.bytes;
        }
        for (vid, res) in &self.scrub_results {
            let Some(name) = name_of(*vid) else { continue };
            let p = r.volumes.entry(name).or_default();
            p.scrub_pages = res.pages;
            p.scrub_done = res.done;
            p.scrub_mismatches = res.mismatches;
            p.scrub_running = res.running;
            p.scrub_id = res.id;
        }
        r
    }

    /// Starts a scrub (request `id`, 0 for the periodic one) of every set of the
    /// volume this peer leads: each in-sync member's copy compared with this peer's,
    /// page by page, and repaired where it differs.
    pub fn start_scrub(
        &mut self,
        vid: VolumeId,
        record: &VolumeRecord,
        (me, lease): (u16, i64),
        id: u64,
        now: Instant,
    ) {
        let page_sets = record.page_sets().unwrap_or_default();
        let mut result = ScrubResult { id, running: true, ..ScrubResult::default() };
        for (si, s) in record.sets.iter().enumerate() {
            if s.leader != me || s.member(me).is_none_or(|m| m.inc != lease || m.state != MemberState::Sync) {
                continue;
            }
            let pages: Vec<u64> =
                page_sets.iter().enumerate().filter(|(_, &p)| usize::from(p) == si).map(|(p, _)| p as u64).collect();
            if pages.is_empty() {
                continue;
            }
            for (slot, m) in s.members.iter().enumerate() {
                if m.peer == me || m.state != MemberState::Sync {
                    continue;
                }
                result.pages += pages.len() as u64;
                let slot = u8::try_from(slot).expect("at most 4 members");
                self.next_serial += 1;
                let task = Task::new(&record.name, true, (slot, self.next_serial), pages.clone(), now);
                self.scrubs.insert((vid, si, m.peer, m.inc), task);
            }
        }
        tracing::info!(volume = %record.name, pages = result.pages, "scrub starts");
        result.running = result.pages > 0;
        self.scrub_results.insert(vid, result);
    }

    /// A copier's report.
    pub fn on_report(&mut self, r: &CopyReport) {
        let Some((key, serial, page, reactor, scrub)) = self.jobs.remove(&r.id) else { return };
        if let Some(l) = self.load.get_mut(reactor) {
            *l = l.saturating_sub(1);
        }
        if scrub {
            if let Some(res) = self.scrub_results.get_mut(&key.0) {
                res.mismatches += r.mismatches;
            }
        }
        let tasks = if scrub { &mut self.scrubs } else { &mut self.tasks };
        let Some(t) = tasks.get_mut(&key).filter(|t| t.serial == serial) else { return };
        t.inflight -= 1;
        t.bytes += r.bytes;
        if let Some(why) = &r.failed {
            tracing::debug!(volume = %t.name, page, "rebuild copy failed, tried again: {why}");
            t.failed.push(page);
            t.retry_at = Some(Instant::now() + RETRY);
        }
    }

    /// The promotion of task `key` failed (the group refused or the record changed):
    /// it is checked and tried again.
    pub fn promotion_failed(&mut self, key: &TaskKey) {
        if let Some(t) = self.tasks.get_mut(key) {
            t.phase = Phase::Checking;
            t.retry_at = Some(Instant::now() + RETRY);
        }
    }

    /// The next jobs and promotions, within the byte budgets (`rebuild_mb_s`,
    /// `scrub_mb_s` MB/s) and the reactors' job slots (only data counts: a page this
    /// peer has not written is sent as zeroes). `view(vid)` gives a volume's view here.
    pub fn turn(
        &mut self,
        reactors: usize,
        (rebuild_mb_s, scrub_mb_s): (u32, u32),
        now: Instant,
        view: impl Fn(VolumeId) -> Option<std::sync::Arc<crate::volume::VolumeView>>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if reactors == 0 || self.tasks.is_empty() && self.scrubs.is_empty() {
            return out;
        }
        self.load.resize(reactors, 0);
        refill(&mut self.tokens, &mut self.filled, rebuild_mb_s, now);
        refill(&mut self.scrub_tokens, &mut self.scrub_filled, scrub_mb_s, now);
        self.schedule(false, reactors, now, &view, &mut out);
        self.schedule(true, reactors, now, &view, &mut out);
        out
    }

    fn schedule(
        &mut self,
        scrub: bool,
        reactors: usize,
        now: Instant,
        view: &impl Fn(VolumeId) -> Option<std::sync::Arc<crate::volume::VolumeView>>,
        out: &mut Vec<Action>,
    ) {
        let (tasks, tokens) =
            if scrub { (&mut self.scrubs, &mut self.scrub_tokens) } else { (&mut self.tasks, &mut self.tokens) };
        let keys: Vec<TaskKey> = tasks.keys().copied().collect();
        let mut finished = Vec::new();
        for key in keys {
            let Some(v) = view(key.0) else { continue };
            let pieces_table: &PieceTable = &v.pieces;
            let pieces = Pieces::of(v.info.blocks_per_page());
            let piece_bytes = pieces.blocks * u64::from(v.info.block_size);
            let t = tasks.get_mut(&key).expect("listed");
            if t.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            t.retry_at = None;
            if t.next >= t.pages.len() && !t.failed.is_empty() {
                t.pages = std::mem::take(&mut t.failed);
                t.next = 0;
            }
            while t.next < t.pages.len() {
                if *tokens <= 0.0 {
                    return;
                }
                let Some(r) = (0..reactors).filter(|&r| self.load[r] < JOBS_MAX).min_by_key(|&r| self.load[r]) else {
                    return;
                };
                let page = t.pages[t.next];
                let mask =
                    if t.full && t.phase == Phase::Copying { pieces.all() } else { pieces_table.missed(page, t.slot) };
                t.next += 1;
                if t.phase == Phase::Copying {
                    t.done += 1;
                    if scrub {
                        if let Some(res) = self.scrub_results.get_mut(&key.0) {
                            res.done += 1;
                        }
                    }
                }
                if mask == 0 {
                    continue;
                }
                if v.pages.get(page).is_some() {
                    *tokens -= (u64::from(mask.count_ones()) * piece_bytes) as f64;
                }
                self.next_job += 1;
                let job = CopyJob { id: self.next_job, volume: key.0, page, mask, to: PeerId(key.2), verify: scrub };
                self.jobs.insert(job.id, (key, t.serial, page, r, scrub));
                self.load[r] += 1;
                t.inflight += 1;
                out.push(Action::Copy(r, job));
            }
            if t.inflight > 0 || !t.failed.is_empty() {
                continue;
            }
            if scrub {
                finished.push(key);
                continue;
            }
            match t.phase {
                Phase::Copying | Phase::Checking => {
                    // Pages marked missed since they were copied (or never copied for a
                    // delta): another pass; none: promote.
                    let again: Vec<u64> =
                        t.all.iter().copied().filter(|&p| pieces_table.missed(p, t.slot) != 0).collect();
                    if again.is_empty() {
                        t.phase = Phase::Promoting;
                        tracing::info!(
                            volume = %t.name, set = key.1, member = key.2, bytes = t.bytes,
                            seconds = t.started.elapsed().as_secs_f64(),
                            "rebuild copied everything; promoting the member"
                        );
                        out.push(Action::Promote { name: t.name.clone(), set: key.1, peer: key.2, inc: key.3 });
                    } else {
                        t.phase = Phase::Checking;
                        t.pages = again;
                        t.next = 0;
                    }
                }
                Phase::Promoting => {}
            }
        }
        for key in finished {
            let t = self.scrubs.remove(&key).expect("listed");
            tracing::info!(volume = %t.name, set = key.1, member = key.2, pages = t.total, "scrub of a member done");
            if !self.scrubs.keys().any(|k| k.0 == key.0) {
                if let Some(res) = self.scrub_results.get_mut(&key.0) {
                    res.running = false;
                    tracing::info!(
                        volume = %t.name, pages = res.pages, mismatches = res.mismatches,
                        "scrub done (every unit that differed was repaired: from the majority with three copies, else from the leader's)"
                    );
                }
            }
        }
    }
}

impl Task {
    fn new(name: &str, full: bool, (slot, serial): (u8, u64), pages: Vec<u64>, now: Instant) -> Task {
        Task {
            name: name.to_string(),
            full,
            slot,
            serial,
            total: pages.len() as u64,
            all: pages.clone(),
            pages,
            next: 0,
            inflight: 0,
            failed: Vec::new(),
            retry_at: None,
            phase: Phase::Copying,
            done: 0,
            bytes: 0,
            started: now,
        }
    }
}

/// Fills a token bucket at `mb_s` MB/s, with at most a tenth of a second saved up.
fn refill(tokens: &mut f64, filled: &mut Option<Instant>, mb_s: u32, now: Instant) {
    let rate = f64::from(mb_s.max(1)) * 1e6;
    let elapsed = filled.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
    *tokens = (*tokens + elapsed * rate).min(rate / 10.0);
    *filled = Some(now);
}
