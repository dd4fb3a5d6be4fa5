//! Controller registers (NVMe base specification, "Controller Registers").
//!
//! BAR0 starts with the properties the host uses to bring a controller up — CAP, VS,
//! CC, CSTS, AQA, ASQ, ACQ — followed at 0x1000 by the doorbells: for queue `y`, the
//! submission queue tail doorbell at `0x1000 + (2y) * (4 << CAP.DSTRD)` and the
//! completion queue head doorbell at `0x1000 + (2y + 1) * (4 << CAP.DSTRD)`.
//! This file decodes and encodes those values; [`super::vfio::Mmio`] does the access.

/// Controller Capabilities (64-bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue base address (64-bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue base address (64-bit).
pub const ACQ: usize = 0x30;
/// First doorbell.
pub const DOORBELL_BASE: usize = 0x1000;

/// CSTS.RDY: the controller is ready.
pub const CSTS_RDY: u32 = 1 << 0;
/// CSTS.CFS: controller fatal status.
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST mask (bits 3:2) and the "shutdown complete" value.
pub const CSTS_SHST_MASK: u32 = 0b11 << 2;
/// CSTS.SHST = 10b: shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;
/// A register read of all ones: the device is gone (surprise removal, link down).
pub const GONE: u32 = u32::MAX;

/// The decoded fields of CAP the driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Maximum queue entries supported (1-based).
    pub mqes: u32,
    /// Queues must be physically contiguous.
    pub cqr: bool,
    /// Worst-case time to become ready or not ready, in milliseconds.
    pub timeout_ms: u64,
    /// Doorbell stride: doorbells are `4 << dstrd` bytes apart.
    pub dstrd: u32,
    /// NVM command set supported (CSS bit 0).
    pub css_nvm: bool,
    /// Minimum memory page size, as `12 + mpsmin`.
    pub mpsmin: u32,
    /// Maximum memory page size, as `12 + mpsmax`.
    pub mpsmax: u32,
}

impl Cap {
    /// Decodes the 64-bit CAP register.
    pub fn decode(cap: u64) -> Cap {
        Cap {
            mqes: (cap & 0xffff) as u32 + 1,
            cqr: cap & (1 << 16) != 0,
            timeout_ms: ((cap >> 24) & 0xff).max(1) * 500,
            dstrd: ((cap >> 32) & 0xf) as u32,
            css_nvm: (cap >> 37) & 1 != 0,
            mpsmin: ((cap >> 48) & 0xf) as u32,
            mpsmax: ((cap >> 52) & 0xf) as u32,
        }
    }

    /// Offset of queue `qid`'s submission queue tail doorbell.
    pub fn sq_tail_doorbell(&self, qid: u16) -> usize {
        DOORBELL_BASE + (2 * usize::from(qid)) * (4 << self.dstrd)
    }

    /// Offset of queue `qid`'s completion queue head doorbell.
    pub fn cq_head_doorbell(&self, qid: u16) -> usize {
        DOORBELL_BASE + (2 * usize::from(qid) + 1) * (4 << self.dstrd)
    }
}

/// CC for an enabled controller: NVM command set, 4 KiB pages, round-robin
/// arbitration, 64-byte SQ entries (IOSQES=6) and 16-byte CQ entries (IOCQES=4).
pub fn cc_enable() -> u32 {
    const EN: u32 = 1;
    const CSS_NVM: u32 = 0 << 4;
    const MPS_4K: u32 = 0 << 7;
    const AMS_RR: u32 = 0 << 11;
    const IOSQES: u32 = 6 << 16;
    const IOCQES: u32 = 4 << 20;
    EN | CSS_NVM | MPS_4K | AMS_RR | IOSQES | IOCQES
}

/// CC with a normal shutdown notification (SHN = 01b) added to `cc`.
pub fn cc_shutdown(cc: u32) -> u32 {
    (cc & !(0b11 << 14)) | (0b01 << 14)
}

/// AQA for admin queues of `entries` entries (both queues the same size).
pub fn aqa(entries: u32) -> u32 {
    assert!((2..=4096).contains(&entries));
    ((entries - 1) << 16) | (entries - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_decodes_qemu_values_and_doorbells_follow_the_stride() {
        // QEMU 7.2: MQES=2047, CQR, TO=15 (7.5 s), DSTRD=0, CSS=NVM, MPSMIN=0, MPSMAX=4.
        let cap: u64 = 0x7ff | (1 << 16) | (0xf << 24) | (1 << 37) | (4 << 52);
        let c = Cap::decode(cap);
        assert_eq!(c.mqes, 2048);
        assert!(c.cqr);
        assert_eq!(c.timeout_ms, 7500);
        assert!(c.css_nvm);
        assert_eq!((c.mpsmin, c.mpsmax), (0, 4));
        assert_eq!(c.sq_tail_doorbell(0), 0x1000);
        assert_eq!(c.cq_head_doorbell(0), 0x1004);
        assert_eq!(c.sq_tail_doorbell(3), 0x1018);
        let wide = Cap::decode(cap | (2 << 32));
        assert_eq!(wide.cq_head_doorbell(1), 0x1000 + 3 * 16);
        assert_eq!(Cap::decode(0).timeout_ms, 500, "TO=0 still waits one unit");
    }

    #[test]
    fn cc_and_aqa_encode_the_fields_the_spec_names() {
        let cc = cc_enable();
        assert_eq!(cc & 1, 1);
        assert_eq!((cc >> 16) & 0xf, 6);
        assert_eq!((cc >> 20) & 0xf, 4);
        assert_eq!((cc >> 7) & 0xf, 0);
        assert_eq!((cc_shutdown(cc) >> 14) & 0b11, 0b01);
        assert_eq!(cc_shutdown(cc) & 1, 1, "shutdown keeps EN");
        assert_eq!(aqa(32), (31 << 16) | 31);
    }
}
