//! One io_uring per queue pair: submit fills entries, kick enters the kernel once,
//! poll reaps completions from shared memory.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::IoUring;

use crate::block::{Completion, DeviceInfo, IoError, IoRequest, Op, QueuePair, SubmitError};

use super::slot::{Outcome, SlotTable};
use super::sys;

/// A queue pair on a [`UringDevice`](super::UringDevice).
pub struct UringQueuePair {
    ring: IoUring,
    slots: SlotTable,
    /// Signalled by the kernel when it posts completions; drained by poll.
    eventfd: OwnedFd,
    /// Keeps the device's descriptor open while the ring may use it.
    _file: Arc<OwnedFd>,
    block_size: u64,
    num_blocks: u64,
    max_transfer_bytes: u64,
    /// Segment address and length alignment that `O_DIRECT` needs (1 when buffered).
    memory_align: u64,
}

// SAFETY: the only non-Send fields are the raw iovec pointers inside the slots. They
// point at request memory that the submit contract hands to this queue pair until the
// completion is reported, and only this queue pair (owned by one thread at a time) and
// the kernel touch them.
unsafe impl Send for UringQueuePair {}

impl UringQueuePair {
    pub(super) fn new(
        file: Arc<OwnedFd>,
        info: &DeviceInfo,
        memory_align: u32,
        depth: u32,
    ) -> io::Result<UringQueuePair> {
        assert!(depth > 0 && depth <= super::DEPTH_MAX, "depth {depth}");
        assert!(memory_align.is_power_of_two(), "alignment {memory_align}");
        // One submission entry per slot at most, so the ring never fills before the slots
        // do; the completion ring is twice that, so it never overflows.
        let ring = IoUring::new(depth.next_power_of_two())?;
        assert!(ring.params().sq_entries() >= depth);
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        let eventfd = sys::eventfd_new()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(UringQueuePair {
            ring,
            slots: SlotTable::new(depth),
            eventfd,
            _file: file,
            block_size: u64::from(info.block_size),
            num_blocks: info.num_blocks,
            max_transfer_bytes: u64::from(info.max_transfer_bytes),
            memory_align: u64::from(memory_align),
        })
    }

    /// Checks what the caller got wrong (as opposed to what the device will refuse).
    fn validate(&self, req: &IoRequest) -> Result<(), SubmitError> {
        let range_bytes = u64::from(req.num_blocks) * self.block_size;
        match req.op {
            Op::Read | Op::Write { .. } => {
                if req.nsegs == 0 || req.num_blocks == 0 {
                    return Err(SubmitError::Invalid("read or write without blocks"));
                }
                if req.data_len() != range_bytes {
                    return Err(SubmitError::Invalid("segment bytes differ from the block count"));
                }
                if range_bytes > self.max_transfer_bytes {
                    return Err(SubmitError::Invalid("transfer larger than max_transfer_bytes"));
                }
                let misaligned = |s: &crate::dma::DmaSeg| {
                    (s.addr as u64 | u64::from(s.len)) & (self.memory_align - 1) != 0 || s.addr.is_null()
                };
                if req.segs().iter().any(misaligned) {
                    return Err(SubmitError::Invalid("segment not aligned for O_DIRECT"));
                }
            }
            Op::WriteZeroes | Op::Deallocate => {
                if req.nsegs != 0 || req.num_blocks == 0 {
                    return Err(SubmitError::Invalid("range operation needs blocks and no segments"));
                }
            }
            Op::Flush => {
                if req.nsegs != 0 {
                    return Err(SubmitError::Invalid("flush with segments"));
                }
            }
        }
        Ok(())
    }

    /// True when `req`'s block range lies outside the device.
    fn out_of_range(&self, req: &IoRequest) -> bool {
        match req.op {
            Op::Flush => false,
            Op::Read | Op::Write { .. } | Op::WriteZeroes | Op::Deallocate => {
                match req.lba.checked_add(u64::from(req.num_blocks)) {
                    Some(end) => end > self.num_blocks,
                    None => true,
                }
            }
        }
    }

    /// Hands queued entries to the kernel; entries it did not take stay queued.
    fn enter(&mut self) {
        match self.ring.submit() {
            Ok(n) => self.slots.mark_in_flight(n),
            Err(e) => match e.raw_os_error() {
                // Transient: the kernel is short of memory or still flushing completions.
                Some(libc::EAGAIN | libc::EBUSY | libc::EINTR) => {}
                _ => {
                    tracing::warn!(error = %e, queued = self.slots.queued(), "io_uring_enter failed")
                }
            },
        }
    }

    /// Reaps up to `max` kernel completions; resubmits the rest of short transfers.
    fn reap(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
        let (_, mut sq, mut cq) = self.ring.split();
        if cq.is_empty() {
            return 0;
        }
        // Drain the eventfd before reading the ring: a completion posted after this
        // point signals it again, so a reactor that sleeps on it never misses one.
        if let Err(e) = sys::eventfd_drain(self.eventfd.as_fd()) {
            tracing::warn!(error = %e, "draining the io_uring eventfd failed");
        }
        cq.sync();
        let mut reported = 0;
        let mut resubmitted = false;
        while reported < max {
            let Some(cqe) = cq.next() else { break };
            match self.slots.on_cqe(cqe.user_data(), cqe.result()) {
                (_, Outcome::Complete(c)) => {
                    on_complete(c);
                    reported += 1;
                }
                (index, Outcome::Continue) => {
                    let entry = self.slots.entry(index);
                    // SAFETY: the slot's iovecs live in the slot table (never moved or
                    // freed while the slot is in use) and point into the request's memory,
                    // which the submit contract keeps valid until we report completion.
                    unsafe { sq.push(&entry) }.expect("one entry per slot always fits");
                    self.slots.mark_queued(index);
                    resubmitted = true;
                }
            }
        }
        cq.sync();
        let left_behind = !cq.is_empty();
        drop(cq);
        sq.sync();
        drop(sq);
        if left_behind {
            // `max` stopped us early: keep the eventfd readable for what is left.
            let _ = sys::eventfd_signal(self.eventfd.as_fd());
        }
        if resubmitted {
            // Rare (short transfers): finish the request now rather than on the next kick.
            self.enter();
        }
        reported
    }
}

impl QueuePair for UringQueuePair {
    unsafe fn submit(&mut self, req: &IoRequest) -> Result<(), SubmitError> {
        self.validate(req)?;
        let range_bytes = u64::from(req.num_blocks) * self.block_size;
        let offset = req.lba.wrapping_mul(self.block_size);
        let index = self.slots.take(req, offset, range_bytes).ok_or(SubmitError::QueueFull)?;
        if self.out_of_range(req) {
            self.slots.reject(index, IoError::OutOfRange);
            return Ok(());
        }
        let entry = self.slots.entry(index);
        let mut sq = self.ring.submission();
        // SAFETY: the entry points at the slot's iovecs (stable until the slot is freed
        // at completion) and through them at the request's memory, which the caller
        // keeps valid until completion (this function's contract).
        if unsafe { sq.push(&entry) }.is_err() {
            drop(sq);
            self.slots.untake(index);
            return Err(SubmitError::QueueFull);
        }
        drop(sq);
        self.slots.mark_queued(index);
        Ok(())
    }

    fn kick(&mut self) {
        if self.slots.queued() > 0 {
            self.enter();
        }
    }

    fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
        let mut reported = 0;
        while reported < max {
            let Some(c) = self.slots.pop_rejected() else {
                break;
            };
            on_complete(c);
            reported += 1;
        }
        reported + self.reap(max - reported, on_complete)
    }

    fn outstanding(&self) -> u32 {
        self.slots.outstanding()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }
}

impl Drop for UringQueuePair {
    /// Waits for requests the kernel still owns: their memory may be freed as soon as the
    /// queue pair is gone, and the kernel must not write into it afterwards.
    fn drop(&mut self) {
        while self.slots.any_in_flight() {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(error = %e, "waiting for io_uring requests at teardown failed");
                    return;
                }
            }
            self.reap(usize::MAX, &mut |_| {});
        }
    }
}

#[cfg(test)]
// Test constants are small; a truncation would fail an assertion.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, SEGS_MAX};
    use crate::dma::{DmaBuf, DmaPool, PoolShard};
    use crate::uring::test_utils::{disk_dir, wait_for};
    use crate::uring::{DirectIo, UringDevice, UringOptions};

    fn device(dir: &tempfile::TempDir, size: u64, direct: DirectIo) -> UringDevice {
        let opts = UringOptions { direct, create_size: Some(size), block_size_hint: None };
        UringDevice::open(dir.path().join("dev"), opts).unwrap()
    }

    fn shard(chunks: usize) -> (DmaPool, PoolShard) {
        let pool = DmaPool::new(64 << 10, chunks, false).unwrap();
        let shard = pool.shards(1).pop().unwrap();
        (pool, shard)
    }

    /// Submits one request, kicks, and returns its result.
    fn run(qp: &mut dyn QueuePair, req: IoRequest) -> Result<(), IoError> {
        // SAFETY: every caller keeps the request's buffers alive across this call, and
        // the completion is reaped before it returns.
        unsafe { qp.submit(&req) }.unwrap();
        qp.kick();
        let done = wait_for(qp, 1);
        assert_eq!(done[0].tag, req.tag);
        done[0].result
    }

    fn fill(buf: &mut DmaBuf, seed: u8) {
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = seed.wrapping_add((i / 512) as u8).wrapping_mul(31);
        }
    }

    #[test]
    fn write_then_read_one_segment_direct_and_buffered() {
        for direct in [DirectIo::On, DirectIo::Off] {
            let dir = disk_dir();
            let dev = device(&dir, 16 << 20, direct);
            let mut qp = dev.create_qpair(8).unwrap();
            let (_pool, mut shard) = shard(2);
            let (mut w, r) = (shard.get().unwrap(), shard.get().unwrap());
            fill(&mut w, 3);
            let write = IoRequest::with_segs(Op::Write { fua: false }, 10, 16, 1, &[w.seg(0, 65536)]);
            assert_eq!(run(qp.as_mut(), write), Ok(()));
            let read = IoRequest::with_segs(Op::Read, 10, 16, 2, &[r.seg(0, 65536)]);
            assert_eq!(run(qp.as_mut(), read), Ok(()));
            assert_eq!(r.as_slice(), w.as_slice(), "{direct:?}");
            assert_eq!(qp.outstanding(), 0);
        }
    }

    #[test]
    fn several_segments_scatter_and_gather() {
        let dir = disk_dir();
        let dev = device(&dir, 16 << 20, DirectIo::Auto);
        let mut qp = dev.create_qpair(8).unwrap();
        let (_pool, mut shard) = shard(4);
        let mut w = shard.get().unwrap();
        let (r1, r2, r3) = (shard.get().unwrap(), shard.get().unwrap(), shard.get().unwrap());
        fill(&mut w, 9);
        // Write 3 blocks from three pieces of one buffer, out of order.
        let segs = [w.seg(8192, 4096), w.seg(0, 4096), w.seg(4096, 4096)];
        assert_eq!(run(qp.as_mut(), IoRequest::with_segs(Op::Write { fua: false }, 100, 3, 1, &segs)), Ok(()));
        // Read them back into three buffers.
        let segs = [r1.seg(0, 4096), r2.seg(4096, 4096), r3.seg(512, 4096)];
        assert_eq!(run(qp.as_mut(), IoRequest::with_segs(Op::Read, 100, 3, 2, &segs)), Ok(()));
        assert_eq!(&r1.as_slice()[..4096], &w.as_slice()[8192..12288]);
        assert_eq!(&r2.as_slice()[4096..8192], &w.as_slice()[..4096]);
        assert_eq!(&r3.as_slice()[512..4608], &w.as_slice()[4096..8192]);
    }

    #[test]
    fn most_segments_in_one_request() {
        let dir = disk_dir();
        let dev = device(&dir, 16 << 20, DirectIo::Auto);
        let mut qp = dev.create_qpair(2).unwrap();
        let (_pool, mut shard) = shard(4);
        let (mut w, r) = (shard.get().unwrap(), shard.get().unwrap());
        fill(&mut w, 1);
        let wsegs: Vec<_> = (0..SEGS_MAX).map(|i| w.seg(i * 2048, 2048)).collect();
        let rsegs: Vec<_> = (0..SEGS_MAX).rev().map(|i| r.seg(i * 2048, 2048)).collect();
        let blocks = (SEGS_MAX * 2048 / 4096) as u32;
        assert_eq!(run(qp.as_mut(), IoRequest::with_segs(Op::Write { fua: false }, 0, blocks, 1, &wsegs)), Ok(()));
        assert_eq!(run(qp.as_mut(), IoRequest::with_segs(Op::Read, 0, blocks, 2, &rsegs)), Ok(()));
        for i in 0..SEGS_MAX {
            let j = SEGS_MAX - 1 - i;
            assert_eq!(&r.as_slice()[j * 2048..][..2048], &w.as_slice()[i * 2048..][..2048], "segment {i}");
        }
    }

    #[test]
    fn fua_write_and_flush_complete_and_persist_across_reopen() {
        let dir = disk_dir();
        let (_pool, mut shard) = shard(2);
        let (mut w, r) = (shard.get().unwrap(), shard.get().unwrap());
        fill(&mut w, 77);
        {
            let dev = device(&dir, 8 << 20, DirectIo::Auto);
            let mut qp = dev.create_qpair(4).unwrap();
            let fua = IoRequest::with_segs(Op::Write { fua: true }, 7, 8, 1, &[w.seg(0, 32768)]);
            assert_eq!(run(qp.as_mut(), fua), Ok(()));
            let plain = IoRequest::with_segs(Op::Write { fua: false }, 20, 8, 2, &[w.seg(32768, 32768)]);
            assert_eq!(run(qp.as_mut(), plain), Ok(()));
            assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::Flush, 0, 0, 3)), Ok(()));
        }
        let dev = device(&dir, 1 << 20, DirectIo::Off);
        assert_eq!(dev.info().size_bytes(), 8 << 20, "reopen keeps the size");
        let mut qp = dev.create_qpair(4).unwrap();
        let read = IoRequest::with_segs(Op::Read, 7, 8, 4, &[r.seg(0, 32768)]);
        assert_eq!(run(qp.as_mut(), read), Ok(()));
        let read = IoRequest::with_segs(Op::Read, 20, 8, 5, &[r.seg(32768, 32768)]);
        assert_eq!(run(qp.as_mut(), read), Ok(()));
        assert_eq!(r.as_slice(), w.as_slice());
    }

    #[test]
    fn write_zeroes_and_deallocate_read_back_zeroes() {
        let dir = disk_dir();
        let dev = device(&dir, 8 << 20, DirectIo::Auto);
        let mut qp = dev.create_qpair(4).unwrap();
        let (_pool, mut shard) = shard(2);
        let (mut w, mut r) = (shard.get().unwrap(), shard.get().unwrap());
        w.as_mut_slice().fill(0xee);
        let write = IoRequest::with_segs(Op::Write { fua: false }, 0, 16, 1, &[w.seg(0, 65536)]);
        assert_eq!(run(qp.as_mut(), write), Ok(()));
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::WriteZeroes, 2, 3, 2)), Ok(()));
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::Deallocate, 9, 4, 3)), Ok(()));
        r.as_mut_slice().fill(0x11);
        let read = IoRequest::with_segs(Op::Read, 0, 16, 4, &[r.seg(0, 65536)]);
        assert_eq!(run(qp.as_mut(), read), Ok(()));
        for block in 0..16 {
            let zero = (2..5).contains(&block) || (9..13).contains(&block);
            let expect = if zero { 0 } else { 0xee };
            assert!(r.as_slice()[block * 4096..][..4096].iter().all(|&b| b == expect), "block {block}");
        }
        assert_eq!(dev.info().size_bytes(), std::fs::metadata(dir.path().join("dev")).unwrap().len());
    }

    #[test]
    fn out_of_range_completes_with_out_of_range() {
        let dir = disk_dir();
        let dev = device(&dir, 1 << 20, DirectIo::Auto);
        let mut qp = dev.create_qpair(4).unwrap();
        let (_pool, mut shard) = shard(1);
        let r = shard.get().unwrap();
        let last = dev.info().num_blocks;
        let read = IoRequest::with_segs(Op::Read, last - 1, 2, 1, &[r.seg(0, 8192)]);
        assert_eq!(run(qp.as_mut(), read), Err(IoError::OutOfRange));
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::Deallocate, u64::MAX, 1, 2)), Err(IoError::OutOfRange));
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::WriteZeroes, last, 1, 3)), Err(IoError::OutOfRange));
        let read = IoRequest::with_segs(Op::Read, last - 2, 2, 4, &[r.seg(0, 8192)]);
        assert_eq!(run(qp.as_mut(), read), Ok(()), "the last blocks are inside");
    }

    #[test]
    fn malformed_requests_are_refused_at_submit() {
        let dir = disk_dir();
        let dev = device(&dir, 4 << 20, DirectIo::On);
        let mut qp = dev.create_qpair(4).unwrap();
        let (_pool, mut shard) = shard(1);
        let b = shard.get().unwrap();
        let bad = [
            IoRequest::with_segs(Op::Read, 0, 2, 1, &[b.seg(0, 4096)]),
            IoRequest::with_segs(Op::Read, 0, 1, 1, &[b.seg(1, 4096)]),
            IoRequest::with_segs(Op::Write { fua: false }, 0, 0, 1, &[]),
            IoRequest::with_segs(Op::Flush, 0, 0, 1, &[b.seg(0, 4096)]),
            IoRequest::no_data(Op::WriteZeroes, 0, 0, 1),
        ];
        for req in bad {
            // SAFETY: refused requests never reach the kernel.
            let err = unsafe { qp.submit(&req) }.unwrap_err();
            assert!(matches!(err, SubmitError::Invalid(_)), "{req:?}");
        }
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn queue_full_at_depth_then_room_after_poll() {
        let dir = disk_dir();
        let dev = device(&dir, 4 << 20, DirectIo::Auto);
        // 5 is not a power of two: the ring is bigger than the depth, the slots are not.
        for depth in [1, 5] {
            let mut qp = dev.create_qpair(depth).unwrap();
            for tag in 0..u64::from(depth) {
                // SAFETY: no memory involved.
                unsafe { qp.submit(&IoRequest::no_data(Op::WriteZeroes, tag, 1, tag)) }.unwrap();
            }
            // SAFETY: as above; an out-of-range request needs a slot too.
            let full = unsafe { qp.submit(&IoRequest::no_data(Op::WriteZeroes, u64::MAX, 1, 99)) };
            assert_eq!(full, Err(SubmitError::QueueFull));
            assert_eq!(qp.outstanding(), depth);
            qp.kick();
            let done = wait_for(qp.as_mut(), depth as usize);
            let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..u64::from(depth)).collect::<Vec<_>>());
            assert!(done.iter().all(|c| c.result.is_ok()));
            // SAFETY: as above.
            unsafe { qp.submit(&IoRequest::no_data(Op::Flush, 0, 0, 100)) }.unwrap();
            qp.kick();
            assert_eq!(wait_for(qp.as_mut(), 1)[0].tag, 100);
        }
        assert!(dev.create_qpair(0).is_err());
        assert!(dev.create_qpair(crate::uring::DEPTH_MAX + 1).is_err());
    }

    #[test]
    fn poll_honours_max_and_the_eventfd_follows_the_ring() {
        let dir = disk_dir();
        let dev = device(&dir, 4 << 20, DirectIo::Auto);
        let mut qp = dev.create_qpair(8).unwrap();
        let fd = qp.completion_fd().unwrap();
        assert!(!crate::uring::test_utils::readable(fd, 0), "nothing happened yet");
        for tag in 0..4 {
            // SAFETY: no memory involved.
            unsafe { qp.submit(&IoRequest::no_data(Op::WriteZeroes, tag, 1, tag)) }.unwrap();
        }
        qp.kick();
        assert!(crate::uring::test_utils::readable(fd, 10_000), "completions wake the eventfd");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 4 {
            assert!(std::time::Instant::now() < deadline, "timed out");
            assert!(qp.poll(1, &mut |c| got.push(c.tag)) <= 1);
        }
        assert_eq!(qp.outstanding(), 0);
        assert!(!crate::uring::test_utils::readable(fd, 0), "poll drained the eventfd");
    }

    #[test]
    fn reading_past_a_truncated_end_is_continued_then_fails() {
        let dir = disk_dir();
        let dev = device(&dir, 1 << 20, DirectIo::Off);
        let mut qp = dev.create_qpair(2).unwrap();
        // Someone else cuts the file to 1.5 blocks: the read gets 6144 bytes, is
        // continued for the rest and then reaches the end of the file.
        std::fs::OpenOptions::new().write(true).open(dir.path().join("dev")).unwrap().set_len(6144).unwrap();
        let (_pool, mut shard) = shard(1);
        let r = shard.get().unwrap();
        let read = IoRequest::with_segs(Op::Read, 0, 4, 1, &[r.seg(0, 8192), r.seg(8192, 8192)]);
        assert_eq!(run(qp.as_mut(), read), Err(IoError::Media(libc::EIO)));
        assert_eq!(qp.outstanding(), 0);
    }

    #[test]
    fn many_outstanding_requests_at_random_offsets_match_a_model() {
        let dir = disk_dir();
        let dev = device(&dir, 4 << 20, DirectIo::Auto);
        let nblocks = dev.info().num_blocks as usize;
        let depth = 64;
        let mut qp = dev.create_qpair(depth).unwrap();
        let (_pool, mut shard) = shard(depth as usize);
        let mut bufs: Vec<DmaBuf> = (0..depth).map(|_| shard.get().unwrap()).collect();
        let mut model = vec![0u8; nblocks];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Round 1: 64 writes of one block each to distinct random blocks, all in flight.
        let mut lbas: Vec<u64> = Vec::new();
        while lbas.len() < depth as usize {
            let lba = next() % nblocks as u64;
            if !lbas.contains(&lba) {
                lbas.push(lba);
            }
        }
        for (i, (&lba, buf)) in lbas.iter().zip(bufs.iter_mut()).enumerate() {
            let stamp = (i as u8).wrapping_mul(7).wrapping_add(1);
            buf.as_mut_slice()[..4096].fill(stamp);
            model[lba as usize] = stamp;
            let req = IoRequest::with_segs(Op::Write { fua: false }, lba, 1, i as u64, &[buf.seg(0, 4096)]);
            // SAFETY: the buffers outlive the completions reaped below.
            unsafe { qp.submit(&req) }.unwrap();
        }
        qp.kick();
        assert_eq!(qp.outstanding(), depth);
        assert!(wait_for(qp.as_mut(), depth as usize).iter().all(|c| c.result.is_ok()));
        // Round 2: 64 reads of random blocks (written or not), all in flight.
        let reads: Vec<u64> =
            (0..depth).map(|i| if i % 2 == 0 { lbas[i as usize] } else { next() % nblocks as u64 }).collect();
        for (i, (&lba, buf)) in reads.iter().zip(bufs.iter()).enumerate() {
            let req = IoRequest::with_segs(Op::Read, lba, 1, i as u64, &[buf.seg(0, 4096)]);
            // SAFETY: as above.
            unsafe { qp.submit(&req) }.unwrap();
        }
        qp.kick();
        let done = wait_for(qp.as_mut(), depth as usize);
        assert!(done.iter().all(|c| c.result.is_ok()));
        for (i, &lba) in reads.iter().enumerate() {
            let expect = model[lba as usize];
            assert!(bufs[i].as_slice()[..4096].iter().all(|&b| b == expect), "read {i} of block {lba}");
        }
        for buf in bufs {
            shard.put(buf);
        }
    }

    /// Detaches the loop device when the test ends, pass or fail.
    struct LoopDevice(String);

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
        }
    }

    /// The block-device path (BLKGETSIZE64, BLKSSZGET, fallocate on a bdev) over a loop
    /// device with 4 KiB logical blocks. Needs root and losetup, so it is not run by
    /// default: `cargo test -p quire-drivers -- --ignored loop_device`.
    #[test]
    #[ignore = "needs root and a free loop device"]
    fn block_device_through_a_loop_device() {
        let dir = disk_dir();
        let backing = dir.path().join("backing");
        std::fs::File::create(&backing).unwrap().set_len(32 << 20).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--sector-size", "4096"])
            .arg(&backing)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let loop_dev = LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string());
        let opts = UringOptions { direct: DirectIo::Auto, create_size: Some(1), block_size_hint: Some(512) };
        let dev = UringDevice::open(&loop_dev.0, opts).unwrap();
        assert_eq!(dev.backing(), crate::uring::Backing::BlockDevice);
        assert!(dev.is_direct());
        assert_eq!(dev.info().block_size, 4096, "the logical block size wins over the hint");
        assert_eq!(dev.info().size_bytes(), 32 << 20);
        let mut qp = dev.create_qpair(8).unwrap();
        let (_pool, mut shard) = shard(2);
        let (mut w, mut r) = (shard.get().unwrap(), shard.get().unwrap());
        w.as_mut_slice().fill(0x3c);
        let write = IoRequest::with_segs(Op::Write { fua: true }, 100, 16, 1, &[w.seg(0, 65536)]);
        assert_eq!(run(qp.as_mut(), write), Ok(()));
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::WriteZeroes, 101, 1, 2)), Ok(()));
        let dealloc = run(qp.as_mut(), IoRequest::no_data(Op::Deallocate, 110, 2, 3));
        assert!(matches!(dealloc, Ok(()) | Err(IoError::Unsupported)), "{dealloc:?}");
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::Flush, 0, 0, 4)), Ok(()));
        r.as_mut_slice().fill(0xff);
        let read = IoRequest::with_segs(Op::Read, 100, 16, 5, &[r.seg(0, 65536)]);
        assert_eq!(run(qp.as_mut(), read), Ok(()));
        for block in 0..16 {
            let zero = block == 1 || (dealloc.is_ok() && (10..12).contains(&block));
            let expect = if zero { 0 } else { 0x3c };
            assert!(r.as_slice()[block * 4096..][..4096].iter().all(|&b| b == expect), "block {block}");
        }
        let last = dev.info().num_blocks;
        assert_eq!(run(qp.as_mut(), IoRequest::no_data(Op::WriteZeroes, last, 1, 6)), Err(IoError::OutOfRange));
        drop(qp);
        drop(dev);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            Write { lba: u64, blocks: u32, stamp: u8 },
            Read { lba: u64, blocks: u32 },
            Zero { lba: u64, blocks: u32 },
            Deallocate { lba: u64, blocks: u32 },
            Flush,
        }

        const BLOCKS: u64 = 64;

        fn step() -> impl Strategy<Value = Step> {
            let range = (0..BLOCKS + 2, 1u32..=8);
            prop_oneof![
                4 => (range.clone(), any::<u8>()).prop_map(|((lba, blocks), stamp)| Step::Write { lba, blocks, stamp }),
                4 => range.clone().prop_map(|(lba, blocks)| Step::Read { lba, blocks }),
                1 => range.clone().prop_map(|(lba, blocks)| Step::Zero { lba, blocks }),
                1 => range.prop_map(|(lba, blocks)| Step::Deallocate { lba, blocks }),
                1 => Just(Step::Flush),
            ]
        }

        fn check(steps: &[Step], direct: DirectIo) {
            let dir = disk_dir();
            let dev = device(&dir, BLOCKS * 4096, direct);
            let mut qp = dev.create_qpair(4).unwrap();
            let (_pool, mut shard) = super::shard(1);
            let mut buf = shard.get().unwrap();
            let mut model = vec![0u8; BLOCKS as usize];
            for (tag, s) in steps.iter().enumerate() {
                let tag = tag as u64;
                let (lba, blocks) = match *s {
                    Step::Write { lba, blocks, .. }
                    | Step::Read { lba, blocks }
                    | Step::Zero { lba, blocks }
                    | Step::Deallocate { lba, blocks } => (lba, blocks),
                    Step::Flush => (0, 0),
                };
                let inside = lba + u64::from(blocks) <= BLOCKS;
                let bytes = blocks as usize * 4096;
                // Two segments when the transfer allows it, to exercise Readv/Writev.
                let half = (blocks as usize / 2) * 4096;
                let segs = if half > 0 {
                    vec![buf.seg(half, bytes - half), buf.seg(0, half)]
                } else {
                    vec![buf.seg(0, bytes)]
                };
                let req = match *s {
                    Step::Write { stamp, .. } => {
                        buf.as_mut_slice()[..bytes].fill(stamp);
                        IoRequest::with_segs(Op::Write { fua: stamp % 2 == 0 }, lba, blocks, tag, &segs)
                    }
                    Step::Read { .. } => IoRequest::with_segs(Op::Read, lba, blocks, tag, &segs),
                    Step::Zero { .. } => IoRequest::no_data(Op::WriteZeroes, lba, blocks, tag),
                    Step::Deallocate { .. } => IoRequest::no_data(Op::Deallocate, lba, blocks, tag),
                    Step::Flush => IoRequest::no_data(Op::Flush, 0, 0, tag),
                };
                let result = run(qp.as_mut(), req);
                if !inside && !matches!(s, Step::Flush) {
                    assert_eq!(result, Err(IoError::OutOfRange), "{s:?}");
                    continue;
                }
                assert_eq!(result, Ok(()), "{s:?}");
                let range = lba as usize..lba as usize + blocks as usize;
                match *s {
                    Step::Write { stamp, .. } => model[range].fill(stamp),
                    Step::Zero { .. } | Step::Deallocate { .. } => model[range].fill(0),
                    Step::Read { .. } => {
                        for (k, block) in range.enumerate() {
                            // Device bytes [0, bytes - half) sit at buffer [half, bytes),
                            // the rest at buffer [0, half).
                            let d = k * 4096;
                            let at = if d < bytes - half { half + d } else { d - (bytes - half) };
                            let got = &buf.as_slice()[at..at + 4096];
                            assert!(got.iter().all(|&b| b == model[block]), "block {block} after {s:?}");
                        }
                    }
                    Step::Flush => {}
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
            #[test]
            fn random_sequences_match_an_in_memory_model(steps in proptest::collection::vec(step(), 1..40), direct in any::<bool>()) {
                check(&steps, if direct { DirectIo::Auto } else { DirectIo::Off });
            }
        }
    }

    /// 4 KiB random reads at queue depth 32 on one queue pair over a 1 GiB file.
    /// Run with `cargo test -p quire-drivers --release -- --ignored --nocapture uring_iops`.
    #[test]
    #[ignore = "timing run, not a test"]
    fn uring_iops_4k_random_read_qd32() {
        let dir = disk_dir();
        let size: u64 = 1 << 30;
        let dev = device(&dir, size, DirectIo::Auto);
        let (_pool, mut shard) = shard(32);
        let mut qp = dev.create_uring_qpair(32).unwrap();
        // Fill the file so reads hit allocated blocks rather than holes.
        let mut b = shard.get().unwrap();
        b.as_mut_slice().fill(0x5a);
        let mut lba = 0;
        let per = (b.len() / 4096) as u32;
        while lba < dev.info().num_blocks {
            let req = IoRequest::with_segs(Op::Write { fua: false }, lba, per, lba, &[b.seg(0, b.len())]);
            assert_eq!(run(&mut qp, req), Ok(()));
            lba += u64::from(per);
        }
        assert_eq!(run(&mut qp, IoRequest::no_data(Op::Flush, 0, 0, 0)), Ok(()));
        shard.put(b);
        let bufs: Vec<DmaBuf> = (0..32).map(|_| shard.get().unwrap()).collect();
        let nblocks = dev.info().num_blocks;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut submit = |qp: &mut UringQueuePair, slot: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let req = IoRequest::with_segs(Op::Read, rng % nblocks, 1, slot, &[bufs[slot as usize].seg(0, 4096)]);
            // SAFETY: `bufs` outlives the queue pair's use of it (drained below).
            unsafe { qp.submit(&req) }.unwrap();
        };
        for slot in 0..32 {
            submit(&mut qp, slot);
        }
        qp.kick();
        let start = std::time::Instant::now();
        let mut done = 0u64;
        let mut freed = Vec::with_capacity(32);
        while start.elapsed() < std::time::Duration::from_secs(5) {
            qp.poll(32, &mut |c| {
                assert!(c.result.is_ok());
                freed.push(c.tag);
            });
            done += freed.len() as u64;
            for slot in freed.drain(..) {
                submit(&mut qp, slot);
            }
            qp.kick();
        }
        let secs = start.elapsed().as_secs_f64();
        let left = qp.outstanding() as usize;
        wait_for(&mut qp, left);
        println!(
            "uring 4k randread qd32, direct={}: {:.0} IOPS ({done} reads in {secs:.2}s)",
            dev.is_direct(),
            done as f64 / secs
        );
    }
}
