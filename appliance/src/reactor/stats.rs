//! Counters a reactor keeps and management reads.
//!
//! Each counter has exactly one writer (its reactor), which adds with relaxed atomics;
//! readers (management, SMART log) sum across reactors. No counter is shared between
//! writers, so there is no cache-line ping-pong on the data path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-reactor counters.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Poll-loop iterations.
    pub polls: AtomicU64,
    /// Iterations that did work.
    pub busy_polls: AtomicU64,
    /// Times the reactor went to sleep (hybrid mode).
    pub sleeps: AtomicU64,
    /// Connections currently served.
    pub connections: AtomicU64,
    /// Host commands completed.
    pub commands: AtomicU64,
    /// Bytes received from sockets.
    pub rx_bytes: AtomicU64,
    /// Bytes sent to sockets.
    pub tx_bytes: AtomicU64,
    /// Payload bytes copied in userspace on receive (in-capsule/H2C data that arrived in
    /// the header staging buffer and had to be moved to its pool buffer).
    pub rx_copied_bytes: AtomicU64,
    /// Payload bytes copied in userspace on send (always zero: C2H data is sent from the
    /// pool buffers with vectored writes).
    pub tx_copied_bytes: AtomicU64,
    /// Payload bytes the target filled with zeroes itself (reads of unwritten pages).
    pub zero_filled_bytes: AtomicU64,
    /// Device requests submitted.
    pub device_requests: AtomicU64,
    /// Sends made with MSG_ZEROCOPY.
    pub zero_copy_sends: AtomicU64,
}

/// Per-volume counters on one reactor.
#[derive(Debug, Default)]
pub struct VolumeCounters {
    /// Read commands.
    pub read_ops: AtomicU64,
    /// Write commands.
    pub write_ops: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flush, Write Zeroes, Dataset Management.
    pub other_ops: AtomicU64,
    /// Commands that completed with an error status.
    pub errors: AtomicU64,
}

/// Adds `n` to a single-writer counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
#[inline]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
