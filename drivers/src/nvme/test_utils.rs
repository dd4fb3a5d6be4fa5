//! A software NVMe controller in memory, for the driver's unit tests.
//!
//! The driver's error paths (command timeout → Abort → reset, CSTS.CFS, a device that
//! vanishes, the reset retry limit) cannot be provoked on QEMU's controller, so they
//! run here against [`FakeController`]: a model of an NVMe controller that sits behind
//! the driver's real register accessors (the `#[cfg(test)]` seam of `vfio.rs`) and
//! does real DMA into the driver's memory (IOVA = virtual address), reading SQ entries
//! and PRP lists and posting CQ entries with the phase tag, exactly as a device would.
//!
//! Determinism: the test thread drives the I/O queues itself. A doorbell write only
//! records the new tail; [`FakeController::step`] then fetches and executes what the
//! doorbells announced, so a test decides what the controller has done before each
//! poll. The admin queue is the exception: the driver waits for admin commands
//! synchronously (bring-up, queue creation, the Abort it sends from inside `poll`), so
//! they execute inside the doorbell write. CSTS.RDY follows CC.EN after a configurable
//! number of CSTS reads (the wait the driver must bound by CAP.TO).
//!
//! Faults on demand: hold chosen commands (fetched, never completed), ignore Aborts,
//! set CSTS.CFS, vanish (registers read all ones, no more DMA), complete out of order,
//! execute only some of the announced commands, never become ready. The model also
//! checks the driver: DMA outside a mapped range, a malformed PRP chain, a transfer
//! above MDTS, a doorbell beyond its queue or a register programmed while the
//! controller is enabled are recorded (and DMA to unmapped queue memory panics).
// Test constants are small; a truncation would fail an assertion. (The 64-bit register
// halves it serves are split deliberately, as a device does.)
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quire_wire::nvme::{opcode, Command, Completion, Status, CQE_SIZE, SQE_SIZE};
use quire_wire::{put_str_padded, put_u16, put_u32, put_u64};

use crate::block::{Completion as IoCompletion, QueuePair};
use crate::dma::{DmaBuf, DmaPool, PoolShard};

use super::regs;
use super::vfio::{DeviceModel, VfioPci, PAGE_SIZE};
use super::{NvmeDevice, NvmeOptions, NvmeQueuePair};

/// Size of the model's BAR0 (registers and 512 doorbell pairs at stride 0).
pub const BAR_BYTES: usize = 0x2000;
const PAGE: u64 = PAGE_SIZE as u64;

/// What the model reports about itself.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Logical block size (512 or 4096).
    pub block_size: u32,
    /// Blocks in namespace 1.
    pub blocks: u64,
    /// Identify MDTS: transfers up to `4096 << mdts` bytes (0: no limit).
    pub mdts: u8,
    /// CAP.MQES + 1: entries of the largest queue.
    pub max_queue_entries: u16,
    /// CAP.TO in 500 ms units.
    pub cap_to: u8,
    /// CAP.DSTRD.
    pub dstrd: u8,
    /// CSTS reads before CSTS.RDY follows a change of CC.EN.
    pub ready_delay: u32,
    /// I/O queue pairs granted by Set Features.
    pub io_queues: u16,
    /// CC.EN = 1 and CSTS.RDY = 1 at start (a controller left enabled).
    pub start_enabled: bool,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            block_size: 512,
            blocks: 4096,
            mdts: 1,
            max_queue_entries: 256,
            cap_to: 1,
            dstrd: 0,
            ready_delay: 3,
            io_queues: 4,
            start_enabled: false,
        }
    }
}

/// Which fetched commands to hold (never complete until released or aborted).
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    /// Only this opcode (None: any I/O opcode).
    pub opcode: Option<u8>,
    /// Only commands whose starting LBA is this one.
    pub slba: Option<u64>,
    /// How many matching commands to hold (`u32::MAX`: all of them).
    pub count: u32,
}

impl Hold {
    /// The next command starting at `slba`.
    pub fn lba(slba: u64) -> Hold {
        Hold { opcode: None, slba: Some(slba), count: 1 }
    }

    /// Every command starting at `slba`, resubmissions included.
    pub fn lba_forever(slba: u64) -> Hold {
        Hold { count: u32::MAX, ..Hold::lba(slba) }
    }

    fn matches(&self, cmd: &Command) -> bool {
        self.count > 0 && self.opcode.is_none_or(|o| o == cmd.opcode) && self.slba.is_none_or(|l| l == cmd.slba())
    }
}

/// Counters the tests assert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// CC.EN 1 → 0 transitions (controller resets, the first bring-up excluded).
    pub resets: u32,
    /// Times CC.EN was set.
    pub enables: u32,
    /// Abort commands received.
    pub aborts: u32,
    /// Shutdown notifications (CC.SHN).
    pub shutdowns: u32,
    /// I/O commands executed (held ones once released).
    pub io_commands: u64,
    /// Admin commands executed.
    pub admin_commands: u64,
    /// Read/Write commands by PRP shape: PRP1 only, PRP2 as data pointer, PRP list.
    pub prp_shapes: [u64; 3],
    /// Largest Read/Write transfer of one command, in bytes.
    pub max_cmd_bytes: u64,
    /// SQ tail doorbell writes on I/O queues.
    pub sq_doorbells: u64,
    /// CQ head doorbell writes on I/O queues.
    pub cq_doorbells: u64,
    /// Phase flips of I/O completion queues (wrap-arounds).
    pub cq_wraps: u64,
    /// Commands that pointed the model at unmapped memory or at a malformed PRP chain.
    pub dma_faults: u64,
    /// Commands above MDTS.
    pub mdts_violations: u64,
    /// Protocol errors of the host (bad doorbells, registers written while enabled).
    pub protocol_errors: Vec<String>,
}

struct Sq {
    base: u64,
    entries: u16,
    cqid: u16,
    head: u16,
    tail: u16,
}

struct Cq {
    qid: u16,
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
    head: u16,
    /// Completions waiting for room (the host has not freed CQ slots yet).
    backlog: VecDeque<Completion>,
}

struct State {
    cfg: FakeConfig,
    cc: u32,
    rdy: bool,
    /// CSTS reads left before RDY follows CC.EN.
    rdy_countdown: u32,
    stall_ready: bool,
    cfs: bool,
    shst: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// Submission queues, index = qid (0: admin).
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    granted: u16,
    disk: Vec<u8>,
    maps: Vec<(u64, u64)>,
    holds: Vec<Hold>,
    /// Held commands: (qid, command).
    held: Vec<(u16, Command)>,
    ignore_aborts: bool,
    out_of_order: bool,
    vanished: bool,
    stats: FakeStats,
}

/// A software NVMe controller (see the module documentation).
pub struct FakeController {
    state: Mutex<State>,
}

impl FakeController {
    /// A controller with `cfg` and a zeroed namespace 1.
    pub fn new(cfg: FakeConfig) -> Arc<FakeController> {
        assert!(cfg.block_size.is_power_of_two() && cfg.block_size >= 512);
        assert!(cfg.max_queue_entries >= 2);
        let slots = usize::from(cfg.io_queues) + 1;
        let enabled = cfg.start_enabled;
        let state = State {
            disk: vec![0; (cfg.blocks * u64::from(cfg.block_size)) as usize],
            cc: if enabled { regs::cc_enable() } else { 0 },
            rdy: enabled,
            rdy_countdown: 0,
            stall_ready: false,
            cfs: false,
            shst: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            sqs: (0..slots).map(|_| None).collect(),
            cqs: (0..slots).map(|_| None).collect(),
            granted: 0,
            maps: Vec::new(),
            holds: Vec::new(),
            held: Vec::new(),
            ignore_aborts: false,
            out_of_order: false,
            vanished: false,
            stats: FakeStats::default(),
            cfg,
        };
        Arc::new(FakeController { state: Mutex::new(state) })
    }

    /// A PCI function whose BAR0 and IOMMU are this controller.
    pub fn pci(self: &Arc<Self>) -> VfioPci {
        VfioPci::model("fake", BAR_BYTES, self.clone()).expect("anonymous memory")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches and executes every I/O command the SQ doorbells announced; returns how
    /// many were fetched.
    pub fn step(&self) -> usize {
        self.step_limit(usize::MAX)
    }

    /// As [`FakeController::step`], fetching at most `max` commands.
    pub fn step_limit(&self, max: usize) -> usize {
        let mut s = self.lock();
        if !s.running() {
            return 0;
        }
        let mut fetched = 0;
        let mut posted = Vec::new();
        for qid in 1..s.sqs.len() {
            while fetched < max {
                let Some(cmd) = s.fetch(qid as u16) else { break };
                fetched += 1;
                if let Some(h) = s.holds.iter_mut().find(|h| h.matches(&cmd)) {
                    h.count = h.count.saturating_sub(u32::from(h.count != u32::MAX));
                    s.held.push((qid as u16, cmd));
                    continue;
                }
                let (status, dw0) = s.execute_io(&cmd);
                posted.push((qid as u16, cmd.cid, status, dw0));
            }
        }
        if s.out_of_order {
            posted.reverse();
        }
        for (qid, cid, status, dw0) in posted {
            s.complete(qid, cid, status, dw0);
        }
        fetched
    }

    /// Holds the commands `hold` describes instead of completing them.
    pub fn hold(&self, hold: Hold) {
        self.lock().holds.push(hold);
    }

    /// Commands held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Executes and completes every held command (a late device), and stops holding.
    pub fn release_held(&self) {
        let mut s = self.lock();
        s.holds.clear();
        for (qid, cmd) in std::mem::take(&mut s.held) {
            let (status, dw0) = s.execute_io(&cmd);
            s.complete(qid, cmd.cid, status, dw0);
        }
    }

    /// Answers Abort with "not aborted" and leaves the command alone.
    pub fn ignore_aborts(&self, ignore: bool) {
        self.lock().ignore_aborts = ignore;
    }

    /// Posts each step's completions in the reverse of their fetch order.
    pub fn out_of_order(&self, on: bool) {
        self.lock().out_of_order = on;
    }

    /// CSTS.RDY never follows CC.EN = 1 again.
    pub fn stall_ready(&self, on: bool) {
        self.lock().stall_ready = on;
    }

    /// Sets CSTS.CFS: the controller stops processing until it is reset.
    pub fn set_fatal(&self) {
        self.lock().cfs = true;
    }

    /// The device leaves the bus: registers read all ones, nothing is processed.
    pub fn vanish(&self) {
        self.lock().vanished = true;
    }

    /// The counters.
    pub fn stats(&self) -> FakeStats {
        self.lock().stats.clone()
    }

    /// Blocks `lba..lba+blocks` of the namespace.
    pub fn disk(&self, lba: u64, blocks: u64) -> Vec<u8> {
        let s = self.lock();
        let bs = u64::from(s.cfg.block_size);
        s.disk[(lba * bs) as usize..((lba + blocks) * bs) as usize].to_vec()
    }
}

impl DeviceModel for FakeController {
    fn read32(&self, off: usize) -> u32 {
        let mut s = self.lock();
        if s.vanished {
            return regs::GONE;
        }
        match off {
            regs::CAP => s.cap() as u32,
            o if o == regs::CAP + 4 => (s.cap() >> 32) as u32,
            regs::VS => 0x0001_0400,
            regs::CC => s.cc,
            regs::CSTS => s.csts(),
            regs::AQA => s.aqa,
            regs::ASQ => s.asq as u32,
            o if o == regs::ASQ + 4 => (s.asq >> 32) as u32,
            regs::ACQ => s.acq as u32,
            o if o == regs::ACQ + 4 => (s.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, off: usize, value: u32) {
        let mut s = self.lock();
        if s.vanished {
            return;
        }
        let enabled = s.cc & 1 != 0;
        match off {
            regs::CC => s.write_cc(value),
            regs::AQA | regs::ASQ | 0x2c | regs::ACQ | 0x34 if enabled || s.rdy => {
                s.stats.protocol_errors.push(format!("admin queue register {off:#x} written while enabled"));
            }
            regs::AQA => s.aqa = value,
            regs::ASQ => s.asq = (s.asq & !0xffff_ffff) | u64::from(value),
            0x2c => s.asq = (s.asq & 0xffff_ffff) | (u64::from(value) << 32),
            regs::ACQ => s.acq = (s.acq & !0xffff_ffff) | u64::from(value),
            0x34 => s.acq = (s.acq & 0xffff_ffff) | (u64::from(value) << 32),
            o if o >= regs::DOORBELL_BASE => s.doorbell(o, value),
            _ => s.stats.protocol_errors.push(format!("write of {value:#x} to register {off:#x}")),
        }
    }

    fn dma_map(&self, iova: u64, len: usize) {
        self.lock().maps.push((iova, iova + len as u64));
    }

    fn dma_unmap(&self, iova: u64, len: usize) {
        let mut s = self.lock();
        let i = s.maps.iter().position(|&m| m == (iova, iova + len as u64)).expect("unmap of a range never mapped");
        s.maps.swap_remove(i);
    }
}

impl State {
    fn running(&self) -> bool {
        !self.vanished && !self.cfs && self.rdy && self.cc & 1 != 0
    }

    fn cap(&self) -> u64 {
        u64::from(self.cfg.max_queue_entries - 1)
            | (1 << 16)
            | (u64::from(self.cfg.cap_to) << 24)
            | (u64::from(self.cfg.dstrd) << 32)
            | (1 << 37)
    }

    fn csts(&mut self) -> u32 {
        let want = self.cc & 1 != 0;
        if self.rdy != want && !(want && self.stall_ready) {
            if self.rdy_countdown == 0 {
                self.rdy = want;
            } else {
                self.rdy_countdown -= 1;
            }
        }
        u32::from(self.rdy) | (u32::from(self.cfs) << 1) | self.shst
    }

    fn write_cc(&mut self, value: u32) {
        let was = self.cc & 1 != 0;
        let now = value & 1 != 0;
        if value & (0b11 << 14) != 0 && self.cc & (0b11 << 14) == 0 {
            self.stats.shutdowns += 1;
            self.shst = regs::CSTS_SHST_COMPLETE;
        }
        self.cc = value;
        if was && !now {
            self.stats.resets += 1;
            self.disable();
        } else if !was && now {
            if self.rdy {
                self.stats.protocol_errors.push("CC.EN set before CSTS.RDY cleared".into());
            }
            self.stats.enables += 1;
            self.rdy_countdown = self.cfg.ready_delay;
            let entries = |bits: u32| (bits & 0xfff) as u16 + 1;
            self.sqs[0] = Some(Sq { base: self.asq, entries: entries(self.aqa), cqid: 0, head: 0, tail: 0 });
            self.cqs[0] = Some(Cq::new(0, self.acq, entries(self.aqa >> 16)));
        }
    }

    /// Controller reset: every queue and held command is gone, CFS cleared.
    fn disable(&mut self) {
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.held.clear();
        self.cfs = false;
        self.shst = 0;
        self.rdy_countdown = self.cfg.ready_delay;
    }

    fn doorbell(&mut self, off: usize, value: u32) {
        let stride = 4usize << self.cfg.dstrd;
        let index = (off - regs::DOORBELL_BASE) / stride;
        let (qid, is_cq) = (index / 2, index % 2 == 1);
        let exists = if is_cq {
            self.cqs.get(qid).is_some_and(Option::is_some)
        } else {
            self.sqs.get(qid).is_some_and(Option::is_some)
        };
        if !exists || !(off - regs::DOORBELL_BASE).is_multiple_of(stride) {
            self.stats.protocol_errors.push(format!("doorbell {off:#x} ({value}) of a queue that does not exist"));
            return;
        }
        if is_cq {
            let cq = self.cqs[qid].as_mut().expect("checked");
            if value >= u32::from(cq.entries) {
                self.stats.protocol_errors.push(format!("CQ {qid} head {value} beyond {}", cq.entries));
                return;
            }
            cq.head = value as u16;
            if qid > 0 {
                self.stats.cq_doorbells += 1;
            }
            self.drain_backlog(qid);
        } else {
            let sq = self.sqs[qid].as_mut().expect("checked");
            if value >= u32::from(sq.entries) {
                self.stats.protocol_errors.push(format!("SQ {qid} tail {value} beyond {}", sq.entries));
                return;
            }
            sq.tail = value as u16;
            if qid > 0 {
                self.stats.sq_doorbells += 1;
            } else if self.running() {
                while let Some(cmd) = self.fetch(0) {
                    let (status, dw0) = self.execute_admin(&cmd);
                    self.complete(0, cmd.cid, status, dw0);
                }
            }
        }
    }

    /// The next command of SQ `qid`, advancing its head.
    fn fetch(&mut self, qid: u16) -> Option<Command> {
        let sq = self.sqs.get(usize::from(qid))?.as_ref()?;
        if sq.head == sq.tail {
            return None;
        }
        let addr = sq.base + u64::from(sq.head) * SQE_SIZE as u64;
        let next = (sq.head + 1) % sq.entries;
        let mut b = [0u8; SQE_SIZE];
        self.dma_read(addr, &mut b).unwrap_or_else(|()| panic!("SQ {qid} entry at {addr:#x} is not mapped"));
        self.sqs[usize::from(qid)].as_mut().expect("checked").head = next;
        Some(Command::from_bytes(&b))
    }

    /// Posts the completion of `cid` of SQ `qid` on its CQ (or its backlog).
    fn complete(&mut self, qid: u16, cid: u16, status: Status, dw0: u32) {
        let Some(sq) = self.sqs.get(usize::from(qid)).and_then(Option::as_ref) else { return };
        let mut cqe = Completion::new(cid, status);
        cqe.dw0 = dw0;
        cqe.sqid = qid;
        cqe.sqhd = sq.head;
        let cqid = usize::from(sq.cqid);
        self.cqs[cqid].as_mut().expect("an SQ's CQ exists").backlog.push_back(cqe);
        self.drain_backlog(cqid);
    }

    fn drain_backlog(&mut self, cqid: usize) {
        loop {
            let Some(cq) = self.cqs[cqid].as_mut() else { return };
            if (cq.tail + 1) % cq.entries == cq.head {
                return; // full: wait for the host's head doorbell
            }
            let Some(mut cqe) = cq.backlog.pop_front() else { return };
            cqe.status_phase = (cqe.status_phase & !1) | u16::from(cq.phase);
            let addr = cq.base + u64::from(cq.tail) * CQE_SIZE as u64;
            cq.tail += 1;
            if cq.tail == cq.entries {
                cq.tail = 0;
                cq.phase = !cq.phase;
                if cq.qid > 0 {
                    self.stats.cq_wraps += 1;
                }
            }
            self.dma_write(addr, &cqe.to_bytes())
                .unwrap_or_else(|()| panic!("CQ {cqid} entry at {addr:#x} is not mapped"));
        }
    }

    fn mapped(&self, addr: u64, len: usize) -> bool {
        let end = addr.checked_add(len as u64);
        end.is_some_and(|end| self.maps.iter().any(|&(lo, hi)| lo <= addr && end <= hi))
    }

    /// Reads memory the host mapped, as the device's DMA engine would.
    fn dma_read(&self, addr: u64, dst: &mut [u8]) -> Result<(), ()> {
        if !self.mapped(addr, dst.len()) {
            return Err(());
        }
        // SAFETY: `addr..addr+len` lies inside a range the driver mapped for this device
        // (checked above: a live DmaArea or the pool region, IOVA = virtual address), and
        // the driver does not touch memory it handed to the device until it sees the
        // completion, which this model posts only after the copy.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Writes memory the host mapped, as the device's DMA engine would.
    fn dma_write(&self, addr: u64, src: &[u8]) -> Result<(), ()> {
        if !self.mapped(addr, src.len()) {
            return Err(());
        }
        // SAFETY: as in `dma_read`: a mapped range the driver handed to the device.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) };
        Ok(())
    }

    /// The memory ranges of a PRP chain for `len` bytes, checked as a controller does.
    fn prp_ranges(&self, prp1: u64, prp2: u64, len: u64) -> Result<Vec<(u64, u64)>, Status> {
        if !prp1.is_multiple_of(4) {
            return Err(Status::INVALID_FIELD);
        }
        let first = len.min(PAGE - prp1 % PAGE);
        let mut ranges = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return Ok(ranges);
        }
        if left <= PAGE {
            if !prp2.is_multiple_of(PAGE) {
                return Err(Status::INVALID_FIELD);
            }
            ranges.push((prp2, left));
            return Ok(ranges);
        }
        let mut list = prp2;
        if !list.is_multiple_of(8) {
            return Err(Status::INVALID_FIELD);
        }
        while left > 0 {
            let mut e = [0u8; 8];
            self.dma_read(list, &mut e).map_err(|()| Status::DATA_TRANSFER_ERROR)?;
            let addr = u64::from_le_bytes(e);
            let last_slot = (list + 8).is_multiple_of(PAGE);
            if last_slot && left > PAGE {
                list = addr; // chain to the next list page
                continue;
            }
            if !addr.is_multiple_of(PAGE) {
                return Err(Status::INVALID_FIELD);
            }
            ranges.push((addr, left.min(PAGE)));
            left -= left.min(PAGE);
            list += 8;
        }
        Ok(ranges)
    }

    fn execute_admin(&mut self, cmd: &Command) -> (Status, u32) {
        self.stats.admin_commands += 1;
        let qid = (cmd.cdw10 & 0xffff) as u16;
        let size = (cmd.cdw10 >> 16) as u16;
        match cmd.opcode {
            opcode::ADMIN_IDENTIFY => {
                let data = match cmd.cdw10 & 0xff {
                    1 => self.identify_controller(),
                    0 => self.identify_namespace(cmd.nsid),
                    _ => return (Status::INVALID_FIELD, 0),
                };
                self.transfer_out(cmd, &data).map_or_else(|s| (s, 0), |()| (Status::SUCCESS, 0))
            }
            opcode::ADMIN_SET_FEATURES if cmd.cdw10 & 0xff == 0x07 => {
                let asked = (cmd.cdw11 & 0xffff).min(cmd.cdw11 >> 16) + 1;
                self.granted = self.cfg.io_queues.min(asked as u16);
                let n = u32::from(self.cfg.io_queues - 1);
                (Status::SUCCESS, (n << 16) | n)
            }
            opcode::ADMIN_CREATE_CQ => {
                if let Err(s) = self.check_new_queue(qid, size, cmd, false) {
                    return (s, 0);
                }
                self.cqs[usize::from(qid)] = Some(Cq::new(qid, cmd.prp1(), size + 1));
                (Status::SUCCESS, 0)
            }
            opcode::ADMIN_CREATE_SQ => {
                if let Err(s) = self.check_new_queue(qid, size, cmd, true) {
                    return (s, 0);
                }
                let cqid = (cmd.cdw11 >> 16) as u16;
                if cqid == 0 || self.cqs.get(usize::from(cqid)).is_none_or(Option::is_none) {
                    return (Status::CQ_INVALID, 0);
                }
                let sq = Sq { base: cmd.prp1(), entries: size + 1, cqid, head: 0, tail: 0 };
                self.sqs[usize::from(qid)] = Some(sq);
                (Status::SUCCESS, 0)
            }
            opcode::ADMIN_DELETE_SQ => {
                if qid == 0 || self.sqs.get(usize::from(qid)).is_none_or(Option::is_none) {
                    return (Status::INVALID_QUEUE_ID, 0);
                }
                let held = std::mem::take(&mut self.held);
                for (q, c) in held {
                    if q == qid {
                        self.complete(q, c.cid, Status::ABORTED_SQ_DELETION, 0);
                    } else {
                        self.held.push((q, c));
                    }
                }
                self.sqs[usize::from(qid)] = None;
                (Status::SUCCESS, 0)
            }
            opcode::ADMIN_DELETE_CQ => {
                let in_use = self.sqs.iter().flatten().any(|sq| sq.cqid == qid);
                if qid == 0 || in_use || self.cqs.get(usize::from(qid)).is_none_or(Option::is_none) {
                    return (Status::INVALID_QUEUE_ID, 0);
                }
                self.cqs[usize::from(qid)] = None;
                (Status::SUCCESS, 0)
            }
            opcode::ADMIN_ABORT => {
                self.stats.aborts += 1;
                let cid = (cmd.cdw10 >> 16) as u16;
                let found = self.held.iter().position(|&(q, ref c)| q == qid && c.cid == cid);
                match found {
                    Some(i) if !self.ignore_aborts => {
                        let (q, c) = self.held.remove(i);
                        self.complete(q, c.cid, Status::ABORTED_BY_REQUEST, 0);
                        (Status::SUCCESS, 0)
                    }
                    _ => (Status::SUCCESS, 1),
                }
            }
            _ => (Status::INVALID_OPCODE, 0),
        }
    }

    fn check_new_queue(&self, qid: u16, size: u16, cmd: &Command, sq: bool) -> Result<(), Status> {
        let table_has = |q: u16| {
            if sq {
                self.sqs.get(usize::from(q)).is_some_and(Option::is_some)
            } else {
                self.cqs.get(usize::from(q)).is_some_and(Option::is_some)
            }
        };
        if qid == 0 || qid > self.granted || table_has(qid) {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if size == 0 || u32::from(size) >= u32::from(self.cfg.max_queue_entries) {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        let bytes = (usize::from(size) + 1) * if sq { SQE_SIZE } else { CQE_SIZE };
        if cmd.cdw11 & 1 == 0 || !cmd.prp1().is_multiple_of(PAGE) || !self.mapped(cmd.prp1(), bytes) {
            return Err(Status::INVALID_FIELD);
        }
        Ok(())
    }

    fn identify_controller(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE];
        put_u16(&mut b, 0, 0x1b36);
        put_str_padded(&mut b[4..24], "fake-0001");
        put_str_padded(&mut b[24..64], "Quire fake NVMe controller");
        put_str_padded(&mut b[64..72], "1.0");
        b[77] = self.cfg.mdts;
        put_u16(&mut b, 78, 1);
        put_u32(&mut b, 516, 1);
        put_u16(&mut b, 520, 0b1100); // ONCS: DSM, Write Zeroes
        b[525] = 1; // volatile write cache
        b
    }

    fn identify_namespace(&self, nsid: u32) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE];
        if nsid == 1 {
            put_u64(&mut b, 0, self.cfg.blocks);
            put_u64(&mut b, 8, self.cfg.blocks);
            put_u64(&mut b, 16, self.cfg.blocks);
            b[33] = 0x01; // deallocated blocks read zeroes
            put_u32(&mut b, 128, self.cfg.block_size.trailing_zeros() << 16);
        }
        b
    }

    /// Copies `data` to the command's PRPs (controller to host).
    fn transfer_out(&mut self, cmd: &Command, data: &[u8]) -> Result<(), Status> {
        let mut pos = 0usize;
        for (addr, len) in self.prp_ranges(cmd.prp1(), cmd.prp2(), data.len() as u64)? {
            let len = len as usize;
            self.dma_write(addr, &data[pos..pos + len]).map_err(|()| Status::DATA_TRANSFER_ERROR)?;
            pos += len;
        }
        Ok(())
    }

    fn execute_io(&mut self, cmd: &Command) -> (Status, u32) {
        self.stats.io_commands += 1;
        let status = self.io_status(cmd).err().unwrap_or(Status::SUCCESS);
        if status == Status::DATA_TRANSFER_ERROR || status == Status::INVALID_FIELD {
            self.stats.dma_faults += 1;
        }
        (status, 0)
    }

    fn io_status(&mut self, cmd: &Command) -> Result<(), Status> {
        if cmd.nsid != 1 {
            return Err(Status::INVALID_NAMESPACE);
        }
        let bs = u64::from(self.cfg.block_size);
        let nlb = u64::from(cmd.cdw12 & 0xffff) + 1;
        let disk_blocks = self.cfg.blocks;
        let in_range = move |slba: u64, n: u64| slba.checked_add(n).is_some_and(|end| end <= disk_blocks);
        match cmd.opcode {
            opcode::NVM_FLUSH => Ok(()),
            opcode::NVM_READ | opcode::NVM_WRITE => {
                if !in_range(cmd.slba(), nlb) {
                    return Err(Status::LBA_OUT_OF_RANGE);
                }
                let bytes = nlb * bs;
                self.stats.max_cmd_bytes = self.stats.max_cmd_bytes.max(bytes);
                if self.cfg.mdts != 0 && bytes > PAGE << self.cfg.mdts {
                    self.stats.mdts_violations += 1;
                    return Err(Status::INVALID_FIELD);
                }
                let ranges = self.prp_ranges(cmd.prp1(), cmd.prp2(), bytes)?;
                self.stats.prp_shapes[ranges.len().min(3) - 1] += 1;
                let mut pos = (cmd.slba() * bs) as usize;
                for (addr, len) in ranges {
                    let len = len as usize;
                    let mut chunk = self.disk[pos..pos + len].to_vec();
                    if cmd.opcode == opcode::NVM_READ {
                        self.dma_write(addr, &chunk).map_err(|()| Status::DATA_TRANSFER_ERROR)?;
                    } else {
                        self.dma_read(addr, &mut chunk).map_err(|()| Status::DATA_TRANSFER_ERROR)?;
                        self.disk[pos..pos + len].copy_from_slice(&chunk);
                    }
                    pos += len;
                }
                Ok(())
            }
            opcode::NVM_WRITE_ZEROES => {
                if !in_range(cmd.slba(), nlb) {
                    return Err(Status::LBA_OUT_OF_RANGE);
                }
                let pos = (cmd.slba() * bs) as usize;
                self.disk[pos..pos + (nlb * bs) as usize].fill(0);
                Ok(())
            }
            opcode::NVM_DATASET_MANAGEMENT => {
                let nr = (cmd.cdw10 & 0xff) as usize + 1;
                let mut ranges = vec![0u8; nr * 16];
                let mut pos = 0;
                for (addr, len) in self.prp_ranges(cmd.prp1(), cmd.prp2(), ranges.len() as u64)? {
                    let len = len as usize;
                    self.dma_read(addr, &mut ranges[pos..pos + len]).map_err(|()| Status::DATA_TRANSFER_ERROR)?;
                    pos += len;
                }
                for r in ranges.chunks(16) {
                    let blocks = u64::from(u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")));
                    let slba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
                    if !in_range(slba, blocks) {
                        return Err(Status::LBA_OUT_OF_RANGE);
                    }
                    if cmd.cdw11 & (1 << 2) != 0 {
                        self.disk[(slba * bs) as usize..((slba + blocks) * bs) as usize].fill(0);
                    }
                }
                Ok(())
            }
            _ => Err(Status::INVALID_OPCODE),
        }
    }
}

impl Cq {
    fn new(qid: u16, base: u64, entries: u16) -> Cq {
        Cq { qid, base, entries, tail: 0, phase: true, head: 0, backlog: VecDeque::new() }
    }
}

/// A device opened on a [`FakeController`], with a buffer pool it can reach.
pub struct Rig {
    /// The device (dropped first: it shuts the controller down).
    pub dev: NvmeDevice,
    /// Buffers of 64 KiB.
    pub shard: PoolShard,
    /// The controller model.
    pub fake: Arc<FakeController>,
    _pool: DmaPool,
}

impl Rig {
    /// Opens a device on a model with `cfg`, commands timing out after `timeout`.
    pub fn new(cfg: FakeConfig, timeout: Duration) -> Rig {
        let fake = FakeController::new(cfg);
        let pool = DmaPool::new(64 << 10, 32, false).expect("pool");
        let opts = NvmeOptions { nsid: 1, io_timeout: timeout };
        let dev = NvmeDevice::with_pci(fake.pci(), &pool, opts).expect("bring-up on the model");
        let shard = pool.shards(1).pop().expect("one shard");
        Rig { dev, shard, fake, _pool: pool }
    }

    /// A queue pair of `depth` commands.
    pub fn qpair(&self, depth: u32) -> NvmeQueuePair {
        self.dev.qpair(depth).expect("queue pair")
    }

    /// A buffer whose first `len` bytes are a pattern of `seed`.
    pub fn buf(&mut self, len: usize, seed: u64) -> DmaBuf {
        let mut b = self.shard.get().expect("a free buffer");
        b.as_mut_slice()[..len].copy_from_slice(&pattern(len, seed));
        b
    }
}

/// `len` bytes that differ for every seed and every 8-byte word.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len.div_ceil(8) as u64)
        .flat_map(|i| (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0x0100_0000_01b3)).to_le_bytes())
        .take(len)
        .collect()
}

/// Steps the model (when `step`) and polls `qp` until nothing is outstanding; returns
/// the completions in the order reported. Panics after `limit`: a hung request.
pub fn drain(fake: &FakeController, qp: &mut dyn QueuePair, step: bool, limit: Duration) -> Vec<IoCompletion> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while qp.outstanding() > 0 {
        if step {
            fake.step();
        }
        qp.poll(64, &mut |c| out.push(c));
        assert!(Instant::now() < deadline, "{} requests still outstanding after {limit:?}", qp.outstanding());
    }
    out
}
