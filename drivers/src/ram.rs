//! RAM backend: a block device in anonymous memory.
//!
//! Used by tests and by the benchmark that measures the target without a device in the
//! way. A request is carried out at submission (the copy stands in for the device's
//! DMA) and reported at the next poll, so callers see the same submit/kick/poll
//! rhythm as with a real device.

use std::collections::VecDeque;
use std::sync::Arc;

use memmap2::MmapMut;

use crate::block::{BlockDevice, Completion, DeviceInfo, IoError, IoRequest, Op, QueuePair, SubmitError};

struct Memory {
    map: MmapMut,
}

/// A RAM block device.
pub struct RamDevice {
    info: DeviceInfo,
    mem: Arc<Memory>,
}

impl RamDevice {
    /// A zeroed device of `size_bytes` (rounded down to `block_size`), its memory
    /// allocated as it is first written.
    pub fn new(size_bytes: u64, block_size: u32) -> std::io::Result<RamDevice> {
        RamDevice::with_memory(size_bytes, block_size, false)
    }

    /// A zeroed device whose memory is all allocated now, as SPDK's Malloc bdev's is
    /// at creation: no write pays later for the kernel's first touch (a page fault
    /// and the clearing of a fresh huge page, several milliseconds per 4 MiB slot the
    /// page store zeroes). What `quire serve` uses for `kind = "ram"`.
    pub fn committed(size_bytes: u64, block_size: u32) -> std::io::Result<RamDevice> {
        RamDevice::with_memory(size_bytes, block_size, true)
    }

    fn with_memory(size_bytes: u64, block_size: u32, commit: bool) -> std::io::Result<RamDevice> {
        assert!(block_size.is_power_of_two() && block_size >= 512);
        let num_blocks = size_bytes / u64::from(block_size);
        let len = usize::try_from(num_blocks * u64::from(block_size)).expect("fits the address space");
        // Anonymous memory is zero and allocated lazily, like a thin device. Transparent
        // huge pages keep random access from missing the TLB on every block (SPDK's
        // Malloc bdev sits in hugepage memory too); where THP is off this is a no-op.
        let mut map = memmap2::MmapOptions::new().len(len).map_anon()?;
        let _ = map.advise(memmap2::Advice::HugePage);
        if commit {
            // One write per base page faults every page in (a huge page at its first
            // write where THP is on); the bytes stay zero.
            for off in (0..len).step_by(4096) {
                map[off] = 0;
            }
        }
        Ok(RamDevice {
            info: DeviceInfo {
                name: "ram".into(),
                block_size,
                num_blocks,
                max_transfer_bytes: 1 << 20,
                volatile_write_cache: false,
                deallocate_reads_zeroes: true,
                memory_align: 1,
            },
            mem: Arc::new(Memory { map }),
        })
    }
}

impl BlockDevice for RamDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn create_qpair(&self, depth: u32) -> std::io::Result<Box<dyn QueuePair>> {
        Ok(Box::new(RamQueuePair {
            mem: self.mem.clone(),
            base: self.mem.map.as_ptr() as *mut u8,
            block_size: u64::from(self.info.block_size),
            num_blocks: self.info.num_blocks,
            depth: depth as usize,
            done: VecDeque::with_capacity(depth as usize),
        }))
    }
}

/// A queue pair on a [`RamDevice`].
pub struct RamQueuePair {
    mem: Arc<Memory>,
    base: *mut u8,
    block_size: u64,
    num_blocks: u64,
    depth: usize,
    done: VecDeque<Completion>,
}

// SAFETY: `base` points into the mapping that `mem` keeps alive; the queue pair is
// used by one thread at a time, and concurrent access to the same device blocks from
// two queue pairs has the same (undefined-content, not undefined-behaviour-for-the-host)
// meaning as on a real device: each copy below is a plain byte copy of disjoint or
// racing ranges of raw memory that Rust never references as `&`/`&mut`.
unsafe impl Send for RamQueuePair {}

impl RamQueuePair {
    fn execute(&mut self, req: &IoRequest) -> Result<(), IoError> {
        let end = req.lba.checked_add(u64::from(req.num_blocks)).ok_or(IoError::OutOfRange)?;
        if end > self.num_blocks {
            return Err(IoError::OutOfRange);
        }
        // Both inside the mapping (checked just above), whose length is a usize.
        let off = usize::try_from(req.lba * self.block_size).expect("inside the mapping");
        let len = usize::try_from(u64::from(req.num_blocks) * self.block_size).expect("inside the mapping");
        debug_assert!(off + len <= self.mem.map.len());
        match req.op {
            Op::Read | Op::Write { .. } => {
                let mut pos = off;
                for seg in req.segs() {
                    let n = seg.len as usize;
                    // SAFETY: `pos + n <= off + len` (the caller's lengths match, checked
                    // in submit) lies inside the mapping; the segment's memory is owned by
                    // the request until completion (submit's contract); the two ranges
                    // never overlap because one is the pool and the other this mapping.
                    unsafe {
                        let dev = self.base.add(pos);
                        if req.op == Op::Read {
                            std::ptr::copy_nonoverlapping(dev, seg.addr, n);
                        } else {
                            std::ptr::copy_nonoverlapping(seg.addr, dev, n);
                        }
                    }
                    pos += n;
                }
            }
            Op::WriteZeroes | Op::Deallocate => {
                // SAFETY: the range was checked against the device size above.
                unsafe { std::ptr::write_bytes(self.base.add(off), 0, len) };
            }
            Op::Flush => {}
        }
        Ok(())
    }
}

impl QueuePair for RamQueuePair {
    unsafe fn submit(&mut self, req: &IoRequest) -> Result<(), SubmitError> {
        if self.done.len() >= self.depth {
            return Err(SubmitError::QueueFull);
        }
        if matches!(req.op, Op::Read | Op::Write { .. })
            && req.data_len() != u64::from(req.num_blocks) * self.block_size
        {
            return Err(SubmitError::Invalid("segment bytes differ from the block count"));
        }
        let result = self.execute(req);
        self.done.push_back(Completion { tag: req.tag, result });
        Ok(())
    }

    fn kick(&mut self) {}

    fn poll(&mut self, max: usize, on_complete: &mut dyn FnMut(Completion)) -> usize {
        let n = max.min(self.done.len());
        for _ in 0..n {
            let c = self.done.pop_front().expect("counted above");
            on_complete(c);
        }
        n
    }

    fn outstanding(&self) -> u32 {
        u32::try_from(self.done.len()).expect("at most the queue depth, a u32")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaPool;

    #[test]
    fn write_read_zero_and_range_checks() {
        // Both kinds: memory allocated as written, and committed at creation.
        for committed in [false, true] {
            let dev = RamDevice::with_memory(1 << 20, 4096, committed).unwrap();
            let mut qp = dev.create_qpair(4).unwrap();
            let pool = DmaPool::new(8192, 2, false).unwrap();
            let mut shard = pool.shards(1).pop().unwrap();
            let mut w = shard.get().unwrap();
            let mut r = shard.get().unwrap();
            w.as_mut_slice().fill(0x5a);
            let mut results = Vec::new();
            let mut collect = |c: Completion| results.push(c);
            // SAFETY: the buffers live until the completions are polled below.
            unsafe {
                qp.submit(&IoRequest::with_segs(Op::Write { fua: false }, 3, 2, 1, &[w.seg(0, 8192)])).unwrap();
                qp.submit(&IoRequest::with_segs(Op::Read, 3, 2, 2, &[r.seg(0, 8192)])).unwrap();
                qp.submit(&IoRequest::no_data(Op::Deallocate, 3, 1, 3)).unwrap();
                qp.submit(&IoRequest::no_data(Op::WriteZeroes, 255, 2, 4)).unwrap();
                assert_eq!(qp.submit(&IoRequest::no_data(Op::Flush, 0, 0, 5)), Err(SubmitError::QueueFull));
            }
            qp.kick();
            assert_eq!(qp.poll(16, &mut collect), 4);
            assert_eq!(results[0], Completion { tag: 1, result: Ok(()) });
            assert_eq!(results[3].result, Err(IoError::OutOfRange));
            assert!(r.as_slice().iter().all(|&b| b == 0x5a));
            // SAFETY: as above.
            unsafe { qp.submit(&IoRequest::with_segs(Op::Read, 3, 2, 6, &[r.seg(0, 8192)])).unwrap() };
            qp.poll(16, &mut |_| {});
            assert!(r.as_slice()[..4096].iter().all(|&b| b == 0));
            assert!(r.as_slice()[4096..].iter().all(|&b| b == 0x5a));
            r.as_mut_slice()[0] = 1;
            shard.put(w);
            shard.put(r);
        }
    }
}
