//! The few Identify fields the driver needs, read from the 4 KiB data structures.
//!
//! `quire_wire::nvme::identify` will hold the full structures (shared with the target,
//! which builds them); until it does, the driver decodes the handful of fields it uses
//! here, by their offsets in the NVMe base specification ("Identify Controller Data
//! Structure", "Identify Namespace Data Structure").

use quire_wire::{get_u16, get_u32, get_u64};

/// Size of an Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// What the driver knows about the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerData {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number (trimmed).
    pub serial: String,
    /// Model number (trimmed).
    pub model: String,
    /// Firmware revision (trimmed).
    pub firmware: String,
    /// Maximum data transfer size as a power of two of the minimum page size (0: none).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// Optional NVM commands: Dataset Management (ONCS bit 2).
    pub dsm: bool,
    /// Optional NVM commands: Write Zeroes (ONCS bit 3).
    pub write_zeroes: bool,
    /// A volatile write cache is present (VWC bit 0).
    pub volatile_write_cache: bool,
}

impl ControllerData {
    /// Decodes an Identify Controller structure.
    pub fn parse(b: &[u8]) -> ControllerData {
        assert!(b.len() >= IDENTIFY_BYTES);
        let oncs = get_u16(b, 520);
        ControllerData {
            vid: get_u16(b, 0),
            serial: text(&b[4..24]),
            model: text(&b[24..64]),
            firmware: text(&b[64..72]),
            mdts: b[77],
            cntlid: get_u16(b, 78),
            nn: get_u32(b, 516),
            dsm: oncs & (1 << 2) != 0,
            write_zeroes: oncs & (1 << 3) != 0,
            volatile_write_cache: b[525] & 1 != 0,
        }
    }

    /// Largest transfer in bytes for a 4 KiB minimum page size (`None`: no limit).
    pub fn max_transfer_bytes(&self) -> Option<u64> {
        (self.mdts != 0).then(|| 4096u64 << self.mdts.min(20))
    }
}

/// What the driver knows about a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceData {
    /// Size in logical blocks.
    pub nsze: u64,
    /// Logical block size in bytes (of the format in use).
    pub block_size: u32,
    /// Metadata bytes per block of the format in use (the driver needs 0).
    pub metadata_size: u16,
    /// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b).
    pub deallocate_reads_zeroes: bool,
}

impl NamespaceData {
    /// Decodes an Identify Namespace structure; `None` for an inactive namespace.
    pub fn parse(b: &[u8]) -> Option<NamespaceData> {
        assert!(b.len() >= IDENTIFY_BYTES);
        let nsze = get_u64(b, 0);
        if nsze == 0 {
            return None;
        }
        let flbas = usize::from(b[26] & 0xf) | (usize::from(b[26] >> 5 & 0x3) << 4);
        let lbaf = get_u32(b, 128 + 4 * flbas);
        let lbads = (lbaf >> 16) & 0xff;
        Some(NamespaceData {
            nsze,
            block_size: if (9..=16).contains(&lbads) { 1 << lbads } else { 0 },
            metadata_size: (lbaf & 0xffff) as u16,
            deallocate_reads_zeroes: b[33] & 0b111 == 0b001,
        })
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_matches(|c: char| c == ' ' || c == '\0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::{put_str_padded, put_u16, put_u32, put_u64};

    #[test]
    fn controller_fields_come_from_their_offsets() {
        let mut b = vec![0u8; IDENTIFY_BYTES];
        put_u16(&mut b, 0, 0x1b36);
        put_str_padded(&mut b[4..24], "qemu-nvme");
        put_str_padded(&mut b[24..64], "QEMU NVMe Ctrl");
        b[77] = 7;
        put_u32(&mut b, 516, 256);
        put_u16(&mut b, 520, 0b1100);
        b[525] = 1;
        let c = ControllerData::parse(&b);
        assert_eq!(c.vid, 0x1b36);
        assert_eq!(c.serial, "qemu-nvme");
        assert_eq!(c.model, "QEMU NVMe Ctrl");
        assert_eq!(c.max_transfer_bytes(), Some(512 * 1024));
        assert!(c.dsm && c.write_zeroes && c.volatile_write_cache);
        assert_eq!(c.nn, 256);
        b[77] = 0;
        assert_eq!(ControllerData::parse(&b).max_transfer_bytes(), None);
    }

    #[test]
    fn namespace_uses_the_selected_lba_format() {
        let mut b = vec![0u8; IDENTIFY_BYTES];
        assert_eq!(NamespaceData::parse(&b), None, "inactive");
        put_u64(&mut b, 0, 16384);
        b[26] = 1; // format 1
        put_u32(&mut b, 128, 9 << 16);
        put_u32(&mut b, 132, 12 << 16);
        b[33] = 0x09;
        let ns = NamespaceData::parse(&b).unwrap();
        assert_eq!(ns.nsze, 16384);
        assert_eq!(ns.block_size, 4096);
        assert_eq!(ns.metadata_size, 0);
        assert!(ns.deallocate_reads_zeroes);
    }
}
