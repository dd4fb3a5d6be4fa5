//! Counters a reactor keeps and management reads.
//!
//! Each counter has exactly one writer (its reactor), which adds with relaxed atomics;
//! readers (management, SMART log) sum across reactors. No counter is shared between
//! writers, so there is no cache-line ping-pong on the data path.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::nvmf::tcp::req::REQ_STATES;

/// Per-reactor counters.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Request state transitions, `from * REQ_STATES + to` (added at every tick and
    /// when a connection closes).
    pub transitions: Transitions,
    /// Poll-loop iterations.
    pub polls: AtomicU64,
    /// Iterations that did work.
    pub busy_polls: AtomicU64,
    /// Times the reactor went to sleep (hybrid mode).
    pub sleeps: AtomicU64,
    /// Time spent asleep in hybrid mode (waiting for a socket, the device or a
    /// message), ns; the rest of the reactor's life it polled.
    pub sleep_ns: AtomicU64,
    /// Connections currently served.
    pub connections: AtomicU64,
    /// Host commands completed.
    pub commands: AtomicU64,
    /// Bytes received from sockets.
    pub rx_bytes: AtomicU64,
    /// Bytes sent to sockets.
    pub tx_bytes: AtomicU64,
    /// Payload bytes copied in userspace on receive: H2CData payload that arrived in the
    /// receive chunk together with its header, and in-capsule data the device could not
    /// take where it landed (memory alignment). See `nvmf/tcp/rx.rs`.
    pub rx_copied_bytes: AtomicU64,
    /// Payload bytes copied in userspace on send. No send path copies payload today
    /// (C2H data goes out from the requests' own pool buffers with vectored writes,
    /// `tx.rs`), so nothing adds to it and it reads 0; it is reported beside
    /// `rx_copied_bytes` so that a send path that ever copies has a place to say so.
    pub tx_copied_bytes: AtomicU64,
    /// Pool buffers free (set at every tick).
    pub buffers_free: AtomicU64,
    /// Pool buffers this reactor owns.
    pub buffers_total: AtomicU64,
    /// Requests of this reactor's connections not free (set at every tick).
    pub requests_active: AtomicU64,
    /// Connections closing: terminating or draining their requests (set at every tick).
    pub connections_closing: AtomicU64,
    /// Pool buffers given up for good because the kernel never reported a zero-copy
    /// send from them complete (they are never reused).
    pub retired_buffers: AtomicU64,
    /// Payload bytes the target filled with zeroes itself (reads of unwritten pages).
    pub zero_filled_bytes: AtomicU64,
    /// Device requests submitted.
    pub device_requests: AtomicU64,
    /// Sends made with MSG_ZEROCOPY.
    pub zero_copy_sends: AtomicU64,
    /// Allocations and frees that waited in the reactor for a credit (all of its
    /// credits were out at the control thread).
    pub credit_waits: AtomicU64,
    /// Forwarded parts waiting for their answer (set at every tick).
    pub forwards_outstanding: AtomicU64,
    /// Parts of host commands forwarded to the peers that own their pages.
    pub forwarded_parts: AtomicU64,
    /// Read and write data bytes of those parts (sent or received on peer links, never
    /// copied in userspace).
    pub forwarded_bytes: AtomicU64,
    /// Parts of host commands (received on this peer's host connections) that ended
    /// with a retryable path error: their owner could not be reached within the hold
    /// time, or no leader took their page in time.
    pub path_errors: AtomicU64,
    /// Host writes this peer was replicating as their page's leader when a move cut
    /// over, sent to the new leader instead (the host saw no error).
    pub releads: AtomicU64,
    /// Replica writes this peer sent as the leader of their pages' sets (a part per
    /// member).
    pub replica_parts: AtomicU64,
    /// Data bytes of those (sent from the host request's buffers, never copied).
    pub replica_bytes: AtomicU64,
    /// Writes to replicated pages that waited for pieces another write or copy held,
    /// or for the right to order them (`WaitingOrder`).
    pub order_waits: AtomicU64,
    /// Commands refused with a path error because this peer's lease might have
    /// expired (fenced).
    pub fenced: AtomicU64,
    /// Replica writes completed without a member that was evicted meanwhile (their
    /// pieces were marked as missed by it).
    pub replica_skipped: AtomicU64,
    /// Data bytes a rebuild copied from this peer's copies to members (the copier).
    pub rebuild_bytes: AtomicU64,
    /// Units a scrub found different on a member (and repaired from this peer's copy).
    pub scrub_mismatches: AtomicU64,
    /// Requests of other peers served (inbound peer links).
    pub link_served: AtomicU64,
    /// Of those, answered with an error status.
    pub link_errors: AtomicU64,
    /// Times an inbound peer link stopped reading for want of buffers (TCP pushes
    /// back on the sender until requests complete and give theirs back).
    pub link_stalls: AtomicU64,
    /// Inbound peer links refused at the handshake (wrong secret, other group, ...).
    pub link_refusals: AtomicU64,
    /// Bytes received on inbound peer links.
    pub link_rx_bytes: AtomicU64,
    /// Bytes sent on inbound peer links.
    pub link_tx_bytes: AtomicU64,
    /// Its outbound link to each peer, by routing id.
    pub links: Links,
}

/// [`LinkCounters`] for each peer routing id below [`LINK_PEERS_MAX`].
#[derive(Debug)]
pub struct Links(pub [LinkCounters; LINK_PEERS_MAX]);

impl Default for Links {
    fn default() -> Self {
        Links(std::array::from_fn(|_| LinkCounters::default()))
    }
}

/// Peers (by routing id) whose links get counters of their own in [`ReactorStats::links`];
/// links to peers above it are counted in the reactor's totals only.
pub const LINK_PEERS_MAX: usize = 64;

/// One reactor's outbound link to one peer (written at every tick).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// 1 while the link is up.
    pub up: AtomicU64,
    /// Forwards answered over it.
    pub forwarded: AtomicU64,
    /// Forwards waiting or in flight on it.
    pub outstanding: AtomicU64,
    /// Forwards it answered with a path error (owner unreachable past the hold time).
    pub held_out: AtomicU64,
    /// Connections it made.
    pub connects: AtomicU64,
    /// Bytes it sent.
    pub tx_bytes: AtomicU64,
    /// Bytes it received.
    pub rx_bytes: AtomicU64,
}

/// A counter per request state transition.
#[derive(Debug)]
pub struct Transitions(pub [AtomicU64; REQ_STATES * REQ_STATES]);

impl Default for Transitions {
    fn default() -> Self {
        Transitions(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Transitions {
    /// Adds what a request table counted.
    pub fn add(&self, t: &[[u32; REQ_STATES]; REQ_STATES]) {
        for (from, row) in t.iter().enumerate() {
            for (to, &n) in row.iter().enumerate() {
                if n > 0 {
                    add(&self.0[from * REQ_STATES + to], u64::from(n));
                }
            }
        }
    }
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
    /// Read command latency, capsule received to response queued.
    pub read_latency: LatencyHistogram,
    /// Write command latency, capsule received to response queued.
    pub write_latency: LatencyHistogram,
}

/// Buckets of a [`LatencyHistogram`]: upper bounds of 1 µs · 2^k for k = 0..=20
/// (1 µs to about 1 s), then one for everything slower.
pub const LATENCY_BUCKETS: usize = 22;

/// The upper bound of latency bucket `k` in µs (`None`: +Inf).
pub fn latency_bound_us(k: usize) -> Option<u64> {
    (k + 1 < LATENCY_BUCKETS).then(|| 1u64 << k)
}

/// A latency histogram with single-writer counters (its reactor records, anyone
/// reads): a count per bucket (not cumulative) and the sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Commands per bucket.
    pub buckets: [AtomicU64; LATENCY_BUCKETS],
    /// Sum of the latencies, ns.
    pub sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// The bucket of a latency of `ns`.
    pub fn bucket_of(ns: u64) -> usize {
        let us = ns.div_ceil(1000);
        if us <= 1 {
            return 0;
        }
        // ceil(log2(us)): the smallest k with us <= 2^k.
        let k = u64::BITS - (us - 1).leading_zeros();
        usize::try_from(k).expect("< 64").min(LATENCY_BUCKETS - 1)
    }

    /// Records one latency.
    #[inline]
    pub fn record(&self, ns: u64) {
        add(&self.buckets[Self::bucket_of(ns)], 1);
        add(&self.sum_ns, ns);
    }
}

/// Adds `n` to a single-writer counter: a plain load and store, not a locked
/// read-modify-write (readers on other threads see some recent value; nobody else
/// writes it, so no addition is lost).
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Reads a counter.
#[inline]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_bucket_of_their_upper_bound() {
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(1000), 0);
        assert_eq!(LatencyHistogram::bucket_of(1001), 1);
        assert_eq!(LatencyHistogram::bucket_of(2000), 1);
        assert_eq!(LatencyHistogram::bucket_of(2001), 2);
        assert_eq!(LatencyHistogram::bucket_of(1_048_576_000), 20);
        assert_eq!(LatencyHistogram::bucket_of(1_048_576_001), 21);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), 21);
        assert_eq!((latency_bound_us(0), latency_bound_us(20), latency_bound_us(21)), (Some(1), Some(1 << 20), None));
        let h = LatencyHistogram::default();
        h.record(1500);
        h.record(3000);
        assert_eq!((get(&h.buckets[1]), get(&h.buckets[2]), get(&h.sum_ns)), (1, 1, 4500));
    }
}
