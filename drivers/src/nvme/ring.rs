//! One submission queue and its completion queue: the ring mechanics both the admin
//! queue and the I/O queue pairs use.
//!
//! The host writes 64-byte entries at the SQ tail and tells the controller with one
//! MMIO write of the new tail (the doorbell); the controller writes 16-byte entries
//! into the CQ and flips the *phase tag* bit each time it wraps, so the host finds new
//! entries by comparing the phase bit with the one it expects, without reading any
//! register. After consuming entries the host writes the CQ head doorbell, which frees
//! those CQ slots. Doorbells are written once per batch ([`Ring::ring_sq`],
//! [`Ring::ring_cq`]): MMIO writes are the expensive part (a VM exit in a VM).
//!
//! The ring never checks for SQ overflow: its owner keeps at most `entries - 1`
//! commands outstanding (one command slot per SQ slot), so neither queue can fill.

use std::sync::Arc;

use quire_wire::nvme::{Command, Completion, CQE_SIZE, SQE_SIZE};

use super::regs::Cap;
use super::vfio::{DmaArea, Mmio};

/// A submission/completion queue pair's memory and indices.
pub struct Ring {
    qid: u16,
    entries: u16,
    sq: DmaArea,
    cq: DmaArea,
    sq_tail: u16,
    /// The tail value last written to the doorbell.
    sq_tail_rung: u16,
    cq_head: u16,
    /// The phase value that marks a new completion.
    phase: bool,
    /// CQ entries consumed since the last CQ doorbell write.
    cq_unrung: u16,
    sq_doorbell: usize,
    cq_doorbell: usize,
    mmio: Arc<Mmio>,
}

impl Ring {
    /// A ring of `entries` SQ and CQ entries for queue `qid` in `sq` and `cq`.
    pub fn new(mmio: Arc<Mmio>, cap: &Cap, qid: u16, entries: u16, sq: DmaArea, cq: DmaArea) -> Ring {
        assert!(entries >= 2);
        assert!(sq.len() >= usize::from(entries) * SQE_SIZE && cq.len() >= usize::from(entries) * CQE_SIZE);
        let ring = Ring {
            qid,
            entries,
            sq,
            cq,
            sq_tail: 0,
            sq_tail_rung: 0,
            cq_head: 0,
            phase: true,
            cq_unrung: 0,
            sq_doorbell: cap.sq_tail_doorbell(qid),
            cq_doorbell: cap.cq_head_doorbell(qid),
            mmio,
        };
        ring.cq.zero();
        ring
    }

    /// Bytes of SQ memory for `entries` entries.
    pub fn sq_bytes(entries: u16) -> usize {
        usize::from(entries) * SQE_SIZE
    }

    /// Bytes of CQ memory for `entries` entries.
    pub fn cq_bytes(entries: u16) -> usize {
        usize::from(entries) * CQE_SIZE
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Number of entries of each queue.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// IOVA of the SQ.
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// IOVA of the CQ.
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Writes `cmd` at the SQ tail; the controller sees it after [`Ring::ring_sq`].
    #[inline]
    pub fn push(&mut self, cmd: &Command) {
        let off = usize::from(self.sq_tail) * SQE_SIZE;
        self.sq.write(off, &cmd.to_bytes());
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        assert!(self.unrung() != 0, "SQ overflow: more pushed than the ring holds");
    }

    /// Commands pushed since the last doorbell.
    pub fn unrung(&self) -> u16 {
        (self.sq_tail + self.entries - self.sq_tail_rung) % self.entries
    }

    /// Writes the SQ tail doorbell if commands were pushed since the last write.
    #[inline]
    pub fn ring_sq(&mut self) {
        if self.sq_tail != self.sq_tail_rung {
            self.mmio.write32(self.sq_doorbell, u32::from(self.sq_tail));
            self.sq_tail_rung = self.sq_tail;
        }
    }

    /// The next completion if the controller has posted one.
    #[inline]
    pub fn pop(&mut self) -> Option<Completion> {
        let off = usize::from(self.cq_head) * CQE_SIZE;
        let status = self.cq.read_u16(off + 14);
        if (status & 1 != 0) != self.phase {
            return None;
        }
        // The rest of the entry was written before its phase bit.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let cqe = Completion::from_bytes(&self.cq.read16(off));
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        self.cq_unrung += 1;
        Some(cqe)
    }

    /// Writes the CQ head doorbell if completions were consumed since the last write.
    #[inline]
    pub fn ring_cq(&mut self) {
        if self.cq_unrung > 0 {
            self.mmio.write32(self.cq_doorbell, u32::from(self.cq_head));
            self.cq_unrung = 0;
        }
    }

    /// Back to the state of a newly created queue (after a controller reset).
    pub fn reset(&mut self) {
        self.cq.zero();
        self.sq_tail = 0;
        self.sq_tail_rung = 0;
        self.cq_head = 0;
        self.phase = true;
        self.cq_unrung = 0;
    }

    /// Writes a completion into the CQ as a controller would (unit tests).
    #[cfg(test)]
    pub fn post_for_test(&self, slot: u16, mut cqe: Completion, phase: bool) {
        cqe.status_phase = (cqe.status_phase & !1) | u16::from(phase);
        self.cq.write(usize::from(slot) * CQE_SIZE, &cqe.to_bytes());
    }

    /// Reads back the SQ entry at `slot` (unit tests).
    #[cfg(test)]
    pub fn sqe_for_test(&self, slot: u16) -> Command {
        let mut b = [0u8; 64];
        self.sq.read(usize::from(slot) * SQE_SIZE, &mut b);
        Command::from_bytes(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::nvme::Status;

    pub(crate) fn fake_ring(entries: u16) -> (Arc<Mmio>, Ring) {
        let mmio = Arc::new(Mmio::anonymous(0x2000).unwrap());
        let cap = Cap::decode(0x7ff);
        let sq = DmaArea::anonymous(Ring::sq_bytes(entries)).unwrap();
        let cq = DmaArea::anonymous(Ring::cq_bytes(entries)).unwrap();
        (mmio.clone(), Ring::new(mmio, &cap, 1, entries, sq, cq))
    }

    #[test]
    fn one_doorbell_per_batch_and_phase_flips_on_wrap() {
        let (mmio, mut ring) = fake_ring(4);
        for cid in 0..3 {
            ring.push(&Command { opcode: 2, cid, ..Default::default() });
        }
        assert_eq!(ring.unrung(), 3);
        assert_eq!(mmio.read32(0x1008), 0, "nothing rung before ring_sq");
        ring.ring_sq();
        assert_eq!(mmio.read32(0x1008), 3);
        assert_eq!(ring.sqe_for_test(2).cid, 2);
        assert!(ring.pop().is_none());
        for slot in 0..3 {
            ring.post_for_test(slot, Completion::new(slot, Status::SUCCESS), true);
        }
        let cids: Vec<u16> = std::iter::from_fn(|| ring.pop()).map(|c| c.cid).collect();
        assert_eq!(cids, vec![0, 1, 2]);
        ring.ring_cq();
        assert_eq!(mmio.read32(0x100c), 3);
        // Slot 3 then wrap to slot 0 with the inverted phase.
        ring.post_for_test(3, Completion::new(7, Status::SUCCESS), true);
        ring.post_for_test(0, Completion::new(8, Status::SUCCESS), false);
        assert_eq!(ring.pop().map(|c| c.cid), Some(7));
        assert_eq!(ring.pop().map(|c| c.cid), Some(8));
        assert!(ring.pop().is_none(), "stale entry at slot 1 carries the old phase");
        ring.ring_cq();
        assert_eq!(mmio.read32(0x100c), 1);
    }
}
