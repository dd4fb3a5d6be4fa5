//! A fault-injecting block device, for tests of everything above the drivers.
//!
//! [`FaultDevice`] wraps another device and, driven from a seed, does what real
//! devices do to their callers at the worst moments:
//! - answers [`SubmitError::QueueFull`] when its (small, configurable) queue is full,
//!   and at random even when it is not;
//! - completes requests late (after a random number of polls, or a minimum time: a
//!   slow device) and out of order;
//! - fails requests with media errors or aborts, either without touching the medium or
//!   after carrying the request out (a write that failed may or may not have landed);
//! - on command, holds every completion until released, or refuses every submission
//!   after a budget ([`FaultControl`]), so that a test can freeze a request in the
//!   middle of its life and do something else to it (close its connection, say).
//!
//! Everything random comes from one seed, per queue pair (the seed and the queue
//! pair's number), so a failing run replays. The counters in [`FaultControl`] let a
//! test wait for a condition (requests held, submissions refused) instead of sleeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::block::{BlockDevice, Completion, DeviceInfo, IoError, IoRequest, Op, QueuePair, SubmitError};

/// What a [`FaultDevice`] does, fixed at creation (the probabilities and switches that
/// change at run time live in [`FaultControl`]).
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Seed of every random choice.
    pub seed: u64,
    /// Queue depth of each queue pair (at most what the caller asks for).
    pub depth: u32,
    /// A completion is held for this many polls at least and at most (uniform).
    pub delay_polls: (u32, u32),
    /// A completion is held at least this long (a slow device).
    pub latency: Duration,
    /// The first this many queue pairs get no refusals and no errors (only delays and
    /// reordering): a page store opens its queue pair first, and a test may want its
    /// metadata I/O spared.
    pub spared_qpairs: u64,
    /// Completions of spared queue pairs are held at least this long (a slow page
    /// store: allocations take a while).
    pub spared_latency: Duration,
    /// Report this memory alignment instead of the inner device's (the inner device
    /// takes anything the caller aligned for the stricter value).
    pub memory_align: Option<u32>,
}

impl FaultPlan {
    /// A plan that only reorders and delays completions a little.
    pub fn new(seed: u64) -> FaultPlan {
        FaultPlan {
            seed,
            depth: u32::MAX,
            delay_polls: (0, 3),
            latency: Duration::ZERO,
            spared_qpairs: 0,
            spared_latency: Duration::ZERO,
            memory_align: None,
        }
    }
}

/// Run-time switches and counters of a [`FaultDevice`], shared by its queue pairs.
#[derive(Debug, Default)]
pub struct FaultControl {
    /// Per mille of submissions answered QueueFull although there is room.
    pub queue_full_permille: AtomicU32,
    /// Per mille of requests failed with a media error.
    pub media_error_permille: AtomicU32,
    /// Per mille of requests failed as aborted.
    pub abort_permille: AtomicU32,
    /// Hold every completion until this goes false again.
    pub hold: AtomicBool,
    /// Submissions accepted before every further one is refused with QueueFull
    /// (negative: no limit).
    pub accept_budget: AtomicI64,
    /// Requests accepted.
    pub submitted: AtomicU64,
    /// Submissions refused with QueueFull (a full queue, a random refusal or the budget).
    pub refused: AtomicU64,
    /// Requests completed with an injected error.
    pub failed: AtomicU64,
    /// Completions handed back to the caller.
    pub completed: AtomicU64,
    /// Writes accepted with FUA (not counting spared queue pairs).
    pub fua_writes: AtomicU64,
    /// Flushes accepted (not counting spared queue pairs).
    pub flushes: AtomicU64,
}

impl FaultControl {
    fn new() -> FaultControl {
        let c = FaultControl::default();
        c.accept_budget.store(-1, Ordering::Relaxed);
        c
    }

    /// Requests accepted and not yet handed back.
    pub fn outstanding(&self) -> u64 {
        self.submitted.load(Ordering::Acquire).saturating_sub(self.completed.load(Ordering::Acquire))
    }

    /// Turns every injected fault off and lets everything through.
    pub fn calm(&self) {
        self.queue_full_permille.store(0, Ordering::Relaxed);
        self.media_error_permille.store(0, Ordering::Relaxed);
        self.abort_permille.store(0, Ordering::Relaxed);
        self.accept_budget.store(-1, Ordering::Relaxed);
        self.hold.store(false, Ordering::Release);
    }
}

/// A device that injects faults into another one. See the module documentation.
pub struct FaultDevice {
    inner: Arc<dyn BlockDevice>,
    info: DeviceInfo,
    plan: FaultPlan,
    ctl: Arc<FaultControl>,
    qpairs: AtomicU64,
}

impl FaultDevice {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>, plan: FaultPlan) -> FaultDevice {
        assert!(plan.depth > 0 && plan.delay_polls.0 <= plan.delay_polls.1);
        let mut info = inner.info().clone();
        if let Some(a) = plan.memory_align {
            assert!(a.is_power_of_two() && a >= info.memory_align);
            info.memory_align = a;
        }
        info.name = format!("fault({})", info.name);
        FaultDevice { inner, info, plan, ctl: Arc::new(FaultControl::new()), qpairs: AtomicU64::new(0) }
    }

    /// The switches and counters.
    pub fn control(&self) -> Arc<FaultControl> {
        self.ctl.clone()
    }
}

impl BlockDevice for FaultDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn QueuePair>> {
        let n = self.qpairs.fetch_add(1, Ordering::Relaxed);
        let depth = depth.min(self.plan.depth);
        Ok(Box::new(FaultQueuePair {
            inner: self.inner.create_qpair(depth)?,
            rng: Rng::new(self.plan.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            plan: self.plan.clone(),
            ctl: self.ctl.clone(),
            depth,
            waiting: Vec::new(),
            fail_after: HashMap::new(),
            polls: 0,
            spared: n < self.plan.spared_qpairs,
        }))
    }
}

/// A completion the device has, waiting to be handed back.
struct Waiting {
    completion: Completion,
    due_poll: u64,
    not_before: Instant,
}

struct FaultQueuePair {
    inner: Box<dyn QueuePair>,
    rng: Rng,
    plan: FaultPlan,
    ctl: Arc<FaultControl>,
    depth: u32,
    waiting: Vec<Waiting>,
    /// Requests carried out by the inner device that complete with an error anyway,
    /// by tag (several requests may share a tag).
    fail_after: HashMap<u64, Vec<IoError>>,
    polls: u64,
    /// No refusals, no errors on this queue pair.
    spared: bool,
}

impl FaultQueuePair {
    /// True with a probability of `permille` / 1000 (a switch of [`FaultControl`]).
    fn chance(&mut self, permille: fn(&FaultControl) -> &AtomicU32) -> bool {
        if self.spared {
            return false;
        }
        let p = permille(&self.ctl).load(Ordering::Relaxed);
        p > 0 && self.rng.below(1000) < u64::from(p)
    }

    fn wait(&mut self, completion: Completion) {
        let (lo, hi) = self.plan.delay_polls;
        let delay = u64::from(lo) + self.rng.below(u64::from(hi - lo) + 1);
        self.waiting.push(Waiting {
            completion,
            due_poll: self.polls + delay,
            not_before: Instant::now() + if self.spared { self.plan.spared_latency } else { self.plan.latency },
        });
    }

    fn refuse(&self) -> Result<(), SubmitError> {
        self.ctl.refused.fetch_add(1, Ordering::Relaxed);
        Err(SubmitError::QueueFull)
    }
}

impl QueuePair for FaultQueuePair {
    unsafe fn submit(&mut self, req: &IoRequest) -> Result<(), SubmitError> {
        if self.outstanding() >= self.depth {
            return self.refuse();
        }
        if self.chance(|c| &c.queue_full_permille) {
            return self.refuse();
        }
        let budget = if self.spared { -1 } else { self.ctl.accept_budget.load(Ordering::Acquire) };
        if budget == 0 {
            return self.refuse();
        }
        if budget > 0 {
            self.ctl.accept_budget.fetch_sub(1, Ordering::AcqRel);
        }
        let error = if self.chance(|c| &c.media_error_permille) {
            Some(IoError::Media(5))
        } else if self.chance(|c| &c.abort_permille) {
            Some(IoError::Aborted)
        } else {
            None
        };
        match error {
            // Half the failed requests never reach the medium, half are carried out and
            // fail anyway (what a write that "failed" leaves behind is unknown).
            Some(e) if self.rng.below(2) == 0 => {
                self.ctl.submitted.fetch_add(1, Ordering::Release);
                self.ctl.failed.fetch_add(1, Ordering::Relaxed);
                self.wait(Completion { tag: req.tag, result: Err(e) });
                Ok(())
            }
            e => {
                // SAFETY: forwarded under our caller's contract: the memory stays valid
                // until this queue pair reports the completion, which it does only after
                // the inner queue pair has reported it.
                unsafe { self.inner.submit(req) }?;
                self.ctl.submitted.fetch_add(1, Ordering::Release);
                match req.op {
                    _ if self.spared => {}
                    Op::Write { fua: true } => drop(self.ctl.fua_writes.fetch_add(1, Ordering::Relaxed)),
                    Op::Flush => drop(self.ctl.flushes.fetch_add(1, Ordering::Relaxed)),
                    _ => {}
                }
                if let Some(e) = e {
                    self.ctl.failed.fetch_add(1, Ordering::Relaxed);
                    self.fail_after.entry(req.tag).or_default().push(e);
                }
                Ok(())
            }
        }
    }

    fn kick(&mut self) {
        self.inner.kick();
    }

    fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
        self.polls += 1;
        let mut arrived = Vec::new();
        self.inner.poll(usize::MAX, &mut |c| arrived.push(c));
        for mut c in arrived {
            if let Some(errors) = self.fail_after.get_mut(&c.tag) {
                c.result = Err(errors.pop().expect("entries are never empty"));
                if errors.is_empty() {
                    self.fail_after.remove(&c.tag);
                }
            }
            self.wait(c);
        }
        if !self.spared && self.ctl.hold.load(Ordering::Acquire) {
            return 0;
        }
        let now = Instant::now();
        let mut n = 0;
        while n < max {
            let due: Vec<usize> = (0..self.waiting.len())
                .filter(|&i| self.waiting[i].due_poll <= self.polls && self.waiting[i].not_before <= now)
                .collect();
            if due.is_empty() {
                break;
            }
            // Any of the due ones, in random order: out-of-order completion.
            let pick = due[usize::try_from(self.rng.below(due.len() as u64)).expect("below due.len(), a usize")];
            let w = self.waiting.swap_remove(pick);
            self.ctl.completed.fetch_add(1, Ordering::Release);
            on_complete(w.completion);
            n += 1;
        }
        n
    }

    fn outstanding(&self) -> u32 {
        self.inner.outstanding() + u32::try_from(self.waiting.len()).expect("under the queue depth")
    }
}

/// SplitMix64: small, fast and seedable; statistical quality is more than a fault
/// schedule needs, and it keeps the drivers free of a random-number dependency.
/// Public so that a test's workload and its device's faults come from one kind of
/// seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaPool;
    use crate::ram::RamDevice;

    fn device(plan: FaultPlan) -> FaultDevice {
        FaultDevice::new(Arc::new(RamDevice::new(1 << 20, 512).unwrap()), plan)
    }

    fn drain(qp: &mut dyn QueuePair, want: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            qp.poll(usize::MAX, &mut |c| out.push(c));
            if out.len() >= want {
                break;
            }
        }
        out
    }

    #[test]
    fn completes_everything_out_of_order_within_its_depth() {
        let dev = device(FaultPlan { depth: 8, delay_polls: (0, 5), ..FaultPlan::new(7) });
        let mut qp = dev.create_qpair(64).unwrap();
        for tag in 0..8 {
            // SAFETY: no memory.
            unsafe { qp.submit(&IoRequest::no_data(Op::WriteZeroes, tag, 1, tag)) }.unwrap();
        }
        // SAFETY: no memory.
        assert_eq!(unsafe { qp.submit(&IoRequest::no_data(Op::Flush, 0, 0, 99)) }, Err(SubmitError::QueueFull));
        qp.kick();
        let done = drain(&mut *qp, 8);
        let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        assert_ne!(tags, sorted, "seed 7 reorders these eight");
        assert_eq!(qp.outstanding(), 0);
        let c = dev.control();
        assert_eq!((c.submitted.load(Ordering::Relaxed), c.refused.load(Ordering::Relaxed)), (8, 1));
    }

    #[test]
    fn hold_budget_and_errors_are_under_the_tests_control() {
        let dev = device(FaultPlan::new(3));
        let ctl = dev.control();
        let mut qp = dev.create_qpair(16).unwrap();
        let pool = DmaPool::new(4096, 1, false).unwrap();
        let mut shard = pool.shards(1).pop().unwrap();
        let buf = shard.get().unwrap();
        ctl.hold.store(true, Ordering::Release);
        ctl.accept_budget.store(1, Ordering::Release);
        let read = IoRequest::with_segs(Op::Read, 0, 8, 1, &[buf.seg(0, 4096)]);
        // SAFETY: `buf` outlives the completion polled below.
        unsafe { qp.submit(&read) }.unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { qp.submit(&read) }, Err(SubmitError::QueueFull), "budget spent");
        qp.kick();
        assert!(drain(&mut *qp, 1).is_empty(), "held");
        assert_eq!(ctl.outstanding(), 1);
        ctl.calm();
        assert_eq!(drain(&mut *qp, 1).len(), 1);
        ctl.media_error_permille.store(1000, Ordering::Relaxed);
        for tag in 0..4 {
            // SAFETY: as above.
            unsafe { qp.submit(&IoRequest::with_segs(Op::Read, 0, 8, tag, &[buf.seg(0, 4096)])) }.unwrap();
        }
        let done = drain(&mut *qp, 4);
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|c| c.result == Err(IoError::Media(5))));
        assert_eq!(ctl.failed.load(Ordering::Relaxed), 4);
        assert_eq!(ctl.outstanding(), 0);
        shard.put(buf);
    }
}
