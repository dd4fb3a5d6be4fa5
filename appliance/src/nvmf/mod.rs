//! The NVMe over Fabrics target.
//!
//! - [`subsystem`]: the registry of subsystems (one per volume, plus discovery),
//!   host allow-lists, and live controllers. Used by Connect and admin commands only,
//!   never by the I/O path.
//! - [`ctrlr`]: a controller: properties (CC/CSTS), features, keep-alive, async events,
//!   error log.
//! - [`admin`]: admin and Fabrics command execution (Connect, Property Get/Set,
//!   Identify, Get Log Page, features, keep-alive, AER, abort).
//! - [`io`]: NVM command execution (Read, Write, Flush, Compare, Write Zeroes,
//!   Dataset Management, Copy) over the page-partitioned volume; [`copy`]: Copy's
//!   range list and its two phases.
//! - [`tcp`]: the NVMe/TCP transport: one [`tcp::qpair::TcpQpair`] per connection, its
//!   PDU receive and send machinery and its request state machine.

pub mod admin;
pub mod copy;
pub mod ctrlr;
pub mod io;
pub mod subsystem;
pub mod tcp;

/// Limits the target advertises and enforces; fixed at start-up.
#[derive(Clone, Debug)]
pub struct TargetParams {
    /// Largest submission queue size (entries) a host may ask for.
    pub max_queue_depth: u16,
    /// Number of I/O queues a controller may have.
    pub max_io_queues: u16,
    /// In-capsule data bytes accepted in a command capsule (IOCCSZ − 64).
    pub in_capsule_data_size: u32,
    /// Largest data transfer of one command (MDTS) in bytes.
    pub max_transfer_size: u32,
    /// Largest data in one H2CData PDU (MAXH2CDATA).
    pub max_h2c_data: u32,
    /// Name of this peer (serial numbers, logs).
    pub peer_name: String,
    /// Send payloads zero-copy (`MSG_ZEROCOPY`) where the kernel allows it.
    pub zero_copy_send: bool,
    /// `target.advertise`: the address (and, for the I/O listener, the port) the
    /// discovery log tells hosts instead of the listener's own.
    pub advertise: Option<(std::net::IpAddr, Option<u16>)>,
}

impl Default for TargetParams {
    fn default() -> TargetParams {
        TargetParams {
            max_queue_depth: 128,
            max_io_queues: 16,
            in_capsule_data_size: 8192,
            max_transfer_size: 1 << 20,
            max_h2c_data: 128 << 10,
            peer_name: "quire-0".into(),
            zero_copy_send: false,
            advertise: None,
        }
    }
}

const _: () = assert!(crate::volume::split::PARTS_MAX as u64 > (4 << 20) / crate::volume::PAGE_SIZE_MIN);
