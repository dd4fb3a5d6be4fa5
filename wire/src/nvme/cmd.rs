//! The 64-byte submission queue entry.
//!
//! Layout (NVMe base specification, figure "Common Command Format"):
//! `CDW0` = opcode (7:0), fused/PSDT flags (15:8), command identifier (31:16);
//! `NSID`; `CDW2`, `CDW3`; `MPTR`; `DPTR` (16 bytes: PRP1/PRP2 or one SGL descriptor);
//! `CDW10`..`CDW15`. Fabrics commands reuse byte 4 as the fabrics command type.

use crate::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// A decoded submission queue entry. Field names follow the specification.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Command {
    /// Opcode (CDW0 bits 7:0).
    pub opcode: u8,
    /// Fused operation and PRP/SGL selection (CDW0 bits 15:8).
    pub flags: u8,
    /// Command identifier, echoed in the completion.
    pub cid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP1/PRP2 or an SGL descriptor.
    pub dptr: [u8; 16],
    /// Command dwords 10 to 15.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

/// PSDT value for "SGLs are used for this transfer" (CDW0 bits 15:14 = 01b).
pub const PSDT_SGL_MPTR_CONTIG: u8 = 0x40;

impl Command {
    /// Decodes an entry from its 64 wire bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Command {
        let mut dptr = [0u8; 16];
        dptr.copy_from_slice(&b[24..40]);
        Command {
            opcode: b[0],
            flags: b[1],
            cid: get_u16(b, 2),
            nsid: get_u32(b, 4),
            cdw2: get_u32(b, 8),
            cdw3: get_u32(b, 12),
            mptr: get_u64(b, 16),
            dptr,
            cdw10: get_u32(b, 40),
            cdw11: get_u32(b, 44),
            cdw12: get_u32(b, 48),
            cdw13: get_u32(b, 52),
            cdw14: get_u32(b, 56),
            cdw15: get_u32(b, 60),
        }
    }

    /// Encodes the entry into its 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = self.flags;
        put_u16(&mut b, 2, self.cid);
        put_u32(&mut b, 4, self.nsid);
        put_u32(&mut b, 8, self.cdw2);
        put_u32(&mut b, 12, self.cdw3);
        put_u64(&mut b, 16, self.mptr);
        b[24..40].copy_from_slice(&self.dptr);
        put_u32(&mut b, 40, self.cdw10);
        put_u32(&mut b, 44, self.cdw11);
        put_u32(&mut b, 48, self.cdw12);
        put_u32(&mut b, 52, self.cdw13);
        put_u32(&mut b, 56, self.cdw14);
        put_u32(&mut b, 60, self.cdw15);
        b
    }

    /// Fabrics command type (byte 4) of a Fabrics command (opcode 0x7f).
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xff) as u8
    }

    /// PRP entry 1 (first 8 bytes of DPTR).
    pub fn prp1(&self) -> u64 {
        get_u64(&self.dptr, 0)
    }

    /// PRP entry 2 (last 8 bytes of DPTR).
    pub fn prp2(&self) -> u64 {
        get_u64(&self.dptr, 8)
    }

    /// Sets PRP1 and PRP2.
    pub fn set_prps(&mut self, prp1: u64, prp2: u64) {
        put_u64(&mut self.dptr, 0, prp1);
        put_u64(&mut self.dptr, 8, prp2);
    }

    /// Starting LBA of an NVM read/write/write-zeroes command (CDW11:CDW10).
    pub fn slba(&self) -> u64 {
        (u64::from(self.cdw11) << 32) | u64::from(self.cdw10)
    }

    /// Sets the starting LBA (CDW10/11).
    pub fn set_slba(&mut self, slba: u64) {
        self.cdw10 = crate::lo32(slba);
        self.cdw11 = crate::hi32(slba);
    }

    /// Number of logical blocks of an NVM read/write/write-zeroes command
    /// (CDW12 bits 15:0 are 0-based on the wire; this returns the 1-based count).
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// Fused operation (CDW0 bits 9:8): 0 normal, 1 first and 2 second command of a
    /// fused pair, 3 reserved.
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }

    /// Force Unit Access bit of a read or write (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }

    /// Decodes DPTR as an SGL descriptor.
    pub fn sgl(&self) -> Sgl {
        Sgl::from_bytes(&self.dptr)
    }

    /// Encodes `sgl` into DPTR and marks the command as using SGLs.
    pub fn set_sgl(&mut self, sgl: Sgl) {
        self.dptr = sgl.to_bytes();
        self.flags = (self.flags & !0xc0) | PSDT_SGL_MPTR_CONTIG;
    }
}

/// SGL descriptor type: Data Block.
pub const SGL_TYPE_DATA_BLOCK: u8 = 0x0;
/// SGL descriptor type: Transport SGL Data Block (NVMe/TCP: data follows by R2T/C2H).
pub const SGL_TYPE_TRANSPORT_DATA_BLOCK: u8 = 0x5;
/// SGL sub-type: address is an offset into the in-capsule data.
pub const SGL_SUBTYPE_OFFSET: u8 = 0x1;
/// SGL sub-type: transport specific (NVMe/TCP uses this with the transport type).
pub const SGL_SUBTYPE_TRANSPORT: u8 = 0xa;

/// One SGL descriptor as NVMe/TCP uses them (16 bytes in DPTR).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sgl {
    /// Address (or offset into the in-capsule data).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Descriptor type (bits 7:4 of byte 15).
    pub kind: u8,
    /// Descriptor sub-type (bits 3:0 of byte 15).
    pub subtype: u8,
}

impl Sgl {
    /// Decodes a descriptor.
    pub fn from_bytes(b: &[u8; 16]) -> Sgl {
        Sgl { addr: get_u64(b, 0), len: get_u32(b, 8), kind: b[15] >> 4, subtype: b[15] & 0xf }
    }

    /// Encodes a descriptor.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u64(&mut b, 0, self.addr);
        put_u32(&mut b, 8, self.len);
        b[15] = (self.kind << 4) | (self.subtype & 0xf);
        b
    }

    /// The descriptor NVMe/TCP hosts use for data sent inside the command capsule.
    pub fn in_capsule(len: u32) -> Sgl {
        Sgl { addr: 0, len, kind: SGL_TYPE_DATA_BLOCK, subtype: SGL_SUBTYPE_OFFSET }
    }

    /// The descriptor NVMe/TCP hosts use for data moved by R2T/H2CData or C2HData.
    pub fn transport(len: u32) -> Sgl {
        Sgl { addr: 0, len, kind: SGL_TYPE_TRANSPORT_DATA_BLOCK, subtype: SGL_SUBTYPE_TRANSPORT }
    }

    /// True for an in-capsule data block descriptor.
    pub fn is_in_capsule(&self) -> bool {
        self.kind == SGL_TYPE_DATA_BLOCK && self.subtype == SGL_SUBTYPE_OFFSET
    }

    /// True for a transport data block descriptor.
    pub fn is_transport(&self) -> bool {
        self.kind == SGL_TYPE_TRANSPORT_DATA_BLOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_and_fields_land_where_the_spec_says() {
        let mut c = Command { opcode: 0x02, cid: 0xbeef, nsid: 1, ..Default::default() };
        c.set_slba(0x1_0000_0002);
        c.cdw12 = 7 | (1 << 30);
        c.set_sgl(Sgl::transport(4096 * 8));
        let b = c.to_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[2..4], &[0xef, 0xbe]);
        assert_eq!(b[39], 0x5a);
        let d = Command::from_bytes(&b);
        assert_eq!(d, c);
        assert_eq!(d.slba(), 0x1_0000_0002);
        assert_eq!(d.nlb(), 8);
        assert!(d.fua());
        assert!(d.sgl().is_transport());
        assert!(!d.sgl().is_in_capsule());
    }
}
