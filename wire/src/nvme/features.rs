//! Features: identifiers and the Get/Set Features command fields.
//!
//! Hosts configure a controller through Set Features right after Connect: the Linux
//! host sets Number of Queues (how many I/O queues it may connect), Asynchronous
//! Event Configuration (which notices it wants), and over fabrics reads Keep Alive
//! Timer back; SPDK does the same. The feature value travels in CDW11 (and a data
//! buffer for a few features); Get Features returns it in completion DW0.

use crate::nvme::Command;

/// Feature: Arbitration.
pub const FID_ARBITRATION: u8 = 0x01;
/// Feature: Power Management.
pub const FID_POWER_MANAGEMENT: u8 = 0x02;
/// Feature: Temperature Threshold.
pub const FID_TEMPERATURE_THRESHOLD: u8 = 0x04;
/// Feature: Error Recovery.
pub const FID_ERROR_RECOVERY: u8 = 0x05;
/// Feature: Volatile Write Cache.
pub const FID_VOLATILE_WRITE_CACHE: u8 = 0x06;
/// Feature: Number of Queues.
pub const FID_NUMBER_OF_QUEUES: u8 = 0x07;
/// Feature: Interrupt Coalescing.
pub const FID_INTERRUPT_COALESCING: u8 = 0x08;
/// Feature: Write Atomicity Normal.
pub const FID_WRITE_ATOMICITY: u8 = 0x0a;
/// Feature: Asynchronous Event Configuration.
pub const FID_ASYNC_EVENT_CONFIG: u8 = 0x0b;
/// Feature: Keep Alive Timer.
pub const FID_KEEP_ALIVE_TIMER: u8 = 0x0f;
/// Feature: Host Identifier.
pub const FID_HOST_IDENTIFIER: u8 = 0x81;

/// Get Features SEL: current value.
pub const SEL_CURRENT: u8 = 0;
/// Get Features SEL: default value.
pub const SEL_DEFAULT: u8 = 1;
/// Get Features SEL: saved value.
pub const SEL_SAVED: u8 = 2;
/// Get Features SEL: supported capabilities.
pub const SEL_SUPPORTED_CAPABILITIES: u8 = 3;

/// Volatile Write Cache CDW11/DW0 bit: write cache enabled.
pub const VWC_ENABLE: u32 = 1 << 0;

/// Asynchronous Event Configuration: SMART / health critical warnings (bits 7:0).
pub const AEC_SMART_MASK: u32 = 0xff;
/// Asynchronous Event Configuration: Namespace Attribute Notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// Asynchronous Event Configuration: Firmware Activation Notices.
pub const AEC_FW_ACTIVATION: u32 = 1 << 9;
/// Asynchronous Event Configuration: ANA Change Notices.
pub const AEC_ANA_CHANGE: u32 = 1 << 11;
/// Asynchronous Event Configuration: Discovery Log Page Change Notices.
pub const AEC_DISCOVERY_CHANGE: u32 = 1 << 31;

/// Errors in feature values.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FeatureError {
    /// A Number of Queues request of 65536 queues (0-based FFFFh), which the
    /// specification forbids.
    #[error("number of queues requested is 65536, which is invalid")]
    InvalidQueueCount,
}

/// Fields of a Get or Set Features command.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FeatureRequest {
    /// Feature identifier (CDW10 bits 7:0).
    pub fid: u8,
    /// Get Features select (CDW10 bits 10:8).
    pub sel: u8,
    /// Set Features save (CDW10 bit 31).
    pub save: bool,
    /// Feature value (CDW11).
    pub cdw11: u32,
    /// Namespace identifier.
    pub nsid: u32,
}

impl FeatureRequest {
    /// Reads the fields of a Get or Set Features command.
    pub fn from_command(c: &Command) -> FeatureRequest {
        FeatureRequest {
            fid: (c.cdw10 & 0xff) as u8,
            sel: ((c.cdw10 >> 8) & 0x7) as u8,
            save: c.cdw10 & (1 << 31) != 0,
            cdw11: c.cdw11,
            nsid: c.nsid,
        }
    }

    /// A Set Features command.
    pub fn set_command(&self, cid: u16) -> Command {
        Command {
            opcode: crate::nvme::opcode::ADMIN_SET_FEATURES,
            cid,
            nsid: self.nsid,
            cdw10: u32::from(self.fid) | (u32::from(self.save) << 31),
            cdw11: self.cdw11,
            ..Default::default()
        }
    }

    /// A Get Features command.
    pub fn get_command(&self, cid: u16) -> Command {
        assert!(self.sel <= 3, "SEL is 0..=3");
        Command {
            opcode: crate::nvme::opcode::ADMIN_GET_FEATURES,
            cid,
            nsid: self.nsid,
            cdw10: u32::from(self.fid) | (u32::from(self.sel) << 8),
            cdw11: self.cdw11,
            ..Default::default()
        }
    }
}

/// Number of Queues: counts of I/O submission and completion queues, 0-based on the
/// wire in both the request (CDW11: NSQR 15:0, NCQR 31:16) and the answer
/// (completion DW0: NSQA 15:0, NCQA 31:16).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NumberOfQueues {
    /// Number of I/O submission queues, 1-based.
    pub submission: u32,
    /// Number of I/O completion queues, 1-based.
    pub completion: u32,
}

impl NumberOfQueues {
    /// Reads a request from Set Features CDW11.
    pub fn from_cdw11(cdw11: u32) -> Result<NumberOfQueues, FeatureError> {
        let nsqr = cdw11 & 0xffff;
        let ncqr = cdw11 >> 16;
        if nsqr == 0xffff || ncqr == 0xffff {
            return Err(FeatureError::InvalidQueueCount);
        }
        Ok(NumberOfQueues { submission: nsqr + 1, completion: ncqr + 1 })
    }

    /// Encodes as CDW11 (request) or DW0 (answer): both are 0-based.
    pub fn to_dword(self) -> u32 {
        assert!((1..=0xffff).contains(&self.submission), "1..=65535 submission queues");
        assert!((1..=0xffff).contains(&self.completion), "1..=65535 completion queues");
        (self.submission - 1) | ((self.completion - 1) << 16)
    }

    /// Decodes a completion DW0 (NSQA/NCQA).
    pub fn from_dw0(dw0: u32) -> NumberOfQueues {
        NumberOfQueues { submission: (dw0 & 0xffff) + 1, completion: (dw0 >> 16) + 1 }
    }

    /// The answer a controller with `max` I/O queues gives: the request clipped to
    /// `max` (the controller may allocate fewer or more than asked; Quire gives
    /// what was asked up to its limit).
    pub fn granted(self, max: u32) -> NumberOfQueues {
        assert!(max >= 1);
        NumberOfQueues { submission: self.submission.min(max), completion: self.completion.min(max) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_of_queues_is_zero_based_on_the_wire() {
        let req = NumberOfQueues::from_cdw11(0x0003_0007).unwrap();
        assert_eq!(req, NumberOfQueues { submission: 8, completion: 4 });
        assert_eq!(req.to_dword(), 0x0003_0007);
        let got = req.granted(4);
        assert_eq!(got.to_dword(), 0x0003_0003);
        assert_eq!(NumberOfQueues::from_dw0(got.to_dword()), got);
        assert_eq!(NumberOfQueues::from_cdw11(0xffff), Err(FeatureError::InvalidQueueCount));
        assert_eq!(NumberOfQueues::from_cdw11(0xffff_0000), Err(FeatureError::InvalidQueueCount));
    }

    #[test]
    fn feature_commands_round_trip() {
        let set = FeatureRequest { fid: FID_KEEP_ALIVE_TIMER, sel: 0, save: true, cdw11: 15_000, nsid: 0 };
        let c = set.set_command(4);
        assert_eq!(c.opcode, 0x09);
        assert_eq!(c.cdw10, 0x8000_000f);
        assert_eq!(FeatureRequest::from_command(&c), set);
        let get = FeatureRequest { fid: FID_NUMBER_OF_QUEUES, sel: SEL_DEFAULT, ..set };
        let c = get.get_command(5);
        assert_eq!(c.opcode, 0x0a);
        assert_eq!(c.cdw10, 0x0107);
        assert_eq!(FeatureRequest::from_command(&c), FeatureRequest { save: false, ..get });
    }
}
