//! Messages between reactors and the control thread.
//!
//! Control → reactor messages travel on a bounded lock-free ring per reactor
//! ([`crossbeam_queue::ArrayQueue`]) followed by a wake-up of the reactor's poller;
//! reactor → control messages travel on one bounded channel. No message is ever
//! dropped, and no sender spins on a full ring:
//! - a reactor asks the control thread for at most `reactors.control_credits`
//!   ([`CONTROL_CREDITS`] by default) allocations and frees at a time; a request that needs one more waits for a credit (its message
//!   stays in the reactor, in order). Every answer returns a credit, so a reactor's
//!   ring never holds more answers than it has credits, and the rings are sized for
//!   that ([`INBOX_MAX`]);
//! - the control thread keeps what a ring cannot take right now in an outbox per
//!   reactor, in order, and moves it on at its next turn (it wakes every millisecond
//!   while an outbox is not empty);
//! - the accepting reactor keeps a new connection for another reactor whose ring is
//!   full, and hands it over at its next loop;
//! - a reactor keeps what the control channel cannot take in a backlog, bounded by its
//!   credits plus the one barrier answer and the copy reports it can owe.

use std::sync::Arc;

use crate::reactor::stats::VolumeCounters;
use crate::volume::routing::RoutingTable;
use crate::volume::{VolumeId, VolumeView};

/// Allocations and frees one reactor may have outstanding at the control thread, by
/// default (`reactors.control_credits`).
pub const CONTROL_CREDITS: u32 = 1024;
/// Room in each reactor's inbound ring beside the answers it can be owed: connections,
/// volume updates, peer directories, barriers.
pub const INBOX_ROOM: usize = 1024;

/// Capacity of a reactor's inbound ring for `credits`: every answer the reactor can be
/// owed, plus [`INBOX_ROOM`].
pub fn inbox_capacity(credits: u32) -> usize {
    credits as usize + INBOX_ROOM
}
/// Messages of the management bridge the control channel has room for beside the
/// reactors'.
const RPC_ROOM: usize = 64;

/// Capacity of the reactors → control channel for `reactors` reactors with `credits`
/// each: every credited request and barrier answer of every reactor, and the
/// management bridge's calls.
pub fn control_inbox_capacity(reactors: usize, credits: u32) -> usize {
    reactors * (credits as usize + 2 + crate::replica::copier::JOBS_MAX) + RPC_ROOM
}

/// What a reactor is told.
pub enum ReactorMsg {
    /// A new connection to serve (accepted by the listening reactor), and what its
    /// listener is for.
    NewConnection(std::net::TcpStream, super::ListenerKind),
    /// The group's peers changed (addresses, liveness): a new directory for the links.
    PeersUpdated(Arc<crate::peer::PeerDirectory>),
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
        /// This reactor's per-page load counters for the volume.
        load: Arc<crate::volume::load::PageCounters>,
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
    /// Copy pieces of a page this peer leads to a member (the rebuild driver; at most
    /// [`crate::replica::copier::JOBS_MAX`] outstanding per reactor).
    Copy(crate::replica::copier::CopyJob),
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
    /// A copy job ended.
    CopyDone(crate::replica::copier::CopyReport),
    /// The group agent has answers or a new snapshot (a hint: the control thread
    /// also looks on every turn).
    GroupWake,
    /// A management call.
    Rpc(crate::rpc::RpcCall),
    /// Stop everything.
    Shutdown,
}
