//! A volume's page table on this peer: page → device slot.
//!
//! The control thread is the only writer (it allocates and frees slots and persists
//! that first); reactors read entries on every I/O. Entries are atomics, so a read
//! never takes a lock; an entry goes from "unallocated" to an address only after the
//! mapping is durable on the device, and back only after the page store has persisted
//! the free. Slots are reused only after every reactor has drained the I/O that could
//! still address the old mapping (see `control`'s grace periods).
//!
//! # Growing in place
//!
//! A volume has one table for its whole life, shared by every [`super::VolumeView`]
//! of it, old or new: growing the volume grows the table in place
//! ([`PageTable::grow`]), so a reactor still holding the view from before the grow
//! reads the very entries the control thread sets afterwards. (A copied table would
//! let that reactor miss a page another reactor has just written and acknowledged.)
//!
//! The table is two-level. A fixed directory of [`LEAVES`] pointers covers
//! [`PAGES_MAX`] pages; leaf 0 holds pages `0..512`, and leaf `k ≥ 1` the `512·2^(k-1)`
//! pages from `512·2^(k-1)` on, so the leaves double in size. Leaves are allocated
//! (zeroed) when the table is created or grown, and are never moved or freed while the
//! table lives. A read is two loads: the leaf's pointer, then the entry.
//!
//! Memory: the directory is 144 bytes; the leaves of a table of `n` pages hold at most
//! `max(512, 2n)` entries of 8 bytes (4 KiB for a volume of up to 512 pages, at most
//! 16 bytes per page, exactly 8 bytes per page when `n` is a leaf boundary such as a
//! power of two ≥ 512; 512 MiB for the largest volume of 2^26 pages, as before).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::cast::usize_from;

/// Log2 of the pages of leaf 0 (and of leaf 1).
const LEAF0_SHIFT: u32 = 9;
/// Log2 of the most pages a table may have.
const PAGES_MAX_SHIFT: u32 = 26;
/// Most pages a table may have (the page store's `PAGES_PER_VOLUME_MAX`).
pub const PAGES_MAX: u64 = 1 << PAGES_MAX_SHIFT;
/// Leaves in the directory: leaf 0, then one per doubling up to [`PAGES_MAX`].
pub const LEAVES: usize = (PAGES_MAX_SHIFT - LEAF0_SHIFT + 1) as usize;

const _: () = assert!(LEAVES == 18);

/// The leaf of `page` and the page's index inside it.
#[inline]
fn locate(page: u64) -> (usize, usize) {
    let high = page >> LEAF0_SHIFT;
    // 0 for pages 0..512, 1 for 512..1024, 2 for 1024..2048, ...
    let leaf = (u64::BITS - high.leading_zeros()) as usize;
    (leaf, usize_from(page - leaf_start(leaf)))
}

/// First page of leaf `leaf`.
#[inline]
fn leaf_start(leaf: usize) -> u64 {
    ((1u64 << leaf) >> 1) << LEAF0_SHIFT
}

/// Pages in leaf `leaf`.
fn leaf_len(leaf: usize) -> usize {
    (1usize << LEAF0_SHIFT) << leaf.saturating_sub(1)
}

/// Per-page atomic words, `stride` of them per page, growable in place (the leaves
/// above). The page table has one word per page; the replica piece table
/// (`replica::locks`) has a cache line's worth.
pub(crate) struct Words {
    /// Leaf `k` (null until allocated): `leaf_len(k) × stride` words, from a
    /// `Box<[AtomicU64]>`.
    leaves: [AtomicPtr<AtomicU64>; LEAVES],
    /// Number of pages.
    len: AtomicU64,
    stride: usize,
}

impl Words {
    /// A table of `num_pages` pages of `stride` zeroed words each.
    pub(crate) fn new(num_pages: u64, stride: usize) -> Words {
        assert!(stride > 0);
        let t = Words { leaves: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())), len: 0.into(), stride };
        t.grow(num_pages);
        t
    }

    /// Grows the table in place to `num_pages` (never shrinks): every holder sees the
    /// new pages' words as zero and keeps seeing every word, old and new.
    pub(crate) fn grow(&self, num_pages: u64) {
        assert!(num_pages <= PAGES_MAX, "{num_pages} pages is above the most a table holds ({PAGES_MAX})");
        assert!(num_pages >= self.len(), "page tables only grow ({} to {num_pages} pages)", self.len());
        if num_pages > 0 {
            let (last, _) = locate(num_pages - 1);
            for (k, slot) in self.leaves.iter().enumerate().take(last + 1) {
                if !slot.load(Ordering::Acquire).is_null() {
                    continue;
                }
                // Zeroed memory from the allocator: a large leaf costs pages only as
                // its words are set.
                let zeroed = Box::<[AtomicU64]>::new_zeroed_slice(leaf_len(k) * self.stride);
                // SAFETY: an all-zero `AtomicU64` is a valid `AtomicU64` holding 0.
                let leaf: Box<[AtomicU64]> = unsafe { zeroed.assume_init() };
                let ptr = Box::into_raw(leaf).cast::<AtomicU64>();
                // Release: a reader that loads the pointer sees the zeroed words.
                if slot.compare_exchange(std::ptr::null_mut(), ptr, Ordering::Release, Ordering::Acquire).is_err() {
                    // SAFETY: `ptr` came from `Box::into_raw` of a slice of
                    // `leaf_len(k) × stride` words just above and was never shared (the
                    // exchange failed).
                    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, leaf_len(k) * self.stride)) });
                }
            }
        }
        self.len.fetch_max(num_pages, Ordering::Release);
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// The words of `page`. Panics for a page beyond every leaf allocated so far (a
    /// caller that did not check the page against its volume's size).
    #[inline]
    pub(crate) fn words(&self, page: u64) -> &[AtomicU64] {
        let (leaf, index) = locate(page);
        let ptr = self.leaves[leaf].load(Ordering::Acquire);
        assert!(!ptr.is_null(), "page {page} is beyond the page table");
        // SAFETY: a non-null leaf pointer was published (Release, loaded Acquire above)
        // after its `leaf_len(leaf) × stride` words were initialised, `index <
        // leaf_len(leaf)` by `locate`, and leaves are freed only in `drop`, which
        // `&self` rules out.
        unsafe { std::slice::from_raw_parts(ptr.add(index * self.stride), self.stride) }
    }

    /// Calls `f` with the words of every page, in order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, &[AtomicU64])) {
        let len = self.len();
        for (k, slot) in self.leaves.iter().enumerate() {
            let start = leaf_start(k);
            if start >= len {
                break;
            }
            let ptr = slot.load(Ordering::Acquire);
            let count = leaf_len(k).min(usize_from(len - start));
            // SAFETY: leaves up to the one holding page `len - 1` are allocated (grow
            // allocates them before raising `len`, which we loaded with Acquire first),
            // each of `leaf_len(k) × stride >= count × stride` words, and live as long
            // as `self`.
            let words = unsafe { std::slice::from_raw_parts(ptr, count * self.stride) };
            for (i, w) in words.chunks_exact(self.stride).enumerate() {
                f(start + i as u64, w);
            }
        }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        for (k, slot) in self.leaves.iter_mut().enumerate() {
            let ptr = *slot.get_mut();
            if !ptr.is_null() {
                // SAFETY: every non-null leaf came from `Box::into_raw` of a slice of
                // `leaf_len(k) × stride` words in `grow`, and `&mut self` means no reader
                // is left.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, leaf_len(k) * self.stride)) });
            }
        }
    }
}

/// Page → slot map. Entry value 0 means "never written (reads zeroes)"; otherwise it is
/// the slot's byte offset on the device plus one.
pub struct PageTable {
    words: Words,
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTable").field("len", &self.len()).field("allocated", &self.allocated()).finish()
    }
}

impl PageTable {
    /// A table of `num_pages` unallocated pages (at most [`PAGES_MAX`]).
    pub fn new(num_pages: u64) -> PageTable {
        PageTable { words: Words::new(num_pages, 1) }
    }

    /// Grows the table in place to `num_pages` (control thread; never shrinks): every
    /// holder of this table sees the new pages as unallocated and keeps seeing every
    /// entry, old and new, that the control thread sets.
    pub fn grow(&self, num_pages: u64) {
        self.words.grow(num_pages);
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.words.len()
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn entry(&self, page: u64) -> &AtomicU64 {
        &self.words.words(page)[0]
    }

    /// The device byte offset of `page`'s slot, or `None` if the page was never written.
    #[inline]
    pub fn get(&self, page: u64) -> Option<u64> {
        match self.entry(page).load(Ordering::Acquire) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// Records that `page` lives at device byte offset `offset` (control thread only,
    /// after the mapping is durable).
    pub fn set(&self, page: u64, offset: u64) {
        assert!(page < self.len(), "page {page} beyond the table's {} pages", self.len());
        self.entry(page).store(offset + 1, Ordering::Release);
    }

    /// Records that `page` is unallocated again (control thread only, after the free is
    /// durable).
    pub fn clear(&self, page: u64) {
        self.entry(page).store(0, Ordering::Release);
    }

    /// Number of allocated pages.
    pub fn allocated(&self) -> u64 {
        let mut n = 0;
        self.words.for_each(|_, w| n += u64::from(w[0].load(Ordering::Relaxed) != 0));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unwritten_pages_read_none_and_mapped_pages_their_slot() {
        let t = PageTable::new(4);
        assert_eq!(t.len(), 4);
        assert!((0..4).all(|p| t.get(p).is_none()));
        // Offset 0 is a valid slot: the stored value is offset + 1, so it is not "unwritten".
        t.set(0, 0);
        t.set(3, 8 << 20);
        assert_eq!(t.get(0), Some(0));
        assert_eq!(t.get(3), Some(8 << 20));
        assert_eq!(t.get(1), None);
        assert_eq!(t.allocated(), 2);
        t.clear(0);
        assert_eq!(t.get(0), None);
        assert_eq!(t.allocated(), 1);
    }

    #[test]
    fn leaves_tile_the_pages() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(511), (0, 511));
        assert_eq!(locate(512), (1, 0));
        assert_eq!(locate(1023), (1, 511));
        assert_eq!(locate(1024), (2, 0));
        assert_eq!(locate(PAGES_MAX - 1), (LEAVES - 1, leaf_len(LEAVES - 1) - 1));
        let mut next = 0;
        for k in 0..LEAVES {
            assert_eq!(leaf_start(k), next, "leaf {k}");
            next += leaf_len(k) as u64;
        }
        assert_eq!(next, PAGES_MAX);
    }

    #[test]
    fn growing_in_place_keeps_every_mapping_for_every_holder() {
        let t = Arc::new(PageTable::new(3));
        t.set(1, 4 << 20);
        // An old view and a new view of the volume hold the same table.
        let old = t.clone();
        t.grow(5000);
        assert_eq!(t.len(), 5000);
        assert_eq!(t.get(1), Some(4 << 20));
        assert!(t.get(3).is_none() && t.get(4999).is_none());
        // Set after the grow, read through the holder from before it.
        t.set(2, 12 << 20);
        t.set(4000, 16 << 20);
        assert_eq!(old.get(2), Some(12 << 20));
        assert_eq!(old.get(4000), Some(16 << 20));
        assert_eq!(old.allocated(), 3);
        t.grow(5000);
        assert_eq!(t.allocated(), 3, "growing to the same size changes nothing");
    }

    #[test]
    fn the_largest_table_has_every_leaf() {
        let t = PageTable::new(PAGES_MAX);
        t.set(PAGES_MAX - 1, 7);
        assert_eq!(t.get(PAGES_MAX - 1), Some(7));
        assert_eq!(t.get(PAGES_MAX / 2), None);
    }

    #[test]
    #[should_panic(expected = "only grow")]
    fn shrinking_is_refused() {
        PageTable::new(3).grow(2);
    }

    #[test]
    #[should_panic(expected = "beyond the page table")]
    fn a_page_beyond_every_leaf_panics() {
        PageTable::new(3).get(512);
    }
}
