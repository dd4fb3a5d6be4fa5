//! A controller: one host association with one subsystem.
//!
//! Created by Connect on an admin queue, found by I/O-queue Connects through its
//! controller ID, and torn down when the admin queue goes away, the host disconnects,
//! or its keep-alive timer expires (a host that falls silent loses its controller and
//! every queue of it). The I/O path reads only the atomics (`is_enabled`, `is_dead`);
//! everything else lives behind a mutex used by admin commands and management.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quire_wire::nvme::fabrics::{CC_EN, CC_SHN_SHIFT, CSTS_CFS, CSTS_RDY, CSTS_SHST_COMPLETE};
use quire_wire::nvme::Status;

use crate::reactor::stats::add;
use crate::volume::VolumeId;

/// Most Asynchronous Event Requests a host may keep outstanding (AERL + 1).
pub const AER_MAX: usize = 4;
/// Error log entries kept.
pub const ERROR_LOG_MAX: usize = 64;
/// Events kept for delivery when no AER is outstanding.
pub const EVENTS_MAX: usize = 16;

/// Async event: notice, namespace attribute changed, log page 04h.
pub const AEN_NS_CHANGED: u32 = 0x02 | (0x04 << 16);
/// Async event: notice, discovery log page change, log page 70h.
pub const AEN_DISCOVERY_CHANGED: u32 = 0x02 | (0xf0 << 8) | (0x70 << 16);
/// Async event: notice, ANA change, log page 0Ch.
pub const AEN_ANA_CHANGED: u32 = 0x02 | (0x03 << 8) | (0x0c << 16);

/// The Asynchronous Event Configuration bit that enables event `dw0`.
fn aec_bit(dw0: u32) -> u32 {
    match dw0 {
        AEN_NS_CHANGED => quire_wire::nvme::features::AEC_NS_ATTR,
        AEN_ANA_CHANGED => quire_wire::nvme::features::AEC_ANA_CHANGE,
        AEN_DISCOVERY_CHANGED => quire_wire::nvme::features::AEC_DISCOVERY_CHANGE,
        _ => u32::MAX,
    }
}

/// One entry of the Error Information log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Error count (unique, increasing).
    pub count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status.
    pub status: Status,
    /// Namespace, if any.
    pub nsid: u32,
    /// LBA, if any.
    pub lba: u64,
}

/// Mutable controller state used by admin commands.
#[derive(Debug)]
pub struct CtrlrState {
    /// Controller Configuration property.
    pub cc: u32,
    /// Controller Status property.
    pub csts: u32,
    /// I/O queues granted by Set Features (Number of Queues); 1-based.
    pub io_queues_granted: u16,
    /// I/O queue IDs connected.
    pub connected_qids: BTreeSet<u16>,
    /// Raw values of features without special handling, by feature ID.
    pub features: BTreeMap<u8, u32>,
    /// Async Event Configuration (feature 0Bh).
    pub async_event_config: u32,
    /// Events waiting for an AER.
    pub events: VecDeque<u32>,
    /// Namespaces changed since the host last read log 04h.
    pub changed_ns: BTreeSet<u32>,
    /// Error log, newest last.
    pub errors: VecDeque<ErrorEntry>,
    /// Errors ever logged.
    pub error_count: u64,
}

/// The reads and writes one I/O queue of a controller completed (`quire stats
/// hosts`): its reactor is the only writer, so each count is a plain load and store.
#[derive(Debug, Default)]
pub struct HostIo {
    /// Reads and writes completed.
    pub ops: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Their latencies summed (from the command's capsule to its completion), ns.
    pub latency_ns: AtomicU64,
    /// Commands of the queue under way, as of its last tick (`reactor::TICK`): a
    /// leaving peer waits for none to be left.
    pub active: std::sync::atomic::AtomicU32,
}

impl HostIo {
    /// A read or write of `bytes` completed after `ns`.
    #[inline]
    pub fn record(&self, bytes: u64, ns: u64) {
        // Single-writer counters: the queue's reactor.
        add(&self.ops, 1);
        add(&self.bytes, bytes);
        add(&self.latency_ns, ns);
    }
}

/// One controller.
#[derive(Debug)]
pub struct NvmfController {
    /// Controller ID.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// The volume (namespace 1), for an NVM subsystem.
    pub volume: Option<VolumeId>,
    /// True for a discovery controller.
    pub discovery: bool,
    /// Reactor of the admin queue.
    pub admin_reactor: usize,
    created: Instant,
    enabled: AtomicBool,
    dead: AtomicBool,
    events_pending: AtomicBool,
    /// Its ANA group is inaccessible (the peer is leaving): I/O commands get the
    /// ANA-inaccessible status. Read by every command, hence an atomic.
    inaccessible: AtomicBool,
    /// Volatile write cache enabled (feature 06h); read by every write on every
    /// reactor, hence an atomic rather than part of the locked admin state.
    write_cache: AtomicBool,
    kato_ms: AtomicU32,
    last_keepalive_ms: AtomicU64,
    state: Mutex<CtrlrState>,
    /// Each I/O queue's counts, as its queue connected.
    io: Mutex<Vec<Arc<HostIo>>>,
}

impl NvmfController {
    /// A new, disabled controller.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subnqn: String,
        hostnqn: String,
        hostid: [u8; 16],
        volume: Option<VolumeId>,
        discovery: bool,
        kato_ms: u32,
        max_io_queues: u16,
        admin_reactor: usize,
    ) -> NvmfController {
        NvmfController {
            cntlid,
            subnqn,
            hostnqn,
            hostid,
            volume,
            discovery,
            admin_reactor,
            created: Instant::now(),
            enabled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            events_pending: AtomicBool::new(false),
            inaccessible: AtomicBool::new(false),
            write_cache: AtomicBool::new(true),
            kato_ms: AtomicU32::new(kato_ms),
            last_keepalive_ms: AtomicU64::new(0),
            state: Mutex::new(CtrlrState {
                cc: 0,
                csts: 0,
                io_queues_granted: max_io_queues,
                connected_qids: BTreeSet::new(),
                features: BTreeMap::new(),
                async_event_config: 0,
                events: VecDeque::with_capacity(EVENTS_MAX),
                changed_ns: BTreeSet::new(),
                errors: VecDeque::with_capacity(ERROR_LOG_MAX),
                error_count: 0,
            }),
            io: Mutex::new(Vec::new()),
        }
    }

    /// The counts of an I/O queue that connects.
    pub fn queue_io(&self) -> Arc<HostIo> {
        let io = Arc::new(HostIo::default());
        self.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(io.clone());
        io
    }

    /// Commands of its I/O queues under way (as of their last ticks).
    pub fn io_active(&self) -> u64 {
        let io = self.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        io.iter().map(|q| u64::from(q.active.load(Ordering::Relaxed))).sum()
    }

    /// Reads and writes completed on every I/O queue, their bytes and latencies (ns).
    pub fn io_totals(&self) -> (u64, u64, u64) {
        let io = self.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        io.iter().fold((0, 0, 0), |(o, b, l), q| {
            (
                o + q.ops.load(Ordering::Relaxed),
                b + q.bytes.load(Ordering::Relaxed),
                l + q.latency_ns.load(Ordering::Relaxed),
            )
        })
    }

    /// Locks the admin state.
    pub fn state(&self) -> MutexGuard<'_, CtrlrState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when CC.EN = 1 and CSTS.RDY = 1: I/O commands may run.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// True while its ANA group is inaccessible (the peer is leaving).
    #[inline]
    pub fn is_inaccessible(&self) -> bool {
        self.inaccessible.load(Ordering::Relaxed)
    }

    /// Sets whether its ANA group is inaccessible.
    pub fn set_inaccessible(&self, v: bool) {
        self.inaccessible.store(v, Ordering::Relaxed);
    }

    /// True once the controller is torn down; its queues must close.
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// True while the host leaves the volatile write cache on (the default). Off, every
    /// write is forced to stable media before it completes.
    #[inline]
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Acquire)
    }

    /// Turns the volatile write cache on or off (Set Features 06h).
    pub fn set_write_cache(&self, on: bool) {
        self.write_cache.store(on, Ordering::Release);
    }

    /// Tears the controller down (keep-alive expiry, admin queue gone, subsystem gone).
    pub fn kill(&self) {
        self.enabled.store(false, Ordering::Release);
        self.dead.store(true, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Restarts the keep-alive timer.
    pub fn touch_keepalive(&self) {
        self.last_keepalive_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Keep-alive timeout in milliseconds (0 = disabled).
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    /// Sets the keep-alive timeout.
    pub fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Relaxed);
        self.touch_keepalive();
    }

    /// True when the keep-alive timer has run out. As Linux nvmet does, the check allows
    /// the host the full timeout plus a grace of half of it for transit and scheduling.
    pub fn keepalive_expired(&self) -> bool {
        let kato = u64::from(self.kato_ms());
        kato != 0 && self.now_ms() > self.last_keepalive_ms.load(Ordering::Relaxed) + kato + kato / 2
    }

    /// Property Set of CC: enable, disable (reset) and shutdown.
    pub fn set_cc(&self, value: u32) {
        let mut st = self.state();
        let old = st.cc;
        st.cc = value;
        let shn = (value >> CC_SHN_SHIFT) & 0x3;
        if shn != 0 {
            st.csts |= CSTS_SHST_COMPLETE;
            st.csts &= !CSTS_RDY;
            self.enabled.store(false, Ordering::Release);
            return;
        }
        if value & CC_EN != 0 && old & CC_EN == 0 {
            // An I/O controller needs 64-byte SQEs and 16-byte CQEs; a discovery
            // controller ignores the queue entry sizes (it has no I/O queues).
            let iosqes = (value >> 16) & 0xf;
            let iocqes = (value >> 20) & 0xf;
            if !self.discovery && (iosqes != 6 || iocqes != 4) {
                st.csts |= CSTS_CFS;
                return;
            }
            st.csts = CSTS_RDY;
            self.enabled.store(!self.discovery, Ordering::Release);
        } else if value & CC_EN == 0 && old & CC_EN != 0 {
            st.csts &= !(CSTS_RDY | CSTS_SHST_COMPLETE);
            self.enabled.store(false, Ordering::Release);
        }
    }

    /// True when the host enabled the controller (also for discovery controllers).
    pub fn is_ready(&self) -> bool {
        self.state().csts & CSTS_RDY != 0
    }

    /// Queues an async event for the host (if its class is enabled).
    pub fn post_event(&self, dw0: u32) {
        let mut st = self.state();
        // Notices are sent only for the classes the host enabled with Set Features
        // (Asynchronous Event Configuration); the log pages still record the change.
        if st.async_event_config & aec_bit(dw0) == 0 {
            return;
        }
        if st.events.len() < EVENTS_MAX && !st.events.contains(&dw0) {
            st.events.push_back(dw0);
        }
        self.events_pending.store(true, Ordering::Release);
    }

    /// Records that namespace `nsid` changed and raises the event.
    pub fn namespace_changed(&self, nsid: u32) {
        self.state().changed_ns.insert(nsid);
        self.post_event(AEN_NS_CHANGED);
    }

    /// Takes the next pending event, if any.
    pub fn take_event(&self) -> Option<u32> {
        if !self.events_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.state();
        let e = st.events.pop_front();
        if st.events.is_empty() {
            self.events_pending.store(false, Ordering::Release);
        }
        e
    }

    /// Adds an entry to the error log.
    pub fn log_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let mut st = self.state();
        st.error_count += 1;
        let count = st.error_count;
        if st.errors.len() == ERROR_LOG_MAX {
            st.errors.pop_front();
        }
        st.errors.push_back(ErrorEntry { count, sqid, cid, status, nsid, lba });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrlr() -> NvmfController {
        NvmfController::new(1, "s".into(), "h".into(), [0; 16], Some(VolumeId(1)), false, 0, 4, 0)
    }

    #[test]
    fn enable_needs_right_queue_entry_sizes() {
        let c = ctrlr();
        c.set_cc(CC_EN | (6 << 16) | (3 << 20));
        assert!(!c.is_enabled());
        assert_ne!(c.state().csts & CSTS_CFS, 0);
        let c = ctrlr();
        c.set_cc(CC_EN | (6 << 16) | (4 << 20));
        assert!(c.is_enabled());
        assert!(c.is_ready());
        c.set_cc(0);
        assert!(!c.is_enabled());
        c.set_cc(CC_EN | (6 << 16) | (4 << 20) | (1 << CC_SHN_SHIFT));
        assert_eq!(c.state().csts & CSTS_SHST_COMPLETE, CSTS_SHST_COMPLETE);
        assert!(!c.is_enabled());
    }

    #[test]
    fn events_queue_and_drain() {
        let c = ctrlr();
        assert_eq!(c.take_event(), None);
        // Not enabled by the host: recorded in the log, not sent.
        c.namespace_changed(1);
        assert_eq!(c.take_event(), None);
        assert!(c.state().changed_ns.contains(&1));
        c.state().async_event_config = quire_wire::nvme::features::AEC_NS_ATTR;
        c.namespace_changed(1);
        c.namespace_changed(1);
        assert_eq!(c.take_event(), Some(AEN_NS_CHANGED));
        assert_eq!(c.take_event(), None);
        assert!(c.state().changed_ns.contains(&1));
    }

    #[test]
    fn keepalive_disabled_never_expires() {
        let c = ctrlr();
        assert!(!c.keepalive_expired());
        c.kill();
        assert!(c.is_dead());
    }
}
