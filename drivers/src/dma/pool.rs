//! The pool's region, its shards and buffer handles.

use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::MmapMut;

/// Errors creating a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The chunk size is not a power of two of at least 4 KiB and below 4 GiB (a
    /// buffer's length is a `u32`).
    #[error("chunk size {0} must be a power of two of at least 4096 and below 4 GiB")]
    ChunkSize(usize),
    /// Zero chunks, more than `u32::MAX` (a chunk's index is a `u32`), or a size that
    /// overflows.
    #[error("bad chunk count {0}")]
    Count(usize),
    /// Mapping the region failed.
    #[error("mapping {bytes} bytes of buffer memory failed: {source}")]
    Map {
        /// Size asked for.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A contiguous piece of DMA-able memory: virtual address, IOVA and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSeg {
    /// Virtual address.
    pub addr: *mut u8,
    /// I/O virtual address (equal to `addr` when no IOMMU mapping was set).
    pub iova: u64,
    /// Length in bytes.
    pub len: u32,
}

// SAFETY: a DmaSeg is a plain description of memory (address, length). Who may touch
// that memory and when is governed by the DmaBuf that owns it and by the submit contract
// of the queue pair; moving the description between threads does not touch it.
unsafe impl Send for DmaSeg {}

impl DmaSeg {
    /// An empty segment (padding in fixed arrays).
    pub const EMPTY: DmaSeg = DmaSeg { addr: std::ptr::null_mut(), iova: 0, len: 0 };
}

struct Region {
    map: MmapMut,
    iova_base: std::sync::atomic::AtomicU64,
}

/// The whole pool; split it into shards with [`DmaPool::shards`].
pub struct DmaPool {
    region: Arc<Region>,
    chunk_size: usize,
    count: usize,
    hugepages: bool,
}

impl DmaPool {
    /// Maps `count` chunks of `chunk_size` bytes, on hugepages when `hugepages` is true
    /// and the machine has them.
    pub fn new(chunk_size: usize, count: usize, hugepages: bool) -> Result<DmaPool, PoolError> {
        if !chunk_size.is_power_of_two() || chunk_size < 4096 || u32::try_from(chunk_size).is_err() {
            return Err(PoolError::ChunkSize(chunk_size));
        }
        if u32::try_from(count).is_err() {
            return Err(PoolError::Count(count));
        }
        let bytes = chunk_size.checked_mul(count).filter(|&b| b > 0).ok_or(PoolError::Count(count))?;
        let (map, huge) = map_region(bytes, hugepages)?;
        let base = map.as_ptr() as u64;
        Ok(DmaPool {
            region: Arc::new(Region { map, iova_base: std::sync::atomic::AtomicU64::new(base) }),
            chunk_size,
            count,
            hugepages: huge,
        })
    }

    /// Size of one chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Number of chunks.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True when the region lives on hugepages.
    pub fn on_hugepages(&self) -> bool {
        self.hugepages
    }

    /// The region's address and length, for an IOMMU mapping.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.region.map.as_ptr() as *mut u8, self.region.map.len())
    }

    /// Sets the IOVA at which the region was mapped into an IOMMU. Call before any
    /// buffer is taken from a shard.
    pub fn set_iova_base(&self, iova: u64) {
        self.region.iova_base.store(iova, std::sync::atomic::Ordering::Release);
    }

    /// Splits the chunks evenly into `n` shards (the remainder goes to the first).
    pub fn shards(&self, n: usize) -> Vec<PoolShard> {
        assert!(n > 0);
        let per = self.count / n;
        assert!(per > 0, "{} chunks cannot feed {n} shards", self.count);
        let iova_base = self.region.iova_base.load(std::sync::atomic::Ordering::Acquire);
        let base = self.region.map.as_ptr() as *mut u8;
        let mut start = 0;
        (0..n)
            .map(|i| {
                let take = if i == 0 { per + self.count % n } else { per };
                let free = (start..start + take).rev().map(chunk_index).collect();
                let holders = Holders::new(chunk_index(start), take);
                start += take;
                PoolShard {
                    _region: self.region.clone(),
                    base,
                    iova_base,
                    chunk_size: self.chunk_size,
                    free,
                    total: take,
                    holders,
                }
            })
            .collect()
    }
}

#[cfg(target_os = "linux")]
fn map_region(bytes: usize, hugepages: bool) -> Result<(MmapMut, bool), PoolError> {
    const HUGE: usize = 2 << 20;
    if hugepages {
        let rounded = bytes.div_ceil(HUGE) * HUGE;
        if let Ok(m) = memmap2::MmapOptions::new().len(rounded).huge(Some(21)).populate().map_anon() {
            return Ok((m, true));
        }
    }
    let m = memmap2::MmapOptions::new()
        .len(bytes)
        .populate()
        .map_anon()
        .map_err(|source| PoolError::Map { bytes, source })?;
    // Without reserved hugepages, transparent huge pages still spare the TLB.
    let _ = m.advise(memmap2::Advice::HugePage);
    Ok((m, false))
}

/// A chunk's index as the free lists keep it.
fn chunk_index(i: usize) -> u32 {
    u32::try_from(i).expect("chunk indices are below the count, which DmaPool::new keeps within u32")
}

/// How many handles (the buffer itself and its views) hold each chunk of a shard that
/// is out of the free list.
struct Holders {
    /// Lowest chunk index the shard may own.
    first: u32,
    counts: Vec<u16>,
}

impl Holders {
    fn new(first: u32, n: usize) -> Holders {
        Holders { first, counts: vec![0; n] }
    }

    fn slot(&mut self, index: u32) -> &mut u16 {
        let i = index.checked_sub(self.first).expect("chunk of another shard") as usize;
        &mut self.counts[i]
    }
}

/// A reactor's share of the pool: a stack of free chunks.
pub struct PoolShard {
    _region: Arc<Region>,
    base: *mut u8,
    iova_base: u64,
    chunk_size: usize,
    free: Vec<u32>,
    total: usize,
    holders: Holders,
}

// SAFETY: the shard owns the chunks on its free list exclusively; the region they live
// in is kept alive by the Arc. Moving the shard to the reactor thread that uses it moves
// that exclusive ownership with it.
unsafe impl Send for PoolShard {}

impl PoolShard {
    /// Takes a buffer, or `None` when the shard is empty (back-pressure).
    pub fn get(&mut self) -> Option<DmaBuf> {
        let index = self.free.pop()?;
        let holders = self.holders.slot(index);
        assert_eq!(*holders, 0, "chunk {index} on the free list is held");
        *holders = 1;
        let off = index as usize * self.chunk_size;
        // SAFETY: `index` < chunks of this shard, so `off` is inside the mapping.
        let ptr = unsafe { self.base.add(off) };
        Some(DmaBuf {
            index,
            ptr: NonNull::new(ptr).expect("mapping is never at address 0"),
            iova: self.iova_base + off as u64,
            len: u32::try_from(self.chunk_size).expect("DmaPool::new keeps chunks below 4 GiB"),
            view: false,
        })
    }

    /// A read-only view of `len` bytes at `off` of `buf`'s chunk. The chunk goes back
    /// to the free list only when `buf` and every view of it have been put back.
    ///
    /// The caller promises that nobody writes those bytes through `buf` while the view
    /// lives: it writes only past every view ([`DmaBuf::tail_mut`]), and uses
    /// [`DmaBuf::as_mut_slice`] again only once [`PoolShard::holders`] says 1. The view
    /// itself cannot write.
    pub fn view(&mut self, buf: &DmaBuf, off: usize, len: usize) -> DmaBuf {
        assert!(!buf.view, "views are taken of whole buffers");
        assert!(len > 0 && off + len <= buf.len(), "view {off}+{len} beyond buffer {}", buf.len);
        let holders = self.holders.slot(buf.index);
        assert!(*holders >= 1, "view of a buffer that is not out");
        *holders = holders.checked_add(1).expect("fewer than 65535 views of one chunk");
        DmaBuf {
            index: buf.index,
            // SAFETY: in bounds, checked above.
            ptr: NonNull::new(unsafe { buf.ptr.as_ptr().add(off) }).expect("inside the mapping"),
            iova: buf.iova + off as u64,
            len: u32::try_from(len).expect("inside the buffer, whose length is a u32"),
            view: true,
        }
    }

    /// Handles (the buffer and its views) holding `buf`'s chunk.
    pub fn holders(&self, buf: &DmaBuf) -> u16 {
        let i = buf.index.checked_sub(self.holders.first).expect("chunk of another shard") as usize;
        self.holders.counts[i]
    }

    /// Returns a buffer (or a view) taken from this pool; the chunk is free once its
    /// last holder is back.
    pub fn put(&mut self, buf: DmaBuf) {
        let holders = self.holders.slot(buf.index);
        assert!(*holders > 0, "double free of chunk {}", buf.index);
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        debug_assert!(!self.free.contains(&buf.index), "double free of chunk {}", buf.index);
        assert!(self.free.len() < self.total, "more buffers returned than taken");
        self.free.push(buf.index);
    }

    /// Moves `count` free chunks into a new shard (for a user with a small fixed need,
    /// such as the page store's metadata I/O, that must use memory the device can
    /// reach). `None` when fewer than `count` chunks are free.
    pub fn split_off(&mut self, count: usize) -> Option<PoolShard> {
        assert!(count > 0, "an empty shard is of no use");
        let keep = self.free.len().checked_sub(count)?;
        let free = self.free.split_off(keep);
        self.total -= count;
        assert_eq!(free.len(), count);
        let first = free.iter().copied().min().expect("count > 0");
        let last = free.iter().copied().max().expect("count > 0");
        let holders = Holders::new(first, (last - first + 1) as usize);
        Some(PoolShard {
            _region: self._region.clone(),
            base: self.base,
            iova_base: self.iova_base,
            chunk_size: self.chunk_size,
            free,
            total: count,
            holders,
        })
    }

    /// Free buffers.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Buffers this shard owns in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Size of each buffer.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }
}

/// A handle on one pool chunk, or a read-only view of part of one
/// ([`PoolShard::view`]).
///
/// A whole buffer is the unique writer of its chunk. Once views of it exist, it writes
/// only bytes past every view ([`DmaBuf::tail_mut`]); a view never writes.
#[derive(Debug)]
pub struct DmaBuf {
    index: u32,
    ptr: NonNull<u8>,
    iova: u64,
    len: u32,
    view: bool,
}

// SAFETY: a DmaBuf is the unique handle on its chunk (or, for a view, a read-only
// handle on bytes nobody writes while it lives); sending it sends that ownership.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: chunks are at least 4 KiB.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes, for the CPU.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the bytes lie inside the live mapping; no device writes them unless a
        // request owns them (submit's contract); nobody writes the bytes of a view while
        // it lives (`PoolShard::view`'s contract), and `&self` excludes writes through
        // this handle.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The bytes, for the CPU, writable. Not for a view, nor for a buffer that views
    /// may still share (use [`DmaBuf::tail_mut`] there).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(!self.view, "a view is read-only");
        // SAFETY: as for `as_slice`, and `&mut self` makes the access exclusive; the
        // owner of a buffer with views calls `tail_mut` instead (its contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The bytes from `from` to the end, writable: the part of a shared buffer that no
    /// view covers when every view lies below `from` (the caller's promise, which
    /// [`PoolShard::view`] documents).
    pub fn tail_mut(&mut self, from: usize) -> &mut [u8] {
        assert!(!self.view, "a view is read-only");
        assert!(from <= self.len as usize);
        // SAFETY: inside the chunk; the bytes at and after `from` belong to no view (the
        // caller's promise), and `&mut self` excludes other writers through this handle.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(from), self.len as usize - from) }
    }

    /// Bytes `range` of the buffer, for the CPU (reading what a view also reads is fine).
    pub fn bytes(&self, from: usize, to: usize) -> &[u8] {
        &self.as_slice()[from..to]
    }

    /// True for a read-only view.
    pub fn is_view(&self) -> bool {
        self.view
    }

    /// A segment of `len` bytes at `off` inside this buffer, for a device request.
    pub fn seg(&self, off: usize, len: usize) -> DmaSeg {
        assert!(off + len <= self.len as usize, "segment {off}+{len} beyond buffer {}", self.len);
        DmaSeg {
            // SAFETY: in bounds, checked above.
            addr: unsafe { self.ptr.as_ptr().add(off) },
            iova: self.iova + off as u64,
            len: u32::try_from(len).expect("inside the buffer, whose length is a u32"),
        }
    }

    /// The buffer's IOVA.
    pub fn iova(&self) -> u64 {
        self.iova
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_hand_out_distinct_chunks_and_take_them_back() {
        let pool = DmaPool::new(4096, 10, false).unwrap();
        let mut shards = pool.shards(3);
        assert_eq!(shards.iter().map(|s| s.total()).sum::<usize>(), 10);
        let mut bufs: Vec<DmaBuf> = Vec::new();
        for s in shards.iter_mut() {
            while let Some(b) = s.get() {
                bufs.push(b);
            }
        }
        assert_eq!(bufs.len(), 10);
        let mut addrs: Vec<u64> = bufs.iter().map(|b| b.iova()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 10);
        bufs[0].as_mut_slice().fill(0xab);
        assert!(bufs[0].as_slice().iter().all(|&b| b == 0xab));
        // Buffers go back to the shard they came from (the last one, for the last buffer).
        let b = bufs.pop().unwrap();
        shards[2].put(b);
        assert_eq!(shards[2].available(), 1);
    }

    #[test]
    fn split_off_moves_free_chunks() {
        let pool = DmaPool::new(4096, 8, false).unwrap();
        let mut shard = pool.shards(1).pop().unwrap();
        let held = shard.get().unwrap();
        assert!(shard.split_off(8).is_none(), "only 7 chunks are free");
        let mut small = shard.split_off(3).unwrap();
        assert_eq!((small.total(), small.available()), (3, 3));
        assert_eq!((shard.total(), shard.available()), (5, 4));
        let bufs: Vec<DmaBuf> = std::iter::from_fn(|| small.get()).collect();
        assert_eq!(bufs.len(), 3);
        assert!(bufs.iter().all(|b| b.iova() != held.iova()));
        for b in bufs {
            small.put(b);
        }
        shard.put(held);
        assert_eq!(shard.available(), 5);
    }

    #[test]
    fn a_chunk_with_views_is_free_only_when_every_holder_is_back() {
        let pool = DmaPool::new(8192, 2, false).unwrap();
        let mut shard = pool.shards(1).pop().unwrap();
        let mut buf = shard.get().unwrap();
        buf.as_mut_slice()[..8].copy_from_slice(b"abcdefgh");
        let a = shard.view(&buf, 2, 3);
        let b = shard.view(&buf, 5, 3);
        assert_eq!((a.as_slice(), b.as_slice()), (&b"cde"[..], &b"fgh"[..]));
        assert_eq!(a.iova(), buf.iova() + 2);
        assert!(a.is_view() && !buf.is_view());
        assert_eq!(shard.holders(&buf), 3);
        buf.tail_mut(8)[0] = b'i';
        assert_eq!(buf.bytes(0, 9), b"abcdefghi");
        let idle = shard.available();
        shard.put(buf);
        assert_eq!(shard.available(), idle, "views still hold the chunk");
        shard.put(a);
        assert_eq!(shard.available(), idle);
        shard.put(b);
        assert_eq!(shard.available(), idle + 1, "the last holder frees it");
        let again = shard.get().unwrap();
        assert_eq!(shard.holders(&again), 1);
        shard.put(again);
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn views_cannot_write() {
        let pool = DmaPool::new(4096, 1, false).unwrap();
        let mut shard = pool.shards(1).pop().unwrap();
        let buf = shard.get().unwrap();
        let mut v = shard.view(&buf, 0, 16);
        v.as_mut_slice()[0] = 1;
    }

    #[test]
    fn rejects_bad_chunk_sizes() {
        assert!(matches!(DmaPool::new(1000, 4, false), Err(PoolError::ChunkSize(1000))));
        assert!(matches!(DmaPool::new(4096, 0, false), Err(PoolError::Count(0))));
    }
}
