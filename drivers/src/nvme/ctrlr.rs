//! Controller lifecycle: bring-up, admin commands, I/O queue creation, reset, shutdown.
//!
//! Bring-up follows the specification's "Initialization" sequence as an explicit state
//! machine ([`InitState`]), each waiting state bounded by CAP.TO: disable (CC.EN = 0)
//! and wait for CSTS.RDY = 0, program the admin queue (AQA, ASQ, ACQ), write CC (NVM
//! command set, 4 KiB pages, 64/16-byte entries) with EN = 1, wait for CSTS.RDY = 1.
//! Then Identify Controller and Namespace, and Set Features "Number of Queues".
//!
//! The admin queue is shared by every queue pair (they create and delete their I/O
//! queues and send Abort through it), so it sits behind a mutex: it is never on the
//! data path. A reset re-runs the bring-up and bumps [`PcieController::generation`]; every
//! queue pair notices the new generation on its next poll, re-creates its queues and
//! resubmits what was in flight (see `qpair.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quire_wire::nvme::{opcode, Command, Completion, Status};

use super::identify::{ControllerData, NamespaceData, IDENTIFY_BYTES};
use super::regs::{self, Cap};
use super::ring::Ring;
use super::vfio::{DmaArea, Mmio, VfioPci};
use super::NvmeError;

/// Admin queue entries.
const ADMIN_ENTRIES: u16 = 32;
/// Time an admin command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a shutdown may take when the controller does not say (RTD3E is optional).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// I/O queue pairs asked for in Set Features (the controller may grant fewer).
pub const IO_QUEUES_WANTED: u16 = 64;

/// States of bring-up; each waiting state has the CAP.TO deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitState {
    /// Write CC.EN = 0 (resets the controller, deleting every queue).
    Disable,
    /// Wait for CSTS.RDY = 0 (controller stopped).
    WaitNotReady,
    /// Program AQA, ASQ and ACQ.
    ConfigureAdmin,
    /// Write CC with EN = 1.
    Enable,
    /// Wait for CSTS.RDY = 1.
    WaitReady,
    /// Admin queue usable.
    Ready,
}

/// The admin queue and its data buffer, used under the controller's mutex.
pub(crate) struct Admin {
    ring: Ring,
    /// One page for Identify data.
    buf: DmaArea,
    next_cid: u16,
}

/// A controller brought up through VFIO, shared by the device and its queue pairs.
pub struct PcieController {
    cap: Cap,
    admin: Mutex<Admin>,
    /// Bumped by every reset; queue pairs compare it with the one they were built in.
    generation: AtomicU64,
    /// The controller is gone or could not be reset: every request fails at once.
    failed: AtomicBool,
    /// Requests resubmitted after resets (all queue pairs).
    resubmitted: AtomicU64,
    /// I/O queue ids in use (index = qid; 0 is the admin queue).
    qids: Mutex<Vec<bool>>,
    /// I/O queue pairs granted by the controller.
    io_queues: u16,
    data: ControllerData,
    mmio: Arc<Mmio>,
    pci: VfioPci,
}

impl PcieController {
    /// Brings the controller of `pci` up and asks for I/O queues.
    pub fn start(pci: VfioPci) -> Result<PcieController, NvmeError> {
        let mmio = pci.bar0().clone();
        let cap = Cap::decode(mmio.read64(regs::CAP));
        if mmio.read32(regs::CSTS) == regs::GONE {
            return Err(NvmeError::Gone);
        }
        if !cap.css_nvm || cap.mpsmin != 0 {
            return Err(NvmeError::Unsupported("controller without the NVM command set or 4 KiB pages"));
        }
        let entries = ADMIN_ENTRIES.min(u16::try_from(cap.mqes).unwrap_or(u16::MAX));
        let ring = Ring::new(
            mmio.clone(),
            &cap,
            0,
            entries,
            pci.alloc_area(Ring::sq_bytes(entries))?,
            pci.alloc_area(Ring::cq_bytes(entries))?,
        );
        let mut admin = Admin { ring, buf: pci.alloc_area(IDENTIFY_BYTES)?, next_cid: 0 };
        enable(&mmio, &cap, &mut admin)?;
        let mut identify = Command { opcode: opcode::ADMIN_IDENTIFY, cdw10: 1, ..Default::default() };
        identify.set_prps(admin.buf.iova(), 0);
        admin_command(&mmio, &mut admin, identify, "Identify Controller")?;
        let data = ControllerData::parse(&read_buf(&admin.buf));
        let io_queues = set_queue_count(&mmio, &mut admin)?;
        let vs = mmio.read32(regs::VS);
        let version = format!("{}.{}.{}", vs >> 16, (vs >> 8) & 0xff, vs & 0xff);
        tracing::info!(bdf = pci.bdf(), model = %data.model, %version, io_queues, "NVMe controller ready");
        Ok(PcieController {
            cap,
            admin: Mutex::new(admin),
            generation: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            resubmitted: AtomicU64::new(0),
            qids: Mutex::new(vec![false; usize::from(io_queues) + 1]),
            io_queues,
            data,
            mmio,
            pci,
        })
    }

    /// Identify Controller data.
    pub fn data(&self) -> &ControllerData {
        &self.data
    }

    /// CAP.
    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// BAR0.
    pub fn mmio(&self) -> &Arc<Mmio> {
        &self.mmio
    }

    /// The VFIO device.
    pub fn pci(&self) -> &VfioPci {
        &self.pci
    }

    /// I/O queue pairs the controller granted.
    pub fn io_queues(&self) -> u16 {
        self.io_queues
    }

    /// The reset generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Requests resubmitted after resets so far.
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    /// Counts `n` requests resubmitted after a reset.
    pub fn count_resubmitted(&self, n: u64) {
        self.resubmitted.fetch_add(n, Ordering::Relaxed);
    }

    /// True once the controller is gone or failed to reset.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the controller as failed (device gone).
    pub fn set_failed(&self) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(bdf = self.pci.bdf(), "NVMe controller failed: I/O will be aborted");
        }
    }

    fn lock_admin(&self) -> MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<Option<NamespaceData>, NvmeError> {
        let mut admin = self.lock_admin();
        let mut cmd = Command { opcode: opcode::ADMIN_IDENTIFY, nsid, cdw10: 0, ..Default::default() };
        cmd.set_prps(admin.buf.iova(), 0);
        admin_command(&self.mmio, &mut admin, cmd, "Identify Namespace")?;
        Ok(NamespaceData::parse(&read_buf(&admin.buf)))
    }

    /// Takes a free I/O queue id.
    pub fn qid_get(&self) -> Option<u16> {
        let mut qids = self.qids.lock().unwrap_or_else(|p| p.into_inner());
        let free = qids.iter().skip(1).position(|used| !used)? + 1;
        qids[free] = true;
        u16::try_from(free).ok()
    }

    /// Gives an I/O queue id back.
    pub fn qid_put(&self, qid: u16) {
        let mut qids = self.qids.lock().unwrap_or_else(|p| p.into_inner());
        assert!(qids[usize::from(qid)], "qid {qid} returned twice");
        qids[usize::from(qid)] = false;
    }

    /// Creates I/O CQ and SQ `ring.qid()` (polled: interrupts off) in generation
    /// `generation`; fails with [`NvmeError::Reset`] if a reset came in between.
    pub fn create_io_queues(&self, ring: &Ring, generation: u64) -> Result<(), NvmeError> {
        let mut admin = self.lock_admin();
        if self.generation() != generation {
            return Err(NvmeError::Reset);
        }
        let qid = u32::from(ring.qid());
        let size = u32::from(ring.entries() - 1) << 16;
        let mut cq = Command { opcode: opcode::ADMIN_CREATE_CQ, cdw10: size | qid, cdw11: 1, ..Default::default() };
        cq.set_prps(ring.cq_iova(), 0);
        admin_command(&self.mmio, &mut admin, cq, "Create I/O CQ")?;
        let mut sq = Command {
            opcode: opcode::ADMIN_CREATE_SQ,
            cdw10: size | qid,
            cdw11: (qid << 16) | 1,
            ..Default::default()
        };
        sq.set_prps(ring.sq_iova(), 0);
        admin_command(&self.mmio, &mut admin, sq, "Create I/O SQ")?;
        Ok(())
    }

    /// Deletes I/O SQ and CQ `qid` if they still exist in `generation`.
    pub fn delete_io_queues(&self, qid: u16, generation: u64) -> Result<(), NvmeError> {
        let mut admin = self.lock_admin();
        if self.generation() != generation || self.failed() {
            return Ok(()); // the reset (or the device's departure) deleted them
        }
        let sq = Command { opcode: opcode::ADMIN_DELETE_SQ, cdw10: u32::from(qid), ..Default::default() };
        admin_command(&self.mmio, &mut admin, sq, "Delete I/O SQ")?;
        let cq = Command { opcode: opcode::ADMIN_DELETE_CQ, cdw10: u32::from(qid), ..Default::default() };
        admin_command(&self.mmio, &mut admin, cq, "Delete I/O CQ")?;
        Ok(())
    }

    /// Asks the controller to abort command `cid` of SQ `qid`. Returns true if the
    /// controller will abort it (CQE DW0 bit 0 clear).
    pub fn abort(&self, qid: u16, cid: u16) -> Result<bool, NvmeError> {
        let mut admin = self.lock_admin();
        let cmd = Command {
            opcode: opcode::ADMIN_ABORT,
            cdw10: (u32::from(cid) << 16) | u32::from(qid),
            ..Default::default()
        };
        let cqe = admin_command(&self.mmio, &mut admin, cmd, "Abort")?;
        Ok(cqe.dw0 & 1 == 0)
    }

    /// Resets the controller (disable, enable, Set Features) unless a reset newer than
    /// `seen_generation` already happened. Every I/O queue is gone afterwards; queue
    /// pairs re-create theirs when they see the new generation.
    pub fn reset(&self, seen_generation: u64) -> Result<(), NvmeError> {
        let mut admin = self.lock_admin();
        if self.generation() != seen_generation {
            return Ok(()); // someone else reset it meanwhile
        }
        tracing::warn!(bdf = self.pci.bdf(), "resetting NVMe controller");
        let result = enable(&self.mmio, &self.cap, &mut admin)
            .and_then(|()| set_queue_count(&self.mmio, &mut admin))
            .and_then(|granted| {
                if granted < self.io_queues {
                    Err(NvmeError::Unsupported("controller granted fewer queues after reset"))
                } else {
                    Ok(())
                }
            });
        if result.is_err() {
            self.set_failed();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Normal shutdown (CC.SHN), waiting for CSTS.SHST = complete.
    fn shutdown(&self) -> Result<(), NvmeError> {
        let _admin = self.lock_admin();
        let cc = self.mmio.read32(regs::CC);
        self.mmio.write32(regs::CC, regs::cc_shutdown(cc));
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            let csts = self.mmio.read32(regs::CSTS);
            if csts == regs::GONE {
                return Err(NvmeError::Gone);
            }
            if csts & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(NvmeError::Timeout("shutdown"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for PcieController {
    fn drop(&mut self) {
        if self.failed() {
            return;
        }
        match self.shutdown() {
            Ok(()) => tracing::info!(bdf = self.pci.bdf(), "NVMe controller shut down"),
            Err(e) => tracing::warn!(bdf = self.pci.bdf(), "NVMe shutdown: {e}"),
        }
    }
}

/// Runs the bring-up state machine to [`InitState::Ready`].
fn enable(mmio: &Mmio, cap: &Cap, admin: &mut Admin) -> Result<(), NvmeError> {
    let mut state = InitState::Disable;
    let mut deadline = Instant::now();
    loop {
        let csts = mmio.read32(regs::CSTS);
        if csts == regs::GONE {
            return Err(NvmeError::Gone);
        }
        let next = match state {
            InitState::Disable => {
                mmio.write32(regs::CC, 0);
                deadline = Instant::now() + Duration::from_millis(cap.timeout_ms);
                InitState::WaitNotReady
            }
            InitState::WaitNotReady => {
                wait_step(csts & regs::CSTS_RDY == 0, deadline, state, InitState::ConfigureAdmin)?
            }
            InitState::ConfigureAdmin => {
                // Only now, with the controller stopped, can nothing land in the old
                // admin CQ any more (a late completion would look new to a fresh ring).
                admin.ring.reset();
                mmio.write32(regs::AQA, regs::aqa(u32::from(admin.ring.entries())));
                mmio.write64(regs::ASQ, admin.ring.sq_iova());
                mmio.write64(regs::ACQ, admin.ring.cq_iova());
                InitState::Enable
            }
            InitState::Enable => {
                mmio.write32(regs::CC, regs::cc_enable());
                deadline = Instant::now() + Duration::from_millis(cap.timeout_ms);
                InitState::WaitReady
            }
            InitState::WaitReady => {
                if csts & regs::CSTS_CFS != 0 {
                    return Err(NvmeError::Fatal);
                }
                wait_step(csts & regs::CSTS_RDY != 0, deadline, state, InitState::Ready)?
            }
            InitState::Ready => return Ok(()),
        };
        if next == state {
            std::thread::sleep(Duration::from_micros(100));
        }
        state = next;
    }
}

fn wait_step(done: bool, deadline: Instant, state: InitState, next: InitState) -> Result<InitState, NvmeError> {
    if done {
        Ok(next)
    } else if Instant::now() > deadline {
        Err(NvmeError::Timeout(match state {
            InitState::WaitNotReady => "CSTS.RDY = 0 after disable",
            _ => "CSTS.RDY = 1 after enable",
        }))
    } else {
        Ok(state)
    }
}

/// Set Features / Number of Queues; returns the I/O queue pairs granted.
fn set_queue_count(mmio: &Mmio, admin: &mut Admin) -> Result<u16, NvmeError> {
    const FID_NUMBER_OF_QUEUES: u32 = 0x07;
    let n = u32::from(IO_QUEUES_WANTED - 1);
    let cmd = Command {
        opcode: opcode::ADMIN_SET_FEATURES,
        cdw10: FID_NUMBER_OF_QUEUES,
        cdw11: (n << 16) | n,
        ..Default::default()
    };
    let cqe = admin_command(mmio, admin, cmd, "Set Features (Number of Queues)")?;
    let sq = (cqe.dw0 & 0xffff) + 1;
    let cq = (cqe.dw0 >> 16) + 1;
    let granted = sq.min(cq).min(u32::from(IO_QUEUES_WANTED));
    Ok(u16::try_from(granted).expect("at most IO_QUEUES_WANTED"))
}

/// Submits one admin command and polls for its completion.
fn admin_command(
    mmio: &Mmio,
    admin: &mut Admin,
    mut cmd: Command,
    what: &'static str,
) -> Result<Completion, NvmeError> {
    cmd.cid = admin.next_cid;
    admin.next_cid = admin.next_cid.wrapping_add(1);
    admin.ring.push(&cmd);
    admin.ring.ring_sq();
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut spins = 0u32;
    loop {
        while let Some(cqe) = admin.ring.pop() {
            admin.ring.ring_cq();
            if cqe.cid != cmd.cid {
                continue; // a late completion of an earlier command that timed out
            }
            let status = cqe.status();
            return if status.is_success() { Ok(cqe) } else { Err(NvmeError::Status { what, status }) };
        }
        spins += 1;
        if spins.is_multiple_of(1024) {
            let csts = mmio.read32(regs::CSTS);
            if csts == regs::GONE {
                return Err(NvmeError::Gone);
            }
            if csts & regs::CSTS_CFS != 0 {
                return Err(NvmeError::Fatal);
            }
            if Instant::now() > deadline {
                return Err(NvmeError::Timeout(what));
            }
            std::thread::yield_now();
        }
    }
}

fn read_buf(buf: &DmaArea) -> Vec<u8> {
    let mut v = vec![0u8; IDENTIFY_BYTES];
    buf.read(0, &mut v);
    v
}

/// Maps an NVMe status of an I/O command to the block interface's error.
pub fn io_error(status: Status) -> crate::block::IoError {
    use crate::block::IoError;
    use quire_wire::nvme::status::{SCT_COMMAND_SPECIFIC, SCT_GENERIC};
    match (status.sct, status.sc) {
        (SCT_GENERIC, 0x80) => IoError::OutOfRange,
        (SCT_GENERIC, 0x01) => IoError::Unsupported,
        (SCT_GENERIC, 0x07) | (SCT_GENERIC, 0x08) | (SCT_GENERIC, 0x05) => IoError::Aborted,
        (SCT_COMMAND_SPECIFIC, 0x80) => IoError::Unsupported,
        (sct, sc) => IoError::Media((i32::from(sct) << 8) | i32::from(sc)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::IoError;
    use crate::nvme::test_utils::{FakeConfig, FakeController};

    #[test]
    fn statuses_map_to_block_errors() {
        assert_eq!(io_error(Status::LBA_OUT_OF_RANGE), IoError::OutOfRange);
        assert_eq!(io_error(Status::INVALID_OPCODE), IoError::Unsupported);
        assert_eq!(io_error(Status::ABORTED_BY_REQUEST), IoError::Aborted);
        assert_eq!(io_error(Status::ABORTED_SQ_DELETION), IoError::Aborted);
        assert_eq!(io_error(Status::UNRECOVERED_READ_ERROR), IoError::Media(0x281));
        assert_eq!(io_error(Status::INTERNAL_ERROR), IoError::Media(0x06));
    }

    fn open(cfg: FakeConfig) -> (Arc<FakeController>, Result<PcieController, NvmeError>) {
        let fake = FakeController::new(cfg);
        let ctrl = PcieController::start(fake.pci());
        (fake, ctrl)
    }

    #[test]
    fn bring_up_waits_for_not_ready_then_ready_and_identifies() {
        // Left enabled by a previous owner, and slow to change CSTS.RDY either way: the
        // admin queue may only be programmed once RDY is 0, and used once it is 1.
        let cfg = FakeConfig { start_enabled: true, ready_delay: 40, mdts: 5, io_queues: 3, ..FakeConfig::default() };
        let (fake, ctrl) = open(cfg);
        let ctrl = ctrl.expect("bring-up");
        let s = fake.stats();
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
        assert_eq!((s.resets, s.enables), (1, 1));
        assert_eq!(ctrl.data().model, "Quire fake NVMe controller");
        assert_eq!(ctrl.data().max_transfer_bytes(), Some(128 << 10));
        assert_eq!(ctrl.io_queues(), 3);
        let ns = ctrl.identify_namespace(1).unwrap().expect("namespace 1 is active");
        assert_eq!((ns.nsze, ns.block_size), (4096, 512));
        assert!(ns.deallocate_reads_zeroes);
        assert_eq!(ctrl.identify_namespace(2).unwrap(), None);
        drop(ctrl);
        assert_eq!(fake.stats().shutdowns, 1, "CC.SHN on drop");
    }

    #[test]
    fn bring_up_gives_up_after_cap_to() {
        let fake = FakeController::new(FakeConfig { cap_to: 1, ..FakeConfig::default() });
        fake.stall_ready(true);
        let t0 = Instant::now();
        let e = PcieController::start(fake.pci()).err().expect("never ready");
        let took = t0.elapsed();
        assert!(matches!(e, NvmeError::Timeout("CSTS.RDY = 1 after enable")), "{e}");
        assert!(took >= Duration::from_millis(500), "CAP.TO is 500 ms, gave up after {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_device_that_is_gone_is_refused_at_once() {
        let fake = FakeController::new(FakeConfig::default());
        fake.vanish();
        assert!(matches!(PcieController::start(fake.pci()), Err(NvmeError::Gone)));
    }

    #[test]
    fn reset_reprograms_the_admin_queue_and_bumps_the_generation() {
        let (fake, ctrl) = open(FakeConfig::default());
        let ctrl = ctrl.unwrap();
        for g in 0..3 {
            assert_eq!(ctrl.generation(), g);
            ctrl.reset(g).expect("reset");
            ctrl.reset(g).expect("a stale generation is a no-op");
            // The admin queue works from its first slot again.
            assert!(ctrl.identify_namespace(1).unwrap().is_some());
        }
        let s = fake.stats();
        assert_eq!(s.resets, 3);
        assert!(s.protocol_errors.is_empty(), "{:?}", s.protocol_errors);
        assert!(!ctrl.failed());
    }

    #[test]
    fn wait_step_times_out_only_past_the_deadline() {
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(wait_step(false, later, InitState::WaitReady, InitState::Ready).unwrap(), InitState::WaitReady);
        assert_eq!(wait_step(true, later, InitState::WaitReady, InitState::Ready).unwrap(), InitState::Ready);
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            wait_step(false, past, InitState::WaitNotReady, InitState::ConfigureAdmin),
            Err(NvmeError::Timeout(_))
        ));
    }
}
