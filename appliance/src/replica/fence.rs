//! Fencing by lease: this peer serves replicated pages only while its etcd lease is
//! certainly alive.
//!
//! etcd expires a lease `ttl` after the last keep-alive it received. The group agent
//! records, for each keep-alive that etcd answered, the instant it *sent* it: etcd got
//! it later, so the lease lives at least until `sent + ttl`. This peer stops serving
//! replicated pages (reads, and the writes it orders) at `sent + ttl × 9/10`: before
//! its lease can have expired anywhere else, whatever the delays, with a tenth of the
//! TTL to spare for clocks that run at slightly different rates.
//!
//! The coordinator evicts a member only once its peer's lease is gone from etcd
//! (expired: the peer stopped serving at least a tenth of a TTL before; revoked by a
//! restart of the same peer: the coordinator waits a further TTL, see `plan`). So at
//! no instant do two peers both acknowledge writes to one page, or serve a read the
//! other has already overwritten: no split brain.
//!
//! The fence also carries the lease it holds for: a set lists each member with the
//! incarnation (lease) it was admitted with, and a peer that registered again under a
//! new lease is not that member any more (it may have lost writes while away).
//! Reactors read two atomics per replicated I/O; the agent writes them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The share of the lease TTL this peer serves for after a keep-alive was sent, in
/// tenths.
pub const SERVE_TENTHS: u32 = 9;

/// This peer's right to serve replicated pages.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Nanoseconds after `base` until which the right holds (0: it does not).
    until_ns: AtomicU64,
    /// The lease it holds for.
    lease: AtomicI64,
}

impl Default for Fence {
    fn default() -> Fence {
        Fence::new()
    }
}

impl Fence {
    /// No right yet.
    pub fn new() -> Fence {
        Fence { base: Instant::now(), until_ns: AtomicU64::new(0), lease: AtomicI64::new(0) }
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// etcd answered a keep-alive (or a grant) of `lease`, with time to live `ttl`,
    /// sent at `sent`.
    pub fn renewed(&self, lease: i64, sent: Instant, ttl: Duration) {
        let until = sent + ttl * SERVE_TENTHS / 10;
        if self.lease.load(Ordering::Acquire) != lease {
            // A new lease: nothing of the old one's right carries over.
            self.until_ns.store(0, Ordering::Release);
            self.lease.store(lease, Ordering::Release);
        }
        self.until_ns.fetch_max(self.ns(until), Ordering::AcqRel);
    }

    /// The lease is gone (expired, revoked, or this peer leaves): no right from now on.
    pub fn drop_right(&self) {
        self.until_ns.store(0, Ordering::Release);
    }

    /// True when, at `now`, this peer may serve as the member admitted with
    /// incarnation `inc`.
    #[inline]
    pub fn holds(&self, now: Instant, inc: i64) -> bool {
        self.lease.load(Ordering::Acquire) == inc && self.ns(now) < self.until_ns.load(Ordering::Acquire)
    }

    /// The lease held for, and how long the right lasts from `now` (zero when it does
    /// not hold).
    pub fn state(&self, now: Instant) -> (i64, Duration) {
        let until = self.until_ns.load(Ordering::Acquire);
        (self.lease.load(Ordering::Acquire), Duration::from_nanos(until.saturating_sub(self.ns(now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_ends_before_the_lease_can_expire_and_belongs_to_one_lease() {
        let f = Fence::new();
        let t0 = Instant::now();
        assert!(!f.holds(t0, 0), "no right before a lease");
        f.renewed(7, t0, Duration::from_secs(10));
        assert!(f.holds(t0 + Duration::from_secs(8), 7));
        assert!(!f.holds(t0 + Duration::from_secs(9), 7), "nine tenths of the TTL after the keep-alive was sent");
        assert!(!f.holds(t0, 8), "another incarnation holds nothing");
        // An answer to an older keep-alive does not shorten it.
        f.renewed(7, t0 + Duration::from_secs(2), Duration::from_secs(10));
        f.renewed(7, t0 + Duration::from_secs(1), Duration::from_secs(10));
        assert!(f.holds(t0 + Duration::from_millis(10_700), 7));
        // A new lease starts from nothing.
        f.renewed(9, t0, Duration::from_secs(1));
        assert!(!f.holds(t0 + Duration::from_secs(1), 9) && !f.holds(t0, 7));
        f.drop_right();
        assert!(!f.holds(t0, 9));
        assert_eq!(f.state(t0).1, Duration::ZERO);
    }
}
