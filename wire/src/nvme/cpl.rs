//! The 16-byte completion queue entry.
//!
//! DW0 and DW1 are command specific, DW2 carries the submission queue head pointer and
//! identifier, DW3 the command identifier, the phase tag (bit 16) and the status field
//! (bits 31:17).

use crate::nvme::Status;
use crate::{get_u16, get_u32, put_u16, put_u32};

/// A decoded completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Completion {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// Command identifier of the completed command.
    pub cid: u16,
    /// Status field with the phase tag in bit 0 (DW3 bits 31:16).
    pub status_phase: u16,
}

impl Completion {
    /// A completion for `cid` with `status` and zero command-specific dwords.
    pub fn new(cid: u16, status: Status) -> Completion {
        Completion { cid, status_phase: status.to_field() << 1, ..Default::default() }
    }

    /// Decodes an entry from its 16 wire bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Completion {
        Completion {
            dw0: get_u32(b, 0),
            dw1: get_u32(b, 4),
            sqhd: get_u16(b, 8),
            sqid: get_u16(b, 10),
            cid: get_u16(b, 12),
            status_phase: get_u16(b, 14),
        }
    }

    /// Encodes the entry into its 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u32(&mut b, 0, self.dw0);
        put_u32(&mut b, 4, self.dw1);
        put_u16(&mut b, 8, self.sqhd);
        put_u16(&mut b, 10, self.sqid);
        put_u16(&mut b, 12, self.cid);
        put_u16(&mut b, 14, self.status_phase);
        b
    }

    /// The phase tag.
    pub fn phase(&self) -> bool {
        self.status_phase & 1 != 0
    }

    /// The status without the phase tag.
    pub fn status(&self) -> Status {
        Status::from_field(self.status_phase >> 1)
    }

    /// Sets the status, keeping the phase tag.
    pub fn set_status(&mut self, status: Status) {
        self.status_phase = (self.status_phase & 1) | (status.to_field() << 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_round_trips_with_status_and_phase() {
        let mut c = Completion::new(42, Status::LBA_OUT_OF_RANGE.with_dnr());
        c.status_phase |= 1;
        c.dw0 = 0xdead_beef;
        let d = Completion::from_bytes(&c.to_bytes());
        assert_eq!(d, c);
        assert!(d.phase());
        assert_eq!(d.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
        assert!(d.status().dnr());
        assert_eq!(get_u32(&c.to_bytes(), 0), 0xdead_beef);
    }
}
