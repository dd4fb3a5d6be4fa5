//! An NVMe/TCP initiator (host): the client side of NVMe over TCP.
//!
//! # Primer
//! One TCP connection carries one NVMe queue pair ([`Connection`]). It opens with
//! ICReq/ICResp, which fixes the digests (CRC32C over headers and/or data), the
//! largest H2CData PDU the controller accepts (MAXH2CDATA) and its data alignment.
//! The first connection of a controller is the admin queue (queue 0): a Fabrics
//! Connect with controller ID 0xffff asks the target to allocate a controller (the
//! dynamic model) and gets its ID back; the host then reads CAP and VS through
//! Property Get, enables the controller with Property Set on CC, waits for CSTS.RDY,
//! and from then on talks to it with ordinary admin commands (Identify, Set Features,
//! Keep Alive, Get Log Page). Every further connection is an I/O queue (queue ≥ 1)
//! that names the admin queue's controller ID in its own Connect.
//!
//! On an I/O queue a Write whose data fits in the command capsule (IOCCSZ from
//! Identify Controller) carries it in-capsule; a larger one waits for the
//! controller's R2T PDUs and answers each with H2CData PDUs no larger than
//! MAXH2CDATA. A Read's data returns in C2HData PDUs, the last of which may carry
//! the SUCCESS flag in place of a response capsule.
//!
//! [`Controller`] drives the admin queue with blocking sockets and TCP_NODELAY;
//! I/O queues switch to non-blocking mode and are polled by the worker that owns
//! them ([`Connection::poll`]), as `spdk_nvme_perf` polls its queue pairs. Each
//! command slot carries an explicit state ([`SlotState`]).

mod cmd;
mod connection;
mod ctrlr;
mod slot;

pub use cmd::{compare, dsm_deallocate, flush, read, write, write_zeroes, DsmRange};
pub use connection::{Connection, ConnectionParams, DataDir, Done};
pub use ctrlr::{discover, mdts_limit_bytes, Controller, ControllerOptions, NamespaceInfo};
pub use quire_wire::nvme::identify::{ControllerIdentity, NamespaceIdentity};
pub use quire_wire::nvme::log::DiscoveryEntry;
pub use slot::SlotState;

use quire_wire::nvme::Status;

/// Everything that can go wrong talking to an NVMe/TCP target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A socket error on an established connection.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The target closed the connection.
    #[error("the target closed the connection")]
    Closed,
    /// The target broke the NVMe/TCP protocol.
    #[error("protocol error from the target: {0}")]
    Protocol(String),
    /// The target sent a C2HTermReq.
    #[error("the target terminated the connection (FES {fes:#x}, FEI {fei})")]
    Terminated {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// A data digest did not match.
    #[error("data digest mismatch on command {cid}")]
    DataDigest {
        /// Command identifier.
        cid: u16,
    },
    /// An admin or Fabrics command completed with an error status.
    #[error("{what} failed: NVMe status {status} ({})", status_name(*status))]
    Status {
        /// Which command.
        what: &'static str,
        /// The status.
        status: Status,
        /// Completion dword 0 (Connect puts the offending parameter here).
        dw0: u32,
    },
    /// Fabrics Connect was refused.
    #[error("Connect rejected: NVMe status {status} ({}){detail}", status_name(*status))]
    ConnectRejected {
        /// The status.
        status: Status,
        /// Which parameter, when the target says.
        detail: String,
    },
    /// Nothing came back before the deadline.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Every command slot is busy: poll, then try again.
    #[error("queue full")]
    QueueFull,
    /// The request cannot be carried out (size, direction).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// Discovery found no NVM subsystem.
    #[error("the discovery log lists no NVMe subsystem")]
    NoSubsystem,
    /// The controller reported a fatal status or did not become ready.
    #[error("controller failed: {0}")]
    Controller(String),
}

/// Result type of the initiator.
pub type Result<T> = std::result::Result<T, Error>;

/// A short English name for the status codes a host is likely to see.
pub fn status_name(s: Status) -> &'static str {
    let table: [(Status, &'static str); 20] = [
        (Status::SUCCESS, "Success"),
        (Status::INVALID_OPCODE, "Invalid Command Opcode"),
        (Status::INVALID_FIELD, "Invalid Field in Command"),
        (Status::CID_CONFLICT, "Command ID Conflict"),
        (Status::DATA_TRANSFER_ERROR, "Data Transfer Error"),
        (Status::INTERNAL_ERROR, "Internal Error"),
        (Status::ABORTED_SQ_DELETION, "Aborted: SQ Deletion"),
        (Status::INVALID_NAMESPACE, "Invalid Namespace or Format"),
        (Status::COMMAND_SEQUENCE_ERROR, "Command Sequence Error"),
        (Status::KEEP_ALIVE_EXPIRED, "Keep Alive Timer Expired"),
        (Status::LBA_OUT_OF_RANGE, "LBA Out of Range"),
        (Status::NAMESPACE_NOT_READY, "Namespace Not Ready"),
        (Status::CONNECT_INCOMPATIBLE_FORMAT, "Connect: Incompatible Format"),
        (Status::CONNECT_CONTROLLER_BUSY, "Connect: Controller Busy"),
        (Status::CONNECT_INVALID_PARAMETERS, "Connect: Invalid Parameters"),
        (Status::CONNECT_RESTART_DISCOVERY, "Connect: Restart Discovery"),
        (Status::CONNECT_INVALID_HOST, "Connect: Invalid Host"),
        (Status::UNRECOVERED_READ_ERROR, "Unrecovered Read Error"),
        (Status::ANA_INACCESSIBLE, "ANA Inaccessible"),
        (Status::ANA_TRANSITION, "ANA Transition"),
    ];
    let key = Status { dnr: false, more: false, ..s };
    table.iter().find(|(t, _)| *t == key).map_or("unknown status", |(_, n)| n)
}
