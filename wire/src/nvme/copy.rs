//! Copy (NVM command set): the command's fields and its source range list in
//! descriptor format 0.
//!
//! A Copy names a destination (SDLBA, CDW11:CDW10) and up to 256 source ranges in its
//! data (NR, CDW12 bits 7:0, 0-based); the controller reads the ranges in order and
//! writes them one after the other from the destination on. Format 0 entries are 32
//! bytes: reserved (8), starting LBA (8), blocks (2, 0-based), reserved, then end to
//! end protection fields, which a namespace without protection information ignores.

use crate::nvme::Command;
use crate::{get_u16, get_u64, put_u16, put_u64};

/// Size of one format 0 source range entry.
pub const COPY_RANGE_SIZE: usize = 32;
/// Most source ranges one command may carry.
pub const COPY_RANGES_MAX: usize = 256;
/// Descriptor format 0 (CDW12 bits 11:8).
pub const COPY_FORMAT_0: u8 = 0;

/// Fields of a Copy command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CopyCommand {
    /// Destination starting LBA.
    pub sdlba: u64,
    /// Number of source ranges, 1-based.
    pub ranges: usize,
    /// Descriptor format of the range list.
    pub format: u8,
    /// Force unit access of the write.
    pub fua: bool,
}

impl CopyCommand {
    /// Reads the fields of a Copy command.
    pub fn from_command(c: &Command) -> CopyCommand {
        CopyCommand {
            sdlba: c.slba(),
            ranges: (c.cdw12 & 0xff) as usize + 1,
            format: ((c.cdw12 >> 8) & 0xf) as u8,
            fua: c.cdw12 & (1 << 30) != 0,
        }
    }

    /// A Copy command for `nsid` with these fields.
    pub fn to_command(&self, nsid: u32) -> Command {
        assert!((1..=COPY_RANGES_MAX).contains(&self.ranges), "1..=256 ranges");
        let mut c = Command { opcode: crate::nvme::opcode::NVM_COPY, nsid, ..Default::default() };
        c.set_slba(self.sdlba);
        c.cdw12 = u32::try_from(self.ranges - 1).expect("at most 255: checked above")
            | u32::from(self.format & 0xf) << 8
            | if self.fua { 1 << 30 } else { 0 };
        c
    }

    /// Bytes of range list the command transfers (format 0).
    pub fn data_len(&self) -> usize {
        self.ranges * COPY_RANGE_SIZE
    }
}

/// One source range: starting LBA and length in blocks (1-based here; the wire
/// carries it 0-based, so a range is never empty).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CopyRange {
    /// Starting LBA.
    pub slba: u64,
    /// Blocks, 1..=65536.
    pub nlb: u32,
}

impl CopyRange {
    /// Decodes a format 0 entry.
    pub fn from_bytes(b: &[u8; COPY_RANGE_SIZE]) -> CopyRange {
        CopyRange { slba: get_u64(b, 8), nlb: u32::from(get_u16(b, 16)) + 1 }
    }

    /// Encodes a format 0 entry.
    pub fn to_bytes(&self) -> [u8; COPY_RANGE_SIZE] {
        assert!((1..=65536).contains(&self.nlb), "a range holds 1 to 65536 blocks");
        let mut b = [0u8; COPY_RANGE_SIZE];
        put_u64(&mut b, 8, self.slba);
        put_u16(&mut b, 16, u16::try_from(self.nlb - 1).expect("checked above"));
        b
    }
}

/// The first `ranges` format 0 entries of `data`, or `None` when `data` is shorter.
pub fn parse_ranges(data: &[u8], ranges: usize) -> Option<Vec<CopyRange>> {
    let need = ranges.checked_mul(COPY_RANGE_SIZE)?;
    let list = data.get(..need)?;
    Some(list.chunks_exact(COPY_RANGE_SIZE).map(|c| CopyRange::from_bytes(c.try_into().expect("32 bytes"))).collect())
}

/// Encodes `ranges` as a format 0 list.
pub fn write_ranges(ranges: &[CopyRange]) -> Vec<u8> {
    ranges.iter().flat_map(|r| r.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fields_round_trip() {
        let c = CopyCommand { sdlba: 0x1_0000_0002, ranges: 256, format: COPY_FORMAT_0, fua: true };
        let cmd = c.to_command(1);
        assert_eq!(cmd.opcode, 0x19);
        assert_eq!((cmd.cdw10, cmd.cdw11, cmd.cdw12), (2, 1, 0x4000_00ff));
        assert_eq!(CopyCommand::from_command(&cmd), c);
        assert_eq!(c.data_len(), 8192);
    }

    #[test]
    fn ranges_sit_at_spec_offsets_and_short_lists_are_refused() {
        let r = [CopyRange { slba: 7, nlb: 1 }, CopyRange { slba: u64::MAX - 1, nlb: 65536 }];
        let b = write_ranges(&r);
        assert_eq!(b.len(), 64);
        assert_eq!(get_u64(&b, 8), 7);
        assert_eq!(get_u16(&b, 16), 0, "NLB is 0-based");
        assert_eq!(get_u16(&b, 32 + 16), 0xffff);
        assert_eq!(parse_ranges(&b, 2).unwrap(), r);
        assert_eq!(parse_ranges(&b, 3), None);
    }
}
