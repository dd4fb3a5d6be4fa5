//! The parts of Identify Controller, Identify Namespace and the discovery log page
//! that a host needs, parsed from their wire bytes.
//!
//! Offsets are those of the NVMe base specification 2.0 (Identify) and the NVMe over
//! Fabrics specification 1.1 (discovery log page entry).

use quire_wire::{get_str, get_u16, get_u32, get_u64};

/// Bytes of an Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;
/// Bytes of the discovery log page header.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
/// Bytes of one discovery log page entry.
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Identify Controller fields the host uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Maximum data transfer size (power of two in CAP.MPSMIN units; 0 = no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version.
    pub ver: u32,
    /// Keep-alive granularity in 100 ms units.
    pub kas: u16,
    /// Maximum outstanding commands (fabrics).
    pub maxcmd: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// Optional NVM command support (bit 3: Write Zeroes, bit 2: DSM).
    pub oncs: u16,
    /// Volatile write cache present (bit 0).
    pub vwc: u8,
    /// SGL support.
    pub sgls: u32,
    /// Subsystem NQN.
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units (SQE included).
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset in 16-byte units.
    pub icdoff: u16,
}

impl IdentifyController {
    /// Parses the 4096-byte structure.
    pub fn parse(b: &[u8]) -> IdentifyController {
        assert!(b.len() >= IDENTIFY_LEN, "Identify data is 4096 bytes");
        IdentifyController {
            vid: get_u16(b, 0),
            serial: get_str(&b[4..24]),
            model: get_str(&b[24..64]),
            firmware: get_str(&b[64..72]),
            mdts: b[77],
            cntlid: get_u16(b, 78),
            ver: get_u32(b, 80),
            kas: get_u16(b, 320),
            maxcmd: get_u16(b, 514),
            nn: get_u32(b, 516),
            oncs: get_u16(b, 520),
            vwc: b[525],
            sgls: get_u32(b, 536),
            subnqn: get_str(&b[768..1024]),
            ioccsz: get_u32(b, 1792),
            iorcsz: get_u32(b, 1796),
            icdoff: get_u16(b, 1800),
        }
    }

    /// Bytes of write data an I/O command capsule can carry (0 when unknown).
    pub fn in_capsule_bytes(&self) -> u32 {
        (self.ioccsz * 16).saturating_sub(64)
    }

    /// Write Zeroes supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }

    /// Dataset Management supported.
    pub fn supports_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
}

/// Identify Namespace fields the host uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks.
    pub ncap: u64,
    /// Block size in bytes (from the LBA format in use).
    pub block_size: u32,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
}

impl IdentifyNamespace {
    /// Parses the 4096-byte structure.
    pub fn parse(b: &[u8]) -> IdentifyNamespace {
        assert!(b.len() >= IDENTIFY_LEN, "Identify data is 4096 bytes");
        let flbas = usize::from(b[26] & 0xf);
        let lbads = b[128 + 4 * flbas + 2];
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        IdentifyNamespace {
            nsze: get_u64(b, 0),
            ncap: get_u64(b, 8),
            block_size: if (9..=16).contains(&lbads) { 1 << lbads } else { 0 },
            nguid,
        }
    }

    /// Whether the namespace exists (inactive namespaces identify as all zeroes).
    pub fn is_active(&self) -> bool {
        self.nsze > 0 && self.block_size > 0
    }
}

/// Discovery log entry subsystem type: an NVM subsystem.
pub const SUBTYPE_NVME: u8 = 2;
/// Discovery log entry transport type: TCP.
pub const TRTYPE_TCP: u8 = 3;

/// One discovery log page entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Address family (1 = IPv4).
    pub adrfam: u8,
    /// Subsystem type (1 = referral, 2 = NVM subsystem, 3 = this discovery subsystem).
    pub subtype: u8,
    /// Port ID.
    pub portid: u16,
    /// Transport service ID (the port, for TCP).
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address.
    pub traddr: String,
}

/// Number of records the log page header announces.
pub fn discovery_numrec(b: &[u8]) -> u64 {
    assert!(b.len() >= 16);
    get_u64(b, 8)
}

/// Parses the entries of a discovery log page (header included in `b`).
pub fn parse_discovery(b: &[u8]) -> Vec<DiscoveryEntry> {
    let numrec = discovery_numrec(b);
    let fits = (b.len().saturating_sub(DISCOVERY_HEADER_LEN) / DISCOVERY_ENTRY_LEN) as u64;
    (0..numrec.min(fits) as usize)
        .map(|i| {
            let e = &b[DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN..][..DISCOVERY_ENTRY_LEN];
            DiscoveryEntry {
                trtype: e[0],
                adrfam: e[1],
                subtype: e[2],
                portid: get_u16(e, 4),
                trsvcid: get_str(&e[32..64]),
                subnqn: get_str(&e[256..512]),
                traddr: get_str(&e[512..768]),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_wire::{put_str_nul, put_str_padded, put_u16, put_u32, put_u64};

    #[test]
    fn controller_fields_come_from_their_offsets() {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_str_padded(&mut b[4..24], "SN1");
        put_str_padded(&mut b[24..64], "Quire");
        put_u16(&mut b, 78, 7);
        put_u32(&mut b, 516, 3);
        put_u16(&mut b, 520, 0b1100);
        put_str_nul(&mut b[768..1024], "nqn.x:y");
        put_u32(&mut b, 1792, 260);
        let c = IdentifyController::parse(&b);
        assert_eq!(c.serial, "SN1");
        assert_eq!(c.model, "Quire");
        assert_eq!((c.cntlid, c.nn), (7, 3));
        assert_eq!(c.subnqn, "nqn.x:y");
        assert_eq!(c.in_capsule_bytes(), 260 * 16 - 64);
        assert!(c.supports_write_zeroes() && c.supports_dsm());
    }

    #[test]
    fn namespace_block_size_follows_the_format_in_use() {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u64(&mut b, 0, 1000);
        b[26] = 1;
        b[128 + 2] = 9;
        b[132 + 2] = 12;
        let n = IdentifyNamespace::parse(&b);
        assert_eq!(n.block_size, 4096);
        assert!(n.is_active());
        assert!(!IdentifyNamespace::parse(&vec![0u8; IDENTIFY_LEN]).is_active());
    }

    #[test]
    fn agrees_with_the_wire_crates_builders() {
        use quire_wire::nvme::identify as wire;
        let id = wire::ControllerIdentity {
            serial: "S1".into(),
            model: "Quire".into(),
            cntlid: 9,
            nn: 4,
            subnqn: "nqn.2026-11.io.quire:demo".into(),
            ioccsz: wire::ioccsz_for(8192),
            ..Default::default()
        };
        let c = IdentifyController::parse(&wire::build_controller(&id)[..]);
        assert_eq!((c.serial.as_str(), c.model.as_str(), c.cntlid, c.nn), ("S1", "Quire", 9, 4));
        assert_eq!(c.subnqn, "nqn.2026-11.io.quire:demo");
        assert_eq!(c.in_capsule_bytes(), 8192);
    }

    #[test]
    fn discovery_entries_are_cut_at_what_was_read() {
        let mut b = vec![0u8; DISCOVERY_HEADER_LEN + 2 * DISCOVERY_ENTRY_LEN];
        put_u64(&mut b, 8, 3);
        let e = &mut b[DISCOVERY_HEADER_LEN + DISCOVERY_ENTRY_LEN..];
        e[0] = TRTYPE_TCP;
        e[2] = SUBTYPE_NVME;
        put_str_padded(&mut e[32..64], "4420");
        put_str_nul(&mut e[256..512], "nqn.a:b");
        put_str_padded(&mut e[512..768], "10.0.0.1");
        let v = parse_discovery(&b);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].subnqn, "nqn.a:b");
        assert_eq!(v[1].trsvcid, "4420");
        assert_eq!(v[1].traddr, "10.0.0.1");
    }
}
