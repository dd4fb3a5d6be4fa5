//! NVMe over Fabrics: Connect command and data, controller properties.

use crate::nvme::{Command, NQN_SIZE};
use crate::{get_str, get_u16, put_str_nul, put_u16};

/// Size of the Connect command's data (host ID, controller ID, NQNs).
pub const CONNECT_DATA_SIZE: usize = 1024;
/// Controller ID a host asks for when any controller will do (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Property offset: Controller Capabilities (8 bytes).
pub const PROP_CAP: u32 = 0x00;
/// Property offset: Version (4 bytes).
pub const PROP_VS: u32 = 0x08;
/// Property offset: Controller Configuration (4 bytes).
pub const PROP_CC: u32 = 0x14;
/// Property offset: Controller Status (4 bytes).
pub const PROP_CSTS: u32 = 0x1c;
/// Property offset: NVM Subsystem Reset (4 bytes).
pub const PROP_NSSR: u32 = 0x20;

/// CC.EN: enable.
pub const CC_EN: u32 = 1;
/// CC.SHN shift (shutdown notification, 2 bits).
pub const CC_SHN_SHIFT: u32 = 14;
/// CSTS.RDY: ready.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS: controller fatal status.
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST: shutdown complete (10b in bits 3:2).
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// Fields of a Connect command (SQE part).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConnectCmd {
    /// Record format (must be 0).
    pub recfmt: u16,
    /// Queue ID: 0 for the admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    /// Connect attributes (priority class, etc.).
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only).
    pub kato_ms: u32,
}

impl ConnectCmd {
    /// Reads the Connect fields from the command dwords.
    pub fn from_command(c: &Command) -> ConnectCmd {
        ConnectCmd {
            recfmt: (c.cdw10 & 0xffff) as u16,
            qid: (c.cdw10 >> 16) as u16,
            sqsize: (c.cdw11 & 0xffff) as u16,
            cattr: ((c.cdw11 >> 16) & 0xff) as u8,
            kato_ms: c.cdw12,
        }
    }

    /// Writes the Connect fields into a Fabrics command.
    pub fn to_command(&self, cid: u16) -> Command {
        Command {
            opcode: crate::nvme::opcode::FABRICS,
            cid,
            nsid: u32::from(crate::nvme::opcode::FCTYPE_CONNECT),
            cdw10: u32::from(self.recfmt) | (u32::from(self.qid) << 16),
            cdw11: u32::from(self.sqsize) | (u32::from(self.cattr) << 16),
            cdw12: self.kato_ms,
            ..Default::default()
        }
    }
}

/// The 1024-byte Connect data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ConnectData {
    /// Host identifier (16 bytes).
    pub hostid: [u8; 16],
    /// Controller ID (0xffff = dynamic).
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
}

impl ConnectData {
    /// Decodes Connect data; `b` must be at least [`CONNECT_DATA_SIZE`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<ConnectData> {
        if b.len() < CONNECT_DATA_SIZE {
            return None;
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[0..16]);
        Some(ConnectData {
            hostid,
            cntlid: get_u16(b, 16),
            subnqn: get_str(&b[256..256 + NQN_SIZE]),
            hostnqn: get_str(&b[512..512 + NQN_SIZE]),
        })
    }

    /// Encodes Connect data.
    pub fn to_bytes(&self) -> [u8; CONNECT_DATA_SIZE] {
        let mut b = [0u8; CONNECT_DATA_SIZE];
        b[0..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        put_str_nul(&mut b[256..256 + NQN_SIZE], &self.subnqn);
        put_str_nul(&mut b[512..512 + NQN_SIZE], &self.hostnqn);
        b
    }
}

/// Fields of a Property Get/Set command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PropertyCmd {
    /// Attributes: size of the property, 0 = 4 bytes, 1 = 8 bytes.
    pub size8: bool,
    /// Property offset.
    pub offset: u32,
    /// Value (Property Set only).
    pub value: u64,
}

impl PropertyCmd {
    /// Reads the Property Get/Set fields from the command dwords.
    pub fn from_command(c: &Command) -> PropertyCmd {
        PropertyCmd {
            size8: c.cdw10 & 0x7 == 1,
            offset: c.cdw11,
            value: u64::from(c.cdw12) | (u64::from(c.cdw13) << 32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trips() {
        let cmd = ConnectCmd { recfmt: 0, qid: 3, sqsize: 127, cattr: 0, kato_ms: 15000 };
        assert_eq!(ConnectCmd::from_command(&cmd.to_command(9)), cmd);
        let data = ConnectData {
            hostid: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: "nqn.2026-11.io.quire:demo".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1234".into(),
        };
        assert_eq!(ConnectData::from_bytes(&data.to_bytes()), Some(data));
        assert_eq!(ConnectData::from_bytes(&[0u8; 100]), None);
    }
}
