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
//! Error paths, all on the slow path of an idle poll (no completion found) at most
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

use super::ctrlr::{io_error, Controller};
use super::prp;
use super::regs;
use super::ring::Ring;
use super::vfio::{DmaArea, PAGE_SIZE};

/// How often an idle poll looks at deadlines and CSTS.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// Times a request is resubmitted after controller resets before it fails.
pub const RETRIES_MAX: u8 = 3;
/// Largest number of commands one request may be split into.
pub const SPLIT_MAX: u32 = 64;
/// Write Zeroes carries a 16-bit 0-based block count.
const WRITE_ZEROES_BLOCKS_MAX: u32 = 1 << 16;
/// Idle polls between two looks at the clock.
const IDLE_POLLS_PER_CLOCK: u32 = 64;

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
    ctrl: Arc<Controller>,
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
    idle_polls: u32,
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
        ctrl: Arc<Controller>,
        ring: Ring,
        lists: DmaArea,
        ns: NsParams,
    ) -> Result<NvmeQueuePair, super::NvmeError> {
        let slots = usize::from(ring.entries() - 1);
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
            free_cids: (0..slots as u16).rev().collect(),
            reqs: vec![empty; slots],
            free_reqs: (0..slots as u32).rev().collect(),
            done: VecDeque::with_capacity(slots),
            outstanding: 0,
            idle_polls: 0,
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
        let chunk = match io.op {
            Op::WriteZeroes => WRITE_ZEROES_BLOCKS_MAX,
            _ => self.ns.cmd_blocks_max,
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
                    let accepted = self.ctrl.abort(self.qid(), cid as u16).unwrap_or(false);
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
                self.free_cids.push(cid as u16);
            }
        }
        let mut resubmitted = 0;
        for r in 0..self.reqs.len() as u32 {
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

    /// Completes every request with [`IoError::Aborted`] (the controller is gone).
    fn fail_all(&mut self) {
        for cid in 0..self.cmds.len() {
            if self.cmds[cid] != CmdState::Free {
                self.cmds[cid] = CmdState::Free;
                self.free_cids.push(cid as u16);
            }
        }
        for r in 0..self.reqs.len() as u32 {
            if self.reqs[r as usize].state == ReqState::InFlight {
                self.reqs[r as usize].result = Err(IoError::Aborted);
                let c = self.finish(r);
                self.done.push_back(c);
            }
        }
    }
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
        let mut reaped = 0;
        while n < max {
            let Some(cqe) = self.ring.pop() else { break };
            reaped += 1;
            if let Some(c) = self.complete_cmd(cqe.cid, cqe.status()) {
                on_complete(c);
                n += 1;
            }
        }
        self.ring.ring_cq();
        if reaped == 0 && self.outstanding > 0 {
            self.idle_polls += 1;
            if self.idle_polls >= IDLE_POLLS_PER_CLOCK {
                self.idle_polls = 0;
                let now = Instant::now();
                if now >= self.next_check {
                    self.check(now);
                }
            }
        }
        n
    }

    fn outstanding(&self) -> u32 {
        self.outstanding + self.done.len() as u32
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
