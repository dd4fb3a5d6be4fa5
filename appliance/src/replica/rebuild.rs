//! The rebuild driver (control thread of a set's leader): brings each member being
//! rebuilt (`Rebuild`) or reconciled (`Reconcile`) up to date, page by page, through
//! the reactors' copiers ([`super::copier`]), at most `replication.rebuild_mb_s` (the
//! new member of a page move: `replication.migration_mb_s`, a budget of its own), then
//! asks the group to promote it to `Sync`.
//!
//! ```text
//!   found (record: this peer leads, member rebuilding)
//!     ─► Copying: every page of the set, the pieces it needs
//!          delta: the pieces marked missed by the member's position (a job a page)
//!          full / compare / reconcile: every piece (zeroes where this peer has none),
//!            a job a piece, so that several pieces of one page are in flight; the
//!            pieces before the persisted progress of an earlier run are compared
//!            (checksums), the rest copied
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
//!
//! **Resuming.** A full rebuild (a member new to the set: a page moved to another peer,
//! a replacement) publishes how far it got: the count of pieces, from the first, all
//! copied ([`CopyProgress`], kept in the group without a lease, so that it outlives
//! this peer). Whoever drives the rebuild next (this peer restarted, another leader,
//! the member restarted) compares those pieces instead of copying them: the member's
//! checksum of each unit against this copy's, and only a unit that differs is sent.
//! The comparison makes the resume safe whatever happened meanwhile (writes the member
//! missed were tracked in the memory of a leader that may have died); the progress
//! only saves the link the bytes.

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
/// An item outside the first pass (a delta page, a check, a scrub page).
const NO_ITEM: u64 = u64::MAX;

/// How far a full rebuild of one member got, as published to the group
/// (`/quire/v1/copied/<volume>/<set>/<member>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyProgress {
    /// Identifies the work list: the set's pages and pieces per page (a hash).
    pub sig: u64,
    /// Pieces in all (pages × pieces per page).
    pub items: u64,
    /// Pieces from the first that are all done.
    pub done: u64,
    /// The leader that drove it (routing id).
    pub leader: u16,
}

/// One unit of work: the pieces of a page to copy (0: those marked missed when it
/// is issued), and its place in the first pass ([`NO_ITEM`] outside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    page: u64,
    mask: u64,
    idx: u64,
}

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
    /// The member is the new peer of a page move (its copy is paced by
    /// `migration_mb_s`, not `rebuild_mb_s`).
    pub moving: bool,
    /// The member's position in the set (its missed marks).
    slot: u8,
    /// Tells this task from an earlier one under the same key (its jobs' reports).
    serial: u64,
    /// Every page of the set; the items of the current pass (built at the first
    /// turn, when the page's pieces are known).
    all: Vec<u64>,
    items: Vec<Item>,
    built: bool,
    /// The items are the first pass's (not failed ones tried again, not a check).
    first: bool,
    next: usize,
    inflight: usize,
    failed: Vec<Item>,
    retry_at: Option<Instant>,
    phase: Phase,
    /// First pass of a full rebuild: which items are done (a bit each), how many from
    /// the first are all done, and the work list's signature.
    finished: Vec<u64>,
    cursor: u64,
    per_page: u64,
    sig: u64,
    /// An earlier run's progress, and the items it had done (compared, not copied).
    resume: Option<CopyProgress>,
    compare_below: u64,
    /// Pages of the set, and pages done.
    pub total: u64,
    /// Pages copied (or found with nothing to copy) in the first pass.
    pub done: u64,
    /// Data bytes copied.
    pub bytes: u64,
    /// Pieces compared instead of copied (a resume), and how many of them differed.
    pub compared: u64,
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
    /// Job id → task (its key and serial), item, reactor, and whether it is a scrub's.
    jobs: HashMap<u64, (TaskKey, u64, Item, usize, bool)>,
    next_job: u64,
    /// Serials of tasks (a task made anew under the same key has a new one).
    next_serial: u64,
    /// Jobs out per reactor.
    load: Vec<usize>,
    /// Byte budget (token bucket) and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
    /// The budget of copies to the new peers of moving pages.
    move_tokens: f64,
    move_filled: Option<Instant>,
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
    /// `progress(set, member)` is what the group holds of an earlier run's full
    /// rebuild of that member.
    pub fn sync(
        &mut self,
        vid: VolumeId,
        record: &VolumeRecord,
        (me, lease): (u16, Option<i64>),
        now: Instant,
        progress: impl Fn(usize, u16) -> Option<CopyProgress>,
    ) {
        let mut wanted: BTreeMap<TaskKey, (bool, u8, bool)> = BTreeMap::new();
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
                    let moving = s.mv.is_some_and(|mv| mv.to == m.peer);
                    let slot = u8::try_from(slot).expect("at most 4 members");
                    wanted.insert((vid, si, m.peer, m.inc), (full, slot, moving));
                }
            }
        }
        // A member that moved up a position (one before it left the set) is copied to
        // afresh: what it missed is kept by position, and the plan made it a full
        // (compare) rebuild.
        self.tasks.retain(|k, t| k.0 != vid || wanted.get(k).is_some_and(|&(_, slot, _)| slot == t.slot));
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
        for (key, (full, slot, moving)) in wanted {
            let pages: Vec<u64> =
                page_sets.iter().enumerate().filter(|(_, &s)| usize::from(s) == key.1).map(|(p, _)| p as u64).collect();
            // The set's pages changed under a task this peer kept (it did not see the
            // records in between, e.g. pages of a settled set joined this one): its
            // progress counts pages that are not the set's any more.
            if self.tasks.get(&key).is_some_and(|t| t.all != pages) {
                self.tasks.remove(&key);
            }
            let serial = &mut self.next_serial;
            let t = self.tasks.entry(key).or_insert_with(|| {
                *serial += 1;
                tracing::info!(
                    volume = %record.name, set = key.1, member = key.2, full, pages = pages.len(),
                    "rebuild of a member starts"
                );
                let mut t = Task::new(&record.name, full, (slot, *serial), pages, now);
                if full {
                    t.resume = progress(key.1, key.2);
                }
                t
            });
            t.moving = moving;
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
            p.compared += t.compared;
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
        let Some((key, serial, item, reactor, scrub)) = self.jobs.remove(&r.id) else { return };
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
            tracing::debug!(volume = %t.name, page = item.page, "rebuild copy failed, tried again: {why}");
            t.failed.push(item);
            t.retry_at = Some(Instant::now() + RETRY);
        } else if item.idx != NO_ITEM && !scrub {
            t.item_done(item.idx);
        }
    }

    /// The progress of every full rebuild this peer drives that has done anything:
    /// (volume, set, member) → progress, for the group.
    pub fn progress(&self, me: u16) -> Vec<((VolumeId, usize, u16), CopyProgress)> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.full && t.built && t.phase == Phase::Copying && t.cursor > 0)
            .map(|(k, t)| {
                let p = CopyProgress { sig: t.sig, items: t.finished_items(), done: t.cursor, leader: me };
                ((k.0, k.1, k.2), p)
            })
            .collect()
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
    /// `migration_mb_s`, `scrub_mb_s` MB/s) and the reactors' job slots (only data
    /// counts: a page this peer has not written is sent as zeroes). `view(vid)` gives
    /// a volume's view here.
    pub fn turn(
        &mut self,
        reactors: usize,
        (rebuild_mb_s, migration_mb_s, scrub_mb_s): (u32, u32, u32),
        now: Instant,
        view: impl Fn(VolumeId) -> Option<std::sync::Arc<crate::volume::VolumeView>>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if reactors == 0 || self.tasks.is_empty() && self.scrubs.is_empty() {
            return out;
        }
        self.load.resize(reactors, 0);
        refill(&mut self.tokens, &mut self.filled, rebuild_mb_s, now);
        refill(&mut self.move_tokens, &mut self.move_filled, migration_mb_s, now);
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
        let (tasks, tokens, mut move_tokens) = if scrub {
            (&mut self.scrubs, &mut self.scrub_tokens, None)
        } else {
            (&mut self.tasks, &mut self.tokens, Some(&mut self.move_tokens))
        };
        // The tasks that may go on this turn, with their volume's view.
        let mut ready: Vec<(TaskKey, std::sync::Arc<crate::volume::VolumeView>)> = Vec::new();
        for (&key, t) in tasks.iter_mut() {
            let Some(v) = view(key.0) else { continue };
            if t.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            t.retry_at = None;
            if !t.built {
                let pieces = Pieces::of(v.info.blocks_per_page());
                t.build(pieces.count, pieces.all(), scrub);
            }
            if t.next >= t.items.len() && !t.failed.is_empty() {
                t.items = std::mem::take(&mut t.failed);
                t.next = 0;
                t.first = false;
            }
            ready.push((key, v));
        }
        // One item per task per round, so that the tasks share the budget and the
        // reactors' job slots (a move is not held up behind a long rebuild).
        'rounds: loop {
            let mut issued = false;
            for (key, v) in &ready {
                let t = tasks.get_mut(key).expect("listed");
                if t.next >= t.items.len() {
                    continue;
                }
                // A move's copy spends its own budget; a task whose budget is spent
                // waits for the next turn, the others go on.
                let budget: &mut f64 = match move_tokens.as_deref_mut() {
                    Some(m) if t.moving => m,
                    _ => &mut *tokens,
                };
                if *budget <= 0.0 {
                    continue;
                }
                let Some(r) = (0..reactors).filter(|&r| self.load[r] < JOBS_MAX).min_by_key(|&r| self.load[r]) else {
                    break 'rounds;
                };
                issued = true;
                let pieces = Pieces::of(v.info.blocks_per_page());
                let piece_bytes = pieces.blocks * u64::from(v.info.block_size);
                let item = t.items[t.next];
                let page = item.page;
                let mask = if item.mask != 0 { item.mask } else { v.pieces.missed(page, t.slot) };
                t.next += 1;
                if t.first && (item.idx + 1) % t.per_page == 0 {
                    t.done += 1;
                    if scrub {
                        if let Some(res) = self.scrub_results.get_mut(&key.0) {
                            res.done += 1;
                        }
                    }
                }
                if mask == 0 {
                    if item.idx != NO_ITEM && !scrub {
                        t.item_done(item.idx);
                    }
                    continue;
                }
                // A piece an earlier run had done is compared, not copied: a
                // checksum crosses the link, the data only where it differs.
                let compare = !scrub && item.idx != NO_ITEM && item.idx < t.compare_below;
                if compare {
                    t.compared += u64::from(mask.count_ones());
                }
                if v.pages.get(page).is_some() {
                    let bytes = (u64::from(mask.count_ones()) * piece_bytes) as f64;
                    *budget -= if compare { bytes / 8.0 } else { bytes };
                }
                self.next_job += 1;
                let job = CopyJob {
                    id: self.next_job,
                    volume: key.0,
                    page,
                    mask,
                    to: PeerId(key.2),
                    verify: scrub || compare,
                    compare,
                };
                self.jobs.insert(job.id, (*key, t.serial, item, r, scrub));
                self.load[r] += 1;
                t.inflight += 1;
                out.push(Action::Copy(r, job));
            }
            if !issued {
                break;
            }
        }
        let mut finished = Vec::new();
        for (key, v) in &ready {
            let key = *key;
            let pieces_table: &PieceTable = &v.pieces;
            let t = tasks.get_mut(&key).expect("listed");
            if t.next < t.items.len() || t.inflight > 0 || !t.failed.is_empty() {
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
                            compared = t.compared, seconds = t.started.elapsed().as_secs_f64(),
                            "rebuild copied everything; promoting the member"
                        );
                        out.push(Action::Promote { name: t.name.clone(), set: key.1, peer: key.2, inc: key.3 });
                    } else {
                        t.phase = Phase::Checking;
                        t.items = again.into_iter().map(|page| Item { page, mask: 0, idx: NO_ITEM }).collect();
                        t.next = 0;
                        t.first = false;
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
            moving: false,
            slot,
            serial,
            total: pages.len() as u64,
            all: pages,
            items: Vec::new(),
            built: false,
            first: true,
            next: 0,
            inflight: 0,
            failed: Vec::new(),
            retry_at: None,
            phase: Phase::Copying,
            finished: Vec::new(),
            cursor: 0,
            per_page: 1,
            sig: 0,
            resume: None,
            compare_below: 0,
            done: 0,
            bytes: 0,
            compared: 0,
            started: now,
        }
    }

    /// The first pass's items, once the pieces of a page are known (`count` of them,
    /// `all` their mask): a piece each for a full rebuild, a page each for a delta (its
    /// missed pieces when issued) or a scrub (every piece).
    fn build(&mut self, count: u64, all: u64, scrub: bool) {
        debug_assert!(!self.built);
        self.built = true;
        if self.full && !scrub {
            self.per_page = count;
            self.items = self
                .all
                .iter()
                .enumerate()
                .flat_map(|(i, &page)| (0..count).map(move |b| Item { page, mask: 1 << b, idx: i as u64 * count + b }))
                .collect();
            self.sig = signature(&self.all, count);
            self.finished = vec![0; (self.items.len()).div_ceil(64)];
            if let Some(p) = self.resume.filter(|p| p.sig == self.sig && p.items == self.items.len() as u64) {
                self.compare_below = p.done.min(p.items);
                tracing::info!(
                    volume = %self.name, pieces = p.items, done = p.done, leader = p.leader,
                    "rebuild resumes from an earlier run's progress: the pieces it had done are compared, the rest copied"
                );
            }
        } else {
            let mask = if self.full { all } else { 0 };
            self.items = self.all.iter().enumerate().map(|(i, &page)| Item { page, mask, idx: i as u64 }).collect();
        }
    }

    /// Pieces in the first pass of a full rebuild.
    fn finished_items(&self) -> u64 {
        self.all.len() as u64 * self.per_page
    }

    /// First-pass item `idx` is done: the cursor moves over every item done from it.
    fn item_done(&mut self, idx: u64) {
        if self.finished.is_empty() {
            return;
        }
        self.finished[(idx / 64) as usize] |= 1 << (idx % 64);
        let n = self.finished_items();
        while self.cursor < n && self.finished[(self.cursor / 64) as usize] & (1 << (self.cursor % 64)) != 0 {
            self.cursor += 1;
        }
    }
}

/// A stable hash (FNV-1a) of a work list: the set's pages and pieces per page.
fn signature(pages: &[u64], per_page: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in std::iter::once(per_page).chain(pages.iter().copied()) {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Fills a token bucket at `mb_s` MB/s, with at most a tenth of a second saved up.
fn refill(tokens: &mut f64, filled: &mut Option<Instant>, mb_s: u32, now: Instant) {
    let rate = f64::from(mb_s.max(1)) * 1e6;
    let elapsed = filled.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
    *tokens = (*tokens + elapsed * rate).min(rate / 10.0);
    *filled = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(full: bool, pages: Vec<u64>) -> Task {
        Task::new("v", full, (1, 1), pages, Instant::now())
    }

    #[test]
    fn moves_and_rebuilds_spend_budgets_of_their_own() {
        // A volume of 4 pages of 4 MiB, all written here (their data counts).
        let info = crate::volume::VolumeInfo {
            id: VolumeId(1),
            name: "v".into(),
            uuid: [0; 16],
            nguid: [0; 16],
            page_size: 4 << 20,
            block_size: 4096,
            num_pages: 4,
        };
        let pages = std::sync::Arc::new(crate::volume::PageTable::new(4));
        for p in 0..4 {
            pages.set(p, p * (4 << 20));
        }
        let view = std::sync::Arc::new(crate::volume::VolumeView {
            info,
            pages,
            pieces: Default::default(),
            qos: Default::default(),
        });
        let mut r = Rebuilds::default();
        let rebuild: TaskKey = (VolumeId(1), 0, 2, 1);
        let mv: TaskKey = (VolumeId(1), 1, 3, 1);
        r.tasks.insert(rebuild, task(true, vec![0, 1]));
        let mut t = task(true, vec![2, 3]);
        t.moving = true;
        r.tasks.insert(mv, t);
        let t0 = Instant::now();
        let jobs_of = |out: &[Action], set: usize| {
            out.iter().filter(|a| matches!(a, Action::Copy(_, j) if j.page / 2 == set as u64)).count()
        };
        // Rebuilds at 1 MB/s, moves at 100 MB/s: a tenth of a second in, the rebuild
        // has 0.1 MB (one 64 KiB piece goes, then its budget is spent), the move 10 MB
        // (as many pieces as the reactor's job slots take).
        assert!(r.turn(1, (1, 100, 1), t0, |_| Some(view.clone())).is_empty(), "no budget yet");
        let out = r.turn(1, (1, 100, 1), t0 + std::time::Duration::from_millis(100), |_| Some(view.clone()));
        assert_eq!(jobs_of(&out, 0), 2, "the rebuild: its 0.1 MB of budget takes two pieces");
        assert!(jobs_of(&out, 1) >= 40, "the move goes on at its own rate: {}", jobs_of(&out, 1));
    }

    #[test]
    fn a_full_rebuild_goes_a_piece_at_a_time_and_its_cursor_covers_only_what_is_all_done() {
        let mut t = task(true, vec![3, 7]);
        t.build(4, 0b1111, false);
        assert_eq!(t.items.len(), 8);
        assert_eq!(t.items[0], Item { page: 3, mask: 1, idx: 0 });
        assert_eq!(t.items[5], Item { page: 7, mask: 0b10, idx: 5 });
        // Done out of order: the cursor stops at the first piece not done.
        for idx in [1, 2, 0, 4] {
            t.item_done(idx);
        }
        assert_eq!(t.cursor, 3, "pieces 0..3 are done, piece 3 is not");
        t.item_done(3);
        assert_eq!(t.cursor, 5, "piece 4 was done already");
        let p = Rebuilds { tasks: [((VolumeId(1), 0, 2, 9), t)].into_iter().collect(), ..Rebuilds::default() };
        let published = p.progress(4);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].0, (VolumeId(1), 0, 2));
        assert_eq!((published[0].1.done, published[0].1.items, published[0].1.leader), (5, 8, 4));
    }

    #[test]
    fn a_resumed_rebuild_compares_what_the_earlier_run_had_done_only_for_the_same_work_list() {
        let mut first = task(true, vec![3, 7]);
        first.build(4, 0b1111, false);
        (0..6).for_each(|i| first.item_done(i));
        let progress = CopyProgress { sig: first.sig, items: 8, done: first.cursor, leader: 0 };
        let mut again = task(true, vec![3, 7]);
        again.resume = Some(progress);
        again.build(4, 0b1111, false);
        assert_eq!(again.compare_below, 6);
        // Another set of pages (or pieces per page): nothing is taken from it.
        let mut other = task(true, vec![3, 8]);
        other.resume = Some(progress);
        other.build(4, 0b1111, false);
        assert_eq!(other.compare_below, 0);
        let mut finer = task(true, vec![3, 7]);
        finer.resume = Some(progress);
        finer.build(8, 0xff, false);
        assert_eq!(finer.compare_below, 0);
    }

    #[test]
    fn a_delta_rebuild_and_a_scrub_go_a_page_at_a_time() {
        let mut d = task(false, vec![1, 2]);
        d.build(4, 0b1111, false);
        assert_eq!(d.items, vec![Item { page: 1, mask: 0, idx: 0 }, Item { page: 2, mask: 0, idx: 1 }]);
        let mut s = task(true, vec![1, 2]);
        s.build(4, 0b1111, true);
        assert_eq!(s.items[1], Item { page: 2, mask: 0b1111, idx: 1 });
        assert!(s.finished.is_empty(), "a scrub keeps no progress");
    }
}
