//! Messages between reactors and the control thread.
//!
//! Control → reactor messages travel on a bounded lock-free ring per reactor
//! ([`crossbeam_queue::ArrayQueue`]) followed by a wake-up of the reactor's poller;
//! reactor → control messages travel on one bounded channel. A full ring is
//! back-pressure: the sender keeps the message and retries, it never grows the ring.

use std::sync::Arc;

use crate::reactor::stats::VolumeCounters;
use crate::volume::routing::RoutingTable;
use crate::volume::{VolumeId, VolumeView};

/// Capacity of each reactor's inbound ring.
pub const INBOX_MAX: usize = 4096;
/// Capacity of the reactors → control channel.
pub const CONTROL_INBOX_MAX: usize = 16384;

/// What a reactor is told.
pub enum ReactorMsg {
    /// A new connection to serve (accepted by the listening reactor).
    NewConnection(std::net::TcpStream, bool),
    /// A volume appeared or changed (grown): its view, routing table and counters.
    VolumeUpdated {
        /// The new view (replaces the old one, whose memory goes when unused).
        view: Arc<VolumeView>,
        /// The routing table version.
        routing: Arc<RoutingTable>,
        /// This reactor's counters for the volume.
        counters: Arc<VolumeCounters>,
        /// Every reactor's counters for the volume.
        all_counters: Arc<[Arc<VolumeCounters>]>,
    },
    /// A volume is gone; I/O to it fails from now on.
    VolumeRemoved(VolumeId),
    /// Pages were allocated (or allocation failed).
    AllocDone {
        /// Volume.
        volume: VolumeId,
        /// Page.
        page: u64,
        /// Slot byte offset, or the NVMe status to fail waiting writes with.
        result: Result<u64, quire_wire::nvme::Status>,
    },
    /// A whole-page free the reactor asked for is durable.
    FreeDone {
        /// The cookie the reactor gave.
        cookie: u64,
        /// Success, or the status to complete with.
        result: Result<(), quire_wire::nvme::Status>,
    },
    /// Answer `BarrierDone(generation)` once every device I/O this reactor had
    /// submitted before receiving this message has completed.
    Barrier(u64),
    /// Stop the reactor.
    Shutdown,
}

/// What the control thread is told.
pub enum ControlMsg {
    /// Allocate `page` of `volume` (first write). Idempotent.
    Alloc {
        /// Asking reactor.
        reactor: usize,
        /// Volume.
        volume: VolumeId,
        /// Page.
        page: u64,
    },
    /// Free whole `page` of `volume` (Deallocate / Write Zeroes covering it).
    Free {
        /// Asking reactor.
        reactor: usize,
        /// Volume.
        volume: VolumeId,
        /// Page.
        page: u64,
        /// Returned in FreeDone.
        cookie: u64,
    },
    /// A reactor finished a barrier.
    BarrierDone {
        /// Reactor.
        reactor: usize,
        /// Generation.
        generation: u64,
    },
    /// A management call.
    Rpc(crate::rpc::RpcCall),
    /// Stop everything.
    Shutdown,
}
