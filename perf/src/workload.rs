//! The I/O generator and the worker loop.
//!
//! A worker is one thread pinned to one core. It owns a [`Job`] per namespace it
//! was given, and each job owns `-P` queues. The loop, as in `spdk_nvme_perf`:
//! top every job up to the queue depth (round-robin over its queues), poll every
//! queue, record each completion's latency, and repeat until the main thread says
//! stop or every job has done its `-d` I/Os. Nothing is allocated and no lock is
//! taken inside the loop; progress counters are relaxed atomics.
//!
//! Under `--verify` every write carries a pattern derived from the block's LBA and
//! the seed (the same bytes whenever that block is written), and every read checks
//! it; a prefill pass first writes the whole region once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::target::{Io, IoKind, IoQueue, QueueError};

/// Phase of the run, set by the main thread.
pub const PHASE_WARMUP: u8 = 0;
/// Phase: measuring.
pub const PHASE_MEASURE: u8 = 1;
/// Phase: stop submitting, drain, exit.
pub const PHASE_STOP: u8 = 2;
/// Mismatches kept with their LBAs (all are counted).
pub const MISMATCHES_KEPT: usize = 64;
/// How long a worker waits for outstanding I/O after stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Highest latency the histograms track: 100 s in nanoseconds.
pub const LATENCY_NS_MAX: u64 = 100_000_000_000;

/// A fresh latency histogram (nanoseconds, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static bounds are valid")
}

/// Per-worker counters the main thread reads for the progress line.
#[derive(Default)]
#[repr(align(128))]
pub struct Progress {
    /// Completed I/Os.
    pub ios: AtomicU64,
    /// Completed bytes.
    pub bytes: AtomicU64,
}

/// State shared by the main thread and the workers.
pub struct Shared {
    /// Current phase.
    pub phase: AtomicU8,
    /// A worker failed: everyone stops.
    pub failed: AtomicBool,
    /// One entry per worker.
    pub progress: Vec<Progress>,
    /// Workers that have finished.
    pub finished: AtomicU64,
}

impl Shared {
    /// Shared state for `workers` workers, starting in `phase`.
    pub fn new(workers: usize, phase: u8) -> Shared {
        Shared {
            phase: AtomicU8::new(phase),
            failed: AtomicBool::new(false),
            progress: (0..workers).map(|_| Progress::default()).collect(),
            finished: AtomicU64::new(0),
        }
    }
}

/// What every job of a run does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Outstanding I/Os per job.
    pub depth: u32,
    /// Bytes per I/O.
    pub io_size: u32,
    /// Random offsets.
    pub random: bool,
    /// Read share in percent.
    pub read_pct: u8,
    /// Write the pattern / check it.
    pub verify: bool,
    /// Seed.
    pub seed: u64,
    /// Record latencies (false for the prefill).
    pub record: bool,
}

/// A block whose data was not the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mismatch {
    /// The block.
    pub lba: u64,
    /// First differing byte in the block.
    pub offset: u32,
}

/// Figures of one job.
#[derive(Clone, Debug)]
pub struct JobStats {
    /// Completed I/Os while measuring.
    pub ios: u64,
    /// Bytes of those.
    pub bytes: u64,
    /// Their latencies in nanoseconds.
    pub hist: Histogram<u64>,
    /// I/Os that completed with an error.
    pub errors: u64,
    /// First error message.
    pub first_error: Option<String>,
    /// Blocks that failed verification.
    pub mismatch_count: u64,
    /// The first [`MISMATCHES_KEPT`] of them.
    pub mismatches: Vec<Mismatch>,
}

impl JobStats {
    fn new() -> JobStats {
        JobStats {
            ios: 0,
            bytes: 0,
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            mismatch_count: 0,
            mismatches: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
struct InFlight {
    start: Instant,
    kind: IoKind,
    lba: u64,
    bytes: u32,
}

/// One namespace's work on one worker.
pub struct Job {
    /// Index of the namespace in the run's list.
    pub ns: usize,
    block_size: u32,
    io_blocks: u32,
    /// First I/O-sized unit of this job's region, and how many units it spans.
    region_start: u64,
    region_ios: u64,
    /// Sequential: next unit, relative to `region_start`.
    seq_next: u64,
    /// Stop after this many submissions (`None` = no limit).
    limit: Option<u64>,
    submitted: u64,
    queues: Vec<Box<dyn IoQueue>>,
    next_queue: usize,
    /// Per queue: in-flight I/O by tag.
    inflight: Vec<Vec<Option<InFlight>>>,
    free_tags: Vec<Vec<u32>>,
    outstanding: u32,
    rng: u64,
    /// Figures of the current run.
    pub stats: JobStats,
}

impl Job {
    /// A job on namespace `ns` over `queues`, each with `depth` tags.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ns: usize,
        block_size: u32,
        io_size: u32,
        region_start: u64,
        region_ios: u64,
        queues: Vec<Box<dyn IoQueue>>,
        depth: u32,
        seed: u64,
    ) -> Job {
        assert!(io_size.is_multiple_of(block_size), "I/O size is a multiple of the block size");
        assert!(region_ios > 0 && !queues.is_empty());
        let nq = queues.len();
        Job {
            ns,
            block_size,
            io_blocks: io_size / block_size,
            region_start,
            region_ios,
            seq_next: 0,
            limit: None,
            submitted: 0,
            queues,
            next_queue: 0,
            inflight: vec![vec![None; depth as usize]; nq],
            free_tags: vec![(0..depth).rev().collect(); nq],
            outstanding: 0,
            rng: splitmix64(seed ^ (ns as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
            stats: JobStats::new(),
        }
    }

    /// Re-aims the job for a new run: I/O size (a multiple of the block size, at most
    /// what the queues' buffers hold), region in units of that size, start offset,
    /// submission limit. Clears the figures.
    pub fn reset(&mut self, io_size: u32, region_start: u64, region_ios: u64, seq_start: u64, limit: Option<u64>) {
        assert_eq!(self.outstanding, 0, "reset with I/O in flight");
        assert!(region_ios > 0);
        self.io_blocks = io_size / self.block_size;
        self.region_start = region_start;
        self.region_ios = region_ios;
        self.seq_next = seq_start % region_ios;
        self.limit = limit;
        self.submitted = 0;
        self.stats = JobStats::new();
    }

    fn finished(&self) -> bool {
        self.limit.is_some_and(|l| self.submitted >= l) && self.outstanding == 0
    }

    fn next_unit(&mut self, random: bool) -> u64 {
        if random {
            self.rng = xorshift(self.rng);
            self.rng % self.region_ios
        } else {
            let u = self.seq_next;
            self.seq_next = (self.seq_next + 1) % self.region_ios;
            u
        }
    }

    /// Submits until the depth is reached, the queues are full or the limit is hit.
    fn top_up(&mut self, plan: &Plan) -> Result<(), String> {
        let nq = self.queues.len();
        let mut full_queues = 0;
        while self.outstanding < plan.depth && self.limit.is_none_or(|l| self.submitted < l) {
            let q = self.next_queue;
            let Some(&tag) = self.free_tags[q].last() else {
                self.next_queue = (q + 1) % nq;
                full_queues += 1;
                if full_queues >= nq {
                    return Ok(());
                }
                continue;
            };
            let unit = self.next_unit(plan.random);
            self.rng = xorshift(self.rng);
            let kind = if (self.rng >> 33) % 100 < u64::from(plan.read_pct) { IoKind::Read } else { IoKind::Write };
            let lba = (self.region_start + unit) * u64::from(self.io_blocks);
            let bytes = self.io_blocks * self.block_size;
            let io = Io { kind, lba, nlb: self.io_blocks, bytes, tag: u64::from(tag) };
            let bs = self.block_size as usize;
            let seed = plan.seed;
            let verify = plan.verify;
            let r = self.queues[q].submit(&io, &mut |buf| {
                if verify {
                    fill_pattern(buf, lba, bs, seed);
                }
            });
            match r {
                Ok(()) => {
                    self.free_tags[q].pop();
                    self.inflight[q][tag as usize] = Some(InFlight { start: Instant::now(), kind, lba, bytes });
                    self.outstanding += 1;
                    self.submitted += 1;
                    self.next_queue = (q + 1) % nq;
                }
                Err(QueueError::Full) => {
                    self.next_queue = (q + 1) % nq;
                    full_queues += 1;
                    if full_queues >= nq {
                        return Ok(());
                    }
                }
                Err(QueueError::Fatal(m)) => return Err(m),
            }
        }
        Ok(())
    }

    /// Polls every queue once; returns completions and bytes completed.
    fn poll(&mut self, plan: &Plan, measuring: bool) -> Result<(u64, u64), String> {
        let mut n = 0u64;
        let mut bytes = 0u64;
        let bs = self.block_size as usize;
        for q in 0..self.queues.len() {
            let inflight = &mut self.inflight[q];
            let free = &mut self.free_tags[q];
            let stats = &mut self.stats;
            let outstanding = &mut self.outstanding;
            let r = self.queues[q].poll(&mut |tag, result, data| {
                let slot = u32::try_from(tag).expect("tags are u32 slots from the free list");
                let io = inflight[slot as usize].take().expect("completion for a tag in flight");
                free.push(slot);
                *outstanding -= 1;
                n += 1;
                bytes += u64::from(io.bytes);
                match result {
                    Ok(()) => {
                        if plan.verify && io.kind == IoKind::Read {
                            check_into(stats, data, io.lba, bs, plan.seed);
                        }
                        if measuring && plan.record {
                            let ns = u64::try_from(io.start.elapsed().as_nanos().clamp(1, u128::from(LATENCY_NS_MAX)))
                                .expect("clamped to LATENCY_NS_MAX, a u64");
                            stats.hist.record(ns).expect("clamped into the histogram's range");
                            stats.ios += 1;
                            stats.bytes += u64::from(io.bytes);
                        }
                    }
                    Err(m) => {
                        stats.errors += 1;
                        if stats.first_error.is_none() {
                            stats.first_error = Some(format!("{:?} at LBA {}: {m}", io.kind, io.lba));
                        }
                    }
                }
            });
            r.map_err(|e| match e {
                QueueError::Fatal(m) => m,
                QueueError::Full => "queue full on poll".to_string(),
            })?;
        }
        Ok((n, bytes))
    }

    /// Closes every queue.
    pub fn close(self) {
        for q in self.queues {
            q.close();
        }
    }
}

fn check_into(stats: &mut JobStats, data: &[u8], lba: u64, bs: usize, seed: u64) {
    for (i, block) in data.chunks(bs).enumerate() {
        if let Some(offset) = check_block(block, lba + i as u64, seed) {
            stats.mismatch_count += 1;
            if stats.mismatches.len() < MISMATCHES_KEPT {
                let offset = u32::try_from(offset).expect("an offset inside one block");
                stats.mismatches.push(Mismatch { lba: lba + i as u64, offset });
            }
        }
    }
}

/// What a worker hands back.
pub struct WorkerOutcome {
    /// The jobs, with their figures.
    pub jobs: Vec<Job>,
    /// Seconds measured.
    pub measured: Duration,
    /// The failure that stopped this worker, if one did.
    pub error: Option<String>,
}

/// Runs the worker loop over `jobs` until the phase says stop or every job is done.
pub fn run_worker(index: usize, mut jobs: Vec<Job>, plan: Plan, shared: &Shared) -> WorkerOutcome {
    let progress = &shared.progress[index];
    let mut measure_start: Option<Instant> = None;
    let mut error = None;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == PHASE_STOP || shared.failed.load(Ordering::Relaxed) {
            break;
        }
        let measuring = phase == PHASE_MEASURE;
        if measuring && measure_start.is_none() {
            measure_start = Some(Instant::now());
        }
        if let Err(m) = step(&mut jobs, &plan, measuring, progress) {
            error = Some(m);
            shared.failed.store(true, Ordering::Relaxed);
            break;
        }
        if jobs.iter().all(Job::finished) {
            break;
        }
    }
    let measured = measure_start.map(|s| s.elapsed()).unwrap_or_default();
    if error.is_none() {
        drain(&mut jobs, &plan, &mut error);
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);
    WorkerOutcome { jobs, measured, error }
}

fn step(jobs: &mut [Job], plan: &Plan, measuring: bool, progress: &Progress) -> Result<(), String> {
    for job in jobs.iter_mut() {
        job.top_up(plan)?;
    }
    for job in jobs.iter_mut() {
        let (n, bytes) = job.poll(plan, measuring)?;
        if n > 0 {
            progress.ios.fetch_add(n, Ordering::Relaxed);
            progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Waits for outstanding I/O without recording it.
fn drain(jobs: &mut [Job], plan: &Plan, error: &mut Option<String>) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while jobs.iter().any(|j| j.outstanding > 0) {
        for job in jobs.iter_mut() {
            if let Err(m) = job.poll(plan, false) {
                *error = Some(m);
                return;
            }
        }
        if Instant::now() > deadline {
            *error = Some("I/O still outstanding 5 s after the end of the run".into());
            return;
        }
    }
}

/// SplitMix64: a good 64-bit mix of a counter.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn pattern_word(lba: u64, seed: u64, i: usize) -> u64 {
    if i == 0 {
        return lba;
    }
    splitmix64(seed ^ lba.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ ((i as u64) << 40))
}

/// Fills `buf` (whole blocks of `bs` bytes starting at `lba`) with the pattern:
/// each block starts with its LBA, the rest is derived from LBA, seed and position.
pub fn fill_pattern(buf: &mut [u8], lba: u64, bs: usize, seed: u64) {
    assert!(bs >= 8 && buf.len().is_multiple_of(bs), "whole blocks of at least 8 bytes");
    for (b, block) in buf.chunks_mut(bs).enumerate() {
        for (i, w) in block.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&pattern_word(lba + b as u64, seed, i).to_le_bytes());
        }
    }
}

/// Checks one block against the pattern; the first differing byte if any.
pub fn check_block(block: &[u8], lba: u64, seed: u64) -> Option<usize> {
    for (i, w) in block.chunks_exact(8).enumerate() {
        let want = pattern_word(lba, seed, i).to_le_bytes();
        if w != want {
            let j = w.iter().zip(want.iter()).position(|(a, b)| a != b).expect("differs");
            return Some(i * 8 + j);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_names_the_bad_byte() {
        let mut b = vec![0u8; 4 * 512];
        fill_pattern(&mut b, 100, 512, 7);
        for (i, block) in b.chunks(512).enumerate() {
            assert_eq!(check_block(block, 100 + i as u64, 7), None);
        }
        assert_eq!(check_block(&b[..512], 100, 8).map(|o| o >= 8), Some(true));
        assert_eq!(check_block(&b[512..1024], 100, 7), Some(0));
        b[512 + 77] ^= 1;
        assert_eq!(check_block(&b[512..1024], 101, 7), Some(77));
        assert_eq!(check_block(&[0u8; 512], 3, 7), Some(0));
    }

    #[test]
    fn sequential_units_wrap_and_random_units_stay_in_the_region() {
        let mut j = Job::new(0, 512, 4096, 0, 3, vec![Box::new(NullQueue)], 4, 1);
        j.reset(4096, 10, 3, 2, None);
        let seq: Vec<u64> = (0..4).map(|_| j.next_unit(false)).collect();
        assert_eq!(seq, vec![2, 0, 1, 2]);
        assert!((0..1000).map(|_| j.next_unit(true)).all(|u| u < 3));
        let distinct: std::collections::HashSet<u64> = (0..100).map(|_| j.next_unit(true)).collect();
        assert_eq!(distinct.len(), 3);
    }

    struct NullQueue;
    impl IoQueue for NullQueue {
        fn submit(&mut self, _: &Io, _: &mut dyn FnMut(&mut [u8])) -> Result<(), QueueError> {
            Err(QueueError::Full)
        }
        fn poll(&mut self, _: &mut crate::target::OnDone<'_>) -> Result<usize, QueueError> {
            Ok(0)
        }
        fn close(self: Box<Self>) {}
    }
}
