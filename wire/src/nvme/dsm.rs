//! Dataset Management: the command fields and its 16-byte range list.
//!
//! Hosts send discards (`blkdiscard`, `fstrim`, filesystems' online discard) as
//! Dataset Management with the Deallocate attribute and up to 256 ranges in the data
//! buffer. A thin-provisioned volume turns those ranges into freed pages, so the
//! parser must be exact and must not trust the host: the range count comes from the
//! command (NR, 0-based), the data may be shorter than it claims, and a range may run
//! past the end of the namespace or wrap the 64-bit LBA space.

use crate::nvme::Command;
use crate::{get_u32, get_u64, put_u32, put_u64};

/// Size of one range.
pub const DSM_RANGE_SIZE: usize = 16;
/// Most ranges one command may carry.
pub const DSM_RANGES_MAX: usize = 256;

/// CDW11 attribute: integral dataset for read.
pub const DSM_ATTR_IDR: u32 = 1 << 0;
/// CDW11 attribute: integral dataset for write.
pub const DSM_ATTR_IDW: u32 = 1 << 1;
/// CDW11 attribute: deallocate.
pub const DSM_ATTR_AD: u32 = 1 << 2;

/// Errors in a Dataset Management range list.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DsmError {
    /// The data buffer holds fewer ranges than the command's NR says.
    #[error("range list holds {have} bytes, {need} needed")]
    Truncated {
        /// Bytes that NR ranges need.
        need: usize,
        /// Bytes received.
        have: usize,
    },
}

/// Fields of a Dataset Management command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DsmCommand {
    /// Number of ranges, 1-based (CDW10 NR bits 7:0 are 0-based).
    pub ranges: usize,
    /// Integral dataset for read.
    pub idr: bool,
    /// Integral dataset for write.
    pub idw: bool,
    /// Deallocate the ranges.
    pub deallocate: bool,
}

impl DsmCommand {
    /// Reads the fields of a Dataset Management command.
    pub fn from_command(c: &Command) -> DsmCommand {
        DsmCommand {
            ranges: (c.cdw10 & 0xff) as usize + 1,
            idr: c.cdw11 & DSM_ATTR_IDR != 0,
            idw: c.cdw11 & DSM_ATTR_IDW != 0,
            deallocate: c.cdw11 & DSM_ATTR_AD != 0,
        }
    }

    /// Writes these fields into a Dataset Management command for `nsid`.
    pub fn to_command(&self, cid: u16, nsid: u32) -> Command {
        assert!((1..=DSM_RANGES_MAX).contains(&self.ranges), "1..=256 ranges");
        Command {
            opcode: crate::nvme::opcode::NVM_DATASET_MANAGEMENT,
            cid,
            nsid,
            cdw10: u32::try_from(self.ranges - 1).expect("at most 255: checked above"),
            cdw11: (if self.idr { DSM_ATTR_IDR } else { 0 })
                | (if self.idw { DSM_ATTR_IDW } else { 0 })
                | (if self.deallocate { DSM_ATTR_AD } else { 0 }),
            ..Default::default()
        }
    }

    /// Bytes of range data the command transfers.
    pub fn data_len(&self) -> usize {
        self.ranges * DSM_RANGE_SIZE
    }
}

/// One range: context attributes, length in blocks, starting LBA.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DsmRange {
    /// Context attributes (access frequency, latency, …); hints only.
    pub context_attributes: u32,
    /// Length in logical blocks (1-based; 0 is a range of no blocks).
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

impl DsmRange {
    /// Decodes 16 bytes.
    pub fn from_bytes(b: &[u8; DSM_RANGE_SIZE]) -> DsmRange {
        DsmRange { context_attributes: get_u32(b, 0), nlb: get_u32(b, 4), slba: get_u64(b, 8) }
    }

    /// Encodes 16 bytes.
    pub fn to_bytes(&self) -> [u8; DSM_RANGE_SIZE] {
        let mut b = [0u8; DSM_RANGE_SIZE];
        put_u32(&mut b, 0, self.context_attributes);
        put_u32(&mut b, 4, self.nlb);
        put_u64(&mut b, 8, self.slba);
        b
    }

    /// One past the last LBA, or `None` if the range wraps the LBA space.
    pub fn end(&self) -> Option<u64> {
        self.slba.checked_add(u64::from(self.nlb))
    }

    /// True when the range lies inside a namespace of `nsze` blocks.
    pub fn within(&self, nsze: u64) -> bool {
        self.end().is_some_and(|end| end <= nsze)
    }
}

/// Iterates over the `ranges` ranges in `data` without allocating.
pub fn parse_ranges(data: &[u8], ranges: usize) -> Result<impl ExactSizeIterator<Item = DsmRange> + '_, DsmError> {
    assert!(ranges <= DSM_RANGES_MAX, "at most 256 ranges");
    let need = ranges * DSM_RANGE_SIZE;
    if data.len() < need {
        return Err(DsmError::Truncated { need, have: data.len() });
    }
    Ok(data[..need].chunks_exact(DSM_RANGE_SIZE).map(|c| DsmRange::from_bytes(c.try_into().expect("16-byte chunk"))))
}

/// Encodes `ranges` into `out`; returns the bytes written.
pub fn write_ranges(ranges: &[DsmRange], out: &mut [u8]) -> usize {
    assert!(ranges.len() <= DSM_RANGES_MAX, "at most 256 ranges");
    let len = ranges.len() * DSM_RANGE_SIZE;
    assert!(out.len() >= len, "output holds every range");
    for (r, chunk) in ranges.iter().zip(out.chunks_exact_mut(DSM_RANGE_SIZE)) {
        chunk.copy_from_slice(&r.to_bytes());
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_layout_matches_the_spec() {
        let r = DsmRange { context_attributes: 0x0102_0304, nlb: 8, slba: 0x1_0000_0000 };
        let b = r.to_bytes();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(&b[4..8], &[8, 0, 0, 0]);
        assert_eq!(&b[8..16], &[0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(DsmRange::from_bytes(&b), r);
    }

    #[test]
    fn command_fields_round_trip() {
        let d = DsmCommand { ranges: 256, idr: false, idw: true, deallocate: true };
        let c = d.to_command(3, 1);
        assert_eq!(c.cdw10, 255);
        assert_eq!(c.cdw11, 0b110);
        assert_eq!(DsmCommand::from_command(&c), d);
        assert_eq!(d.data_len(), 4096);
    }

    #[test]
    fn short_data_and_bad_ranges_are_caught() {
        let ranges = [
            DsmRange { context_attributes: 0, nlb: 16, slba: 0 },
            DsmRange { context_attributes: 0, nlb: 2, slba: u64::MAX - 1 },
        ];
        let mut buf = [0u8; 64];
        assert_eq!(write_ranges(&ranges, &mut buf), 32);
        let parsed: Vec<_> = parse_ranges(&buf, 2).unwrap().collect();
        assert_eq!(parsed, ranges);
        assert!(parsed[0].within(16));
        assert!(!parsed[0].within(15));
        assert_eq!(parsed[1].end(), None, "wraps the LBA space");
        assert!(!parsed[1].within(u64::MAX));
        assert_eq!(parse_ranges(&buf[..20], 2).err(), Some(DsmError::Truncated { need: 32, have: 20 }));
    }

    proptest! {
        #[test]
        fn ranges_round_trip(v in proptest::collection::vec(any::<(u32, u32, u64)>(), 0..=256)) {
            let ranges: Vec<DsmRange> = v
                .iter()
                .map(|&(c, n, s)| DsmRange { context_attributes: c, nlb: n, slba: s })
                .collect();
            let mut buf = vec![0u8; 4096];
            let len = write_ranges(&ranges, &mut buf);
            prop_assert_eq!(len, ranges.len() * 16);
            let back: Vec<_> = parse_ranges(&buf[..len], ranges.len()).unwrap().collect();
            prop_assert_eq!(back, ranges);
        }
    }
}
