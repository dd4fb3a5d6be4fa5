//! NVMe status codes (status code type + status code, plus More and Do Not Retry).
//!
//! On the data path a failed command is not a Rust error: it completes with one of
//! these values, as SPDK's `nvmf_tcp_req_set_cpl()` does.

/// A status field: SCT (3 bits), SC (8 bits), CRD (2 bits), More, DNR.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Status {
    /// Status code type.
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
    /// More information in the error log.
    pub more: bool,
}

/// Status code type: generic command status.
pub const SCT_GENERIC: u8 = 0;
/// Status code type: command specific status.
pub const SCT_COMMAND_SPECIFIC: u8 = 1;
/// Status code type: media and data integrity errors.
pub const SCT_MEDIA: u8 = 2;
/// Status code type: path related status.
pub const SCT_PATH: u8 = 3;

const fn generic(sc: u8) -> Status {
    Status { sct: SCT_GENERIC, sc, dnr: false, more: false }
}

const fn specific(sc: u8) -> Status {
    Status { sct: SCT_COMMAND_SPECIFIC, sc, dnr: false, more: false }
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = generic(0x00);
    /// Invalid command opcode.
    pub const INVALID_OPCODE: Status = generic(0x01);
    /// Invalid field in command.
    pub const INVALID_FIELD: Status = generic(0x02);
    /// Command ID conflict.
    pub const CID_CONFLICT: Status = generic(0x03);
    /// Data transfer error.
    pub const DATA_TRANSFER_ERROR: Status = generic(0x04);
    /// Commands aborted due to power loss notification.
    pub const ABORTED_POWER_LOSS: Status = generic(0x05);
    /// Internal error.
    pub const INTERNAL_ERROR: Status = generic(0x06);
    /// Command abort requested.
    pub const ABORTED_BY_REQUEST: Status = generic(0x07);
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: Status = generic(0x08);
    /// Invalid namespace or format.
    pub const INVALID_NAMESPACE: Status = generic(0x0b);
    /// Command sequence error.
    pub const COMMAND_SEQUENCE_ERROR: Status = generic(0x0c);
    /// Invalid SGL segment descriptor.
    pub const INVALID_SGL_SEGMENT: Status = generic(0x0d);
    /// Data SGL length invalid.
    pub const DATA_SGL_LENGTH_INVALID: Status = generic(0x0f);
    /// SGL descriptor type invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = generic(0x11);
    /// SGL offset invalid.
    pub const SGL_OFFSET_INVALID: Status = generic(0x16);
    /// Host identifier inconsistent format.
    pub const HOSTID_INCONSISTENT: Status = generic(0x18);
    /// Keep Alive Timer expired.
    pub const KEEP_ALIVE_EXPIRED: Status = generic(0x19);
    /// Keep Alive Timeout invalid.
    pub const KEEP_ALIVE_INVALID: Status = generic(0x1a);
    /// Command aborted due to preempt and abort.
    pub const ABORTED_PREEMPT: Status = generic(0x1b);
    /// Namespace is write protected / transient capacity: LBA out of range.
    pub const LBA_OUT_OF_RANGE: Status = generic(0x80);
    /// Capacity exceeded.
    pub const CAPACITY_EXCEEDED: Status = generic(0x81);
    /// Namespace not ready.
    pub const NAMESPACE_NOT_READY: Status = generic(0x82);

    /// Completion queue invalid.
    pub const CQ_INVALID: Status = specific(0x00);
    /// Invalid queue identifier.
    pub const INVALID_QUEUE_ID: Status = specific(0x01);
    /// Invalid queue size.
    pub const INVALID_QUEUE_SIZE: Status = specific(0x02);
    /// Abort command limit exceeded.
    pub const ABORT_LIMIT_EXCEEDED: Status = specific(0x03);
    /// Asynchronous event request limit exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = specific(0x05);
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: Status = specific(0x09);
    /// Feature identifier not saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = specific(0x0d);
    /// Feature not changeable.
    pub const FEATURE_NOT_CHANGEABLE: Status = specific(0x0e);
    /// Fabrics: incompatible format (Connect).
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = specific(0x80);
    /// Fabrics: controller busy (Connect).
    pub const CONNECT_CONTROLLER_BUSY: Status = specific(0x81);
    /// Fabrics: Connect invalid parameters (see DW0 for the field).
    pub const CONNECT_INVALID_PARAMETERS: Status = specific(0x82);
    /// Fabrics: Connect restart discovery.
    pub const CONNECT_RESTART_DISCOVERY: Status = specific(0x83);
    /// Fabrics: Connect invalid host.
    pub const CONNECT_INVALID_HOST: Status = specific(0x84);
    /// Conflicting attributes (DSM / write zeroes).
    pub const CONFLICTING_ATTRIBUTES: Status = specific(0x80);
    /// Command size limits exceeded (a Copy over MSSRL, MCL or MSRC).
    pub const COMMAND_SIZE_LIMIT_EXCEEDED: Status = specific(0x83);

    /// Media: unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: Status = Status { sct: SCT_MEDIA, sc: 0x81, dnr: false, more: false };
    /// Media: write fault.
    pub const WRITE_FAULT: Status = Status { sct: SCT_MEDIA, sc: 0x80, dnr: false, more: false };

    /// Media: compare failure (the data differs from what the Compare carried).
    pub const COMPARE_FAILURE: Status = Status { sct: SCT_MEDIA, sc: 0x85, dnr: false, more: false };

    /// Path: asymmetric access inaccessible.
    pub const ANA_INACCESSIBLE: Status = Status { sct: SCT_PATH, sc: 0x02, dnr: false, more: false };
    /// Path: asymmetric access transition (retryable on this or another path).
    pub const ANA_TRANSITION: Status = Status { sct: SCT_PATH, sc: 0x03, dnr: false, more: false };

    /// The same status with Do Not Retry set.
    pub const fn with_dnr(self) -> Status {
        Status { dnr: true, ..self }
    }

    /// True when Do Not Retry is set.
    pub fn dnr(&self) -> bool {
        self.dnr
    }

    /// True for successful completion.
    pub fn is_success(&self) -> bool {
        self.sct == SCT_GENERIC && self.sc == 0
    }

    /// Encodes as the 15-bit status field (DW3 bits 31:17, shifted down by 17).
    pub fn to_field(self) -> u16 {
        u16::from(self.sc)
            | (u16::from(self.sct & 0x7) << 8)
            | (u16::from(self.more) << 13)
            | (u16::from(self.dnr) << 14)
    }

    /// Decodes the 15-bit status field.
    pub fn from_field(f: u16) -> Status {
        Status { sc: (f & 0xff) as u8, sct: ((f >> 8) & 0x7) as u8, more: f & (1 << 13) != 0, dnr: f & (1 << 14) != 0 }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sct={:#x} sc={:#04x}{}", self.sct, self.sc, if self.dnr { " dnr" } else { "" })
    }
}
