//! Command opcodes: admin, NVM command set, and Fabrics command types.

/// Admin: Delete I/O Submission Queue.
pub const ADMIN_DELETE_SQ: u8 = 0x00;
/// Admin: Create I/O Submission Queue.
pub const ADMIN_CREATE_SQ: u8 = 0x01;
/// Admin: Get Log Page.
pub const ADMIN_GET_LOG_PAGE: u8 = 0x02;
/// Admin: Delete I/O Completion Queue.
pub const ADMIN_DELETE_CQ: u8 = 0x04;
/// Admin: Create I/O Completion Queue.
pub const ADMIN_CREATE_CQ: u8 = 0x05;
/// Admin: Identify.
pub const ADMIN_IDENTIFY: u8 = 0x06;
/// Admin: Abort.
pub const ADMIN_ABORT: u8 = 0x08;
/// Admin: Set Features.
pub const ADMIN_SET_FEATURES: u8 = 0x09;
/// Admin: Get Features.
pub const ADMIN_GET_FEATURES: u8 = 0x0a;
/// Admin: Asynchronous Event Request.
pub const ADMIN_ASYNC_EVENT_REQUEST: u8 = 0x0c;
/// Admin: Keep Alive.
pub const ADMIN_KEEP_ALIVE: u8 = 0x18;
/// Fabrics commands (the command type is in byte 4).
pub const FABRICS: u8 = 0x7f;

/// NVM: Flush.
pub const NVM_FLUSH: u8 = 0x00;
/// NVM: Write.
pub const NVM_WRITE: u8 = 0x01;
/// NVM: Read.
pub const NVM_READ: u8 = 0x02;
/// NVM: Compare.
pub const NVM_COMPARE: u8 = 0x05;
/// NVM: Write Zeroes.
pub const NVM_WRITE_ZEROES: u8 = 0x08;
/// NVM: Dataset Management.
pub const NVM_DATASET_MANAGEMENT: u8 = 0x09;
/// NVM: Copy.
pub const NVM_COPY: u8 = 0x19;

/// Fabrics command type: Property Set.
pub const FCTYPE_PROPERTY_SET: u8 = 0x00;
/// Fabrics command type: Connect.
pub const FCTYPE_CONNECT: u8 = 0x01;
/// Fabrics command type: Property Get.
pub const FCTYPE_PROPERTY_GET: u8 = 0x04;
/// Fabrics command type: Authentication Send.
pub const FCTYPE_AUTH_SEND: u8 = 0x05;
/// Fabrics command type: Authentication Receive.
pub const FCTYPE_AUTH_RECV: u8 = 0x06;
/// Fabrics command type: Disconnect.
pub const FCTYPE_DISCONNECT: u8 = 0x08;

/// Data transfer direction of an opcode (bits 1:0 of every NVMe opcode).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// No data.
    None,
    /// Host to controller.
    HostToController,
    /// Controller to host.
    ControllerToHost,
    /// Bidirectional.
    Both,
}

/// The data direction the opcode encodes in its two low bits.
pub fn direction(opcode: u8) -> Direction {
    match opcode & 0x3 {
        0 => Direction::None,
        1 => Direction::HostToController,
        2 => Direction::ControllerToHost,
        _ => Direction::Both,
    }
}
