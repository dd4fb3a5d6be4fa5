//! Builders for the NVM I/O commands the initiator sends.
//!
//! They fill opcode, namespace and command dwords; the connection sets the command
//! identifier and the data pointer (an in-capsule or transport SGL) at submission.

use quire_wire::nvme::{opcode, Command};

/// A Read of `nlb` blocks (1-based count) at `slba`.
pub fn read(nsid: u32, slba: u64, nlb: u32) -> Command {
    rw(opcode::NVM_READ, nsid, slba, nlb)
}

/// A Write of `nlb` blocks (1-based count) at `slba`.
pub fn write(nsid: u32, slba: u64, nlb: u32) -> Command {
    rw(opcode::NVM_WRITE, nsid, slba, nlb)
}

/// A Compare of `nlb` blocks at `slba` with the data sent along.
pub fn compare(nsid: u32, slba: u64, nlb: u32) -> Command {
    rw(opcode::NVM_COMPARE, nsid, slba, nlb)
}

/// A Write Zeroes of `nlb` blocks at `slba`.
pub fn write_zeroes(nsid: u32, slba: u64, nlb: u32) -> Command {
    rw(opcode::NVM_WRITE_ZEROES, nsid, slba, nlb)
}

/// A Flush of the namespace's volatile write cache.
pub fn flush(nsid: u32) -> Command {
    Command { opcode: opcode::NVM_FLUSH, nsid, ..Default::default() }
}

fn rw(op: u8, nsid: u32, slba: u64, nlb: u32) -> Command {
    assert!(nlb >= 1, "a transfer covers at least one block");
    assert!(nlb <= 1 << 16, "NLB is a 16-bit 0-based field");
    let mut c = Command { opcode: op, nsid, ..Default::default() };
    c.set_slba(slba);
    c.cdw12 = nlb - 1;
    c
}

/// One Dataset Management range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmRange {
    /// First block.
    pub slba: u64,
    /// Number of blocks.
    pub nlb: u32,
}

/// A Dataset Management command with the Deallocate attribute over `ranges`, and the
/// 16-byte-per-range data it sends (write direction).
pub fn dsm_deallocate(nsid: u32, ranges: &[DsmRange]) -> (Command, Vec<u8>) {
    assert!(!ranges.is_empty(), "DSM needs at least one range");
    assert!(ranges.len() <= 256, "DSM carries at most 256 ranges");
    let mut data = vec![0u8; ranges.len() * 16];
    for (i, r) in ranges.iter().enumerate() {
        let d = &mut data[i * 16..i * 16 + 16];
        d[4..8].copy_from_slice(&r.nlb.to_le_bytes());
        d[8..16].copy_from_slice(&r.slba.to_le_bytes());
    }
    let c = Command {
        opcode: opcode::NVM_DATASET_MANAGEMENT,
        nsid,
        cdw10: u32::try_from(ranges.len() - 1).expect("at most 255: checked above"),
        cdw11: 1 << 2,
        ..Default::default()
    };
    (c, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_fields_are_zero_based_where_the_spec_says() {
        let r = read(1, 0x1_0000_0010, 8);
        assert_eq!(r.opcode, 0x02);
        assert_eq!(r.slba(), 0x1_0000_0010);
        assert_eq!(r.cdw12, 7);
        assert_eq!(r.nlb(), 8);
        assert_eq!(write(2, 0, 1).cdw12, 0);
        assert_eq!(write_zeroes(1, 5, 2).opcode, 0x08);
        assert_eq!(flush(1).opcode, 0x00);
    }

    #[test]
    fn dsm_ranges_encode_length_then_lba() {
        let (c, d) = dsm_deallocate(1, &[DsmRange { slba: 0x10, nlb: 4 }, DsmRange { slba: 0x99, nlb: 1 }]);
        assert_eq!(c.cdw10, 1);
        assert_eq!(c.cdw11, 4);
        assert_eq!(d.len(), 32);
        assert_eq!(u32::from_le_bytes(d[4..8].try_into().unwrap()), 4);
        assert_eq!(u64::from_le_bytes(d[24..32].try_into().unwrap()), 0x99);
    }
}
