//! An I/O queue pair: the polled data path.
//!
//! A block request ([`IoRequest`]) becomes one or more NVMe commands: Read and Write are
//! cut at the command size limit (MDTS, and the 2 MiB one PRP list page covers), Write
//! Zeroes at 65536 blocks. Each command gets a command id (cid) that indexes
//! [`NvmeQueuePair::cmds`], which records its state and its request; each request
//! slot counts the commands still out and remembers the first error. The request
//! completes, once, when its last command does.
//!
//! Command slots and SQ slots are one-to-one (`entries - 1` of each), so a request that
//! gets its command ids always finds room in the SQ and the CQ; a request that cannot
//! get them is [`SubmitError::QueueFull`].
//!
//! Error paths, all on the slow path of a poll with requests outstanding (busy or
//! idle: a queue that never goes idle must still notice a hung command), at most
//! every [`CHECK_INTERVAL`]:
//! - a command past its deadline is aborted (admin Abort); if it is still out after a
//!   second deadline, the controller is reset;
//! - CSTS.CFS (fatal) resets the controller; CSTS reading all ones (device gone) marks
//!   the controller failed, and every outstanding and later request completes with
//!   [`IoError::Aborted`];
//! - after any reset (seen as a new controller generation) the queue pair reaps what
//!   the old queues still hold, re-creates its queues and resubmits every request in
//!   flight, up to [`RETRIES_MAX`] times, so a reset loses and hangs nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quire_wire::nvme::{opcode, Command, Status};

use crate::block::{Completion, IoError, IoRequest, Op, QueuePair, SubmitError};

use super::ctrlr::{io_error, PcieController};
use super::prp;
use super::regs;
use super::ring::Ring;
use super::vfio::{DmaArea, PAGE_SIZE};

/// How often a poll with requests outstanding looks at deadlines and CSTS.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// Times a request is resubmitted after controller resets before it fails.
pub const RETRIES_MAX: u8 = 3;
/// Largest number of commands one request may be split into.
pub const SPLIT_MAX: u32 = 64;
/// Write Zeroes carries a 16-bit 0-based block count.
const WRITE_ZEROES_BLOCKS_MAX: u32 = 1 << 16;
/// Idle polls between two looks at the clock.
const POLLS_PER_CLOCK: u32 = 64;

/// What a queue pair needs to know about its namespace.
#[derive(Clone, Copy, Debug)]
pub struct NsParams {
    /// Namespace id.
    pub nsid: u32,
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks in the namespace.
    pub num_blocks: u64,
    /// Largest transfer of one command in blocks.
    pub cmd_blocks_max: u32,
    /// Per-command timeout.
    pub timeout: Duration,
    /// IOVA window data segments must lie in (the pool's mapping).
    pub iova_window: (u64, u64),
}

/// The state of a command slot (indexed by cid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmdState {
    /// Not in use.
    Free,
    /// In the SQ (rung or not) for request `req`, expected by `deadline`.
    Submitted {
        /// Request slot.
        req: u32,
        /// When the command times out.
        deadline: Instant,
    },
    /// Past its deadline; an Abort was sent; the controller is reset after `deadline`.
    Aborting {
        /// Request slot.
        req: u32,
        /// When the controller is reset.
        deadline: Instant,
    },
}

/// The state of a request slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqState {
    /// Not in use.
    Free,
    /// Its commands are with the controller; `cmds_left` of them outstanding.
    InFlight,
}

#[derive(Clone, Copy)]
struct Req {
    state: ReqState,
    io: IoRequest,
    cmds_left: u32,
    result: Result<(), IoError>,
    retries: u8,
}

/// A queue pair on an [`super::NvmeDevice`], for one thread.
pub struct NvmeQueuePair {
    // Fields drop in declaration order: the ring (which maps BAR0 through its doorbells)
    // must go before the controller, whose last reference closes the VFIO device.
    ring: Ring,
    ctrl: Arc<PcieController>,
    /// The controller generation the queues were created in.
    generation: u64,
    ns: NsParams,
    /// One page per command slot: its PRP list, or its Dataset Management range.
    lists: DmaArea,
    cmds: Vec<CmdState>,
    free_cids: Vec<u16>,
    reqs: Vec<Req>,
    free_reqs: Vec<u32>,
    /// Completions decided without the device (range errors, failed controller).
    done: VecDeque<Completion>,
    /// Requests accepted and not yet reported.
    outstanding: u32,
    /// Polls with requests outstanding since the clock was last read.
    polls: u32,
    next_check: Instant,
}

// SAFETY: the queue pair exclusively owns its rings and DMA areas (raw pointers into
// memory nothing else touches but the device) and the raw segment pointers of the
// requests it holds, which submit's contract hands over until completion.
unsafe impl Send for NvmeQueuePair {}

impl NvmeQueuePair {
    /// Builds a queue pair of `entries` SQ/CQ entries on queue `ring.qid()` and creates
    /// its queues on the controller.
    pub fn new(
        ctrl: Arc<PcieController>,
        ring: Ring,
        lists: DmaArea,
        ns: NsParams,
    ) -> Result<NvmeQueuePair, super::NvmeError> {
        // One slot short of the ring (a full SQ would look empty); a u16 like the CID.
        let slot_count = ring.entries() - 1;
        let slots = usize::from(slot_count);
        assert!(lists.len() >= slots * PAGE_SIZE);
        assert!(ns.cmd_blocks_max > 0 && ns.block_size.is_power_of_two());
        let generation = ctrl.generation();
        ctrl.create_io_queues(&ring, generation)?;
        let empty = Req {
            state: ReqState::Free,
            io: IoRequest::no_data(Op::Flush, 0, 0, 0),
            cmds_left: 0,
            result: Ok(()),
            retries: 0,
        };
        Ok(NvmeQueuePair {
            ctrl,
            ring,
            generation,
            ns,
            lists,
            cmds: vec![CmdState::Free; slots],
            free_cids: (0..slot_count).rev().collect(),
            reqs: vec![empty; slots],
            free_reqs: (0..u32::from(slot_count)).rev().collect(),
            done: VecDeque::with_capacity(slots),
            outstanding: 0,
            polls: 0,
            next_check: Instant::now() + CHECK_INTERVAL,
        })
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.ring.qid()
    }

    /// Commands one request needs.
    fn cmds_needed(&self, io: &IoRequest) -> u32 {
        cmds_needed(&self.ns, io)
    }

    fn validate(&self, io: &IoRequest) -> Result<(), SubmitError> {
        if io.op == Op::Flush {
            return if io.nsegs == 0 { Ok(()) } else { Err(SubmitError::Invalid("flush carries no data")) };
        }
        if io.num_blocks == 0 {
            return Err(SubmitError::Invalid("zero blocks"));
        }
        if !matches!(io.op, Op::Read | Op::Write { .. }) {
            return if io.nsegs == 0 { Ok(()) } else { Err(SubmitError::Invalid("operation carries no data")) };
        }
        if io.data_len() != u64::from(io.num_blocks) * u64::from(self.ns.block_size) {
            return Err(SubmitError::Invalid("segment bytes differ from the block count"));
        }
        prp::check_segs(io.segs()).map_err(SubmitError::Invalid)?;
        let (lo, hi) = self.ns.iova_window;
        if io.segs().iter().any(|s| s.iova < lo || s.iova + u64::from(s.len) > hi) {
            return Err(SubmitError::Invalid("segment outside the DMA-mapped buffer pool"));
        }
        if self.cmds_needed(io) > SPLIT_MAX {
            return Err(SubmitError::Invalid("transfer larger than max_transfer_bytes"));
        }
        Ok(())
    }

    /// Puts request slot `r`'s commands into the SQ (the caller checked cid supply).
    fn start(&mut self, r: u32, now: Instant) {
        // Disjoint field borrows: the request is read in place, never copied (it
        // carries up to SEGS_MAX segments).
        let io = &self.reqs[r as usize].io;
        let n = cmds_needed(&self.ns, io);
        assert!(self.free_cids.len() >= n as usize);
        let deadline = now + self.ns.timeout;
        // Blocks per command. MDTS bounds data transfers only: one Dataset Management
        // range carries a 32-bit length, so a deallocation is never cut at MDTS.
        let chunk = match io.op {
            Op::Read | Op::Write { .. } => self.ns.cmd_blocks_max,
            Op::WriteZeroes => WRITE_ZEROES_BLOCKS_MAX,
            Op::Deallocate | Op::Flush => u32::MAX,
        };
        let mut done_blocks = 0u32;
        for _ in 0..n {
            let blocks = (io.num_blocks - done_blocks).min(chunk);
            let cid = self.free_cids.pop().expect("counted above");
            let cmd = encode(&self.ns, &self.lists, io, cid, done_blocks, blocks);
            self.cmds[usize::from(cid)] = CmdState::Submitted { req: r, deadline };
            self.ring.push(&cmd);
            done_blocks += blocks;
        }
        assert!(done_blocks == io.num_blocks || io.op == Op::Flush);
        let req = &mut self.reqs[r as usize];
        req.state = ReqState::InFlight;
        req.cmds_left = n;
        req.result = Ok(());
    }

    /// Handles one completion entry; returns the request's completion when it is the
    /// request's last command.
    fn complete_cmd(&mut self, cid: u16, status: Status) -> Option<Completion> {
        let Some(state) = self.cmds.get(usize::from(cid)).copied() else {
            tracing::warn!(qid = self.qid(), cid, "completion for an unknown command id");
            return None;
        };
        let r = match state {
            CmdState::Free => {
                tracing::warn!(qid = self.qid(), cid, "completion for a free command id");
                return None;
            }
            CmdState::Submitted { req, .. } | CmdState::Aborting { req, .. } => req,
        };
        self.cmds[usize::from(cid)] = CmdState::Free;
        self.free_cids.push(cid);
        let req = &mut self.reqs[r as usize];
        assert_eq!(req.state, ReqState::InFlight);
        if !status.is_success() && req.result.is_ok() {
            req.result = Err(io_error(status));
        }
        req.cmds_left -= 1;
        if req.cmds_left > 0 {
            return None;
        }
        Some(self.finish(r))
    }

    fn finish(&mut self, r: u32) -> Completion {
        let req = &mut self.reqs[r as usize];
        req.state = ReqState::Free;
        let c = Completion { tag: req.io.tag, result: req.result };
        self.free_reqs.push(r);
        self.outstanding -= 1;
        c
    }

    /// The slow path: deadlines, controller status, resets.
    fn check(&mut self, now: Instant) {
        self.next_check = now + CHECK_INTERVAL;
        let csts = self.ctrl.mmio().read32(regs::CSTS);
        if csts == regs::GONE {
            self.ctrl.set_failed();
        } else if csts & regs::CSTS_CFS != 0 {
            tracing::error!(qid = self.qid(), "controller fatal status: resetting");
            let _ = self.ctrl.reset(self.generation);
        }
        if self.ctrl.failed() {
            self.fail_all();
            return;
        }
        if self.ctrl.generation() != self.generation {
            self.recover(now);
            return;
        }
        self.check_deadlines(now);
    }

    fn check_deadlines(&mut self, now: Instant) {
        for cid in 0..self.cmds.len() {
            match self.cmds[cid] {
                CmdState::Free => {}
                CmdState::Submitted { req, deadline } if deadline <= now => {
                    tracing::warn!(qid = self.qid(), cid, "command timed out: aborting");
                    let accepted = self.ctrl.abort(self.qid(), cid_of(cid)).unwrap_or(false);
                    if !accepted {
                        tracing::warn!(qid = self.qid(), cid, "abort not accepted");
                    }
                    self.cmds[cid] = CmdState::Aborting { req, deadline: now + self.ns.timeout };
                }
                CmdState::Submitted { .. } => {}
                CmdState::Aborting { deadline, .. } if deadline <= now => {
                    tracing::error!(qid = self.qid(), cid, "aborted command still out: resetting the controller");
                    if self.ctrl.reset(self.generation).is_err() {
                        self.fail_all();
                    } else {
                        self.recover(now);
                    }
                    return;
                }
                CmdState::Aborting { .. } => {}
            }
        }
    }

    /// After a reset: reap what the old queues hold, re-create the queues and resubmit
    /// every request still in flight.
    fn recover(&mut self, now: Instant) {
        while let Some(cqe) = self.ring.pop() {
            if let Some(c) = self.complete_cmd(cqe.cid, cqe.status()) {
                self.done.push_back(c);
            }
        }
        loop {
            let generation = self.ctrl.generation();
            self.ring.reset();
            match self.ctrl.create_io_queues(&self.ring, generation) {
                Ok(()) => {
                    self.generation = generation;
                    break;
                }
                Err(super::NvmeError::Reset) => continue,
                Err(e) => {
                    tracing::error!(qid = self.qid(), "re-creating queues after reset: {e}");
                    self.ctrl.set_failed();
                    self.fail_all();
                    return;
                }
            }
        }
        for cid in 0..self.cmds.len() {
            if self.cmds[cid] != CmdState::Free {
                self.cmds[cid] = CmdState::Free;
                self.free_cids.push(cid_of(cid));
            }
        }
        let mut resubmitted = 0;
        for r in 0..self.req_slots() {
            if self.reqs[r as usize].state != ReqState::InFlight {
                continue;
            }
            let req = &mut self.reqs[r as usize];
            if req.retries >= RETRIES_MAX {
                req.result = Err(IoError::Aborted);
                let c = self.finish(r);
                self.done.push_back(c);
            } else {
                req.retries += 1;
                self.start(r, now);
                resubmitted += 1;
            }
        }
        self.ctrl.count_resubmitted(resubmitted);
        self.ring.ring_sq();
    }

    /// Number of request slots (one per command slot, so below 2^16).
    fn req_slots(&self) -> u32 {
        u32::try_from(self.reqs.len()).expect("one request per command slot, fewer than a u16")
    }

    /// Completes every request with [`IoError::Aborted`] (the controller is gone).
    fn fail_all(&mut self) {
        for cid in 0..self.cmds.len() {
            if self.cmds[cid] != CmdState::Free {
                self.cmds[cid] = CmdState::Free;
                self.free_cids.push(cid_of(cid));
            }
        }
        for r in 0..self.req_slots() {
            if self.reqs[r as usize].state == ReqState::InFlight {
                self.reqs[r as usize].result = Err(IoError::Aborted);
                let c = self.finish(r);
                self.done.push_back(c);
            }
        }
    }
}

/// The CID of command slot `index`.
fn cid_of(index: usize) -> u16 {
    u16::try_from(index).expect("command slots are fewer than the ring's entries, a u16")
}

/// The command for blocks `first..first+blocks` of `io`.
fn encode(ns: &NsParams, lists: &DmaArea, io: &IoRequest, cid: u16, first: u32, blocks: u32) -> Command {
    let mut cmd = Command { cid, nsid: ns.nsid, ..Default::default() };
    let list_off = usize::from(cid) * PAGE_SIZE;
    match io.op {
        Op::Flush => cmd.opcode = opcode::NVM_FLUSH,
        Op::Read | Op::Write { .. } => {
            let fua = matches!(io.op, Op::Write { fua: true });
            cmd.opcode = if io.op == Op::Read { opcode::NVM_READ } else { opcode::NVM_WRITE };
            cmd.set_slba(io.lba + u64::from(first));
            cmd.cdw12 = (blocks - 1) | (u32::from(fua) << 30);
            let pos = u64::from(first) * u64::from(ns.block_size);
            let len = blocks * ns.block_size;
            let (mut prp1, mut prp2) = (0, 0);
            let n = prp::entries(io.segs(), pos, len, |i, addr| match i {
                0 => prp1 = addr,
                _ => {
                    if i == 1 {
                        prp2 = addr;
                    }
                    lists.write_u64(list_off + (i - 1) * 8, addr);
                }
            });
            if n > 2 {
                prp2 = lists.iova() + list_off as u64;
            }
            cmd.set_prps(prp1, prp2);
        }
        Op::WriteZeroes => {
            cmd.opcode = opcode::NVM_WRITE_ZEROES;
            cmd.set_slba(io.lba + u64::from(first));
            cmd.cdw12 = blocks - 1;
        }
        Op::Deallocate => {
            // One range: context attributes, length in blocks, starting LBA.
            let mut range = [0u8; 16];
            range[4..8].copy_from_slice(&blocks.to_le_bytes());
            range[8..16].copy_from_slice(&(io.lba + u64::from(first)).to_le_bytes());
            lists.write(list_off, &range);
            cmd.opcode = opcode::NVM_DATASET_MANAGEMENT;
            cmd.cdw10 = 0; // one range (0-based)
            cmd.cdw11 = 1 << 2; // attribute: deallocate
            cmd.set_prps(lists.iova() + list_off as u64, 0);
        }
    }
    cmd
}

/// Commands request `io` needs.
fn cmds_needed(ns: &NsParams, io: &IoRequest) -> u32 {
    match io.op {
        Op::Read | Op::Write { .. } => io.num_blocks.div_ceil(ns.cmd_blocks_max),
        Op::WriteZeroes => io.num_blocks.div_ceil(WRITE_ZEROES_BLOCKS_MAX),
        Op::Flush | Op::Deallocate => 1,
    }
}

impl QueuePair for NvmeQueuePair {
    unsafe fn submit(&mut self, io: &IoRequest) -> Result<(), SubmitError> {
        self.validate(io)?;
        if self.ctrl.generation() != self.generation && !self.ctrl.failed() {
            self.recover(Instant::now()); // a reset happened: queues first, then this one
        }
        if self.done.len() + self.outstanding as usize >= self.cmds.len() {
            return Err(SubmitError::QueueFull);
        }
        let end = io.lba.checked_add(u64::from(io.num_blocks));
        if self.ctrl.failed() || end.is_none_or(|e| e > self.ns.num_blocks) {
            let error = if self.ctrl.failed() { IoError::Aborted } else { IoError::OutOfRange };
            self.done.push_back(Completion { tag: io.tag, result: Err(error) });
            return Ok(());
        }
        if self.cmds_needed(io) as usize > self.free_cids.len() {
            return Err(SubmitError::QueueFull);
        }
        let r = self.free_reqs.pop().expect("fewer requests than command slots");
        let req = &mut self.reqs[r as usize];
        // Copy the used segments only: a whole IoRequest is ~800 bytes.
        req.io.op = io.op;
        req.io.lba = io.lba;
        req.io.num_blocks = io.num_blocks;
        req.io.tag = io.tag;
        req.io.segs[..io.nsegs].copy_from_slice(io.segs());
        req.io.nsegs = io.nsegs;
        req.retries = 0;
        self.outstanding += 1;
        self.start(r, Instant::now());
        Ok(())
    }

    fn kick(&mut self) {
        self.ring.ring_sq();
    }

    fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(c) = self.done.pop_front() else { break };
            on_complete(c);
            n += 1;
        }
        while n < max {
            let Some(cqe) = self.ring.pop() else { break };
            if let Some(c) = self.complete_cmd(cqe.cid, cqe.status()) {
                on_complete(c);
                n += 1;
            }
        }
        self.ring.ring_cq();
        // Busy polls count too: completions of other commands must not hide a hung one.
        if self.outstanding > 0 {
            self.polls += 1;
            if self.polls >= POLLS_PER_CLOCK {
                self.polls = 0;
                let now = Instant::now();
                if now >= self.next_check {
                    self.check(now);
                }
            }
        }
        n
    }

    fn outstanding(&self) -> u32 {
        self.outstanding + u32::try_from(self.done.len()).expect("done and outstanding together fit the command slots")
    }
}

impl Drop for NvmeQueuePair {
    fn drop(&mut self) {
        if let Err(e) = self.ctrl.delete_io_queues(self.qid(), self.generation) {
            tracing::warn!(qid = self.qid(), "deleting I/O queues: {e}");
        }
        self.ctrl.qid_put(self.qid());
    }
}

#[cfg(test)]
// Test constants are small; a truncation would fail an assertion.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use crate::block::BlockDevice;
    use crate::dma::DmaBuf;
    use crate::nvme::test_utils::{drain, pattern, FakeConfig, Hold, Rig};

    const TIMEOUT: Duration = Duration::from_millis(20);
    /// Longest any test may wait for its requests (a hang fails the test).
    const HANG: Duration = Duration::from_secs(10);

    fn submit(qp: &mut NvmeQueuePair, op: Op, lba: u64, buf: &DmaBuf, off: usize, len: usize, tag: u64) {
        let req = IoRequest::with_segs(op, lba, (len / 512) as u32, tag, &[buf.seg(off, len)]);
        // SAFETY: the tests leave the buffer alone until the completion is drained.
        unsafe { qp.submit(&req) }.expect("submit");
    }

    fn write(qp: &mut NvmeQueuePair, lba: u64, buf: &DmaBuf, len: usize, tag: u64) {
        submit(qp, Op::Write { fua: false }, lba, buf, 0, len, tag);
    }

    fn all_ok(done: &[Completion]) {
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    }

    /// Reads `len` bytes at `lba` through `qp` and returns them.
    fn read_back(rig: &mut Rig, qp: &mut NvmeQueuePair, lba: u64, len: usize) -> Vec<u8> {
        let buf = rig.shard.get().expect("buffer");
        submit(qp, Op::Read, lba, &buf, 0, len, 0xbead);
        qp.kick();
        let done = drain(&rig.fake, qp, true, HANG);
        assert_eq!(done, vec![Completion { tag: 0xbead, result: Ok(()) }]);
        let data = buf.as_slice()[..len].to_vec();
        rig.shard.put(buf);
        data
    }

    #[test]
    fn every_prp_shape_and_transfers_above_mdts_round_trip() {
        // MDTS 3: 32 KiB per command, so 64 KiB is split in two.
        let mut rig = Rig::new(FakeConfig { mdts: 3, ..FakeConfig::default() }, TIMEOUT);
        let mut qp = rig.qpair(16);
        // (lba, buffer offset, bytes): PRP1 only, PRP2 as data pointer, PRP lists, a
        // 512-byte-offset start, a whole MDTS, and a split.
        let shapes = [(0, 0, 4096), (8, 0, 8192), (24, 0, 12288), (48, 512, 8192), (64, 0, 32768), (128, 0, 65536)];
        for (i, &(lba, off, len)) in shapes.iter().enumerate() {
            let mut buf = rig.shard.get().unwrap();
            buf.as_mut_slice()[off..off + len].copy_from_slice(&pattern(len, i as u64));
            submit(&mut qp, Op::Write { fua: i % 2 == 0 }, lba, &buf, off, len, i as u64);
            qp.kick();
            all_ok(&drain(&rig.fake, &mut qp, true, HANG));
            assert_eq!(rig.fake.disk(lba, len as u64 / 512), pattern(len, i as u64), "disk after write {i}");
            buf.as_mut_slice().fill(0);
            submit(&mut qp, Op::Read, lba, &buf, off, len, 100 + i as u64);
            qp.kick();
            all_ok(&drain(&rig.fake, &mut qp, true, HANG));
            assert_eq!(buf.as_slice()[off..off + len], pattern(len, i as u64)[..], "read back {i}");
            rig.shard.put(buf);
        }
        // Three segments: 2 KiB at the end of a page, 8 KiB, 512 bytes.
        let bufs: Vec<DmaBuf> = (0..3).map(|_| rig.shard.get().unwrap()).collect();
        let segs = [bufs[0].seg(2048, 2048), bufs[1].seg(0, 8192), bufs[2].seg(0, 512)];
        let req = IoRequest::with_segs(Op::Read, 0, 21, 7, &segs);
        // SAFETY: the buffers stay untouched until the drain below.
        unsafe { qp.submit(&req) }.unwrap();
        qp.kick();
        all_ok(&drain(&rig.fake, &mut qp, true, HANG));
        let mut got = bufs[0].as_slice()[2048..4096].to_vec();
        got.extend_from_slice(&bufs[1].as_slice()[..8192]);
        got.extend_from_slice(&bufs[2].as_slice()[..512]);
        assert_eq!(got, rig.fake.disk(0, 21));
        let s = rig.fake.stats();
        assert!(s.prp_shapes.iter().all(|&n| n > 0), "every PRP shape used: {:?}", s.prp_shapes);
        assert_eq!(s.max_cmd_bytes, 32768, "split at MDTS");
        assert_eq!((s.mdts_violations, s.dma_faults), (0, 0));
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
    }

    #[test]
    fn flush_write_zeroes_and_deallocate_reach_the_disk() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(8);
        let buf = rig.buf(65536, 12);
        write(&mut qp, 0, &buf, 65536, 1);
        qp.kick();
        all_ok(&drain(&rig.fake, &mut qp, true, HANG));
        for (tag, op, lba, blocks) in [(2, Op::WriteZeroes, 8, 16), (3, Op::Deallocate, 64, 32), (4, Op::Flush, 0, 0)] {
            // SAFETY: no memory.
            unsafe { qp.submit(&IoRequest::no_data(op, lba, blocks, tag)) }.unwrap();
        }
        qp.kick();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert_eq!(done.len(), 3);
        all_ok(&done);
        let mut want = pattern(65536, 12);
        want[8 * 512..24 * 512].fill(0);
        want[64 * 512..96 * 512].fill(0);
        assert_eq!(rig.fake.disk(0, 128), want);
        assert_eq!(read_back(&mut rig, &mut qp, 0, 65536), want);
        rig.shard.put(buf);
    }

    #[test]
    fn one_doorbell_per_batch_each_way_and_many_completions_per_poll() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(16);
        let buf = rig.buf(4096, 1);
        for i in 0..8 {
            write(&mut qp, i * 8, &buf, 4096, i);
        }
        assert_eq!(rig.fake.stats().sq_doorbells, 0, "nothing rung before kick");
        qp.kick();
        assert_eq!(rig.fake.stats().sq_doorbells, 1);
        assert_eq!(rig.fake.step(), 8);
        let mut tags = Vec::new();
        assert_eq!(qp.poll(64, &mut |c| tags.push(c.tag)), 8);
        assert_eq!(tags, (0..8).collect::<Vec<u64>>());
        assert_eq!(rig.fake.stats().cq_doorbells, 1);
        assert_eq!(qp.outstanding(), 0);
        rig.shard.put(buf);
    }

    #[test]
    fn a_held_command_times_out_and_is_aborted() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(8);
        rig.fake.hold(Hold::lba(100));
        let buf = rig.buf(4096, 2);
        write(&mut qp, 100, &buf, 4096, 1);
        write(&mut qp, 200, &buf, 4096, 2);
        qp.kick();
        let t0 = Instant::now();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert!(t0.elapsed() >= TIMEOUT, "aborted before its deadline");
        assert_eq!(done.len(), 2);
        assert_eq!(done[0], Completion { tag: 2, result: Ok(()) });
        // The design: an aborted command fails its request (the caller may retry).
        assert_eq!(done[1], Completion { tag: 1, result: Err(IoError::Aborted) });
        let s = rig.fake.stats();
        assert_eq!((s.aborts, s.resets), (1, 0), "aborted, no reset needed");
        assert_eq!(rig.fake.held(), 0);
        // The queue pair goes on working.
        write(&mut qp, 100, &buf, 4096, 3);
        qp.kick();
        all_ok(&drain(&rig.fake, &mut qp, true, HANG));
        assert_eq!(rig.fake.disk(100, 8), pattern(4096, 2));
        rig.shard.put(buf);
    }

    #[test]
    fn an_ignored_abort_leads_to_a_reset_and_the_request_is_resubmitted() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(8);
        rig.fake.hold(Hold::lba(100));
        rig.fake.ignore_aborts(true);
        let buf = rig.buf(8192, 3);
        write(&mut qp, 100, &buf, 8192, 1);
        write(&mut qp, 300, &buf, 4096, 2);
        qp.kick();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, vec![1, 2], "each request completes once");
        all_ok(&done);
        let s = rig.fake.stats();
        assert_eq!((s.aborts, s.resets), (1, 1));
        assert_eq!(rig.dev.resets(), 1);
        assert!(rig.dev.resubmitted() >= 1);
        assert_eq!(rig.fake.disk(100, 16), pattern(8192, 3), "the resubmitted write reached the disk");
        assert_eq!(read_back(&mut rig, &mut qp, 100, 8192), pattern(8192, 3));
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
        rig.shard.put(buf);
    }

    #[test]
    fn a_late_completion_after_a_refused_abort_needs_no_reset() {
        let timeout = Duration::from_millis(300);
        let mut rig = Rig::new(FakeConfig::default(), timeout);
        let mut qp = rig.qpair(8);
        rig.fake.hold(Hold::lba(8));
        rig.fake.ignore_aborts(true);
        let buf = rig.buf(4096, 4);
        write(&mut qp, 8, &buf, 4096, 1);
        qp.kick();
        let deadline = Instant::now() + HANG;
        while rig.fake.stats().aborts == 0 {
            rig.fake.step();
            assert_eq!(qp.poll(8, &mut |c| panic!("early completion {c:?}")), 0);
            assert!(Instant::now() < deadline, "no abort sent");
        }
        rig.fake.release_held();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert_eq!(done, vec![Completion { tag: 1, result: Ok(()) }]);
        assert_eq!(rig.fake.stats().resets, 0);
        rig.shard.put(buf);
    }

    #[test]
    fn fatal_status_mid_io_resets_and_every_request_completes() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(32);
        let bufs: Vec<DmaBuf> = (0..16).map(|i| rig.buf(4096, 10 + i)).collect();
        for (i, b) in bufs.iter().enumerate() {
            write(&mut qp, i as u64 * 8, b, 4096, i as u64);
        }
        qp.kick();
        assert_eq!(rig.fake.step_limit(5), 5);
        rig.fake.set_fatal();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert_eq!(done.len(), 16);
        all_ok(&done);
        assert_eq!(rig.fake.stats().resets, 1);
        for i in 0..16u64 {
            assert_eq!(rig.fake.disk(i * 8, 8), pattern(4096, 10 + i), "block {i}");
        }
        bufs.into_iter().for_each(|b| rig.shard.put(b));
    }

    #[test]
    fn a_vanished_device_fails_everything_fast_and_nothing_panics() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(32);
        let buf = rig.buf(4096, 5);
        for i in 0..16 {
            write(&mut qp, i * 8, &buf, 4096, i);
        }
        qp.kick();
        assert_eq!(rig.fake.step_limit(5), 5);
        rig.fake.vanish();
        let t0 = Instant::now();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        // Found by the next CSTS look of an idle poll, long before any command timeout.
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        assert_eq!(done.len(), 16);
        assert_eq!(done.iter().filter(|c| c.result.is_ok()).count(), 5, "the completions posted before");
        assert!(done.iter().filter(|c| c.result.is_err()).all(|c| c.result == Err(IoError::Aborted)));
        // A new request fails at once: on the first poll, without the device.
        write(&mut qp, 0, &buf, 4096, 99);
        qp.kick();
        let mut got = Vec::new();
        assert_eq!(qp.poll(8, &mut |c| got.push(c)), 1);
        assert_eq!(got, vec![Completion { tag: 99, result: Err(IoError::Aborted) }]);
        assert!(rig.dev.create_qpair(8).is_err(), "no new queues on a device that is gone");
        assert!(matches!(rig.dev.reset(), Err(crate::nvme::NvmeError::Gone)));
        drop(qp);
        rig.shard.put(buf);
    }

    #[test]
    fn an_idle_device_that_vanished_is_closed_without_hanging() {
        let rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let qp = rig.qpair(8);
        rig.fake.vanish();
        let t0 = Instant::now();
        drop(qp); // Delete I/O SQ/CQ on a device nobody has seen go yet
        drop(rig); // shutdown
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    }

    #[test]
    fn the_retry_limit_fails_a_request_that_never_completes() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(8);
        rig.fake.hold(Hold::lba_forever(100));
        rig.fake.ignore_aborts(true);
        let buf = rig.buf(4096, 6);
        write(&mut qp, 100, &buf, 4096, 1);
        write(&mut qp, 200, &buf, 4096, 2);
        qp.kick();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert!(done.contains(&Completion { tag: 1, result: Err(IoError::Aborted) }), "{done:?}");
        assert!(done.contains(&Completion { tag: 2, result: Ok(()) }), "{done:?}");
        let s = rig.fake.stats();
        assert_eq!(s.resets, u32::from(RETRIES_MAX) + 1, "one reset per try");
        assert_eq!(s.aborts, u32::from(RETRIES_MAX) + 1);
        // The controller is healthy: later requests go through.
        write(&mut qp, 300, &buf, 4096, 3);
        qp.kick();
        all_ok(&drain(&rig.fake, &mut qp, true, HANG));
        rig.shard.put(buf);
    }

    #[test]
    fn a_reset_that_fails_aborts_every_request() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(8);
        let buf = rig.buf(4096, 7);
        write(&mut qp, 0, &buf, 4096, 1);
        write(&mut qp, 8, &buf, 4096, 2);
        qp.kick();
        rig.fake.stall_ready(true);
        rig.fake.set_fatal();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|c| c.result == Err(IoError::Aborted)), "{done:?}");
        write(&mut qp, 0, &buf, 4096, 3);
        let mut got = Vec::new();
        qp.poll(8, &mut |c| got.push(c));
        assert_eq!(got, vec![Completion { tag: 3, result: Err(IoError::Aborted) }]);
        rig.shard.put(buf);
    }

    #[test]
    fn out_of_order_completions_reach_their_own_requests() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(64);
        // 16 distinct 4 KiB writes and one 64 KiB write split into 8 commands (MDTS 8 KiB).
        let bufs: Vec<DmaBuf> = (0..16).map(|i| rig.buf(4096, 20 + i)).collect();
        let big = rig.buf(65536, 99);
        for (i, b) in bufs.iter().enumerate() {
            write(&mut qp, i as u64 * 8, b, 4096, i as u64);
        }
        write(&mut qp, 1024, &big, 65536, 1000);
        qp.kick();
        rig.fake.out_of_order(true);
        let done = drain(&rig.fake, &mut qp, true, HANG);
        all_ok(&done);
        assert_eq!(done[0].tag, 1000, "the last fetched completes first");
        assert_eq!(done.len(), 17);
        let mut reads = bufs;
        for (i, b) in reads.iter_mut().enumerate() {
            b.as_mut_slice().fill(0);
            submit(&mut qp, Op::Read, i as u64 * 8, b, 0, 4096, i as u64);
        }
        qp.kick();
        let done = drain(&rig.fake, &mut qp, true, HANG);
        assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), (0..16).rev().collect::<Vec<u64>>());
        for (i, b) in reads.iter().enumerate() {
            assert_eq!(b.as_slice()[..4096], pattern(4096, 20 + i as u64)[..], "read {i}");
        }
        assert_eq!(rig.fake.disk(1024, 128), pattern(65536, 99));
        reads.into_iter().chain([big]).for_each(|b| rig.shard.put(b));
    }

    #[test]
    fn the_completion_queue_phase_wraps_many_times() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(7); // 8 entries
        let buf = rig.buf(4096, 8);
        let mut next = 0u64;
        let mut seen = Vec::new();
        for round in 0..120u64 {
            let batch = 1 + round % 7;
            for _ in 0..batch {
                write(&mut qp, (next % 64) * 8, &buf, 4096, next);
                next += 1;
            }
            qp.kick();
            if round % 3 == 0 {
                rig.fake.step_limit(2); // partial batches move the tail unevenly
            }
            seen.extend(drain(&rig.fake, &mut qp, true, HANG));
        }
        all_ok(&seen);
        assert_eq!(seen.iter().map(|c| c.tag).collect::<Vec<_>>(), (0..next).collect::<Vec<u64>>());
        let s = rig.fake.stats();
        assert!(s.cq_wraps >= next / 8 - 1, "{} wraps for {next} commands", s.cq_wraps);
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
        rig.shard.put(buf);
    }

    #[test]
    fn a_timeout_is_found_on_a_queue_that_never_goes_idle() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut qp = rig.qpair(16);
        rig.fake.hold(Hold::lba(500));
        let buf = rig.buf(4096, 9);
        write(&mut qp, 500, &buf, 4096, 1);
        qp.kick();
        let deadline = Instant::now() + HANG;
        let mut held_done = None;
        let mut tag = 2;
        // Every poll finds a completion of the steady stream beside the held command.
        while held_done.is_none() {
            submit(&mut qp, Op::Read, 0, &buf, 0, 4096, tag);
            tag += 1;
            qp.kick();
            rig.fake.step();
            let n = qp.poll(64, &mut |c| {
                if c.tag == 1 {
                    held_done = Some(c);
                }
            });
            assert!(n > 0 || held_done.is_some(), "a poll without completions");
            assert!(Instant::now() < deadline, "the held command was never timed out");
        }
        assert_eq!(held_done, Some(Completion { tag: 1, result: Err(IoError::Aborted) }));
        drain(&rig.fake, &mut qp, true, HANG);
        rig.shard.put(buf);
    }

    #[test]
    fn a_reset_caused_by_one_queue_pair_recovers_the_others() {
        let mut rig = Rig::new(FakeConfig::default(), TIMEOUT);
        let mut a = rig.qpair(8);
        let mut b = rig.qpair(8);
        assert_ne!(a.qid(), b.qid());
        rig.fake.hold(Hold::lba(100));
        rig.fake.ignore_aborts(true);
        let buf = rig.buf(4096, 11);
        write(&mut a, 100, &buf, 4096, 1);
        a.kick();
        rig.fake.step();
        // B's writes are rung but never fetched before the reset deletes its queue.
        for i in 0..4 {
            write(&mut b, 200 + i * 8, &buf, 4096, 10 + i);
        }
        b.kick();
        let deadline = Instant::now() + HANG;
        while rig.fake.stats().resets == 0 {
            assert_eq!(a.poll(8, &mut |c| panic!("{c:?} before the reset")), 0);
            assert!(Instant::now() < deadline, "no reset");
        }
        all_ok(&drain(&rig.fake, &mut a, true, HANG));
        assert_eq!(rig.fake.stats().resets, 1);
        let done = drain(&rig.fake, &mut b, true, HANG);
        assert_eq!(done.len(), 4);
        all_ok(&done);
        for i in 0..4 {
            assert_eq!(rig.fake.disk(200 + i * 8, 8), pattern(4096, 11));
        }
        rig.shard.put(buf);
    }
}
