//! The reactor's copier: brings one member of a replica set up to date with this
//! peer's copy (this peer leads the set), a page at a time, for the rebuild driver on
//! the control thread ([`super::rebuild`]).
//!
//! A job is a page and the pieces of it to copy to one member. Each piece goes through
//! the same gate as a host's write (the page's piece lock on this peer), so no write to
//! the piece is in flight while it is read and sent, and every later write to it
//! reaches the member after the copy (the member takes every write while it is being
//! rebuilt, and the lock is held until the member has answered):
//!
//! ```text
//!   Lock ──► (page allocated here) Read ── device ──► Send ── replica write ──► answer ──► next unit / piece
//!     │      (page unallocated here) ──────────────► Send ── write zeroes ───┘
//!     └── piece taken by a write: try again next pass
//! ```
//!
//! A scrub job compares instead of copying: per unit, this peer's CRC32C against the
//! member's (a `Digest`), and on a difference it repairs the member from this copy.
//! When the set has a third copy in sync (a witness), the witness's checksum decides
//! first: if it agrees with the member, this peer's copy is the odd one out and is
//! repaired from the member (read over the link, written to the device here);
//! otherwise the member is. With two copies the leader's copy is the reference.
//!
//! ```text
//!   Read ──► Digest(member) ── equal ──► next unit
//!                  └─ differs ──► Digest(witness) ── = member ──► Fetch(member) ──► Heal (device write) ──► next
//!                         (no witness) └─ otherwise ──► Send (this copy to the member) ──► next
//! ```
//!
//! A piece's "missed by this member" mark is cleared when the piece is locked and set
//! again if the copy fails, so that a failed or abandoned copy is never counted as
//! done. Units are at most [`proto::PART_MAX`] bytes and [`SEGS_MAX`] buffers; a
//! job holds its buffers only while a unit is read or sent. A reactor runs at most
//! [`JOBS_MAX`] jobs; each ends with one report to the control thread.

use std::time::Instant;

use quire_drivers::block::SEGS_MAX;
use quire_drivers::dma::DmaBuf;
use quire_drivers::{IoError, Op, SubmitError};
use quire_wire::nvme::Status;

use crate::peer::client::Forward;
use crate::peer::frame::Segs;
use crate::peer::proto;
use crate::reactor::stats::add;
use crate::reactor::{ReactorCtx, ReqRef};
use crate::replica::locks::Pieces;
use crate::volume::routing::PeerId;
use crate::volume::VolumeId;

/// Copy jobs one reactor holds at a time, running and queued: the control thread
/// keeps it this full, so that a job that ends is followed at once by a queued one,
/// without waiting for the control thread's next turn.
pub const JOBS_MAX: usize = 96;
/// Copy jobs one reactor runs at a time (a job is a piece for a full rebuild: this
/// many units in flight per reactor keep the link busy across round trips).
pub const RUN_MAX: usize = 32;
/// The connection slot device completions and link answers of copies carry.
pub const COPIER_CONN: u32 = u32::MAX;

/// Copy pieces `mask` of `page` of `volume` to member `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyJob {
    /// Identifies the job in its report.
    pub id: u64,
    /// The volume.
    pub volume: VolumeId,
    /// The page.
    pub page: u64,
    /// The pieces to copy.
    pub mask: u64,
    /// The member.
    pub to: PeerId,
    /// Scrub: compare the member's checksum of each unit with this peer's, and send the
    /// unit only where they differ (a repair), instead of sending every unit.
    pub verify: bool,
    /// With `verify`: a rebuild by comparison (a copy resumed after a crash goes over
    /// what it had already sent this way), not a scrub. This peer's copy is the
    /// reference (the member is not in sync: no witness is asked), a difference is
    /// not counted as a scrub's, and the piece's "missed" mark is cleared and set
    /// again on failure as for a copy.
    pub compare: bool,
}

impl CopyJob {
    /// Whether the job brings the member's "missed" marks up to date (a copy, or a
    /// rebuild by comparison; a scrub leaves them).
    pub fn tracks_missed(&self) -> bool {
        !self.verify || self.compare
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The job.
    pub id: u64,
    /// Bytes sent (data, not zeroes).
    pub bytes: u64,
    /// Scrub: units whose checksums differed (each repaired unless `failed`).
    pub mismatches: u64,
    /// None when every piece was copied; else why not.
    pub failed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Between units: the next one starts at the next pass.
    Ready,
    /// The device reads the unit into the job's buffers.
    Reading,
    /// Scrub: the member computes its checksum of the unit.
    Digesting,
    /// The member has the unit's replica write.
    Sending,
    /// Scrub, the member's copy differs: the witness computes its checksum.
    Witnessing,
    /// Scrub, this peer's copy is the odd one out: the member's unit is read into the
    /// job's buffers.
    Fetching,
    /// Scrub: the member's unit is written over this peer's copy.
    Healing,
}

struct Running {
    job: CopyJob,
    /// Pieces not yet copied.
    left: u64,
    /// The piece being copied (locked here), and the member's position then.
    piece: Option<(u32, u8)>,
    /// Blocks of the piece done, and of the unit in flight.
    off: u64,
    unit: u64,
    stage: Stage,
    bufs: Vec<DmaBuf>,
    bytes: u64,
    /// Scrub: this peer's checksum of the unit in flight, the member's, and
    /// differences found.
    crc: u32,
    theirs: u32,
    mismatches: u64,
}

/// The copy jobs of one reactor.
#[derive(Default)]
pub struct Copier {
    slots: Vec<Option<Running>>,
    /// Jobs waiting for a slot, in the order given.
    queued: std::collections::VecDeque<CopyJob>,
    /// Finished jobs, for the control thread.
    pub reports: Vec<CopyReport>,
}

impl Copier {
    /// Takes a job (the control thread never gives a reactor more than [`JOBS_MAX`]):
    /// runs it, or queues it while [`RUN_MAX`] run.
    pub fn start(&mut self, job: CopyJob) {
        let running = self.slots.iter().filter(|s| s.is_some()).count();
        assert!(running + self.queued.len() < JOBS_MAX, "more than {JOBS_MAX} copy jobs on one reactor");
        if running >= RUN_MAX {
            self.queued.push_back(job);
            return;
        }
        let run = Running {
            job,
            left: job.mask,
            piece: None,
            off: 0,
            unit: 0,
            stage: Stage::Ready,
            bufs: Vec::new(),
            bytes: 0,
            crc: 0,
            theirs: 0,
            mismatches: 0,
        };
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(s) => *s = Some(run),
            None => {
                debug_assert!(self.slots.len() < RUN_MAX);
                self.slots.push(Some(run));
            }
        }
    }

    /// True while a job runs or waits.
    pub fn busy(&self) -> bool {
        !self.queued.is_empty() || self.slots.iter().any(Option::is_some)
    }

    /// Starts queued jobs in free slots, and the next unit of every job between units.
    /// True on progress.
    pub fn poll(&mut self, ctx: &mut ReactorCtx) -> bool {
        let mut work = false;
        while !self.queued.is_empty() && self.slots.iter().filter(|s| s.is_some()).count() < RUN_MAX {
            let job = self.queued.pop_front().expect("not empty");
            self.start(job);
            work = true;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|r| r.stage == Stage::Ready) {
                work |= self.step(i, ctx);
            }
        }
        work
    }

    fn step(&mut self, i: usize, ctx: &mut ReactorCtx) -> bool {
        let job = self.slots[i].as_ref().expect("a running job").job;
        let Some(v) = ctx.volumes.get(&job.volume).filter(|v| job.page < v.routing.len()) else {
            return self.finish(i, Some("the volume is gone".into()), ctx);
        };
        let set = *v.routing.set_of(job.page);
        let (bpp, bs) = (v.view.info.blocks_per_page(), u64::from(v.view.info.block_size));
        let (table, page_slot, epoch) = (v.view.pieces.clone(), v.view.pages.get(job.page), v.routing.epoch.0);
        let pieces = Pieces::of(bpp);
        let run = self.slots[i].as_mut().expect("a running job");
        if run.piece.is_none() {
            if run.left == 0 {
                return self.finish(i, None, ctx);
            }
            if !set.leads_here() || !set.takes_writes(job.to) {
                return self.finish(i, Some("this peer no longer leads the set, or the member left it".into()), ctx);
            }
            if !ctx.fence.holds(Instant::now(), set.my_inc()) {
                return self.finish(i, Some("this peer's lease may have expired".into()), ctx);
            }
            let Some(slot) = set.slot_of(job.to) else {
                return self.finish(i, Some("the member left the set".into()), ctx);
            };
            let piece = run.left.trailing_zeros();
            let bit = 1u64 << piece;
            if !table.try_lock(job.page, bit) {
                // A write has it: next pass.
                return false;
            }
            if job.tracks_missed() {
                table.clear_missed(job.page, slot, bit);
            }
            run.piece = Some((piece, slot));
            run.off = 0;
        }
        let (piece, _) = run.piece.expect("locked above");
        let first = job.page * bpp + u64::from(piece) * pieces.blocks + run.off;
        let rest = pieces.blocks - run.off;
        let rref = ReqRef { conn: COPIER_CONN, req: slot_req(i) };
        let chunk = ctx.pool.chunk_size() as u64;
        let unit = rest.min(u64::from(proto::PART_MAX) / bs).min(SEGS_MAX as u64 * chunk / bs);
        let Some(page_slot) = page_slot else {
            // Nothing written here: the member's copy reads zeroes too.
            if job.verify {
                run.unit = unit;
                run.crc = zeroes_crc(unit * bs);
                run.stage = Stage::Digesting;
                let f = forward(job, job.to, rref, (first, unit), proto::Op::Digest, epoch, Segs::NONE, bpp, ctx);
                ctx.forward(job.to, f);
                return true;
            }
            run.unit = rest;
            run.stage = Stage::Sending;
            let f = forward(job, job.to, rref, (first, rest), proto::Op::WriteZeroes, epoch, Segs::NONE, bpp, ctx);
            ctx.forward(job.to, f);
            return true;
        };
        let need = usize::try_from((unit * bs).div_ceil(chunk)).expect("at most SEGS_MAX");
        // A quarter of the reactor's buffers stays for the hosts' commands: copies
        // wait for buffers, hosts' commands do not wait on copies.
        let reserve = (ctx.pool.total() / 4).min(ctx.pool.total().saturating_sub(need));
        if ctx.pool.available() < need + reserve {
            return false;
        }
        let dev_bs = ctx.dev_block_size;
        let dev_lba = (page_slot + (u64::from(piece) * pieces.blocks + run.off) * bs) / dev_bs;
        let dev_blocks = u32::try_from(unit * bs / dev_bs).expect("a unit is at most PART_MAX");
        run.bufs.extend((0..need).map(|_| ctx.pool.get().expect("counted available")));
        ctx.prepare(Op::Read, dev_lba, dev_blocks);
        segs_of(&run.bufs, unit * bs, &mut ctx.dev_req);
        match ctx.submit_prepared(rref) {
            Ok(()) => {
                run.unit = unit;
                run.stage = Stage::Reading;
                true
            }
            Err(SubmitError::QueueFull) => {
                for b in run.bufs.drain(..) {
                    ctx.pool.put(b);
                }
                false
            }
            Err(SubmitError::Invalid(why)) => self.finish(i, Some(format!("the device refused the read: {why}")), ctx),
        }
    }

    /// The device read unit of job slot `req`.
    pub fn on_device_completion(&mut self, req: u16, result: Result<(), IoError>, ctx: &mut ReactorCtx) {
        let i = usize::from(req);
        let run = self.slots[i].as_mut().expect("a device completion for a running copy");
        if run.stage == Stage::Healing {
            self.on_healed(i, result, ctx);
            return;
        }
        assert_eq!(run.stage, Stage::Reading, "copy {i}: a device completion while {:?}", run.stage);
        if let Err(e) = result {
            run.stage = Stage::Ready;
            self.finish(i, Some(format!("reading this peer's copy: {e:?}")), ctx);
            return;
        }
        let job = run.job;
        let Some((bpp, bs, epoch, first)) = unit_at(run, ctx) else {
            run.stage = Stage::Ready;
            self.finish(i, Some("the volume is gone".into()), ctx);
            return;
        };
        let rref = ReqRef { conn: COPIER_CONN, req };
        if job.verify {
            run.crc = bufs_crc(&run.bufs, run.unit * bs);
            run.stage = Stage::Digesting;
            let f = forward(job, job.to, rref, (first, run.unit), proto::Op::Digest, epoch, Segs::NONE, bpp, ctx);
            ctx.forward(job.to, f);
            return;
        }
        ctx.dev_req.nsegs = 0;
        segs_of(&run.bufs, run.unit * bs, &mut ctx.dev_req);
        let data = Segs::of(&ctx.dev_req.segs[..ctx.dev_req.nsegs]);
        let f = forward(job, job.to, rref, (first, run.unit), proto::Op::Write, epoch, data, bpp, ctx);
        run.stage = Stage::Sending;
        ctx.forward(job.to, f);
    }

    /// The member answered the unit of job slot `req`.
    pub fn on_forward_done(&mut self, req: u16, result: Result<(), Status>, ctx: &mut ReactorCtx) {
        let i = usize::from(req);
        let run = self.slots[i].as_mut().expect("a link answer for a running copy");
        assert!(
            matches!(run.stage, Stage::Sending | Stage::Digesting | Stage::Witnessing | Stage::Fetching),
            "copy {i}: a link answer while {:?}",
            run.stage
        );
        debug_assert!(
            matches!(run.stage, Stage::Sending | Stage::Fetching) || result.is_err(),
            "a digest is answered by on_digest"
        );
        if run.stage == Stage::Fetching && result.is_ok() {
            self.heal(i, ctx);
            return;
        }
        for b in run.bufs.drain(..) {
            ctx.pool.put(b);
        }
        if let Err(s) = result {
            run.stage = Stage::Ready;
            self.finish(i, Some(format!("the member answered {s:?}")), ctx);
            return;
        }
        run.stage = Stage::Ready;
        let job = run.job;
        let Some(v) = ctx.volumes.get(&job.volume) else {
            self.finish(i, Some("the volume is gone".into()), ctx);
            return;
        };
        let bs = u64::from(v.view.info.block_size);
        if v.view.pages.get(job.page).is_some() {
            run.bytes += run.unit * bs;
            add(&ctx.stats.rebuild_bytes, run.unit * bs);
        }
        self.unit_done(i, ctx);
    }

    /// The unit in flight of job `i` is done: the next one, or the piece is.
    fn unit_done(&mut self, i: usize, ctx: &mut ReactorCtx) {
        let run = self.slots[i].as_mut().expect("a running job");
        let job = run.job;
        let Some(v) = ctx.volumes.get(&job.volume) else {
            self.finish(i, Some("the volume is gone".into()), ctx);
            return;
        };
        let pieces = Pieces::of(v.view.info.blocks_per_page());
        let (piece, _) = run.piece.expect("a unit in flight is of a locked piece");
        run.off += run.unit;
        if run.off == pieces.blocks {
            let bit = 1u64 << piece;
            v.view.pieces.unlock(job.page, bit);
            run.left &= !bit;
            run.piece = None;
        }
    }

    /// A checksum for scrub job slot `req`: the member's (equal to this peer's, the
    /// unit is done; different, the witness is asked, or without one the member is
    /// repaired), or the witness's (it agrees with the member: this peer's copy is
    /// repaired from the member's; otherwise the member's from this one).
    pub fn on_digest(&mut self, req: u16, result: Result<u32, Status>, ctx: &mut ReactorCtx) {
        let i = usize::from(req);
        let run = self.slots[i].as_mut().expect("a digest for a running scrub");
        let stage = run.stage;
        assert!(matches!(stage, Stage::Digesting | Stage::Witnessing), "scrub {i}: a digest while {:?}", run.stage);
        let crc = match result {
            Ok(c) => c,
            Err(s) => {
                run.stage = Stage::Ready;
                let whose = if stage == Stage::Witnessing { "witness" } else { "member" };
                self.finish(i, Some(format!("the {whose} answered {s:?}")), ctx);
                return;
            }
        };
        if stage == Stage::Digesting && crc == run.crc {
            for b in run.bufs.drain(..) {
                ctx.pool.put(b);
            }
            run.stage = Stage::Ready;
            self.unit_done(i, ctx);
            return;
        }
        let job = run.job;
        let Some((bpp, bs, epoch, first)) = unit_at(run, ctx) else {
            run.stage = Stage::Ready;
            self.finish(i, Some("the volume is gone".into()), ctx);
            return;
        };
        let rref = ReqRef { conn: COPIER_CONN, req };
        if stage == Stage::Digesting {
            run.mismatches += 1;
            run.theirs = crc;
            if job.compare {
                self.repair_member(i, ctx);
                return;
            }
            add(&ctx.stats.scrub_mismatches, 1);
            if let Some(w) = witness(job, ctx) {
                run.stage = Stage::Witnessing;
                let f = forward(job, w, rref, (first, run.unit), proto::Op::Digest, epoch, Segs::NONE, bpp, ctx);
                ctx.forward(w, f);
                return;
            }
        } else if crc == run.theirs {
            // Two copies against this one: this one is wrong.
            tracing::warn!(
                volume = ?job.volume, page = job.page, lba = first, member = job.to.0,
                "scrub: this peer's copy differs from two others; repairing it from the member's"
            );
            if run.bufs.is_empty() {
                // No slot here for the page (it reads as zeroes): the control thread
                // allocates slots, not the copier. Left as it is, and said so.
                tracing::error!(
                    volume = ?job.volume, page = job.page, lba = first,
                    "scrub: cannot repair this peer's copy of a page it holds no slot for"
                );
                run.stage = Stage::Ready;
                self.unit_done(i, ctx);
                return;
            }
            ctx.dev_req.nsegs = 0;
            segs_of(&run.bufs, run.unit * bs, &mut ctx.dev_req);
            let data = Segs::of(&ctx.dev_req.segs[..ctx.dev_req.nsegs]);
            run.stage = Stage::Fetching;
            let f = forward(job, job.to, rref, (first, run.unit), proto::Op::Read, epoch, data, bpp, ctx);
            ctx.forward(job.to, f);
            return;
        }
        self.repair_member(i, ctx);
    }

    /// Sends this peer's copy of the unit in flight of scrub job `i` to its member.
    fn repair_member(&mut self, i: usize, ctx: &mut ReactorCtx) {
        let run = self.slots[i].as_mut().expect("a running scrub");
        let job = run.job;
        let Some((bpp, bs, epoch, first)) = unit_at(run, ctx) else {
            run.stage = Stage::Ready;
            self.finish(i, Some("the volume is gone".into()), ctx);
            return;
        };
        let rref = ReqRef { conn: COPIER_CONN, req: slot_req(i) };
        if !job.compare {
            tracing::warn!(
                volume = ?job.volume, page = job.page, lba = first, member = job.to.0,
                "scrub: the member's copy differs; repairing it"
            );
        }
        let f = if run.bufs.is_empty() {
            forward(job, job.to, rref, (first, run.unit), proto::Op::WriteZeroes, epoch, Segs::NONE, bpp, ctx)
        } else {
            ctx.dev_req.nsegs = 0;
            segs_of(&run.bufs, run.unit * bs, &mut ctx.dev_req);
            let data = Segs::of(&ctx.dev_req.segs[..ctx.dev_req.nsegs]);
            forward(job, job.to, rref, (first, run.unit), proto::Op::Write, epoch, data, bpp, ctx)
        };
        run.stage = Stage::Sending;
        ctx.forward(job.to, f);
    }

    /// The member's unit of scrub job `i` is in the job's buffers: written over this
    /// peer's copy (the piece is still locked: no write of the host's races it).
    fn heal(&mut self, i: usize, ctx: &mut ReactorCtx) {
        let run = self.slots[i].as_mut().expect("a running scrub");
        let job = run.job;
        let slot = ctx.volumes.get(&job.volume).and_then(|v| v.view.pages.get(job.page));
        let (Some(page_slot), Some(v)) = (slot, ctx.volumes.get(&job.volume)) else {
            run.stage = Stage::Ready;
            self.finish(i, Some("the page's slot is gone".into()), ctx);
            return;
        };
        let (bpp, bs) = (v.view.info.blocks_per_page(), u64::from(v.view.info.block_size));
        let (piece, _) = run.piece.expect("a unit in flight is of a locked piece");
        let dev_bs = ctx.dev_block_size;
        let dev_lba = (page_slot + (u64::from(piece) * Pieces::of(bpp).blocks + run.off) * bs) / dev_bs;
        let dev_blocks = u32::try_from(run.unit * bs / dev_bs).expect("a unit is at most PART_MAX");
        ctx.prepare(Op::Write { fua: false }, dev_lba, dev_blocks);
        segs_of(&run.bufs, run.unit * bs, &mut ctx.dev_req);
        match ctx.submit_prepared(ReqRef { conn: COPIER_CONN, req: slot_req(i) }) {
            Ok(()) => run.stage = Stage::Healing,
            Err(e) => {
                run.stage = Stage::Ready;
                let why = match e {
                    SubmitError::QueueFull => "the device queue is full".to_string(),
                    SubmitError::Invalid(why) => format!("the device refused the write: {why}"),
                };
                // The page is scrubbed again later (a failed job's pages are retried).
                self.finish(i, Some(format!("repairing this peer's copy: {why}")), ctx);
            }
        }
    }

    /// This peer's copy of the unit of scrub job `i` was written over.
    fn on_healed(&mut self, i: usize, result: Result<(), IoError>, ctx: &mut ReactorCtx) {
        let run = self.slots[i].as_mut().expect("a running scrub");
        run.stage = Stage::Ready;
        if let Err(e) = result {
            self.finish(i, Some(format!("repairing this peer's copy: {e:?}")), ctx);
            return;
        }
        for b in run.bufs.drain(..) {
            ctx.pool.put(b);
        }
        self.unit_done(i, ctx);
    }

    /// Ends job `i` (its piece unlocked, marked missed again if it failed midway) and
    /// reports it. Always true (progress).
    fn finish(&mut self, i: usize, failed: Option<String>, ctx: &mut ReactorCtx) -> bool {
        let run = self.slots[i].take().expect("a running job");
        debug_assert!(run.stage != Stage::Reading, "a job ends only with no device read in flight");
        for b in run.bufs {
            ctx.pool.put(b);
        }
        if let Some((piece, slot)) = run.piece {
            let bit = 1u64 << piece;
            if let Some(v) = ctx.volumes.get(&run.job.volume).filter(|v| run.job.page < v.routing.len()) {
                if run.job.tracks_missed() {
                    v.view.pieces.mark_missed(run.job.page, 1 << slot, bit);
                }
                v.view.pieces.unlock(run.job.page, bit);
            }
        }
        self.reports.push(CopyReport { id: run.job.id, bytes: run.bytes, mismatches: run.mismatches, failed });
        true
    }
}

/// A third in-sync copy of the job's page (not this peer's, not the member's), for a
/// scrub to break a tie with.
fn witness(job: CopyJob, ctx: &ReactorCtx) -> Option<PeerId> {
    let v = ctx.volumes.get(&job.volume)?;
    let set = v.routing.set_of(job.page);
    let me = set.me?;
    set.members()
        .iter()
        .enumerate()
        .find(|&(k, m)| k != usize::from(me) && m.0 != job.to && m.1 == crate::replica::set::Role::Sync)
        .map(|(_, m)| m.0)
}

/// The unit in flight of `run`: the volume's blocks per page, block size and epoch on
/// this reactor, and the unit's first volume block; None if the volume went.
fn unit_at(run: &Running, ctx: &ReactorCtx) -> Option<(u64, u64, u64, u64)> {
    let v = ctx.volumes.get(&run.job.volume)?;
    let (bpp, bs, epoch) = (v.view.info.blocks_per_page(), u64::from(v.view.info.block_size), v.routing.epoch.0);
    let (piece, _) = run.piece.expect("a unit in flight is of a locked piece");
    Some((bpp, bs, epoch, run.job.page * bpp + u64::from(piece) * Pieces::of(bpp).blocks + run.off))
}

/// CRC32C of the first `len` bytes of `bufs` (what a member's link server computes of
/// its copy for a digest).
fn bufs_crc(bufs: &[DmaBuf], len: u64) -> u32 {
    let mut left = usize::try_from(len).expect("a unit's length");
    let mut crc = 0;
    for b in bufs {
        let n = left.min(b.len());
        crc = quire_wire::tcp::digest::crc32c_append(crc, &b.as_slice()[..n]);
        left -= n;
    }
    crc
}

/// CRC32C of `len` zero bytes.
fn zeroes_crc(len: u64) -> u32 {
    const ZEROES: [u8; 4096] = [0; 4096];
    let mut left = len;
    let mut crc = 0;
    while left > 0 {
        let n = left.min(4096);
        crc = quire_wire::tcp::digest::crc32c_append(crc, &ZEROES[..usize::try_from(n).expect("≤ 4096")]);
        left -= n;
    }
    crc
}

fn slot_req(i: usize) -> u16 {
    u16::try_from(i).expect("at most RUN_MAX jobs run")
}

/// The first `len` bytes of `bufs` as the device request's segments.
fn segs_of(bufs: &[DmaBuf], len: u64, req: &mut quire_drivers::IoRequest) {
    let mut left = usize::try_from(len).expect("a unit's length");
    req.nsegs = 0;
    for b in bufs {
        if left == 0 {
            break;
        }
        let n = left.min(b.len());
        req.segs[req.nsegs] = b.seg(0, n);
        req.nsegs += 1;
        left -= n;
    }
    assert_eq!(left, 0, "a unit's buffers hold it");
}

/// The replica write (or zeroes) of `[first, first + n)` for the job's member.
#[allow(clippy::too_many_arguments)]
fn forward(
    job: CopyJob,
    to: PeerId,
    rref: ReqRef,
    (first, n): (u64, u64),
    op: proto::Op,
    epoch: u64,
    data: Segs,
    bpp: u64,
    ctx: &ReactorCtx,
) -> Forward {
    Forward {
        rref,
        to,
        op,
        fua: false,
        volume: job.volume,
        epoch: crate::volume::routing::Epoch(epoch),
        page: first / bpp,
        lba: first,
        nlb: u32::try_from(n).expect("a piece's blocks"),
        data,
        deadline: Instant::now() + ctx.hold(),
        replica: true,
    }
}
